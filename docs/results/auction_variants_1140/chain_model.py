"""Where an epsilon-scaled Gauss-Seidel auction's bids go (float64, numpy), by phase and by how
many rows were free when each bid was made, on 6 of the coupling benchmark's batches."""
import sys, numpy as np
sys.path.insert(0, ".")
from flowmatch.experiments import speed
from flowmatch import couplings

def auction(a, epsilons):
    n = a.shape[0]
    p = np.zeros(n); owner = -np.ones(n, int)
    stats = []
    for eps in epsilons:
        owner[:] = -1
        free = list(range(n))[::-1]
        bids = 0; hist = np.zeros(5, int)   # bids when free count was 1, 2-4, 5-16, 17-64, >64
        while free:
            k = len(free)
            hist[0 if k == 1 else 1 if k <= 4 else 2 if k <= 16 else 3 if k <= 64 else 4] += 1
            i = free.pop()
            v = a[i] - p
            j = int(np.argmax(v)); b = v[j]; v[j] = -np.inf; s = v.max()
            p[j] += min(b - s, 1.0) + eps
            bids += 1
            d = owner[j]; owner[j] = i
            if d >= 0: free.append(d)
        stats.append((eps, bids, hist))
    return stats

eps = [max(0.05 / 5**k, 1e-6) for k in range(8)]
tot = np.zeros((8, 6))
for b, (x1, x0, u) in enumerate(speed.coupling_batches(256, 6)):
    c = np.asarray(couplings.squared_distances(x1, x0), np.float64)
    a = -(c - c.min()) / (c.max() - c.min())
    for k, (e, bids, hist) in enumerate(auction(a, eps)):
        tot[k, 0] += bids; tot[k, 1:] += hist
print("eps       bids   free=1  2-4  5-16  17-64  >64   (mean over 6 batches)")
for k in range(8):
    print(f"{eps[k]:8.1e} " + " ".join(f"{x/6:6.0f}" for x in tot[k]))
print("total", tot.sum(0) / 6)
