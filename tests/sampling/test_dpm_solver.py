"""DPM-Solver++ (2M, 3M) and UniPC: convergence orders against the closed-form probability-flow
map of Gaussian data (DDPM eps model and flow-matching velocity model), order 1 = DDIM, exactness
of the third-order step on quadratic data predictions, grids, NFE and determinism."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import objectives, paths, schedules, sampling
from flowmatch.sampling import dpm_solver, logsnr
from gaussian_oracle import MU, SD, exact_apply

NOMINAL = {"dpmpp_2m": 2, "dpmpp_3m": 3, "unipc": 3}


def flow_model(prediction="velocity"):
    path = paths.make_path("cond_ot")
    return sampling.ModelFn(exact_apply(path, prediction), path, prediction)


def ddpm_model(prediction="eps", schedule="linear", T=1000):
    obj = objectives.DDPM(schedule, T, prediction=prediction)
    return sampling.ModelFn.from_objective(exact_apply(obj.path, obj.parametrisation), obj)


def exact_output(model, x, times, steps):
    """The closed form: for Gaussian data the flow map from t_0 to t_{K-1} keeps the standardized
    coordinate (x - alpha mu) / sqrt(alpha^2 sd^2 + sigma^2); then the data estimate there."""
    ends = None if steps is None else np.array([steps[0], steps[-1]])
    s = logsnr.schedule_at(model, np.array([times[0], times[-1]]), ends)
    (a0, a1), (s0, s1) = s.alpha, s.sigma
    v0, v1 = np.sqrt(a0**2 * SD**2 + s0**2), np.sqrt(a1**2 * SD**2 + s1**2)
    x_end = a1 * MU + v1 * (np.asarray(x, np.float64) - a0 * MU) / v0
    return MU + a1 * SD**2 * (x_end - a1 * MU) / v1**2


def measured_order(model, method, step_counts, **options):
    x0 = jax.random.normal(jax.random.PRNGKey(0), (64, 2), jnp.float64)
    errors = []
    for k in step_counts:
        out = jax.jit(sampling.make_sampler(model, method, num_steps=k, **options))(None, x0, None)
        assert int(out.nfe) == k
        times, steps = dpm_solver.grid(model, k, options.get("spacing", "logsnr"),
                                       options.get("t_min"), options.get("t_max"))
        errors.append(np.abs(np.asarray(out.x) - exact_output(model, x0, times, steps)).max())
    return -np.polyfit(np.log(step_counts), np.log(errors), 1)[0], errors


STEPS = [32, 64, 96]


@pytest.mark.parametrize("method", sorted(NOMINAL))
def test_order_on_a_flow_matching_velocity_model(method):
    """cond-OT, float64, lambda from -5 to 0 (t_max = 0.5).  On the full range (to lambda = 5)
    3M converges faster than its order (measured 4.2): for this problem its leading error
    integrates to a boundary term that vanishes where the data estimate stops moving."""
    with jax.enable_x64(True):
        order, errors = measured_order(flow_model(), method, STEPS, t_max=0.5)
    assert abs(order - NOMINAL[method]) < 0.3, (order, errors)


@pytest.mark.parametrize("method", sorted(NOMINAL))
def test_order_on_a_ddpm_eps_model(method):
    """The DDPM model's own steps (logSNR spacing, step T-1 to 0, then its data estimate).
    3M: at least its nominal order (measured 4.35 here, for the reason above: a DDPM model's
    grid always spans its full lambda range; its formula is pinned by the exactness test below)."""
    with jax.enable_x64(True):
        order, errors = measured_order(ddpm_model(), method, STEPS)
    if method == "dpmpp_3m":
        assert NOMINAL[method] - 0.3 < order < NOMINAL[method] + 2.0, (order, errors)
    else:
        assert abs(order - NOMINAL[method]) < 0.3, (order, errors)


def test_third_order_step_is_exact_on_quadratic_data_predictions():
    """The 3M step integrates the quadratic through the last three data predictions exactly:
    with D(lambda) = c0 + c1 lambda + c2 lambda^2 (uneven steps), x_t = (sigma_t / sigma_s) x_s +
    sigma_t int e^lambda D is reproduced to rounding.  (The authors' update, with D2 half as
    large, is off here by (h^2 phi_3 c2) alpha_t.)"""
    lam = np.array([-1.3, -0.6, 0.2, 0.7])
    alpha = 1.0 / np.sqrt(1.0 + np.exp(-2.0 * lam))
    s = schedules.ScheduleOutput(alpha, alpha * np.exp(-lam), None, None)
    c = (0.3, -1.1, 0.45)
    D = c[0] + c[1] * lam + c[2] * lam**2
    antiderivative = np.exp(lam) * (c[0] + c[1] * (lam - 1) + c[2] * (lam**2 - 2 * lam + 2))
    x_s = 0.8
    exact = s.sigma[3] / s.sigma[2] * x_s + s.sigma[3] * (antiderivative[3] - antiderivative[2])
    coeffs = dpm_solver.coefficients(s, [1, 2, 3], "dpmpp")
    step = coeffs["a"][2] * x_s + coeffs["p"][2] @ D[2::-1]
    assert abs(step - exact) < 1e-12 * abs(exact)


@pytest.mark.parametrize("spacing,clip", [("leading", False), ("leading", True), ("logsnr", False)])
def test_order_one_is_ddim(spacing, clip):
    """DPM-Solver++ of order 1 on a DDPM model's steps is DDIM (eta = 0) on the same steps, the
    last step into t = 1 being the data estimate in both (float32, to rounding)."""
    model = ddpm_model("eps", "cosine")
    x0 = jax.random.normal(jax.random.PRNGKey(1), (128, 2))
    out = jax.jit(dpm_solver.dpm_solver_sampler(model, num_steps=10, order=1, spacing=spacing,
                                                clip_denoised=clip))(None, x0, None)
    if spacing == "logsnr":  # not a DDIM spacing: Song et al.'s eq. 12 by hand on the same steps
        steps = dpm_solver.grid(model, 10, "logsnr")[1]
        assert steps[0] == 999 and steps[-1] == 0
        ddim = jax.jit(_ddim_on_steps(model, steps))(None, x0)
    else:
        ddim = jax.jit(sampling.make_sampler(model, "ddim", num_steps=10, spacing=spacing,
                                             clip_denoised=clip))(None, x0, None).x
    np.testing.assert_allclose(out.x, ddim, rtol=2e-5, atol=2e-5)
    assert int(out.nfe) == 10


def _ddim_on_steps(model, steps):
    """Song et al.'s eq. 12 (eta = 0) on the given steps, noisiest first, then into t = 1."""
    abar = model.path.schedule.alphas_cumprod

    def run(params, x):
        for j, i in enumerate(steps):
            t = jnp.full((x.shape[0],), model.path.schedule.time(int(i)), x.dtype)
            a, s = math.sqrt(abar[i]), math.sqrt(1 - abar[i])
            eps = model.apply(params, x, t, None)
            ap = abar[steps[j + 1]] if j + 1 < len(steps) else 1.0
            x = math.sqrt(ap) * (x - s * eps) / a + math.sqrt(1 - ap) * eps
        return x

    return run


