// tests/cuda/cpu_path.cpp: the double-precision CPU path the GPU kernels are compared with.
// Thin wrappers over cgrpo::cpu::fused_policy_loss and cgrpo::cpu::token_logprobs.
#include "cpu_path.hpp"

#include <cgrpo/cgrpo.hpp>

namespace gpu_test {

cgrpo::Status cpu_fused_policy_loss(const cgrpo::LossConfig& config, const HostBatch& b, bool want_grad,
                                    std::vector<double>& grad, std::vector<double>& logp,
                                    std::vector<double>& entropy, cgrpo::LossMetrics& metrics,
                                    std::vector<double>* policy_factor, std::vector<uint8_t>* terms) {
  const HostLibraryBatch<double> batch(b, config);
  grad.assign(want_grad ? static_cast<size_t>(b.T * b.stride) : 0, 0.0);
  logp.assign(static_cast<size_t>(b.T), 0.0);
  entropy.assign(static_cast<size_t>(b.T), 0.0);
  cgrpo::PolicyLossOutputs<double> out;
  out.grad_logits = want_grad ? grad.data() : nullptr;
  out.logp = logp.data();
  out.entropy = entropy.data();
  out.metrics = &metrics;
  if (policy_factor) {
    policy_factor->assign(static_cast<size_t>(b.T), 0.0);
    out.policy_factor = policy_factor->data();
  }
  if (terms) {
    terms->assign(static_cast<size_t>(b.T), 0);
    out.token_terms = terms->data();
  }
  return cgrpo::cpu::fused_policy_loss(config, batch.view, out);
}

cgrpo::Status cpu_token_logprobs(const double* logits, int64_t T, int64_t V, int64_t row_stride, const int32_t* targets,
                                 double temperature, double* logp, double* entropy) {
  return cgrpo::cpu::token_logprobs(logits, T, V, row_stride, targets, temperature, logp, entropy);
}

}  // namespace gpu_test
