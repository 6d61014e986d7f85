// Vocabulary (tensor) parallelism on one process: k = 1, 2, 3 uneven column shards, two-phase API,
// both reductions (row_stats_merge, and MAX + rebase + SUM) against the unsharded fused loss in double.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/parallel/vocab_parallel.hpp>

#include "batch.hpp"
#include "expect_error.hpp"
#include "reference.hpp"

namespace {

using cgrpo::RowStats;

// Columns [begin, begin + size) of every row, in a buffer of stride size + pad.
template <typename Real>
std::vector<Real> column_shard(const ref::Batch& b, int64_t begin, int64_t size, int64_t pad) {
  std::vector<Real> out(b.T * (size + pad), static_cast<Real>(-12345));
  for (int64_t t = 0; t < b.T; ++t)
    for (int64_t j = 0; j < size; ++j) out[t * (size + pad) + j] = static_cast<Real>(b.logits[t * b.stride + begin + j]);
  return out;
}

std::vector<int64_t> vocab_cuts(std::mt19937_64& rng, int64_t V, int k) {
  // k non-empty uneven parts of [0, V).
  std::vector<int64_t> cuts{0, V};
  while (static_cast<int>(cuts.size()) < k + 1) {
    const int64_t c = 1 + static_cast<int64_t>(rng() % (V - 1));
    if (std::find(cuts.begin(), cuts.end(), c) == cuts.end()) cuts.push_back(c);
  }
  std::sort(cuts.begin(), cuts.end());
  return cuts;
}

struct ShardedResult {
  cgrpo::LossMetrics metrics;
  std::vector<double> grad;  // [T, V] assembled from the shards
  std::vector<double> logp, entropy;
};

// Runs both phases on k ranks; `megatron` picks the reduction: MAX + rebase + SUM, or row_stats_merge.
// Every rank runs its phases on a workspace of `threads` threads.
template <typename Real>
ShardedResult run_sharded(const ref::Batch& b, const cgrpo::LossConfig& c, const std::vector<int64_t>& cuts,
                          bool megatron, bool in_place, int threads) {
  const int k = static_cast<int>(cuts.size()) - 1;
  // Per-token arrays of the whole batch, same on every rank, with the caller's weights (b.w_*).
  support::LibraryBatch<Real> lib(b, c, support::Weights::caller);
  cgrpo::cpu::Workspace ws(threads);
  std::vector<std::vector<Real>> logits(k);
  std::vector<std::vector<RowStats<double>>> stats(k, std::vector<RowStats<double>>(b.T));
  std::vector<std::vector<double>> target(k, std::vector<double>(b.T));
  std::vector<cgrpo::parallel::VocabShard> shard(k);
  std::vector<int64_t> pad(k);
  for (int r = 0; r < k; ++r) {
    shard[r] = cgrpo::parallel::VocabShard{cuts[r], cuts[r + 1] - cuts[r], b.V};
    pad[r] = r % 2;  // row stride > shard size on odd ranks
    logits[r] = column_shard<Real>(b, shard[r].begin, shard[r].size, pad[r]);
    cgrpo::PolicyLossBatch<Real> local = lib.view;
    local.logits = logits[r].data();
    local.vocab_size = shard[r].size;
    local.row_stride = shard[r].size + pad[r];
    const cgrpo::Status s =
        cgrpo::parallel::vocab_shard_row_stats(c, local, shard[r], stats[r].data(), target[r].data(), ws);
    INFO(s.message);
    REQUIRE(s.ok());
  }

  // The caller's all-reduce, simulated.
  std::vector<RowStats<double>> reduced(b.T);
  std::vector<double> target_sum(b.T, 0.0);
  for (int64_t t = 0; t < b.T; ++t) {
    for (int r = 0; r < k; ++r) target_sum[t] += target[r][t];
    if (megatron) {
      double m = -INFINITY;
      for (int r = 0; r < k; ++r) m = std::max(m, stats[r][t].max);
      RowStats<double> acc{m, 0.0, 0.0};
      for (int r = 0; r < k; ++r) {
        const RowStats<double> x = cgrpo::row_stats_rebase(stats[r][t], m);
        REQUIRE(x.max == m);
        acc.sum_exp += x.sum_exp;
        acc.sum_exp_u += x.sum_exp_u;
      }
      reduced[t] = acc;
    } else {
      RowStats<double> acc = cgrpo::row_stats_identity<double>();
      for (int r = k - 1; r >= 0; --r) acc = cgrpo::row_stats_merge(acc, stats[r][t]);  // any order
      reduced[t] = acc;
    }
  }

  ShardedResult res;
  res.grad.assign(b.T * b.V, 0.0);
  for (int r = 0; r < k; ++r) {
    cgrpo::PolicyLossBatch<Real> local = lib.view;
    local.logits = logits[r].data();
    local.vocab_size = shard[r].size;
    local.row_stride = shard[r].size + pad[r];
    std::vector<Real> grad_sep(b.T * (shard[r].size + pad[r]), static_cast<Real>(777));
    std::vector<Real> logp(b.T), entropy(b.T);
    cgrpo::LossMetrics m;
    cgrpo::PolicyLossOutputs<Real> out;
    out.grad_logits = in_place ? logits[r].data() : grad_sep.data();
    out.logp = logp.data();
    out.entropy = entropy.data();
    out.metrics = &m;
    const cgrpo::Status s =
        cgrpo::parallel::vocab_parallel_policy_loss(c, local, shard[r], reduced.data(), target_sum.data(), out, ws);
    INFO(s.message);
    REQUIRE(s.ok());
    const Real* g = out.grad_logits;
    for (int64_t t = 0; t < b.T; ++t)
      for (int64_t j = 0; j < shard[r].size; ++j)
        res.grad[t * b.V + shard[r].begin + j] = static_cast<double>(g[t * (shard[r].size + pad[r]) + j]);
    if (r == 0) {
      res.metrics = m;
      res.logp.assign(logp.begin(), logp.end());
      res.entropy.assign(entropy.begin(), entropy.end());
    } else {  // every rank reports the same loss and metrics
      REQUIRE(m.loss == res.metrics.loss);
      REQUIRE(m.pg_clipfrac == res.metrics.pg_clipfrac);
      REQUIRE(m.entropy_mean == res.metrics.entropy_mean);
    }
  }
  return res;
}

// The sharded run against the unsharded fused loss in the same precision. Tolerances: `rel` of
// the size of what each value is made of (ref::Magnitudes of the double reference; U (+ V in
// double) for log p and H; each gradient row's ref::row_gradient_scales): a row whose exact gradient is ~0
// (large logits, near one-hot) holds rounding noise of that size, not of its own ~0 entries.
template <typename Real>
void check_against_unsharded(const ref::Batch& b, const cgrpo::LossConfig& c, const ShardedResult& got, int threads) {
  support::LibraryBatch<Real> lib(b, c, support::Weights::caller);
  cgrpo::cpu::Workspace ws(threads);
  std::vector<Real> grad(b.T * b.stride, Real(0)), logp(b.T), entropy(b.T);
  cgrpo::LossMetrics m;
  cgrpo::PolicyLossOutputs<Real> out;
  out.grad_logits = grad.data();
  out.logp = logp.data();
  out.entropy = entropy.data();
  out.metrics = &m;
  REQUIRE(cgrpo::cpu::fused_policy_loss(c, lib.view, out, ws).ok());

  const ref::Batch br = ref::rounded_to<Real>(b);  // what the library received
  const ref::Result want = ref::loss(br, br.logits, c);
  const ref::Magnitudes& s = want.mag;
  const bool is_double = std::is_same<Real, double>::value;
  const double rel = is_double ? ref::double_rel(want, br) : ref::float_rel(want);
  const double logp_size = is_double ? s.u + b.V : s.u;  // + V summed exponentials in double
  REQUIRE(ref::close(got.metrics.loss, m.loss, rel, s.loss));
  REQUIRE(ref::close(got.metrics.pg_loss, m.pg_loss, rel, s.pg));
  REQUIRE(ref::close(got.metrics.pg_loss_refinement, m.pg_loss_refinement, rel, s.pg_refinement));
  REQUIRE(ref::close(got.metrics.entropy_loss, m.entropy_loss, rel, s.entropy_agg));
  REQUIRE(ref::close(got.metrics.kl_loss, m.kl_loss, rel, s.kl_agg));
  REQUIRE(ref::close(got.metrics.ppo_kl, m.ppo_kl, rel, s.ppo_kl));
  REQUIRE(ref::close(got.metrics.entropy_mean, m.entropy_mean, rel, s.entropy_mean));
  REQUIRE(ref::close(got.metrics.ratio_mean, m.ratio_mean, rel, s.ratio_mean));
  REQUIRE(ref::close(got.metrics.refinement_prob_mean, m.refinement_prob_mean, rel, s.prob_mean));
  REQUIRE(got.metrics.num_valid_tokens == m.num_valid_tokens);
  REQUIRE(got.metrics.num_refinement_tokens == m.num_refinement_tokens);
  // Clip flags may flip only for ratios within rounding of the clip bounds; in double they agree.
  if (std::is_same<Real, double>::value) {
    REQUIRE(got.metrics.pg_clipfrac == m.pg_clipfrac);
    REQUIRE(got.metrics.pg_clipfrac_lower == m.pg_clipfrac_lower);
  }
  CHECK(ref::close_all(got.logp, logp, rel, logp_size));
  CHECK(ref::close_all(got.entropy, entropy, rel, logp_size));
  // The sharded gradient is [T, V]; bring it to the batch's stride for close_rows.
  std::vector<double> got_strided(b.T * b.stride, 0.0), want_grad(grad.begin(), grad.end());
  for (int64_t t = 0; t < b.T; ++t)
    for (int64_t v = 0; v < b.V; ++v) got_strided[t * b.stride + v] = got.grad[t * b.V + v];
  REQUIRE(ref::max_abs(want_grad) > 0);
  CHECK(ref::close_rows(got_strided, want_grad, b, rel, ref::row_gradient_scales(br, want, c)));
}

// Config i of the sweep, and (threads) the workspace's thread count its calls run on.
cgrpo::LossConfig config_for(int i, int* threads) {
  cgrpo::LossConfig c;
  const ref::Clip clips[] = {ref::Clip::none, ref::Clip::token, ref::Clip::sequence};
  const cgrpo::KlEstimator kls[] = {cgrpo::KlEstimator::none, cgrpo::KlEstimator::k1, cgrpo::KlEstimator::abs,
                                    cgrpo::KlEstimator::k2, cgrpo::KlEstimator::k3};
  const cgrpo::Aggregation aggs[] = {cgrpo::Aggregation::token_mean, cgrpo::Aggregation::seq_mean_token_sum,
                                     cgrpo::Aggregation::seq_mean_token_mean,
                                     cgrpo::Aggregation::seq_mean_token_sum_norm};
  // The denominators of the paper, verl and TRL in turn (every clip with each).
  const cgrpo::AggregationConvention conventions[] = {cgrpo::AggregationConvention{}, cgrpo::verl_aggregation(),
                                                      cgrpo::trl_aggregation()};
  c.aggregation.policy = aggs[i % 4];
  c.aggregation.entropy = aggs[(i / 4) % 4];
  c.aggregation.kl = aggs[(i + 1) % 4];
  c.aggregation.convention = conventions[(i / 3) % 3];
  // After the modes: verl's GSPO form (Clip::sequence) always aggregates its policy term
  // seq-mean-token-mean (the config refuses any other).
  ref::set_clip(c, clips[i % 3]);
  c.ratio.dual_clip = ref::clip_of(c) == ref::Clip::token && (i / 3) % 2 == 1;
  c.kl.estimator = kls[i % 5];
  c.kl.coef = c.kl.estimator == cgrpo::KlEstimator::none ? 0.0 : 0.03;
  c.entropy.coef = (i % 7 == 3) ? 0.0 : 0.01;
  c.temperature = (i % 2) ? 0.7 : 1.0;
  *threads = 1 + i % 2;
  return c;
}

}  // namespace