def test_every_parametrisation_gives_the_same_samples():
    """The solvers see a model only through its data estimate: eps, x0 and v DDPM models of
    the same field (and velocity / x1 flow models) give the same samples."""
    x0 = jax.random.normal(jax.random.PRNGKey(2), (128, 2))
    for models in ([ddpm_model(p) for p in objectives.DDPM_PREDICTIONS],
                   [flow_model(p) for p in ("velocity", "x1")]):
        outs = [jax.jit(sampling.make_sampler(m, "dpmpp_2m", num_steps=12))(None, x0, None).x
                for m in models]
        for other in outs[1:]:
            np.testing.assert_allclose(other, outs[0], rtol=1e-4, atol=1e-4)


def test_at_ten_evaluations_the_multistep_solvers_beat_ddim():
    """DDPM at its fastest: against the closed form, 10 evaluations of 2M / 3M / UniPC land far
    closer than DDIM's 10 (eps model, logSNR steps)."""
    model = ddpm_model()
    x0 = jax.random.normal(jax.random.PRNGKey(3), (256, 2))
    times, steps = dpm_solver.grid(model, 10, "logsnr")
    want = exact_output(model, np.asarray(x0), times, steps)
    err = {m: np.abs(np.asarray(jax.jit(sampling.make_sampler(model, m, num_steps=10))(
        None, x0, None).x) - want).max() for m in NOMINAL}
    ddim = jax.jit(dpm_solver.dpm_solver_sampler(model, num_steps=10, order=1))(None, x0, None)
    err_ddim = np.abs(np.asarray(ddim.x) - want).max()
    assert all(e < err_ddim / 3 for e in err.values()), (err, err_ddim)


def test_grids_and_warm_up():
    ddpm, flow = ddpm_model(), flow_model()
    T = 1000
    for k in (1, 2, 10, 200, T):
        steps = logsnr.logsnr_steps(ddpm.path.schedule, k)
        assert len(steps) == k and np.all(np.diff(steps) > 0)
        assert steps[-1] == T - 1 and (k == 1 or steps[0] == 0)
    times, steps = dpm_solver.grid(flow, 8)
    lam = logsnr.logsnr(logsnr.schedule_at(flow, times))
    np.testing.assert_allclose(lam, np.linspace(-5.0, 5.0, 8), atol=1e-5)
    assert steps is None
    # warm-up, and lower orders at the end for few steps (DPM-Solver: K < 10; UniPC: always)
    assert dpm_solver.step_orders(5, 3, True, 10) == [1, 2, 3, 2]
    assert dpm_solver.step_orders(12, 3, True, 10) == [1, 2] + [3] * 9
    assert dpm_solver.step_orders(12, 2, True, None)[-1] == 2
    assert dpm_solver.step_orders(5, 3, False, 10) == [1, 2, 3, 3]


