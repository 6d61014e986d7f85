// Every validation error of the CPU entry points: the right status code and message,
// and the caller's output buffers left exactly as they were (poisoned before, checked after).
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <cgrpo/cgrpo.hpp>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "batch.hpp"
#include "expect_error.hpp"
#include "reference.hpp"

namespace {

using support::kPoison;

struct Fixture {
  ref::Batch b;
  cgrpo::LossConfig config = cgrpo::verl_grpo().loss;
  Fixture() {
    std::mt19937_64 rng = test_seed::fresh_rng();
    b = ref::random_batch(rng, 5, 6, 40, 2);
    config.entropy.coef = 0.01;
    ref::set_weights(b, config);
  }
};

using Cfg = cgrpo::LossConfig;
using Batch = cgrpo::PolicyLossBatch<double>;
using Out = cgrpo::PolicyLossOutputs<double>;
using Code = cgrpo::StatusCode;
using Workspace = cgrpo::cpu::Workspace;

// Runs the fused loss on the fixture after `mutate` (config, batch view, outputs, workspace) and
// checks that it fails with `code` and a message containing `needle`, and that no output
// (gradient, logp, entropy, policy factor, token terms, metrics: support::PoisonedOutputs; the
// logits themselves when in place) changed.
void expect_error_ws(const std::function<void(Cfg&, Batch&, Out&, Workspace&)>& mutate, Code code,
                     const std::string& needle, bool in_place = false) {
  Fixture f;
  ref::LibraryBatch<double> lb(f.b);
  Workspace ws;
  std::vector<double> logits_mutated;
  support::expect_error<double>(
      f.b.T, in_place ? 0 : static_cast<int64_t>(f.b.logits.size()),
      [&](support::PoisonedOutputs<double>& o) {
        if (in_place) o.out.grad_logits = lb.logits.data();
        mutate(f.config, lb.view, o.out, ws);
        logits_mutated = lb.logits;
        return cgrpo::cpu::fused_policy_loss(f.config, lb.view, o.out, ws);
      },
      code, {needle.c_str()});
  CHECK(std::memcmp(lb.logits.data(), logits_mutated.data(), lb.logits.size() * sizeof(double)) == 0);
}
void expect_error(const std::function<void(Cfg&, Batch&, Out&)>& mutate, Code code, const std::string& needle,
                  bool in_place = false) {
  expect_error_ws([&](Cfg& c, Batch& b, Out& o, Workspace&) { mutate(c, b, o); }, code, needle, in_place);
}

// The old mode-only aggregation_weights: one mode at the paper's conventions
// (AggregationConvention{}), as the policy term of a config that sets nothing else.
template <typename Real>
cgrpo::Status mode_weights(cgrpo::Aggregation mode, const cgrpo::SequenceLayout& layout, const uint8_t* mask,
                           const cgrpo::AggregationScale& scale, Real* w) {
  cgrpo::LossConfig c;
  c.aggregation.policy = mode;
  c.aggregation.convention = cgrpo::AggregationConvention{};
  return cgrpo::aggregation_weights(c, cgrpo::LossTerm::policy, layout, mask, scale, w);
}

}  // namespace

TEST_CASE("bad input: sizes and pointers", "[errors]") {
  expect_error([](Cfg&, Batch& b, Out&) { b.num_tokens = -1; }, Code::invalid_argument, "num_tokens");
  expect_error([](Cfg&, Batch& b, Out&) { b.vocab_size = 0; }, Code::invalid_argument, "vocab_size");
  expect_error([](Cfg&, Batch& b, Out&) { b.row_stride = b.vocab_size - 1; }, Code::invalid_argument, "row_stride");
  expect_error([](Cfg&, Batch& b, Out&) { b.logits = nullptr; }, Code::invalid_argument, "logits");
  expect_error([](Cfg&, Batch& b, Out&) { b.target_ids = nullptr; }, Code::invalid_argument, "target_ids");
  expect_error([](Cfg&, Batch& b, Out&) { b.mask = nullptr; }, Code::invalid_argument, "mask");
  expect_error([](Cfg&, Batch& b, Out&) { b.advantages = nullptr; }, Code::invalid_argument, "advantages");
  expect_error([](Cfg&, Batch& b, Out&) { b.old_logp = nullptr; }, Code::invalid_argument, "old_logp");
  expect_error([](Cfg&, Batch& b, Out&) { b.pg_weights = nullptr; }, Code::invalid_argument, "pg_weights");
  expect_error([](Cfg&, Batch& b, Out&) { b.ref_logp = nullptr; }, Code::invalid_argument, "ref_logp");
  expect_error([](Cfg& c, Batch& b, Out&) { ref::set_clip(c, ref::Clip::sequence); b.layout.num_sequences -= 1; },
               Code::invalid_argument, "layout");
  expect_error([](Cfg&, Batch&, Out& o) { o.grad_row_stride = 3; }, Code::invalid_argument, "grad_row_stride");
  expect_error([](Cfg&, Batch& b, Out& o) { o.grad_logits = const_cast<double*>(b.logits) + 1; },
               Code::invalid_argument, "overlaps");
  expect_error([](Cfg&, Batch& b, Out& o) { o.grad_row_stride = b.stride() + 1; }, Code::invalid_argument,
               "in-place", /*in_place=*/true);
}

