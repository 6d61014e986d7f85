// cgrpo/cpu/row_sweeps.hpp: the two sweeps over one logits row: AVX-512 or AVX2 kernels
// for float (chosen at run time), Eigen otherwise. Sweep 1 reads the row once for lse
// and H; sweep 2 reads it again and writes dJ/dz. One exp per entry and sweep.
#pragma once

#include <Eigen/Core>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
// The AVX-512 and AVX2 float paths are compiled whenever the compiler is GCC or Clang on
// x86-64 (target attributes, no -march needed) and chosen at run time from the CPU's
// features; nvcc's host pass and other compilers get the Eigen path only.
#if !defined(__CUDACC__) && defined(__GNUC__) && defined(__x86_64__)
#define CGRPO_CPU_AVX512 1
#define CGRPO_TARGET_AVX512 __attribute__((target("avx512f")))
#define CGRPO_TARGET_AVX2 __attribute__((target("avx2,fma")))
#include <immintrin.h>
#endif

#include "cgrpo/math/token_math.hpp"

namespace cgrpo::cpu {

// Rows are processed in chunks that stay in L1 between the max and the exp passes,
// so each sweep moves the row through memory once.
constexpr int64_t kChunk = 2048;

// Gradients of at least this many bytes (twice a 32 MB L3) would not stay in cache anyway.
constexpr double kStreamBytes = 64.0 * 1024 * 1024;

// Exponents below this floor are clamped: exp of it is still a normal number
// (so -inf logits contribute ~0 and e * (u - M) stays finite).
template <typename Real> constexpr Real exp_floor();
template <> constexpr float exp_floor<float>() { return -87.0f; }
template <> constexpr double exp_floor<double>() { return -708.0; }

template <typename Real>
using ArrayMap = Eigen::Map<Eigen::Array<Real, Eigen::Dynamic, 1>>;
template <typename Real>
using ConstArrayMap = Eigen::Map<const Eigen::Array<Real, Eigen::Dynamic, 1>>;

// The softmax of one row u = z / tau, kept against the row's largest logit so that no
// quantity of the size of u is ever rounded (u reaches FLT_MAX * 1e4 at tau = 1e-4):
//   lse = pivot / tau + lse_rel,  lse_rel = rel.max + log S,  H = log S - Q / S,
//   log p_j = (z_j - pivot) / tau - lse_rel.
// rel holds S = sum_j exp(u_j - R) and Q = sum_j exp(u_j - R)(u_j - R) against a reference
// point R = pivot / tau + rel.max; rel.max is 0 where the sweep shifted exactly, and at most
// 1/2 where the AVX sweeps took R = max z * (1/tau in float) rounded to float. (The float
// sweeps scale u_j - R = (z_j - pivot) t - rel.max with t = 1/tau in float: its rounding,
// 6e-8 relative, reaches only these shifted values, never pivot / tau.)
template <typename Real>
struct RowSoftmaxStats {
  Real pivot;            // max_j z_j; NaN when the row holds NaN or +inf; -inf when every entry is -inf
  RowStats<double> rel;  // S, Q against R (above); rel.max = R - pivot / tau
};

template <typename Real>
RowSoftmaxStats<Real> row_softmax_bad() {
  return RowSoftmaxStats<Real>{std::numeric_limits<Real>::quiet_NaN(), RowStats<double>{NAN, NAN, NAN}};
}

// A row is usable when it has no NaN / +inf, not every entry is -inf, and its sums are finite.
template <typename Real>
bool row_softmax_finite(const RowSoftmaxStats<Real>& s) {
  return std::isfinite(s.pivot) && row_stats_finite(s.rel);
}

// lse - pivot / tau.
template <typename Real>
double row_lse_rel(const RowSoftmaxStats<Real>& s) {
  return row_logsumexp(s.rel);
}

// (z - pivot) / tau in double, for one logit (the target's). The difference of two float logits
// is exact in double; two double logits of opposite signs near DBL_MAX would overflow it, so
// then both are halved first.
template <typename Real>
double shifted_logit(Real z, Real pivot, double inv_temperature) {
  const double d = static_cast<double>(z) - static_cast<double>(pivot);
  if (std::isfinite(d) || !std::isfinite(z)) return d * inv_temperature;
  return (0.5 * static_cast<double>(z) - 0.5 * static_cast<double>(pivot)) * inv_temperature * 2.0;
}

// The float kernels multiply by 1 / tau rounded to float. Usable when it is a float and not
// below 2^-60 (there, (z - pivot) overflowing float to -inf means a true (z - pivot) / tau
// below -3e20, clamped either way); outside that range the float rows are swept in double.
inline bool float_scale_ok(double inv_temperature) {
  return inv_temperature >= 0x1p-60 && inv_temperature <= static_cast<double>(FLT_MAX);
}

// Re-expresses the sums S, Q against a reference point `shift` (<= 0) below the new one. When
// exp(shift) underflows, what was summed is nothing next to the new maximum (and shift * S could
// be -inf, 0 * -inf = NaN): both become 0, except that a NaN stays NaN.
inline void rescale_sums(double shift, double& sum_exp, double& sum_exp_d) {
  const double scale = std::exp(shift);
  if (scale == 0.0) {
    sum_exp *= 0.0;
    sum_exp_d *= 0.0;
    return;
  }
  sum_exp_d = scale * (sum_exp_d + shift * sum_exp);
  sum_exp *= scale;
}

// Sweep 1 on the Eigen path: softmax statistics of u = z / tau with the exact shift
// d = (z - running max z) * (1/tau in Compute), clamped at exp_floor, so the max entry has
// d = 0 and every d <= 0. exp is evaluated once per entry into an L1-resident chunk buffer,
// then both sums read it; chunk sums are taken in Compute and accumulated in double.
// Compute is Real, or double for float rows whose 1 / tau is outside float_scale_ok.
template <typename Real, typename Compute = Real>
RowSoftmaxStats<Real> row_softmax_generic(const Real* z, int64_t vocab, double inv_temperature) {
  const Compute t = static_cast<Compute>(inv_temperature);
  Real m = -std::numeric_limits<Real>::infinity();
  double sum_exp = 0, sum_exp_d = 0;
  Eigen::Array<Compute, kChunk, 1> e_buf;
  for (int64_t c0 = 0; c0 < vocab; c0 += kChunk) {
    const int64_t n = vocab - c0 < kChunk ? vocab - c0 : kChunk;
    ConstArrayMap<Real> x(z + c0, n);
    const Real cm = x.maxCoeff();
    if (cm != cm || cm == std::numeric_limits<Real>::infinity()) return row_softmax_bad<Real>();
    if (cm == -std::numeric_limits<Real>::infinity()) continue;  // an all -inf chunk contributes nothing
    if (cm > m) {
      if (sum_exp > 0) rescale_sums((static_cast<double>(m) - static_cast<double>(cm)) * inv_temperature, sum_exp, sum_exp_d);
      m = cm;
    }
    // z - m overflowing to -inf (logits of opposite signs near the dtype's max) is clamped like
    // any d below the floor; a NaN entry that maxCoeff skipped passes max() and reaches the sums.
    const auto d = ((x.template cast<Compute>() - static_cast<Compute>(m)) * t).max(exp_floor<Compute>());
    auto e = e_buf.head(n);
    e = d.exp();
    sum_exp += static_cast<double>(e.sum());
    sum_exp_d += static_cast<double>((e * d).sum());
  }
  if (m == -std::numeric_limits<Real>::infinity()) return RowSoftmaxStats<Real>{m, row_stats_identity<double>()};
  return RowSoftmaxStats<Real>{m, RowStats<double>{0.0, sum_exp, sum_exp_d}};
}

// g_j = ( a (onehot(y)_j - p_j) - b p_j (log p_j + H) ) / tau for the whole row
// (cgrpo::logit_gradient, vectorised), log p_j = (z_j - pivot) / tau - lse (lse relative to
// pivot / tau, as RowSoftmaxStats has it): shift, then scale. target < 0: no one-hot term.
// g may be z (in place).
template <typename Real, typename Compute = Real>
void row_logit_gradient_generic(const Real* z, int64_t vocab, double inv_temperature, int32_t target, Real pivot,
                                double lse, double entropy, double a, double b, Real* g) {
  ArrayMap<Real> out(g, vocab);
  if (a == 0.0 && b == 0.0) {  // masked rows: exactly zero without touching the logits
    out.setZero();
    return;
  }
  const Compute t = static_cast<Compute>(inv_temperature), c = static_cast<Compute>(pivot);
  const Compute lse_c = static_cast<Compute>(lse), h = static_cast<Compute>(entropy);
  // a / tau and b / tau in double, then rounded once: every value formed below is then bounded
  // as row_gradient_in_range says (a alone may exceed FLT_MAX where a / tau does not).
  const Compute at = static_cast<Compute>(a * inv_temperature), bt = static_cast<Compute>(b * inv_temperature);
  // Each chunk is evaluated into an aligned L1 buffer, then copied: Eigen peels a few
  // scalar (libm exp) entries to align its destination, and evaluating straight into g
  // made the bits depend on g's address (in place and a separate buffer differed).
  Eigen::Array<Compute, kChunk, 1> o_buf;
  for (int64_t c0 = 0; c0 < vocab; c0 += kChunk) {
    const int64_t n = vocab - c0 < kChunk ? vocab - c0 : kChunk;
    ConstArrayMap<Real> x(z + c0, n);
    const auto logp = ((x.template cast<Compute>() - c) * t - lse_c).max(exp_floor<Compute>());
    o_buf.head(n) = -((at + bt * (logp + h)) * logp.exp());
    ArrayMap<Real>(g + c0, n) = o_buf.head(n).template cast<Real>();
  }
  if (target >= 0) g[target] += static_cast<Real>(a * inv_temperature);
}

// The Eigen sweeps with the arithmetic the row needs: Real, or double for a float row whose
// 1 / tau is not a usable float. The AVX kernels fall back to these for the rare rows they
// do not take (|max z / tau| >= 2^24).
template <typename Real>
RowSoftmaxStats<Real> row_softmax_exact_shift(const Real* z, int64_t vocab, double inv_temperature) {
  if (std::is_same<Real, float>::value && !float_scale_ok(inv_temperature))
    return row_softmax_generic<Real, double>(z, vocab, inv_temperature);
  return row_softmax_generic<Real, Real>(z, vocab, inv_temperature);
}
template <typename Real>
void row_logit_gradient_exact_shift(const Real* z, int64_t vocab, double inv_temperature, int32_t target, Real pivot,
                                    double lse, double entropy, double a, double b, Real* g) {
  if (std::is_same<Real, float>::value && !float_scale_ok(inv_temperature))
    return row_logit_gradient_generic<Real, double>(z, vocab, inv_temperature, target, pivot, lse, entropy, a, b, g);
  row_logit_gradient_generic<Real, Real>(z, vocab, inv_temperature, target, pivot, lse, entropy, a, b, g);
}

// Whether a row's gradient fits Real: every entry and every intermediate the sweeps form is
// bounded by (2 |a| + |b| (H - exp_floor + 3)) / tau (|a (onehot - p)| <= |a|, the target's
// + a / tau, and |a + b (log p + H)| with log p clamped at exp_floor); rows above a quarter
// of Real's largest value are refused rather than written as inf. NaN a or b: refused too.
template <typename Real>
bool row_gradient_in_range(double inv_temperature, double entropy, double a, double b) {
  const double bound =
      (2.0 * std::fabs(a) + std::fabs(b) * (entropy - static_cast<double>(exp_floor<Real>()) + 3.0)) * inv_temperature;
  return bound <= 0.25 * static_cast<double>(std::numeric_limits<Real>::max());
}

// The AVX sweeps take d = z t - ref in one FMA against ref = max z * t rounded to float, whose
// rounding error (carried in RowSoftmaxStats::rel.max) is at most half an ulp of ref: below this
// limit at most 1/2, so no exp over- or underflows by it. Rows at or above it are shifted exactly.
constexpr double kFmaReferenceLimit = 0x1p24;

#if defined(CGRPO_CPU_AVX512)
// GCC 12 warns inside its own avx512fintrin.h (the undefined pass-through operand of
// masked max/min and of the reductions' extracts); the operand is never read. Silence it for
// these kernels only.
#if !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
// Sweep 1's driver over one float row, shared by the AVX-512 and AVX2 kernel sets: Kernels
// gives the set's chunk size, max and sums. Inlined into each set's target-attributed
// row_softmax, so that the chunk kernels inline too (called out of line per chunk, the
// sweep ran 14% slower). The row's statistics against a running max: a
// chunk whose max exceeds it rescales the double sums (one exp, as row_stats_merge does); every
// other chunk (nearly all, past the first few) adds its sums with no exp and no merge.
// The sums are taken against ref = (running max m of z) * t rounded to float (t: 1/tau in
// float), so each entry costs one FMA, d = z t - ref; ref - m t (exact in double: a product of
// two floats) goes to RowSoftmaxStats::rel.max. Returns false, having written nothing, for a row
// whose |max z t| reaches kFmaReferenceLimit: the caller sweeps it again with the exact shift.
template <typename Kernels>
__attribute__((always_inline)) inline bool chunked_row_stats(const float* z, int64_t vocab, float inv_temperature,
                                                             RowSoftmaxStats<float>& out) {
  constexpr int64_t kChunkFloats = Kernels::kChunk;
  float m = -INFINITY, ref = -INFINITY;
  double sum_exp = 0, sum_exp_d = 0;
  for (int64_t c0 = 0; c0 < vocab; c0 += kChunkFloats) {
    const int64_t n = vocab - c0 < kChunkFloats ? vocab - c0 : kChunkFloats;
    const float cm = Kernels::chunk_max(z + c0, n);
    if (cm != cm) {  // NaN / +inf: flagged, no need to read on
      out = row_softmax_bad<float>();
      return true;
    }
    if (cm == -INFINITY) continue;  // an all -inf chunk contributes nothing
    if (cm > m) {
      const float new_ref = cm * inv_temperature;  // >= ref: rounding is monotone
      if (!(std::fabs(new_ref) < kFmaReferenceLimit)) return false;
      if (sum_exp > 0) rescale_sums(static_cast<double>(ref) - static_cast<double>(new_ref), sum_exp, sum_exp_d);
      m = cm;
      ref = new_ref;
    }
    const int64_t next_n = vocab - c0 - n < kChunkFloats ? vocab - c0 - n : kChunkFloats;
    Kernels::chunk_sums(z + c0, n, inv_temperature, ref, z + c0 + n, next_n, sum_exp, sum_exp_d);
  }
  if (m == -INFINITY) {  // every entry -inf: flagged by the caller
    out = RowSoftmaxStats<float>{m, row_stats_identity<double>()};
    return true;
  }
  out = RowSoftmaxStats<float>{
      m, RowStats<double>{static_cast<double>(ref) - static_cast<double>(m) * static_cast<double>(inv_temperature),
                          sum_exp, sum_exp_d}};
  return true;
}

// The gradient sweep's per-row constants. log p = L - lo with L = z t - lse_hi (one FMA, z t
// exact inside it, t = 1/tau in float) and lse_hi + lo = pivot t + lse_rel (so that pivot t,
// the row's scale, cancels against z t at the same t; |pivot t| < kFmaReferenceLimit keeps
// |lo| <= 1/2). lo is folded into the constants instead of subtracted per entry:
// p (alpha + beta log p) = exp(L) (alpha' + beta' L), alpha' = e^-lo (alpha - beta lo),
// beta' = e^-lo beta, alpha = -(a + b H) / tau, beta = -b / tau (1/tau in double).
struct GradientConstants {
  float lse_hi, alpha, beta;
};
inline GradientConstants gradient_constants(double inv_temperature, double lse, double entropy, double a, double b) {
  const float lse_hi = static_cast<float>(lse);
  const double lo = lse - static_cast<double>(lse_hi), scale = std::exp(-lo);
  const double alpha = -(a + b * entropy) * inv_temperature;
  const double beta = -b * inv_temperature;
  return {lse_hi, static_cast<float>(scale * (alpha - beta * lo)), static_cast<float>(scale * beta)};
}

// The rows the AVX gradient sweeps take: 1 / tau a usable float and |pivot t| below the FMA
// limit. pivot t is exact in double.
inline bool fma_gradient_row(double inv_temperature, float pivot, double& pivot_t) {
  if (!float_scale_ok(inv_temperature)) return false;  // (and 1 / tau is not cast to float beyond its range)
  pivot_t = static_cast<double>(pivot) * static_cast<double>(static_cast<float>(inv_temperature));
  return std::fabs(pivot_t) < kFmaReferenceLimit;
}

// Float rows with AVX-512 (the native preset): 16 lanes, one exp per entry and sweep,
// masked tails, and streaming stores for a large separate gradient buffer (no
// read-for-ownership: 4 bytes written per entry instead of 4 read + 4 written).
namespace avx512 {

// True when the CPU running us has AVX-512F (always, when compiled for it).
inline bool available() {
#if defined(__AVX512F__)
  return true;
#else
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return has;
#endif
}

// Sweep 1's chunk: 4 KB of floats. Smaller than the Eigen path's because the prefetch of
// the next chunk then runs closer ahead of its use (measured: 1024 beat 512, 2048, 4096
// and 8192 for rows read from memory).
constexpr int64_t kAvx512Chunk = 1024;

// Sweep 2 prefetches the logits this many floats (4 KB) ahead of the entry it computes.
constexpr int64_t kGradientPrefetch = 1024;

// exp(d) for d in [exp_floor, 0] or NaN (propagated). d = n ln2 + r with n = round(d / ln2),
// |r| <= ln2 / 2 (one FMA), exp(r) = 1 + r + r^2 P(r) with P of degree 4 fitted at the
// Chebyshev nodes (relative error 1e-8 before float rounding, so about 1 ulp like Eigen's
// pexp), evaluated by Horner, then 2^n by vscalefps. 8 multiply/FMA per 16 entries
// against Eigen's 10: the FMA ports bound sweep 1 once its reads are prefetched.
CGRPO_TARGET_AVX512 inline __m512 exp_nonpositive(__m512 d) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(d, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.6931471805599453f), d);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.392617589e-03f), r, _mm512_set1_ps(8.363173343e-03f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166655615e-02f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666657776e-01f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  const __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

CGRPO_TARGET_AVX512 inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

// max of the logits z (not yet scaled) over one chunk (n <= kAvx512Chunk entries), read from
// memory (or from L1, where the previous chunk prefetched it). NaN when the chunk holds NaN
// or +inf, -inf when every entry is -inf.
CGRPO_TARGET_AVX512 inline float chunk_max(const float* z, int64_t n) {
  __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    m0 = _mm512_max_ps(m0, _mm512_loadu_ps(z + i));
    m1 = _mm512_max_ps(m1, _mm512_loadu_ps(z + i + 16));
  }
  for (; i < n; i += 16)
    m0 = _mm512_max_ps(m0, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask(n - i), z + i));
  const float m = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
  if (std::isfinite(m)) return m;  // a NaN vmaxps let through still reaches the sums
  if (m == -INFINITY) {  // all -inf, unless vmaxps dropped a NaN: look at every entry
    for (int64_t j = 0; j < n; ++j)
      if (!(z[j] == -INFINITY)) return NAN;
    return -INFINITY;
  }
  return NAN;  // +inf or NaN
}

