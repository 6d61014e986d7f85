// cgrpo/presets/verl_presets.hpp: verl's recipes, each set as verl's config defaults and example recipe
// set it, with the conventions of verl-project/verl 1dda039 (its engine actor) by default and those of
// volcengine/verl b178a3c's dp_actor by name (VerlActor); docs/peers.md maps each verl option to a field.
#pragma once

#include <limits>

#include "cgrpo/presets/recipe.hpp"

namespace cgrpo {

// Which verl actor's conventions a verl recipe follows. The loss math of every mode is the same in
// both; the denominators and the IS metrics differ (MATH-peers.md, "verl-project/verl 1dda039b9").
enum class VerlActor : int {
  // verl-project/verl 1dda039 (2026-08): workers/utils/losses.py:ppo_loss, the only actor path, with
  // the engine's global batch info: seq-mean-* over all B rows, seq-mean-token-sum-norm / (B L),
  // token-mean's N on the response mask (a bypass rejection leaves it), the IS metrics from the
  // applied weights.
  engine = 0,
  // volcengine/verl b178a3c: dp_actor's agg_loss without global info: seq-mean-* over the B+ rows
  // with a valid token, seq-mean-token-sum-norm / L, N on each term's mask, the IS metrics from the
  // raw weights (the cases in tests/data/verl).
  legacy_dp_actor = 1,
};

inline const char* to_string(VerlActor a) { return a == VerlActor::engine ? "engine" : "legacy_dp_actor"; }

// The denominators of verl's agg_loss: token-mean divides by N exactly, seq-mean-token-mean by
// n_i + 1e-8 per row; the rest as the actor does it.
inline AggregationConvention verl_aggregation(VerlActor actor = VerlActor::engine) {
  AggregationConvention a;
  a.token_mean_eps = 0.0;
  a.row_count_eps = 1e-8;
  const bool engine = actor == VerlActor::engine;
  a.count_empty_rows = engine;
  a.sum_norm_per_row = engine;
  a.token_count_from_response_mask = engine;
  return a;
}

// A verl recipe under the other actor's conventions: the denominators and the IS metrics' rule
// (nothing else differs between the two).
inline Recipe verl_with_actor(Recipe r, VerlActor actor) {
  r.loss.aggregation.convention = verl_aggregation(actor);
  r.loss.off_policy.rollout.metrics_from_applied_weights = actor == VerlActor::engine;
  return r;
}

// verl's advantage defaults: grpo with eps 1e-6 (norm_adv_by_std_in_grpo), masked_whiten's N + 1e-8.
inline AdvantageConfig verl_advantages(AdvantageEstimator estimator = AdvantageEstimator::grpo) {
  AdvantageConfig a;
  a.estimator = estimator;
  a.eps = 1e-6;
  a.whiten_eps = 1e-8;
  a.whiten_count_eps = 1e-8;
  return a;
}

// verl's losses that clamp no log ratio (geo_mean, kl_cov, clip_cov): x = logp - old unclamped.
inline void verl_no_log_ratio_clamp(LossConfig& c) {
  c.ratio.log_ratio_min = -std::numeric_limits<double>::infinity();
  c.ratio.log_ratio_max = std::numeric_limits<double>::infinity();
}

// verl's vanilla policy loss with its defaults: PPO clip 0.2, dual clip c = 3 where A < 0 (verl
// always applies it), log ratio clamped to +-20, token-mean, no entropy bonus, no KL.
inline Recipe verl_vanilla() {
  Recipe r;
  r.advantage = verl_advantages();
  LossConfig& c = r.loss;
  c.policy.loss = PolicyLoss::ppo_clip;
  c.ratio.clip_eps_low = c.ratio.clip_eps_high = 0.2;
  c.ratio.dual_clip = true;
  c.ratio.dual_clip_c = 3.0;
  c.ratio.log_ratio_min = -20.0;
  c.ratio.log_ratio_max = 20.0;
  c.aggregation.policy = c.aggregation.entropy = c.aggregation.kl = Aggregation::token_mean;
  c.aggregation.convention = verl_aggregation();
  c.off_policy.rollout.metrics_from_applied_weights = true;  // verl 1dda039
  c.metrics.mean_eps = 1e-8;  // verl's masked_mean
  c.entropy.coef = 0.0;
  return r;
}

// verl's GRPO recipe: the vanilla loss with a low_var_kl (k3) KL loss, coefficient 0.001.
inline Recipe verl_grpo() {
  Recipe r = verl_vanilla();
  r.loss.kl.estimator = KlEstimator::k3;
  r.loss.kl.coef = 0.001;
  return r;
}

// DAPO in verl (verl-recipe dapo/run_dapo_*.sh): clip-higher (0.2 / 0.28), dual clip c = 10
// (clip_ratio_c=10.0), token-mean, no KL, no entropy bonus.
inline Recipe verl_dapo() {
  Recipe r = verl_vanilla();
  r.loss.ratio.clip_eps_high = 0.28;
  r.loss.ratio.dual_clip_c = 10.0;
  return r;
}

// Dr. GRPO in verl: no std normalisation, seq-mean-token-sum-norm (engine: sum / (B L); legacy
// dp_actor: sum / L; L the padded length or loss_scale_factor: AggregationScale::length), no KL.
inline Recipe verl_dr_grpo() {
  Recipe r = verl_vanilla();
  r.advantage.estimator = AdvantageEstimator::grpo_no_std;
  LossConfig& c = r.loss;
  c.aggregation.policy = c.aggregation.entropy = c.aggregation.kl = Aggregation::seq_mean_token_sum_norm;
  return r;
}

// verl's GSPO (loss_mode "gspo"): the sequence ratio sg(s_i) exp(logp - sg(logp)), its log clamped
// only from above at 10, PPO clip 3e-4 / 4e-4 and no dual clip, policy term always
// seq-mean-token-mean.
inline Recipe verl_gspo() {
  Recipe r = verl_vanilla();
  LossConfig& c = r.loss;
  c.ratio.level = RatioLevel::sequence_detached;
  c.ratio.clip_eps_low = 3e-4;
  c.ratio.clip_eps_high = 4e-4;
  c.ratio.dual_clip = false;
  c.ratio.log_ratio_min = -std::numeric_limits<double>::infinity();
  c.ratio.log_ratio_max = 10.0;
  c.aggregation.policy = c.aggregation.entropy = c.aggregation.kl = Aggregation::seq_mean_token_mean;
  return r;
}

// CISPO (loss_mode "cispo", examples/cispo_trainer): -sg(clamp(r, 1 - 10, 1 + 0.2)) A logp, i.e. only
// the upper bound binds; low_var_kl KL loss 0.001; token-mean; no dual clip (vanilla only).
inline Recipe verl_cispo() {
  Recipe r = verl_vanilla();
  LossConfig& c = r.loss;
  c.policy.loss = PolicyLoss::cispo;
  c.ratio.clip_eps_low = 10.0;
  c.ratio.clip_eps_high = 0.2;
  c.ratio.dual_clip = false;
  c.kl.estimator = KlEstimator::k3;
  c.kl.coef = 0.001;
  return r;
}

// SAPO (loss_mode "sapo", examples/sapo_trainer): tau_pos 1, tau_neg 1.05; the policy term is always
// seq-mean-token-mean (verl ignores loss_agg_mode there), entropy and KL keep loss_agg_mode
// (token-mean); no KL.
inline Recipe verl_sapo() {
  Recipe r = verl_vanilla();
  LossConfig& c = r.loss;
  c.policy.loss = PolicyLoss::sapo;
  c.policy.sapo.tau_pos = 1.0;
  c.policy.sapo.tau_neg = 1.05;
  c.ratio.dual_clip = false;
  c.aggregation.policy = Aggregation::seq_mean_token_mean;
  return r;
}

// GPG (loss_mode "gpg", examples/gpg_trainer): -A logp, token-mean, no KL. verl pairs it with its
// "gpg" advantage estimator, alpha (R - mean_g) with alpha = B / #(non-zero rewards), which
// group_advantages does not offer: this preset takes R - mean_g; scale the rewards or the
// advantages by alpha to reproduce it.
inline Recipe verl_gpg() {
  Recipe r = verl_vanilla();
  r.advantage.estimator = AdvantageEstimator::grpo_no_std;
  r.loss.policy.loss = PolicyLoss::gpg;
  r.loss.ratio.dual_clip = false;
  return r;
}

// GMPO (loss_mode "geo_mean", examples/gmpo_trainer): the log ratio clipped to [-0.4, 0.4] on the side
// of A's sign, per-row geometric mean, J_pg = (1/B) sum_i l_i whatever loss_agg_mode says (the
// policy aggregation is seq-mean-token-mean with exact n_i over every row); no KL.
inline Recipe verl_gmpo() {
  Recipe r = verl_vanilla();
  LossConfig& c = r.loss;
  c.policy.loss = PolicyLoss::geo_mean;
  c.ratio.clip_eps_low = c.ratio.clip_eps_high = 0.4;
  c.ratio.dual_clip = false;
  c.aggregation.policy = Aggregation::seq_mean_token_mean;
  verl_no_log_ratio_clamp(c);
  return r;
}

// KL-Cov (loss_mode "kl_cov") with verl's config defaults: kl_cov_ratio 2e-4, ppo_kl_coef 0.1
// (the function's fallback is 1; the entropy-mechanism runs set 1 and ratios of 2e-4 to 2e-3).
inline Recipe verl_kl_cov() {
  Recipe r = verl_vanilla();
  LossConfig& c = r.loss;
  c.policy.loss = PolicyLoss::kl_cov;
  c.policy.kl_cov.ratio = 2e-4;
  c.policy.kl_cov.coef = 0.1;
  c.ratio.dual_clip = false;
  verl_no_log_ratio_clamp(c);
  return r;
}

// Clip-Cov (loss_mode "clip_cov") with verl's config defaults: clip_cov_ratio 2e-4, candidates with
// cov in (1, 5), PPO clip 0.2, no dual clip. verl draws the zeroed tokens with torch.randperm; the
// library chooses them by a counter-based hash of (config.policy.clip_cov.seed, token index), or
// takes the caller's batch.selection (docs/MATH.md, "Clip-Cov").
inline Recipe verl_clip_cov() {
  Recipe r = verl_vanilla();
  LossConfig& c = r.loss;
  c.policy.loss = PolicyLoss::clip_cov;
  c.policy.clip_cov.ratio = 2e-4;
  c.policy.clip_cov.lower = 1.0;
  c.policy.clip_cov.upper = 5.0;
  c.ratio.dual_clip = false;
  verl_no_log_ratio_clamp(c);
  return r;
}

// Decoupled rollout correction (verl's RolloutCorrectionConfig.decoupled_token_is / decoupled_seq_is)
// on top of any verl preset: IS weights at `level`, truncated at `threshold`, multiply the policy
// loss; d = old_logp - rollout_logp. Add rejection options to off_policy.rollout.rejection (or parse
// verl's strings with verl_rollout_rs, presets/verl_options.hpp).
inline Recipe verl_decoupled(Recipe r, RolloutIsLevel level = RolloutIsLevel::sequence, double threshold = 2.0) {
  RolloutCorrectionConfig& c = r.loss.off_policy.rollout;
  c.mode = RolloutCorrectionMode::decoupled;
  c.is_level = level;
  c.is_threshold = threshold;
  return r;
}

// IcePop (verl's rollout_is_threshold = "lo_hi") on a recipe with a rollout IS level: applied
// weights w = u where lo <= u <= hi, else 0 (the mask is not changed).
inline Recipe verl_icepop(Recipe r, double lo = 0.5, double hi = 5.0) {
  RolloutCorrectionConfig& c = r.loss.off_policy.rollout;
  c.is_mode = RolloutIsMode::icepop;
  c.is_threshold_lower = lo;
  c.is_threshold = hi;
  return r;
}

// Bypass mode with loss_type "ppo_clip" (RolloutCorrectionConfig.bypass_ppo_clip): old = rollout,
// verl's vanilla loss (dual clip 3) with the ratio against rollout_logp; no IS weight, no rejection.
inline Recipe verl_bypass_ppo_clip() {
  Recipe r = verl_vanilla();
  r.loss.off_policy.rollout.mode = RolloutCorrectionMode::bypass;
  return r;
}

// Bypass mode with loss_type "reinforce" (RolloutCorrectionConfig.bypass_pg_is): -A logp times the
// sequence-level IS weight exp(sum_t (logp - rollout)) truncated at 2; no rejection.
inline Recipe verl_bypass_reinforce() {
  Recipe r = verl_vanilla();
  LossConfig& c = r.loss;
  c.policy.loss = PolicyLoss::reinforce;
  c.ratio.dual_clip = false;
  c.off_policy.rollout.mode = RolloutCorrectionMode::bypass;
  c.off_policy.rollout.is_level = RolloutIsLevel::sequence;
  c.off_policy.rollout.is_threshold = 2.0;
  return r;
}

// DPPO-Binary-TV (loss_mode "dppo_tv", verl-project/verl 1dda039): -A sg(min(r, c)) logp on the
// tokens whose probability moved by at most the threshold the way A pushes it; the DPPO recipe's
// thresholds 0.15 / 0.15 (clip_ratio_low / _high) and c = clip_ratio_c = 10000; token-mean.
inline Recipe verl_dppo_tv() {
  Recipe r = verl_vanilla();
  LossConfig& c = r.loss;
  c.policy.loss = PolicyLoss::dppo_tv;
  c.policy.dppo_tv.is_cap = 10000.0;
  c.ratio.clip_eps_low = c.ratio.clip_eps_high = 0.15;
  c.ratio.dual_clip = false;
  return r;
}

// DPPO-Binary-KL (loss_mode "dppo_kl"): dppo_tv's loss on the tokens whose chosen / not-chosen
// Bernoulli moved by at most the threshold in binary KL (a token moving against A's sign is always
// kept); the recipe's thresholds 0.05 / 0.05 and c = 10000; token-mean.
inline Recipe verl_dppo_kl() {
  Recipe r = verl_dppo_tv();
  LossConfig& c = r.loss;
  c.policy.loss = PolicyLoss::dppo_kl;
  c.policy.dppo_kl.is_cap = 10000.0;
  c.ratio.clip_eps_low = c.ratio.clip_eps_high = 0.05;
  return r;
}

// DRO (loss_mode "dro"): -(A logp - beta/2 (logp - old)^2), no ratio, no clamp; token-mean.
// verl's policy_loss.dro_beta has no default: the preset's beta is the argument (the registry's
// verl/dro takes 1.0; set policy.dro.beta to your dro_beta).
inline Recipe verl_dro(double beta = 1.0) {
  Recipe r = verl_vanilla();
  LossConfig& c = r.loss;
  c.policy.loss = PolicyLoss::dro;
  c.policy.dro.beta = beta;
  c.ratio.dual_clip = false;
  verl_no_log_ratio_clamp(c);
  return r;
}

// RolloutCorrectionConfig.bypass_pg_token_icepop: bypass mode, loss_type reinforce, token-level
// IcePop in [0.5, 5].
inline Recipe verl_bypass_token_icepop() {
  Recipe r = verl_bypass_reinforce();
  r.loss.off_policy.rollout.is_level = RolloutIsLevel::token;
  return verl_icepop(r, 0.5, 5.0);
}

namespace detail {
inline Recipe verl_dro_beta_1() { return verl_dro(1.0); }
inline Recipe verl_decoupled_token_icepop() {
  return verl_icepop(verl_decoupled(verl_grpo(), RolloutIsLevel::token), 0.5, 5.0);
}
inline Recipe verl_decoupled_token_is() { return verl_decoupled(verl_grpo(), RolloutIsLevel::token); }
inline Recipe verl_decoupled_seq_is() { return verl_decoupled(verl_grpo(), RolloutIsLevel::sequence); }
}  // namespace detail

inline constexpr PresetEntry kVerlPresets[] = {
    {"verl/vanilla", "verl's vanilla PPO loss with its defaults (dual clip 3, token-mean)", verl_vanilla},
    {"verl/grpo", "verl's GRPO recipe: vanilla + low_var_kl KL 0.001", verl_grpo},
    {"verl/dapo", "DAPO in verl: clip-higher 0.2 / 0.28, dual clip 10", verl_dapo},
    {"verl/dr_grpo", "Dr. GRPO in verl: no std, seq-mean-token-sum-norm", verl_dr_grpo},
    {"verl/gspo", "verl's GSPO: sequence ratio, clip 3e-4 / 4e-4, seq-mean-token-mean", verl_gspo},
    {"verl/cispo", "verl's CISPO recipe: clamp(r, -9, 1.2) as a stop-gradient weight, k3 KL", verl_cispo},
    {"verl/sapo", "verl's SAPO recipe: soft gate, tau 1 / 1.05", verl_sapo},
    {"verl/gpg", "verl's GPG recipe: -A logp", verl_gpg},
    {"verl/gmpo", "verl's GMPO recipe (loss_mode geo_mean): clip 0.4 on the log ratio", verl_gmpo},
    {"verl/kl_cov", "verl's KL-Cov with its config defaults (ratio 2e-4, coef 0.1)", verl_kl_cov},
    {"verl/clip_cov", "verl's Clip-Cov with its config defaults (ratio 2e-4, cov in (1, 5))", verl_clip_cov},
    {"verl/decoupled_token_is", "verl/grpo + RolloutCorrectionConfig.decoupled_token_is (threshold 2)",
     detail::verl_decoupled_token_is},
    {"verl/decoupled_seq_is", "verl/grpo + RolloutCorrectionConfig.decoupled_seq_is (threshold 2)",
     detail::verl_decoupled_seq_is},
    {"verl/bypass_ppo_clip", "RolloutCorrectionConfig.bypass_ppo_clip: ratio against rollout_logp", verl_bypass_ppo_clip},
    {"verl/bypass_pg_is", "RolloutCorrectionConfig.bypass_pg_is: reinforce with sequence IS 2", verl_bypass_reinforce},
    {"verl/dppo_tv", "DPPO-Binary-TV: keep tokens whose probability moved <= 0.15, IS cap 10000", verl_dppo_tv},
    {"verl/dppo_kl", "DPPO-Binary-KL: keep tokens whose binary KL moved <= 0.05, IS cap 10000", verl_dppo_kl},
    {"verl/dro", "DRO: -(A logp - beta/2 (logp - old)^2) with dro_beta 1 (verl has no default)", detail::verl_dro_beta_1},
    {"verl/decoupled_token_icepop", "verl/grpo + RolloutCorrectionConfig.decoupled_token_icepop (token, [0.5, 5])",
     detail::verl_decoupled_token_icepop},
    {"verl/bypass_pg_token_icepop", "RolloutCorrectionConfig.bypass_pg_token_icepop: reinforce, token IcePop [0.5, 5]",
     verl_bypass_token_icepop},
};

}  // namespace cgrpo