// Found by fuzz_fused_loss: validation returned OK for num_tokens = 0 before it looked at the
// layout or the overlaps, so the loss then walked the rows of a layout that covers tokens the
// batch does not have (a read through an empty workspace), and the metrics could be written
// over the layout's offsets.
TEST_CASE("bad input: an empty batch still checks its layout and its overlaps", "[errors]") {
  cgrpo::LossConfig config;  // the paper's seq-mean-token-sum-norm weights walk the layout
  cgrpo::PolicyLossBatch<double> b;
  b.num_tokens = 0;
  b.vocab_size = 4;
  cgrpo::LossMetrics metrics;
  metrics.loss = kPoison;
  cgrpo::PolicyLossOutputs<double> out;
  out.metrics = &metrics;
  for (const auto& layout : {cgrpo::SequenceLayout::padded(3, 5), cgrpo::SequenceLayout::padded(1, 1)}) {
    b.layout = layout;
    const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(config, b, out);
    INFO(s.message);
    CHECK(s.code == Code::invalid_argument);
    CHECK(std::string(s.message).find("layout") != std::string::npos);
    CHECK(metrics.loss == kPoison);
  }
  const int64_t no_rows[1] = {0};
  b.layout = cgrpo::SequenceLayout::packed(0, no_rows);
  CHECK(cgrpo::cpu::fused_policy_loss(config, b, out).ok());  // a layout of no rows: an empty loss
  CHECK(metrics.loss == 0);

  // The metrics written over the offsets they were computed from.
  alignas(cgrpo::LossMetrics) unsigned char memory[sizeof(cgrpo::LossMetrics)];
  std::memset(memory, 0, sizeof memory);  // offsets {0, 0}: one empty row
  b.layout = cgrpo::SequenceLayout::packed(1, reinterpret_cast<const int64_t*>(memory));
  out.metrics = reinterpret_cast<cgrpo::LossMetrics*>(memory);
  unsigned char before[sizeof memory];
  std::memcpy(before, memory, sizeof memory);
  const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(config, b, out);
  INFO(s.message);
  CHECK(s.code == Code::invalid_argument);
  CHECK(std::string(s.message).find("overlaps") != std::string::npos);
  CHECK(std::memcmp(memory, before, sizeof memory) == 0);
}

// Found by fuzz_fused_loss (CI seed 1): an empty batch (its arrays null, as validation allows) with
// rows that hold no tokens was refused by every off-policy correction ("config.off_policy.sampler needs
// rollout_logp", rollout_correction's null arrays), although nothing is read. Every correction
// mode, rows of zero tokens packed and padded, a fresh workspace each time: an empty loss.
TEST_CASE("bad input: an empty batch of empty rows is an empty loss under every correction", "[errors]") {
  std::vector<std::pair<std::string, cgrpo::LossConfig>> configs;
  for (auto mode : {cgrpo::SamplerCorrectionMode::token_truncate, cgrpo::SamplerCorrectionMode::token_mask,
                    cgrpo::SamplerCorrectionMode::sequence_truncate, cgrpo::SamplerCorrectionMode::sequence_mask}) {
    cgrpo::LossConfig c = cgrpo::trl_grpo().loss;
    c.off_policy.sampler = cgrpo::trl_vllm_importance_sampling();
    c.off_policy.sampler.mode = mode;
    configs.emplace_back(std::string("trl_grpo + sampler ") + cgrpo::to_string(mode), c);
  }
  cgrpo::LossConfig opsm = cgrpo::trl_grpo().loss;
  opsm.off_policy.opsm_threshold = 0.5;
  configs.emplace_back("trl_grpo + off-policy mask", opsm);
  configs.emplace_back("trl_vespo", cgrpo::trl_vespo().loss);
  configs.emplace_back("verl_decoupled token",
                       cgrpo::verl_decoupled(cgrpo::verl_grpo(), cgrpo::RolloutIsLevel::token).loss);
  configs.emplace_back("verl_decoupled sequence", cgrpo::verl_decoupled(cgrpo::verl_grpo()).loss);
  cgrpo::LossConfig rejection = cgrpo::verl_decoupled(cgrpo::verl_grpo()).loss;
  REQUIRE(cgrpo::verl_rollout_rs("token_k1,seq_sum_k2", "0.5_2.0,1.0", &rejection.off_policy.rollout).ok());
  configs.emplace_back("verl_decoupled + rejection", rejection);
  configs.emplace_back("verl_bypass_reinforce", cgrpo::verl_bypass_reinforce().loss);
  configs.emplace_back("verl_kl_cov", cgrpo::verl_kl_cov().loss);
  configs.emplace_back("verl_clip_cov", cgrpo::verl_clip_cov().loss);
  const int64_t one_empty_row[2] = {0, 0}, three_empty_rows[4] = {0, 0, 0, 0};
  for (const auto& named : configs) {
    for (const auto& layout : {cgrpo::SequenceLayout::packed(1, one_empty_row),
                               cgrpo::SequenceLayout::packed(3, three_empty_rows), cgrpo::SequenceLayout::padded(2, 0)}) {
      INFO(named.first << ", " << layout.num_sequences << " empty rows");
      cgrpo::PolicyLossBatch<float> b;
      b.num_tokens = 0;
      b.vocab_size = 3;
      b.layout = layout;
      cgrpo::LossMetrics metrics;
      metrics.loss = kPoison;
      cgrpo::PolicyLossOutputs<float> out;
      out.metrics = &metrics;
      const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(named.second, b, out);
      INFO(s.message);
      CHECK(s.ok());
      CHECK(metrics.loss == 0);
      CHECK(metrics.num_valid_tokens == 0);
    }
  }
}