TEST_CASE("vocab parallel: k shards give the unsharded loss, metrics and gradient (double)", "[parallel][vocab]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  for (int i = 0; i < 30; ++i) {
    const int64_t V = 2 + static_cast<int64_t>(rng() % 60);
    ref::Batch b = ref::random_batch(rng, 3 + static_cast<int64_t>(rng() % 4), 6, V, static_cast<int64_t>(rng() % 3),
                                     i % 5 == 0 ? 20.0 : 2.0);
    int threads = 1;
    const cgrpo::LossConfig c = config_for(i, &threads);
    REQUIRE(c.validate().ok());
    ref::avoid_kinks(b, c, rng);
    ref::set_weights(b, c);
    for (int k : {1, 2, 3}) {
      if (k > V) continue;
      const auto cuts = vocab_cuts(rng, V, k);
      for (bool megatron : {false, true}) {
        CAPTURE(i, V, k, megatron, ref::to_string(ref::clip_of(c)), cgrpo::to_string(c.kl.estimator), c.temperature,
                threads);
        const ShardedResult got = run_sharded<double>(b, c, cuts, megatron, /*in_place=*/i % 3 == 2, threads);
        check_against_unsharded<double>(b, c, got, threads);
      }
    }
  }
}

TEST_CASE("vocab parallel: float logits agree with the unsharded float path", "[parallel][vocab]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  for (int i = 0; i < 8; ++i) {
    const int64_t V = 3000 + static_cast<int64_t>(rng() % 2000);  // several Eigen chunks per shard
    ref::Batch b = ref::random_batch(rng, 3, 5, V, 1);
    int threads = 1;
    const cgrpo::LossConfig c = config_for(i, &threads);
    REQUIRE(c.validate().ok());
    ref::avoid_kinks(b, c, rng);
    ref::set_weights(b, c);
    const auto cuts = vocab_cuts(rng, V, 1 + i % 3);
    CAPTURE(i, V, cuts.size() - 1, threads);
    const ShardedResult got = run_sharded<float>(b, c, cuts, i % 2 == 0, i % 2 == 1, threads);
    check_against_unsharded<float>(b, c, got, threads);
  }
}

