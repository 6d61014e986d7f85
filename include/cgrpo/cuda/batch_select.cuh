// cgrpo/cuda/batch_select.cuh: the batch passes of the two-pass loss on the GPU: TRL's entropy mask (a
// quantile of the valid tokens' H) and kl_cov / clip_cov's choice of k tokens, by a radix select.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cgrpo/loss/policy_terms.hpp"
#include "cgrpo/loss/row_pass.hpp"
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
// size must be known without a GPU (tests/cuda/test_cuda_host_api runs on machines without one).

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

// A top_covariance term (kl_cov): the policy term's valid initial tokens, by
// cov_t = (A_t - mean A)(log p_t - mean log p) (token_covariance, loss/row_pass.hpp), largest first.
struct CovKeys {
  const uint8_t* terms;
  const StoredRow* stored;
  const float* advantages;
  CovarianceMeans means;
  CGRPO_ROW_HD bool in(int64_t t) const {
    return covered_token(terms[t]) && (terms[t] & kTermPolicy);
  }
  CGRPO_ROW_HD double cov(int64_t t) const {
    return token_covariance(static_cast<double>(advantages[t]), static_cast<double>(stored[t].logp), means);
  }
  CGRPO_ROW_HD uint64_t key(int64_t t) const { return ~double_order_key(cov(t)); }
};

// A covariance_window term (clip_cov): its candidates (covariance_candidate: not clipped by the PPO
// clip, cov in (lower, upper)), by the counter-based hash of (seed, t), smallest first.
struct CandidateKeys {
  CovKeys cov;
  const float* reference;
  SelectionParams p;
  CGRPO_ROW_HD bool in(int64_t t) const {
    if (!cov.in(t)) return false;
    const double x = static_cast<double>(cov.stored[t].logp) - static_cast<double>(reference[t]);
    return covariance_candidate(x, static_cast<double>(cov.advantages[t]), cov.cov(t), p);
  }
  CGRPO_ROW_HD uint64_t key(int64_t t) const { return token_hash(p.seed, static_cast<uint64_t>(t)) >> 11; }
};

// Block sums of the pass (counts, and the covariance sums of A and log p), in a fixed order.
struct CovarianceSumsMerge {
  CGRPO_ROW_HD CovarianceSums operator()(const CovarianceSums& x, const CovarianceSums& y) const {
    return covariance_merge(x, y);
  }
};

template <int THREADS, typename Keys>
CGRPO_ROW_HD CovarianceSums select_thread_count(const Keys& keys, int64_t num_tokens, int tid) {
  CovarianceSums s{0.0, 0.0, 0.0};
  for (int64_t t = tid; t < num_tokens; t += THREADS) s.n += keys.in(t) ? 1.0 : 0.0;
  return s;
}

template <int THREADS>
CGRPO_ROW_HD CovarianceSums cov_thread_sums(const CovKeys& keys, int64_t num_tokens, int tid) {
  CovarianceSums s{0.0, 0.0, 0.0};
  for (int64_t t = tid; t < num_tokens; t += THREADS)
    if (keys.in(t)) covariance_add(s, static_cast<double>(keys.advantages[t]), static_cast<double>(keys.stored[t].logp));
  return s;
}

// The term's means (covariance_means: plain for top_covariance, count + 1e-8 for covariance_window).
CGRPO_ROW_HD CovKeys cov_keys(const PassArgs& a, const CovarianceSums& s) {
  return CovKeys{a.terms, a.stored, a.values.advantages, covariance_means(s, a.selection.selection)};
}

// k = max(1, floor(n ratio)) tokens, at most the set's size.
CGRPO_ROW_HD long long cov_select_count(const PassArgs& a, double n, double set_size) {
  const long long k = covariance_select_count(n, a.selection.ratio);
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
  const uint8_t clear = a.entropy_mask.count_all ? uint8_t(kTermEntropy) : uint8_t(kTermEntropy | kTermEntropyCount);
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
__device__ CovarianceSums block_select_sums(CovarianceSums mine,
                                            typename cub::BlockReduce<CovarianceSums, THREADS>::TempStorage& temp,
                                            CovarianceSums& totals) {
  const CovarianceSums s = cub::BlockReduce<CovarianceSums, THREADS>(temp).Reduce(mine, CovarianceSumsMerge{});
  if (threadIdx.x == 0) totals = s;
  __syncthreads();
  const CovarianceSums r = totals;
  __syncthreads();  // totals and temp are reused
  return r;
}

// The batch pass: the entropy mask (PassPlan::entropy_select), then the term's covariance selection
// (PassPlan::cov_select), in the CPU path's order. One block.
template <int THREADS>
__global__ void __launch_bounds__(THREADS) batch_select_kernel(PassArgs a, bool entropy_on, bool cov_on) {
  __shared__ SelectState st;
  __shared__ typename cub::BlockReduce<CovarianceSums, THREADS>::TempStorage temp;
  __shared__ CovarianceSums totals;
  const int64_t T = a.num_tokens;
  const int tid = threadIdx.x;
  if (entropy_on) {
    const EntropyKeys keys{a.terms, a.stored};
    const double n = block_select_sums<THREADS>(select_thread_count<THREADS>(keys, T, tid), temp, totals).n;
    if (n > 0) {
      const QuantilePosition p = quantile_position(n, a.entropy_mask.q);
      const float v_lo = float_of_order_key(block_select<THREADS>(keys, T, p.lo + 1, 32, true, st).key);
      const float v_hi = float_of_order_key(block_select<THREADS>(keys, T, p.hi + 1, 32, true, st).key);
      entropy_mark_thread<THREADS>(a, quantile_value(p, v_lo, v_hi), tid);
    }
  }
  if (cov_on) {
    const CovKeys base{a.terms, a.stored, a.values.advantages, CovarianceMeans{0.0, 0.0}};
    const CovarianceSums s = block_select_sums<THREADS>(cov_thread_sums<THREADS>(base, T, tid), temp, totals);
    if (s.n > 0) {
      const CovKeys keys = cov_keys(a, s);
      if (a.selection.selection == static_cast<int>(BatchSelection::top_covariance)) {
        const long long m = cov_select_count(a, s.n, s.n);
        mark_selected_thread<THREADS>(a, keys, block_select<THREADS>(keys, T, m, 64, false, st), tid);
      } else {
        const CandidateKeys cand{keys, a.values.reference, a.selection};
        const double nc = block_select_sums<THREADS>(select_thread_count<THREADS>(cand, T, tid), temp, totals).n;
        const long long m = cov_select_count(a, s.n, nc);
        if (m > 0) mark_selected_thread<THREADS>(a, cand, block_select<THREADS>(cand, T, m, 64, false, st), tid);
      }
    }
  }
}

}  // namespace cgrpo::cuda