// Sums over one chunk of e = exp(d) and e d, d = z * inv_temperature - ref with one rounding
// (FMA), ref = the running max of z times inv_temperature rounded to float. d <= half an ulp
// of ref (d = ref's own rounding error at the max entry; exp_nonpositive takes it). next / next_n: the following chunk of the row, whose lines are prefetched
// while this chunk's exps run from L1, so memory reads overlap the arithmetic (without
// it the sweep cost the sum of the two: 0.29 ns per entry against 0.14 from cache).
CGRPO_TARGET_AVX512 inline void chunk_sums(const float* z, int64_t n, float inv_temperature, float ref, const float* next,
                       int64_t next_n, double& sum_exp, double& sum_exp_d) {
  const __m512 vm = _mm512_set1_ps(ref), vt = _mm512_set1_ps(inv_temperature);
  const __m512 floor = _mm512_set1_ps(exp_floor<float>());
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, q0 = s0, q1 = s0;
  // vmaxps(floor, d) returns d when d is NaN: a NaN entry reaches the sums.
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    if (i < next_n) {  // two 64-byte lines of the next chunk per 32 entries of this one
      _mm_prefetch(reinterpret_cast<const char*>(next + i), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(next + i + 16), _MM_HINT_T0);
    }
    const __m512 d0 = _mm512_max_ps(floor, _mm512_fmsub_ps(_mm512_loadu_ps(z + i), vt, vm));
    const __m512 d1 = _mm512_max_ps(floor, _mm512_fmsub_ps(_mm512_loadu_ps(z + i + 16), vt, vm));
    const __m512 e0 = exp_nonpositive(d0), e1 = exp_nonpositive(d1);
    s0 = _mm512_add_ps(s0, e0);
    s1 = _mm512_add_ps(s1, e1);
    q0 = _mm512_fmadd_ps(e0, d0, q0);
    q1 = _mm512_fmadd_ps(e1, d1, q1);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 d = _mm512_maskz_mov_ps(k, _mm512_max_ps(floor, _mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, z + i), vt, vm)));
    const __m512 e = _mm512_maskz_mov_ps(k, exp_nonpositive(d));
    s0 = _mm512_add_ps(s0, e);
    q0 = _mm512_fmadd_ps(e, d, q0);
  }
  // Float sums over at most 32 entries per lane, then double across chunks.
  sum_exp += static_cast<double>(_mm512_reduce_add_ps(_mm512_add_ps(s0, s1)));
  sum_exp_d += static_cast<double>(_mm512_reduce_add_ps(_mm512_add_ps(q0, q1)));
}

