"""Time spent in Python's garbage collector during a train run, by generation, with wall times of the long ones."""
import sys, time, os, runpy, gc, collections, threading
T0 = float(os.environ["T0"])
tot = collections.defaultdict(float); cnt = collections.Counter(); start = {}
def cb(phase, info):
    if phase == "start": start[threading.get_ident()] = time.perf_counter()
    else:
        d = time.perf_counter() - start.pop(threading.get_ident(), time.perf_counter())
        g = info["generation"]; tot[g] += d; cnt[g] += 1
        if d > 0.01: print(f"[{time.time()-T0:7.3f}] gen{g} {d:.3f} on {threading.current_thread().name}", file=sys.stderr, flush=True)
gc.callbacks.append(cb)
sys.path.insert(0, "/work/main")
sys.argv = ["scripts/train.py"] + sys.argv[1:]
try:
    runpy.run_path("/work/main/scripts/train.py", run_name="__main__")
finally:
    print(f"[{time.time()-T0:7.3f}] GC totals " + ", ".join(f"gen{g}: {cnt[g]} x = {tot[g]:.3f} s" for g in sorted(tot)), file=sys.stderr)
