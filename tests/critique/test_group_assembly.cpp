// Group assembly: kinds, masks, group ids, mixed-group advantages and weights against a plain
// reference on random rollouts; packed and padded give the same loss; every error case.
#include <catch2/catch.hpp>

#include "catalog.hpp"
#include "expect_error.hpp"
#include "test_seed.hpp"
#include "tolerance.hpp"

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/critique/critique_stage.hpp>
#include <cmath>
#include <random>
#include <string>
#include <vector>

using namespace cgrpo::critique;

namespace {

std::vector<QuestionRollouts> random_rollouts(std::mt19937_64& rng, int questions, int n, int m, int max_len) {
  std::uniform_int_distribution<int> len(1, max_len), tok(0, 49), coin(0, 1);
  std::vector<QuestionRollouts> out(questions);
  for (auto& q : out) {
    const bool hard = coin(rng);  // hard questions: every initial response fails
    for (int i = 0; i < n; ++i) {
      Response r;
      r.tokens.resize(len(rng));
      for (auto& t : r.tokens) t = tok(rng);
      r.reward = hard ? 0.0 : coin(rng);
      q.initial.push_back(r);
    }
    for (int j = 0; j < m; ++j) {
      Response r;
      r.tokens.resize(len(rng));
      for (auto& t : r.tokens) t = tok(rng);
      r.reward = coin(rng) && coin(rng);  // about a quarter are correct; some groups have none
      q.refinements.push_back(r);
    }
  }
  return out;
}

// The members of each group, written directly from the rule: the first n - k initial responses,
// then the first correct refinement (else the first of the best).
std::vector<std::vector<const Response*>> reference_groups(const std::vector<QuestionRollouts>& qs, bool replace) {
  std::vector<std::vector<const Response*>> groups;
  for (const auto& q : qs) {
    std::vector<const Response*> g;
    const size_t kept = replace ? q.initial.size() - 1 : q.initial.size();
    for (size_t i = 0; i < kept; ++i) g.push_back(&q.initial[i]);
    const Response* pick = nullptr;
    for (const auto& r : q.refinements)
      if (!pick && r.reward == 1.0) pick = &r;
    if (!pick)
      for (const auto& r : q.refinements)
        if (!pick || r.reward > pick->reward) pick = &r;
    g.push_back(pick);
    groups.push_back(g);
  }
  return groups;
}

}  // namespace

TEST_CASE("assembled batches match a plain reference (k = 1, both placements, both layouts)", "[assembly]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  for (int trial = 0; trial < 40; ++trial) {
    const bool replace = trial % 2 == 0, padded = (trial / 2) % 2 == 1;
    const bool std_norm = (trial / 4) % 2 == 1;
    const auto qs = random_rollouts(rng, 5, 4, 3, 7);
    cgrpo::Recipe recipe = cgrpo::paper_critique_grpo();
    if (std_norm) recipe.advantage.estimator = cgrpo::AdvantageEstimator::grpo;
    GroupAssemblyOptions opt;
    opt.placement = replace ? RefinementPlacement::replace_last_initial : RefinementPlacement::append;
    opt.layout = padded ? BatchLayout::padded : BatchLayout::packed;
    AssembledBatch<double> b;
    REQUIRE(assemble_groups(recipe, qs, opt, b).ok());

    const auto groups = reference_groups(qs, replace);
    int64_t resp = 0, longest = 0, valid = 0;
    for (const auto& g : groups)
      for (const Response* r : g) {
        longest = std::max<int64_t>(longest, static_cast<int64_t>(r->tokens.size()));
        valid += static_cast<int64_t>(r->tokens.size());
      }
    for (size_t q = 0; q < groups.size(); ++q) {
      const auto& g = groups[q];
      double mean = 0, var = 0;
      for (const Response* r : g) mean += r->reward;
      mean /= static_cast<double>(g.size());
      for (const Response* r : g) var += (r->reward - mean) * (r->reward - mean);
      const double sd = std::sqrt(var / static_cast<double>(g.size() - 1));
      for (size_t i = 0; i < g.size(); ++i, ++resp) {
        const Response* r = g[i];
        const bool refinement = i + 1 == g.size();
        double adv = var == 0 ? 0.0 : r->reward - mean;
        if (std_norm && var != 0) adv /= sd + recipe.advantage.eps;
        REQUIRE(b.group_ids[resp] == static_cast<int32_t>(q));
        CHECK(b.sources[resp].kind == (refinement ? cgrpo::kRefinement : cgrpo::kInitial));
        CHECK(b.rewards[resp] == r->reward);
        // Rewards 0 or 1 in groups of 4: R - mean and the std are a few roundings of numbers <= 1,
        // and the std of a mixed group is >= 0.5: advantages carry a few eps of 2.
        CHECK(tolerance::close(b.response_advantages[resp], adv, 1e-14, 2.0));
        const int64_t begin = b.layout().begin(resp), end = b.layout().end(resp);
        CHECK(end - begin == (padded ? longest : static_cast<int64_t>(r->tokens.size())));
        for (int64_t t = begin; t < end; ++t) {
          const int64_t j = t - begin;
          const bool in = j < static_cast<int64_t>(r->tokens.size());
          CHECK(b.mask[t] == (in ? 1 : 0));
          CHECK(b.target_ids[t] == (in ? r->tokens[j] : 0));
          CHECK(b.kinds[t] == (refinement ? cgrpo::kRefinement : cgrpo::kInitial));
          CHECK(tolerance::close(b.advantages[t], adv, 1e-14, 2.0));
          // A weight is one rounding of 1 / count (the paper's denominators: seq-mean-token-sum-norm
          // 1 / L, token-mean 1 / (N + 1e-8), MATH.md): relative, and exactly 0 at padding.
          CHECK(tolerance::close(b.pg_weights[t], in ? 1.0 / static_cast<double>(longest) : 0.0, 4e-16, 0.0));
          CHECK(tolerance::close(b.entropy_weights[t], in ? 1.0 / (static_cast<double>(valid) + 1e-8) : 0.0, 4e-16,
                                 0.0));
        }
      }
    }
    CHECK(resp == b.num_responses());
    // Group sizes: n with replacement (the paper), n + 1 appended.
    CHECK(b.num_responses() == static_cast<int64_t>(qs.size()) * (replace ? 4 : 5));
  }
}

