// tests/advantages/test_gdpo.cpp: verl's GDPO advantages (compute_gdpo_outcome_advantage, verl
// 1dda039) against a plain double reference written here: grpo per reward component (verl's
// compute_grpo_outcome_advantage), the weighted sum, then masked_whiten over the valid tokens.
// Fresh random batches: ragged interleaved groups, one-member groups, all-equal groups, empty rows,
// K = 1..4, random weights; double and float outputs; the single-rewards estimator
// (group_advantages(gdpo)), the keyed form, and every error (nothing written).
#include <catch2/catch.hpp>

#include <cgrpo/cgrpo.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "test_seed.hpp"

namespace {

constexpr double kSentinel = -12345.5;

// verl, in double and in loops. comps[i][k]: component k of response i.
//   grpo per component: one-member group: mean 0, std 1 -> r / (1 + eps); otherwise
//     (r - mean) / (std_unbiased + eps), and 0 for a group whose values are all equal (what verl
//     gets in exact arithmetic; its float32 r - mean can leave ~1e-8 there);
//   S_i = sum_k w_k A_ik;
//   masked_whiten: mu = sum n S / (N + c), var = sum n (S - mu)^2 / (N + c) * N / (N - 1),
//     A = (S - mu) / sqrt(var + whiten_eps).
std::vector<double> reference_gdpo(const std::vector<std::vector<double>>& comps, const std::vector<int32_t>& group,
                                   int64_t G, const std::vector<double>& w, const std::vector<int64_t>& tokens,
                                   double eps, double whiten_eps, double count_eps, std::vector<double>* S_out) {
  const size_t B = comps.size(), K = w.size();
  std::vector<double> S(B, 0.0);
  for (size_t k = 0; k < K; ++k) {
    for (int64_t g = 0; g < G; ++g) {
      double count = 0, sum = 0;
      bool equal = true;
      double first = 0;
      for (size_t i = 0; i < B; ++i)
        if (group[i] == g) {
          if (count == 0) first = comps[i][k];
          else if (comps[i][k] != first) equal = false;
          count += 1;
          sum += comps[i][k];
        }
      if (count == 0) continue;
      const double mean = sum / count;
      double ss = 0;
      for (size_t i = 0; i < B; ++i)
        if (group[i] == g) ss += (comps[i][k] - mean) * (comps[i][k] - mean);
      for (size_t i = 0; i < B; ++i) {
        if (group[i] != g) continue;
        double a;
        if (count < 2) a = (comps[i][k] - 0.0) / (1.0 + eps);
        else if (equal) a = 0.0;
        else a = (comps[i][k] - mean) / (std::sqrt(ss / (count - 1)) + eps);
        S[i] += w[k] * a;
      }
    }
  }
  double N = 0, s = 0;
  for (size_t i = 0; i < B; ++i) N += static_cast<double>(tokens[i]), s += static_cast<double>(tokens[i]) * S[i];
  const double mu = s / (N + count_eps);
  double v = 0;
  for (size_t i = 0; i < B; ++i) v += static_cast<double>(tokens[i]) * (S[i] - mu) * (S[i] - mu);
  const double var = v / (N + count_eps) * (N / (N - 1));
  std::vector<double> A(B);
  for (size_t i = 0; i < B; ++i) A[i] = (S[i] - mu) / std::sqrt(var + whiten_eps);
  if (S_out) *S_out = S;
  return A;
}

// A random batch: ragged groups (one-member ones included) whose members are shuffled through the
// batch, per (group, component) a style: 0/1, continuous, or all equal (0.1, not exact in binary);
// about a fifth of the rows empty (0 tokens). Group 0 has >= 3 members, continuous values in
// component 0 and non-empty rows, so the whitened values have a spread.
struct Batch {
  int64_t B = 0, G = 0, K = 0;
  std::vector<int32_t> group;
  std::vector<std::vector<double>> comps;  // [B][K]
  std::vector<double> flat;                // [B * K] row-major
  std::vector<double> weights;             // [K]
  std::vector<int64_t> tokens;             // [B]
};

Batch random_batch(std::mt19937_64& rng, int64_t K, bool float_values) {
  std::uniform_int_distribution<int> size_of(1, 6), style_of(0, 2);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  std::normal_distribution<double> normal(0.0, 1.0);
  Batch b;
  b.K = K;
  b.G = 1 + static_cast<int64_t>(rng() % 7);
  for (int64_t g = 0; g < b.G; ++g) {
    const int n = g == 0 ? 3 + size_of(rng) % 4 : (g == 1 ? 1 : size_of(rng));  // group 1: one member
    for (int j = 0; j < n; ++j) b.group.push_back(static_cast<int32_t>(g));
  }
  b.B = static_cast<int64_t>(b.group.size());
  std::shuffle(b.group.begin(), b.group.end(), rng);
  std::vector<std::vector<int>> style(b.G, std::vector<int>(K));
  for (int64_t g = 0; g < b.G; ++g)
    for (int64_t k = 0; k < K; ++k) style[g][k] = (g == 0 && k == 0) ? 1 : style_of(rng);
  if (b.G > 2) style[2][0] = 2;  // an all-equal group in component 0
  b.comps.assign(b.B, std::vector<double>(K));
  for (int64_t i = 0; i < b.B; ++i)
    for (int64_t k = 0; k < K; ++k) {
      const int s = style[b.group[i]][k];
      double v = s == 0 ? (uni(rng) < 0.5 ? 0.0 : 1.0) : s == 1 ? 1.0 + 3.0 * normal(rng) : 0.1;
      if (float_values) v = static_cast<double>(static_cast<float>(v));
      b.comps[i][k] = v;
    }
  for (int64_t i = 0; i < b.B; ++i)
    for (int64_t k = 0; k < K; ++k) b.flat.push_back(b.comps[i][k]);
  for (int64_t k = 0; k < K; ++k) {
    const double m = 0.25 + 1.75 * uni(rng);
    b.weights.push_back(uni(rng) < 0.3 ? -m : m);
  }
  b.tokens.resize(b.B);
  for (int64_t i = 0; i < b.B; ++i)
    b.tokens[i] = b.group[i] == 0 ? 1 + static_cast<int64_t>(rng() % 12)
                                  : (uni(rng) < 0.2 ? 0 : 1 + static_cast<int64_t>(rng() % 12));
  return b;
}

// verl's settings: eps 1e-6, masked_whiten's 1e-8 and N + 1e-8.
cgrpo::AdvantageConfig verl_gdpo() { return cgrpo::verl_advantages(cgrpo::AdvantageEstimator::gdpo); }

bool contains(const cgrpo::Status& s, const char* needle) {
  return std::string(s.message).find(needle) != std::string::npos;
}

template <typename T>
bool all_equal_to(const std::vector<T>& v, double x) {
  for (const T& e : v)
    if (static_cast<double>(e) != x) return false;
  return true;
}

}  // namespace

