"""Tests for flowmatch.metrics: distances against hand / brute-force / closed-form values, and
the JSONL writer's append, reload and atomic truncation."""
import itertools
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from flowmatch import metrics

UNIT_BOX = (np.zeros(2), np.ones(2))


# ------------------------------------------------------------------------------- tv_distance


def test_tv_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(1000, 2))
    assert metrics.tv_distance(x, x, (np.full(2, -3.0), np.full(2, 3.0))) == 0.0


def test_tv_disjoint_sets_is_one():
    rng = np.random.default_rng(1)
    left = rng.uniform([0.0, 0.0], [0.5, 1.0], size=(200, 2))
    right = rng.uniform([0.5, 0.0], [1.0, 1.0], size=(300, 2)) + [1e-9, 0.0]
    assert metrics.tv_distance(left, right, UNIT_BOX, bins=2) == pytest.approx(1.0)


def test_tv_hand_computed():
    # bins=2 on the unit square; cells (i along x, j along y).
    samples = np.array([[0.1, 0.1], [0.1, 0.1], [0.9, 0.1], [0.9, 0.9]])  # p = (1/2, 0, 1/4, 1/4)
    reference = np.array([[0.1, 0.1], [0.1, 0.9]])  # q = (1/2, 1/2, 0, 0)
    # 0.5 * (|1/2-1/2| + |0-1/2| + |1/4-0| + |1/4-0|) = 0.5
    assert metrics.tv_distance(samples, reference, UNIT_BOX, bins=2) == pytest.approx(0.5)
    # The upper edge belongs to the last bin (as in np.histogram2d), so (1, 1) is inside.
    assert metrics.tv_distance([[1.0, 1.0]], [[0.9, 0.9]], UNIT_BOX, bins=2) == 0.0


def test_tv_counts_mass_outside_the_box():
    rng = np.random.default_rng(2)
    inside = rng.uniform(0, 1, size=(500, 2))
    far = inside + 10.0
    assert metrics.tv_distance(far, inside, UNIT_BOX) == pytest.approx(1.0)
    # Half the samples thrown outside, the other half matching the reference exactly.
    half = np.concatenate([inside[:250], far[:250]])
    assert metrics.tv_distance(half, np.concatenate([inside[:250]] * 2), UNIT_BOX) == pytest.approx(0.5)
    # Outside on different sides all share the one outside cell.
    assert metrics.tv_distance(-far, far, UNIT_BOX) == 0.0


def test_tv_nonfinite_count_as_outside():
    x = np.array([[0.5, 0.5], [np.nan, 0.5], [0.5, np.inf], [-np.inf, np.nan]])
    outside = np.array([[0.5, 0.5], [5.0, 5.0], [-5.0, 0.5], [0.5, 9.0]])
    assert metrics.tv_distance(x, outside, UNIT_BOX) == 0.0
    assert metrics.tv_distance(x, np.full((4, 2), 0.5), UNIT_BOX) == pytest.approx(0.75)
    assert metrics.count_nonfinite(x) == 3
    assert metrics.count_nonfinite(outside) == 0


def test_tv_symmetric_and_accepts_jax_arrays():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(3000, 2)), 0.8 * rng.normal(size=(2000, 2)) + 0.3
    box = (np.full(2, -4.0), np.full(2, 4.0))
    tv_ab = metrics.tv_distance(a, b, box, bins=16)
    assert 0.0 < tv_ab < 1.0
    assert metrics.tv_distance(b, a, box, bins=16) == pytest.approx(tv_ab, abs=1e-15)
    assert metrics.tv_distance(jnp.asarray(a), jnp.asarray(b), box, bins=16) == pytest.approx(tv_ab, abs=1e-6)


