// tests/presets/test_registry.cpp: the preset registry by name and the parsers of verl's and TRL's
// option strings: every name found again, each preset equal to its typed function (the same loss,
// bit for bit, on a random batch), the option structs at the peers' defaults equal to the presets.
#include <catch2/catch.hpp>

#include <cgrpo/cgrpo.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "batch.hpp"
#include "expect_error.hpp"
#include "test_seed.hpp"

namespace {

using cgrpo::LossConfig;
using cgrpo::Recipe;
using cgrpo::StatusCode;

// The loss, its gradient and the advantages of `r` on one random batch: what "the same recipe" means.
struct Outcome {
  cgrpo::Status status;
  double loss = 0;
  std::vector<double> grad, advantages;
};

Outcome run(const Recipe& r, const support::Batch& b) {
  Outcome o;
  support::LibraryBatch<double> lb(b, r.loss);
  o.grad.assign(b.logits.size(), 0.0);
  cgrpo::LossMetrics m;
  cgrpo::PolicyLossOutputs<double> out;
  out.grad_logits = o.grad.data();
  out.metrics = &m;
  o.status = cgrpo::cpu::fused_policy_loss(r.loss, lb.view, out);
  o.loss = m.loss;
  std::vector<double> rewards;
  std::vector<int32_t> groups;
  std::vector<int64_t> counts;
  for (int64_t i = 0; i < b.B; ++i) {
    rewards.push_back(static_cast<double>(i % 3) - 0.5 * static_cast<double>(i % 2));
    groups.push_back(static_cast<int32_t>(i / 3));
    counts.push_back(b.end(i) - b.begin(i));
  }
  o.advantages.assign(static_cast<size_t>(b.B), 0.0);
  const cgrpo::GroupAssignment g{b.B, groups.data(), (b.B + 2) / 3};
  const cgrpo::Status s = cgrpo::group_advantages(r.advantage, g, rewards.data(), counts.data(), o.advantages.data());
  if (o.status.ok()) o.status = s;
  return o;
}

void check_same(const Recipe& a, const Recipe& b, const support::Batch& batch) {
  const Outcome x = run(a, batch), y = run(b, batch);
  INFO(x.status.message << " / " << y.status.message);
  REQUIRE(x.status.ok());
  REQUIRE(y.status.ok());
  CHECK(std::memcmp(&x.loss, &y.loss, sizeof(double)) == 0);
  CHECK(x.grad == y.grad);
  CHECK(x.advantages == y.advantages);
}

}  // namespace

TEST_CASE("registry: every preset has a unique peer/recipe name and is found again", "[presets][registry]") {
  std::set<std::string> names;
  REQUIRE(cgrpo::preset_count() >= 24);
  for (int i = 0; i < cgrpo::preset_count(); ++i) {
    const cgrpo::PresetEntry* e = cgrpo::preset_at(i);
    REQUIRE(e);
    const std::string name = e->name;
    INFO(name);
    CHECK(names.insert(name).second);
    const std::string peer = name.substr(0, name.find('/'));
    CHECK((peer == "paper" || peer == "verl" || peer == "trl"));
    CHECK(std::strlen(e->summary) > 10);
    Recipe r;
    REQUIRE(cgrpo::preset(name.c_str(), &r).ok());
    CHECK(r.loss.validate().ok());
  }
  CHECK(cgrpo::preset_at(cgrpo::preset_count()) == nullptr);
  CHECK(cgrpo::preset_at(-1) == nullptr);
}

TEST_CASE("registry: an unknown name is an error that lists the known ones; out is untouched", "[presets][registry][errors]") {
  Recipe r;
  r.loss.temperature = 0.25;
  support::check_error(cgrpo::preset("verl/grpoo", &r), StatusCode::invalid_argument,
                       {"verl/grpoo", "unknown", "paper/critique_grpo", "verl/grpo"});
  CHECK(r.loss.temperature == 0.25);
  support::check_error(cgrpo::preset(nullptr, &r), StatusCode::invalid_argument, {"(null)"});
  support::check_error(cgrpo::preset("verl/grpo", nullptr), StatusCode::invalid_argument, {"out"});
  // The actor suffix: verl presets only, two actors.
  support::check_error(cgrpo::preset("verl/grpo@b178a3c", &r), StatusCode::invalid_argument,
                       {"verl/grpo@b178a3c", "b178a3c", "engine", "legacy_dp_actor"});
  support::check_error(cgrpo::preset("trl/grpo@legacy_dp_actor", &r), StatusCode::invalid_argument,
                       {"trl/grpo@legacy_dp_actor", "only verl presets"});
  support::check_error(cgrpo::preset("verl/grpoo@engine", &r), StatusCode::invalid_argument, {"unknown"});
  CHECK(r.loss.temperature == 0.25);
}

