#!/bin/bash
# Two quickstart main jobs back to back, each with a fresh compilation cache (from the tree's root).
set -e
for r in a b; do
  rm -rf /tmp/qs24$r /tmp/qs24cache$r
  echo "== $(date -u +%H:%M) UTC run $r"
  start=$(date +%s.%N)
  FLOWMATCH_COMPILATION_CACHE=/tmp/qs24cache$r python scripts/train.py --config=configs/checkerboard.py \
    --workdir=/tmp/qs24$r --config.progress_bar=False 2>/dev/null | grep "done at step"
  end=$(date +%s.%N)
  python - "$start" "$end" /tmp/qs24$r/metrics.jsonl <<'PY'
import json, sys, statistics
start, end, path = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
rows = [json.loads(l) for l in open(path)]
rates = [r["steps_per_sec"] for r in rows if "steps_per_sec" in r]
last = rows[-1]
print(f"wall {end - start:.1f} s")
print(f"median steps/s {statistics.median(rates):.1f} , tv {last['tv']} , eval_seconds {last['eval_seconds']:.2f}")
PY
  cp /tmp/qs24$r/metrics.jsonl "$(dirname "$0")/metrics_$r.jsonl"
done
