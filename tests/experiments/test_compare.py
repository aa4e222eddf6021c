"""The integrator comparison: rows, files, NFE accounting, convergence to the reference, the
same samples as scripts/sample.py, errors."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flowmatch import integrators, metrics, objectives, paths, rng, sampling, training
from flowmatch.checks import ConfigError
from flowmatch.data import toy2d
from flowmatch.diagnostics import straightness
from flowmatch.experiments import compare, sample
from configs_util import load_config  # noqa: E402  (tests/ is on sys.path)
from runs_util import untrained_run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "compare_integrators.py")
# The smoke model's sinusoidal time embedding (sin(1000 t ...)) makes v(t, x) oscillate in t,
# so integrators only reach their asymptotic regime at a few hundred NFE: budgets go that high.
BUDGETS = (4, 64, 1024)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    # The smoke model's initial parameters (what a 4-step smoke training's EMA parameters are,
    # up to the init key), without compiling a train step: the comparison, not training, is
    # under test here.
    return untrained_run(load_config("checkerboard"), str(tmp_path_factory.mktemp("run")))


@pytest.fixture(scope="module")
def result(run_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("compare"))
    rows = compare.compare_integrators(run_dir, out, methods=["euler", "rk4", "dopri5"],
                                       nfe_budgets=BUDGETS, num_samples=64,
                                       tolerances=(1e-2, 1e-5))
    return rows, out


def test_writes_json_csv_and_png(result):
    rows, out = result
    with open(os.path.join(out, "integrators.json")) as f:
        assert json.load(f) == rows
    with open(os.path.join(out, "integrators.csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and tuple(table[0]) == compare.FIELDS
    with open(os.path.join(out, "integrators.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_rows(result):
    rows, _ = result
    required = {"method", "num_steps", "nfe", "metric", "value", "traj_error", "seconds"}
    for r in rows:
        assert required <= set(r)
        assert r["success"] and r["seconds"] > 0 and np.isfinite(r["traj_error"])
    # One tv and one w2 row per solve; dopri5 at NFE 4 (6 per step) is skipped.
    fixed = {(r["method"], r["budget"]) for r in rows if r["kind"] == "fixed"}
    assert fixed == {(m, b) for m in ("euler", "rk4", "dopri5") for b in BUDGETS
                     if b >= integrators.nfe_for(m, 1)}
    assert sorted(r["metric"] for r in rows if (r["method"], r["budget"]) == ("rk4", 64)) == [
        "tv", "w2"]
    assert {r["rtol"] for r in rows if r["kind"] == "adaptive"} == {1e-2, 1e-5}
    assert all(0.0 <= r["value"] <= 1.0 for r in rows if r["metric"] == "tv")


def test_fixed_grid_nfe_is_the_largest_within_budget(result):
    rows, _ = result
    for r in rows:
        if r["kind"] == "fixed":
            assert r["nfe"] == integrators.nfe_for(r["method"], r["num_steps"]) <= r["budget"]
            assert integrators.nfe_for(r["method"], r["num_steps"] + 1) > r["budget"]


def _errors(rows, method, kind="fixed"):
    pts = sorted({(r["nfe"], r["traj_error"]) for r in rows
                  if r["method"] == method and r["kind"] == kind})
    return [e for _, e in pts]


def test_errors_shrink_towards_the_reference(result):
    rows, _ = result
    ref = [r for r in rows if r["kind"] == "reference"]
    assert ref and all(r["traj_error"] == 0.0 and r["method"] == compare.REFERENCE_METHOD
                       for r in ref)
    rk4 = _errors(rows, "rk4")
    assert len(rk4) == 3 and all(a > b for a, b in zip(rk4, rk4[1:]))
    # Independent solvers converge to the reference: it is accurate, not just self-consistent.
    assert rk4[-1] < 1e-2 * rk4[0]
    tight, loose = _errors(rows, "dopri5", "adaptive")[::-1]
    assert tight < loose and tight < 1e-3
    adaptive = [r for r in rows if r["kind"] == "adaptive"]
    assert all(r["nfe"] > 0 and r["num_steps"] > 0 for r in adaptive)


def test_same_samples_as_the_sample_script(run_dir, result, tmp_path):
    """The rows' samples are those of scripts/sample.py for the same run, seed and settings (one
    key layout): the same tv against the same reference stream."""
    rows, _ = result
    out = sample.sample_to_file(run_dir, str(tmp_path / "s.npz"), num_samples=64,
                                method="euler", num_steps=4, seed=0)
    row = next(r for r in rows if (r["method"], r["budget"], r["metric"]) == ("euler", 4, "tv"))
    assert out["nfe"] == row["nfe"] == 4
    assert row["value"] == out["tv"]


def test_chunks_and_nll(run_dir, tmp_path):
    chunked = compare.compare_integrators(run_dir, str(tmp_path), methods=["euler"],
                                          nfe_budgets=(64,), num_samples=64, tolerances=(),
                                          chunk_size=25, nll=True, path_metrics=False,
                                          reference_tol=1e-5)
    # (reference_tol 1e-5: its NLL is within 1e-4 nats of 1e-7's, at ~1/10 of the steps; the
    # default's float32-limited reference NLL costs ~3 s of CPU per chunk)
    # Chunks of 25 (25 + 25 + 14, the last one padded) draw the noise as sample.draw does.
    run = training.restore(run_dir)
    drawn = sample.draw(run, 64, seed=0, chunk_size=25, method="euler", num_steps=64)
    cfg = run.components.settings.eval
    ref = toy2d.sample_toy("checkerboard", rng.seed_stream(0, "reference"), cfg.num_tv_samples)
    tv = metrics.tv_distance(drawn.x, ref, toy2d.toy_box("checkerboard"), bins=cfg.tv_bins)
    got = {r["metric"]: r["value"] for r in chunked if r["kind"] == "fixed"}
    assert got["tv"] == pytest.approx(tv, abs=1e-12)
    nll = {r["kind"]: r["value"] for r in chunked if r["metric"] == "nll"}
    assert set(nll) == {"reference", "fixed"} and all(np.isfinite(list(nll.values())))
    assert nll["fixed"] == pytest.approx(nll["reference"], abs=0.1)


def test_solver_and_sde_methods_on_the_same_footing(run_dir, tmp_path):
    """The registry's other methods compare like the integrators: the same budgets and source
    chunks, and (the SDE's noise from each chunk's seed-derived key) scripts/sample.py's
    samples; no path metrics or NLL, which belong to an ODE solve."""
    methods = ["heun", "dpmpp_2m", "sde_euler"]
    rows = compare.compare_integrators(run_dir, str(tmp_path), methods=methods, nfe_budgets=(8,),
                                       num_samples=64, tolerances=(), chunk_size=25, nll=True,
                                       reference_tol=1e-5)
    fixed = {(r["method"], r["metric"]): r for r in rows if r["kind"] == "fixed"}
    assert set(fixed) == {(m, k) for m in methods for k in ("tv", "w2")} | {("heun", "nll")}
    run = training.restore(run_dir)
    cfg = run.components.settings.eval
    ref = toy2d.sample_toy("checkerboard", rng.seed_stream(0, "reference"), cfg.num_tv_samples)
    for method in ("dpmpp_2m", "sde_euler"):
        row = fixed[(method, "tv")]
        assert row["nfe"] == row["num_steps"] == 8 and row["success"], row
        assert all(row[k] is None for k in compare.PATH_METRICS)
        drawn = sample.draw(run, 64, seed=0, chunk_size=25, method=method, num_steps=8)
        tv = metrics.tv_distance(drawn.x, ref, toy2d.toy_box("checkerboard"), bins=cfg.tv_bins)
        assert row["value"] == pytest.approx(tv, abs=1e-12), method
    assert np.isfinite(fixed[("heun", "w2")]["straightness"])
    # The SDE's samples are not the ODE's (noise), the multistep solver's approach them.
    assert fixed[("sde_euler", "tv")]["traj_error"] > fixed[("dpmpp_2m", "tv")]["traj_error"]


@pytest.mark.parametrize("kept_seconds, calls", [(1e9, 4), (0.0, 3)])
def test_a_long_first_call_is_kept_not_repeated(monkeypatch, kept_seconds, calls):
    # A sampler's first call is a warm-up (untimed, repeated) unless it took over
    # FIRST_CALL_KEPT_SECONDS; then its result and time are kept: 3 chunks, 4 or 3 solves.
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    monkeypatch.setattr(compare, "FIRST_CALL_KEPT_SECONDS", kept_seconds)
    solved = []

    def sampler(params, x0, key, cond):
        del key, cond
        jax.debug.callback(lambda: solved.append(1))
        return sampling.Samples(x=x0 * params, nfe=jnp.int32(3), success=jnp.bool_(True))

    chunks = [(jnp.full((2, 2), float(c)), None) for c in range(3)]
    solves = compare._Solves(None, jnp.float32(2.0), chunks, 6, keys=[None] * 3)
    outs, seconds = solves._timed(sampler)
    jax.block_until_ready(outs)
    assert len(solved) == calls and seconds > 0
    np.testing.assert_array_equal(np.concatenate([o.x for o in outs]),
                                  np.repeat([0.0, 2.0, 4.0], 2)[:, None] * np.ones((1, 2)))


def test_adaptive_steps_are_the_solves_own(run_dir):
    # An adaptive row's num_steps is the largest count of accepted steps over the chunks, read
    # off the timed solve's Samples (no second solve for it).
    run = training.restore(run_dir)
    model, params = run.components.model_fn(), run.state.ema_params
    chunks = compare.source_chunks(run.components, 40, 20, 0)
    solves = compare._Solves(model, params, chunks, 40, keys=compare.sampler_keys(40, 20, 0))
    got = solves("dopri5", tol=1e-3)
    accepted = [int(integrators.solve(model.velocity_fn(params, cond), x0, method="dopri5",
                                      rtol=1e-3, atol=1e-3, t0=0.0, t1=model.t_end).num_accepted)
                for x0, cond in chunks]
    assert got["num_steps"] == max(accepted) > 0 and got["success"]
    assert got["energy"].shape == (40,) and np.all(got["energy"] > 0)


def test_a_fixed_grid_row_is_one_solve_carrying_its_path_energy(run_dir):
    # The timed solve carries the energy: its samples are the registry sampler's bit for bit,
    # its energy and x(t_end) those of straightness.solve_with_energy.
    import jax  # pylint: disable=g-import-not-at-top
    run = training.restore(run_dir)
    model, params = run.components.model_fn(), run.state.ema_params
    chunks = compare.source_chunks(run.components, 40, 20, 0)
    solves = compare._Solves(model, params, chunks, 40, keys=compare.sampler_keys(40, 20, 0))
    got = solves("heun", num_steps=7)
    plain = sampling.make_sampler(model, "heun", num_steps=7)
    want = [plain(params, x0, None, cond) for x0, cond in chunks]
    np.testing.assert_array_equal(got["x"], np.concatenate([np.asarray(o.x) for o in want]))
    assert got["nfe"] == int(want[0].nfe) == 14 and got["success"]
    solved = [jax.jit(lambda p, x, c=cond: straightness.solve_with_energy(
        model.velocity_fn(p, c), x, method="heun", num_steps=7, t0=0.0, t1=model.t_end).x)(
            params, x0) for x0, cond in chunks]
    np.testing.assert_array_equal(got["energy"], np.concatenate([e for _, e in solved]))
    np.testing.assert_array_equal(got["x_end"], got["x"])  # flow matching: no denoising step


def test_a_denoising_models_fixed_grid_row_with_energy_is_the_registry_sampler():
    # A DDPM model's samples are its data estimate at t_end (one more evaluation); x_end is the
    # ODE state there, which the path metrics use.
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    ddpm = objectives.build_objective("ddpm", path=paths.make_path("cond_ot"),
                                      num_timesteps=100)
    model = sampling.ModelFn.from_objective(lambda p, x, t, c: p * x, ddpm)
    x0 = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    solves = compare._Solves(model, jnp.float32(0.3), [(x0, None)], 16, keys=[None])
    samples, (x_end, energy) = solves._sampler_with_energy(model, "euler", 5, None, 0)(
        jnp.float32(0.3), x0, None)
    want = sampling.make_sampler(model, "euler", num_steps=5)(jnp.float32(0.3), x0, None)
    np.testing.assert_array_equal(samples.x, want.x)
    assert int(samples.nfe) == int(want.nfe) == 6
    assert not np.array_equal(samples.x, x_end) and np.all(np.asarray(energy) > 0)


def test_the_reference_is_one_solve_its_energy_on_its_own_steps(run_dir):
    # The reference's energy rides along without error control: its samples and accepted steps
    # are the plain sampler's, its energy that of the same steps; another adaptive row's energy
    # comes from a second solve with the energy under error control.
    import jax  # pylint: disable=g-import-not-at-top
    run = training.restore(run_dir)
    model, params = run.components.model_fn(), run.state.ema_params
    chunks = compare.source_chunks(run.components, 20, 20, 0)
    solves = compare._Solves(model, params, chunks, 20, keys=compare.sampler_keys(20, 20, 0))
    x0, cond = chunks[0]
    for tol, on_steps in ((1e-7, True), (1e-3, False)):
        kwargs = dict(rtol=tol, atol=tol, max_steps=compare.REFERENCE_MAX_STEPS)
        got = solves(compare.REFERENCE_METHOD, tol=tol, max_steps=compare.REFERENCE_MAX_STEPS,
                     energy_on_steps=on_steps)
        plain = sampling.make_sampler(model, compare.REFERENCE_METHOD, **kwargs)(
            params, x0, None, cond)
        np.testing.assert_array_equal(got["x"], np.asarray(plain.x))
        assert got["num_steps"] == int(plain.steps) > 0 and got["nfe"] == int(plain.nfe)
        want = jax.jit(lambda p, x, kw=kwargs, e=not on_steps: straightness.solve_with_energy(
            model.velocity_fn(p, cond), x, energy_error=e, method=compare.REFERENCE_METHOD,
            t0=0.0, t1=model.t_end, **kw).x[1])(params, x0)
        np.testing.assert_array_equal(got["energy"], np.asarray(want, np.float64))
    # With the energy under control the loose solve takes other steps than the plain one.
    controlled = jax.jit(lambda p, x: straightness.solve_with_energy(
        model.velocity_fn(p, cond), x, method="dopri5", rtol=1e-3, atol=1e-3, t0=0.0,
        t1=model.t_end))(params, x0)
    assert not np.array_equal(np.asarray(controlled.x[0]), np.asarray(plain.x))


def test_budgets_count_the_denoising_evaluation():
    """A DDPM model stops at t_end < 1 and denoises (one more evaluation): the largest grid whose
    NFE, that evaluation included, fits each budget."""
    ddpm = objectives.build_objective("ddpm", path=paths.make_path("cond_ot"),
                                      num_timesteps=100)
    model = sampling.ModelFn.from_objective(lambda p, x, t, c: x, ddpm)
    args = compare._check_arguments(["euler", "heun"], (2, 4, 9), (), 1e-7, None, None, (), 0.5)
    plan = compare._plan(args, model)
    assert plan == [("euler", 2, 1), ("euler", 4, 3), ("euler", 9, 8), ("heun", 4, 1),
                    ("heun", 9, 4)]
    assert all(sampling.nfe(m, k, model) <= b < sampling.nfe(m, k + 1, model)
               for m, b, k in plan)
    assert compare._plan(args, None)[0] == ("euler", 2, 2)  # flow matching: no extra evaluation
    # DDPM's discrete-time samplers take at most T = 100 steps; the SDE takes its last step's
    # denoising evaluation into the budget like the ODE.
    args = compare._check_arguments(["ddim", "dpmpp_2m", "sde_euler"], (8, 200), (), 1e-7,
                                    None, None, (), 0.5)
    assert compare._plan(args, model) == [("ddim", 8, 8), ("dpmpp_2m", 8, 8),
                                          ("sde_euler", 8, 7), ("sde_euler", 200, 199)]


def test_path_metrics(result):
    rows, _ = result
    for r in rows:
        assert r["correction"] == compare.NO_CORRECTION
        if r["kind"] == "fixed" and r["method"] == "dopri5":
            # a negative quadrature weight (b_5): unavailable, never a misleading number
            assert all(r[k] is None for k in compare.PATH_METRICS), r
            continue
        assert all(np.isfinite(r[k]) for k in compare.PATH_METRICS), r
        assert r["npe"] >= 0.0
        if r["method"] in ("euler", "rk4"):  # positive weights: PE >= |d|^2 (Cauchy-Schwarz)
            assert r["energy_ratio"] >= 1.0 - 1e-6 and r["straightness"] >= -1e-6
    # Converged solves agree with the reference's path energy.
    ref = next(r for r in rows if r["kind"] == "reference")
    fine = next(r for r in rows if (r["method"], r["budget"]) == ("rk4", BUDGETS[-1]))
    assert fine["energy_ratio"] == pytest.approx(ref["energy_ratio"], rel=1e-3)
    assert fine["straightness"] == pytest.approx(ref["straightness"], rel=1e-2, abs=1e-4)


def test_corrections(run_dir, tmp_path):
    rows = compare.compare_integrators(run_dir, str(tmp_path), methods=["heun"], nfe_budgets=(8,),
                                       num_samples=64, tolerances=(),
                                       corrections=["time_shift", "eps_scale=1.05"])
    fixed = {r["correction"]: r for r in rows if r["kind"] == "fixed" and r["metric"] == "w2"}
    assert set(fixed) == {"none", "time_shift", "eps_scale=1.05"}
    assert all(r["nfe"] == 8 and r["success"] for r in fixed.values())
    assert fixed["time_shift"]["straightness"] is None  # its steps follow no single field
    assert np.isfinite(fixed["eps_scale=1.05"]["energy_ratio"])
    # A correction changes the solve (the model is not exact), but not by much.
    for name in ("time_shift", "eps_scale=1.05"):
        assert 0 < fixed[name]["traj_error"] < 1.0
    with pytest.raises(ConfigError, match="unknown correction"):
        compare.compare_integrators(run_dir, str(tmp_path), corrections=["warp"])
    with pytest.raises(ConfigError, match="max_shift"):
        compare.compare_integrators(run_dir, str(tmp_path), corrections=["time_shift"],
                                    max_shift=1.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(methods=["rk5"]), "unknown sampling method 'rk5'"),
    (dict(methods=[]), "no methods"),
    (dict(nfe_budgets=(4, 0)), "positive integers"),
    (dict(nfe_budgets=(2.5,)), "positive integers"),
    (dict(nfe_budgets=()), "no NFE budgets"),
    (dict(tolerances=(-1e-3,)), "positive numbers"),
    (dict(num_samples=0), "num_samples"),
    (dict(methods=["rk4"], nfe_budgets=(2, 3)), "nothing to compare"),
])
def test_bad_arguments(kwargs, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        compare.compare_integrators(str(tmp_path), str(tmp_path / "out"), **kwargs)


def test_missing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        compare.compare_integrators(str(tmp_path), str(tmp_path / "out"), methods=["euler"])


def _script(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_script(run_dir, tmp_path):
    out = tmp_path / "cli"
    # 25 samples (one chunk) and heun at 8 NFE: test_solver_and_sde_methods_on_the_same_footing's
    # chunk shape and heun solve (their programs come from the session's compilation cache),
    # and the script's 1e-7 reference NLL over 25 points, not 64.
    proc = _script(f"--workdir={run_dir}", f"--output={out}", "--methods=euler,heun",
                   "--nfe=8", "--num_samples=25", "--tolerances=", "--nll")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for ext in ("json", "csv", "png"):
        assert (out / f"integrators.{ext}").exists()
    with open(out / "integrators.json") as f:
        rows = json.load(f)
    assert {(r["method"], r["nfe"], r["num_steps"]) for r in rows if r["kind"] == "fixed"} == {
        ("euler", 8, 8), ("heun", 8, 4)}
    assert {r["metric"] for r in rows} == {"tv", "w2", "nll"}
    assert "traj_error" in proc.stdout  # the printed table
    # The reference is announced before it starts (the longest solve) and reported after.
    reference = next(r for r in rows if r["kind"] == "reference")
    assert reference["rtol"] == 1e-7
    assert "the reference solve, dopri5 at rtol = atol = 1e-07" in proc.stdout
    assert f"the reference took {reference['nfe']:,} NFE" in proc.stdout


@pytest.mark.parametrize("flag, match", [
    ("--methods=euler,rk5", "unknown sampling method 'rk5'"),
    ("--nfe=4,x", "--nfe must be a comma-separated list of positive integers"),
    ("--reference_tol=0", "reference_tol must be a positive number"),
])
def test_script_bad_input(flag, match, run_dir, tmp_path):
    proc = _script(f"--workdir={run_dir}", f"--output={tmp_path}", flag)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and match in lines[-1]
    assert "Traceback" not in proc.stderr
