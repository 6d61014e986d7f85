// examples/libtorch/make_batch.hpp: a random Critique-GRPO batch as LibTorch tensors (for the example and its test).
// Responses of random lengths, packed; one group per prompt with one refinement; advantages and weights by the library.
#pragma once

#include <torch/torch.h>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/torch/policy_loss.hpp>

#include <vector>

namespace cgrpo_torch {

struct ExampleBatch {
  PolicyLossInputs inputs;
  std::vector<int64_t> offsets;  // packed layout, B + 1 (inputs.layout points here)
  int64_t num_tokens = 0;
};

// B responses in groups of `group_size` (the first of each group a refinement), lengths in
// [1, max_len], random target tokens, about one token in seven masked. Reward 1 when most of
// a response's tokens lie in the lower half of the vocabulary (the "good" half), else 0: a
// task a policy can learn. Advantages by the recipe's estimator (recipe.advantage), weights by
// its loss's aggregation modes and conventions (recipe.loss). set_old_and_ref() fills the
// log-probs afterwards.
inline void fill_example_batch(ExampleBatch& b, const cgrpo::Recipe& recipe, int64_t B, int64_t group_size,
                               int64_t max_len, int64_t V, torch::ScalarType real) {
  b.offsets.assign(1, 0);
  for (int64_t i = 0; i < B; ++i) b.offsets.push_back(b.offsets.back() + 1 + torch::randint(max_len, {1}).item<int64_t>());
  const int64_t T = b.offsets.back();
  b.num_tokens = T;
  const cgrpo::SequenceLayout layout = cgrpo::SequenceLayout::packed(B, b.offsets.data());

  const torch::Tensor targets = torch::randint(V, {T}, torch::kInt32);
  std::vector<uint8_t> mask(T), kinds(T);
  std::vector<int64_t> token_counts(B, 0);  // valid tokens of each response
  for (int64_t i = 0; i < B; ++i)
    for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) {
      mask[t] = torch::rand({1}).item<double>() < 0.85 ? 1 : 0;
      kinds[t] = (i % group_size == 0) ? cgrpo::kRefinement : cgrpo::kInitial;
      token_counts[i] += mask[t];
    }

  std::vector<int32_t> group_ids(B);
  std::vector<double> rewards(B), adv(B);
  for (int64_t i = 0; i < B; ++i) {
    group_ids[i] = static_cast<int32_t>(i / group_size);
    const torch::Tensor resp = targets.slice(0, b.offsets[i], b.offsets[i + 1]);
    rewards[i] = (resp < V / 2).to(torch::kDouble).mean().item<double>() > 0.5 ? 1.0 : 0.0;
  }
  const cgrpo::GroupAssignment groups{B, group_ids.data(), (B + group_size - 1) / group_size};
  TORCH_CHECK(cgrpo::group_advantages(recipe.advantage, groups, rewards.data(), token_counts.data(), adv.data()).ok());

  std::vector<double> adv_tok(T), w_pg(T), w_h(T), w_kl(T);
  TORCH_CHECK(cgrpo::broadcast_to_tokens(layout, adv.data(), adv_tok.data()).ok());
  const cgrpo::LossConfig& c = recipe.loss;
  const cgrpo::AggregationScale scale;  // this batch's counts (global ones under data parallelism)
  TORCH_CHECK(cgrpo::aggregation_weights(c, cgrpo::LossTerm::policy, layout, mask.data(), scale, w_pg.data()).ok());
  TORCH_CHECK(cgrpo::aggregation_weights(c, cgrpo::LossTerm::entropy, layout, mask.data(), scale, w_h.data()).ok());
  TORCH_CHECK(cgrpo::aggregation_weights(c, cgrpo::LossTerm::kl, layout, mask.data(), scale, w_kl.data()).ok());

  auto real_tensor = [&](const std::vector<double>& v) {
    return torch::from_blob(const_cast<double*>(v.data()), {T}, torch::kDouble).to(real).clone();
  };
  auto byte_tensor = [&](const std::vector<uint8_t>& v) {
    return torch::from_blob(const_cast<uint8_t*>(v.data()), {T}, torch::kUInt8).clone();
  };
  PolicyLossInputs& in = b.inputs;
  in.target_ids = targets;
  in.mask = byte_tensor(mask);
  in.kinds = byte_tensor(kinds);
  in.advantages = real_tensor(adv_tok);
  in.pg_weights = real_tensor(w_pg);
  in.entropy_weights = real_tensor(w_h);
  in.kl_weights = real_tensor(w_kl);
  in.layout = layout;
}

// Sampling and reference log-probs near the current ones, so that ratios straddle the clip range.
inline void set_old_and_ref(ExampleBatch& b, const torch::Tensor& current_logp) {
  torch::NoGradGuard no_grad;
  b.inputs.old_logp = (current_logp + 0.3 * torch::randn_like(current_logp)).contiguous();
  b.inputs.ref_logp = (current_logp + 0.5 * torch::randn_like(current_logp)).contiguous();
}

inline torch::Tensor target_logp(const torch::Tensor& logits, const torch::Tensor& targets, double temperature) {
  torch::NoGradGuard no_grad;
  return torch::log_softmax(logits / temperature, 1).gather(1, targets.to(torch::kLong).unsqueeze(1)).squeeze(1);
}

}  // namespace cgrpo_torch
