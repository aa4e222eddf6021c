"""checkerboard: FFJORD's checkerboard: 8 squares of side 2 on [-4, 4]^2.

Run (2 CPU cores):
  python scripts/train.py --config=configs/checkerboard.py --workdir=runs/checkerboard
  python scripts/sample.py --workdir=runs/checkerboard --output=runs/checkerboard/samples.npz
Expected: tv 0.0885 (floor 0.0668), w2 0.2096 (floor 0.2027) with sample.py's default sampler
(heun, 50 steps; 0.0913 and 0.2195 with the code before 2026-12-05, 04:00, the same seed: XLA
compiles the step's arithmetic a little differently since). Runtime: 115-117 s on the 2-core
Xeon (AVX-512) with a fresh compilation cache (16,000 steps at a median 160-166 steps/s, then a
12.2 s final evaluation; tv 0.0853, measured 2026-12-05, docs/results/quickstart_xeon_0412;
129-141 s and tv 0.0886 on 2026-12-04, the machine's speed varying by the day; 137.5 and 147.9 s
on 2026-12-05 at 06:51-07:01 on a slower machine state, 125-134 steps/s, with the evaluation's
network in row chunks (eval.chunk_rows) 11.7 / 13.1 s against 14.2 / 14.5 s on the whole batch
in the alternating runs of the code before, the same tv; docs/results/quickstart_xeon_0655);
297 s on the earlier sessions' slower 2-core machine (tv 0.086 there).
With --config.model.matmul_dtype=bfloat16 (products with bfloat16 operands, on that Xeon's AMX):
84 s with a fresh compilation cache, tv 0.0896; sample.py tv 0.0910, w2 0.2324 (seed 1: tv
0.0904, w2 0.2156; float32's seed 1: tv 0.0921, w2 0.2107).
Smoke variant (tests): --config=configs/checkerboard.py:smoke
"""

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "checkerboard"
    return default.apply_variant(c, variant)