TEST_CASE("vocab parallel: a target whose logit is -inf, or a NaN row, is an error on every rank", "[parallel][vocab]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  ref::Batch b = ref::random_batch(rng, 2, 4, 10, 0);
  cgrpo::LossConfig c;
  ref::set_weights(b, c);
  support::LibraryBatch<double> lib(b, c, support::Weights::caller);
  const cgrpo::parallel::VocabShard shard{0, 10, 10};
  std::vector<RowStats<double>> stats(b.T);
  std::vector<double> target(b.T);
  REQUIRE(cgrpo::parallel::vocab_shard_row_stats(c, lib.view, shard, stats.data(), target.data()).ok());
  // Phase 2 refuses the row by number and writes nothing (gradient, log p, H, factor, terms, metrics).
  auto bad_target = target;
  bad_target[1] = -INFINITY;
  support::expect_error<double>(
      b.T, b.T * 10,
      [&](support::PoisonedOutputs<double>& o) {
        return cgrpo::parallel::vocab_parallel_policy_loss(c, lib.view, shard, stats.data(), bad_target.data(), o.out);
      },
      cgrpo::StatusCode::non_finite, {"row 1:", "nothing was written"});
  auto bad_stats = stats;
  bad_stats[b.T - 1].sum_exp = NAN;  // T >= 2 (two sequences of at least one token)
  const std::string last_row = "row " + std::to_string(b.T - 1) + ":";
  support::expect_error<double>(
      b.T, b.T * 10,
      [&](support::PoisonedOutputs<double>& o) {
        return cgrpo::parallel::vocab_parallel_policy_loss(c, lib.view, shard, bad_stats.data(), target.data(), o.out);
      },
      cgrpo::StatusCode::non_finite, {last_row.c_str(), "nothing was written"});
  // A shard that does not fit in the vocabulary, or a batch whose vocab_size is not the shard's.
  support::check_error(cgrpo::parallel::vocab_shard_row_stats(c, lib.view, cgrpo::parallel::VocabShard{5, 10, 10},
                                                              stats.data(), target.data()),
                       cgrpo::StatusCode::invalid_argument, {"vocab shard (begin 5, size 10)", "[0, 10)"});
  support::check_error(cgrpo::parallel::vocab_shard_row_stats(c, lib.view, cgrpo::parallel::VocabShard{0, 5, 10},
                                                              stats.data(), target.data()),
                       cgrpo::StatusCode::invalid_argument, {"batch.vocab_size (10)", "shard size (5)"});
  // A target id outside the GLOBAL vocabulary is out_of_range even if it is inside no shard.
  auto targets = b.targets;
  targets[0] = 10;
  cgrpo::PolicyLossBatch<double> v = lib.view;
  v.target_ids = targets.data();
  support::check_error(cgrpo::parallel::vocab_shard_row_stats(c, v, shard, stats.data(), target.data()),
                       cgrpo::StatusCode::out_of_range, {"target_ids[0] = 10", "[0, 10)"});
}

