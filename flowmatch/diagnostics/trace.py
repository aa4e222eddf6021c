"""Where an accelerator's time goes: a summary of a `jax.profiler` trace.

    with jax.profiler.trace(directory):
        ...                                   # the calls to look at
    summary = trace.device_summary(directory)

`device_summary` reads the trace that jax's profiler wrote (the newest `*.trace.json.gz` under the
directory, Chrome trace-event format) and, for the accelerator's device rows (processes named
"/device:GPU:k" or "/device:TPU:k"), sums each operation's (kernel's) time, groups operations
into kinds by name (matrix products and convolutions, copies and transposes, the rest: XLA's
fused elementwise and reduction kernels), and measures how busy the device was: the union of its
kernels' intervals over the span from the first kernel's start to the last one's end.  A busy
fraction well under 1 means the device waited between kernels (launches, host work, the
dependency chain of many small kernels); a large share of "other" time means time outside the
matrix units.  On a CPU trace there are no device rows and the summary says so (XLA:CPU's
operations run on host threads).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

# Kernel names of matrix products and convolutions: cuBLAS / cuBLASLt (gemm, nvjet), CUTLASS,
# cuDNN (xmma, implicit_gemm, fprop / dgrad / wgrad, fmha), XLA's own Triton gemm fusions, TPU
# convolution and dot fusions.  Not a bare "conv": XLA names its type conversions "convert".
MATMUL_PATTERN = re.compile(
    r"gemm|xmma|cutlass|nvjet|cudnn|fmha|flash|convolution|wgrad|dgrad|fprop|dot|matmul|wgmma",
    re.IGNORECASE)
COPY_PATTERN = re.compile(r"copy|transpose|memcpy|memset|concatenate|slice", re.IGNORECASE)
KINDS = ("matmul/conv", "copy/transpose", "other")
DEVICE_PREFIXES = ("/device:GPU", "/device:TPU")  # the trace's process names of accelerators


def kind_of(name: str) -> str:
    """The kind of a kernel by its name: one of `KINDS`."""
    if MATMUL_PATTERN.search(name):
        return KINDS[0]
    if COPY_PATTERN.search(name):
        return KINDS[1]
    return KINDS[2]


def latest_trace_file(directory: str) -> str:
    """The newest `*.trace.json.gz` under `directory` (jax.profiler writes
    plugins/profile/<run>/<host>.trace.json.gz); FileNotFoundError if none."""
    files = glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {directory}: was jax.profiler's trace "
                                "written there?")
    return max(files, key=os.path.getmtime)


def _busy_seconds(intervals) -> float:
    """Length of the union of [start, end) intervals (microseconds in, seconds out)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total * 1e-6


def summarize_events(events, top: int = 20) -> dict:
    """The summary of `device_summary` from a list of Chrome trace events."""
    devices = {e["pid"]: e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"
               and str(e.get("args", {}).get("name", "")).startswith(DEVICE_PREFIXES)}
    kernels = [e for e in events if e.get("ph") == "X" and e.get("pid") in devices
               and float(e.get("dur", 0)) > 0]
    if not kernels:
        return {"devices": sorted(devices.values()), "kernels": 0,
                "note": "no accelerator rows in this trace (XLA:CPU runs its operations on host "
                        "threads)"}
    per_op, count = collections.Counter(), collections.Counter()
    per_kind = collections.Counter()
    for e in kernels:
        seconds = float(e["dur"]) * 1e-6
        per_op[e["name"]] += seconds
        count[e["name"]] += 1
        per_kind[kind_of(e["name"])] += seconds
    starts = [float(e["ts"]) for e in kernels]
    ends = [float(e["ts"]) + float(e["dur"]) for e in kernels]
    span = (max(ends) - min(starts)) * 1e-6
    busy = _busy_seconds(zip(starts, ends))
    kernel_seconds = sum(per_op.values())
    return {
        "devices": sorted(devices.values()), "kernels": len(kernels),
        "span_seconds": span, "busy_seconds": busy,
        "busy_fraction": busy / span if span > 0 else float("nan"),
        "kernel_seconds": kernel_seconds,
        "kinds": {k: {"seconds": per_kind[k], "share": per_kind[k] / kernel_seconds}
                  for k in KINDS},
        "top": [{"name": name, "seconds": s, "calls": count[name], "share": s / kernel_seconds,
                 "kind": kind_of(name)} for name, s in per_op.most_common(top)]}


def device_summary(directory: str, top: int = 20) -> dict:
    """Summary of the newest trace under `directory`: {"devices", "kernels" (count),
    "span_seconds", "busy_seconds", "busy_fraction", "kernel_seconds" (summed over streams),
    "kinds": {kind: {"seconds", "share"}}, "top": [{"name", "seconds", "calls", "share",
    "kind"}] (the `top` operations by total time)}, or {"devices": [], "kernels": 0, "note"} when
    the trace has no accelerator rows."""
    with gzip.open(latest_trace_file(directory), "rt") as f:
        events = json.load(f).get("traceEvents", [])
    return summarize_events(events, top=top)


def format_summary(summary: dict, top: int = 12) -> str:
    """The summary as printed lines."""
    if not summary.get("kernels"):
        return f"  profile: {summary.get('note', 'no kernels')}"
    lines = [f"  profile ({summary['kernels']} kernels on {', '.join(summary['devices'])}): "
             f"device busy {summary['busy_fraction']:.1%} of {summary['span_seconds'] * 1e3:.1f} "
             f"ms; kernel time by kind: "
             + ", ".join(f"{k} {v['share']:.1%}" for k, v in summary["kinds"].items())]
    for row in summary["top"][:top]:
        lines.append(f"    {row['share']:6.1%} {row['seconds'] * 1e3:9.2f} ms {row['calls']:6d}x "
                     f" {row['kind']:14s} {row['name'][:90]}")
    return "\n".join(lines)
