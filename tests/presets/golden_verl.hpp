// tests/presets/golden_verl.hpp: the params of the verl cases (tests/data/verl, computed by volcengine/verl's
// own functions; tests/data/GOLDEN_README.md) as a golden::Setup: verl's options and option strings
// (cgrpo::VerlOptions -> cgrpo::verl_recipe), checked against the loss mode's preset; metrics.
#pragma once

#include <algorithm>
#include <cmath>
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

// The preset of a case's policy loss (what a verl user starts from), and verl's loss_mode for it.
inline cgrpo::Recipe verl_preset_of(const std::string& clip, bool bypass, const char** loss_mode) {
  *loss_mode = clip == "ppo" || clip == "reinforce" ? "vanilla" : clip.c_str();
  if (clip == "ppo") return bypass ? cgrpo::verl_bypass_ppo_clip() : cgrpo::verl_vanilla();
  if (clip == "cispo") return cgrpo::verl_cispo();
  if (clip == "sapo") return cgrpo::verl_sapo();
  if (clip == "gpg") return cgrpo::verl_gpg();
  if (clip == "geo_mean") return cgrpo::verl_gmpo();
  if (clip == "kl_cov") return cgrpo::verl_kl_cov();
  if (clip == "reinforce") return cgrpo::verl_bypass_reinforce();
  FAIL("unknown clip " << clip);
  return cgrpo::Recipe{};
}

// The metrics verl logs (the golden README's metric_* keys) for a config with this rollout
// correction: those both verl versions log, then verl 1dda039's newer IS metrics (`engine_metrics`:
// the verl3 cases) or b178a3c's rejection-sampling metrics (the legacy cases).
inline void add_verl_metrics(Setup& s, const cgrpo::RolloutCorrectionConfig& rc, bool engine_metrics) {
  using cgrpo::LossMetrics;
  auto add = [&s](const std::string& key, std::function<double(const LossMetrics&)> get, double tol = 1e-10) {
    s.metrics.push_back(MetricCheck{key, std::move(get), tol});
  };
  add("metric_pg_loss", [](const LossMetrics& m) { return m.pg_loss; });
  add("metric_entropy_loss", [](const LossMetrics& m) { return m.entropy_loss; });
  add("metric_kl_loss", [](const LossMetrics& m) { return m.kl_loss; });
  add("metric_pg_clipfrac", [](const LossMetrics& m) { return m.pg_clipfrac; });
  add("metric_pg_clipfrac_lower", [](const LossMetrics& m) { return m.pg_clipfrac_lower; });
  add("metric_ppo_kl", [](const LossMetrics& m) { return m.ppo_kl; });
  if (rc.mode == cgrpo::RolloutCorrectionMode::none) return;
  // verl computes the sequence-level fractions (and rs_seq_masked_fraction) from a float32 cast
  // (golden README: (f32), compared at 1e-6).
  const double seq_f32 = rc.is_level == cgrpo::RolloutIsLevel::sequence ? 1e-6 : 1e-10;
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
  if (engine_metrics) {
    add(p + "is_seq_std", [](const LossMetrics& m) { return m.rollout.is_seq_std; });
    add(p + "is_seq_max_deviation", [](const LossMetrics& m) { return m.rollout.is_seq_max_deviation; });
    add(p + "is_seq_fraction_high", [](const LossMetrics& m) { return m.rollout.is_seq_fraction_high; }, 1e-6);
    add(p + "is_seq_fraction_low", [](const LossMetrics& m) { return m.rollout.is_seq_fraction_low; }, 1e-6);
    add(p + "is_oob_ratio", [](const LossMetrics& m) { return m.rollout.is_oob_ratio; });
  } else {
    for (int k = 0; k < rc.num_rejection_options; ++k) {
      const std::string o = p + "rs_" + cgrpo::to_string(rc.rejection[k].statistic) + "_";
      add(o + "mean", [k](const LossMetrics& m) { return m.rollout.rs_option[k].mean; });
      add(o + "max", [k](const LossMetrics& m) { return m.rollout.rs_option[k].max; });
      add(o + "min", [k](const LossMetrics& m) { return m.rollout.rs_option[k].min; });
      add(o + "masked_fraction", [k](const LossMetrics& m) { return m.rollout.rs_option[k].masked_fraction; });
      add(o + "seq_masked_fraction", [k](const LossMetrics& m) { return m.rollout.rs_option[k].seq_masked_fraction; });
    }
    add(p + "rs_masked_fraction", [](const LossMetrics& m) { return m.rollout.rs_masked_fraction; });
    add(p + "rs_seq_masked_fraction", [](const LossMetrics& m) { return m.rollout.rs_seq_masked_fraction; }, 1e-6);
  }
  add(p + "corr_kl", [](const LossMetrics& m) { return m.rollout.kl; });
  add(p + "corr_k3_kl", [](const LossMetrics& m) { return m.rollout.k3_kl; });
  add(p + "corr_chi2_token", [](const LossMetrics& m) { return m.rollout.chi2_token; });
  add(p + "corr_chi2_seq", [](const LossMetrics& m) { return m.rollout.chi2_seq; });
}

