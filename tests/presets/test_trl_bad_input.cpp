// Bad input for TRL's fields and entry points: each error names the field, and every output is left
// exactly as it was (poisoned before, checked after). The accepted edge values are run too.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <cgrpo/cgrpo.hpp>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "batch.hpp"
#include "expect_error.hpp"
#include "reference_trl.hpp"

namespace {

constexpr double kPoison = support::kPoison;
const double kInf = std::numeric_limits<double>::infinity();

using Cfg = cgrpo::LossConfig;
using Batch = cgrpo::PolicyLossBatch<double>;
using Code = cgrpo::StatusCode;
using Mutate = std::function<void(Cfg&, Batch&)>;

// A TRL batch (padded, computed weights, rollout and reference log-probs) and the dapo preset with
// the vLLM weight, OPSM, KL and the entropy mask on, so that every TRL field is read. A test's
// `mutate` breaks one thing in the config or the library's view of the batch.
struct Fixture {
  support::Batch b;
  Cfg config = cgrpo::trl_dapo().loss;
  Fixture() {
    std::mt19937_64 rng = test_seed::fresh_rng();
    b = trl_ref::to_support_batch(trl_ref::random_batch(rng, 4, 5, 9, false));
    config.off_policy.sampler.mode = cgrpo::SamplerCorrectionMode::token_truncate;
    config.off_policy.sampler.max = 2.0;
    config.off_policy.opsm_threshold = 0.1;
    config.kl.estimator = cgrpo::KlEstimator::k3;
    config.kl.coef = 0.04;
    config.kl.times_ratio = true;
    config.entropy_mask.top_quantile = 0.5;
    config.entropy.coef = 0.01;
  }
  int64_t grad_entries() const { return static_cast<int64_t>(b.logits.size()); }
};

// The status is `code`, its message holds the needle, and no output was written
// (support::expect_error: gradient, log p, H, policy factor, terms, metrics).
void expect_error(const Mutate& mutate, Code code, const char* needle) {
  Fixture f;
  support::LibraryBatch<double> lb(f.b, f.config, support::Weights::computed);
  support::expect_error<double>(
      f.b.T, f.grad_entries(),
      [&](support::PoisonedOutputs<double>& o) {
        mutate(f.config, lb.view);
        return cgrpo::cpu::fused_policy_loss(f.config, lb.view, o.out);
      },
      code, {needle});
}

void expect_ok(const Mutate& mutate) {
  Fixture f;
  support::LibraryBatch<double> lb(f.b, f.config, support::Weights::computed);
  mutate(f.config, lb.view);
  support::PoisonedOutputs<double> o(f.b.T, f.grad_entries());
  const cgrpo::Status st = cgrpo::cpu::fused_policy_loss(f.config, lb.view, o.out);
  INFO(st.message);
  CHECK(st.ok());
  CHECK(std::isfinite(o.metrics.loss));
}

}  // namespace

TEST_CASE("TRL bad input: the fixture itself runs", "[errors][trl]") { expect_ok([](Cfg&, Batch&) {}); }

TEST_CASE("TRL bad input: two_sided_delta (TRL's delta)", "[errors][trl]") {
  for (double v : {0.0, -1.0, static_cast<double>(NAN), -kInf})
    expect_error([v](Cfg& c, Batch&) { c.ratio.two_sided_delta = v; }, Code::invalid_argument,
                 "config.ratio.two_sided_delta");
  expect_error([](Cfg& c, Batch&) {
                 c.policy.loss = cgrpo::PolicyLoss::sapo;
                 c.aggregation.policy = c.aggregation.kl = cgrpo::Aggregation::seq_mean_token_mean;  // sapo's own
                 c.ratio.two_sided_delta = 2.0;
               },
               Code::invalid_argument, "config.ratio.two_sided_delta (TRL's delta) applies to policy loss ppo_clip");
  expect_error([](Cfg& c, Batch&) {
                 c.ratio.two_sided_delta = 2.0;
                 c.ratio.dual_clip = true;
               },
               Code::invalid_argument, "config.ratio.two_sided_delta (TRL's delta) and config.ratio.dual_clip");
  // Below 1 + eps_high is accepted (exact TRL semantics), and so is +inf (off).
  expect_ok([](Cfg& c, Batch&) { c.ratio.two_sided_delta = 1.05; });
  expect_ok([](Cfg& c, Batch&) { c.ratio.two_sided_delta = kInf; });
}

