// Validation of verl's modes: rollout_logp missing or non-finite, thresholds out of range,
// combinations verl does not define, verl's option strings; the error names the field and every
// output (gradient, log p, H, policy factor, terms, metrics) is left as it was.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <cgrpo/cgrpo.hpp>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "reference.hpp"

namespace {

constexpr double kPoison = -12345.5;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

using Cfg = cgrpo::LossConfig;
using Batch = cgrpo::PolicyLossBatch<double>;
using Out = cgrpo::PolicyLossOutputs<double>;
using Code = cgrpo::StatusCode;
using Mutate = std::function<void(Cfg&, Batch&, Out&)>;

// A verl batch (every token initial, rollout log-probs) with decoupled token IS and a token_k1
// rejection, weights computed by the loss; `mutate` breaks one thing. Returns the status after
// checking that no output changed when it is an error.
cgrpo::Status run(const Mutate& mutate) {
  std::mt19937_64 rng = test_seed::fresh_rng();
  ref::Batch b = ref::random_batch(rng, 5, 6, 30, 2);
  for (auto& k : b.kinds) k = cgrpo::kInitial;
  std::normal_distribution<double> noise(0.0, 0.2);
  std::vector<double> rollout(b.T);
  for (int64_t t = 0; t < b.T; ++t) rollout[t] = b.old_logp[t] + noise(rng);
  std::vector<uint8_t> selection(b.T, 0);
  ref::LibraryBatch<double> lb(b);
  lb.view.pg_weights = lb.view.entropy_weights = lb.view.kl_weights = nullptr;
  lb.view.rollout_logp = rollout.data();
  Cfg c = cgrpo::verl_decoupled(cgrpo::verl_grpo(), cgrpo::RolloutIsLevel::token);
  c.entropy_coef = 0.01;
  REQUIRE(cgrpo::verl_rollout_rs("token_k1", "0.8_1.25", &c.rollout).ok());
  std::vector<double> grad(b.logits.size(), kPoison), logp(b.T, kPoison), ent(b.T, kPoison), factor(b.T, kPoison);
  std::vector<uint8_t> terms(b.T, 77);
  cgrpo::LossMetrics metrics;
  metrics.loss = kPoison;
  metrics.rollout.is_mean = kPoison;
  Out out;
  out.grad_logits = grad.data();
  out.logp = logp.data();
  out.entropy = ent.data();
  out.metrics = &metrics;
  out.policy_factor = factor.data();
  out.token_terms = terms.data();
  mutate(c, lb.view, out);
  const cgrpo::Status st = cgrpo::cpu::fused_policy_loss(c, lb.view, out);
  if (!st.ok()) {
    for (double g : grad) REQUIRE(g == kPoison);
    for (int64_t t = 0; t < b.T; ++t) {
      REQUIRE((logp[t] == kPoison && ent[t] == kPoison && factor[t] == kPoison));
      REQUIRE(terms[t] == 77);
    }
    CHECK(metrics.loss == kPoison);
    CHECK(metrics.rollout.is_mean == kPoison);
  }
  return st;
}

// The status is `code` and its message holds every needle.
void expect_error(const Mutate& mutate, Code code, std::initializer_list<const char*> needles) {
  const cgrpo::Status st = run(mutate);
  INFO("message: " << st.message);
  CHECK(st.code == code);
  for (const char* n : needles) CHECK(std::string(st.message).find(n) != std::string::npos);
}

void expect_ok(const Mutate& mutate) {
  const cgrpo::Status st = run(mutate);
  INFO("message: " << st.message);
  CHECK(st.ok());
}

}  // namespace

TEST_CASE("verl bad input: rollout_logp missing or not finite where a mode reads it", "[errors][verl]") {
  expect_ok([](Cfg&, Batch&, Out&) {});
  expect_error([](Cfg&, Batch& b, Out&) { b.rollout_logp = nullptr; }, Code::invalid_argument, {"config.rollout", "rollout_logp"});
  expect_error([](Cfg& c, Batch& b, Out&) {
    c = cgrpo::verl_bypass_reinforce();
    b.rollout_logp = nullptr;
  }, Code::invalid_argument, {"rollout_logp"});
  expect_error([](Cfg& c, Batch& b, Out&) {
    c = cgrpo::verl_bypass_ppo_clip();  // metrics only: still reads rollout_logp (the ratio's reference)
    b.rollout_logp = nullptr;
  }, Code::invalid_argument, {"rollout_logp"});
  for (double bad : {kNaN, kInf, -kInf}) {
    expect_error([bad](Cfg&, Batch& b, Out&) {
      const_cast<uint8_t*>(b.mask)[3] = 1;  // a valid token: its rollout_logp is read
      const_cast<double*>(b.rollout_logp)[3] = bad;
    }, Code::non_finite, {"rollout_logp[3]"});
    expect_error([bad](Cfg& c, Batch& b, Out&) {
      c = cgrpo::verl_bypass_reinforce();
      const_cast<uint8_t*>(b.mask)[2] = 1;
      const_cast<double*>(b.rollout_logp)[2] = bad;
    }, Code::non_finite, {"rollout_logp[2]"});
  }
  // A masked token's rollout_logp is never read; bypass mode never reads old_logp.
  expect_ok([](Cfg&, Batch& b, Out&) {
    for (int64_t t = 0; t < b.num_tokens; ++t)
      if (!b.mask[t]) const_cast<double*>(b.rollout_logp)[t] = kNaN;
  });
  expect_ok([](Cfg& c, Batch& b, Out&) {
    c = cgrpo::verl_bypass_reinforce();
    b.old_logp = nullptr;
  });
}

