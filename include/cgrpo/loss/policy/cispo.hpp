// cgrpo/loss/policy/cispo.hpp: verl's CISPO, -sg(clamp(r, 1 - eps_low, 1 + eps_high)) A logp.
#pragma once

#include "cgrpo/loss/policy/term.hpp"

namespace cgrpo {

// The clip scales the gradient and never zeroes it; the gradient reaches the logits only through logp.
struct CispoTerm : PerTokenTerm {
  using Params = NoParams;
  static constexpr PolicyTraits traits() {
    PolicyTraits t;
    t.name = "cispo";
    t.verl_name = "cispo";
    t.clips = true;
    t.clip_low_unbounded = true;  // verl's CISPO recipe sets eps_low = 10
    return t;
  }
  static Status check(const Params&) { return Status::success(); }
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const RatioParams<Real>& p, const Params&) {
    const Real A = in.advantage, r = in.ratio.r;
    const Real c = math::clamp(r, p.clip_low, p.clip_high);
    return PolicyOutput<Real>{-c * A * in.logp, -c * A, Real(0), r, static_cast<uint8_t>(c != r ? kClipped : 0)};
  }
  // |l| <= |A| clip_high X, |dl| <= |A| clip_high.
  static TermBound bound(const BoundInputs& b, const RatioParams<double>& r, const Params&) {
    const double c = ::fabs(r.clip_high);
    return TermBound{b.A * c * b.X, b.A * c};
  }
};

}  // namespace cgrpo
