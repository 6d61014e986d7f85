// tests/loss/test_variants.cpp: the variant tables and their traits. Every name, enum range,
// validation rule and pass of the plan is derived from one table per kind of variant: these
// checks hold each table to that (names unique and found again by the parsers, one past the end
// refused, each trait's consequence in validate() and in plan_passes(), the bound of every term).
#include <catch2/catch.hpp>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/loss/token_loss_bound.hpp>

#include <cmath>
#include <set>
#include <string>

#include "expect_error.hpp"

namespace {

using cgrpo::LossConfig;
using cgrpo::PolicyLoss;
using cgrpo::StatusCode;

// A config in which `loss` validates on its own: its traits' requirements met, and its own
// parameters those of the first preset of the registry that uses it (a term may have no valid
// default, as verl's dro_beta).
LossConfig config_for(PolicyLoss loss) {
  LossConfig c = cgrpo::verl_vanilla().loss;
  for (int i = 0; i < cgrpo::preset_count(); ++i) {
    const cgrpo::Recipe r = cgrpo::preset_at(i)->make();
    if (r.loss.policy.loss == loss) {
      c.policy = r.loss.policy;
      break;
    }
  }
  c.policy.loss = loss;
  const cgrpo::PolicyTraits t = cgrpo::traits_of(loss);
  c.ratio.dual_clip = t.dual_clip;
  if (t.fixed_aggregation) c.aggregation.policy = cgrpo::Aggregation::seq_mean_token_mean;
  if (t.bypass_only) c.off_policy.rollout.mode = cgrpo::RolloutCorrectionMode::bypass;
  return c;
}


}  // namespace

TEST_CASE("variants: every table's names are unique, known and found again by name", "[variants]") {
  std::set<std::string> names;
  for (int i = 0; i < cgrpo::kNumPolicyLosses; ++i) {
    const auto p = static_cast<PolicyLoss>(i);
    INFO("policy loss " << i);
    const std::string n = cgrpo::to_string(p);
    CHECK(n != "unknown");
    CHECK(names.insert(n).second);
    PolicyLoss found = PolicyLoss::ratio;
    REQUIRE(cgrpo::find_policy_loss(n.c_str(), false, &found));
    CHECK(found == p);
    if (const char* v = cgrpo::traits_of(p).verl_name) {
      REQUIRE(cgrpo::find_policy_loss(v, true, &found));
      CHECK(found == p);
    }
  }
  CHECK(std::string(cgrpo::to_string(static_cast<PolicyLoss>(cgrpo::kNumPolicyLosses))) == "unknown");

  names.clear();
  for (int i = 0; i < cgrpo::kNumAggregations; ++i) {
    const auto a = static_cast<cgrpo::Aggregation>(i);
    const std::string n = cgrpo::to_string(a);
    CHECK(names.insert(n).second);
    cgrpo::Aggregation found = cgrpo::Aggregation::token_mean, parsed = cgrpo::Aggregation::token_mean;
    REQUIRE(cgrpo::find_aggregation(n.c_str(), &found));
    CHECK(found == a);
    REQUIRE(cgrpo::verl_loss_agg_mode(n.c_str(), &parsed).ok());  // verl's loss_agg_mode spells them so
    CHECK(parsed == a);
  }
  names.clear();
  for (int i = 1; i < cgrpo::kNumKlEstimators; ++i) {
    const auto k = static_cast<cgrpo::KlEstimator>(i);
    CHECK(names.insert(cgrpo::to_string(k)).second);
    const cgrpo::KlTraits t = cgrpo::traits_of(k);
    for (const char* name : {t.verl_name, t.verl_alias}) {
      if (!name) continue;
      cgrpo::KlEstimator e = cgrpo::KlEstimator::none;
      bool st = true;
      REQUIRE(cgrpo::verl_kl_loss_type(name, &e, &st).ok());
      CHECK(e == k);
      CHECK(!st);
      REQUIRE(cgrpo::verl_kl_loss_type((std::string(name) + "+").c_str(), &e, &st).ok());
      CHECK(e == k);
      CHECK(st == t.straight_through);  // "mse+" / "k2+" are plain k2
    }
  }
  for (int i = 0; i < cgrpo::kNumRejectionStatistics; ++i) {
    const auto s = static_cast<cgrpo::RejectionStatistic>(i);
    cgrpo::RolloutCorrectionConfig r;
    const std::string name = cgrpo::to_string(s);
    INFO(name);
    REQUIRE(cgrpo::verl_rollout_rs(name.c_str(), cgrpo::rejection_is_k1(s) ? "0.5_2.0" : "0.5", &r).ok());
    CHECK(r.rejection[0].statistic == s);
  }
  for (int i = 1; i < cgrpo::kNumSamplerModes; ++i) {
    const auto m = static_cast<cgrpo::SamplerCorrectionMode>(i);
    cgrpo::SamplerCorrectionMode parsed = cgrpo::SamplerCorrectionMode::none;
    REQUIRE(cgrpo::trl_vllm_importance_sampling_mode(cgrpo::to_string(m), &parsed).ok());
    CHECK(parsed == m);
  }
}