TEST_CASE("TRL bad input: cispo cap, sapo temperatures, vespo parameters", "[errors][trl]") {
  for (double v : {0.0, -0.5, static_cast<double>(NAN), kInf})
    expect_error([v](Cfg& c, Batch&) {
                   c.policy.loss = cgrpo::PolicyLoss::cispo_cap;
                   c.policy.cispo_cap.ratio_cap = v;
                 },
                 Code::invalid_argument, "config.policy.cispo_cap.ratio_cap");
  for (double v : {0.0, static_cast<double>(NAN), kInf})
    expect_error([v](Cfg& c, Batch&) {
                   c.policy.loss = cgrpo::PolicyLoss::sapo;
                   c.aggregation.policy = c.aggregation.kl = cgrpo::Aggregation::seq_mean_token_mean;  // sapo's own
                   c.policy.sapo.tau_neg = v;
                 },
                 Code::invalid_argument, "config.policy.sapo.tau_pos and tau_neg");
  // sapo aggregates its policy term seq-mean-token-mean (TRL's sapo and verl's): dapo's token-mean
  // is refused by name, not overridden.
  expect_error([](Cfg& c, Batch&) { c.policy.loss = cgrpo::PolicyLoss::sapo; }, Code::invalid_argument,
               "config.aggregation.policy = token-mean: sapo always aggregates its policy term as seq-mean-token-mean");
  for (double v : {static_cast<double>(NAN), kInf})
    expect_error([v](Cfg& c, Batch&) {
                   c.policy.loss = cgrpo::PolicyLoss::vespo;
                   c.policy.vespo.lambda_neg = v;
                 },
                 Code::invalid_argument, "config.policy.vespo.k_pos/k_neg/lambda_pos/lambda_neg");
  // TRL floors lambda at 1e-4 rather than rejecting it: accepted.
  expect_ok([](Cfg& c, Batch&) {
    c.policy.loss = cgrpo::PolicyLoss::vespo;
    c.policy.vespo.lambda_pos = -3;
  });
}

TEST_CASE("TRL bad input: the vLLM weight (config.off_policy.sampler)", "[errors][trl]") {
  expect_error([](Cfg& c, Batch&) { c.off_policy.sampler.mode = static_cast<cgrpo::SamplerCorrectionMode>(5); },
               Code::invalid_argument, "config.off_policy.sampler.mode");
  expect_error([](Cfg& c, Batch&) { c.off_policy.sampler.min = -0.1; }, Code::invalid_argument,
               "config.off_policy.sampler");
  expect_error([](Cfg& c, Batch&) { c.off_policy.sampler.min = 3.0; }, Code::invalid_argument, "min <= max");
  expect_error([](Cfg& c, Batch&) { c.off_policy.sampler.min = kInf; }, Code::invalid_argument, "config.off_policy.sampler");
  expect_error([](Cfg& c, Batch&) { c.off_policy.sampler.max = static_cast<double>(NAN); }, Code::invalid_argument,
               "config.off_policy.sampler");
  expect_error([](Cfg& c, Batch&) {
                 c.off_policy.rollout.mode = cgrpo::RolloutCorrectionMode::decoupled;
                 c.off_policy.opsm_threshold = kInf;
               },
               Code::invalid_argument, "config.off_policy.sampler (TRL) and config.off_policy.rollout (verl)");
  expect_error([](Cfg& c, Batch&) {
                 c.policy.loss = cgrpo::PolicyLoss::vespo;
                 c.off_policy.sampler.mode = cgrpo::SamplerCorrectionMode::sequence_mask;
               },
               Code::invalid_argument, "config.off_policy.sampler.mode = sequence_mask: vespo");
  expect_error([](Cfg&, Batch& b) { b.rollout_logp = nullptr; }, Code::invalid_argument,
               "config.off_policy.sampler needs rollout_logp");
  // rollout_logp is read at valid tokens only.
  expect_error([](Cfg&, Batch& b) { const_cast<double*>(b.rollout_logp)[0] = NAN; }, Code::non_finite,
               "rollout_logp[0]");
  expect_ok([](Cfg&, Batch& b) {
    for (int64_t t = 0; t < b.num_tokens; ++t)
      if (!b.mask[t]) const_cast<double*>(b.rollout_logp)[t] = NAN;
  });
  // min = max is a band of one value; max = inf with min = 0 is "no bounds".
  expect_ok([](Cfg& c, Batch&) { c.off_policy.sampler.min = c.off_policy.sampler.max = 1.0; });
  expect_ok([](Cfg& c, Batch&) {
    c.off_policy.sampler.min = 0;
    c.off_policy.sampler.max = kInf;
  });
}

