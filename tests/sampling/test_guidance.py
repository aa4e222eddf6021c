"""Classifier-free guidance in `ModelFn.predict`: the identities w = 1 (conditional) and w = 0
(unconditional), the whole prediction guided, the interval, one batched network call, every
sampler family guided, honest network passes, and the exact conditional model of the 8 Gaussians
(a Gaussian mixture, closed form): with w = 1 and label 3 the samples land on Gaussian 3."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import models, paths, sampling
from flowmatch.data import toy2d
from flowmatch.sampling import records

CENTRES = np.asarray(toy2d._EIGHT_CENTRES, np.float32)  # [8, 2]
STD = 0.1**0.25
NULL = 8


def mixture_apply(path: paths.AffinePath, prediction: str = "velocity"):
    """The exact model of torchcfm's 8 Gaussians on `path`: label k < 8 -> component k,
    N(c_k, STD^2 I); label 8 (null) -> the equal-weight mixture.  For a component, x_t =
    alpha x1 + sigma x0 is N(alpha c_k, v I), v = alpha^2 STD^2 + sigma^2, and
    E[x0 | x_t] = sigma (x_t - alpha c_k) / v, E[x1 | x_t] = c_k + alpha STD^2 (x_t - alpha c_k) / v;
    the mixture's are these averaged with the posterior weights softmax_k(-|x_t - alpha c_k|^2 /
    (2 v)).  apply(params, x [B, 2], t [B], cond [B] int or None (null))."""
    c = jnp.asarray(CENTRES)

    def apply(params, x, t, cond=None):
        del params
        s = path.at(t, x)  # alpha, sigma: [B, 1]
        v = s.alpha * s.alpha * STD**2 + s.sigma * s.sigma  # [B, 1]
        r = x[:, None, :] - s.alpha[:, :, None] * c[None]  # [B, 8, 2]
        x0_k = s.sigma[:, :, None] * r / v[:, :, None]
        x1_k = c[None] + s.alpha[:, :, None] * STD**2 * r / v[:, :, None]
        logits = -jnp.sum(r * r, axis=-1) / (2 * v)  # [B, 8]
        labels = jnp.full((x.shape[0],), NULL) if cond is None else cond
        weights = jnp.where((labels == NULL)[:, None], jax.nn.softmax(logits, axis=-1),
                            jax.nn.one_hot(labels, 8, dtype=x.dtype))
        x1 = jnp.einsum("bk,bkd->bd", weights, x1_k)
        x0 = jnp.einsum("bk,bkd->bd", weights, x0_k)
        return paths.from_endpoints(s, x1, x0, prediction).astype(x.dtype)

    return apply


def exact_model(**guidance):
    return sampling.ModelFn(mixture_apply(paths.make_path()), paths.make_path(), "velocity",
                            null_label=NULL, **guidance)


def nearest_centre(x):
    return np.argmin(((np.asarray(x)[:, None, :] - CENTRES[None]) ** 2).sum(-1), axis=1)


def mlp_model(dim=6, **guidance):
    """A random class-conditional MLP (4 classes + null) on [B, dim] and its params."""
    net = models.MLP(hidden_sizes=(32, 32), num_classes=4, time_embed_dim=16)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((2, dim)), jnp.zeros((2,)),
                      jnp.zeros((2,), jnp.int32))["params"]
    apply = lambda p, x, t, cond: net.apply({"params": p}, x, t, cond)  # noqa: E731
    return apply, params, sampling.ModelFn(apply, paths.make_path(), "velocity", null_label=4,
                                           **guidance)


X = jax.random.normal(jax.random.PRNGKey(1), (5, 6))
T = jnp.array([0.05, 0.3, 0.5, 0.7, 0.95])
COND = jnp.array([0, 1, 2, 3, 1])


@pytest.mark.parametrize("w,which", [(1.0, "cond"), (0.0, "uncond")])
def test_w_one_is_the_conditional_model_and_w_zero_the_unconditional_one(w, which):
    apply, params, model = mlp_model(guidance_scale=w)
    got, tb = jax.jit(model.predict)(params, X, T, COND)
    want = apply(params, X, T, COND if which == "cond" else jnp.full((5,), 4))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(tb), np.asarray(T))


def test_guidance_applies_to_the_whole_prediction():
    """Every output channel, not a subset: pred = pred_u + w (pred_c - pred_u) elementwise."""
    apply, params, model = mlp_model(guidance_scale=3.0)
    got = np.asarray(model.predict(params, X, T, COND)[0])
    c = np.asarray(apply(params, X, T, COND), np.float64)
    u = np.asarray(apply(params, X, T, jnp.full((5,), 4)), np.float64)
    np.testing.assert_allclose(got, u + 3.0 * (c - u), rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(got - c) > 1e-4)  # every element moved away from the conditional one


def test_the_interval_switches_guidance_on_inside_it_only():
    apply, params, model = mlp_model(guidance_scale=3.0, guidance_interval=(0.3, 0.7))
    t = jnp.array([0.0, 0.29, 0.3, 0.5, 0.7, 0.71, 1.0])
    x = jax.random.normal(jax.random.PRNGKey(2), (7, 6))
    cond = jnp.array([0, 1, 2, 3, 0, 1, 2])
    got = np.asarray(model.predict(params, x, t, cond)[0])
    c = np.asarray(apply(params, x, t, cond))
    u = np.asarray(apply(params, x, t, jnp.full((7,), 4)))
    inside = np.array([False, False, True, True, True, False, False])
    np.testing.assert_allclose(got[~inside], c[~inside], rtol=1e-6, atol=1e-6)  # w = 1
    np.testing.assert_allclose(got[inside], (u + 3.0 * (c - u))[inside], rtol=1e-5, atol=1e-5)
    # A scalar time is one side or the other for the whole batch.
    x5 = x[:5]
    for t_scalar, guided in ((0.2, False), (0.5, True)):
        out = np.asarray(model.predict(params, x5, t_scalar, cond[:5])[0])
        plain = np.asarray(apply(params, x5, jnp.full((5,), t_scalar), cond[:5]))
        assert np.allclose(out, plain, atol=1e-6) != guided


def test_one_batched_network_call_with_conditional_and_null_labels():
    calls = []
    net_apply, params, _ = mlp_model()

    def counting(p, x, t, cond):
        calls.append((x.shape, None if cond is None else np.asarray(cond)))
        return net_apply(p, x, t, cond)

    model = sampling.ModelFn(counting, paths.make_path(), null_label=4, guidance_scale=2.0)
    model.predict(params, X, 0.5, COND)
    assert len(calls) == 1 and calls[0][0] == (10, 6)
    np.testing.assert_array_equal(calls[0][1], np.concatenate([np.asarray(COND), [4] * 5]))
    calls.clear()
    sampling.ModelFn(counting, paths.make_path(), null_label=4).predict(params, X, 0.5, COND)
    assert len(calls) == 1 and calls[0][0] == (5, 6)  # unguided: one plain pass


@pytest.mark.parametrize("method,num_steps", [("heun", 8), ("ancestral", 8), ("ddim", 8)])
def test_guidance_reaches_every_sampler_family(method, num_steps):
    """Guided with w = 0 a sampler draws the unconditional model's samples, with w = 1 the
    conditional model's; every network call it makes sees the doubled batch."""
    x0 = jax.random.normal(jax.random.PRNGKey(3), (64, 2))
    key = jax.random.PRNGKey(4)
    cond = jnp.full((64,), 3)
    draw = lambda model, c: sampling.make_sampler(  # noqa: E731
        model, method, num_steps=num_steps)(None, x0, key, c)
    plain = exact_model()
    for w, want in ((0.0, draw(plain, jnp.full((64,), NULL))), (1.0, draw(plain, cond))):
        got = draw(exact_model(guidance_scale=w), cond)
        np.testing.assert_allclose(np.asarray(got.x), np.asarray(want.x), rtol=1e-4, atol=1e-4)
        assert int(got.nfe) == int(want.nfe)
    sizes = []
    apply = mixture_apply(paths.make_path())

    def spy(params, x, t, c):
        sizes.append(x.shape[0])
        return apply(params, x, t, c)

    guided = sampling.ModelFn(spy, paths.make_path(), null_label=NULL, guidance_scale=2.0)
    sampler = sampling.make_sampler(guided, method, num_steps=num_steps)
    jax.eval_shape(lambda: sampler(None, x0, key, cond))
    assert sizes and set(sizes) == {128}


