// cgrpo/loss/config.hpp: the plain config struct of the loss, nested by concern, and its validation.
// Defaults are those of the Critique-GRPO paper's released runs; presets/ names the peers' recipes.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "cgrpo/base/status.hpp"
#include "cgrpo/corrections/entropy_mask.hpp"
#include "cgrpo/corrections/rollout_correction.hpp"
#include "cgrpo/corrections/sampler_correction.hpp"
#include "cgrpo/loss/aggregation_modes.hpp"
#include "cgrpo/loss/kl_estimators.hpp"
#include "cgrpo/loss/policy_terms.hpp"
#include "cgrpo/loss/ratio.hpp"

namespace cgrpo {

// The policy term of initial tokens and its own parameters (config.policy.<term>.<field>, for the
// terms of CGRPO_POLICY_TERM_PARAMS), and the refinement tokens' shaping f(p) = p / (p + gamma).
struct PolicyConfig : PolicyParams {
  PolicyLoss loss = PolicyLoss::ratio;
  double refinement_gamma = 0.1;
};

// J = pg - coef * agg_H(H) + ...
struct EntropyConfig {
  double coef = 0.001;
};

// The off-policy corrections from batch.rollout_logp (one input, each peer's semantics).
struct OffPolicyConfig {
  RolloutCorrectionConfig rollout;  // verl's rollout correction
  SamplerCorrectionConfig sampler;  // TRL's vLLM importance sampling
  double opsm_threshold = std::numeric_limits<double>::infinity();  // TRL's off-policy sequence mask
                                    // (off_policy_mask_threshold); inf: off
};

struct MetricsConfig {
  double mean_eps = 0.0;  // added to the count of every metric mean (verl's masked_mean: 1e-8)
};

// The temperatures accepted: (0, kMaxTemperature]. Above 1e300 a double row spanning more than
// DBL_MAX (logits of opposite signs near DBL_MAX) has shifted values z - max that overflow while
// (z - max) / tau does not, so the sweeps could not keep them; at or below it every such value is
// below -1e8, where exp is 0 (float rows are shifted in double and never span that far).
inline constexpr double kMaxTemperature = 1e300;

// The one check of a temperature (the loss config's and token_logprobs' argument); `name` is the
// field the message names.
inline Status check_temperature(double temperature, const char* name) {
  if (!(temperature > 0 && temperature <= kMaxTemperature))
    return make_error(StatusCode::invalid_argument, "%s must be in (0, 1e300], got %g", name, temperature);
  return Status::success();
}

// The one place a temperature is inverted: logits are multiplied by this (in double) before the softmax.
inline double inverse_temperature(double temperature) { return 1.0 / temperature; }

// J = agg_pg(l) - entropy.coef * agg_H(H) + kl.coef * agg_KL(KL), over the terms below.
struct LossConfig {
  PolicyConfig policy;            // the term of initial tokens, its parameters, the refinement shaping
  RatioConfig ratio;              // the ratio's level, clipping and log-ratio clamp
  KlConfig kl;                    // the KL estimator against the reference policy
  EntropyConfig entropy;          // the entropy bonus
  AggregationConfig aggregation;  // each term's mode and the denominators' conventions
  OffPolicyConfig off_policy;     // verl's rollout correction, TRL's sampler weight and OPSM
  EntropyMaskConfig entropy_mask; // TRL's top-entropy mask of the policy term
  MetricsConfig metrics;          // metric means' conventions
  double temperature = 1.0;       // logits are divided by it before the softmax; (0, 1e300]

  // Checks every field; the message names the field and the rule it breaks.
  Status validate() const;

