// cgrpo/loss/policy/sapo.hpp: SAPO's soft gate, -A sigmoid(tau (r - 1)) 4 / tau.
#pragma once

#include <cmath>

#include "cgrpo/loss/policy/term.hpp"

namespace cgrpo {

// tau = tau_pos where A > 0, else tau_neg; dl/dr = -4 A g (1 - g). verl (compute_policy_loss_sapo)
// and TRL both aggregate it seq-mean-token-mean.
struct SapoTerm : PerTokenTerm {
  struct Params {
    double tau_pos = 1.0;   // verl tau_pos, TRL sapo_temperature_pos
    double tau_neg = 1.05;  // verl tau_neg, TRL sapo_temperature_neg
  };
  static constexpr PolicyTraits traits() {
    PolicyTraits t;
    t.name = "sapo";
    t.verl_name = "sapo";
    t.fixed_aggregation = true;
    return t;
  }
  static Status check(const Params& p) {
    if (!std::isfinite(p.tau_pos) || !std::isfinite(p.tau_neg) || p.tau_pos <= 0 || p.tau_neg <= 0)
      return make_error(StatusCode::invalid_argument,
                        "config.policy.sapo.tau_pos and tau_neg must be finite and > 0, got %g and %g", p.tau_pos,
                        p.tau_neg);
    return Status::success();
  }
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const RatioParams<Real>&, const Params& own) {
    const Real A = in.advantage, r = in.ratio.r;
    const Real tau = A > Real(0) ? static_cast<Real>(own.tau_pos) : static_cast<Real>(own.tau_neg);
    const Real g = Real(1) / (Real(1) + math::exp(-tau * (r - Real(1))));
    const Real one_minus_g = Real(1) / (Real(1) + math::exp(tau * (r - Real(1))));
    return PolicyOutput<Real>{-A * g * (Real(4) / tau), Real(0), -Real(4) * A * g * one_minus_g * in.ratio.dr, r, 0};
  }
  // The ratio terms' bound, with 4 / tau as a further cap on |l| / |A|.
  static TermBound bound(const BoundInputs& b, const RatioParams<double>& r, const Params& own) {
    TermBound t = ratio_term_bound(b, r);
    const double gate = 4.0 / std::fmin(own.tau_pos, own.tau_neg);
    if (b.A * gate > t.loss) t.loss = b.A * gate;
    return t;
  }
};

}  // namespace cgrpo
