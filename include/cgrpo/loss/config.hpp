// cgrpo/loss/config.hpp: the plain config struct of the loss, its enums and its validation.
// Defaults are those of the Critique-GRPO paper's released runs; presets.hpp names the peers' recipes.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "cgrpo/base/status.hpp"

namespace cgrpo {

// How one scalar advantage per response is computed from the rewards of its group.
enum class AdvantageEstimator : int {
  grpo = 0,                   // (R - mean_g) / (std_g + eps), std unbiased
  grpo_no_std = 1,            // R - mean_g (Dr. GRPO, the paper's released runs, TRL scale_rewards=none)
  rloo = 2,                   // n/(n-1) * (R - mean_g)
  reinforce_pp_baseline = 3,  // R - mean_g, then whitened over the batch's valid tokens
  grpo_batch_std = 4,         // (R - mean_g) / (std_batch + eps): TRL scale_rewards=batch
};

// The policy term of initial (on-policy) tokens; refinement tokens always get the shaping
// -A f(p). Each is one small struct in policy_terms.hpp (docs/MATH.md, "Policy losses").
enum class PolicyLoss : int {
  ratio = 0,      // -A r, no clipping (the paper's released runs)
  ppo_clip = 1,   // max(-A r, -A clamp(r, 1 - eps_low, 1 + eps_high)), optional dual clip
  cispo = 2,      // verl: -sg(clamp(r, 1 - eps_low, 1 + eps_high)) A logp
  cispo_cap = 3,  // TRL: -sg(min(r, cispo_ratio_cap)) A logp
  sapo = 4,       // -A sigmoid(tau (r - 1)) 4 / tau, tau by the sign of A
  gpg = 5,        // -A logp
  geo_mean = 6,   // GMPO: -Abar_i exp(row mean of the sign-clipped log ratio), one value per row
  kl_cov = 7,     // -A r + coef |logp - old| on the top-k tokens by covariance
  clip_cov = 8,   // ppo_clip with the loss of a selected token subset zeroed
  reinforce = 9,  // -A logp (verl's bypass-mode REINFORCE; IS weights multiply it)
  vespo = 10,     // TRL: -phi_i A logp, phi_i a per-row gamma weight
};

// Where the ratio r of the ratio-based losses comes from.
enum class RatioLevel : int {
  token = 0,              // r_t = exp(clamp(logp_t - old_t))
  sequence_detached = 1,  // verl GSPO: r = exp(clamp(sg(mean_i x)) + logp_t - sg(logp_t)): dr/dlogp_t = r
  sequence = 2,           // TRL: r_i = exp(mean_i x), differentiated through the mean (couples the row)
};

// KL estimator of the policy against the reference policy (verl's kl_penalty).
enum class KlEstimator : int {
  none = 0,
  k1 = 1,   // logp - ref             (verl "kl")
  abs = 2,  // |logp - ref|           (verl "abs")
  k2 = 3,   // 0.5 (logp - ref)^2     (verl "mse")
  k3 = 4,   // e^(ref-logp) - (ref-logp) - 1 (verl "low_var_kl"; clamps: config.kl_k3_clamp)
};

// Loss aggregation: every mode is a per-token weight w_t (agg(x) = sum_t w_t x_t).
enum class Aggregation : int {
  token_mean = 0,               // m / (N + eps)
  seq_mean_token_sum = 1,       // m / B
  seq_mean_token_mean = 2,      // m / (B * (n_i + eps))
  seq_mean_token_sum_norm = 3,  // m / L
};

// The peers' conventions for the denominators of the aggregation modes.
struct AggregationConvention {
  double token_mean_eps = 1e-8;  // token-mean divides by N + this (paper fork: 1e-8; verl, TRL: 0)
  double row_count_eps = 0.0;    // seq-mean-token-mean divides row i by n_i + this (verl: 1e-8)
  bool count_empty_rows = true;  // seq-mean-*: B counts every row (paper, TRL) or only rows with a
                                 // valid token (verl's B+)
};

// verl's rollout correction (rollout_corr_helper.py): importance weights and rejection of the
// tokens or rows whose training / rollout log ratio d is too far from 0. Needs batch.rollout_logp.
enum class RolloutCorrectionMode : int {
  none = 0,
  decoupled = 1,  // d = old - rollout; the policy loss is multiplied by the IS weight and every
                  // term (policy, entropy, KL) aggregates over the kept mask
  bypass = 2,     // old = rollout; d = sg(logp) - rollout; policy_loss ppo_clip (no IS factor) or
                  // reinforce (IS factor); only the policy term aggregates over the kept mask
};

enum class RolloutIsLevel : int {
  none = 0,
  token = 1,     // w_t = min(exp(clamp(d_t, -20, 20)), threshold)
  sequence = 2,  // w_t = min(exp(clamp(sum_i d, -20, 20)), threshold) at every token of row i
};

// One rejection option: a statistic of k1 = -d, k2 = d^2 / 2 or k3 = e^d - 1 - d (d clamped to
// +-20), per token or per row (sum, mean or max over the row's valid tokens).
enum class RejectionStatistic : int {
  token_k1 = 0, token_k2 = 1, token_k3 = 2,
  seq_sum_k1 = 3, seq_sum_k2 = 4, seq_sum_k3 = 5,
  seq_mean_k1 = 6, seq_mean_k2 = 7, seq_mean_k3 = 8,
  seq_max_k2 = 9, seq_max_k3 = 10,
};

struct RejectionOption {
  RejectionStatistic statistic = RejectionStatistic::token_k1;
  double lower = 0.0;  // k1 statistics: keep log(lower) <= stat <= log(upper); 0 means 1 / upper
  double upper = 2.0;  // k2 / k3 statistics: keep stat <= upper
};

struct RolloutCorrectionConfig {
  static constexpr int kMaxRejectionOptions = 4;

