// Data parallelism on one process: a batch split by responses into k shards (groups spread across them)
// gives the full-batch advantages, loss and gradient once the group stats and the normalizers are all-reduced.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/parallel/global_scale.hpp>
#include <cgrpo/parallel/group_stats.hpp>
#include <cgrpo/parallel/metrics_reduce.hpp>

#include "batch.hpp"
#include "catalog.hpp"
#include "reference.hpp"

namespace {

using ref::max_abs;

// Rewards of a mix that covers the edge cases: 0/1 rewards, continuous ones, a group whose
// rewards are all equal (by default 0.1: not exactly representable, so a mean of them is
// not exactly 0.1), and one-member groups.
std::vector<double> random_rewards(std::mt19937_64& rng, const std::vector<int32_t>& group_ids, int64_t G,
                                   double equal_value = 0.1) {
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  std::vector<int> style(G);
  for (int64_t g = 0; g < G; ++g) style[g] = static_cast<int>(uni(rng) * 3);
  std::vector<double> r(group_ids.size());
  for (size_t i = 0; i < r.size(); ++i) {
    const int s = style[group_ids[i]];
    r[i] = s == 0 ? (uni(rng) < 0.5 ? 0.0 : 1.0) : s == 1 ? 5.0 + 3.0 * uni(rng) : equal_value;
  }
  return r;
}

// The library's own weights (not the reference's): this test is of the library's data-parallel
// pipeline, aggregation_partials -> to_scale -> aggregation_weights, end to end.
void library_weights(ref::Batch& b, const cgrpo::LossConfig& c, const cgrpo::AggregationScale& scale = {}) {
  const cgrpo::Status s = support::set_library_weights(b, c, scale);
  INFO(s.message);
  REQUIRE(s.ok());
}

// One loss call on `b` (double): with the caller's weights (b.w_*, set by library_weights), or with
// the weights the loss forms itself from the config and `scale` (batch.scale). grad may be null.
cgrpo::LossMetrics run_loss(const ref::Batch& b, const cgrpo::LossConfig& c, support::Weights weights,
                            const cgrpo::AggregationScale& scale, std::vector<double>* grad) {
  support::LibraryBatch<double> lib(b, c, weights);
  if (weights == support::Weights::computed) lib.view.scale = scale;
  if (grad) grad->assign(static_cast<size_t>(b.T * b.stride), 0.0);
  cgrpo::LossMetrics m;
  cgrpo::PolicyLossOutputs<double> out;
  out.grad_logits = grad ? grad->data() : nullptr;
  out.metrics = &m;
  const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(c, lib.view, out);
  INFO(s.message);
  REQUIRE(s.ok());
  return m;
}

// The rows the config's convention counts as sequences: every row, or only rows with a valid token
// (verl's B+).
double convention_rows(const ref::Batch& b, const cgrpo::AggregationConvention& conv) {
  double rows = 0;
  for (int64_t i = 0; i < b.B; ++i) {
    bool any = false;
    for (int64_t t = b.begin(i); t < b.end(i); ++t) any = any || b.mask[t] != 0;
    rows += conv.count_empty_rows || any ? 1.0 : 0.0;
  }
  return rows;
}

// How far the whitening lets rounding grow, for the tolerance of whitened advantages (v: the values
// before it, n: token counts). scale: the size A is formed from, max(1, max |v| / sqrt(var + 1e-8))
// (an error in v moves A by that much per unit of v's relative error). kappa: (sum n v^2 / N) /
// (var + 1e-8): the ranks' one-pass variance, sum n v^2 - 2 mu sum n v + mu^2 N, carries a rounding
// of ~1e-16 sum n v^2, relative to var + 1e-8 that is 1e-16 kappa (large when at most one response
// has tokens: var ~ 0 and A = (v - mu) / 1e-4 for the empty rows).
struct WhitenConditioning {
  double scale = 1.0, kappa = 0.0;
};
WhitenConditioning whiten_conditioning(const std::vector<double>& v, const std::vector<int64_t>& n, double count_eps) {
  double N = 0, s1 = 0, s2 = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    N += static_cast<double>(n[i]);
    s1 += static_cast<double>(n[i]) * v[i];
    s2 += static_cast<double>(n[i]) * v[i] * v[i];
  }
  const double mu = s1 / (N + count_eps);
  double m2 = 0;
  for (size_t i = 0; i < v.size(); ++i) m2 += static_cast<double>(n[i]) * (v[i] - mu) * (v[i] - mu);
  const double var = m2 / (N + count_eps) * (N / (N - 1)) + 1e-8;
  WhitenConditioning c;
  for (double x : v) c.scale = std::max(c.scale, std::fabs(x) / std::sqrt(var));
  c.kappa = s2 / N / var;
  return c;
}

