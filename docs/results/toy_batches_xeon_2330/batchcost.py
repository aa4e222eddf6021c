import sys, time
sys.path.insert(0, ".")
import jax
from flowmatch.experiments import cli
from flowmatch.training import loop as loop_lib
from flowmatch import training, data as data_lib
c = cli.load_config_file("configs/torchcfm_moons.py")
s = training.read_settings(c)
plan = loop_lib.make_plan(s)
src = loop_lib.load_data(s.data)
it = data_lib.BatchIterator(src, 256, 0)
b = it.batches(0, 100); jax.block_until_ready(b)
t = time.perf_counter()
for i in range(200): b = plan.put_batches(it.batches(i * 100, 100))
jax.block_until_ready(b)
print("batches+put per call ms", (time.perf_counter() - t) / 200 * 1e3)
t = time.perf_counter()
for i in range(200): b = it.batches(i * 100, 100)
jax.block_until_ready(b)
print("batches per call ms", (time.perf_counter() - t) / 200 * 1e3)
