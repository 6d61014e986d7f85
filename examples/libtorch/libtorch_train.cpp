// examples/libtorch/libtorch_train.cpp: a few Critique-GRPO steps of a small LibTorch model with the fused loss.
// Linear head over fixed hidden states; reward favours the lower half of the vocabulary; its mass must grow.
#include <torch/torch.h>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/torch/policy_loss.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "make_batch.hpp"

int main(int argc, char** argv) {
  int steps = 20;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--steps") == 0) steps = std::atoi(argv[i + 1]);
  torch::manual_seed(7);
  const int64_t D = 32, V = 64, B = 16, group_size = 8, max_len = 12;
  // The paper's recipe (or any preset: cgrpo::verl_grpo(), cgrpo::trl_dapo(), or by name with
  // cgrpo::preset): advantages grpo_no_std; the loss without clip, gamma 0.1.
  const cgrpo::Recipe recipe = cgrpo::paper_critique_grpo();
  const cgrpo::LossConfig& config = recipe.loss;

  torch::nn::Sequential policy(torch::nn::Linear(D, 64), torch::nn::Tanh(), torch::nn::Linear(64, V));
  torch::optim::Adam optimizer(policy->parameters(), torch::optim::AdamOptions(1e-2));
  const torch::Tensor eval_hidden = torch::randn({256, D});
  auto good_mass = [&] {
    torch::NoGradGuard no_grad;
    return torch::softmax(policy->forward(eval_hidden), 1).slice(1, 0, V / 2).sum(1).mean().item<double>();
  };

  const double mass0 = good_mass();
  std::printf("step  loss        pg_loss     entropy  ratio   p(good half)\n");
  for (int step = 0; step < steps; ++step) {
    // Rollout: the batch's tokens and rewards, then old log-probs from the policy before the
    // update (one update per rollout: on-policy, r = 1; no KL term, so no reference log-probs).
    cgrpo_torch::ExampleBatch batch;
    cgrpo_torch::fill_example_batch(batch, recipe, B, group_size, max_len, V, torch::kFloat);
    const torch::Tensor hidden = torch::randn({batch.num_tokens, D});
    batch.inputs.old_logp =
        cgrpo_torch::target_logp(policy->forward(hidden), batch.inputs.target_ids, config.temperature);

    // Update: one fused call gives J and dJ/dlogits; autograd carries it into the model.
    optimizer.zero_grad();
    cgrpo::LossMetrics m;
    const torch::Tensor loss = cgrpo_torch::PolicyLoss::apply(policy->forward(hidden), batch.inputs, config, &m);
    loss.backward();
    optimizer.step();
    std::printf("%4d  %+.6f  %+.6f  %.4f   %.4f  %.4f\n", step, m.loss, m.pg_loss, m.entropy_mean, m.ratio_mean,
                good_mass());
    if (!std::isfinite(m.loss)) return 1;
  }
  const double mass1 = good_mass();
  std::printf("probability mass on the rewarded half: %.4f -> %.4f\n", mass0, mass1);
  return steps == 0 || mass1 > mass0 ? 0 : 1;
}