TEST_CASE("registry: a verl preset's actor suffix selects its conventions", "[presets][registry][verl]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  const support::Batch b = support::random_batch(rng, 7, 6, 19, 2);
  for (int i = 0; i < cgrpo::preset_count(); ++i) {
    const std::string name = cgrpo::preset_at(i)->name;
    if (name.rfind("verl/", 0) != 0) continue;
    INFO(name);
    Recipe plain, engine, legacy;
    REQUIRE(cgrpo::preset(name.c_str(), &plain).ok());
    REQUIRE(cgrpo::preset((name + "@engine").c_str(), &engine).ok());
    REQUIRE(cgrpo::preset((name + "@legacy_dp_actor").c_str(), &legacy).ok());
    check_same(engine, plain, b);  // the engine is the default
    check_same(legacy, cgrpo::verl_with_actor(plain, cgrpo::VerlActor::legacy_dp_actor), b);
    CHECK(plain.loss.aggregation.convention.count_empty_rows);
    CHECK(!legacy.loss.aggregation.convention.count_empty_rows);
    CHECK(!legacy.loss.aggregation.convention.sum_norm_per_row);
    CHECK(!legacy.loss.aggregation.convention.token_count_from_response_mask);
    CHECK(!legacy.loss.off_policy.rollout.metrics_from_applied_weights);
    CHECK(legacy.loss.policy.loss == plain.loss.policy.loss);  // nothing else changes
    CHECK(legacy.loss.aggregation.policy == plain.loss.aggregation.policy);
  }
}

TEST_CASE("registry: each name gives its typed preset, bit for bit", "[presets][registry]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  const support::Batch b = support::random_batch(rng, 7, 6, 19, 2);
  const struct {
    const char* name;
    Recipe recipe;
  } typed[] = {
      {"paper/critique_grpo", cgrpo::paper_critique_grpo()},
      {"verl/vanilla", cgrpo::verl_vanilla()},
      {"verl/grpo", cgrpo::verl_grpo()},
      {"verl/dapo", cgrpo::verl_dapo()},
      {"verl/dr_grpo", cgrpo::verl_dr_grpo()},
      {"verl/gspo", cgrpo::verl_gspo()},
      {"verl/cispo", cgrpo::verl_cispo()},
      {"verl/sapo", cgrpo::verl_sapo()},
      {"verl/gpg", cgrpo::verl_gpg()},
      {"verl/gmpo", cgrpo::verl_gmpo()},
      {"verl/kl_cov", cgrpo::verl_kl_cov()},
      {"verl/clip_cov", cgrpo::verl_clip_cov()},
      {"verl/decoupled_token_is", cgrpo::verl_decoupled(cgrpo::verl_grpo(), cgrpo::RolloutIsLevel::token)},
      {"verl/decoupled_seq_is", cgrpo::verl_decoupled(cgrpo::verl_grpo(), cgrpo::RolloutIsLevel::sequence)},
      {"verl/bypass_ppo_clip", cgrpo::verl_bypass_ppo_clip()},
      {"verl/bypass_pg_is", cgrpo::verl_bypass_reinforce()},
      {"verl/dppo_tv", cgrpo::verl_dppo_tv()},
      {"verl/dppo_kl", cgrpo::verl_dppo_kl()},
      {"verl/dro", cgrpo::verl_dro()},
      {"verl/decoupled_token_icepop",
       cgrpo::verl_icepop(cgrpo::verl_decoupled(cgrpo::verl_grpo(), cgrpo::RolloutIsLevel::token), 0.5, 5.0)},
      {"verl/bypass_pg_token_icepop", cgrpo::verl_bypass_token_icepop()},
      {"trl/grpo", cgrpo::trl_grpo()},
      {"trl/bnpo", cgrpo::trl_bnpo()},
      {"trl/dr_grpo", cgrpo::trl_dr_grpo()},
      {"trl/dapo", cgrpo::trl_dapo()},
      {"trl/cispo", cgrpo::trl_cispo()},
      {"trl/sapo", cgrpo::trl_sapo()},
      {"trl/luspo", cgrpo::trl_luspo()},
      {"trl/vespo", cgrpo::trl_vespo()},
  };
  CHECK(sizeof(typed) / sizeof(typed[0]) == static_cast<size_t>(cgrpo::preset_count()));
  for (const auto& t : typed) {
    INFO(t.name);
    Recipe r;
    REQUIRE(cgrpo::preset(t.name, &r).ok());
    check_same(r, t.recipe, b);
  }
}