// k contiguous response ranges of uneven sizes (some possibly empty).
std::vector<int64_t> shard_bounds(std::mt19937_64& rng, int64_t B, int k) {
  std::vector<int64_t> cuts{0, B};
  std::uniform_int_distribution<int64_t> pick(0, B);
  for (int i = 1; i < k; ++i) cuts.push_back(pick(rng));
  std::sort(cuts.begin(), cuts.end());
  return cuts;
}

}  // namespace

TEST_CASE("group advantages from all-reduced partial stats equal the single-process ones", "[parallel][advantages]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  for (int trial = 0; trial < 60; ++trial) {
    const int64_t B = 1 + static_cast<int64_t>(rng() % 40), G = 1 + static_cast<int64_t>(rng() % 8);
    const int k = 1 + static_cast<int>(rng() % 4);
    std::vector<int32_t> group_ids(B);
    for (auto& g : group_ids) g = static_cast<int32_t>(rng() % G);  // members spread over every shard
    const std::vector<double> rewards = random_rewards(rng, group_ids, G);
    const double shift = (trial % 2) ? 0.0 : 5.0;
    const auto cuts = shard_bounds(rng, B, k);
    std::vector<int64_t> token_counts(B);
    for (auto& n : token_counts) n = static_cast<int64_t>(rng() % 11);  // valid tokens per response, 0 allowed
    token_counts[0] = std::max<int64_t>(token_counts[0], 2);             // whitening needs >= 2 in the batch
    for (auto est : {cgrpo::AdvantageEstimator::grpo, cgrpo::AdvantageEstimator::grpo_no_std,
                     cgrpo::AdvantageEstimator::rloo, cgrpo::AdvantageEstimator::reinforce_pp_baseline,
                     cgrpo::AdvantageEstimator::gdpo}) {
      // Whitening as MATH.md (exact counts) on odd trials, as verl's masked_whiten (N + 1e-8) on even ones;
      // gdpo (one component) always as verl's (N + 1e-8), the count its trainer uses.
      const bool whitened =
          est == cgrpo::AdvantageEstimator::reinforce_pp_baseline || est == cgrpo::AdvantageEstimator::gdpo;
      const double count_eps = est == cgrpo::AdvantageEstimator::gdpo ? 1e-8 : (trial % 2) ? 0.0 : 1e-8;
      CAPTURE(trial, B, G, k, cgrpo::to_string(est), count_eps);
      std::vector<double> want(B);
      REQUIRE(cgrpo::group_advantages(est, cgrpo::GroupAssignment{B, group_ids.data(), G}, rewards.data(),
                                      token_counts.data(), 1e-6, want.data(), 1e-8, count_eps).ok());

      // Each rank's partials, then the all-reduce (SUM / MAX), simulated in both ways.
      std::vector<double> sums(G * cgrpo::parallel::kGroupSumFields), ext(G * cgrpo::parallel::kGroupExtremaFields);
      std::vector<double> sums_k(sums.size()), ext_k(ext.size());
      for (int r = 0; r < k; ++r) {
        const cgrpo::GroupAssignment local{cuts[r + 1] - cuts[r], group_ids.data() + cuts[r], G};
        REQUIRE(cgrpo::parallel::group_partial_stats(local, rewards.data() + cuts[r], shift, sums_k.data(),
                                                     ext_k.data()).ok());
        if (r == 0) {
          sums = sums_k;
          ext = ext_k;
        } else {
          cgrpo::parallel::group_partial_stats_merge(G, sums_k.data(), ext_k.data(), sums.data(), ext.data());
        }
      }
      std::vector<double> got(B, -999.0);
      WhitenConditioning conditioning;  // whitened estimators only
      for (int r = 0; r < k; ++r) {
        const cgrpo::GroupAssignment local{cuts[r + 1] - cuts[r], group_ids.data() + cuts[r], G};
        REQUIRE(cgrpo::parallel::group_advantages_from_stats(est, local, rewards.data() + cuts[r], sums.data(),
                                                             ext.data(), shift, 1e-6, got.data() + cuts[r]).ok());
      }
      if (whitened) {
        conditioning = whiten_conditioning(got, token_counts, count_eps);
        // The second reduction: token-weighted sums of R - mean (gdpo: of grpo's A), all-reduced (SUM),
        // then whitened per rank.
        double wsum[3] = {0, 0, 0};
        for (int r = 0; r < k; ++r) {
          double part[3] = {0, 0, 0};
          REQUIRE(cgrpo::parallel::whitening_partial_stats(cuts[r + 1] - cuts[r], token_counts.data() + cuts[r],
                                                           got.data() + cuts[r], part).ok());
          for (int f = 0; f < 3; ++f) wsum[f] += part[f];
        }
        for (int r = 0; r < k; ++r)
          REQUIRE(cgrpo::parallel::whiten_from_stats(cuts[r + 1] - cuts[r], wsum, got.data() + cuts[r], 1e-8,
                                                     count_eps).ok());
      }
      // The single all-reduce sums (R - shift)^2: the variance then carries a relative error of
      // about 1e-16 * kappa, kappa = sum (R - shift)^2 / sum (R - mean)^2 of the group (large
      // for two close rewards far from the shift; group_stats.hpp says so).
      std::vector<double> mean(G, 0.0), n(G, 0.0), spread(G, 0.0), shifted(G, 0.0);
      for (int64_t i = 0; i < B; ++i) mean[group_ids[i]] += rewards[i], n[group_ids[i]] += 1;
      for (int64_t g = 0; g < G; ++g) mean[g] /= std::max(n[g], 1.0);
      for (int64_t i = 0; i < B; ++i) {
        spread[group_ids[i]] += (rewards[i] - mean[group_ids[i]]) * (rewards[i] - mean[group_ids[i]]);
        shifted[group_ids[i]] += (rewards[i] - shift) * (rewards[i] - shift);
      }
      for (int64_t i = 0; i < B; ++i) {
        const int32_t g = group_ids[i];
        const double kappa = spread[g] > 0 ? shifted[g] / spread[g] : 0.0;
        const double tol = 1e-9 + 1e-15 * kappa + 1e-14 * conditioning.kappa;
        CAPTURE(i, rewards[i], want[i], got[i], kappa, conditioning.kappa, conditioning.scale);
        // Advantages here are O(1) (rewards 0/1, 5 to 8 or equal; normalized or centred): floor 1
        // (whitened: the whitening's scale, 1 unless at most one response has tokens).
        REQUIRE(ref::close(got[i], want[i], tol, conditioning.scale));
        const bool all_equal_rule = est == cgrpo::AdvantageEstimator::grpo || est == cgrpo::AdvantageEstimator::grpo_no_std;
        if (want[i] == 0.0 && all_equal_rule) REQUIRE(got[i] == 0.0);  // all-equal rule, exact
      }
    }
  }
}

