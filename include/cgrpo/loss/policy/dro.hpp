// cgrpo/loss/policy/dro.hpp: DRO (verl loss_mode "dro"): -(A logp - beta/2 (logp - old)^2), no ratio.
#pragma once

#include <cmath>

#include "cgrpo/loss/policy/term.hpp"

namespace cgrpo {

// dl/dlogp = -A + beta (logp - old); the log ratio is not clamped. Metric: ppo_kl of old - logp.
struct DroTerm : PerTokenTerm {
  struct Params {
    double beta = 0.0;  // verl policy_loss.dro_beta: no default, must be set (> 0)
  };
  static constexpr PolicyTraits traits() {
    PolicyTraits t;
    t.name = "dro";
    t.verl_name = "dro";
    t.ratio = RatioUse::none;
    t.ppo_kl = PpoKl::raw;
    t.verl_log_ratio_clamp = false;
    return t;
  }
  static Status check(const Params& p) {
    if (!std::isfinite(p.beta) || p.beta <= 0)
      return make_error(StatusCode::invalid_argument,
                        "config.policy.dro.beta must be finite and > 0 (verl's policy_loss.dro_beta has no default), got %g",
                        p.beta);
    return Status::success();
  }
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const RatioParams<Real>&, const Params& own) {
    const Real A = in.advantage, x = in.log_ratio, beta = static_cast<Real>(own.beta);
    return PolicyOutput<Real>{-(A * in.logp - beta / Real(2) * x * x), -A + beta * x, Real(0), Real(1), 0};
  }
  // |l| <= |A| X + beta X^2 / 2, |dl| <= |A| + beta X.
  static TermBound bound(const BoundInputs& b, const RatioParams<double>&, const Params& own) {
    return TermBound{b.A * b.X + 0.5 * own.beta * b.X * b.X, b.A + own.beta * b.X};
  }
};

}  // namespace cgrpo
