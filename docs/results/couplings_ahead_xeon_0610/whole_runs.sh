#!/bin/bash
# Whole OT-CFM runs (configs/torchcfm_moons.py with coupling.name=exact, 20,000 steps), couplings solved
# ahead (default) vs inside the step, alternating, on the otherwise idle machine.
cd /work/main
for round in 1 2; do
  for t in -1 0; do
    rm -rf /tmp/otrun_$t
    /usr/bin/time -f "wall %e s" python scripts/train.py --config=configs/torchcfm_moons.py --config.coupling.name=exact --workdir=/tmp/otrun_$t \
        --config.coupling.ahead_threads=$t --config.progress_bar=False > /tmp/otrun_$t.log 2>&1
    echo "round $round ahead_threads=$t: $(tail -1 /tmp/otrun_$t.log) | $(grep 'done at step' /tmp/otrun_$t.log)"
    python - <<PY
import json
rows = [json.loads(l) for l in open("/tmp/otrun_$t/metrics.jsonl")]
print("   steps/s by window:", [round(r["steps_per_sec"]) for r in rows][:20], "final", {k: rows[-1][k] for k in ("loss", "pair_cost", "tv") if k in rows[-1]})
PY
  done
done
