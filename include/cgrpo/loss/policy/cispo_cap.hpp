// cgrpo/loss/policy/cispo_cap.hpp: TRL's CISPO, -sg(min(r, cap)) A logp (cap = TRL's epsilon_high).
#pragma once

#include <cmath>

#include "cgrpo/loss/policy/term.hpp"

namespace cgrpo {

struct CispoCapTerm : PerTokenTerm {
  struct Params {
    double ratio_cap = 5.0;  // TRL's epsilon_high used as an absolute cap on r (no lower bound)
  };
  static constexpr PolicyTraits traits() {
    PolicyTraits t;
    t.name = "cispo_cap";
    return t;
  }
  static Status check(const Params& p) {
    if (!std::isfinite(p.ratio_cap) || p.ratio_cap <= 0)
      return make_error(StatusCode::invalid_argument, "config.policy.cispo_cap.ratio_cap must be finite and > 0, got %g",
                        p.ratio_cap);
    return Status::success();
  }
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const RatioParams<Real>&, const Params& own) {
    const Real A = in.advantage, r = in.ratio.r, cap = static_cast<Real>(own.ratio_cap);
    const Real c = math::min(r, cap);
    const uint8_t flags = (A > Real(0) && r > cap) ? kRatioAbove : 0;
    return PolicyOutput<Real>{-c * A * in.logp, -c * A, Real(0), r, flags};
  }
  static TermBound bound(const BoundInputs& b, const RatioParams<double>&, const Params& own) {
    const double c = std::fabs(own.ratio_cap);
    return TermBound{b.A * c * b.X, b.A * c};
  }
};

}  // namespace cgrpo