struct Kernels {
  static constexpr int64_t kChunk = kAvx512Chunk;
  CGRPO_TARGET_AVX512 static float chunk_max(const float* z, int64_t n) { return avx512::chunk_max(z, n); }
  CGRPO_TARGET_AVX512 static void chunk_sums(const float* z, int64_t n, float t, float ref, const float* next,
                                             int64_t next_n, double& s, double& q) {
    avx512::chunk_sums(z, n, t, ref, next, next_n, s, q);
  }
};
// Sweep 1 over a float row; rows the FMA form does not take go to the Eigen path.
CGRPO_TARGET_AVX512 inline RowSoftmaxStats<float> row_softmax(const float* z, int64_t vocab, double inv_temperature) {
  RowSoftmaxStats<float> s;
  if (float_scale_ok(inv_temperature) && chunked_row_stats<Kernels>(z, vocab, static_cast<float>(inv_temperature), s))
    return s;
  return row_softmax_exact_shift(z, vocab, inv_temperature);
}

// g = exp(L) (alpha' + beta' L), L = z t - lse_hi (gradient_constants): the same value as
// cgrpo::logit_gradient without the target's + a / tau.
template <bool kStream>
CGRPO_TARGET_AVX512 inline void gradient_span(const float* z, int64_t n, __m512 vt, __m512 vlse, __m512 alpha, __m512 beta, float* g) {
  const __m512 floor = _mm512_set1_ps(exp_floor<float>());
  int64_t i = 0;
  if (kStream) {  // masked head up to the first 64-byte boundary of g: vmovntps needs it
    const int64_t head = static_cast<int64_t>(((64 - (reinterpret_cast<uintptr_t>(g) & 63)) & 63) / sizeof(float));
    if (head > 0 && reinterpret_cast<uintptr_t>(g) % sizeof(float) == 0) {
      const int64_t h = head < n ? head : n;
      const __mmask16 k = tail_mask(h);
      const __m512 lp = _mm512_max_ps(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, z), vt, vlse), floor);
      _mm512_mask_storeu_ps(g, k, _mm512_mul_ps(exp_nonpositive(lp), _mm512_fmadd_ps(beta, lp, alpha)));
      i = h;
    } else if (head > 0) {
      return gradient_span<false>(z, n, vt, vlse, alpha, beta, g);  // misaligned floats: no streaming
    }
  }
  for (; i + 16 <= n; i += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(z + i + kGradientPrefetch), _MM_HINT_T0);
    const __m512 lp = _mm512_max_ps(_mm512_fmsub_ps(_mm512_loadu_ps(z + i), vt, vlse), floor);
    const __m512 v = _mm512_mul_ps(exp_nonpositive(lp), _mm512_fmadd_ps(beta, lp, alpha));
    if (kStream)
      _mm512_stream_ps(g + i, v);
    else
      _mm512_storeu_ps(g + i, v);
  }
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 lp = _mm512_max_ps(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, z + i), vt, vlse), floor);
    _mm512_mask_storeu_ps(g + i, k, _mm512_mul_ps(exp_nonpositive(lp), _mm512_fmadd_ps(beta, lp, alpha)));
  }
}

