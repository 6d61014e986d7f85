// cgrpo/cuda/fused_linear_policy_loss.cuh: the fused LM head + policy loss and the log-prob pass from hidden
// states on the GPU: cuBLAS GEMMs (bf16/fp16/fp32 in, fp32 accumulation) + the policy loss kernels, per chunk.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "cgrpo/loss/config.hpp"
#include "cgrpo/loss/linear_head.hpp"
#include "cgrpo/loss/metrics.hpp"
#include "cgrpo/loss/policy_loss_batch.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/cuda/cuda_check.cuh"
#include "cgrpo/cuda/device_status.cuh"
#include "cgrpo/cuda/fused_policy_loss.cuh"
#include "cgrpo/cuda/policy_loss_kernels.cuh"
#include "cgrpo/cuda/vector_io.cuh"
#include "cgrpo/cuda/workspace.cuh"

namespace cgrpo::cuda {

inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_(other)";
  }
}

inline Status cublas_status(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s == CUBLAS_STATUS_SUCCESS) return Status::success();
  return make_error(StatusCode::cuda_error, "%s failed at %s:%d: %s", call, file, line, cublas_status_name(s));
}

}  // namespace cgrpo::cuda

// Returns a cuda_error Status from the enclosing function when the cuBLAS call fails.
#define CGRPO_CUBLAS_CHECK(call) \
  CGRPO_RETURN_IF_ERROR(::cgrpo::cuda::cublas_status((call), #call, __FILE__, __LINE__))

namespace cgrpo::cuda {

template <typename T> struct CudaType;
template <> struct CudaType<float> { static constexpr cudaDataType_t value = CUDA_R_32F; };
template <> struct CudaType<__half> { static constexpr cudaDataType_t value = CUDA_R_16F; };
template <> struct CudaType<__nv_bfloat16> { static constexpr cudaDataType_t value = CUDA_R_16BF; };

// The three GEMMs of a chunk of n tokens, row-major arrays seen by column-major cuBLAS as their
// transposes (fp32 accumulation, CUBLAS_COMPUTE_32F; alpha, beta on the host):
//   z [n, V] (ldz)      = h [n, H] W^T (+ z when beta = 1: the bias rows) -> z^T = op_T(W) h^T
//   dh [n, H] (ldgh)    = G W                                          -> dh^T = W^T G^T
//   dW [V, H] (ldgw)   (+)= G^T h  (fp32)                                -> dW^T = h^T G
template <typename Logit>
Status gemm_logits(cublasHandle_t handle, const Logit* h, int64_t ldh, int64_t n, int64_t H, const Logit* W, int64_t ldw,
                   int64_t V, Logit* z, int64_t ldz, float beta) {
  const float alpha = 1.0f;
  constexpr cudaDataType_t t = CudaType<Logit>::value;
  CGRPO_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(V), static_cast<int>(n),
                                  static_cast<int>(H), &alpha, W, t, static_cast<int>(ldw), h, t, static_cast<int>(ldh),
                                  &beta, z, t, static_cast<int>(ldz), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return Status::success();
}

template <typename Logit>
Status gemm_hidden_grad(cublasHandle_t handle, const Logit* G, int64_t ldz, int64_t n, int64_t V, const Logit* W,
                        int64_t ldw, int64_t H, Logit* gh, int64_t ldgh) {
  const float alpha = 1.0f, beta = 0.0f;
  constexpr cudaDataType_t t = CudaType<Logit>::value;
  CGRPO_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(H), static_cast<int>(n),
                                  static_cast<int>(V), &alpha, W, t, static_cast<int>(ldw), G, t, static_cast<int>(ldz),
                                  &beta, gh, t, static_cast<int>(ldgh), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return Status::success();
}

template <typename Logit>
Status gemm_weight_grad(cublasHandle_t handle, const Logit* G, int64_t ldz, int64_t n, int64_t V, const Logit* h,
                        int64_t ldh, int64_t H, float* gw, int64_t ldgw, bool accumulate) {
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  constexpr cudaDataType_t t = CudaType<Logit>::value;
  CGRPO_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(H), static_cast<int>(V),
                                  static_cast<int>(n), &alpha, h, t, static_cast<int>(ldh), G, t, static_cast<int>(ldz),
                                  &beta, gw, CUDA_R_32F, static_cast<int>(ldgw), CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
  return Status::success();
}

// Every row of z [n, V] (ldz) set to the bias (before the forward GEMM with beta = 1).
template <typename Logit>
__global__ void broadcast_bias_kernel(const Logit* bias, int64_t V, int64_t n, Logit* z, int64_t ldz) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= V) return;
  const Logit b = bias[j];
  for (int64_t r = blockIdx.y; r < n; r += gridDim.y) z[r * ldz + j] = b;
}

// gb[j] (+)= sum over the n rows of G[:, j], in fp32, rows in order (one thread per column:
// coalesced across j, deterministic).
template <typename Logit>
__global__ void bias_grad_kernel(const Logit* G, int64_t ldz, int64_t n, int64_t V, float* gb, bool accumulate) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= V) return;
  float s = accumulate ? gb[j] : 0.0f;
  for (int64_t r = 0; r < n; ++r) s += LogitTraits<Logit>::to_float(G[r * ldz + j]);
  gb[j] = s;
}

