"""compare_integrators on the quickstart run (/tmp/qs19), in-process, timed; tree from argv[1]."""
import sys, time, json
tree, out = sys.argv[1], sys.argv[2]
sys.path.insert(0, tree)
import jax
from flowmatch.experiments import compare
assert compare.__file__.startswith(tree), compare.__file__
t0 = time.perf_counter()
rows = compare.compare_integrators("/tmp/qs19", out)
print(f"{tree}: compare_integrators wall {time.perf_counter() - t0:.1f} s, {len(rows)} rows")
