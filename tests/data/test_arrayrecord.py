"""ArrayRecord shards and the grain pipeline: round trips against the in-memory loaders, the
stream against the in-memory pipeline, per-process slices, exact resume (with and without
worker processes), damaged shards and records, and scripts/prepare_data.py's errors."""
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

pytest.importorskip("grain")
pytest.importorskip("array_record")

from flowmatch.data import arrayrecord  # noqa: E402
from flowmatch.data import grain_pipeline  # noqa: E402
from flowmatch.data import images as images_lib  # noqa: E402
from flowmatch.data import pipeline  # noqa: E402
from flowmatch.data import prepare  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = ("cat", "dog", "emu")
PER_CLASS = 10
SIZE = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """30 PNGs of assorted sizes and modes (RGB, grayscale, RGBA) in 3 class folders."""
    from PIL import Image
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / c).mkdir()
        for i in range(PER_CLASS):
            h, w = (int(v) for v in rng.integers(9, 25, 2))
            mode = ("RGB", "L", "RGBA")[i % 3]
            pixels = rng.integers(0, 256, (h, w, len(mode)) if mode != "L" else (h, w))
            Image.fromarray(pixels.astype(np.uint8), mode).save(root / c / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "folder"
    prepare.prepare("image_folder", folder, out, image_size=SIZE, num_shards=3)
    return out


def _iterator(path, **kwargs):
    kwargs = {"global_batch_size": 8, "seed": 3, "random_flip": True, "prefetch": 0, **kwargs}
    return grain_pipeline.GrainIterator(path, **kwargs)


def _same(a, b):
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["label"], b["label"])


# ------------------------------------------------------------------------------- round trips


def test_image_folder_records_are_the_loaders_images(folder, shards):
    want = images_lib.load_image_folder(folder, SIZE)
    got = arrayrecord.read_all(shards)
    assert got["x"].dtype == np.uint8 and got["x"].shape == (30, SIZE, SIZE, 3)
    np.testing.assert_array_equal(got["x"], np.rint((want.x + 1) * 127.5).astype(np.uint8))
    np.testing.assert_array_equal(images_lib._to_unit_range(got["x"], 255.0), want.x)
    np.testing.assert_array_equal(got["label"], want.label)
    manifest = arrayrecord.read_manifest(shards)
    assert (manifest.kind, manifest.example_shape, manifest.dtype) == ("image", (8, 8, 3), "uint8")
    assert (manifest.num_examples, manifest.num_classes, manifest.class_names) == (30, 3, CLASSES)
    assert [s.num_records for s in manifest.shards] == [10, 10, 10]
    for s in manifest.shards:
        assert arrayrecord.file_crc32(manifest.shard_path(s)) == s.crc32
    assert sorted(os.listdir(shards)) == ["manifest-train.json"] + [
        f"train-0000{i}-of-00003.array_record" for i in range(3)]


def _cifar_rows(m, start):
    rng = np.random.default_rng(start)
    return rng.integers(0, 256, (m, 3072), dtype=np.uint8), [int(v) for v in
                                                               rng.integers(0, 10, m)]