TEST_CASE("variants: one past the end of every table is refused by name", "[variants][errors]") {
  auto refused = [](void (*mutate)(LossConfig&), const char* needle) {
    LossConfig c;
    mutate(c);
    support::check_error(c.validate(), StatusCode::invalid_argument, {needle, "unknown"});
  };
  refused([](LossConfig& c) { c.policy.loss = static_cast<PolicyLoss>(cgrpo::kNumPolicyLosses); }, "config.policy.loss");
  refused([](LossConfig& c) { c.policy.loss = static_cast<PolicyLoss>(-1); }, "config.policy.loss");
  refused([](LossConfig& c) { c.ratio.level = static_cast<cgrpo::RatioLevel>(cgrpo::kNumRatioLevels); }, "config.ratio.level");
  refused([](LossConfig& c) { c.kl.estimator = static_cast<cgrpo::KlEstimator>(cgrpo::kNumKlEstimators); }, "config.kl.estimator");
  refused([](LossConfig& c) { c.aggregation.policy = static_cast<cgrpo::Aggregation>(cgrpo::kNumAggregations); },
          "config.aggregation.policy");
  refused([](LossConfig& c) { c.aggregation.entropy = static_cast<cgrpo::Aggregation>(cgrpo::kNumAggregations); },
          "config.aggregation.entropy");
  refused([](LossConfig& c) { c.aggregation.kl = static_cast<cgrpo::Aggregation>(cgrpo::kNumAggregations); },
          "config.aggregation.kl");
  refused([](LossConfig& c) { c.off_policy.rollout.mode = static_cast<cgrpo::RolloutCorrectionMode>(cgrpo::kNumRolloutModes); },
          "config.off_policy.rollout.mode");
  refused([](LossConfig& c) { c.off_policy.sampler.mode = static_cast<cgrpo::SamplerCorrectionMode>(cgrpo::kNumSamplerModes); },
          "config.off_policy.sampler.mode");
  refused(
      [](LossConfig& c) {
        c = cgrpo::verl_decoupled(cgrpo::verl_grpo()).loss;
        c.off_policy.rollout.num_rejection_options = 1;
        c.off_policy.rollout.rejection[0].statistic = static_cast<cgrpo::RejectionStatistic>(cgrpo::kNumRejectionStatistics);
      },
      "config.off_policy.rollout.rejection[0].statistic");
  // The last entry of each table is accepted (the range is the table, not a hard-coded count).
  for (int i = 0; i < cgrpo::kNumPolicyLosses; ++i) {
    INFO(cgrpo::to_string(static_cast<PolicyLoss>(i)));
    const cgrpo::Status s = config_for(static_cast<PolicyLoss>(i)).validate();
    INFO(s.message);
    CHECK(s.ok());
  }
}