TEST_CASE("options: verl's loss_mode strings set the term and what verl's function fixes", "[presets][verl][options]") {
  LossConfig c = cgrpo::verl_vanilla().loss;
  REQUIRE(cgrpo::verl_loss_mode("gspo", &c).ok());
  CHECK(c.policy.loss == cgrpo::PolicyLoss::ppo_clip);
  CHECK(c.ratio.level == cgrpo::RatioLevel::sequence_detached);
  CHECK(c.ratio.log_ratio_max == 10.0);
  CHECK(std::isinf(c.ratio.log_ratio_min));
  CHECK(!c.ratio.dual_clip);
  CHECK(c.aggregation.policy == cgrpo::Aggregation::seq_mean_token_mean);
  CHECK(c.validate().ok());
  for (const char* mode : {"geo_mean", "kl_cov", "clip_cov"}) {
    c = cgrpo::verl_vanilla().loss;
    REQUIRE(cgrpo::verl_loss_mode(mode, &c).ok());
    INFO(mode);
    CHECK(std::string(cgrpo::to_string(c.policy.loss)) == mode);
    CHECK((std::isinf(c.ratio.log_ratio_min) && std::isinf(c.ratio.log_ratio_max)));  // no +-20 clamp in verl
    CHECK(c.validate().ok());
  }
  c = cgrpo::verl_vanilla().loss;
  REQUIRE(cgrpo::verl_loss_mode("sapo", &c).ok());
  CHECK(c.aggregation.policy == cgrpo::Aggregation::seq_mean_token_mean);
  CHECK(c.validate().ok());
  c = cgrpo::verl_gpg().loss;
  REQUIRE(cgrpo::verl_loss_mode("vanilla", &c).ok());
  CHECK((c.policy.loss == cgrpo::PolicyLoss::ppo_clip && c.ratio.dual_clip && c.ratio.log_ratio_min == -20.0));

  const LossConfig before = c;
  support::check_error(cgrpo::verl_loss_mode("vanila", &c), StatusCode::invalid_argument, {"vanila", "gspo", "vanilla", "geo_mean"});
  CHECK(c.policy.loss == before.policy.loss);
  CHECK(c.ratio.dual_clip == before.ratio.dual_clip);
  cgrpo::RolloutIsLevel level = cgrpo::RolloutIsLevel::token;
  REQUIRE(cgrpo::verl_rollout_is(nullptr, &level).ok());
  CHECK(level == cgrpo::RolloutIsLevel::none);
  REQUIRE(cgrpo::verl_rollout_is("sequence", &level).ok());
  CHECK(level == cgrpo::RolloutIsLevel::sequence);
  support::check_error(cgrpo::verl_rollout_is("seq", &level), StatusCode::invalid_argument, {"rollout_is", "seq"});
}

