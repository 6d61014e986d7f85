// cgrpo/cuda/block_row_ops.cuh: what one thread block does to one logits row: the online-softmax
// sweep (lse, H, finiteness) and the gradient sweep, with 16-byte loads and stores.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "cgrpo/math/token_math.hpp"
#include "cgrpo/cuda/vector_io.cuh"

// Per-thread parts are __host__ __device__ and take the thread index, so that the host tests
// (tests/cuda/test_cuda_row_ops_host.cu) can run every thread's share of a row without a GPU.
#define CGRPO_ROW_HD __host__ __device__ __forceinline__

// Unrolling hints for the device pass only (the host compiler would warn about an unknown pragma).
#define CGRPO_PRAGMA(x) _Pragma(#x)
#if defined(__CUDA_ARCH__)
#define CGRPO_UNROLL CGRPO_PRAGMA(unroll)
#define CGRPO_UNROLL_N(n) CGRPO_PRAGMA(unroll n)
#else
#define CGRPO_UNROLL
#define CGRPO_UNROLL_N(n)
#endif

namespace cgrpo::cuda {

// The 16-byte accesses below must be aligned. On the device a misaligned one faults; on the host
// (the tests that run each thread's share) it would silently work, so the host path checks.
CGRPO_ROW_HD void expect_vector_aligned(const void* p) {
#if !defined(__CUDA_ARCH__)
  if (reinterpret_cast<uintptr_t>(p) % kVectorBytes != 0) {
    std::fprintf(stderr, "cgrpo: misaligned 16-byte access at %p\n", p);
    std::abort();
  }
#else
  (void)p;
#endif
}

// The softmax of one row u = z / tau, kept in shifted form: log p_j = (z_j - max) / tau - log_sum.
// The max stays in logit units and z_j - max is taken before the scaling, so that log p is exact
// to a few ulps even when |z| ~ 1e4 and tau != 1: u = z / tau rounded to float would already
// carry an error of 5e-4 there, and lse = max + log_sum another 1e-3.
struct RowSoftmax {
  float max;      // M = max_j z_j (logit units)
  float log_sum;  // log S, S = sum_j exp((z_j - M) / tau)
  float entropy;  // H = log S - Q / S, Q = sum_j exp((z_j - M) / tau) (z_j - M) / tau
  bool finite;    // no NaN / +inf logit and not every logit -inf
};

// cgrpo::RowStats with `max` in logit units and the sums in softmax units. Two parts are merged
// by cgrpo::row_stats_merge after expressing both maxima relative to the first one, in softmax
// units ((M_b - M_a) / tau, exact to a rounding of a small number).
struct RowStatsMerge {
  float inv_temperature;
  CGRPO_ROW_HD RowStats<float> operator()(RowStats<float> a, RowStats<float> b) const {
    if (b.sum_exp == 0.0f) return a;
    if (a.sum_exp == 0.0f) return b;
    const float raw_a = a.max, raw_b = b.max;
    a.max = 0.0f;
    b.max = (raw_b - raw_a) * inv_temperature;
    RowStats<float> m = row_stats_merge(a, b);
    m.max = b.max > a.max ? raw_b : raw_a;  // the side row_stats_merge kept as the reference
    return m;
  }
};

// A NaN or +inf logit; the stats alone cannot tell it apart reliably once merged, so each thread
// keeps this flag and the block ORs them.
CGRPO_ROW_HD bool bad_logit(float z) { return isnan(z) || z == INFINITY; }

// Statistics of N logits, merged into s: one max, then N exps against it (pushing one at a time
// would rescale on every new maximum). -inf entries add nothing.
template <int N>
CGRPO_ROW_HD RowStats<float> push_chunk(RowStats<float> s, const float (&z)[N], const RowStatsMerge& merge, bool& bad) {
  float m = -INFINITY;
CGRPO_UNROLL
  for (int k = 0; k < N; ++k) {
    bad |= bad_logit(z[k]);
    m = fmaxf(m, z[k]);
  }
  if (m == -INFINITY) return s;  // an all -inf chunk adds nothing
  RowStats<float> c{m, 0.0f, 0.0f};
CGRPO_UNROLL
  for (int k = 0; k < N; ++k) {
    const float d = (z[k] - m) * merge.inv_temperature;
    const float e = expf(d);
    c.sum_exp += e;
    c.sum_exp_u += e > 0.0f ? e * d : 0.0f;  // exp(-inf) * -inf would be NaN
  }
  return merge(s, c);
}

// One logit (the scalar prologue and tail).
CGRPO_ROW_HD RowStats<float> push_one(RowStats<float> s, float z, const RowStatsMerge& merge, bool& bad) {
  bad |= bad_logit(z);
  if (z == -INFINITY) return s;
  return merge(s, RowStats<float>{z, 1.0f, 0.0f});
}

// Thread `tid`'s share of sweep 1. Thread layout: a scalar prologue up to the first 16-byte
// boundary (elements [0, head), one per thread), then 16-byte vectors i = tid, tid + THREADS, ...
// (4 fp32 or 8 fp16/bf16 each), then a scalar tail. Reads V / THREADS elements.
template <typename Logit, int THREADS>
CGRPO_ROW_HD RowStats<float> thread_row_stats(const Logit* row, int64_t vocab, const RowStatsMerge& merge, int tid,
                                             bool& bad) {
  using Traits = LogitTraits<Logit>;
  using Vec = Packed<Logit>;
  constexpr int N = Vec::size;
  RowStats<float> s = row_stats_identity<float>();
  const int64_t head = elements_to_alignment(row, vocab);
  for (int64_t j = tid; j < head; j += THREADS) s = push_one(s, Traits::to_float(row[j]), merge, bad);
  const Vec* vectors = reinterpret_cast<const Vec*>(row + head);
  const int64_t num_vectors = (vocab - head) / N;
  if (num_vectors > 0) expect_vector_aligned(vectors);
CGRPO_UNROLL_N(4)
  for (int64_t i = tid; i < num_vectors; i += THREADS) {
    const Vec v = vectors[i];
    float z[N];
CGRPO_UNROLL
    for (int k = 0; k < N; ++k) z[k] = Traits::to_float(v.v[k]);
    s = push_chunk(s, z, merge, bad);
  }
  for (int64_t j = head + num_vectors * N + tid; j < vocab; j += THREADS)
    s = push_one(s, Traits::to_float(row[j]), merge, bad);
  return s;
}

// The row's softmax from its merged statistics.
CGRPO_ROW_HD RowSoftmax row_softmax_from_stats(const RowStats<float>& t, bool any_bad) {
  RowSoftmax r;
  r.max = t.max;
  r.log_sum = logf(t.sum_exp);
  r.entropy = row_entropy(t);
  r.finite = !any_bad && row_stats_finite(t);
  return r;
}

template <int THREADS>
struct BlockRowSoftmaxStorage {
  typename cub::BlockReduce<RowStats<float>, THREADS>::TempStorage reduce;
  RowStats<float> total;
};

// Sweep 1, called by all THREADS threads of the block: thread_row_stats, then cub::BlockReduce
// with RowStatsMerge. Every thread returns the same RowSoftmax. Reads the row once.
template <typename Logit, int THREADS>
__device__ RowSoftmax block_row_softmax(const Logit* row, int64_t vocab, float inv_temperature,
                                        BlockRowSoftmaxStorage<THREADS>& storage) {
  const RowStatsMerge merge{inv_temperature};
  bool bad = false;
  const RowStats<float> s = thread_row_stats<Logit, THREADS>(row, vocab, merge, threadIdx.x, bad);
  const RowStats<float> total = cub::BlockReduce<RowStats<float>, THREADS>(storage.reduce).Reduce(s, merge);
  const int any_bad = __syncthreads_or(bad ? 1 : 0);  // also the barrier before storage.total is written
  if (threadIdx.x == 0) storage.total = total;
  __syncthreads();
  return row_softmax_from_stats(storage.total, any_bad != 0);
}

// grad_j = cgrpo::logit_gradient at u = (z_j - M) / tau with lse = log S (the same value as at
// z_j / tau with lse = M / tau + log S, without their rounding). overflow is set when the value
// does not fit Logit (inf or NaN once stored): the caller zeroes the row and flags it.
template <typename Logit>
CGRPO_ROW_HD Logit gradient_element(Logit z, int64_t j, int32_t target, const RowSoftmax& sm, float a, float b,
                                    float inv_temperature, bool& overflow) {
  using Traits = LogitTraits<Logit>;
  const float shifted = (Traits::to_float(z) - sm.max) * inv_temperature;
  const float g = logit_gradient<float>(shifted, j == target, sm.log_sum, sm.entropy, a, b, inv_temperature);
  overflow |= !(fabsf(g) < Traits::overflow);
  return Traits::from_float(g);
}

// Thread `tid`'s share of zeroing grad_row[0, V) (masked and flagged rows), without reading the logits.
template <typename Logit, int THREADS>
CGRPO_ROW_HD void thread_row_fill_zero(Logit* grad_row, int64_t vocab, int tid) {
  using Vec = Packed<Logit>;
  constexpr int N = Vec::size;
  const Logit zero = LogitTraits<Logit>::from_float(0.0f);
  const int64_t head = elements_to_alignment(grad_row, vocab);
  for (int64_t j = tid; j < head; j += THREADS) grad_row[j] = zero;
  Vec* vectors = reinterpret_cast<Vec*>(grad_row + head);
  const int64_t num_vectors = (vocab - head) / N;
  if (num_vectors > 0) expect_vector_aligned(vectors);
  Vec z;
CGRPO_UNROLL
  for (int k = 0; k < N; ++k) z.v[k] = zero;
  for (int64_t i = tid; i < num_vectors; i += THREADS) vectors[i] = z;
  for (int64_t j = head + num_vectors * N + tid; j < vocab; j += THREADS) grad_row[j] = zero;
}

// Thread `tid`'s share of sweep 2: reads and writes V / THREADS elements; each element is read and
// written by the same thread, so grad_row may be row (in place). a = b = 0 (masked rows) writes
// exact zeros without reading, as the CPU path does. When the two rows are misaligned differently
// (separate buffers, different strides) the sweep is scalar: still coalesced, with more instructions.
// Returns whether one of this thread's entries overflowed Logit (gradient_element).
template <typename Logit, int THREADS>
CGRPO_ROW_HD bool thread_row_gradient(const Logit* row, Logit* grad_row, int64_t vocab, int32_t target,
                                      const RowSoftmax& sm, float a, float b, float inv_temperature, int tid) {
  if (a == 0.0f && b == 0.0f) {
    thread_row_fill_zero<Logit, THREADS>(grad_row, vocab, tid);
    return false;
  }
  using Vec = Packed<Logit>;
  constexpr int N = Vec::size;
  bool overflow = false;
  if (!same_alignment(row, grad_row)) {
    for (int64_t j = tid; j < vocab; j += THREADS)
      grad_row[j] = gradient_element(row[j], j, target, sm, a, b, inv_temperature, overflow);
    return overflow;
  }
  const int64_t head = elements_to_alignment(row, vocab);
  for (int64_t j = tid; j < head; j += THREADS)
    grad_row[j] = gradient_element(row[j], j, target, sm, a, b, inv_temperature, overflow);
  const Vec* in = reinterpret_cast<const Vec*>(row + head);
  Vec* out = reinterpret_cast<Vec*>(grad_row + head);
  const int64_t num_vectors = (vocab - head) / N;
  if (num_vectors > 0) {
    expect_vector_aligned(in);
    expect_vector_aligned(out);
  }
CGRPO_UNROLL_N(2)
  for (int64_t i = tid; i < num_vectors; i += THREADS) {
    const Vec v = in[i];
    Vec g;
    const int64_t j0 = head + i * N;
CGRPO_UNROLL
    for (int k = 0; k < N; ++k) g.v[k] = gradient_element(v.v[k], j0 + k, target, sm, a, b, inv_temperature, overflow);
    out[i] = g;
  }
  for (int64_t j = head + num_vectors * N + tid; j < vocab; j += THREADS)
    grad_row[j] = gradient_element(row[j], j, target, sm, a, b, inv_temperature, overflow);
  return overflow;
}

// Sweep 2, called by all threads of the block. A row with an entry that overflowed Logit is
// written again as zeros (the rule for every flagged row) and true is returned to every thread;
// the caller flags it. Costs one barrier (__syncthreads_or) per row.
template <typename Logit, int THREADS>
__device__ bool block_row_gradient(const Logit* row, Logit* grad_row, int64_t vocab, int32_t target,
                                   const RowSoftmax& sm, float a, float b, float inv_temperature) {
  const bool overflow =
      thread_row_gradient<Logit, THREADS>(row, grad_row, vocab, target, sm, a, b, inv_temperature, threadIdx.x);
  // Every thread has written its own entries before any zeroing starts: the barrier orders them.
  if (__syncthreads_or(overflow ? 1 : 0) == 0) return false;
  thread_row_fill_zero<Logit, THREADS>(grad_row, vocab, threadIdx.x);
  return true;
}

}  // namespace cgrpo::cuda
