// tests/presets/golden_verl3.hpp: the params of the third verl set (tests/data/verl3, computed by
// verl-project/verl's own functions at 1dda039, put together as its engine actor does;
// tests/data/GOLDEN_README.md, "verl cases, third set") as a golden::Setup: verl's options
// (cgrpo::VerlOptions with the default actor, VerlActor::engine -> cgrpo::verl_recipe), checked against
// what the keys spell out; the metrics verl logs.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "golden_runner.hpp"
#include "golden_verl.hpp"

namespace golden {

// "a,b,c" -> numbers.
inline std::vector<double> split_numbers(const std::string& text) {
  std::vector<double> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::stod(item));
  return out;
}

// An aggregation key of this set: the mode, and a check that the engine convention's denominators
// are the ones the key names (B=all, eps=1e-8, L=K).
inline cgrpo::Aggregation verl3_agg(const std::string& spec) {
  std::string mode, args;
  split_agg(spec, mode, args);
  INFO("aggregation " << spec);
  cgrpo::Aggregation a = cgrpo::Aggregation::token_mean;
  REQUIRE(cgrpo::verl_loss_agg_mode(mode.c_str(), &a).ok());
  switch (a) {
    case cgrpo::Aggregation::token_mean: REQUIRE(args == "eps=0"); break;
    case cgrpo::Aggregation::token_sum: REQUIRE(args.empty()); break;
    case cgrpo::Aggregation::seq_mean_token_sum: REQUIRE(args == "B=all"); break;
    case cgrpo::Aggregation::seq_mean_token_mean: REQUIRE(args == "B=all,eps=1e-8"); break;
    case cgrpo::Aggregation::seq_mean_token_sum_norm: REQUIRE(args.rfind("B=all,L=", 0) == 0); break;
  }
  return a;
}

