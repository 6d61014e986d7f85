// cgrpo/loss/policy_terms.hpp: the policy term of one token, one small struct per loss (docs/MATH.md).
// Every function is CGRPO_HD: the CPU path and the CUDA kernels evaluate the same code.
#pragma once

#include <stdint.h>

#include "cgrpo/loss/config.hpp"
#include "cgrpo/math/token_math.hpp"

namespace cgrpo {

// The ratio r = exp(clamp(q, lo, hi)) of a log ratio q (the token's logp - old, or its row's mean),
// and dr/dq: r inside the clamp, 0 outside (torch.clamp passes gradient on [lo, hi], bounds included).
template <typename Real>
struct RatioValue {
  Real log_ratio;  // q before the clamp
  Real r;
  Real dr;         // dr / dq
};

template <typename Real>
CGRPO_HD RatioValue<Real> clamped_ratio(Real q, Real lo, Real hi) {
  const Real c = math::clamp(q, lo, hi);
  const Real r = math::exp(c);
  return RatioValue<Real>{q, r, c == q ? r : Real(0)};
}

// Flags of one token's policy term, for the clip metrics.
enum PolicyFlag : uint8_t {
  kClipped = 1,        // ppo_clip: pg2 > pg1; cispo: r outside the band; geo_mean: x clipped where A > 0
  kClippedLower = 2,   // ppo_clip dual clip: A < 0 and max(pg1, pg2) > -A c; geo_mean: x clipped where A < 0
  kRatioBelow = 4,     // TRL clip_ratio/low: A < 0 and min(r, c) < 1 - eps_low
  kRatioAbove = 8,     // TRL clip_ratio/high: A > 0 and min(r, c) > 1 + eps_high; cispo_cap: A > 0 and r > cap
  kRowPathClosed = 16, // geo_mean: this token's log ratio is clipped (or A = 0): dq_i/dlogp_t = 0
};

// What every policy term returns for one token: its loss l_t (unweighted) and two derivatives.
//   dlogp: dl/dlogp_t through logp itself (cispo, gpg, reinforce, vespo, kl_cov's |x|, shaping);
//   dq:    dl/dq through the ratio's log ratio q. At token level and in verl's GSPO form
//          dq/dlogp_t = 1; at TRL's sequence level q is the row's mean and the row pass
//          distributes it (dq_i/dlogp_t = m_t / max(n_i, 1)); geo_mean's q is its row log ratio.
template <typename Real>
struct PolicyOutput {
  Real loss;
  Real dlogp;
  Real dq;
  Real ratio;      // r (or s_i, rho_i) for initial tokens, p_t for refinement tokens
  uint8_t flags;   // PolicyFlag bits
};

// What a policy term reads for one token. Row values come from the row pass (row_context.hpp).
template <typename Real>
struct PolicyInputs {
  Real logp;             // log p_t (current policy)
  Real log_ratio;        // x_t = logp_t - old_t (the token's own, unclamped)
  RatioValue<Real> ratio;  // r from the level's log ratio (token x_t or the row mean)
  Real advantage;        // A
  Real row_advantage;    // geo_mean: Abar_i
  Real row_log_ratio;    // geo_mean: q_i = sum_t m y / (n_i + 1e-8)
  Real row_weight;       // vespo: phi_i
  bool selected;         // kl_cov: gets the |x| penalty; clip_cov: loss zeroed
};

// ---------------------------------------------------------------------------
// The terms. Each is a struct with one static function, so that a new loss touches one struct
// and the dispatch below, never the CPU loop or the kernels.

// -A r (the paper's released runs: no clipping).
struct RatioTerm {
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const TokenLossParams<Real>&) {
    const Real A = in.advantage;
    return PolicyOutput<Real>{-A * in.ratio.r, Real(0), -A * in.ratio.dr, in.ratio.r, 0};
  }
};

