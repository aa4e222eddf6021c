"""The trainer streaming ArrayRecord shards through grain: the CIFAR-10 config trains from
shards prepared from a tiny generated CIFAR-10 release; a small U-Net trains from shards of an
image folder (8x8 grey, two classes; digit-sized so it compiles in seconds) and resumes exactly
(the reader's position travels in the checkpoint); a missing or damaged input is a one-line
error before anything is written."""

import os
import pickle
import shutil
import tarfile

import jax
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("grain")
pytest.importorskip("array_record")

from configs_util import load_config  # noqa: E402
from flowmatch import metrics, training  # noqa: E402
from flowmatch.checks import ConfigError  # noqa: E402
from flowmatch.data import prepare  # noqa: E402


def _tiny_folder_shards(tmp_path):
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / label / f"{i}.png")
    out = tmp_path / "shards"
    prepare.prepare("image_folder", folder, out, split="train", image_size=8, channels=1,
                    num_shards=2)
    return str(out)


def digits_from_shards(path, **overrides):
    """configs/digits.py:smoke reading shards instead of the embedded set, with the one-level
    U-Net of tests/training/test_loop.py's end-to-end digits run: the same train step and
    sampler programs, compiled once for both files (the session's compilation cache)."""
    config = load_config("digits")
    config.data.name = "arrayrecord"
    config.data.path = path
    config.model.update(base_channels=8, channel_mult=(1,), attn_resolutions=(8,), num_groups=4)
    config.update(overrides)
    return config


def _tiny_cifar_shards(tmp_path):
    """A CIFAR-10 python release with 4-6 random images per batch file, prepared as shards."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, m in enumerate((4, 4, 4, 4, 4, 6), start=1):
        name = f"data_batch_{i}" if i <= 5 else "test_batch"
        obj = {b"data": rng.integers(0, 256, (m, 3072), dtype=np.uint8),
               b"labels": [int(v) for v in rng.integers(0, 10, m)]}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    shutil.rmtree(folder)
    out = tmp_path / "shards"
    prepare.prepare("cifar10", archive, out, split="train", num_shards=2)
    return str(out)


def test_the_cifar10_config_trains_from_shards_of_a_tiny_generated_set(tmp_path):
    config = load_config("cifar10", variant="")   # not :smoke, which swaps in digits
    config.data.name = "arrayrecord"
    config.data.path = _tiny_cifar_shards(tmp_path)
    config.model.update(base_channels=8, channel_mult=(1,), num_res_blocks=1,
                        attn_resolutions=(), num_groups=4, dropout=0.0)
    config.update(batch_size=4, num_train_steps=2, steps_per_call=1, log_every_steps=1,
                  eval_every_steps=0, checkpoint_every_steps=2, progress_bar=False)
    training.train_and_evaluate(config, str(tmp_path / "run"))
    rows = metrics.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    spec = training.runs.read_spec(str(tmp_path / "run"))
    assert spec.kind == "image" and spec.example_shape == (32, 32, 3) and spec.num_classes == 10


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return _tiny_folder_shards(tmp_path_factory.mktemp("folder"))


def test_a_unet_trains_from_shards_and_resumes_exactly(shards, tmp_path):
    straight = training.train_and_evaluate(digits_from_shards(shards), str(tmp_path / "a"))
    rows = metrics.read_metrics(str(tmp_path / "a" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [2, 4] and all(np.isfinite(r["loss"]) for r in rows)
    assert os.path.exists(tmp_path / "a" / "samples_4.png")
    spec = training.runs.read_spec(str(tmp_path / "a"))
    assert spec.kind == "image" and spec.example_shape == (8, 8, 1) and spec.num_classes == 2
    # half the run, then the same command again: the reader resumes at its saved position
    training.train_and_evaluate(digits_from_shards(shards, num_train_steps=2),
                                str(tmp_path / "b"))
    resumed = training.train_and_evaluate(digits_from_shards(shards), str(tmp_path / "b"))
    for x, y in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(x, y)
    rows_b = metrics.read_metrics(str(tmp_path / "b" / "metrics.jsonl"))
    assert [r["loss"] for r in rows_b] == [r["loss"] for r in rows]


def test_missing_or_damaged_shards_are_one_line_before_anything_is_written(shards, tmp_path):
    with pytest.raises(ConfigError, match="data:"):
        training.train_and_evaluate(digits_from_shards(str(tmp_path / "none")),
                                    str(tmp_path / "w1"))
    assert not os.path.exists(tmp_path / "w1")
    damaged = tmp_path / "damaged"
    shutil.copytree(shards, damaged)
    shard = sorted(p for p in os.listdir(damaged) if p.startswith("train-"))[0]
    with open(damaged / shard, "r+b") as f:
        f.truncate(os.path.getsize(damaged / shard) // 2)
    with pytest.raises(Exception, match=shard):
        training.train_and_evaluate(digits_from_shards(str(damaged)), str(tmp_path / "w2"))
