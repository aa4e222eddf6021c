#!/bin/bash
# The quickstart main job, the tree before (c2a1e2f, evaluation on the whole batch, in /tmp/oldtree) and this tree
# (eval.chunk_rows=10,000), alternating, fresh compilation cache each, idle machine.
R=$(cd "$(dirname "$0")" && pwd)
for round in 1 2; do
  for tree in /tmp/oldtree /work/main; do
    name=$(basename $tree)
    rm -rf /tmp/qsab /tmp/qsabcache
    cd $tree
    start=$(date +%s.%N)
    FLOWMATCH_COMPILATION_CACHE=/tmp/qsabcache python scripts/train.py --config=configs/checkerboard.py \
        --workdir=/tmp/qsab --config.progress_bar=False > /tmp/qsab.log 2>&1
    end=$(date +%s.%N)
    echo "== $(date -u +%H:%M) UTC round $round, $tree at $(git -C $tree log --oneline -1 | cut -c1-7)"
    grep "done at step" /tmp/qsab.log
    echo "wall $(python -c "print(round($end - $start, 1))") s"
    python - <<PY
import json, statistics
rows = [json.loads(l) for l in open("/tmp/qsab/metrics.jsonl")]
print("median steps/s", round(statistics.median(r["steps_per_sec"] for r in rows[1:]), 1), ", tv", rows[-1]["tv"], ", eval_seconds", round(rows[-1]["eval_seconds"], 2))
PY
    cp /tmp/qsab/metrics.jsonl $R/metrics_${name}_$round.jsonl
  done
done