// Where the fused linear loss keeps its scratch: the fused loss's layout for T tokens (status word
// and final sums at their fixed offsets, so policy_loss_metrics() reads them as usual), then the
// [chunk, V] logits buffer (rows padded to 64 bytes).
struct LinearWorkspaceLayout {
  WorkspaceLayout loss;
  size_t chunk = 0;  // offset of the chunk buffer
  size_t total = 0;
  int64_t chunk_rows = 0, chunk_stride = 0;

  LinearWorkspaceLayout(const WorkspaceLayout& l, int64_t rows, int64_t vocab, size_t elem) : loss(l) {
    chunk_rows = rows;
    chunk_stride = chunk_row_stride(vocab, static_cast<int64_t>(elem));
    chunk = align_up(loss.total);
    total = chunk + align_up(static_cast<size_t>(rows) * static_cast<size_t>(chunk_stride) * elem);
  }
};

// Bytes of device workspace for fused_linear_policy_loss on at most T tokens and B sequences of V
// logits with this chunking: fused_policy_loss_workspace_size(config, T, B) plus chunk x V x
// sizeof(Logit). 0 when the chunking is invalid (the call then reports why).
template <typename Logit>
size_t fused_linear_policy_loss_workspace_size(const LossConfig& config, int64_t num_tokens, int64_t num_sequences,
                                               int64_t vocab_size, const LinearChunking& chunking = LinearChunking{}) {
  int64_t rows = 0;
  if (vocab_size <= 0 || !chunk_rows(chunking, num_tokens, vocab_size, sizeof(Logit), &rows).ok()) return 0;
  return LinearWorkspaceLayout(WorkspaceLayout(num_tokens, num_sequences, workspace_needs(config)), rows, vocab_size,
                               sizeof(Logit))
      .total;
}

// The same for fused_linear_token_logprobs: the status word, then the chunk buffer.
template <typename Logit>
size_t fused_linear_token_logprobs_workspace_size(int64_t num_tokens, int64_t vocab_size,
                                                  const LinearChunking& chunking = LinearChunking{}) {
  int64_t rows = 0;
  if (vocab_size <= 0 || !chunk_rows(chunking, num_tokens, vocab_size, sizeof(Logit), &rows).ok()) return 0;
  WorkspaceLayout status_only;
  status_only.total = token_logprobs_workspace_size();
  return LinearWorkspaceLayout(status_only, rows, vocab_size, sizeof(Logit)).total;
}

// cuBLAS takes int sizes and leading dimensions: every one must fit.
inline Status check_cublas_sizes(int64_t chunk, int64_t V, int64_t H, const int64_t* strides, int num_strides,
                                 int64_t chunk_stride) {
  bool ok = chunk <= INT_MAX && V <= INT_MAX && H <= INT_MAX && chunk_stride <= INT_MAX;
  for (int i = 0; i < num_strides; ++i) ok = ok && strides[i] <= INT_MAX;
  if (!ok)
    return make_error(StatusCode::invalid_argument,
                      "cuBLAS takes int sizes: chunk rows (%lld), vocab_size (%lld), hidden_size (%lld) and every row "
                      "stride must be < 2^31",
                      static_cast<long long>(chunk), static_cast<long long>(V), static_cast<long long>(H));
  return Status::success();
}