def test_tv_matches_histogram2d():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(5000, 2)), rng.normal(size=(4000, 2)) * 1.2
    lo, hi = np.full(2, -2.0), np.full(2, 2.0)

    def hist(x):
        h, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=8, range=[[-2, 2], [-2, 2]])
        return np.append(h.ravel(), x.shape[0] - h.sum()) / x.shape[0]

    expected = 0.5 * np.abs(hist(a) - hist(b)).sum()
    assert metrics.tv_distance(a, b, (lo, hi), bins=8) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "samples, box, bins, match",
    [
        (np.zeros((3, 3)), UNIT_BOX, 8, r"shape \[n, 2\]"),
        (np.zeros((0, 2)), UNIT_BOX, 8, "empty"),
        (np.zeros((3, 2)), (np.ones(2), np.zeros(2)), 8, "lo < hi"),
        (np.zeros((3, 2)), UNIT_BOX, 0, "bins"),
    ],
)
def test_tv_errors(samples, box, bins, match):
    with pytest.raises(ValueError, match=match):
        metrics.tv_distance(samples, np.zeros((3, 2)), box, bins=bins)


# ------------------------------------------------------------------------------- w2_distance


def test_w2_self_is_zero():
    x = np.random.default_rng(5).normal(size=(50, 3))
    assert metrics.w2_distance(x, x) == 0.0


def test_w2_translation_is_shift_norm():
    x = np.random.default_rng(6).normal(size=(200, 2))
    c = np.array([0.3, -0.4])
    assert metrics.w2_distance(x, x + c) == pytest.approx(0.5, rel=1e-12)


def test_w2_matches_brute_force_over_permutations():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(6, 2)), rng.normal(size=(6, 2)) + 0.5
    sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    best = min(sq[np.arange(6), list(p)].mean() for p in itertools.permutations(range(6)))
    assert metrics.w2_distance(a, b) == pytest.approx(math.sqrt(best), rel=1e-12)


def test_w2_permutation_invariant_and_symmetric():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(40, 2)), rng.uniform(-1, 1, size=(40, 2))
    d = metrics.w2_distance(a, b)
    assert metrics.w2_distance(a[rng.permutation(40)], b[rng.permutation(40)]) == pytest.approx(d, rel=1e-12)
    assert metrics.w2_distance(b, a) == pytest.approx(d, rel=1e-12)


def test_w2_errors():
    with pytest.raises(ValueError, match="equal-size"):
        metrics.w2_distance(np.zeros((4, 2)), np.zeros((5, 2)))
    bad = np.zeros((5, 2))
    bad[1, 0], bad[3] = np.nan, np.inf
    with pytest.raises(ValueError, match="b has 2 of 5 points"):
        metrics.w2_distance(np.zeros((5, 2)), bad)
    with pytest.raises(ValueError, match="shape"):
        metrics.w2_distance(np.zeros((5, 2)), np.zeros((5, 3)))


# ------------------------------------------------------------------------- Fréchet distance


def test_frechet_identical_is_zero():
    rng = np.random.default_rng(9)
    m = rng.normal(size=(5, 5))
    sigma = m @ m.T + 0.1 * np.eye(5)
    mu = rng.normal(size=5)
    assert metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(10)
    a, b = rng.uniform(0.1, 3.0, size=4), rng.uniform(0.1, 3.0, size=4)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_commuting_closed_form():
    rng = np.random.default_rng(11)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))  # shared eigenvectors -> sigma1 sigma2 = sigma2 sigma1
    a, b = rng.uniform(0.1, 3.0, size=4), rng.uniform(0.1, 3.0, size=4)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu = np.zeros(4)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_singular_covariances():
    # Rank-deficient statistics (fewer samples than dimensions) must still give a finite number.
    x = np.random.default_rng(12).normal(size=(4, 10))
    mu, sigma = metrics.gaussian_stats(x)
    assert metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-4)
    # Orthogonal rank-1 covariances: product is zero, d^2 = 1 + 1.
    assert metrics.frechet_distance(np.zeros(2), np.diag([1.0, 0.0]), np.zeros(2), np.diag([0.0, 1.0])) \
        == pytest.approx(2.0, abs=1e-6)


