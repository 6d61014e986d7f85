// Components one by one against straightforward double references: advantages, aggregation
// weights, shaping, ratio clipping, KL estimators and their derivatives, online softmax stats.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <cgrpo/cgrpo.hpp>
#include <cmath>
#include <random>
#include <vector>

namespace {

std::mt19937_64 fresh_rng() { return test_seed::fresh_rng(); }

// verl's compute_grpo_outcome_advantage, written as plainly as possible.
std::vector<double> reference_advantages(cgrpo::AdvantageEstimator e, const std::vector<double>& r,
                                         const std::vector<int32_t>& gid, int G, double eps) {
  std::vector<double> out(r.size());
  for (int g = 0; g < G; ++g) {
    std::vector<size_t> members;
    for (size_t i = 0; i < r.size(); ++i)
      if (gid[i] == g) members.push_back(i);
    const double n = static_cast<double>(members.size());
    double mean = 0, var = 0;
    for (size_t i : members) mean += r[i];
    if (n > 0) mean /= n;
    for (size_t i : members) var += (r[i] - mean) * (r[i] - mean);
    const double std_unbiased = n > 1 ? std::sqrt(var / (n - 1)) : 1.0;
    if (n < 2) mean = 0;
    for (size_t i : members) {
      switch (e) {
        case cgrpo::AdvantageEstimator::grpo: out[i] = (r[i] - mean) / (std_unbiased + eps); break;
        case cgrpo::AdvantageEstimator::grpo_no_std: out[i] = r[i] - mean; break;
        case cgrpo::AdvantageEstimator::rloo: out[i] = n > 1 ? n / (n - 1) * (r[i] - mean) : r[i]; break;
        case cgrpo::AdvantageEstimator::reinforce_pp_baseline: out[i] = r[i] - mean; break;
      }
    }
  }
  return out;
}

}  // namespace

TEST_CASE("group advantages match verl on ragged, interleaved groups", "[advantages]") {
  auto rng = fresh_rng();
  std::uniform_int_distribution<int> group(0, 5);
  std::normal_distribution<double> normal(0, 1);
  for (auto e : {cgrpo::AdvantageEstimator::grpo, cgrpo::AdvantageEstimator::grpo_no_std,
                 cgrpo::AdvantageEstimator::rloo}) {
    std::vector<double> rewards(40), got(40);
    std::vector<int32_t> gid(40);
    for (int i = 0; i < 40; ++i) gid[i] = group(rng), rewards[i] = normal(rng);
    gid[0] = 6;  // a one-member group
    const cgrpo::GroupAssignment groups{40, gid.data(), 7};
    REQUIRE(cgrpo::group_advantages(e, groups, rewards.data(), nullptr, 1e-6, got.data()).ok());
    const auto want = reference_advantages(e, rewards, gid, 7, 1e-6);
    for (int i = 0; i < 40; ++i) CHECK(got[i] == Approx(want[i]).epsilon(1e-13).margin(1e-14));
  }
}

TEST_CASE("group advantages: edge cases of MATH.md", "[advantages]") {
  using E = cgrpo::AdvantageEstimator;
  const std::vector<int32_t> gid = {0, 0, 0, 1};
  const cgrpo::GroupAssignment groups{4, gid.data(), 2};
  const std::vector<double> equal = {0.7, 0.7, 0.7, 0.25};
  std::vector<double> a(4);
  // All-equal rewards: exactly 0 (no NaN); one-member group: R / (1 + eps) or R.
  REQUIRE(cgrpo::group_advantages(E::grpo, groups, equal.data(), nullptr, 1e-6, a.data()).ok());
  CHECK(a[0] == 0.0);
  CHECK(a[2] == 0.0);
  CHECK(a[3] == 0.25 / (1 + 1e-6));
  REQUIRE(cgrpo::group_advantages(E::grpo_no_std, groups, equal.data(), nullptr, 1e-6, a.data()).ok());
  CHECK(a[1] == 0.0);
  CHECK(a[3] == 0.25);
  REQUIRE(cgrpo::group_advantages(E::rloo, groups, equal.data(), nullptr, 1e-6, a.data()).ok());
  CHECK(a[3] == 0.25);
  // Unbiased std: rewards {0, 1} give std sqrt(0.5), A = +-0.5 / (sqrt(0.5) + eps).
  const std::vector<double> two = {0.0, 1.0};
  const std::vector<int32_t> g2 = {0, 0};
  REQUIRE(cgrpo::group_advantages(E::grpo, {2, g2.data(), 1}, two.data(), nullptr, 1e-6, a.data()).ok());
  CHECK(a[1] == Approx(0.5 / (std::sqrt(0.5) + 1e-6)).epsilon(1e-15));
  // Groups from offsets.
  const int64_t offsets[] = {0, 3, 4};
  std::vector<int32_t> ids(4, -1);
  REQUIRE(cgrpo::group_ids_from_offsets(2, offsets, ids.data()).ok());
  CHECK(ids == gid);
}