  RolloutCorrectionMode mode = RolloutCorrectionMode::none;
  RolloutIsLevel is_level = RolloutIsLevel::none;
  double is_threshold = 2.0;                            // upper truncation of the IS weight
  bool is_batch_normalize = false;                      // verl rollout_is_batch_normalize: divide the
                                                        // truncated weights by their mean over the batch
  int num_rejection_options = 0;                        // a token is kept only if every option keeps it
  RejectionOption rejection[kMaxRejectionOptions] = {};
};

// TRL's vLLM importance-sampling correction (GRPOTrainer): a weight from old / rollout, computed
// without gradient, that multiplies the policy loss; a masked token keeps its place in every
// denominator. Needs batch.rollout_logp.
enum class SamplerCorrectionMode : int {
  none = 0,
  token_truncate = 1,     // u_t = clamp(exp(old_t - roll_t), min, max)
  token_mask = 2,         // u_t = exp(old_t - roll_t) inside [min, max], else 0
  sequence_truncate = 3,  // u_i = clamp(exp(sum_i (old - roll)), min, max)
  sequence_mask = 4,      // u_i inside [min, max], else 0
};

struct SamplerCorrectionConfig {
  SamplerCorrectionMode mode = SamplerCorrectionMode::none;
  double min = 0.0;                                       // 0: no lower bound
  double max = std::numeric_limits<double>::infinity();   // inf: no upper bound
};

const char* to_string(AdvantageEstimator e);
const char* to_string(PolicyLoss e);
const char* to_string(RatioLevel e);
const char* to_string(KlEstimator e);
const char* to_string(Aggregation e);
const char* to_string(RolloutCorrectionMode e);
const char* to_string(RolloutIsLevel e);
const char* to_string(RejectionStatistic e);
const char* to_string(SamplerCorrectionMode e);

// The temperatures accepted: (0, kMaxTemperature]. Above 1e300 a double row spanning more than
// DBL_MAX (logits of opposite signs near DBL_MAX) has shifted values z - max that overflow while
// (z - max) / tau does not, so the sweeps could not keep them; at or below it every such value is
// below -1e8, where exp is 0 (float rows are shifted in double and never span that far).
inline constexpr double kMaxTemperature = 1e300;
inline bool temperature_in_range(double temperature) { return temperature > 0 && temperature <= kMaxTemperature; }

struct LossConfig {
  // Advantages (group_advantages).
  AdvantageEstimator advantage = AdvantageEstimator::grpo_no_std;
  double advantage_eps = 1e-6;    // grpo / grpo_batch_std: (std + eps) (verl 1e-6, TRL 1e-4)
  double whiten_eps = 1e-8;       // reinforce_pp_baseline: rsqrt(var + eps)

