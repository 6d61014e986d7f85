// cgrpo/config.hpp: the plain config struct of the loss and its named presets.
// Defaults are those of the Critique-GRPO paper's released runs (see ../shared/MATH.md).
#pragma once

#include <cmath>

#include "cgrpo/status.hpp"

namespace cgrpo {

// How one scalar advantage per response is computed from the rewards of its group.
enum class AdvantageEstimator : int {
  grpo = 0,                   // (R - mean) / (std_unbiased + eps)
  grpo_no_std = 1,            // R - mean (Dr. GRPO, the paper's released runs)
  rloo = 2,                   // n/(n-1) * (R - mean)
  reinforce_pp_baseline = 3,  // R - mean, then whitened over the batch's valid tokens
};

// How the on-policy (initial response) tokens turn the ratio into a loss.
enum class ClipMode : int {
  none = 0,      // l = -A * r (the paper's released runs)
  token = 1,     // PPO clipped surrogate on the token ratio r_t
  sequence = 2,  // GSPO: PPO clipping on the per-sequence ratio s_i
};

// KL estimator of the policy against the reference policy.
enum class KlEstimator : int {
  none = 0,
  k1 = 1,          // logp - ref             (verl "kl")
  abs = 2,         // |logp - ref|           (verl "abs")
  k2 = 3,          // 0.5 (logp - ref)^2     (verl "mse")
  k3 = 4,          // clamp(e^(ref-logp) - (ref-logp) - 1, -10, 10)  (verl "low_var_kl")
};

// Loss aggregation: every mode is a per-token weight w_t (agg(x) = sum_t w_t x_t).
enum class Aggregation : int {
  token_mean = 0,               // m / (sum_all m + 1e-8)
  seq_mean_token_sum = 1,       // m / B
  seq_mean_token_mean = 2,      // m / (B * n_i)
  seq_mean_token_sum_norm = 3,  // m / L
};

const char* to_string(AdvantageEstimator e);
const char* to_string(ClipMode e);
const char* to_string(KlEstimator e);
const char* to_string(Aggregation e);

// The scalars the per-token math needs, in the form kernels take by value.
// Built from LossConfig by token_params<Real>(); kernels never see modes as strings.
template <typename Real>
struct TokenLossParams {
  int clip_mode;            // ClipMode
  int kl_estimator;         // KlEstimator
  bool dual_clip;
  Real clip_low;            // 1 - eps_low
  Real clip_high;           // 1 + eps_high
  Real dual_clip_c;         // c > 1
  Real gamma;               // refinement shaping constant
  Real kl_coef;             // beta (0 when kl = none)
  Real entropy_coef;        // c_H
  Real max_abs_log_ratio;   // logp - old is clamped to [-this, this] before exp (verl: 20)
  Real inv_temperature;     // 1 / tau
};

struct LossConfig {
  AdvantageEstimator advantage = AdvantageEstimator::grpo_no_std;
  double advantage_eps = 1e-6;          // eps of grpo's (std + eps)

  ClipMode clip = ClipMode::none;
  double clip_eps_low = 0.2;            // ratio clamped to [1 - eps_low, 1 + eps_high]
  double clip_eps_high = 0.2;           // eps_high > eps_low is DAPO's "clip-higher"
  bool dual_clip = false;               // only where A < 0: l = min(l, -A c)
  double dual_clip_c = 3.0;
  double max_abs_log_ratio = 20.0;      // verl clamps logp - old to [-20, 20] before exp

  double refinement_gamma = 0.1;        // f(p) = p / (p + gamma)

  double entropy_coef = 0.001;          // J = pg - c_H * agg_H(H) + beta * agg_KL(KL)
  KlEstimator kl = KlEstimator::none;
  double kl_coef = 0.0;

  Aggregation pg_aggregation = Aggregation::seq_mean_token_sum_norm;
  Aggregation entropy_aggregation = Aggregation::token_mean;
  Aggregation kl_aggregation = Aggregation::token_mean;

  double temperature = 1.0;             // logits are divided by it before the softmax

  int num_threads = 1;                  // CPU path: rows split across this many threads