TEST_CASE("bad input: values", "[errors]") {
  expect_error([](Cfg&, Batch& b, Out&) { const_cast<int32_t*>(b.target_ids)[3] = static_cast<int32_t>(b.vocab_size); },
               Code::out_of_range, "target_ids[3]");
  expect_error([](Cfg&, Batch& b, Out&) { const_cast<int32_t*>(b.target_ids)[0] = -1; }, Code::out_of_range,
               "target_ids[0]");
  expect_error([](Cfg&, Batch& b, Out&) { const_cast<double*>(b.logits)[2 * b.stride() + 5] = NAN; },
               Code::non_finite, "logits row 2");
  expect_error([](Cfg&, Batch& b, Out&) { const_cast<double*>(b.logits)[(b.num_tokens - 1) * b.stride()] = INFINITY; },
               Code::non_finite, "logits row", /*in_place=*/true);
  expect_error([](Cfg&, Batch& b, Out&) {
                 const_cast<double*>(b.logits)[3 * b.stride() + b.target_ids[3]] = -INFINITY;
               },
               Code::non_finite, "target_ids[3]", /*in_place=*/true);
  // Values are checked at valid tokens (padding may hold anything: see "masked positions").
  expect_error([](Cfg&, Batch& b, Out&) {
                 const_cast<uint8_t*>(b.mask)[1] = 1;
                 const_cast<double*>(b.advantages)[1] = NAN;
               },
               Code::non_finite, "advantages[1]");
  expect_error([](Cfg&, Batch& b, Out&) {
                 const_cast<uint8_t*>(b.mask)[1] = 1;
                 const_cast<double*>(b.pg_weights)[1] = INFINITY;
               },
               Code::non_finite, "pg_weights[1]");
  expect_error([](Cfg&, Batch& b, Out&) { const_cast<uint8_t*>(b.mask)[4] = 2; }, Code::invalid_argument, "mask[4]");
  expect_error([](Cfg&, Batch& b, Out&) {
                 const_cast<uint8_t*>(b.mask)[4] = 1;
                 const_cast<uint8_t*>(b.kinds)[4] = 7;
               },
               Code::invalid_argument, "kinds[4]");
  expect_error([](Cfg&, Batch& b, Out&) {
                 const_cast<uint8_t*>(b.mask)[0] = 1;
                 const_cast<uint8_t*>(b.kinds)[0] = cgrpo::kInitial;
                 const_cast<double*>(b.old_logp)[0] = NAN;
               },
               Code::non_finite, "old_logp[0]");
  expect_error([](Cfg&, Batch& b, Out&) {
                 const_cast<uint8_t*>(b.mask)[0] = 1;
                 const_cast<double*>(b.ref_logp)[0] = -INFINITY;
               },
               Code::non_finite, "ref_logp[0]");
}

TEST_CASE("bad input: config", "[errors]") {
  expect_error([](Cfg& c, Batch&, Out&) { c.policy.refinement_gamma = 0; }, Code::invalid_argument,
               "config.policy.refinement_gamma");
  expect_error([](Cfg& c, Batch&, Out&) { c.policy.refinement_gamma = -0.1; }, Code::invalid_argument,
               "config.policy.refinement_gamma");
  expect_error([](Cfg& c, Batch&, Out&) { c.ratio.clip_eps_low = 1.0; }, Code::invalid_argument,
               "config.ratio.clip_eps_low");
  expect_error([](Cfg& c, Batch&, Out&) { c.ratio.clip_eps_low = -0.1; }, Code::invalid_argument,
               "config.ratio.clip_eps_low");
  expect_error([](Cfg& c, Batch&, Out&) { c.ratio.clip_eps_high = NAN; }, Code::invalid_argument,
               "config.ratio.clip_eps_high");
  expect_error([](Cfg& c, Batch&, Out&) { c.ratio.dual_clip = true; c.ratio.dual_clip_c = 1.0; },
               Code::invalid_argument, "config.ratio.dual_clip_c");
  expect_error([](Cfg& c, Batch&, Out&) { c.temperature = 0; }, Code::invalid_argument, "config.temperature");
  expect_error([](Cfg& c, Batch&, Out&) { c.kl.estimator = cgrpo::KlEstimator::none; c.kl.coef = 0.1; },
               Code::invalid_argument, "config.kl.coef");
  // The thread count is the workspace's: the config no longer has one.
  expect_error_ws([](Cfg&, Batch&, Out&, Workspace& ws) { ws.num_threads = 0; }, Code::invalid_argument,
                  "workspace.num_threads");
  expect_error_ws([](Cfg&, Batch&, Out&, Workspace& ws) { ws.num_threads = -3; }, Code::invalid_argument,
                  "workspace.num_threads");
  expect_error([](Cfg& c, Batch&, Out&) { c.entropy.coef = INFINITY; }, Code::invalid_argument, "config.entropy.coef");
}