  // Policy term of initial tokens.
  PolicyLoss policy_loss = PolicyLoss::ratio;
  RatioLevel ratio_level = RatioLevel::token;
  double clip_eps_low = 0.2;      // ratio clamped to [1 - eps_low, 1 + eps_high] (geo_mean: the
  double clip_eps_high = 0.2;     // log ratio to [-eps_low, eps_high])
  bool dual_clip = false;         // only where A < 0: l = min(l, -A c) (verl always; TRL's delta)
  double dual_clip_c = 3.0;
  double log_ratio_min = -20.0;   // logp - old (or the row mean) is clamped to [min, max] before
  double log_ratio_max = 20.0;    // exp; +-inf: no clamp (TRL). The clamp passes no gradient outside.
  double cispo_ratio_cap = 5.0;   // cispo_cap: TRL's epsilon_high used as an absolute cap on r
  double two_sided_delta = std::numeric_limits<double>::infinity();  // ppo_clip, TRL's delta: the
                                  // unclipped branch takes min(r, delta) for either sign of A; inf: off
  double sapo_tau_pos = 1.0;      // sapo: tau where A > 0
  double sapo_tau_neg = 1.05;     // sapo: tau where A <= 0
  double cov_ratio = 2e-4;        // kl_cov / clip_cov: the fraction of valid tokens selected
  double kl_cov_coef = 1.0;       // kl_cov: coefficient of |logp - old| at selected tokens
  double clip_cov_lower = 1.0;    // clip_cov: candidate tokens have cov in (lower, upper)
  double clip_cov_upper = 5.0;
  uint64_t clip_cov_seed = 0;     // clip_cov: counter-based choice among the candidates
  double vespo_k_pos = 2.0;       // vespo: phi = exp(lambda + k lw - lambda e^lw), (k, lambda) by
  double vespo_lambda_pos = 3.0;  // the sign of A (A >= 0: _pos)
  double vespo_k_neg = 3.0;
  double vespo_lambda_neg = 2.0;

  // Refinement tokens: f(p) = p / (p + gamma).
  double refinement_gamma = 0.1;

  // J = pg - c_H * agg_H(H) + beta * agg_KL(KL)
  double entropy_coef = 0.001;
  KlEstimator kl = KlEstimator::none;
  double kl_coef = 0.0;
  bool kl_straight_through = false;  // verl "k1+", "abs+", "k3+": the estimator's value, k2's gradient
  bool kl_k3_clamp = true;           // k3: ref - logp clamped to +-20 and the value to +-10 (verl);
                                     // false: unclamped (TRL)
  bool kl_times_ratio = false;       // TRL use_bias_correction_kl: KL_t * r (r differentiated)

  Aggregation pg_aggregation = Aggregation::seq_mean_token_sum_norm;
  Aggregation entropy_aggregation = Aggregation::token_mean;
  Aggregation kl_aggregation = Aggregation::token_mean;
  AggregationConvention aggregation;  // denominators' conventions, shared by the three terms

  // Off-policy corrections from batch.rollout_logp (one input, each peer's semantics).
  RolloutCorrectionConfig rollout;    // verl
  SamplerCorrectionConfig sampler;    // TRL
  double off_policy_mask_threshold = std::numeric_limits<double>::infinity();  // TRL OPSM delta; inf: off
  double top_entropy_quantile = 1.0;  // TRL: < 1 trains the policy term only on tokens whose H is
                                      // at or above the (1 - this) quantile of the batch's valid H
  bool entropy_count_all_tokens = false;  // TRL dapo/cispo/vespo: with the entropy mask, the entropy
                                          // term still divides by every valid token

  double metric_mean_eps = 0.0;       // added to the count of every metric mean (verl's masked_mean: 1e-8)

  double temperature = 1.0;           // logits are divided by it before the softmax; (0, 1e300]

  int num_threads = 1;                // CPU path: rows split across this many threads

  // Checks every field; the message names the field and the rule it breaks.
  Status validate() const;
  // The checks of TRL's fields (two_sided_delta, OPSM beside verl's rollout, vespo's vLLM level), part of validate().
  Status validate_trl_fields() const;