def test_nfe_counts_and_no_randomness():
    """K evaluations for any model (the last is the data estimate); the key is unused."""
    x0 = jax.random.normal(jax.random.PRNGKey(4), (32, 2))
    for model, method, k in ((ddpm_model(), "unipc", 7), (flow_model(), "dpmpp_3m", 7),
                             (ddpm_model(), "dpmpp_2m", 1)):
        sampler = jax.jit(sampling.make_sampler(model, method, num_steps=k))
        a, b = sampler(None, x0, jax.random.PRNGKey(0)), sampler(None, x0, None)
        np.testing.assert_array_equal(a.x, b.x)
        assert int(a.nfe) == k == sampling.nfe(method, k, model) == int(a.steps)
        assert bool(a.success)


ORACLE = {"dpmpp_2m": ("DPMSolverMultistepScheduler", 2), "dpmpp_1": ("DPMSolverMultistepScheduler", 1),
          "unipc": ("UniPCMultistepScheduler", 2), "dpmpp_3m": ("DPMSolverMultistepScheduler", 3)}


def diffusers_samples(name, model, steps, x0):
    """diffusers' scheduler `name` (solver_order=order, data prediction, last step to sigma = 0)
    on the same DDPM steps (noisiest first) with the same exact eps model, in float32."""
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    cls, order = ORACLE[name]
    common = dict(num_train_timesteps=model.path.schedule.num_timesteps, beta_schedule="linear",
                  beta_start=1e-4, beta_end=0.02, solver_order=order, prediction_type="epsilon",
                  lower_order_final=True, final_sigmas_type="zero")
    if cls == "UniPCMultistepScheduler":
        sched = diffusers.UniPCMultistepScheduler(predict_x0=True, solver_type="bh2", **common)
    else:
        sched = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", **common)
    if cls == "UniPCMultistepScheduler":  # no custom timesteps there: set what they would set
        sched.set_timesteps(len(steps))
        abar = sched.alphas_cumprod.numpy().astype(np.float64)
        sigmas = np.interp(steps, np.arange(len(abar)), np.sqrt((1 - abar) / abar))
        sched.sigmas = torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))
        sched.timesteps = torch.from_numpy(np.asarray(steps, np.int64))
    else:
        sched.set_timesteps(timesteps=[int(i) for i in steps])
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), model.path.schedule.alphas_cumprod,
                               rtol=1e-5)
    x = torch.from_numpy(np.asarray(x0, np.float32))
    for i in sched.timesteps.tolist():
        t = jnp.full((x.shape[0],), model.path.schedule.time(int(i)), jnp.float32)
        eps = np.asarray(model.apply(None, jnp.asarray(x.numpy()), t, None))
        x = sched.step(torch.from_numpy(eps), i, x).prev_sample
    return x.numpy()


def with_halved_d2(rule):
    """The 3M step with D2 = (D1_0 - D1_1) / (r0 + r1), half ours: the authors' and diffusers'."""

    def step(h, hist_h, p):
        w = rule(h, hist_h, p)
        if p == 3:
            r0, r1, e = hist_h[0] / h, hist_h[1] / h, np.eye(3)
            d2 = 2.0 * ((e[0] - e[1]) / r0 - (e[1] - e[2]) / r1) / (r0 + r1)
            w = w + 0.5 * (math.expm1(-h) / h**2 + 1.0 / h - 0.5) * d2  # + phi_3 D2 / 2
        return w

    return step


@pytest.mark.parametrize("name", sorted(ORACLE))
def test_matches_diffusers(name, monkeypatch):
    """Optional (skips without diffusers): DPM-Solver++(1, 2M) and UniPC-bh2 give diffusers'
    samples on the same 8 logSNR steps of the linear DDPM schedule with the closed-form eps model
    (float32; measured max |diff| 1e-6 to 3e-5).  dpmpp_3m differs by design (its D2 term is
    twice the authors' and diffusers', see dpm_solver's docstring): far above rounding as it is,
    and to rounding with D2 halved (at 8 steps both take the same orders at every step)."""
    model = ddpm_model()
    x0 = jax.random.normal(jax.random.PRNGKey(9), (256, 2))
    steps = dpm_solver.grid(model, 8, "logsnr")[1]
    theirs = diffusers_samples(name, model, steps, x0)

    def ours():
        if name == "dpmpp_1":
            sampler = dpm_solver.dpm_solver_sampler(model, num_steps=8, order=1)
        else:
            sampler = sampling.make_sampler(model, name, num_steps=8)
        return np.asarray(jax.jit(sampler)(None, x0, None).x)

    diff = np.abs(ours() - theirs).max()
    print(f"\n{name}: max |ours - diffusers| = {diff:.3g} over {theirs.size} values")
    if name == "dpmpp_3m":
        monkeypatch.setattr(dpm_solver, "_dpmpp", with_halved_d2(dpm_solver._dpmpp))
        halved = np.abs(ours() - theirs).max()
        print(f"dpmpp_3m with diffusers' D2: max |ours - diffusers| = {halved:.3g}")
        assert diff > 1e-2 and halved < 1e-4, (diff, halved)
    else:
        assert diff < 1e-4, diff