TEST_CASE("gdpo with K components across ranks: per-component stats, then the whitening of S",
          "[parallel][advantages]") {
  // The recipe of group_stats.hpp: group_partial_stats and group_advantages_from_stats(gdpo) per
  // component, S_i = sum_k w_k A_ik on each rank, then whitening_partial_stats / whiten_from_stats
  // over S with verl's 1e-8 and N + 1e-8; against cgrpo::gdpo_advantages on one process.
  std::mt19937_64 rng = test_seed::fresh_rng();
  std::uniform_real_distribution<double> uni(0.25, 2.0);
  for (int trial = 0; trial < 40; ++trial) {
    const int64_t B = 2 + static_cast<int64_t>(rng() % 40), G = 1 + static_cast<int64_t>(rng() % 8);
    const int64_t K = 1 + trial % 4;
    const int k_ranks = 1 + static_cast<int>(rng() % 4);
    std::vector<int32_t> group_ids(B);
    for (auto& g : group_ids) g = static_cast<int32_t>(rng() % G);
    std::vector<std::vector<double>> columns(K);
    for (auto& c : columns) c = random_rewards(rng, group_ids, G);
    std::vector<double> flat(B * K), weights(K);
    for (int64_t i = 0; i < B; ++i)
      for (int64_t k = 0; k < K; ++k) flat[i * K + k] = columns[k][i];
    for (auto& w : weights) w = (rng() % 3 == 0 ? -1.0 : 1.0) * uni(rng);  // |w| >= 0.25: S keeps a spread
    std::vector<int64_t> token_counts(B);
    for (auto& n : token_counts) n = static_cast<int64_t>(rng() % 11);
    token_counts[0] = std::max<int64_t>(token_counts[0], 2);
    const double shift = (trial % 2) ? 0.0 : 5.0;
    const auto cuts = shard_bounds(rng, B, k_ranks);
    CAPTURE(trial, B, G, K, k_ranks);
    const cgrpo::AdvantageConfig config = cgrpo::verl_advantages(cgrpo::AdvantageEstimator::gdpo);
    std::vector<double> want(B), want_S(B);
    REQUIRE(cgrpo::gdpo_advantages(config, cgrpo::GroupAssignment{B, group_ids.data(), G}, flat.data(), K,
                                   weights.data(), token_counts.data(), want.data(), want_S.data())
                .ok());

    std::vector<double> S(B, 0.0);
    double kappa = 0;  // the worst conditioning of a group's one-pass variance (see the test above)
    for (int64_t k = 0; k < K; ++k) {
      std::vector<double> sums(G * cgrpo::parallel::kGroupSumFields), ext(G * cgrpo::parallel::kGroupExtremaFields);
      std::vector<double> sums_r(sums.size()), ext_r(ext.size());
      for (int r = 0; r < k_ranks; ++r) {
        const cgrpo::GroupAssignment local{cuts[r + 1] - cuts[r], group_ids.data() + cuts[r], G};
        REQUIRE(cgrpo::parallel::group_partial_stats(local, columns[k].data() + cuts[r], shift, sums_r.data(),
                                                     ext_r.data()).ok());
        if (r == 0) {
          sums = sums_r;
          ext = ext_r;
        } else {
          REQUIRE(cgrpo::parallel::group_partial_stats_merge(G, sums_r.data(), ext_r.data(), sums.data(), ext.data())
                      .ok());
        }
      }
      std::vector<double> a(B, -999.0);
      for (int r = 0; r < k_ranks; ++r) {
        const cgrpo::GroupAssignment local{cuts[r + 1] - cuts[r], group_ids.data() + cuts[r], G};
        REQUIRE(cgrpo::parallel::group_advantages_from_stats(cgrpo::AdvantageEstimator::gdpo, local,
                                                             columns[k].data() + cuts[r], sums.data(), ext.data(),
                                                             shift, 1e-6, a.data() + cuts[r]).ok());
      }
      for (int64_t i = 0; i < B; ++i) S[i] += weights[k] * a[i];
      std::vector<double> mean(G, 0.0), n(G, 0.0), spread(G, 0.0), shifted(G, 0.0);
      for (int64_t i = 0; i < B; ++i) mean[group_ids[i]] += columns[k][i], n[group_ids[i]] += 1;
      for (int64_t g = 0; g < G; ++g) mean[g] /= std::max(n[g], 1.0);
      for (int64_t i = 0; i < B; ++i) {
        const int32_t g = group_ids[i];
        spread[g] += (columns[k][i] - mean[g]) * (columns[k][i] - mean[g]);
        shifted[g] += (columns[k][i] - shift) * (columns[k][i] - shift);
      }
      for (int64_t g = 0; g < G; ++g)
        if (spread[g] > 0) kappa = std::max(kappa, shifted[g] / spread[g]);
    }
    double wsum[3] = {0, 0, 0};
    for (int r = 0; r < k_ranks; ++r) {
      double part[3] = {0, 0, 0};
      REQUIRE(cgrpo::parallel::whitening_partial_stats(cuts[r + 1] - cuts[r], token_counts.data() + cuts[r],
                                                       S.data() + cuts[r], part).ok());
      for (int f = 0; f < 3; ++f) wsum[f] += part[f];
    }
    std::vector<double> got = S;
    for (int r = 0; r < k_ranks; ++r)
      REQUIRE(cgrpo::parallel::whiten_from_stats(cuts[r + 1] - cuts[r], wsum, got.data() + cuts[r], 1e-8, 1e-8).ok());
    const double tol = 1e-9 + 1e-15 * kappa;
    const WhitenConditioning c = whiten_conditioning(S, token_counts, 1e-8);
    for (int64_t i = 0; i < B; ++i) {
      CAPTURE(i, want[i], got[i], want_S[i], S[i], kappa, c.kappa, c.scale);
      REQUIRE(ref::close(S[i], want_S[i], tol, 1.0));  // |w| <= 2 times K values of O(1)
      REQUIRE(ref::close(got[i], want[i], tol + 1e-14 * c.kappa, c.scale));
    }
  }
}