  // True when the ratio of initial tokens is one per row (GSPO / TRL sequence level).
  bool sequence_ratio() const { return ratio_level != RatioLevel::token && defines_ratio(); }
  // True when initial tokens have a ratio r: the ratio-based losses, and TRL's vespo, whose r only
  // reaches kl_times_ratio (its own weight phi comes from a row pre-pass).
  bool defines_ratio() const { return uses_ratio() || policy_loss == PolicyLoss::vespo; }
  // True for the losses whose initial-token term depends on r = exp(logp - old).
  bool uses_ratio() const {
    return policy_loss == PolicyLoss::ratio || policy_loss == PolicyLoss::ppo_clip ||
           policy_loss == PolicyLoss::cispo || policy_loss == PolicyLoss::cispo_cap ||
           policy_loss == PolicyLoss::sapo || policy_loss == PolicyLoss::kl_cov ||
           policy_loss == PolicyLoss::clip_cov;
  }
  // True when batch.rollout_logp is read.
  bool needs_rollout_logp() const {
    return rollout.mode != RolloutCorrectionMode::none || sampler.mode != SamplerCorrectionMode::none;
  }
};

// The per-token scalars of `config` in the precision of the path that uses them.
// Kernels take it by value; they never see modes as strings.
template <typename Real>
struct TokenLossParams {
  int policy_loss;          // PolicyLoss
  int ratio_level;          // RatioLevel
  int kl_estimator;         // KlEstimator
  bool dual_clip;
  bool kl_straight_through;
  bool kl_k3_clamp;
  bool kl_times_ratio;
  Real clip_low;            // 1 - eps_low
  Real clip_high;           // 1 + eps_high
  Real clip_eps_low;        // geo_mean clips the log ratio to [-eps_low, eps_high]
  Real clip_eps_high;
  Real dual_clip_c;         // c > 1
  Real log_ratio_min;       // clamp of the log ratio before exp (may be -inf)
  Real log_ratio_max;       // (may be +inf)
  Real cispo_ratio_cap;
  Real two_sided_delta;     // TRL delta (may be +inf: off)
  Real sapo_tau_pos, sapo_tau_neg;
  Real kl_cov_coef;
  Real gamma;               // refinement shaping constant
  Real kl_coef;             // beta (0 when kl = none)
  Real entropy_coef;        // c_H
  double temperature;       // tau, exact; kernels use inv_temperature
  Real inv_temperature;     // 1 / tau rounded to Real
};

template <typename Real>
TokenLossParams<Real> token_params(const LossConfig& config);

// ---------------------------------------------------------------------------

inline const char* to_string(AdvantageEstimator e) {
  switch (e) {
    case AdvantageEstimator::grpo: return "grpo";
    case AdvantageEstimator::grpo_no_std: return "grpo_no_std";
    case AdvantageEstimator::rloo: return "rloo";
    case AdvantageEstimator::reinforce_pp_baseline: return "reinforce_pp_baseline";
    case AdvantageEstimator::grpo_batch_std: return "grpo_batch_std";
  }
  return "unknown";
}
inline const char* to_string(PolicyLoss e) {
  switch (e) {
    case PolicyLoss::ratio: return "ratio";
    case PolicyLoss::ppo_clip: return "ppo_clip";
    case PolicyLoss::cispo: return "cispo";
    case PolicyLoss::cispo_cap: return "cispo_cap";
    case PolicyLoss::sapo: return "sapo";
    case PolicyLoss::gpg: return "gpg";
    case PolicyLoss::geo_mean: return "geo_mean";
    case PolicyLoss::kl_cov: return "kl_cov";
    case PolicyLoss::clip_cov: return "clip_cov";
    case PolicyLoss::reinforce: return "reinforce";
    case PolicyLoss::vespo: return "vespo";
  }
  return "unknown";
}
inline const char* to_string(RatioLevel e) {
  switch (e) {
    case RatioLevel::token: return "token";
    case RatioLevel::sequence_detached: return "sequence_detached";
    case RatioLevel::sequence: return "sequence";
  }
  return "unknown";
}
inline const char* to_string(KlEstimator e) {
  switch (e) {
    case KlEstimator::none: return "none";
    case KlEstimator::k1: return "k1";
    case KlEstimator::abs: return "abs";
    case KlEstimator::k2: return "k2";
    case KlEstimator::k3: return "k3";
  }
  return "unknown";
}
inline const char* to_string(Aggregation e) {
  switch (e) {
    case Aggregation::token_mean: return "token-mean";
    case Aggregation::seq_mean_token_sum: return "seq-mean-token-sum";
    case Aggregation::seq_mean_token_mean: return "seq-mean-token-mean";
    case Aggregation::seq_mean_token_sum_norm: return "seq-mean-token-sum-norm";
  }
  return "unknown";
}
inline const char* to_string(RolloutCorrectionMode e) {
  switch (e) {
    case RolloutCorrectionMode::none: return "none";
    case RolloutCorrectionMode::decoupled: return "decoupled";
    case RolloutCorrectionMode::bypass: return "bypass";
  }
  return "unknown";
}
inline const char* to_string(RolloutIsLevel e) {
  switch (e) {
    case RolloutIsLevel::none: return "none";
    case RolloutIsLevel::token: return "token";
    case RolloutIsLevel::sequence: return "sequence";
  }
  return "unknown";
}
inline const char* to_string(RejectionStatistic e) {
  switch (e) {
    case RejectionStatistic::token_k1: return "token_k1";
    case RejectionStatistic::token_k2: return "token_k2";
    case RejectionStatistic::token_k3: return "token_k3";
    case RejectionStatistic::seq_sum_k1: return "seq_sum_k1";
    case RejectionStatistic::seq_sum_k2: return "seq_sum_k2";
    case RejectionStatistic::seq_sum_k3: return "seq_sum_k3";
    case RejectionStatistic::seq_mean_k1: return "seq_mean_k1";
    case RejectionStatistic::seq_mean_k2: return "seq_mean_k2";
    case RejectionStatistic::seq_mean_k3: return "seq_mean_k3";
    case RejectionStatistic::seq_max_k2: return "seq_max_k2";
    case RejectionStatistic::seq_max_k3: return "seq_max_k3";
  }
  return "unknown";
}
inline const char* to_string(SamplerCorrectionMode e) {
  switch (e) {
    case SamplerCorrectionMode::none: return "none";
    case SamplerCorrectionMode::token_truncate: return "token_truncate";
    case SamplerCorrectionMode::token_mask: return "token_mask";
    case SamplerCorrectionMode::sequence_truncate: return "sequence_truncate";
    case SamplerCorrectionMode::sequence_mask: return "sequence_mask";
  }
  return "unknown";
}

// k1 rejection statistics test a two-sided band; k2 / k3 an upper bound.
inline bool rejection_is_k1(RejectionStatistic s) {
  return s == RejectionStatistic::token_k1 || s == RejectionStatistic::seq_sum_k1 ||
         s == RejectionStatistic::seq_mean_k1;
}

inline Status LossConfig::validate() const {
  auto finite = [](double v) { return std::isfinite(v); };
  if (static_cast<unsigned>(advantage) > 4u) return make_error(StatusCode::invalid_argument, "config.advantage: unknown estimator %d", static_cast<int>(advantage));
  if (static_cast<unsigned>(policy_loss) > 10u)
    return make_error(StatusCode::invalid_argument, "config.policy_loss: unknown policy loss %d", static_cast<int>(policy_loss));
  if (static_cast<unsigned>(ratio_level) > 2u)
    return make_error(StatusCode::invalid_argument, "config.ratio_level: unknown ratio level %d", static_cast<int>(ratio_level));
  if (static_cast<unsigned>(kl) > 4u) return make_error(StatusCode::invalid_argument, "config.kl: unknown KL estimator %d", static_cast<int>(kl));
  if (static_cast<unsigned>(pg_aggregation) > 3u)
    return make_error(StatusCode::invalid_argument, "config.pg_aggregation: unknown mode %d", static_cast<int>(pg_aggregation));
  if (static_cast<unsigned>(entropy_aggregation) > 3u)
    return make_error(StatusCode::invalid_argument, "config.entropy_aggregation: unknown mode %d", static_cast<int>(entropy_aggregation));
  if (static_cast<unsigned>(kl_aggregation) > 3u)
    return make_error(StatusCode::invalid_argument, "config.kl_aggregation: unknown mode %d", static_cast<int>(kl_aggregation));

  if (!finite(advantage_eps) || advantage_eps < 0)
    return make_error(StatusCode::invalid_argument, "config.advantage_eps must be finite and >= 0, got %g", advantage_eps);
  if (!finite(whiten_eps) || whiten_eps < 0) return make_error(StatusCode::invalid_argument, "config.whiten_eps must be finite and >= 0, got %g", whiten_eps);

  // Clip bounds: every loss that clips reads them.
  const bool clips = policy_loss == PolicyLoss::ppo_clip || policy_loss == PolicyLoss::cispo ||
                     policy_loss == PolicyLoss::geo_mean || policy_loss == PolicyLoss::clip_cov;
  if (clips) {
    // geo_mean clips the log ratio; cispo's band may open below (verl's CISPO recipe sets eps_low = 10).
    const bool any_low = policy_loss == PolicyLoss::geo_mean || policy_loss == PolicyLoss::cispo;
    if (!finite(clip_eps_low) || clip_eps_low < 0 || (!any_low && clip_eps_low >= 1))
      return make_error(StatusCode::invalid_argument, "config.clip_eps_low must be finite, >= 0 and < 1 (geo_mean, cispo: any finite >= 0), got %g", clip_eps_low);
    if (!finite(clip_eps_high) || clip_eps_high < 0)
      return make_error(StatusCode::invalid_argument, "config.clip_eps_high must be finite and >= 0, got %g", clip_eps_high);
  }
  if (dual_clip) {
    if (policy_loss != PolicyLoss::ppo_clip)
      return make_error(StatusCode::invalid_argument, "config.dual_clip applies to policy_loss ppo_clip only, not %s", to_string(policy_loss));
    if (!finite(dual_clip_c) || dual_clip_c <= 1) return make_error(StatusCode::invalid_argument, "config.dual_clip_c must be finite and > 1, got %g", dual_clip_c);
  }
  if (std::isnan(log_ratio_min) || std::isnan(log_ratio_max) || log_ratio_min > 0 || log_ratio_max < 0)
    return make_error(StatusCode::invalid_argument, "config.log_ratio_min must be <= 0 and log_ratio_max >= 0 (+-inf: no clamp), got [%g, %g]",
               log_ratio_min, log_ratio_max);
  if (policy_loss == PolicyLoss::cispo_cap && (!finite(cispo_ratio_cap) || cispo_ratio_cap <= 0))
    return make_error(StatusCode::invalid_argument, "config.cispo_ratio_cap must be finite and > 0, got %g", cispo_ratio_cap);
  if (policy_loss == PolicyLoss::sapo &&
      (!finite(sapo_tau_pos) || !finite(sapo_tau_neg) || sapo_tau_pos <= 0 || sapo_tau_neg <= 0))
    return make_error(StatusCode::invalid_argument, "config.sapo_tau_pos and sapo_tau_neg must be finite and > 0, got %g and %g", sapo_tau_pos, sapo_tau_neg);
  if (policy_loss == PolicyLoss::kl_cov || policy_loss == PolicyLoss::clip_cov) {
    if (!finite(cov_ratio) || cov_ratio <= 0 || cov_ratio > 1)
      return make_error(StatusCode::invalid_argument, "config.cov_ratio must be in (0, 1], got %g", cov_ratio);
    if (!finite(kl_cov_coef)) return make_error(StatusCode::invalid_argument, "config.kl_cov_coef must be finite, got %g", kl_cov_coef);
    if (std::isnan(clip_cov_lower) || std::isnan(clip_cov_upper) || clip_cov_lower >= clip_cov_upper)
      return make_error(StatusCode::invalid_argument, "config.clip_cov_lower must be < clip_cov_upper, got %g and %g", clip_cov_lower, clip_cov_upper);
  }
  if (policy_loss == PolicyLoss::vespo &&
      (!finite(vespo_k_pos) || !finite(vespo_k_neg) || !finite(vespo_lambda_pos) || !finite(vespo_lambda_neg)))
    return make_error(StatusCode::invalid_argument, "config.vespo_k_pos/k_neg/lambda_pos/lambda_neg must be finite");
  if (ratio_level != RatioLevel::token && !defines_ratio())
    return make_error(StatusCode::invalid_argument, "config.ratio_level = %s needs a ratio-based policy_loss, not %s", to_string(ratio_level),
               to_string(policy_loss));
  if (policy_loss == PolicyLoss::geo_mean || policy_loss == PolicyLoss::kl_cov || policy_loss == PolicyLoss::clip_cov) {
    if (ratio_level != RatioLevel::token)
      return make_error(StatusCode::invalid_argument, "config.policy_loss = %s is defined at token level only (ratio_level = token)", to_string(policy_loss));
  }

  if (!finite(refinement_gamma) || refinement_gamma <= 0)
    return make_error(StatusCode::invalid_argument, "config.refinement_gamma must be finite and > 0, got %g", refinement_gamma);
  if (!finite(entropy_coef)) return make_error(StatusCode::invalid_argument, "config.entropy_coef must be finite, got %g", entropy_coef);
  if (!finite(kl_coef) || (kl == KlEstimator::none && kl_coef != 0.0))
    return make_error(StatusCode::invalid_argument, "config.kl_coef must be finite, and 0 when kl = none (got %g)", kl_coef);
  if (kl == KlEstimator::none && (kl_straight_through || kl_times_ratio))
    return make_error(StatusCode::invalid_argument, "config.kl_straight_through and kl_times_ratio need a KL estimator (kl = none)");
  if (kl_times_ratio && !defines_ratio())
    return make_error(StatusCode::invalid_argument, "config.kl_times_ratio needs a ratio-based policy_loss, not %s", to_string(policy_loss));

  const AggregationConvention& a = aggregation;
  if (!finite(a.token_mean_eps) || a.token_mean_eps < 0)
    return make_error(StatusCode::invalid_argument, "config.aggregation.token_mean_eps must be finite and >= 0, got %g", a.token_mean_eps);
  if (!finite(a.row_count_eps) || a.row_count_eps < 0)
    return make_error(StatusCode::invalid_argument, "config.aggregation.row_count_eps must be finite and >= 0, got %g", a.row_count_eps);

  // verl's rollout correction.
  const RolloutCorrectionConfig& r = rollout;
  if (static_cast<unsigned>(r.mode) > 2u) return make_error(StatusCode::invalid_argument, "config.rollout.mode: unknown mode %d", static_cast<int>(r.mode));
  if (static_cast<unsigned>(r.is_level) > 2u)
    return make_error(StatusCode::invalid_argument, "config.rollout.is_level: unknown level %d", static_cast<int>(r.is_level));
  if (r.num_rejection_options < 0 || r.num_rejection_options > RolloutCorrectionConfig::kMaxRejectionOptions)
    return make_error(StatusCode::invalid_argument, "config.rollout.num_rejection_options must be in [0, %d], got %d",
               RolloutCorrectionConfig::kMaxRejectionOptions, r.num_rejection_options);
  if (r.mode == RolloutCorrectionMode::none && (r.is_level != RolloutIsLevel::none || r.num_rejection_options != 0))
    return make_error(StatusCode::invalid_argument, "config.rollout: is_level and rejection options need rollout.mode = decoupled or bypass");
  if (r.is_level != RolloutIsLevel::none && (!(r.is_threshold > 0) || std::isnan(r.is_threshold)))
    return make_error(StatusCode::invalid_argument, "config.rollout.is_threshold must be > 0 (inf: no truncation), got %g", r.is_threshold);
  if (r.is_batch_normalize && r.is_level == RolloutIsLevel::none)
    return make_error(StatusCode::invalid_argument, "config.rollout.is_batch_normalize needs rollout.is_level = token or sequence");
  for (int i = 0; i < r.num_rejection_options; ++i) {
    const RejectionOption& o = r.rejection[i];
    if (static_cast<unsigned>(o.statistic) > 10u)
      return make_error(StatusCode::invalid_argument, "config.rollout.rejection[%d].statistic: unknown statistic %d", i, static_cast<int>(o.statistic));
    if (!finite(o.upper) || o.upper <= 0)
      return make_error(StatusCode::invalid_argument, "config.rollout.rejection[%d].upper must be finite and > 0, got %g", i, o.upper);
    if (rejection_is_k1(o.statistic)) {
      const double lo = o.lower == 0 ? 1.0 / o.upper : o.lower;
      if (!finite(o.lower) || o.lower < 0 || lo > o.upper)
        return make_error(StatusCode::invalid_argument, "config.rollout.rejection[%d] (%s): needs 0 < lower <= upper (lower 0: 1 / upper), got %g and %g", i,
                   to_string(o.statistic), o.lower, o.upper);
    } else if (o.lower != 0) {
      return make_error(StatusCode::invalid_argument, "config.rollout.rejection[%d] (%s) takes an upper threshold only; lower must be 0, got %g", i,
                 to_string(o.statistic), o.lower);
    }
  }
  if (r.mode == RolloutCorrectionMode::bypass && policy_loss != PolicyLoss::ppo_clip &&
      policy_loss != PolicyLoss::reinforce)
    return make_error(StatusCode::invalid_argument, "config.rollout.mode = bypass is defined for policy_loss ppo_clip or reinforce (verl's loss_type), not %s",
               to_string(policy_loss));
  if (r.mode == RolloutCorrectionMode::bypass && ratio_level != RatioLevel::token)
    return make_error(StatusCode::invalid_argument, "config.rollout.mode = bypass runs verl's token-level loss: ratio_level must be token, not %s",
               to_string(ratio_level));
  if (policy_loss == PolicyLoss::reinforce && r.mode != RolloutCorrectionMode::bypass)
    return make_error(StatusCode::invalid_argument, "config.policy_loss = reinforce is verl's bypass-mode loss: set rollout.mode = bypass (or use gpg)");

  // TRL's sampler correction and masks.
  const SamplerCorrectionConfig& s = sampler;
  if (static_cast<unsigned>(s.mode) > 4u) return make_error(StatusCode::invalid_argument, "config.sampler.mode: unknown mode %d", static_cast<int>(s.mode));
  if (s.mode != SamplerCorrectionMode::none) {
    if (std::isnan(s.min) || std::isnan(s.max) || s.min < 0 || s.min > s.max || std::isinf(s.min))
      return make_error(StatusCode::invalid_argument, "config.sampler: needs 0 <= min <= max (max may be inf), got [%g, %g]", s.min, s.max);
    if (r.mode != RolloutCorrectionMode::none)
      return make_error(StatusCode::invalid_argument, "config.sampler (TRL) and config.rollout (verl) are two conventions for rollout_logp: pick one");
  }
  if (std::isnan(off_policy_mask_threshold) || off_policy_mask_threshold == -std::numeric_limits<double>::infinity())
    return make_error(StatusCode::invalid_argument, "config.off_policy_mask_threshold must not be NaN or -inf (+inf: off), got %g",
                      off_policy_mask_threshold);
  if (!(top_entropy_quantile >= 0 && top_entropy_quantile <= 1))
    return make_error(StatusCode::invalid_argument, "config.top_entropy_quantile must be in [0, 1] (1: off; 0 keeps the highest H only), got %g", top_entropy_quantile);
  CGRPO_RETURN_IF_ERROR(validate_trl_fields());

  if (!finite(metric_mean_eps) || metric_mean_eps < 0)
    return make_error(StatusCode::invalid_argument, "config.metric_mean_eps must be finite and >= 0, got %g", metric_mean_eps);
  if (!temperature_in_range(temperature))
    return make_error(StatusCode::invalid_argument, "config.temperature must be in (0, 1e300], got %g", temperature);
  if (num_threads < 1) return make_error(StatusCode::invalid_argument, "config.num_threads must be >= 1, got %d", num_threads);
  return Status::success();
}

// TRL's fields, checked where TRL itself would be ambiguous or would raise.
inline Status LossConfig::validate_trl_fields() const {
  if (!(two_sided_delta > 0))
    return make_error(StatusCode::invalid_argument, "config.two_sided_delta must be > 0 (+inf: off), got %g", two_sided_delta);
  if (std::isfinite(two_sided_delta)) {
    if (policy_loss != PolicyLoss::ppo_clip)
      return make_error(StatusCode::invalid_argument, "config.two_sided_delta (TRL's delta) applies to policy_loss ppo_clip only, not %s",
                        to_string(policy_loss));
    if (dual_clip)
      return make_error(StatusCode::invalid_argument,
                        "config.two_sided_delta (TRL's delta) and config.dual_clip (verl) both cap the unclipped branch: set one");
  }
  if (std::isfinite(off_policy_mask_threshold) && rollout.mode != RolloutCorrectionMode::none)
    return make_error(StatusCode::invalid_argument,
                      "config.off_policy_mask_threshold (TRL's OPSM) and config.rollout (verl) are two conventions for rollout_logp: pick one");
  if (policy_loss == PolicyLoss::vespo &&
      (sampler.mode == SamplerCorrectionMode::sequence_truncate || sampler.mode == SamplerCorrectionMode::sequence_mask))
    return make_error(StatusCode::invalid_argument,
                      "config.sampler.mode = %s: vespo takes the vLLM weight per token (token_truncate or token_mask), as TRL requires",
                      to_string(sampler.mode));
  return Status::success();
}

template <typename Real>
inline TokenLossParams<Real> token_params(const LossConfig& c) {
  TokenLossParams<Real> p{};
  p.policy_loss = static_cast<int>(c.policy_loss);
  p.ratio_level = static_cast<int>(c.ratio_level);
  p.kl_estimator = static_cast<int>(c.kl);
  p.dual_clip = c.dual_clip;
  p.kl_straight_through = c.kl_straight_through;
  p.kl_k3_clamp = c.kl_k3_clamp;
  p.kl_times_ratio = c.kl_times_ratio;
  p.clip_low = static_cast<Real>(1.0 - c.clip_eps_low);
  p.clip_high = static_cast<Real>(1.0 + c.clip_eps_high);
  p.clip_eps_low = static_cast<Real>(c.clip_eps_low);
  p.clip_eps_high = static_cast<Real>(c.clip_eps_high);
  p.dual_clip_c = static_cast<Real>(c.dual_clip_c);
  p.log_ratio_min = static_cast<Real>(c.log_ratio_min);
  p.log_ratio_max = static_cast<Real>(c.log_ratio_max);
  p.cispo_ratio_cap = static_cast<Real>(c.cispo_ratio_cap);
  p.two_sided_delta = static_cast<Real>(c.two_sided_delta);
  p.sapo_tau_pos = static_cast<Real>(c.sapo_tau_pos);
  p.sapo_tau_neg = static_cast<Real>(c.sapo_tau_neg);
  p.kl_cov_coef = static_cast<Real>(c.kl_cov_coef);
  p.gamma = static_cast<Real>(c.refinement_gamma);
  p.kl_coef = static_cast<Real>(c.kl == KlEstimator::none ? 0.0 : c.kl_coef);
  p.entropy_coef = static_cast<Real>(c.entropy_coef);
  p.temperature = c.temperature;
  p.inv_temperature = static_cast<Real>(1.0 / c.temperature);
  return p;
}

}  // namespace cgrpo