TEST_CASE("verl bad input: IS and rejection thresholds out of range", "[errors][verl]") {
  for (double bad : {0.0, -1.0, kNaN})
    expect_error([bad](Cfg& c, Batch&, Out&) { c.rollout.is_threshold = bad; }, Code::invalid_argument,
                 {"config.rollout.is_threshold"});
  expect_ok([](Cfg& c, Batch&, Out&) { c.rollout.is_threshold = kInf; });  // no truncation
  for (double bad : {0.0, -0.5, kNaN, kInf})
    expect_error([bad](Cfg& c, Batch&, Out&) { c.rollout.rejection[0].upper = bad; }, Code::invalid_argument,
                 {"config.rollout.rejection[0].upper"});
  expect_error([](Cfg& c, Batch&, Out&) { c.rollout.rejection[0].lower = 2.0; }, Code::invalid_argument,
               {"config.rollout.rejection[0]", "token_k1", "lower <= upper"});
  expect_error([](Cfg& c, Batch&, Out&) { c.rollout.rejection[0].lower = -0.1; }, Code::invalid_argument,
               {"config.rollout.rejection[0]"});
  expect_error([](Cfg& c, Batch&, Out&) { c.rollout.rejection[0].upper = 0.5; }, Code::invalid_argument,
               {"config.rollout.rejection[0]", "token_k1"});  // lower 0.8 > upper
  expect_error([](Cfg& c, Batch&, Out&) {
    c.rollout.rejection[0].statistic = cgrpo::RejectionStatistic::seq_mean_k3;
  }, Code::invalid_argument, {"config.rollout.rejection[0]", "seq_mean_k3", "upper threshold only"});
  expect_error([](Cfg& c, Batch&, Out&) { c.rollout.rejection[0].statistic = static_cast<cgrpo::RejectionStatistic>(11); },
               Code::invalid_argument, {"config.rollout.rejection[0].statistic"});
  expect_error([](Cfg& c, Batch&, Out&) { c.rollout.num_rejection_options = 5; }, Code::invalid_argument,
               {"config.rollout.num_rejection_options"});
  expect_error([](Cfg& c, Batch&, Out&) { c.rollout.num_rejection_options = -1; }, Code::invalid_argument,
               {"config.rollout.num_rejection_options"});
  expect_error([](Cfg& c, Batch&, Out&) { c.rollout.mode = static_cast<cgrpo::RolloutCorrectionMode>(3); },
               Code::invalid_argument, {"config.rollout.mode"});
  expect_error([](Cfg& c, Batch&, Out&) { c.rollout.is_level = static_cast<cgrpo::RolloutIsLevel>(7); },
               Code::invalid_argument, {"config.rollout.is_level"});
}

