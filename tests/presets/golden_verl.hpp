// tests/presets/golden_verl.hpp: the params of the verl cases (tests/data/verl, computed by volcengine/verl's
// own functions; tests/data/GOLDEN_README.md) as a golden::Setup: presets, verl's option strings, metrics.
#pragma once

#include <string>
#include <vector>

#include "golden_runner.hpp"

namespace golden {

// "mode(args)" -> mode, args (without the parentheses).
inline void split_agg(const std::string& spec, std::string& mode, std::string& args) {
  const auto open = spec.find('(');
  mode = spec.substr(0, open);
  args = open == std::string::npos ? "" : spec.substr(open + 1, spec.size() - open - 2);
}

// A verl aggregation key: the mode, and a check that its conventions are verl's (verl_aggregation()).
inline cgrpo::Aggregation verl_agg(const std::string& spec) {
  std::string mode, args;
  split_agg(spec, mode, args);
  INFO("aggregation " << spec);
  cgrpo::Aggregation a = cgrpo::Aggregation::token_mean;
  REQUIRE(cgrpo::verl_loss_agg_mode(mode.c_str(), &a).ok());
  if (a == cgrpo::Aggregation::token_mean) REQUIRE(args == "eps=0");
  if (a == cgrpo::Aggregation::seq_mean_token_sum) REQUIRE(args == "B=nonempty");
  if (a == cgrpo::Aggregation::seq_mean_token_mean) REQUIRE(args == "B=nonempty,eps=1e-8");
  return a;
}

inline void setup_verl(const GoldenCase& g, Setup& s) {
  using namespace cgrpo;
  const auto& logits = g.at("logits");
  const int64_t B = logits.shape[0];
  REQUIRE(g.param("source") == "verl");
  REQUIRE(g.param("refinement_rows") == "none");  // every row initial: s.row_kinds stays empty

  // The policy loss picks the preset (verl's loss_mode, or the bypass loss_type).
  const std::string clip = g.param("clip");
  LossConfig& c = s.config;
  if (clip == "ppo") {
    c = g.param("rollout_correction") == "bypass" ? verl_bypass_ppo_clip() : verl_vanilla();
    c.clip_eps_low = param_double(g, "eps_low");
    c.clip_eps_high = param_double(g, "eps_high");
    c.dual_clip_c = param_double(g, "dual_clip");
  } else if (clip == "cispo") {
    c = verl_cispo();
    c.kl = KlEstimator::none;  // the case's own kl key decides
    c.kl_coef = 0;
    c.clip_eps_low = param_double(g, "eps_low");
    c.clip_eps_high = param_double(g, "eps_high");
  } else if (clip == "sapo") {
    c = verl_sapo();
    c.sapo_tau_pos = param_double(g, "tau_pos");
    c.sapo_tau_neg = param_double(g, "tau_neg");
  } else if (clip == "gpg") {
    c = verl_gpg();
  } else if (clip == "geo_mean") {
    c = verl_gmpo();
    c.clip_eps_low = param_double(g, "eps_low");
    c.clip_eps_high = param_double(g, "eps_high");
  } else if (clip == "kl_cov") {
    c = verl_kl_cov();
    c.cov_ratio = param_double(g, "kl_cov_ratio");
    c.kl_cov_coef = param_double(g, "ppo_kl_coef");
  } else if (clip == "reinforce") {
    c = verl_bypass_reinforce();
  } else {
    FAIL("unknown clip " << clip);
  }

  // Advantages: verl's grpo (eps 1e-6) or rloo, over the case's groups.
  const std::string adv = g.param("advantage");
  if (adv == "grpo") {
    c.advantage = AdvantageEstimator::grpo;
    c.advantage_eps = param_double(g, "eps");
  } else {
    REQUIRE(adv == "rloo");
    c.advantage = AdvantageEstimator::rloo;
  }
  const auto& ids = g.at("group_ids").values;
  s.group_ids.resize(B);
  s.num_groups = 0;
  for (int64_t i = 0; i < B; ++i) {
    s.group_ids[i] = static_cast<int32_t>(ids[i]);
    s.num_groups = std::max<int64_t>(s.num_groups, s.group_ids[i] + 1);
  }

  // The log-ratio clamp the preset sets must be the one the case names.
  const std::string clamp = g.param("log_ratio_clamp");
  if (clamp == "-20:20") {
    REQUIRE(c.log_ratio_min == -20.0);
    REQUIRE(c.log_ratio_max == 20.0);
  } else if (clamp == "none") {
    REQUIRE(std::isinf(c.log_ratio_min));
    REQUIRE(std::isinf(c.log_ratio_max));
  } else {
    REQUIRE(clamp.empty());  // gpg, reinforce: no ratio
  }

  // Aggregations: sapo and geo_mean fix the policy term's (the preset does); the others follow the key.
  const std::string pg_agg = g.param("pg_agg");
  if (clip == "geo_mean") REQUIRE(pg_agg == "seq-mean(B=all)");
  else if (clip == "sapo") REQUIRE(verl_agg(pg_agg) == c.pg_aggregation);
  else c.pg_aggregation = verl_agg(pg_agg);
  c.entropy_coef = param_double(g, "entropy_coef");
  c.entropy_aggregation = verl_agg(g.param("entropy_agg"));
  const std::string kl = g.param("kl");
  if (kl == "none") {
    c.kl = KlEstimator::none;
    c.kl_coef = 0;
    c.kl_straight_through = false;
  } else {
    REQUIRE(verl_kl_loss_type(kl.c_str(), &c.kl, &c.kl_straight_through).ok());
    c.kl_coef = param_double(g, "kl_coef");
    c.kl_aggregation = verl_agg(g.param("kl_agg"));
  }
  c.temperature = param_double(g, "temperature");

  // Rollout correction.
  const std::string mode = g.param("rollout_correction");
  if (mode == "decoupled") c.rollout.mode = RolloutCorrectionMode::decoupled;
  else if (mode == "bypass") REQUIRE(c.rollout.mode == RolloutCorrectionMode::bypass);
  else REQUIRE(mode == "none");
  const std::string is = g.param("rollout_is");
  c.rollout.is_level = is == "token"      ? RolloutIsLevel::token
                       : is == "sequence" ? RolloutIsLevel::sequence
                                          : RolloutIsLevel::none;
  if (!is.empty() && is != "none") c.rollout.is_threshold = param_double(g, "rollout_is_threshold");
  const std::string rs = g.param("rollout_rs");
  c.rollout.num_rejection_options = 0;
  if (!rs.empty() && rs != "none") {
    const Status st = verl_rollout_rs(rs.c_str(), g.param("rollout_rs_threshold").c_str(), &c.rollout);
    INFO(st.message);
    REQUIRE(st.ok());
    // Decoupled rejection leaves every term (verl rewrites the response mask); bypass only the policy term.
    REQUIRE(g.param("rs_mask_scope") == (mode == "bypass" ? "pg" : "all"));
  }
  REQUIRE(c.validate().ok());
  s.caller_weights = false;

  // The metrics verl logs for this config.
  auto add = [&s](const std::string& key, std::function<double(const LossMetrics&)> get, double tol = 1e-10) {
    s.metrics.push_back(MetricCheck{key, std::move(get), tol});
  };
  add("metric_pg_loss", [](const LossMetrics& m) { return m.pg_loss; });
  add("metric_entropy_loss", [](const LossMetrics& m) { return m.entropy_loss; });
  add("metric_kl_loss", [](const LossMetrics& m) { return m.kl_loss; });
  add("metric_pg_clipfrac", [](const LossMetrics& m) { return m.pg_clipfrac; });
  add("metric_pg_clipfrac_lower", [](const LossMetrics& m) { return m.pg_clipfrac_lower; });
  add("metric_ppo_kl", [](const LossMetrics& m) { return m.ppo_kl; });
  if (c.rollout.mode != RolloutCorrectionMode::none) {
    // verl computes the sequence-level fractions and rs_seq_masked_fraction from a float32 cast.
    const double seq_f32 = c.rollout.is_level == RolloutIsLevel::sequence ? 1e-6 : 1e-10;
    const std::string p = "metric_rollout_";
    add(p + "is_mean", [](const LossMetrics& m) { return m.rollout.is_mean; });
    add(p + "is_max", [](const LossMetrics& m) { return m.rollout.is_max; });
    add(p + "is_min", [](const LossMetrics& m) { return m.rollout.is_min; });
    add(p + "is_std", [](const LossMetrics& m) { return m.rollout.is_std; });
    add(p + "is_eff_sample_size", [](const LossMetrics& m) { return m.rollout.is_eff_sample_size; });
    add(p + "is_ratio_fraction_high", [](const LossMetrics& m) { return m.rollout.is_ratio_fraction_high; }, seq_f32);
    add(p + "is_ratio_fraction_low", [](const LossMetrics& m) { return m.rollout.is_ratio_fraction_low; }, seq_f32);
    add(p + "is_seq_mean", [](const LossMetrics& m) { return m.rollout.is_seq_mean; });
    add(p + "is_seq_max", [](const LossMetrics& m) { return m.rollout.is_seq_max; });
    add(p + "is_seq_min", [](const LossMetrics& m) { return m.rollout.is_seq_min; });
    for (int k = 0; k < c.rollout.num_rejection_options; ++k) {
      const std::string o = p + "rs_" + to_string(c.rollout.rejection[k].statistic) + "_";
      add(o + "mean", [k](const LossMetrics& m) { return m.rollout.rs_option[k].mean; });
      add(o + "max", [k](const LossMetrics& m) { return m.rollout.rs_option[k].max; });
      add(o + "min", [k](const LossMetrics& m) { return m.rollout.rs_option[k].min; });
      add(o + "masked_fraction", [k](const LossMetrics& m) { return m.rollout.rs_option[k].masked_fraction; });
      add(o + "seq_masked_fraction", [k](const LossMetrics& m) { return m.rollout.rs_option[k].seq_masked_fraction; });
    }
    add(p + "rs_masked_fraction", [](const LossMetrics& m) { return m.rollout.rs_masked_fraction; });
    add(p + "rs_seq_masked_fraction", [](const LossMetrics& m) { return m.rollout.rs_seq_masked_fraction; }, 1e-6);
    add(p + "corr_kl", [](const LossMetrics& m) { return m.rollout.kl; });
    add(p + "corr_k3_kl", [](const LossMetrics& m) { return m.rollout.k3_kl; });
    add(p + "corr_chi2_token", [](const LossMetrics& m) { return m.rollout.chi2_token; });
    add(p + "corr_chi2_seq", [](const LossMetrics& m) { return m.rollout.chi2_seq; });
  }

  // The arrays: the IS weights the policy loss was multiplied by, the kept mask, kl_cov's selection.
  s.arrays.push_back(ArrayCheck{"is_weights", [](const TokenView& v) { return v.valid ? v.policy_factor : 0.0; }});
  s.arrays.push_back(ArrayCheck{"rs_keep", [](const TokenView& v) { return (v.terms & kTermPolicy) ? 1.0 : 0.0; }});
  s.arrays.push_back(
      ArrayCheck{"kl_cov_selected", [](const TokenView& v) { return (v.terms & kTermSelected) ? 1.0 : 0.0; }});
  // Only the arrays the case holds are compared.
  s.arrays.erase(std::remove_if(s.arrays.begin(), s.arrays.end(),
                                [&](const ArrayCheck& a) { return g.arrays.count(a.key) == 0; }),
                 s.arrays.end());
}

}  // namespace golden
