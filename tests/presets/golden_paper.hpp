// tests/presets/golden_paper.hpp: the params of the paper's cases (tests/data/*.txt, computed by the
// Critique-GRPO authors' verl fork) as a golden::Setup.
#pragma once

#include <cstdio>

#include "golden_runner.hpp"

namespace golden {

inline void setup_paper(const GoldenCase& g, Setup& s) {
  const auto& logits = g.at("logits");
  const int64_t B = logits.shape[0], L = logits.shape[1];
  s.recipe = cgrpo::paper_critique_grpo();
  cgrpo::AdvantageConfig& adv = s.recipe.advantage;
  cgrpo::LossConfig& c = s.recipe.loss;
  adv.estimator = g.param("advantage") == "grpo" ? cgrpo::AdvantageEstimator::grpo : cgrpo::AdvantageEstimator::grpo_no_std;
  if (!g.param("eps").empty()) adv.eps = std::stod(g.param("eps"));
  // refinement_rows=first_K_of_each_group_of_N: group membership is row / N.
  long k = 0, n = 0;
  REQUIRE(std::sscanf(g.param("refinement_rows").c_str(), "first_%ld_of_each_group_of_%ld", &k, &n) == 2);
  s.group_ids.resize(B);
  s.row_kinds.resize(B);
  for (int64_t i = 0; i < B; ++i) {
    s.group_ids[i] = static_cast<int32_t>(i / n);
    s.row_kinds[i] = (i % n) < k ? cgrpo::kRefinement : cgrpo::kInitial;
    REQUIRE(g.at("refine").values[i] == (s.row_kinds[i] == cgrpo::kRefinement ? 1.0 : 0.0));
  }
  s.num_groups = (B + n - 1) / n;
  c.policy.refinement_gamma = param_double(g, "gamma");
  if (g.param("clip") == "ppo") {
    c.policy.loss = cgrpo::PolicyLoss::ppo_clip;
    c.ratio.clip_eps_low = param_double(g, "eps_low");
    c.ratio.clip_eps_high = param_double(g, "eps_high");
    REQUIRE(g.param("dual_clip") == "none");
  } else {
    REQUIRE(g.param("clip") == "none");
    c.policy.loss = cgrpo::PolicyLoss::ratio;
  }
  const std::string agg = g.param("pg_agg");
  c.aggregation.policy =
      agg == "token-mean" ? cgrpo::Aggregation::token_mean : cgrpo::Aggregation::seq_mean_token_sum_norm;
  s.scale.length = agg_number(agg, "L");
  if (c.aggregation.policy == cgrpo::Aggregation::seq_mean_token_sum_norm) REQUIRE(s.scale.length == double(L));
  c.entropy.coef = param_double(g, "entropy_coef");
  REQUIRE(g.param("entropy_agg") == "token-mean");
  c.aggregation.entropy = cgrpo::Aggregation::token_mean;
  REQUIRE(g.param("kl") == "none");
  c.temperature = param_double(g, "temperature");
  // The fork's token-mean divides by N + 1e-8 (verl's masked_mean of the time): the paper preset's
  // convention (AggregationConvention{}), both through the caller's weights and the loss's own.
  REQUIRE(c.aggregation.convention.token_mean_eps == 1e-8);
  REQUIRE(c.aggregation.convention.count_empty_rows);
  REQUIRE(c.validate().ok());
  s.caller_weights = true;
}

}  // namespace golden
