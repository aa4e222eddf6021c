"""Loop throughput vs the benchmark trainer's, same process, alternating."""
import sys, time, json, statistics, shutil
sys.path.insert(0, ".")
import jax, numpy as np
from flowmatch.experiments import cli, speed
from flowmatch import training
c = cli.load_config_file("configs/torchcfm_moons.py")
c.eval_every_steps = 0
c.progress_bar = False
tr = speed.make_trainer(c, steps_per_call=100)
jax.block_until_ready(tr.call()["loss"])
for r in range(2):
    t = time.perf_counter()
    for _ in range(200): m = tr.call()
    jax.block_until_ready(m)
    dt = time.perf_counter() - t
    print(f"trainer: {20000/dt:.0f} steps/s ({dt:.2f} s)")
    shutil.rmtree("/tmp/lv", ignore_errors=True)
    t = time.perf_counter()
    training.train_and_evaluate(c, "/tmp/lv")
    dt = time.perf_counter() - t
    rows = [json.loads(l) for l in open("/tmp/lv/metrics.jsonl")]
    sps = [r_["steps_per_sec"] for r_ in rows[1:]]
    print(f"loop: {dt:.2f} s whole call; logged median {statistics.median(sps):.0f} steps/s")
