import statistics, time, sys
import jax, jax.numpy as jnp
from flowmatch.experiments import cli, speed
q = jax.random.normal(jax.random.PRNGKey(0), (32, 1024, 12, 64), jnp.bfloat16)
for impl in (None, "cudnn", "xla"):
    try:
        txt = jax.jit(lambda q, impl=impl: jax.nn.dot_product_attention(q, q, q, implementation=impl)).lower(q).compile().as_text()
        print("attention implementation", impl, "->", "cuDNN custom call" if "cudnn" in txt.lower() else "no cuDNN call", flush=True)
    except Exception as e:
        print("attention implementation", impl, "error", type(e).__name__, str(e)[:300], flush=True)
orig = jax.nn.dot_product_attention
for impl in ("cudnn", "xla"):
    def patched(*a, implementation=None, _impl=impl, **k):
        return orig(*a, implementation=_impl, **k)
    jax.nn.dot_product_attention = patched
    try:
        c = cli.load_config_file("configs/imagenet64_dit_tpu.py")
        c.model.scan_blocks, c.model.remat = False, "none"
        c.data.name, c.data.path = "digits", ""
        c.batch_size = 32
        c.parallel.data_axis_size, c.parallel.fsdp_axis_size, c.parallel.tensor_axis_size = 1, 1, 1
        from flowmatch.experiments import speed_unet
        spec = speed_unet._spec(c, (64, 64, 3))
        t0 = time.time()
        tr = speed.make_trainer(c, steps_per_call=1, spec=spec, batches=speed_unet.random_batches(32, (64, 64, 3), 1))
        jax.block_until_ready(tr.call()["loss"])
        comp = time.time() - t0
        ts = []
        for _ in range(7):
            t = time.perf_counter(); jax.block_until_ready(tr.call()["loss"]); ts.append(time.perf_counter() - t)
        print(f"DiT-B/2 64x64 batch 32 step, attention {impl}: median {statistics.median(ts)*1e3:.2f} ms, best {min(ts)*1e3:.2f} ms (build+compile {comp:.0f} s)", flush=True)
    except Exception as e:
        print("DiT step with", impl, "error", type(e).__name__, str(e)[:400], flush=True)
