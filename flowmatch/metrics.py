"""Sample-quality metrics and metric logging.

Distances between point sets (2-D histogram total variation, exact empirical W2), the Fréchet
distance between Gaussians (the basis of FID-style image metrics), and the metric writer
(metrics.jsonl, plus TensorBoard or Weights & Biases when asked).  Everything here runs on the host in NumPy / SciPy: the work is either a histogram (a
bincount, milliseconds for 1e5 points) or an assignment problem, neither of which gains from an
accelerator.  JAX arrays are accepted anywhere an array is and are copied to the host.
"""
from __future__ import annotations

import importlib.util
import json
import math
import numbers
import os
import warnings
from typing import Any, Mapping, Protocol

import numpy as np

from flowmatch import fileio

__all__ = [
    "count_nonfinite",
    "tv_distance",
    "w2_distance",
    "gaussian_stats",
    "frechet_distance",
    "metrics_2d",
    "MetricWriter",
    "require_writer",
    "read_metrics",
    "truncate_metrics",
]

METRICS_FILENAME = "metrics.jsonl"


# --------------------------------------------------------------------------------------------
# Point-set distances
# --------------------------------------------------------------------------------------------


def _points(x, name: str, dim: int | None = None) -> np.ndarray:
    """Host float64 copy of a point set [n, d], with a readable error for a wrong shape."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"[n, {dim}]" if dim is not None else "[n, d]"
        raise ValueError(f"{name} must have shape {want}; got shape {x.shape}.")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty; need at least one point.")
    return x


def count_nonfinite(samples) -> int:
    """Number of points with at least one NaN or inf coordinate.

    samples: [n, d].  Returns an int in [0, n].
    """
    x = np.asarray(samples)
    if x.ndim != 2:
        raise ValueError(f"samples must have shape [n, d]; got shape {x.shape}.")
    return int(np.count_nonzero(~np.all(np.isfinite(x), axis=1)))


def _box(box, bins: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 1:
        raise ValueError(f"bins must be a positive int; got {bins!r}.")
    try:
        lo, hi = box
    except (TypeError, ValueError):
        raise ValueError(f"box must be a pair (lo, hi) of arrays of shape [2]; got {box!r}.") from None
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if lo.shape != (2,) or hi.shape != (2,):
        raise ValueError(f"box lo and hi must each have shape [2]; got {lo.shape} and {hi.shape}.")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(hi > lo)):
        raise ValueError(f"box needs finite lo < hi in both coordinates; got lo={lo}, hi={hi}.")
    return lo, hi


def _histogram_with_outside(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """Normalised counts [bins * bins + 1]: the grid cells (row-major), then one 'outside' cell.

    A point is inside when it is finite and lo <= x <= hi in both coordinates (the upper edge
    belongs to the last bin, as in np.histogram2d).  NaN / inf points land in the outside cell.
    """
    u = (x - lo) / (hi - lo)  # [n, 2]; NaN stays NaN and fails both comparisons below
    inside = np.all((u >= 0.0) & (u <= 1.0), axis=1)
    cell = np.full(x.shape[0], bins * bins, dtype=np.int64)
    ij = np.minimum((u[inside] * bins).astype(np.int64), bins - 1)  # [n_inside, 2]
    cell[inside] = ij[:, 0] * bins + ij[:, 1]
    return np.bincount(cell, minlength=bins * bins + 1) / x.shape[0]


def tv_distance(samples, reference, box, bins: int = 64) -> float:
    """Total-variation distance between the 2-D histograms of two point sets.

    Each set is binned on a fixed bins x bins grid over box = (lo, hi) (lo, hi: [2]) plus one
    extra "outside" cell holding every point outside the box or with a NaN / inf coordinate, so
    mass thrown outside the box (or lost to NaNs) is penalised rather than silently dropped.
    With p, q the normalised histograms (each sums to 1): TV = 0.5 * sum |p - q|, in [0, 1].

    samples: [n, 2]; reference: [m, 2] (n and m may differ).  Use `count_nonfinite` to report how
    many samples were NaN / inf.
    """
    lo, hi = _box(box, bins)
    p = _histogram_with_outside(_points(samples, "samples", 2), lo, hi, bins)
    q = _histogram_with_outside(_points(reference, "reference", 2), lo, hi, bins)
    return float(0.5 * np.abs(p - q).sum())


def w2_distance(a, b) -> float:
    """Exact 2-Wasserstein distance between two equal-size empirical measures (uniform weights).

    W2 = sqrt(min over permutations s of (1/n) sum_i |a_i - b_s(i)|^2), solved exactly as an
    assignment problem on the squared-distance matrix (scipy's linear_sum_assignment; about a
    second for n = 2,000, cost O(n^3) so keep n in the low thousands).

    a, b: [n, d].  Raises ValueError for unequal sizes or non-finite points.
    """
    a = _points(a, "a")
    b = _points(b, "b", a.shape[1])
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"w2_distance needs equal-size point sets; got {a.shape[0]} and {b.shape[0]} points. "
            "Subsample the larger set (e.g. take the first n of each)."
        )
    for name, x in (("a", a), ("b", b)):
        bad = count_nonfinite(x)
        if bad:
            raise ValueError(
                f"{name} has {bad} of {x.shape[0]} points with NaN / inf coordinates; "
                "W2 is undefined. Filter them out or report them separately (count_nonfinite)."
            )
    import scipy.optimize  # pylint: disable=g-import-not-at-top  (on first use: start-up)
    import scipy.spatial.distance  # pylint: disable=g-import-not-at-top
    cost = scipy.spatial.distance.cdist(a, b, metric="sqeuclidean")  # [n, n]
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    return float(math.sqrt(max(cost[rows, cols].mean(), 0.0)))


# --------------------------------------------------------------------------------------------
# Fréchet distance between Gaussians
# --------------------------------------------------------------------------------------------


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature set.

    features: [n, d] with n >= 2.  Returns (mu [d], sigma [d, d]) in float64; sigma is the
    unbiased sample covariance (divides by n - 1).
    """
    x = _points(features, "features")
    if x.shape[0] < 2:
        raise ValueError(f"gaussian_stats needs at least 2 feature vectors; got {x.shape[0]}.")
    if count_nonfinite(x):
        raise ValueError(
            f"features has {count_nonfinite(x)} of {x.shape[0]} rows with NaN / inf values; "
            "remove them before computing statistics."
        )
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _sqrtm_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> np.ndarray:
    """(sigma1 sigma2)^{1/2}, retrying with eps * I added to both factors if it is not finite."""
    import scipy.linalg  # pylint: disable=g-import-not-at-top
    with warnings.catch_warnings():
        # A singular product is expected for rank-deficient covariances (n < d); handled below.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.all(np.isfinite(root)):
            offset = eps * np.eye(sigma1.shape[0])
            root = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if not np.all(np.isfinite(root)):
        raise ValueError(
            "sqrtm(sigma1 @ sigma2) is not finite even after adding "
            f"{eps:g} * I to both covariances; check the inputs for NaN / inf or raise eps."
        )
    return root


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6, imag_tol: float = 1e-3) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}).

    mu1, mu2: [d]; sigma1, sigma2: [d, d] symmetric PSD.  The matrix square root is taken with
    scipy.linalg.sqrtm; if it is not finite (a singular product), it is retried with eps * I
    added to both covariances.  Round-off gives it a small imaginary part, which is dropped;
    an imaginary part above imag_tol * max(1, max |real part|) raises ValueError, since it means
    the inputs are not valid covariances.  Returns a float >= 0 (up to round-off).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            "frechet_distance needs mu1, mu2: [d] and sigma1, sigma2: [d, d] with one d; got "
            f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}."
        )
    for name, v in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} contains NaN / inf values.")

    root = _sqrtm_product(sigma1, sigma2, eps)
    if np.iscomplexobj(root):
        imag = np.abs(root.imag).max()
        scale = max(1.0, float(np.abs(root.real).max()))
        if imag > imag_tol * scale:
            raise ValueError(
                f"sqrtm(sigma1 @ sigma2) has an imaginary part of size {imag:.3g} (tolerance "
                f"{imag_tol * scale:.3g}); the covariances are probably not symmetric PSD."
            )
        root = root.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(root))