TEST_CASE("variants: each term's traits decide what validation accepts", "[variants][errors]") {
  for (int i = 0; i < cgrpo::kNumPolicyLosses; ++i) {
    const auto p = static_cast<PolicyLoss>(i);
    const cgrpo::PolicyTraits t = cgrpo::traits_of(p);
    INFO("term " << t.name);
    // Clip bounds: read (and so checked) only by the terms that clip.
    LossConfig c = config_for(p);
    c.ratio.clip_eps_low = 1.5;
    CHECK(c.validate().ok() == (!t.clips || t.clip_low_unbounded));
    c = config_for(p);
    c.ratio.clip_eps_high = -0.1;
    CHECK(c.validate().ok() == !t.clips);
    // The dual clip and TRL's delta: only for the terms that take them.
    c = config_for(p);
    c.ratio.dual_clip = true;
    if (!t.dual_clip) support::check_error(c.validate(), StatusCode::invalid_argument, {"config.ratio.dual_clip", t.name});
    c = config_for(p);
    c.ratio.dual_clip = false;
    c.ratio.two_sided_delta = 1.5;
    if (!t.two_sided_delta)
      support::check_error(c.validate(), StatusCode::invalid_argument, {"config.ratio.two_sided_delta", t.name});
    else
      CHECK(c.validate().ok());
    // A sequence-level ratio: only for terms that have a ratio and are not token-level only.
    for (auto level : {cgrpo::RatioLevel::sequence, cgrpo::RatioLevel::sequence_detached}) {
      c = config_for(p);
      c.ratio.level = level;
      c.aggregation.policy = cgrpo::Aggregation::seq_mean_token_mean;
      if (t.bypass_only) c.off_policy.rollout.mode = cgrpo::RolloutCorrectionMode::none;
      const bool ok = t.ratio != cgrpo::RatioUse::none && !t.token_level_only && !t.bypass_only;
      CHECK(c.validate().ok() == ok);
    }
    // A fixed policy aggregation is refused by name, never overridden in silence.
    c = config_for(p);
    c.aggregation.policy = cgrpo::Aggregation::token_mean;
    if (t.fixed_aggregation)
      support::check_error(c.validate(), StatusCode::invalid_argument,
                           {"config.aggregation.policy = token-mean", t.name, "seq_mean_token_mean"});
    else
      CHECK(c.validate().ok());
    // verl's bypass mode: only its two loss types.
    c = config_for(p);
    c.off_policy.rollout.mode = cgrpo::RolloutCorrectionMode::bypass;
    if (t.bypass) CHECK(c.validate().ok());
    else support::check_error(c.validate(), StatusCode::invalid_argument, {"bypass", t.name});
  }
  // verl's GSPO form fixes the aggregation too (a ratio level's trait).
  LossConfig gspo = cgrpo::verl_gspo().loss;
  REQUIRE(gspo.validate().ok());
  gspo.aggregation.policy = cgrpo::Aggregation::token_mean;
  support::check_error(gspo.validate(), StatusCode::invalid_argument, {"sequence_detached", "seq_mean_token_mean"});
  // reinforce outside bypass mode: the message says where verl runs it and what to use instead.
  LossConfig reinforce = cgrpo::verl_bypass_reinforce().loss;
  reinforce.off_policy.rollout = cgrpo::RolloutCorrectionConfig{};
  support::check_error(reinforce.validate(), StatusCode::invalid_argument, {"reinforce", "bypass", "gpg"});
}

TEST_CASE("variants: the pass plan follows the traits", "[variants][plan]") {
  for (int i = 0; i < cgrpo::kNumPolicyLosses; ++i) {
    const auto p = static_cast<PolicyLoss>(i);
    const cgrpo::PolicyTraits t = cgrpo::traits_of(p);
    INFO("term " << t.name);
    const LossConfig c = config_for(p);
    for (bool caller_selection : {false, true}) {
      const cgrpo::PassPlan plan = cgrpo::plan_passes(c, cgrpo::PassInputs{false, caller_selection, true});
      const bool selects = t.selection != cgrpo::BatchSelection::none;
      CHECK(plan.cov_select == (selects && !caller_selection));
      CHECK(plan.selection_bits == (selects && caller_selection));
      CHECK(plan.row_context == (t.row_log_ratio || t.row_weight));
      CHECK(plan.sampler == t.row_weight);
      CHECK(plan.rollout == t.bypass_only);
      // Every log p first: a row term, a row weight, a covariance selection, bypass's d.
      CHECK(plan.all_logp_first == (t.row_log_ratio || t.row_weight || plan.cov_select || t.bypass_only));
      CHECK(plan.any_prepass == (t.row_log_ratio || t.row_weight || selects || t.bypass_only));
      CHECK(plan.needs_layout == (t.row_log_ratio || t.row_weight || t.bypass_only));
      CHECK(plan.requires_computed_weights == t.computed_weights_only);
      // A fixed rule with exact counts over every row (GMPO's torch.mean) overrides the convention.
      CHECK(plan.weights[0].convention.count_empty_rows == (t.exact_row_counts || c.aggregation.convention.count_empty_rows));
    }
    // Computed weights alone split the GPU's kernel, never the fused LM head's pass.
    const cgrpo::PassPlan computed = cgrpo::plan_passes(c, cgrpo::PassInputs{true, true, true});
    CHECK(computed.any_prepass);
  }
  // The corrections: decoupled needs no log p of other tokens, bypass and TRL's do.
  const cgrpo::PassPlan decoupled = cgrpo::plan_passes(cgrpo::verl_decoupled(cgrpo::verl_grpo()).loss, cgrpo::PassInputs{});
  CHECK((decoupled.rollout && !decoupled.rollout_bypass && !decoupled.all_logp_first && decoupled.needs_layout));
  LossConfig trl = cgrpo::trl_grpo().loss;
  trl.off_policy.sampler = cgrpo::trl_vllm_importance_sampling();
  CHECK(cgrpo::plan_passes(trl, cgrpo::PassInputs{}).all_logp_first);
  trl = cgrpo::trl_grpo().loss;
  trl.entropy_mask.top_quantile = 0.5;
  const cgrpo::PassPlan masked = cgrpo::plan_passes(trl, cgrpo::PassInputs{});
  CHECK((masked.entropy_select && masked.all_logp_first && masked.requires_computed_weights));
}

