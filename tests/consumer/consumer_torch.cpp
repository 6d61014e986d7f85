// tests/consumer/consumer_torch.cpp: the LibTorch wrapper through cgrpo::torch (installed or vendored).
// main.cpp's one-token case as tensors through autograd, then a mask one entry short, which must be refused.
#include <torch/types.h>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/torch/policy_loss.hpp>

#include <cmath>
#include <cstdio>
#include <string>

int main() {
  // V = 2, equal logits: p = (1/2, 1/2). Target 0, old log-prob log(1/2): r = 1.
  // A = 1, no clip, weight 1, no entropy: J = -A r = -1, dJ/dz = -A r (onehot - p) = (-1/2, 1/2).
  const torch::Tensor logits = torch::full({1, 2}, 0.7, torch::kDouble).requires_grad_(true);
  cgrpo_torch::PolicyLossInputs in;
  in.target_ids = torch::zeros({1}, torch::kInt32);
  in.mask = torch::ones({1}, torch::kUInt8);
  in.advantages = torch::ones({1}, torch::kDouble);
  in.old_logp = torch::full({1}, std::log(0.5), torch::kDouble);
  in.pg_weights = torch::ones({1}, torch::kDouble);
  cgrpo::LossConfig config = cgrpo::paper_critique_grpo().loss;
  config.entropy.coef = 0.0;
  const torch::Tensor loss = cgrpo_torch::PolicyLoss::apply(logits, in, config, nullptr);
  loss.backward();
  const double J = loss.item<double>(), g0 = logits.grad()[0][0].item<double>(), g1 = logits.grad()[0][1].item<double>();
  const bool ok = std::fabs(J + 1.0) < 1e-15 && std::fabs(g0 + 0.5) < 1e-15 && std::fabs(g1 - 0.5) < 1e-15;

  // A mask one entry short must be refused by name, not read past its end.
  in.mask = torch::ones({0}, torch::kUInt8);
  std::string refused;
  try {
    cgrpo_torch::PolicyLoss::apply(logits, in, config, nullptr);
  } catch (const c10::Error& e) {
    refused = e.what_without_backtrace();
  }
  const bool named = refused.find("cgrpo_torch: mask must") != std::string::npos;
  std::printf("consumer_torch: loss %.17g, grad (%.17g, %.17g): %s; short mask: %s\n", J, g0, g1,
              ok ? "as expected" : "WRONG", named ? "refused by name" : "NOT REFUSED");
  return ok && named ? 0 : 1;
}
