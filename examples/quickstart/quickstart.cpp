// examples/quickstart: the smallest complete use of cgrpo's fused CPU loss.
// A synthetic Critique-GRPO batch (2 questions x 4 responses, 1 refinement each): loss, metrics, gradient.
#include <cgrpo/cgrpo.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

int main() {
  const int64_t groups = 2, group_size = 4, B = groups * group_size, L = 16, V = 1000, T = B * L;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 2.f);
  std::uniform_int_distribution<int32_t> token(0, V - 1);

  // What the trainer already has: logits of the policy, sampled tokens, old log-probs, rewards.
  std::vector<float> logits(T * V), old_logp(T);
  std::vector<int32_t> targets(T);
  std::vector<uint8_t> mask(T), kinds(T);
  for (auto& z : logits) z = normal(rng);
  for (int64_t t = 0; t < T; ++t) {
    targets[t] = token(rng);
    mask[t] = (t % L) < L - static_cast<int64_t>(t / L) % 5;  // responses of different lengths
    kinds[t] = (t / L) % group_size == 0 ? cgrpo::kRefinement : cgrpo::kInitial;  // first of each group
  }
  std::vector<float> rewards = {1, 0, 0, 1, 1, 0, 0, 0};  // refinements at 0 and 4

  // The recipe by name, as a trainer's own config would give it (or a typed preset:
  // cgrpo::paper_critique_grpo(), cgrpo::verl_grpo(), cgrpo::trl_dapo(), ...): the loss's config
  // and the advantages' settings.
  cgrpo::Recipe recipe;
  if (auto s = cgrpo::preset("paper/critique_grpo", &recipe); !s.ok()) {
    std::fprintf(stderr, "preset: %s\n", s.message);
    return 1;
  }
  const cgrpo::LossConfig& config = recipe.loss;

  // The "old log-probs" pass every trainer runs before the update (here on the same logits).
  if (auto s = cgrpo::cpu::token_logprobs(logits.data(), T, V, 0, targets.data(), config.temperature,
                                          old_logp.data(), static_cast<float*>(nullptr));
      !s.ok()) {
    std::fprintf(stderr, "token_logprobs: %s\n", s.message);
    return 1;
  }

  // Advantages over each mixed group (recipe.advantage), broadcast to tokens.
  std::vector<int32_t> group_ids(B);
  for (int64_t i = 0; i < B; ++i) group_ids[i] = static_cast<int32_t>(i / group_size);
  std::vector<int64_t> token_counts(B, 0);
  for (int64_t t = 0; t < T; ++t) token_counts[t / L] += mask[t];
  std::vector<float> adv(B), adv_tokens(T);
  const auto layout = cgrpo::SequenceLayout::padded(B, L);
  cgrpo::Status s = cgrpo::group_advantages(recipe.advantage, {B, group_ids.data(), groups}, rewards.data(),
                                            token_counts.data(), adv.data());
  if (s.ok()) s = cgrpo::broadcast_to_tokens(layout, adv.data(), adv_tokens.data());

  // Each term's aggregation becomes per-token weights, by the config's modes and conventions
  // (pass global counts for data parallelism; or pass no weights and let the loss form them).
  std::vector<float> w_pg(T), w_entropy(T);
  if (s.ok()) s = cgrpo::aggregation_weights(config, cgrpo::LossTerm::policy, layout, mask.data(), {}, w_pg.data());
  if (s.ok())
    s = cgrpo::aggregation_weights(config, cgrpo::LossTerm::entropy, layout, mask.data(), {}, w_entropy.data());

  cgrpo::PolicyLossBatch<float> batch;  // raw pointers into the trainer's own buffers
  batch.logits = logits.data();
  batch.num_tokens = T;
  batch.vocab_size = V;
  batch.target_ids = targets.data();
  batch.mask = mask.data();
  batch.kinds = kinds.data();
  batch.advantages = adv_tokens.data();
  batch.old_logp = old_logp.data();
  batch.layout = layout;
  batch.pg_weights = w_pg.data();
  batch.entropy_weights = w_entropy.data();

  cgrpo::LossMetrics m;
  cgrpo::PolicyLossOutputs<float> out;
  out.grad_logits = logits.data();  // in place: the logits become dJ/dlogits
  out.metrics = &m;
  // Keep one workspace per trainer (O(T), reused across steps; its threads start once).
  cgrpo::cpu::Workspace workspace(/*num_threads=*/2);
  if (s.ok()) s = cgrpo::cpu::fused_policy_loss(config, batch, out, workspace);
  if (!s.ok()) {
    std::fprintf(stderr, "error (%s): %s\n", cgrpo::status_code_name(s.code), s.message);
    return 1;
  }
  std::printf("advantages:");
  for (float a : adv) std::printf(" %+.3f", a);
  std::printf("\nloss %.6f = pg %.6f (initial %.6f, refinement %.6f) - %.3g * entropy %.4f\n", m.loss, m.pg_loss,
              m.pg_loss_initial, m.pg_loss_refinement, config.entropy.coef, m.entropy_loss);
  std::printf("tokens: %lld valid (%lld initial, %lld refinement); mean ratio %.4f, mean p(refinement) %.4g\n",
              static_cast<long long>(m.num_valid_tokens), static_cast<long long>(m.num_initial_tokens),
              static_cast<long long>(m.num_refinement_tokens), m.ratio_mean, m.refinement_prob_mean);
  double norm = 0;
  for (float g : logits) norm += static_cast<double>(g) * g;
  std::printf("|dJ/dlogits| = %.6g over %lld x %lld logits\n", std::sqrt(norm), static_cast<long long>(T),
              static_cast<long long>(V));
  return 0;
}
