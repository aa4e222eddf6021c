#!/bin/bash
# The coupled train steps before (a worktree of 83e556b at $1) and after (this checkout),
# alternating whole runs of scripts/coupling_speed.py (20 interleaved rounds each).
# Usage: bash ab_step.sh /tmp/wt_old    (git worktree add /tmp/wt_old 83e556b)
here=$(cd "$(dirname "$0")/../../.." && pwd)
for i in 1 2 3; do
  for d in "$1" "$here"; do
    echo "== $( [ "$d" = "$here" ] && echo after || echo before ) (run $i, $(date -u +%H:%M:%S))"
    (cd "$d" && PYTHONPATH="$d" python scripts/coupling_speed.py --rounds=20 | grep -E "^\| (row|uncoupled|sinkhorn|exact)")
  done
done