# --------------------------------------------------------------------------------------------
# 2-D toy benchmark bundle
# --------------------------------------------------------------------------------------------


def metrics_2d(
    samples,
    reference_small,
    reference_large,
    box,
    *,
    bins: int = 64,
    n_w2: int = 2000,
) -> dict[str, float | int]:
    """Standard metrics for a 2-D toy sampler.

    samples: [n, 2] generated points (use about 100,000 so the histogram is not noise-limited);
    reference_large: [m, 2] target samples for TV (about 100,000); reference_small: [k, 2]
    target samples for W2.  box = (lo [2], hi [2]) is the fixed histogram range.

    Returns {"tv": tv_distance(samples, reference_large, box, bins) over all points,
             "w2": w2_distance on the first min(n_w2, n, k) points of samples and reference_small,
             "nonfinite": count_nonfinite(samples) over all samples}.
    "w2" is NaN when any of the samples used for it is NaN / inf (W2 is undefined then; the TV
    already charges them to the outside cell and "nonfinite" says how many there were).
    Take reference_small and reference_large from independent draws so that W2 is not biased
    towards a sampler that memorises the TV set.
    """
    samples = _points(samples, "samples", 2)
    reference_small = _points(reference_small, "reference_small", 2)
    if isinstance(n_w2, bool) or not isinstance(n_w2, numbers.Integral) or n_w2 < 1:
        raise ValueError(f"n_w2 must be a positive int; got {n_w2!r}.")
    n = min(int(n_w2), samples.shape[0], reference_small.shape[0])
    head = samples[:n]
    w2 = float("nan") if count_nonfinite(head) else w2_distance(head, reference_small[:n])
    return {
        "tv": tv_distance(samples, reference_large, box, bins),
        "w2": w2,
        "nonfinite": count_nonfinite(samples),
    }


