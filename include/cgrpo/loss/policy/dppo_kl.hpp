// cgrpo/loss/policy/dppo_kl.hpp: DPPO-Binary-KL (verl loss_mode "dppo_kl"): dppo_tv's loss, on the tokens
// whose chosen / not-chosen Bernoulli moved by at most the threshold in binary KL.
#pragma once

#include <cmath>

#include "cgrpo/loss/policy/dppo_tv.hpp"
#include "cgrpo/loss/policy/term.hpp"

namespace cgrpo {

// D_t = q (old - logp) + (1 - q) log((1 - q + 1e-8) / (1 - p + 1e-8)), p = exp(logp), q = exp(old);
// keep_t = [D <= eps_high or p <= q] where A > 0, [D <= eps_low or p >= q] otherwise: a token that
// moves against the sign of A is never dropped, whatever its divergence. The rest is dppo_tv's.
struct DppoKlTerm : PerTokenTerm {
  using Params = DppoTvTerm::Params;
  static constexpr PolicyTraits traits() {
    PolicyTraits t = DppoTvTerm::traits();
    t.name = "dppo_kl";
    t.verl_name = "dppo_kl";
    return t;
  }
  static Status check(const Params& p) {
    if (!std::isfinite(p.is_cap) || p.is_cap <= 0)
      return make_error(StatusCode::invalid_argument, "config.policy.dppo_kl.is_cap must be finite and > 0, got %g",
                        p.is_cap);
    return Status::success();
  }
  template <typename Real>
  CGRPO_HD static bool keep(const PolicyInputs<Real>& in, const RatioParams<Real>& r) {
    const Real p = math::exp(in.logp), q = math::exp(in.old_logp);
    const Real eps = static_cast<Real>(1e-8);
    const Real d = q * (in.old_logp - in.logp) + (Real(1) - q) * math::log((Real(1) - q + eps) / (Real(1) - p + eps));
    return in.advantage > Real(0) ? (d <= r.clip_eps_high || p <= q) : (d <= r.clip_eps_low || p >= q);
  }
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const RatioParams<Real>& r, const Params& own) {
    return DppoTvTerm::masked(in, keep(in, r), own.is_cap);
  }
  static TermBound bound(const BoundInputs& b, const RatioParams<double>& r, const Params& own) {
    return DppoTvTerm::bound(b, r, own);
  }
};

}  // namespace cgrpo
