"""An epsilon-scaled Gauss-Seidel auction whose phases end with shortest augmenting paths once K
rows are left free (Dijkstra on the reduced costs clipped at 0, the settled columns' prices
raised by D - d; cs/eps: the worst eps-CS violation after each phase, in units of eps); counts
bids + Dijkstra settles (each settle scans one row, like a bid, plus a pass over the distances)
on 4 of the coupling benchmark's batches; gap as in keep_model.py."""
import sys, numpy as np
sys.path.insert(0, ".")
from flowmatch.experiments import speed
from flowmatch import couplings
from scipy.optimize import linear_sum_assignment

def check_cs(a, p, owner, eps):
    n = a.shape[0]
    v = a - p[None, :]
    pi = v.max(1)
    worst = 0.0
    for j in range(n):
        i = owner[j]
        if i >= 0:
            worst = max(worst, pi[i] - v[i, j])
    return worst

def augment(a, p, owner, i0):
    """Dijkstra from free row i0 on reduced costs clipped at 0; returns settles."""
    n = a.shape[0]
    rowof = owner
    def rc_row(k):
        v = a[k] - p
        return v.max() - v   # >= 0
    d = rc_row(i0).copy(); pred = np.full(n, i0); settled = np.zeros(n, bool)
    settles = 0
    while True:
        dd = np.where(settled, np.inf, d)
        j = int(np.argmin(dd)); D = dd[j]; settles += 1
        settled[j] = True
        k = rowof[j]
        if k < 0:
            break
        r = rc_row(k)
        nd = D + np.maximum(r - r[j], 0.0)   # path via row k: clipped
        upd = (~settled) & (nd < d)
        d[upd] = nd[upd]; pred[upd] = k
    # price update: settled columns rise by D - d_l
    p[settled] += D - d[settled]
    # augment along pred
    while True:
        i = pred[j]
        prev = np.where(owner == i)[0]
        owner[j] = i
        if i == i0: break
        j = int(prev[0])
    return settles

def auction(a, epsilons, K):
    n = a.shape[0]
    p = np.zeros(n); owner = -np.ones(n, int)
    bids = settles = 0; worst = 0
    for eps in epsilons:
        owner[:] = -1
        free = list(range(n))[::-1]
        while len(free) > K:
            i = free.pop()
            v = a[i] - p
            j = int(np.argmax(v)); b = v[j]; v[j] = -np.inf; s = v.max()
            p[j] += min(b - s, 1.0) + eps
            bids += 1
            dd = owner[j]; owner[j] = i
            if dd >= 0: free.append(dd)
        for i in free:
            settles += augment(a, p, owner, i)
        worst = max(worst, check_cs(a, p, owner, eps) / eps)
    col = np.empty(n, int); col[owner] = np.arange(n)
    return col, bids, settles, worst

eps = [max(0.05 / 5**k, 1e-6) for k in range(8)]
for b, (x1, x0, u) in enumerate(speed.coupling_batches(256, 4)):
    c = np.asarray(couplings.squared_distances(x1, x0), np.float64)
    a = -(c - c.min()) / (c.max() - c.min())
    r, cc = linear_sum_assignment(c); opt = c[r, cc].mean()
    line = []
    for K in (0, 1, 4, 16, 64):
        col, bids, settles, worst = auction(a, eps, K)
        gap = (c[np.arange(256), col].mean() - opt) / (c.max() - c.min())
        line.append(f"K={K}: {bids}+{settles}={bids+settles} cs/eps {worst:.2f} gap {gap:.0e}")
    print(b, " | ".join(line))
