// cgrpo/cuda/batch_select.cuh: the batch passes of the two-pass loss on the GPU: TRL's entropy mask (a
// quantile of the valid tokens' H) and kl_cov / clip_cov's choice of k tokens, by a radix select.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cgrpo/loss/policy_terms.hpp"
#include "cgrpo/math/token_hash.hpp"
#include "cgrpo/cuda/loss_passes.cuh"

// One block of kSelectThreads does the whole pass (T is ~1e4-1e5 tokens: a few reads of O(T)
// bytes). A select finds the r-th smallest of the composite (key, token index) among a set of
// tokens, 8 bits per pass from the most significant: a 256-bin histogram of the tokens that match
// the digits found so far (integer shared-memory atomics: the counts, hence the result, do not
// depend on the order), then thread 0 picks the bin holding rank r. Once the bin's count equals
// the rank still sought, every token in it is taken and the remaining digits are "all ones". The
// composite with the index is what makes ties go to the lower index, as the CPU path's
// partial_sort on (key descending, index ascending) does. No sort buffer, no device-wide temp
// storage: a CUB DeviceRadixSort would need its temp size from a device query, and the workspace
// size must be known without a GPU (tests/gpu/test_cuda_host_api runs on machines without one).

namespace cgrpo::cuda {

constexpr int kSelectThreads = 1024;

// Order-preserving maps of float / double to unsigned integers (-0 and +0 map to the same key:
// the CPU compares them equal, so they tie and go by index).
CGRPO_ROW_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
#endif
}
CGRPO_ROW_HD float float_of_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
#endif
}
CGRPO_ROW_HD uint64_t double_bits(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
#endif
}
CGRPO_ROW_HD uint64_t float_order_key(float x) {
  if (x == 0.0f) x = 0.0f;
  const uint32_t u = float_bits(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
CGRPO_ROW_HD float float_of_order_key(uint64_t k) {
  const uint32_t u = static_cast<uint32_t>(k);
  return float_of_bits((u & 0x80000000u) ? (u & 0x7FFFFFFFu) : ~u);
}
CGRPO_ROW_HD uint64_t double_order_key(double x) {
  if (x == 0.0) x = 0.0;
  const uint64_t u = double_bits(x);
  return (u >> 63) ? ~u : (u | (uint64_t{1} << 63));
}

// The select's state, in shared memory (one block).
struct SelectState {
  unsigned int hist[256];
  unsigned long long key_prefix, key_mask;  // the key's digits found so far
  unsigned int index_prefix, index_mask;    // then the index's
  long long rank;                           // 1-based rank still sought among the matching tokens
  int pass;                                 // the next pass
  int done;                                 // the threshold is complete
};

// Selected: key < key, or key == key and index <= index (a composite threshold).
struct SelectThreshold {
  uint64_t key;
  uint32_t index;
};

CGRPO_ROW_HD void select_begin(SelectState& st, long long rank) {
  st.key_prefix = st.key_mask = 0;
  st.index_prefix = st.index_mask = 0;
  st.rank = rank;
  st.pass = 0;
  st.done = rank < 1 ? 1 : 0;
}

CGRPO_ROW_HD void shared_add(unsigned int* x, unsigned int v) {
#if defined(__CUDA_ARCH__)
  atomicAdd(x, v);
#else
  *x += v;
#endif
}

// Thread tid's tokens t = tid, tid + THREADS, ...: the histogram of the current digit over the
// tokens in the set that match the digits found so far. Keys: in(t) and key(t), host/device.
template <int THREADS, typename Keys>
CGRPO_ROW_HD void select_histogram_thread(const Keys& keys, int64_t num_tokens, SelectState& st, int key_bits,
                                          int tid) {
  const int key_passes = key_bits / 8;
  const bool key_part = st.pass < key_passes;
  const int shift = key_part ? key_bits - 8 * (st.pass + 1) : 24 - 8 * (st.pass - key_passes);
  for (int64_t t = tid; t < num_tokens; t += THREADS) {
    if (!keys.in(t)) continue;
    const uint64_t k = keys.key(t);
    const uint32_t index = static_cast<uint32_t>(t);
    if ((k & st.key_mask) != st.key_prefix || (index & st.index_mask) != st.index_prefix) continue;
    const unsigned digit = key_part ? static_cast<unsigned>((k >> shift) & 255u) : (index >> shift) & 255u;
    shared_add(&st.hist[digit], 1u);
  }
}

// Thread 0 after the histogram: the bin holding the rank; exact_value runs every key pass and no
// index pass (the quantile wants the key's value), otherwise the select stops as soon as a whole
// bin is taken.
CGRPO_ROW_HD void select_pick(SelectState& st, int key_bits, bool exact_value) {
  const int key_passes = key_bits / 8;
  const bool key_part = st.pass < key_passes;
  const int shift = key_part ? key_bits - 8 * (st.pass + 1) : 24 - 8 * (st.pass - key_passes);
  long long cum = 0;
  int b = 0;
  for (; b < 256; ++b) {
    if (cum + static_cast<long long>(st.hist[b]) >= st.rank) break;
    cum += st.hist[b];
  }
  if (b == 256) {  // fewer tokens than the rank: cannot happen (the callers' ranks are <= the set's size)
    st.done = 1;
    return;
  }
  st.rank -= cum;
  if (key_part) {
    st.key_prefix |= static_cast<unsigned long long>(b) << shift;
    st.key_mask |= 255ull << shift;
  } else {
    st.index_prefix |= static_cast<unsigned>(b) << shift;
    st.index_mask |= 255u << shift;
  }
  st.pass += 1;
  const int passes = key_passes + (exact_value ? 0 : 4);
  if (st.pass == passes) {
    st.done = 1;
  } else if (!exact_value && st.rank == static_cast<long long>(st.hist[b])) {
    const unsigned long long all_keys = key_bits == 64 ? ~0ull : ((1ull << key_bits) - 1);
    st.key_prefix |= all_keys & ~st.key_mask;
    st.index_prefix |= ~st.index_mask;
    st.key_mask = all_keys;
    st.index_mask = ~0u;
    st.done = 1;
  }
}

CGRPO_ROW_HD bool below_threshold(uint64_t key, int64_t t, const SelectThreshold& th) {
  return key < th.key || (key == th.key && static_cast<uint32_t>(t) <= th.index);
}

// The r-th smallest (key, index) of Keys' set, by the whole block; rank r >= 1.
template <int THREADS, typename Keys>
__device__ SelectThreshold block_select(const Keys& keys, int64_t num_tokens, long long rank, int key_bits,
                                        bool exact_value, SelectState& st) {
  __syncthreads();  // the previous select's state has been read by every thread
  if (threadIdx.x == 0) select_begin(st, rank);
  __syncthreads();
  while (!st.done) {
    for (int b = threadIdx.x; b < 256; b += THREADS) st.hist[b] = 0;
    __syncthreads();
    select_histogram_thread<THREADS>(keys, num_tokens, st, key_bits, threadIdx.x);
    __syncthreads();
    if (threadIdx.x == 0) select_pick(st, key_bits, exact_value);
    __syncthreads();
  }
  return SelectThreshold{st.key_prefix, st.index_prefix};
}

// ---------------------------------------------------------------------------
// The sets and keys of the three selects.

// TRL's entropy mask: every valid token, keyed by its H.
struct EntropyKeys {
  const uint8_t* terms;
  const StoredRow* stored;
  CGRPO_ROW_HD bool in(int64_t t) const { return (terms[t] & kTokenValid) != 0; }
  CGRPO_ROW_HD uint64_t key(int64_t t) const { return float_order_key(stored[t].entropy); }
};

// kl_cov: the policy term's valid initial tokens, by cov_t = (A_t - mean A)(log p_t - mean log p),
// largest first.
struct CovKeys {
  const uint8_t* terms;
  const StoredRow* stored;
  const float* advantages;
  double mean_a, mean_l;
  CGRPO_ROW_HD bool in(int64_t t) const {
    return covered_token(terms[t]) && (terms[t] & kTermPolicy);
  }
  CGRPO_ROW_HD double cov(int64_t t) const {
    return (static_cast<double>(advantages[t]) - mean_a) * (static_cast<double>(stored[t].logp) - mean_l);
  }
  CGRPO_ROW_HD uint64_t key(int64_t t) const { return ~double_order_key(cov(t)); }
};

// clip_cov: verl's candidates (not clipped by the PPO clip, cov in (lower, upper)), by the
// counter-based hash of (seed, t), smallest first.
struct CandidateKeys {
  CovKeys cov;
  const float* reference;
  SelectParams p;
  CGRPO_ROW_HD bool in(int64_t t) const {
    if (!cov.in(t)) return false;
    const double x = static_cast<double>(cov.stored[t].logp) - static_cast<double>(reference[t]);
    const double r = clamped_ratio(x, p.log_ratio_min, p.log_ratio_max).r;
    const double A = static_cast<double>(cov.advantages[t]);
    const bool clipped = -A * math::clamp(r, p.clip_low, p.clip_high) > -A * r;
    const double c = cov.cov(t);
    return !clipped && c > p.clip_cov_lower && c < p.clip_cov_upper;
  }
  CGRPO_ROW_HD uint64_t key(int64_t t) const { return token_hash(p.clip_cov_seed, static_cast<uint64_t>(t)) >> 11; }
};

// Block sums of the pass (counts, and kl_cov's sums of A and log p), in a fixed order.
struct SelectSums {
  double n, sum_a, sum_l;
};
struct SelectSumsMerge {
  CGRPO_ROW_HD SelectSums operator()(const SelectSums& x, const SelectSums& y) const {
    return SelectSums{x.n + y.n, x.sum_a + y.sum_a, x.sum_l + y.sum_l};
  }
};

template <int THREADS, typename Keys>
CGRPO_ROW_HD SelectSums select_thread_count(const Keys& keys, int64_t num_tokens, int tid) {
  SelectSums s{0.0, 0.0, 0.0};
  for (int64_t t = tid; t < num_tokens; t += THREADS) s.n += keys.in(t) ? 1.0 : 0.0;
  return s;
}

template <int THREADS>
CGRPO_ROW_HD SelectSums cov_thread_sums(const CovKeys& keys, int64_t num_tokens, int tid) {
  SelectSums s{0.0, 0.0, 0.0};
  for (int64_t t = tid; t < num_tokens; t += THREADS)
    if (keys.in(t)) {
      s.n += 1;
      s.sum_a += static_cast<double>(keys.advantages[t]);
      s.sum_l += static_cast<double>(keys.stored[t].logp);
    }
  return s;
}

// kl_cov's plain means (torch .mean()); clip_cov's verl masked_mean (count + 1e-8).
CGRPO_ROW_HD CovKeys cov_keys(const PassArgs& a, const SelectSums& s) {
  const bool kl_cov = a.params.policy_loss == static_cast<int>(PolicyLoss::kl_cov);
  const double n = kl_cov ? s.n : s.n + 1e-8;
  return CovKeys{a.terms, a.stored, a.values.advantages, s.sum_a / n, s.sum_l / n};
}

// k = max(1, floor(n cov_ratio)) tokens, at most the set's size.
CGRPO_ROW_HD long long cov_select_count(const PassArgs& a, double n, double set_size) {
  long long k = static_cast<long long>(n * a.select.cov_ratio);
  if (k < 1) k = 1;
  return static_cast<double>(k) < set_size ? k : static_cast<long long>(set_size);
}

// The quantile's order statistics: the lo-th and hi-th smallest H (0-based) and the weight of the
// second, as torch.quantile (quantile_linear) forms them.
struct QuantilePosition {
  long long lo, hi;
  double pos;
};
CGRPO_ROW_HD QuantilePosition quantile_position(double n, double q) {
  const double pos = q * (n - 1);
  const long long lo = static_cast<long long>(::floor(pos));
  const long long hi = lo + 1 < static_cast<long long>(n) - 1 ? lo + 1 : static_cast<long long>(n) - 1;
  return QuantilePosition{lo, hi, pos};
}
CGRPO_ROW_HD double quantile_value(const QuantilePosition& p, float v_lo, float v_hi) {
  return static_cast<double>(v_lo) + (p.pos - static_cast<double>(p.lo)) * (static_cast<double>(v_hi) - static_cast<double>(v_lo));
}

// TRL's mask: a valid token with H below the quantile leaves the policy term (factor 0) and the
// entropy term's numerator, and its denominator unless entropy_count_all_tokens.
template <int THREADS>
CGRPO_ROW_HD void entropy_mark_thread(const PassArgs& a, double q, int tid) {
  const uint8_t clear = a.select.entropy_count_all ? uint8_t(kTermEntropy) : uint8_t(kTermEntropy | kTermEntropyCount);
  for (int64_t t = tid; t < a.num_tokens; t += THREADS) {
    const uint8_t bits = a.terms[t];
    if ((bits & kTokenValid) && static_cast<double>(a.stored[t].entropy) < q)
      a.terms[t] = static_cast<uint8_t>((bits | kTokenLowEntropy) & ~clear);
  }
}

template <int THREADS, typename Keys>
CGRPO_ROW_HD void mark_selected_thread(const PassArgs& a, const Keys& keys, const SelectThreshold& th, int tid) {
  for (int64_t t = tid; t < a.num_tokens; t += THREADS)
    if (keys.in(t) && below_threshold(keys.key(t), t, th)) a.terms[t] |= kTermSelected;
}

template <int THREADS>
__device__ SelectSums block_select_sums(SelectSums mine, typename cub::BlockReduce<SelectSums, THREADS>::TempStorage& temp,
                                        SelectSums& totals) {
  const SelectSums s = cub::BlockReduce<SelectSums, THREADS>(temp).Reduce(mine, SelectSumsMerge{});
  if (threadIdx.x == 0) totals = s;
  __syncthreads();
  const SelectSums r = totals;
  __syncthreads();  // totals and temp are reused
  return r;
}

// The batch pass: the entropy mask (config.top_entropy_quantile < 1), then kl_cov / clip_cov's
// selection (without batch.selection), in the CPU path's order. One block.
template <int THREADS>
__global__ void __launch_bounds__(THREADS) batch_select_kernel(PassArgs a, bool entropy_on, bool cov_on) {
  __shared__ SelectState st;
  __shared__ typename cub::BlockReduce<SelectSums, THREADS>::TempStorage temp;
  __shared__ SelectSums totals;
  const int64_t T = a.num_tokens;
  const int tid = threadIdx.x;
  if (entropy_on) {
    const EntropyKeys keys{a.terms, a.stored};
    const double n = block_select_sums<THREADS>(select_thread_count<THREADS>(keys, T, tid), temp, totals).n;
    if (n > 0) {
      const QuantilePosition p = quantile_position(n, a.select.entropy_q);
      const float v_lo = float_of_order_key(block_select<THREADS>(keys, T, p.lo + 1, 32, true, st).key);
      const float v_hi = float_of_order_key(block_select<THREADS>(keys, T, p.hi + 1, 32, true, st).key);
      entropy_mark_thread<THREADS>(a, quantile_value(p, v_lo, v_hi), tid);
    }
  }
  if (cov_on) {
    const CovKeys base{a.terms, a.stored, a.values.advantages, 0.0, 0.0};
    const SelectSums s = block_select_sums<THREADS>(cov_thread_sums<THREADS>(base, T, tid), temp, totals);
    if (s.n > 0) {
      const CovKeys keys = cov_keys(a, s);
      if (a.params.policy_loss == static_cast<int>(PolicyLoss::kl_cov)) {
        const long long m = cov_select_count(a, s.n, s.n);
        mark_selected_thread<THREADS>(a, keys, block_select<THREADS>(keys, T, m, 64, false, st), tid);
      } else {
        const CandidateKeys cand{keys, a.values.reference, a.select};
        const double nc = block_select_sums<THREADS>(select_thread_count<THREADS>(cand, T, tid), temp, totals).n;
        const long long m = cov_select_count(a, s.n, nc);
        if (m > 0) mark_selected_thread<THREADS>(a, cand, block_select<THREADS>(cand, T, m, 64, false, st), tid);
      }
    }
  }
}

}  // namespace cgrpo::cuda
