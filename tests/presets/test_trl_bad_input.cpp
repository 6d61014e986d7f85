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

#include "reference_trl.hpp"

namespace {

constexpr double kPoison = -12345.5;
const double kInf = std::numeric_limits<double>::infinity();

using Cfg = cgrpo::LossConfig;
using Batch = cgrpo::PolicyLossBatch<double>;
using Code = cgrpo::StatusCode;
using Mutate = std::function<void(Cfg&, Batch&)>;

// A TRL batch (padded, computed weights, rollout and reference log-probs) and the dapo preset with
// the vLLM weight, OPSM, KL and the entropy mask on, so that every TRL field is read.
struct Fixture {
  trl_ref::Batch b;
  std::vector<double> adv;
  Cfg config = cgrpo::trl_dapo();
  Batch batch;
  Fixture() {
    std::mt19937_64 rng = test_seed::fresh_rng();
    b = trl_ref::random_batch(rng, 4, 5, 9, false);
    const int64_t T = b.B * b.L;
    adv.resize(T);
    for (int64_t t = 0; t < T; ++t) adv[t] = b.adv[t / b.L];
    config.sampler.mode = cgrpo::SamplerCorrectionMode::token_truncate;
    config.sampler.max = 2.0;
    config.off_policy_mask_threshold = 0.1;
    config.kl = cgrpo::KlEstimator::k3;
    config.kl_coef = 0.04;
    config.kl_times_ratio = true;
    config.top_entropy_quantile = 0.5;
    config.entropy_coef = 0.01;
    batch.logits = b.logits.data();
    batch.num_tokens = T;
    batch.vocab_size = b.V;
    batch.target_ids = b.tokens.data();
    batch.mask = b.mask.data();
    batch.advantages = adv.data();
    batch.old_logp = b.old_logp.data();
    batch.ref_logp = b.ref_logp.data();
    batch.rollout_logp = b.rollout_logp.data();
    batch.layout = cgrpo::SequenceLayout::padded(b.B, b.L);
  }
};

cgrpo::Status run(Fixture& f, std::vector<double>& grad, cgrpo::LossMetrics& metrics) {
  cgrpo::PolicyLossOutputs<double> out;
  out.grad_logits = grad.data();
  out.metrics = &metrics;
  return cgrpo::cpu::fused_policy_loss(f.config, f.batch, out);
}

void expect_error(const Mutate& mutate, Code code, const std::string& needle) {
  Fixture f;
  mutate(f.config, f.batch);
  std::vector<double> grad(f.b.logits.size(), kPoison);
  cgrpo::LossMetrics metrics;
  metrics.loss = kPoison;
  metrics.sampler.is_ratio_mean = kPoison;
  const cgrpo::Status st = run(f, grad, metrics);
  INFO("wanted '" << needle << "', message: " << st.message);
  CHECK(st.code == code);
  CHECK(std::string(st.message).find(needle) != std::string::npos);
  for (double g : grad) REQUIRE(g == kPoison);
  CHECK(metrics.loss == kPoison);
  CHECK(metrics.sampler.is_ratio_mean == kPoison);
}

void expect_ok(const Mutate& mutate) {
  Fixture f;
  mutate(f.config, f.batch);
  std::vector<double> grad(f.b.logits.size(), kPoison);
  cgrpo::LossMetrics metrics;
  const cgrpo::Status st = run(f, grad, metrics);
  INFO(st.message);
  CHECK(st.ok());
  CHECK(std::isfinite(metrics.loss));
}

}  // namespace

TEST_CASE("TRL bad input: the fixture itself runs", "[errors][trl]") { expect_ok([](Cfg&, Batch&) {}); }