  // Checks every field; the message names the field and the rule it breaks.
  Status validate() const;
};

// The per-token scalars of `config` in the precision of the path that uses them.
template <typename Real>
TokenLossParams<Real> token_params(const LossConfig& config);

// The Critique-GRPO paper's released configuration: grpo_no_std, no clipping,
// gamma 0.1, entropy 0.001 token-mean, policy term seq-mean-token-sum-norm, no KL.
inline LossConfig paper_critique_grpo() { return LossConfig{}; }

// verl's vanilla GRPO recipe: std-normalised advantages, PPO clip 0.2,
// token-mean, low_var_kl (k3) KL loss with coefficient 0.001, no entropy bonus.
inline LossConfig verl_grpo() {
  LossConfig c;
  c.advantage = AdvantageEstimator::grpo;
  c.clip = ClipMode::token;
  c.clip_eps_low = c.clip_eps_high = 0.2;
  c.pg_aggregation = Aggregation::token_mean;
  c.entropy_coef = 0.0;
  c.kl = KlEstimator::k3;
  c.kl_coef = 0.001;
  return c;
}

// Dr. GRPO: no std normalisation, PPO clip 0.2, sum over tokens normalised by a
// constant length (seq-mean-token-sum-norm), no KL, no entropy bonus.
inline LossConfig dr_grpo() {
  LossConfig c;
  c.advantage = AdvantageEstimator::grpo_no_std;
  c.clip = ClipMode::token;
  c.pg_aggregation = Aggregation::seq_mean_token_sum_norm;
  c.entropy_coef = 0.0;
  return c;
}

// DAPO: clip-higher (0.2 / 0.28), token-mean over the batch, no KL, no entropy bonus.
inline LossConfig dapo() {
  LossConfig c;
  c.advantage = AdvantageEstimator::grpo;
  c.clip = ClipMode::token;
  c.clip_eps_low = 0.2;
  c.clip_eps_high = 0.28;
  c.pg_aggregation = Aggregation::token_mean;
  c.entropy_coef = 0.0;
  return c;
}

// GSPO: sequence-level ratio with tight clipping, seq-mean-token-mean.
inline LossConfig gspo() {
  LossConfig c;
  c.advantage = AdvantageEstimator::grpo;
  c.clip = ClipMode::sequence;
  c.clip_eps_low = 3e-4;
  c.clip_eps_high = 4e-4;
  c.pg_aggregation = Aggregation::seq_mean_token_mean;
  c.entropy_coef = 0.0;
  return c;
}

// ---------------------------------------------------------------------------

inline const char* to_string(AdvantageEstimator e) {
  switch (e) {
    case AdvantageEstimator::grpo: return "grpo";
    case AdvantageEstimator::grpo_no_std: return "grpo_no_std";
    case AdvantageEstimator::rloo: return "rloo";
    case AdvantageEstimator::reinforce_pp_baseline: return "reinforce_pp_baseline";
  }
  return "unknown";
}
inline const char* to_string(ClipMode e) {
  switch (e) {
    case ClipMode::none: return "none";
    case ClipMode::token: return "token";
    case ClipMode::sequence: return "sequence";
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

inline Status LossConfig::validate() const {
  auto finite = [](double v) { return std::isfinite(v); };
  if (static_cast<unsigned>(advantage) > 3u)
    return make_error(StatusCode::invalid_argument, "config.advantage: unknown estimator %d", static_cast<int>(advantage));
  if (static_cast<unsigned>(clip) > 2u)
    return make_error(StatusCode::invalid_argument, "config.clip: unknown clip mode %d", static_cast<int>(clip));
  if (static_cast<unsigned>(kl) > 4u)
    return make_error(StatusCode::invalid_argument, "config.kl: unknown KL estimator %d", static_cast<int>(kl));
  for (Aggregation a : {pg_aggregation, entropy_aggregation, kl_aggregation})
    if (static_cast<unsigned>(a) > 3u)
      return make_error(StatusCode::invalid_argument, "config aggregation: unknown mode %d", static_cast<int>(a));
  if (!finite(advantage_eps) || advantage_eps < 0)
    return make_error(StatusCode::invalid_argument, "config.advantage_eps must be finite and >= 0, got %g", advantage_eps);
  if (clip != ClipMode::none) {
    if (!finite(clip_eps_low) || clip_eps_low < 0 || clip_eps_low >= 1)
      return make_error(StatusCode::invalid_argument, "config.clip_eps_low must be in [0, 1), got %g", clip_eps_low);
    if (!finite(clip_eps_high) || clip_eps_high < 0)
      return make_error(StatusCode::invalid_argument, "config.clip_eps_high must be finite and >= 0, got %g", clip_eps_high);
    if (dual_clip && (!finite(dual_clip_c) || dual_clip_c <= 1))
      return make_error(StatusCode::invalid_argument, "config.dual_clip_c must be > 1, got %g", dual_clip_c);
  } else if (dual_clip) {
    return make_error(StatusCode::invalid_argument, "config.dual_clip needs clip = token or sequence");
  }
  if (!(max_abs_log_ratio > 0))
    return make_error(StatusCode::invalid_argument, "config.max_abs_log_ratio must be > 0, got %g", max_abs_log_ratio);
  if (!finite(refinement_gamma) || refinement_gamma <= 0)
    return make_error(StatusCode::invalid_argument, "config.refinement_gamma must be finite and > 0, got %g", refinement_gamma);
  if (!finite(entropy_coef))
    return make_error(StatusCode::invalid_argument, "config.entropy_coef must be finite, got %g", entropy_coef);
  if (!finite(kl_coef) || (kl == KlEstimator::none && kl_coef != 0.0))
    return make_error(StatusCode::invalid_argument, "config.kl_coef must be finite, and 0 when kl = none (got %g)", kl_coef);
  if (!finite(temperature) || temperature <= 0)
    return make_error(StatusCode::invalid_argument, "config.temperature must be finite and > 0, got %g", temperature);
  if (num_threads < 1)
    return make_error(StatusCode::invalid_argument, "config.num_threads must be >= 1, got %d", num_threads);
  return Status::success();
}

template <typename Real>
inline TokenLossParams<Real> token_params(const LossConfig& c) {
  TokenLossParams<Real> p{};
  p.clip_mode = static_cast<int>(c.clip);
  p.kl_estimator = static_cast<int>(c.kl);
  p.dual_clip = c.dual_clip;
  p.clip_low = static_cast<Real>(1.0 - c.clip_eps_low);
  p.clip_high = static_cast<Real>(1.0 + c.clip_eps_high);
  p.dual_clip_c = static_cast<Real>(c.dual_clip_c);
  p.gamma = static_cast<Real>(c.refinement_gamma);
  p.kl_coef = static_cast<Real>(c.kl == KlEstimator::none ? 0.0 : c.kl_coef);
  p.entropy_coef = static_cast<Real>(c.entropy_coef);
  p.max_abs_log_ratio = static_cast<Real>(c.max_abs_log_ratio);
  p.inv_temperature = static_cast<Real>(1.0 / c.temperature);
  return p;
}

}  // namespace cgrpo
