#!/bin/bash
# A/B of the whole torchcfm_moons process: $1 = old tree, $2 = new tree; warm caches; alternating.
# $3: rounds (default 3). KEEP=1 reuses the caches of an earlier call (no cold runs); AB_TMP: the
# scratch prefix (default /tmp/ab_).
OLD=$1; NEW=$2; R=${3:-3}; P=${AB_TMP:-/tmp/ab_}
for t in old new; do
  d=$([ $t = old ] && echo $OLD || echo $NEW)
  [ -n "$KEEP" ] && continue
  rm -rf ${P}$t; mkdir -p ${P}$t
  (cd $d && JAX_COMPILATION_CACHE_DIR=${P}$t/xla python scripts/train.py --config=configs/torchcfm_moons.py --workdir=${P}$t/cold --config.progress_bar=False >/dev/null 2>&1)
done
for r in $(seq $R); do
  for t in old new; do
    d=$([ $t = old ] && echo $OLD || echo $NEW)
    rm -rf ${P}$t/run
    s=$(date +%s.%N)
    (cd $d && JAX_COMPILATION_CACHE_DIR=${P}$t/xla python scripts/train.py --config=configs/torchcfm_moons.py --workdir=${P}$t/run --config.progress_bar=False >/dev/null 2>&1)
    e=$(date +%s.%N)
    tv=$(python -c "import json; rows=[json.loads(l) for l in open('${P}$t/run/metrics.jsonl')]; print(rows[-1]['tv'], 'eval', round(rows[-1]['eval_seconds'],2), 'first window', round(1000/rows[0]['steps_per_sec'],2))")
    echo "round $r $t $(python -c "print(round($e-$s,2))") s  tv, eval_s: $tv"
  done
done
