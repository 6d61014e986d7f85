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

#include "expect_error.hpp"
#include "reference.hpp"

namespace {

constexpr double kPoison = support::kPoison;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

using Cfg = cgrpo::LossConfig;
using Batch = cgrpo::PolicyLossBatch<double>;
using Out = cgrpo::PolicyLossOutputs<double>;
using Code = cgrpo::StatusCode;
using Mutate = std::function<void(Cfg&, Batch&, Out&)>;

// A verl batch (every token initial, rollout log-probs near old_logp) with decoupled token IS and a
// token_k1 rejection, weights computed by the loss. A test's `mutate` breaks one thing in the
// config, the library's view of the batch or the (poisoned) outputs.
struct Fixture {
  ref::Batch b;
  Cfg config;
  Fixture() {
    std::mt19937_64 rng = test_seed::fresh_rng();
    b = ref::random_batch(rng, 5, 6, 30, 2);
    for (auto& k : b.kinds) k = cgrpo::kInitial;
    std::normal_distribution<double> noise(0.0, 0.2);
    for (int64_t t = 0; t < b.T; ++t) b.rollout_logp[t] = b.old_logp[t] + noise(rng);
    config = cgrpo::verl_decoupled(cgrpo::verl_grpo(), cgrpo::RolloutIsLevel::token).loss;
    config.entropy.coef = 0.01;
    REQUIRE(cgrpo::verl_rollout_rs("token_k1", "0.8_1.25", &config.off_policy.rollout).ok());
  }
  int64_t grad_entries() const { return static_cast<int64_t>(b.logits.size()); }
};

// The status is `code`, its message holds every needle, and no output was written
// (support::expect_error: gradient, log p, H, policy factor, terms, metrics).
void expect_error(const Mutate& mutate, Code code, std::initializer_list<const char*> needles) {
  Fixture f;
  ref::LibraryBatch<double> lb(f.b, f.config, support::Weights::computed);
  support::expect_error<double>(
      f.b.T, f.grad_entries(),
      [&](support::PoisonedOutputs<double>& o) {
        mutate(f.config, lb.view, o.out);
        return cgrpo::cpu::fused_policy_loss(f.config, lb.view, o.out);
      },
      code, needles);
}

void expect_ok(const Mutate& mutate) {
  Fixture f;
  ref::LibraryBatch<double> lb(f.b, f.config, support::Weights::computed);
  support::PoisonedOutputs<double> o(f.b.T, f.grad_entries());
  mutate(f.config, lb.view, o.out);
  const cgrpo::Status st = cgrpo::cpu::fused_policy_loss(f.config, lb.view, o.out);
  INFO("message: " << st.message);
  CHECK(st.ok());
  CHECK(std::isfinite(o.metrics.loss));
}

}  // namespace

