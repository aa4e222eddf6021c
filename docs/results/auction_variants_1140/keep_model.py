"""Counts an epsilon-scaled Gauss-Seidel auction's bids (float64, numpy) on 6 of the coupling
benchmark's batches (256 moons vs 8gaussians points), with every row freed at each phase's start
(as flowmatch's auction does) against keeping the rows that still satisfy the new phase's
eps-CS (checked by one scan of each row, counted as "checks"); gap: mean pair cost above scipy's
optimum, relative to the cost range."""
import sys, os, numpy as np
sys.path.insert(0, ".")
import jax
from flowmatch.experiments import speed
from flowmatch import couplings
from scipy.optimize import linear_sum_assignment

def auction(a, epsilons, keep):
    n = a.shape[0]
    p = np.zeros(n); owner = -np.ones(n, int); col = -np.ones(n, int)
    bids = checks = kept_total = 0
    for ph, eps in enumerate(epsilons):
        free = []
        if keep and ph > 0:
            v = a - p[None, :]
            best = v.max(1)
            checks += n
            for i in range(n):
                j = col[i]
                if v[i, j] >= best[i] - eps:
                    kept_total += 1
                else:
                    owner[j] = -1; col[i] = -1; free.append(i)
        else:
            owner[:] = -1; col[:] = -1; free = list(range(n))
        free = free[::-1]
        while free:
            i = free.pop()
            v = a[i] - p
            j = int(np.argmax(v)); b = v[j]; v[j] = -np.inf; s = v.max()
            p[j] += min(b - s, 1.0) + eps
            bids += 1
            d = owner[j]
            owner[j] = i; col[i] = j
            if d >= 0:
                col[d] = -1; free.append(d)
    return col, bids, checks, kept_total

eps = [max(0.05 / 5**k, 1e-6) for k in range(8)]
for b, (x1, x0, u) in enumerate(speed.coupling_batches(256, 6)):
    c = np.asarray(couplings.squared_distances(x1, x0), np.float64)
    a = -(c - c.min()) / (c.max() - c.min())
    r, cc = linear_sum_assignment(c)
    opt = c[r, cc].mean()
    out = []
    for keep in (False, True):
        col, bids, checks, kept = auction(a, eps, keep)
        out.append(f"keep={keep}: bids {bids:6d} checks {checks:5d} kept {kept:5d} gap {(c[np.arange(256), col].mean()-opt)/(c.max()-c.min()):.1e}")
    print(b, " | ".join(out))
