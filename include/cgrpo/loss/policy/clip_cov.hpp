// cgrpo/loss/policy/clip_cov.hpp: Clip-Cov (verl loss_mode "clip_cov"): ppo_clip with the loss of a
// chosen subset of tokens zeroed.
#pragma once

#include <stdint.h>

#include <cmath>

#include "cgrpo/loss/policy/ppo_clip.hpp"
#include "cgrpo/loss/policy/term.hpp"

namespace cgrpo {

// The candidates are the unclipped tokens with cov_t in (lower, upper); verl draws k of them with
// torch.randperm, the library by a counter-based hash of (seed, token index), or takes the
// caller's batch.selection (docs/MATH.md, "Clip-Cov").
struct ClipCovTerm : PerTokenTerm {
  struct Params {
    double ratio = 2e-4;   // verl clip_cov_ratio: the fraction of valid tokens zeroed
    double lower = 1.0;    // verl clip_cov_lb: candidates have cov in (lower, upper)
    double upper = 5.0;    // verl clip_cov_ub
    uint64_t seed = 0;     // the counter-based choice among the candidates
  };
  static constexpr PolicyTraits traits() {
    PolicyTraits t;
    t.name = "clip_cov";
    t.verl_name = "clip_cov";
    t.clips = true;
    t.token_level_only = true;
    t.selection = BatchSelection::covariance_window;
    t.verl_log_ratio_clamp = false;
    return t;
  }
  static Status check(const Params& p) {
    if (!std::isfinite(p.ratio) || p.ratio <= 0 || p.ratio > 1)
      return make_error(StatusCode::invalid_argument, "config.policy.clip_cov.ratio must be in (0, 1], got %g", p.ratio);
    if (std::isnan(p.lower) || std::isnan(p.upper) || p.lower >= p.upper)
      return make_error(StatusCode::invalid_argument, "config.policy.clip_cov.lower must be < upper, got %g and %g",
                        p.lower, p.upper);
    return Status::success();
  }
  static TermSelection selection(const Params& p) { return TermSelection{p.ratio, p.lower, p.upper, p.seed}; }
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const RatioParams<Real>& p, const Params&) {
    PolicyOutput<Real> o = PpoClipTerm::eval(in, p, NoParams{});
    if (in.selected) {
      o.loss = Real(0);
      o.dq = Real(0);
      o.flags = kClipped;
    } else {
      o.flags &= static_cast<uint8_t>(~kClipped);  // clip_cov's pg_clipfrac counts the zeroed tokens
    }
    return o;
  }
  static TermBound bound(const BoundInputs& b, const RatioParams<double>& r, const Params&) {
    return ratio_term_bound(b, r);
  }
};

}  // namespace cgrpo