// The row without the target's + a / tau (the caller adds it); lse relative to pivot / tau.
// Rows the FMA form does not take go to the Eigen path (no streaming stores there).
CGRPO_TARGET_AVX512 inline void row_logit_gradient(const float* z, int64_t vocab, double inv_temperature, float pivot,
                                                   double lse, double entropy, double a, double b, float* g, bool stream) {
  double pivot_t;
  if (!fma_gradient_row(inv_temperature, pivot, pivot_t))
    return row_logit_gradient_exact_shift(z, vocab, inv_temperature, -1, pivot, lse, entropy, a, b, g);
  const GradientConstants k = gradient_constants(inv_temperature, pivot_t + lse, entropy, a, b);
  const __m512 vt = _mm512_set1_ps(static_cast<float>(inv_temperature)), vlse = _mm512_set1_ps(k.lse_hi);
  const __m512 alpha = _mm512_set1_ps(k.alpha), beta = _mm512_set1_ps(k.beta);
  if (stream)
    gradient_span<true>(z, vocab, vt, vlse, alpha, beta, g);
  else
    gradient_span<false>(z, vocab, vt, vlse, alpha, beta, g);
}

}  // namespace avx512

// The same kernels with AVX2 + FMA (8 lanes) for x86-64 CPUs without AVX-512: masked
// loads and stores by vmaskmovps, 2^n built in the exponent bits instead of vscalefps.
namespace avx2 {

inline bool available() {
#if defined(__AVX2__) && defined(__FMA__)
  return true;
#else
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0 && __builtin_cpu_supports("fma") != 0;
  }();
  return has;
#endif
}