def test_passes_count_two_network_passes_per_guided_evaluation():
    x0 = jax.random.normal(jax.random.PRNGKey(5), (16, 2))
    cond = jnp.arange(16) % 8
    for model, per_eval in ((exact_model(), 1), (exact_model(guidance_scale=2.0), 2)):
        assert model.passes_per_evaluation == per_eval
        for method in ("rk4", "ddim"):
            sampler = records.with_passes(sampling.make_sampler(model, method, num_steps=3), model)
            out = jax.jit(sampler)(None, x0, jax.random.PRNGKey(6), cond)
            assert int(out.passes) == per_eval * int(out.nfe)
            assert int(out.nfe) == sampling.nfe(method, 3, model)


@pytest.mark.parametrize("method,num_steps", [("heun", 50), ("ddim", 50)])
def test_with_w_one_and_label_three_nearly_all_samples_land_on_gaussian_three(method, num_steps):
    """The issue's done-when check on the exact conditional model of the 8 Gaussians."""
    n = 2000
    x0 = jax.random.normal(jax.random.PRNGKey(7), (n, 2))
    cond = jnp.full((n,), 3)
    share = {}
    for w in (0.0, 1.0, 4.0):
        sampler = sampling.make_sampler(exact_model(guidance_scale=w), method, num_steps=num_steps)
        x = jax.jit(sampler)(None, x0, jax.random.PRNGKey(8), cond).x
        share[w] = np.mean(nearest_centre(x) == 3)
    assert share[1.0] > 0.99 and share[4.0] > 0.99
    assert abs(share[0.0] - 1 / 8) < 5 * np.sqrt(1 / 8 * 7 / 8 / n)  # unconditional: 1 in 8


@pytest.mark.parametrize("kwargs,message", [
    (dict(guidance_interval=(0.2, 0.8)), "without guidance_scale"),
    (dict(guidance_scale=2.0, guidance_interval=(0.8, 0.2)), "0 <= t_lo <= t_hi <= 1"),
    (dict(guidance_scale=2.0, guidance_interval=(0.2,)), "0 <= t_lo <= t_hi <= 1"),
    (dict(guidance_scale=float("nan")), "finite number"),
    (dict(guidance_scale=2.0, null_label=None), "null label"),
])
def test_guidance_settings_are_checked(kwargs, message):
    kwargs = dict(dict(null_label=NULL), **kwargs)
    with pytest.raises(ValueError, match=message):
        sampling.ModelFn(mixture_apply(paths.make_path()), paths.make_path(), **kwargs)


def test_guidance_without_labels_is_refused():
    with pytest.raises(ValueError, match="needs class labels"):
        exact_model(guidance_scale=2.0).predict(None, jnp.zeros((3, 2)), 0.5, None)