// PPO: max(-A r, -A clamp(r, 1 - eps_low, 1 + eps_high)); with the dual clip, min(l, -A c) where
// A < 0. A clipped branch carries no gradient. TRL's two-sided `delta` (two_sided_delta) replaces r
// by min(r, delta) in the first branch, for either sign of A. For delta >= 1 + eps_high that equals
// the dual clip with c = delta; below it does not wherever r > delta (A > 0: TRL holds -A delta where
// the dual clip gives -A min(r, 1 + eps_high); A < 0: the reverse), so it is exact for any delta.
struct PpoClipTerm {
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const TokenLossParams<Real>& p) {
    const Real A = in.advantage, r = in.ratio.r;
    PolicyOutput<Real> o{};
    o.ratio = r;
    // TRL's r~ = min(r, delta), also for its clip metrics; torch.clamp passes gradient at r = delta.
    Real capped = math::min(r, p.two_sided_delta);
    const Real pg1 = -A * capped;
    const Real pg2 = -A * math::clamp(r, p.clip_low, p.clip_high);
    const bool clipped = pg2 > pg1;
    o.loss = clipped ? pg2 : pg1;
    // The second branch is constant outside the band; inside it (reachable only under delta, where
    // min(r, delta) < r) it is -A r with its gradient.
    const bool in_band = r >= p.clip_low && r <= p.clip_high;
    o.dq = (clipped ? in_band : r <= p.two_sided_delta) ? -A * in.ratio.dr : Real(0);
    if (clipped) o.flags |= kClipped;
    if (p.dual_clip && A < Real(0)) {
      const Real pg3 = -A * p.dual_clip_c;
      if (o.loss > pg3) {
        o.loss = pg3;
        o.dq = Real(0);
        o.flags |= kClippedLower;
      }
      capped = math::min(r, p.dual_clip_c);
    }
    if (A < Real(0) && capped < p.clip_low) o.flags |= kRatioBelow;
    if (A > Real(0) && capped > p.clip_high) o.flags |= kRatioAbove;
    return o;
  }
};

// verl CISPO: -sg(clamp(r, 1 - eps_low, 1 + eps_high)) A logp. The clip scales the gradient and never
// zeroes it; the gradient reaches the logits only through logp.
struct CispoTerm {
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const TokenLossParams<Real>& p) {
    const Real A = in.advantage, r = in.ratio.r;
    const Real c = math::clamp(r, p.clip_low, p.clip_high);
    return PolicyOutput<Real>{-c * A * in.logp, -c * A, Real(0), r, static_cast<uint8_t>(c != r ? kClipped : 0)};
  }
};

// TRL CISPO: -sg(min(r, cap)) A logp, cap = TRL's epsilon_high (no lower bound).
struct CispoCapTerm {
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const TokenLossParams<Real>& p) {
    const Real A = in.advantage, r = in.ratio.r;
    const Real c = math::min(r, p.cispo_ratio_cap);
    const uint8_t flags = (A > Real(0) && r > p.cispo_ratio_cap) ? kRatioAbove : 0;
    return PolicyOutput<Real>{-c * A * in.logp, -c * A, Real(0), r, flags};
  }
};

// SAPO: -A sigmoid(tau (r - 1)) 4 / tau, tau = tau_pos where A > 0, else tau_neg.
// dl/dr = -4 A g (1 - g).
struct SapoTerm {
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const TokenLossParams<Real>& p) {
    const Real A = in.advantage, r = in.ratio.r;
    const Real tau = A > Real(0) ? p.sapo_tau_pos : p.sapo_tau_neg;
    const Real g = Real(1) / (Real(1) + math::exp(-tau * (r - Real(1))));
    const Real one_minus_g = Real(1) / (Real(1) + math::exp(tau * (r - Real(1))));
    return PolicyOutput<Real>{-A * g * (Real(4) / tau), Real(0), -Real(4) * A * g * one_minus_g * in.ratio.dr, r, 0};
  }
};

// GPG, and verl's bypass-mode REINFORCE (whose IS weight is the token's factor): -A logp.
struct LogProbTerm {
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const TokenLossParams<Real>&) {
    const Real A = in.advantage;
    return PolicyOutput<Real>{-A * in.logp, -A, Real(0), Real(1), 0};
  }
};