TEST_CASE("bad input: advantage config", "[errors]") {
  // The advantage settings left LossConfig for AdvantageConfig (a recipe's .advantage): a negative
  // eps is refused where it is read, by group_advantages, with the advantages untouched.
  const std::vector<int32_t> ids = {0, 0, 1, 1};
  const std::vector<double> rewards = {1, 0, 1, 1};
  for (auto est : {cgrpo::AdvantageEstimator::grpo, cgrpo::AdvantageEstimator::grpo_no_std}) {
    cgrpo::AdvantageConfig a;
    a.estimator = est;
    a.eps = -1;
    std::vector<double> adv(4, kPoison);
    const cgrpo::Status st = cgrpo::group_advantages(a, {4, ids.data(), 2}, rewards.data(), nullptr, adv.data());
    CAPTURE(cgrpo::to_string(est));
    support::check_error(st, Code::invalid_argument, {"eps"});
    for (double x : adv) CHECK(x == kPoison);
  }
}

TEST_CASE("bad input: advantages, aggregation and log-prob entry points leave outputs untouched", "[errors]") {
  const std::vector<double> rewards = {1, 0, NAN, 1};
  const std::vector<int32_t> ids = {0, 0, 1, 1};
  std::vector<double> adv(4, kPoison);
  auto st = cgrpo::group_advantages(cgrpo::AdvantageEstimator::grpo, {4, ids.data(), 2}, rewards.data(), nullptr,
                                    1e-6, adv.data());
  CHECK(st.code == Code::non_finite);
  const std::vector<int32_t> bad_ids = {0, 0, 2, 1};
  const std::vector<double> ok_rewards = {1, 0, 1, 1};
  st = cgrpo::group_advantages(cgrpo::AdvantageEstimator::grpo, {4, bad_ids.data(), 2}, ok_rewards.data(), nullptr,
                               1e-6, adv.data());
  CHECK(st.code == Code::out_of_range);
  const std::vector<int64_t> one_token = {1, 0, 0, 0};
  st = cgrpo::group_advantages(cgrpo::AdvantageEstimator::reinforce_pp_baseline, {4, ids.data(), 2},
                               ok_rewards.data(), one_token.data(), 0.0, adv.data());
  CHECK(st.code == Code::invalid_argument);
  for (double a : adv) CHECK(a == kPoison);

  // Aggregation: a negative or non-finite normalizer, a zero length, a layout that does not add up.
  const std::vector<uint8_t> mask = {1, 1, 0, 1};
  std::vector<double> w(4, kPoison);
  const auto layout = cgrpo::SequenceLayout::padded(2, 2);
  CHECK(mode_weights(cgrpo::Aggregation::token_mean, layout, mask.data(), {-1, 0, 0}, w.data()).code ==
        Code::invalid_argument);
  CHECK(mode_weights(cgrpo::Aggregation::seq_mean_token_sum_norm, cgrpo::SequenceLayout::padded(2, 0),
                                   mask.data(), {}, w.data())
            .ok());  // zero tokens: nothing to weigh
  const int64_t empty_offsets[] = {0, 0, 0};
  const auto empty = cgrpo::SequenceLayout::packed(2, empty_offsets);
  CHECK(mode_weights(cgrpo::Aggregation::seq_mean_token_sum, empty, mask.data(), {0, NAN, 0}, w.data())
            .code == Code::invalid_argument);
  const int64_t bad_offsets[] = {0, 3, 2};
  CHECK(mode_weights(cgrpo::Aggregation::token_mean, cgrpo::SequenceLayout::packed(2, bad_offsets),
                                   mask.data(), {}, w.data())
            .code == Code::invalid_argument);
  for (double x : w) CHECK(x == kPoison);

  // token_logprobs: out-of-range target and NaN row.
  std::vector<double> logits(4 * 5, 0.25), logp(4, kPoison), ent(4, kPoison);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(1.0 + i);
  std::vector<int32_t> targets = {0, 1, 5, 2};
  CHECK(cgrpo::cpu::token_logprobs(logits.data(), 4, 5, 0, targets.data(), 1.0, logp.data(), ent.data()).code ==
        Code::out_of_range);
  targets[2] = 4;
  logits[13] = NAN;
  const auto s2 = cgrpo::cpu::token_logprobs(logits.data(), 4, 5, 0, targets.data(), 1.0, logp.data(), ent.data());
  CHECK(s2.code == Code::non_finite);
  CHECK(std::string(s2.message).find("row 2") != std::string::npos);
  CHECK(cgrpo::cpu::token_logprobs(logits.data(), 4, 5, 0, targets.data(), 0.0, logp.data(), ent.data()).code ==
        Code::invalid_argument);
  for (int t = 0; t < 4; ++t) CHECK((logp[t] == kPoison && ent[t] == kPoison));
}

