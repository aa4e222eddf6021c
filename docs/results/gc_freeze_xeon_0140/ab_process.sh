#!/bin/bash
# A/B of the whole torchcfm_moons process: $1 = old tree, $2 = new tree; warm caches; alternating.
OLD=$1; NEW=$2; R=${3:-3}
for t in old new; do
  d=$([ $t = old ] && echo $OLD || echo $NEW)
  [ -n "$KEEP" ] && continue
  rm -rf /tmp/s20ab_$t; mkdir -p /tmp/s20ab_$t
  (cd $d && JAX_COMPILATION_CACHE_DIR=/tmp/s20ab_$t/xla python scripts/train.py --config=configs/torchcfm_moons.py --workdir=/tmp/s20ab_$t/cold --config.progress_bar=False >/dev/null 2>&1)
done
for r in $(seq $R); do
  for t in old new; do
    d=$([ $t = old ] && echo $OLD || echo $NEW)
    rm -rf /tmp/s20ab_$t/run
    s=$(date +%s.%N)
    (cd $d && JAX_COMPILATION_CACHE_DIR=/tmp/s20ab_$t/xla python scripts/train.py --config=configs/torchcfm_moons.py --workdir=/tmp/s20ab_$t/run --config.progress_bar=False >/dev/null 2>&1)
    e=$(date +%s.%N)
    tv=$(python -c "import json; rows=[json.loads(l) for l in open('/tmp/s20ab_$t/run/metrics.jsonl')]; print(rows[-1]['tv'], 'eval', round(rows[-1]['eval_seconds'],2), 'first window', round(1000/rows[0]['steps_per_sec'],2))")
    echo "round $r $t $(python -c "print(round($e-$s,2))") s  tv, eval_s: $tv"
  done
done