constexpr int64_t kChunkFloats = 1024;      // as avx512::kAvx512Chunk
constexpr int64_t kGradientPrefetch = 1024;  // as avx512::kGradientPrefetch

// exp(d) for d in [exp_floor, 0] or NaN: avx512::exp_nonpositive's reduction and
// polynomial; n >= -126, so 2^n = (n + 127) << 23 is a normal float. A NaN d makes y NaN.
CGRPO_TARGET_AVX2 inline __m256 exp_nonpositive(__m256 d) {
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(d, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.6931471805599453f), d);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(1.392617589e-03f), r, _mm256_set1_ps(8.363173343e-03f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166655615e-02f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666657776e-01f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  const __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
}

// Lanes [0, left) set (left may exceed 8).
CGRPO_TARGET_AVX2 inline __m256i tail_mask(int64_t left) {
  const int32_t l = left > 8 ? 8 : static_cast<int32_t>(left);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(l), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

CGRPO_TARGET_AVX2 inline float reduce_max(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

CGRPO_TARGET_AVX2 inline float reduce_add(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// As avx512::chunk_max.
CGRPO_TARGET_AVX2 inline float chunk_max(const float* z, int64_t n) {
  const __m256 minus_inf = _mm256_set1_ps(-INFINITY);
  __m256 m0 = minus_inf, m1 = m0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(z + i));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(z + i + 8));
  }
  for (; i < n; i += 8) {
    const __m256i k = tail_mask(n - i);
    m0 = _mm256_max_ps(m0, _mm256_blendv_ps(minus_inf, _mm256_maskload_ps(z + i, k), _mm256_castsi256_ps(k)));
  }
  const float m = reduce_max(_mm256_max_ps(m0, m1));
  if (std::isfinite(m)) return m;
  if (m == -INFINITY) {
    for (int64_t j = 0; j < n; ++j)
      if (!(z[j] == -INFINITY)) return NAN;
    return -INFINITY;
  }
  return NAN;
}