inline Status check_linear_workspace(const void* workspace, size_t workspace_bytes, size_t needed, const char* size_fn) {
  if (!workspace || workspace_bytes < needed)
    return make_error(StatusCode::invalid_argument, "workspace needs %zu bytes (%s), got %zu%s", needed, size_fn,
                      workspace_bytes, workspace ? "" : " (null)");
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
    return make_error(StatusCode::invalid_argument, "workspace must be 16-byte aligned");
  return Status::success();
}

// The launch order of the fused linear loss over chunks of `chunk` rows, for every plan:
//   begin (status word, sums);
//   per chunk: its logits, the first pass over its rows, and for a one-pass plan that writes a
//     gradient the backward GEMMs (dJ/dz is then in the chunk buffer);
//   one pass: the policy_factor / token_terms outputs;
//   two passes: the passes over per-token values of the whole batch (every row's statistics are
//     known now), then per chunk (gradient wanted only): its logits again, the stored gradient
//     pass, the backward GEMMs;
//   the metric reductions.
// Ops enqueues each step: LinearDeviceOps on the device; tests/cuda's host emulation runs the same
// order on the host (test_cuda_fused_linear_host).
template <typename Logit, typename Ops>
Status run_chunked_loss(const LossPlan<Logit>& plan, int64_t chunk, Ops& ops) {
  const int64_t T = plan.num_tokens;
  CGRPO_RETURN_IF_ERROR(ops.begin());
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t n = T - t0 < chunk ? T - t0 : chunk;
    CGRPO_RETURN_IF_ERROR(ops.logits(t0, n));
    CGRPO_RETURN_IF_ERROR(ops.first_pass(t0, n));
    if (!plan.two_pass && plan.write_grad) CGRPO_RETURN_IF_ERROR(ops.backward(t0, n));
  }
  if (!plan.two_pass) {
    CGRPO_RETURN_IF_ERROR(ops.uncoupled_outputs());
  } else {
    CGRPO_RETURN_IF_ERROR(ops.token_passes());
    for (int64_t t0 = 0; plan.write_grad && t0 < T; t0 += chunk) {
      const int64_t n = T - t0 < chunk ? T - t0 : chunk;
      CGRPO_RETURN_IF_ERROR(ops.logits(t0, n));
      CGRPO_RETURN_IF_ERROR(ops.gradient(t0, n));
      CGRPO_RETURN_IF_ERROR(ops.backward(t0, n));
    }
  }
  return ops.reductions();
}

// run_chunked_loss's steps on the device: cuBLAS and the fused loss's launches, all on `stream`.
template <typename Logit>
struct LinearDeviceOps {
  cublasHandle_t cublas;
  const LossPlan<Logit>& plan;
  const LinearHead<Logit>& head;
  const LinearHeadGrads<Logit, float>& grads;
  Logit* z;  // the chunk buffer (the plan's logits and gradient)
  int64_t ldz;
  cudaStream_t stream;

  int64_t V() const { return plan.fused.vocab_size; }
  int64_t H() const { return head.hidden_size; }

