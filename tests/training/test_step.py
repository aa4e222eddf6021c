"""Label dropout for classifier-free guidance: the rate, the same rows whatever the device layout
or row order, and a row's other randomness left as it was."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import models, objectives, paths
from flowmatch.training import step as step_lib

KEY = jax.random.PRNGKey(3)
drop = jax.jit(step_lib.drop_labels, static_argnums=(3, 4))  # (labels, indices, key, p, null)


def test_label_dropout_rate_is_p_within_monte_carlo_error():
    n, p = 20_000, 0.2
    out = np.asarray(drop(jnp.zeros((n,), jnp.int32), jnp.arange(n), KEY, p, 8))
    assert set(np.unique(out)) == {0, 8}
    assert abs(np.mean(out == 8) - p) < 5 * np.sqrt(p * (1 - p) / n)
    labels = jnp.arange(n) % 8
    assert step_lib.drop_labels(labels, jnp.arange(n), KEY, 0.0, 8) is labels  # p = 0: as is


def test_the_same_rows_are_dropped_whatever_their_order_or_shard():
    n = 256
    labels, indices = jnp.arange(n) % 5, jnp.arange(n)
    whole = np.asarray(drop(labels, indices, KEY, 0.3, 5))
    assert 0.15 < np.mean(whole == 5) < 0.45
    perm = np.random.default_rng(0).permutation(n)
    shuffled = np.asarray(drop(labels[perm], indices[perm], KEY, 0.3, 5))
    np.testing.assert_array_equal(shuffled, whole[perm])
    halves = [np.asarray(drop(labels[s], indices[s], KEY, 0.3, 5))
              for s in (slice(0, n // 2), slice(n // 2, n))]  # two devices' shards
    np.testing.assert_array_equal(np.concatenate(halves), whole)
    kept = whole != 5
    np.testing.assert_array_equal(whole[kept], np.asarray(labels)[kept])  # the rest as they were
    # Another step key drops other rows.
    other = np.asarray(drop(labels, indices, jax.random.PRNGKey(4), 0.3, 5))
    assert not np.array_equal(other, whole)


def _loss_setup(p):
    net = models.MLP(hidden_sizes=(16,), num_classes=4, time_embed_dim=8)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)),
                      jnp.zeros((1,), jnp.int32))["params"]
    apply = lambda prm, x, t, cond, train=False, dropout_key=None: net.apply(  # noqa: E731
        {"params": prm}, x, t, cond)
    obj = objectives.FlowMatching(paths.make_path(), label_dropout=p)
    n = 32
    batch = {"x": jax.random.normal(jax.random.PRNGKey(1), (n, 2)),
             "label": jnp.arange(n, dtype=jnp.int32) % 4}
    return apply, obj, params, batch, jnp.arange(n, dtype=jnp.int32)


def test_batch_loss_drops_each_rows_label_from_its_own_key():
    apply, obj, params, batch, idx = _loss_setup(0.4)
    jitted = jax.jit(step_lib.batch_loss, static_argnums=(0, 1, 2, 7))
    loss = lambda o, b, i: jitted(apply, o, True, params, b, i, KEY, 4)[0]  # noqa: E731
    whole = float(loss(obj, batch, idx))
    # The rows in another order: the same loss (up to float reassociation); the split over
    # devices is drop_labels' (above) and the rows' own keys' (tests/test_parallel.py).
    perm = np.random.default_rng(1).permutation(32)
    shuffled = float(loss(obj, jax.tree.map(lambda v: v[perm], batch), idx[perm]))
    assert shuffled == pytest.approx(whole, rel=1e-6)
    # It is the p = 0 loss of the labels drop_labels gives: the rows' time and noise unchanged.
    plain = objectives.FlowMatching(paths.make_path())
    dropped = dict(batch, label=drop(batch["label"], idx, KEY, 0.4, 4))
    assert float(loss(plain, dropped, idx)) == pytest.approx(whole, rel=1e-6)
    assert float(loss(plain, batch, idx)) != pytest.approx(whole, rel=1e-6)
    with pytest.raises(ValueError, match="null label"):
        step_lib.batch_loss(apply, obj, True, params, batch, idx, KEY)
