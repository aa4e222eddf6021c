import sys, time, os, runpy, gc
T0 = float(os.environ["T0"])
def mark(w): print(f"[{time.time()-T0:7.3f}] {w}", file=sys.stderr, flush=True)
sys.path.insert(0, "/work/main")
sys.argv = ["scripts/train.py"] + sys.argv[1:]
try:
    runpy.run_path("/work/main/scripts/train.py", run_name="__main__")
except SystemExit:
    pass
mark(f"main done, gc objects {len(gc.get_objects())}, counts {gc.get_count()} stats {gc.get_stats()}")
mode = os.environ.get("MODE")
if mode == "collect":
    t = time.time(); n = gc.collect(); mark(f"gc.collect {time.time()-t:.3f} ({n})")
    t = time.time(); n = gc.collect(); mark(f"gc.collect again {time.time()-t:.3f} ({n})")
if mode == "freeze":
    gc.freeze(); mark("frozen")
