"""Coarse-to-fine generation: radially averaged power spectra along sampling trajectories.

Power spectrum of an image x [H, W, C] (channels summed):  P(k) = sum_c |F_c(k)|^2 / (H W), with F
the unnormalised 2-D DFT, so sum_k P(k) = sum_pixels x^2 (Parseval).  Frequencies k = (k_y, k_x)
in cycles per pixel, f_y = fftfreq(H), f_x = fftfreq(W); radial bin round(|f| min(H, W)), i.e.
for square images the integer ring radius in cycles per image.  Bin 0 is the mean (DC); bins
above min(H, W) / 2 hold the corners beyond the Nyquist radius (partial rings).

  radial_profile(x, "sum")   energy per ring: sums to the image energy (Parseval);
  radial_profile(x, "mean")  radially averaged power: white noise of variance s^2 gives s^2 C in
                             every ring.

Along a sampling trajectory (`spectral_trajectory`) the profiles of the state x_t and of the
model's prediction of the clean image x1_hat(x_t, t) are taken at every grid time.  For each
ring, `reach_times` gives the grid time from which the x1_hat energy stays at or above a fraction
of its final value, and `settle_times` the time from which the energy stays within
(1 - fraction) of its final value (also for x_t, whose rings start at the noise level and fall).
Low frequencies settling before high ones is the coarse-to-fine picture (Dieleman 2024,
"Diffusion is spectral autoregression"; Rissanen et al. 2023).
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from flowmatch import paths as paths_lib
from flowmatch.diagnostics import exposure

MODES = ("mean", "sum")


def radial_bins(height: int, width: int) -> np.ndarray:
    """int [H, W]: the radial bin of every DFT frequency (see the module docstring)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    return np.rint(np.sqrt(fy ** 2 + fx ** 2) * min(height, width)).astype(np.int64)


def power_spectrum(images) -> np.ndarray:
    """|DFT|^2 / (H W) summed over channels: images [B, H, W, C] (or [H, W, C]) -> [B, H, W]."""
    x = np.asarray(images, np.float64)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C] or [H, W, C], got shape {x.shape}")
    f = np.fft.fft2(x, axes=(1, 2))
    return np.sum(np.abs(f) ** 2, axis=3) / (x.shape[1] * x.shape[2])


def radial_profile(images, mode: str = "mean") -> np.ndarray:
    """Per-image radial spectrum: [B, H, W, C] -> [B, K] (K = number of radial bins).

    mode 'mean': average power per ring; 'sum': energy per ring (sums to sum x^2)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    p = power_spectrum(images)
    bins = radial_bins(p.shape[1], p.shape[2]).ravel()
    k = int(bins.max()) + 1
    flat = p.reshape(p.shape[0], -1)
    sums = np.stack([np.bincount(bins, weights=row, minlength=k) for row in flat])
    if mode == "sum":
        return sums
    return sums / np.bincount(bins, minlength=k)


def spectral_trajectory(v: Callable, path: paths_lib.AffinePath, x0, *, method: str,
                        num_steps: int, t1: float = 1.0):
    """Integrates v from x0 [B, H, W, C] (t = 0) to t1 (a model's t_end) on a uniform grid;
    returns (ts [N + 1], states [N + 1, B, ...], x1_hat [N + 1, B, ...]) with x1_hat the model's
    clean-image prediction at every grid state (N + 1 evaluations beyond the solve's)."""
    sol, x1s = exposure.along_trajectory(v, x0, lambda t, x: exposure.endpoints(v, path, t, x)[0],
                                         method=method, num_steps=num_steps, t1=t1)
    return np.asarray(sol.ts, np.float64), np.asarray(sol.xs), np.asarray(x1s)


def profiles_over_time(frames, mode: str = "sum") -> np.ndarray:
    """Batch-mean radial profile of every frame: [T, B, H, W, C] -> [T, K]."""
    return np.stack([np.mean(radial_profile(f, mode), axis=0) for f in np.asarray(frames)])


def _first_of_final_run(ts, ok) -> np.ndarray:
    """Per column of ok [T, K]: the first ts[i] from which ok holds at every later index."""
    after = np.flip(np.logical_and.accumulate(np.flip(ok, axis=0), axis=0), axis=0)
    return np.asarray(ts, np.float64)[np.argmax(after, axis=0)]


def reach_times(ts, energy, fraction: float) -> np.ndarray:
    """For each ring k: the first ts[i] from which energy[j, k] >= fraction * energy[-1, k] at
    every later j ([K]); energy: [T, K] over the grid ts [T].  "From which ... at every later"
    discounts an early overshoot: a DDPM's x1_hat near t = 0 divides by alpha_0 ~ 0.006 and has
    far more energy than the final image in every ring."""
    energy = np.asarray(energy, np.float64)
    return _first_of_final_run(ts, energy >= fraction * energy[-1:])


def settle_times(ts, energy, fraction: float) -> np.ndarray:
    """For each ring: the first ts[i] from which |energy - final| <= (1 - fraction) final holds
    at every later grid time ([K])."""
    energy = np.asarray(energy, np.float64)
    return _first_of_final_run(
        ts, np.abs(energy - energy[-1:]) <= (1.0 - fraction) * np.abs(energy[-1:]))


def log_snr(path: paths_lib.AffinePath, t) -> np.ndarray:
    """log(alpha_t^2 / sigma_t^2) of the path at times t (inf where sigma = 0)."""
    s = path.schedule(jnp.asarray(np.asarray(t, np.float64), jnp.float32))
    a, sg = np.asarray(s.alpha, np.float64), np.asarray(s.sigma, np.float64)
    with np.errstate(divide="ignore"):
        return 2.0 * (np.log(np.abs(a)) - np.log(np.abs(sg)))
