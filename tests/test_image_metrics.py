"""Tests for flowmatch.image_metrics and the classifier / FID Inception networks: classifier
training and caching, Fréchet-distance properties on real and corrupted digits, the Inception
architecture (full-size shapes and parameter count, pooling, resize), the weight-file naming
map and its errors, and the FID maths against closed forms."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from flowmatch import image_metrics as im
from flowmatch import metrics
from flowmatch.data import images
from flowmatch.models import count_params
from flowmatch.models import inception as inc
from flowmatch.models.classifier import Classifier

TINY = inc.FIDInceptionV3(width_multiplier=1 / 16, resize_to=75)
TINY_FEATURES = 20 + 2 * 24 + 2 * 24 + 12  # Mixed_7c: 320, 2 x 384, 2 x 384, 192 at 1/16


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("classifiers"))


@pytest.fixture(scope="module")
def digits_classifier(cache_dir):
    return im.load_or_train_classifier("digits", cache_dir)  # default settings, ~10 s


@pytest.fixture(scope="module")
def digits_test():
    return images.load_digits("test")


@pytest.fixture(scope="module")
def metric(digits_classifier):
    return im.ImageMetric(digits_classifier)


# ------------------------------------------------------------------------------ classifier


def test_classifier_shapes_and_validation():
    model = Classifier(num_classes=10, channels=(8, 16), feature_dim=32)
    x = jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
    logits, features = jax.eval_shape(
        lambda p, x: model.apply({"params": p}, x, return_features=True), params, x)
    assert logits.shape == (3, 10) and features.shape == (3, 32)
    assert jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params, x).shape == (3, 10)
    with pytest.raises(ValueError, match="multiples of num_groups"):
        Classifier(channels=(12,))
    with pytest.raises(ValueError, match="no feature classifier"):
        im.classifier_settings("cifar10")
    with pytest.raises(ValueError, match="unknown classifier setting"):
        im.classifier_settings("digits", stepz=3)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        im.classifier_settings("digits", steps=0)


def test_digits_classifier_accuracy(digits_classifier, digits_test):
    assert digits_classifier.test_accuracy > 0.95
    assert digits_classifier.accuracy(digits_test.x, digits_test.label) == pytest.approx(
        digits_classifier.test_accuracy)
    assert digits_classifier.features(digits_test.x[:5]).shape == (5, 128)


def test_train_classifier_is_deterministic():
    params_a, acc_a = im.train_classifier("digits", seed=3, steps=60)
    params_b, acc_b = im.train_classifier("digits", seed=3, steps=60)
    assert acc_a == acc_b > 0.5  # chance is 0.1
    jax.tree_util.tree_map(np.testing.assert_array_equal, params_a, params_b)


def test_cache_round_trip_and_retrain_on_new_settings(digits_classifier, cache_dir, monkeypatch):
    path = im.classifier_cache_path(cache_dir, "digits", 0)
    assert os.path.isfile(path)
    calls = []

    def fake_train(name, seed, settings):
        calls.append(settings)
        return dataclasses.replace(digits_classifier, settings=settings)

    monkeypatch.setattr(im, "_train", fake_train)
    again = im.load_or_train_classifier("digits", cache_dir)
    assert not calls  # served from the file
    assert again.test_accuracy == digits_classifier.test_accuracy
    assert again.train_seconds == digits_classifier.train_seconds
    jax.tree_util.tree_map(np.testing.assert_array_equal, again.params, digits_classifier.params)

    other_dir = os.path.join(cache_dir, "other")
    im.load_or_train_classifier("digits", other_dir)
    im.load_or_train_classifier("digits", other_dir, learning_rate=1e-3)  # settings differ
    assert [s.learning_rate for s in calls] == [3e-3, 1e-3]
    im.load_or_train_classifier("digits", other_dir, learning_rate=1e-3)  # now cached
    assert len(calls) == 2


def test_corrupt_cache_names_the_file(digits_classifier, cache_dir, tmp_path):
    bad = im.classifier_cache_path(tmp_path, "digits", 0)
    with open(bad, "wb") as f:
        f.write(b"not an npz file")
    with pytest.raises(ValueError, match="delete") as e:
        im.load_or_train_classifier("digits", tmp_path)
    assert bad in str(e.value)

    with np.load(im.classifier_cache_path(cache_dir, "digits", 0)) as f:
        data = {k: f[k] for k in f.files if k != "params/logits/kernel"}
    np.savez(bad, **data)
    with pytest.raises(ValueError, match="missing parameter 'params/logits/kernel'"):
        im.load_or_train_classifier("digits", tmp_path)


# ------------------------------------------------------------------------- Fréchet distance


def test_fd_of_identical_sets_is_zero(digits_classifier, digits_test):
    out = im.classifier_frechet_distance(digits_classifier, digits_test.x, digits_test.x)
    assert abs(out["fd"]) < 1e-6
    assert out["accuracy"] == digits_classifier.test_accuracy


def test_fd_real_floor_far_below_corrupted_images(metric, digits_test):
    floors = metric.floors()
    x = digits_test.x
    rng = np.random.default_rng(0)
    noise = rng.uniform(-1.0, 1.0, x.shape).astype(np.float32)
    perm = rng.permutation(64)
    shuffled = x.reshape(len(x), 64, 1)[:, perm].reshape(x.shape)
    blurred = ndimage.uniform_filter(x, size=(1, 3, 3, 1), mode="nearest")
    fd = {name: metric(v)["fd"] for name, v in
          (("noise", noise), ("shuffled", shuffled), ("blurred", blurred))}
    floor = max(floors.values())
    assert 0 < floors["fd_train_vs_test"] < floors["fd_test_halves"]  # more samples, less bias
    assert fd["noise"] > 10 * floor and fd["shuffled"] > 10 * floor
    assert fd["blurred"] > 3 * floor


def test_image_metric_interface(metric, digits_test):
    out = metric(digits_test.x[:100] * 1.5)  # out-of-range values are clipped, not rejected
    assert set(out) == {"fd", "classifier_accuracy"} and np.isfinite(out["fd"])
    bad = digits_test.x[:50].copy()
    bad[3, 0, 0, 0] = np.nan
    with pytest.warns(UserWarning, match="1 of 50 samples"):
        assert np.isnan(metric(bad)["fd"])
    with pytest.raises(ValueError, match=r"shape \[N, 8, 8, 1\]"):
        metric(np.zeros((10, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        im.classifier_frechet_distance(metric.classifier, bad, digits_test.x)


def test_fd_with_a_bare_feature_function(digits_test):
    flatten = lambda x: x.reshape(len(x), -1)  # noqa: E731
    out = im.classifier_frechet_distance(flatten, digits_test.x[:150], digits_test.x[150:])
    feats = digits_test.x.reshape(len(digits_test.x), -1)
    assert out["fd"] == pytest.approx(im.fid_from_features(feats[:150], feats[150:]))
    assert np.isnan(out["accuracy"])


# ---------------------------------------------------------------------- Inception network


@pytest.fixture(scope="module")
def full_inception_trace():
    """The full FID network's variable shapes and its graph (jax.make_jaxpr) on a [2, 32, 32, 3]
    batch, resized to 299 x 299 inside: each trace of it takes seconds, so two tests share one."""
    shapes = inc.variable_shapes()
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    return shapes, jax.make_jaxpr(inc.FIDInceptionV3().apply)(shapes, x)


def test_full_inception_shapes_without_compute(full_inception_trace):
    shapes, jaxpr = full_inception_trace
    # torchvision's inception_v3 has 27,161,264 parameters; minus fc (2048 x 1000 + 1000) and
    # AuxLogits (3,326,696) leaves the trunk: the same channel counts as the FID network.
    assert count_params(shapes["params"]) == 27_161_264 - 2_049_000 - 3_326_696
    (out,) = jaxpr.out_avals
    assert out.shape == (2, inc.FID_FEATURE_DIM) and out.dtype == jnp.float32
    sd = inc.state_dict_shapes()
    assert len(sd) == 94 * 5  # 94 conv+BN units x (weight, bn weight, bias, mean, var)
    assert sd["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert sd["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert sd["Mixed_6e.branch7x7_2.conv.weight"] == (192, 192, 1, 7)
    assert sd["Mixed_7c.branch3x3dbl_3b.bn.running_var"] == (384,)
    assert sd["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)


def test_fid_pooling_layout(full_inception_trace):
    """FID graph: max pools in the stem (2), Mixed_6a, Mixed_7a and Mixed_7c's pool branch;
    average pools that exclude padding (a window sum of x and one of ones) in 5b-5d, 6b-6e, 7b.
    (The bilinear resize in front of the network has no window reductions of its own.)"""
    _, jaxpr = full_inception_trace
    prims = [str(e.primitive) for e in jaxpr.jaxpr.eqns]
    assert prims.count("reduce_window_max") == 5
    assert prims.count("reduce_window_sum") == 2 * 8


def test_pools_match_numpy():
    x = np.random.default_rng(0).normal(size=(1, 4, 5, 2)).astype(np.float32) - 3.0
    padded_sum = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    counts = np.pad(np.ones_like(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    padded_max = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    want_avg = np.zeros_like(x)
    want_max = np.zeros_like(x)
    for i in range(4):
        for j in range(5):
            win = (slice(None), slice(i, i + 3), slice(j, j + 3))
            want_avg[:, i, j] = padded_sum[win].sum((1, 2)) / counts[win].sum((1, 2))
            want_max[:, i, j] = padded_max[win].max((1, 2))
    np.testing.assert_allclose(inc._avg_pool_3x3_exclude_pad(jnp.asarray(x)), want_avg,
                               rtol=1e-5)
    # All values are < 0, so a zero padding would show in the max.
    np.testing.assert_allclose(inc._max_pool_3x3_pad(jnp.asarray(x)), want_max)


def _torch_bilinear_matrix(n_in, n_out):
    """Interpolation weights [n_out, n_in] of torch's bilinear, align_corners=False, written
    from its definition: src = max((dst + 0.5) * n_in / n_out - 0.5, 0), clamped neighbours."""
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        w[o, i0] += 1.0 - (src - i0)
        w[o, i1] += src - i0
    return w


@pytest.mark.parametrize("n_in,n_out", [(8, 19), (32, 299), (40, 17)])
def test_resize_matches_torch_bilinear_formula(n_in, n_out):
    x = np.random.default_rng(n_in).normal(size=(2, n_in, n_in, 3)).astype(np.float32)
    w = _torch_bilinear_matrix(n_in, n_out)
    want = np.einsum("oi,bijc,pj->bopc", w, x, w)
    got = jax.image.resize(jnp.asarray(x), (2, n_out, n_out, 3), "bilinear", antialias=False)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_tiny_inception_runs_and_extractor_batches():
    variables = inc.random_variables(TINY, seed=1)
    x = np.random.default_rng(0).uniform(-1, 1, (5, 28, 28, 1)).astype(np.float32)
    ext = im.InceptionExtractor(variables, TINY, batch_size=5, quantize=False)
    feats = ext(x)
    assert feats.shape == (5, TINY_FEATURES) and np.all(np.isfinite(feats)) and feats.std() > 0
    np.testing.assert_allclose(ext(np.repeat(x, 3, axis=-1)), feats, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="1 or 3"):
        ext(np.zeros((2, 28, 28, 2), np.float32))
    with pytest.raises(ValueError, match=">= 75"):
        inc.FIDInceptionV3(resize_to=32)


def test_batched_pads_the_last_chunk_to_one_shape():
    shapes = []

    def fn(chunk):
        shapes.append(chunk.shape)
        return chunk.sum(axis=(1, 2, 3)), chunk[:, 0, 0, 0]

    x = np.arange(7 * 8, dtype=np.float32).reshape(7, 2, 2, 2)
    outs = im._batched(fn, x, 3)
    assert shapes == [(3, 2, 2, 2)] * 3
    np.testing.assert_array_equal(np.concatenate([o[0] for o in outs]), x.sum(axis=(1, 2, 3)))
    np.testing.assert_array_equal(np.concatenate([o[1] for o in outs]), x[:, 0, 0, 0])
    assert im._batched(fn, x[:2], 3)[0][0].shape == (2,)  # fewer than a batch: no padding


# ------------------------------------------------------------------------------ weight files


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A synthetic weight file in the documented format, with the entries loading ignores."""
    variables = inc.random_variables(TINY, seed=2)
    sd = inc.variables_to_state_dict(variables)
    assert {k: v.shape for k, v in sd.items()} == inc.state_dict_shapes(TINY)
    extra = {"fc.weight": np.zeros((1008, TINY_FEATURES), np.float32),
             "fc.bias": np.zeros(1008, np.float32),
             "Conv2d_1a_3x3.bn.num_batches_tracked": np.array(0, np.int64)}
    path = tmp_path_factory.mktemp("inception") / "weights.npz"
    np.savez(path, **sd, **extra)
    return path, variables, sd