// As avx512::chunk_sums.
CGRPO_TARGET_AVX2 inline void chunk_sums(const float* z, int64_t n, float inv_temperature, float ref, const float* next,
                                         int64_t next_n, double& sum_exp, double& sum_exp_d) {
  const __m256 vm = _mm256_set1_ps(ref), vt = _mm256_set1_ps(inv_temperature);
  const __m256 floor = _mm256_set1_ps(exp_floor<float>());
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, q0 = s0, q1 = s0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    if (i < next_n) _mm_prefetch(reinterpret_cast<const char*>(next + i), _MM_HINT_T0);  // one line per 16 entries
    // vmaxps(floor, d) returns d when d is NaN: a NaN entry reaches the sums.
    const __m256 d0 = _mm256_max_ps(floor, _mm256_fmsub_ps(_mm256_loadu_ps(z + i), vt, vm));
    const __m256 d1 = _mm256_max_ps(floor, _mm256_fmsub_ps(_mm256_loadu_ps(z + i + 8), vt, vm));
    const __m256 e0 = exp_nonpositive(d0), e1 = exp_nonpositive(d1);
    s0 = _mm256_add_ps(s0, e0);
    s1 = _mm256_add_ps(s1, e1);
    q0 = _mm256_fmadd_ps(e0, d0, q0);
    q1 = _mm256_fmadd_ps(e1, d1, q1);
  }
  for (; i < n; i += 8) {
    const __m256 k = _mm256_castsi256_ps(tail_mask(n - i));
    const __m256 x = _mm256_maskload_ps(z + i, _mm256_castps_si256(k));
    const __m256 d = _mm256_and_ps(k, _mm256_max_ps(floor, _mm256_fmsub_ps(x, vt, vm)));
    const __m256 e = _mm256_and_ps(k, exp_nonpositive(d));
    s0 = _mm256_add_ps(s0, e);
    q0 = _mm256_fmadd_ps(e, d, q0);
  }
  sum_exp += static_cast<double>(reduce_add(_mm256_add_ps(s0, s1)));
  sum_exp_d += static_cast<double>(reduce_add(_mm256_add_ps(q0, q1)));
}