TEST_CASE("verl bad input: combinations verl does not define", "[errors][verl]") {
  expect_error([](Cfg& c, Batch&, Out&) { c.rollout.mode = cgrpo::RolloutCorrectionMode::none; }, Code::invalid_argument,
               {"config.rollout", "rollout.mode"});
  expect_error([](Cfg& c, Batch&, Out&) {
    c.rollout.is_level = cgrpo::RolloutIsLevel::none;
    c.rollout.is_batch_normalize = true;
  }, Code::invalid_argument, {"config.rollout.is_batch_normalize"});
  expect_error([](Cfg& c, Batch&, Out&) {
    c.policy_loss = cgrpo::PolicyLoss::cispo;
    c.dual_clip = false;
    c.rollout.mode = cgrpo::RolloutCorrectionMode::bypass;
  }, Code::invalid_argument, {"config.rollout.mode = bypass", "cispo"});
  expect_error([](Cfg& c, Batch&, Out&) {
    c = cgrpo::verl_bypass_ppo_clip();
    c.ratio_level = cgrpo::RatioLevel::sequence_detached;
  }, Code::invalid_argument, {"bypass", "ratio_level"});
  expect_error([](Cfg& c, Batch&, Out&) {
    c.policy_loss = cgrpo::PolicyLoss::reinforce;
    c.dual_clip = false;
  }, Code::invalid_argument, {"config.policy_loss = reinforce", "bypass"});
  expect_error([](Cfg& c, Batch&, Out&) { c.sampler.mode = cgrpo::SamplerCorrectionMode::token_truncate; },
               Code::invalid_argument, {"config.sampler", "config.rollout"});
  expect_error([](Cfg& c, Batch&, Out&) { c.dual_clip = true, c.policy_loss = cgrpo::PolicyLoss::cispo; },
               Code::invalid_argument, {"config.dual_clip", "cispo"});
  expect_error([](Cfg& c, Batch&, Out&) { c.kl = cgrpo::KlEstimator::none, c.kl_coef = 0, c.kl_straight_through = true; },
               Code::invalid_argument, {"config.kl_straight_through"});
  // Rejection changes the denominators: the caller's weights cannot know them.
  expect_error([](Cfg&, Batch& b, Out&) {
    static std::vector<double> w(1000, 0.01);
    b.pg_weights = b.entropy_weights = b.kl_weights = w.data();
  }, Code::invalid_argument, {"rollout rejection", "pg_weights"});
  // geo_mean computes its per-row weights itself.
  expect_error([](Cfg& c, Batch& b, Out&) {
    c = cgrpo::verl_gmpo();
    static std::vector<double> w(1000, 0.01);
    b.pg_weights = b.entropy_weights = w.data();
  }, Code::invalid_argument, {"geo_mean", "pg_weights"});
}

TEST_CASE("verl bad input: policy-loss parameters out of range", "[errors][verl]") {
  // cispo's band may open below (verl's recipe: eps_low 10); ppo_clip's may not.
  expect_ok([](Cfg& c, Batch&, Out&) { c = cgrpo::verl_decoupled(cgrpo::verl_cispo(), cgrpo::RolloutIsLevel::token); });
  expect_error([](Cfg& c, Batch&, Out&) { c.clip_eps_low = 1.0; }, Code::invalid_argument, {"config.clip_eps_low"});
  expect_error([](Cfg& c, Batch&, Out&) { c = cgrpo::verl_cispo(), c.clip_eps_low = -0.1; }, Code::invalid_argument,
               {"config.clip_eps_low"});
  expect_error([](Cfg& c, Batch&, Out&) { c = cgrpo::verl_cispo(), c.clip_eps_high = kNaN; }, Code::invalid_argument,
               {"config.clip_eps_high"});
  for (double bad : {0.0, -1.0, kNaN, kInf})
    expect_error([bad](Cfg& c, Batch&, Out&) { c = cgrpo::verl_sapo(), c.sapo_tau_neg = bad; }, Code::invalid_argument,
                 {"config.sapo_tau_pos and sapo_tau_neg"});
  for (double bad : {0.0, -0.1, 1.5, kNaN})
    expect_error([bad](Cfg& c, Batch&, Out&) { c = cgrpo::verl_kl_cov(), c.cov_ratio = bad; }, Code::invalid_argument,
                 {"config.cov_ratio"});
  expect_error([](Cfg& c, Batch&, Out&) { c = cgrpo::verl_kl_cov(), c.kl_cov_coef = kInf; }, Code::invalid_argument,
               {"config.kl_cov_coef"});
  expect_error([](Cfg& c, Batch&, Out&) { c = cgrpo::verl_clip_cov(), c.clip_cov_lower = 5.0; }, Code::invalid_argument,
               {"config.clip_cov_lower"});
  expect_error([](Cfg& c, Batch&, Out&) { c = cgrpo::verl_gmpo(), c.clip_eps_high = kInf; }, Code::invalid_argument,
               {"config.clip_eps_high"});
  expect_error([](Cfg& c, Batch&, Out&) { c = cgrpo::verl_gmpo(), c.ratio_level = cgrpo::RatioLevel::sequence_detached; },
               Code::invalid_argument, {"geo_mean"});
  expect_error([](Cfg& c, Batch& b, Out&) {
    c = cgrpo::verl_clip_cov();
    static std::vector<uint8_t> sel;
    sel.assign(static_cast<size_t>(b.num_tokens), 0);
    for (int64_t t = 0; t < b.num_tokens; ++t)
      if (b.mask[t]) {
        sel[t] = 2;
        break;
      }
    b.selection = sel.data();
  }, Code::invalid_argument, {"selection[", "0 or 1"});
}

TEST_CASE("verl bad input: the optional outputs may not overlap inputs or other outputs", "[errors][verl]") {
  expect_error([](Cfg&, Batch&, Out& o) { o.policy_factor = o.logp; }, Code::invalid_argument, {"policy_factor", "logp"});
  expect_error([](Cfg&, Batch& b, Out& o) { o.policy_factor = const_cast<double*>(b.rollout_logp); },
               Code::invalid_argument, {"policy_factor", "rollout_logp"});
  expect_error([](Cfg&, Batch& b, Out& o) { o.token_terms = const_cast<uint8_t*>(b.mask); }, Code::invalid_argument,
               {"token_terms", "mask"});
}

