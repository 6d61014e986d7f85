// tests/consumer/main.cpp: the smallest program a trainer would write against the installed package.
// One token whose loss and gradient are known by hand; exits non-zero when they are not what the library gives.
#include <cgrpo/cgrpo.hpp>
#include <cgrpo/parallel/global_scale.hpp>
#include <cgrpo/parallel/group_stats.hpp>
#include <cgrpo/parallel/vocab_parallel.hpp>

#include <cmath>
#include <cstdio>

int main() {
  // V = 2, equal logits: p = (1/2, 1/2). Target 0, old log-prob log(1/2): r = 1.
  // A = 1, no clip, weight 1, no entropy: J = -A r = -1, dJ/dz = -A r (onehot - p) = (-1/2, 1/2).
  const double logits[2] = {0.0, 0.0};
  const int32_t target = 0;
  const uint8_t mask = 1;
  const double advantage = 1.0, old_logp = std::log(0.5), weight = 1.0;
  cgrpo::PolicyLossBatch<double> batch;
  batch.logits = logits;
  batch.num_tokens = 1;
  batch.vocab_size = 2;
  batch.target_ids = &target;
  batch.mask = &mask;
  batch.advantages = &advantage;
  batch.old_logp = &old_logp;
  batch.pg_weights = &weight;
  cgrpo::LossConfig config = cgrpo::paper_critique_grpo().loss;
  config.entropy.coef = 0.0;
  double grad[2] = {0, 0};
  cgrpo::LossMetrics metrics;
  cgrpo::PolicyLossOutputs<double> out;
  out.grad_logits = grad;
  out.metrics = &metrics;
  const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(config, batch, out);
  if (!s.ok()) {
    std::fprintf(stderr, "consumer: %s: %s\n", cgrpo::status_code_name(s.code), s.message);
    return 1;
  }
  const bool ok = std::fabs(metrics.loss + 1.0) < 1e-15 && std::fabs(grad[0] + 0.5) < 1e-15 &&
                  std::fabs(grad[1] - 0.5) < 1e-15;
  std::printf("consumer: loss %.17g, grad (%.17g, %.17g): %s\n", metrics.loss, grad[0], grad[1],
              ok ? "as expected" : "WRONG");
  return ok ? 0 : 1;
}
