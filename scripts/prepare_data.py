"""Write ArrayRecord shards and their manifest, for streaming a data set through grain.

  python scripts/prepare_data.py --source=image_folder --input=/data/imagenet/train \
      --output=/data/imagenet64 --image_size=64 --num_workers=8
  python scripts/prepare_data.py --source=cifar10 --input=cifar-10-python.tar.gz \
      --output=/data/cifar10 --split=test
  python scripts/prepare_data.py --source=latents --input=latents.npz --output=/data/latents

Then train with --config.data.name=arrayrecord --config.data.path=OUTPUT.  Kept short on
purpose: the work is done by `flowmatch.data.prepare.prepare`, which is tested.  Exit status:
0 done; 2 bad flags or input, reported as one line "error: ..." on stderr with nothing written.
"""
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowmatch.experiments import cli  # noqa: E402

SOURCES = ("image_folder", "cifar10", "latents")  # flowmatch.data.prepare.SOURCES

flags.DEFINE_enum("source", None, SOURCES, "What --input is: a folder of images (class "
                  "subfolders give labels), the CIFAR-10 python release, or a .npy / .npz file "
                  "of latents (x [N, h, w, c], optional label [N]).")
flags.DEFINE_string("input", None, "The folder, archive or array file to read.")
flags.DEFINE_string("output", None, "Directory for the shards and manifest-SPLIT.json.")
flags.DEFINE_string("split", "train", "cifar10: the split to read (train or test); otherwise "
                    "the name the output split gets.")
flags.DEFINE_integer("image_size", None, "image_folder: side of the square images (shorter side "
                     "resized, centre crop).")
flags.DEFINE_integer("channels", 3, "image_folder: 3 (RGB) or 1 (grayscale).")
flags.DEFINE_integer("num_shards", None, "Number of shard files (default: about 256 MiB each).")
flags.DEFINE_enum("latent_dtype", "float32", ["float32", "float16"], "latents: stored dtype.")
flags.DEFINE_bool("skip_bad", False, "Leave unreadable images (or CIFAR-10 batch files) out "
                  "instead of stopping; the count goes into the manifest.")
flags.DEFINE_bool("overwrite", False, "Replace the split if --output already holds it.")
flags.DEFINE_integer("num_workers", 0, "image_folder: processes decoding images (0: this one).")
flags.mark_flags_as_required(["source", "input", "output"])


def main(argv):
    cli.no_arguments(argv, "--output=DIR")
    from flowmatch.data import prepare  # pylint: disable=g-import-not-at-top
    f = flags.FLAGS
    try:
        manifest = prepare.prepare(
            f.source, f.input, f.output, split=f.split, image_size=f.image_size,
            channels=f.channels, num_shards=f.num_shards, latent_dtype=f.latent_dtype,
            skip_bad=f.skip_bad, overwrite=f.overwrite, num_workers=f.num_workers)
    except (ValueError, OSError, ImportError) as e:  # bad input: one line, nothing written
        raise cli.ConfigError(str(e)) from e
    print(f"wrote {manifest.num_examples} {manifest.kind}s {list(manifest.example_shape)} "
          f"{manifest.dtype} in {len(manifest.shards)} shard(s) to "
          f"{os.path.join(manifest.directory, f'manifest-{f.split}.json')}")


if __name__ == "__main__":
    cli.run(main)
