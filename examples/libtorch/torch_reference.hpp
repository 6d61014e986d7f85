// examples/libtorch/torch_reference.hpp: the loss of MATH.md written with torch ops, for LibTorch's own autograd.
// What a Python trainer (verl) computes; test_libtorch_autograd compares its gradient with the wrapper's.
#pragma once

#include <torch/torch.h>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/torch/policy_loss.hpp>

namespace cgrpo_torch {

// J of MATH.md from logits [T, V] with torch ops only (autograd gives dJ/dlogits).
inline torch::Tensor reference_policy_loss(const torch::Tensor& logits, const PolicyLossInputs& in,
                                           const cgrpo::LossConfig& c) {
  const auto real = logits.scalar_type();
  auto as_real = [&](const torch::Tensor& t) { return t.to(real); };
  const torch::Tensor u = logits / c.temperature;
  const torch::Tensor logp_all = torch::log_softmax(u, 1);
  const torch::Tensor logp = logp_all.gather(1, in.target_ids.to(torch::kLong).unsqueeze(1)).squeeze(1);
  const torch::Tensor p = logp_all.exp();
  const torch::Tensor entropy = torch::logsumexp(u, 1) - (p * u).sum(1);  // verl entropy_from_logits
  const torch::Tensor A = as_real(in.advantages), old = as_real(in.old_logp);

  // On-policy branch: token ratio, or GSPO's sequence ratio in verl's stop-gradient form.
  torch::Tensor log_ratio = logp - old;
  if (c.ratio.level == cgrpo::RatioLevel::sequence_detached) {
    const torch::Tensor m = as_real(in.mask);
    torch::Tensor seq_mean = torch::zeros_like(logp);
    for (int64_t i = 0; i < in.layout.num_sequences; ++i) {
      const int64_t b = in.layout.begin(i), e = in.layout.end(i);
      const torch::Tensor mi = m.slice(0, b, e);
      const torch::Tensor n = mi.sum();
      const torch::Tensor mean = torch::where(n > 0, ((logp - old).slice(0, b, e) * mi).sum() / n.clamp_min(1),
                                              torch::zeros_like(n));
      seq_mean.slice(0, b, e).fill_(mean.item<double>());
    }
    log_ratio = logp - logp.detach() + seq_mean;
  }
  const torch::Tensor ratio = torch::exp(torch::clamp(log_ratio, c.ratio.log_ratio_min, c.ratio.log_ratio_max));
  const torch::Tensor pg1 = -A * ratio;
  torch::Tensor on_policy = pg1;
  if (c.policy.loss == cgrpo::PolicyLoss::ppo_clip) {
    const torch::Tensor pg2 = -A * torch::clamp(ratio, 1.0 - c.ratio.clip_eps_low, 1.0 + c.ratio.clip_eps_high);
    on_policy = torch::maximum(pg1, pg2);
    if (c.ratio.dual_clip) on_policy = torch::where(A < 0, torch::minimum(on_policy, -A * c.ratio.dual_clip_c), on_policy);
  }
  // Refinement branch: -A f(p), f(p) = p / (p + gamma).
  const torch::Tensor prob = logp.exp();
  const torch::Tensor refinement = -A * prob / (prob + c.policy.refinement_gamma);
  const torch::Tensor is_refinement =
      in.kinds.defined() ? in.kinds.to(torch::kLong) == cgrpo::kRefinement : torch::zeros_like(logp, torch::kBool);
  const torch::Tensor l = torch::where(is_refinement, refinement, on_policy);

  torch::Tensor J = (as_real(in.pg_weights) * l).sum();
  if (in.entropy_weights.defined()) J = J - c.entropy.coef * (as_real(in.entropy_weights) * entropy).sum();
  if (c.kl.estimator != cgrpo::KlEstimator::none) {
    const torch::Tensor diff = logp - as_real(in.ref_logp);
    torch::Tensor kl;
    switch (c.kl.estimator) {
      case cgrpo::KlEstimator::k1: kl = diff; break;
      case cgrpo::KlEstimator::abs: kl = diff.abs(); break;
      case cgrpo::KlEstimator::k2: kl = 0.5 * diff * diff; break;
      default: {
        const torch::Tensor d = -diff;
        kl = torch::clamp(torch::exp(d) - d - 1, -10, 10);
      }
    }
    J = J + c.kl.coef * (as_real(in.kl_weights) * kl).sum();
  }
  return J;
}

}  // namespace cgrpo_torch
