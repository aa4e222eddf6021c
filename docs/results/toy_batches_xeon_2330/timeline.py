"""Timeline of scripts/train.py: wraps a few functions to print wall times since process start."""
import sys, time, os, runpy, atexit, functools
T0 = float(os.environ.get("T0", time.time()))
def mark(what): print(f"[{time.time() - T0:7.3f}] {what}", file=sys.stderr, flush=True)
mark("python up")
atexit.register(lambda: mark("atexit"))
sys.path.insert(0, ".")
from flowmatch.training import loop, evaluation
mark("flowmatch.training imported")
def wrap(cls, name):
    f = getattr(cls, name)
    @functools.wraps(f)
    def g(*a, **k):
        mark(f"> {cls.__name__}.{name}")
        r = f(*a, **k)
        mark(f"< {cls.__name__}.{name}")
        return r
    setattr(cls, name, g)
for n in ("run", "_restore", "_iterator", "_loop", "_log", "_save"):
    wrap(loop._Trainer, n)
for n in ("__call__", "close", "finish_pictures"):
    wrap(evaluation.Evaluator, n)
sys.argv = ["scripts/train.py"] + sys.argv[1:]
runpy.run_path("scripts/train.py", run_name="__main__")