// Found by fuzz_group_advantages: accepted inputs whose results are not finite came back OK.
//   - reinforce_pp_baseline with whiten_eps = 0 (allowed: finite and >= 0) and equal advantages:
//     (A - mu) / sqrt(0) = 0 / 0, NaN at every response;
//   - finite rewards near DBL_MAX: the group sum overflows, A = (R - inf) / ... is NaN;
//   - float advantages of finite double-range rewards past FLT_MAX;
//   - aggregation weights 1 / B and 1 / L from a tiny (valid) scale.sequence_count or scale.length.
// Each is now an error naming the entry point, with the outputs untouched.
TEST_CASE("bad input: advantages and weights that would not be finite are errors", "[errors]") {
  const std::vector<int32_t> ids = {0, 0, 1, 1};
  const std::vector<int64_t> tokens = {3, 2, 4, 1};
  std::vector<double> adv(4, kPoison);
  const std::vector<double> equal = {1, 1, 1, 1};
  auto st = cgrpo::group_advantages(cgrpo::AdvantageEstimator::reinforce_pp_baseline, {4, ids.data(), 2}, equal.data(),
                                    tokens.data(), 1e-6, adv.data(), /*whiten_eps=*/0.0);
  INFO(st.message);
  CHECK(st.code == Code::non_finite);
  CHECK(std::string(st.message).find("group_advantages") != std::string::npos);
  for (double a : adv) CHECK(a == kPoison);
  // With a spread, whiten_eps = 0 is fine.
  const std::vector<double> spread = {1, 0, 1, 0};
  CHECK(cgrpo::group_advantages(cgrpo::AdvantageEstimator::reinforce_pp_baseline, {4, ids.data(), 2}, spread.data(),
                                tokens.data(), 1e-6, adv.data(), 0.0)
            .ok());
  for (double a : adv) CHECK(std::isfinite(a));

  const std::vector<double> huge = {1.5e308, 1.7e308, 0, 1};
  for (auto est : {cgrpo::AdvantageEstimator::grpo, cgrpo::AdvantageEstimator::grpo_no_std,
                   cgrpo::AdvantageEstimator::rloo, cgrpo::AdvantageEstimator::grpo_batch_std}) {
    std::fill(adv.begin(), adv.end(), kPoison);
    st = cgrpo::group_advantages(est, {4, ids.data(), 2}, huge.data(), nullptr, 1e-6, adv.data());
    INFO(cgrpo::to_string(est) << ": " << st.message);
    CHECK(st.code == Code::non_finite);
    for (double a : adv) CHECK(a == kPoison);
  }
  std::vector<float> adv_f(4, -7.5f);
  const std::vector<float> big_f = {3e38f, -3e38f, 0, 1};
  st = cgrpo::group_advantages(cgrpo::AdvantageEstimator::rloo, {4, ids.data(), 2}, big_f.data(), nullptr, 1e-6,
                               adv_f.data());  // 2 (3e38 - 0): finite in double, not in float
  INFO(st.message);
  CHECK(st.code == Code::non_finite);
  for (float a : adv_f) CHECK(a == -7.5f);

  const std::vector<uint8_t> mask = {1, 1, 0, 1};
  const auto layout = cgrpo::SequenceLayout::padded(2, 2);
  std::vector<double> w(4, kPoison);
  std::vector<float> wf(4, -7.5f);
  CHECK(mode_weights(cgrpo::Aggregation::seq_mean_token_sum, layout, mask.data(), {0, 1e-320, 0}, w.data())
            .code == Code::invalid_argument);
  CHECK(mode_weights(cgrpo::Aggregation::seq_mean_token_mean, layout, mask.data(), {0, 1e-320, 0}, w.data())
            .code == Code::invalid_argument);
  CHECK(mode_weights(cgrpo::Aggregation::seq_mean_token_sum_norm, layout, mask.data(), {0, 0, 1e-320},
                                   w.data())
            .code == Code::invalid_argument);
  CHECK(mode_weights(cgrpo::Aggregation::seq_mean_token_sum, layout, mask.data(), {0, 1e-39, 0}, wf.data())
            .code == Code::invalid_argument);
  // A count in (0, 1) is no count (found by fuzz_critique_stage: 2e-308 gave weights of 4e307 that
  // the loss then refused): refused by name; 1 is the smallest accepted.
  for (double bad : {0.5, 2.2e-308}) {
    support::check_error(mode_weights(cgrpo::Aggregation::seq_mean_token_sum, layout, mask.data(), {0, bad, 0}, w.data()),
                         Code::invalid_argument, {"batch.scale.sequence_count", ">= 1"});
    support::check_error(mode_weights(cgrpo::Aggregation::token_mean, layout, mask.data(), {bad, 0, 0}, w.data()),
                         Code::invalid_argument, {"batch.scale.token_count"});
  }
  for (double x : w) CHECK(x == kPoison);
  for (float x : wf) CHECK(x == -7.5f);
  CHECK(mode_weights(cgrpo::Aggregation::seq_mean_token_sum, layout, mask.data(), {0, 1, 0}, w.data()).ok());
  CHECK(w[0] == 1.0);
}

