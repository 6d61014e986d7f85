// tests/presets/golden_trl.hpp: the params of TRL's cases (tests/data/trl, from GRPOTrainer's own code)
// as a golden::Setup, starting from the preset of the case's loss_type; and the per-token arrays
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

inline cgrpo::LossConfig trl_preset(const std::string& loss_type) {
  if (loss_type == "grpo") return cgrpo::trl_grpo();
  if (loss_type == "bnpo") return cgrpo::trl_bnpo();
  if (loss_type == "dr_grpo") return cgrpo::trl_dr_grpo();
  if (loss_type == "dapo") return cgrpo::trl_dapo();
  if (loss_type == "cispo") return cgrpo::trl_cispo();
  if (loss_type == "sapo") return cgrpo::trl_sapo();
  if (loss_type == "luspo") return cgrpo::trl_luspo();
  if (loss_type == "vespo") return cgrpo::trl_vespo();
  FAIL("unknown trl_loss_type " << loss_type);
  return cgrpo::LossConfig();
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
    const cgrpo::Status st = cgrpo::trl_advantages(s.config.advantage, groups, 1, g.at("rewards").values.data(),
                                                   nullptr, s.config.advantage_eps, got.data(), rewards.data());
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
        s.config, B, rows, mask.data(), g.at("log_prob").values.data(), g.at("old_logp").values.data(),
        has_rollout ? g.at("rollout_logp").values.data() : nullptr, adv_tok.data(), factor.data(), phi.data(), &sm,
        &arrays);
    INFO(st.message);
    REQUIRE(st.ok());
    if (has_is) {
      const auto& want = g.at("is_ratio");
      if (want.shape[1] == 1) {  // sequence modes: one weight per row, every row
        REQUIRE(cgrpo::sampler_is_sequence(s.config.sampler.mode));
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
        cgrpo::top_entropy_mask(T, mask.data(), g.at("entropy").values.data(), s.config.top_entropy_quantile, keep.data());
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

inline void setup_trl(const GoldenCase& g, Setup& s) {
  const auto& logits = g.at("logits");
  const int64_t B = logits.shape[0];
  REQUIRE(g.param("source") == "trl");
  REQUIRE(g.param("refinement_rows") == "none");
  cgrpo::LossConfig& c = s.config;
  c = trl_preset(g.param("trl_loss_type"));
  const double inf = std::numeric_limits<double>::infinity();

  // Advantages: scale_rewards group / batch / none; TRL's groups are contiguous blocks.
  const std::string adv = g.param("advantage");
  if (adv == "grpo") c.advantage = cgrpo::AdvantageEstimator::grpo;
  else if (adv == "grpo_batch_std") c.advantage = cgrpo::AdvantageEstimator::grpo_batch_std;
  else {
    REQUIRE(adv == "grpo_no_std");
    c.advantage = cgrpo::AdvantageEstimator::grpo_no_std;
  }
  if (adv != "grpo_no_std") REQUIRE(param_double(g, "eps") == c.advantage_eps);  // the preset's 1e-4
  const int64_t G = static_cast<int64_t>(param_double(g, "group_size"));
  s.group_ids.resize(B);
  for (int64_t i = 0; i < B; ++i) {
    s.group_ids[i] = static_cast<int32_t>(i / G);
    REQUIRE(g.at("group_ids").values[i] == static_cast<double>(s.group_ids[i]));
  }
  s.num_groups = (B + G - 1) / G;

  // Ratio level and the policy loss.
  const std::string level = g.param("is_level");
  if (level == "sequence") c.ratio_level = cgrpo::RatioLevel::sequence;
  else REQUIRE(level == "token");
  REQUIRE(g.param("log_ratio_clamp") == "none");
  REQUIRE(c.log_ratio_min == -inf);
  REQUIRE(c.log_ratio_max == inf);
  const std::string clip = g.param("clip");
  if (clip == "ppo") {
    REQUIRE(c.policy_loss == cgrpo::PolicyLoss::ppo_clip);
    c.clip_eps_low = param_double(g, "eps_low");
    c.clip_eps_high = param_double(g, "eps_high");
    c.two_sided_delta = param_or_none(g, "dual_clip", inf);  // TRL's delta
  } else if (clip == "cispo_max") {
    REQUIRE(c.policy_loss == cgrpo::PolicyLoss::cispo_cap);
    c.cispo_ratio_cap = param_double(g, "ratio_max");
  } else if (clip == "sapo") {
    REQUIRE(c.policy_loss == cgrpo::PolicyLoss::sapo);
    c.sapo_tau_pos = param_double(g, "tau_pos");
    c.sapo_tau_neg = param_double(g, "tau_neg");
  } else {
    REQUIRE(clip == "vespo");
    REQUIRE(c.policy_loss == cgrpo::PolicyLoss::vespo);
    c.vespo_k_pos = param_double(g, "k_pos");
    c.vespo_lambda_pos = param_double(g, "lambda_pos");
    c.vespo_k_neg = param_double(g, "k_neg");
    c.vespo_lambda_neg = param_double(g, "lambda_neg");
  }

  // Aggregation: the preset's mode must be the one the case names (B = all, eps 0 are the preset's
  // convention); dr_grpo's K = B * max_completion_length goes in as the length L.
  const std::string agg = g.param("pg_agg");
  REQUIRE(c.pg_aggregation == trl_aggregation_of(agg));
  REQUIRE(c.aggregation.token_mean_eps == 0.0);
  REQUIRE(c.aggregation.count_empty_rows);
  if (c.pg_aggregation == cgrpo::Aggregation::seq_mean_token_sum_norm) {
    s.scale.length = agg_number(agg, "L");
    REQUIRE(s.scale.length == static_cast<double>(B) * param_double(g, "max_completion_length"));
  }

  // The masks and the vLLM weight.
  c.top_entropy_quantile = param_double(g, "top_entropy_quantile");
  const std::string is = g.param("vllm_is");
  if (is != "none") {
    if (is == "token_truncate") c.sampler.mode = cgrpo::SamplerCorrectionMode::token_truncate;
    else if (is == "token_mask") c.sampler.mode = cgrpo::SamplerCorrectionMode::token_mask;
    else if (is == "sequence_truncate") c.sampler.mode = cgrpo::SamplerCorrectionMode::sequence_truncate;
    else {
      REQUIRE(is == "sequence_mask");
      c.sampler.mode = cgrpo::SamplerCorrectionMode::sequence_mask;
    }
    c.sampler.min = param_or_none(g, "vllm_is_min", 0.0);
    c.sampler.max = param_or_none(g, "vllm_is_max", inf);
  }
  c.off_policy_mask_threshold = param_or_none(g, "opsm_threshold", inf);

  // Entropy bonus: the key spells out the denominators the preset must already use.
  c.entropy_coef = param_double(g, "entropy_coef");
  const std::string eagg = g.param("entropy_agg");
  REQUIRE(c.entropy_aggregation == cgrpo::Aggregation::token_mean);
  if (eagg == "token-mean(eps=0,mask=kept,count=valid)") {
    REQUIRE(c.entropy_count_all_tokens);
  } else {
    REQUIRE((eagg == "token-mean(eps=0)" || eagg == "token-mean(eps=0,mask=kept)"));
    if (c.top_entropy_quantile < 1) REQUIRE(!c.entropy_count_all_tokens);
  }

  // KL: TRL's k3 without clamps, added to the per-token loss (so aggregated as the policy term).
  const std::string kl = g.param("kl");
  if (kl != "none") {
    REQUIRE(kl == "k3_unclamped");
    c.kl = cgrpo::KlEstimator::k3;
    REQUIRE(!c.kl_k3_clamp);
    c.kl_coef = param_double(g, "kl_coef");
    REQUIRE(g.param("kl_agg") == agg);
    REQUIRE(c.kl_aggregation == c.pg_aggregation);
    const std::string weighted = g.param("kl_is_weighted");
    REQUIRE((weighted == "yes" || weighted == "no"));
    c.kl_times_ratio = weighted == "yes";
  }
  c.temperature = param_double(g, "temperature");
  s.caller_weights = false;  // TRL's masks and conventions: the loss computes its weights

  // TRL's logged metrics (golden/README.md): f32 ones at 1e-6.
  const double f32 = 1e-6;
  const double coef = c.entropy_coef;
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
