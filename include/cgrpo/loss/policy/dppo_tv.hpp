// cgrpo/loss/policy/dppo_tv.hpp: DPPO-Binary-TV (verl loss_mode "dppo_tv"): -A sg(min(r, c)) logp on the
// tokens whose probability moved by at most the threshold in the direction A pushes it.
#pragma once

#include <cmath>

#include "cgrpo/loss/policy/term.hpp"

namespace cgrpo {

// keep_t = [p - q <= eps_high] where A > 0, [p - q >= -eps_low] otherwise (A = 0 included), with
// p = exp(logp), q = exp(old) (unclamped) and the thresholds verl's clip_ratio_high / _low
// (ratio.clip_eps_high / _low: they bound a change of probability, not the ratio).
// l_t = -A sg(min(r, c)) logp keep_t: min(r, c) is a truncated IS factor in place of the dual clip;
// keep is a constant. Metrics: pg_clipfrac the dropped tokens, pg_clipfrac_lower [r > c] keep.
struct DppoTvTerm : PerTokenTerm {
  struct Params {
    double is_cap = 3.0;  // c, verl's clip_ratio_c (the DPPO recipe sets 10000)
  };
  static constexpr PolicyTraits traits() {
    PolicyTraits t;
    t.name = "dppo_tv";
    t.verl_name = "dppo_tv";
    t.clips = true;
    t.clip_low_unbounded = true;
    t.token_level_only = true;
    return t;
  }
  static Status check(const Params& p) {
    if (!std::isfinite(p.is_cap) || p.is_cap <= 0)
      return make_error(StatusCode::invalid_argument, "config.policy.dppo_tv.is_cap must be finite and > 0, got %g",
                        p.is_cap);
    return Status::success();
  }
  template <typename Real>
  CGRPO_HD static bool keep(const PolicyInputs<Real>& in, const RatioParams<Real>& r) {
    const Real change = math::exp(in.logp) - math::exp(in.old_logp);
    return in.advantage > Real(0) ? change <= r.clip_eps_high : change >= -r.clip_eps_low;
  }
  // The loss of a kept token, shared with dppo_kl.
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> masked(const PolicyInputs<Real>& in, bool kept, double is_cap) {
    const Real A = in.advantage, r = in.ratio.r, c = static_cast<Real>(is_cap);
    const Real w = math::min(r, c);
    PolicyOutput<Real> o{Real(0), Real(0), Real(0), r, 0};
    if (!kept) {
      o.flags = kClipped;
      return o;
    }
    o.loss = -A * w * in.logp;
    o.dlogp = -A * w;
    if (r > c) o.flags = kClippedLower;
    return o;
  }
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const RatioParams<Real>& r, const Params& own) {
    return masked(in, keep(in, r), own.is_cap);
  }
  // |l| <= |A| c X, |dl| <= |A| c.
  static TermBound bound(const BoundInputs& b, const RatioParams<double>&, const Params& own) {
    return TermBound{b.A * own.is_cap * b.X, b.A * own.is_cap};
  }
};

}  // namespace cgrpo
