#!/usr/bin/env bash
# The accelerator measurements of docs/speed.md ("On one GPU") in one command, each section in
# its own process under a time limit, so that one failing or slow section leaves the others'
# figures:
#
#   scripts/gpu_benchmark.sh OUT_DIR
#
# Sections (figures in OUT_DIR/*.json, everything printed in OUT_DIR/gpu_benchmark.log):
#   unet       configs/cifar10_gpu8.py's U-Net train step (bfloat16) at its 64 examples per
#              device, 10 steps per call: FLOPs per step, step time, MFU against the data sheet
#              and against a measured bfloat16 product, and a profile of where the time goes.
#   mlp        scripts/benchmark.py's train, eval and sampling sections: the 2-D train steps
#              beside the plain-JAX loop, the 100,000-sample evaluation beside its sampling,
#              sampling FLOP/s beside the measured float32 (TF32) product and rk4 beside
#              torchdiffeq's on the same GPU (when torch and torchdiffeq import).
#   unet256    the same U-Net step at 256 examples per device (does a larger batch fill the
#              GPU's idle time between kernels?).
#   unet_graphs the unet section's step (no profile) with XLA's command buffers (CUDA graphs)
#              extended to loops and conditionals (XLA_FLAGS=--xla_gpu_enable_command_buffer=
#              FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL,CONDITIONAL,WHILE), so that the scanned
#              steps and their finiteness guard can launch as one graph: does it close the
#              quarter of the step the GPU waited between kernels (docs/speed.md)?
#   dit        configs/imagenet64_dit_tpu.py's DiT-B/2 (64x64, bfloat16) train step on one
#              device, blocks unrolled and not rematerialised, 32 examples, with
#              model.attention "auto" (cuDNN's fused kernel on a GPU) and "xla": FLOPs, step
#              time, MFU, profile of each.
#   couplings  the OT-coupled train steps beside the uncoupled one.
#
# Environment: PYTHON (default python3), SECTIONS (default "unet mlp dit couplings unet256
# unet_graphs"),
# QUICK=1
# (the benchmark's --quick and smaller settings: a check that the script runs, on any machine).
set -u
out=${1:?usage: scripts/gpu_benchmark.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.." || exit 2
py=${PYTHON:-python3}
sections=${SECTIONS:-unet mlp dit couplings unet256 unet_graphs}
graph_commands=FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL,CONDITIONAL,WHILE
quick=()
unet_config=configs/cifar10_gpu8.py
unet_batch=64
unet_big_batch=256
dit_batch=32
limit() { echo "$1"; }
if [ "${QUICK:-0}" = 1 ]; then
  quick=(--quick)
  unet_config=configs/cifar10_gpu8.py:smoke
  unet_batch=2
  unet_big_batch=4
  dit_batch=1
  limit() { echo $(($1 * 3)); }
fi
log="$out/gpu_benchmark.log"
profiles=$(mktemp -d)  # traces stay out of OUT_DIR (large, deep folders)

section() {  # name, seconds, command...
  local name=$1 seconds
  seconds=$(limit "$2")
  shift 2
  echo "== $name: start $(date -u +%T), limit ${seconds}s" | tee -a "$log"
  timeout "$seconds" "$@" 2>&1 | tee -a "$log"
  echo "== $name: exit ${PIPESTATUS[0]} at $(date -u +%T)" | tee -a "$log"
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.draw,temperature.gpu \
    --format=csv 2>&1 || echo "no nvidia-smi"
  "$py" -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__); \
print(jax.devices())"
} 2>&1 | tee -a "$log"

for s in $sections; do
  case $s in
    unet)
      section unet 210 "$py" scripts/benchmark.py --sections= "${quick[@]}" \
        --unet_config="$unet_config" --unet_batch_per_device="$unet_batch" \
        --unet_steps_per_call=10 --unet_profile_dir="$profiles/unet" --output="$out/unet.json"
      ;;
    unet256)
      section unet256 150 "$py" scripts/benchmark.py --sections= "${quick[@]}" \
        --unet_config="$unet_config" --unet_batch_per_device="$unet_big_batch" \
        --unet_steps_per_call=10 --output="$out/unet256.json"
      ;;
    unet_graphs)
      section unet_graphs 150 env XLA_FLAGS="${XLA_FLAGS:-} \
--xla_gpu_enable_command_buffer=$graph_commands" "$py" scripts/benchmark.py --sections= \
        "${quick[@]}" --unet_config="$unet_config" --unet_batch_per_device="$unet_batch" \
        --unet_steps_per_call=10 --output="$out/unet_graphs.json"
      ;;
    mlp)
      section mlp 180 "$py" scripts/benchmark.py --sections=train,eval,sampling "${quick[@]}" \
        --output="$out/mlp.json"
      ;;
    dit)
      section dit 220 "$py" - "$out" "$dit_batch" "${QUICK:-0}" "$profiles/dit" <<'EOF'
import sys
from flowmatch import fileio
from flowmatch.experiments import cli, speed_unet
out, batch, quick = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
figures = {}
for attention in ("auto", "xla"):
    config = cli.load_config_file("configs/imagenet64_dit_tpu.py" + (":smoke" if quick else ""))
    config.model.scan_blocks, config.model.remat = False, "none"  # unrolled: a plain profile
    config.model.attention = attention
    print(f"model.attention={attention}:", flush=True)
    figures[attention] = speed_unet.run_unet_benchmark(
        config, batch_per_device=batch, repeats=2 if quick else 5, device_counts=(1,),
        profile_dir=f"{sys.argv[4]}_{attention}")
    fileio.write_json(f"{out}/dit.json", figures, indent=2)
EOF
      ;;
    couplings)
      section couplings 80 "$py" scripts/benchmark.py --sections=couplings "${quick[@]}" \
        --output="$out/couplings.json"
      ;;
    *)
      echo "unknown section $s (choose from: unet mlp dit couplings unet256 unet_graphs)" \
        | tee -a "$log"
      exit 2
      ;;
  esac
done
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv 2>&1 | tee -a "$log"
