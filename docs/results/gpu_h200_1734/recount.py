"""FLOPs of the U-Net and DiT steps of run 2 recounted on the step lowered for CPU (the GPU's
compiled cost analysis in unet.json / dit.json leaves out the convolutions and products handed
to cuDNN and cuBLAS), and the MFU from run 2's step times and run 3's DiT step with cuDNN's
attention.  Run from the repository root:

    PYTHONPATH=. python docs/results/gpu_h200_1734/recount.py
"""
import json
import os

from flowmatch import fileio
from flowmatch.experiments import cli, speed_unet

HERE = os.path.dirname(os.path.abspath(__file__))
DIT_CUDNN_STEP_SECONDS = 54.79e-3  # run3.log: median of 7 calls of one step, batch 32


def config_of(name):
    if name == "unet":
        return cli.load_config_file("configs/cifar10_gpu8.py")
    c = cli.load_config_file("configs/imagenet64_dit_tpu.py")
    c.model.scan_blocks, c.model.remat = False, "none"  # as scripts/gpu_benchmark.sh ran it
    return c


out = {}
for name in ("unet", "dit"):
    with open(os.path.join(HERE, f"{name}.json")) as f:
        r = json.load(f)
    r = r.get("unet", r)
    config = config_of(name)
    flops = speed_unet.step_flops(config, speed_unet.example_shape(config), r["batch_size"])
    rows = {"xla attention" if name == "dit" else "measured": r["step_seconds"]}
    if name == "dit":
        rows["cudnn attention"] = DIT_CUDNN_STEP_SECONDS
    out[name] = {"batch_size": r["batch_size"], "flops_per_step": flops,
                 "flops_per_example": flops / r["batch_size"],
                 "gpu_compiled_flops_per_step": r["flops_per_step"],
                 "peak_flops_data_sheet": r["peak_flops_per_device"],
                 "measured_peak_flops": r["measured_peak_flops"], "steps": {}}
    for label, seconds in rows.items():
        achieved = flops / seconds
        out[name]["steps"][label] = {
            "step_seconds": seconds, "examples_per_sec": r["batch_size"] / seconds,
            "flops_per_sec": achieved, "tflops_per_sec": achieved / 1e12,
            "mfu": achieved / r["peak_flops_per_device"],
            "mfu_of_measured_peak": achieved / r["measured_peak_flops"]}
fileio.write_json(os.path.join(HERE, "recounted.json"), out, indent=2)
print(json.dumps(out, indent=2))
