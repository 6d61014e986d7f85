// Data parallelism on one process: a batch split by responses into k shards (groups spread across them)
// gives the full-batch advantages, loss and gradient once the group stats and the normalizers are all-reduced.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/parallel/global_scale.hpp>
#include <cgrpo/parallel/group_stats.hpp>
#include <cgrpo/parallel/metrics_reduce.hpp>

#include "cpu/reference.hpp"

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

// Responses [r0, r1) of `full` as a batch of their own (offsets rebased).
ref::Batch slice(const ref::Batch& full, int64_t r0, int64_t r1) {
  ref::Batch s;
  const int64_t t0 = full.offsets[r0], t1 = full.offsets[r1];
  s.B = r1 - r0;
  s.V = full.V;
  s.stride = full.stride;
  s.T = t1 - t0;
  for (int64_t i = r0; i <= r1; ++i) s.offsets.push_back(full.offsets[i] - t0);
  s.logits.assign(full.logits.begin() + t0 * full.stride, full.logits.begin() + t1 * full.stride);
  auto cut = [&](const auto& v) { return std::decay_t<decltype(v)>(v.begin() + t0, v.begin() + t1); };
  s.targets = cut(full.targets);
  s.mask = cut(full.mask);
  s.kinds = cut(full.kinds);
  s.adv = cut(full.adv);
  s.old_logp = cut(full.old_logp);
  s.ref_logp = cut(full.ref_logp);
  s.w_pg = cut(full.w_pg);
  s.w_h = cut(full.w_h);
  s.w_kl = cut(full.w_kl);
  return s;
}

// The library's own weights (not the reference's): this test is of the library's data-parallel
// pipeline, aggregation_partials -> to_scale -> aggregation_weights, end to end.
void library_weights(ref::Batch& b, const cgrpo::LossConfig& c, const cgrpo::AggregationScale& scale = {}) {
  const auto L = b.layout();
  REQUIRE(cgrpo::aggregation_weights(c.pg_aggregation, L, b.mask.data(), scale, b.w_pg.data()).ok());
  REQUIRE(cgrpo::aggregation_weights(c.entropy_aggregation, L, b.mask.data(), scale, b.w_h.data()).ok());
  REQUIRE(cgrpo::aggregation_weights(c.kl_aggregation, L, b.mask.data(), scale, b.w_kl.data()).ok());
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
                     cgrpo::AdvantageEstimator::rloo, cgrpo::AdvantageEstimator::reinforce_pp_baseline}) {
      CAPTURE(trial, B, G, k, cgrpo::to_string(est));
      std::vector<double> want(B);
      REQUIRE(cgrpo::group_advantages(est, cgrpo::GroupAssignment{B, group_ids.data(), G}, rewards.data(),
                                      token_counts.data(), 1e-6, want.data()).ok());

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
      for (int r = 0; r < k; ++r) {
        const cgrpo::GroupAssignment local{cuts[r + 1] - cuts[r], group_ids.data() + cuts[r], G};
        REQUIRE(cgrpo::parallel::group_advantages_from_stats(est, local, rewards.data() + cuts[r], sums.data(),
                                                             ext.data(), shift, 1e-6, got.data() + cuts[r]).ok());
      }
      if (est == cgrpo::AdvantageEstimator::reinforce_pp_baseline) {
        // The second reduction: token-weighted sums of R - mean, all-reduced (SUM), then whitened per rank.
        double wsum[3] = {0, 0, 0};
        for (int r = 0; r < k; ++r) {
          double part[3] = {0, 0, 0};
          REQUIRE(cgrpo::parallel::whitening_partial_stats(cuts[r + 1] - cuts[r], token_counts.data() + cuts[r],
                                                           got.data() + cuts[r], part).ok());
          for (int f = 0; f < 3; ++f) wsum[f] += part[f];
        }
        for (int r = 0; r < k; ++r)
          REQUIRE(cgrpo::parallel::whiten_from_stats(cuts[r + 1] - cuts[r], wsum, got.data() + cuts[r]).ok());
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
        const double tol = 1e-9 + 1e-15 * kappa;
        CAPTURE(i, rewards[i], want[i], got[i], kappa);
        // Advantages here are O(1) (rewards 0/1, 5 to 8 or equal; normalized or centred): floor 1.
        REQUIRE(ref::close(got[i], want[i], tol, 1.0));
        const bool all_equal_rule = est == cgrpo::AdvantageEstimator::grpo || est == cgrpo::AdvantageEstimator::grpo_no_std;
        if (want[i] == 0.0 && all_equal_rule) REQUIRE(got[i] == 0.0);  // all-equal rule, exact
      }
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
  // Whitening needs two valid tokens in the whole batch, as on one process.
  const double one_token[3] = {1.0, 0.5, 0.25};
  REQUIRE(cgrpo::parallel::whiten_from_stats(2, one_token, adv).code == cgrpo::StatusCode::invalid_argument);
  REQUIRE(adv[0] == 7);
}

