// tests/presets/golden_trl.hpp: the params of TRL's cases (tests/data/trl, from GRPOTrainer's own code)
// as a golden::Setup: GRPOConfig's fields (cgrpo::TrlOptions -> cgrpo::trl_recipe, from the preset of
// the case's loss_type), checked against the case's keys; and the per-token arrays
// the cases hold (is_ratio, entropy_keep, opsm_keep, advantages) against the library's functions.
#pragma once

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "golden_runner.hpp"

namespace golden {

inline double param_or_none(const GoldenCase& g, const std::string& key, double none) {
  const std::string v = g.param(key);
  INFO("param " << key);
  REQUIRE(!v.empty());
  return v == "none" ? none : std::stod(v);
}

// A case's pg_agg key -> the mode it names (the presets must already use it).
inline cgrpo::Aggregation trl_aggregation_of(const std::string& agg) {
  if (agg == "seq-mean-token-mean(B=all)") return cgrpo::Aggregation::seq_mean_token_mean;
  if (agg == "token-mean(eps=0)") return cgrpo::Aggregation::token_mean;
  if (agg == "seq-mean-token-sum(B=all)") return cgrpo::Aggregation::seq_mean_token_sum;
  if (agg.rfind("seq-mean-token-sum-norm(L=", 0) == 0) return cgrpo::Aggregation::seq_mean_token_sum_norm;
  FAIL("unknown aggregation " << agg);
  return cgrpo::Aggregation::token_mean;
}

// Compares the arrays a case holds with what the library computes from the case's inputs: the
// vLLM weights and OPSM flags (sampler_correction, the function the fused loss calls), the entropy
// mask (top_entropy_mask, the same quantile the fused loss takes), and TRL's advantages from one
// reward function of weight 1 (trl_advantages).
inline void check_trl_arrays(const GoldenCase& g, const Setup& s) {
  const auto& logits = g.at("logits");
  const int64_t B = logits.shape[0], L = logits.shape[1], T = B * L;
  const auto layout = cgrpo::SequenceLayout::padded(B, L);
  std::vector<uint8_t> mask(T);
  for (int64_t t = 0; t < T; ++t) mask[t] = static_cast<uint8_t>(g.at("mask").values[t]);
  const auto& adv = g.at("advantages").values;
  std::vector<double> adv_tok(T);
  for (int64_t t = 0; t < T; ++t) adv_tok[t] = adv[t / L];
  auto row_valid = [&](int64_t i) {
    for (int64_t j = 0; j < L; ++j)
      if (mask[i * L + j]) return true;
    return false;
  };

  // Advantages by TRL's own rule (with None handling), one function of weight 1.
  {
    std::vector<double> got(B), rewards(B);
    const cgrpo::GroupAssignment groups{B, s.group_ids.data(), s.num_groups};
    const cgrpo::Status st = cgrpo::trl_advantages(s.recipe.advantage.estimator, groups, 1, g.at("rewards").values.data(),
                                                   nullptr, s.recipe.advantage.eps, got.data(), rewards.data());
    INFO(st.message);
    REQUIRE(st.ok());
    for (int64_t i = 0; i < B; ++i) {
      CHECK(rewards[i] == g.at("rewards").values[i]);
      if (row_valid(i)) CHECK(std::fabs(got[i] - adv[i]) <= 1e-10 * std::max(1.0, std::fabs(adv[i])));
    }
  }

  const bool has_is = g.arrays.count("is_ratio") != 0, has_opsm = g.arrays.count("opsm_keep") != 0;
  if (has_is || has_opsm) {
    const cgrpo::cpu::RowBounds rows{&layout, T};
    const bool has_rollout = g.arrays.count("rollout_logp") != 0;
    std::vector<double> factor(T, 1.0), phi(B, 0.0), is_ratio(T, -1.0), row_is(B, -1.0);
    std::vector<uint8_t> keep(T, 7);
    cgrpo::SamplerArrays arrays;
    arrays.is_ratio = is_ratio.data();
    arrays.row_is_ratio = row_is.data();
    arrays.opsm_keep = keep.data();
    cgrpo::SamplerMetrics sm;
    const cgrpo::Status st = cgrpo::sampler_correction(
        cgrpo::sampler_row_params(s.config()), B, rows, mask.data(), g.at("log_prob").values.data(), g.at("old_logp").values.data(),
        has_rollout ? g.at("rollout_logp").values.data() : nullptr, adv_tok.data(), factor.data(), phi.data(), &sm,
        &arrays);
    INFO(st.message);
    REQUIRE(st.ok());
    if (has_is) {
      const auto& want = g.at("is_ratio");
      if (want.shape[1] == 1) {  // sequence modes: one weight per row, every row
        REQUIRE(cgrpo::sampler_is_sequence(s.config().off_policy.sampler.mode));
        for (int64_t i = 0; i < B; ++i) {
          INFO("is_ratio of row " << i);
          CHECK(std::fabs(row_is[i] - want.values[i]) <= 1e-10 * std::max(1e-8, std::fabs(want.values[i])));
        }
      } else {
        for (int64_t t = 0; t < T; ++t)
          if (mask[t]) {
            INFO("is_ratio of token " << t);
            CHECK(std::fabs(is_ratio[t] - want.values[t]) <= 1e-10 * std::max(1e-8, std::fabs(want.values[t])));
          }
      }
    }
    if (has_opsm) {
      const auto& want = g.at("opsm_keep").values;
      int dropped = 0;
      for (int64_t t = 0; t < T; ++t)
        if (mask[t]) {
          INFO("opsm_keep of token " << t);
          CHECK(keep[t] == static_cast<uint8_t>(want[t / L]));
          dropped += keep[t] == 0;
        }
      CHECK(dropped > 0);  // the case drops a row, so the flag is exercised
    }
  }

  if (g.arrays.count("entropy_keep")) {
    std::vector<uint8_t> keep(T, 7);
    const cgrpo::Status st =
        cgrpo::top_entropy_mask(T, mask.data(), g.at("entropy").values.data(),
                                s.config().entropy_mask.top_quantile, keep.data());
    INFO(st.message);
    REQUIRE(st.ok());
    const auto& want = g.at("entropy_keep").values;
    int kept = 0, valid = 0;
    for (int64_t t = 0; t < T; ++t) {
      INFO("entropy_keep of token " << t);
      CHECK(keep[t] == static_cast<uint8_t>(want[t]));
      kept += keep[t];
      valid += mask[t];
    }
    CHECK((kept > 0 && kept < valid));
  }
}

// A case's params as TRL's GRPOConfig fields (cgrpo::TrlOptions), turned into a recipe by
// cgrpo::trl_recipe, as a user switching from TRL would; then what the loss_type's preset must
// already do for the case's keys.
inline void setup_trl(const GoldenCase& g, Setup& s) {
  const auto& logits = g.at("logits");
  const int64_t B = logits.shape[0];
  REQUIRE(g.param("source") == "trl");
  REQUIRE(g.param("refinement_rows") == "none");
  const double inf = std::numeric_limits<double>::infinity(), none = std::numeric_limits<double>::quiet_NaN();
  cgrpo::TrlOptions o;
  const std::string loss_type = g.param("trl_loss_type");
  o.loss_type = loss_type.c_str();

  // Advantages: scale_rewards group / batch / none; TRL's groups are contiguous blocks.
  const std::string adv = g.param("advantage");
  if (adv == "grpo") o.scale_rewards = "group";
  else if (adv == "grpo_batch_std") o.scale_rewards = "batch";
  else {
    REQUIRE(adv == "grpo_no_std");
    o.scale_rewards = "none";
  }
  const int64_t G = static_cast<int64_t>(param_double(g, "group_size"));
  s.group_ids.resize(B);
  for (int64_t i = 0; i < B; ++i) {
    s.group_ids[i] = static_cast<int32_t>(i / G);
    REQUIRE(g.at("group_ids").values[i] == static_cast<double>(s.group_ids[i]));
  }
  s.num_groups = (B + G - 1) / G;

  // Ratio level and the policy loss's parameters.
  const std::string level = g.param("is_level");
  o.importance_sampling_level = level.c_str();
  REQUIRE(g.param("log_ratio_clamp") == "none");
  const std::string clip = g.param("clip");
  if (clip == "ppo") {
    o.epsilon = param_double(g, "eps_low");
    o.epsilon_high = param_double(g, "eps_high");
    o.delta = param_or_none(g, "dual_clip", none);  // TRL's delta
  } else if (clip == "cispo_max") {
    o.epsilon_high = param_double(g, "ratio_max");  // TRL's cispo cap is epsilon_high
  } else if (clip == "sapo") {
    o.sapo_temperature_pos = param_double(g, "tau_pos");
    o.sapo_temperature_neg = param_double(g, "tau_neg");
  } else {
    REQUIRE(clip == "vespo");
    o.vespo_k_pos = param_double(g, "k_pos");
    o.vespo_lambda_pos = param_double(g, "lambda_pos");
    o.vespo_k_neg = param_double(g, "k_neg");
    o.vespo_lambda_neg = param_double(g, "lambda_neg");
  }

  // The masks and the vLLM weight.
  o.top_entropy_quantile = param_double(g, "top_entropy_quantile");
  const std::string is = g.param("vllm_is");
  o.use_vllm = is != "none";
  if (o.use_vllm) {
    o.vllm_importance_sampling_correction = true;
    o.vllm_importance_sampling_mode = is.c_str();
    o.vllm_importance_sampling_clip_min = param_or_none(g, "vllm_is_min", none);
    o.vllm_importance_sampling_clip_max = param_or_none(g, "vllm_is_max", none);
  }
  o.off_policy_mask_threshold = param_or_none(g, "opsm_threshold", none);

  // KL: TRL's k3 without clamps, added to the per-token loss (so aggregated as the policy term).
  const std::string kl = g.param("kl");
  if (kl != "none") {
    REQUIRE(kl == "k3_unclamped");
    o.beta = param_double(g, "kl_coef");
    const std::string weighted = g.param("kl_is_weighted");
    REQUIRE((weighted == "yes" || weighted == "no"));
    o.use_bias_correction_kl = weighted == "yes";
  }
  o.temperature = param_double(g, "temperature");
  {
    const cgrpo::Status st = cgrpo::trl_recipe(o, &s.recipe);
    INFO(st.message);
    REQUIRE(st.ok());
  }
  cgrpo::LossConfig& c = s.config();
  // The entropy bonus is not among TrlOptions' fields: set on the config.
  c.entropy.coef = param_double(g, "entropy_coef");

  // What the preset of the loss_type sets for the case's keys.
  if (adv != "grpo_no_std") REQUIRE(param_double(g, "eps") == s.recipe.advantage.eps);  // the preset's 1e-4
  REQUIRE(c.ratio.level == (level == "sequence" ? cgrpo::RatioLevel::sequence : cgrpo::RatioLevel::token));
  REQUIRE(c.ratio.log_ratio_min == -inf);
  REQUIRE(c.ratio.log_ratio_max == inf);
  if (clip == "ppo") REQUIRE(c.policy.loss == cgrpo::PolicyLoss::ppo_clip);
  if (clip == "cispo_max") {
    REQUIRE(c.policy.loss == cgrpo::PolicyLoss::cispo_cap);
    REQUIRE(c.policy.cispo_cap.ratio_cap == param_double(g, "ratio_max"));
  }
  if (clip == "sapo") REQUIRE(c.policy.loss == cgrpo::PolicyLoss::sapo);
  if (clip == "vespo") REQUIRE(c.policy.loss == cgrpo::PolicyLoss::vespo);
  if (clip == "ppo") REQUIRE(c.ratio.two_sided_delta == param_or_none(g, "dual_clip", inf));
  else REQUIRE(c.ratio.two_sided_delta == inf);
  REQUIRE(!c.ratio.dual_clip);

  // Aggregation: the preset's mode must be the one the case names (B = all, eps 0 are the preset's
  // convention); dr_grpo's K = B * max_completion_length goes in as the length L.
  const std::string agg = g.param("pg_agg");
  REQUIRE(c.aggregation.policy == trl_aggregation_of(agg));
  REQUIRE(c.aggregation.convention.token_mean_eps == 0.0);
  REQUIRE(c.aggregation.convention.row_count_eps == 0.0);
  REQUIRE(c.aggregation.convention.count_empty_rows);
  if (c.aggregation.policy == cgrpo::Aggregation::seq_mean_token_sum_norm) {
    s.scale.length = agg_number(agg, "L");
    REQUIRE(s.scale.length == static_cast<double>(B) * param_double(g, "max_completion_length"));
  }

  // The masks and the vLLM weight as parsed.
  REQUIRE(c.entropy_mask.top_quantile == param_double(g, "top_entropy_quantile"));
  if (is == "none") {
    REQUIRE(c.off_policy.sampler.mode == cgrpo::SamplerCorrectionMode::none);
  } else {
    cgrpo::SamplerCorrectionMode m = cgrpo::SamplerCorrectionMode::none;
    REQUIRE(cgrpo::trl_vllm_importance_sampling_mode(is.c_str(), &m).ok());
    REQUIRE(c.off_policy.sampler.mode == m);
    REQUIRE(c.off_policy.sampler.min == param_or_none(g, "vllm_is_min", 0.0));
    REQUIRE(c.off_policy.sampler.max == param_or_none(g, "vllm_is_max", inf));
  }
  REQUIRE(c.off_policy.opsm_threshold == param_or_none(g, "opsm_threshold", inf));

  // Entropy bonus: the key spells out the denominators the preset must already use.
  const std::string eagg = g.param("entropy_agg");
  REQUIRE(c.aggregation.entropy == cgrpo::Aggregation::token_mean);
  if (eagg == "token-mean(eps=0,mask=kept,count=valid)") {
    REQUIRE(c.entropy_mask.count_all_tokens);
  } else {
    REQUIRE((eagg == "token-mean(eps=0)" || eagg == "token-mean(eps=0,mask=kept)"));
    if (c.entropy_mask.top_quantile < 1) REQUIRE(!c.entropy_mask.count_all_tokens);
  }

  // KL as parsed: unclamped k3, aggregated as the policy term.
  if (kl != "none") {
    REQUIRE(c.kl.estimator == cgrpo::KlEstimator::k3);
    REQUIRE(!c.kl.k3_clamp);
    REQUIRE(c.kl.coef == param_double(g, "kl_coef"));
    REQUIRE(g.param("kl_agg") == agg);
    REQUIRE(c.aggregation.kl == c.aggregation.policy);
    REQUIRE(c.kl.times_ratio == (g.param("kl_is_weighted") == "yes"));
  } else {
    REQUIRE(!c.kl_on());
  }
  REQUIRE(c.temperature == param_double(g, "temperature"));
  REQUIRE(c.validate().ok());
  s.caller_weights = false;  // TRL's masks and conventions: the loss computes its weights

  // TRL's logged metrics (golden/README.md): f32 ones at 1e-6.
  const double f32 = 1e-6;
  const double coef = c.entropy.coef;
  s.metrics = {
      {"metric_entropy", [](const cgrpo::LossMetrics& m) { return m.entropy_mean; }},
      {"metric_kl", [](const cgrpo::LossMetrics& m) { return m.kl_mean; }},
      {"metric_policy_loss", [coef](const cgrpo::LossMetrics& m) { return m.loss + coef * m.entropy_loss; }},
      {"metric_clip_ratio_low_mean", [](const cgrpo::LossMetrics& m) { return m.clip_ratio_low_mean; }, f32},
      {"metric_clip_ratio_high_mean", [](const cgrpo::LossMetrics& m) { return m.clip_ratio_high_mean; }, f32},
      {"metric_clip_ratio_region_mean", [](const cgrpo::LossMetrics& m) { return m.clip_ratio_region_mean; }, f32},
      {"metric_clip_ratio_low_min", [](const cgrpo::LossMetrics& m) { return m.clip_ratio_low_min; }, f32},
      {"metric_clip_ratio_high_max", [](const cgrpo::LossMetrics& m) { return m.clip_ratio_high_max; }, f32},
      {"metric_cispo_clip_ratio", [](const cgrpo::LossMetrics& m) { return m.clip_ratio_high_mean; }, f32},
      {"metric_vespo_phi_seq_mean", [](const cgrpo::LossMetrics& m) { return m.vespo_phi_mean; }},
      {"metric_sampling_logp_difference_mean",
       [](const cgrpo::LossMetrics& m) { return m.sampler.logp_difference_mean; }},
      {"metric_sampling_logp_difference_max", [](const cgrpo::LossMetrics& m) { return m.sampler.logp_difference_max; }},
      {"metric_sampling_importance_sampling_ratio_min",
       [](const cgrpo::LossMetrics& m) { return m.sampler.is_ratio_min; }},
      {"metric_sampling_importance_sampling_ratio_mean",
       [](const cgrpo::LossMetrics& m) { return m.sampler.is_ratio_mean; }},
      {"metric_sampling_importance_sampling_ratio_max",
       [](const cgrpo::LossMetrics& m) { return m.sampler.is_ratio_max; }},
  };

  check_trl_arrays(g, s);
  for (const char* key : {"is_ratio", "opsm_keep", "entropy_keep"})
    if (g.arrays.count(key)) s.checked_by_setup.push_back(key);
}

}  // namespace golden