TEST_CASE("vocab parallel: a row whose |max z / tau| exceeds 2^40 is refused by name; 2^39 is taken", "[parallel][vocab]") {
  // Found by fuzz_parallel: double logits of 5e207 gave an inf gradient with OK (the exchanged
  // statistics' 1e-16 |max u| error, in an exponent). The unsharded loss takes such rows.
  std::mt19937_64 rng = test_seed::fresh_rng();
  ref::Batch b = ref::random_batch(rng, 2, 4, 10, 0);
  cgrpo::LossConfig c;
  ref::set_weights(b, c);
  const int64_t row = static_cast<int64_t>(rng() % static_cast<uint64_t>(b.T));
  for (double top : {0x1p39, 0x1p41, -0x1p41, 5e207}) {
    CAPTURE(top, row);
    ref::Batch bb = b;
    for (int64_t j = 0; j < bb.V; ++j) bb.logits[row * bb.V + j] += top;  // the row shifted: same softmax
    support::LibraryBatch<double> lib(bb, c, support::Weights::caller);
    const cgrpo::parallel::VocabShard shard{0, 10, 10};
    std::vector<RowStats<double>> stats(bb.T);
    std::vector<double> target(bb.T);
    REQUIRE(cgrpo::parallel::vocab_shard_row_stats(c, lib.view, shard, stats.data(), target.data()).ok());
    std::vector<double> grad(bb.T * 10, 42.0), lp(bb.T, 42.0);
    cgrpo::LossMetrics m;
    m.loss = 42;
    cgrpo::PolicyLossOutputs<double> out;
    out.grad_logits = grad.data();
    out.logp = lp.data();
    out.metrics = &m;
    const cgrpo::Status s = cgrpo::parallel::vocab_parallel_policy_loss(c, lib.view, shard, stats.data(), target.data(), out);
    if (std::fabs(top) < 0x1p40) {
      INFO(s.message);
      REQUIRE(s.ok());
      for (double g : grad) CHECK(std::isfinite(g));
      CHECK(std::isfinite(m.loss));
    } else {
      CHECK(s.code == cgrpo::StatusCode::invalid_argument);
      CHECK(std::string(s.message).find("row " + std::to_string(row)) != std::string::npos);
      CHECK(std::string(s.message).find("2^40") != std::string::npos);
      CHECK(m.loss == 42);
      for (double g : grad) CHECK(g == 42.0);
      for (double x : lp) CHECK(x == 42.0);
    }
  }
}