  // The traits of the policy term and of the ratio level.
  PolicyTraits term() const { return traits_of(policy.loss); }
  RatioLevelTraits level() const { return traits_of(ratio.level); }
  // True when initial tokens have a ratio r: the ratio-based terms, and vespo, whose r only reaches
  // kl.times_ratio.
  bool defines_ratio() const { return term().ratio != RatioUse::none; }
  // True when the ratio of initial tokens is one per row (GSPO / TRL sequence level).
  bool sequence_ratio() const { return level().row_ratio && defines_ratio(); }
  // True when batch.rollout_logp is read by a correction (verl's rollout, TRL's sampler).
  bool needs_rollout_logp() const {
    return off_policy.rollout.mode != RolloutCorrectionMode::none || traits_of(off_policy.sampler.mode).on;
  }
  bool kl_on() const { return kl.estimator != KlEstimator::none; }
  bool opsm_on() const { return std::isfinite(off_policy.opsm_threshold); }
  bool bypass() const { return off_policy.rollout.mode == RolloutCorrectionMode::bypass; }
};

// ---------------------------------------------------------------------------
// The per-token scalars of a config in the precision of the path that uses them. Kernels take it
// by value; they never see modes as strings.
template <typename Real>
struct TokenLossParams {
  int policy_loss;          // PolicyLoss
  int kl_estimator;         // KlEstimator
  bool kl_straight_through;
  bool kl_k3_clamp;
  bool kl_times_ratio;
  bool ratio_from_row;      // the ratio's log ratio q is the row's (sequence levels), not the token's
  bool ratio_through_row;   // ... and is differentiated through the row mean (TRL's sequence level)
  bool row_term;            // the term's loss is a row value (geo_mean): its dq reaches the row
  int ppo_kl;               // PpoKl of the term, raw at sequence levels
  RatioParams<Real> ratio;
  PolicyParams policy;      // every term's own parameters, in double (a term casts what it reads)
  Real gamma;               // refinement shaping constant
  Real kl_coef;             // beta (0 when kl = none)
  Real entropy_coef;        // c_H
  double temperature;       // tau, exact
  Real inv_temperature;     // 1 / tau rounded to Real (kernels)
};

template <typename Real>
inline TokenLossParams<Real> token_params(const LossConfig& c) {
  const PolicyTraits term = c.term();
  const RatioLevelTraits level = c.level();
  TokenLossParams<Real> p{};
  p.policy_loss = static_cast<int>(c.policy.loss);
  p.kl_estimator = static_cast<int>(c.kl.estimator);
  p.kl_straight_through = c.kl.straight_through;
  p.kl_k3_clamp = c.kl.k3_clamp;
  p.kl_times_ratio = c.kl.times_ratio;
  p.ratio_from_row = level.row_ratio;
  p.ratio_through_row = level.differentiated;
  p.row_term = term.row_log_ratio;
  p.ppo_kl = static_cast<int>(term.ppo_kl == PpoKl::clamped && level.row_ratio ? PpoKl::raw : term.ppo_kl);
  p.ratio = ratio_params<Real>(c.ratio);
  p.policy = c.policy;
  p.gamma = static_cast<Real>(c.policy.refinement_gamma);
  p.kl_coef = static_cast<Real>(c.kl.estimator == KlEstimator::none ? 0.0 : c.kl.coef);
  p.entropy_coef = static_cast<Real>(c.entropy.coef);
  p.temperature = c.temperature;
  p.inv_temperature = static_cast<Real>(inverse_temperature(c.temperature));
  return p;
}

// What TRL's sampler row pass needs of a config (corrections/sampler_correction.hpp).
inline SamplerRowParams sampler_row_params(const LossConfig& c) {
  SamplerRowParams p{};
  p.mode = static_cast<int>(c.off_policy.sampler.mode);
  p.min = c.off_policy.sampler.min;
  p.max = c.off_policy.sampler.max;
  p.opsm_threshold = c.off_policy.opsm_threshold;
  p.vespo = c.term().row_weight;
  p.vespo_weights = c.policy.vespo;
  return p;
}

// ---------------------------------------------------------------------------
// Validation, concern by concern, in the order the messages would name them.

namespace detail {

inline Status check_enums(const LossConfig& c) {
  if (!known(c.policy.loss))
    return make_error(StatusCode::invalid_argument, "config.policy.loss: unknown policy loss %d", static_cast<int>(c.policy.loss));
  if (!known(c.ratio.level))
    return make_error(StatusCode::invalid_argument, "config.ratio.level: unknown ratio level %d", static_cast<int>(c.ratio.level));
  if (!known(c.kl.estimator))
    return make_error(StatusCode::invalid_argument, "config.kl.estimator: unknown KL estimator %d", static_cast<int>(c.kl.estimator));
  const Aggregation modes[3] = {c.aggregation.policy, c.aggregation.entropy, c.aggregation.kl};
  const char* names[3] = {"policy", "entropy", "kl"};
  for (int k = 0; k < 3; ++k)
    if (!known(modes[k]))
      return make_error(StatusCode::invalid_argument, "config.aggregation.%s: unknown mode %d", names[k], static_cast<int>(modes[k]));
  return Status::success();
}

// The ratio concern, as far as the term's traits allow it.
inline Status check_ratio(const LossConfig& c) {
  const PolicyTraits t = c.term();
  const RatioConfig& r = c.ratio;
  if (t.clips) {
    // geo_mean clips the log ratio; cispo's band may open below (verl's CISPO recipe sets eps_low = 10).
    if (!std::isfinite(r.clip_eps_low) || r.clip_eps_low < 0 || (!t.clip_low_unbounded && r.clip_eps_low >= 1))
      return make_error(StatusCode::invalid_argument,
                        "config.ratio.clip_eps_low must be finite, >= 0 and < 1 (geo_mean, cispo: any finite >= 0), got %g",
                        r.clip_eps_low);
    if (!std::isfinite(r.clip_eps_high) || r.clip_eps_high < 0)
      return make_error(StatusCode::invalid_argument, "config.ratio.clip_eps_high must be finite and >= 0, got %g", r.clip_eps_high);
  }
  if (r.dual_clip) {
    if (!t.dual_clip)
      return make_error(StatusCode::invalid_argument, "config.ratio.dual_clip applies to policy loss ppo_clip only, not %s", t.name);
    if (!std::isfinite(r.dual_clip_c) || r.dual_clip_c <= 1)
      return make_error(StatusCode::invalid_argument, "config.ratio.dual_clip_c must be finite and > 1, got %g", r.dual_clip_c);
  }
  if (std::isnan(r.log_ratio_min) || std::isnan(r.log_ratio_max) || r.log_ratio_min > 0 || r.log_ratio_max < 0)
    return make_error(StatusCode::invalid_argument,
                      "config.ratio.log_ratio_min must be <= 0 and log_ratio_max >= 0 (+-inf: no clamp), got [%g, %g]",
                      r.log_ratio_min, r.log_ratio_max);
  if (r.level != RatioLevel::token && !c.defines_ratio())
    return make_error(StatusCode::invalid_argument, "config.ratio.level = %s needs a ratio-based policy loss, not %s",
                      to_string(r.level), t.name);
  if (t.token_level_only && r.level != RatioLevel::token)
    return make_error(StatusCode::invalid_argument, "config.policy.loss = %s is defined at token level only (ratio.level = token)",
                      t.name);
  // TRL's delta, checked where TRL itself would be ambiguous or would raise.
  if (!(r.two_sided_delta > 0))
    return make_error(StatusCode::invalid_argument, "config.ratio.two_sided_delta must be > 0 (+inf: off), got %g", r.two_sided_delta);
  if (std::isfinite(r.two_sided_delta)) {
    if (!t.two_sided_delta)
      return make_error(StatusCode::invalid_argument,
                        "config.ratio.two_sided_delta (TRL's delta) applies to policy loss ppo_clip only, not %s", t.name);
    if (r.dual_clip)
      return make_error(StatusCode::invalid_argument,
                        "config.ratio.two_sided_delta (TRL's delta) and config.ratio.dual_clip (verl) both cap the unclipped "
                        "branch: set one");
  }
  return Status::success();
}

// The terms' coefficients and the aggregation concern.
inline Status check_terms(const LossConfig& c) {
  if (!std::isfinite(c.policy.refinement_gamma) || c.policy.refinement_gamma <= 0)
    return make_error(StatusCode::invalid_argument, "config.policy.refinement_gamma must be finite and > 0, got %g",
                      c.policy.refinement_gamma);
  if (!std::isfinite(c.entropy.coef))
    return make_error(StatusCode::invalid_argument, "config.entropy.coef must be finite, got %g", c.entropy.coef);
  if (!std::isfinite(c.kl.coef) || (!c.kl_on() && c.kl.coef != 0.0))
    return make_error(StatusCode::invalid_argument, "config.kl.coef must be finite, and 0 when kl.estimator = none (got %g)",
                      c.kl.coef);
  if (!c.kl_on() && (c.kl.straight_through || c.kl.times_ratio))
    return make_error(StatusCode::invalid_argument,
                      "config.kl.straight_through and kl.times_ratio need a KL estimator (kl.estimator = none)");
  if (c.kl.times_ratio && !c.defines_ratio())
    return make_error(StatusCode::invalid_argument, "config.kl.times_ratio needs a ratio-based policy loss, not %s", c.term().name);

  const AggregationConvention& a = c.aggregation.convention;
  if (!std::isfinite(a.token_mean_eps) || a.token_mean_eps < 0)
    return make_error(StatusCode::invalid_argument,
                      "config.aggregation.convention.token_mean_eps must be finite and >= 0, got %g", a.token_mean_eps);
  if (!std::isfinite(a.row_count_eps) || a.row_count_eps < 0)
    return make_error(StatusCode::invalid_argument,
                      "config.aggregation.convention.row_count_eps must be finite and >= 0, got %g", a.row_count_eps);
  // A term or level that fixes its policy aggregation: refused by name, never overridden silently.
  const bool fixed = c.term().fixed_aggregation || c.level().fixes_aggregation;
  if (fixed && c.aggregation.policy != Aggregation::seq_mean_token_mean)
    return make_error(StatusCode::invalid_argument,
                      "config.aggregation.policy = %s: %s always aggregates its policy term as seq-mean-token-mean "
                      "(verl ignores loss_agg_mode there); set aggregation.policy = seq_mean_token_mean",
                      to_string(c.aggregation.policy),
                      c.term().fixed_aggregation ? c.term().name : "ratio.level = sequence_detached (verl's GSPO)");
  if (!std::isfinite(c.metrics.mean_eps) || c.metrics.mean_eps < 0)
    return make_error(StatusCode::invalid_argument, "config.metrics.mean_eps must be finite and >= 0, got %g", c.metrics.mean_eps);
  return Status::success();
}

// The off-policy corrections and the entropy mask, and how they combine with the term.
inline Status check_corrections(const LossConfig& c) {
  const PolicyTraits t = c.term();
  const RolloutCorrectionConfig& r = c.off_policy.rollout;
  CGRPO_RETURN_IF_ERROR(check_rollout_correction(r));
  if (r.mode == RolloutCorrectionMode::bypass && !t.bypass)
    return make_error(StatusCode::invalid_argument,
                      "config.off_policy.rollout.mode = bypass is defined for policy loss ppo_clip or reinforce (verl's "
                      "loss_type), not %s",
                      t.name);
  if (r.mode == RolloutCorrectionMode::bypass && c.ratio.level != RatioLevel::token)
    return make_error(StatusCode::invalid_argument,
                      "config.off_policy.rollout.mode = bypass runs verl's token-level loss: ratio.level must be token, not %s",
                      to_string(c.ratio.level));
  if (t.bypass_only && r.mode != RolloutCorrectionMode::bypass)
    return make_error(StatusCode::invalid_argument,
                      "config.policy.loss = %s is verl's bypass-mode loss (compute_policy_loss_bypass_mode; verl runs it "
                      "nowhere else): set off_policy.rollout.mode = bypass, or use gpg for -A log p without it",
                      t.name);

  const SamplerCorrectionConfig& s = c.off_policy.sampler;
  CGRPO_RETURN_IF_ERROR(check_sampler_correction(s));
  if (s.mode != SamplerCorrectionMode::none && r.mode != RolloutCorrectionMode::none)
    return make_error(StatusCode::invalid_argument,
                      "config.off_policy.sampler (TRL) and config.off_policy.rollout (verl) are two conventions for "
                      "rollout_logp: pick one");
  if (std::isnan(c.off_policy.opsm_threshold) || c.off_policy.opsm_threshold == -std::numeric_limits<double>::infinity())
    return make_error(StatusCode::invalid_argument,
                      "config.off_policy.opsm_threshold must not be NaN or -inf (+inf: off), got %g", c.off_policy.opsm_threshold);
  if (c.opsm_on() && r.mode != RolloutCorrectionMode::none)
    return make_error(StatusCode::invalid_argument,
                      "config.off_policy.opsm_threshold (TRL's OPSM) and config.off_policy.rollout (verl) are two "
                      "conventions for rollout_logp: pick one");
  if (t.row_weight && traits_of(s.mode).sequence)
    return make_error(StatusCode::invalid_argument,
                      "config.off_policy.sampler.mode = %s: %s takes the vLLM weight per token (token_truncate or "
                      "token_mask), as TRL requires",
                      to_string(s.mode), t.name);
  return check_entropy_mask(c.entropy_mask);
}

}  // namespace detail

inline Status LossConfig::validate() const {
  CGRPO_RETURN_IF_ERROR(detail::check_enums(*this));
  CGRPO_RETURN_IF_ERROR(detail::check_ratio(*this));
  CGRPO_RETURN_IF_ERROR(check_policy_params(policy.loss, policy));
  CGRPO_RETURN_IF_ERROR(detail::check_terms(*this));
  CGRPO_RETURN_IF_ERROR(detail::check_corrections(*this));
  return check_temperature(temperature, "config.temperature");
}

}  // namespace cgrpo