TEST_CASE("group stats across ranks: errors", "[parallel][advantages]") {
  const int32_t ids[2] = {0, 3};
  const double rewards[2] = {1.0, 0.0};
  double sums[2 * 3], ext[2 * 2];
  REQUIRE(cgrpo::parallel::group_partial_stats(cgrpo::GroupAssignment{2, ids, 2}, rewards, 0.0, sums, ext).code ==
          cgrpo::StatusCode::out_of_range);
  const double bad[2] = {1.0, NAN};
  const int32_t ok_ids[2] = {0, 1};
  REQUIRE(cgrpo::parallel::group_partial_stats(cgrpo::GroupAssignment{2, ok_ids, 2}, bad, 0.0, sums, ext).code ==
          cgrpo::StatusCode::non_finite);
  // Stats that were never reduced into (count 0 for a group this rank uses) are an error, not a NaN.
  REQUIRE(cgrpo::parallel::group_partial_stats(cgrpo::GroupAssignment{0, ok_ids, 2}, rewards, 0.0, sums, ext).ok());
  double adv[2] = {7, 7};
  REQUIRE(cgrpo::parallel::group_advantages_from_stats(cgrpo::AdvantageEstimator::grpo,
                                                       cgrpo::GroupAssignment{2, ok_ids, 2}, rewards, sums, ext, 0.0,
                                                       1e-6, adv).code == cgrpo::StatusCode::invalid_argument);
  REQUIRE(adv[0] == 7);
  REQUIRE(cgrpo::parallel::group_advantages_from_stats(static_cast<cgrpo::AdvantageEstimator>(9),
                                                       cgrpo::GroupAssignment{2, ok_ids, 2}, rewards, sums, ext, 0.0,
                                                       1e-6, adv).code == cgrpo::StatusCode::invalid_argument);
  // grpo_batch_std needs the batch's std, which these stats do not hold: refused by name (gdpo is offered).
  const cgrpo::Status batch_std = cgrpo::parallel::group_advantages_from_stats(
      cgrpo::AdvantageEstimator::grpo_batch_std, cgrpo::GroupAssignment{2, ok_ids, 2}, rewards, sums, ext, 0.0,
      1e-6, adv);
  REQUIRE(batch_std.code == cgrpo::StatusCode::invalid_argument);
  REQUIRE(std::string(batch_std.message).find("grpo_batch_std") != std::string::npos);
  REQUIRE(adv[0] == 7);
  // Whitening needs two valid tokens in the whole batch, as on one process.
  const double one_token[3] = {1.0, 0.5, 0.25};
  REQUIRE(cgrpo::parallel::whiten_from_stats(2, one_token, adv).code == cgrpo::StatusCode::invalid_argument);
  REQUIRE(adv[0] == 7);
  // Negative or non-finite epsilons are refused by name before anything is written.
  const double three_tokens[3] = {3.0, 0.5, 0.25};
  REQUIRE(cgrpo::parallel::whiten_from_stats(2, three_tokens, adv, -1e-8).code == cgrpo::StatusCode::invalid_argument);
  REQUIRE(cgrpo::parallel::whiten_from_stats(2, three_tokens, adv, 1e-8, NAN).code ==
          cgrpo::StatusCode::invalid_argument);
  REQUIRE(adv[0] == 7);
}