  // The first kernel of the call; with no token, dW and db are zeros (unless accumulated) as on the CPU.
  Status begin() {
    CGRPO_RETURN_IF_ERROR(launch_call_begin(plan, stream));
    if (plan.num_tokens > 0 || grads.accumulate) return Status::success();
    if (grads.grad_weight)
      CGRPO_CUDA_CHECK(cudaMemset2DAsync(grads.grad_weight, grads.weight_stride(H()) * sizeof(float), 0,
                                         H() * sizeof(float), V(), stream));
    if (grads.grad_bias) CGRPO_CUDA_CHECK(cudaMemsetAsync(grads.grad_bias, 0, V() * sizeof(float), stream));
    return Status::success();
  }
  // z = h W^T + b for rows [t0, t0 + n).
  Status logits(int64_t t0, int64_t n) {
    if (head.bias) {
      const dim3 grid(static_cast<unsigned>((V() + 255) / 256), static_cast<unsigned>(n < 65535 ? n : 65535));
      broadcast_bias_kernel<Logit><<<grid, 256, 0, stream>>>(head.bias, V(), n, z, ldz);
      CGRPO_CUDA_CHECK(cudaGetLastError());
    }
    return gemm_logits(cublas, head.hidden + t0 * head.hidden_stride(), head.hidden_stride(), n, H(), head.weight,
                       head.weight_stride(), V(), z, ldz, head.bias ? 1.0f : 0.0f);
  }
  Status first_pass(int64_t t0, int64_t n) { return launch_first_pass_rows(plan, t0, n, stream); }
  Status gradient(int64_t t0, int64_t n) { return launch_gradient_rows(plan, t0, n, stream); }
  // The head's gradients from the chunk's dJ/dz (in z).
  Status backward(int64_t t0, int64_t n) {
    const bool accumulate = grads.accumulate || t0 > 0;
    if (grads.grad_weight)
      CGRPO_RETURN_IF_ERROR(gemm_weight_grad(cublas, z, ldz, n, V(), head.hidden + t0 * head.hidden_stride(),
                                             head.hidden_stride(), H(), grads.grad_weight, grads.weight_stride(H()),
                                             accumulate));
    if (grads.grad_bias) {
      bias_grad_kernel<Logit>
          <<<static_cast<unsigned>((V() + 255) / 256), 256, 0, stream>>>(z, ldz, n, V(), grads.grad_bias, accumulate);
      CGRPO_CUDA_CHECK(cudaGetLastError());
    }
    if (grads.grad_hidden)  // last: it may overwrite this chunk's hidden states (in place)
      CGRPO_RETURN_IF_ERROR(gemm_hidden_grad(cublas, z, ldz, n, V(), head.weight, head.weight_stride(), H(),
                                             grads.grad_hidden + t0 * grads.hidden_stride(H()), grads.hidden_stride(H())));
    return Status::success();
  }
  Status uncoupled_outputs() { return launch_uncoupled_outputs(plan, stream); }
  Status token_passes() { return launch_token_passes(plan.passes, stream); }
  Status reductions() { return launch_loss_reductions(plan.reductions, stream); }
};