TEST_CASE("verl option strings: errors name the option and the rule", "[errors][verl][options]") {
  auto says = [](const cgrpo::Status& s, std::initializer_list<const char*> needles) {
    INFO(s.message);
    bool all = !s.ok() && s.code == Code::invalid_argument;
    for (const char* n : needles) all = all && std::string(s.message).find(n) != std::string::npos;
    return all;
  };
  cgrpo::RolloutCorrectionConfig rc;
  rc.num_rejection_options = 1;
  rc.rejection[0].upper = 7;
  CHECK(says(cgrpo::verl_rollout_rs("token_k4", "2", &rc), {"rollout_rs", "token_k4"}));
  CHECK(says(cgrpo::verl_rollout_rs("seq_max_k1", "2", &rc), {"seq_max_k1"}));  // verl has no seq_max_k1
  CHECK(says(cgrpo::verl_rollout_rs("", "2", &rc), {"rollout_rs"}));
  CHECK(says(cgrpo::verl_rollout_rs("token_k1", "", &rc), {"rollout_rs_threshold"}));
  CHECK(says(cgrpo::verl_rollout_rs("token_k1,token_k2,token_k3", "1.5,0.1", &rc), {"rollout_rs_threshold", "3"}));
  CHECK(says(cgrpo::verl_rollout_rs("token_k2", "0.1_0.2", &rc), {"token_k2", "single upper bound"}));
  CHECK(says(cgrpo::verl_rollout_rs("token_k2", "-1", &rc), {"token_k2"}));
  CHECK(says(cgrpo::verl_rollout_rs("token_k1", "0_1.5", &rc), {"token_k1", "> 0"}));
  CHECK(says(cgrpo::verl_rollout_rs("token_k1", "abc", &rc), {"token_k1", "abc"}));
  CHECK(says(cgrpo::verl_rollout_rs("token_k1,token_k2,token_k3,seq_sum_k1,seq_sum_k2", "2", &rc), {"at most 4"}));
  // A failed parse leaves the config as it was.
  CHECK(rc.num_rejection_options == 1);
  CHECK(rc.rejection[0].upper == 7);
  cgrpo::KlEstimator k = cgrpo::KlEstimator::none;
  bool st = false;
  CHECK(says(cgrpo::verl_kl_loss_type("full", &k, &st), {"kl_loss_type", "full"}));
  CHECK(says(cgrpo::verl_kl_loss_type("k4+", &k, &st), {"k4"}));
  cgrpo::Aggregation a = cgrpo::Aggregation::token_mean;
  CHECK(says(cgrpo::verl_loss_agg_mode("seq-mean", &a), {"loss_agg_mode", "seq-mean"}));
}

TEST_CASE("rollout_correction: a non-finite log ratio is an error and writes nothing", "[errors][verl]") {
  const int64_t offsets[] = {0, 3, 5};
  const cgrpo::SequenceLayout layout = cgrpo::SequenceLayout::packed(2, offsets);
  const cgrpo::cpu::RowBounds rows{&layout, 5};
  const uint8_t mask[] = {1, 1, 0, 1, 1};
  const double train[] = {-1.0, -2.0, kNaN, -0.5, -3.0};
  double roll[] = {-1.1, -1.9, 0.0, kInf, -2.5};
  double w[5] = {kPoison, kPoison, kPoison, kPoison, kPoison};
  uint8_t keep[5] = {9, 9, 9, 9, 9};
  cgrpo::RolloutCorrectionConfig rc;
  rc.mode = cgrpo::RolloutCorrectionMode::decoupled;
  rc.is_level = cgrpo::RolloutIsLevel::token;
  cgrpo::RolloutMetrics m;
  m.kl = kPoison;
  const cgrpo::Status st = cgrpo::rollout_correction(rc, 2, rows, mask, train, roll, w, keep, &m);
  INFO(st.message);
  CHECK(st.code == Code::non_finite);
  CHECK(std::string(st.message).find("token 3") != std::string::npos);
  for (int t = 0; t < 5; ++t) CHECK((w[t] == kPoison && keep[t] == 9));
  CHECK(m.kl == kPoison);
  roll[3] = -0.4;  // the masked token's NaN is never read
  REQUIRE(cgrpo::rollout_correction(rc, 2, rows, mask, train, roll, w, keep, &m).ok());
  CHECK(w[2] == kPoison);
  CHECK(keep[2] == 9);
  CHECK(w[0] == std::exp(-1.0 - -1.1));
}