TEST_CASE("a group where every response fails, refinement included, gets zero advantages", "[assembly]") {
  std::vector<QuestionRollouts> qs(1);
  qs[0].initial = {{{1, 2}, 0.0}, {{3}, 0.0}, {{4, 5, 6}, 0.0}};
  qs[0].refinements = {{{7}, 0.0}, {{8, 9}, 0.0}};
  AssembledBatch<float> b;
  REQUIRE(assemble_groups(cgrpo::paper_critique_grpo(), qs, GroupAssemblyOptions{}, b).ok());
  REQUIRE(b.num_responses() == 3);
  CHECK(b.sources[2].kind == cgrpo::kRefinement);
  CHECK(b.sources[2].index == 0);  // no correct refinement and a tie: the first of the best
  for (float a : b.advantages) CHECK(a == 0.0f);
  // A correct refinement is the only learning signal of such a group.
  qs[0].refinements[1].reward = 1.0;
  REQUIRE(assemble_groups(cgrpo::paper_critique_grpo(), qs, GroupAssemblyOptions{}, b).ok());
  CHECK(b.sources[2].index == 1);
  CHECK(b.response_advantages[2] == Approx(2.0 / 3.0));
  CHECK(b.response_advantages[0] == Approx(-1.0 / 3.0));
}

TEST_CASE("k = 0 gives plain GRPO groups; k = 2 appended keeps both refinements", "[assembly]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  const auto qs = random_rollouts(rng, 3, 4, 3, 5);
  GroupAssemblyOptions opt;
  opt.refinements_per_group = 0;
  AssembledBatch<double> b;
  REQUIRE(assemble_groups(cgrpo::paper_critique_grpo(), qs, opt, b).ok());
  CHECK(b.num_responses() == 12);
  for (uint8_t k : b.kinds) CHECK(k == cgrpo::kInitial);
  opt.refinements_per_group = 2;
  opt.placement = RefinementPlacement::append;
  REQUIRE(assemble_groups(cgrpo::paper_critique_grpo(), qs, opt, b).ok());
  CHECK(b.num_responses() == 18);
  CHECK(b.sources[4].kind == cgrpo::kRefinement);
  CHECK(b.sources[5].kind == cgrpo::kRefinement);
  CHECK(b.sources[6].kind == cgrpo::kInitial);
}

