// cgrpo/loss/policy/kl_cov.hpp: KL-Cov (verl loss_mode "kl_cov"): -A r plus coef |logp - old| on the k
// tokens of largest covariance between advantage and log p.
#pragma once

#include <cmath>

#include "cgrpo/loss/policy/term.hpp"

namespace cgrpo {

struct KlCovTerm : PerTokenTerm {
  struct Params {
    double ratio = 2e-4;  // verl kl_cov_ratio: the fraction of valid tokens selected (k = max(1, floor(N ratio)))
    double coef = 1.0;    // verl ppo_kl_coef: the coefficient of |logp - old| at selected tokens (verl's config: 0.1)
  };
  static constexpr PolicyTraits traits() {
    PolicyTraits t;
    t.name = "kl_cov";
    t.verl_name = "kl_cov";
    t.token_level_only = true;
    t.selection = BatchSelection::top_covariance;
    t.ppo_kl = PpoKl::absolute;
    t.verl_log_ratio_clamp = false;
    return t;
  }
  static Status check(const Params& p) {
    if (!std::isfinite(p.ratio) || p.ratio <= 0 || p.ratio > 1)
      return make_error(StatusCode::invalid_argument, "config.policy.kl_cov.ratio must be in (0, 1], got %g", p.ratio);
    if (!std::isfinite(p.coef))
      return make_error(StatusCode::invalid_argument, "config.policy.kl_cov.coef must be finite, got %g", p.coef);
    return Status::success();
  }
  static TermSelection selection(const Params& p) { return TermSelection{p.ratio, 0.0, 0.0, 0}; }
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const RatioParams<Real>&, const Params& own) {
    const Real A = in.advantage, x = in.log_ratio;
    PolicyOutput<Real> o{-A * in.ratio.r, Real(0), -A * in.ratio.dr, in.ratio.r, 0};
    if (in.selected) {
      const Real coef = static_cast<Real>(own.coef);
      o.loss += coef * math::abs(x);
      o.dlogp = coef * (x > Real(0) ? Real(1) : (x < Real(0) ? Real(-1) : Real(0)));
      o.flags |= kClipped;
    }
    return o;
  }
  // The ratio terms' bound plus |coef| X and |coef|.
  static TermBound bound(const BoundInputs& b, const RatioParams<double>& r, const Params& own) {
    TermBound t = ratio_term_bound(b, r);
    t.loss += std::fabs(own.coef) * b.X;
    t.dlogp += std::fabs(own.coef);
    return t;
  }
};

}  // namespace cgrpo