TEST_CASE("gdpo: the estimator's name, count and verl's settings", "[advantages][gdpo]") {
  CHECK(static_cast<int>(cgrpo::AdvantageEstimator::gdpo) == 5);
  CHECK(cgrpo::kNumAdvantageEstimators == 6);
  CHECK(std::string(cgrpo::to_string(cgrpo::AdvantageEstimator::gdpo)) == "gdpo");
  const cgrpo::AdvantageConfig c = verl_gdpo();
  CHECK(c.estimator == cgrpo::AdvantageEstimator::gdpo);
  CHECK(c.eps == 1e-6);
  CHECK(c.whiten_eps == 1e-8);
  CHECK(c.whiten_count_eps == 1e-8);
}

TEST_CASE("gdpo: K components against the double reference (double and float)", "[advantages][gdpo]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  const cgrpo::AdvantageConfig config = verl_gdpo();
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t K = 1 + trial % 4;
    const bool unit_weights = trial % 5 == 0;  // null weights: all 1
    const Batch b = random_batch(rng, K, false);
    CAPTURE(trial, b.B, b.G, K, unit_weights);
    const cgrpo::GroupAssignment groups{b.B, b.group.data(), b.G};
    const std::vector<double> w = unit_weights ? std::vector<double>(K, 1.0) : b.weights;
    std::vector<double> want_S;
    const std::vector<double> want =
        reference_gdpo(b.comps, b.group, b.G, w, b.tokens, 1e-6, 1e-8, 1e-8, &want_S);
    std::vector<double> got(b.B, kSentinel), got_S(b.B, kSentinel);
    const cgrpo::Status s = cgrpo::gdpo_advantages(config, groups, b.flat.data(), K,
                                                   unit_weights ? nullptr : b.weights.data(), b.tokens.data(),
                                                   got.data(), got_S.data());
    INFO(s.message);
    REQUIRE(s.ok());
    // Both sides run the same double formulas in about the same order: ~1e-15 relative to the
    // largest |A| (O(1)); 1e-12 leaves room for the whitening's 1 / std of S.
    double scale = 1.0, scale_S = 1.0;
    for (int64_t i = 0; i < b.B; ++i) {
      scale = std::max(scale, std::fabs(want[i]));
      scale_S = std::max(scale_S, std::fabs(want_S[i]));
    }
    for (int64_t i = 0; i < b.B; ++i) {
      CAPTURE(i, b.group[i], b.tokens[i], want[i], got[i], want_S[i], got_S[i]);
      CHECK(std::fabs(got[i] - want[i]) <= 1e-12 * scale);
      CHECK(std::fabs(got_S[i] - want_S[i]) <= 1e-12 * scale_S);
    }
    // Without the optional weighted_sum: the same advantages, bit for bit.
    std::vector<double> again(b.B, kSentinel);
    REQUIRE(cgrpo::gdpo_advantages(config, groups, b.flat.data(), K, unit_weights ? nullptr : b.weights.data(),
                                   b.tokens.data(), again.data())
                .ok());
    CHECK(again == got);
    // Empty rows (0 tokens) still get an advantage: (S_i - mu) / sqrt(var + eps), checked above.

    // float: values exactly representable in float, computed in double, rounded once at the end:
    // within float's half ulp (6e-8 relative) of the double reference, plus its 1e-12.
    const Batch bf = random_batch(rng, K, true);
    std::vector<float> flat_f(bf.flat.begin(), bf.flat.end());
    const cgrpo::GroupAssignment groups_f{bf.B, bf.group.data(), bf.G};
    std::vector<double> want_fS;
    const std::vector<double> want_f =
        reference_gdpo(bf.comps, bf.group, bf.G, bf.weights, bf.tokens, 1e-6, 1e-8, 1e-8, &want_fS);
    std::vector<float> got_f(bf.B, -7.5f), got_fS(bf.B, -7.5f);
    const cgrpo::Status sf = cgrpo::gdpo_advantages(config, groups_f, flat_f.data(), K, bf.weights.data(),
                                                    bf.tokens.data(), got_f.data(), got_fS.data());
    INFO(sf.message);
    REQUIRE(sf.ok());
    double fscale = 1e-30, fscale_S = 1e-30;
    for (int64_t i = 0; i < bf.B; ++i)
      fscale = std::max(fscale, std::fabs(want_f[i])), fscale_S = std::max(fscale_S, std::fabs(want_fS[i]));
    for (int64_t i = 0; i < bf.B; ++i) {
      CAPTURE(i, want_f[i], got_f[i]);
      CHECK(std::fabs(got_f[i] - want_f[i]) <= 6e-8 * std::fabs(want_f[i]) + 1e-12 * fscale);
      CHECK(std::fabs(got_fS[i] - want_fS[i]) <= 6e-8 * std::fabs(want_fS[i]) + 1e-12 * fscale_S);
    }
  }
}

