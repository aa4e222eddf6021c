"""How source samples x0 are paired with data x1 in a minibatch: independent or optimal transport.

Flow matching trains on pairs (x0, x1).  Drawn independently, the pairs cross each other and the
learned flow bends; paired by minibatch optimal transport (Tong et al. 2023, "Improving and
generalizing flow-based generative models with minibatch optimal transport"; Pooladian et al.
2023, "Multisample flow matching") they are closer and cross less, so the flow is straighter and
few-step sampling better.  Every coupling here keeps each data row and picks, for row i, the
source sample x0[index[i]]:

- `independent`: index = identity.
- `exact_assignment`: the optimal permutation of the squared-Euclidean assignment problem
      min over permutations s of  sum_i |x1_i - x0_s(i)|^2,
  by Bertsekas' auction algorithm with epsilon scaling, on device (`lax.while_loop`; on the
  CPU the same rounds as one native kernel, `flowmatch.native`, bit for bit).  Its
  guarantee (epsilon-complementary slackness) is on the cost: the mean pair cost is at most
  `tolerance * (max C - min C)` above the optimum (C the cost matrix); the default tolerance
  1e-6 makes that far below float32 resolution of a typical pair cost.
- `sinkhorn`: the entropic plan P = argmin <P, C> - reg H(P) with uniform marginals
  (stabilised Sinkhorn iterations in `lax` loops), then for each row i an index drawn from the
  row's conditional P[i, :] / P[i, :].sum() (one uniform per row, so each data point is used
  once and the pairs are distributed as P).  reg is relative to max C (the cost is divided by
  it), as torchcfm's `normalize_cost`.

Conditional variants: pass `labels` (one per row; the source sample of a row carries the row's
label) and pairs never cross classes (the cost between classes is infinite, so the problem
splits into one problem per class).

Everything is a pure function of arrays, jittable, with static sizes; randomness comes in as
arrays (uniforms), so results depend only on the inputs.  Squared distances are over all
feature dimensions (x: [n, ...] is flattened).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flowmatch import native

COUPLINGS = ("independent", "exact", "sinkhorn")
SCOPES = ("global", "local")

# Auction defaults (relative to the cost range max C - min C, which the costs are scaled to).
DEFAULT_TOLERANCE = 1e-6
DEFAULT_EPS_START = 0.05
DEFAULT_EPS_FACTOR = 5.0
DEFAULT_BIDDERS = 8
# Bidding rounds per trip of the auction's loops (`_repeat`): on 256 moons vs 8gaussians points,
# 1 / 2 / 4 took 5.9 / 4.5 / 3.5 ms of CPU per assignment (medians of 40 calls, 2 cores).
AUCTION_UNROLL = 4
# Sinkhorn defaults: on 256 moons vs 256 8gaussians draws (8 batches), reg 0.01 (of max C) with
# over-relaxation 1.7 stops at the marginal tolerance 1e-2 after 13-15 iterations (at most 50),
# with the x0 marginal within 0.44% (L1) of uniform and a mean pair cost 5% above the exact
# assignment's (independent pairs: 4.5x above it).  Plain iterations (relaxation 1) took 41-63
# to reach the same tolerance.
DEFAULT_SINKHORN_REG = 0.01
DEFAULT_SINKHORN_ITERS = 50
DEFAULT_SINKHORN_TOLERANCE = 0.01
DEFAULT_SINKHORN_RELAXATION = 1.7
# CouplingSettings.ahead_threads: chosen by the coupling and the host (`training.ahead`).
AUTO_THREADS = -1
KERNELS = ("auto", "lax", "native")   # exact_assignment's kernel


@flax.struct.dataclass
class Pairing:
    """A coupling of a minibatch: data row i is paired with source sample x0[index[i]].

    index: [n] int32 (a permutation for `independent` and `exact`; Sinkhorn draws may repeat).
    cost: scalar, the mean squared Euclidean distance of the pairs, (1/n) sum_i |x1_i -
        x0_index[i]|^2 (what the coupling minimises; log it to see it work).
    converged: bool scalar; False only if the auction stopped at its round limit (the pairing is
        then still a permutation, completed arbitrarily) or the input held NaN / inf.
    """

    index: jax.Array
    cost: jax.Array
    converged: jax.Array


def _flat(x):
    x = jnp.asarray(x)
    return x.reshape(x.shape[0], -1).astype(jnp.float32)


def squared_distances(x1, x0):
    """C[i, j] = |x1_i - x0_j|^2 over all feature dimensions: [n, m] float32 (>= 0).

    x1: [n, ...], x0: [m, ...].  Computed as |a|^2 + |b|^2 - 2 a.b (one matmul), clipped at 0.
    """
    a, b = _flat(x1), _flat(x0)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x1 and x0 must have the same example shape, got {x1.shape} and "
                         f"{x0.shape}")
    sq = (jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :]
          - 2.0 * jnp.matmul(a, b.T, precision=lax.Precision.HIGHEST))
    return jnp.maximum(sq, 0.0)


def pair_cost(x1, x0):
    """(1/n) sum_i |x1_i - x0_i|^2 of row-aligned pairs: a scalar (float32)."""
    return jnp.mean(jnp.sum(jnp.square(_flat(x1) - _flat(x0)), axis=1))


def class_cost(cost, labels):
    """cost with +inf between rows and columns of different labels (labels: [n], for both)."""
    labels = jnp.asarray(labels)
    if labels.shape != (cost.shape[0],) or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"labels must be [n] for a square [n, n] cost, got labels "
                         f"{labels.shape} and cost {cost.shape}")
    return jnp.where(labels[:, None] == labels[None, :], cost, jnp.inf)


def _top2_merge(x, y):
    """Merges two (best, index of the best, second best) states: the auction's reduction."""
    (best_x, j_x, second_x), (best_y, j_y, second_y) = x, y
    x_wins = (best_x > best_y) | ((best_x == best_y) & (j_x < j_y))
    return (jnp.where(x_wins, best_x, best_y), jnp.where(x_wins, j_x, j_y),
            jnp.maximum(jnp.maximum(second_x, second_y), jnp.where(x_wins, best_y, best_x)))


