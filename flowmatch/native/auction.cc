// The auction of flowmatch.couplings.exact_assignment as one native CPU kernel (an XLA FFI
// handler), round for round the same as the lax version there: the same slot stages, chain and
// unrolled loop trips, the same float32 operations in the same order, so the same prices,
// assignment and round count.  The lax version stays the reference (and the accelerators' path);
// this one runs its ~3,000 rounds without XLA:CPU's cost of launching each round's operations.
//
// Input cost: [..., n, n] float32, turned into benefits as couplings._normalised_benefit does
// ([-1, 0], -inf for a forbidden pair).  Attributes: epsilons (the phases' epsilons, float32),
// widths (the slot stages' widths, couplings._slot_widths), unroll (rounds per loop trip,
// AUCTION_UNROLL), max_rounds (per phase).  Outputs: owner [..., n] int32 (column -> row, -1:
// free) of the last phase, rounds [...] int32 (over all phases).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;
typedef float VF __attribute__((vector_size(4 * kLanes)));
typedef int32_t VI __attribute__((vector_size(4 * kLanes)));

struct Top2 {
  float best;
  int32_t j;      // the lowest index of best
  float second;   // == best on a tie for the best
};

// Merges state (t2, i2, s2) into (t, it, s), lane by lane: couplings._top2_merge.
inline void Merge(VF& t, VI& it, VF& s, VF t2, VI i2, VF s2) {
  VI win = (t > t2) | ((t == t2) & (it < i2));
  VF lose = win ? t2 : t;
  VF smax = s > s2 ? s : s2;
  s = smax > lose ? smax : lose;
  it = win ? it : i2;
  t = win ? t : t2;
}

// (best, index, second) of row - prices over n columns: four sets of kLanes lanes (four
// independent dependency chains; two were 10-15% slower, eight slower again), merged into one,
// then across the lanes by halving; a tail of fewer than 4 * kLanes columns last, in order.
// Best and second best are maxima, so the order of the merges does not change them, and ties
// go to the lowest index: couplings._top2's result.
constexpr int kSets = 4;