inline void setup_verl3(const GoldenCase& g, Setup& s) {
  using namespace cgrpo;
  const auto& logits = g.at("logits");
  const int64_t B = logits.shape[0], L = logits.shape[1];
  REQUIRE(g.param("source") == "verl");
  REQUIRE(g.param("batch_info") == "engine");
  REQUIRE(g.param("refinement_rows") == "none");

  VerlOptions o;  // o.actor: VerlActor::engine, the default
  // VerlOptions holds const char*: every string it points into lives here.
  const std::string loss_mode = g.param("loss_mode"), clip = g.param("clip"), mode = g.param("rollout_correction");
  const std::string loss_type = g.param("loss_type"), loss_agg_mode = g.param("loss_agg_mode");
  REQUIRE((mode == "none" || mode == "decoupled" || mode == "bypass"));
  // verl 1dda039 spells bypass mode as its own loss_mode; the policy loss is then loss_type's.
  o.bypass_mode = loss_mode == "bypass_mode";
  REQUIRE(o.bypass_mode == (mode == "bypass"));
  o.loss_mode = o.bypass_mode ? "vanilla" : loss_mode.c_str();
  if (o.bypass_mode) o.loss_type = loss_type.c_str();
  REQUIRE(clip == (o.bypass_mode ? loss_type : clip == "ppo" ? std::string("ppo") : loss_mode));

  if (clip == "ppo") {
    o.clip_ratio_low = param_double(g, "eps_low");
    o.clip_ratio_high = param_double(g, "eps_high");
    o.clip_ratio_c = param_double(g, "dual_clip");
  } else if (clip == "dppo_tv" || clip == "dppo_kl") {
    o.clip_ratio_low = param_double(g, "clip_ratio_low");
    o.clip_ratio_high = param_double(g, "clip_ratio_high");
    o.clip_ratio_c = param_double(g, "clip_ratio_c");
  } else if (clip == "dro") {
    o.dro_beta = param_double(g, "dro_beta");
  } else {
    REQUIRE(clip == "reinforce");
  }

  o.loss_agg_mode = loss_agg_mode.c_str();
  o.entropy_coeff = param_double(g, "entropy_coef");
  const std::string kl = g.param("kl");
  o.use_kl_loss = kl != "none";
  if (o.use_kl_loss) {
    o.kl_loss_type = kl.c_str();
    o.kl_loss_coef = param_double(g, "kl_coef");
  }
  o.temperature = param_double(g, "temperature");

  const std::string adv = g.param("advantage");
  REQUIRE((adv == "grpo" || adv == "gdpo"));
  o.adv_estimator = adv.c_str();

  const std::string is = g.param("rollout_is"), is_threshold = g.param("rollout_is_threshold");
  if (!is.empty() && is != "none") {
    o.rollout_is = is.c_str();
    o.rollout_is_threshold_text = is_threshold.c_str();
    REQUIRE(g.param("rollout_rs") == "none");
    REQUIRE(g.param("rs_mask_scope") == (mode == "bypass" ? "pg" : "all"));
  }

  {
    const Status st = verl_recipe(o, &s.recipe);
    INFO(st.message);
    REQUIRE(st.ok());
  }
  const LossConfig& c = s.config();
  REQUIRE(to_string(c.off_policy.rollout.mode) == mode);
  REQUIRE(c.aggregation.convention.count_empty_rows);  // batch_info=engine: B counts every row
  REQUIRE(c.aggregation.convention.sum_norm_per_row);
  REQUIRE(c.aggregation.convention.token_count_from_response_mask);
  REQUIRE(c.off_policy.rollout.metrics_from_applied_weights);

  // What the keys spell out.
  if (adv == "grpo") {
    REQUIRE(s.recipe.advantage.estimator == AdvantageEstimator::grpo);
    REQUIRE(s.recipe.advantage.eps == param_double(g, "eps"));
  } else {
    REQUIRE(s.recipe.advantage.estimator == AdvantageEstimator::gdpo);
    REQUIRE(s.recipe.advantage.eps == param_double(g, "eps"));
    REQUIRE(g.param("norm_adv_by_std_in_grpo") == "true");
    REQUIRE(s.recipe.advantage.whiten_count_eps == 1e-8);
    const std::string comps = g.param("gdpo_components");
    if (comps != "none") {
      s.num_reward_components = std::stoll(comps);
      const auto& rc = g.at("reward_components");
      REQUIRE(rc.shape.size() == 2);
      REQUIRE(rc.shape[0] == B);
      REQUIRE(rc.shape[1] == s.num_reward_components);
      s.reward_components = rc.values;
      const std::string w = g.param("gdpo_reward_weights");
      s.reward_weights = w == "none" ? std::vector<double>(s.num_reward_components, 1.0) : split_numbers(w);
      REQUIRE(static_cast<int64_t>(s.reward_weights.size()) == s.num_reward_components);
      const auto& stored = g.at("gdpo_reward_weights").values;
      for (size_t k = 0; k < stored.size(); ++k) REQUIRE(stored[k] == s.reward_weights[k]);
    }
  }
  const std::string clamp = g.param("log_ratio_clamp");
  if (clamp == "-20:20") {
    REQUIRE(c.ratio.log_ratio_min == -20.0);
    REQUIRE(c.ratio.log_ratio_max == 20.0);
  } else if (clamp == "none") {
    REQUIRE(std::isinf(c.ratio.log_ratio_min));
    REQUIRE(std::isinf(c.ratio.log_ratio_max));
  } else {
    REQUIRE(clamp.empty());  // reinforce: no ratio
  }
  if (clip == "dppo_tv") {
    REQUIRE(c.policy.loss == PolicyLoss::dppo_tv);
    REQUIRE(c.policy.dppo_tv.is_cap == param_double(g, "clip_ratio_c"));
    REQUIRE(!c.ratio.dual_clip);
  }
  if (clip == "dppo_kl") {
    REQUIRE(c.policy.loss == PolicyLoss::dppo_kl);
    REQUIRE(c.policy.dppo_kl.is_cap == param_double(g, "clip_ratio_c"));
  }
  if (clip == "dro") REQUIRE(c.policy.dro.beta == param_double(g, "dro_beta"));
  if (clip == "ppo") {
    REQUIRE(c.policy.loss == PolicyLoss::ppo_clip);
    REQUIRE(c.ratio.dual_clip_c == param_double(g, "dual_clip"));
  }
  if (clip == "reinforce") REQUIRE(c.policy.loss == PolicyLoss::reinforce);
  REQUIRE(verl3_agg(g.param("pg_agg")) == c.aggregation.policy);
  REQUIRE(verl3_agg(g.param("entropy_agg")) == c.aggregation.entropy);
  if (o.use_kl_loss) {
    REQUIRE(verl3_agg(g.param("kl_agg")) == c.aggregation.kl);
    KlEstimator e = KlEstimator::none;
    bool st = false;
    REQUIRE(verl_kl_loss_type(kl.c_str(), &e, &st).ok());
    REQUIRE(c.kl.estimator == e);
    REQUIRE(c.kl.straight_through == st);
  }
  // seq-mean-token-sum-norm: K = loss_scale_factor, else the horizon (the padded width, which these
  // cases fill with one full-length row: the layout's max length).
  const std::string pg_agg = g.param("pg_agg");
  if (c.aggregation.policy == Aggregation::seq_mean_token_sum_norm) {
    const double K = agg_number(pg_agg, "L");
    if (!g.param("loss_scale_factor").empty()) {
      REQUIRE(K == param_double(g, "loss_scale_factor"));
      s.scale.length = K;
    } else {
      REQUIRE(K == static_cast<double>(L));
    }
  }

  // The rollout correction's parsed fields.
  const RolloutCorrectionConfig& rc = c.off_policy.rollout;
  if (!is.empty() && is != "none") {
    REQUIRE(to_string(rc.is_level) == is);
    const std::string is_mode = g.param("rollout_is_mode");
    REQUIRE(to_string(rc.is_mode) == is_mode);
    const auto us = is_threshold.find('_');
    if (is_mode == "icepop") {
      REQUIRE(us != std::string::npos);
      REQUIRE(rc.is_threshold_lower == std::stod(is_threshold.substr(0, us)));
      REQUIRE(rc.is_threshold == std::stod(is_threshold.substr(us + 1)));
    } else {
      REQUIRE(rc.is_threshold == std::stod(is_threshold));
    }
  }
  REQUIRE(c.validate().ok());

  const auto& ids = g.at("group_ids").values;
  s.group_ids.resize(B);
  s.num_groups = 0;
  for (int64_t i = 0; i < B; ++i) {
    s.group_ids[i] = static_cast<int32_t>(ids[i]);
    s.num_groups = std::max<int64_t>(s.num_groups, s.group_ids[i] + 1);
  }
  s.caller_weights = false;

  // The metrics verl logs.
  add_verl_metrics(s, rc, /*engine_metrics=*/true);

  // The applied IS weights (IcePop's zeros included).
  if (g.arrays.count("is_weights"))
    s.arrays.push_back(ArrayCheck{"is_weights", [](const TokenView& v) { return v.valid ? v.policy_factor : 0.0; }});

  // DPPO's keep mask: the term's own keep() at the case's log p, old log p and advantage.
  if (g.arrays.count("dppo_valid")) {
    const auto& want = g.at("dppo_valid").values;
    const auto& logp = g.at("log_prob").values;
    const auto& old = g.at("old_logp").values;
    const auto& mask = g.at("mask").values;
    const auto& A = g.at("advantages").values;
    const RatioParams<double> rp = token_params<double>(c).ratio;
    for (int64_t t = 0; t < B * L; ++t) {
      PolicyInputs<double> in{};
      in.logp = logp[t];
      in.old_logp = old[t];
      in.advantage = A[t / L];
      const bool keep = clip == "dppo_tv" ? DppoTvTerm::keep(in, rp) : DppoKlTerm::keep(in, rp);
      INFO("dppo_valid at token " << t);
      CHECK(want[t] == (mask[t] != 0 && keep ? 1.0 : 0.0));
    }
    s.checked_by_setup.push_back("dppo_valid");
  }
}

}  // namespace golden
