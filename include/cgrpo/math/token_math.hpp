// cgrpo/math/token_math.hpp: the per-token math of MATH.md, written once.
// Every function is CGRPO_HD: the CPU path and the CUDA kernels call this same code.
#pragma once

#include <math.h>

#include "cgrpo/base/macros.hpp"

namespace cgrpo {

// Precision-overloaded math that compiles for host and device alike.
namespace math {
CGRPO_HD float exp(float x) { return ::expf(x); }
CGRPO_HD double exp(double x) { return ::exp(x); }
CGRPO_HD float log(float x) { return ::logf(x); }
CGRPO_HD double log(double x) { return ::log(x); }
CGRPO_HD float abs(float x) { return ::fabsf(x); }
CGRPO_HD double abs(double x) { return ::fabs(x); }
template <typename Real> CGRPO_HD Real min(Real a, Real b) { return b < a ? b : a; }
template <typename Real> CGRPO_HD Real max(Real a, Real b) { return a < b ? b : a; }
template <typename Real> CGRPO_HD Real clamp(Real x, Real lo, Real hi) { return min(max(x, lo), hi); }
}  // namespace math

// ---------------------------------------------------------------------------
// Refinement shaping f(p) = p / (p + gamma) and its derivative with respect to log p.

template <typename Real>
CGRPO_HD Real refinement_shaping(Real p, Real gamma) {
  return p / (p + gamma);
}

// d f(p) / d log p = gamma * p / (p + gamma)^2, formed as (p / d) (gamma / d) so that a tiny
// d = p + gamma is never squared (gamma = p = 1e-30 in float would give 0 / 0).
template <typename Real>
CGRPO_HD Real refinement_shaping_dlogp(Real p, Real gamma) {
  const Real d = p + gamma;
  return (p / d) * (gamma / d);
}

// ---------------------------------------------------------------------------
// Softmax statistics of one row, merged online (running max, sum of exp and
// sum of exp times the shifted logit), so that one sweep gives lse and H.

template <typename Real>
struct RowStats {
  Real max;        // M = max_j u_j, or a reference point within rounding of it (the CPU's AVX
                   // sweeps use max z * t rounded to float): lse = M + log S and H hold for any M
  Real sum_exp;    // S = sum_j exp(u_j - M)
  Real sum_exp_u;  // Q = sum_j exp(u_j - M) (u_j - M)
};

template <typename Real>
CGRPO_HD RowStats<Real> row_stats_identity() {
  return RowStats<Real>{-INFINITY, Real(0), Real(0)};
}

// Adds one (already temperature-scaled) logit u. -inf contributes nothing.
template <typename Real>
CGRPO_HD RowStats<Real> row_stats_push(RowStats<Real> s, Real u) {
  if (u == -INFINITY) return s;
  if (u > s.max) {
    if (s.sum_exp > Real(0)) {  // rescale what was summed against the old max
      const Real shift = s.max - u;  // < 0
      const Real scale = math::exp(shift);
      // exp(shift) == 0: the old part is nothing next to u (and shift * S may be -inf: 0 * -inf).
      s.sum_exp_u = scale == Real(0) ? Real(0) * s.sum_exp_u : scale * (s.sum_exp_u + shift * s.sum_exp);
      s.sum_exp = scale * s.sum_exp;
    }
    s.max = u;
  }
  const Real d = u - s.max;
  const Real e = math::exp(d);
  s.sum_exp += e;
  if (e > Real(0)) s.sum_exp_u += e * d;  // d may be -inf (u and max of opposite signs near the max)
  return s;
}

// Merges the statistics of two disjoint parts of a row.
template <typename Real>
CGRPO_HD RowStats<Real> row_stats_merge(RowStats<Real> a, RowStats<Real> b) {
  if (b.sum_exp == Real(0)) return a;
  if (a.sum_exp == Real(0)) return b;
  if (b.max > a.max) {
    RowStats<Real> t = a;
    a = b;
    b = t;
  }
  const Real shift = b.max - a.max;  // <= 0
  const Real scale = math::exp(shift);
  // exp(shift) == 0 (shift -inf or far below the range: maxima of opposite signs near the
  // dtype's max): b adds nothing, and scale * (shift * S_b) would be 0 * -inf. NaN in b's
  // sums still reaches a's.
  if (scale == Real(0)) {
    a.sum_exp_u += Real(0) * b.sum_exp_u;
    a.sum_exp += Real(0) * b.sum_exp;
    return a;
  }
  a.sum_exp_u += scale * (b.sum_exp_u + shift * b.sum_exp);
  a.sum_exp += scale * b.sum_exp;
  return a;
}

// Re-expresses statistics taken against their own max against `global_max` (>= s.max),
// so that the sums of several parts (vocabulary shards) can be added with a plain SUM.
template <typename Real>
CGRPO_HD RowStats<Real> row_stats_rebase(const RowStats<Real>& s, Real global_max) {
  if (s.sum_exp == Real(0)) return RowStats<Real>{global_max, Real(0), Real(0)};
  const Real shift = s.max - global_max;  // <= 0
  const Real scale = math::exp(shift);
  if (scale == Real(0))  // as in row_stats_merge: nothing left of s, and no 0 * -inf
    return RowStats<Real>{global_max, Real(0) * s.sum_exp, Real(0) * s.sum_exp_u};
  return RowStats<Real>{global_max, scale * s.sum_exp, scale * (s.sum_exp_u + shift * s.sum_exp)};
}

// lse = M + log S
template <typename Real>
CGRPO_HD Real row_logsumexp(const RowStats<Real>& s) {
  return s.max + math::log(s.sum_exp);
}

// H = lse - sum_j p_j u_j = log S - Q / S
template <typename Real>
CGRPO_HD Real row_entropy(const RowStats<Real>& s) {
  return math::log(s.sum_exp) - s.sum_exp_u / s.sum_exp;
}

// A row is usable when its max and sums are finite (no NaN, no +inf, not all -inf).
template <typename Real>
CGRPO_HD bool row_stats_finite(const RowStats<Real>& s) {
  return isfinite(s.max) && isfinite(s.sum_exp) && isfinite(s.sum_exp_u) && s.sum_exp > Real(0);
}

// ---------------------------------------------------------------------------
// dJ/dz_j for one vocabulary entry of one row (MATH.md):
//   ( a (onehot(y)_j - p_j) - b p_j (log p_j + H) ) / tau,  log p_j = u_j - lse.
// p_j = 0 (u_j = -inf) gives exactly 0 from the entropy part.
template <typename Real>
CGRPO_HD Real logit_gradient(Real u, bool is_target, Real lse, Real entropy, Real a, Real b,
                             Real inv_temperature) {
  const Real logp = u - lse;
  const Real prob = math::exp(logp);
  const Real entropy_part = prob > Real(0) ? b * prob * (logp + entropy) : Real(0);
  return ((is_target ? a : Real(0)) - a * prob - entropy_part) * inv_temperature;
}

}  // namespace cgrpo
