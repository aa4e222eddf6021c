"""The quickstart's final evaluation (configs/checkerboard.py, its initial network) with the
sampling's chunks of 100,000 / 20,000 / 10,000 rows, two alternating rounds, 2 timed calls each
(speed_process.evaluation_vs_sampling).  From the repository root:
  python docs/results/quickstart_xeon_2210/eval_chunks.py | grep chunk_size > .../eval_chunks.log"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
from flowmatch.experiments import cli, speed_process  # noqa: E402

c = cli.load_config_file("configs/checkerboard.py")
for _ in range(2):
    for cs in (100_000, 20_000, 10_000):
        c.eval.chunk_size = cs
        r = speed_process.evaluation_vs_sampling(c, repeats=2)
        print(f"chunk_size {cs}: evaluation {r['evaluation']:.2f} s, sampling {r['sampling']:.2f} s",
              flush=True)