// The fused LM head + policy loss on the GPU. Per chunk of c tokens: cublasGemmEx into the
// workspace's [c, V] buffer (Logit, fp32 accumulation), the fused loss's row kernels over it in
// place (dJ/dz overwrites the logits), then dJ/dW (+)= G^T h (fp32 output), dJ/db (+)= column sums
// (fp32), dJ/dh = G W (Logit; may overwrite hidden: in place). All on `stream` (the handle's
// stream is set to it); call policy_loss_metrics(workspace, stream, &m) for the loss, the
// metrics and the device status, exactly as after cuda::fused_policy_loss.
//
//   cublas:  the caller's handle (created once); its stream is set to `stream`.
//   batch:   device per-token arrays, logits null, vocab_size = V, row_stride 0.
//   head:    device hidden [T, H], weight [V, H], bias [V] or null, in Logit.
//   out:     logp / entropy / policy_factor (device float), token_terms (device bytes), optional.
//   grads:   grad_hidden (Logit), grad_weight and grad_bias (float), each optional;
//            accumulate adds to grad_weight and grad_bias.
//   device_sequence_offsets: as for cuda::fused_policy_loss (a packed layout the config reads).
//   workspace: >= fused_linear_policy_loss_workspace_size<Logit>(config, T, B, V, chunking) bytes.
//
// Configs: every one cuda::fused_policy_loss runs, with the same launch plan (plan_policy_loss on
// the chunk buffer). A one-pass plan (token-level configs with the caller's weights) runs GEMM,
// policy_loss_kernel, backward GEMMs per chunk: 3 GEMMs in all. A two-pass plan (the row- and
// batch-coupled modes and computed weights: every token's log p and H are needed before any
// token's a_t) runs the statistics kernel over every chunk's logits, then the passes over
// per-token values for the whole batch (launch_token_passes), then forms each chunk's logits again
// for the stored gradient kernel and the backward GEMMs: one extra forward GEMM, the CPU fused
// linear path's recompute; forward only, the second sweep is skipped. Host validation (the CPU
// path's validate_linear_loss_shape, then the CUDA limits) happens before anything is enqueued.
// Values are checked on the device as in cuda::fused_policy_loss: a bad row is flagged in the
// status word, its dJ/dz is zero. Logits that overflow Logit (fp16: |z| > 65504) are flagged there
// as non-finite rows; the CPU path's upfront bound on |z| is not computed on the GPU.
template <typename Logit>
Status fused_linear_policy_loss(cublasHandle_t cublas, const LossConfig& config,
                                const PolicyLossBatch<Logit, float>& batch, const LinearHead<Logit>& head,
                                const PolicyLossOutputs<Logit, float>& out, const LinearHeadGrads<Logit, float>& grads,
                                const int64_t* device_sequence_offsets, void* workspace, size_t workspace_bytes,
                                cudaStream_t stream, const LinearChunking& chunking = LinearChunking{}) {
  static_assert(std::is_same<Logit, float>::value || std::is_same<Logit, __half>::value ||
                    std::is_same<Logit, __nv_bfloat16>::value,
                "the CUDA path takes float, __half or __nv_bfloat16 hidden states and weights");
  CGRPO_RETURN_IF_ERROR(validate_linear_loss_shape(config, batch, head, out, grads, chunking, sizeof(Logit)));
  if (!cublas) return make_error(StatusCode::invalid_argument, "the cuBLAS handle must not be null");
  const int64_t T = batch.num_tokens, V = batch.vocab_size, H = head.hidden_size;
  if (T >= (int64_t{1} << 31))
    return make_error(StatusCode::invalid_argument, "num_tokens must be < 2^31 on the GPU, got %lld",
                      static_cast<long long>(T));
  int64_t c = 0;
  CGRPO_RETURN_IF_ERROR(chunk_rows(chunking, T, V, sizeof(Logit), &c));
  const LinearWorkspaceLayout layout(WorkspaceLayout(T, batch.layout.num_sequences, workspace_needs(config)), c, V,
                                     sizeof(Logit));
  const int64_t ldh = head.hidden_stride(), ldw = head.weight_stride(), ldz = layout.chunk_stride;
  const int64_t ldgh = grads.hidden_stride(H), ldgw = grads.weight_stride(H);
  const int64_t strides[] = {ldh, ldw, ldgh, ldgw};
  CGRPO_RETURN_IF_ERROR(check_cublas_sizes(c, V, H, strides, 4, ldz));
  CGRPO_RETURN_IF_ERROR(check_linear_workspace(workspace, workspace_bytes, layout.total,
                                               "fused_linear_policy_loss_workspace_size"));
  char* ws = static_cast<char*>(workspace);
  Logit* z = reinterpret_cast<Logit*>(ws + layout.chunk);
  // The fused loss's plan with the chunk buffer as the logits (rows relative to each chunk's first
  // batch row) and the gradient in place in it. Its checks (the packed layout's device offsets,
  // the GPU limits) run here too: an invalid call enqueues nothing.
  PolicyLossBatch<Logit, float> chunk_batch = batch;
  chunk_batch.logits = z;
  chunk_batch.row_stride = ldz;
  PolicyLossOutputs<Logit, float> chunk_out = out;
  chunk_out.grad_logits = grads.any() ? z : nullptr;
  chunk_out.grad_row_stride = ldz;
  LossPlan<Logit> plan;
  CGRPO_RETURN_IF_ERROR(plan_validated_policy_loss(config, chunk_batch, chunk_out, device_sequence_offsets, workspace,
                                                   workspace_bytes, &plan));

  CGRPO_CUBLAS_CHECK(cublasSetStream(cublas, stream));
  LinearDeviceOps<Logit> ops{cublas, plan, head, grads, z, ldz, stream};
  return run_chunked_loss(plan, c, ops);
}