# --------------------------------------------------------------------------------------------
# Metric logging
# --------------------------------------------------------------------------------------------


def _to_scalar(key: str, value: Any) -> int | float:
    """Python int / float from a Python, NumPy or JAX scalar (or a size-1 array)."""
    arr = np.asarray(value)
    if arr.size != 1 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(
            f"metric {key!r} must be a real scalar; got {type(value).__name__} with dtype "
            f"{arr.dtype} and shape {arr.shape}."
        )
    if np.iscomplexobj(arr):
        raise ValueError(f"metric {key!r} is complex ({value!r}); log its real part or abs.")
    item = arr.reshape(()).item()
    return int(item) if isinstance(item, (bool, int)) else float(item)


def _drop_partial_last_line(path: str) -> None:
    """Cut a trailing line without a newline (a write killed half-way) so appends stay valid."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


# Optional writers: (module to import, how to install it).  Checked by `require_writer` before a
# run writes anything, so a missing package is one line and not an ImportError half-way.
OPTIONAL_WRITERS = {
    "tensorboard": ("tensorboardX",
                    "pip install tensorboardX (or pip install -e '.[tensorboard]')"),
    "wandb": ("wandb", "pip install wandb (or pip install -e '.[wandb]')"),
}


def require_writer(name: str) -> None:
    """Raises ImportError naming the install command if writer `name` (a key of
    OPTIONAL_WRITERS) cannot be imported here."""
    module, install = OPTIONAL_WRITERS[name]
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"the {name} writer needs {module}, which is not installed: {install}")


class ScalarSink(Protocol):
    """One destination of logged scalars (the shape of CLU's metric_writers): every method is
    called on the main process only."""

    def write_scalars(self, step: int, scalars: Mapping[str, int | float]) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    """Scalars as TensorBoard event files in `logdir` (tensorboardX)."""

    def __init__(self, logdir: str):
        require_writer("tensorboard")
        import tensorboardX  # pylint: disable=g-import-not-at-top
        self._writer = tensorboardX.SummaryWriter(logdir=logdir)

    def write_scalars(self, step, scalars):
        for k, v in scalars.items():
            self._writer.add_scalar(k, v, global_step=step)
        self._writer.flush()

    def close(self):
        self._writer.close()


class WandbSink:
    """Scalars to a Weights & Biases run: project / entity as given, the run named after the
    workdir and resumed by an id derived from its absolute path (a restarted run appends to the
    same W&B run).  `config`: the run's config as a dict.  WANDB_MODE=offline works as usual."""

    def __init__(self, workdir: str, project: str, entity: str = "", config: dict | None = None):
        require_writer("wandb")
        import hashlib  # pylint: disable=g-import-not-at-top
        import wandb  # pylint: disable=g-import-not-at-top
        path = os.path.abspath(workdir)
        run_id = hashlib.sha1(path.encode()).hexdigest()[:16]
        self._run = wandb.init(project=project, entity=entity or None, dir=path, id=run_id,
                               name=os.path.basename(path), config=config, resume="allow")

    def write_scalars(self, step, scalars):
        self._run.log(dict(scalars), step=step)

    def close(self):
        self._run.finish()


class MetricWriter:
    """Appends scalar metrics to `workdir/metrics.jsonl`, and to the optional sinks.

    Each `write(step, scalars)` adds one JSON line {"step": step, **scalars} and flushes it, so
    a killed run keeps every line written.  NaN / inf are written as NaN / Infinity (Python's
    json reads them back).  On a process other than the main one (is_main_process=False) every
    method is a no-op, so callers need no `if`.  tensorboard=True also writes TensorBoard event
    files in workdir (`TensorBoardSink`); wandb_project logs to Weights & Biases (`WandbSink`);
    both are optional packages, checked by `require_writer` before any file is opened.  A run
    resumed from a checkpoint should first call truncate_metrics(path, restored_step).
    """

    def __init__(self, workdir: str | os.PathLike, tensorboard: bool = False,
                 is_main_process: bool = True, wandb_project: str = "", wandb_entity: str = "",
                 run_config: dict | None = None):
        self.path = os.path.join(os.fspath(workdir), METRICS_FILENAME)
        self._file = None
        self._sinks: list[ScalarSink] = []
        self._active = bool(is_main_process)
        self._closed = False
        if not self._active:
            return
        for name, wanted in (("tensorboard", tensorboard), ("wandb", bool(wandb_project))):
            if wanted:
                require_writer(name)
        os.makedirs(os.fspath(workdir), exist_ok=True)
        if os.path.exists(self.path):
            _drop_partial_last_line(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            self._sinks.append(TensorBoardSink(os.fspath(workdir)))
        if wandb_project:
            self._sinks.append(WandbSink(os.fspath(workdir), wandb_project, wandb_entity,
                                         run_config))

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Log scalars at an integer step.  scalars: {name: scalar}; "step" is reserved."""
        if not self._active:
            return
        if self._closed:
            raise ValueError(f"MetricWriter for {self.path} is closed; open a new one to write.")
        step = _to_scalar("step", step)
        if not isinstance(step, int):
            raise ValueError(f"step must be an integer; got {step!r}.")
        if "step" in scalars:
            raise ValueError("'step' is reserved for the step argument; rename that metric.")
        values = {str(k): _to_scalar(str(k), v) for k, v in scalars.items()}
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        for sink in self._sinks:
            sink.write_scalars(step, values)

    def close(self) -> None:
        """Flush and close the files and sinks; later writes raise ValueError.  Safe to call
        twice."""
        if self._file is not None:
            self._file.close()
        for sink in self._sinks:
            sink.close()
        self._file = None
        self._sinks = []
        self._closed = True

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _parse_lines(path: str | os.PathLike) -> list[tuple[str, dict]]:
    """(line, record) pairs of a JSONL file.  A last line without a newline that does not parse
    (a write cut off by a kill) is skipped; any other bad line raises ValueError."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    # split leaves "" after the final newline; anything else in the last slot was never finished.
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON: {line[:200]!r}") from None
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"{path}: line {i + 1} is not a metrics record with a 'step': {line[:200]!r}")
        out.append((line, record))
    return out


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All records of a metrics.jsonl file, in file order: [{"step": int, name: value, ...}]."""
    return [record for _, record in _parse_lines(path)]


def truncate_metrics(path: str | os.PathLike, max_step: int) -> int:
    """Keep only the records with step <= max_step (e.g. the restored checkpoint's step).

    The file is rewritten atomically (a temporary file in the same directory, fsynced, then
    os.replace), so a crash leaves either the old or the new file, never a half-written one.
    Kept lines are copied byte for byte.  A missing file is left missing.  Returns the number of
    records kept.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return 0
    kept = [line for line, record in _parse_lines(path) if record["step"] <= max_step]
    fileio.write_atomic(path, lambda f: f.write("".join(line + "\n" for line in kept).encode()))
    return len(kept)
