// cgrpo/cuda/token_logprobs.cuh: log p of each target and H of each row on the GPU, nothing else;
// the "old / reference log-probs" pass, matching cgrpo::cpu::token_logprobs. One read of the logits.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cgrpo/loss/policy_loss_batch.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/cuda/cuda_check.cuh"
#include "cgrpo/cuda/device_status.cuh"
#include "cgrpo/cuda/fused_policy_loss.cuh"
#include "cgrpo/cuda/policy_loss_kernels.cuh"
#include "cgrpo/cuda/workspace.cuh"

namespace cgrpo::cuda {

// logits [T, row_stride] (row_stride 0: V) in device memory; writes logp[T] and, when not null,
// entropy[T] (device, float). Host validation with the messages of cpu::token_logprobs; target
// ids and non-finite rows are checked by the kernel (token_logprobs_status() reports them).
// workspace: >= token_logprobs_workspace_size() bytes of device memory.
template <typename Logit>
Status token_logprobs(const Logit* logits, int64_t num_tokens, int64_t vocab_size, int64_t row_stride,
                      const int32_t* target_ids, double temperature, float* logp, float* entropy, void* workspace,
                      size_t workspace_bytes, cudaStream_t stream) {
  CGRPO_RETURN_IF_ERROR(validate_token_logprobs_buffers(num_tokens, vocab_size, row_stride, temperature, logits,
                                                        target_ids, logp, entropy));
  const int64_t stride = row_stride == 0 ? vocab_size : row_stride;
  if (num_tokens >= (int64_t{1} << 31))
    return make_error(StatusCode::invalid_argument, "num_tokens must be < 2^31 on the GPU, got %lld",
                      static_cast<long long>(num_tokens));
  if (!workspace || workspace_bytes < token_logprobs_workspace_size())
    return make_error(StatusCode::invalid_argument, "workspace needs %zu bytes (token_logprobs_workspace_size), got %zu%s",
                      token_logprobs_workspace_size(), workspace_bytes, workspace ? "" : " (null)");
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0)  // the status word's 64-bit atomics
    return make_error(StatusCode::invalid_argument, "workspace must be 16-byte aligned");
  // Every check above runs before the first CUDA call: an invalid call enqueues nothing.
  auto* status = static_cast<DeviceStatus*>(workspace);
  CGRPO_CUDA_CHECK(cudaMemsetAsync(status, 0xFF, sizeof(DeviceStatus), stream));
  if (num_tokens == 0) return Status::success();

  TokenLogprobArgs<Logit> args{};
  args.logits = logits;
  args.vocab_size = vocab_size;
  args.row_stride = stride;
  args.target_ids = target_ids;
  args.inv_temperature = static_cast<float>(inverse_temperature(temperature));
  args.logp_out = logp;
  args.entropy_out = entropy;
  args.status = status;
  return dispatch_row_threads(vocab_size, [&](auto threads) -> Status {
    constexpr int kThreads = decltype(threads)::value;
    token_logprobs_kernel<Logit, kThreads><<<static_cast<unsigned>(num_tokens), kThreads, 0, stream>>>(args);
    CGRPO_CUDA_CHECK(cudaGetLastError());
    return Status::success();
  });
}

// Waits for `stream` and returns what the kernel flagged (out-of-range id, non-finite row),
// or success. Synchronizes; call it only when the answer is needed.
inline Status token_logprobs_status(const void* workspace, cudaStream_t stream) {
  if (!workspace) return make_error(StatusCode::invalid_argument, "token_logprobs_status: workspace must not be null");
  DeviceStatus status;
  CGRPO_CUDA_CHECK(cudaMemcpyAsync(&status, workspace, sizeof(status), cudaMemcpyDeviceToHost, stream));
  CGRPO_CUDA_CHECK(cudaStreamSynchronize(stream));
  return decode_device_status(status);
}

}  // namespace cgrpo::cuda
