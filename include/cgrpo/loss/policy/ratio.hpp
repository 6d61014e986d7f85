// cgrpo/loss/policy/ratio.hpp: the policy term -A r, no clipping (the Critique-GRPO paper's released runs).
#pragma once

#include "cgrpo/loss/policy/term.hpp"

namespace cgrpo {

struct RatioTerm : PerTokenTerm {
  using Params = NoParams;
  static constexpr PolicyTraits traits() {
    PolicyTraits t;
    t.name = "ratio";
    return t;
  }
  static Status check(const Params&) { return Status::success(); }
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const RatioParams<Real>&, const Params&) {
    const Real A = in.advantage;
    return PolicyOutput<Real>{-A * in.ratio.r, Real(0), -A * in.ratio.dr, in.ratio.r, 0};
  }
  static TermBound bound(const BoundInputs& b, const RatioParams<double>& r, const Params&) {
    return ratio_term_bound(b, r);
  }
};

}  // namespace cgrpo
