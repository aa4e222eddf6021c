"""Straightness and path energy of the trajectories an ODE sampler actually produces.

For trajectories x(t) of dx/dt = v(t, x) from t = 0 (noise x(0) ~ q0) to t = 1, with
displacement d = x(1) - x(0):

  path energy   PE = E ∫_0^1 ||v(t, x(t))||^2 dt    (Tong et al. 2023, "Improving and generalizing
                flow-based generative models with minibatch optimal transport", TMLR 2024, the
                kinetic energy that dynamic optimal transport minimises; Benamou & Brenier 2000);
  straightness  S = E ∫_0^1 ||d - v(t, x(t))||^2 dt  (Liu et al. 2023, "Flow straight and fast",
                ICLR 2023, Sec. 2: zero iff every trajectory is a straight line at constant
                speed, i.e. one Euler step is exact).

Because ∫ v dt = d along a solution, expanding the square gives  S = PE - E||d||^2  exactly, so
both come from one extra scalar per sample in the ODE state, e(t) = ∫_0^t ||v||^2, integrated by
the same Runge-Kutta method and grid as x (no extra evaluations of v).  For a discrete solve the
identity holds exactly too: with stages k_i and weights b_i, S = sum_steps h sum_i b_i ||d - k_i||^2
is the method's own quadrature of Liu's integral over its own stages.

A quadrature of the non-negative ||v||^2 is a sum of squares only when its weights are
non-negative.  Euler, midpoint, Heun, Ralston, RK3, RK4 and Bosh3 have such weights; Dopri5
(b_5 = -2187/6784) and Tsit5 do not, nor do the Adams-Bashforth methods (AB2: 3/2, -1/2), and on
a coarse fixed grid their value of PE can fall below E||d||^2, which would report a negative S.
So `positive_quadrature` says which solves give a trustworthy value: fixed grids of the
non-negative methods, and adaptive solves (whose error control covers e, so e is accurate to the
tolerance); for the others `path_metrics(..., positive=False)` reports NaN (unavailable) rather
than a number that misleads.

Reported (`path_metrics`), all in squared data units summed over dimensions:
  straightness   S (Liu et al.), 0 for straight constant-speed paths;
  energy_ratio   PE / E||d||^2 >= 1 (Cauchy-Schwarz per path), = 1 iff S = 0; = 1 + S / E||d||^2;
  npe            Tong et al.'s normalised path energy |PE - W2^2(q0, q1)| / W2^2(q0, q1), given an
                 estimate of the squared 2-Wasserstein distance between the source q0 and the data
                 q1 (Tong et al. estimate it by exact OT between samples, as
                 `metrics.w2_distance` does).  Since E||d||^2 >= W2^2(q0, p1) for the model's own
                 p1, PE - W2^2 splits into the straightness S plus the excess of the flow's coupling
                 over the optimal one.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from flowmatch import integrators


def _per_example_sq_norm(x):
    """||x_i||^2 over every axis but the first: [B, ...] -> [B], in float32 or wider."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return jnp.sum(jnp.square(x).reshape(x.shape[0], -1), axis=1)


def energy_field(v: Callable) -> Callable:
    """The augmented field (t, (x, e)) -> (v(t, x), ||v(t, x)||^2) for x: [B, ...], e: [B]."""

    def f(t, state):
        x, _ = state
        dx = v(t, x)
        return dx, _per_example_sq_norm(dx)

    return f


def solve_with_energy(v: Callable, x0, *, energy_error: bool = True,
                      **solve_kwargs) -> integrators.Solution:
    """`integrators.solve` of v from x0 [B, ...] with the path energy carried along.

    Returns a Solution whose x is the pair (x(t1) [B, ...], e [B] = ∫_{t0}^{t1} ||v||^2 dt per
    example, by the same method and steps).  On a fixed grid x is exactly the plain solve's.
    Adaptively, energy_error=True (default) has the step control measure e too, so its steps
    may differ slightly from a solve of x alone; energy_error=False measures x alone
    (`integrators.solve`'s error_on): the steps and x are then exactly the plain solve's and e
    is integrated along them without an error estimate of its own (fine where the tolerance is
    tight, e.g. compare_integrators' reference).  solve_kwargs: anything `integrators.solve`
    takes (method, num_steps, rtol, ...).
    """
    e0 = jnp.zeros((x0.shape[0],), jnp.promote_types(x0.dtype, jnp.float32))
    return integrators.solve(energy_field(v), (x0, e0),
                             error_on=None if energy_error else (True, False), **solve_kwargs)


def positive_quadrature(method: str, adaptive: bool = False) -> bool:
    """Whether `solve_with_energy` by `method` integrates ||v||^2 with non-negative weights (or
    adaptively: its error controlled, or its steps controlled on x alone at a tight tolerance, as
    compare_integrators' reference), so that its path energy can be trusted; see the module
    docstring."""
    if adaptive:
        return True
    tableau = integrators.TABLEAUS.get(method)
    return tableau is not None and bool(np.all(np.asarray(tableau.b, np.float64) >= 0))


def path_metrics(x0, x1, energy, w2_squared: float | None = None, *,
                 positive: bool = True) -> dict:
    """Straightness, energy ratio and (given W2^2(q0, q1)) NPE of solved trajectories.

    x0, x1: [B, ...] start and end of each trajectory (t = 0 and t = 1); energy: [B], the path
    energy ∫_0^1 ||v||^2 dt of each (from `solve_with_energy`).  Host side, float64.
    positive: `positive_quadrature` of the solve; False makes straightness, energy_ratio,
    path_energy and npe NaN (unavailable: the quadrature has a negative weight).
    Returns {"straightness", "energy_ratio", "path_energy", "displacement" (E||x1 - x0||^2),
    "npe" (None without w2_squared)}; see the module docstring.
    """
    x0 = np.asarray(x0, np.float64)
    x1 = np.asarray(x1, np.float64)
    e = np.asarray(energy, np.float64)
    if x0.shape != x1.shape or e.shape != x0.shape[:1]:
        raise ValueError(f"need x0, x1 of one shape [B, ...] and energy [B]; got {x0.shape}, "
                         f"{x1.shape} and {e.shape}")
    disp = float(np.mean(np.sum(np.square(x1 - x0).reshape(len(x0), -1), axis=1)))
    pe = float(np.mean(e)) if positive else float("nan")
    npe = None
    if w2_squared is not None:
        if not w2_squared > 0:
            raise ValueError(f"w2_squared must be > 0, got {w2_squared!r}")
        npe = abs(pe - w2_squared) / w2_squared
    # With non-negative weights S is a sum of squares; a negative PE - E||d||^2 is round-off of
    # the difference (e.g. -1e-8 for midpoint's one step, where S is exactly 0).
    s = max(pe - disp, 0.0) if positive else pe
    ratio = max(pe / disp, 1.0) if positive and disp > 0 else float("nan")
    return {"straightness": s, "energy_ratio": ratio, "path_energy": pe, "displacement": disp,
            "npe": npe}
