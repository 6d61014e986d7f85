// tests/presets/test_recipe_text.cpp: recipes from text (presets/recipe_text.hpp): every preset and every
// field path round-trips bit for bit, verl.* / trl.* options equal verl_recipe / trl_recipe of the same
// options, overrides apply in order, and every bad key or value is refused by name with *out untouched.
#include <catch2/catch.hpp>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/presets/recipe_text.hpp>

#include <cmath>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "expect_error.hpp"

namespace {

using cgrpo::Recipe;
using cgrpo::StatusCode;

std::string text_of(const Recipe& r) {
  std::string s;
  REQUIRE(cgrpo::recipe_to_text(r, &s).ok());
  return s;
}

Recipe from_text(const std::string& text) {
  Recipe r;
  const cgrpo::Status s = cgrpo::recipe_from_text(text.c_str(), &r);
  INFO(text << ": " << s.message);
  REQUIRE(s.ok());
  return r;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

// The error, and a sentinel recipe left as it was.
void expect_text_error(const std::string& text, std::initializer_list<const char*> needles) {
  Recipe r = cgrpo::trl_sapo();
  r.loss.kl.coef = 0;
  r.loss.temperature = 0.625;
  const std::string before = text_of(r);
  INFO("text: " << text);
  support::check_error(cgrpo::recipe_from_text(text.c_str(), &r), StatusCode::invalid_argument, needles);
  CHECK(text_of(r) == before);
}

}  // namespace

TEST_CASE("every preset round-trips through its text, bit for bit", "[recipe_text]") {
  std::vector<std::string> names;
  for (int i = 0; i < cgrpo::preset_count(); ++i) {
    names.push_back(cgrpo::preset_at(i)->name);
    if (names.back().rfind("verl/", 0) == 0) names.push_back(names.back() + "@legacy_dp_actor");
  }
  for (const std::string& name : names) {
    INFO(name);
    Recipe want;
    REQUIRE(cgrpo::preset(name.c_str(), &want).ok());
    const Recipe by_name = from_text("preset=" + name);
    const std::string text = text_of(want);
    CHECK(text_of(by_name) == text);
    const Recipe again = from_text(text);
    CHECK(text_of(again) == text);
    // Bit for bit: the printed doubles carry 17 digits, so the structs' doubles are equal.
    CHECK(std::memcmp(&again.loss.policy, &want.loss.policy, sizeof(cgrpo::PolicyParams)) == 0);
    CHECK(again.loss.ratio.clip_eps_high == want.loss.ratio.clip_eps_high);
    CHECK(again.advantage.eps == want.advantage.eps);
  }
}

TEST_CASE("every field path is a key, and the text lists each once", "[recipe_text]") {
  std::string paths;
  REQUIRE(cgrpo::recipe_field_paths(&paths).ok());
  const std::vector<std::string> keys = split(paths, ';');
  const std::set<std::string> unique(keys.begin(), keys.end());
  CHECK(unique.size() == keys.size());
  CHECK(keys.size() == 72);  // 68 LossConfig fields (4 rejection options of 3 among them), 4 AdvantageConfig fields
  // A field set to its own printed value is found (every path parses), and the text lists every path.
  const Recipe base = cgrpo::verl_grpo();
  const std::vector<std::string> items = split(text_of(base), ';');
  REQUIRE(items.size() == keys.size());
  for (size_t i = 0; i < items.size(); ++i) {
    CHECK(items[i].substr(0, items[i].find('=')) == keys[i]);
    CHECK(text_of(from_text("preset=verl/grpo;" + items[i])) == text_of(base));
  }
}

TEST_CASE("field overrides reach their fields, in order", "[recipe_text]") {
  Recipe want = cgrpo::verl_grpo();
  want.loss.kl.coef = 0.02;
  want.loss.ratio.clip_eps_high = 0.28;
  want.loss.aggregation.policy = cgrpo::Aggregation::seq_mean_token_mean;
  want.loss.aggregation.entropy = cgrpo::Aggregation::token_sum;
  want.advantage.estimator = cgrpo::AdvantageEstimator::rloo;
  want.advantage.eps = 1e-4;
  auto& rc = want.loss.off_policy.rollout;
  rc.mode = cgrpo::RolloutCorrectionMode::decoupled;
  rc.is_level = cgrpo::RolloutIsLevel::token;
  rc.num_rejection_options = 2;
  rc.rejection[1].statistic = cgrpo::RejectionStatistic::seq_max_k2;
  rc.rejection[1].upper = 3.5;
  rc.rejection[0].lower = 0.5;
  want.loss.policy.clip_cov.seed = UINT64_MAX;
  want.loss.temperature = 0.7;
  want.loss.metrics.mean_eps = 0;
  want.loss.entropy.coef = 0.5;
  const Recipe got = from_text(
      "preset=verl/grpo; kl.coef=0.01; kl.coef=0.02; ratio.clip_eps_high=0.28; entropy.coef=0.5;"
      "aggregation.policy=seq_mean_token_mean; aggregation.entropy=token-sum; advantage.estimator=rloo;"
      "advantage.eps=1e-4; off_policy.rollout.mode=decoupled; off_policy.rollout.is_level=token;"
      "off_policy.rollout.num_rejection_options=2; off_policy.rollout.rejection[1].statistic=seq_max_k2;"
      "off_policy.rollout.rejection[1].upper=3.5; off_policy.rollout.rejection[0].lower=0.5;"
      "policy.clip_cov.seed=18446744073709551615; temperature=0.7\n metrics.mean_eps = 0");
  CHECK(text_of(got) == text_of(want));
  // A value validate() refuses (entropy.coef must be finite) is refused after parsing.
  Recipe out;
  support::check_error(cgrpo::recipe_from_text("preset=verl/grpo;entropy.coef=-inf", &out),
                       StatusCode::invalid_argument, {"config.entropy.coef"});
}

TEST_CASE("no base: the paper's defaults; verl.* and trl.* options equal the option parsers", "[recipe_text]") {
  CHECK(text_of(from_text("")) == text_of(Recipe{}));
  CHECK(text_of(from_text(" ; ;")) == text_of(Recipe{}));

  cgrpo::VerlOptions o;
  o.loss_mode = "gspo";
  o.loss_agg_mode = "seq-mean-token-mean";
  o.use_kl_loss = true;
  o.kl_loss_type = "low_var_kl+";
  o.kl_loss_coef = 0.01;
  o.clip_ratio_low = 3e-4;
  o.clip_ratio_high = 4e-4;
  o.rollout_is = "token";
  o.rollout_is_threshold_text = "0.5_2.5";
  o.rollout_rs = "token_k1,seq_max_k2";
  o.rollout_rs_threshold = "0.5_2.0,3";
  o.actor = cgrpo::VerlActor::legacy_dp_actor;
  Recipe want;
  REQUIRE(cgrpo::verl_recipe(o, &want).ok());
  CHECK(text_of(from_text("verl.loss_mode=gspo;verl.loss_agg_mode=seq-mean-token-mean;verl.use_kl_loss=true;"
                          "verl.kl_loss_type=low_var_kl+;verl.kl_loss_coef=0.01;verl.clip_ratio_low=3e-4;"
                          "verl.clip_ratio_high=4e-4;verl.rollout_is=token;verl.rollout_is_threshold_text=0.5_2.5;"
                          "verl.rollout_rs=token_k1,seq_max_k2;verl.rollout_rs_threshold=0.5_2.0,3;"
                          "verl.actor=legacy_dp_actor")) == text_of(want));
  // verl's None: clip_ratio_low = none is clip_ratio, rollout_is = none is off.
  cgrpo::VerlOptions d;
  d.clip_ratio = 0.3;
  REQUIRE(cgrpo::verl_recipe(d, &want).ok());
  CHECK(text_of(from_text("verl.clip_ratio=0.3;verl.clip_ratio_low=none;verl.rollout_is=null")) == text_of(want));

  cgrpo::TrlOptions t;
  t.loss_type = "grpo";
  t.importance_sampling_level = "sequence";
  t.beta = 0.04;
  t.use_bias_correction_kl = true;
  t.use_vllm = true;
  t.vllm_importance_sampling_mode = "token_truncate";
  t.vllm_importance_sampling_clip_min = 0.5;
  t.off_policy_mask_threshold = 0.3;
  t.epsilon_high = 0.28;
  REQUIRE(cgrpo::trl_recipe(t, &want).ok());
  CHECK(text_of(from_text("trl.loss_type=grpo;trl.importance_sampling_level=sequence;trl.beta=0.04;"
                          "trl.use_bias_correction_kl=True;trl.use_vllm=1;"
                          "trl.vllm_importance_sampling_mode=token_truncate;trl.vllm_importance_sampling_clip_min=0.5;"
                          "trl.off_policy_mask_threshold=0.3;trl.epsilon_high=0.28;trl.delta=None")) == text_of(want));
  // Overrides on top of the options.
  want.loss.entropy.coef = 0.01;
  CHECK(text_of(from_text("trl.loss_type=grpo;trl.importance_sampling_level=sequence;trl.beta=0.04;"
                          "trl.use_bias_correction_kl=True;trl.use_vllm=1;entropy.coef=0.01;"
                          "trl.vllm_importance_sampling_mode=token_truncate;trl.vllm_importance_sampling_clip_min=0.5;"
                          "trl.off_policy_mask_threshold=0.3;trl.epsilon_high=0.28")) == text_of(want));
}

TEST_CASE("bad keys and values are refused by name, *out untouched", "[recipe_text]") {
  expect_text_error("kl.cof=0.1", {"unknown key \"kl.cof\"", "kl.coef", "kl.estimator"});
  expect_text_error("preset=verl/grpo;klcoef=0.1", {"unknown key \"klcoef\"", "verl.*"});
  expect_text_error("preset=verl/grpo;kl.coef=abc", {"kl.coef = \"abc\"", "number"});
  expect_text_error("preset=verl/grpo;kl.coef=", {"kl.coef = \"\"", "number"});
  expect_text_error("preset=verl/grpo;kl.coef=nan", {"kl.coef = \"nan\""});
  expect_text_error("preset=verl/grpo;kl.coef=1e999", {"kl.coef = \"1e999\"", "overflows"});
  expect_text_error("preset=verl/grpo;kl.estimator=k7", {"kl.estimator = \"k7\"", "none, k1, abs, k2, k3"});
  expect_text_error("preset=verl/grpo;aggregation.policy=mean", {"aggregation.policy = \"mean\"", "token-mean"});
  expect_text_error("preset=verl/grpo;ratio.dual_clip=yes", {"ratio.dual_clip = \"yes\"", "true or false"});
  expect_text_error("off_policy.rollout.num_rejection_options=1.5", {"num_rejection_options = \"1.5\"", "integer"});
  expect_text_error("policy.clip_cov.seed=-1", {"policy.clip_cov.seed = \"-1\"", "unsigned"});
  expect_text_error("preset=verl/nope", {"preset \"verl/nope\" is unknown", "verl/grpo"});
  expect_text_error("preset=verl/grpo;preset=trl/dapo", {"preset given twice"});
  expect_text_error("preset=verl/grpo;verl.loss_mode=gspo", {"preset and verl.loss_mode", "use one"});
  expect_text_error("verl.loss_mode=gspo;trl.beta=0.1", {"verl.loss_mode and trl.beta"});
  expect_text_error("verl.loss_mod=gspo", {"unknown option verl.loss_mod", "VerlOptions", "loss_mode"});
  expect_text_error("trl.entropy_coef=0.1", {"unknown option trl.entropy_coef", "TrlOptions", "loss_type"});
  expect_text_error("verl.loss_mode=nope", {"verl.* options", "loss_mode \"nope\""});
  expect_text_error("verl.actor=new", {"verl.actor = \"new\"", "engine, legacy_dp_actor"});
  expect_text_error("verl.clip_ratio=none", {"verl.clip_ratio = \"none\""});
  expect_text_error("trl.loss_type=ppo", {"trl.* options", "loss_type \"ppo\""});
  expect_text_error("kl.coef", {"item \"kl.coef\" is not key=value"});
  expect_text_error("=3", {"has no key"});
  // Validation of the result names the config field.
  expect_text_error("ratio.dual_clip=true", {"config.ratio.dual_clip", "ppo_clip"});
  expect_text_error("preset=verl/sapo;aggregation.policy=token-mean", {"config.aggregation.policy", "sapo"});
  Recipe r;
  support::check_error(cgrpo::recipe_from_text("kl.coef=0", nullptr), StatusCode::invalid_argument, {"out"});
  CHECK(cgrpo::recipe_from_text(nullptr, &r).ok());  // null text: the empty text
}