TEST_CASE("options: VerlOptions give verl's recipes", "[presets][verl][options]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  const support::Batch b = support::random_batch(rng, 6, 5, 17, 0);
  cgrpo::VerlOptions o;  // verl's defaults: the vanilla loss
  Recipe r;
  REQUIRE(cgrpo::verl_recipe(o, &r).ok());
  check_same(r, cgrpo::verl_vanilla(), b);
  o.use_kl_loss = true;  // + low_var_kl 0.001: verl's GRPO recipe
  REQUIRE(cgrpo::verl_recipe(o, &r).ok());
  check_same(r, cgrpo::verl_grpo(), b);
  o.use_kl_loss = false;
  o.clip_ratio_high = 0.28;
  o.clip_ratio_c = 10.0;
  REQUIRE(cgrpo::verl_recipe(o, &r).ok());
  check_same(r, cgrpo::verl_dapo(), b);
  cgrpo::VerlOptions gspo;
  gspo.loss_mode = "gspo";
  gspo.loss_agg_mode = "seq-mean-token-mean";
  gspo.clip_ratio_low = 3e-4;
  gspo.clip_ratio_high = 4e-4;
  REQUIRE(cgrpo::verl_recipe(gspo, &r).ok());
  check_same(r, cgrpo::verl_gspo(), b);
  cgrpo::VerlOptions bypass;
  bypass.bypass_mode = true;
  bypass.loss_type = "reinforce";
  bypass.rollout_is = "sequence";
  REQUIRE(cgrpo::verl_recipe(bypass, &r).ok());
  check_same(r, cgrpo::verl_bypass_reinforce(), b);
  cgrpo::VerlOptions decoupled;
  decoupled.use_kl_loss = true;
  decoupled.rollout_is = "token";
  REQUIRE(cgrpo::verl_recipe(decoupled, &r).ok());
  check_same(r, cgrpo::verl_decoupled(cgrpo::verl_grpo(), cgrpo::RolloutIsLevel::token), b);

  // verl 1dda039's options: dppo's clip_ratio_c is its IS cap, dro_beta, IcePop's "lo_hi", gdpo, the actor.
  cgrpo::VerlOptions dppo;
  dppo.loss_mode = "dppo_tv";
  dppo.clip_ratio = 0.15;
  dppo.clip_ratio_c = 10000;
  REQUIRE(cgrpo::verl_recipe(dppo, &r).ok());
  check_same(r, cgrpo::verl_dppo_tv(), b);
  dppo.loss_mode = "dppo_kl";
  dppo.clip_ratio = 0.05;
  REQUIRE(cgrpo::verl_recipe(dppo, &r).ok());
  check_same(r, cgrpo::verl_dppo_kl(), b);
  dppo.clip_ratio_c = 3.0;  // verl's ActorConfig default when the recipe does not set it
  REQUIRE(cgrpo::verl_recipe(dppo, &r).ok());
  CHECK(r.loss.policy.dppo_kl.is_cap == 3.0);
  cgrpo::VerlOptions dro;
  dro.loss_mode = "dro";
  dro.dro_beta = 0.5;
  REQUIRE(cgrpo::verl_recipe(dro, &r).ok());
  check_same(r, cgrpo::verl_dro(0.5), b);
  cgrpo::VerlOptions icepop;
  icepop.bypass_mode = true;
  icepop.loss_type = "reinforce";
  icepop.rollout_is = "token";
  icepop.rollout_is_threshold_text = "0.5_5.0";
  REQUIRE(cgrpo::verl_recipe(icepop, &r).ok());
  check_same(r, cgrpo::verl_bypass_token_icepop(), b);
  icepop.rollout_is_threshold_text = "1.5";  // a number in the string form: truncation
  REQUIRE(cgrpo::verl_recipe(icepop, &r).ok());
  CHECK(r.loss.off_policy.rollout.is_mode == cgrpo::RolloutIsMode::truncate);
  CHECK(r.loss.off_policy.rollout.is_threshold == 1.5);
  cgrpo::VerlOptions gdpo;
  gdpo.adv_estimator = "gdpo";
  gdpo.norm_adv_by_std_in_grpo = false;  // verl's gdpo does not read it
  REQUIRE(cgrpo::verl_recipe(gdpo, &r).ok());
  CHECK(r.advantage.estimator == cgrpo::AdvantageEstimator::gdpo);
  CHECK(r.advantage.whiten_count_eps == 1e-8);
  cgrpo::VerlOptions legacy;
  legacy.loss_agg_mode = "seq-mean-token-sum-norm";
  legacy.actor = cgrpo::VerlActor::legacy_dp_actor;
  REQUIRE(cgrpo::verl_recipe(legacy, &r).ok());
  CHECK(!r.loss.aggregation.convention.sum_norm_per_row);
  CHECK(!r.loss.aggregation.convention.count_empty_rows);
  legacy.loss_agg_mode = "token-sum";
  legacy.actor = cgrpo::VerlActor::engine;
  REQUIRE(cgrpo::verl_recipe(legacy, &r).ok());
  CHECK(r.loss.aggregation.policy == cgrpo::Aggregation::token_sum);

  cgrpo::VerlOptions bad;
  // dro_beta has no default and must be > 0; IcePop's band needs 0 < lo <= hi; out is untouched.
  bad.loss_mode = "dro";
  r.loss.temperature = 0.5;
  support::check_error(cgrpo::verl_recipe(bad, &r), StatusCode::invalid_argument, {"dro_beta", "no default"});
  bad.dro_beta = 0;
  support::check_error(cgrpo::verl_recipe(bad, &r), StatusCode::invalid_argument, {"dro_beta", "> 0"});
  bad.dro_beta = -1;
  support::check_error(cgrpo::verl_recipe(bad, &r), StatusCode::invalid_argument, {"dro_beta"});
  CHECK(r.loss.temperature == 0.5);
  bad = cgrpo::VerlOptions{};
  bad.rollout_is = "token";
  for (const char* spec : {"2.0_0.5", "0_2", "abc", "0.5_", "-1", "0.5_inf"}) {
    INFO(spec);
    bad.rollout_is_threshold_text = spec;
    support::check_error(cgrpo::verl_recipe(bad, &r), StatusCode::invalid_argument, {"rollout_is_threshold", spec});
  }
  CHECK(r.loss.temperature == 0.5);
  bad = cgrpo::VerlOptions{};
  bad.adv_estimator = "gae";
  r.loss.temperature = 0.5;
  support::check_error(cgrpo::verl_recipe(bad, &r), StatusCode::invalid_argument, {"adv_estimator", "gae"});
  CHECK(r.loss.temperature == 0.5);
  bad = cgrpo::VerlOptions{};
  bad.kl_loss_type = "full";
  bad.use_kl_loss = true;
  support::check_error(cgrpo::verl_recipe(bad, &r), StatusCode::invalid_argument, {"kl_loss_type", "full"});
  bad = cgrpo::VerlOptions{};
  bad.loss_mode = "sapo";
  bad.clip_ratio = 1.5;  // sapo reads no clip bound: fine; the sapo taus are checked
  bad.tau_neg = 0;
  support::check_error(cgrpo::verl_recipe(bad, &r), StatusCode::invalid_argument, {"config.policy.sapo.tau_pos and tau_neg"});
}

