#!/bin/bash
# The measurements behind docs/couplings.md#solved-a-call-ahead, in this order, idle machine.
set -e
R=$(cd "$(dirname "$0")" && pwd)
cd /work/main
PY=/work/oracle-venv/bin/python   # torch, torchcfm, POT: the torchcfm rows
for t in 1 0; do $PY $R/after_torchcfm.py $t; done 2>&1 | grep -v Warn > $R/after_torchcfm.log
(python $R/threads.py exact 0 1 2 3; python $R/threads.py sinkhorn 0 1 2) 2>&1 | grep -v Warn > $R/threads.log
for spc in 50 10; do $PY scripts/coupling_speed.py --rounds=20 --steps_per_call=$spc; done 2>&1 | grep -v Warn > $R/coupling_speed.log