namespace {

// The data-parallel recipe under one convention of the denominators: the batch split into k shards,
// the normalizers all-reduced (aggregation_partials -> merge -> to_scale), each shard's loss on its
// own responses; the shards' losses, metrics and gradients against the full batch's, with the
// caller's weights (aggregation_weights with the global scale) and with the loss's own (batch.scale).
// Some responses have no valid token, so that the conventions' row counts differ.
void check_sharded_losses(const cgrpo::AggregationConvention& convention) {
  std::mt19937_64 rng = test_seed::fresh_rng();
  const cgrpo::Aggregation modes[] = {cgrpo::Aggregation::token_mean, cgrpo::Aggregation::seq_mean_token_sum,
                                      cgrpo::Aggregation::seq_mean_token_mean,
                                      cgrpo::Aggregation::seq_mean_token_sum_norm, cgrpo::Aggregation::token_sum};
  const ref::Clip clips[] = {ref::Clip::none, ref::Clip::token, ref::Clip::sequence};
  int cases = 0;
  for (cgrpo::Aggregation pg_mode : modes)
    for (cgrpo::Aggregation other_mode : modes)
      for (ref::Clip clip : clips)
        for (int k : {1, 2, 3, 5}) {
          const int64_t B = 6 + static_cast<int64_t>(rng() % 10), G = 2 + static_cast<int64_t>(rng() % 3);
          ref::Batch full = ref::random_batch(rng, B, 9, 37, static_cast<int64_t>(rng() % 3));
          // Responses without a valid token (every token masked): one always (not the first two,
          // which random_batch makes one initial and one refinement), others at random.
          std::vector<int64_t> empty_rows = {2 + static_cast<int64_t>(rng() % (B - 2))};
          for (int64_t i = 2; i < B; ++i)
            if (rng() % 6 == 0) empty_rows.push_back(i);
          for (int64_t i : empty_rows)
            for (int64_t t = full.begin(i); t < full.end(i); ++t) full.mask[t] = 0;
          cgrpo::AdvantageConfig advantage;
          advantage.estimator = (cases % 3 == 0)   ? cgrpo::AdvantageEstimator::grpo
                                : (cases % 3 == 1) ? cgrpo::AdvantageEstimator::grpo_no_std
                                                   : cgrpo::AdvantageEstimator::rloo;
          cgrpo::LossConfig c;
          c.aggregation.policy = pg_mode;
          c.aggregation.entropy = other_mode;
          c.aggregation.kl = other_mode;
          c.aggregation.convention = convention;
          // After the modes: verl's GSPO form (Clip::sequence) always aggregates its policy term
          // seq-mean-token-mean, whatever pg_mode says (the config refuses any other).
          ref::set_clip(c, clip);
          c.ratio.dual_clip = clip == ref::Clip::token && (cases % 2 == 0);
          c.entropy.coef = 0.01;
          c.kl.estimator = cgrpo::KlEstimator::k3;
          c.kl.coef = 0.05;
          REQUIRE(c.validate().ok());
          CAPTURE(cases, cgrpo::to_string(c.aggregation.policy), cgrpo::to_string(other_mode), ref::to_string(clip), k, B);
          ++cases;

          // Rewards and groups spread across the shards; full-batch advantages broadcast to tokens.
          std::vector<int32_t> group_ids(B);
          for (auto& g : group_ids) g = static_cast<int32_t>(rng() % G);
          // Equal rewards of 1.0 here: rloo gives an all-equal group A = n/(n-1) (R - mean), which is
          // rounding noise for 0.1 and would flip clip flags at random (the loss would still agree).
          const std::vector<double> rewards = random_rewards(rng, group_ids, G, 1.0);
          // Group stats: each rank's partials, then the "all-reduce". The full batch takes its
          // advantages from the same reduced stats, so that this test measures the sharding of the
          // loss (normalizers, metrics, gradient) alone; the test above compares the advantages
          // with the single-process ones.
          const auto cuts = shard_bounds(rng, B, k);
          std::vector<double> gsums(G * 3, 0.0), gext(G * 2, -INFINITY), s_k(G * 3), e_k(G * 2);
          for (int r = 0; r < k; ++r) {
            const cgrpo::GroupAssignment local{cuts[r + 1] - cuts[r], group_ids.data() + cuts[r], G};
            REQUIRE(cgrpo::parallel::group_partial_stats(local, rewards.data() + cuts[r], 0.0, s_k.data(), e_k.data())
                        .ok());
            cgrpo::parallel::group_partial_stats_merge(G, s_k.data(), e_k.data(), gsums.data(), gext.data());
          }
          std::vector<double> adv(B);
          REQUIRE(cgrpo::parallel::group_advantages_from_stats(advantage.estimator,
                                                               cgrpo::GroupAssignment{B, group_ids.data(), G},
                                                               rewards.data(), gsums.data(), gext.data(), 0.0,
                                                               advantage.eps, adv.data()).ok());
          cgrpo::broadcast_to_tokens(full.layout(), adv.data(), full.adv.data());

          // The full batch, normalizers taken from itself (AggregationScale{} = "this batch"): the
          // caller's weights, and the loss's own.
          library_weights(full, c);
          std::vector<double> grad_full, grad_full_computed;
          const cgrpo::LossMetrics m_full = run_loss(full, c, support::Weights::caller, {}, &grad_full);
          const cgrpo::LossMetrics m_full_computed =
              run_loss(full, c, support::Weights::computed, {}, &grad_full_computed);

          // Shards: each rank measures its normalizers; "all-reduce"; then each rank computes its
          // advantages (from the reduced group stats), weights and loss on its own responses only.
          cgrpo::parallel::AggregationPartials partials;
          std::vector<ref::Batch> shards;
          for (int r = 0; r < k; ++r) {
            shards.push_back(support::slice_responses(full, cuts[r], cuts[r + 1]));
            cgrpo::parallel::AggregationPartials p;
            REQUIRE(cgrpo::parallel::aggregation_partials(shards[r].layout(), shards[r].mask.data(), &p).ok());
            partials = cgrpo::parallel::aggregation_partials_merge(partials, p);
          }
          const cgrpo::AggregationScale scale = partials.to_scale();
          // The global B of both rules, as each convention counts it on the full batch (every row, and
          // verl's B+ of the rows with a valid token): the loss takes the one its term's rule asks for.
          CHECK(scale.sequence_count == convention_rows(full, cgrpo::trl_aggregation()));
          CHECK(scale.nonempty_sequence_count ==
                convention_rows(full, cgrpo::verl_aggregation(cgrpo::VerlActor::legacy_dp_actor)));

          // The caller's all-reduce (SUM) of the metrics, for each way of forming the weights.
          double metric_sums[cgrpo::parallel::kMetricSumFields] = {};
          double metric_sums_computed[cgrpo::parallel::kMetricSumFields] = {};
          std::vector<double> grad_cat, grad_cat_computed;
          for (int r = 0; r < k; ++r) {
            ref::Batch& s = shards[r];
            const cgrpo::GroupAssignment local{s.B, group_ids.data() + cuts[r], G};
            std::vector<double> adv_local(s.B);
            REQUIRE(cgrpo::parallel::group_advantages_from_stats(advantage.estimator, local, rewards.data() + cuts[r],
                                                                 gsums.data(), gext.data(), 0.0, advantage.eps,
                                                                 adv_local.data()).ok());
            cgrpo::broadcast_to_tokens(s.layout(), adv_local.data(), s.adv.data());
            library_weights(s, c, scale);
            std::vector<double> grad, grad_computed;
            const cgrpo::LossMetrics m = run_loss(s, c, support::Weights::caller, {}, &grad);
            const cgrpo::LossMetrics m_computed = run_loss(s, c, support::Weights::computed, scale, &grad_computed);
            double part[cgrpo::parallel::kMetricSumFields];
            cgrpo::parallel::metrics_to_sums(m, part);
            for (int f = 0; f < cgrpo::parallel::kMetricSumFields; ++f) metric_sums[f] += part[f];
            cgrpo::parallel::metrics_to_sums(m_computed, part);
            for (int f = 0; f < cgrpo::parallel::kMetricSumFields; ++f) metric_sums_computed[f] += part[f];
            grad_cat.insert(grad_cat.end(), grad.begin(), grad.end());
            grad_cat_computed.insert(grad_cat_computed.end(), grad_computed.begin(), grad_computed.end());
          }
          // Shards against the full batch, both double: each value within double_rel of the size of
          // what it is made of (ref::Magnitudes); the gradient row by row (ref::row_gradient_scales).
          const ref::Result want = ref::loss(full, full.logits, c);
          const ref::Magnitudes& mag = want.mag;
          const double rel = ref::double_rel(want, full);
          const std::vector<double> row_scales = ref::row_gradient_scales(full, want, c);
          REQUIRE(max_abs(grad_full) > 0);
          for (bool computed : {false, true}) {
            CAPTURE(computed);
            const cgrpo::LossMetrics m =
                cgrpo::parallel::metrics_from_sums(computed ? metric_sums_computed : metric_sums);
            const cgrpo::LossMetrics& mf = computed ? m_full_computed : m_full;
            REQUIRE(ref::close(m.loss, mf.loss, rel, mag.loss));
            REQUIRE(ref::close(m.pg_loss, mf.pg_loss, rel, mag.pg));
            REQUIRE(ref::close(m.pg_loss_initial, mf.pg_loss_initial, rel, mag.pg_initial));
            REQUIRE(ref::close(m.pg_loss_refinement, mf.pg_loss_refinement, rel, mag.pg_refinement));
            REQUIRE(ref::close(m.entropy_loss, mf.entropy_loss, rel, mag.entropy_agg));
            REQUIRE(ref::close(m.kl_loss, mf.kl_loss, rel, mag.kl_agg));
            REQUIRE(ref::close(m.pg_clipfrac, mf.pg_clipfrac, rel, 1.0));
            REQUIRE(ref::close(m.pg_clipfrac_lower, mf.pg_clipfrac_lower, rel, 1.0));
            REQUIRE(ref::close(m.ppo_kl, mf.ppo_kl, rel, mag.ppo_kl));
            REQUIRE(ref::close(m.entropy_mean, mf.entropy_mean, rel, mag.entropy_mean));
            REQUIRE(ref::close(m.kl_mean, mf.kl_mean, rel, mag.kl_mean));
            REQUIRE(ref::close(m.refinement_prob_mean, mf.refinement_prob_mean, rel, mag.prob_mean));
            REQUIRE(ref::close(m.ratio_mean, mf.ratio_mean, rel, mag.ratio_mean));
            REQUIRE(m.num_valid_tokens == mf.num_valid_tokens);
            REQUIRE(m.num_initial_tokens == mf.num_initial_tokens);
            REQUIRE(m.num_refinement_tokens == mf.num_refinement_tokens);
            REQUIRE(ref::close_rows(computed ? grad_cat_computed : grad_cat, computed ? grad_full_computed : grad_full,
                                    full, rel, row_scales));
          }
          // The loss's own weights are the caller's (aggregation_weights follows the same rule).
          REQUIRE(ref::close(m_full_computed.loss, m_full.loss, rel, mag.loss));
          REQUIRE(ref::close_rows(grad_full_computed, grad_full, full, rel, row_scales));
        }
  REQUIRE(cases == 5 * 5 * 3 * 4);
}

}  // namespace