TEST_CASE("reinforce_pp_baseline whitens over valid tokens like verl's masked_whiten", "[advantages]") {
  auto rng = fresh_rng();
  std::normal_distribution<double> normal(0, 1);
  std::uniform_int_distribution<int64_t> len(0, 9);
  const int n = 12;
  std::vector<double> rewards(n), got(n);
  std::vector<int32_t> gid(n);
  std::vector<int64_t> counts(n);
  for (int i = 0; i < n; ++i) rewards[i] = normal(rng), gid[i] = i / 4, counts[i] = len(rng);
  counts[0] = 5;
  REQUIRE(cgrpo::group_advantages(cgrpo::AdvantageEstimator::reinforce_pp_baseline, {n, gid.data(), 3},
                                  rewards.data(), counts.data(), 0.0, got.data())
              .ok());
  // Reference: broadcast to tokens, then masked mean and unbiased masked variance.
  const auto centred = reference_advantages(cgrpo::AdvantageEstimator::reinforce_pp_baseline, rewards, gid, 3, 0);
  std::vector<double> tokens;
  for (int i = 0; i < n; ++i)
    for (int64_t k = 0; k < counts[i]; ++k) tokens.push_back(centred[i]);
  double mean = 0, var = 0;
  for (double x : tokens) mean += x;
  mean /= tokens.size();
  for (double x : tokens) var += (x - mean) * (x - mean);
  var /= (tokens.size() - 1.0);
  for (int i = 0; i < n; ++i) CHECK(got[i] == Approx((centred[i] - mean) / std::sqrt(var + 1e-8)).epsilon(1e-12));
}

TEST_CASE("aggregation weights reproduce every mode's mean", "[aggregation]") {
  auto rng = fresh_rng();
  std::uniform_int_distribution<int64_t> len(0, 7);
  std::uniform_real_distribution<double> uni(0, 1);
  const int64_t B = 6;
  std::vector<int64_t> offsets = {0};
  for (int64_t i = 0; i < B; ++i) offsets.push_back(offsets.back() + len(rng));
  const int64_t T = offsets.back();
  std::vector<uint8_t> mask(T);
  std::vector<double> x(T), w(T);
  for (int64_t t = 0; t < T; ++t) mask[t] = uni(rng) < 0.8, x[t] = uni(rng) * 4 - 2;
  const auto layout = cgrpo::SequenceLayout::packed(B, offsets.data());

  // token-mean: masked_mean with verl's 1e-8.
  double sum = 0, count = 0;
  for (int64_t t = 0; t < T; ++t) sum += mask[t] * x[t], count += mask[t];
  auto agg = [&](cgrpo::Aggregation m, cgrpo::AggregationScale s) {
    REQUIRE(cgrpo::aggregation_weights(m, layout, mask.data(), s, w.data()).ok());
    double r = 0;
    for (int64_t t = 0; t < T; ++t) r += w[t] * x[t];
    return r;
  };
  CHECK(agg(cgrpo::Aggregation::token_mean, {}) == Approx(sum / (count + 1e-8)).epsilon(1e-14));
  CHECK(agg(cgrpo::Aggregation::seq_mean_token_sum, {}) == Approx(sum / B).epsilon(1e-14));
  double seq_means = 0, max_len = 0;
  for (int64_t i = 0; i < B; ++i) {
    double s = 0, n = 0;
    for (int64_t t = offsets[i]; t < offsets[i + 1]; ++t) s += mask[t] * x[t], n += mask[t];
    if (n > 0) seq_means += s / n;
    max_len = std::max<double>(max_len, offsets[i + 1] - offsets[i]);
  }
  CHECK(agg(cgrpo::Aggregation::seq_mean_token_mean, {}) == Approx(seq_means / B).epsilon(1e-13));
  CHECK(agg(cgrpo::Aggregation::seq_mean_token_sum_norm, {}) == Approx(sum / max_len).epsilon(1e-14));
  // Caller-supplied global normalizers replace the local ones.
  CHECK(agg(cgrpo::Aggregation::token_mean, {1000, 0, 0}) == Approx(sum / (1000 + 1e-8)).epsilon(1e-14));
  CHECK(agg(cgrpo::Aggregation::seq_mean_token_sum, {0, 64, 0}) == Approx(sum / 64).epsilon(1e-14));
  CHECK(agg(cgrpo::Aggregation::seq_mean_token_sum_norm, {0, 0, 4096}) == Approx(sum / 4096).epsilon(1e-14));
}