def _write_cifar(tmp_path, sizes=(3, 2, 2, 2, 4), test_size=5):
    """A tiny CIFAR-10 python release (as tests/test_data.py builds it): the .tar.gz."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {f"data_batch_{i}": _cifar_rows(m, i) for i, m in enumerate(sizes, start=1)}
    batches["test_batch"] = _cifar_rows(test_size, 99)
    for name, (rows, labels) in batches.items():
        (folder / name).write_bytes(pickle.dumps(
            {b"batch_label": name.encode(), b"labels": labels, b"data": rows}, protocol=2))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    shutil.rmtree(folder)
    return archive


def test_cifar10_records_are_the_loaders_images_and_test_is_the_reference(tmp_path):
    archive = _write_cifar(tmp_path)
    out = tmp_path / "cifar"
    for split in ("train", "test"):
        prepare.prepare("cifar10", archive, out, split=split, num_shards=2)
    for split, n in (("train", 13), ("test", 5)):
        want = images_lib.load_cifar10(archive, split)
        got = arrayrecord.read_all(out, split)
        assert len(got["x"]) == n
        np.testing.assert_array_equal(images_lib._to_unit_range(got["x"], 255.0), want.x)
        np.testing.assert_array_equal(got["label"], want.label)
    source = grain_pipeline.ArrayRecordSource(out, "train")
    assert (source.num_examples, source.num_classes, source.example_shape) == (13, 10, (32, 32, 3))
    np.testing.assert_array_equal(source.sample_reference(0, 4),
                                  images_lib.load_cifar10(archive, "test").x[:4])


def test_latents_round_trip_in_float32_and_float16(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 4, 4, 2)).astype(np.float32)
    np.savez(tmp_path / "lat.npz", x=x, label=np.arange(12) % 4)
    for dtype in ("float32", "float16"):
        out = tmp_path / dtype
        manifest = prepare.prepare("latents", tmp_path / "lat.npz", out, latent_dtype=dtype)
        assert (manifest.kind, manifest.dtype, manifest.num_classes) == ("latent", dtype, 4)
        it = grain_pipeline.GrainIterator(out, global_batch_size=12, seed=0)
        batch = next(it)
        order = np.random.default_rng([0, 0]).permutation(12)  # epoch 0 of seed 0
        np.testing.assert_array_equal(batch["x"], x[order].astype(dtype).astype(np.float32))
        np.testing.assert_array_equal(batch["label"], (np.arange(12) % 4)[order])
        assert batch["x"].dtype == np.float32 and batch["label"].dtype == np.int32
    np.save(tmp_path / "plain.npy", x)
    manifest = prepare.prepare("latents", tmp_path / "plain.npy", tmp_path / "plain")
    assert manifest.num_classes == 0
    np.testing.assert_array_equal(arrayrecord.read_all(tmp_path / "plain")["label"], 0)


# ------------------------------------------------------------------------------------ stream


def test_stream_is_the_in_memory_pipelines_for_any_process_count(folder, shards):
    """Same seed, same records: the batches of flowmatch.data.pipeline, flips included,
    across two epoch boundaries (30 records, batches of 8), for P = 1 and P = 2."""
    source = pipeline.ImageSource("f", images_lib.load_image_folder(folder, SIZE),
                                  random_flip=True)
    for count in (1, 2):
        for k in range(count):
            memory = pipeline.BatchIterator(source, 8, seed=3, process_index=k,
                                            process_count=count)
            it = _iterator(shards, process_index=k, process_count=count)
            assert it.local_batch_size == 8 // count
            for _ in range(2):
                _same(next(it), next(memory))
            _same(it.next_batches(3), memory.batches(2, 3))
            for i in range(5, 8):
                _same(next(it), memory.batch(i))
    plain, flipped = next(_iterator(shards, random_flip=False)), next(_iterator(shards))
    np.testing.assert_array_equal(plain["label"], flipped["label"])
    mirrored = np.all(plain["x"] == flipped["x"][:, :, ::-1], axis=(1, 2, 3))
    assert 0 < mirrored.sum() < 8  # some rows are flipped, some not
    assert np.all(mirrored | np.all(plain["x"] == flipped["x"], axis=(1, 2, 3)))


def test_processes_read_disjoint_slices_covering_the_epoch(tmp_path):
    """3 processes, global batch 6, 20 records (x[i] = i): over the positions of epoch 0 each
    process reads only its rows' records, and together they read every record once."""
    x = np.broadcast_to(np.arange(20, dtype=np.float32)[:, None, None, None], (20, 1, 1, 1))
    np.save(tmp_path / "ids.npy", np.ascontiguousarray(x))
    prepare.prepare("latents", tmp_path / "ids.npy", tmp_path / "ids", num_shards=4)
    seen = []
    for k in range(3):
        it = grain_pipeline.GrainIterator(tmp_path / "ids", global_batch_size=6, seed=5,
                                          process_index=k, process_count=3, prefetch=0)
        read, examples = [], it.reader.examples
        it.reader.examples = lambda keys: (read.extend(keys.tolist()), examples(keys))[1]
        ids = it.next_batches(4)["x"][:, :, 0, 0, 0].astype(int)  # [4 batches, 2 rows]
        assert read == ids.reshape(-1).tolist()  # it read exactly the records it returns
        positions = np.arange(4)[:, None] * 6 + 2 * k + np.arange(2)[None, :]
        seen.append(ids[positions < 20])
    assert sorted(np.concatenate(seen).tolist()) == list(range(20))  # each record once


