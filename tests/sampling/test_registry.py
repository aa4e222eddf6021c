"""The sampler registry: names, settings, NFE accounting and errors that list what is allowed."""

import pytest

from flowmatch import integrators, objectives, paths, sampling


def models():
    ddpm = objectives.DDPM("linear", 100)
    fm = objectives.FlowMatching(paths.make_path())
    apply = lambda params, x, t, cond: x  # noqa: E731
    return (sampling.ModelFn.from_objective(apply, fm),
            sampling.ModelFn.from_objective(apply, ddpm))


def test_methods_are_every_integrator_and_ddpms_samplers():
    assert set(integrators.METHODS) < set(sampling.METHODS)
    assert {"ancestral", "ddim"} <= set(sampling.METHODS)
    assert [sampling.family(m) for m in ("rk4", "ancestral", "ddim")] == ["ode", "ancestral",
                                                                         "ddim"]


def test_nfe_and_budgets_count_the_denoising_evaluation():
    fm, ddpm = models()
    assert sampling.nfe("heun", 8, fm) == 16 and sampling.nfe("heun", 8, ddpm) == 17
    assert sampling.nfe("ddim", 8, ddpm) == 8
    for method in ("euler", "heun", "rk4"):
        for model in (fm, ddpm):
            for budget in (1, 2, 5, 16, 33):
                steps = sampling.steps_for_budget(method, budget, model)
                if steps is None:
                    assert sampling.nfe(method, 1, model) > budget
                else:
                    assert sampling.nfe(method, steps, model) <= budget
                    assert sampling.nfe(method, steps + 1, model) > budget


def test_resolve_fills_in_the_runs_defaults():
    class Defaults(dict):
        __getattr__ = dict.get

    fixed = Defaults(method="heun", num_steps=50, rtol=None, atol=None)
    adaptive = Defaults(method="dopri5", num_steps=None, rtol=1e-4, atol=1e-4)
    assert sampling.resolve(fixed) == dict(method="heun", num_steps=50, rtol=None, atol=None)
    assert sampling.resolve(fixed, "rk4", 4)["num_steps"] == 4
    assert sampling.resolve(adaptive)["rtol"] == 1e-4
    assert sampling.resolve(fixed, "ddim") == dict(method="ddim", num_steps=None, rtol=None,
                                                   atol=None)


@pytest.mark.parametrize("call,message", [
    (lambda fm, dd: sampling.make_sampler(fm, "rk5", num_steps=2), "choose one of: euler"),
    (lambda fm, dd: sampling.make_sampler(fm, "heun", rtol=1e-3, atol=1e-3), "fixed-step"),
    (lambda fm, dd: sampling.make_sampler(fm, "dopri5"), "dopri5"),
    (lambda fm, dd: sampling.make_sampler(dd, "ancestral", num_steps=200), "at most the model's"),
    (lambda fm, dd: sampling.make_sampler(dd, "ddim", rtol=1e-3), "takes no rtol/atol"),
    (lambda fm, dd: sampling.make_sampler(dd, "ddim", variance="fixed_small"), "no option"),
    (lambda fm, dd: sampling.make_sampler(dd, "ancestral", variance="learned"),
     "fixed_small, fixed_large"),
    (lambda fm, dd: sampling.make_sampler(dd, "ddim", eta=-1.0), "eta must be"),
    (lambda fm, dd: sampling.make_sampler(fm, "ancestral"), "needs num_steps"),
    (lambda fm, dd: sampling.make_sampler(dd, "ddim", num_steps=0), "positive integer"),
])
def test_errors_say_what_is_allowed(call, message):
    fm, ddpm = models()
    with pytest.raises(ValueError) as err:
        call(fm, ddpm)
    assert message in str(err.value), str(err.value)


def test_every_method_is_described():
    """describe(): what the README's sampling table lists for each method."""
    for method in sampling.METHODS:
        d = sampling.describe(method)
        assert d["method"] == method and d["family"] == sampling.family(method)
        assert isinstance(d["order"], int) and d["order"] >= 1, d
        assert d["nfe_per_step"] >= 1 and d["nfe"] and d["use"] and d["source"], d
        assert d["num_steps"] in ("required", "optional", "or rtol/atol")
        assert d["options"] == sampling.options(method)
    assert sampling.describe("rk4")["order"] == integrators.TABLEAUS["rk4"].order
    assert sampling.describe("dopri5")["num_steps"] == "or rtol/atol"
    assert [sampling.describe(m)["order"] for m in ("dpmpp_2m", "dpmpp_3m", "unipc")] == [2, 3, 3]
    assert sampling.describe("sde_euler")["stochastic"] and not sampling.describe("unipc")[
        "stochastic"]