TEST_CASE("verl bad input: rollout_logp missing or not finite where a mode reads it", "[errors][verl]") {
  expect_ok([](Cfg&, Batch&, Out&) {});
  expect_error([](Cfg&, Batch& b, Out&) { b.rollout_logp = nullptr; }, Code::invalid_argument,
               {"config.off_policy.rollout needs rollout_logp"});
  expect_error([](Cfg& c, Batch& b, Out&) {
    c = cgrpo::verl_bypass_reinforce().loss;
    b.rollout_logp = nullptr;
  }, Code::invalid_argument, {"config.off_policy.rollout needs rollout_logp"});
  expect_error([](Cfg& c, Batch& b, Out&) {
    c = cgrpo::verl_bypass_ppo_clip().loss;  // metrics only: still reads rollout_logp (the ratio's reference)
    b.rollout_logp = nullptr;
  }, Code::invalid_argument, {"config.off_policy.rollout needs rollout_logp"});
  for (double bad : {kNaN, kInf, -kInf}) {
    expect_error([bad](Cfg&, Batch& b, Out&) {
      const_cast<uint8_t*>(b.mask)[3] = 1;  // a valid token: its rollout_logp is read
      const_cast<double*>(b.rollout_logp)[3] = bad;
    }, Code::non_finite, {"rollout_logp[3]"});
    expect_error([bad](Cfg& c, Batch& b, Out&) {
      c = cgrpo::verl_bypass_reinforce().loss;
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
    c = cgrpo::verl_bypass_reinforce().loss;
    b.old_logp = nullptr;
  });
}

TEST_CASE("verl bad input: IS and rejection thresholds out of range", "[errors][verl]") {
  for (double bad : {0.0, -1.0, kNaN})
    expect_error([bad](Cfg& c, Batch&, Out&) { c.off_policy.rollout.is_threshold = bad; }, Code::invalid_argument,
                 {"config.off_policy.rollout.is_threshold"});
  expect_ok([](Cfg& c, Batch&, Out&) { c.off_policy.rollout.is_threshold = kInf; });  // no truncation
  for (double bad : {0.0, -0.5, kNaN, kInf})
    expect_error([bad](Cfg& c, Batch&, Out&) { c.off_policy.rollout.rejection[0].upper = bad; }, Code::invalid_argument,
                 {"config.off_policy.rollout.rejection[0].upper"});
  expect_error([](Cfg& c, Batch&, Out&) { c.off_policy.rollout.rejection[0].lower = 2.0; }, Code::invalid_argument,
               {"config.off_policy.rollout.rejection[0]", "token_k1", "lower <= upper"});
  expect_error([](Cfg& c, Batch&, Out&) { c.off_policy.rollout.rejection[0].lower = -0.1; }, Code::invalid_argument,
               {"config.off_policy.rollout.rejection[0]"});
  expect_error([](Cfg& c, Batch&, Out&) { c.off_policy.rollout.rejection[0].upper = 0.5; }, Code::invalid_argument,
               {"config.off_policy.rollout.rejection[0]", "token_k1"});  // lower 0.8 > upper
  expect_error([](Cfg& c, Batch&, Out&) {
    c.off_policy.rollout.rejection[0].statistic = cgrpo::RejectionStatistic::seq_mean_k3;
  }, Code::invalid_argument, {"config.off_policy.rollout.rejection[0]", "seq_mean_k3", "upper threshold only"});
  expect_error([](Cfg& c, Batch&, Out&) {
    c.off_policy.rollout.rejection[0].statistic = static_cast<cgrpo::RejectionStatistic>(11);
  }, Code::invalid_argument, {"config.off_policy.rollout.rejection[0].statistic"});
  expect_error([](Cfg& c, Batch&, Out&) { c.off_policy.rollout.num_rejection_options = 5; }, Code::invalid_argument,
               {"config.off_policy.rollout.num_rejection_options"});
  expect_error([](Cfg& c, Batch&, Out&) { c.off_policy.rollout.num_rejection_options = -1; }, Code::invalid_argument,
               {"config.off_policy.rollout.num_rejection_options"});
  expect_error([](Cfg& c, Batch&, Out&) { c.off_policy.rollout.mode = static_cast<cgrpo::RolloutCorrectionMode>(3); },
               Code::invalid_argument, {"config.off_policy.rollout.mode"});
  expect_error([](Cfg& c, Batch&, Out&) { c.off_policy.rollout.is_level = static_cast<cgrpo::RolloutIsLevel>(7); },
               Code::invalid_argument, {"config.off_policy.rollout.is_level"});
}

TEST_CASE("verl bad input: combinations verl does not define", "[errors][verl]") {
  expect_error([](Cfg& c, Batch&, Out&) { c.off_policy.rollout.mode = cgrpo::RolloutCorrectionMode::none; },
               Code::invalid_argument, {"config.off_policy.rollout", "rollout.mode"});
  expect_error([](Cfg& c, Batch&, Out&) {
    c.off_policy.rollout.is_level = cgrpo::RolloutIsLevel::none;
    c.off_policy.rollout.is_batch_normalize = true;
  }, Code::invalid_argument, {"config.off_policy.rollout.is_batch_normalize"});
  expect_error([](Cfg& c, Batch&, Out&) {
    c.policy.loss = cgrpo::PolicyLoss::cispo;
    c.ratio.dual_clip = false;
    c.off_policy.rollout.mode = cgrpo::RolloutCorrectionMode::bypass;
  }, Code::invalid_argument, {"config.off_policy.rollout.mode = bypass", "cispo"});
  expect_error([](Cfg& c, Batch&, Out&) {
    c = cgrpo::verl_bypass_ppo_clip().loss;
    c.ratio.level = cgrpo::RatioLevel::sequence_detached;
    c.aggregation.policy = cgrpo::Aggregation::seq_mean_token_mean;  // the level's own aggregation
  }, Code::invalid_argument, {"config.off_policy.rollout.mode = bypass", "ratio.level must be token"});
  expect_error([](Cfg& c, Batch&, Out&) {
    c.policy.loss = cgrpo::PolicyLoss::reinforce;
    c.ratio.dual_clip = false;
  }, Code::invalid_argument,
               {"config.policy.loss = reinforce", "verl's bypass-mode loss", "off_policy.rollout.mode = bypass"});
  expect_error([](Cfg& c, Batch&, Out&) { c.off_policy.sampler.mode = cgrpo::SamplerCorrectionMode::token_truncate; },
               Code::invalid_argument, {"config.off_policy.sampler", "config.off_policy.rollout"});
  expect_error([](Cfg& c, Batch&, Out&) { c.ratio.dual_clip = true, c.policy.loss = cgrpo::PolicyLoss::cispo; },
               Code::invalid_argument, {"config.ratio.dual_clip", "cispo"});
  expect_error([](Cfg& c, Batch&, Out&) {
    c.kl.estimator = cgrpo::KlEstimator::none, c.kl.coef = 0, c.kl.straight_through = true;
  }, Code::invalid_argument, {"config.kl.straight_through"});
  // Rejection changes the denominators: the caller's weights cannot know them.
  expect_error([](Cfg&, Batch& b, Out&) {
    static std::vector<double> w(1000, 0.01);
    b.pg_weights = b.entropy_weights = b.kl_weights = w.data();
  }, Code::invalid_argument, {"config.off_policy.rollout rejection", "pg_weights"});
  // geo_mean computes its per-row weights itself.
  expect_error([](Cfg& c, Batch& b, Out&) {
    c = cgrpo::verl_gmpo().loss;
    static std::vector<double> w(1000, 0.01);
    b.pg_weights = b.entropy_weights = w.data();
  }, Code::invalid_argument, {"config.policy.loss = geo_mean", "pg_weights"});
  // geo_mean, sapo and verl's GSPO aggregate their policy term seq-mean-token-mean whatever
  // loss_agg_mode says: another mode is refused by name, never overridden.
  expect_error([](Cfg& c, Batch&, Out&) {
    c = cgrpo::verl_decoupled(cgrpo::verl_gmpo(), cgrpo::RolloutIsLevel::token).loss;
    c.aggregation.policy = cgrpo::Aggregation::token_mean;
  }, Code::invalid_argument, {"config.aggregation.policy = token-mean", "geo_mean", "seq_mean_token_mean"});
  expect_error([](Cfg& c, Batch&, Out&) {
    c = cgrpo::verl_sapo().loss;
    c.aggregation.policy = cgrpo::Aggregation::seq_mean_token_sum;
  }, Code::invalid_argument, {"config.aggregation.policy = seq-mean-token-sum", "sapo"});
  expect_error([](Cfg& c, Batch&, Out&) {
    c = cgrpo::verl_gspo().loss;
    c.aggregation.policy = cgrpo::Aggregation::seq_mean_token_sum_norm;
  }, Code::invalid_argument, {"config.aggregation.policy = seq-mean-token-sum-norm", "sequence_detached"});
}

TEST_CASE("verl bad input: policy-loss parameters out of range", "[errors][verl]") {
  // cispo's band may open below (verl's recipe: eps_low 10); ppo_clip's may not.
  expect_ok([](Cfg& c, Batch&, Out&) {
    c = cgrpo::verl_decoupled(cgrpo::verl_cispo(), cgrpo::RolloutIsLevel::token).loss;
  });
  expect_error([](Cfg& c, Batch&, Out&) { c.ratio.clip_eps_low = 1.0; }, Code::invalid_argument,
               {"config.ratio.clip_eps_low"});
  expect_error([](Cfg& c, Batch&, Out&) { c = cgrpo::verl_cispo().loss, c.ratio.clip_eps_low = -0.1; },
               Code::invalid_argument, {"config.ratio.clip_eps_low"});
  expect_error([](Cfg& c, Batch&, Out&) { c = cgrpo::verl_cispo().loss, c.ratio.clip_eps_high = kNaN; },
               Code::invalid_argument, {"config.ratio.clip_eps_high"});
  for (double bad : {0.0, -1.0, kNaN, kInf})
    expect_error([bad](Cfg& c, Batch&, Out&) { c = cgrpo::verl_sapo().loss, c.policy.sapo.tau_neg = bad; },
                 Code::invalid_argument, {"config.policy.sapo.tau_pos and tau_neg"});
  for (double bad : {0.0, -0.1, 1.5, kNaN})
    expect_error([bad](Cfg& c, Batch&, Out&) { c = cgrpo::verl_kl_cov().loss, c.policy.kl_cov.ratio = bad; },
                 Code::invalid_argument, {"config.policy.kl_cov.ratio"});
  for (double bad : {0.0, -0.1, 1.5, kNaN})
    expect_error([bad](Cfg& c, Batch&, Out&) { c = cgrpo::verl_clip_cov().loss, c.policy.clip_cov.ratio = bad; },
                 Code::invalid_argument, {"config.policy.clip_cov.ratio"});
  expect_error([](Cfg& c, Batch&, Out&) { c = cgrpo::verl_kl_cov().loss, c.policy.kl_cov.coef = kInf; },
               Code::invalid_argument, {"config.policy.kl_cov.coef"});
  expect_error([](Cfg& c, Batch&, Out&) { c = cgrpo::verl_clip_cov().loss, c.policy.clip_cov.lower = 5.0; },
               Code::invalid_argument, {"config.policy.clip_cov.lower"});
  expect_error([](Cfg& c, Batch&, Out&) { c = cgrpo::verl_gmpo().loss, c.ratio.clip_eps_high = kInf; },
               Code::invalid_argument, {"config.ratio.clip_eps_high"});
  expect_error([](Cfg& c, Batch&, Out&) {
    c = cgrpo::verl_gmpo().loss;
    c.ratio.level = cgrpo::RatioLevel::sequence_detached;
  }, Code::invalid_argument, {"geo_mean", "ratio.level"});
  expect_error([](Cfg& c, Batch& b, Out&) {
    c = cgrpo::verl_clip_cov().loss;
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