TEST_CASE("gdpo: the exact counts (whiten_count_eps 0) and other epsilons are honoured", "[advantages][gdpo]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  const Batch b = random_batch(rng, 3, false);
  const cgrpo::GroupAssignment groups{b.B, b.group.data(), b.G};
  cgrpo::AdvantageConfig config = verl_gdpo();
  config.eps = 1e-4;
  config.whiten_eps = 1e-6;
  config.whiten_count_eps = 0.0;
  const std::vector<double> want = reference_gdpo(b.comps, b.group, b.G, b.weights, b.tokens, 1e-4, 1e-6, 0.0, nullptr);
  std::vector<double> got(b.B, kSentinel);
  REQUIRE(cgrpo::gdpo_advantages(config, groups, b.flat.data(), 3, b.weights.data(), b.tokens.data(), got.data()).ok());
  for (int64_t i = 0; i < b.B; ++i) CHECK(got[i] == Approx(want[i]).epsilon(1e-12).margin(1e-12));
}

TEST_CASE("gdpo: group_advantages(gdpo) on the rewards is gdpo_advantages with K = 1, weight 1", "[advantages][gdpo]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  const cgrpo::AdvantageConfig config = verl_gdpo();
  for (int trial = 0; trial < 50; ++trial) {
    const Batch b = random_batch(rng, 1, trial % 2 == 1);
    const cgrpo::GroupAssignment groups{b.B, b.group.data(), b.G};
    CAPTURE(trial, b.B, b.G);
    std::vector<double> single(b.B, kSentinel), multi(b.B, kSentinel), one_weight(b.B, kSentinel);
    REQUIRE(cgrpo::group_advantages(config, groups, b.flat.data(), b.tokens.data(), single.data()).ok());
    REQUIRE(cgrpo::gdpo_advantages(config, groups, b.flat.data(), 1, nullptr, b.tokens.data(), multi.data()).ok());
    const double w1 = 1.0;
    REQUIRE(cgrpo::gdpo_advantages(config, groups, b.flat.data(), 1, &w1, b.tokens.data(), one_weight.data()).ok());
    CHECK(single == multi);  // the same code, bit for bit
    CHECK(single == one_weight);
    const std::vector<double> want =
        reference_gdpo(b.comps, b.group, b.G, {1.0}, b.tokens, 1e-6, 1e-8, 1e-8, nullptr);
    for (int64_t i = 0; i < b.B; ++i) CHECK(single[i] == Approx(want[i]).epsilon(1e-12).margin(1e-12));
    // The positional form of group_advantages, and float.
    std::vector<double> positional(b.B, kSentinel);
    REQUIRE(cgrpo::group_advantages(cgrpo::AdvantageEstimator::gdpo, groups, b.flat.data(), b.tokens.data(), 1e-6,
                                    positional.data(), 1e-8, 1e-8)
                .ok());
    CHECK(positional == single);
    std::vector<float> rf(b.flat.begin(), b.flat.end()), single_f(b.B, -7.5f), multi_f(b.B, -7.5f);
    REQUIRE(cgrpo::group_advantages(config, groups, rf.data(), b.tokens.data(), single_f.data()).ok());
    REQUIRE(cgrpo::gdpo_advantages(config, groups, rf.data(), 1, nullptr, b.tokens.data(), multi_f.data()).ok());
    CHECK(single_f == multi_f);
  }
}

