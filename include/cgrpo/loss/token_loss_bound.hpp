// cgrpo/loss/token_loss_bound.hpp: bounds on a token's |J_t| and |a_t| = |dJ/dlogp_t| over every log p its
// row can have, so that a pass writing as it goes can rule out token_loss's overflows before its first write.
#pragma once

#include <cmath>

#include "cgrpo/loss/config.hpp"
#include "cgrpo/loss/token_loss.hpp"

namespace cgrpo {

struct TokenLossBound {
  double loss;     // |J_t| <= loss
  double dlogp;    // |a_t| <= dlogp
};

// For a token scored by token_loss(in, p) with any log p in [logp_min, 0] and any H in
// [0, max_entropy] (in.logp, in.entropy and in.row are not read). Loose on purpose: it only has to
// be finite, and far below the overflow limits, for the inputs a trainer passes. Term by term, with
// X = 1 + |logp_min| + |old| + |ref| (>= |logp|, |logp - old|, |logp - ref|) and R the largest ratio
// exp(clamp(-old, log_ratio_min, log_ratio_max)) (logp <= 0):
//   the policy term: its struct's bound() (loss/policy/*.hpp; e.g. ppo_clip |l| <= |A| max(R,
//   clip_high, c), |dl| <= |A| R; cispo |A| clip_high X and |A| clip_high);  refinement: |l| <= |A|,
//   |dl| <= |A| / 4;  KL: its estimator's bound() (loss/kl_estimators.hpp); straight-through
//   |dv| <= X; kl_times_ratio times R (its q path adds |v| R);  entropy: |c_H w_H| max_entropy.
// The row-coupled terms (geo_mean, vespo) and the sequence ratios have no per-token bound: +inf.
inline TokenLossBound token_loss_bound(const TokenInputs<double>& in, double logp_min, double max_entropy,
                                       const TokenLossParams<double>& p) {
  TokenLossBound b{0.0, 0.0};
  if (!in.valid) return b;
  const bool kl_on = p.kl_estimator != static_cast<int>(KlEstimator::none);
  const double A = std::fabs(in.advantage);
  const double old = in.refinement ? 0.0 : std::fabs(in.old_logp);
  const double ref = kl_on ? std::fabs(in.ref_logp) : 0.0;
  const double X = 1.0 + std::fabs(logp_min) + old + ref;
  const double R = in.refinement ? 1.0
                                 : std::exp(std::fmin(p.ratio.log_ratio_max, std::fmax(p.ratio.log_ratio_min, -in.old_logp)));

  // The policy term, before its weight: the term's own bound (loss/policy/*.hpp).
  TermBound t{0.0, 0.0};
  if (in.refinement) {
    t = TermBound{A, 0.25 * A};
  } else {
    if (p.ratio_from_row) return TokenLossBound{INFINITY, INFINITY};
    t = policy_term_bound(static_cast<PolicyLoss>(p.policy_loss), BoundInputs{A, X, R}, p.ratio, p.policy);
    if (!(t.loss < INFINITY) || !(t.dlogp < INFINITY)) return TokenLossBound{INFINITY, INFINITY};
  }
  const double pg_weight = in.in_pg ? std::fabs(in.w_pg) * std::fabs(in.pg_factor) : 0.0;
  b.loss = pg_weight * t.loss;
  b.dlogp = pg_weight * t.dlogp;

  // The KL term: the estimator's bound (loss/kl_estimators.hpp).
  if (kl_on) {
    const KlBound k = kl_estimator_bound(static_cast<KlEstimator>(p.kl_estimator), X, std::fabs(in.ref_logp), logp_min,
                                         p.kl_k3_clamp);
    double v = k.value, dv = k.dvalue;
    if (!(v < INFINITY) || !(dv < INFINITY)) return TokenLossBound{INFINITY, INFINITY};
    if (p.kl_straight_through) dv = X;
    if (p.kl_times_ratio && !in.refinement) {
      dv = (dv + v) * R;
      v *= R;
    }
    const double wk = std::fabs(p.kl_coef) * std::fabs(in.w_kl);
    b.loss += wk * v;
    b.dlogp += wk * dv;
  }

  b.loss += std::fabs(p.entropy_coef) * std::fabs(in.w_entropy) * max_entropy;
  return b;
}

}  // namespace cgrpo