// log p and H from hidden states on the GPU (cuda::token_logprobs on z = h W^T + b, one chunk at a
// time): per chunk one GEMM and token_logprobs_kernel. Device logp[T] and entropy[T] (optional) in
// float; token_logprobs_status(workspace, stream) reports flagged rows (ids, non-finite logits).
// workspace: >= fused_linear_token_logprobs_workspace_size<Logit>(T, V, chunking) bytes.
template <typename Logit>
Status fused_linear_token_logprobs(cublasHandle_t cublas, const LinearHead<Logit>& head, int64_t num_tokens,
                                   int64_t vocab_size, const int32_t* target_ids, double temperature, float* logp,
                                   float* entropy, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                                   const LinearChunking& chunking = LinearChunking{}) {
  CGRPO_RETURN_IF_ERROR(validate_linear_logprobs_shape(num_tokens, vocab_size, head, target_ids, temperature, logp,
                                                       entropy, chunking, sizeof(Logit)));
  if (!cublas) return make_error(StatusCode::invalid_argument, "the cuBLAS handle must not be null");
  const int64_t T = num_tokens, V = vocab_size, H = head.hidden_size;
  if (T >= (int64_t{1} << 31))
    return make_error(StatusCode::invalid_argument, "num_tokens must be < 2^31 on the GPU, got %lld",
                      static_cast<long long>(T));
  int64_t c = 0;
  CGRPO_RETURN_IF_ERROR(chunk_rows(chunking, T, V, sizeof(Logit), &c));
  WorkspaceLayout status_only;
  status_only.total = token_logprobs_workspace_size();
  const LinearWorkspaceLayout layout(status_only, c, V, sizeof(Logit));
  const int64_t ldh = head.hidden_stride(), ldw = head.weight_stride(), ldz = layout.chunk_stride;
  const int64_t strides[] = {ldh, ldw};
  CGRPO_RETURN_IF_ERROR(check_cublas_sizes(c, V, H, strides, 2, ldz));
  CGRPO_RETURN_IF_ERROR(check_linear_workspace(workspace, workspace_bytes, layout.total,
                                               "fused_linear_token_logprobs_workspace_size"));
  char* ws = static_cast<char*>(workspace);
  auto* status = reinterpret_cast<DeviceStatus*>(ws);
  Logit* z = reinterpret_cast<Logit*>(ws + layout.chunk);
  CGRPO_CUDA_CHECK(cudaMemsetAsync(status, 0xFF, sizeof(DeviceStatus), stream));
  if (T == 0) return Status::success();
  CGRPO_CUBLAS_CHECK(cublasSetStream(cublas, stream));
  return dispatch_row_threads(V, [&](auto threads) -> Status {
    constexpr int kThreads = decltype(threads)::value;
    for (int64_t t0 = 0; t0 < T; t0 += c) {
      const int64_t n = T - t0 < c ? T - t0 : c;
      if (head.bias) {
        const dim3 grid(static_cast<unsigned>((V + 255) / 256), static_cast<unsigned>(n < 65535 ? n : 65535));
        broadcast_bias_kernel<Logit><<<grid, 256, 0, stream>>>(head.bias, V, n, z, ldz);
        CGRPO_CUDA_CHECK(cudaGetLastError());
      }
      CGRPO_RETURN_IF_ERROR(gemm_logits(cublas, head.hidden + t0 * ldh, ldh, n, H, head.weight, ldw, V, z, ldz,
                                        head.bias ? 1.0f : 0.0f));
      TokenLogprobArgs<Logit> args{};
      args.logits = z;
      args.vocab_size = V;
      args.row_stride = ldz;
      args.target_ids = target_ids;
      args.inv_temperature = static_cast<float>(inverse_temperature(temperature));
      args.logp_out = logp;
      args.entropy_out = entropy;
      args.status = status;
      args.first_row = t0;
      token_logprobs_kernel<Logit, kThreads><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(args);
      CGRPO_CUDA_CHECK(cudaGetLastError());
    }
    return Status::success();
  });
}

}  // namespace cgrpo::cuda
