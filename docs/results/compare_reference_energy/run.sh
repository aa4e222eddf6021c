#!/bin/bash
# compare_integrators on the digits run (python scripts/train.py --config=configs/digits.py
# --workdir=/tmp/digits_run), 200 samples, heun and rk4 at 8 and 64 NFE, before (a worktree of
# the commit before at $1) and after this change (the reference row's path energy at 1e-6), one after the other; wall seconds of each.
here=$(cd "$(dirname "$0")/../../.." && pwd)
for d in "$1" "$here"; do
  echo "== $( [ "$d" = "$here" ] && echo after || echo before ) ($(date -u +%H:%M:%S))"
  start=$(date +%s.%N)
  (cd "$d" && PYTHONPATH="$d" python scripts/compare_integrators.py --workdir=/tmp/digits_run \
      --output=/tmp/cmp_digits_$(basename "$d") --methods=heun,rk4 --nfe=8,64 --num_samples=200 \
      --tolerances= 2>&1 | grep -v "^\s*$" | cut -c1-200)
  echo "wall $(echo "$(date +%s.%N) - $start" | bc) s"
done