TEST_CASE("TRL bad input: two_sided_delta (TRL's delta)", "[errors][trl]") {
  for (double v : {0.0, -1.0, static_cast<double>(NAN), -kInf})
    expect_error([v](Cfg& c, Batch&) { c.two_sided_delta = v; }, Code::invalid_argument, "config.two_sided_delta");
  expect_error([](Cfg& c, Batch&) {
                 c.policy_loss = cgrpo::PolicyLoss::sapo;
                 c.two_sided_delta = 2.0;
               },
               Code::invalid_argument, "two_sided_delta (TRL's delta) applies to policy_loss ppo_clip");
  expect_error([](Cfg& c, Batch&) {
                 c.two_sided_delta = 2.0;
                 c.dual_clip = true;
               },
               Code::invalid_argument, "config.two_sided_delta (TRL's delta) and config.dual_clip");
  // Below 1 + eps_high is accepted (exact TRL semantics), and so is +inf (off).
  expect_ok([](Cfg& c, Batch&) { c.two_sided_delta = 1.05; });
  expect_ok([](Cfg& c, Batch&) { c.two_sided_delta = kInf; });
}

TEST_CASE("TRL bad input: cispo cap, sapo temperatures, vespo parameters", "[errors][trl]") {
  for (double v : {0.0, -0.5, static_cast<double>(NAN), kInf})
    expect_error([v](Cfg& c, Batch&) {
                   c.policy_loss = cgrpo::PolicyLoss::cispo_cap;
                   c.cispo_ratio_cap = v;
                 },
                 Code::invalid_argument, "config.cispo_ratio_cap");
  for (double v : {0.0, static_cast<double>(NAN), kInf})
    expect_error([v](Cfg& c, Batch&) {
                   c.policy_loss = cgrpo::PolicyLoss::sapo;
                   c.sapo_tau_neg = v;
                 },
                 Code::invalid_argument, "config.sapo_tau_pos and sapo_tau_neg");
  for (double v : {static_cast<double>(NAN), kInf})
    expect_error([v](Cfg& c, Batch&) {
                   c.policy_loss = cgrpo::PolicyLoss::vespo;
                   c.vespo_lambda_neg = v;
                 },
                 Code::invalid_argument, "config.vespo_k_pos/k_neg/lambda_pos/lambda_neg");
  // TRL floors lambda at 1e-4 rather than rejecting it: accepted.
  expect_ok([](Cfg& c, Batch&) {
    c.policy_loss = cgrpo::PolicyLoss::vespo;
    c.vespo_lambda_pos = -3;
  });
}

TEST_CASE("TRL bad input: the vLLM weight (config.sampler)", "[errors][trl]") {
  expect_error([](Cfg& c, Batch&) { c.sampler.mode = static_cast<cgrpo::SamplerCorrectionMode>(5); },
               Code::invalid_argument, "config.sampler.mode");
  expect_error([](Cfg& c, Batch&) { c.sampler.min = -0.1; }, Code::invalid_argument, "config.sampler");
  expect_error([](Cfg& c, Batch&) { c.sampler.min = 3.0; }, Code::invalid_argument, "min <= max");
  expect_error([](Cfg& c, Batch&) { c.sampler.min = kInf; }, Code::invalid_argument, "config.sampler");
  expect_error([](Cfg& c, Batch&) { c.sampler.max = static_cast<double>(NAN); }, Code::invalid_argument,
               "config.sampler");
  expect_error([](Cfg& c, Batch&) {
                 c.rollout.mode = cgrpo::RolloutCorrectionMode::decoupled;
                 c.off_policy_mask_threshold = kInf;
               },
               Code::invalid_argument, "config.sampler (TRL) and config.rollout (verl)");
  expect_error([](Cfg& c, Batch&) {
                 c.policy_loss = cgrpo::PolicyLoss::vespo;
                 c.sampler.mode = cgrpo::SamplerCorrectionMode::sequence_mask;
               },
               Code::invalid_argument, "config.sampler.mode = sequence_mask: vespo");
  expect_error([](Cfg&, Batch& b) { b.rollout_logp = nullptr; }, Code::invalid_argument, "needs rollout_logp");
  // rollout_logp is read at valid tokens only.
  expect_error([](Cfg&, Batch& b) { const_cast<double*>(b.rollout_logp)[0] = NAN; }, Code::non_finite,
               "rollout_logp[0]");
  expect_ok([](Cfg&, Batch& b) {
    for (int64_t t = 0; t < b.num_tokens; ++t)
      if (!b.mask[t]) const_cast<double*>(b.rollout_logp)[t] = NAN;
  });
  // min = max is a band of one value; max = inf with min = 0 is "no bounds".
  expect_ok([](Cfg& c, Batch&) { c.sampler.min = c.sampler.max = 1.0; });
  expect_ok([](Cfg& c, Batch&) {
    c.sampler.min = 0;
    c.sampler.max = kInf;
  });
}