TEST_CASE("assembly errors are clear and leave the output untouched", "[assembly]") {
  std::vector<QuestionRollouts> qs(2);
  qs[0].initial = {{{1}, 1.0}, {{2}, 0.0}};
  qs[0].refinements = {{{3}, 1.0}};
  qs[1].initial = {{{1}, 0.0}, {{2, 3}, 0.0}};
  qs[1].refinements = {{{4}, 0.0}};
  const cgrpo::Recipe recipe = cgrpo::paper_critique_grpo();
  AssembledBatch<double> b;
  REQUIRE(assemble_groups(recipe, qs, GroupAssemblyOptions{}, b).ok());
  const int64_t before = b.num_tokens();
  const std::vector<int32_t> targets_before = b.target_ids;
  using cgrpo::StatusCode;

  GroupAssemblyOptions opt;
  opt.refinements_per_group = 2;  // more than the one refinement each question has
  opt.placement = RefinementPlacement::append;
  support::check_error(assemble_groups(recipe, qs, opt, b), StatusCode::invalid_argument,
                       {"question 0: k = 2 refinements requested but only 1"});

  auto more = qs;
  more[0].refinements.push_back({{5}, 0.0});
  more[0].refinements.push_back({{6}, 0.0});
  more[1].refinements = more[0].refinements;
  opt.refinements_per_group = 3;
  opt.placement = RefinementPlacement::replace_last_initial;  // 3 > n = 2
  support::check_error(assemble_groups(recipe, more, opt, b), StatusCode::invalid_argument,
                       {"question 0: k = 3", "cannot replace"});

  auto empty_initial = qs;
  empty_initial[1].initial[0].tokens.clear();
  support::check_error(assemble_groups(recipe, empty_initial, GroupAssemblyOptions{}, b), StatusCode::invalid_argument,
                       {"question 1: initial response 0 is empty", "allow_empty_responses"});

  auto empty_refinement = qs;
  empty_refinement[0].refinements[0].tokens.clear();
  support::check_error(assemble_groups(recipe, empty_refinement, GroupAssemblyOptions{}, b), StatusCode::invalid_argument,
                       {"question 0: k = 1 refinements requested but only 0 of 1"});

  auto bad_token = qs;
  bad_token[1].initial[0].tokens[0] = -3;
  auto replaced = qs;  // the last initial response is replaced, so it is never read
  replaced[1].initial[1].tokens[1] = -3;
  CHECK(assemble_groups(recipe, replaced, GroupAssemblyOptions{}, b).ok());
  CHECK(b.num_tokens() == before);  // the same lengths: b was rewritten with the same shape
  support::check_error(assemble_groups(recipe, bad_token, GroupAssemblyOptions{}, b), StatusCode::out_of_range,
                       {"question 1: initial response 0 has token id -3"});
  auto bad_reward = qs;
  bad_reward[0].initial[0].reward = INFINITY;
  support::check_error(assemble_groups(recipe, bad_reward, GroupAssemblyOptions{}, b), StatusCode::non_finite,
                       {"question 0: initial response 0 has a non-finite reward"});
  std::vector<QuestionRollouts> no_members(1);
  opt = GroupAssemblyOptions{};
  opt.refinements_per_group = 0;
  support::check_error(assemble_groups(recipe, no_members, opt, b), StatusCode::invalid_argument,
                       {"question 0: its group is empty"});
  opt = GroupAssemblyOptions{};
  opt.layout = BatchLayout::padded;
  opt.padded_length = 1;  // shorter than the 2-token response kept when appending
  opt.placement = RefinementPlacement::append;
  support::check_error(assemble_groups(recipe, qs, opt, b), StatusCode::invalid_argument,
                       {"question 1: initial response 1 has 2 tokens > padded_length 1"});
  opt.refinements_per_group = -1;
  support::check_error(assemble_groups(recipe, qs, opt, b), StatusCode::invalid_argument,
                       {"refinements_per_group must be >= 0"});
  // An invalid recipe is refused before anything else, by the config's field.
  cgrpo::Recipe bad = recipe;
  bad.loss.ratio.clip_eps_low = -1;
  bad.loss.policy.loss = cgrpo::PolicyLoss::ppo_clip;
  support::check_error(assemble_groups(bad, qs, GroupAssemblyOptions{}, b), StatusCode::invalid_argument,
                       {"config.ratio.clip_eps_low"});
  CHECK(b.num_tokens() == before);
  CHECK(b.target_ids == targets_before);
}