def test_weights_round_trip(tiny_weights):
    path, variables, _ = tiny_weights
    loaded = inc.load_inception_params(path, TINY)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(variables)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, variables)
    # A conv kernel really is transposed OIHW -> HWIO: the file's [O, I, H, W] entry.
    sd = np.load(path)
    np.testing.assert_array_equal(
        loaded["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"][0, 4, 1, 2],
        sd["Mixed_6b.branch7x7_2.conv.weight"][2, 1, 0, 4])


def test_weights_errors(tiny_weights, tmp_path):
    _, _, sd = tiny_weights
    with pytest.raises(FileNotFoundError) as e:
        inc.load_inception_params(tmp_path / "missing.npz")
    assert inc.FID_WEIGHTS_URL in str(e.value) and "np.savez" in str(e.value)
    pth = tmp_path / "pt_inception.pth"
    pth.write_bytes(b"torch zip")
    with pytest.raises(ValueError, match="converted .npz"):
        inc.load_inception_params(pth)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read"):
        inc.load_inception_params(junk)

    name = "Mixed_5c.branch5x5_2.conv.weight"
    bad = dict(sd, **{name: sd[name][:, :, :4]})
    with pytest.raises(ValueError, match=f"'{name}'.*shape"):
        inc.state_dict_to_variables(bad, TINY)
    with pytest.raises(ValueError, match="Mixed_7c.branch1x1.bn.bias"):
        inc.state_dict_to_variables(
            {k: v for k, v in sd.items() if k != "Mixed_7c.branch1x1.bn.bias"}, TINY)
    with pytest.raises(ValueError, match="unexpected.*Mixed_8a"):
        inc.state_dict_to_variables(dict(sd, **{"Mixed_8a.conv.weight": sd[name]}), TINY)
    with pytest.raises(ValueError, match=r"'Conv2d_1a_3x3\..*width_multiplier=1.0"):
        inc.state_dict_to_variables(sd)  # a tiny file for the full-width network