def test_resume_across_an_epoch_boundary_gives_the_uninterrupted_batches(shards):
    straight = _iterator(shards)
    want = [next(straight) for _ in range(9)]
    first = _iterator(shards)
    got = [next(first), *_unstack(first.next_batches(2))]
    state = json.loads(json.dumps(first.state()))  # as the checkpoint's JSON meta holds it
    assert state["position"] == 24 and state["num_skipped_reads"] == 0
    second = _iterator(shards, prefetch=2)
    second.restore(state)
    got += _unstack(second.next_batches(3)) + [next(second) for _ in range(3)]
    assert len(got) == len(want)
    for a, b in zip(want, got):  # batch 3 holds the last 6 records of epoch 0
        _same(a, b)
    moved = _iterator(shards)
    with pytest.raises(ValueError, match="another data set"):
        moved.restore({**state, "fingerprint": "00000000"})


def _unstack(batches):
    return [{"x": x, "label": label} for x, label in zip(batches["x"], batches["label"])]


def test_resume_with_two_worker_processes(shards):
    straight = _iterator(shards)
    want = [next(straight) for _ in range(7)]
    with _iterator(shards, worker_count=2, prefetch=2) as first:
        got = _unstack(first.next_batches(4))
        state = first.state()
    with _iterator(shards, worker_count=2, prefetch=2) as second:
        second.restore(state)
        got += _unstack(second.next_batches(3))
    assert len(got) == len(want)
    for a, b in zip(want, got):
        _same(a, b)


# ---------------------------------------------------------------------------------- damage