TEST_CASE("refinement shaping f(p) = p/(p+gamma) and its log-derivative", "[token]") {
  auto rng = fresh_rng();
  std::uniform_real_distribution<double> logp_dist(-12, 0), gamma_dist(0.01, 2);
  for (int k = 0; k < 200; ++k) {
    const double lp = logp_dist(rng), gamma = gamma_dist(rng), h = 1e-6;
    const double p = std::exp(lp);
    CHECK(cgrpo::refinement_shaping(p, gamma) == Approx(p / (p + gamma)).epsilon(1e-15));
    const double fd = (cgrpo::refinement_shaping(std::exp(lp + h), gamma) -
                       cgrpo::refinement_shaping(std::exp(lp - h), gamma)) / (2 * h);
    CHECK(cgrpo::refinement_shaping_dlogp(p, gamma) == Approx(fd).epsilon(1e-7).margin(1e-12));
  }
  // Limits: p -> 0 gives 0, p = 1 gives 1 / (1 + gamma).
  CHECK(cgrpo::refinement_shaping(0.0, 0.1) == 0.0);
  CHECK(cgrpo::refinement_shaping(1.0, 0.1) == Approx(1 / 1.1));
}

TEST_CASE("on-policy term: clipping, dual clip and their gradients as autograd gives", "[token]") {
  cgrpo::LossConfig c;
  c.clip = cgrpo::ClipMode::token;
  c.clip_eps_low = 0.2;
  c.clip_eps_high = 0.28;
  c.dual_clip = true;
  c.dual_clip_c = 3;
  const auto p = cgrpo::token_params<double>(c);
  auto term = [&](double log_ratio, double adv) { return cgrpo::on_policy_term(log_ratio, adv, p); };
  // Inside the range: l = -A r, gradient -A r, not clipped.
  auto t = term(std::log(1.1), 2.0);
  CHECK(t.loss == Approx(-2.2));
  CHECK(t.dloss_dlogp == Approx(-2.2));
  CHECK_FALSE(t.clipped);
  // A > 0 and r above 1 + eps_high: clipped, zero gradient.
  t = term(std::log(1.5), 2.0);
  CHECK(t.loss == Approx(-2 * 1.28));
  CHECK(t.dloss_dlogp == 0.0);
  CHECK(t.clipped);
  // A > 0 and r below 1 - eps_low: the unclipped branch is the max, gradient flows.
  t = term(std::log(0.5), 2.0);
  CHECK(t.loss == Approx(-1.0));
  CHECK(t.dloss_dlogp == Approx(-1.0));
  CHECK_FALSE(t.clipped);
  // A < 0 and r = 5 > c: dual clip caps the loss at -A c with zero gradient.
  t = term(std::log(5.0), -1.0);
  CHECK(t.loss == Approx(3.0));
  CHECK(t.dloss_dlogp == 0.0);
  CHECK(t.clipped_lower);
  // A < 0 and r = 2: above the range, unclipped branch (loss 2) below c: gradient -A r.
  t = term(std::log(2.0), -1.0);
  CHECK(t.loss == Approx(2.0));
  CHECK(t.dloss_dlogp == Approx(2.0));
  CHECK_FALSE(t.clipped_lower);
  // The log-ratio clamp (verl's 20): beyond it the loss is finite and the gradient zero.
  t = term(100.0, -1.0);
  CHECK(std::isfinite(t.loss));
  c.clip = cgrpo::ClipMode::none;
  c.dual_clip = false;
  const auto q = cgrpo::token_params<double>(c);
  t = cgrpo::on_policy_term(100.0, 1.0, q);
  CHECK(t.loss == Approx(-std::exp(20.0)));
  CHECK(t.dloss_dlogp == 0.0);
}