inline Top2 BestTwo(const float* __restrict row, const float* __restrict prices, int n) {
  VF t[kSets], s[kSets];
  VI it[kSets], iota;
  for (int l = 0; l < kLanes; ++l) iota[l] = l;
  for (int c = 0; c < kSets; ++c) {
    for (int l = 0; l < kLanes; ++l) {
      t[c][l] = s[c][l] = -INFINITY;
      it[c][l] = 0;
    }
  }
  const int full = n / (kSets * kLanes) * (kSets * kLanes);
  for (int k = 0; k < full; k += kSets * kLanes) {
#pragma GCC unroll 4
    for (int c = 0; c < kSets; ++c) {
      VF x, p;
      __builtin_memcpy(&x, row + k + c * kLanes, sizeof x);
      __builtin_memcpy(&p, prices + k + c * kLanes, sizeof p);
      x = x - p;
      const VI above = x > t[c];
      const VF low = above ? t[c] : x;
      s[c] = low > s[c] ? low : s[c];
      it[c] = above ? iota + (k + c * kLanes) : it[c];
      t[c] = above ? x : t[c];
    }
  }
  Merge(t[0], it[0], s[0], t[1], it[1], s[1]);
  Merge(t[2], it[2], s[2], t[3], it[3], s[3]);
  Merge(t[0], it[0], s[0], t[2], it[2], s[2]);
  VF best_lanes = t[0], second_lanes = s[0];
  VI index_lanes = it[0];
#define FM_HALVE(...)                                                                  \
  Merge(best_lanes, index_lanes, second_lanes,                                         \
        __builtin_shufflevector(best_lanes, best_lanes, __VA_ARGS__),                  \
        __builtin_shufflevector(index_lanes, index_lanes, __VA_ARGS__),                \
        __builtin_shufflevector(second_lanes, second_lanes, __VA_ARGS__))
  FM_HALVE(8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  FM_HALVE(4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  FM_HALVE(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  FM_HALVE(1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
#undef FM_HALVE
  float best = best_lanes[0], second = second_lanes[0];
  int32_t j = index_lanes[0];
  for (int k = full; k < n; ++k) {
    const float x = row[k] - prices[k];
    if (x > best) {
      second = best;
      best = x;
      j = k;
    } else {
      second = x > second ? x : second;
    }
  }
  if (!(best > -INFINITY)) j = 0;   // no allowed column (the lax version's index too)
  return {best, j, second};
}

// couplings._bid_increment
inline float Increment(float best, float second) {
  const float d = best - second;
  return d < 1.0f ? d : 1.0f;
}

// couplings._normalised_benefit: a = -(C - lo) * (1 / (hi - lo)) over the finite entries (lo,
// hi: their min and max; scale 1 if hi <= lo), -inf elsewhere and where that is NaN.
void NormalisedBenefit(const float* __restrict cost, int64_t size, float* __restrict a) {
  // min and max over the finite entries, lane by lane (x - x == 0: x finite), then across.
  VF lo, hi;
  for (int l = 0; l < kLanes; ++l) {
    lo[l] = INFINITY;
    hi[l] = -INFINITY;
  }
  const int64_t full = size / kLanes * kLanes;
  for (int64_t k = 0; k < full; k += kLanes) {
    VF c;
    __builtin_memcpy(&c, cost + k, sizeof c);
    const VI finite = (c - c) == 0.0f;
    const VF c_lo = finite ? c : lo;
    const VF c_hi = finite ? c : hi;
    lo = c_lo < lo ? c_lo : lo;
    hi = c_hi > hi ? c_hi : hi;
  }
  float low = INFINITY, high = -INFINITY;
  for (int l = 0; l < kLanes; ++l) {
    low = lo[l] < low ? lo[l] : low;
    high = hi[l] > high ? hi[l] : high;
  }
  for (int64_t k = full; k < size; ++k) {
    if (std::isfinite(cost[k])) {
      low = cost[k] < low ? cost[k] : low;
      high = cost[k] > high ? cost[k] : high;
    }
  }
  const float scale = high > low ? high - low : 1.0f;
  const float inverse = 1.0f / scale;
  VF vlow, vinverse, minus_inf;
  for (int l = 0; l < kLanes; ++l) {
    vlow[l] = low;
    vinverse[l] = inverse;
    minus_inf[l] = -INFINITY;
  }
  for (int64_t k = 0; k < full; k += kLanes) {
    VF c;
    __builtin_memcpy(&c, cost + k, sizeof c);
    const VF x = -(c - vlow) * vinverse;
    const VF out = ((c - c) == 0.0f) & (x == x) ? x : minus_inf;   // finite, and not NaN
    __builtin_memcpy(a + k, &out, sizeof out);
  }
  for (int64_t k = full; k < size; ++k) {
    const float x = -(cost[k] - low) * inverse;
    a[k] = std::isfinite(cost[k]) && !std::isnan(x) ? x : -INFINITY;
  }
}

class Auction {
 public:
  Auction(int n, int num_slots, int unroll, int32_t max_rounds)
      : n_(n), unroll_(unroll), max_rounds_(max_rounds), prices_(n), slots_(num_slots),
        col_(num_slots), bid_(num_slots), bidding_(num_slots) {}

  // All phases for one problem: owner [n] of the last phase; returns the rounds.
  int32_t Solve(const float* a, const std::vector<float>& epsilons,
                const std::vector<int>& widths, int32_t* owner) {
    a_ = a;
    owner_ = owner;
    std::fill(prices_.begin(), prices_.end(), 0.0f);
    int32_t total = 0;
    for (float eps : epsilons) total += Phase(eps, widths);
    return total;
  }

 private:
  // couplings._auction_phase: every row free, the slot stages, then the chain.
  int32_t Phase(float eps, const std::vector<int>& widths) {
    std::fill(owner_, owner_ + n_, -1);
    int width = widths[0];
    std::fill(slots_.begin(), slots_.begin() + width, n_);
    fresh_ = 0;
    rounds_ = 0;
    for (size_t k = 0; k < widths.size(); ++k) {
      if (widths[k] < width) {   // the busy slots (fewer than widths[k]) move to the front
        std::sort(slots_.begin(), slots_.begin() + width);
        width = widths[k];
      }
      const int32_t stop = k + 1 < widths.size() ? widths[k + 1] : 1;
      while (Left(width) > stop && rounds_ < max_rounds_) {
        for (int u = 0; u < unroll_; ++u) SlotRound(width, eps);
      }
    }
    int32_t row = n_;
    if (fresh_ < n_) {
      row = fresh_;
    } else {
      for (int i = 0; i < width; ++i) row = std::min(row, slots_[i]);
    }
    while (row < n_ && rounds_ < max_rounds_) {
      for (int u = 0; u < unroll_ && row < n_; ++u) row = ChainBid(row, eps);
    }
    return rounds_;
  }

  int32_t Left(int width) const {   // rows still free: the slots' rows and the fresh ones
    int32_t left = n_ - fresh_;
    for (int i = 0; i < width; ++i) left += slots_[i] < n_;
    return left;
  }

  // couplings._slot_round
  void SlotRound(int width, float eps) {
    int32_t empty = 0;
    for (int i = 0; i < width; ++i) {
      if (slots_[i] >= n_) {
        if (fresh_ + empty < n_) slots_[i] = fresh_ + empty;
        ++empty;
      }
    }
    fresh_ = std::min(fresh_ + empty, n_);
    for (int i = 0; i < width; ++i) {
      bidding_[i] = false;
      if (slots_[i] >= n_) continue;
      const Top2 t = BestTwo(a_ + static_cast<int64_t>(slots_[i]) * n_, prices_.data(), n_);
      if (!(t.best > -INFINITY)) continue;   // a row with no allowed column drops out
      bidding_[i] = true;
      col_[i] = t.j;
      bid_[i] = (prices_[t.j] + Increment(t.best, t.second)) + eps;
    }
    for (int i = 0; i < width; ++i) {
      if (!bidding_[i]) {
        slots_[i] = n_;
        continue;
      }
      bool wins = true;
      for (int k = 0; k < width && wins; ++k) {
        if (k == i || !bidding_[k] || col_[k] != col_[i]) continue;
        wins = !(bid_[k] > bid_[i] || (bid_[k] == bid_[i] && k < i));
      }
      if (!wins) continue;   // a loser keeps its slot and bids again
      const int32_t j = col_[i];
      const int32_t displaced = owner_[j];   // winners' columns are distinct
      prices_[j] = bid_[i];
      owner_[j] = slots_[i];
      slots_[i] = displaced >= 0 ? displaced : n_;
    }
    ++rounds_;
  }

  // couplings._chain_bid: returns the next row to bid (n: the chain has ended).
  int32_t ChainBid(int32_t row, float eps) {
    const Top2 t = BestTwo(a_ + static_cast<int64_t>(row) * n_, prices_.data(), n_);
    ++rounds_;
    if (!(t.best > -INFINITY)) return n_;
    const int32_t displaced = owner_[t.j];
    prices_[t.j] = prices_[t.j] + (Increment(t.best, t.second) + eps);
    owner_[t.j] = row;
    return displaced >= 0 ? displaced : n_;
  }

  const int n_, unroll_;
  const int32_t max_rounds_;
  const float* a_ = nullptr;
  int32_t* owner_ = nullptr;
  std::vector<float> prices_;
  std::vector<int32_t> slots_, col_;
  std::vector<float> bid_;
  std::vector<bool> bidding_;
  int32_t fresh_ = 0, rounds_ = 0;
};

ffi::Error AuctionImpl(ffi::Buffer<ffi::F32> cost, ffi::Span<const float> epsilons,
                       ffi::Span<const int64_t> widths, int64_t unroll, int64_t max_rounds,
                       ffi::ResultBuffer<ffi::S32> owner, ffi::ResultBuffer<ffi::S32> rounds) {
  const auto dims = cost.dimensions();
  if (dims.size() < 2 || dims[dims.size() - 1] != dims[dims.size() - 2] ||
      dims[dims.size() - 1] < 1) {
    return ffi::Error::InvalidArgument("flowmatch auction: a must be [..., n, n] with n >= 1");
  }
  if (epsilons.size() < 1 || widths.size() < 1 || widths[0] < 1 || unroll < 1) {
    return ffi::Error::InvalidArgument("flowmatch auction: needs epsilons, widths and unroll");
  }
  const int n = static_cast<int>(dims[dims.size() - 1]);
  const int64_t size = static_cast<int64_t>(n) * n;
  const int64_t problems = cost.element_count() / size;
  if (owner->element_count() != static_cast<size_t>(problems * n) ||
      rounds->element_count() != static_cast<size_t>(problems)) {
    return ffi::Error::InvalidArgument("flowmatch auction: outputs must be [..., n] and [...]");
  }
  const std::vector<float> eps(epsilons.begin(), epsilons.end());
  const std::vector<int> w(widths.begin(), widths.end());
  // The benefits: up to kKeptBenefits a buffer kept by each thread (a fresh one of 256 KB,
  // n = 256, was mapped and faulted in by the allocator on every call); larger problems get
  // their own, freed on return, so a thread does not hold a large buffer between calls.
  constexpr int64_t kKeptBenefits = int64_t{1} << 20;   // 4 MiB: n <= 1024
  thread_local std::vector<float> kept;
  std::vector<float> own;
  std::vector<float>& a = size <= kKeptBenefits ? kept : own;
  if (static_cast<int64_t>(a.size()) < size) a.resize(size);
  Auction auction(n, w[0], static_cast<int>(unroll), static_cast<int32_t>(max_rounds));
  for (int64_t b = 0; b < problems; ++b) {
    NormalisedBenefit(cost.typed_data() + b * size, size, a.data());
    rounds->typed_data()[b] = auction.Solve(a.data(), eps, w, owner->typed_data() + b * n);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlowmatchAuction, AuctionImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const float>>("epsilons")
                                  .Attr<ffi::Span<const int64_t>>("widths")
                                  .Attr<int64_t>("unroll")
                                  .Attr<int64_t>("max_rounds")
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
