// Components one by one against straightforward double references: advantages, aggregation
// weights, shaping, ratio clipping, KL estimators and their derivatives, online softmax stats.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <cgrpo/cgrpo.hpp>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <random>
#include <vector>

#include "reference.hpp"

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
        case cgrpo::AdvantageEstimator::grpo_batch_std: break;  // tested against TRL's golden cases
        case cgrpo::AdvantageEstimator::gdpo: break;            // tests/advantages/test_gdpo.cpp
      }
    }
  }
  return out;
}

// The size of the numbers each member's advantage is computed from: both sides form R - mean and
// the std from the same rewards in another order, so they differ by ~n eps max |R| before the
// division (n the group size) and by that over (std + eps) after it; rloo scales by n / (n - 1).
std::vector<double> advantage_scales(cgrpo::AdvantageEstimator e, const std::vector<double>& r,
                                     const std::vector<int32_t>& gid, int G, double eps) {
  std::vector<double> out(r.size());
  for (int g = 0; g < G; ++g) {
    double n = 0, mean = 0, var = 0, biggest = 0;
    for (size_t i = 0; i < r.size(); ++i)
      if (gid[i] == g) n += 1, mean += r[i], biggest = std::max(biggest, std::fabs(r[i]));
    if (n > 0) mean /= n;
    for (size_t i = 0; i < r.size(); ++i)
      if (gid[i] == g) var += (r[i] - mean) * (r[i] - mean);
    const double divisor = e == cgrpo::AdvantageEstimator::grpo ? (n > 1 ? std::sqrt(var / (n - 1)) : 1.0) + eps : 1.0;
    for (size_t i = 0; i < r.size(); ++i)
      if (gid[i] == g) out[i] = 2 * biggest / divisor;
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
    const auto scale = advantage_scales(e, rewards, gid, 7, 1e-6);
    // Groups of at most 40: n eps < 1e-14; 1e-13 leaves room for the std's square root.
    for (int i = 0; i < 40; ++i) CHECK(ref::close(got[i], want[i], 1e-13, scale[i]));
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
  // Up to 108 tokens: the means and the variance carry ~108 eps of max |R - group mean| (R ~ N(0, 1));
  // whitened, that is relative to max |centred| / sd, the scale of every whitened value.
  double centred_max = 0;
  for (double c : centred) centred_max = std::max(centred_max, std::fabs(c));
  const double sd = std::sqrt(var + 1e-8);
  for (int i = 0; i < n; ++i) CHECK(ref::close(got[i], (centred[i] - mean) / sd, 1e-12, centred_max / sd));
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

  // The paper's convention (AggregationConvention{}, the default): token-mean divides by N + 1e-8,
  // seq-mean-* by every row, each row by its own count.
  cgrpo::LossConfig config;
  config.aggregation.convention = cgrpo::AggregationConvention{};
  // token-mean: the paper fork's masked_mean, N + 1e-8.
  double sum = 0, count = 0;
  for (int64_t t = 0; t < T; ++t) sum += mask[t] * x[t], count += mask[t];
  // sum_t w_t x_t cancels (x in [-2, 2]): its rounding is ~T eps sum_t |w_t x_t| (T <= 42), not
  // eps |result|; both sides sum T terms, so 4 T eps < 1e-13 of that sum bounds their difference.
  double abs_sum = 0;
  auto agg = [&](cgrpo::Aggregation m, cgrpo::AggregationScale s) {
    config.aggregation.policy = m;
    REQUIRE(cgrpo::aggregation_weights(config, cgrpo::LossTerm::policy, layout, mask.data(), s, w.data()).ok());
    double r = 0;
    abs_sum = 0;
    for (int64_t t = 0; t < T; ++t) r += w[t] * x[t], abs_sum += std::fabs(w[t] * x[t]);
    return r;
  };
  auto check = [&](cgrpo::Aggregation m, cgrpo::AggregationScale s, double want) {
    const double got = agg(m, s);
    CAPTURE(cgrpo::to_string(m), s.token_count, s.sequence_count, s.length);
    CHECK(ref::close(got, want, 1e-13, abs_sum));
  };
  check(cgrpo::Aggregation::token_mean, {}, sum / (count + 1e-8));
  check(cgrpo::Aggregation::seq_mean_token_sum, {}, sum / B);
  double seq_means = 0, max_len = 0;
  for (int64_t i = 0; i < B; ++i) {
    double s = 0, n = 0;
    for (int64_t t = offsets[i]; t < offsets[i + 1]; ++t) s += mask[t] * x[t], n += mask[t];
    if (n > 0) seq_means += s / n;
    max_len = std::max<double>(max_len, offsets[i + 1] - offsets[i]);
  }
  check(cgrpo::Aggregation::seq_mean_token_mean, {}, seq_means / B);
  check(cgrpo::Aggregation::seq_mean_token_sum_norm, {}, sum / max_len);
  // Caller-supplied global normalizers replace the local ones.
  check(cgrpo::Aggregation::token_mean, {1000, 0, 0}, sum / (1000 + 1e-8));
  check(cgrpo::Aggregation::seq_mean_token_sum, {0, 64, 0}, sum / 64);
  check(cgrpo::Aggregation::seq_mean_token_sum_norm, {0, 0, 4096}, sum / 4096);
}

TEST_CASE("aggregation weights equal the independent reference's, every mode, convention, term, layout and scale",
          "[aggregation]") {
  // ref::aggregation_weights is written from MATH.md without the library's code; the loss
  // tests feed its weights to the library, so this is where the library's own are checked.
  auto rng = fresh_rng();
  std::uniform_int_distribution<int64_t> len(0, 9);
  std::uniform_real_distribution<double> uni(0, 1);
  const cgrpo::Aggregation modes[] = {cgrpo::Aggregation::token_mean, cgrpo::Aggregation::seq_mean_token_sum,
                                      cgrpo::Aggregation::seq_mean_token_mean,
                                      cgrpo::Aggregation::seq_mean_token_sum_norm};
  // The paper's denominators, verl's (token-mean N, row n_i + 1e-8, B+ of rows with a valid
  // token) and TRL's.
  const cgrpo::AggregationConvention conventions[] = {cgrpo::AggregationConvention{}, cgrpo::verl_aggregation(),
                                                      cgrpo::trl_aggregation()};
  const char* convention_names[] = {"paper", "verl", "trl"};
  const cgrpo::LossTerm terms[] = {cgrpo::LossTerm::policy, cgrpo::LossTerm::entropy, cgrpo::LossTerm::kl};
  for (int trial = 0; trial < 40; ++trial) {
    const bool padded = trial % 2 == 1;
    const int64_t B = 1 + static_cast<int64_t>(rng() % 8), L = 1 + static_cast<int64_t>(rng() % 9);
    std::vector<int64_t> offsets = {0};
    for (int64_t i = 0; i < B; ++i) offsets.push_back(offsets.back() + (padded ? L : len(rng)));
    const int64_t T = offsets.back();
    std::vector<uint8_t> mask(T);
    for (auto& m : mask) m = uni(rng) < 0.7;  // responses with no valid token included
    const auto layout = padded ? cgrpo::SequenceLayout::padded(B, L) : cgrpo::SequenceLayout::packed(B, offsets.data());
    // Local normalizers, then global ones (data parallelism), some fields 0 = "from this batch".
    const cgrpo::AggregationScale scales[] = {{}, {1000, 64, 4096, 50}, {0, 3.0 * B, 0, 0}, {17, 0, 2.5 * L, 0}, {0, 0, 0, 2.0 * B}};
    for (int conv = 0; conv < 3; ++conv)
      for (const cgrpo::AggregationScale& scale : scales)
        for (cgrpo::Aggregation mode : modes)
          for (cgrpo::LossTerm term : terms) {
            CAPTURE(trial, padded, B, T, convention_names[conv], cgrpo::to_string(mode), static_cast<int>(term),
                    scale.token_count, scale.sequence_count, scale.length);
            // A config whose every term is aggregated by `mode` under the convention (KL on, so that
            // its term is one the config uses).
            cgrpo::LossConfig config;
            config.aggregation.policy = config.aggregation.entropy = config.aggregation.kl = mode;
            config.aggregation.convention = conventions[conv];
            config.kl.estimator = cgrpo::KlEstimator::k3;
            config.kl.coef = 0.04;
            REQUIRE(config.validate().ok());
            const std::vector<double> want = ref::aggregation_weights(mode, conventions[conv], offsets, mask, scale);
            std::vector<double> got(T, -1.0);
            std::vector<float> got_f(T, -1.f);
            REQUIRE(cgrpo::aggregation_weights(config, term, layout, mask.data(), scale, got.data()).ok());
            REQUIRE(cgrpo::aggregation_weights(config, term, layout, mask.data(), scale, got_f.data()).ok());
            for (int64_t t = 0; t < T; ++t) {
              CAPTURE(t);
              // Each weight is one or two roundings of 1 / (a product of counts): no cancellation,
              // so a relative bound holds at any size; a masked token's weight is exactly 0.
              CHECK(ref::close(got[t], want[t], 4 * DBL_EPSILON, 0.0));
              CHECK(ref::close(got_f[t], want[t], 2 * FLT_EPSILON, 0.0));
              if (!mask[t]) CHECK((got[t] == 0.0 && got_f[t] == 0.f));
            }
          }
  }
}

// A shard whose rows all lack a valid token, under verl's convention (B+ counts only rows with a
// valid token), given the global token count but not the global sequence count: none of its tokens
// has a weight to form (every one is masked), so the weights are all zero. The library refused it
// ("the number of sequences is zero": it compared B with the scale's token count, not this
// batch's); under the paper's convention (every row counted) the same call succeeded.
TEST_CASE("aggregation weights: verl's B+ of a shard without valid tokens, global token count only",
          "[aggregation]") {
  const std::vector<int64_t> offsets = {0, 2, 3};
  const std::vector<uint8_t> mask = {0, 0, 0};
  const auto layout = cgrpo::SequenceLayout::packed(2, offsets.data());
  const cgrpo::AggregationScale scale{17, 0, 0, 0};
  for (cgrpo::Aggregation mode : {cgrpo::Aggregation::seq_mean_token_sum, cgrpo::Aggregation::seq_mean_token_mean})
    for (bool verl : {false, true}) {
      CAPTURE(cgrpo::to_string(mode), verl);
      cgrpo::LossConfig config;
      config.aggregation.policy = mode;
      if (verl) config.aggregation.convention = cgrpo::verl_aggregation();
      std::vector<double> w(3, -1.0);
      const cgrpo::Status s = cgrpo::aggregation_weights(config, cgrpo::LossTerm::policy, layout, mask.data(), scale, w.data());
      INFO(s.message);
      CHECK(s.ok());
      CHECK(w == ref::aggregation_weights(mode, config.aggregation.convention, offsets, mask, scale));
    }
}

TEST_CASE("refinement shaping f(p) = p/(p+gamma) and its log-derivative", "[token]") {
  auto rng = fresh_rng();
  std::uniform_real_distribution<double> logp_dist(-12, 0), gamma_dist(0.01, 2);
  for (int k = 0; k < 200; ++k) {
    const double lp = logp_dist(rng), gamma = gamma_dist(rng), h = 1e-6;
    const double p = std::exp(lp);
    const double f = p / (p + gamma);
    CAPTURE(lp, gamma);
    // p + gamma adds positive numbers: f is a few relative roundings, at any size (p >= 6e-6).
    CHECK(ref::close(cgrpo::refinement_shaping(p, gamma), f, 8 * DBL_EPSILON, 0.0));
    const double fd = (cgrpo::refinement_shaping(std::exp(lp + h), gamma) -
                       cgrpo::refinement_shaping(std::exp(lp - h), gamma)) / (2 * h);
    // Central differences: roundoff ~eps f / h = 2e-10 f, truncation h^2 |f^(3)| / 6 < 1e-12 f
    // (every log-p derivative of f is below f): 1e-7 of f holds even where f' ~ 0.
    CHECK(ref::close(cgrpo::refinement_shaping_dlogp(p, gamma), fd, 1e-7, f));
  }
  // Limits: p -> 0 gives 0, p = 1 gives 1 / (1 + gamma).
  CHECK(cgrpo::refinement_shaping(0.0, 0.1) == 0.0);
  CHECK(cgrpo::refinement_shaping(1.0, 0.1) == Approx(1 / 1.1));
}

// One initial token's PPO term through cgrpo::token_loss with weight 1: loss, dJ/dlogp and flags.
struct OnPolicy {
  double loss, dlogp;
  uint8_t flags;
};
static OnPolicy on_policy(const cgrpo::TokenLossParams<double>& p, double log_ratio, double adv) {
  cgrpo::TokenInputs<double> in{};
  in.valid = in.in_pg = true;
  in.logp = -1.0;
  in.old_logp = -1.0 - log_ratio;
  in.advantage = adv;
  in.w_pg = 1.0;
  in.pg_factor = 1.0;
  const auto r = cgrpo::token_loss(in, p);
  return {r.policy.loss, r.dJ_dlogp, r.policy.flags};
}

TEST_CASE("on-policy term: clipping, dual clip and their gradients as autograd gives", "[token]") {
  cgrpo::LossConfig c;
  c.policy.loss = cgrpo::PolicyLoss::ppo_clip;
  c.ratio.clip_eps_low = 0.2;
  c.ratio.clip_eps_high = 0.28;
  c.ratio.dual_clip = true;
  c.ratio.dual_clip_c = 3;
  const auto p = cgrpo::token_params<double>(c);
  auto term = [&](double log_ratio, double adv) { return on_policy(p, log_ratio, adv); };
  // Inside the range: l = -A r, gradient -A r, not clipped.
  auto t = term(std::log(1.1), 2.0);
  CHECK(t.loss == Approx(-2.2));
  CHECK(t.dlogp == Approx(-2.2));
  CHECK_FALSE(t.flags & cgrpo::kClipped);
  // A > 0 and r above 1 + eps_high: clipped, zero gradient.
  t = term(std::log(1.5), 2.0);
  CHECK(t.loss == Approx(-2 * 1.28));
  CHECK(t.dlogp == 0.0);
  CHECK(t.flags & cgrpo::kClipped);
  // A > 0 and r below 1 - eps_low: the unclipped branch is the max, gradient flows.
  t = term(std::log(0.5), 2.0);
  CHECK(t.loss == Approx(-1.0));
  CHECK(t.dlogp == Approx(-1.0));
  CHECK_FALSE(t.flags & cgrpo::kClipped);
  // A < 0 and r = 5 > c: dual clip caps the loss at -A c with zero gradient.
  t = term(std::log(5.0), -1.0);
  CHECK(t.loss == Approx(3.0));
  CHECK(t.dlogp == 0.0);
  CHECK(t.flags & cgrpo::kClippedLower);
  // A < 0 and r = 2: above the range, unclipped branch (loss 2) below c: gradient -A r.
  t = term(std::log(2.0), -1.0);
  CHECK(t.loss == Approx(2.0));
  CHECK(t.dlogp == Approx(2.0));
  CHECK_FALSE(t.flags & cgrpo::kClippedLower);
  // The log-ratio clamp (verl's 20): beyond it the loss is finite and the gradient zero.
  t = term(100.0, -1.0);
  CHECK(std::isfinite(t.loss));
  c.policy.loss = cgrpo::PolicyLoss::ratio;
  c.ratio.dual_clip = false;
  const auto q = cgrpo::token_params<double>(c);
  t = on_policy(q, 100.0, 1.0);
  CHECK(t.loss == Approx(-std::exp(20.0)));
  CHECK(t.dlogp == 0.0);
}

TEST_CASE("KL estimators and derivatives against finite differences", "[token]") {
  auto rng = fresh_rng();
  std::uniform_real_distribution<double> lp(-6, 0);
  using K = cgrpo::KlEstimator;
  auto kl = [](K k, double logp, double ref) { return cgrpo::kl_term(static_cast<int>(k), logp, ref, true, false); };
  // The kinks: abs at d = 0, k3's clamp at e^-d + d - 1 = 10 (d = -2.528...). A difference
  // step across one averages two slopes: keep d 1e-4 away from them (the step is 1e-6).
  auto near_kink = [](K k, double d) {
    return (k == K::abs && std::fabs(d) < 1e-4) || (k == K::k3 && std::fabs(std::exp(-d) + d - 11) < 1e-3);
  };
  for (K k : {K::k1, K::abs, K::k2, K::k3}) {
    for (int i = 0; i < 100; ++i) {
      double logp, ref_lp;
      do logp = lp(rng), ref_lp = lp(rng);
      while (near_kink(k, logp - ref_lp));
      const double h = 1e-6;
      const auto v = kl(k, logp, ref_lp);
      const double d = logp - ref_lp;
      const double want = k == K::k1 ? d : k == K::abs ? std::fabs(d) : k == K::k2 ? 0.5 * d * d
                        : std::min(10.0, std::exp(-d) + d - 1);
      CAPTURE(cgrpo::to_string(k), logp, ref_lp);
      // d = logp - ref_lp is one rounding of numbers up to |logp| + |ref_lp|; k3 also sums e^-d and 1,
      // which cancel near d = 0: a few eps of those sizes, however small the value.
      const double size = std::fabs(logp) + std::fabs(ref_lp) + (k == K::k3 ? std::exp(-d) + 1 : 0.0);
      CHECK(ref::close(v.value, want, 8 * DBL_EPSILON, size));
      const double fd = (kl(k, logp + h, ref_lp).value - kl(k, logp - h, ref_lp).value) / (2 * h);
      // Roundoff of the difference: ~4 eps (|value| + size) / h = 1e-9 (|value| + size);
      // truncation h^2 |KL^(3)| / 6 < 1e-10 (|KL^(3)| <= e^6): 1e-8 of (1 + |value| + size) holds.
      CHECK(ref::close(v.dvalue_dlogp, fd, 1e-6, 1e-2 * (1 + std::fabs(want) + size)));
    }
  }
  // k3 is clamped at 10 and passes no gradient there.
  const auto big = kl(K::k3, -30.0, 0.0);
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
  // V = 1000 terms: the sum of exponentials carries V eps relatively, so lse carries
  // eps (|max u| + V) absolutely; H = lse - sum p u carries V eps of max |u| + |lse| on top.
  const double V = static_cast<double>(u.size());
  double u_max = 0;
  for (double x : u)
    if (std::isfinite(x)) u_max = std::max(u_max, std::fabs(x));
  const double lse_size = u_max + V, h_size = V * (u_max + std::fabs(lse));
  auto st = cgrpo::row_stats_identity<double>();
  for (double x : u) st = cgrpo::row_stats_push(st, x);
  CHECK(ref::close(cgrpo::row_logsumexp(st), lse, 4 * DBL_EPSILON, lse_size));
  CHECK(ref::close(cgrpo::row_entropy(st), entropy, 4 * DBL_EPSILON, h_size));
  // Merging parts (as threads or blocks do) gives the same statistics.
  auto a = cgrpo::row_stats_identity<double>(), b = a;
  for (size_t i = 0; i < 613; ++i) a = cgrpo::row_stats_push(a, u[i]);
  for (size_t i = 613; i < u.size(); ++i) b = cgrpo::row_stats_push(b, u[i]);
  const auto ab = cgrpo::row_stats_merge(a, b), ba = cgrpo::row_stats_merge(b, a);
  CHECK(ref::close(cgrpo::row_logsumexp(ab), lse, 4 * DBL_EPSILON, lse_size));
  CHECK(ref::close(cgrpo::row_entropy(ba), entropy, 4 * DBL_EPSILON, h_size));
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
  const double lse_rel = cgrpo::cpu::row_lse_rel(st);
  const double lse = st.pivot * inv_t + lse_rel, h = cgrpo::row_entropy(st.rel);
  cgrpo::cpu::row_logit_gradient(z.data(), V, inv_t, 42, st.pivot, lse_rel, h, a, b, g.data());
  for (int64_t v = 0; v < V; ++v) {
    // g = (a (onehot - p) - b p (log p + H)) / tau: p = e^(u - lse) carries eps (|u| + |lse|)
    // relatively, and a (1 - p) at the target eps |a|: the size of each entry's terms times
    // (1 + |u| + |lse|), to a few eps, however small p makes the entry.
    const double u = z[v] * inv_t, lp = u - lse, p = std::exp(lp);
    const double size = inv_t * ((v == 42 ? std::fabs(a) : 0.0) +
                                 p * (std::fabs(a) + std::fabs(b) * (std::fabs(lp) + h + 1)) *
                                     (1 + std::fabs(u) + std::fabs(lse)));
    CAPTURE(v);
    CHECK(ref::close(g[v], cgrpo::logit_gradient(u, v == 42, lse, h, a, b, inv_t), 16 * DBL_EPSILON, size));
  }
}