# ---------------------------------------------------------------------------------- FID maths


def _features_with_exact_stats(rng, mu, std, n):
    """n points whose sample mean is exactly mu and sample covariance exactly diag(std^2)."""
    z = rng.normal(size=(n, mu.shape[0]))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whiten exactly
    return mu + z * std


def test_fid_from_features_equals_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    std1, std2 = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
    f1 = _features_with_exact_stats(rng, mu1, std1, 500)
    f2 = _features_with_exact_stats(rng, mu2, std2, 300)
    # Diagonal covariances: |mu1 - mu2|^2 + sum_i (std1_i - std2_i)^2.
    want = np.sum((mu1 - mu2) ** 2) + np.sum((std1 - std2) ** 2)
    assert im.fid_from_features(f1, f2) == pytest.approx(want, rel=1e-9)
    assert im.fid_from_features(f1, f1) == pytest.approx(0.0, abs=1e-9)


def test_compute_fid_and_stats_files(tmp_path):
    rng = np.random.default_rng(1)
    flatten = lambda x: np.asarray(x).reshape(len(x), -1)  # noqa: E731  a stand-in extractor
    ref = rng.uniform(-1, 1, (400, 2, 2, 1)).astype(np.float32)
    gen = np.clip(ref[:300] * 0.8 + 0.1, -1, 1)
    mu, sigma = im.compute_stats(flatten, ref)
    path = tmp_path / "stats.npz"
    im.save_stats(path, mu, sigma)
    mu2, sigma2 = im.load_stats(path)
    assert mu2.dtype == np.float64
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    want = im.fid_from_features(flatten(gen), flatten(ref))
    assert im.compute_fid(flatten, gen, (mu, sigma)) == pytest.approx(want, rel=1e-12)
    assert im.compute_fid(flatten, gen, path) == pytest.approx(want, rel=1e-12)
    assert im.compute_fid(flatten, ref, path) == pytest.approx(0.0, abs=1e-10)
    with pytest.warns(UserWarning, match="rank-deficient"):
        im.compute_fid(flatten, gen[:3], path)
    with pytest.raises(FileNotFoundError, match="save_stats"):
        im.load_stats(tmp_path / "none.npz")
    np.savez(tmp_path / "wrong.npz", mean=mu)
    with pytest.raises(ValueError, match="'mu'"):
        im.load_stats(tmp_path / "wrong.npz")
    with pytest.raises(ValueError, match=r"sigma \[d, d\]"):
        im.save_stats(tmp_path / "x.npz", mu, sigma[:2])