TEST_CASE("sum of shard losses and shard gradients equals the full batch, every aggregation mode, paper's denominators",
          "[parallel][data]") {
  check_sharded_losses(cgrpo::AggregationConvention{});
}

TEST_CASE("sum of shard losses and shard gradients equals the full batch, every aggregation mode, TRL's denominators",
          "[parallel][data]") {
  check_sharded_losses(cgrpo::trl_aggregation());
}

// verl's legacy dp_actor B+: seq-mean-* count only the rows with a valid token, so the all-reduced
// sequence count must be that count's sum.
TEST_CASE("sum of shard losses and shard gradients equals the full batch, every aggregation mode, verl's legacy "
          "dp_actor denominators",
          "[parallel][data]") {
  check_sharded_losses(cgrpo::verl_aggregation(cgrpo::VerlActor::legacy_dp_actor));
}

// verl's engine: every row, seq-mean-token-sum-norm / (B L) with the global B and L.
TEST_CASE("sum of shard losses and shard gradients equals the full batch, every aggregation mode, verl's engine "
          "denominators",
          "[parallel][data]") {
  check_sharded_losses(cgrpo::verl_aggregation(cgrpo::VerlActor::engine));
}

// Every catalog config whose loss is a sum over rows once the counts are global (no batch-level
// selection, quantile, normalization or rejection: those need more than the all-reduced counts),
// on a batch with responses that have no valid token, split into shards with the all-reduced
// AggregationScale: the shards' losses and gradients sum to the full batch's. Each shard holds whole
// responses, so every token's value is formed from the same numbers as in the full batch; with the
// right counts the two differ only in the order of T <= 60 summed terms of size O(10), ~1e-13 of
// 1 + |J|. 1e-10 of it leaves room; a wrong count (B for B+, or the reverse) is off by >= 1 / B.
TEST_CASE("data parallel: the catalog's row-separable configs, shards with the all-reduced counts",
          "[parallel][data]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  int tried = 0;
  for (const support::CatalogEntry& entry : support::catalog()) {
    const cgrpo::LossConfig& c = entry.config();
    const cgrpo::PassPlan plan = cgrpo::plan_passes(c, cgrpo::PassInputs{});
    if (plan.cov_select || plan.entropy_select || plan.rollout_normalize ||
        c.off_policy.rollout.num_rejection_options > 0)
      continue;
    ++tried;
    CAPTURE(entry.name);
    ref::Batch full = ref::random_batch(rng, 12, 7, 23, 1);
    for (int64_t i : {3, 7, 8})
      for (int64_t t = full.begin(i); t < full.end(i); ++t) full.mask[t] = 0;
    std::vector<double> grad_full;
    const cgrpo::LossMetrics m_full = run_loss(full, c, support::Weights::computed, {}, &grad_full);
    for (int k : {2, 3}) {
      CAPTURE(k);
      const std::vector<int64_t> cuts = k == 2 ? std::vector<int64_t>{0, 5, 12} : std::vector<int64_t>{0, 3, 9, 12};
      cgrpo::parallel::AggregationPartials partials;
      for (int r = 0; r < k; ++r) {
        const ref::Batch s = support::slice_responses(full, cuts[r], cuts[r + 1]);
        cgrpo::parallel::AggregationPartials p;
        REQUIRE(cgrpo::parallel::aggregation_partials(s.layout(), s.mask.data(), &p).ok());
        partials = cgrpo::parallel::aggregation_partials_merge(partials, p);
      }
      const cgrpo::AggregationScale scale = partials.to_scale();
      double loss = 0, pg = 0;
      std::vector<double> grad_cat;
      for (int r = 0; r < k; ++r) {
        const ref::Batch s = support::slice_responses(full, cuts[r], cuts[r + 1]);
        std::vector<double> grad;
        const cgrpo::LossMetrics m = run_loss(s, c, support::Weights::computed, scale, &grad);
        loss += m.loss;
        pg += m.pg_loss;
        grad_cat.insert(grad_cat.end(), grad.begin(), grad.end());
      }
      CHECK(ref::close(loss, m_full.loss, 1e-10, 1 + std::fabs(m_full.loss)));
      CHECK(ref::close(pg, m_full.pg_loss, 1e-10, 1 + std::fabs(m_full.pg_loss)));
      CHECK(ref::close_all(grad_cat, grad_full, 1e-10, max_abs(grad_full)));
    }
  }
  REQUIRE(tried > 40);
}