TEST_CASE("TRL bad input: OPSM threshold and its rollout_logp", "[errors][trl]") {
  expect_error([](Cfg& c, Batch&) { c.off_policy_mask_threshold = static_cast<double>(NAN); },
               Code::invalid_argument, "config.off_policy_mask_threshold");
  expect_error([](Cfg& c, Batch&) { c.off_policy_mask_threshold = -kInf; }, Code::invalid_argument,
               "config.off_policy_mask_threshold");
  expect_error([](Cfg& c, Batch&) {
                 c.sampler.mode = cgrpo::SamplerCorrectionMode::none;
                 c.rollout.mode = cgrpo::RolloutCorrectionMode::decoupled;
               },
               Code::invalid_argument, "config.off_policy_mask_threshold (TRL's OPSM) and config.rollout");
  // OPSM alone reads rollout_logp when it is given (TRL: the sampler's log-probs), old_logp otherwise.
  expect_error([](Cfg& c, Batch& b) {
                 c.sampler.mode = cgrpo::SamplerCorrectionMode::none;
                 const_cast<double*>(b.rollout_logp)[0] = INFINITY;
               },
               Code::non_finite, "rollout_logp[0]");
  expect_ok([](Cfg& c, Batch& b) {
    c.sampler.mode = cgrpo::SamplerCorrectionMode::none;
    b.rollout_logp = nullptr;
  });
  expect_ok([](Cfg& c, Batch&) { c.off_policy_mask_threshold = -0.5; });  // any real number
}

TEST_CASE("TRL bad input: top_entropy_quantile, and weights the loss must compute", "[errors][trl]") {
  for (double v : {-0.01, 1.01, static_cast<double>(NAN)})
    expect_error([v](Cfg& c, Batch&) { c.top_entropy_quantile = v; }, Code::invalid_argument,
                 "config.top_entropy_quantile");
  expect_ok([](Cfg& c, Batch&) { c.top_entropy_quantile = 0.0; });  // TRL: keeps the highest H only
  // The entropy mask changes the denominators: caller weights are refused.
  expect_error([](Cfg&, Batch& b) {
                 static std::vector<double> w;
                 w.assign(static_cast<size_t>(b.num_tokens), 0.01);
                 b.pg_weights = b.entropy_weights = b.kl_weights = w.data();
               },
               Code::invalid_argument, "top_entropy_quantile");
}

