// cgrpo/loss/policy/vespo.hpp: TRL's VESPO, -phi_i A logp with phi_i a per-row gamma weight.
#pragma once

#include <cmath>

#include "cgrpo/corrections/sampler_correction.hpp"
#include "cgrpo/loss/policy/term.hpp"

namespace cgrpo {

// phi_i comes from TRL's sampler row pass (vespo_phi, corrections/sampler_correction.hpp), which
// runs for this term; no gradient goes through it.
struct VespoTerm : PerTokenTerm {
  using Params = VespoWeights;  // (k, lambda) by the sign of A: TRL vespo_k_pos, vespo_lambda_pos, ...
  static constexpr PolicyTraits traits() {
    PolicyTraits t;
    t.name = "vespo";
    t.ratio = RatioUse::defined;  // r only reaches kl_times_ratio
    t.row_weight = true;
    return t;
  }
  static Status check(const Params& p) {
    if (!std::isfinite(p.k_pos) || !std::isfinite(p.k_neg) || !std::isfinite(p.lambda_pos) ||
        !std::isfinite(p.lambda_neg))
      return make_error(StatusCode::invalid_argument, "config.policy.vespo.k_pos/k_neg/lambda_pos/lambda_neg must be finite");
    return Status::success();
  }
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const RatioParams<Real>&, const Params&) {
    const Real A = in.advantage, phi = in.row_weight;
    return PolicyOutput<Real>{-phi * A * in.logp, -phi * A, Real(0), phi, 0};
  }
  // Row-weighted: no per-token bound.
  static TermBound bound(const BoundInputs&, const RatioParams<double>&, const Params&) { return kUnbounded; }
};

}  // namespace cgrpo
