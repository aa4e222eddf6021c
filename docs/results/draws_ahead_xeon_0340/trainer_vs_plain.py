"""The trainer's steps/s beside the plain-JAX loop, interleaved (speed_process.train_step_comparison)."""
import sys
from flowmatch import threefry
threefry.unroll_hot_programs()
from flowmatch.experiments import cli, speed_process
c = cli.load_config_file(sys.argv[1]); k = int(sys.argv[2])
for r in speed_process.train_step_comparison(c, steps_per_call=k, rounds=int(sys.argv[3]), torchcfm=False):
    print(f"{r['label']:12s} {r['steps_per_sec']:9.1f} ({r['best']:9.1f}) {r['vs_plain']:.3f}x plain")