// Found by fuzz_group_advantages and fuzz_parallel:
//   - grpo over rewards whose spread overflows the variance (|R - mean| ~ 1e154 and more) gave
//     std = inf and A = 0 for the whole group, with OK: a wrong value, now an error;
//   - the data-parallel partial sums of squares overflowed to inf with OK (and the whitening
//     sums likewise), and group_advantages_from_stats / whiten_from_stats accepted non-finite
//     reduced sums (then gave A = 0): each is now an error naming the array;
//   - an empty batch accepted a negative eps and an unknown estimator that the data-parallel
//     form refuses: the arguments are now checked first, as there;
//   - group_advantages_from_stats divided by a variance its one-pass sums cancel to 0 (eps = 0):
//     inf or NaN with OK.
TEST_CASE("bad input: group statistics that overflow are errors in one process and across ranks", "[errors]") {
  const std::vector<int32_t> ids = {0, 0, 0};
  const std::vector<double> spread = {2e154, -2e154, 0};
  std::vector<double> adv(3, kPoison);
  auto st = cgrpo::group_advantages(cgrpo::AdvantageEstimator::grpo, {3, ids.data(), 1}, spread.data(), nullptr, 1e-6,
                                    adv.data());
  INFO(st.message);
  CHECK(st.code == Code::non_finite);
  st = cgrpo::group_advantages(cgrpo::AdvantageEstimator::grpo_batch_std, {3, ids.data(), 1}, spread.data(), nullptr,
                               1e-6, adv.data());
  CHECK(st.code == Code::non_finite);
  for (double a : adv) CHECK(a == kPoison);
  CHECK(cgrpo::group_advantages(cgrpo::AdvantageEstimator::grpo_no_std, {3, ids.data(), 1}, spread.data(), nullptr,
                                1e-6, adv.data())
            .ok());  // R - mean alone is finite
  CHECK(cgrpo::group_advantages(cgrpo::AdvantageEstimator::grpo, {0, ids.data(), 1}, spread.data(), nullptr, -10.0,
                                adv.data())
            .code == Code::invalid_argument);
  CHECK(cgrpo::group_advantages(static_cast<cgrpo::AdvantageEstimator>(9), {0, ids.data(), 1}, spread.data(), nullptr,
                                1e-6, adv.data())
            .code == Code::invalid_argument);

  namespace par = cgrpo::parallel;
  std::vector<double> sums(par::kGroupSumFields, kPoison), ext(par::kGroupExtremaFields, kPoison);
  st = par::group_partial_stats(cgrpo::GroupAssignment{3, ids.data(), 1}, spread.data(), 0.0, sums.data(), ext.data());
  INFO(st.message);
  CHECK(st.code == Code::non_finite);
  for (double x : sums) CHECK(x == kPoison);
  for (double x : ext) CHECK(x == kPoison);
  const double inf_sums[par::kGroupSumFields] = {3, 0, INFINITY};
  const double extrema[par::kGroupExtremaFields] = {1, 1};
  const std::vector<double> small = {1, 0, -1};
  std::fill(adv.begin(), adv.end(), kPoison);
  CHECK(par::group_advantages_from_stats(cgrpo::AdvantageEstimator::grpo, cgrpo::GroupAssignment{3, ids.data(), 1},
                                         small.data(), inf_sums, extrema, 0.0, 1e-6, adv.data())
            .code == Code::non_finite);
  for (double a : adv) CHECK(a == kPoison);
  // One-pass sums that cancel: S2 - S1 mean = 0 though the extrema differ; with eps = 0 the
  // advantage was (R - mean) / 0 = inf (or 0 / 0) with OK.
  const double cancelled[par::kGroupSumFields] = {2, 2, 2};
  const double apart[par::kGroupExtremaFields] = {1.0000001, -0.9999999};
  const std::vector<double> r2 = {2, 1};
  const std::vector<int32_t> ids2 = {0, 0};
  std::vector<double> adv2(2, kPoison);
  st = par::group_advantages_from_stats(cgrpo::AdvantageEstimator::grpo, cgrpo::GroupAssignment{2, ids2.data(), 1},
                                        r2.data(), cancelled, apart, 0.0, 0.0, adv2.data());
  INFO(st.message);
  CHECK(st.code == Code::non_finite);
  for (double a : adv2) CHECK(a == kPoison);
  const std::vector<int64_t> tokens = {4, 4, 4};
  double wsums[par::kWhitenFields] = {kPoison, kPoison, kPoison};
  CHECK(par::whitening_partial_stats(3, tokens.data(), spread.data(), wsums).code == Code::non_finite);
  for (double x : wsums) CHECK(x == kPoison);
  const double inf_whiten[par::kWhitenFields] = {12, 0, INFINITY};
  std::vector<double> to_whiten = small;
  CHECK(par::whiten_from_stats(3, inf_whiten, to_whiten.data()).code == Code::non_finite);
  CHECK(to_whiten == small);
}