def test_quantize_images():
    x = np.array([-1.5, -1.0, -0.0031, 0.0, 0.5, 1.0, 2.0], np.float32)
    q = im.quantize_images(x)
    levels = (q + 1.0) * 127.5
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    assert q.min() == -1.0 and q.max() == 1.0
    np.testing.assert_array_equal(im.quantize_images(q), q)


def test_metrics_frechet_is_what_fid_uses():
    f1 = np.random.default_rng(2).normal(size=(50, 3))
    f2 = f1[::-1] * 2.0
    assert im.fid_from_features(f1, f2) == metrics.frechet_distance(
        *metrics.gaussian_stats(f1), *metrics.gaussian_stats(f2))


# ------------------------------------------------------------------------------ slow checks


@pytest.mark.slow
def test_mnist_classifier_default_accuracy_and_floor(tmp_path):
    """Default MNIST-subset classifier (~1 min on 2 CPU cores): > 95% on the test split, and
    real images far below blurred ones."""
    metric = im.make_image_metric("mnist", tmp_path)
    assert metric.classifier.test_accuracy > 0.95
    floors = metric.floors()
    test = images.load_mnist("test").x
    blurred = ndimage.uniform_filter(test, size=(1, 3, 3, 1), mode="nearest")
    assert metric(blurred)["fd"] > 3 * max(floors.values())
