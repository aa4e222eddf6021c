"""Diagnostics: straightness / path energy, exposure bias, radial spectra, compute profile.

Estimators are checked on cases with known answers: straight and rotating fields, the exact
velocity field of Gaussian data (whose sampling states have the training marginals), images with
known spectra.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import integrators, paths
from flowmatch.diagnostics import exposure, roofline, spectra, straightness
from configs_util import load_config  # noqa: E402  (tests/ is on sys.path)

# -- straightness and path energy ------------------------------------------------------------------


def _metrics(v, x0, **kwargs):
    sol = jax.jit(lambda x: straightness.solve_with_energy(v, x, **kwargs))(x0)
    x1, energy = sol.x
    return straightness.path_metrics(x0, x1, energy), x1


@pytest.mark.parametrize("kwargs", [dict(method="euler", num_steps=1),
                                    dict(method="rk4", num_steps=8),
                                    dict(method="dopri5", rtol=1e-6, atol=1e-6)])
def test_constant_velocity_is_straight(kwargs):
    c = jax.random.normal(jax.random.PRNGKey(0), (32, 3))
    x0 = jax.random.normal(jax.random.PRNGKey(1), (32, 3))
    m, x1 = _metrics(lambda t, x: c, x0, **kwargs)
    np.testing.assert_allclose(x1, x0 + c, rtol=1e-5, atol=1e-5)
    assert abs(m["straightness"]) < 1e-4 * m["displacement"]
    assert m["energy_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert m["path_energy"] == pytest.approx(float(jnp.mean(jnp.sum(c**2, 1))), rel=1e-5)


def test_straight_path_at_varying_speed():
    # x(t) = x0 + t^2 c: a straight line, but Liu's S = |c|^2 ∫(1 - 2t)^2 dt = |c|^2 / 3 and the
    # energy ratio ∫ 4 t^2 dt = 4/3 (RK4 integrates these polynomials exactly).
    c = jnp.array([[3.0, -1.0], [0.5, 2.0]])
    m, _ = _metrics(lambda t, x: 2.0 * t * c, jnp.zeros_like(c), method="rk4", num_steps=4)
    sq = float(jnp.mean(jnp.sum(c**2, 1)))
    assert m["straightness"] == pytest.approx(sq / 3.0, rel=1e-5)
    assert m["energy_ratio"] == pytest.approx(4.0 / 3.0, rel=1e-5)


def test_rotation_closed_form_and_liu_definition():
    # v = w J x rotates by angle w: |v| = w |x0|, |x1 - x0|^2 = 2 (1 - cos w) |x0|^2.
    w = 2.0
    J = jnp.array([[0.0, -1.0], [1.0, 0.0]])
    with jax.enable_x64(True):
        x0 = jax.random.normal(jax.random.PRNGKey(2), (16, 2), jnp.float64)
        v = lambda t, x: w * x @ J.T.astype(x.dtype)
        m, x1 = _metrics(v, x0, method="dopri5", rtol=1e-10, atol=1e-10)
        r2 = float(jnp.mean(jnp.sum(x0**2, 1)))
        assert m["path_energy"] == pytest.approx(w**2 * r2, rel=1e-8)
        assert m["straightness"] == pytest.approx((w**2 - 2 * (1 - math.cos(w))) * r2, rel=1e-7)
        assert m["energy_ratio"] == pytest.approx(w**2 / (2 * (1 - math.cos(w))), rel=1e-8)
        # Liu's integral taken literally, by quadrature on a dense saved trajectory.
        sol = jax.jit(lambda x: integrators.solve(v, x, method="rk4", num_steps=1000,
                                                  save_trajectory=True))(x0)
        d = sol.xs[-1] - sol.xs[0]
        integrand = jnp.mean(jnp.sum((d[None] - v(None, sol.xs)) ** 2, -1), -1)  # [T]
        direct = np.trapezoid(np.asarray(integrand), np.asarray(sol.ts))
        assert direct == pytest.approx(m["straightness"], rel=1e-5)


def test_npe_and_bad_shapes():
    x0 = np.zeros((4, 2))
    x1 = np.ones((4, 2))
    m = straightness.path_metrics(x0, x1, np.full(4, 3.0), w2_squared=2.0)
    assert m["npe"] == pytest.approx(0.5) and m["energy_ratio"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="energy"):
        straightness.path_metrics(x0, x1, np.ones(3))


# -- exposure bias ---------------------------------------------------------------------------------

MU, S, DIM = 0.7, 0.5, 16
PATH = paths.make_path("cond_ot")


def _gauss(t, x):
    """Posterior means (x1_hat, x0_hat) for x1 ~ N(MU, S^2 I) on the cond-OT path."""
    var = t**2 * S**2 + (1 - t) ** 2
    r = x - t * MU
    return MU + (t * S**2 / var) * r, ((1 - t) / var) * r


def _exact(t, x):
    x1, x0 = _gauss(t, x)
    return x1 - x0


def _biased(delta):
    # Removes (1 - delta) of the noise the exact field removes: delta > 0 leaves the states
    # noisier than the schedule says.
    def v(t, x):
        x1, x0 = _gauss(t, x)
        return x1 - (1.0 - delta) * x0

    return v


@pytest.fixture(scope="module")
def gauss_calibration():
    n = 2048
    data = MU + S * jax.random.normal(jax.random.PRNGKey(3), (n, DIM))
    noise = jax.random.normal(jax.random.PRNGKey(4), (n, DIM))
    return exposure.calibrate(_exact, PATH, data, noise, taus=np.linspace(0, 1, 65)), noise


def test_calibration_matches_closed_form(gauss_calibration):
    cal, _ = gauss_calibration
    tau = cal.taus
    exact = (1 - tau) ** 4 / (tau**2 * S**2 + (1 - tau) ** 2)  # sigma^4 / Var(x_tau)
    np.testing.assert_allclose(cal.stat, exact, rtol=0.03, atol=1e-6)
    assert np.all(np.diff(cal.envelope) <= 0)


def test_exact_field_has_nominal_noise_level(gauss_calibration):
    cal, noise = gauss_calibration
    tr = exposure.trajectory_statistic(_exact, PATH, noise, method="rk4", num_steps=16)
    rows = exposure.profile(cal, PATH, tr.ts, tr.stat, tr.stat_se)
    assert rows[0]["t_eff"] == pytest.approx(0.0, abs=1e-6)  # same noise: identical states
    inner = [r for r in rows if 0 < r["t"] < 1]
    for r in inner:
        assert r["ratio"] == pytest.approx(1.0, abs=0.02), r
        assert r["t_eff"] == pytest.approx(r["t"], abs=0.02), r
    assert exposure.summarize(rows)["mean_abs_log_ratio"] < 0.01


@pytest.mark.parametrize("delta, sign", [(0.3, 1), (-0.3, -1)])
def test_biased_field_is_detected_with_its_sign(gauss_calibration, delta, sign):
    cal, noise = gauss_calibration
    tr = exposure.trajectory_statistic(_biased(delta), PATH, noise, method="rk4", num_steps=16,
                                       v_model=_exact)
    rows = [r for r in exposure.profile(cal, PATH, tr.ts, tr.stat, tr.stat_se)
            if 0.2 <= r["t"] <= 0.9]
    assert all(sign * (r["ratio"] - 1.0) > 0.02 for r in rows), rows
    assert all(sign * (r["t"] - r["t_eff"]) > 0 for r in rows)


def test_effective_time_on_a_flat_stretch():
    taus = np.linspace(0, 1, 11)
    stat = np.where(taus < 0.5, 1.0, 2.0 * (1.0 - taus))  # flat on [0, 0.5], then falls
    cal = exposure.Calibration(taus=taus, stat=stat, stat_se=np.full(11, 0.01),
                               envelope=np.minimum.accumulate(stat), sigma=1 - taus)
    # Plain inversion lands at the end of the plateau; the nominal time is kept when consistent.
    assert exposure.effective_time(cal, 1.0) == pytest.approx(0.0)
    assert exposure.effective_time(cal, np.array([1.0]), np.array([0.3]))[0] == 0.3
    # A clear mismatch goes to the nearest time consistent within 2 standard errors: the
    # near edge of r = 0.6 +- 0.02 on the falling stretch, 2 (1 - tau) = 0.62.
    t_eff = exposure.effective_time(cal, np.array([0.6]), np.array([0.3]))[0]
    assert t_eff == pytest.approx(0.69, abs=1e-9)


def test_time_shifted_solve_without_shift_is_the_plain_solve():
    x0 = jax.random.normal(jax.random.PRNGKey(5), (8, DIM))
    grid = exposure.uniform_grid(5)
    for method in ("euler", "heun", "rk4"):
        plain = integrators.solve(_exact, x0, method=method, num_steps=5).x
        x, nfe = jax.jit(lambda x: exposure.time_shifted_solve(
            _exact, x, method=method, grid=grid, eval_times=grid[:-1]))(x0)
        np.testing.assert_allclose(x, plain, rtol=1e-6, atol=1e-6)
        assert nfe == integrators.nfe_for(method, 5)


def test_time_shift_schedule_and_euler_step():
    grid = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    tau = exposure.time_shift_schedule(grid, [0.3, 0.0, 0.6, 0.7, 1.0], max_shift=0.5)
    np.testing.assert_allclose(tau, [0.0, 0.125, 0.6, 0.7])  # tau_0 fixed; 0.0 clipped
    # Euler from a shifted time: x + (t_next - tau) v(tau, x).
    x0 = jnp.ones((2, DIM))
    x, _ = exposure.time_shifted_solve(_exact, x0, method="euler", grid=grid[:2],
                                       eval_times=np.array([0.1]))
    np.testing.assert_allclose(x, x0 + 0.15 * _exact(0.1, x0), rtol=1e-6)


def test_noise_scaling():
    x = jax.random.normal(jax.random.PRNGKey(6), (4, DIM))
    np.testing.assert_allclose(exposure.scale_noise(_exact, PATH, 1.0)(0.3, x), _exact(0.3, x),
                               rtol=1e-5, atol=1e-6)
    x1, x0 = _gauss(0.3, x)
    np.testing.assert_allclose(exposure.scale_noise(_exact, PATH, 2.0)(0.3, x), x1 - x0 / 2,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec, match", [("warp", "unknown correction"),
                                         ("eps_scale", "needs a factor"),
                                         ("eps_scale=x", "not a number"),
                                         ("time_shift=2", "takes no factor")])
def test_bad_corrections(spec, match):
    with pytest.raises(ValueError, match=match):
        exposure.parse_correction(spec)
    assert exposure.parse_correction("eps_scale=1.020").name == "eps_scale=1.02"


# -- radial spectra --------------------------------------------------------------------------------


def test_sinusoids_land_in_their_ring():
    n = 16
    yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    for (ky, kx), ring in (((0, 3), 3), ((4, 3), 5), ((2, 0), 2)):
        img = np.cos(2 * np.pi * (ky * yy + kx * xx) / n)[None, :, :, None]
        e = spectra.radial_profile(img, "sum")[0]
        assert e[ring] == pytest.approx(np.sum(img**2), rel=1e-9)
        assert np.sum(np.delete(e, ring)) < 1e-9 * e[ring]


def test_parseval_and_white_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 0.5, (512, 16, 16, 3))
    e = spectra.radial_profile(x, "sum")
    np.testing.assert_allclose(e.sum(1), np.sum(x**2, axis=(1, 2, 3)), rtol=1e-10)
    flat = spectra.radial_profile(x, "mean").mean(0)
    np.testing.assert_allclose(flat, 3 * 0.25, rtol=0.1)  # C sigma^2 in every ring
    # A non-square image: Parseval holds as well.
    y = rng.normal(size=(2, 8, 12, 1))
    np.testing.assert_allclose(spectra.radial_profile(y, "sum").sum(1), np.sum(y**2, (1, 2, 3)))


def test_reach_and_settle_times():
    ts = np.linspace(0, 1, 5)
    energy = np.array([[1.0, 0.0], [1.0, 0.1], [1.0, 0.95], [2.0, 0.5], [1.0, 1.0]])
    # ring 1 reaches 90% at t = 0.5 but falls back at 0.75: it reaches for good only at t = 1.
    np.testing.assert_allclose(spectra.reach_times(ts, energy, 0.9), [0.0, 1.0])
    np.testing.assert_allclose(spectra.reach_times(ts[:3], energy[:3], 0.9), [0.0, 0.5])
    # ring 0 leaves the band at 0.75 and returns at 1; ring 1 is within 10% only at the end.
    np.testing.assert_allclose(spectra.settle_times(ts, energy, 0.9), [1.0, 1.0])
    np.testing.assert_allclose(spectra.settle_times(ts, energy[:3], 0.9), [0.0, 0.5])


def test_spectral_trajectory_of_gaussian_images():
    x0 = jax.random.normal(jax.random.PRNGKey(7), (4, 8, 8, 1))
    ts, xs, x1s = spectra.spectral_trajectory(_exact, PATH, x0, method="heun", num_steps=4)
    assert ts.shape == (5,) and xs.shape == x1s.shape == (5, 4, 8, 8, 1)
    np.testing.assert_allclose(x1s[-1], xs[-1], atol=1e-6)  # at t = 1 the state is the data
    np.testing.assert_allclose(x1s[0], MU, atol=1e-6)       # at t = 0 the prediction is E x1
    assert spectra.profiles_over_time(x1s).shape == (5, 7)  # rings 0..6 of an 8 x 8 image


# -- compute profile -------------------------------------------------------------------------------


def test_cost_of_a_matmul():
    a, b = jnp.ones((32, 64)), jnp.ones((64, 128))
    c = roofline.cost(jax.jit(jnp.matmul).lower(a, b).compile())
    assert c["flops"] == 2 * 32 * 64 * 128
    assert c["bytes"] >= 4 * (32 * 64 + 64 * 128 + 32 * 128)
    assert c["intensity"] == pytest.approx(c["flops"] / c["bytes"])


def test_ridges_classify_and_crossover():
    ridges = roofline.ridge_points({"peak_flops": 1e11, "bandwidth": 1e10})
    assert ridges["this device"] == pytest.approx(10.0)
    assert ridges["NVIDIA H100 SXM"] == pytest.approx(494e12 / 3.35e12)
    rows = [{"model": "mlp", "what": "sample_eval", "batch": b, "intensity": i}
            for b, i in ((1, 0.5), (64, 12.0), (512, 80.0))]
    bound = [r["bound"]["this device"] for r in roofline.classify(rows, ridges)]
    assert bound == ["memory", "compute", "compute"]
    assert roofline.crossover(rows, 10.0) == {"mlp/sample_eval": 64}
    assert roofline.crossover(rows, 1e3) == {"mlp/sample_eval": None}
    # With both byte counts: memory-bound only if even the I/O-only intensity is below the ridge.
    both = [dict(r, intensity_io=10 * r["intensity"]) for r in rows]
    bound = [r["bound"]["this device"] for r in roofline.classify(both, ridges)]
    assert bound == ["memory", "compute", "compute"]
    bound = [r["bound"]["this device"] for r in roofline.classify(both[:1], {"this device": 2.0})]
    assert bound == ["either"]
    assert roofline.nbytes({"a": jnp.zeros((3, 4)), "b": None, "c": jnp.zeros(2, jnp.int8)}) == 50


def test_profile_model_intensity_grows_with_batch():
    rows = roofline.profile_model(load_config("moons"), (1, 256), time_calls=False)
    by = {(r["what"], r["batch"]): r for r in rows}
    for what in ("train_step", "sample_eval"):
        small, large = by[(what, 1)], by[(what, 256)]
        assert large["flops"] > 40 * small["flops"] > 0
        assert large["intensity"] > 10 * small["intensity"]
    assert by[("train_step", 256)]["flops"] > 2 * by[("sample_eval", 256)]["flops"]
    for r in rows:  # I/O bytes are the least traffic possible: at most XLA's count
        assert 0 < r["io_bytes"] <= r["bytes"] and r["intensity_io"] >= r["intensity"]


# -- reports and the script ------------------------------------------------------------------------


def test_spectra_report_files(tmp_path):
    from flowmatch.diagnostics import report
    x0 = jax.random.normal(jax.random.PRNGKey(8), (6, 8, 8, 1))
    entries = report.spectra_entries(_exact, PATH, x0, [("euler", 4, 4)], 0.9, "gauss")
    result = report.write_spectra(entries, 0.9, str(tmp_path))
    (e,) = result["entries"]
    assert len(e["reach_t"]) == len(e["rings"]) == 7 and e["t"][-1] == 1.0
    # Gaussian data with a constant mean: the prediction's energy grows to its final value.
    assert all(0.0 <= t <= 1.0 for t in e["reach_t"] + e["settle_t_x_t"])
    for name in ("spectra.json", "spectra.png", "spectra_reach.png"):
        assert (tmp_path / name).stat().st_size > 0


class _Toy:
    kind = "toy2d"

    def sample_reference(self, key, n):
        return np.asarray(jax.random.normal(key, (n, 2))) * 0.5 + 3.0


class _Pairs:
    kind, num_examples = "toy2d", 300

    def __init__(self):
        self.x0 = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
        self.x1 = self.x0 * 2.0 + 1.0  # x1 is a function of its own x0
        self.label = np.zeros(300, np.int32)


def _fake_exp(source, coupling, batch_size=64):
    from types import SimpleNamespace
    from flowmatch import couplings
    return SimpleNamespace(source=source, coupling=couplings.CouplingSettings(name=coupling),
                           config=SimpleNamespace(batch_size=batch_size),
                           conditional=lambda: False)


def test_calibration_pairs_are_joined_as_in_training():
    """The calibration's forward-process states use the run's own pairing: an exact OT coupling
    permutes the noise within each training-batch block to the optimal assignment; stored pairs
    (reflow) are used as stored."""
    from scipy.optimize import linear_sum_assignment
    from flowmatch.diagnostics import runs as diag_runs
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (160, 2)), np.float32)
    key = jax.random.PRNGKey(2)
    x0, x1, labels = diag_runs.training_pairs(_fake_exp(_Toy(), "independent"), key, noise)
    np.testing.assert_array_equal(x0, noise)
    assert labels is None
    x0_ot, x1_ot, _ = diag_runs.training_pairs(_fake_exp(_Toy(), "exact"), key, noise)
    np.testing.assert_array_equal(x1_ot, x1)  # same data, re-paired noise
    for start in (0, 64, 128):  # blocks of batch_size rows; the last one is short
        rows = slice(start, min(start + 64, 160))
        assert sorted(map(tuple, x0_ot[rows])) == sorted(map(tuple, noise[rows]))
        cost = ((x1[rows][:, None] - noise[rows][None]) ** 2).sum(-1)
        r, c = linear_sum_assignment(cost)
        assert ((x1_ot[rows] - x0_ot[rows]) ** 2).sum() == pytest.approx(cost[r, c].sum(), 1e-4)
        assert cost[r, c].sum() < ((x1[rows] - noise[rows]) ** 2).sum()
    p0, p1, _ = diag_runs.training_pairs(_fake_exp(_Pairs(), "independent"), key, noise[:100])
    assert p0.shape == (100, 2)
    np.testing.assert_allclose(p1, p0 * 2.0 + 1.0)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from flowmatch import train
    workdir = str(tmp_path_factory.mktemp("run"))
    train.train_and_evaluate(load_config("checkerboard"), workdir)
    return workdir


def _script(*args):
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, os.path.join(root, "scripts", "diagnose.py"), *args],
                          capture_output=True, text=True, timeout=600, cwd=root)


@pytest.mark.slow
def test_script(smoke_run, tmp_path):
    import json
    proc = _script(f"--workdir=cb={smoke_run}", f"--output={tmp_path}",
                   "--analyses=exposure,roofline", "--methods=euler", "--nfe=2,4",
                   "--num_samples=64", "--corrections=", "--mlp_batches=8", "--nomeasure_peaks",
                   "--roofline_configs=configs/moons.py:smoke")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "exposure_cb" / "exposure.json") as f:
        result = json.load(f)
    assert [(p["method"], p["nfe"]) for p in result["profiles"]] == [("euler", 2), ("euler", 4)]
    assert len(result["profiles"][1]["rows"]) == 5 and result["num_samples"] == 64
    with open(tmp_path / "roofline" / "roofline.json") as f:
        roof = json.load(f)
    assert {(r["what"], r["batch"]) for r in roof["rows"]} == {
        ("train_step", 8), ("sample_eval", 8)}
    assert all(r["bound"]["NVIDIA H100 SXM"] == "memory" for r in roof["rows"])
    for png in ("exposure_cb/exposure.png", "roofline/roofline.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    bad = _script(f"--output={tmp_path}", "--analyses=warp")
    assert bad.returncode == 2 and "unknown analyses" in bad.stderr
