"""The train step's randomness: one uniform draw per step over the global batch, the same rows
whatever the device layout; the distributions it gives (times, noise, label dropout); the loss
per row or batched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import models, objectives, paths, rng
from flowmatch import parallel as parallel_lib
from flowmatch import sources as sources_lib
from flowmatch.couplings import CouplingSettings
from flowmatch.training import step as step_lib

KEY = jax.random.PRNGKey(3)


def _draw(objective, batch_size, coupling="independent", null_label=None, source=None):
    plan = parallel_lib.Plan(parallel_lib.make_mesh(1, devices=jax.devices()[:1]), "sharding",
                             2**14)
    source = source or sources_lib.SourceDistribution("normal")
    return step_lib.make_draw(objective, source, CouplingSettings(name=coupling), batch_size,
                              plan, null_label=null_label)


def test_a_rows_uniforms_do_not_depend_on_the_batch_size_or_the_split():
    whole = np.asarray(step_lib.row_uniforms(KEY, 64, 6, 0, 64))
    assert whole.shape == (64, step_lib.NUM_SCALARS + 6)
    assert whole.min() >= 0.0 and whole.max() < 1.0
    # Two devices' shards (pmap: each keeps its rows of the global draw) give the same rows.
    halves = [np.asarray(step_lib.row_uniforms(KEY, 64, 6, start, 32)) for start in (0, 32)]
    np.testing.assert_array_equal(np.concatenate(halves), whole)
    # A larger global batch starts with the same rows (partitionable threefry: element (j, c)
    # depends on the key, j and c alone).
    np.testing.assert_array_equal(np.asarray(step_lib.row_uniforms(KEY, 128, 6, 0, 128))[:64],
                                  whole)
    assert not np.array_equal(np.asarray(step_lib.row_uniforms(jax.random.PRNGKey(4), 64, 6, 0,
                                                               64)), whole)


def test_normal_from_uniform_is_standard_normal_and_finite_at_zero():
    u = jax.random.uniform(KEY, (200_000,))
    z = np.asarray(rng.normal_from_uniform(u))
    assert abs(z.mean()) < 5 / np.sqrt(z.size)
    assert abs(z.std() - 1.0) < 5 * np.sqrt(0.5 / z.size)
    # Quantiles against the normal's: Phi^{-1}(0.025, 0.5, 0.975) = -1.96, 0, 1.96.
    np.testing.assert_allclose(np.quantile(z, [0.025, 0.5, 0.975]), [-1.95996, 0.0, 1.95996],
                               atol=0.02)
    assert np.isfinite(float(rng.normal_from_uniform(jnp.float32(0.0))))


@pytest.mark.parametrize("kind", ["uniform", "logit_normal"])
def test_times_from_uniform_match_the_objectives_own_time_distribution(kind):
    obj = objectives.FlowMatching(paths.make_path(), time_sampling=kind, logit_normal_loc=0.5,
                                  logit_normal_scale=0.8, t_min=0.1, t_max=0.9)
    n = 100_000
    mine = np.sort(np.asarray(obj.times_from_uniform(jax.random.uniform(KEY, (n,)))))
    ref = np.sort(np.asarray(obj.sample_time(jax.random.PRNGKey(9), n)))
    # Two-sample Kolmogorov-Smirnov distance; its 1e-3 critical value at n = m = 1e5 is 0.0087.
    assert np.max(np.abs(mine - ref)) < 0.05 and _ks(mine, ref) < 0.0087
    assert mine[0] >= 0.1 and mine[-1] <= 0.9


def _ks(a, b):
    grid = np.concatenate([a, b])
    return np.max(np.abs(np.searchsorted(a, grid, "right") / a.size
                         - np.searchsorted(b, grid, "right") / b.size))


def test_ddpm_steps_from_uniform_cover_every_step_evenly():
    obj = objectives.DDPM(num_timesteps=50)
    i = np.asarray(obj.times_from_uniform(jax.random.uniform(KEY, (100_000,))))
    assert i.dtype == np.int32 and i.min() == 0 and i.max() == 49
    counts = np.bincount(i, minlength=50)
    assert np.all(np.abs(counts - 2_000) < 5 * np.sqrt(2_000 * 0.98))
    below_one = np.nextafter(np.float32(1), np.float32(0))
    assert int(obj.times_from_uniform(jnp.float32(below_one))) == 49


def test_label_dropout_rate_is_p_and_the_same_rows_on_any_split():
    n, p = 20_000, 0.2
    obj = objectives.FlowMatching(paths.make_path(), label_dropout=p)
    draw = jax.jit(_draw(obj, n, null_label=8), static_argnums=1)
    batch = {"x": jnp.zeros((n, 2)), "label": jnp.arange(n, dtype=jnp.int32) % 8}
    out = np.asarray(draw(batch, 0, KEY)["label"])
    dropped = out == 8
    assert abs(dropped.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_equal(out[~dropped], np.asarray(batch["label"])[~dropped])
    halves = [np.asarray(draw(jax.tree.map(lambda v, s=s: v[s], batch), s.start, KEY)["label"])
              for s in (slice(0, n // 2), slice(n // 2, n))]
    np.testing.assert_array_equal(np.concatenate(halves), out)
    assert not np.array_equal(np.asarray(draw(batch, 0, jax.random.PRNGKey(4))["label"]), out)
    with pytest.raises(ValueError, match="null label"):
        _draw(obj, n)
    # p = 0 leaves the labels as they are.
    plain = _draw(objectives.FlowMatching(paths.make_path()), n)(batch, 0, KEY)
    assert plain["label"] is batch["label"]


def test_draw_gives_times_and_noise_and_keeps_pairs_from_a_file():
    obj = objectives.FlowMatching(paths.make_path(), time_sampling="uniform")
    n = 4096
    batch = {"x": jnp.ones((n, 2)), "label": jnp.zeros((n,), jnp.int32)}
    out = _draw(obj, n)(batch, 0, KEY)
    u = np.asarray(step_lib.row_uniforms(KEY, n, 2, 0, n))
    np.testing.assert_array_equal(np.asarray(out["times"]), u[:, step_lib.TIME])
    x0 = np.asarray(out["x0"])
    assert abs(x0.mean()) < 0.1 and abs(x0.std() - 1) < 0.05
    scaled = _draw(obj, n, source=sources_lib.SourceDistribution("normal", scale=2.0))
    np.testing.assert_allclose(np.asarray(scaled(batch, 0, KEY)["x0"]), 2 * x0, rtol=1e-6)
    given = dict(batch, x0=jnp.full((n, 2), 7.0))
    np.testing.assert_array_equal(np.asarray(_draw(obj, n)(given, 0, KEY)["x0"]), 7.0)


def test_a_calls_draws_made_ahead_are_its_steps_draws_bit_for_bit():
    """`draw_steps` (a call's k steps' rows drawn before its loop, vmapped) gives each step
    exactly the draws it makes alone with fold_in(train_key, step); `Draw.pair` then re-pairs
    them as the whole draw does, per class with the labels from before their dropout."""
    plan = parallel_lib.Plan(parallel_lib.make_mesh(1, devices=jax.devices()[:1]), "sharding",
                             2**14)
    obj = objectives.FlowMatching(paths.make_path(), label_dropout=0.5)
    coupling = CouplingSettings(name="sinkhorn", per_class=True)
    draw = step_lib.make_draw(obj, sources_lib.SourceDistribution("8gaussians"), coupling, 32,
                              plan, null_label=2)
    k, first_step, train_key = 4, 5, jax.random.PRNGKey(7)
    batches = {"x": jax.random.normal(KEY, (k, 32, 2)),
               "label": jnp.tile(jnp.arange(32, dtype=jnp.int32) % 2, (k, 1))}
    ahead = jax.jit(lambda b, s: step_lib.draw_steps(draw, b, s, train_key))(
        batches, jnp.int32(first_step))
    rows = jax.jit(draw.rows, static_argnums=1)
    whole = jax.jit(draw, static_argnums=1)
    pair = jax.jit(draw.pair)
    for i in range(k):
        batch = jax.tree.map(lambda v, i=i: v[i], batches)
        step_key = jax.random.fold_in(train_key, first_step + i)
        alone = rows(batch, 0, step_key)
        mine = jax.tree.map(lambda v, i=i: v[i], ahead)
        assert jax.tree.structure(mine) == jax.tree.structure(alone)
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(alone)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        paired, drawn = pair(mine), whole(batch, 0, step_key)
        assert step_lib.PAIRING not in paired and set(paired) == set(drawn)
        for name in drawn:
            np.testing.assert_array_equal(np.asarray(paired[name]), np.asarray(drawn[name]))
        # Some labels were dropped, yet every row's partner is a drawn source sample of a row
        # of its original class (Sinkhorn draws partners from its plan, per class).
        assert (np.asarray(drawn["label"]) == 2).any()
        index = [int(np.flatnonzero((np.asarray(mine["x0"]) == row).all(1))[0])
                 for row in np.asarray(drawn["x0"])]
        labels = np.asarray(batch["label"])
        np.testing.assert_array_equal(labels[index], labels)


def _loss_setup(p=0.0):
    net = models.MLP(hidden_sizes=(16,), num_classes=4, time_embed_dim=8)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)),
                      jnp.zeros((1,), jnp.int32))["params"]
    apply = lambda prm, x, t, cond, train=False, dropout_key=None: net.apply(  # noqa: E731
        {"params": prm}, x, t, cond)
    obj = objectives.FlowMatching(paths.make_path(), label_dropout=p)
    n = 32
    batch = {"x": jax.random.normal(jax.random.PRNGKey(1), (n, 2)),
             "label": jnp.arange(n, dtype=jnp.int32) % 4}
    batch = _draw(obj, n, null_label=4)(batch, 0, KEY)
    return apply, obj, params, batch, jnp.arange(n, dtype=jnp.int32)


@pytest.mark.parametrize("objective", ["flow_matching", "ddpm"])
def test_the_batched_loss_is_the_per_row_loss(objective):
    apply, obj, params, batch, idx = _loss_setup(0.4)
    if objective == "ddpm":
        obj = objectives.DDPM(num_timesteps=100)
        batch = dict(batch, times=obj.times_from_uniform(batch["times"]))

    def loss(per_row):
        fn = lambda prm: step_lib.batch_loss(apply, obj, True, prm, batch, idx, KEY,  # noqa
                                             pair_cost=True, per_row=per_row)
        return jax.jit(jax.value_and_grad(fn, has_aux=True))(params)

    (row, row_aux), row_grads = loss(True)
    (whole, whole_aux), whole_grads = loss(False)
    assert float(whole) == pytest.approx(float(row), rel=1e-5)
    assert float(whole_aux["pair_cost"]) == pytest.approx(float(row_aux["pair_cost"]), rel=1e-5)
    for a, b in zip(jax.tree.leaves(row_grads), jax.tree.leaves(whole_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # The rows' labels matter: the loss with the dropped labels differs from the original's.
    undropped = dict(batch, label=jnp.arange(32, dtype=jnp.int32) % 4)
    other = step_lib.batch_loss(apply, obj, True, params, undropped, idx, KEY, per_row=False)[0]
    assert float(other) != pytest.approx(float(whole), rel=1e-6)
    with pytest.raises(ValueError, match="x0 and times"):
        step_lib.batch_loss(apply, obj, True, params, {"x": batch["x"], "label": batch["label"]},
                            idx, KEY, per_row=False)


def test_the_step_takes_bfloat16_products_gradient_written_out():
    """With model.matmul_dtype bfloat16 the step's gradient is `precision.gradient_products`':
    on XLA:CPU no product of the compiled step contracts its left operand's rows (jax's own
    gradient of the weights does), and the step trains."""
    import optax  # pylint: disable=g-import-not-at-top
    from flowmatch.training import state as state_lib  # pylint: disable=g-import-not-at-top
    net = models.MLP(hidden_sizes=(16, 16), time_embed_dim=8, matmul_dtype="bfloat16")
    apply = lambda prm, x, t, cond, train=False, dropout_key=None: net.apply(  # noqa: E731
        {"params": prm}, x, t, cond)
    obj = objectives.FlowMatching(paths.make_path())
    tx = optax.adam(1e-2)
    state = state_lib.init_state(net, tx, (2,), False, jax.random.PRNGKey(0))
    step = step_lib.make_train_step(apply=apply, objective=obj, conditional=False, tx=tx,
                                    lr_schedule=lambda s: 1e-2, ema_decay=0.9, ema_warmup=False,
                                    draw=_draw(obj, 64), per_row=False)
    batch = {"x": jax.random.normal(jax.random.PRNGKey(1), (64, 2)) + 3.0,
             "label": jnp.zeros((64,), jnp.int32)}
    jitted = jax.jit(step)
    hlo = jitted.lower(state, batch, KEY).compile().as_text()
    assert " dot(" in hlo and "lhs_contracting_dims={0}" not in hlo
    losses = []
    for _ in range(30):
        state, metrics = jitted(state, batch, KEY)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
