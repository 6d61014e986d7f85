// tests/loss/test_weights.cpp: weights a caller builds with cgrpo::aggregation_weights follow the
// config (its modes, its conventions, a term's fixed rule) exactly as the loss's own weights do:
// for every config of the catalog that takes caller weights, the loss with them equals the loss
// that forms its weights itself, bit for bit; and both equal the plain double reference's weights.
#include <catch2/catch.hpp>

#include <cgrpo/cgrpo.hpp>

#include <cstring>
#include <random>
#include <vector>

#include "batch.hpp"
#include "catalog.hpp"
#include "reference.hpp"
#include "test_seed.hpp"

namespace {

struct Run {
  cgrpo::Status status;
  cgrpo::LossMetrics metrics;
  std::vector<double> grad;
};

Run run(const cgrpo::LossConfig& c, const support::Batch& b, support::Weights weights) {
  Run r;
  support::LibraryBatch<double> lb(b, c, weights);
  r.grad.assign(b.logits.size(), 0.0);
  cgrpo::PolicyLossOutputs<double> out;
  out.grad_logits = r.grad.data();
  out.metrics = &r.metrics;
  r.status = cgrpo::cpu::fused_policy_loss(c, lb.view, out);
  return r;
}

}  // namespace

TEST_CASE("weights: caller weights from aggregation_weights(config) give the loss's own, bit for bit", "[weights]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  for (bool padded : {false, true}) {
    support::Batch b = support::random_batch(rng, 9, 7, 23, 1);
    if (padded) {  // the same rows padded to L, with a row of no valid token (verl's B+ < B)
      const int64_t L = 7;
      support::Batch p = support::padded_batch(b.B, L, b.V);
      p.stride = b.stride;
      p.logits.assign(static_cast<size_t>(p.T * p.stride), 0.0);
      for (int64_t i = 0; i < b.B; ++i)
        for (int64_t j = 0; j < L; ++j) {
          const int64_t t = i * L + j, s = b.begin(i) + (j < b.end(i) - b.begin(i) ? j : 0);
          for (int64_t v = 0; v < b.stride; ++v) p.logits[t * p.stride + v] = b.logits[s * b.stride + v];
          p.targets[t] = b.targets[s];
          p.mask[t] = j < b.end(i) - b.begin(i) && i != 3 ? b.mask[s] : 0;
          p.kinds[t] = b.kinds[s];
          p.adv[t] = b.adv[s];
          p.old_logp[t] = b.old_logp[s];
          p.ref_logp[t] = b.ref_logp[s];
          p.rollout_logp[t] = b.rollout_logp[s];
        }
      b = p;
    }
    for (const support::CatalogEntry& e : support::catalog()) {
      const cgrpo::LossConfig& c = e.config();
      if (cgrpo::plan_passes(c, cgrpo::PassInputs{}).requires_computed_weights) continue;
      INFO(e.name << (padded ? " (padded, an empty row)" : " (packed)"));
      support::Batch caller = b;
      REQUIRE(support::set_library_weights(caller, c).ok());
      const Run own = run(c, b, support::Weights::computed), theirs = run(c, caller, support::Weights::caller);
      INFO(own.status.message << " / " << theirs.status.message);
      REQUIRE(own.status.ok());
      REQUIRE(theirs.status.ok());
      CHECK(std::memcmp(&own.metrics.loss, &theirs.metrics.loss, sizeof(double)) == 0);
      CHECK(own.grad == theirs.grad);
      // The reference's weights (MATH.md and the convention, written plainly) agree to rounding.
      support::Batch reference = b;
      ref::set_weights(reference, c);
      for (int64_t t = 0; t < b.T; ++t) {
        CHECK(caller.w_pg[t] == Approx(reference.w_pg[t]).epsilon(1e-15).margin(0));
        CHECK(caller.w_h[t] == Approx(reference.w_h[t]).epsilon(1e-15).margin(0));
        if (c.kl_on()) CHECK(caller.w_kl[t] == Approx(reference.w_kl[t]).epsilon(1e-15).margin(0));
      }
    }
  }
}