// GMPO (verl geo_mean): one loss per row, l_i = -Abar_i rho_i with rho_i = exp(q_i) and
// q_i = sum_t m y_t / (n_i + 1e-8), y_t the log ratio clipped on one side by the sign of A.
// Each valid token of the row reports l_i (the row's weights average them back to l_i); the
// gradient goes through the row pass: dl_i/dq_i = l_i, dq_i/dlogp_t = [y_t = x_t] / (n_i + 1e-8).
struct GeoMeanTerm {
  template <typename Real>
  CGRPO_HD static Real clipped_log_ratio(Real x, Real A, const TokenLossParams<Real>& p) {
    if (A > Real(0)) return math::min(x, p.clip_eps_high);
    if (A < Real(0)) return math::max(x, -p.clip_eps_low);
    return Real(0);
  }
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const TokenLossParams<Real>& p) {
    const Real x = in.log_ratio, A = in.advantage;
    const Real rho = math::exp(in.row_log_ratio);
    const Real l = -in.row_advantage * rho;
    const bool outside = x < -p.clip_eps_low || x > p.clip_eps_high;
    uint8_t flags = 0;
    if (outside && A > Real(0)) flags |= kClipped;
    if (outside && A < Real(0)) flags |= kClippedLower;
    if (clipped_log_ratio(x, A, p) != x || A == Real(0)) flags |= kRowPathClosed;
    return PolicyOutput<Real>{l, Real(0), l, rho, flags};
  }
};

// KL-Cov: -A r, plus coef |logp - old| at the tokens the batch pass selected (top-k covariance).
struct KlCovTerm {
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const TokenLossParams<Real>& p) {
    const Real A = in.advantage, x = in.log_ratio;
    PolicyOutput<Real> o{-A * in.ratio.r, Real(0), -A * in.ratio.dr, in.ratio.r, 0};
    if (in.selected) {
      o.loss += p.kl_cov_coef * math::abs(x);
      o.dlogp = p.kl_cov_coef * (x > Real(0) ? Real(1) : (x < Real(0) ? Real(-1) : Real(0)));
      o.flags |= kClipped;
    }
    return o;
  }
};

// Clip-Cov: ppo_clip, with the loss of the selected tokens zeroed (no gradient either).
struct ClipCovTerm {
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const TokenLossParams<Real>& p) {
    PolicyOutput<Real> o = PpoClipTerm::eval(in, p);
    if (in.selected) {
      o.loss = Real(0);
      o.dq = Real(0);
      o.flags = kClipped;
    } else {
      o.flags &= static_cast<uint8_t>(~kClipped);  // clip_cov's pg_clipfrac counts the zeroed tokens
    }
    return o;
  }
};

// TRL VESPO: -phi_i A logp, phi_i a per-row weight from the row pass (no gradient through it).
struct VespoTerm {
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const TokenLossParams<Real>&) {
    const Real A = in.advantage, phi = in.row_weight;
    return PolicyOutput<Real>{-phi * A * in.logp, -phi * A, Real(0), phi, 0};
  }
};

// The one place where the runtime PolicyLoss becomes a term: called once per token (thread 0 of a
// row block on the GPU), so a switch here costs nothing next to the row sweeps.
template <typename Real>
CGRPO_HD PolicyOutput<Real> policy_term(const PolicyInputs<Real>& in, const TokenLossParams<Real>& p) {
  switch (p.policy_loss) {
    case static_cast<int>(PolicyLoss::ratio): return RatioTerm::eval(in, p);
    case static_cast<int>(PolicyLoss::ppo_clip): return PpoClipTerm::eval(in, p);
    case static_cast<int>(PolicyLoss::cispo): return CispoTerm::eval(in, p);
    case static_cast<int>(PolicyLoss::cispo_cap): return CispoCapTerm::eval(in, p);
    case static_cast<int>(PolicyLoss::sapo): return SapoTerm::eval(in, p);
    case static_cast<int>(PolicyLoss::gpg):
    case static_cast<int>(PolicyLoss::reinforce): return LogProbTerm::eval(in, p);
    case static_cast<int>(PolicyLoss::geo_mean): return GeoMeanTerm::eval(in, p);
    case static_cast<int>(PolicyLoss::kl_cov): return KlCovTerm::eval(in, p);
    case static_cast<int>(PolicyLoss::clip_cov): return ClipCovTerm::eval(in, p);
    case static_cast<int>(PolicyLoss::vespo): return VespoTerm::eval(in, p);
    default: return PolicyOutput<Real>{Real(0), Real(0), Real(0), Real(0), 0};
  }
}

// Refinement token: l_t = -A f(p_t), p_t = exp(logp_t); no ratio, no clipping.
template <typename Real>
CGRPO_HD PolicyOutput<Real> refinement_term(Real logp, Real advantage, Real gamma) {
  const Real p = math::exp(logp);
  return PolicyOutput<Real>{-advantage * refinement_shaping(p, gamma), -advantage * refinement_shaping_dlogp(p, gamma),
                            Real(0), p, 0};
}

}  // namespace cgrpo