TEST_CASE("KL estimators and derivatives against finite differences", "[token]") {
  auto rng = fresh_rng();
  std::uniform_real_distribution<double> lp(-6, 0);
  using K = cgrpo::KlEstimator;
  for (K k : {K::k1, K::abs, K::k2, K::k3}) {
    for (int i = 0; i < 100; ++i) {
      const double logp = lp(rng), ref = lp(rng), h = 1e-6;
      const auto v = cgrpo::kl_term(static_cast<int>(k), logp, ref);
      const double d = logp - ref;
      const double want = k == K::k1 ? d : k == K::abs ? std::fabs(d) : k == K::k2 ? 0.5 * d * d
                        : std::min(10.0, std::exp(-d) + d - 1);
      CHECK(v.value == Approx(want).epsilon(1e-14).margin(1e-15));
      const double fd = (cgrpo::kl_term(static_cast<int>(k), logp + h, ref).value -
                         cgrpo::kl_term(static_cast<int>(k), logp - h, ref).value) / (2 * h);
      CHECK(v.dvalue_dlogp == Approx(fd).epsilon(1e-6).margin(1e-8));
    }
  }
  // k3 is clamped at 10 and passes no gradient there.
  const auto big = cgrpo::kl_term(static_cast<int>(K::k3), -30.0, 0.0);
  CHECK(big.value == 10.0);
  CHECK(big.dvalue_dlogp == 0.0);
}

TEST_CASE("online softmax statistics equal the two-pass values, in any merge order", "[token]") {
  auto rng = fresh_rng();
  std::normal_distribution<double> normal(0, 8);
  std::vector<double> u(1000);
  for (auto& x : u) x = normal(rng);
  u[17] = -INFINITY;  // a masked vocabulary entry
  double m = -INFINITY;
  for (double x : u) m = std::max(m, x);
  double s = 0, pu = 0;
  for (double x : u)
    if (x != -INFINITY) s += std::exp(x - m);
  const double lse = m + std::log(s);
  for (double x : u)  // H = -sum p log p, accumulated without cancellation
    if (x != -INFINITY) pu += std::exp(x - lse) * (x - lse);
  const double entropy = -pu;
  auto st = cgrpo::row_stats_identity<double>();
  for (double x : u) st = cgrpo::row_stats_push(st, x);
  CHECK(cgrpo::row_logsumexp(st) == Approx(lse).epsilon(1e-14));
  CHECK(cgrpo::row_entropy(st) == Approx(entropy).epsilon(1e-10));
  // Merging parts (as threads or blocks do) gives the same statistics.
  auto a = cgrpo::row_stats_identity<double>(), b = a;
  for (size_t i = 0; i < 613; ++i) a = cgrpo::row_stats_push(a, u[i]);
  for (size_t i = 613; i < u.size(); ++i) b = cgrpo::row_stats_push(b, u[i]);
  const auto ab = cgrpo::row_stats_merge(a, b), ba = cgrpo::row_stats_merge(b, a);
  CHECK(cgrpo::row_logsumexp(ab) == Approx(lse).epsilon(1e-14));
  CHECK(cgrpo::row_entropy(ba) == Approx(entropy).epsilon(1e-10));
  CHECK(cgrpo::row_stats_finite(ab));
  // NaN or +inf make the row non-finite.
  CHECK_FALSE(cgrpo::row_stats_finite(cgrpo::row_stats_push(ab, double(NAN))));
  CHECK_FALSE(cgrpo::row_stats_finite(cgrpo::row_stats_push(ab, double(INFINITY))));
}

TEST_CASE("logit_gradient (scalar, for kernels) equals the vectorised CPU row gradient", "[token]") {
  auto rng = fresh_rng();
  std::normal_distribution<double> normal(0, 3);
  const int64_t V = 5000;
  std::vector<double> z(V), g(V);
  for (auto& x : z) x = normal(rng);
  const double inv_t = 1 / 0.8, a = normal(rng), b = normal(rng);
  const auto st = cgrpo::cpu::row_softmax(z.data(), V, inv_t);
  const double lse = st.pivot * inv_t + cgrpo::cpu::row_lse_rel(st), h = cgrpo::row_entropy(st.rel);
  cgrpo::cpu::row_logit_gradient(z.data(), V, inv_t, 42, st.pivot, cgrpo::cpu::row_lse_rel(st), h, a, b, g.data());
  for (int64_t v = 0; v < V; ++v)
    CHECK(g[v] == Approx(cgrpo::logit_gradient(z[v] * inv_t, v == 42, lse, h, a, b, inv_t)).epsilon(1e-12).margin(1e-15));
}
