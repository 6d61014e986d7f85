// Refinement selection: first correct refinement, else the best; k; empty refinements; errors.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <cgrpo/critique/refinement_selection.hpp>
#include <random>
#include <vector>

using cgrpo::critique::select_refinements;

namespace {

// The paper's rule for k = 1, written literally.
int64_t reference_pick_one(const std::vector<double>& rewards, const std::vector<int64_t>& lengths) {
  for (size_t j = 0; j < rewards.size(); ++j)
    if (lengths[j] > 0 && rewards[j] == 1.0) return static_cast<int64_t>(j);
  int64_t best = -1;
  for (size_t j = 0; j < rewards.size(); ++j)
    if (lengths[j] > 0 && (best < 0 || rewards[j] > rewards[best])) best = static_cast<int64_t>(j);
  return best;
}

}  // namespace

TEST_CASE("k = 1 keeps the first correct refinement, else the highest-scoring one", "[selection]") {
  std::vector<int64_t> chosen;
  const std::vector<double> some_correct = {0.0, 0.5, 1.0, 1.0};
  REQUIRE(select_refinements(some_correct.data(), nullptr, 4, 1, 1.0, false, chosen).ok());
  CHECK(chosen == std::vector<int64_t>{2});
  const std::vector<double> none_correct = {0.0, 0.25, 0.75, 0.75, 0.5};
  REQUIRE(select_refinements(none_correct.data(), nullptr, 5, 1, 1.0, false, chosen).ok());
  CHECK(chosen == std::vector<int64_t>{2});
  const std::vector<double> all_wrong = {0.0, 0.0, 0.0};
  REQUIRE(select_refinements(all_wrong.data(), nullptr, 3, 1, 1.0, false, chosen).ok());
  CHECK(chosen == std::vector<int64_t>{0});
}

TEST_CASE("k > 1: correct refinements in order, then the rest by decreasing reward", "[selection]") {
  const std::vector<double> rewards = {0.2, 1.0, 0.9, 1.0, 0.9};
  std::vector<int64_t> chosen;
  REQUIRE(select_refinements(rewards.data(), nullptr, 5, 4, 1.0, false, chosen).ok());
  CHECK(chosen == std::vector<int64_t>{1, 3, 2, 4});
  REQUIRE(select_refinements(rewards.data(), nullptr, 5, 0, 1.0, false, chosen).ok());
  CHECK(chosen.empty());
}

TEST_CASE("empty refinements are skipped unless allowed; k too large is a clear error", "[selection]") {
  const std::vector<double> rewards = {1.0, 0.0, 0.5};
  const std::vector<int64_t> lengths = {0, 3, 0};
  std::vector<int64_t> chosen = {42};
  REQUIRE(select_refinements(rewards.data(), lengths.data(), 3, 1, 1.0, false, chosen).ok());
  CHECK(chosen == std::vector<int64_t>{1});
  REQUIRE(select_refinements(rewards.data(), lengths.data(), 3, 1, 1.0, true, chosen).ok());
  CHECK(chosen == std::vector<int64_t>{0});

  chosen = {42};
  cgrpo::Status s = select_refinements(rewards.data(), lengths.data(), 3, 2, 1.0, false, chosen);
  CHECK(s.code == cgrpo::StatusCode::invalid_argument);
  CHECK(std::string(s.message).find("k = 2") != std::string::npos);
  CHECK(std::string(s.message).find("only 1 of 3") != std::string::npos);
  CHECK(chosen == std::vector<int64_t>{42});
  CHECK_FALSE(select_refinements(rewards.data(), nullptr, 3, 4, 1.0, false, chosen).ok());
  CHECK_FALSE(select_refinements(nullptr, nullptr, 0, 1, 1.0, false, chosen).ok());
  CHECK_FALSE(select_refinements(rewards.data(), nullptr, 3, -1, 1.0, false, chosen).ok());
  const std::vector<double> nan_reward = {0.0, std::nan("")};
  CHECK(select_refinements(nan_reward.data(), nullptr, 2, 1, 1.0, false, chosen).code ==
        cgrpo::StatusCode::non_finite);
}

TEST_CASE("k = 1 selection equals the literal rule on random inputs", "[selection]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  std::uniform_int_distribution<int> count_dist(1, 9), level(0, 4), length(0, 3);
  int checked = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    const int m = count_dist(rng);
    std::vector<double> rewards(m);
    std::vector<int64_t> lengths(m);
    for (int j = 0; j < m; ++j) {
      rewards[j] = level(rng) / 4.0;  // {0, .25, .5, .75, 1}: ties and several correct ones
      lengths[j] = length(rng);
    }
    const int64_t want = reference_pick_one(rewards, lengths);
    std::vector<int64_t> chosen;
    const cgrpo::Status s = select_refinements(rewards.data(), lengths.data(), m, 1, 1.0, false, chosen);
    if (want < 0) {
      CHECK_FALSE(s.ok());
      continue;
    }
    REQUIRE(s.ok());
    REQUIRE(chosen.size() == 1);
    CHECK(chosen[0] == want);
    ++checked;
  }
  CHECK(checked > 1000);
}
