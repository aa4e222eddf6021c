"""Row chunks of the network (`sampling.chunks`): the same samples as one whole-batch call (to
float round-off; bit-for-bit on a fixed grid here), the same NFE and steps, for a fixed grid, an
adaptive pair, an SDE sampler and a guided model; the chunk layout and its validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import models, paths, sampling
from flowmatch.sampling import chunks


def _model_and_params(num_classes=0, **model_fields):
    net = models.MLP(hidden_sizes=(32, 32), activation="relu", time_scale=10.0,
                     num_classes=num_classes)
    cond = jnp.zeros((1,), jnp.int32) if num_classes else None
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)), cond)
    model = sampling.ModelFn(apply=lambda p, x, t, c: net.apply(p, x, t, c),
                             path=paths.make_path("cond_ot"), **model_fields)
    return model, params


def test_apply_rows_is_rowwise_and_ordered():
    """Each output row is apply of its own input row, in order, padding or not."""
    apply = lambda p, x, t, c: x * p + t[:, None] + (0 if c is None else c[:, None])  # noqa
    for n, size in ((10, 3), (12, 4), (7, 7), (5, 100)):
        x = jnp.arange(2 * n, dtype=jnp.float32).reshape(n, 2)
        t = jnp.linspace(0, 1, n)
        c = jnp.arange(n)
        np.testing.assert_array_equal(chunks.apply_rows(apply, 2.0, x, t, c, size),
                                      apply(2.0, x, t, c))
        np.testing.assert_array_equal(chunks.apply_rows(apply, 2.0, x, t, None, size),
                                      apply(2.0, x, t, None))
    assert chunks.num_chunks(10, 3) == 4 and chunks.num_chunks(10, None) == 1



def test_apply_rows_passes_a_scalar_time_to_every_chunk():
    def apply(p, x, t, c):
        assert jnp.ndim(t) == 0
        return x * p + t
    x = jnp.arange(20, dtype=jnp.float32).reshape(10, 2)
    for size in (3, 4, None):
        np.testing.assert_array_equal(chunks.apply_rows(apply, 2.0, x, jnp.float32(0.25), None,
                                                        size), x * 2.0 + 0.25)


@pytest.mark.parametrize("chunk_rows", [None, 64])
def test_scalar_time_reaches_the_network_only_when_the_model_says_it_takes_one(chunk_rows):
    """ModelFn.scalar_time: an unguided evaluation passes t as a scalar (flowmatch's networks
    then share the time's work across rows); without it apply always sees t [B].  The samples
    agree either way."""
    net = models.MLP(hidden_sizes=(32, 32), activation="relu", time_scale=10.0)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    seen = []

    def apply(p, x, t, c):
        seen.append(jnp.shape(t))
        return net.apply(p, x, t, c)

    x0 = jax.random.normal(jax.random.PRNGKey(1), (301, 2))
    outs = {}
    for scalar in (False, True):
        seen.clear()
        model = sampling.ModelFn(apply=apply, path=paths.make_path("cond_ot"),
                                 scalar_time=scalar, chunk_rows=chunk_rows)
        sampler = sampling.make_sampler(model, "heun", num_steps=4)
        outs[scalar] = jax.jit(lambda p, x, s=sampler: s(p, x, None))(params, x0)
        rows = x0.shape[0] if chunk_rows is None else -(-x0.shape[0] // 5)
        assert set(seen) == ({()} if scalar else {(rows,)}), seen
    np.testing.assert_allclose(outs[True].x, outs[False].x, rtol=0, atol=1e-6)
    assert int(outs[True].nfe) == int(outs[False].nfe) == 8

@pytest.mark.parametrize("method,settings", [
    ("rk4", dict(num_steps=4)), ("heun", dict(num_steps=5)), ("euler", dict(num_steps=3)),
    ("dopri5", dict(rtol=1e-5, atol=1e-5)), ("sde_euler", dict(num_steps=5))])
def test_chunked_sampler_matches_whole_batch(method, settings):
    model, params = _model_and_params()
    x0 = jax.random.normal(jax.random.PRNGKey(1), (301, 2))
    key = jax.random.PRNGKey(2)
    whole = sampling.make_sampler(model, method, chunk_rows=None, **settings)
    split = sampling.make_sampler(model, method, chunk_rows=64, **settings)
    a = jax.jit(lambda p, x: whole(p, x, key))(params, x0)
    b = jax.jit(lambda p, x: split(p, x, key))(params, x0)
    np.testing.assert_allclose(b.x, a.x, rtol=0, atol=1e-5)
    assert int(a.nfe) == int(b.nfe) and int(a.steps) == int(b.steps)
    if method in ("rk4", "heun", "euler"):
        assert int(b.nfe) == sampling.nfe(method, settings["num_steps"])


def test_guided_chunked_matches_whole_batch():
    model, params = _model_and_params(num_classes=3, guidance_scale=2.0, null_label=3)
    x0 = jax.random.normal(jax.random.PRNGKey(1), (101, 2))
    cond = jnp.arange(101) % 3
    outs = [jax.jit(lambda p, x, c, s=s: s(p, x, None, c))(params, x0, cond)
            for s in (sampling.make_sampler(model, "heun", num_steps=4, chunk_rows=r)
                      for r in (None, 16))]
    np.testing.assert_allclose(outs[1].x, outs[0].x, rtol=0, atol=1e-5)
    assert int(outs[0].nfe) == int(outs[1].nfe) == 8


def test_default_and_validation():
    model, _ = _model_and_params()
    assert model.chunk_rows is None  # off unless asked for (docs/sampling.md, "Speed")
    for bad in (0, -3, 2.5, True, "auto"):
        with pytest.raises(ValueError, match="chunk_rows"):
            sampling.make_sampler(model, "rk4", num_steps=2, chunk_rows=bad)
        with pytest.raises(ValueError, match="chunk_rows"):
            sampling.ModelFn(apply=model.apply, path=model.path, chunk_rows=bad)


_SHARDED = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from flowmatch import models, paths, sampling
net = models.MLP(hidden_sizes=(16, 16), activation="relu", time_scale=10.0)
params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
model = sampling.ModelFn(apply=lambda p, x, t, c: net.apply(p, x, t, c),
                         path=paths.make_path("cond_ot"))
mesh = Mesh(np.array(jax.devices()), ("data",))
rows = NamedSharding(mesh, P("data"))
x0 = jax.random.normal(jax.random.PRNGKey(1), (256, 2))
ref = jax.jit(lambda p, x: sampling.make_sampler(model, "rk4", num_steps=3, chunk_rows=None)(
    p, x, None).x)(params, x0)
split = sampling.make_sampler(model, "rk4", num_steps=3, chunk_rows=32)
out = jax.jit(lambda p, x: split(p, jax.lax.with_sharding_constraint(x, rows), None).x)(
    params, jax.device_put(x0, rows))
assert len(jax.devices()) == 4
print(float(jnp.max(jnp.abs(out - ref))))
"""


def test_chunks_on_sharded_rows():
    """Rows split over 4 (simulated) devices: the chunked sampler gives the one-device samples."""
    import subprocess
    import sys
    from configs_util import ROOT, simulated_devices_env
    proc = subprocess.run([sys.executable, "-c", _SHARDED], env=simulated_devices_env(4), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip().splitlines()[-1]) < 1e-5
