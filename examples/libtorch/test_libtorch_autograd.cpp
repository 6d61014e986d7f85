// examples/libtorch/test_libtorch_autograd.cpp: the wrapper's gradient against LibTorch autograd of the same loss
// written with torch ops, through a linear head (dJ/dW, dJ/db, dJ/dlogits), for every clip mode and KL estimator.
#include <torch/torch.h>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/torch/policy_loss.hpp>

#include <cmath>
#include <cstdio>

#include "make_batch.hpp"
#include "torch_reference.hpp"

namespace {

int failures = 0;

void expect_close(const char* what, const torch::Tensor& got, const torch::Tensor& want, double rel_tol,
                  const char* label) {
  const double scale = want.abs().max().item<double>();
  const double err = (got - want).abs().max().item<double>();
  const bool ok = scale > 0 && err <= rel_tol * scale;
  if (!ok) {
    ++failures;
    std::printf("FAIL %s %s: max |diff| %.3g, max |want| %.3g\n", label, what, err, scale);
  }
}

// Case i: the paper's recipe with one variant of each concern.
cgrpo::Recipe recipe_for(int i) {
  cgrpo::Recipe r = cgrpo::paper_critique_grpo();
  r.advantage.estimator = i % 2 ? cgrpo::AdvantageEstimator::grpo : cgrpo::AdvantageEstimator::grpo_no_std;
  cgrpo::LossConfig& c = r.loss;
  const cgrpo::KlEstimator kls[] = {cgrpo::KlEstimator::none, cgrpo::KlEstimator::k1, cgrpo::KlEstimator::abs,
                                    cgrpo::KlEstimator::k2, cgrpo::KlEstimator::k3};
  // i % 3: no clip (the paper), PPO clip, PPO clip on verl's GSPO sequence ratio.
  c.policy.loss = i % 3 == 0 ? cgrpo::PolicyLoss::ratio : cgrpo::PolicyLoss::ppo_clip;
  c.ratio.level = i % 3 == 2 ? cgrpo::RatioLevel::sequence_detached : cgrpo::RatioLevel::token;
  c.ratio.dual_clip = i % 3 == 1 && i % 2 == 1;
  c.kl.estimator = kls[i % 5];
  c.kl.coef = c.kl.estimator == cgrpo::KlEstimator::none ? 0.0 : 0.05;
  c.entropy.coef = 0.01;
  // verl's GSPO form aggregates its policy term seq-mean-token-mean (the config refuses any other).
  c.aggregation.policy = i % 3 == 2 ? cgrpo::Aggregation::seq_mean_token_mean : static_cast<cgrpo::Aggregation>(i % 4);
  c.temperature = i % 4 == 3 ? 0.7 : 1.0;
  return r;
}

// One model, one batch: J and its gradients both ways.
void compare(int i, torch::ScalarType real, double rel_tol) {
  const cgrpo::Recipe recipe = recipe_for(i);
  const cgrpo::LossConfig& c = recipe.loss;
  const int64_t D = 16, V = 40 + i;
  cgrpo_torch::ExampleBatch batch;
  cgrpo_torch::fill_example_batch(batch, recipe, 8, 4, 7, V, real);
  const int64_t T = batch.num_tokens;
  const torch::Tensor hidden = torch::randn({T, D}, torch::dtype(real));
  torch::nn::Linear head_a(D, V), head_b(D, V);
  head_a->to(real);
  head_b->to(real);
  {
    torch::NoGradGuard no_grad;
    head_a->weight.mul_(3.0);  // logits with some spread
    head_b->weight.copy_(head_a->weight);
    head_b->bias.copy_(head_a->bias);
  }
  cgrpo_torch::set_old_and_ref(batch, cgrpo_torch::target_logp(head_a->forward(hidden), batch.inputs.target_ids,
                                                                c.temperature));

  const torch::Tensor logits_a = head_a->forward(hidden);
  logits_a.retain_grad();
  cgrpo::LossMetrics metrics;
  const torch::Tensor loss_a = cgrpo_torch::PolicyLoss::apply(logits_a, batch.inputs, c, &metrics);
  (2.5 * loss_a).backward();  // a non-unit upstream gradient must scale the library's gradient

  const torch::Tensor logits_b = head_b->forward(hidden);
  logits_b.retain_grad();
  const torch::Tensor loss_b = cgrpo_torch::reference_policy_loss(logits_b, batch.inputs, c);
  (2.5 * loss_b).backward();

  char label[160];
  std::snprintf(label, sizeof(label), "[%s case %d: loss %s, ratio %s, kl %s, agg %s, tau %g]",
                real == torch::kDouble ? "double" : "float", i, cgrpo::to_string(c.policy.loss),
                cgrpo::to_string(c.ratio.level), cgrpo::to_string(c.kl.estimator), cgrpo::to_string(c.aggregation.policy),
                c.temperature);
  const double la = loss_a.item<double>(), lb = loss_b.item<double>();
  if (!(std::fabs(la - lb) <= rel_tol * std::max(1.0, std::fabs(lb)))) {
    ++failures;
    std::printf("FAIL %s loss: %.17g vs %.17g\n", label, la, lb);
  }
  if (std::fabs(metrics.loss - la) > 1e-6 * std::max(1.0, std::fabs(la))) {
    ++failures;
    std::printf("FAIL %s metrics.loss %.17g vs the returned loss %.17g\n", label, metrics.loss, la);
  }
  expect_close("dJ/dlogits", logits_a.grad(), logits_b.grad(), rel_tol, label);
  expect_close("dJ/dW", head_a->weight.grad(), head_b->weight.grad(), rel_tol, label);
  expect_close("dJ/db", head_a->bias.grad(), head_b->bias.grad(), rel_tol, label);
}

}  // namespace

int main() {
  torch::manual_seed(20260525);
  int cases = 0;
  for (int i = 0; i < 30; ++i, ++cases) compare(i, torch::kDouble, 1e-10);
  for (int i = 0; i < 10; ++i, ++cases) compare(i, torch::kFloat, 2e-4);

  // A library error surfaces as a c10::Error with the library's message.
  {
    const cgrpo::Recipe recipe{};  // the defaults: the paper's loss
    const cgrpo::LossConfig& c = recipe.loss;
    cgrpo_torch::ExampleBatch batch;
    cgrpo_torch::fill_example_batch(batch, recipe, 4, 4, 3, 10, torch::kDouble);
    batch.inputs.old_logp = torch::zeros({batch.num_tokens}, torch::kDouble);
    batch.inputs.target_ids = batch.inputs.target_ids.clone();
    batch.inputs.target_ids[0] = 10;  // outside [0, V)
    bool threw = false;
    try {
      cgrpo_torch::PolicyLoss::apply(torch::zeros({batch.num_tokens, 10}, torch::kDouble), batch.inputs, c, nullptr);
    } catch (const c10::Error& e) {
      threw = std::string(e.what()).find("out_of_range") != std::string::npos;
    }
    if (!threw) {
      ++failures;
      std::printf("FAIL: an out-of-range target did not raise the library's out_of_range error\n");
    }
  }
  std::printf("test_libtorch_autograd: %d cases, %d failures\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
