"""The profile summary: kernel times, kinds and the device's busy fraction from trace events."""
import gzip
import json
import os

import jax
import jax.numpy as jnp
import pytest

from flowmatch.diagnostics import trace


def _events():
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}}]
    kernels = [  # (name, start us, duration us, stream)
        ("sm90_xmma_gemm_bf16bf16_f32", 0, 40, 7),
        ("loop_add_fusion", 40, 10, 7),
        ("sm90_xmma_gemm_bf16bf16_f32", 60, 40, 7),   # a 10 us gap before it
        ("input_transpose_fusion", 80, 30, 8),        # overlaps the gemm on another stream
    ]
    host = [{"ph": "X", "pid": 2, "tid": 1, "name": "PjitFunction(step)", "ts": 0, "dur": 500}]
    return meta + host + [{"ph": "X", "pid": 1, "tid": tid, "name": n, "ts": ts, "dur": d}
                          for n, ts, d, tid in kernels]


def test_summary_sums_kernels_by_name_and_kind_and_measures_the_gaps():
    s = trace.summarize_events(_events())
    assert s["devices"] == ["/device:GPU:0"] and s["kernels"] == 4
    assert s["span_seconds"] == pytest.approx(110e-6)
    # busy: [0, 50) and [60, 110) -> 100 us of 110 (the host's event does not count)
    assert s["busy_seconds"] == pytest.approx(100e-6)
    assert s["busy_fraction"] == pytest.approx(100 / 110)
    assert s["kernel_seconds"] == pytest.approx(120e-6)
    top = s["top"][0]
    assert top["name"].startswith("sm90_xmma_gemm") and top["calls"] == 2
    assert top["seconds"] == pytest.approx(80e-6) and top["kind"] == "matmul/conv"
    assert s["kinds"]["matmul/conv"]["share"] == pytest.approx(80 / 120)
    assert s["kinds"]["copy/transpose"]["share"] == pytest.approx(30 / 120)
    assert s["kinds"]["other"]["share"] == pytest.approx(10 / 120)
    assert "90.9%" in trace.format_summary(s)


def test_kinds_by_kernel_name():
    assert trace.kind_of("cutlass_80_tensorop_s16816gemm") == "matmul/conv"
    assert trace.kind_of("sm90_xmma_fprop_implicit_gemm_bf16") == "matmul/conv"
    assert trace.kind_of("convolution.12") == "matmul/conv"
    assert trace.kind_of("copy_fusion.3") == "copy/transpose"
    assert trace.kind_of("loop_multiply_fusion") == "other"
    assert trace.kind_of("loop_convert_multiply_fusion_11") == "other"  # a type conversion
    assert trace.kind_of("cudnn_fmha_fwd_bf16") == "matmul/conv"


def test_a_trace_file_is_read_and_a_cpu_trace_has_no_device_rows(tmp_path):
    path = tmp_path / "plugins" / "profile" / "run"
    os.makedirs(path)
    with gzip.open(path / "host.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": _events()}, f)
    assert trace.device_summary(str(tmp_path))["kernels"] == 4
    with pytest.raises(FileNotFoundError, match="no .*trace.json.gz"):
        trace.device_summary(str(tmp_path / "empty"))
    # A real trace of this (CPU) process: XLA:CPU's work is on host threads, no device rows.
    cpu_dir = tmp_path / "cpu"
    f = jax.jit(lambda x: jnp.sin(x) @ x)
    f(jnp.ones((64, 64))).block_until_ready()
    with jax.profiler.trace(str(cpu_dir)):
        f(jnp.ones((64, 64))).block_until_ready()
    s = trace.device_summary(str(cpu_dir))
    assert s["kernels"] == 0 and "no accelerator rows" in trace.format_summary(s)