def _copy(shards, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(shards, out)
    return out, arrayrecord.read_manifest(out)


def test_truncated_shard_is_named_or_skipped(shards, tmp_path):
    out, manifest = _copy(shards, tmp_path)
    victim = manifest.shard_path(manifest.shards[1])
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    with pytest.raises(arrayrecord.DamagedDataError,
                       match=r"train-00001-of-00003\.array_record: .*truncated.*prepare_data.py.*"
                             r"skip_bad=True"):
        _iterator(out)
    it = _iterator(out, skip_bad=True)
    assert it.skipped_shards == ("train-00001-of-00003.array_record",)
    assert (it.num_examples, it.num_skipped) == (20, 10)
    labels = np.concatenate([next(it)["label"] for _ in range(5)])  # two epochs of 20
    assert set(labels.tolist()) == {0, 2}  # shard 1 held class 1


def test_changed_bytes_fail_the_checksum_and_the_record_read(shards, tmp_path):
    out, manifest = _copy(shards, tmp_path)
    victim = manifest.shard_path(manifest.shards[2])
    records = arrayrecord.array_record_module().ArrayRecordReader(victim).read_all()
    data = bytearray(open(victim, "rb").read())
    # zstd keeps an RGB record of random pixels as it is (grey ones it compresses)
    n, at = next((n, data.find(r)) for n, r in enumerate(records) if data.find(r) > 0)
    data[at + 100] ^= 0xFF  # a pixel of record n: riegeli's chunk hash no longer matches
    open(victim, "wb").write(bytes(data))
    with pytest.raises(arrayrecord.DamagedDataError, match=r"train-00002.*CRC-32"):
        _iterator(out, verify_checksums=True)
    with pytest.raises(arrayrecord.DamagedDataError,
                       match=rf"damaged record {n} of shard .*train-00002-of-00003.*hash mismatch"):
        _iterator(out, global_batch_size=30).next_batches(1)
    it = _iterator(out, global_batch_size=6, skip_bad=True)
    batches = it.next_batches(10)  # epochs 0 and 1
    assert it.num_skipped_reads == 2 and it.state()["num_skipped_reads"] == 2
    assert batches["x"].shape == (10, 6, SIZE, SIZE, 3)
    assert np.all(np.abs(batches["x"]).sum(axis=(2, 3, 4)) > 0)  # every row is an image


def test_record_that_does_not_decode(shards, tmp_path):
    out, manifest = _copy(shards, tmp_path)
    shard = manifest.shards[0]
    module = arrayrecord.array_record_module()
    records = module.ArrayRecordReader(manifest.shard_path(shard)).read_all()
    records[3] = b"FMR1" + records[3][4:-1]  # one byte short
    writer = module.ArrayRecordWriter(manifest.shard_path(shard), arrayrecord.WRITER_OPTIONS)
    for r in records:
        writer.write(r)
    writer.close()
    raw = json.loads((out / "manifest-train.json").read_text())
    raw["shards"][0]["num_bytes"] = os.path.getsize(manifest.shard_path(shard))
    (out / "manifest-train.json").write_text(json.dumps(raw))
    with pytest.raises(arrayrecord.DamagedDataError,
                       match=r"damaged record 3 of shard .*train-00000.*not a flowmatch record"):
        _iterator(out, global_batch_size=30).next_batches(1)
    it = _iterator(out, global_batch_size=30, skip_bad=True)
    it.next_batches(2)
    assert it.num_skipped_reads == 2  # once per epoch


# ---------------------------------------------------------------------------------- prepare


def test_prepare_refuses_bad_input_and_leaves_nothing(folder, tmp_path):
    with pytest.raises(ValueError, match="unknown source 'imagenet'; choose one of: image_folder"):
        prepare.prepare("imagenet", folder, tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare.prepare("image_folder", tmp_path / "nowhere", tmp_path / "o", image_size=8)
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "dog" / "05.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*05\.png.*--skip_bad"):
        prepare.prepare("image_folder", broken, tmp_path / "o", image_size=8, num_shards=3)
    assert not (tmp_path / "o").exists()
    manifest = prepare.prepare("image_folder", broken, tmp_path / "o", image_size=8,
                               skip_bad=True)
    assert (manifest.num_examples, manifest.source["num_skipped"]) == (29, 1)
    with pytest.raises(ValueError, match="already holds split 'train'.*--overwrite"):
        prepare.prepare("image_folder", folder, tmp_path / "o", image_size=8)
    manifest = prepare.prepare("image_folder", folder, tmp_path / "o", image_size=8,
                               num_shards=2, overwrite=True)
    assert manifest.num_examples == 30
    assert sorted(os.listdir(tmp_path / "o")) == ["manifest-train.json"] + [
        f"train-0000{i}-of-00002.array_record" for i in range(2)]
    with pytest.raises(FileNotFoundError, match="no prepared split 'test'.*splits there: train"):
        grain_pipeline.GrainIterator(tmp_path / "o", global_batch_size=4, seed=0, split="test")
    with pytest.raises(ValueError, match="global_batch_size=6 is not divisible by process_count=4"):
        grain_pipeline.GrainIterator(tmp_path / "o", global_batch_size=6, seed=0,
                                     process_count=4)


def _script(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "prepare_data.py"),
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))


def test_prepare_script_reports_bad_input_in_one_line(tmp_path):
    np.savez(tmp_path / "lat.npz", x=np.zeros((4, 2, 2, 1), np.float32))
    for args, message in (
            (["--source=imagenet", f"--input={tmp_path}", f"--output={tmp_path}/o"],
             "--source=imagenet: value should be one of"),
            (["--source=latents", f"--input={tmp_path}/nothing.npz", f"--output={tmp_path}/o"],
             "nothing.npz' does not exist")):
        proc = _script(*args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert message in proc.stderr
        assert not (tmp_path / "o").exists()
    proc = _script("--source=latents", f"--input={tmp_path}/lat.npz", f"--output={tmp_path}/o")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 4 latents [2, 2, 1] float32 in 1 shard(s)" in proc.stdout
