"""Drawing: the one key layout (source and sampler streams), chunking, and returned sources."""

import jax
import jax.numpy as jnp
import numpy as np

from flowmatch import objectives, paths, rng, sampling, sources


def setup():
    obj = objectives.DDPM("linear", 50)
    model = sampling.ModelFn.from_objective(lambda p, x, t, c: 0.1 * x * p, obj)
    return model, sources.SourceDistribution(example_shape=(3,))


def test_draw_uses_the_named_streams():
    model, source = setup()
    sampler = sampling.make_sampler(model, "ancestral", num_steps=5)
    key = rng.seed_stream(7, "samples")
    out = jax.jit(sampling.make_draw(sampler, source.sample, 16, with_source=True))(1.0, key)
    x0 = source.sample(rng.stream(key, "source"), 16)
    np.testing.assert_array_equal(out.x0, x0)
    np.testing.assert_array_equal(out.x, jax.jit(sampler)(1.0, x0, rng.stream(key, "sampler")).x)


def test_chunked_is_chunks_of_the_draw_and_independent_of_labels_layout():
    model, source = setup()
    sampler = sampling.make_sampler(model, "ddim", num_steps=4)
    key = jax.random.PRNGKey(3)
    chunked = sampling.Chunked(sampler, source.sample, 10, 4, with_source=True)
    out = chunked(1.0, key)
    assert out.x.shape == (10, 3) and out.x0.shape == (10, 3) and out.nfe == 4 and out.success
    draw = jax.jit(sampling.make_draw(sampler, source.sample, 4))
    want = np.concatenate([np.asarray(draw(1.0, jax.random.fold_in(key, c)).x)
                           for c in range(3)])[:10]
    np.testing.assert_array_equal(out.x, want)
    # one chunk of everything draws other noise, but the same distribution of rows
    assert not np.allclose(sampling.Chunked(sampler, source.sample, 10, 10)(1.0, key).x, out.x)


def test_labels_reach_the_network():
    obj = objectives.FlowMatching(paths.make_path())
    model = sampling.ModelFn.from_objective(
        lambda p, x, t, c: jnp.broadcast_to(c[:, None].astype(x.dtype), x.shape), obj)
    source = sources.SourceDistribution(example_shape=(2,))
    out = sampling.Chunked(sampling.make_sampler(model, "euler", num_steps=1), source.sample, 6,
                           4)(None, jax.random.PRNGKey(0), labels=np.arange(6) % 3)
    draws = sampling.Chunked(sampling.make_sampler(model, "euler", num_steps=1), source.sample,
                             6, 4, with_source=True)(None, jax.random.PRNGKey(0),
                                                     labels=np.arange(6) % 3)
    np.testing.assert_allclose(out.x - draws.x0, np.repeat((np.arange(6) % 3)[:, None], 2, 1),
                               atol=1e-6)


def test_compile_ahead_compiles_the_call_s_program_once_and_changes_no_sample(caplog):
    """The program compiled in the background is the one the call runs (jit's cache serves it:
    one compilation in all), with labels and sharded params alike; the samples are unchanged."""
    model, source = setup()
    sampler = sampling.make_sampler(model, "ddim", num_steps=3)
    key, labels = jax.random.PRNGKey(5), np.arange(10) % 2
    params = jax.device_put(jnp.float32(1.0), jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    want = sampling.Chunked(sampler, source.sample, 10, 4)(params, key, labels)
    chunked = sampling.Chunked(sampler, source.sample, 10, 4)
    compiles = lambda: sum("XLA compilation of jit(draw)" in r.getMessage()  # noqa: E731
                           for r in caplog.records)
    previous = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)  # process-wide: the thread's compile logs too
    try:
        with caplog.at_level("WARNING"):
            chunked.compile_ahead(params, key, labels)
            chunked._ahead.join()
            ahead = compiles()
            out = chunked(params, key, labels)
            assert (ahead, compiles()) == (1, 1)
    finally:
        jax.config.update("jax_log_compiles", previous)
    np.testing.assert_array_equal(out.x, want.x)