TEST_CASE("gdpo: the keyed form equals the array form, components in any order", "[advantages][gdpo]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  const cgrpo::AdvantageConfig config = verl_gdpo();
  const char* names[] = {"accuracy", "format", "length", "tool_use", "unused"};
  for (int trial = 0; trial < 40; ++trial) {
    const int64_t K = 1 + trial % 4;
    const Batch b = random_batch(rng, K, false);
    const cgrpo::GroupAssignment groups{b.B, b.group.data(), b.G};
    // Columns of the components, plus one no key names (it must not be read: NaN).
    std::vector<std::vector<double>> columns(K + 1, std::vector<double>(b.B));
    for (int64_t k = 0; k < K; ++k)
      for (int64_t i = 0; i < b.B; ++i) columns[k][i] = b.comps[i][k];
    std::fill(columns[K].begin(), columns[K].end(), std::numeric_limits<double>::quiet_NaN());
    std::vector<cgrpo::RewardComponent<double>> comps;
    for (int64_t k = 0; k < K; ++k) comps.push_back({names[k], columns[k].data()});
    comps.push_back({names[4], columns[K].data()});
    std::shuffle(comps.begin(), comps.end(), rng);
    std::vector<const char*> keys(names, names + K);
    std::vector<double> array_form(b.B, kSentinel), keyed(b.B, kSentinel), array_S(b.B, kSentinel),
        keyed_S(b.B, kSentinel);
    REQUIRE(cgrpo::gdpo_advantages(config, groups, b.flat.data(), K, b.weights.data(), b.tokens.data(),
                                   array_form.data(), array_S.data())
                .ok());
    const cgrpo::Status s = cgrpo::gdpo_advantages(config, groups, keys.data(), K, b.weights.data(), comps.data(),
                                                   static_cast<int64_t>(comps.size()), b.tokens.data(), keyed.data(),
                                                   keyed_S.data());
    INFO(s.message);
    REQUIRE(s.ok());
    CHECK(keyed == array_form);
    CHECK(keyed_S == array_S);
  }
}

