"""FM vs DDPM on 2-D moons: same MLP, data and training budget; tv and w2 over an NFE grid.

Run (2 CPU cores; measured 6 min 24 s wall, 383 s CPU time, with one other job on the machine):
  python scripts/benchmark_ddpm.py --config=configs/benchmark/moons.py --workdir=runs/bench_moons
That time predates the solver/SDE rows and NFE 10: sampling the grid with them, at
--config.benchmark.num_samples=50000 '--config.benchmark.nfe=(4,8,10,16,32)'
'--config.benchmark.tolerances=(1e-2,1e-3)', took 24 min wall (11 min CPU) on 2 loaded cores,
the 1,000-step ancestral run 390 s of it.
Writes runs/bench_moons/benchmark.{json,csv,png}, benchmark_wide.csv (a column per metric) and
benchmark_best.{json,csv}; --config.benchmark.figure_formats="('png', 'pdf')" adds vector
figures.  See docs/benchmarks.md.
Smoke variant (tests): --config=configs/benchmark/moons.py:smoke
"""

import ml_collections

from configs import default


def get_config(variant=""):
    c = default.get_config()
    c.data.name = "moons"
    # A narrower network than configs/moons.py keeps 1,000-step ancestral sampling of 100,000
    # points affordable on a CPU; both models get exactly this network and budget.
    c.model.hidden_sizes = (128, 128, 128)
    c.num_train_steps = 10_000
    c.batch_size = 512
    c.eval_every_steps = 10_000
    c.objective.beta_schedule = "linear"
    c.objective.num_timesteps = 1000
    c.benchmark = ml_collections.ConfigDict(dict(
        figure_formats=("png",),  # add "pdf" or "svg" for vector figures
        seed=0, fm_prediction="velocity", ddpm_prediction="eps",
        nfe=(4, 8, 10, 16, 32, 64), ode_methods=("euler", "heun", "rk4", "dopri5"),
        tolerances=(1e-2, 1e-3, 1e-4), num_samples=100_000, num_bpd_images=0, bpd_tol=1e-4,
        vlb_terms=0,
        # Run on both models at every budget (labelled by method name).
        solver_methods=("dpmpp_2m", "dpmpp_3m", "unipc"), sde_methods=("sde_euler",)))
    c = default.apply_variant(c, variant)
    if variant == "smoke":
        c.objective.num_timesteps = 50
        c.benchmark.nfe = (4,)
        c.benchmark.ode_methods = ("euler", "dopri5")
        c.benchmark.tolerances = (1e-2,)
        c.benchmark.num_samples = 2_000
        c.benchmark.solver_methods = ("dpmpp_2m",)
        c.benchmark.sde_methods = ("sde_euler",)
    return c
