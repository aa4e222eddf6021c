#!/bin/bash
# Whole OT-CFM runs (configs/torchcfm_moons.py with coupling.name=exact, 20,000 steps and the final
# 100,000-sample evaluation): the auction's native kernel (default) vs its lax loops, couplings
# solved ahead (default) vs inside the step, alternating, on the otherwise idle machine.
cd /work/main
for round in 1 2; do
  for kernel in auto lax; do
    for t in -1 0; do
      d=/tmp/otrun_${kernel}_$t
      rm -rf $d
      /usr/bin/time -f "wall %e s" python scripts/train.py --config=configs/torchcfm_moons.py --config.coupling.name=exact --workdir=$d \
          --config.coupling.ahead_threads=$t --config.coupling.auction_kernel=$kernel --config.progress_bar=False > $d.log 2>&1
      echo "round $round auction_kernel=$kernel ahead_threads=$t: $(tail -1 $d.log) | $(grep 'done at step' $d.log)"
      python - <<PY
import json
rows = [json.loads(l) for l in open("$d/metrics.jsonl")]
print("   steps/s by window:", [round(r["steps_per_sec"]) for r in rows][:20], "final", {k: rows[-1][k] for k in ("loss", "pair_cost", "tv") if k in rows[-1]})
PY
    done
  done
done