TEST_CASE("options: TRL's GRPOConfig strings and TrlOptions give TRL's recipes", "[presets][trl][options]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  const support::Batch b = support::random_batch(rng, 6, 5, 17, 0);
  for (const char* loss_type : {"grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"}) {
    INFO(loss_type);
    Recipe by_type, by_name;
    REQUIRE(cgrpo::trl_loss_type(loss_type, &by_type).ok());
    REQUIRE(cgrpo::preset((std::string("trl/") + loss_type).c_str(), &by_name).ok());
    check_same(by_type, by_name, b);
    cgrpo::TrlOptions o;  // GRPOConfig's defaults with this loss_type
    o.loss_type = loss_type;
    if (std::string(loss_type) == "luspo") o.importance_sampling_level = "sequence";
    Recipe r;
    REQUIRE(cgrpo::trl_recipe(o, &r).ok());
    check_same(r, by_name, b);
  }
  cgrpo::TrlOptions vllm;
  vllm.loss_type = "grpo";
  vllm.use_vllm = true;
  Recipe r, want = cgrpo::trl_grpo();
  want.loss.off_policy.sampler = cgrpo::trl_vllm_importance_sampling();
  REQUIRE(cgrpo::trl_recipe(vllm, &r).ok());
  check_same(r, want, b);
  cgrpo::TrlOptions beta;
  beta.loss_type = "bnpo";
  beta.beta = 0.04;
  beta.use_bias_correction_kl = true;
  REQUIRE(cgrpo::trl_recipe(beta, &r).ok());
  CHECK((r.loss.kl.estimator == cgrpo::KlEstimator::k3 && r.loss.kl.coef == 0.04 && r.loss.kl.times_ratio && !r.loss.kl.k3_clamp));
  cgrpo::TrlOptions scale;
  scale.scale_rewards = "batch";
  REQUIRE(cgrpo::trl_recipe(scale, &r).ok());
  CHECK(r.advantage.estimator == cgrpo::AdvantageEstimator::grpo_batch_std);

  cgrpo::TrlOptions bad;
  bad.loss_type = "ppo";
  support::check_error(cgrpo::trl_recipe(bad, &r), StatusCode::invalid_argument, {"loss_type", "ppo", "dapo"});
  bad = cgrpo::TrlOptions{};
  bad.use_vllm = true;
  bad.vllm_importance_sampling_mode = "token";
  support::check_error(cgrpo::trl_recipe(bad, &r), StatusCode::invalid_argument, {"vllm_importance_sampling_mode", "token"});
  bad = cgrpo::TrlOptions{};
  bad.importance_sampling_level = "row";
  support::check_error(cgrpo::trl_recipe(bad, &r), StatusCode::invalid_argument, {"importance_sampling_level"});
  bad = cgrpo::TrlOptions{};
  bad.scale_rewards = "global";
  support::check_error(cgrpo::trl_recipe(bad, &r), StatusCode::invalid_argument, {"scale_rewards"});
  bad = cgrpo::TrlOptions{};
  bad.loss_type = "vespo";
  bad.use_vllm = true;  // sequence_mask: vespo needs a token mode, as TRL requires
  support::check_error(cgrpo::trl_recipe(bad, &r), StatusCode::invalid_argument, {"vespo", "token_truncate"});
}
