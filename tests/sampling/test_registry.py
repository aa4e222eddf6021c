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
