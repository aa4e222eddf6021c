"""FM vs DDPM on the 8x8 digits: same U-Net (configs/digits.py), data and budget; the Frechet
distance in a digits classifier's feature space (`fd`) over an NFE grid, and held-out bits/dim
(exact likelihood for fm, the variational bound for ddpm).

Run (2 CPU cores):
  python scripts/benchmark_ddpm.py --config=configs/benchmark/digits.py --workdir=runs/bench_digits
Measured: 37 min wall on 2 cores shared with four other jobs (800 s CPU time); fm fd about 1.85
from NFE 8 on, ddpm 1.31 with 1,000 ancestral steps, 2.3 with its ODE samplers; real-data floor
1.13; bits/dim fm 4.74, ddpm 3.14 (README "Flow matching vs DDPM").
Smoke variant (tests): --config=configs/benchmark/digits.py:smoke
"""

import importlib.util
import os

import ml_collections

from configs import default


def _digits_config(variant):
    # configs/digits.py by path (config files are loaded by path, not as a package).
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "digits.py")
    spec = importlib.util.spec_from_file_location("flowmatch_config_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def get_config(variant=""):
    c = _digits_config(variant)
    c.objective.beta_schedule = "linear"
    c.objective.num_timesteps = 1000
    c.benchmark = ml_collections.ConfigDict(dict(
        figure_formats=("png",),  # add "pdf" or "svg" for vector figures
        seed=0, fm_prediction="velocity", ddpm_prediction="eps",
        nfe=(4, 8, 10, 16, 32, 64), ode_methods=("euler", "heun", "rk4", "dopri5"),
        tolerances=(1e-2, 1e-3), num_samples=1_000, num_bpd_images=200, bpd_tol=1e-4,
        vlb_terms=100,
        # Run on both models at every budget (labelled by method name).
        solver_methods=("dpmpp_2m", "dpmpp_3m", "unipc"), sde_methods=("sde_euler",)))
    if variant == "smoke":
        c.objective.num_timesteps = 50
        c.benchmark.nfe = (4,)
        c.benchmark.ode_methods = ("euler",)
        c.benchmark.tolerances = ()
        c.benchmark.num_samples = 64
        c.benchmark.solver_methods = ()  # the moons smoke run tests these rows
        c.benchmark.sde_methods = ()
        c.benchmark.num_bpd_images = 8
        c.benchmark.vlb_terms = 4
        c.benchmark.bpd_tol = 1e-2
    return c
