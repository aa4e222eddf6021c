"""Image sample quality: Fréchet distance in a small classifier's feature space, and FID.

Classifier Fréchet distance (digits, the MNIST subset, where ImageNet Inception features mean
little): a small CNN (`models.classifier.Classifier`) is trained on the dataset's labelled train
split and cached; generated images and the held-out test split are mapped to its penultimate
features (ReLU(Dense), 128-d) and compared with the Fréchet distance between Gaussian fits,
    fd = |mu_g - mu_r|^2 + Tr(S_g + S_r - 2 (S_g S_r)^{1/2}).
Its scale is the classifier's, not Inception's: compare models only under one classifier (same
dataset, seed and settings) and the same number of samples, and read a number against the
real-vs-real floors (`ImageMetric.floors`).

    metric = make_image_metric("digits", "~/.cache/flowmatch")
    metric(samples)            # {"fd": ..., "classifier_accuracy": ...}
    metric.floors()            # {"fd_test_halves": ..., "fd_train_vs_test": ...}

FID (CIFAR-10 scale): pool3 features of the FID Inception network (`models.inception`, weights
converted from pytorch-fid), `compute_fid(extractor, generated, reference_stats)`.

Generated samples are clipped to [-1, 1] (the data range), as saving them as images would.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
import warnings
import zipfile
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from flowmatch import fileio
from flowmatch.data import images as images_lib
from flowmatch.metrics import frechet_distance
from flowmatch.metrics import gaussian_stats
from flowmatch.models import inception as inception_lib
from flowmatch.models.classifier import Classifier

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
_PARAM_PREFIX = "params/"
_LOSS_CHECK_EVERY = 100


# --------------------------------------------------------------------------------------------
# Classifier training and caching
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
    """Everything that determines a trained classifier besides the dataset and seed.

    steps of Adam (cosine-decayed learning_rate, batch_size examples drawn with replacement from
    the train split); max_shift: random translation of each training image by up to this many
    pixels (background -1 fills in); channels / feature_dim: the `Classifier` widths.
    """
    steps: int
    batch_size: int
    learning_rate: float
    max_shift: int = 0
    channels: tuple[int, ...] = (16, 32, 64)
    feature_dim: int = 128


# Tuned on 2 CPU cores: digits ~99% test accuracy in ~10 s, MNIST subset ~97% in ~1 min.
CLASSIFIER_DEFAULTS: dict[str, ClassifierSettings] = {
    "digits": ClassifierSettings(steps=600, batch_size=64, learning_rate=3e-3, max_shift=0),
    "mnist": ClassifierSettings(steps=3000, batch_size=64, learning_rate=3e-3, max_shift=2),
}


def classifier_settings(dataset_name: str, **overrides: Any) -> ClassifierSettings:
    """CLASSIFIER_DEFAULTS[dataset_name] with the non-None overrides applied (validated)."""
    if dataset_name not in CLASSIFIER_DEFAULTS:
        raise ValueError(
            f"no feature classifier for dataset {dataset_name!r}; choose one of: "
            f"{', '.join(CLASSIFIER_DEFAULTS)} (for CIFAR-10 use the Inception FID: compute_fid)")
    fields = {f.name for f in dataclasses.fields(ClassifierSettings)}
    unknown = sorted(k for k in overrides if k not in fields)
    if unknown:
        raise ValueError(f"unknown classifier setting(s) {unknown}; allowed: {sorted(fields)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "channels" in overrides:
        overrides["channels"] = tuple(int(c) for c in overrides["channels"])
    settings = dataclasses.replace(CLASSIFIER_DEFAULTS[dataset_name], **overrides)
    for name in ("steps", "batch_size", "feature_dim"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"classifier {name} must be a positive int; got {value!r}")
    if not (isinstance(settings.max_shift, (int, np.integer)) and settings.max_shift >= 0):
        raise ValueError(f"max_shift must be an int >= 0; got {settings.max_shift!r}")
    if not (math.isfinite(settings.learning_rate) and settings.learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive float; got {settings.learning_rate!r}")
    # Plain Python numbers, so the settings compare equal to their JSON copy in a cache file.
    return dataclasses.replace(
        settings, steps=int(settings.steps), batch_size=int(settings.batch_size),
        learning_rate=float(settings.learning_rate), max_shift=int(settings.max_shift),
        feature_dim=int(settings.feature_dim))


def _make_model(settings: ClassifierSettings, num_classes: int) -> Classifier:
    return Classifier(num_classes=num_classes, channels=settings.channels,
                      feature_dim=settings.feature_dim)


def _shift_images(key: jax.Array, x: jax.Array, max_shift: int) -> jax.Array:
    """Translates each image of x [B, H, W, C] by its own offset in [-max_shift, max_shift]^2,
    filling the uncovered border with -1 (the background)."""
    b, h, w, c = x.shape
    offsets = jax.random.randint(key, (b, 2), 0, 2 * max_shift + 1)
    padded = jnp.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)),
                     constant_values=-1.0)
    crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c))  # noqa: E731
    return jax.vmap(crop)(padded, offsets)


def _make_train_step(model: Classifier, optimizer: optax.GradientTransformation,
                     settings: ClassifierSettings):
    """Jitted (params, opt_state, x_train, y_train, key) -> (params, opt_state, loss).

    One step per call on purpose: XLA:CPU runs these convolutions about 15x slower inside a
    lax.scan / while loop than as a top-level computation (measured), and a step is ~20 ms.
    """

    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(params, opt_state, x_train, y_train, key):
        key_batch, key_shift = jax.random.split(key)
        idx = jax.random.randint(key_batch, (settings.batch_size,), 0, x_train.shape[0])
        x, y = x_train[idx], y_train[idx]
        if settings.max_shift:
            x = _shift_images(key_shift, x, settings.max_shift)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


@functools.partial(jax.jit, static_argnums=0)
def _classifier_outputs(model: Classifier, params: Any, x: jax.Array):
    return model.apply({"params": params}, x, return_features=True)


def _batched(fn: Callable[[np.ndarray], Any], x: np.ndarray, batch_size: int):
    """fn over x in chunks of batch_size (the last one zero-padded so the shape, and the
    compiled function, stay the same); returns the list of per-chunk outputs (NumPy)."""
    n = x.shape[0]
    size = min(batch_size, n)
    outs = []
    for start in range(0, n, size):
        chunk = x[start:start + size]
        k = chunk.shape[0]
        if k < size:
            chunk = np.concatenate([chunk, np.zeros((size - k, *chunk.shape[1:]), chunk.dtype)])
        out = fn(chunk)
        outs.append(jax.tree_util.tree_map(lambda a: np.asarray(a)[:k], out))
    return outs


def _check_images(images, shape: tuple[int, ...] | None, name: str) -> np.ndarray:
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4 or (shape is not None and x.shape[1:] != tuple(shape)):
        want = f"[N, {', '.join(map(str, shape))}]" if shape is not None else "[N, H, W, C]"
        raise ValueError(f"{name} must have shape {want}; got {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 images for a covariance; got {x.shape[0]}")
    return x


def _nonfinite_images(x: np.ndarray) -> int:
    return int(np.count_nonzero(~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)))


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedClassifier:
    """A trained feature classifier: model, params, held-out accuracy and provenance.

    image_shape: (H, W, C) of the dataset; test_accuracy: fraction of the test split correctly
    classified; train_seconds: wall time of the training loop (0 for a cache made elsewhere).
    """
    dataset: str
    seed: int
    settings: ClassifierSettings
    model: Classifier
    params: Any
    image_shape: tuple[int, int, int]
    test_accuracy: float
    train_seconds: float

    def outputs(self, images, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """(logits [N, num_classes], features [N, feature_dim]) of images [N, H, W, C], clipped
        to [-1, 1] first; float32 NumPy."""
        x = np.clip(np.asarray(images, dtype=np.float32), -1.0, 1.0)
        if x.ndim != 4 or x.shape[1:] != tuple(self.image_shape):
            raise ValueError(f"images must have shape [N, {', '.join(map(str, self.image_shape))}]"
                             f" for the {self.dataset} classifier; got {x.shape}")
        outs = _batched(lambda c: _classifier_outputs(self.model, self.params, c), x, batch_size)
        return (np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs]))

    def features(self, images, batch_size: int = 500) -> np.ndarray:
        """Penultimate features [N, feature_dim] float32 of images [N, H, W, C] in [-1, 1]."""
        return self.outputs(images, batch_size)[1]

    def accuracy(self, images, labels, batch_size: int = 500) -> float:
        """Fraction of images [N, H, W, C] classified as labels [N]."""
        logits = self.outputs(images, batch_size)[0]
        return float(np.mean(logits.argmax(axis=-1) == np.asarray(labels)))


def _train(dataset_name: str, seed: int, settings: ClassifierSettings) -> TrainedClassifier:
    train = images_lib.load_image_dataset(dataset_name, split="train")
    test = images_lib.load_image_dataset(dataset_name, split="test")
    model = _make_model(settings, train.num_classes)
    base = jax.random.PRNGKey(seed)
    params = model.init(jax.random.fold_in(base, 0), jnp.asarray(train.x[:1]))["params"]
    optimizer = optax.adam(optax.cosine_decay_schedule(settings.learning_rate, settings.steps))
    opt_state = optimizer.init(params)
    step_fn = _make_train_step(model, optimizer, settings)
    x_train, y_train = jnp.asarray(train.x), jnp.asarray(train.label)
    data_key = jax.random.fold_in(base, 1)

    start = time.perf_counter()
    checked = 0
    for step in range(settings.steps):
        params, opt_state, loss = step_fn(params, opt_state, x_train, y_train,
                                          jax.random.fold_in(data_key, step))
        if (step + 1) % _LOSS_CHECK_EVERY == 0 or step + 1 == settings.steps:
            if not np.isfinite(float(loss)):
                raise FloatingPointError(
                    f"classifier loss became non-finite between steps {checked} and {step + 1} "
                    f"(learning_rate={settings.learning_rate}); lower the learning rate")
            checked = step + 1
    params = jax.device_get(params)
    seconds = time.perf_counter() - start

    classifier = TrainedClassifier(
        dataset=dataset_name, seed=seed, settings=settings, model=model, params=params,
        image_shape=tuple(train.x.shape[1:]), test_accuracy=0.0, train_seconds=seconds)
    accuracy = classifier.accuracy(test.x, test.label)
    logger.info("trained %s classifier (seed %d): %d steps in %.1f s, test accuracy %.4f",
                dataset_name, seed, settings.steps, seconds, accuracy)
    return dataclasses.replace(classifier, test_accuracy=accuracy)


def train_classifier(dataset_name: str, *, seed: int = 0, steps: int | None = None,
                     batch_size: int | None = None, learning_rate: float | None = None,
                     **settings: Any) -> tuple[Any, float]:
    """Trains the feature classifier on the TRAIN split of "digits" or "mnist".

    Settings not given come from CLASSIFIER_DEFAULTS[dataset_name] (other ClassifierSettings
    fields, e.g. max_shift, channels, feature_dim, may be passed by keyword).  All randomness is
    drawn from `seed`.  Returns (params, test_accuracy): accuracy on the held-out TEST split.
    `load_or_train_classifier` returns the full `TrainedClassifier` (model, timing) and caches it.
    """
    s = classifier_settings(dataset_name, steps=steps, batch_size=batch_size,
                            learning_rate=learning_rate, **settings)
    trained = _train(dataset_name, int(seed), s)
    return trained.params, trained.test_accuracy


def _cache_record(dataset_name: str, seed: int, settings: ClassifierSettings) -> dict:
    return {"format": CACHE_FORMAT, "dataset": dataset_name, "seed": seed,
            **{k: list(v) if isinstance(v, tuple) else v
               for k, v in dataclasses.asdict(settings).items()}}


def classifier_cache_path(cache_dir: str | os.PathLike, dataset_name: str, seed: int = 0) -> str:
    """Where load_or_train_classifier keeps a classifier:
    cache_dir/classifier_<dataset>_seed<seed>.npz."""
    return os.path.join(os.path.expanduser(os.fspath(cache_dir)),
                        f"classifier_{dataset_name}_seed{int(seed)}.npz")


def _save_classifier(path: str, classifier: TrainedClassifier) -> None:
    """Writes the classifier atomically (temporary file in the same folder, then os.replace)."""
    record = _cache_record(classifier.dataset, classifier.seed, classifier.settings)
    arrays = {_PARAM_PREFIX + "/".join(k): np.asarray(v)
              for k, v in traverse_util.flatten_dict(classifier.params).items()}
    arrays.update(settings=np.array(json.dumps(record, sort_keys=True)),
                  test_accuracy=np.float64(classifier.test_accuracy),
                  train_seconds=np.float64(classifier.train_seconds),
                  image_shape=np.asarray(classifier.image_shape, np.int64))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fileio.write_atomic(path, lambda f: np.savez(f, **arrays))


def _load_classifier(path: str, dataset_name: str, seed: int,
                     settings: ClassifierSettings) -> TrainedClassifier | None:
    """The cached classifier, or None if it was made with other settings.  ValueError (naming
    the file to delete) if the file cannot be read or does not hold a complete classifier."""
    def corrupt(why: str) -> ValueError:
        return ValueError(f"classifier cache {path!r} is corrupt or incomplete ({why}); delete "
                          f"that file and run again to retrain the classifier")

    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise corrupt(f"{type(e).__name__}: {e}") from e
    try:
        record = json.loads(str(data["settings"]))
        accuracy = float(data["test_accuracy"])
        seconds = float(data["train_seconds"])
        image_shape = tuple(int(v) for v in data["image_shape"])
    except (KeyError, ValueError, TypeError) as e:
        raise corrupt(f"bad metadata: {type(e).__name__}: {e}") from e
    if record != _cache_record(dataset_name, seed, settings):
        logger.info("classifier cache %s was made with other settings (%s); retraining",
                    path, record)
        return None
    model = _make_model(settings, images_lib.IMAGE_DATASETS[dataset_name].num_classes)
    if len(image_shape) != 3:
        raise corrupt(f"image_shape {image_shape}")
    expected = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                              jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))["params"]
    flat = {}
    for key, leaf in traverse_util.flatten_dict(expected).items():
        name = _PARAM_PREFIX + "/".join(key)
        if name not in data:
            raise corrupt(f"missing parameter {name!r}")
        if data[name].shape != leaf.shape or not np.all(np.isfinite(data[name])):
            raise corrupt(f"parameter {name!r} has shape {data[name].shape} (expected "
                          f"{leaf.shape}) or non-finite values")
        flat[key] = data[name].astype(np.float32)
    return TrainedClassifier(dataset=dataset_name, seed=seed, settings=settings, model=model,
                             params=traverse_util.unflatten_dict(flat), image_shape=image_shape,
                             test_accuracy=accuracy, train_seconds=seconds)


def load_or_train_classifier(dataset_name: str, cache_dir: str | os.PathLike, *, seed: int = 0,
                             **settings: Any) -> TrainedClassifier:
    """The classifier for dataset_name / seed / settings from classifier_cache_path(...), or
    trained (train_classifier's settings) and written there if the file is missing or was made
    with other settings.  Raises ValueError naming the file if it is corrupt."""
    s = classifier_settings(dataset_name, **settings)
    seed = int(seed)
    path = classifier_cache_path(cache_dir, dataset_name, seed)
    if os.path.exists(path):
        cached = _load_classifier(path, dataset_name, seed, s)
        if cached is not None:
            logger.info("loaded %s classifier from %s (test accuracy %.4f)", dataset_name, path,
                        cached.test_accuracy)
            return cached
    classifier = _train(dataset_name, seed, s)
    _save_classifier(path, classifier)
    return classifier


# --------------------------------------------------------------------------------------------
# Fréchet distance in the classifier's feature space
# --------------------------------------------------------------------------------------------

FeatureFn = Callable[[np.ndarray], np.ndarray]


def _feature_fn(classifier: TrainedClassifier | FeatureFn) -> FeatureFn:
    if isinstance(classifier, TrainedClassifier):
        return classifier.features
    if callable(classifier):
        return lambda x: np.asarray(classifier(np.clip(x, -1.0, 1.0)))
    raise ValueError(f"expected a TrainedClassifier or a callable images -> features; got "
                     f"{type(classifier).__name__}")


def classifier_frechet_distance(classifier: TrainedClassifier | FeatureFn, generated_images,
                                reference_images) -> dict[str, float]:
    """Fréchet distance between Gaussian fits of the features of two image sets.

    classifier: a TrainedClassifier (penultimate features) or any callable images [N, H, W, C]
    -> features [N, d].  generated_images: [N, H, W, C]; reference_images: [M, H, W, C], for a
    generative model the held-out TEST split.  Images are clipped to [-1, 1].  Returns
    {"fd": float >= 0, "accuracy": the classifier's test accuracy (NaN for a bare callable)}.
    Raises ValueError if a generated image has NaN / inf pixels.
    """
    shape = classifier.image_shape if isinstance(classifier, TrainedClassifier) else None
    gen = _check_images(generated_images, shape, "generated_images")
    ref = _check_images(reference_images, gen.shape[1:], "reference_images")
    for name, x in (("generated_images", gen), ("reference_images", ref)):
        bad = _nonfinite_images(x)
        if bad:
            raise ValueError(f"{name} has {bad} of {x.shape[0]} images with NaN / inf pixels; "
                             "the Fréchet distance is undefined")
    features = _feature_fn(classifier)
    mu_g, s_g = gaussian_stats(features(gen))
    mu_r, s_r = gaussian_stats(features(ref))
    accuracy = (classifier.test_accuracy if isinstance(classifier, TrainedClassifier)
                else float("nan"))
    return {"fd": frechet_distance(mu_g, s_g, mu_r, s_r), "accuracy": float(accuracy)}


def real_fd_floors(classifier: TrainedClassifier, *, num_samples: int | None = None,
                   seed: int = 0) -> dict[str, float]:
    """Fréchet distances between real image sets: what a perfect generator would score.

    fd_test_halves: the test split cut into two random disjoint halves;
    fd_train_vs_test: num_samples random TRAIN images (default: as many as the test split, at
    most the train split) against the whole test split -- the floor for num_samples generated
    images scored by ImageMetric.  Both shrink as the sample sizes grow (estimation bias).
    """
    train = images_lib.load_image_dataset(classifier.dataset, split="train").x
    test = images_lib.load_image_dataset(classifier.dataset, split="test").x
    n = min(int(num_samples or test.shape[0]), train.shape[0])
    rng = np.random.default_rng(seed)
    perm = rng.permutation(test.shape[0])
    half = test.shape[0] // 2
    halves = classifier_frechet_distance(classifier, test[perm[:half]], test[perm[half:]])
    subset = train[np.sort(rng.choice(train.shape[0], n, replace=False))]
    train_vs_test = classifier_frechet_distance(classifier, subset, test)
    return {"fd_test_halves": halves["fd"], "fd_train_vs_test": train_vs_test["fd"]}


class ImageMetric:
    """quality_fn for image runs: samples [N, H, W, C] -> {"fd", "classifier_accuracy"}.

    fd: classifier Fréchet distance of the samples (clipped to [-1, 1]) against the features of
    the reference images (default the dataset's held-out test split), NaN with a warning when a
    sample has NaN / inf pixels; classifier_accuracy: the classifier's test accuracy, reported
    so a reader knows how much the feature space can be trusted.  Compare fd values at one
    sample count N; `floors(N)` gives the real-vs-real values at that N.
    """

    def __init__(self, classifier: TrainedClassifier, reference_images=None):
        if reference_images is None:
            reference_images = images_lib.load_image_dataset(classifier.dataset, split="test").x
        ref = _check_images(reference_images, classifier.image_shape, "reference_images")
        self.classifier = classifier
        self.num_reference = ref.shape[0]
        self.reference_stats = gaussian_stats(classifier.features(ref))

    def __call__(self, samples) -> dict[str, float]:
        x = _check_images(samples, self.classifier.image_shape, "samples")
        bad = _nonfinite_images(x)
        if bad:
            warnings.warn(f"{bad} of {x.shape[0]} samples have NaN / inf pixels; fd is NaN")
            fd = float("nan")
        else:
            fd = frechet_distance(*gaussian_stats(self.classifier.features(x)),
                                  *self.reference_stats)
        return {"fd": fd, "classifier_accuracy": float(self.classifier.test_accuracy)}

    def floors(self, num_samples: int | None = None, seed: int = 0) -> dict[str, float]:
        """real_fd_floors of this metric's classifier (num_samples: the generated count)."""
        return real_fd_floors(self.classifier, num_samples=num_samples, seed=seed)


def make_image_metric(dataset_name: str, cache_dir: str | os.PathLike, *, seed: int = 0,
                      **settings: Any) -> ImageMetric:
    """ImageMetric for "digits" or "mnist" with the cached (or newly trained) classifier and
    the test split as reference.  Use as compare_integrators(..., quality_fn=metric)."""
    return ImageMetric(load_or_train_classifier(dataset_name, cache_dir, seed=seed, **settings))


# --------------------------------------------------------------------------------------------
# FID with the Inception network
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _inception_apply(model: inception_lib.FIDInceptionV3, variables: Any, x: jax.Array):
    return model.apply(variables, x)


def quantize_images(x: np.ndarray) -> np.ndarray:
    """Rounds [-1, 1] images to the 256 levels of 8-bit pixels: round((x + 1) * 127.5) / 127.5 - 1
    (after clipping), as saving samples to PNG and reading them back in pytorch-fid would."""
    x = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    return (np.round((x + 1.0) * 127.5) / 127.5 - 1.0).astype(np.float32)


class InceptionExtractor:
    """images [N, H, W, 1 or 3] in [-1, 1] -> FID pool3 features [N, 2048] float32.

    Runs the jitted FIDInceptionV3 in batches of batch_size (resize to 299 x 299 inside).
    quantize (default True): round to 8-bit levels first, as the standard protocol does by
    evaluating saved image files.  Build it with `load_inception_extractor(weights_path)`.
    """

    def __init__(self, variables: Mapping[str, Any],
                 model: inception_lib.FIDInceptionV3 | None = None, *, batch_size: int = 200,
                 quantize: bool = True):
        self.model = inception_lib.FIDInceptionV3() if model is None else model
        self.variables = variables
        self.batch_size = int(batch_size)
        self.quantize = bool(quantize)

    def __call__(self, images) -> np.ndarray:
        x = np.asarray(images, dtype=np.float32)
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(f"images must have shape [N, H, W, 1 or 3]; got {x.shape}")
        x = quantize_images(x) if self.quantize else np.clip(x, -1.0, 1.0)
        outs = _batched(lambda c: _inception_apply(self.model, self.variables, c), x,
                        self.batch_size)
        return np.concatenate(outs)


def load_inception_extractor(weights_path: str | os.PathLike, *, batch_size: int = 200,
                             quantize: bool = True) -> InceptionExtractor:
    """InceptionExtractor with the converted pytorch-fid weights (see models.inception)."""
    variables = inception_lib.load_inception_params(weights_path)
    return InceptionExtractor(variables, batch_size=batch_size, quantize=quantize)


def fid_from_features(features1, features2) -> float:
    """Fréchet distance between Gaussian fits (float64 mean, unbiased covariance) of two
    feature sets [N, d] and [M, d]."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))


def compute_stats(extractor: FeatureFn, images) -> tuple[np.ndarray, np.ndarray]:
    """(mu [d], sigma [d, d]) float64 of extractor(images) (e.g. the CIFAR-10 train split)."""
    x = _check_images(images, None, "images")
    bad = _nonfinite_images(x)
    if bad:
        raise ValueError(f"{bad} of {x.shape[0]} images have NaN / inf pixels")
    return gaussian_stats(extractor(x))


def compute_fid(extractor: FeatureFn, generated,
                reference_stats: tuple[np.ndarray, np.ndarray] | str | os.PathLike) -> float:
    """FID of generated images [N, H, W, C] in [-1, 1] against reference statistics.

    The standard protocol (CIFAR-10 results in the DDPM / flow-matching papers): N = 50,000
    generated samples against the statistics of the 50,000 TRAINING images, pool3 features of
    the FID Inception network, float64 statistics, unbiased covariance.  FID is biased upwards
    at small N, so numbers are comparable only at the same N (10k FIDs are several points
    higher than 50k ones).  reference_stats: (mu, sigma) or a .npz path (load_stats; the
    precomputed statistics files of pytorch-fid / TTUR have the same "mu" / "sigma" keys).
    """
    if isinstance(reference_stats, (str, os.PathLike)):
        reference_stats = load_stats(reference_stats)
    mu_r, sigma_r = reference_stats
    x = _check_images(generated, None, "generated")
    d = np.shape(mu_r)[0]
    if x.shape[0] < d:
        warnings.warn(f"FID from {x.shape[0]} samples < feature dimension {d}: the covariance is "
                      "rank-deficient and the value is strongly biased; use 50,000 samples")
    mu_g, sigma_g = compute_stats(extractor, x)
    return frechet_distance(mu_g, sigma_g, mu_r, sigma_r)


def save_stats(path: str | os.PathLike, mu, sigma) -> None:
    """Writes {"mu": [d], "sigma": [d, d]} float64 to a .npz at path (atomically)."""
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    _check_stats(mu, sigma, "save_stats")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fileio.write_atomic(path, lambda f: np.savez(f, mu=mu, sigma=sigma))


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(mu [d], sigma [d, d]) float64 from a .npz with keys "mu" and "sigma"."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"statistics file {path!r} not found; make it with "
                                "save_stats(path, *compute_stats(extractor, reference_images))")
    try:
        with np.load(path, allow_pickle=False) as f:
            mu, sigma = f["mu"], f["sigma"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"cannot read statistics {path!r} ({type(e).__name__}: {e}); expected "
                         "a .npz with arrays 'mu' [d] and 'sigma' [d, d]") from e
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    _check_stats(mu, sigma, repr(path))
    return mu, sigma


def _check_stats(mu: np.ndarray, sigma: np.ndarray, where: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{where}: need mu [d] and sigma [d, d]; got {mu.shape}, {sigma.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"{where}: mu / sigma contain NaN / inf values")


__all__ = [
    "CLASSIFIER_DEFAULTS", "ClassifierSettings", "ImageMetric", "InceptionExtractor",
    "TrainedClassifier", "classifier_cache_path", "classifier_frechet_distance",
    "classifier_settings", "compute_fid", "compute_stats", "fid_from_features",
    "load_inception_extractor", "load_or_train_classifier", "load_stats", "make_image_metric",
    "quantize_images", "real_fd_floors", "save_stats", "train_classifier",
]