TEST_CASE("bad input: NaN, +inf and all -inf rows are found by every float and double sweep", "[errors]") {
  // The float path has hand-vectorised sweeps (AVX-512 / AVX2 chosen at run time) with chunk,
  // vector and tail code: put the bad value at every kind of position.
  std::mt19937_64 rng = test_seed::fresh_rng();
  for (int64_t V : {int64_t{5}, int64_t{33}, int64_t{4099}, int64_t{70001}}) {
    for (int kind = 0; kind < 3; ++kind) {
      for (int64_t pos : {int64_t{0}, V / 2, V - 1, static_cast<int64_t>(rng() % V)}) {
        const int64_t T = 3;
        std::vector<float> logits(T * V);
        std::normal_distribution<float> normal(0.f, 2.f);
        for (auto& z : logits) z = normal(rng);
        const int64_t bad_row = 1 + static_cast<int64_t>(rng() % 2);
        float* row = &logits[bad_row * V];
        if (kind == 0) row[pos] = NAN;
        if (kind == 1) row[pos] = INFINITY;
        if (kind == 2)
          for (int64_t v = 0; v < V; ++v) row[v] = -INFINITY;
        std::vector<int32_t> targets(T, static_cast<int32_t>(V / 3));
        std::vector<uint8_t> mask(T, 1);
        std::vector<float> adv(T, 1.f), old_logp(T, -1.f), w(T, 1.f / T), logp(T, 9.f), ent(T, 9.f);
        cgrpo::LossConfig config;
        config.entropy.coef = 0;  // no entropy weights in this batch
        // One response of T tokens, every value exact in float; caller weights 1 / T.
        support::Batch batch = support::padded_batch(1, T, V);
        batch.logits.assign(logits.begin(), logits.end());
        batch.targets = targets;
        batch.mask = mask;
        batch.adv.assign(adv.begin(), adv.end());
        batch.old_logp.assign(old_logp.begin(), old_logp.end());
        batch.w_pg.assign(w.begin(), w.end());
        support::LibraryBatch<float> lib(batch, config, support::Weights::caller);
        const cgrpo::PolicyLossBatch<float>& b = lib.view;
        std::vector<float> grad(T * V, 9.f);
        cgrpo::LossMetrics m;
        CAPTURE(V, kind, pos, bad_row);
        const auto st = cgrpo::cpu::fused_policy_loss(config, b,
                                                      cgrpo::PolicyLossOutputs<float>{grad.data(), 0, nullptr, nullptr, &m});
        CHECK(st.code == Code::non_finite);
        CHECK(std::string(st.message).find("row " + std::to_string(bad_row)) != std::string::npos);
        CHECK(std::count(grad.begin(), grad.end(), 9.f) == static_cast<std::ptrdiff_t>(grad.size()));
        const auto s2 = cgrpo::cpu::token_logprobs(logits.data(), T, V, 0, targets.data(), 1.0, logp.data(), ent.data());
        CHECK(s2.code == Code::non_finite);
        for (int64_t t = 0; t < T; ++t) REQUIRE((logp[t] == 9.f && ent[t] == 9.f));
      }
    }
  }
}

TEST_CASE("not bad input: a float row whose max z / temperature overflows float is computed, as double computes it",
          "[errors]") {
  // z = 3e37 at tau = 0.01 is u = 3e39, past FLT_MAX: the float sweeps shift by the row max
  // before they scale, so they need no float u (this used to be a non_finite error).
  // tests/cpu/test_scaling.cpp covers the whole range; this is the case that was refused.
  std::mt19937_64 rng = test_seed::fresh_rng();
  std::normal_distribution<double> normal(0.0, 2.0);
  for (int64_t V : {int64_t{7}, int64_t{3000}}) {
    const int64_t T = 3, bad_row = 1;
    std::vector<double> zd(T * V);
    for (auto& z : zd) z = normal(rng);
    zd[bad_row * V + static_cast<int64_t>(rng() % V)] = 3e37;
    const std::vector<float> zf(zd.begin(), zd.end());
    zd.assign(zf.begin(), zf.end());  // the same inputs in both precisions
    const std::vector<int32_t> targets(T, 0);
    std::vector<float> logp(T, 9.f), ent(T, 9.f);
    const auto st = cgrpo::cpu::token_logprobs(zf.data(), T, V, 0, targets.data(), 0.01, logp.data(), ent.data());
    CAPTURE(V, st.message);
    REQUIRE(st.ok());
    std::vector<double> logp_d(T), ent_d(T);
    REQUIRE(cgrpo::cpu::token_logprobs(zd.data(), T, V, 0, targets.data(), 0.01, logp_d.data(), ent_d.data()).ok());
    for (int64_t t = 0; t < T; ++t) {
      CAPTURE(t, logp[t], logp_d[t], ent[t], ent_d[t]);
      CHECK((std::isfinite(ent_d[t]) && logp_d[t] <= 0.0 && ent_d[t] >= 0.0));
      // log p below -FLT_MAX (a target 3e39 below the max) is written as -FLT_MAX.
      const double want = std::max(logp_d[t], -static_cast<double>(FLT_MAX));
      CHECK(std::fabs(logp[t] - want) <= 1e-6 * std::fabs(want) + 1e-5);
      CHECK(std::fabs(ent[t] - ent_d[t]) <= 1e-5 * std::max(1.0, ent_d[t]));
    }
  }
}

// Runs the fused loss on f's batch with `value` written into weights[at] (mask[at] set to `valid`):
// the status and every output.
struct WeightRun {
  cgrpo::Status status;
  std::vector<double> grad, logp, ent;
  cgrpo::LossMetrics metrics;
};
WeightRun run_with_weight(const Fixture& f, bool kl, int64_t at, bool valid, double value) {
  ref::LibraryBatch<double> lb(f.b);
  std::vector<uint8_t> mask = f.b.mask;
  mask[at] = valid ? 1 : 0;
  lb.view.mask = mask.data();
  (kl ? lb.w_kl : lb.w_h)[at] = value;
  WeightRun r;
  r.grad.assign(f.b.logits.size(), kPoison);
  r.logp.assign(f.b.T, kPoison);
  r.ent.assign(f.b.T, kPoison);
  r.metrics.loss = kPoison;
  r.status = cgrpo::cpu::fused_policy_loss(f.config, lb.view,
                                           cgrpo::PolicyLossOutputs<double>{r.grad.data(), 0, r.logp.data(),
                                                                            r.ent.data(), &r.metrics});
  return r;
}