def test_frechet_errors():
    with pytest.raises(ValueError, match="one d"):
        metrics.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="sigma2 contains NaN"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.full((2, 2), np.nan))
    # A matrix with negative eigenvalues is not a covariance: sqrt of the product is complex.
    with pytest.raises(ValueError, match="imaginary part"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), -np.eye(2))


def test_gaussian_stats():
    x = np.random.default_rng(13).normal(size=(100, 3))
    mu, sigma = metrics.gaussian_stats(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, np.cov(x.T))
    assert sigma.shape == (3, 3)
    assert metrics.gaussian_stats(x[:, :1])[1].shape == (1, 1)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.gaussian_stats(x[:1])


# -------------------------------------------------------------------------------- metrics_2d


def test_metrics_2d():
    rng = np.random.default_rng(14)
    box = (np.full(2, -4.0), np.full(2, 4.0))
    ref_small, ref_large = rng.normal(size=(300, 2)), rng.normal(size=(3000, 2))
    samples = rng.normal(size=(3000, 2))
    out = metrics.metrics_2d(samples, ref_small, ref_large, box, bins=16, n_w2=200)
    assert set(out) == {"tv", "w2", "nonfinite"}
    assert out["tv"] == pytest.approx(metrics.tv_distance(samples, ref_large, box, bins=16))
    assert out["w2"] == pytest.approx(metrics.w2_distance(samples[:200], ref_small[:200]))
    assert out["nonfinite"] == 0

    samples[5] = np.nan
    out = metrics.metrics_2d(samples, ref_small, ref_large, box, bins=16, n_w2=200)
    assert out["nonfinite"] == 1 and math.isnan(out["w2"])


# -------------------------------------------------------------------------- metric writing


def test_writer_appends_jsonl(tmp_path):
    with metrics.MetricWriter(tmp_path) as w:
        w.write(0, {"loss": jnp.float32(1.5), "lr": np.float64(1e-3), "count": np.int32(7)})
        w.write(10, {"loss": jnp.array(0.25), "nan": float("nan")})
        # Flushed on every write: readable before close.
        assert len(metrics.read_metrics(w.path)) == 2
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"step": 0, "loss": 1.5, "lr": 1e-3, "count": 7}
    assert isinstance(json.loads(lines[0])["count"], int)
    records = metrics.read_metrics(tmp_path / "metrics.jsonl")
    assert records[1]["step"] == 10 and records[1]["loss"] == 0.25 and math.isnan(records[1]["nan"])

    # A second writer appends to the same file.
    with metrics.MetricWriter(tmp_path) as w:
        w.write(20, {"loss": 0.1})
    assert [r["step"] for r in metrics.read_metrics(tmp_path / "metrics.jsonl")] == [0, 10, 20]


def test_writer_rejects_bad_values(tmp_path):
    with metrics.MetricWriter(tmp_path) as w:
        with pytest.raises(ValueError, match="'x' must be a real scalar"):
            w.write(0, {"x": np.zeros(3)})
        with pytest.raises(ValueError, match="reserved"):
            w.write(0, {"step": 1})
        with pytest.raises(ValueError, match="integer"):
            w.write(1.5, {"x": 1.0})
    with pytest.raises(ValueError, match="closed"):
        w.write(2, {"x": 1.0})


def test_writer_non_main_process_is_noop(tmp_path):
    w = metrics.MetricWriter(tmp_path / "run", is_main_process=False)
    w.write(0, {"loss": 1.0})
    w.close()
    assert not (tmp_path / "run").exists()


def test_writer_tensorboard_missing_gives_install_hint(tmp_path):
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install tensorboardX"):
            metrics.MetricWriter(tmp_path, tensorboard=True)
    else:
        with metrics.MetricWriter(tmp_path, tensorboard=True) as w:
            w.write(0, {"loss": 1.0})
        assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))