struct Kernels {
  static constexpr int64_t kChunk = kChunkFloats;
  CGRPO_TARGET_AVX2 static float chunk_max(const float* z, int64_t n) { return avx2::chunk_max(z, n); }
  CGRPO_TARGET_AVX2 static void chunk_sums(const float* z, int64_t n, float t, float ref, const float* next,
                                           int64_t next_n, double& s, double& q) {
    avx2::chunk_sums(z, n, t, ref, next, next_n, s, q);
  }
};
CGRPO_TARGET_AVX2 inline RowSoftmaxStats<float> row_softmax(const float* z, int64_t vocab, double inv_temperature) {
  RowSoftmaxStats<float> s;
  if (float_scale_ok(inv_temperature) && chunked_row_stats<Kernels>(z, vocab, static_cast<float>(inv_temperature), s))
    return s;
  return row_softmax_exact_shift(z, vocab, inv_temperature);
}

// As avx512::gradient_span (streaming needs 32-byte aligned stores).
template <bool kStream>
CGRPO_TARGET_AVX2 inline void gradient_span(const float* z, int64_t n, __m256 vt, __m256 vlse, __m256 alpha, __m256 beta,
                                            float* g) {
  const __m256 floor = _mm256_set1_ps(exp_floor<float>());
  int64_t i = 0;
  if (kStream) {
    const int64_t head = static_cast<int64_t>(((32 - (reinterpret_cast<uintptr_t>(g) & 31)) & 31) / sizeof(float));
    if (head > 0 && reinterpret_cast<uintptr_t>(g) % sizeof(float) == 0) {
      const int64_t h = head < n ? head : n;
      const __m256i k = tail_mask(h);
      const __m256 lp = _mm256_max_ps(_mm256_fmsub_ps(_mm256_maskload_ps(z, k), vt, vlse), floor);
      _mm256_maskstore_ps(g, k, _mm256_mul_ps(exp_nonpositive(lp), _mm256_fmadd_ps(beta, lp, alpha)));
      i = h;
    } else if (head > 0) {
      return gradient_span<false>(z, n, vt, vlse, alpha, beta, g);
    }
  }
  for (; i + 8 <= n; i += 8) {
    if ((i & 15) == 0) _mm_prefetch(reinterpret_cast<const char*>(z + i + kGradientPrefetch), _MM_HINT_T0);
    const __m256 lp = _mm256_max_ps(_mm256_fmsub_ps(_mm256_loadu_ps(z + i), vt, vlse), floor);
    const __m256 v = _mm256_mul_ps(exp_nonpositive(lp), _mm256_fmadd_ps(beta, lp, alpha));
    if (kStream)
      _mm256_stream_ps(g + i, v);
    else
      _mm256_storeu_ps(g + i, v);
  }
  if (i < n) {
    const __m256i k = tail_mask(n - i);
    const __m256 lp = _mm256_max_ps(_mm256_fmsub_ps(_mm256_maskload_ps(z + i, k), vt, vlse), floor);
    _mm256_maskstore_ps(g + i, k, _mm256_mul_ps(exp_nonpositive(lp), _mm256_fmadd_ps(beta, lp, alpha)));
  }
}