TEST_CASE("every catalog recipe: its advantages and weights, or none where the loss forms its own", "[assembly]") {
  // The batch carries recipe.advantage's advantages and recipe.loss's weights (aggregation_weights,
  // with options.scale), or no weights at all where the config changes a denominator inside the
  // loss; loss_batch's view then passes null weights and the scale, and the loss takes it.
  std::mt19937_64 rng = test_seed::fresh_rng();
  const auto qs = random_rollouts(rng, 4, 4, 3, 6);
  const int64_t V = 50;
  for (const support::CatalogEntry& entry : support::catalog()) {
    const cgrpo::Recipe& recipe = entry.recipe;
    const cgrpo::LossConfig& c = recipe.loss;
    for (bool padded : {false, true}) {
      CAPTURE(entry.name, padded);
      GroupAssemblyOptions opt;
      opt.layout = padded ? BatchLayout::padded : BatchLayout::packed;
      opt.scale.sequence_count = 24;  // global counts of a data-parallel step (4 ranks of 4 groups)
      opt.scale.token_count = 300;
      AssembledBatch<double> b;
      const cgrpo::Status s = assemble_groups(recipe, qs, opt, b);
      INFO(s.message);
      REQUIRE(s.ok());
      CHECK(b.scale.sequence_count == 24);
      CHECK(b.scale.token_count == 300);
      const int64_t T = b.num_tokens(), B = b.num_responses();
      // Advantages: the recipe's estimator over the mixed groups, exactly the library's.
      std::vector<double> adv(B);
      REQUIRE(cgrpo::group_advantages(recipe.advantage, {B, b.group_ids.data(), static_cast<int64_t>(qs.size())},
                                      b.rewards.data(), b.token_counts.data(), adv.data())
                  .ok());
      CHECK(b.response_advantages == adv);
      const bool own = cgrpo::plan_passes(c, cgrpo::PassInputs{}).requires_computed_weights;
      if (own) {
        CHECK(b.pg_weights.empty());
        CHECK(b.entropy_weights.empty());
        CHECK(b.kl_weights.empty());
      } else {
        std::vector<double> w(T);
        const cgrpo::LossTerm terms[] = {cgrpo::LossTerm::policy, cgrpo::LossTerm::entropy, cgrpo::LossTerm::kl};
        const std::vector<double>* got[] = {&b.pg_weights, &b.entropy_weights, &b.kl_weights};
        for (int k = 0; k < 3; ++k) {
          REQUIRE(cgrpo::aggregation_weights(c, terms[k], b.layout(), b.mask.data(), opt.scale, w.data()).ok());
          CHECK(*got[k] == w);
        }
      }
      // The view, and the loss on it (ref and rollout log-probs added where the config reads them).
      std::normal_distribution<double> normal(0, 1.5);
      std::vector<double> z(T * V), old_logp(T), ref_logp(T), rollout_logp(T), grad(T * V);
      for (auto& x : z) x = normal(rng);
      REQUIRE(cgrpo::cpu::token_logprobs(z.data(), T, V, 0, b.target_ids.data(), c.temperature, old_logp.data(),
                                         static_cast<double*>(nullptr))
                  .ok());
      for (int64_t t = 0; t < T; ++t) {
        old_logp[t] += 0.2 * normal(rng);
        ref_logp[t] = old_logp[t] + 0.3 * normal(rng);
        rollout_logp[t] = old_logp[t] + 0.1 * normal(rng);
      }
      cgrpo::PolicyLossBatch<double> view;
      REQUIRE(b.loss_batch(z.data(), V, old_logp.data(), c.kl_on() ? ref_logp.data() : nullptr, 0, view).ok());
      view.rollout_logp = rollout_logp.data();
      CHECK((view.pg_weights == nullptr) == own);
      CHECK((view.entropy_weights == nullptr) == own);
      CHECK((view.kl_weights == nullptr) == own);
      CHECK(view.scale.sequence_count == 24);
      cgrpo::LossMetrics m;
      cgrpo::PolicyLossOutputs<double> out;
      out.grad_logits = grad.data();
      out.metrics = &m;
      const cgrpo::Status ls = cgrpo::cpu::fused_policy_loss(c, view, out);
      INFO(ls.message);
      CHECK(ls.ok());
      CHECK(std::isfinite(m.loss));
    }
  }
}

TEST_CASE("empty responses train as all-masked rows when allowed", "[assembly]") {
  std::vector<QuestionRollouts> qs(1);
  qs[0].initial = {{{}, 0.0}, {{1, 2}, 1.0}, {{3}, 0.0}};
  qs[0].refinements = {{{}, 1.0}};
  GroupAssemblyOptions opt;
  opt.allow_empty_responses = true;
  opt.layout = BatchLayout::padded;
  AssembledBatch<double> b;
  REQUIRE(assemble_groups(cgrpo::paper_critique_grpo(), qs, opt, b).ok());
  REQUIRE(b.padded_length == 2);
  CHECK(b.mask == std::vector<uint8_t>{0, 0, 1, 1, 0, 0});
  CHECK(b.sources[2].kind == cgrpo::kRefinement);
  CHECK(b.response_advantages[2] == Approx(1.0 - 2.0 / 3.0));
}