TEST_CASE("sum of shard losses and shard gradients equals the full batch, every aggregation mode", "[parallel][data]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  const cgrpo::Aggregation modes[] = {cgrpo::Aggregation::token_mean, cgrpo::Aggregation::seq_mean_token_sum,
                                      cgrpo::Aggregation::seq_mean_token_mean,
                                      cgrpo::Aggregation::seq_mean_token_sum_norm};
  const ref::Clip clips[] = {ref::Clip::none, ref::Clip::token, ref::Clip::sequence};
  int cases = 0;
  for (cgrpo::Aggregation pg_mode : modes)
    for (cgrpo::Aggregation other_mode : modes)
      for (ref::Clip clip : clips)
        for (int k : {1, 2, 3, 5}) {
          const int64_t B = 6 + static_cast<int64_t>(rng() % 10), G = 2 + static_cast<int64_t>(rng() % 3);
          ref::Batch full = ref::random_batch(rng, B, 9, 37, static_cast<int64_t>(rng() % 3));
          cgrpo::LossConfig c;
          c.advantage = (cases % 3 == 0)   ? cgrpo::AdvantageEstimator::grpo
                        : (cases % 3 == 1) ? cgrpo::AdvantageEstimator::grpo_no_std
                                           : cgrpo::AdvantageEstimator::rloo;
          ref::set_clip(c, clip);
          c.dual_clip = clip == ref::Clip::token && (cases % 2 == 0);
          c.pg_aggregation = pg_mode;
          c.entropy_aggregation = other_mode;
          c.kl_aggregation = other_mode;
          c.entropy_coef = 0.01;
          c.kl = cgrpo::KlEstimator::k3;
          c.kl_coef = 0.05;
          CAPTURE(cases, cgrpo::to_string(pg_mode), cgrpo::to_string(other_mode), ref::to_string(clip), k, B);
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
          REQUIRE(cgrpo::parallel::group_advantages_from_stats(c.advantage, cgrpo::GroupAssignment{B, group_ids.data(), G},
                                                               rewards.data(), gsums.data(), gext.data(), 0.0,
                                                               c.advantage_eps, adv.data()).ok());
          cgrpo::broadcast_to_tokens(full.layout(), adv.data(), full.adv.data());

          // The full batch, normalizers taken from itself (AggregationScale{} = "this batch").
          library_weights(full, c);
          ref::LibraryBatch<double> lib_full(full);
          std::vector<double> grad_full(full.T * full.stride, 0.0);
          cgrpo::LossMetrics m_full;
          cgrpo::PolicyLossOutputs<double> out_full;
          out_full.grad_logits = grad_full.data();
          out_full.metrics = &m_full;
          REQUIRE(cgrpo::cpu::fused_policy_loss(c, lib_full.view, out_full).ok());

          // Shards: each rank measures its normalizers; "all-reduce"; then each rank computes its
          // advantages (from the reduced group stats), weights and loss on its own responses only.
          cgrpo::parallel::AggregationPartials partials;
          std::vector<ref::Batch> shards;
          for (int r = 0; r < k; ++r) {
            shards.push_back(slice(full, cuts[r], cuts[r + 1]));
            cgrpo::parallel::AggregationPartials p;
            REQUIRE(cgrpo::parallel::aggregation_partials(shards[r].layout(), shards[r].mask.data(), &p).ok());
            partials = cgrpo::parallel::aggregation_partials_merge(partials, p);
          }
          const cgrpo::AggregationScale scale = partials.to_scale();
          REQUIRE(scale.sequence_count == double(B));

          double metric_sums[cgrpo::parallel::kMetricSumFields] = {};  // the caller's all-reduce (SUM)
          std::vector<double> grad_cat;
          for (int r = 0; r < k; ++r) {
            ref::Batch& s = shards[r];
            const cgrpo::GroupAssignment local{s.B, group_ids.data() + cuts[r], G};
            std::vector<double> adv_local(s.B);
            REQUIRE(cgrpo::parallel::group_advantages_from_stats(c.advantage, local, rewards.data() + cuts[r],
                                                                 gsums.data(), gext.data(), 0.0, c.advantage_eps,
                                                                 adv_local.data()).ok());
            cgrpo::broadcast_to_tokens(s.layout(), adv_local.data(), s.adv.data());
            library_weights(s, c, scale);
            ref::LibraryBatch<double> lib(s);
            std::vector<double> grad(s.T * s.stride, 0.0);
            cgrpo::LossMetrics m;
            cgrpo::PolicyLossOutputs<double> out;
            out.grad_logits = grad.data();
            out.metrics = &m;
            REQUIRE(cgrpo::cpu::fused_policy_loss(c, lib.view, out).ok());
            double part[cgrpo::parallel::kMetricSumFields];
            cgrpo::parallel::metrics_to_sums(m, part);
            for (int f = 0; f < cgrpo::parallel::kMetricSumFields; ++f) metric_sums[f] += part[f];
            grad_cat.insert(grad_cat.end(), grad.begin(), grad.end());
          }
          // Shards against the full batch, both double: each value within double_rel of the size of
          // what it is made of (ref::Magnitudes); the gradient row by row (ref::row_gradient_scales).
          const ref::Result want = ref::loss(full, full.logits, c);
          const ref::Magnitudes& mag = want.mag;
          const double rel = ref::double_rel(want, full);
          const cgrpo::LossMetrics m = cgrpo::parallel::metrics_from_sums(metric_sums);
          REQUIRE(ref::close(m.loss, m_full.loss, rel, mag.loss));
          REQUIRE(ref::close(m.pg_loss, m_full.pg_loss, rel, mag.pg));
          REQUIRE(ref::close(m.pg_loss_initial, m_full.pg_loss_initial, rel, mag.pg_initial));
          REQUIRE(ref::close(m.pg_loss_refinement, m_full.pg_loss_refinement, rel, mag.pg_refinement));
          REQUIRE(ref::close(m.entropy_loss, m_full.entropy_loss, rel, mag.entropy_agg));
          REQUIRE(ref::close(m.kl_loss, m_full.kl_loss, rel, mag.kl_agg));
          REQUIRE(ref::close(m.pg_clipfrac, m_full.pg_clipfrac, rel, 1.0));
          REQUIRE(ref::close(m.pg_clipfrac_lower, m_full.pg_clipfrac_lower, rel, 1.0));
          REQUIRE(ref::close(m.ppo_kl, m_full.ppo_kl, rel, mag.ppo_kl));
          REQUIRE(ref::close(m.entropy_mean, m_full.entropy_mean, rel, mag.entropy_mean));
          REQUIRE(ref::close(m.kl_mean, m_full.kl_mean, rel, mag.kl_mean));
          REQUIRE(ref::close(m.refinement_prob_mean, m_full.refinement_prob_mean, rel, mag.prob_mean));
          REQUIRE(ref::close(m.ratio_mean, m_full.ratio_mean, rel, mag.ratio_mean));
          REQUIRE(m.num_valid_tokens == m_full.num_valid_tokens);
          REQUIRE(m.num_initial_tokens == m_full.num_initial_tokens);
          REQUIRE(m.num_refinement_tokens == m_full.num_refinement_tokens);
          REQUIRE(max_abs(grad_full) > 0);
          REQUIRE(ref::close_rows(grad_cat, grad_full, full, rel, ref::row_gradient_scales(full, want, c)));
        }
  REQUIRE(cases == 4 * 4 * 3 * 4);
}