TEST_CASE("TRL bad input: OPSM threshold and its rollout_logp", "[errors][trl]") {
  expect_error([](Cfg& c, Batch&) { c.off_policy.opsm_threshold = static_cast<double>(NAN); },
               Code::invalid_argument, "config.off_policy.opsm_threshold");
  expect_error([](Cfg& c, Batch&) { c.off_policy.opsm_threshold = -kInf; }, Code::invalid_argument,
               "config.off_policy.opsm_threshold");
  expect_error([](Cfg& c, Batch&) {
                 c.off_policy.sampler.mode = cgrpo::SamplerCorrectionMode::none;
                 c.off_policy.rollout.mode = cgrpo::RolloutCorrectionMode::decoupled;
               },
               Code::invalid_argument, "config.off_policy.opsm_threshold (TRL's OPSM) and config.off_policy.rollout");
  // OPSM alone reads rollout_logp when it is given (TRL: the sampler's log-probs), old_logp otherwise.
  expect_error([](Cfg& c, Batch& b) {
                 c.off_policy.sampler.mode = cgrpo::SamplerCorrectionMode::none;
                 const_cast<double*>(b.rollout_logp)[0] = INFINITY;
               },
               Code::non_finite, "rollout_logp[0]");
  expect_ok([](Cfg& c, Batch& b) {
    c.off_policy.sampler.mode = cgrpo::SamplerCorrectionMode::none;
    b.rollout_logp = nullptr;
  });
  expect_ok([](Cfg& c, Batch&) { c.off_policy.opsm_threshold = -0.5; });  // any real number
}

TEST_CASE("TRL bad input: entropy_mask.top_quantile (top_entropy_quantile), and weights the loss must compute", "[errors][trl]") {
  for (double v : {-0.01, 1.01, static_cast<double>(NAN)})
    expect_error([v](Cfg& c, Batch&) { c.entropy_mask.top_quantile = v; }, Code::invalid_argument,
                 "config.entropy_mask.top_quantile");
  expect_ok([](Cfg& c, Batch&) { c.entropy_mask.top_quantile = 0.0; });  // TRL: keeps the highest H only
  // The entropy mask changes the denominators: caller weights are refused.
  expect_error([](Cfg&, Batch& b) {
                 static std::vector<double> w;
                 w.assign(static_cast<size_t>(b.num_tokens), 0.01);
                 b.pg_weights = b.entropy_weights = b.kl_weights = w.data();
               },
               Code::invalid_argument, "config.entropy_mask.top_quantile sets the weights' denominators");
}

TEST_CASE("TRL bad input: kl_times_ratio (use_bias_correction_kl) and the sequence level", "[errors][trl]") {
  expect_error([](Cfg& c, Batch&) {
                 c.kl.estimator = cgrpo::KlEstimator::none;
                 c.kl.coef = 0;
               },
               Code::invalid_argument, "config.kl.straight_through and kl.times_ratio need a KL estimator");
  expect_error([](Cfg& c, Batch&) { c.policy.loss = cgrpo::PolicyLoss::gpg; }, Code::invalid_argument,
               "config.kl.times_ratio needs a ratio-based policy loss");
  expect_error([](Cfg& c, Batch&) {
                 c.kl.times_ratio = false;
                 c.policy.loss = cgrpo::PolicyLoss::gpg;
                 c.ratio.level = cgrpo::RatioLevel::sequence;
               },
               Code::invalid_argument, "config.ratio.level = sequence needs a ratio-based policy loss");
  // vespo has a ratio for the KL (TRL allows both), at either level.
  expect_ok([](Cfg& c, Batch&) { c.policy.loss = cgrpo::PolicyLoss::vespo; });
  expect_ok([](Cfg& c, Batch&) {
    c.policy.loss = cgrpo::PolicyLoss::vespo;
    c.ratio.level = cgrpo::RatioLevel::sequence;
  });
  // The sequence level needs the rows.
  expect_error([](Cfg& c, Batch& b) {
                 c.ratio.level = cgrpo::RatioLevel::sequence;
                 b.layout.num_sequences += 1;
               },
               Code::invalid_argument, "layout");
}

