// verl's policy losses, KL straight-through forms and rollout correction against the plain double
// reference (tests/support/reference_verl.hpp): loss, metrics, weights, kept masks, and the gradient
// against central finite differences (row-coupled modes included); the verl presets' conventions,
// and the policy aggregations sapo, geo_mean and verl's GSPO refuse.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <cgrpo/cgrpo.hpp>
#include <cmath>
#include <iterator>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "catalog.hpp"
#include "expect_error.hpp"
#include "reference.hpp"
#include "reference_verl.hpp"

namespace {

using cgrpo::LossConfig;
using cgrpo::RejectionStatistic;
using cgrpo::RolloutIsLevel;

// A random batch, every token initial, with rollout log-probs (b.rollout_logp): near old_logp
// (decoupled) or near log p (bypass), the ratio against them kept 1e-4 away from the clip kinks.
ref::Batch make_batch(std::mt19937_64& rng, bool bypass, int64_t B = 5, int64_t max_len = 5, int64_t V = 7) {
  ref::Batch b = ref::random_batch(rng, B, max_len, V, 2);
  for (auto& k : b.kinds) k = cgrpo::kInitial;
  std::normal_distribution<double> noise(0.0, 0.25);
  const double kinks[] = {0.0, std::log(0.8), std::log(1.2), std::log(1.28), std::log(3.0)};
  for (int64_t t = 0; t < b.T; ++t) {
    const double base = bypass ? ref::log_softmax_entropy(&b.logits[t * b.stride], b.V, b.targets[t], 1.0).logp
                               : b.old_logp[t];
    double roll;
    bool near;
    do {
      roll = base + noise(rng);
      near = false;
      for (double k : kinks) near = near || std::fabs(base - roll - k) < 1e-4;
    } while (bypass && near);
    b.rollout_logp[t] = roll;
  }
  return b;
}

// A batch on which config's rejection keeps some valid tokens and rejects others (when it has options).
ref::Batch make_mixed_batch(std::mt19937_64& rng, const LossConfig& c, int64_t B = 6, int64_t max_len = 5) {
  const cgrpo::RolloutCorrectionConfig& rc = c.off_policy.rollout;
  for (int attempt = 0; attempt < 100; ++attempt) {
    ref::Batch b = make_batch(rng, c.bypass(), B, max_len);
    if (rc.num_rejection_options == 0) return b;
    const ref_verl::Result r = ref_verl::loss(b, b.logits, b.logits, c);
    int64_t kept = 0, valid = 0;
    for (int64_t t = 0; t < b.T; ++t) kept += r.keep[t], valid += b.mask[t];
    // The kept tokens must carry some gradient (all of them clipped would leave nothing to
    // compare with the finite differences: 16 of 500 seeds drew such a batch).
    if (kept > 0 && kept < valid && ref::max_abs(ref_verl::finite_difference_gradient(b, c)) > 0) return b;
  }
  FAIL("no batch with both kept and rejected tokens and a non-zero gradient: thresholds too tight or too loose");
  return ref::Batch{};
}

struct Run {
  cgrpo::Status status;
  cgrpo::LossMetrics metrics;
  std::vector<double> grad, factor;
  std::vector<uint8_t> terms;
};

// The fused loss on the batch, weights computed by the loss, with the batch's rollout log-probs and
// (when it has one) clip_cov's selection.
Run run_library(const ref::Batch& b, const LossConfig& c) {
  const ref::LibraryBatch<double> lb(b, c, support::Weights::computed);
  Run r;
  r.grad.assign(b.logits.size(), 0.0);
  r.factor.assign(b.T, -1.0);
  r.terms.assign(b.T, 255);
  cgrpo::PolicyLossOutputs<double> out;
  out.grad_logits = r.grad.data();
  out.metrics = &r.metrics;
  out.policy_factor = r.factor.data();
  out.token_terms = r.terms.data();
  r.status = cgrpo::cpu::fused_policy_loss(c, lb.view, out);
  return r;
}

bool close(double got, double want, double tol = 1e-12) { return std::fabs(got - want) <= tol * std::max(1.0, std::fabs(want)); }

void check_rollout_metrics(const cgrpo::RolloutMetrics& g, const cgrpo::RolloutMetrics& w, int options) {
  // Every scalar metric; the two standard deviations cancel, so 1e-10 for them.
#define CHECK_ROLLOUT_FIELD(field) \
  CHECK(close(g.field, w.field, std::string(#field).find("std") != std::string::npos ? 1e-10 : 1e-12));
  CGRPO_ROLLOUT_METRIC_FIELDS(CHECK_ROLLOUT_FIELD)
#undef CHECK_ROLLOUT_FIELD
  for (int k = 0; k < options; ++k) {
    CAPTURE(k);
    CHECK(close(g.rs_option[k].mean, w.rs_option[k].mean));
    CHECK(close(g.rs_option[k].max, w.rs_option[k].max));
    CHECK(close(g.rs_option[k].min, w.rs_option[k].min));
    CHECK(close(g.rs_option[k].masked_fraction, w.rs_option[k].masked_fraction));
    CHECK(close(g.rs_option[k].seq_masked_fraction, w.rs_option[k].seq_masked_fraction));
  }
}

// Loss, metrics, weights and kept mask against the reference; the gradient against central differences.
void check_against_reference(const ref::Batch& b, const LossConfig& c, bool finite_differences = true) {
  const Run got = run_library(b, c);
  INFO(got.status.message);
  REQUIRE(got.status.ok());
  const ref_verl::Result want = ref_verl::loss(b, b.logits, b.logits, c);
  CHECK(close(got.metrics.loss, want.loss));
  CHECK(close(got.metrics.pg_loss, want.pg));
  CHECK(close(got.metrics.entropy_loss, want.entropy_agg));
  CHECK(close(got.metrics.kl_loss, want.kl_agg));
  if (c.policy.loss != cgrpo::PolicyLoss::gpg && c.policy.loss != cgrpo::PolicyLoss::sapo &&
      c.policy.loss != cgrpo::PolicyLoss::kl_cov && c.policy.loss != cgrpo::PolicyLoss::clip_cov) {
    CHECK(close(got.metrics.pg_clipfrac, want.clipfrac));
    CHECK(close(got.metrics.pg_clipfrac_lower, want.clipfrac_lower));
  }
  if (c.policy.loss != cgrpo::PolicyLoss::gpg) CHECK(close(got.metrics.ppo_kl, want.ppo_kl));
  if (c.off_policy.rollout.mode != cgrpo::RolloutCorrectionMode::none)
    check_rollout_metrics(got.metrics.rollout, want.rollout, c.off_policy.rollout.num_rejection_options);
  for (int64_t t = 0; t < b.T; ++t) {
    CAPTURE(t);
    CHECK(((got.terms[t] & cgrpo::kTermPolicy) != 0) == (want.keep[t] != 0));
    if (c.policy.loss != cgrpo::PolicyLoss::geo_mean) CHECK(close(got.factor[t], want.is_weight[t]));
    if (c.policy.loss == cgrpo::PolicyLoss::kl_cov) CHECK(((got.terms[t] & cgrpo::kTermSelected) != 0) == (want.selected[t] != 0));
  }
  if (!finite_differences) return;
  const std::vector<double> fd = ref_verl::finite_difference_gradient(b, c);
  REQUIRE(ref::max_abs(fd) > 0);
  CHECK(ref::max_abs_diff(got.grad, fd) <= 1e-7 * std::max(1.0, ref::max_abs(fd)));
}

void set_options(LossConfig& c, const char* options, const char* thresholds) {
  const cgrpo::Status s = cgrpo::verl_rollout_rs(options, thresholds, &c.off_policy.rollout);
  INFO(s.message);
  REQUIRE(s.ok());
}

}  // namespace

TEST_CASE("verl policy losses: loss and metrics match the reference, gradient matches finite differences",
          "[verl][gradient]") {
  auto rng = test_seed::fresh_rng();
  std::vector<std::pair<std::string, LossConfig>> modes;
  {
    LossConfig c = cgrpo::verl_cispo().loss;
    modes.emplace_back("cispo (recipe: eps_low 10, KL k3)", c);
    c.ratio.clip_eps_low = 0.2;
    c.ratio.clip_eps_high = 0.28;
    c.aggregation.policy = cgrpo::Aggregation::seq_mean_token_mean;
    modes.emplace_back("cispo band 0.2 / 0.28, seq-mean-token-mean", c);
  }
  {
    LossConfig c = cgrpo::verl_sapo().loss;
    c.entropy.coef = 0.01;
    modes.emplace_back("sapo", c);
  }
  {
    LossConfig c = cgrpo::verl_gpg().loss;
    c.aggregation.policy = c.aggregation.entropy = cgrpo::Aggregation::seq_mean_token_sum;
    c.entropy.coef = 0.01;
    modes.emplace_back("gpg, seq-mean-token-sum", c);
  }
  {
    LossConfig c = cgrpo::verl_gmpo().loss;
    c.ratio.clip_eps_high = std::log(1.2);  // bounds on kinks random_batch avoids
    c.ratio.clip_eps_low = -std::log(0.8);
    c.entropy.coef = 0.01;
    modes.emplace_back("geo_mean", c);
  }
  {
    LossConfig c = cgrpo::verl_kl_cov().loss;
    c.policy.kl_cov.ratio = 0.2;
    c.policy.kl_cov.coef = 1.0;
    modes.emplace_back("kl_cov", c);
  }
  {
    LossConfig c = cgrpo::verl_gspo().loss;
    c.entropy.coef = 0.01;  // the recipe's band clips most random rows: the entropy keeps a gradient
    modes.emplace_back("gspo (clip 3e-4 / 4e-4)", c);
    c.ratio.clip_eps_low = 0.2;  // a band the random rows' ratios fall in, so gradients flow
    c.ratio.clip_eps_high = 0.28;
    c.entropy.coef = 0.01;
    modes.emplace_back("gspo, clip 0.2 / 0.28", c);
  }
  for (const auto& mode : modes) {
    CAPTURE(mode.first);
    for (int rep = 0; rep < 3; ++rep) {
      const ref::Batch b = make_batch(rng, false);
      check_against_reference(b, mode.second);
    }
  }
}

TEST_CASE("clip_cov: the caller's selection zeroes exactly those tokens; gradient matches finite differences",
          "[verl][clip_cov][gradient]") {
  auto rng = test_seed::fresh_rng();
  LossConfig c = cgrpo::verl_clip_cov().loss;
  c.entropy.coef = 0.01;
  for (int rep = 0; rep < 3; ++rep) {
    ref::Batch b = make_batch(rng, false);
    std::bernoulli_distribution pick(0.3);
    b.selection.resize(b.T);
    for (auto& s : b.selection) s = pick(rng) ? 1 : 0;
    check_against_reference(b, c);
    const Run got = run_library(b, c);
    for (int64_t t = 0; t < b.T; ++t)
      CHECK(((got.terms[t] & cgrpo::kTermSelected) != 0) == (b.mask[t] && b.selection[t]));
  }
}

TEST_CASE("clip_cov: the seeded choice draws k of verl's candidates, reproducibly, without favouring any",
          "[verl][clip_cov]") {
  auto rng = test_seed::fresh_rng();
  LossConfig c = cgrpo::verl_clip_cov().loss;
  c.policy.clip_cov.ratio = 0.25;
  c.policy.clip_cov.lower = -0.3;  // wide band: many candidates
  c.policy.clip_cov.upper = 5.0;
  // Redrawn until there is a choice to make (more candidates than k; 7 of 500 seeds drew a
  // batch with exactly k).
  for (int attempt = 0; attempt < 100; ++attempt) {
    const ref::Batch b = make_batch(rng, false, 8, 6, 7);

    // verl's candidates: valid, not clipped by the PPO clip, cov (masked means, + 1e-8) in (lower, upper).
    std::vector<double> logp(b.T), m(b.T);
    for (int64_t t = 0; t < b.T; ++t) {
      logp[t] = ref::log_softmax_entropy(&b.logits[t * b.stride], b.V, b.targets[t], 1.0).logp;
      m[t] = b.mask[t];
    }
    const double mean_a = ref_verl::mmean(b.adv, m), mean_l = ref_verl::mmean(logp, m);
    std::vector<uint8_t> candidate(b.T, 0);
    int64_t num_candidates = 0;
    for (int64_t t = 0; t < b.T; ++t) {
      const double A = b.adv[t], r = std::exp(logp[t] - b.old_logp[t]);
      const double cov = (A - mean_a) * (logp[t] - mean_l);
      const bool clipped = -A * std::min(std::max(r, 0.8), 1.2) > -A * r;
      candidate[t] = b.mask[t] && !clipped && cov > c.policy.clip_cov.lower && cov < c.policy.clip_cov.upper;
      num_candidates += candidate[t];
    }
    const int64_t n_valid = static_cast<int64_t>(std::accumulate(m.begin(), m.end(), 0.0));
    const int64_t k =
        std::min<int64_t>(std::max<int64_t>(1, static_cast<int64_t>(n_valid * c.policy.clip_cov.ratio)), num_candidates);
    if (num_candidates <= k) continue;  // no choice to make: draw again

    std::vector<double> frequency(b.T, 0.0);
    const int draws = 200;
    std::vector<uint8_t> first;
    for (int seed = 0; seed < draws; ++seed) {
      c.policy.clip_cov.seed = 1000 + static_cast<uint64_t>(seed);
      const Run got = run_library(b, c);
      REQUIRE(got.status.ok());
      std::vector<uint8_t> selected(b.T);
      int64_t count = 0;
      for (int64_t t = 0; t < b.T; ++t) {
        selected[t] = (got.terms[t] & cgrpo::kTermSelected) ? 1 : 0;
        count += selected[t];
        if (selected[t]) CHECK(candidate[t]);
        frequency[t] += selected[t];
      }
      CHECK(count == k);
      // The same seed gives the same choice; the choice, passed back as batch.selection, the same loss
      // and gradient; and the reference with that selection agrees (gradient by finite differences).
      const Run again = run_library(b, c);
      CHECK(again.terms == got.terms);
      if (seed < 2) {
        ref::Batch with = b;
        with.selection = selected;
        const Run caller = run_library(with, c);
        CHECK(caller.metrics.loss == got.metrics.loss);
        CHECK(caller.grad == got.grad);
        check_against_reference(with, c);
      }
      if (seed == 0) first = selected;
    }
    // Not one fixed subset, and each candidate drawn at about k / candidates of the seeds.
    const double p = static_cast<double>(k) / static_cast<double>(num_candidates);
    double worst = 0;
    for (int64_t t = 0; t < b.T; ++t)
      if (candidate[t]) worst = std::max(worst, std::fabs(frequency[t] / draws - p));
    CAPTURE(p, worst, num_candidates, k);
    CHECK(worst < 0.15);
    return;
  }
  FAIL("100 batches without more clip_cov candidates than k");
}

TEST_CASE("KL straight-through forms k1+, abs+, k3+: the estimator's value, k2's gradient", "[verl][kl][gradient]") {
  auto rng = test_seed::fresh_rng();
  for (cgrpo::KlEstimator k : {cgrpo::KlEstimator::k1, cgrpo::KlEstimator::abs, cgrpo::KlEstimator::k3, cgrpo::KlEstimator::k2}) {
    for (bool st : {true, false}) {
      CAPTURE(to_string(k), st);
      LossConfig c = cgrpo::verl_vanilla().loss;
      c.kl.estimator = k;
      c.kl.coef = 0.3;
      c.kl.straight_through = st;
      c.aggregation.kl = cgrpo::Aggregation::seq_mean_token_mean;
      const ref::Batch b = make_batch(rng, false);
      check_against_reference(b, c);
      if (st && k != cgrpo::KlEstimator::k2) {
        // The straight-through gradient differs from the estimator's own: the form is not a no-op.
        LossConfig plain = c;
        plain.kl.straight_through = false;
        const Run with_st = run_library(b, c), without = run_library(b, plain);
        CHECK(with_st.metrics.loss == without.metrics.loss);
        CHECK(ref::max_abs_diff(with_st.grad, without.grad) > 1e-6);
      }
    }
  }
  // k3+ where the clamp holds the value at 10: the gradient is still logp - ref.
  ref::Batch b = make_batch(rng, false, 3, 3, 5);
  for (int64_t t = 0; t < b.T; ++t) b.ref_logp[t] = 4.0;  // ref - logp > 4: e^d - d - 1 > 10
  LossConfig c = cgrpo::verl_vanilla().loss;
  c.kl.estimator = cgrpo::KlEstimator::k3;
  c.kl.coef = 0.3;
  c.kl.straight_through = true;
  check_against_reference(b, c);
}

TEST_CASE("verl rollout correction, decoupled: every rejection statistic, IS levels, batch normalisation",
          "[verl][rollout][gradient]") {
  auto rng = test_seed::fresh_rng();
  // One threshold per statistic that rejects some of N(0, 0.25) log ratios and keeps others.
  const char* const thresholds[] = {"0.8_1.25", "0.03", "0.03", "0.7_1.4", "0.08", "0.08",
                                    "0.9_1.1",  "0.02", "0.02", "0.05",    "0.05"};
  for (int s = 0; s < 11; ++s) {
    const auto stat = static_cast<RejectionStatistic>(s);
    for (RolloutIsLevel level : {RolloutIsLevel::none, RolloutIsLevel::token, RolloutIsLevel::sequence}) {
      CAPTURE(to_string(stat), to_string(level));
      LossConfig c = cgrpo::verl_vanilla().loss;
      c.entropy.coef = 0.01;
      c.kl.estimator = cgrpo::KlEstimator::k3;
      c.kl.coef = 0.1;
      c.aggregation.policy = cgrpo::Aggregation::seq_mean_token_mean;
      c.off_policy.rollout.mode = cgrpo::RolloutCorrectionMode::decoupled;
      c.off_policy.rollout.is_level = level;
      c.off_policy.rollout.is_threshold = 1.5;
      set_options(c, to_string(stat), thresholds[s]);
      const ref::Batch b = make_mixed_batch(rng, c);
      check_against_reference(b, c, level == RolloutIsLevel::token);
    }
  }
  // Several options together (a token is kept only if all keep it), and the batch-normalised weights.
  for (bool normalize : {false, true})
    for (RolloutIsLevel level : {RolloutIsLevel::token, RolloutIsLevel::sequence}) {
      CAPTURE(normalize, to_string(level));
      LossConfig c = cgrpo::verl_decoupled(cgrpo::verl_vanilla(), level, 2.0).loss;
      c.off_policy.rollout.is_batch_normalize = normalize;
      set_options(c, "token_k1,seq_mean_k3,seq_max_k2", "0.7_1.5,0.03,0.06");
      const ref::Batch b = make_mixed_batch(rng, c);
      check_against_reference(b, c);
    }
  // GSPO and GMPO (the row's geometric mean of the weights) with decoupled IS and rejection.
  {
    INFO("gspo, decoupled token IS, seq_sum_k1 rejection");
    LossConfig c = cgrpo::verl_decoupled(cgrpo::verl_gspo(), RolloutIsLevel::token).loss;
    c.ratio.clip_eps_low = 0.2;
    c.ratio.clip_eps_high = 0.28;
    c.entropy.coef = 0.01;
    set_options(c, "seq_sum_k1", "0.7_1.4");
    check_against_reference(make_mixed_batch(rng, c), c);
  }
  {
    INFO("gmpo, decoupled token IS, token_k1 rejection");
    LossConfig c = cgrpo::verl_decoupled(cgrpo::verl_gmpo(), RolloutIsLevel::token).loss;
    c.ratio.clip_eps_high = std::log(1.2);
    c.ratio.clip_eps_low = -std::log(0.8);
    set_options(c, "token_k1", "0.8_1.25");
    const ref::Batch b = make_mixed_batch(rng, c);
    check_against_reference(b, c);
    // The policy factor is the row's geometric mean of its kept tokens' weights.
    const Run got = run_library(b, c);
    const ref_verl::Result want = ref_verl::loss(b, b.logits, b.logits, c);
    for (int64_t i = 0; i < b.B; ++i) {
      double s = 0, n = 0;
      for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t)
        if (want.keep[t]) s += std::log(want.is_weight[t] + 1e-10), n += 1;
      for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t)
        if (b.mask[t]) CHECK(close(got.factor[t], std::exp(s / (n + 1e-8))));
    }
  }
}

TEST_CASE("verl bypass mode: ppo_clip (no IS factor) and reinforce (IS factor), rejection in the policy term only",
          "[verl][rollout][gradient]") {
  auto rng = test_seed::fresh_rng();
  // The engine's token-mean N counts the original mask (the rejection happens inside the loss);
  // the legacy dp_actor's counts the policy term's kept tokens.
  for (cgrpo::VerlActor actor : {cgrpo::VerlActor::engine, cgrpo::VerlActor::legacy_dp_actor}) {
    CAPTURE(cgrpo::to_string(actor));
    LossConfig c = cgrpo::verl_with_actor(cgrpo::verl_bypass_ppo_clip(), actor).loss;
    c.entropy.coef = 0.01;
    c.kl.estimator = cgrpo::KlEstimator::k3;
    c.kl.coef = 0.1;
    set_options(c, "token_k2", "0.03");
    const ref::Batch b = make_mixed_batch(rng, c);
    check_against_reference(b, c);
    // The two conventions differ by the token-mean divisor alone: N (mask) against N' (kept).
    const Run got = run_library(b, c);
    double n = 0, kept = 0;
    for (int64_t t = 0; t < b.T; ++t) n += b.mask[t], kept += (got.terms[t] & cgrpo::kTermPolicy) ? 1 : 0;
    REQUIRE(kept < n);
    const LossConfig other = cgrpo::verl_with_actor(cgrpo::Recipe{c, {}}, actor == cgrpo::VerlActor::engine
                                                                           ? cgrpo::VerlActor::legacy_dp_actor
                                                                           : cgrpo::VerlActor::engine)
                                 .loss;
    const Run alt = run_library(b, other);
    REQUIRE(alt.status.ok());
    const double pg_ratio = got.metrics.pg_loss / alt.metrics.pg_loss;
    CHECK(close(pg_ratio, actor == cgrpo::VerlActor::engine ? kept / n : n / kept, 1e-10));
  }
  {
    LossConfig c = cgrpo::verl_bypass_ppo_clip().loss;
    c.entropy.coef = 0.01;
    c.kl.estimator = cgrpo::KlEstimator::k3;
    c.kl.coef = 0.1;
    set_options(c, "seq_sum_k2", "0.08");
    check_against_reference(make_mixed_batch(rng, c), c);
    c.off_policy.rollout.is_level = RolloutIsLevel::token;  // logged, never applied to ppo_clip
    check_against_reference(make_mixed_batch(rng, c), c);
  }
  for (RolloutIsLevel level : {RolloutIsLevel::none, RolloutIsLevel::token, RolloutIsLevel::sequence}) {
    CAPTURE(to_string(level));
    LossConfig c = cgrpo::verl_bypass_reinforce().loss;
    c.off_policy.rollout.is_level = level;
    c.entropy.coef = 0.01;
    c.aggregation.policy = cgrpo::Aggregation::seq_mean_token_sum;
    set_options(c, "token_k2,seq_max_k3", "0.03,0.05");
    check_against_reference(make_mixed_batch(rng, c), c);
  }
}

TEST_CASE("verl IcePop: weights outside [lo, hi] are zeroed, the mask is kept; token and sequence, decoupled and "
          "bypass, both actors' metrics",
          "[verl][rollout][icepop][gradient]") {
  auto rng = test_seed::fresh_rng();
  for (cgrpo::VerlActor actor : {cgrpo::VerlActor::engine, cgrpo::VerlActor::legacy_dp_actor})
    for (RolloutIsLevel level : {RolloutIsLevel::token, RolloutIsLevel::sequence})
      for (bool bypass : {false, true}) {
        CAPTURE(cgrpo::to_string(actor), to_string(level), bypass);
        cgrpo::Recipe r = bypass ? cgrpo::verl_bypass_reinforce() : cgrpo::verl_decoupled(cgrpo::verl_grpo(), level);
        r.loss.off_policy.rollout.is_level = level;
        // A band the batch's weights straddle: make_batch draws rollout log-probs near the training ones.
        r = cgrpo::verl_with_actor(cgrpo::verl_icepop(r, level == RolloutIsLevel::token ? 0.9 : 0.7,
                                                      level == RolloutIsLevel::token ? 1.1 : 1.4),
                                   actor);
        LossConfig& c = r.loss;
        c.entropy.coef = 0.01;
        c.aggregation.policy = c.aggregation.entropy = cgrpo::Aggregation::seq_mean_token_mean;
        const ref::Batch b = make_batch(rng, bypass, 8, 6);
        const ref_verl::Result want = ref_verl::loss(b, b.logits, b.logits, c);
        int zeroed = 0, applied = 0;
        for (int64_t t = 0; t < b.T; ++t)
          if (b.mask[t]) (want.is_weight[t] == 0.0 ? zeroed : applied) += 1;
        CAPTURE(zeroed, applied);
        if (level == RolloutIsLevel::token) REQUIRE((zeroed > 0 && applied > 0));  // the band splits the tokens
        check_against_reference(b, c);
        const Run got = run_library(b, c);
        // The mask is not changed: every valid token stays in the policy term (and its denominators).
        for (int64_t t = 0; t < b.T; ++t) CHECK(((got.terms[t] & cgrpo::kTermPolicy) != 0) == (b.mask[t] != 0));
        if (zeroed > 0) CHECK(got.metrics.rollout.is_oob_ratio > 0);
      }
}

TEST_CASE("verl IcePop: a band that holds no weight zeroes the policy term, and the metrics stay finite",
          "[verl][rollout][icepop]") {
  auto rng = test_seed::fresh_rng();
  for (RolloutIsLevel level : {RolloutIsLevel::token, RolloutIsLevel::sequence}) {
    CAPTURE(to_string(level));
    LossConfig c = cgrpo::verl_icepop(cgrpo::verl_decoupled(cgrpo::verl_grpo(), level), 100.0, 200.0).loss;
    const ref::Batch b = make_batch(rng, false, 6, 5);
    const Run got = run_library(b, c);
    INFO(got.status.message);
    REQUIRE(got.status.ok());
    CHECK(got.metrics.pg_loss == 0.0);
    CHECK(got.metrics.rollout.is_eff_sample_size == 0.0);  // verl logs 1 / 0
    CHECK(close(got.metrics.rollout.is_oob_ratio, 1.0, 1e-8));
    CHECK(got.metrics.rollout.is_mean == 0.0);
    for (int64_t t = 0; t < b.T; ++t) CHECK(got.factor[t] == 0.0);
    check_against_reference(b, c, /*finite_differences=*/false);
  }
}

TEST_CASE("verl IcePop config: lo <= hi, lo > 0, a level; is_threshold_lower only with icepop", "[verl][rollout][icepop]") {
  LossConfig c = cgrpo::verl_icepop(cgrpo::verl_decoupled(cgrpo::verl_grpo(), RolloutIsLevel::token), 0.5, 2.0).loss;
  REQUIRE(c.validate().ok());
  c.off_policy.rollout.is_threshold_lower = 3.0;  // lo > hi
  support::check_error(c.validate(), cgrpo::StatusCode::invalid_argument, {"IcePop", "lo <= hi", "3", "2"});
  c.off_policy.rollout.is_threshold_lower = 0.0;
  support::check_error(c.validate(), cgrpo::StatusCode::invalid_argument, {"IcePop", "0 < is_threshold_lower"});
  c.off_policy.rollout.is_threshold_lower = NAN;
  support::check_error(c.validate(), cgrpo::StatusCode::invalid_argument, {"IcePop"});
  c.off_policy.rollout.is_threshold_lower = 0.5;
  c.off_policy.rollout.is_level = RolloutIsLevel::none;
  support::check_error(c.validate(), cgrpo::StatusCode::invalid_argument, {"icepop", "is_level"});
  c = cgrpo::verl_decoupled(cgrpo::verl_grpo(), RolloutIsLevel::token).loss;
  c.off_policy.rollout.is_threshold_lower = 0.5;  // truncation has no lower bound
  support::check_error(c.validate(), cgrpo::StatusCode::invalid_argument, {"is_threshold_lower", "icepop"});
  c.off_policy.rollout.is_threshold_lower = 0;
  c.off_policy.rollout.is_mode = static_cast<cgrpo::RolloutIsMode>(7);
  support::check_error(c.validate(), cgrpo::StatusCode::invalid_argument, {"is_mode", "7"});
}

TEST_CASE("rollout correction sums merge: a row split in parts, rows split across reducers", "[verl][rollout]") {
  auto rng = test_seed::fresh_rng();
  const ref::Batch b = make_batch(rng, false, 9, 6);
  cgrpo::RolloutCorrectionConfig rc;
  rc.mode = cgrpo::RolloutCorrectionMode::decoupled;
  rc.is_level = RolloutIsLevel::token;
  REQUIRE(cgrpo::verl_rollout_rs("seq_mean_k1,token_k3,seq_max_k2", "0.8_1.2,0.03,0.05", &rc).ok());
  const cgrpo::RolloutParams p = cgrpo::rollout_params(rc);
  const cgrpo::SequenceLayout layout = b.layout();
  cgrpo::cpu::RowBounds rows{&layout, b.T};
  std::vector<double> w(b.T, 1.0);
  std::vector<uint8_t> keep(b.T, 1);
  cgrpo::RolloutMetrics whole;
  REQUIRE(cgrpo::rollout_correction(rc, b.B, rows, b.mask.data(), b.old_logp.data(), b.rollout_logp.data(),
                                    w.data(), keep.data(), &whole)
              .ok());
  // Two reducers over alternate rows; each row's sums from two halves merged.
  cgrpo::RolloutBatchSums part[2] = {cgrpo::rollout_batch_sums_zero(), cgrpo::rollout_batch_sums_zero()};
  for (int64_t i = 0; i < b.B; ++i) {
    const int64_t begin = b.offsets[i], end = b.offsets[i + 1], mid = (begin + end) / 2;
    cgrpo::RolloutRowSums halves[2] = {cgrpo::rollout_row_sums_zero(), cgrpo::rollout_row_sums_zero()};
    for (int64_t t = begin; t < end; ++t)
      if (b.mask[t]) cgrpo::rollout_row_add(halves[t < mid ? 0 : 1], b.old_logp[t], b.rollout_logp[t]);
    const cgrpo::RolloutRowSums r = cgrpo::rollout_row_sums_merge(halves[1], halves[0]);
    const cgrpo::RolloutRowValues v = cgrpo::rollout_row_values(p, r);
    cgrpo::RolloutRowTally tally{};
    for (int64_t t = begin; t < end; ++t)
      if (b.mask[t]) {
        const cgrpo::RolloutTokenValues tok = cgrpo::rollout_token(p, v, b.old_logp[t], b.rollout_logp[t]);
        CHECK(tok.weight == w[t]);
        CHECK((tok.rejected_by == 0) == (keep[t] == 1));
        cgrpo::rollout_batch_add_token(part[i % 2], p, tok, tally);
      }
    cgrpo::rollout_batch_add_row(part[i % 2], p, r, v, tally);
  }
  const cgrpo::RolloutMetrics merged =
      cgrpo::finalize_rollout_metrics(cgrpo::rollout_batch_sums_merge(part[1], part[0]), p, false);
  check_rollout_metrics(merged, whole, rc.num_rejection_options);
}

TEST_CASE("verl_rollout_rs parses verl's option and threshold strings", "[verl][options]") {
  cgrpo::RolloutCorrectionConfig rc;
  REQUIRE(cgrpo::verl_rollout_rs(" token_k1 , seq_max_k3,token_k1", "1.25", &rc).ok());
  REQUIRE(rc.num_rejection_options == 2);  // the duplicate is dropped
  CHECK(rc.rejection[0].statistic == RejectionStatistic::token_k1);
  CHECK(rc.rejection[0].lower == 1.0 / 1.25);  // a single k1 threshold: lo = 1 / hi
  CHECK(rc.rejection[0].upper == 1.25);
  CHECK(rc.rejection[1].statistic == RejectionStatistic::seq_max_k3);
  CHECK(rc.rejection[1].upper == 1.25);  // one threshold shared by all options
  REQUIRE(cgrpo::verl_rollout_rs("seq_sum_k1,seq_mean_k2", "0.5_2.0,0.1", &rc).ok());
  CHECK(rc.rejection[0].lower == 0.5);
  CHECK(rc.rejection[0].upper == 2.0);
  CHECK(rc.rejection[1].upper == 0.1);
  cgrpo::KlEstimator k = cgrpo::KlEstimator::none;
  bool st = false;
  REQUIRE(cgrpo::verl_kl_loss_type("low_var_kl+", &k, &st).ok());
  CHECK((k == cgrpo::KlEstimator::k3 && st));
  REQUIRE(cgrpo::verl_kl_loss_type("mse+", &k, &st).ok());
  CHECK((k == cgrpo::KlEstimator::k2 && !st));
  REQUIRE(cgrpo::verl_kl_loss_type("kl", &k, &st).ok());
  CHECK((k == cgrpo::KlEstimator::k1 && !st));
}

TEST_CASE("verl presets are valid and set verl's defaults", "[verl][presets]") {
  // Every verl recipe of the catalog (the registry's verl presets and their variants).
  int presets = 0;
  for (const support::CatalogEntry& e : support::catalog()) {
    if (e.name.rfind("verl/", 0) != 0) continue;
    INFO(e.name);
    const LossConfig& c = e.config();
    CHECK(c.validate().ok());
    CHECK(c.aggregation.convention.token_mean_eps == 0.0);
    CHECK(c.aggregation.convention.row_count_eps == 1e-8);
    // The engine actor's conventions (verl 1dda039) unless the entry names the legacy dp_actor.
    const bool legacy = e.name.find("@legacy_dp_actor") != std::string::npos;
    CHECK(c.aggregation.convention.count_empty_rows == !legacy);
    CHECK(c.aggregation.convention.sum_norm_per_row == !legacy);
    CHECK(c.aggregation.convention.token_count_from_response_mask == !legacy);
    CHECK(c.off_policy.rollout.metrics_from_applied_weights == !legacy);
    CHECK(c.metrics.mean_eps == 1e-8);
    CHECK(e.recipe.advantage.eps == 1e-6);  // verl's grpo eps and masked_whiten's N + 1e-8
    CHECK(e.recipe.advantage.whiten_count_eps == 1e-8);
    presets += e.name.find(" + ") == std::string::npos ? 1 : 0;
  }
  CHECK(presets == static_cast<int>(std::size(cgrpo::kVerlPresets)));
  CHECK(cgrpo::verl_vanilla().loss.ratio.dual_clip);
  CHECK(cgrpo::verl_vanilla().loss.ratio.dual_clip_c == 3.0);
  CHECK(cgrpo::verl_dapo().loss.ratio.dual_clip_c == 10.0);
  CHECK(cgrpo::verl_gspo().loss.ratio.log_ratio_max == 10.0);
  CHECK(std::isinf(cgrpo::verl_gspo().loss.ratio.log_ratio_min));
  CHECK(cgrpo::verl_gspo().loss.aggregation.policy == cgrpo::Aggregation::seq_mean_token_mean);
  CHECK(cgrpo::verl_sapo().loss.aggregation.policy == cgrpo::Aggregation::seq_mean_token_mean);
  CHECK(cgrpo::verl_sapo().loss.aggregation.entropy == cgrpo::Aggregation::token_mean);
  CHECK(cgrpo::verl_gmpo().loss.aggregation.policy == cgrpo::Aggregation::seq_mean_token_mean);
  CHECK(cgrpo::verl_gmpo().loss.aggregation.entropy == cgrpo::Aggregation::token_mean);
  CHECK(cgrpo::verl_dr_grpo().advantage.estimator == cgrpo::AdvantageEstimator::grpo_no_std);
  CHECK(cgrpo::verl_dr_grpo().loss.aggregation.policy == cgrpo::Aggregation::seq_mean_token_sum_norm);
}

TEST_CASE("sapo, geo_mean and verl's GSPO refuse a policy aggregation other than seq-mean-token-mean",
          "[verl][presets][errors]") {
  // verl ignores loss_agg_mode for these: the config refuses another mode by name, never overriding it silently.
  for (const char* name : {"verl/sapo", "verl/gmpo", "verl/gspo"}) {
    cgrpo::Recipe r;
    REQUIRE(cgrpo::preset(name, &r).ok());
    for (cgrpo::Aggregation mode : {cgrpo::Aggregation::token_mean, cgrpo::Aggregation::seq_mean_token_sum,
                                    cgrpo::Aggregation::seq_mean_token_mean, cgrpo::Aggregation::seq_mean_token_sum_norm}) {
      CAPTURE(name, to_string(mode));
      LossConfig c = r.loss;
      c.aggregation.policy = mode;
      const cgrpo::Status st = c.validate();
      if (mode == cgrpo::Aggregation::seq_mean_token_mean) {
        CHECK(st.ok());
        continue;
      }
      support::check_error(st, cgrpo::StatusCode::invalid_argument,
                           {"config.aggregation.policy", to_string(mode), "seq_mean_token_mean"});
      // The entropy and KL terms keep loss_agg_mode.
      LossConfig other = r.loss;
      other.aggregation.entropy = other.aggregation.kl = mode;
      CHECK(other.validate().ok());
    }
  }
  // verl_loss_mode sets the fixed aggregation, whatever it was.
  for (const char* mode : {"sapo", "geo_mean", "gspo"}) {
    CAPTURE(mode);
    LossConfig c = cgrpo::verl_vanilla().loss;
    c.aggregation.policy = cgrpo::Aggregation::token_mean;
    REQUIRE(cgrpo::verl_loss_mode(mode, &c).ok());
    CHECK(c.aggregation.policy == cgrpo::Aggregation::seq_mean_token_mean);
    CHECK(c.validate().ok());
  }
}