TEST_CASE("weights: verl's and TRL's conventions change the weights where they should", "[weights]") {
  // One row of 2 valid tokens, one of 4, one empty: token-mean N = 6; verl's B+ = 2, TRL's B = 3.
  const int64_t offsets[4] = {0, 3, 7, 9};
  const uint8_t mask[9] = {1, 1, 0, 1, 1, 1, 1, 0, 0};
  const cgrpo::SequenceLayout layout = cgrpo::SequenceLayout::packed(3, offsets);
  double w[9];
  cgrpo::LossConfig c = cgrpo::verl_grpo().loss;
  REQUIRE(cgrpo::aggregation_weights(c, cgrpo::LossTerm::policy, layout, mask, {}, w).ok());
  CHECK(w[0] == 1.0 / 6.0);  // verl: N exactly (the old function gave 1 / (6 + 1e-8))
  c.aggregation.policy = cgrpo::Aggregation::seq_mean_token_mean;
  REQUIRE(cgrpo::aggregation_weights(c, cgrpo::LossTerm::policy, layout, mask, {}, w).ok());
  CHECK(w[0] == 1.0 / (3.0 * (2.0 + 1e-8)));  // verl's engine: B = 3 rows (the empty one too), n_i + 1e-8
  CHECK(w[3] == 1.0 / (3.0 * (4.0 + 1e-8)));
  c.aggregation.convention = cgrpo::verl_aggregation(cgrpo::VerlActor::legacy_dp_actor);
  REQUIRE(cgrpo::aggregation_weights(c, cgrpo::LossTerm::policy, layout, mask, {}, w).ok());
  CHECK(w[0] == 1.0 / (2.0 * (2.0 + 1e-8)));  // verl's legacy dp_actor: B+ = 2 rows
  CHECK(w[3] == 1.0 / (2.0 * (4.0 + 1e-8)));
  // seq-mean-token-sum-norm: / (B L) at the engine, / L at the legacy dp_actor (L = 4, the longest row).
  c.aggregation.policy = cgrpo::Aggregation::seq_mean_token_sum_norm;
  REQUIRE(cgrpo::aggregation_weights(c, cgrpo::LossTerm::policy, layout, mask, {}, w).ok());
  CHECK(w[0] == 1.0 / 4.0);
  c.aggregation.convention = cgrpo::verl_aggregation();
  REQUIRE(cgrpo::aggregation_weights(c, cgrpo::LossTerm::policy, layout, mask, {}, w).ok());
  CHECK(w[0] == 1.0 / (3.0 * 4.0));
  // token-sum: the mask itself.
  c.aggregation.policy = cgrpo::Aggregation::token_sum;
  REQUIRE(cgrpo::aggregation_weights(c, cgrpo::LossTerm::policy, layout, mask, {}, w).ok());
  CHECK(w[0] == 1.0);
  CHECK(w[2] == 0.0);
  c = cgrpo::trl_grpo().loss;
  REQUIRE(cgrpo::aggregation_weights(c, cgrpo::LossTerm::policy, layout, mask, {}, w).ok());
  CHECK(w[0] == 1.0 / (3.0 * 2.0));  // TRL: every row, max(n_i, 1)
  c = cgrpo::paper_critique_grpo().loss;
  REQUIRE(cgrpo::aggregation_weights(c, cgrpo::LossTerm::entropy, layout, mask, {}, w).ok());
  CHECK(w[0] == 1.0 / (6.0 + 1e-8));  // the paper's fork: N + 1e-8
  c = cgrpo::verl_gmpo().loss;  // geo_mean's fixed rule: (1/B) sum_i l_i, exact n_i, every row
  REQUIRE(cgrpo::aggregation_weights(c, cgrpo::LossTerm::policy, layout, mask, {}, w).ok());
  CHECK(w[0] == 1.0 / (3.0 * 2.0));
  CHECK(w[2] == 0.0);
}
