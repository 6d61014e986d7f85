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
//   ratio, ppo_clip, clip_cov, sapo: |l| <= |A| max(R, clip_high, c, 4 / tau_sapo), |dl| <= |A| R;
//   cispo, cispo_cap, gpg: |l| <= |A| c X, |dl| <= |A| c with c = clip_high, cap or 1;
//   kl_cov: the ratio's bounds plus |coef| X and |coef|;  refinement: |l| <= |A|, |dl| <= |A| / 4;
//   KL: k1, abs |v| <= X, |dv| <= 1; k2 X^2 / 2 and X; k3 10 and 1 + e^20 clamped, e^(ref - logp_min)
//   + X + 1 and e^(ref - logp_min) + 1 unclamped; straight-through |dv| <= X; kl_times_ratio times R
//   (its q path adds |v| R);  entropy: |c_H w_H| max_entropy, no dlogp.
// The row-coupled losses (geo_mean, vespo, sequence ratios) have no per-token bound here: +inf.
inline TokenLossBound token_loss_bound(const TokenInputs<double>& in, double logp_min, double max_entropy,
                                       const TokenLossParams<double>& p) {
  TokenLossBound b{0.0, 0.0};
  if (!in.valid) return b;
  const double inf = INFINITY;
  const double A = std::fabs(in.advantage);
  const double old = in.refinement ? 0.0 : std::fabs(in.old_logp);
  const double ref = p.kl_estimator != static_cast<int>(KlEstimator::none) ? std::fabs(in.ref_logp) : 0.0;
  const double X = 1.0 + std::fabs(logp_min) + old + ref;
  const double R = in.refinement ? 1.0 : std::exp(std::fmin(p.log_ratio_max, std::fmax(p.log_ratio_min, -in.old_logp)));

  // The policy term, before its weight.
  double l = 0, dl = 0;
  if (in.refinement) {
    l = A;
    dl = 0.25 * A;
  } else {
    if (p.ratio_level != static_cast<int>(RatioLevel::token)) return TokenLossBound{inf, inf};
    switch (p.policy_loss) {
      case static_cast<int>(PolicyLoss::ratio):
      case static_cast<int>(PolicyLoss::ppo_clip):
      case static_cast<int>(PolicyLoss::clip_cov):
      case static_cast<int>(PolicyLoss::sapo):
      case static_cast<int>(PolicyLoss::kl_cov): {
        double c = std::fmax(R, std::fabs(p.clip_high));
        if (p.dual_clip) c = std::fmax(c, std::fabs(p.dual_clip_c));
        if (p.policy_loss == static_cast<int>(PolicyLoss::sapo))
          c = std::fmax(c, 4.0 / std::fmin(p.sapo_tau_pos, p.sapo_tau_neg));
        l = A * c;
        dl = A * R;
        if (p.policy_loss == static_cast<int>(PolicyLoss::kl_cov)) {
          l += std::fabs(p.kl_cov_coef) * X;
          dl += std::fabs(p.kl_cov_coef);
        }
        break;
      }
      case static_cast<int>(PolicyLoss::cispo):
      case static_cast<int>(PolicyLoss::cispo_cap):
      case static_cast<int>(PolicyLoss::gpg):
      case static_cast<int>(PolicyLoss::reinforce): {
        const double c = p.policy_loss == static_cast<int>(PolicyLoss::cispo)       ? std::fabs(p.clip_high)
                         : p.policy_loss == static_cast<int>(PolicyLoss::cispo_cap) ? std::fabs(p.cispo_ratio_cap)
                                                                                    : 1.0;
        l = A * c * X;
        dl = A * c;
        break;
      }
      default:
        return TokenLossBound{inf, inf};  // geo_mean, vespo, and any term this bound does not know
    }
  }
  const double pg_weight = in.in_pg ? std::fabs(in.w_pg) * std::fabs(in.pg_factor) : 0.0;
  b.loss = pg_weight * l;
  b.dlogp = pg_weight * dl;

  // The KL term.
  if (p.kl_estimator != static_cast<int>(KlEstimator::none)) {
    double v = 0, dv = 0;
    switch (p.kl_estimator) {
      case static_cast<int>(KlEstimator::k1):
      case static_cast<int>(KlEstimator::abs):
        v = X;
        dv = 1.0;
        break;
      case static_cast<int>(KlEstimator::k2):
        v = 0.5 * X * X;
        dv = X;
        break;
      case static_cast<int>(KlEstimator::k3): {
        if (p.kl_k3_clamp) {
          v = 10.0;
          dv = 1.0 + std::exp(20.0);
        } else {
          const double e = std::exp(std::fabs(in.ref_logp) - logp_min);
          v = e + X + 1.0;
          dv = e + 1.0;
        }
        break;
      }
      default:
        return TokenLossBound{inf, inf};
    }
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