TEST_CASE("gdpo: bad input is refused and writes nothing", "[advantages][gdpo][errors]") {
  using Code = cgrpo::StatusCode;
  const cgrpo::AdvantageConfig config = verl_gdpo();
  // 5 responses, 2 groups, K = 2: [B][K] row-major.
  const int64_t B = 5, K = 2;
  std::vector<int32_t> ids = {0, 1, 0, 1, 0};
  std::vector<double> comps = {1, 0.5, 0, 0.25, 1, 1, 0, 0, 0, 0.75};
  std::vector<double> w = {1.0, 0.5};
  std::vector<int64_t> tokens = {3, 0, 2, 4, 1};
  const cgrpo::GroupAssignment groups{B, ids.data(), 2};
  std::vector<double> adv(B, kSentinel), S(B, kSentinel);
  auto untouched = [&] { return all_equal_to(adv, kSentinel) && all_equal_to(S, kSentinel); };
  auto call = [&](const cgrpo::AdvantageConfig& c, const cgrpo::GroupAssignment& g, const double* x, int64_t k,
                  const double* wt, const int64_t* n) {
    std::fill(adv.begin(), adv.end(), kSentinel);
    std::fill(S.begin(), S.end(), kSentinel);
    return cgrpo::gdpo_advantages(c, g, x, k, wt, n, adv.data(), S.data());
  };
  REQUIRE(call(config, groups, comps.data(), K, w.data(), tokens.data()).ok());  // the batch itself is fine
  CHECK(!untouched());

  SECTION("config") {
    cgrpo::AdvantageConfig c = config;
    c.estimator = cgrpo::AdvantageEstimator::grpo;
    cgrpo::Status s = call(c, groups, comps.data(), K, w.data(), tokens.data());
    CHECK(s.code == Code::invalid_argument);
    CHECK(contains(s, "grpo"));
    CHECK(contains(s, "gdpo"));
    c.estimator = static_cast<cgrpo::AdvantageEstimator>(9);
    CHECK(call(c, groups, comps.data(), K, w.data(), tokens.data()).code == Code::invalid_argument);
    c = config;
    c.eps = -1;
    s = call(c, groups, comps.data(), K, w.data(), tokens.data());
    CHECK(s.code == Code::invalid_argument);
    CHECK(contains(s, "eps"));
    c = config;
    c.whiten_eps = NAN;
    s = call(c, groups, comps.data(), K, w.data(), tokens.data());
    CHECK(s.code == Code::invalid_argument);
    CHECK(contains(s, "whiten_eps"));
    c = config;
    c.whiten_count_eps = -1e-8;
    s = call(c, groups, comps.data(), K, w.data(), tokens.data());
    CHECK(s.code == Code::invalid_argument);
    CHECK(contains(s, "whiten_count_eps"));
    // Checked even for an empty batch.
    c.whiten_count_eps = INFINITY;
    CHECK(call(c, cgrpo::GroupAssignment{0, ids.data(), 2}, comps.data(), K, w.data(), tokens.data()).code ==
          Code::invalid_argument);
    CHECK(untouched());
  }
  SECTION("sizes and null pointers") {
    CHECK(call(config, groups, comps.data(), 0, w.data(), tokens.data()).code == Code::invalid_argument);
    CHECK(call(config, groups, comps.data(), -1, w.data(), tokens.data()).code == Code::invalid_argument);
    CHECK(call(config, cgrpo::GroupAssignment{-1, ids.data(), 2}, comps.data(), K, w.data(), tokens.data()).code ==
          Code::invalid_argument);
    CHECK(call(config, cgrpo::GroupAssignment{B, ids.data(), -2}, comps.data(), K, w.data(), tokens.data()).code ==
          Code::invalid_argument);
    CHECK(call(config, groups, nullptr, K, w.data(), tokens.data()).code == Code::invalid_argument);
    CHECK(call(config, cgrpo::GroupAssignment{B, nullptr, 2}, comps.data(), K, w.data(), tokens.data()).code ==
          Code::invalid_argument);
    const cgrpo::Status s = call(config, groups, comps.data(), K, w.data(), nullptr);
    CHECK(s.code == Code::invalid_argument);
    CHECK(contains(s, "token_counts"));
    CHECK(cgrpo::gdpo_advantages(config, groups, comps.data(), K, w.data(), tokens.data(),
                                 static_cast<double*>(nullptr))
              .code == Code::invalid_argument);
    CHECK(call(config, groups, comps.data(), INT64_MAX / 2, nullptr, tokens.data()).code == Code::invalid_argument);
    CHECK(untouched());
    // An empty batch is OK and writes nothing.
    CHECK(call(config, cgrpo::GroupAssignment{0, nullptr, 0}, nullptr, K, nullptr, nullptr).ok());
    CHECK(untouched());
  }
  SECTION("values") {
    std::vector<double> bad = comps;
    bad[3 * K + 1] = NAN;  // response 3, component 1
    cgrpo::Status s = call(config, groups, bad.data(), K, w.data(), tokens.data());
    CHECK(s.code == Code::non_finite);
    CHECK(contains(s, "response 3"));
    CHECK(contains(s, "component 1"));
    bad[3 * K + 1] = -INFINITY;
    CHECK(call(config, groups, bad.data(), K, w.data(), tokens.data()).code == Code::non_finite);
    std::vector<double> bad_w = {1.0, INFINITY};
    s = call(config, groups, comps.data(), K, bad_w.data(), tokens.data());
    CHECK(s.code == Code::non_finite);
    CHECK(contains(s, "weights[1]"));
    bad_w = {NAN, 1.0};
    CHECK(call(config, groups, comps.data(), K, bad_w.data(), tokens.data()).code == Code::non_finite);
    // Any finite weight is allowed (verl's are any float), but a weighted sum past double is not.
    bad_w = {1e308, 1.7e308};  // response 2: 0.58e308 + 1.7e308
    s = call(config, groups, comps.data(), K, bad_w.data(), tokens.data());
    CHECK(s.code == Code::non_finite);
    CHECK(contains(s, "weighted sum"));
    std::vector<int32_t> bad_ids = ids;
    bad_ids[4] = 2;
    CHECK(call(config, cgrpo::GroupAssignment{B, bad_ids.data(), 2}, comps.data(), K, w.data(), tokens.data()).code ==
          Code::out_of_range);
    bad_ids[4] = -1;
    CHECK(call(config, cgrpo::GroupAssignment{B, bad_ids.data(), 2}, comps.data(), K, w.data(), tokens.data()).code ==
          Code::out_of_range);
    std::vector<int64_t> bad_tokens = tokens;
    bad_tokens[2] = -1;
    s = call(config, groups, comps.data(), K, w.data(), bad_tokens.data());
    CHECK(s.code == Code::invalid_argument);
    CHECK(contains(s, "token_counts[2]"));
    // N >= 2 valid tokens in the batch (verl's masked_whiten refuses one).
    const std::vector<int64_t> one_token = {0, 0, 1, 0, 0}, none = {0, 0, 0, 0, 0};
    s = call(config, groups, comps.data(), K, w.data(), one_token.data());
    CHECK(s.code == Code::invalid_argument);
    CHECK(contains(s, "at least 2 valid tokens"));
    CHECK(call(config, groups, comps.data(), K, w.data(), none.data()).code == Code::invalid_argument);
    // float: a weighted sum past float's range is refused, not written as inf.
    std::vector<float> comps_f(comps.begin(), comps.end()), adv_f(B, -7.5f), S_f(B, -7.5f);
    bad_w = {3e38, 3e38};  // response 2: 4.7e38, past FLT_MAX
    s = cgrpo::gdpo_advantages(config, groups, comps_f.data(), K, bad_w.data(), tokens.data(), adv_f.data(),
                               S_f.data());
    CHECK(s.code == Code::non_finite);
    CHECK(all_equal_to(adv_f, -7.5));
    CHECK(all_equal_to(S_f, -7.5));
    CHECK(untouched());
  }
  SECTION("overlapping buffers") {
    std::vector<double> x = comps;
    // advantages over the components, weighted_sum over advantages, over the weights.
    cgrpo::Status s = cgrpo::gdpo_advantages(config, groups, x.data(), K, w.data(), tokens.data(), x.data() + 1);
    CHECK(s.code == Code::invalid_argument);
    CHECK(contains(s, "overlaps"));
    CHECK(x == comps);
    std::vector<double> out(B + 2, kSentinel);
    s = cgrpo::gdpo_advantages(config, groups, x.data(), K, w.data(), tokens.data(), out.data(), out.data() + 2);
    CHECK(s.code == Code::invalid_argument);
    CHECK(contains(s, "weighted_sum"));
    CHECK(all_equal_to(out, kSentinel));
    std::vector<double> wide(B + 2, 1.0);
    s = cgrpo::gdpo_advantages(config, groups, x.data(), K, wide.data(), tokens.data(), wide.data() + 1);
    CHECK(s.code == Code::invalid_argument);
    CHECK(all_equal_to(wide, 1.0));
    // token_counts and advantages in one block of memory.
    std::vector<int64_t> block(B * 2, 1);
    s = cgrpo::gdpo_advantages(config, groups, x.data(), K, w.data(), block.data(),
                               reinterpret_cast<double*>(block.data() + 2));
    CHECK(s.code == Code::invalid_argument);
    CHECK(contains(s, "token_counts"));
    CHECK(all_equal_to(block, 1));
  }
  SECTION("group_advantages(gdpo) refuses what it must") {
    std::fill(adv.begin(), adv.end(), kSentinel);
    std::fill(S.begin(), S.end(), kSentinel);
    std::vector<double> rewards = {1, 0, 1, 0, 0};
    cgrpo::Status s = cgrpo::group_advantages(config, groups, rewards.data(), nullptr, adv.data());
    CHECK(s.code == Code::invalid_argument);
    CHECK(contains(s, "gdpo needs token_counts"));
    const std::vector<int64_t> one_token = {0, 0, 1, 0, 0};
    s = cgrpo::group_advantages(config, groups, rewards.data(), one_token.data(), adv.data());
    CHECK(s.code == Code::invalid_argument);
    CHECK(contains(s, "gdpo whitening"));
    CHECK(untouched());
  }
}

