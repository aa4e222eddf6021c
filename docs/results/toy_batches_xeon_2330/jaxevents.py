"""Prints jax's compile-pipeline durations (trace, lower, cache, compile) as a train run goes."""
import sys, time, runpy, collections
T0 = time.time()
sys.path.insert(0, ".")
import jax, jax.monitoring as mon
tot = collections.defaultdict(float); cnt = collections.Counter()
def listener(event, duration, **kw):
    tot[event] += duration; cnt[event] += 1
    if duration > 0.02:
        print(f"[{time.time() - T0:6.2f}] {event} {duration:.3f}", file=sys.stderr, flush=True)
mon.register_event_duration_secs_listener(listener)
import atexit
atexit.register(lambda: [print(f"TOTAL {k} {v:.3f} ({cnt[k]})", file=sys.stderr) for k, v in sorted(tot.items(), key=lambda kv: -kv[1])])
sys.argv = ["scripts/train.py"] + sys.argv[1:]
runpy.run_path("scripts/train.py", run_name="__main__")
