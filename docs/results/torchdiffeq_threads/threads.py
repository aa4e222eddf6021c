"""rk4 against torchdiffeq's rk4 with torch on 1 thread and on every core, in one process.

    PYTHONPATH=. /work/oracle-venv/bin/python docs/results/torchdiffeq_threads/threads.py
"""
from flowmatch.experiments import speed_sampling as ss

for threads in (1, ss.available_cores(), 1, ss.available_cores()):
    for r in ss.torchdiffeq_ratio((256, 10_000), num_steps=8, repeats=5, torch_threads=threads):
        print(f"torch threads {r['torch_threads']}  n {r['n']:6d}  torchdiffeq "
              f"{r['torch_seconds'] * 1e3:7.1f} ms  flowmatch {r['flowmatch_seconds'] * 1e3:7.1f} ms"
              f"  speedup {r['speedup']:.2f} (best {r['best_speedup']:.2f})")