CGRPO_TARGET_AVX2 inline void row_logit_gradient(const float* z, int64_t vocab, double inv_temperature, float pivot,
                                                 double lse, double entropy, double a, double b, float* g, bool stream) {
  double pivot_t;
  if (!fma_gradient_row(inv_temperature, pivot, pivot_t))
    return row_logit_gradient_exact_shift(z, vocab, inv_temperature, -1, pivot, lse, entropy, a, b, g);
  const GradientConstants k = gradient_constants(inv_temperature, pivot_t + lse, entropy, a, b);
  const __m256 vt = _mm256_set1_ps(static_cast<float>(inv_temperature)), vlse = _mm256_set1_ps(k.lse_hi);
  const __m256 alpha = _mm256_set1_ps(k.alpha), beta = _mm256_set1_ps(k.beta);
  if (stream)
    gradient_span<true>(z, vocab, vt, vlse, alpha, beta, g);
  else
    gradient_span<false>(z, vocab, vt, vlse, alpha, beta, g);
}

}  // namespace avx2
#endif
#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// Sweep 1 over one row: AVX-512, else AVX2, kernel for float when the CPU has it; Eigen otherwise.
// inv_temperature is 1 / tau in double: no path rounds the row's scale, pivot / tau, to float.
template <typename Real>
RowSoftmaxStats<Real> row_softmax(const Real* z, int64_t vocab, double inv_temperature) {
#if defined(CGRPO_CPU_AVX512)
  if constexpr (std::is_same<Real, float>::value) {
    if (avx512::available()) return avx512::row_softmax(z, vocab, inv_temperature);
    if (avx2::available()) return avx2::row_softmax(z, vocab, inv_temperature);
  }
#endif
  return row_softmax_exact_shift(z, vocab, inv_temperature);
}

// The same statistics as RowStats of u = z / tau with max = pivot / tau + rel.max in double
// (the vocabulary-parallel loss exchanges these between ranks): exact to about 1e-16 |max u|,
// and non-finite where |max z / tau| overflows double.
template <typename Real>
RowStats<double> row_softmax_stats(const Real* z, int64_t vocab, double inv_temperature) {
  const RowSoftmaxStats<Real> s = row_softmax(z, vocab, inv_temperature);
  if (s.pivot != s.pivot) return RowStats<double>{NAN, NAN, NAN};
  if (s.pivot == -std::numeric_limits<Real>::infinity()) return row_stats_identity<double>();
  return RowStats<double>{static_cast<double>(s.pivot) * inv_temperature + s.rel.max, s.rel.sum_exp, s.rel.sum_exp_u};
}

// Sweep 2 over one row, log p_j = (z_j - pivot) / tau - lse. target < 0: the target is not in
// this row (a vocabulary shard without it: no one-hot term). stream: g is a separate buffer too
// large to stay in cache, so stores may bypass it (float with AVX only; the caller issues the
// fence). The caller has checked row_gradient_in_range.
template <typename Real>
void row_logit_gradient(const Real* z, int64_t vocab, double inv_temperature, int32_t target, Real pivot, double lse,
                        double entropy, double a, double b, Real* g, bool stream = false) {
  if (a == 0.0 && b == 0.0) {  // masked rows: exactly zero without touching the logits
    ArrayMap<Real>(g, vocab).setZero();
    return;
  }
#if defined(CGRPO_CPU_AVX512)
  if constexpr (std::is_same<Real, float>::value) {
    if (avx512::available()) {
      avx512::row_logit_gradient(z, vocab, inv_temperature, pivot, lse, entropy, a, b, g, stream);
      if (target >= 0) g[target] += static_cast<float>(a * inv_temperature);
      return;
    }
    if (avx2::available()) {
      avx2::row_logit_gradient(z, vocab, inv_temperature, pivot, lse, entropy, a, b, g, stream);
      if (target >= 0) g[target] += static_cast<float>(a * inv_temperature);
      return;
    }
  }
#endif
  (void)stream;
  row_logit_gradient_exact_shift(z, vocab, inv_temperature, target, pivot, lse, entropy, a, b, g);
}

// Makes streaming stores visible before another thread reads the gradient.
inline void stream_fence() {
#if defined(CGRPO_CPU_AVX512)
  _mm_sfence();  // SSE: every x86-64 CPU has it
#endif
}

}  // namespace cgrpo::cpu