_TOP2_LANES = 16


def _top2(values):
    """(best, index of the best (lowest on ties), second best) over the last axis of [..., n].

    One variadic reduction of (value, index, runner-up) states merged by `_top2_merge`, over a
    [..., n / 16, 16] view (padded with -inf): first down each of the 16 lanes, which XLA:CPU
    runs as vector operations across the lanes, then across the lanes.  A tie for the best gives
    second == best; a row with a single finite entry has second -inf.  A single row's bid (256
    columns) took 3.5k instructions with it, 7.9k with a one-pass reduction over the plain
    vector and 9.5k with three plain reductions (max; its lowest index; max of the rest), and a
    4-row bid 5.7k, 26k and 19k (callgrind, XLA:CPU).
    """
    *lead, n = values.shape
    rows = -(-n // _TOP2_LANES)
    size = rows * _TOP2_LANES
    v = jnp.pad(values, [(0, 0)] * len(lead) + [(0, size - n)], constant_values=-jnp.inf)
    v = v.reshape(*lead, rows, _TOP2_LANES)
    index = (lax.broadcasted_iota(jnp.int32, v.shape, v.ndim - 2) * _TOP2_LANES
             + lax.broadcasted_iota(jnp.int32, v.shape, v.ndim - 1))
    init = (jnp.float32(-jnp.inf), jnp.int32(size), jnp.float32(-jnp.inf))
    lanes = lax.reduce((v, index, jnp.full_like(v, -jnp.inf)), init, _top2_merge, (v.ndim - 2,))
    return lax.reduce(lanes, init, _top2_merge, (v.ndim - 2,))


# -- exact assignment: the auction algorithm ----------------------------------------------------


@flax.struct.dataclass
class Assignment:
    """index: [n] int32, row i -> column index[i] (a permutation); rounds: int32, bidding rounds
    over all epsilon phases; converged: bool (False: a phase hit max_rounds, see
    `exact_assignment`)."""

    index: jax.Array
    rounds: jax.Array
    converged: jax.Array


def _normalised_benefit(cost):
    """(a, finite): benefit a = -(C - min C) / (max C - min C) in [-1, 0] over the finite entries,
    -inf elsewhere (never NaN: a cost range beyond float32's makes the overflowing entries
    -inf, forbidden, too)."""
    finite = jnp.isfinite(cost)
    lo = jnp.min(jnp.where(finite, cost, jnp.inf))
    hi = jnp.max(jnp.where(finite, cost, -jnp.inf))
    scale = jnp.where(hi > lo, hi - lo, 1.0)
    a = -(cost - lo) * (1 / scale)   # written out: XLA turns a division by a scalar into this
    return jnp.where(finite & ~jnp.isnan(a), a, -jnp.inf), finite


class _Slots(NamedTuple):
    """The auction's state in the slot stage of a phase (n rows, m slots).

    prices: [n] float32; owner: [n] int32, column -> its row (-1: free); slots: [m] int32, the
    rows bidding next round (n: empty); fresh: int32, rows fresh .. n-1 have not bid in this
    phase (the free rows are exactly the slots' rows and these); rounds: int32.
    """

    prices: jax.Array
    owner: jax.Array
    slots: jax.Array
    fresh: jax.Array
    rounds: jax.Array


class _Chain(NamedTuple):
    """The chain stage: row (n: none) bids next; prices, owner, rounds as in `_Slots`."""

    prices: jax.Array
    owner: jax.Array
    row: jax.Array
    rounds: jax.Array


def _bid_increment(best, second):
    # A row with a single allowed column may raise its price by the whole range (benefits are
    # in [-1, 0]); the cap keeps prices finite.
    return jnp.minimum(best - second, 1.0)


def _slot_round(a, eps, s: _Slots) -> _Slots:
    """The m slots' rows bid at once (a Jacobi round); each column goes to its highest bid (ties:
    the lowest slot).  A winner's slot passes to the row it displaced, a loser keeps its slot
    (and bids again), and empty slots take the next fresh rows in order."""
    n, m = a.shape[0], s.slots.shape[0]
    empty = s.slots >= n
    slot = jnp.arange(m, dtype=jnp.int32)
    rank = jnp.sum(empty[None, :] & (slot[None, :] < slot[:, None]), axis=1)  # empty slots before
    slots = jnp.where(empty & (s.fresh + rank < n), s.fresh + rank, s.slots)
    fresh = jnp.minimum(s.fresh + jnp.sum(empty, dtype=jnp.int32), n)
    best, j, second = _top2(a[jnp.minimum(slots, n - 1)] - s.prices[None, :])   # [m] each
    bidding = (slots < n) & jnp.isfinite(best)   # a row with no allowed column drops out
    bid = s.prices[j] + _bid_increment(best, second) + eps
    higher = (bid[None, :] > bid[:, None]) | (
        (bid[None, :] == bid[:, None]) & (slot[None, :] < slot[:, None]))
    outbid = (j[:, None] == j[None, :]) & bidding[None, :] & higher   # [m, m]: slot k beats i
    wins = bidding & ~jnp.any(outbid, axis=1)
    displaced = s.owner[j]
    target = jnp.where(wins, j, n)   # the winners' columns are distinct: plain scatters
    prices = s.prices.at[target].set(bid, mode="drop")
    owner = s.owner.at[target].set(slots, mode="drop")
    slots = jnp.where(wins, jnp.where(displaced >= 0, displaced, n), jnp.where(bidding, slots, n))
    return _Slots(prices, owner, slots, fresh, s.rounds + 1)


def _chain_bid(a, eps, s: _Chain) -> _Chain:
    """The single free row bids (called while s.row < n); the row it displaces (if any) is the
    next to bid."""
    n = a.shape[0]
    best, j, second = _top2(lax.dynamic_index_in_dim(a, s.row, keepdims=False) - s.prices)
    # A row with no allowed column ends the chain unassigned; row n: the chain has ended (an
    # unrolled loop's bids after the end change nothing).
    ok = jnp.isfinite(best) & (s.row < n)
    j = jnp.where(ok, j, n)
    displaced = s.owner[jnp.minimum(j, n - 1)]
    prices = s.prices.at[j].add(_bid_increment(best, second) + eps, mode="drop")
    owner = s.owner.at[j].set(s.row, mode="drop")
    return _Chain(prices, owner, jnp.where(ok & (displaced >= 0), displaced, n),
                  s.rounds + (s.row < n))


def _repeat(round_fn):
    """round_fn applied AUCTION_UNROLL times: the body of an unrolled loop.

    Each trip of a `lax.while_loop` costs XLA:CPU about as much as a bidding round itself (the
    condition, the loop's bookkeeping), so a trip runs several rounds and the condition is
    checked between trips.  Rounds past a stage's end are harmless: a slot round with no free
    row and a chain bid after the chain ended change nothing, and a wider slot round than
    needed does the same bids."""
    def body(state):
        for _ in range(AUCTION_UNROLL):
            state = round_fn(state)
        return state

    return body


def _slot_widths(num_slots: int) -> list[int]:
    """The slot stages of a phase: num_slots, then halved down to 2 (or just 1)."""
    widths = [num_slots]
    while widths[-1] // 2 >= 2:
        widths.append(widths[-1] // 2)
    return widths


def _auction_phase(a, eps, prices, num_slots: int, max_rounds: int):
    """One epsilon phase from `prices` with every row free: (prices, owner [n], rounds).

    Slot stages of num_slots, num_slots / 2, ... 2 slots, each until the free rows fit in the
    next (a narrower round does the same bids for less work), then the chain.
    """
    n = a.shape[0]
    widths = _slot_widths(num_slots)
    s = _Slots(prices, jnp.full((n,), -1, jnp.int32), jnp.full((num_slots,), n, jnp.int32),
               jnp.int32(0), jnp.int32(0))
    left = lambda s: jnp.sum(s.slots < n) + (n - s.fresh)   # rows still free (and bidding)
    for k, width in enumerate(widths):
        if width < s.slots.shape[0]:  # the busy slots (fewer than width) move to the front
            s = s._replace(slots=jnp.sort(s.slots)[:width])
        stop = widths[k + 1] if k + 1 < len(widths) else 1
        s = lax.while_loop(lambda s, stop=stop: (left(s) > stop) & (s.rounds < max_rounds),
                           _repeat(lambda s: _slot_round(a, eps, s)), s)
    last = jnp.where(s.fresh < n, s.fresh, jnp.min(s.slots))   # the one row left, or n
    c = lax.while_loop(lambda c: (c.row < n) & (c.rounds < max_rounds),
                       _repeat(lambda c: _chain_bid(a, eps, c)),
                       _Chain(s.prices, s.owner, last, s.rounds))
    return c.prices, c.owner, c.rounds


def exact_assignment(cost, *, tolerance: float = DEFAULT_TOLERANCE,
                     eps_start: float = DEFAULT_EPS_START, eps_factor: float = DEFAULT_EPS_FACTOR,
                     bidders: int = DEFAULT_BIDDERS, max_rounds: int | None = None,
                     kernel: str = "auto") -> Assignment:
    """Minimum-cost perfect matching of a square cost [n, n] (rows -> columns), on device.

    Bertsekas' forward auction (Bertsekas 1988, "The auction algorithm: a distributed relaxation
    method for the assignment problem") with epsilon scaling.  Costs are scaled to benefits
    a = -(C - min C) / (max C - min C) in [-1, 0] (+inf costs, e.g. `class_cost`, are forbidden
    pairs).  A free row i bids for its best column j, argmax_j a_ij - p_j, raising p_j by
    (best - second best value) + eps and displacing j's previous row.  Epsilon runs eps_start,
    eps_start / eps_factor, ... down to `tolerance`; each phase starts with every row free and
    the last phase's prices, in two stages:

    1. Slots: `bidders` rows bid at once (a Jacobi round; Bertsekas & Castanon 1991, "Parallel
       synchronous and asynchronous implementations of the auction algorithm"), each column
       going to its highest bid.  A winner's slot passes to the row it displaced, a loser keeps
       its slot, and an empty slot takes the next row that has not bid in this phase, so the
       free rows are always the slots' rows plus the rows not reached yet and no round has to
       search for them.  Rounds are [bidders, n] vector operations with no scatter.
    2. Chain: with one row left, it bids alone and the row it displaces bids next, until a bid
       lands on a free column.

    A bid's best and second best values come from one reduction (`_top2`).  The rounds of a
    phase depend on each other, so the cost is their number times a round's cost, which on
    XLA:CPU is mostly the launches of its operations (so each loop trip runs AUCTION_UNROLL
    rounds, `_repeat`): on 256 moons vs 8gaussians points (8
    batches), 8 slots take 2,900 rounds (1,200 slot rounds, 1,700 chain bids) and 35M
    instructions per assignment (callgrind); 4 slots 3,500 rounds and 39M, 16 slots 2,300 and
    41M, 2 slots 4,600 and 50M.  The previous version of this function (up to 32 bidders,
    compacted from all free rows each round, three-pass reductions) took 2,500 rounds and 102M.

    Guarantee: a bid leaves the bidder's value within eps of its best (eps-complementary
    slackness), prices only rise, and a row whose column is taken is free again; so every
    assigned row satisfies eps-CS throughout a phase, whichever rows bid in which order, and
    at the end of the last phase all n rows satisfy tolerance-CS.  The total cost is then at
    most n * tolerance * (max C - min C) above the optimum (Bertsekas 1988, Prop. 1): the mean
    pair cost at most tolerance * (max C - min C) above it (float32 round-off of the prices,
    about 1e-7 of the range, adds to it).  A problem whose optimum is unique by more than that
    margin gets exactly the optimal permutation.  Each factor eps_factor of tolerance is one
    more phase: on the points above, tolerance 1e-3 takes 1,250 rounds, 1e-4 2,050, 1e-5 2,750
    and 1e-6 2,900 (the last phases start from nearly final prices); the mean pair cost came
    within 5e-9 of the range of scipy's optimum at 1e-6.  Per-class costs (`class_cost`) make
    it cheaper, the price wars staying within a class: 1,800 rounds with 2 random classes, 740
    with 10.

    max_rounds: per phase (default 100 n), a safeguard against NaN costs or a pathological
    price war: if hit, the remaining rows get the remaining columns in order (`converged`
    False).  Rows with no finite cost at all are matched the same way.

    kernel: where the rounds run.  'lax': the loops above, on any backend.  'native': the same
    rounds as one native CPU kernel (`flowmatch.native`, auction.cc: the same operations in the
    same order, so the same prices, assignment and round count, bit for bit), CPU only, an
    error where it cannot be built.  'auto' (default): the native kernel in a program for the
    CPU where it is available, else the lax loops (`lax.platform_dependent`: an accelerator's
    program keeps them).  On 64 such 256-point problems, one at a time (`lax.map`) on the
    project's 2-core Xeon, a coupling took 0.598 ms with the kernel against 2.839 ms with the
    lax loops (medians of 7, interleaved), and its first call (compiling the program) 0.37 s
    against 2.10 s (docs/results/native_auction_xeon_0855/kernel.log).

    Returns an `Assignment` (index [n] int32: row i -> column index[i]).
    """
    cost = jnp.asarray(cost, jnp.float32)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"exact_assignment needs a square cost [n, n], got shape {cost.shape}")
    if not 0 < tolerance <= eps_start:
        raise ValueError(f"need 0 < tolerance <= eps_start, got tolerance={tolerance}, "
                         f"eps_start={eps_start}")
    if not eps_factor > 1:
        raise ValueError(f"eps_factor must be > 1, got {eps_factor}")
    if isinstance(bidders, bool) or not isinstance(bidders, int) or bidders < 1:
        raise ValueError(f"bidders must be a positive integer, got {bidders!r}")
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of: {', '.join(KERNELS)}")
    n = cost.shape[0]
    if n == 1:
        return Assignment(jnp.zeros((1,), jnp.int32), jnp.int32(0), jnp.isfinite(cost[0, 0]))
    max_rounds = 100 * n if max_rounds is None else int(max_rounds)
    finite = jnp.isfinite(cost)
    num_phases = max(1, math.ceil(math.log(eps_start / tolerance) / math.log(eps_factor)
                                  - 1e-9) + 1)
    epsilons = np.asarray([max(eps_start / eps_factor**p, tolerance)
                           for p in range(num_phases)], np.float32)

    num_slots = min(bidders, n)

    def lax_rounds(cost):
        a = _normalised_benefit(cost)[0]

        def phase(carry, eps):
            prices, _, total = carry
            prices, owner, rounds = _auction_phase(a, eps, prices, num_slots, max_rounds)
            return (prices, owner, total + rounds), None

        init = (jnp.zeros((n,), jnp.float32), jnp.full((n,), -1, jnp.int32), jnp.int32(0))
        (_, owner, rounds), _ = lax.scan(phase, init, epsilons)
        return owner, rounds

    target = None if kernel == "lax" else native.target("auction")
    if target is None and kernel == "native":
        raise RuntimeError(f"the native auction kernel is unavailable "
                           f"({native.reason('auction')}); use kernel='lax' or 'auto'")

    def native_rounds(cost):   # the kernel normalises the cost itself
        return jax.ffi.ffi_call(
            target, (jax.ShapeDtypeStruct((n,), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32)),
            vmap_method="broadcast_all")(
                cost, epsilons=epsilons, widths=np.asarray(_slot_widths(num_slots),
                                                                    np.int64),
                unroll=np.int64(AUCTION_UNROLL), max_rounds=np.int64(max_rounds))

    if target is None:
        owner, rounds = lax_rounds(cost)
    elif kernel == "native":
        owner, rounds = native_rounds(cost)
    else:
        owner, rounds = lax.platform_dependent(cost, cpu=native_rounds, default=lax_rounds)
    iota = jnp.arange(n, dtype=jnp.int32)
    row_col = jnp.full((n,), -1, jnp.int32).at[jnp.where(owner >= 0, owner, n)].set(
        iota, mode="drop")
    converged = jnp.all(row_col >= 0) & jnp.all(jnp.any(finite, axis=1))
    # Completion (only after a failure): free rows take the free columns in order.
    free_rows, free_cols = row_col < 0, owner < 0
    rank_rows = jnp.cumsum(free_rows) - 1
    cols_by_rank = jnp.full((n,), n, jnp.int32).at[
        jnp.where(free_cols, jnp.cumsum(free_cols) - 1, n)].set(iota, mode="drop")
    index = jnp.where(free_rows, cols_by_rank[jnp.clip(rank_rows, 0, n - 1)], row_col)
    return Assignment(index=index.astype(jnp.int32), rounds=rounds, converged=converged)


# -- entropic optimal transport: Sinkhorn -------------------------------------------------------


@flax.struct.dataclass
class SinkhornPlan:
    """The entropic plan of `sinkhorn`.

    plan: [n, m], P >= 0 summing to 1, its row sums exactly 1/n (the last update fits them) and
        its column sums approaching 1/m as the iterations converge.
    log_plan: [n, m], log P from the potentials (accurate where P underflows).
    f, g: [n], [m] the dual potentials (in units of the scaled cost).
    marginal_error: sum_j |P[:, j].sum() - 1/m|, the L1 error left in the column marginal (so
        in the distribution of the x0 that `sample_rows` draws).
    iterations: int32, the iterations run (at most num_iters; fewer once `tolerance` is met).
    kernel, u, v: [n, m], [n], [m], the plan in its factored form P = u[:, None] * kernel *
        v[None, :] (row i's conditional is kernel[i] * v: `sample_rows(kernel, uniforms,
        column_scale=v)` draws from it without forming P).
    """

    plan: jax.Array
    log_plan: jax.Array
    f: jax.Array
    g: jax.Array
    marginal_error: jax.Array
    iterations: jax.Array
    kernel: jax.Array
    u: jax.Array
    v: jax.Array


# When the largest product of scalings u_i v_j passes exp(SINKHORN_ABSORB_LOG), the scalings are
# absorbed into the potentials f, g and the kernel recomputed: until then a kernel entry that
# float32 flushes to zero (below exp(-87)) would have carried at most exp(30 - 87) of the plan.
# The scalings also drift apart without changing the plan (u -> u c, v -> v / c: from the hard
# c-transforms, log u rises to about +25 while log v falls to about -31 on the benchmark's 256
# moons vs 8gaussians points); the product criterion ignores that drift, and only a scaling
# beyond exp(+-SINKHORN_DRIFT_LOG), still inside the updates' clip at exp(+-80), is absorbed for
# it.  (Absorbing on max |log u|, |log v| > 30 instead recomputed the kernel once in every such
# batch, about a tenth of the coupling's time.)
SINKHORN_ABSORB_LOG = 30.0
SINKHORN_DRIFT_LOG = 60.0
_HIGHEST = lax.Precision.HIGHEST


class _SinkhornState(NamedTuple):
    """Loop state of `sinkhorn`: the plan is u_i K_ij v_j with K = exp((f_i + g_j - c_ij)/reg)."""

    it: jax.Array
    f: jax.Array
    g: jax.Array
    k: jax.Array
    u: jax.Array
    v: jax.Array
    error: jax.Array  # L1 column-marginal error of the plan before this iteration's updates


def _kernel(f, g, c, reg):
    return jnp.exp((f[:, None] + g[None, :] - c) / reg)


def _absorb(s: _SinkhornState, c, reg) -> _SinkhornState:
    """Moves the scalings into the potentials (f += reg log u, g += reg log v) and rebuilds K."""
    f, g = s.f + reg * jnp.log(s.u), s.g + reg * jnp.log(s.v)
    return s._replace(f=f, g=g, k=_kernel(f, g, c, reg), u=jnp.ones_like(s.u),
                      v=jnp.ones_like(s.v))


def _relaxed(old, fitted, omega):
    """old^(1 - omega) fitted^omega: the over-relaxed scaling update (omega = 1: plain),
    clipped to exp(+-80) (inside float32; the absorption then brings it back)."""
    if omega == 1:
        return fitted
    log_old = jnp.log(old)
    return jnp.exp(jnp.clip(log_old + omega * (jnp.log(fitted) - log_old), -80.0, 80.0))


def _column_min(x):
    """min over axis 0 of x [n, m], as pairwise minima of row halves while n is even (the same
    values: a minimum does not round).  XLA:CPU's reduction over the leading axis took about
    twice as long (a [256, 256] matrix in a compiled loop: 26.5 against 13.1 us beyond the
    loop's own, docs/results/sinkhorn_xeon_2230/reductions.log): on the benchmark's batches of
    256 the whole Sinkhorn coupling ran 5-10% faster this way (380-394 against 416-437 us a
    batch in three runs, each timing both interleaved: column_min_ab.log there)."""
    while x.shape[0] > 1 and x.shape[0] % 2 == 0:
        half = x.shape[0] // 2
        x = jnp.minimum(x[:half], x[half:])
    return jnp.min(x, axis=0)


def sinkhorn(cost, *, reg: float, num_iters: int, tolerance: float = 0.0,
             relaxation: float = 1.0) -> SinkhornPlan:
    """Entropic OT between uniform weights on rows and columns: stabilised Sinkhorn iterations.

    The cost [n, m] is divided by its largest finite entry c_max (so `reg` is relative to it,
    as torchcfm's normalize_cost; +inf entries stay forbidden, every row and column needs a
    finite one).  The plan is P_ij = u_i K_ij v_j with K_ij = exp((f_i + g_j - c_ij) / reg), and
    each iteration fits the columns, v = (1/m) / (K^T u), then the rows, u = (1/n) / (K v): two
    matrix-vector products.  The potentials start at the hard c-transforms f_i = min_j c_ij,
    g_j = min_i (c_ij - f_i) (min passes, no exponential), so every row and column of the one
    kernel K computed holds a 1 and all its entries are <= 1.  Should the largest product of
    scalings u_i v_j pass exp(SINKHORN_ABSORB_LOG), or a scaling alone leave
    exp(+-SINKHORN_DRIFT_LOG) (small reg, far-off start), the scalings are absorbed into the
    log-domain potentials and K recomputed (Schmitzer 2019, "Stabilized sparse scaling
    algorithms for entropy regularized transport problems"), so small reg neither under- nor
    overflows.

    relaxation omega in [1, 2): over-relaxed updates, v <- v^(1 - omega) (fitted v)^omega and
    likewise u (Thibault et al. 2017, "Overrelaxed Sinkhorn-Knopp algorithm for regularized
    optimal transport"); the same fixed point, reached in fewer iterations for omega > 1 (on
    256 moons vs 8gaussians points at reg 0.01, omega 1.7 reached a marginal error 1e-2 in 14
    iterations where plain updates took 50).  The last update is a plain fit of the rows.
    tolerance: stop once the column marginal's L1 error (checked each iteration from K^T u,
    which the update computes anyway) is <= tolerance; 0: always run num_iters.  The loop is
    one `lax.while_loop` (no host round trip).
    """
    cost = jnp.asarray(cost, jnp.float32)
    if cost.ndim != 2:
        raise ValueError(f"sinkhorn needs a cost matrix [n, m], got shape {cost.shape}")
    if not reg > 0:
        raise ValueError(f"sinkhorn reg must be > 0, got {reg}")
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
        raise ValueError(f"sinkhorn num_iters must be a positive integer, got {num_iters!r}")
    if not tolerance >= 0:
        raise ValueError(f"sinkhorn tolerance must be >= 0, got {tolerance}")
    if not 1 <= relaxation < 2:
        raise ValueError(f"sinkhorn relaxation must be in [1, 2), got {relaxation}")
    n, m = cost.shape
    # One pass over the cost for its rows' largest finite entries and their minima: the minima
    # of c = cost / top are the cost's divided by top, bit for bit (division by a positive
    # number rounds monotonically); separate reductions read the matrix twice more.
    finite_max, row_min = lax.reduce(
        (jnp.where(jnp.isfinite(cost), cost, 0.0), cost),
        (jnp.float32(-jnp.inf), jnp.float32(jnp.inf)),
        lambda a, b: (jnp.maximum(a[0], b[0]), jnp.minimum(a[1], b[1])), (1,))
    top = jnp.max(finite_max)
    top = jnp.where(top > 0, top, 1.0)
    c = cost / top
    tiny = jnp.finfo(jnp.float32).tiny
    f = row_min / top
    f = jnp.where(jnp.isfinite(f), f, 0.0)
    g = _column_min(c - f[:, None])
    g = jnp.where(jnp.isfinite(g), g, 0.0)
    ones_n, ones_m = jnp.ones((n,)), jnp.ones((m,))

    def body(s: _SinkhornState) -> _SinkhornState:
        # Matrix-vector products (a gemv; 30% faster on CPU than multiply-and-sum), at full
        # float32 precision (TPUs would otherwise multiply in bfloat16).
        ktu = jnp.dot(s.u, s.k, precision=_HIGHEST)
        error = jnp.sum(jnp.abs(s.v * ktu - 1.0 / m))
        v = _relaxed(s.v, (1.0 / m) / jnp.maximum(ktu, tiny), relaxation)
        u = _relaxed(s.u, (1.0 / n) / jnp.maximum(jnp.dot(s.k, v, precision=_HIGHEST), tiny),
                     relaxation)
        s = s._replace(it=s.it + 1, u=u, v=v, error=error)
        log_u, log_v = jnp.log(u), jnp.log(v)
        absorb = ((jnp.max(log_u) + jnp.max(log_v) > SINKHORN_ABSORB_LOG)
                  | (jnp.maximum(jnp.max(jnp.abs(log_u)), jnp.max(jnp.abs(log_v)))
                     > SINKHORN_DRIFT_LOG))
        return lax.cond(absorb, lambda s: _absorb(s, c, reg), lambda s: s, s)

    init = _SinkhornState(jnp.int32(0), f, g, _kernel(f, g, c, reg), ones_n, ones_m,
                          jnp.float32(jnp.inf))
    s = lax.while_loop(lambda s: (s.it < num_iters) & (s.error > tolerance), body, init)
    k, v = s.k, s.v
    u = (1.0 / n) / jnp.maximum(jnp.dot(k, v, precision=_HIGHEST), tiny)  # rows: exact
    plan = u[:, None] * k * v[None, :]
    f, g = s.f + reg * jnp.log(u), s.g + reg * jnp.log(v)
    log_plan = (f[:, None] + g[None, :] - c) / reg
    marginal_error = jnp.sum(jnp.abs(v * jnp.dot(u, k, precision=_HIGHEST) - 1.0 / m))
    return SinkhornPlan(plan=plan, log_plan=log_plan, f=f, g=g, marginal_error=marginal_error,
                        iterations=s.it, kernel=k, u=u, v=v)


def _first_past(cumulative, threshold):
    """Per row, the number of entries of `cumulative` [..., k] that are <= threshold [..., 1]:
    the index of the first entry past it."""
    return jnp.sum(cumulative <= threshold, axis=-1)


def sample_rows(plan, uniforms, *, column_scale=None):
    """For each row i, a column drawn from P[i, :] / P[i, :].sum(): [n] int32.

    plan: [n, m] nonnegative weights (each row with a positive sum); uniforms: [n] in [0, 1),
    one per row (inverse-CDF sampling: the smallest j whose cumulative row mass exceeds u_i
    times the row's total).  column_scale: [m] >= 0 or None; given, row i's weights are
    plan[i, j] * column_scale[j] (a Sinkhorn plan's kernel and column scaling, `SinkhornPlan`,
    whose row scaling does not change a row's conditional), without forming that product.
    Searched in two levels: the row's cumulative mass at the ends of blocks of b = ceil(sqrt m)
    columns, one product of the plan with a [m, b] matrix (column j's scale where j's block is at
    most k), the first block whose cumulative mass passes the threshold, then the column within
    that block (its b entries' cumulative sums, one small product).  O(m) per row, where one
    cumulative sum over all m columns (a windowed reduction on XLA:CPU) took 3x longer at m =
    256, and even one over the b block sums took longer than the block product (profiled at m =
    256: 28 against 22 us).  Zero-mass columns are never drawn.
    """
    plan = jnp.asarray(plan)
    n, m = plan.shape
    b = math.isqrt(m - 1) + 1
    scale = (jnp.ones((m,), plan.dtype) if column_scale is None
             else jnp.asarray(column_scale, plan.dtype))
    blocks = jnp.pad(plan, ((0, 0), (0, b * b - m)))
    scale = jnp.pad(scale, (0, b * b - m))
    upto = jnp.arange(b * b)[:, None] // b <= jnp.arange(b)[None, :]                  # [b*b, b]
    block_cdf = jnp.dot(blocks, jnp.where(upto, scale[:, None], 0.0), precision=_HIGHEST)
    threshold = jnp.asarray(uniforms, plan.dtype)[:, None] * block_cdf[:, -1:]
    k = jnp.minimum(_first_past(block_cdf, threshold), b - 1)                    # [n]
    before = jnp.where(k > 0, jnp.take_along_axis(block_cdf, jnp.maximum(k - 1, 0)[:, None],
                                                  axis=1)[:, 0], 0.0)
    inner = (jnp.take_along_axis(blocks.reshape(n, b, b), k[:, None, None], axis=1)[:, 0]
             * scale.reshape(b, b)[k])                                           # [n, b]
    triangle = (jnp.arange(b)[:, None] <= jnp.arange(b)[None, :]).astype(plan.dtype)
    j = _first_past(before[:, None] + jnp.dot(inner, triangle, precision=_HIGHEST), threshold)
    # Round-off can put the threshold past the block's last entry: take its last positive one.
    last = jnp.max(jnp.where(inner > 0, jnp.arange(b), 0), axis=1)
    return (k * b + jnp.where(j < b, j, last)).astype(jnp.int32)


# -- the couplings used by training ----------------------------------------------------------------


def independent(x1, x0) -> Pairing:
    """The identity pairing (x0 already independent of x1)."""
    n = x1.shape[0]
    return Pairing(index=jnp.arange(n, dtype=jnp.int32), cost=pair_cost(x1, x0),
                   converged=jnp.bool_(True))


def couple(name: str, x1, x0, *, labels=None, uniforms=None,
           sinkhorn_reg: float = DEFAULT_SINKHORN_REG, num_iters: int = DEFAULT_SINKHORN_ITERS,
           sinkhorn_tolerance: float = DEFAULT_SINKHORN_TOLERANCE,
           sinkhorn_relaxation: float = DEFAULT_SINKHORN_RELAXATION,
           tolerance: float = DEFAULT_TOLERANCE,
           bidders: int = DEFAULT_BIDDERS, auction_kernel: str = "auto") -> Pairing:
    """Pairs a minibatch: data x1 [n, ...] with source samples x0 [n, ...].

    name: 'independent' | 'exact' (`exact_assignment`: tolerance, bidders, kernel =
        auction_kernel) | 'sinkhorn'
        (`sinkhorn` with reg = sinkhorn_reg, num_iters, tolerance = sinkhorn_tolerance,
        relaxation = sinkhorn_relaxation, then `sample_rows`: uniforms [n] in [0, 1)
        required).
    labels: [n] or None; with labels, pairs stay within a class (x0[j] has label labels[j]).
    Returns a `Pairing`: use x0[pairing.index] as row i's source sample.
    """
    if name not in COUPLINGS:
        raise ValueError(f"unknown coupling {name!r}; choose one of: {', '.join(COUPLINGS)} "
                         "(config key: coupling.name)")
    if x1.shape != x0.shape:
        raise ValueError(f"x1 and x0 must have the same shape, got {x1.shape} and {x0.shape}")
    if name == "independent":
        return independent(x1, x0)
    cost = squared_distances(x1, x0)
    if labels is not None:
        cost = class_cost(cost, labels)
    ok = jnp.all(jnp.isfinite(_flat(x1))) & jnp.all(jnp.isfinite(_flat(x0)))
    if name == "exact":
        result = exact_assignment(cost, tolerance=tolerance, bidders=bidders,
                                  kernel=auction_kernel)
        index, converged = result.index, result.converged & ok
    else:
        if uniforms is None:
            raise ValueError("the sinkhorn coupling samples pairs from its plan: pass uniforms "
                             "[n] (one per row)")
        solved = sinkhorn(cost, reg=sinkhorn_reg, num_iters=num_iters,
                          tolerance=sinkhorn_tolerance, relaxation=sinkhorn_relaxation)
        index = sample_rows(solved.kernel, uniforms, column_scale=solved.v)
        converged = ok
    return Pairing(index=index, cost=pair_cost(x1, jnp.take(x0, index, axis=0)),
                   converged=converged)


@dataclasses.dataclass(frozen=True)
class CouplingSettings:
    """config.coupling as a typed record (see configs/default.py).

    name: one of COUPLINGS; scope: 'global' (over the whole global batch, gathered across
    devices) or 'local' (each device's rows alone); per_class: pairs stay within a label;
    sinkhorn_reg, num_iters (at most), sinkhorn_tolerance, sinkhorn_relaxation: `sinkhorn`;
    tolerance, bidders, auction_kernel: `exact_assignment` (its kernel: 'auto' | 'lax' |
    'native', the same pairs whichever runs).  ahead_threads: where the trainer solves a call's
    couplings (`flowmatch.training.ahead`): 0 inside its train step; n > 0 on the host's CPU,
    a call ahead, by n background threads; -1 (auto) 1 thread for 'sinkhorn' and one per CPU
    core for 'exact'.  The pairs are the same either way.
    """

    name: str = "independent"
    scope: str = "global"
    per_class: bool = False
    sinkhorn_reg: float = DEFAULT_SINKHORN_REG
    num_iters: int = DEFAULT_SINKHORN_ITERS
    sinkhorn_tolerance: float = DEFAULT_SINKHORN_TOLERANCE
    sinkhorn_relaxation: float = DEFAULT_SINKHORN_RELAXATION
    tolerance: float = DEFAULT_TOLERANCE
    bidders: int = DEFAULT_BIDDERS
    auction_kernel: str = "auto"
    ahead_threads: int = AUTO_THREADS

    @classmethod
    def from_config(cls, section) -> "CouplingSettings":
        """From a config.coupling section (None or missing keys: the defaults)."""
        section = dict(section or {})
        allowed = sorted(f.name for f in dataclasses.fields(cls))
        unknown = set(section) - set(allowed)
        if unknown:
            raise ValueError(f"unknown coupling setting(s) {sorted(unknown)}; allowed: {allowed}")
        out = cls(**section)
        out.validate()
        return out

    def validate(self):
        if self.name not in COUPLINGS:
            raise ValueError(f"unknown coupling.name {self.name!r}; choose one of: "
                             f"{', '.join(COUPLINGS)}")
        if self.scope not in SCOPES:
            raise ValueError(f"unknown coupling.scope {self.scope!r}; choose one of: "
                             f"{', '.join(SCOPES)} (global: over the whole batch, gathered across "
                             "devices; local: each device's rows)")
        if not isinstance(self.per_class, bool):
            raise ValueError(f"coupling.per_class must be True or False, got {self.per_class!r}")
        if not (isinstance(self.sinkhorn_reg, (int, float)) and self.sinkhorn_reg > 0):
            raise ValueError(f"coupling.sinkhorn_reg must be > 0 (relative to the largest pair "
                             f"cost of the batch), got {self.sinkhorn_reg!r}")
        if not (isinstance(self.sinkhorn_tolerance, (int, float))
                and self.sinkhorn_tolerance >= 0):
            raise ValueError(f"coupling.sinkhorn_tolerance must be >= 0 (the L1 error of the x0 "
                             f"marginal at which Sinkhorn stops; 0: always num_iters "
                             f"iterations), got {self.sinkhorn_tolerance!r}")
        if not (isinstance(self.sinkhorn_relaxation, (int, float))
                and 1 <= self.sinkhorn_relaxation < 2):
            raise ValueError(f"coupling.sinkhorn_relaxation must be in [1, 2) (1: plain Sinkhorn "
                             f"updates), got {self.sinkhorn_relaxation!r}")
        if (isinstance(self.ahead_threads, bool) or not isinstance(self.ahead_threads, int)
                or self.ahead_threads < AUTO_THREADS):
            raise ValueError(f"coupling.ahead_threads must be an integer >= -1 (-1: automatic; 0: "
                             f"solve the couplings inside the train step; n: n threads on the "
                             f"host solve the next call's), got {self.ahead_threads!r}")
        if self.auction_kernel not in KERNELS:
            raise ValueError(f"unknown coupling.auction_kernel {self.auction_kernel!r}; choose "
                             f"one of: {', '.join(KERNELS)} (auto: the native CPU kernel where "
                             f"it builds; lax: the lax loops; the pairs are the same)")
        for key in ("num_iters", "bidders"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"coupling.{key} must be a positive integer, got {value!r}")
        if not (isinstance(self.tolerance, (int, float))
                and 0 < self.tolerance <= DEFAULT_EPS_START):
            raise ValueError(f"coupling.tolerance must be in (0, {DEFAULT_EPS_START}] (the "
                             f"auction's final epsilon, relative to the cost range), got "
                             f"{self.tolerance!r}")

    def kwargs(self) -> dict:
        """The keyword arguments of `couple` these settings fix."""
        return dict(sinkhorn_reg=self.sinkhorn_reg, num_iters=self.num_iters,
                    sinkhorn_tolerance=self.sinkhorn_tolerance,
                    sinkhorn_relaxation=self.sinkhorn_relaxation, tolerance=self.tolerance,
                    bidders=self.bidders, auction_kernel=self.auction_kernel)
