// cgrpo/presets/trl_presets.hpp: LossConfig presets for TRL's GRPOTrainer, one per loss_type, with
// GRPOConfig's defaults (README: "TRL's GRPOConfig as presets" maps every field).
#pragma once

#include <limits>

#include "cgrpo/loss/config.hpp"

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
inline LossConfig trl_defaults(PolicyLoss loss, Aggregation pg) {
  LossConfig c;
  c.advantage = AdvantageEstimator::grpo;
  c.advantage_eps = 1e-4;
  c.policy_loss = loss;
  c.ratio_level = RatioLevel::token;
  c.clip_eps_low = c.clip_eps_high = 0.2;
  c.log_ratio_min = -std::numeric_limits<double>::infinity();
  c.log_ratio_max = std::numeric_limits<double>::infinity();
  c.entropy_coef = 0.0;
  c.kl_k3_clamp = false;
  c.pg_aggregation = c.kl_aggregation = pg;
  c.entropy_aggregation = Aggregation::token_mean;
  c.aggregation = trl_aggregation();
  c.metric_mean_eps = 0.0;
  return c;
}
}  // namespace detail

// TRL loss_type "grpo": PPO clip, (1/B) sum_i sum_t l / max(n_i, 1).
inline LossConfig trl_grpo() { return detail::trl_defaults(PolicyLoss::ppo_clip, Aggregation::seq_mean_token_mean); }

// TRL loss_type "bnpo": PPO clip, sum l / N over the micro-batch.
inline LossConfig trl_bnpo() { return detail::trl_defaults(PolicyLoss::ppo_clip, Aggregation::token_mean); }

// TRL loss_type "dr_grpo": PPO clip, sum l / (B * max_completion_length): pass
// batch.scale.length = B * max_completion_length (TRL's default max_completion_length is 512).
// Advantages stay TRL's default scale_rewards "group"; the Dr. GRPO paper uses "none" (grpo_no_std).
inline LossConfig trl_dr_grpo() {
  return detail::trl_defaults(PolicyLoss::ppo_clip, Aggregation::seq_mean_token_sum_norm);
}

// TRL loss_type "dapo" (GRPOConfig's default): PPO clip, sum l / N with N the generation batch's
// token count per process (batch.scale.token_count across processes); the entropy bonus divides by
// the same N even under the entropy mask.
inline LossConfig trl_dapo() {
  LossConfig c = detail::trl_defaults(PolicyLoss::ppo_clip, Aggregation::token_mean);
  c.entropy_count_all_tokens = true;
  return c;
}

// TRL loss_type "cispo": -sg(min(r, epsilon_high)) A logp, aggregated as dapo. epsilon_high defaults
// to epsilon (0.2) in GRPOConfig, so that is the cap here; TRL recommends 5.0 (cispo_ratio_cap).
inline LossConfig trl_cispo() {
  LossConfig c = detail::trl_defaults(PolicyLoss::cispo_cap, Aggregation::token_mean);
  c.cispo_ratio_cap = 0.2;
  c.entropy_count_all_tokens = true;
  return c;
}

// TRL loss_type "sapo": the soft gate with sapo_temperature_pos 1.0 / _neg 1.05, aggregated as grpo.
inline LossConfig trl_sapo() {
  LossConfig c = detail::trl_defaults(PolicyLoss::sapo, Aggregation::seq_mean_token_mean);
  c.sapo_tau_pos = 1.0;
  c.sapo_tau_neg = 1.05;
  return c;
}

// TRL loss_type "luspo": PPO clip on the sequence ratio, (1/B) sum_i n_i l_i. The preset sets
// importance_sampling_level "sequence", which TRL asks for (it warns otherwise): at token level TRL's
// luspo averages over padding positions too, which no batch without padding values can reproduce.
inline LossConfig trl_luspo() {
  LossConfig c = detail::trl_defaults(PolicyLoss::ppo_clip, Aggregation::seq_mean_token_sum);
  c.ratio_level = RatioLevel::sequence;
  return c;
}

// TRL loss_type "vespo": -phi_i A logp with the gamma weights (k, lambda) = (2, 3) for A >= 0 and
// (3, 2) otherwise, aggregated as dapo.
inline LossConfig trl_vespo() {
  LossConfig c = detail::trl_defaults(PolicyLoss::vespo, Aggregation::token_mean);
  c.vespo_k_pos = 2.0;
  c.vespo_lambda_pos = 3.0;
  c.vespo_k_neg = 3.0;
  c.vespo_lambda_neg = 2.0;
  c.entropy_count_all_tokens = true;
  return c;
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

}  // namespace cgrpo
