"""The solvers' view of a state: a flat list of array leaves.

`solve` flattens the pytree x0 once; every stepper then works on lists of leaves (one entry per
array, each in its own dtype) and `solve` restores the structure at the end.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def flat_field(v: Callable, treedef, leaves0) -> Callable:
    """v(t, x) as a function of leaf lists, with dx/dt cast to the state's dtypes.

    Checks (at trace time) that v returns x's structure and shapes; raises ValueError if not.
    """
    specs = [(l.shape, l.dtype) for l in leaves0]

    def f(t, ys):
        out = v(t, jax.tree.unflatten(treedef, ys))
        out_leaves, out_def = jax.tree.flatten(out)
        if out_def != treedef or any(jnp.shape(o) != s for o, (s, _) in zip(out_leaves, specs)):
            raise ValueError(
                "v(t, x) must return dx/dt with x's structure and shapes: expected "
                f"{jax.tree.unflatten(treedef, [s for s, _ in specs])}, got "
                f"{jax.tree.unflatten(out_def, [jnp.shape(o) for o in out_leaves])}")
        return [jnp.asarray(o).astype(d) for o, (_, d) in zip(out_leaves, specs)]

    return f


def lincomb(y, h, coeffs, ks):
    """Leafwise y + h * sum_j coeffs[j] * ks[j] (y=None: no y term), skipping zero coefficients.

    y, ks[j]: lists of leaves; h: scalar; coeffs: Python numbers (static).  Each leaf stays in
    its own dtype; XLA fuses the sum.
    """
    terms = [(float(c), k) for c, k in zip(coeffs, ks) if c != 0.0]
    if not terms:
        return list(y) if y is not None else [jnp.zeros_like(k) for k in ks[0]]
    out = []
    for i, ref in enumerate(y if y is not None else ks[0]):
        acc = None
        for c, k in terms:
            term = k[i] if c == 1.0 else c * k[i]
            acc = term if acc is None else acc + term
        inc = h.astype(ref.dtype) * acc
        out.append(inc if y is None else ref + inc)
    return out


def all_finite(ys) -> jax.Array:
    """Boolean scalar: no NaN or inf in any leaf."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(y)) for y in ys]))