TEST_CASE("TRL bad input: kl_times_ratio (use_bias_correction_kl) and the sequence level", "[errors][trl]") {
  expect_error([](Cfg& c, Batch&) {
                 c.kl = cgrpo::KlEstimator::none;
                 c.kl_coef = 0;
               },
               Code::invalid_argument, "kl_times_ratio need a KL estimator");
  expect_error([](Cfg& c, Batch&) { c.policy_loss = cgrpo::PolicyLoss::gpg; }, Code::invalid_argument,
               "config.kl_times_ratio needs a ratio-based policy_loss");
  expect_error([](Cfg& c, Batch&) {
                 c.kl_times_ratio = false;
                 c.policy_loss = cgrpo::PolicyLoss::gpg;
                 c.ratio_level = cgrpo::RatioLevel::sequence;
               },
               Code::invalid_argument, "config.ratio_level = sequence needs a ratio-based policy_loss");
  // vespo has a ratio for the KL (TRL allows both), at either level.
  expect_ok([](Cfg& c, Batch&) { c.policy_loss = cgrpo::PolicyLoss::vespo; });
  expect_ok([](Cfg& c, Batch&) {
    c.policy_loss = cgrpo::PolicyLoss::vespo;
    c.ratio_level = cgrpo::RatioLevel::sequence;
  });
  // The sequence level needs the rows.
  expect_error([](Cfg& c, Batch& b) {
                 c.ratio_level = cgrpo::RatioLevel::sequence;
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
  auto expect = [&](Code code, const std::string& needle, const std::function<cgrpo::Status(double*, double*)>& call) {
    std::vector<double> a(4, kPoison), R(4, kPoison);
    const cgrpo::Status st = call(a.data(), R.data());
    INFO("wanted '" << needle << "', message: " << st.message);
    CHECK(st.code == code);
    CHECK(std::string(st.message).find(needle) != std::string::npos);
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
  const cgrpo::Status st = cgrpo::trl_advantages(E::grpo, groups, 2, shared.data(), w, 1e-4, shared.data() + 2);
  CHECK(st.code == Code::invalid_argument);
  CHECK(std::string(st.message).find("advantages") != std::string::npos);
  for (double v : shared) CHECK(v == 1.0);
}

TEST_CASE("TRL bad input: top_entropy_mask and sampler_correction on their own", "[errors][trl]") {
  std::vector<double> H = {1.0, 2.0, 0.5, 3.0};
  std::vector<uint8_t> mask = {1, 1, 0, 1};
  auto expect = [&](Code code, const std::string& needle, const std::function<cgrpo::Status(uint8_t*)>& call) {
    std::vector<uint8_t> keep(4, 77);
    const cgrpo::Status st = call(keep.data());
    INFO("wanted '" << needle << "', message: " << st.message);
    CHECK(st.code == code);
    CHECK(std::string(st.message).find(needle) != std::string::npos);
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
  const cgrpo::Status st = cgrpo::top_entropy_mask(4, m2.data(), H.data(), 0.5, m2.data());
  CHECK(st.code == Code::invalid_argument);
  CHECK(std::string(st.message).find("keep") != std::string::npos);
  CHECK(m2 == mask);

  // sampler_correction with the weight on and no rollout_logp.
  cgrpo::LossConfig c = cgrpo::trl_dapo();
  c.sampler.mode = cgrpo::SamplerCorrectionMode::token_mask;
  const auto layout = cgrpo::SequenceLayout::padded(1, 4);
  const cgrpo::cpu::RowBounds rows{&layout, 4};
  std::vector<double> lp = {-1, -2, -1, -3}, adv(4, 1.0), factor(4, 1.0), phi(1, kPoison);
  cgrpo::SamplerMetrics m;
  m.is_ratio_mean = kPoison;
  const cgrpo::Status s2 = cgrpo::sampler_correction(c, 1, rows, mask.data(), lp.data(), lp.data(), nullptr, adv.data(),
                                                     factor.data(), phi.data(), &m);
  CHECK(s2.code == Code::invalid_argument);
  CHECK(std::string(s2.message).find("rollout_logp") != std::string::npos);
  CHECK(m.is_ratio_mean == kPoison);
  for (double v : factor) CHECK(v == 1.0);
}

TEST_CASE("TRL bad input: an empty batch with a layout of non-empty rows is refused, reading nothing", "[errors][trl]") {
  // An empty batch still has its layout checked (found by fuzz_trl: the row passes once followed
  // the layout's rows past T, an out-of-bounds read of the term bits); under ASan a read past the
  // empty arrays would stop the test.
  for (int level = 0; level < 2; ++level) {
    cgrpo::LossConfig c = cgrpo::trl_grpo();
    c.ratio_level = level ? cgrpo::RatioLevel::sequence : cgrpo::RatioLevel::token;
    c.off_policy_mask_threshold = 0.1;
    cgrpo::PolicyLossBatch<double> b;
    b.num_tokens = 0;
    b.vocab_size = 5;
    b.layout = cgrpo::SequenceLayout::padded(2, 4);
    cgrpo::LossMetrics m;
    m.loss = kPoison;
    cgrpo::PolicyLossOutputs<double> out;
    out.metrics = &m;
    const cgrpo::Status st = cgrpo::cpu::fused_policy_loss(c, b, out);
    INFO(st.message);
    CHECK(st.code == Code::invalid_argument);
    CHECK(std::string(st.message).find("layout") != std::string::npos);
    CHECK(m.loss == kPoison);
  }
}
