// cgrpo/presets/verl_presets.hpp: LossConfig presets for verl's other policy losses and its rollout correction,
// each set as verl's config defaults and example recipe set it (presets.hpp holds vanilla, GRPO, DAPO, ...).
#pragma once

#include <limits>

#include "cgrpo/loss/config.hpp"
#include "cgrpo/presets/presets.hpp"

namespace cgrpo {

// verl's losses that clamp no log ratio (geo_mean, kl_cov, clip_cov): x = logp - old unclamped.
inline void verl_no_log_ratio_clamp(LossConfig& c) {
  c.log_ratio_min = -std::numeric_limits<double>::infinity();
  c.log_ratio_max = std::numeric_limits<double>::infinity();
}

// CISPO (loss_mode "cispo", examples/cispo_trainer): -sg(clamp(r, 1 - 10, 1 + 0.2)) A logp, i.e. only
// the upper bound binds; low_var_kl KL loss 0.001; token-mean; no dual clip (vanilla only).
inline LossConfig verl_cispo() {
  LossConfig c = verl_vanilla();
  c.policy_loss = PolicyLoss::cispo;
  c.clip_eps_low = 10.0;
  c.clip_eps_high = 0.2;
  c.dual_clip = false;
  c.kl = KlEstimator::k3;
  c.kl_coef = 0.001;
  return c;
}

// SAPO (loss_mode "sapo", examples/sapo_trainer): tau_pos 1, tau_neg 1.05; the policy term is always
// seq-mean-token-mean (verl ignores loss_agg_mode there), entropy and KL keep loss_agg_mode
// (token-mean); no KL.
inline LossConfig verl_sapo() {
  LossConfig c = verl_vanilla();
  c.policy_loss = PolicyLoss::sapo;
  c.sapo_tau_pos = 1.0;
  c.sapo_tau_neg = 1.05;
  c.dual_clip = false;
  c.pg_aggregation = Aggregation::seq_mean_token_mean;
  return c;
}

// GPG (loss_mode "gpg", examples/gpg_trainer): -A logp, token-mean, no KL. verl pairs it with its
// "gpg" advantage estimator, alpha (R - mean_g) with alpha = B / #(non-zero rewards), which
// group_advantages does not offer: this preset takes R - mean_g; scale the rewards or the
// advantages by alpha to reproduce it.
inline LossConfig verl_gpg() {
  LossConfig c = verl_vanilla();
  c.advantage = AdvantageEstimator::grpo_no_std;
  c.policy_loss = PolicyLoss::gpg;
  c.dual_clip = false;
  return c;
}

// GMPO (loss_mode "geo_mean", examples/gmpo_trainer): the log ratio clipped to [-0.4, 0.4] on the side
// of A's sign, per-row geometric mean, J_pg = (1/B) sum_i l_i whatever loss_agg_mode says; no KL.
inline LossConfig verl_gmpo() {
  LossConfig c = verl_vanilla();
  c.policy_loss = PolicyLoss::geo_mean;
  c.clip_eps_low = c.clip_eps_high = 0.4;
  c.dual_clip = false;
  verl_no_log_ratio_clamp(c);
  return c;
}

// KL-Cov (loss_mode "kl_cov") with verl's config defaults: kl_cov_ratio 2e-4, ppo_kl_coef 0.1
// (the function's fallback is 1; the entropy-mechanism runs set 1 and ratios of 2e-4 to 2e-3).
inline LossConfig verl_kl_cov() {
  LossConfig c = verl_vanilla();
  c.policy_loss = PolicyLoss::kl_cov;
  c.cov_ratio = 2e-4;
  c.kl_cov_coef = 0.1;
  c.dual_clip = false;
  verl_no_log_ratio_clamp(c);
  return c;
}

// Clip-Cov (loss_mode "clip_cov") with verl's config defaults: clip_cov_ratio 2e-4, candidates with
// cov in (1, 5), PPO clip 0.2, no dual clip. verl draws the zeroed tokens with torch.randperm; the
// library chooses them by a counter-based hash of (config.clip_cov_seed, token index), or takes the
// caller's batch.selection (docs/MATH.md, "Clip-Cov").
inline LossConfig verl_clip_cov() {
  LossConfig c = verl_vanilla();
  c.policy_loss = PolicyLoss::clip_cov;
  c.cov_ratio = 2e-4;
  c.clip_cov_lower = 1.0;
  c.clip_cov_upper = 5.0;
  c.dual_clip = false;
  verl_no_log_ratio_clamp(c);
  return c;
}

// Decoupled rollout correction (verl's RolloutCorrectionConfig.decoupled_token_is / decoupled_seq_is)
// on top of any verl preset: IS weights at `level`, truncated at `threshold`, multiply the policy
// loss; d = old_logp - rollout_logp. Add rejection options to c.rollout.rejection (or parse verl's
// strings with verl_rollout_rs, verl_options.hpp).
inline LossConfig verl_decoupled(LossConfig c, RolloutIsLevel level = RolloutIsLevel::sequence,
                                 double threshold = 2.0) {
  c.rollout.mode = RolloutCorrectionMode::decoupled;
  c.rollout.is_level = level;
  c.rollout.is_threshold = threshold;
  return c;
}

// Bypass mode with loss_type "ppo_clip" (RolloutCorrectionConfig.bypass_ppo_clip): old = rollout,
// verl's vanilla loss (dual clip 3) with the ratio against rollout_logp; no IS weight, no rejection.
inline LossConfig verl_bypass_ppo_clip() {
  LossConfig c = verl_vanilla();
  c.rollout.mode = RolloutCorrectionMode::bypass;
  return c;
}

// Bypass mode with loss_type "reinforce" (RolloutCorrectionConfig.bypass_pg_is): -A logp times the
// sequence-level IS weight exp(sum_t (logp - rollout)) truncated at 2; no rejection.
inline LossConfig verl_bypass_reinforce() {
  LossConfig c = verl_vanilla();
  c.policy_loss = PolicyLoss::reinforce;
  c.dual_clip = false;
  c.rollout.mode = RolloutCorrectionMode::bypass;
  c.rollout.is_level = RolloutIsLevel::sequence;
  c.rollout.is_threshold = 2.0;
  return c;
}

}  // namespace cgrpo