TEST_CASE("TRL bad input: trl_advantages names the argument and writes nothing", "[errors][trl]") {
  using E = cgrpo::AdvantageEstimator;
  const int32_t gid[] = {0, 0, 1, 1};
  const cgrpo::GroupAssignment groups{4, gid, 2};
  const double r[] = {1, 0, NAN, 2, 0.5, NAN, 1, 1};  // 2 functions
  const double w[] = {1.0, 0.5};
  // The error (support::check_error) and both outputs untouched.
  auto expect = [&](Code code, const char* needle, const std::function<cgrpo::Status(double*, double*)>& call) {
    std::vector<double> a(4, kPoison), R(4, kPoison);
    support::check_error(call(a.data(), R.data()), code, {needle});
    for (int i = 0; i < 4; ++i) CHECK((a[i] == kPoison && R[i] == kPoison));
  };
  expect(Code::invalid_argument, "num_functions", [&](double* a, double* R) {
    return cgrpo::trl_advantages(E::grpo, groups, 0, r, w, 1e-4, a, R);
  });
  expect(Code::invalid_argument, "scaling", [&](double* a, double* R) {
    return cgrpo::trl_advantages(E::rloo, groups, 2, r, w, 1e-4, a, R);
  });
  expect(Code::invalid_argument, "eps", [&](double* a, double* R) {
    return cgrpo::trl_advantages(E::grpo, groups, 2, r, w, -1e-4, a, R);
  });
  expect(Code::invalid_argument, "must not be null", [&](double* a, double* R) {
    return cgrpo::trl_advantages<double>(E::grpo, groups, 2, nullptr, w, 1e-4, a, R);
  });
  const double inf_r[] = {1, 0, NAN, 2, 0.5, INFINITY, 1, 1};
  expect(Code::non_finite, "rewards_per_function[5]", [&](double* a, double* R) {
    return cgrpo::trl_advantages(E::grpo, groups, 2, inf_r, w, 1e-4, a, R);
  });
  const double nan_w[] = {1.0, NAN};
  expect(Code::non_finite, "reward_weights[1]", [&](double* a, double* R) {
    return cgrpo::trl_advantages(E::grpo, groups, 2, r, nan_w, 1e-4, a, R);
  });
  const int32_t bad_gid[] = {0, 0, 2, 1};
  expect(Code::out_of_range, "group_ids[2]", [&](double* a, double* R) {
    return cgrpo::trl_advantages(E::grpo, cgrpo::GroupAssignment{4, bad_gid, 2}, 2, r, w, 1e-4, a, R);
  });
  expect(Code::invalid_argument, "unknown combination", [&](double* a, double* R) {
    return cgrpo::trl_advantages(E::grpo, groups, 2, r, w, 1e-4, a, R, static_cast<cgrpo::RewardCombination>(9));
  });
  // An output over an input.
  std::vector<double> shared(8, 1.0);
  support::check_error(cgrpo::trl_advantages(E::grpo, groups, 2, shared.data(), w, 1e-4, shared.data() + 2),
                       Code::invalid_argument, {"advantages"});
  for (double v : shared) CHECK(v == 1.0);
}

