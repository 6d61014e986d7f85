// cgrpo/token_math.hpp: the per-token math of MATH.md, written once.
// Every function is CGRPO_HD: the CPU path and the CUDA kernels call this same code.
#pragma once

#include <math.h>

#include "cgrpo/config.hpp"
#include "cgrpo/macros.hpp"

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

// d f(p) / d log p = gamma * p / (p + gamma)^2
template <typename Real>
CGRPO_HD Real refinement_shaping_dlogp(Real p, Real gamma) {
  const Real d = p + gamma;
  return gamma * p / (d * d);
}

// ---------------------------------------------------------------------------
// One token's policy-gradient term l_t and d l_t / d logp_t.

template <typename Real>
struct PolicyTerm {
  Real loss;          // l_t
  Real dloss_dlogp;   // d l_t / d logp_t (0 where a clipped branch is selected)
  Real ratio;         // r_t (or s_i) for initial tokens, p_t for refinement tokens
  bool clipped;       // pg2 > pg1 (pg_clipfrac)
  bool clipped_lower; // A < 0 and max(pg1, pg2) > -A c (pg_clipfrac_lower, dual clip only)
};

// Initial (on-policy) token. `log_ratio` is logp_t - old_t for token-level
// clipping, or the sequence's mean log-ratio for GSPO; in both cases
// d ratio / d logp_t = ratio (GSPO's stop-gradient form, as in verl).
// The log-ratio is clamped to [-max_abs_log_ratio, max_abs_log_ratio] before
// exp, as verl does; the clamp passes no gradient outside that range.
template <typename Real>
CGRPO_HD PolicyTerm<Real> on_policy_term(Real log_ratio, Real advantage,
                                         const TokenLossParams<Real>& p) {
  const Real clamped = math::clamp(log_ratio, -p.max_abs_log_ratio, p.max_abs_log_ratio);
  const Real r = math::exp(clamped);
  const Real dr = (clamped == log_ratio) ? r : Real(0);
  PolicyTerm<Real> t{};
  t.ratio = r;
  const Real pg1 = -advantage * r;
  if (p.clip_mode == static_cast<int>(ClipMode::none)) {
    t.loss = pg1;
    t.dloss_dlogp = -advantage * dr;
    return t;
  }
  const Real pg2 = -advantage * math::clamp(r, p.clip_low, p.clip_high);
  t.clipped = pg2 > pg1;
  // max(pg1, pg2): pg1 carries the gradient when it is selected; inside the
  // clip range both branches are equal and both carry -A dr (autograd's tie rule).
  t.loss = t.clipped ? pg2 : pg1;
  t.dloss_dlogp = t.clipped ? Real(0) : -advantage * dr;
  if (p.dual_clip && advantage < Real(0)) {
    const Real pg3 = -advantage * p.dual_clip_c;
    t.clipped_lower = t.loss > pg3;
    if (t.clipped_lower) {
      t.loss = pg3;
      t.dloss_dlogp = Real(0);
    }
  }
  return t;
}

// Refinement token: l_t = -A f(p_t), p_t = exp(logp_t); no ratio, no clipping.
template <typename Real>
CGRPO_HD PolicyTerm<Real> refinement_term(Real logp, Real advantage,
                                          const TokenLossParams<Real>& p) {
  const Real prob = math::exp(logp);
  PolicyTerm<Real> t{};
  t.ratio = prob;
  t.loss = -advantage * refinement_shaping(prob, p.gamma);
  t.dloss_dlogp = -advantage * refinement_shaping_dlogp(prob, p.gamma);
  return t;
}

// ---------------------------------------------------------------------------
// KL estimators of the policy against the reference (MATH.md, verl's kl_penalty).

template <typename Real>
struct KlTerm {
  Real value;
  Real dvalue_dlogp;
};

template <typename Real>
CGRPO_HD KlTerm<Real> kl_term(int estimator, Real logp, Real ref_logp) {
  const Real diff = logp - ref_logp;
  KlTerm<Real> k{Real(0), Real(0)};
  switch (estimator) {
    case static_cast<int>(KlEstimator::k1):
      k.value = diff;
      k.dvalue_dlogp = Real(1);
      break;
    case static_cast<int>(KlEstimator::abs):
      k.value = math::abs(diff);
      k.dvalue_dlogp = diff > Real(0) ? Real(1) : (diff < Real(0) ? Real(-1) : Real(0));
      break;
    case static_cast<int>(KlEstimator::k2):
      k.value = Real(0.5) * diff * diff;
      k.dvalue_dlogp = diff;
      break;
    case static_cast<int>(KlEstimator::k3): {
      const Real d = -diff;  // ref - logp
      const Real ed = math::exp(d);
      const Real raw = ed - d - Real(1);
      k.value = math::clamp(raw, Real(-10), Real(10));
      // d raw / d logp = 1 - e^d; the clamp passes gradient only inside [-10, 10].
      k.dvalue_dlogp = (raw <= Real(10) && raw >= Real(-10)) ? Real(1) - ed : Real(0);
      break;
    }
    default:
      break;
  }
  return k;
}

// ---------------------------------------------------------------------------
// Everything one token contributes to J and to the backward pass.

template <typename Real>
struct TokenInputs {
  Real logp;         // log softmax(z / tau)[y]
  Real entropy;      // H_t
  Real old_logp;     // sampling policy (initial tokens)
  Real ref_logp;     // reference policy (when KL is on)
  Real advantage;    // A of the token's response
  Real seq_log_ratio;// GSPO: mean (logp - old) over the sequence; unused otherwise
  Real w_pg, w_entropy, w_kl;  // aggregation weights of the three terms (mask included)
  bool refinement;   // kind: refinement (shaping) or initial (ratio)
};

template <typename Real>
struct TokenResult {
  PolicyTerm<Real> policy;  // unweighted l_t, ratio and clip flags
  Real kl;                  // unweighted KL_t (0 when KL is off)
  Real dJ_dlogp;            // a_t = w_pg dl/dlogp + beta w_kl dKL/dlogp
  Real dJ_dentropy;         // b_t = -c_H w_entropy
  Real loss;                // this token's contribution to J
};

template <typename Real>
CGRPO_HD TokenResult<Real> token_loss(const TokenInputs<Real>& in, const TokenLossParams<Real>& p) {
  TokenResult<Real> r{};
  if (in.refinement) {
    r.policy = refinement_term(in.logp, in.advantage, p);
  } else {
    const Real log_ratio = p.clip_mode == static_cast<int>(ClipMode::sequence)
                               ? in.seq_log_ratio
                               : in.logp - in.old_logp;
    r.policy = on_policy_term(log_ratio, in.advantage, p);
  }
  r.dJ_dlogp = in.w_pg * r.policy.dloss_dlogp;
  r.loss = in.w_pg * r.policy.loss - p.entropy_coef * in.w_entropy * in.entropy;
  if (p.kl_estimator != static_cast<int>(KlEstimator::none)) {
    const KlTerm<Real> k = kl_term(p.kl_estimator, in.logp, in.ref_logp);
    r.kl = k.value;
    r.loss += p.kl_coef * in.w_kl * k.value;
    r.dJ_dlogp += p.kl_coef * in.w_kl * k.dvalue_dlogp;
  }
  r.dJ_dentropy = -p.entropy_coef * in.w_entropy;
  return r;
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