TEST_CASE("packed and padded batches give the same loss and gradient through the fused loss", "[assembly]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  const auto qs = random_rollouts(rng, 4, 4, 2, 6);
  const cgrpo::Recipe recipe = cgrpo::paper_critique_grpo();
  const cgrpo::LossConfig& config = recipe.loss;
  const int64_t V = 50;
  AssembledBatch<double> packed, padded;
  GroupAssemblyOptions opt;
  REQUIRE(assemble_groups(recipe, qs, opt, packed).ok());
  opt.layout = BatchLayout::padded;
  opt.padded_length = 9;  // wider than any response: the pg normaliser is then L = 9 on both sides
  REQUIRE(assemble_groups(recipe, qs, opt, padded).ok());
  cgrpo::AggregationScale scale;
  scale.length = 9;
  opt.layout = BatchLayout::packed;
  opt.scale = scale;
  REQUIRE(assemble_groups(recipe, qs, opt, packed).ok());

  // Logits for each response row, the same numbers in both layouts.
  std::normal_distribution<double> normal(0, 1.5);
  std::vector<double> zp(packed.num_tokens() * V), zq(padded.num_tokens() * V, 0.0);
  for (auto& z : zp) z = normal(rng);
  for (int64_t i = 0; i < packed.num_responses(); ++i)
    for (int64_t j = 0; j < packed.token_counts[i]; ++j)
      for (int64_t v = 0; v < V; ++v)
        zq[(padded.layout().begin(i) + j) * V + v] = zp[(packed.layout().begin(i) + j) * V + v];
  std::vector<double> old_p(packed.num_tokens()), old_q(padded.num_tokens());
  REQUIRE(cgrpo::cpu::token_logprobs(zp.data(), packed.num_tokens(), V, 0, packed.target_ids.data(), 1.0,
                                     old_p.data(), static_cast<double*>(nullptr)).ok());
  REQUIRE(cgrpo::cpu::token_logprobs(zq.data(), padded.num_tokens(), V, 0, padded.target_ids.data(), 1.0,
                                     old_q.data(), static_cast<double*>(nullptr)).ok());
  std::vector<double> gp(zp.size()), gq(zq.size());
  cgrpo::LossMetrics mp, mq;
  REQUIRE(cgrpo::cpu::fused_policy_loss(config, packed.loss_batch(zp.data(), V, old_p.data()),
                                        {gp.data(), 0, nullptr, nullptr, &mp}).ok());
  REQUIRE(cgrpo::cpu::fused_policy_loss(config, padded.loss_batch(zq.data(), V, old_q.data()),
                                        {gq.data(), 0, nullptr, nullptr, &mq}).ok());
  // The loss can cancel to ~0: measure it against the size of its terms, sum |w_pg A| (the ratio
  // is 1 and f(p) < 1) + c_H sum |w_H| log V (H <= log V).
  double terms = 0, refinement_terms = 0;
  for (int64_t t = 0; t < packed.num_tokens(); ++t) {
    const double pg = std::fabs(packed.pg_weights[t] * packed.advantages[t]);
    terms += pg + std::fabs(config.entropy.coef * packed.entropy_weights[t]) * std::log(static_cast<double>(V));
    if (packed.kinds[t] == cgrpo::kRefinement) refinement_terms += pg;
  }
  CHECK(tolerance::close(mp.loss, mq.loss, 1e-12, terms));
  CHECK(tolerance::close(mp.pg_loss_refinement, mq.pg_loss_refinement, 1e-12, refinement_terms));
  CHECK(mp.num_refinement_tokens == mq.num_refinement_tokens);
  CHECK(mp.num_refinement_tokens > 0);
  std::vector<double> rows_p, rows_q;  // the same rows of both layouts
  for (int64_t i = 0; i < packed.num_responses(); ++i)
    for (int64_t j = 0; j < packed.token_counts[i]; ++j)
      for (int64_t v = 0; v < V; ++v) {
        rows_p.push_back(gp[(packed.layout().begin(i) + j) * V + v]);
        rows_q.push_back(gq[(padded.layout().begin(i) + j) * V + v]);
      }
  // The same per-row arithmetic on the same numbers: a few eps of the largest entry, or of the
  // loss's terms for a gradient that is ~0 everywhere.
  CHECK(tolerance::close_all(rows_q, rows_p, 1e-14, terms));
}