TEST_CASE("TRL bad input: top_entropy_mask and sampler_correction on their own", "[errors][trl]") {
  std::vector<double> H = {1.0, 2.0, 0.5, 3.0};
  std::vector<uint8_t> mask = {1, 1, 0, 1};
  // The error (support::check_error) and the keep array untouched.
  auto expect = [&](Code code, const char* needle, const std::function<cgrpo::Status(uint8_t*)>& call) {
    std::vector<uint8_t> keep(4, 77);
    support::check_error(call(keep.data()), code, {needle});
    for (uint8_t k : keep) CHECK(k == 77);
  };
  expect(Code::invalid_argument, "top_quantile", [&](uint8_t* k) { return cgrpo::top_entropy_mask(4, mask.data(), H.data(), 1.5, k); });
  expect(Code::invalid_argument, "top_quantile", [&](uint8_t* k) { return cgrpo::top_entropy_mask(4, mask.data(), H.data(), static_cast<double>(NAN), k); });
  expect(Code::invalid_argument, "num_tokens", [&](uint8_t* k) { return cgrpo::top_entropy_mask(-1, mask.data(), H.data(), 0.5, k); });
  expect(Code::invalid_argument, "must not be null", [&](uint8_t* k) { return cgrpo::top_entropy_mask<double>(4, mask.data(), nullptr, 0.5, k); });
  std::vector<uint8_t> bad_mask = {1, 2, 0, 1};
  expect(Code::invalid_argument, "mask[1]", [&](uint8_t* k) { return cgrpo::top_entropy_mask(4, bad_mask.data(), H.data(), 0.5, k); });
  std::vector<double> bad_H = {1.0, NAN, 0.5, 3.0};
  expect(Code::non_finite, "entropy[1]", [&](uint8_t* k) { return cgrpo::top_entropy_mask(4, mask.data(), bad_H.data(), 0.5, k); });
  bad_H = {1.0, 2.0, NAN, 3.0};  // masked: not read
  std::vector<uint8_t> keep(4);
  CHECK(cgrpo::top_entropy_mask(4, mask.data(), bad_H.data(), 0.5, keep.data()).ok());
  // keep over mask: refused, mask unchanged.
  std::vector<uint8_t> m2 = mask;
  support::check_error(cgrpo::top_entropy_mask(4, m2.data(), H.data(), 0.5, m2.data()), Code::invalid_argument,
                       {"keep"});
  CHECK(m2 == mask);

  // sampler_correction with the weight on and no rollout_logp.
  cgrpo::LossConfig c = cgrpo::trl_dapo().loss;
  c.off_policy.sampler.mode = cgrpo::SamplerCorrectionMode::token_mask;
  const auto layout = cgrpo::SequenceLayout::padded(1, 4);
  const cgrpo::cpu::RowBounds rows{&layout, 4};
  std::vector<double> lp = {-1, -2, -1, -3}, adv(4, 1.0), factor(4, 1.0), phi(1, kPoison);
  cgrpo::SamplerMetrics m;
  m.is_ratio_mean = kPoison;
  const cgrpo::Status s2 = cgrpo::sampler_correction(cgrpo::sampler_row_params(c), 1, rows, mask.data(), lp.data(),
                                                     lp.data(), nullptr, adv.data(), factor.data(), phi.data(), &m);
  support::check_error(s2, Code::invalid_argument, {"config.off_policy.sampler needs rollout_logp"});
  CHECK(m.is_ratio_mean == kPoison);
  for (double v : factor) CHECK(v == 1.0);
}

TEST_CASE("TRL bad input: an empty batch with a layout of non-empty rows is refused, reading nothing", "[errors][trl]") {
  // An empty batch still has its layout checked (found by fuzz_trl: the row passes once followed
  // the layout's rows past T, an out-of-bounds read of the term bits); under ASan a read past the
  // empty arrays would stop the test.
  for (int level = 0; level < 2; ++level) {
    cgrpo::LossConfig c = cgrpo::trl_grpo().loss;
    c.ratio.level = level ? cgrpo::RatioLevel::sequence : cgrpo::RatioLevel::token;
    c.off_policy.opsm_threshold = 0.1;
    const support::Batch empty = support::padded_batch(0, 4, 5);  // T = 0: every array empty (null)
    support::LibraryBatch<double> lb(empty, c, support::Weights::computed);
    lb.view.layout = cgrpo::SequenceLayout::padded(2, 4);  // two rows of 4 the batch does not have
    support::expect_error<double>(
        0, 0, [&](support::PoisonedOutputs<double>& o) { return cgrpo::cpu::fused_policy_loss(c, lb.view, o.out); },
        Code::invalid_argument, {"layout"});
  }
}
