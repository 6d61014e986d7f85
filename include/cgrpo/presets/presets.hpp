// cgrpo/presets/presets.hpp: LossConfig presets named after the recipe they reproduce exactly.
// Each sets every convention the peer uses; README's tables map the peers' options to fields.
#pragma once

#include <limits>

#include "cgrpo/loss/config.hpp"

namespace cgrpo {

// The Critique-GRPO paper's released configuration (its verl fork): grpo_no_std advantages, no
// clipping, gamma 0.1, entropy 0.001 token-mean (N + 1e-8), policy term seq-mean-token-sum-norm,
// no KL. These are LossConfig's defaults.
inline LossConfig paper_critique_grpo() { return LossConfig{}; }

// The denominators of current verl's agg_loss: token-mean divides by N exactly, seq-mean-token-mean
// by n_i + 1e-8 per row, and seq-mean-* average over the rows that hold a valid token.
inline AggregationConvention verl_aggregation() {
  AggregationConvention a;
  a.token_mean_eps = 0.0;
  a.row_count_eps = 1e-8;
  a.count_empty_rows = false;
  return a;
}

// verl's vanilla policy loss with its defaults: PPO clip 0.2, dual clip c = 3 where A < 0 (verl
// always applies it), log ratio clamped to +-20, token-mean, no entropy bonus, no KL.
inline LossConfig verl_vanilla() {
  LossConfig c;
  c.advantage = AdvantageEstimator::grpo;
  c.advantage_eps = 1e-6;
  c.policy_loss = PolicyLoss::ppo_clip;
  c.clip_eps_low = c.clip_eps_high = 0.2;
  c.dual_clip = true;
  c.dual_clip_c = 3.0;
  c.log_ratio_min = -20.0;
  c.log_ratio_max = 20.0;
  c.pg_aggregation = c.entropy_aggregation = c.kl_aggregation = Aggregation::token_mean;
  c.aggregation = verl_aggregation();
  c.metric_mean_eps = 1e-8;  // verl's masked_mean
  c.entropy_coef = 0.0;
  return c;
}

// verl's GRPO recipe: the vanilla loss with a low_var_kl (k3) KL loss, coefficient 0.001.
inline LossConfig verl_grpo() {
  LossConfig c = verl_vanilla();
  c.kl = KlEstimator::k3;
  c.kl_coef = 0.001;
  return c;
}

// DAPO in verl (verl-recipe dapo/run_dapo_*.sh): clip-higher (0.2 / 0.28), dual clip c = 10
// (clip_ratio_c=10.0), token-mean, no KL, no entropy bonus.
inline LossConfig verl_dapo() {
  LossConfig c = verl_vanilla();
  c.clip_eps_high = 0.28;
  c.dual_clip_c = 10.0;
  return c;
}

// Dr. GRPO in verl: no std normalisation, seq-mean-token-sum-norm (sum / L, L the padded length or
// loss_scale_factor: AggregationScale::length), no KL.
inline LossConfig verl_dr_grpo() {
  LossConfig c = verl_vanilla();
  c.advantage = AdvantageEstimator::grpo_no_std;
  c.pg_aggregation = c.entropy_aggregation = c.kl_aggregation = Aggregation::seq_mean_token_sum_norm;
  return c;
}

// verl's GSPO (loss_mode "gspo"): the sequence ratio sg(s_i) exp(logp - sg(logp)), its log clamped
// only from above at 10, PPO clip 3e-4 / 4e-4 and no dual clip, policy term always
// seq-mean-token-mean.
inline LossConfig verl_gspo() {
  LossConfig c = verl_vanilla();
  c.ratio_level = RatioLevel::sequence_detached;
  c.clip_eps_low = 3e-4;
  c.clip_eps_high = 4e-4;
  c.dual_clip = false;
  c.log_ratio_min = -std::numeric_limits<double>::infinity();
  c.log_ratio_max = 10.0;
  c.pg_aggregation = c.entropy_aggregation = c.kl_aggregation = Aggregation::seq_mean_token_mean;
  return c;
}

}  // namespace cgrpo

#include "cgrpo/presets/trl_presets.hpp"  // TRL GRPOTrainer presets (trl_grpo, trl_dapo, ...)
