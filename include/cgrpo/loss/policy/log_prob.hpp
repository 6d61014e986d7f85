// cgrpo/loss/policy/log_prob.hpp: the terms -A logp: GPG, and verl's bypass-mode REINFORCE (whose IS
// weight is the token's factor).
#pragma once

#include "cgrpo/loss/policy/term.hpp"

namespace cgrpo {

// -A logp: one eval for both terms below.
struct LogProbTerm : PerTokenTerm {
  using Params = NoParams;
  static Status check(const Params&) { return Status::success(); }
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const RatioParams<Real>&, const Params&) {
    const Real A = in.advantage;
    return PolicyOutput<Real>{-A * in.logp, -A, Real(0), Real(1), 0};
  }
  // |l| <= |A| X, |dl| <= |A|.
  static TermBound bound(const BoundInputs& b, const RatioParams<double>&, const Params&) {
    return TermBound{b.A * 1.0 * b.X, b.A * 1.0};
  }
};

// GPG (verl loss_mode "gpg"): -A logp, no ratio.
struct GpgTerm : LogProbTerm {
  static constexpr PolicyTraits traits() {
    PolicyTraits t;
    t.name = "gpg";
    t.verl_name = "gpg";
    t.ratio = RatioUse::none;
    return t;
  }
};

// verl's bypass-mode REINFORCE (rollout_correction loss_type "reinforce"): -A logp times the
// rollout IS weight; its ppo_kl logs rollout - logp unclamped. verl runs it in bypass mode only
// (compute_policy_loss_bypass_mode): set off_policy.rollout.mode = bypass (or use gpg).
struct ReinforceTerm : LogProbTerm {
  static constexpr PolicyTraits traits() {
    PolicyTraits t;
    t.name = "reinforce";
    t.ratio = RatioUse::none;
    t.bypass = true;
    t.bypass_only = true;
    t.bypass_is_factor = true;
    t.ppo_kl = PpoKl::raw;
    return t;
  }
};

}  // namespace cgrpo
