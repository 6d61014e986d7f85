// cgrpo/loss/policy/term.hpp: what a policy term is. Its inputs and outputs for one token, the
// traits the passes are planned from, and the bound the fused LM head checks before it writes.
#pragma once

#include <stdint.h>

#include <cmath>

#include "cgrpo/base/macros.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/loss/ratio.hpp"
#include "cgrpo/math/token_math.hpp"

namespace cgrpo {

// A policy term is a struct (one header each in loss/policy/) with
//   using Params = ...;                 its own parameters (NoParams: none), config.policy.<name>
//   static constexpr PolicyTraits traits();
//   static Status check(const Params&); its parameter checks (the shared ones follow the traits)
//   template <typename Real> CGRPO_HD static PolicyOutput<Real>
//       eval(const PolicyInputs<Real>&, const RatioParams<Real>&, const Params&);
//   static TermBound bound(const BoundInputs&, const RatioParams<double>&, const Params&);
// and, for a term whose traits say row_log_ratio, the row pass hooks of RowTermHooks.
// loss/policy_terms.hpp lists every term once; everything else is derived from that list.

// Flags of one token's policy term, for the clip metrics.
enum PolicyFlag : uint8_t {
  kClipped = 1,        // ppo_clip: pg2 > pg1; cispo: r outside the band; geo_mean: x clipped where A > 0
  kClippedLower = 2,   // ppo_clip dual clip: A < 0 and max(pg1, pg2) > -A c; geo_mean: x clipped where A < 0
  kRatioBelow = 4,     // TRL clip_ratio/low: A < 0 and min(r, c) < 1 - eps_low
  kRatioAbove = 8,     // TRL clip_ratio/high: A > 0 and min(r, c) > 1 + eps_high; cispo_cap: A > 0 and r > cap
  kRowPathClosed = 16, // geo_mean: this token's log ratio is clipped (or A = 0): dq_i/dlogp_t = 0
};

// What every policy term returns for one token: its loss l_t (unweighted) and two derivatives.
//   dlogp: dl/dlogp_t through logp itself (cispo, gpg, reinforce, vespo, kl_cov's |x|, shaping);
//   dq:    dl/dq through the ratio's log ratio q. At token level and in verl's GSPO form
//          dq/dlogp_t = 1; at TRL's sequence level q is the row's mean and the row pass
//          distributes it (dq_i/dlogp_t = m_t / max(n_i, 1)); geo_mean's q is its row log ratio.
template <typename Real>
struct PolicyOutput {
  Real loss;
  Real dlogp;
  Real dq;
  Real ratio;      // r (or s_i, rho_i) for initial tokens, p_t for refinement tokens
  uint8_t flags;   // PolicyFlag bits
};

// What a policy term reads for one token. Row values come from the row pass (loss/row_pass.hpp).
template <typename Real>
struct PolicyInputs {
  Real logp;               // log p_t (current policy)
  Real old_logp;           // old_t, the ratio's reference
  Real log_ratio;          // x_t = logp_t - old_t (the token's own, unclamped)
  RatioValue<Real> ratio;  // r from the level's log ratio (token x_t or the row mean)
  Real advantage;          // A
  Real row_advantage;      // row terms (geo_mean): Abar_i
  Real row_log_ratio;      // row terms (geo_mean): q_i
  Real row_weight;         // row-weighted terms (vespo): phi_i
  bool selected;           // batch-selected terms (kl_cov: gets the |x| penalty; clip_cov: loss zeroed)
};

// How a term's ppo_kl metric reads the log ratio x (verl's loss functions log it three ways).
enum class PpoKl : uint8_t {
  clamped = 0,  // -clamp(x) at token level (the clamp of the ratio), -x at sequence levels
  raw = 1,      // -x (geo_mean, reinforce, dro: their log ratio has no clamp)
  absolute = 2, // |x| (kl_cov)
};

// Whether a term has a ratio r.
enum class RatioUse : uint8_t {
  none = 0,     // no ratio (gpg, reinforce, dro, vespo's own weight): ratio.level must be token
  defined = 1,  // r is defined (kl_times_ratio reads it) but the term does not use it (vespo)
  used = 2,     // the term is a function of r
};

// How a term's tokens are chosen by the batch pass (kl_cov, clip_cov).
enum class BatchSelection : uint8_t {
  none = 0,
  top_covariance = 1,     // the k largest cov_t (plain means, torch .mean())
  covariance_window = 2,  // k of the tokens with cov_t in (lower, upper), unclipped, by a seeded hash
                          // (verl's masked_mean: count + 1e-8)
};

// The traits of one term: what the passes, the validation and the parsers read. Every field is
// a fact about the term; the pass plan (loss/pass_plan.hpp) derives each "which pass" from them.
struct PolicyTraits {
  const char* name = "unknown";  // the enum's name and to_string
  const char* verl_name = nullptr;  // verl's policy_loss.loss_mode, if verl has it
  RatioUse ratio = RatioUse::used;
  bool clips = false;             // reads ratio.clip_eps_low / clip_eps_high
  bool clip_low_unbounded = false;  // clip_eps_low may be >= 1 (cispo's band may open below; geo_mean's is a log bound)
  bool dual_clip = false;         // accepts ratio.dual_clip
  bool two_sided_delta = false;   // accepts ratio.two_sided_delta (TRL's delta)
  bool token_level_only = false;  // ratio.level must be token
  bool row_log_ratio = false;     // l is one value per row from a row log ratio formed in the row pass
                                  // (geo_mean): the row pass hooks, a row-coupled gradient
  bool row_weight = false;        // a per-row weight from TRL's sampler row pass (vespo)
  BatchSelection selection = BatchSelection::none;
  bool bypass = false;            // allowed in verl's bypass mode
  bool bypass_only = false;       // only in verl's bypass mode (reinforce)
  bool bypass_is_factor = false;  // in bypass mode the IS weight multiplies the loss (reinforce; ppo_clip's
                                  // ratio is the correction itself)
  bool is_weight_row_mean = false;  // IS weights enter as their row's geometric mean (geo_mean)
  bool computed_weights_only = false;  // the loss must form the weights itself (geo_mean)
  bool fixed_aggregation = false; // the policy term always aggregates seq-mean-token-mean
  bool exact_row_counts = false;  // ... with exact n_i and every row in B (geo_mean's torch.mean)
  PpoKl ppo_kl = PpoKl::clamped;
  bool verl_log_ratio_clamp = true;  // verl's function clamps x to +-20 (false: geo_mean, kl_cov, clip_cov)
};

// The parameters of a term that has none.
struct NoParams {};

// ---------------------------------------------------------------------------
// The fused LM head's bound (loss/token_loss_bound.hpp): a term's |l| and |dl/dlogp| over every
// log p its row can have, before its weight. Loose on purpose; +inf for a term that cannot be
// bounded per token (the row-coupled ones), which sends the fused LM head down its two-pass path.

struct BoundInputs {
  double A;  // |advantage|
  double X;  // 1 + |logp_min| + |old| + |ref|: >= |logp|, |logp - old|, |logp - ref|
  double R;  // the largest ratio exp(clamp(-old, log_ratio_min, log_ratio_max)) (logp <= 0)
};

struct TermBound {
  double loss;
  double dlogp;
};

inline constexpr TermBound kUnbounded{INFINITY, INFINITY};

// The ratio terms' common bound: |l| <= |A| max(R, clip_high, c_dual), |dl| <= |A| R.
inline TermBound ratio_term_bound(const BoundInputs& b, const RatioParams<double>& r) {
  double c = std::fmax(b.R, std::fabs(r.clip_high));
  if (r.dual_clip) c = std::fmax(c, std::fabs(r.dual_clip_c));
  return TermBound{b.A * c, b.A * b.R};
}

// ---------------------------------------------------------------------------
// The hooks of the row pass (a term whose l is a row value, traits.row_log_ratio) and of the batch
// selection (traits.selection). Terms inherit the defaults from PerTokenTerm and override what
// their traits name (GeoMeanTerm the row hooks, KlCovTerm and ClipCovTerm the selection).

struct RowTermContext {
  double log_ratio;  // q_i
  double advantage;  // Abar_i
  double coupling;   // dq_i/dlogp_t of a token whose path is open
};

// A batch-selecting term's selection parameters (traits.selection != none).
struct TermSelection {
  double ratio = 0;          // the fraction of valid tokens selected
  double lower = 0, upper = 0;  // covariance_window: the candidates' cov window
  uint64_t seed = 0;         // covariance_window: the counter-based choice
};

struct PerTokenTerm {
  // The batch selection's parameters (a term whose traits say selection != none overrides it).
  template <typename Params>
  static TermSelection selection(const Params&) {
    return TermSelection{};
  }
  // y_t, the token's contribution to its row's sum of log ratios.
  template <typename Real, typename Params>
  CGRPO_HD static Real row_value(Real /*x*/, Real /*A*/, const RatioParams<Real>& /*r*/, const Params& /*own*/) {
    return Real(0);
  }
  // The row's context from its sums over n tokens.
  template <typename Params>
  CGRPO_HD static RowTermContext row_context(double /*n*/, double /*sum_a*/, double /*sum_y*/, const Params& /*own*/) {
    return RowTermContext{0.0, 0.0, 0.0};
  }
};

}  // namespace cgrpo