TEST_CASE("gdpo: the keyed form's errors name the key and write nothing", "[advantages][gdpo][errors]") {
  using Code = cgrpo::StatusCode;
  const cgrpo::AdvantageConfig config = verl_gdpo();
  const int64_t B = 4;
  std::vector<int32_t> ids = {0, 0, 1, 1};
  std::vector<int64_t> tokens = {2, 3, 1, 4};
  const cgrpo::GroupAssignment groups{B, ids.data(), 2};
  std::vector<double> acc = {1, 0, 1, 1}, fmt = {0.5, 0.5, 0, 1}, len = {0.1, 0.2, 0.3, 0.4};
  std::vector<cgrpo::RewardComponent<double>> comps = {{"accuracy", acc.data()}, {"format", fmt.data()},
                                                       {"length", len.data()}};
  const double w[2] = {1.0, 0.5};
  std::vector<double> adv(B, kSentinel), S(B, kSentinel);
  auto call = [&](std::vector<const char*> keys, const std::vector<cgrpo::RewardComponent<double>>& c) {
    std::fill(adv.begin(), adv.end(), kSentinel);
    std::fill(S.begin(), S.end(), kSentinel);
    return cgrpo::gdpo_advantages(config, groups, keys.data(), static_cast<int64_t>(keys.size()),
                                  keys.size() == 2 ? w : nullptr, c.data(), static_cast<int64_t>(c.size()),
                                  tokens.data(), adv.data(), S.data());
  };
  auto untouched = [&] { return all_equal_to(adv, kSentinel) && all_equal_to(S, kSentinel); };
  REQUIRE(call({"format", "accuracy"}, comps).ok());

  cgrpo::Status s = call({"accuracy", "correctness"}, comps);
  CHECK(s.code == Code::invalid_argument);
  CHECK(contains(s, "\"correctness\""));
  CHECK(contains(s, "\"accuracy\", \"format\", \"length\""));
  CHECK(untouched());
  s = call({"format", "format"}, comps);
  CHECK(s.code == Code::invalid_argument);
  CHECK(contains(s, "twice"));
  CHECK(untouched());
  std::vector<cgrpo::RewardComponent<double>> dup = comps;
  dup[2].name = "format";
  s = call({"format", "accuracy"}, dup);
  CHECK(s.code == Code::invalid_argument);
  CHECK(contains(s, "\"format\""));
  CHECK(untouched());
  CHECK(call({"format", nullptr}, comps).code == Code::invalid_argument);
  CHECK(call({}, comps).code == Code::invalid_argument);
  CHECK(call({"format", "accuracy"}, {}).code == Code::invalid_argument);
  std::vector<cgrpo::RewardComponent<double>> unnamed = comps;
  unnamed[1].name = nullptr;
  CHECK(call({"format", "accuracy"}, unnamed).code == Code::invalid_argument);
  std::vector<cgrpo::RewardComponent<double>> no_values = comps;
  no_values[0].values = nullptr;
  s = call({"format", "accuracy"}, no_values);
  CHECK(s.code == Code::invalid_argument);
  CHECK(contains(s, "\"accuracy\""));
  CHECK(call({"format", "length"}, no_values).ok());  // a component no key names is not read
  CHECK(!untouched());
  // A non-finite value names its key; an unused component's NaN is not read.
  std::vector<double> bad = fmt;
  bad[2] = NAN;
  std::vector<cgrpo::RewardComponent<double>> with_nan = comps;
  with_nan[1].values = bad.data();
  s = call({"accuracy", "format"}, with_nan);
  CHECK(s.code == Code::non_finite);
  CHECK(contains(s, "\"format\""));
  CHECK(contains(s, "response 2"));
  CHECK(untouched());
  CHECK(call({"accuracy", "length"}, with_nan).ok());
  // An output over one component's values names it.
  std::vector<double> shared = len;
  std::vector<cgrpo::RewardComponent<double>> over = comps;
  over[2].values = shared.data();
  s = cgrpo::gdpo_advantages(config, groups, std::vector<const char*>{"length"}.data(), 1, nullptr, over.data(), 3,
                             tokens.data(), shared.data());
  CHECK(s.code == Code::invalid_argument);
  CHECK(contains(s, "\"length\""));
  CHECK(contains(s, "overlaps"));
  CHECK(shared == len);
  // A config that is not gdpo.
  cgrpo::AdvantageConfig grpo = config;
  grpo.estimator = cgrpo::AdvantageEstimator::reinforce_pp_baseline;
  const char* keys[] = {"accuracy"};
  s = cgrpo::gdpo_advantages(grpo, groups, keys, 1, nullptr, comps.data(), 3, tokens.data(), adv.data());
  CHECK(s.code == Code::invalid_argument);
  CHECK(contains(s, "reinforce_pp_baseline"));
  // float, keyed.
  std::vector<float> acc_f(acc.begin(), acc.end()), fmt_f(fmt.begin(), fmt.end()), adv_f(B, -7.5f);
  std::vector<cgrpo::RewardComponent<float>> comps_f = {{"format", fmt_f.data()}, {"accuracy", acc_f.data()}};
  const char* keys2[] = {"accuracy", "format"};
  REQUIRE(cgrpo::gdpo_advantages(config, groups, keys2, 2, w, comps_f.data(), 2, tokens.data(), adv_f.data()).ok());
  std::vector<float> flat_f = {acc_f[0], fmt_f[0], acc_f[1], fmt_f[1], acc_f[2], fmt_f[2], acc_f[3], fmt_f[3]},
                     arr_f(B, -7.5f);
  REQUIRE(cgrpo::gdpo_advantages(config, groups, flat_f.data(), 2, w, tokens.data(), arr_f.data()).ok());
  CHECK(adv_f == arr_f);
}