def test_partial_last_line_from_a_kill(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "lo')
    assert metrics.read_metrics(path) == [{"step": 0, "loss": 1.0}]
    with metrics.MetricWriter(tmp_path) as w:  # reopening cuts the fragment before appending
        w.write(1, {"loss": 0.5})
    assert metrics.read_metrics(path) == [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]
    path.write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(ValueError, match="line 2"):
        metrics.read_metrics(path)


def test_truncate_keeps_steps_up_to_max_atomically(tmp_path, monkeypatch):
    with metrics.MetricWriter(tmp_path) as w:
        for step in range(0, 50, 10):
            w.write(step, {"loss": 1.0 / (step + 1)})
    path = tmp_path / "metrics.jsonl"
    original = path.read_text().splitlines()

    assert metrics.truncate_metrics(path, 20) == 3
    assert [r["step"] for r in metrics.read_metrics(path)] == [0, 10, 20]
    assert path.read_text().splitlines() == original[:3]  # kept lines byte for byte
    assert os.listdir(tmp_path) == ["metrics.jsonl"]  # no temporary file left behind

    # Resume: truncate, then append the repeated steps; no step appears twice.
    with metrics.MetricWriter(tmp_path) as w:
        w.write(30, {"loss": 0.0})
    steps = [r["step"] for r in metrics.read_metrics(path)]
    assert steps == [0, 10, 20, 30]

    # A failure before the replace leaves the old file intact and no temporary behind.
    before = path.read_text()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        metrics.truncate_metrics(path, 0)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["metrics.jsonl"]

    monkeypatch.undo()
    assert metrics.truncate_metrics(tmp_path / "missing.jsonl", 5) == 0
    assert not (tmp_path / "missing.jsonl").exists()


def test_every_sink_gets_the_scalars_written_to_metrics_jsonl(tmp_path, monkeypatch):
    got = []

    class Recorder:
        def __init__(self, logdir):
            got.append(("open", logdir))

        def write_scalars(self, step, scalars):
            got.append((step, dict(scalars)))

        def close(self):
            got.append("close")

    monkeypatch.setattr(metrics, "require_writer", lambda name: None)
    monkeypatch.setattr(metrics, "TensorBoardSink", Recorder)
    with metrics.MetricWriter(tmp_path, tensorboard=True) as w:
        w.write(3, {"loss": np.float32(0.5), "n": 2})
    assert got == [("open", str(tmp_path)), (3, {"loss": 0.5, "n": 2}), "close"]
    assert metrics.read_metrics(tmp_path / "metrics.jsonl") == [{"step": 3, "loss": 0.5, "n": 2}]


@pytest.mark.parametrize("name,module", [("tensorboard", "tensorboardX"), ("wandb", "wandb")])
def test_a_missing_optional_writer_names_its_install_command(name, module, monkeypatch):
    import importlib.util  # pylint: disable=g-import-not-at-top
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda m, *a: None if m == module else real(m, *a))
    with pytest.raises(ImportError, match=f"needs {module}, which is not installed: pip install"):
        metrics.require_writer(name)


def test_a_run_asking_for_a_missing_writer_stops_before_writing(tmp_path, monkeypatch):
    """--config.tensorboard=True / --config.wandb_project=P without the package: a ConfigError
    naming the key and the install command, and the workdir is never created."""
    import importlib.util  # pylint: disable=g-import-not-at-top
    from configs_util import load_config  # pylint: disable=g-import-not-at-top
    from flowmatch import training  # pylint: disable=g-import-not-at-top
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m in (
        "tensorboardX", "wandb") else real(m, *a))
    for key, value, install in (("tensorboard", True, "pip install tensorboardX"),
                                ("wandb_project", "flows", "pip install wandb")):
        config = load_config("checkerboard")
        config[key] = value
        with pytest.raises(training.ConfigError, match=f"{key}=.*{install}"):
            training.train_and_evaluate(config, str(tmp_path / key))
        assert not (tmp_path / key).exists()