TEST_CASE("variants: every per-token term has a finite bound for the fused LM head, row terms none", "[variants][bound]") {
  for (int i = 0; i < cgrpo::kNumPolicyLosses; ++i) {
    const auto p = static_cast<PolicyLoss>(i);
    const cgrpo::PolicyTraits t = cgrpo::traits_of(p);
    INFO("term " << t.name);
    const LossConfig c = config_for(p);
    const cgrpo::TokenLossParams<double> params = cgrpo::token_params<double>(c);
    cgrpo::TokenInputs<double> in{};
    in.valid = true;
    in.in_pg = true;
    in.old_logp = -1.3;
    in.advantage = -0.7;
    in.w_pg = 0.1;
    in.pg_factor = 1.0;
    const cgrpo::TokenLossBound b = cgrpo::token_loss_bound(in, -30.0, 5.0, params);
    const bool row = t.row_log_ratio || t.row_weight;
    CHECK(std::isfinite(b.loss) == !row);
    CHECK(std::isfinite(b.dlogp) == !row);
    if (!row) {
      // The bound holds: |J_t| and |a_t| of the token over log p in [-30, 0].
      for (double logp : {-30.0, -7.0, -1.3, -0.2, 0.0}) {
        in.logp = logp;
        const cgrpo::TokenResult<double> r = cgrpo::token_loss(in, params);
        CHECK(std::fabs(r.loss) <= b.loss);
        CHECK(std::fabs(r.dJ_dlogp) <= b.dlogp);
      }
    }
  }
}

TEST_CASE("variants: a temperature is checked in one place, a workspace's threads in another", "[variants][errors]") {
  LossConfig c;
  c.temperature = 0;
  support::check_error(c.validate(), StatusCode::invalid_argument, {"config.temperature must be in (0, 1e300]"});
  const float z[4] = {0.1f, 0.2f, 0.3f, 0.4f};
  const int32_t y[1] = {2};
  float logp[1] = {-1};
  support::check_error(cgrpo::cpu::token_logprobs(z, 1, 4, 0, y, 0.0, logp, static_cast<float*>(nullptr)),
                       StatusCode::invalid_argument, {"temperature must be in (0, 1e300]"});
  CHECK(logp[0] == -1);
  CHECK(cgrpo::inverse_temperature(0.5) == 2.0);

  cgrpo::cpu::Workspace ws(0);
  cgrpo::PolicyLossBatch<float> batch;
  batch.vocab_size = 4;
  cgrpo::LossMetrics m;
  m.loss = -5;
  cgrpo::PolicyLossOutputs<float> out;
  out.metrics = &m;
  support::check_error(cgrpo::cpu::fused_policy_loss(LossConfig{}, batch, out, ws), StatusCode::invalid_argument,
                       {"workspace.num_threads must be >= 1"});
  CHECK(m.loss == -5);
  ws.num_threads = 2;
  CHECK(cgrpo::cpu::fused_policy_loss(LossConfig{}, batch, out, ws).ok());
}
