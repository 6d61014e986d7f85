// cgrpo/presets/trl_options.hpp: TRL's GRPOConfig strings (loss_type, importance_sampling_level,
// vllm_importance_sampling_mode, scale_rewards) turned into config fields, and TrlOptions: GRPOConfig's
// loss fields as one struct -> a Recipe.
#pragma once

#include <cmath>
#include <limits>
#include <string>

#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/presets/recipe.hpp"
#include "cgrpo/presets/trl_presets.hpp"

namespace cgrpo {

// GRPOConfig.loss_type: the preset trl_<loss_type>() (grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo).
inline Status trl_loss_type(const char* name, Recipe* out) {
  if (!out) return make_error(StatusCode::invalid_argument, "trl_loss_type: out must not be null");
  const std::string s = name ? name : "";
  for (const PresetEntry& e : kTrlPresets)
    if (s == e.name + 4) {  // "trl/<loss_type>"
      *out = e.make();
      return Status::success();
    }
  std::string known;
  for (const PresetEntry& e : kTrlPresets) known += std::string(known.empty() ? "" : ", ") + (e.name + 4);
  return make_error(StatusCode::invalid_argument, "loss_type \"%s\": expected one of %s", s.c_str(), known.c_str());
}

// GRPOConfig.importance_sampling_level: "token" or "sequence" (TRL's differentiated sequence ratio).
inline Status trl_importance_sampling_level(const char* name, RatioLevel* level) {
  if (!level) return make_error(StatusCode::invalid_argument, "trl_importance_sampling_level: level must not be null");
  const std::string s = name ? name : "";
  if (s == "token") *level = RatioLevel::token;
  else if (s == "sequence") *level = RatioLevel::sequence;
  else
    return make_error(StatusCode::invalid_argument, "importance_sampling_level \"%s\": expected token or sequence",
                      s.c_str());
  return Status::success();
}

// GRPOConfig.vllm_importance_sampling_mode: token_truncate, token_mask, sequence_truncate, sequence_mask.
inline Status trl_vllm_importance_sampling_mode(const char* name, SamplerCorrectionMode* mode) {
  if (!mode) return make_error(StatusCode::invalid_argument, "trl_vllm_importance_sampling_mode: mode must not be null");
  const std::string s = name ? name : "";
  for (int i = 1; i < kNumSamplerModes; ++i)
    if (s == to_string(static_cast<SamplerCorrectionMode>(i))) {
      *mode = static_cast<SamplerCorrectionMode>(i);
      return Status::success();
    }
  return make_error(StatusCode::invalid_argument,
                    "vllm_importance_sampling_mode \"%s\": expected token_truncate, token_mask, sequence_truncate or "
                    "sequence_mask",
                    s.c_str());
}

// GRPOConfig.scale_rewards: "group" (grpo), "batch" (grpo_batch_std), "none" (grpo_no_std).
inline Status trl_scale_rewards(const char* name, AdvantageEstimator* estimator) {
  if (!estimator) return make_error(StatusCode::invalid_argument, "trl_scale_rewards: estimator must not be null");
  const std::string s = name ? name : "";
  if (s == "group") *estimator = AdvantageEstimator::grpo;
  else if (s == "batch") *estimator = AdvantageEstimator::grpo_batch_std;
  else if (s == "none") *estimator = AdvantageEstimator::grpo_no_std;
  else return make_error(StatusCode::invalid_argument, "scale_rewards \"%s\": expected group, batch or none", s.c_str());
  return Status::success();
}

// GRPOConfig's loss fields with its defaults. NaN stands for TRL's None.
struct TrlOptions {
  const char* loss_type = "dapo";
  const char* importance_sampling_level = "token";
  double epsilon = 0.2;
  double epsilon_high = std::numeric_limits<double>::quiet_NaN();  // None: epsilon (cispo: the cap)
  double delta = std::numeric_limits<double>::quiet_NaN();         // None: off
  double beta = 0.0;
  bool use_bias_correction_kl = false;
  const char* scale_rewards = "group";
  bool use_vllm = false;
  bool vllm_importance_sampling_correction = true;
  const char* vllm_importance_sampling_mode = "sequence_mask";
  double vllm_importance_sampling_clip_min = std::numeric_limits<double>::quiet_NaN();  // None: no bound
  double vllm_importance_sampling_clip_max = 3.0;
  double off_policy_mask_threshold = std::numeric_limits<double>::quiet_NaN();         // None: off
  double top_entropy_quantile = 1.0;
  double sapo_temperature_pos = 1.0, sapo_temperature_neg = 1.05;
  double vespo_k_pos = 2.0, vespo_lambda_pos = 3.0, vespo_k_neg = 3.0, vespo_lambda_neg = 2.0;
  double temperature = 1.0;
};

// The recipe TRL's GRPOTrainer runs for these options. dr_grpo also needs batch.scale.length =
// B * max_completion_length, and dapo / cispo / vespo across processes batch.scale.token_count
// (docs/peers.md): they are batch quantities, not config.
inline Status trl_recipe(const TrlOptions& o, Recipe* out) {
  if (!out) return make_error(StatusCode::invalid_argument, "trl_recipe: out must not be null");
  return no_throw("trl_recipe", [&]() -> Status {
    Recipe r;
    CGRPO_RETURN_IF_ERROR(trl_loss_type(o.loss_type, &r));
    LossConfig& c = r.loss;
    CGRPO_RETURN_IF_ERROR(trl_importance_sampling_level(o.importance_sampling_level, &c.ratio.level));
    const double high = std::isnan(o.epsilon_high) ? o.epsilon : o.epsilon_high;
    c.ratio.clip_eps_low = o.epsilon;
    c.ratio.clip_eps_high = high;
    if (c.policy.loss == PolicyLoss::cispo_cap) c.policy.cispo_cap.ratio_cap = high;
    c.ratio.two_sided_delta = std::isnan(o.delta) ? std::numeric_limits<double>::infinity() : o.delta;
    if (o.beta != 0.0) {
      c.kl.estimator = KlEstimator::k3;
      c.kl.coef = o.beta;
      c.kl.times_ratio = o.use_bias_correction_kl;
    }
    CGRPO_RETURN_IF_ERROR(trl_scale_rewards(o.scale_rewards, &r.advantage.estimator));
    if (o.use_vllm && o.vllm_importance_sampling_correction) {
      CGRPO_RETURN_IF_ERROR(trl_vllm_importance_sampling_mode(o.vllm_importance_sampling_mode, &c.off_policy.sampler.mode));
      c.off_policy.sampler.min = std::isnan(o.vllm_importance_sampling_clip_min) ? 0.0 : o.vllm_importance_sampling_clip_min;
      c.off_policy.sampler.max = std::isnan(o.vllm_importance_sampling_clip_max) ? std::numeric_limits<double>::infinity()
                                                                                 : o.vllm_importance_sampling_clip_max;
    }
    c.off_policy.opsm_threshold =
        std::isnan(o.off_policy_mask_threshold) ? std::numeric_limits<double>::infinity() : o.off_policy_mask_threshold;
    c.entropy_mask.top_quantile = o.top_entropy_quantile;
    c.policy.sapo.tau_pos = o.sapo_temperature_pos;
    c.policy.sapo.tau_neg = o.sapo_temperature_neg;
    c.policy.vespo = VespoWeights{o.vespo_k_pos, o.vespo_lambda_pos, o.vespo_k_neg, o.vespo_lambda_neg};
    c.temperature = o.temperature;
    CGRPO_RETURN_IF_ERROR(c.validate());
    *out = r;
    return Status::success();
  });
}

}  // namespace cgrpo