TEST_CASE("data parallel: shard normalizers taken from the shard itself do NOT give the full gradient",
          "[parallel][data]") {
  // The negative control: without the global AggregationScale the shards disagree with the
  // full batch, so the test above would catch a library that ignored the scale.
  std::mt19937_64 rng = test_seed::fresh_rng();
  ref::Batch full = ref::random_batch(rng, 8, 9, 17, 0);
  cgrpo::LossConfig c;
  c.aggregation.policy = cgrpo::Aggregation::token_mean;
  c.entropy.coef = 0.0;
  library_weights(full, c);
  const cgrpo::LossMetrics m_full = run_loss(full, c, support::Weights::caller, {}, nullptr);
  const ref::Result want = ref::loss(full, full.logits, c);
  REQUIRE(ref::close(run_loss(full, c, support::Weights::computed, {}, nullptr).loss, m_full.loss,
                     ref::double_rel(want, full), want.mag.loss));
  double sum_local = 0, sum_local_computed = 0;
  for (auto [r0, r1] : {std::pair<int64_t, int64_t>{0, 3}, {3, 8}}) {
    ref::Batch s = support::slice_responses(full, r0, r1);
    library_weights(s, c);  // local token count: wrong under data parallelism
    sum_local += run_loss(s, c, support::Weights::caller, {}, nullptr).loss;
    sum_local_computed += run_loss(s, c, support::Weights::computed, {}, nullptr).loss;  // batch.scale = {}: the same
  }
  // The negative control must not pass by rounding: a difference of 1e-6 of the loss's size.
  REQUIRE(std::fabs(sum_local - m_full.loss) > 1e-6 * want.mag.loss);
  REQUIRE(std::fabs(sum_local_computed - m_full.loss) > 1e-6 * want.mag.loss);
}
