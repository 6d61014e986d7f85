// cgrpo/loss/policy/ppo_clip.hpp: PPO's clipped surrogate, with verl's dual clip and TRL's two-sided delta.
#pragma once

#include "cgrpo/loss/policy/term.hpp"

namespace cgrpo {

// max(-A r, -A clamp(r, 1 - eps_low, 1 + eps_high)); with the dual clip, min(l, -A c) where A < 0.
// A clipped branch carries no gradient. TRL's two-sided `delta` (ratio.two_sided_delta) replaces r
// by min(r, delta) in the first branch, for either sign of A. For delta >= 1 + eps_high that equals
// the dual clip with c = delta; below it does not wherever r > delta (A > 0: TRL holds -A delta where
// the dual clip gives -A min(r, 1 + eps_high); A < 0: the reverse), so it is exact for any delta.
struct PpoClipTerm : PerTokenTerm {
  using Params = NoParams;
  static constexpr PolicyTraits traits() {
    PolicyTraits t;
    t.name = "ppo_clip";
    t.verl_name = "vanilla";
    t.clips = true;
    t.dual_clip = true;
    t.two_sided_delta = true;
    t.bypass = true;
    return t;
  }
  static Status check(const Params&) { return Status::success(); }
  template <typename Real>
  CGRPO_HD static PolicyOutput<Real> eval(const PolicyInputs<Real>& in, const RatioParams<Real>& p, const Params&) {
    const Real A = in.advantage, r = in.ratio.r;
    PolicyOutput<Real> o{};
    o.ratio = r;
    // TRL's r~ = min(r, delta), also for its clip metrics; torch.clamp passes gradient at r = delta.
    Real capped = math::min(r, p.two_sided_delta);
    const Real pg1 = -A * capped;
    const Real pg2 = -A * math::clamp(r, p.clip_low, p.clip_high);
    const bool clipped = pg2 > pg1;
    o.loss = clipped ? pg2 : pg1;
    // The second branch is constant outside the band; inside it (reachable only under delta, where
    // min(r, delta) < r) it is -A r with its gradient.
    const bool in_band = r >= p.clip_low && r <= p.clip_high;
    o.dq = (clipped ? in_band : r <= p.two_sided_delta) ? -A * in.ratio.dr : Real(0);
    if (clipped) o.flags |= kClipped;
    if (p.dual_clip && A < Real(0)) {
      const Real pg3 = -A * p.dual_clip_c;
      if (o.loss > pg3) {
        o.loss = pg3;
        o.dq = Real(0);
        o.flags |= kClippedLower;
      }
      capped = math::min(r, p.dual_clip_c);
    }
    if (A < Real(0) && capped < p.clip_low) o.flags |= kRatioBelow;
    if (A > Real(0) && capped > p.clip_high) o.flags |= kRatioAbove;
    return o;
  }
  static TermBound bound(const BoundInputs& b, const RatioParams<double>& r, const Params&) {
    return ratio_term_bound(b, r);
  }
};

}  // namespace cgrpo
