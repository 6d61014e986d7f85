// tests/consumer/consumer_cuda.cu: compiles (and instantiates) the kernels through the installed cuda component.
// Built only with -DCGRPO_CONSUMER_CUDA=ON. Without a GPU it reports the CUDA error the host API returned.
#include "cgrpo/cuda/cgrpo_cuda.cuh"

#include <cstdio>

int main() {
  // An empty batch: validation passes, then the status word is cleared on the device.
  cgrpo::LossConfig config = cgrpo::paper_critique_grpo().loss;
  cgrpo::PolicyLossBatch<float, float> batch;
  batch.vocab_size = 8;
  cgrpo::LossMetrics metrics;
  cgrpo::PolicyLossOutputs<float, float> out;
  out.metrics = &metrics;
  void* workspace = nullptr;
  const size_t bytes = cgrpo::cuda::fused_policy_loss_workspace_size(config, 0, 0);
  if (cudaMalloc(&workspace, bytes) != cudaSuccess) {
    std::printf("consumer_cuda: no usable GPU; the kernels compiled and linked\n");
    return 0;
  }
  cgrpo::Status s = cgrpo::cuda::fused_policy_loss(config, batch, out, nullptr, workspace, bytes, nullptr);
  if (s.ok()) s = cgrpo::cuda::policy_loss_metrics(workspace, nullptr, &metrics);
  cudaFree(workspace);
  std::printf("consumer_cuda: empty batch on the GPU: %s (loss %g)\n", s.ok() ? "ok" : s.message, metrics.loss);
  return s.ok() && metrics.loss == 0.0 ? 0 : 1;
}
