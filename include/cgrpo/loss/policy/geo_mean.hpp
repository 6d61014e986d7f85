// cgrpo/loss/policy/geo_mean.hpp: GMPO (verl loss_mode "geo_mean"): one loss per row from the geometric
// mean of its tokens' sign-clipped ratios.
#pragma once

#include "cgrpo/loss/policy/term.hpp"

namespace cgrpo {

// l_i = -Abar_i rho_i with rho_i = exp(q_i), q_i = sum_t m y_t / (n_i + 1e-8), y_t the log ratio
// clipped on one side by the sign of A (to [-eps_low, eps_high]). Each valid token of the row
// reports l_i (the row's weights average them back to l_i, and J_pg = (1/B) sum_i l_i whatever
// loss_agg_mode says); the gradient goes through the row pass: dl_i/dq_i = l_i,
// dq_i/dlogp_t = [y_t = x_t] / (n_i + 1e-8). IS weights enter as the row's geometric mean.
struct GeoMeanTerm : PerTokenTerm {
  using Params = NoParams;
  static constexpr PolicyTraits traits() {
    PolicyTraits t;
    t.name = "geo_mean";
    t.verl_name = "geo_mean";
    t.ratio = RatioUse::none;  // a row's geometric mean, not a token ratio: kl.times_ratio has none to read
    t.clips = true;
    t.clip_low_unbounded = true;
    t.token_level_only = true;
    t.row_log_ratio = true;
    t.is_weight_row_mean = true;
    t.computed_weights_only = true;
    t.fixed_aggregation = true;
    t.exact_row_counts = true;
    t.ppo_kl = PpoKl::raw;
    t.verl_log_ratio_clamp = false;
    return t;
  }
  static Status check(const Params&) { return Status::success(); }

  template <typename Real>
  CGRPO_HD static Real clipped_log_ratio(Real x, Real A, const RatioParams<Real>& p) {
    if (A > Real(0)) return math::min(x, p.clip_eps_high);
    if (A < Real(0)) return math::max(x, -p.clip_eps_low);
    return Real(0);
  }

  // Row pass hooks: y_t, then (q_i, Abar_i, 1 / (n_i + 1e-8)).
  template <typename Real>
  CGRPO_HD static Real row_value(Real x, Real A, const RatioParams<Real>& p, const Params&) {
    return clipped_log_ratio(x, A, p);
  }
  CGRPO_HD static RowTermContext row_context(double n, double sum_a, double sum_y, const Params&) {
    return RowTermContext{sum_y / (n + 1e-8), sum_a / (n + 1e-8), 1.0 / (n + 1e-8)};
  }

  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const RatioParams<Real>& p, const Params&) {
    const Real x = in.log_ratio, A = in.advantage;
    const Real rho = math::exp(in.row_log_ratio);
    const Real l = -in.row_advantage * rho;
    const bool outside = x < -p.clip_eps_low || x > p.clip_eps_high;
    uint8_t flags = 0;
    if (outside && A > Real(0)) flags |= kClipped;
    if (outside && A < Real(0)) flags |= kClippedLower;
    if (clipped_log_ratio(x, A, p) != x || A == Real(0)) flags |= kRowPathClosed;
    return PolicyOutput<Real>{l, Real(0), l, rho, flags};
  }
  // Row-coupled: no per-token bound.
  static TermBound bound(const BoundInputs&, const RatioParams<double>&, const Params&) { return kUnbounded; }
};

}  // namespace cgrpo