TEST_CASE("data parallel: shard normalizers taken from the shard itself do NOT give the full gradient",
          "[parallel][data]") {
  // The negative control: without the global AggregationScale the shards disagree with the
  // full batch, so the test above would catch a library that ignored the scale.
  std::mt19937_64 rng = test_seed::fresh_rng();
  ref::Batch full = ref::random_batch(rng, 8, 9, 17, 0);
  cgrpo::LossConfig c;
  c.pg_aggregation = cgrpo::Aggregation::token_mean;
  c.entropy_coef = 0.0;
  library_weights(full, c);
  ref::LibraryBatch<double> lib_full(full);
  cgrpo::LossMetrics m_full;
  cgrpo::PolicyLossOutputs<double> out_full;
  out_full.metrics = &m_full;
  REQUIRE(cgrpo::cpu::fused_policy_loss(c, lib_full.view, out_full).ok());
  double sum_local = 0;
  for (auto [r0, r1] : {std::pair<int64_t, int64_t>{0, 3}, {3, 8}}) {
    ref::Batch s = slice(full, r0, r1);
    library_weights(s, c);  // local token count: wrong under data parallelism
    ref::LibraryBatch<double> lib(s);
    cgrpo::LossMetrics m;
    cgrpo::PolicyLossOutputs<double> out;
    out.metrics = &m;
    REQUIRE(cgrpo::cpu::fused_policy_loss(c, lib.view, out).ok());
    sum_local += m.loss;
  }
  // The negative control must not pass by rounding: a difference of 1e-6 of the loss's size.
  REQUIRE(std::fabs(sum_local - m_full.loss) > 1e-6 * ref::loss(full, full.logits, c).mag.loss);
}