def test_sde_and_dpm_solver_families_count_their_evaluations():
    fm, ddpm = models()
    assert [sampling.family(m) for m in sampling.SDE_METHODS] == ["sde", "sde"]
    assert [sampling.family(m) for m in sampling.DPM_SOLVER_METHODS] == ["dpm_solver"] * 3
    assert sampling.nfe("sde_euler", 10, fm) == 10 and sampling.nfe("sde_euler", 10, ddpm) == 11
    assert sampling.nfe("sde_euler", 10, ddpm, last_step="tweedie") == 10
    assert sampling.nfe("sde_heun", 10, fm) == 19 and sampling.nfe("sde_heun", 10, ddpm) == 20
    assert sampling.nfe("dpmpp_2m", 10, ddpm) == 10 == sampling.nfe("unipc", 10, fm)
    assert sampling.steps_for_budget("sde_heun", 20, ddpm) == 10
    assert sampling.steps_for_budget("sde_heun", 20, fm) == 10
    assert sampling.steps_for_budget("sde_heun", 20, ddpm, last_step="tweedie") == 10
    assert sampling.steps_for_budget("dpmpp_3m", 10, ddpm) == 10

    class Defaults(dict):
        __getattr__ = dict.get

    assert sampling.resolve(Defaults(method="heun", num_steps=20), "dpmpp_2m")["num_steps"] == 20
    with pytest.raises(ValueError, match="needs num_steps"):
        sampling.resolve(Defaults(method="sde_euler", num_steps=None))


@pytest.mark.parametrize("call,message", [
    (lambda fm, dd: sampling.make_sampler(fm, "sde_euler"), "sde_euler needs num_steps"),
    (lambda fm, dd: sampling.make_sampler(fm, "dpmpp_2m"), "dpmpp_2m needs num_steps"),
    (lambda fm, dd: sampling.make_sampler(fm, "sde_heun", num_steps=5, diffusion="linear"),
     "constant, sigma, score_sde, decreasing"),
    (lambda fm, dd: sampling.make_sampler(fm, "sde_euler", num_steps=5, diffusion_scale=-1.0),
     "diffusion_scale must be"),
    (lambda fm, dd: sampling.make_sampler(fm, "sde_euler", num_steps=5, last_step="euler"),
     "mean, tweedie"),
    (lambda fm, dd: sampling.make_sampler(fm, "sde_euler", num_steps=5, eta=0.0), "no option"),
    (lambda fm, dd: sampling.make_sampler(dd, "dpmpp_2m", num_steps=5, rtol=1e-3),
     "takes no rtol/atol"),
    (lambda fm, dd: sampling.make_sampler(dd, "dpmpp_2m", num_steps=5, order=2), "no option"),
    (lambda fm, dd: sampling.make_sampler(dd, "unipc", num_steps=5, order=4), "1, 2 or 3"),
    (lambda fm, dd: sampling.make_sampler(dd, "dpmpp_3m", num_steps=5, spacing="quadratic"),
     "logsnr, linspace, leading, trailing"),
    (lambda fm, dd: sampling.make_sampler(fm, "dpmpp_3m", num_steps=5, spacing="leading"),
     "for a continuous path choose one of: logsnr, linspace"),
    (lambda fm, dd: sampling.make_sampler(dd, "unipc", num_steps=5, t_min=0.1),
     "for continuous paths"),
    (lambda fm, dd: sampling.make_sampler(fm, "unipc", num_steps=5, t_min=0.6, t_max=0.5),
     "t_min < t_max"),
    (lambda fm, dd: sampling.make_sampler(dd, "dpmpp_2m", num_steps=101), "at most the model's"),
])
def test_new_methods_errors_say_what_is_allowed(call, message):
    fm, ddpm = models()
    with pytest.raises(ValueError) as err:
        call(fm, ddpm)
    assert message in str(err.value), str(err.value)
