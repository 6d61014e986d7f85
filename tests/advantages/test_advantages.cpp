// tests/advantages/test_advantages.cpp: the advantage settings of a recipe, against plain double
// formulas: reinforce_pp_baseline's whitening as verl's masked_whiten computes it (means over
// N + 1e-8, Bessel's N / (N - 1)) in the verl presets, exact (N) by default.
#include <catch2/catch.hpp>

#include <cgrpo/cgrpo.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "test_seed.hpp"

namespace {

// verl's compute_reinforce_plus_plus_baseline_outcome_advantage: R - mean_g (R for a one-member
// group), broadcast to the response's tokens, then masked_whiten over the batch's valid tokens:
//   mean = sum(v m) / (N + c);  var = sum((v - mean)^2 m) / (N + c) * N / (N - 1);
//   (v - mean) / sqrt(var + 1e-8),  c = 1e-8 in verl's masked_mean.
std::vector<double> reinforce_pp(const std::vector<double>& rewards, const std::vector<int32_t>& group,
                                 const std::vector<int64_t>& tokens, double count_eps) {
  const size_t n = rewards.size();
  std::vector<double> a(n);
  for (size_t i = 0; i < n; ++i) {
    double sum = 0, count = 0;
    for (size_t j = 0; j < n; ++j)
      if (group[j] == group[i]) sum += rewards[j], count += 1;
    a[i] = count < 2 ? rewards[i] : rewards[i] - sum / count;
  }
  double N = 0, s = 0;
  for (size_t i = 0; i < n; ++i) N += tokens[i], s += tokens[i] * a[i];
  const double mean = s / (N + count_eps);
  double v = 0;
  for (size_t i = 0; i < n; ++i) v += tokens[i] * (a[i] - mean) * (a[i] - mean);
  const double var = v / (N + count_eps) * (N / (N - 1));
  for (double& x : a) x = (x - mean) / std::sqrt(var + 1e-8);
  return a;
}

}  // namespace

TEST_CASE("advantages: reinforce_pp_baseline whitens as verl's masked_whiten in the verl presets", "[advantages]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_int_distribution<int64_t> len(1, 30);
  const int64_t n = 13;
  std::vector<double> rewards(n);
  std::vector<int32_t> group(n);
  std::vector<int64_t> tokens(n);
  for (int64_t i = 0; i < n; ++i) {
    rewards[i] = normal(rng);
    group[i] = static_cast<int32_t>(i / 4);  // groups of 4, the last of 1
    tokens[i] = len(rng);
  }
  const cgrpo::GroupAssignment groups{n, group.data(), 4};
  cgrpo::AdvantageConfig verl = cgrpo::verl_vanilla().advantage;
  verl.estimator = cgrpo::AdvantageEstimator::reinforce_pp_baseline;
  CHECK(verl.whiten_count_eps == 1e-8);
  cgrpo::AdvantageConfig exact;  // the library's default: exact counts
  exact.estimator = cgrpo::AdvantageEstimator::reinforce_pp_baseline;
  CHECK(exact.whiten_count_eps == 0.0);
  std::vector<double> got_verl(n), got_exact(n);
  REQUIRE(cgrpo::group_advantages(verl, groups, rewards.data(), tokens.data(), got_verl.data()).ok());
  REQUIRE(cgrpo::group_advantages(exact, groups, rewards.data(), tokens.data(), got_exact.data()).ok());
  const std::vector<double> want_verl = reinforce_pp(rewards, group, tokens, 1e-8);
  const std::vector<double> want_exact = reinforce_pp(rewards, group, tokens, 0.0);
  double differ = 0;
  for (int64_t i = 0; i < n; ++i) {
    CHECK(got_verl[i] == Approx(want_verl[i]).epsilon(1e-13).margin(1e-15));
    CHECK(got_exact[i] == Approx(want_exact[i]).epsilon(1e-13).margin(1e-15));
    differ = std::max(differ, std::fabs(want_verl[i] - want_exact[i]));
  }
  // The two conventions differ by about 1e-8 / N relative: far above the 1e-13 the checks allow,
  // so each check would fail under the other convention.
  CHECK(differ > 1e-12);
  std::vector<double> bad(n, -7);
  cgrpo::AdvantageConfig negative = verl;
  negative.whiten_count_eps = -1;
  const cgrpo::Status s = cgrpo::group_advantages(negative, groups, rewards.data(), tokens.data(), bad.data());
  CHECK(s.code == cgrpo::StatusCode::invalid_argument);
  CHECK(std::string(s.message).find("whiten_count_eps") != std::string::npos);
  for (double x : bad) CHECK(x == -7);
}
