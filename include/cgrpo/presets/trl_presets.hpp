// cgrpo/presets/trl_presets.hpp: TRL's GRPOTrainer recipes (huggingface/trl f2cd577), one per loss_type,
// with GRPOConfig's defaults; docs/peers.md maps every GRPOConfig field to a config field.
#pragma once

#include <limits>

#include "cgrpo/presets/recipe.hpp"

namespace cgrpo {

// TRL's denominators (GRPOTrainer._compute_loss): token-mean divides by N exactly, seq-mean-token-mean
// row i by max(n_i, 1), and the seq-mean-* modes by every row of the batch (an empty row adds 0).
inline AggregationConvention trl_aggregation() {
  AggregationConvention a;
  a.token_mean_eps = 0.0;
  a.row_count_eps = 0.0;
  a.count_empty_rows = true;
  return a;
}

namespace detail {
// GRPOConfig's defaults shared by every loss_type: scale_rewards "group" (grpo advantages, eps 1e-4),
// epsilon = epsilon_high = 0.2, no delta, beta 0 (KL k3 unclamped once set), token-level ratio with
// no clamp, entropy_coef 0, top_entropy_quantile 1, temperature 1, no vLLM correction (it needs
// use_vllm: trl_vllm_importance_sampling()), no OPSM. The KL is added to the per-token loss, so it
// is aggregated with the policy term's weights; the entropy bonus is a token mean.
inline Recipe trl_defaults(PolicyLoss loss, Aggregation pg) {
  Recipe r;
  r.advantage.estimator = AdvantageEstimator::grpo;
  r.advantage.eps = 1e-4;
  LossConfig& c = r.loss;
  c.policy.loss = loss;
  c.ratio.level = RatioLevel::token;
  c.ratio.clip_eps_low = c.ratio.clip_eps_high = 0.2;
  c.ratio.log_ratio_min = -std::numeric_limits<double>::infinity();
  c.ratio.log_ratio_max = std::numeric_limits<double>::infinity();
  c.entropy.coef = 0.0;
  c.kl.k3_clamp = false;
  c.aggregation.policy = c.aggregation.kl = pg;
  c.aggregation.entropy = Aggregation::token_mean;
  c.aggregation.convention = trl_aggregation();
  c.metrics.mean_eps = 0.0;
  return r;
}
}  // namespace detail

// TRL loss_type "grpo": PPO clip, (1/B) sum_i sum_t l / max(n_i, 1).
inline Recipe trl_grpo() { return detail::trl_defaults(PolicyLoss::ppo_clip, Aggregation::seq_mean_token_mean); }

// TRL loss_type "bnpo": PPO clip, sum l / N over the micro-batch.
inline Recipe trl_bnpo() { return detail::trl_defaults(PolicyLoss::ppo_clip, Aggregation::token_mean); }

// TRL loss_type "dr_grpo": PPO clip, sum l / (B * max_completion_length): pass
// batch.scale.length = B * max_completion_length (TRL's default max_completion_length is 512).
// Advantages stay TRL's default scale_rewards "group"; the Dr. GRPO paper uses "none" (grpo_no_std).
inline Recipe trl_dr_grpo() { return detail::trl_defaults(PolicyLoss::ppo_clip, Aggregation::seq_mean_token_sum_norm); }

// TRL loss_type "dapo" (GRPOConfig's default): PPO clip, sum l / N with N the generation batch's
// token count per process (batch.scale.token_count across processes); the entropy bonus divides by
// the same N even under the entropy mask.
inline Recipe trl_dapo() {
  Recipe r = detail::trl_defaults(PolicyLoss::ppo_clip, Aggregation::token_mean);
  r.loss.entropy_mask.count_all_tokens = true;
  return r;
}

// TRL loss_type "cispo": -sg(min(r, epsilon_high)) A logp, aggregated as dapo. epsilon_high defaults
// to epsilon (0.2) in GRPOConfig, so that is the cap here; TRL recommends 5.0 (policy.cispo_cap.ratio_cap).
inline Recipe trl_cispo() {
  Recipe r = detail::trl_defaults(PolicyLoss::cispo_cap, Aggregation::token_mean);
  r.loss.policy.cispo_cap.ratio_cap = 0.2;
  r.loss.entropy_mask.count_all_tokens = true;
  return r;
}

// TRL loss_type "sapo": the soft gate with sapo_temperature_pos 1.0 / _neg 1.05, aggregated as grpo.
inline Recipe trl_sapo() {
  Recipe r = detail::trl_defaults(PolicyLoss::sapo, Aggregation::seq_mean_token_mean);
  r.loss.policy.sapo.tau_pos = 1.0;
  r.loss.policy.sapo.tau_neg = 1.05;
  return r;
}

// TRL loss_type "luspo": PPO clip on the sequence ratio, (1/B) sum_i n_i l_i. The preset sets
// importance_sampling_level "sequence", which TRL asks for (it warns otherwise): at token level TRL's
// luspo averages over padding positions too, which no batch without padding values can reproduce.
inline Recipe trl_luspo() {
  Recipe r = detail::trl_defaults(PolicyLoss::ppo_clip, Aggregation::seq_mean_token_sum);
  r.loss.ratio.level = RatioLevel::sequence;
  return r;
}

// TRL loss_type "vespo": -phi_i A logp with the gamma weights (k, lambda) = (2, 3) for A >= 0 and
// (3, 2) otherwise, aggregated as dapo.
inline Recipe trl_vespo() {
  Recipe r = detail::trl_defaults(PolicyLoss::vespo, Aggregation::token_mean);
  r.loss.policy.vespo = VespoWeights{2.0, 3.0, 3.0, 2.0};
  r.loss.entropy_mask.count_all_tokens = true;
  return r;
}

// GRPOConfig's vLLM importance sampling with use_vllm: vllm_importance_sampling_mode "sequence_mask",
// clip_min None, clip_max 3.0 (vespo needs a token mode).
inline SamplerCorrectionConfig trl_vllm_importance_sampling() {
  SamplerCorrectionConfig s;
  s.mode = SamplerCorrectionMode::sequence_mask;
  s.min = 0.0;
  s.max = 3.0;
  return s;
}

inline constexpr PresetEntry kTrlPresets[] = {
    {"trl/grpo", "TRL loss_type grpo: PPO clip, seq-mean-token-mean with max(n_i, 1)", trl_grpo},
    {"trl/bnpo", "TRL loss_type bnpo: PPO clip, token-mean over the micro-batch", trl_bnpo},
    {"trl/dr_grpo", "TRL loss_type dr_grpo: PPO clip, sum / (B max_completion_length)", trl_dr_grpo},
    {"trl/dapo", "TRL loss_type dapo (GRPOConfig's default): PPO clip, token-mean over the generation batch", trl_dapo},
    {"trl/cispo", "TRL loss_type cispo: -sg(min(r, epsilon_high)) A logp", trl_cispo},
    {"trl/sapo", "TRL loss_type sapo: soft gate, tau 1 / 1.05", trl_sapo},
    {"trl/luspo", "TRL loss_type luspo: PPO clip on the sequence ratio, seq-mean-token-sum", trl_luspo},
    {"trl/vespo", "TRL loss_type vespo: gamma-weighted -phi A logp", trl_vespo},
};

}  // namespace cgrpo
