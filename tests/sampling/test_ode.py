"""ODE sampling through the registry: flow models to t = 1, DDPM models' one probability-flow
sampler (integrate to t_end, denoise) for every parametrisation, on Gaussian data."""

import jax
import numpy as np
import pytest

from flowmatch import integrators, objectives, paths, sampling
from gaussian_oracle import MU, SD, exact_apply, standardized_normal


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_pf_ode_dopri5_recovers_gaussian(name):
    """The flow map of Gaussian data is affine: standardized x_T lands on the data's mean and std
    up to the solver tolerance and the prior mismatch N(0, I) vs q(x_{T-1})."""
    obj = objectives.DDPM(name, 1000)
    model = sampling.ModelFn.from_objective(exact_apply(obj.path, obj.parametrisation), obj)
    x_T = standardized_normal(jax.random.PRNGKey(17), (2000, 2))
    out = jax.jit(sampling.make_sampler(model, "dopri5", rtol=1e-5, atol=1e-5))(None, x_T, None)
    assert bool(out.success) and int(out.nfe) < 200
    x = np.asarray(out.x, np.float64)
    np.testing.assert_allclose(x.mean(0), MU[0], atol=0.012)
    np.testing.assert_allclose(x.std(0), SD[0], rtol=2e-3)


@pytest.mark.parametrize("prediction", tuple(objectives.DDPM_PREDICTIONS))
def test_one_pf_sampler_for_every_parametrisation(prediction):
    """rk4, 100 steps to t_end = 1 - 1/T, then one denoising evaluation (nfe 401): the same
    samples for eps, x0 and v models of the same exact field, on the data's moments."""
    obj = objectives.DDPM("linear", 1000, prediction=prediction)
    model = sampling.ModelFn.from_objective(exact_apply(obj.path, obj.parametrisation), obj)
    assert model.denoises and model.t_end == obj.t_end
    x_T = standardized_normal(jax.random.PRNGKey(18), (2000, 2))
    out = jax.jit(sampling.make_sampler(model, "rk4", num_steps=100))(None, x_T, None)
    assert int(out.nfe) == 401 == sampling.nfe("rk4", 100, model) and bool(out.success)
    x = np.asarray(out.x, np.float64)
    np.testing.assert_allclose(x.mean(0), MU[0], atol=0.012)
    np.testing.assert_allclose(x.std(0), SD[0], rtol=3e-3)


@pytest.mark.parametrize("prediction", paths.PREDICTIONS)
def test_flow_model_ode_is_the_integrator_on_the_velocity(prediction):
    """For a flow model the sampler is integrators.solve on the converted velocity from 0 to 1,
    bit for bit, with the integrator's nfe."""
    path = paths.make_path("cosine")
    model = sampling.ModelFn(exact_apply(path, prediction), path, prediction)
    x0 = jax.random.normal(jax.random.PRNGKey(3), (256, 2))
    out = jax.jit(sampling.make_sampler(model, "heun", num_steps=12))(None, x0, None)
    sol = jax.jit(lambda x: integrators.solve(model.velocity_fn(None), x, method="heun",
                                              num_steps=12))(x0)
    np.testing.assert_array_equal(out.x, sol.x)
    assert int(out.nfe) == int(sol.nfe) == 24