// A case's params as verl's own options (cgrpo::VerlOptions), turned into a recipe by
// cgrpo::verl_recipe, as a user switching from verl would; the loss mode's preset must agree on
// what the mode fixes.
inline void setup_verl(const GoldenCase& g, Setup& s) {
  using namespace cgrpo;
  const auto& logits = g.at("logits");
  const int64_t B = logits.shape[0];
  REQUIRE(g.param("source") == "verl");
  REQUIRE(g.param("refinement_rows") == "none");  // every row initial: s.row_kinds stays empty

  const std::string clip = g.param("clip"), mode = g.param("rollout_correction");
  REQUIRE((mode == "none" || mode == "decoupled" || mode == "bypass"));
  VerlOptions o;
  o.actor = VerlActor::legacy_dp_actor;  // these cases follow b178a3c's dp_actor (B+, sum-norm / L, IS metrics of u)
  const Recipe preset = verl_preset_of(clip, mode == "bypass", &o.loss_mode);
  if (!g.param("eps_low").empty()) o.clip_ratio_low = param_double(g, "eps_low");
  if (!g.param("eps_high").empty()) o.clip_ratio_high = param_double(g, "eps_high");
  if (!g.param("dual_clip").empty()) o.clip_ratio_c = param_double(g, "dual_clip");
  if (clip == "sapo") {
    o.tau_pos = param_double(g, "tau_pos");
    o.tau_neg = param_double(g, "tau_neg");
  }
  if (clip == "kl_cov") {
    o.kl_cov_ratio = param_double(g, "kl_cov_ratio");
    o.ppo_kl_coef = param_double(g, "ppo_kl_coef");
  }

  // verl has one loss_agg_mode (the entropy's and the KL's; the policy term's unless the mode
  // fixes it): the entropy key names it.
  std::string agg_mode, agg_args;
  split_agg(g.param("entropy_agg"), agg_mode, agg_args);
  o.loss_agg_mode = agg_mode.c_str();
  o.entropy_coeff = param_double(g, "entropy_coef");
  const std::string kl = g.param("kl");
  o.use_kl_loss = kl != "none";
  if (o.use_kl_loss) {
    o.kl_loss_type = kl.c_str();
    o.kl_loss_coef = param_double(g, "kl_coef");
  }
  o.temperature = param_double(g, "temperature");

  // Advantages: verl's grpo (eps 1e-6) or rloo, over the case's groups.
  const std::string adv = g.param("advantage");
  REQUIRE((adv == "grpo" || adv == "rloo"));
  o.adv_estimator = adv.c_str();

  // Rollout correction.
  const std::string is = g.param("rollout_is"), rs = g.param("rollout_rs"), rs_threshold = g.param("rollout_rs_threshold");
  if (!is.empty() && is != "none") {
    o.rollout_is = is.c_str();
    o.rollout_is_threshold = param_double(g, "rollout_is_threshold");
  }
  if (!rs.empty() && rs != "none") {
    o.rollout_rs = rs.c_str();
    o.rollout_rs_threshold = rs_threshold.c_str();
    // Decoupled rejection leaves every term (verl rewrites the response mask); bypass only the policy term.
    REQUIRE(g.param("rs_mask_scope") == (mode == "bypass" ? "pg" : "all"));
  }
  o.bypass_mode = mode == "bypass";
  o.loss_type = clip == "reinforce" ? "reinforce" : "ppo_clip";

  {
    const Status st = verl_recipe(o, &s.recipe);
    INFO(st.message);
    REQUIRE(st.ok());
  }
  LossConfig& c = s.config();
  if (adv == "grpo") REQUIRE(s.recipe.advantage.eps == param_double(g, "eps"));
  REQUIRE(s.recipe.advantage.estimator == (adv == "grpo" ? AdvantageEstimator::grpo : AdvantageEstimator::rloo));
  REQUIRE(to_string(c.off_policy.rollout.mode) == mode);

  // What the loss mode fixes: the preset and the parsed options agree.
  REQUIRE(c.policy.loss == preset.loss.policy.loss);
  REQUIRE(c.ratio.level == preset.loss.ratio.level);
  REQUIRE(c.ratio.dual_clip == preset.loss.ratio.dual_clip);
  REQUIRE(c.ratio.log_ratio_min == preset.loss.ratio.log_ratio_min);
  REQUIRE(c.ratio.log_ratio_max == preset.loss.ratio.log_ratio_max);
  if (c.term().fixed_aggregation) REQUIRE(c.aggregation.policy == preset.loss.aggregation.policy);
  if (mode == "bypass") REQUIRE(preset.loss.bypass());
  REQUIRE(c.metrics.mean_eps == preset.loss.metrics.mean_eps);

  const auto& ids = g.at("group_ids").values;
  s.group_ids.resize(B);
  s.num_groups = 0;
  for (int64_t i = 0; i < B; ++i) {
    s.group_ids[i] = static_cast<int32_t>(ids[i]);
    s.num_groups = std::max<int64_t>(s.num_groups, s.group_ids[i] + 1);
  }

  // The log-ratio clamp the loss mode sets must be the one the case names.
  const std::string clamp = g.param("log_ratio_clamp");
  if (clamp == "-20:20") {
    REQUIRE(c.ratio.log_ratio_min == -20.0);
    REQUIRE(c.ratio.log_ratio_max == 20.0);
  } else if (clamp == "none") {
    REQUIRE(std::isinf(c.ratio.log_ratio_min));
    REQUIRE(std::isinf(c.ratio.log_ratio_max));
  } else {
    REQUIRE(clamp.empty());  // gpg, reinforce: no ratio
  }

  // Aggregations: sapo and geo_mean fix the policy term's (seq-mean-token-mean, whatever
  // loss_agg_mode says); the others follow loss_agg_mode, which must be the case's pg_agg.
  const std::string pg_agg = g.param("pg_agg");
  REQUIRE(verl_agg(g.param("entropy_agg")) == c.aggregation.entropy);
  if (clip == "geo_mean") {
    REQUIRE(pg_agg == "seq-mean(B=all)");
    REQUIRE(c.aggregation.policy == Aggregation::seq_mean_token_mean);
  } else {
    REQUIRE(verl_agg(pg_agg) == c.aggregation.policy);
  }
  if (clip == "sapo") REQUIRE(c.aggregation.policy == Aggregation::seq_mean_token_mean);
  const AggregationConvention legacy = verl_aggregation(VerlActor::legacy_dp_actor);
  REQUIRE(c.aggregation.convention.token_mean_eps == legacy.token_mean_eps);
  REQUIRE(c.aggregation.convention.row_count_eps == legacy.row_count_eps);
  REQUIRE(c.aggregation.convention.count_empty_rows == legacy.count_empty_rows);
  REQUIRE(!c.aggregation.convention.sum_norm_per_row);
  REQUIRE(!c.aggregation.convention.token_count_from_response_mask);
  REQUIRE(!c.off_policy.rollout.metrics_from_applied_weights);
  if (o.use_kl_loss) {
    REQUIRE(verl_agg(g.param("kl_agg")) == c.aggregation.kl);
    REQUIRE(c.kl.coef == param_double(g, "kl_coef"));
  } else {
    REQUIRE(!c.kl_on());
  }
  REQUIRE(c.entropy.coef == param_double(g, "entropy_coef"));
  REQUIRE(c.temperature == param_double(g, "temperature"));

  // The rollout correction's parsed fields.
  const RolloutCorrectionConfig& rc = c.off_policy.rollout;
  REQUIRE(rc.is_level == (is == "token"      ? RolloutIsLevel::token
                          : is == "sequence" ? RolloutIsLevel::sequence
                                             : RolloutIsLevel::none));
  if (rc.is_level != RolloutIsLevel::none) REQUIRE(rc.is_threshold == param_double(g, "rollout_is_threshold"));
  if (rs.empty() || rs == "none") REQUIRE(rc.num_rejection_options == 0);
  else REQUIRE(rc.num_rejection_options > 0);
  REQUIRE(c.validate().ok());
  s.caller_weights = false;

  // The metrics verl logs for this config.
  add_verl_metrics(s, rc, /*engine_metrics=*/false);

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