TEST_CASE("bad input: non-finite kl_weights or entropy_weights are errors at valid tokens and never read at "
          "masked ones",
          "[errors][masked_values]") {
  // At a valid token a non-finite weight is an error naming it (nothing written). At a masked token
  // nothing but target_ids is read (issue 13 class 2: real trainers pad with NaN / -inf): the call
  // succeeds with exactly the bits it gives when that weight is 0.
  for (const bool kl : {true, false})
    for (const double bad : {double(NAN), double(INFINITY), -double(INFINITY)})
      for (const bool masked : {false, true})
        for (const int which : {0, -1}) {  // the fourth token, the last one
          CAPTURE(kl, bad, masked, which);
          const std::string name = kl ? "kl_weights" : "entropy_weights";
          if (!masked) {
            int64_t at = -1;
            expect_error(
                [&](Cfg&, Batch& b, Out&) {
                  at = which == 0 ? 3 : b.num_tokens - 1;
                  const_cast<uint8_t*>(b.mask)[at] = 1;
                  const_cast<double*>(kl ? b.kl_weights : b.entropy_weights)[at] = bad;
                },
                Code::non_finite, name + "[");
            CHECK(at >= 0);
            continue;
          }
          Fixture f;
          const int64_t at = which == 0 ? 3 : f.b.T - 1;
          const WeightRun got = run_with_weight(f, kl, at, /*valid=*/false, bad);
          const WeightRun clean = run_with_weight(f, kl, at, /*valid=*/false, 0.0);
          INFO(got.status.message);
          REQUIRE(got.status.ok());
          REQUIRE(clean.status.ok());
          CHECK(std::memcmp(got.grad.data(), clean.grad.data(), got.grad.size() * sizeof(double)) == 0);
          CHECK(std::memcmp(got.logp.data(), clean.logp.data(), got.logp.size() * sizeof(double)) == 0);
          CHECK(std::memcmp(&got.metrics, &clean.metrics, sizeof(cgrpo::LossMetrics)) == 0);
        }
}

TEST_CASE("bad input: entropy_weights with config.entropy.coef = 0 are still checked at valid tokens", "[errors]") {
  // An entropy_weights array that is given is read even when c_H = 0: metrics.entropy_loss reports
  // agg_H(H), as verl logs it. So a NaN at a valid token is an error; at a masked one it is not read.
  expect_error(
      [](Cfg& c, Batch& b, Out&) {
        c.entropy.coef = 0;
        const_cast<uint8_t*>(b.mask)[2] = 1;
        const_cast<double*>(b.entropy_weights)[2] = NAN;
      },
      Code::non_finite, "entropy_weights[2]");
  Fixture f;
  f.config.entropy.coef = 0;
  const WeightRun got = run_with_weight(f, /*kl=*/false, 2, /*valid=*/false, NAN);
  INFO(got.status.message);
  CHECK(got.status.ok());
  CHECK(std::isfinite(got.metrics.entropy_loss));
}

TEST_CASE("bad input: kl = none with a non-finite kl_weights entry: OK with finite outputs (a term that is off "
          "is never read)",
          "[errors][masked_values]") {
  // The KL term is off, so kl_weights is neither validated nor read (before, metric_sums_add added
  // w_kl * kl = NaN * 0 to kl_loss: OK with a NaN metric). The invariant either way: OK means every
  // output is finite; an error means nothing was written.
  for (const double bad : {double(NAN), double(INFINITY), -double(INFINITY)})
    for (const bool masked : {false, true}) {
      Fixture f;
      f.config.kl.estimator = cgrpo::KlEstimator::none;
      f.config.kl.coef = 0;
      ref::LibraryBatch<double> lb(f.b);
      std::vector<uint8_t> mask = f.b.mask;
      mask[2] = masked ? 0 : 1;
      lb.view.mask = mask.data();
      lb.w_kl[2] = bad;
      std::vector<double> grad(f.b.logits.size(), kPoison), logp(f.b.T, kPoison), ent(f.b.T, kPoison);
      cgrpo::LossMetrics m;
      m.loss = kPoison;
      const cgrpo::Status st = cgrpo::cpu::fused_policy_loss(
          f.config, lb.view, cgrpo::PolicyLossOutputs<double>{grad.data(), 0, logp.data(), ent.data(), &m});
      CAPTURE(bad, masked, st.message);
      if (st.ok()) {
        for (double x : {m.loss, m.pg_loss, m.pg_loss_initial, m.pg_loss_refinement, m.entropy_loss, m.kl_loss,
                         m.pg_clipfrac, m.pg_clipfrac_lower, m.ppo_kl, m.entropy_mean, m.kl_mean,
                         m.refinement_prob_mean, m.ratio_mean})
          CHECK(std::isfinite(x));
        CHECK(m.kl_loss == 0.0);
        for (double g : grad) REQUIRE(std::isfinite(g));
      } else {
        CHECK(st.code == Code::non_finite);
        CHECK(m.loss == kPoison);
        for (double g : grad) REQUIRE(g == kPoison);
      }
    }
}
