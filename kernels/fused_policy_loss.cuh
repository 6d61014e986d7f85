// kernels/fused_policy_loss.cuh: the host API of the CUDA policy loss (FlashInfer style: device
// pointers, sizes, strides, a stream, the config); asynchronous, returns a Status, never throws.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cgrpo/config.hpp"
#include "cgrpo/metrics.hpp"
#include "cgrpo/policy_loss_batch.hpp"
#include "cgrpo/status.hpp"
#include "kernels/cuda_check.cuh"
#include "kernels/device_status.cuh"
#include "kernels/policy_loss_kernels.cuh"
#include "kernels/workspace.cuh"

namespace cgrpo::cuda {

// Threads per row block: 128 for small rows, 512 from 8192 entries (V = 151936 bf16 is
// 18992 16-byte vectors: 37 per thread). Runtime V becomes a template parameter here.
template <typename Fn>
Status dispatch_row_threads(int64_t vocab, Fn&& launch) {
  if (vocab < 8192) return launch(std::integral_constant<int, 128>{});
  return launch(std::integral_constant<int, 512>{});
}

constexpr int kReduceThreads = 256;   // threads of each metric reduction block
constexpr int kSequenceThreads = 128; // threads of each GSPO sequence block

// Tokens per block of the first reduction stage (at most kReduceBlocks blocks); depends on T only.
inline int64_t metric_reduce_chunk(int64_t num_tokens) { return (num_tokens + kReduceBlocks - 1) / kReduceBlocks; }

// Reduces T per-token MetricSums into the final sums at a fixed offset of the workspace.
inline Status reduce_metric_sums(char* ws, const WorkspaceLayout& layout, int64_t num_tokens, cudaStream_t stream) {
  constexpr int kThreads = kReduceThreads;
  auto* token_sums = reinterpret_cast<MetricSums<double>*>(ws + layout.token_sums);
  auto* partial = reinterpret_cast<MetricSums<double>*>(ws + layout.partial_sums);
  auto* final_sums = reinterpret_cast<MetricSums<double>*>(ws + layout.final_sums);
  const int64_t chunk = metric_reduce_chunk(num_tokens);
  const int64_t blocks = (num_tokens + chunk - 1) / chunk;
  reduce_metric_sums_kernel<kThreads><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(token_sums, num_tokens,
                                                                                             chunk, partial);
  CGRPO_CUDA_CHECK(cudaGetLastError());
  reduce_metric_sums_kernel<kThreads><<<1, kThreads, 0, stream>>>(partial, blocks, blocks, final_sums);
  CGRPO_CUDA_CHECK(cudaGetLastError());
  return Status::success();
}

// The kernels' arguments: the batch's pointers and the workspace's parts (host code, no CUDA call).
template <typename Logit>
PolicyLossArgs<Logit> make_policy_loss_args(const LossConfig& config, const PolicyLossBatch<Logit, float>& batch,
                                            const PolicyLossOutputs<Logit, float>& out,
                                            const int64_t* device_sequence_offsets, char* ws,
                                            const WorkspaceLayout& layout) {
  PolicyLossArgs<Logit> args{};
  args.logits = batch.logits;
  args.vocab_size = batch.vocab_size;
  args.row_stride = batch.stride();
  args.grad = out.grad_logits;
  args.grad_row_stride = out.grad_row_stride == 0 ? batch.stride() : out.grad_row_stride;
  args.target_ids = batch.target_ids;
  args.mask = batch.mask;
  args.kinds = batch.kinds;
  args.advantages = batch.advantages;
  args.old_logp = batch.old_logp;
  args.ref_logp = batch.ref_logp;
  args.pg_weights = batch.pg_weights;
  args.entropy_weights = batch.entropy_weights;
  args.kl_weights = batch.kl_weights;
  args.logp_out = out.logp;
  args.entropy_out = out.entropy;
  args.params = token_params<float>(config);
  args.token_sums = reinterpret_cast<MetricSums<double>*>(ws + layout.token_sums);
  args.status = reinterpret_cast<DeviceStatus*>(ws + layout.status);
  if (config.ratio_level == RatioLevel::sequence_detached) {
    args.rows = reinterpret_cast<StoredRow*>(ws + layout.rows);
    args.seq_log_ratio = reinterpret_cast<float*>(ws + layout.seq_log_ratio);
    args.sequences.num_sequences = batch.layout.num_sequences;
    args.sequences.offsets = batch.layout.offsets ? device_sequence_offsets : nullptr;
    args.sequences.padded_length = batch.layout.padded_length;
  }
  return args;
}

// GSPO's first pass: softmax statistics of every row into the workspace's StoredRows.
template <typename Logit>
TokenLogprobArgs<Logit> gspo_stats_args(const PolicyLossArgs<Logit>& args) {
  TokenLogprobArgs<Logit> stats{};
  stats.logits = args.logits;
  stats.vocab_size = args.vocab_size;
  stats.row_stride = args.row_stride;
  stats.target_ids = args.target_ids;
  stats.inv_temperature = args.params.inv_temperature;
  stats.rows = args.rows;
  stats.status = args.status;
  stats.first_row = args.first_row;
  return stats;
}

// The fused forward (+ backward) policy loss of MATH.md on the GPU. Enqueues work on `stream`
// and returns; call policy_loss_metrics() to get the loss, the metrics and the device status.
//
//   batch:   every pointer is device memory (logits [T, row_stride] in Logit, per-token arrays
//            in float), except batch.layout.offsets which is read on the host by validation
//            (ratio_level sequence_detached only); the kernels read `device_sequence_offsets` instead
//            (the same array in device memory; nullptr for a padded layout).
//   out:     grad_logits (device, Logit; == batch.logits for in place, nullptr for forward
//            only), logp / entropy (device, optional). out.metrics must be non-null (the CPU
//            contract) but is not written here: policy_loss_metrics() writes the LossMetrics.
//   workspace: device memory, 16-byte aligned, >= fused_policy_loss_workspace_size() bytes.
//
// Validation on the host (validate_batch_shape: the CPU path's checks and messages) happens
// before anything is enqueued. Per-token values (target ids, mask, non-finite values and
// logits) are checked by the kernels: a bad row is flagged in the workspace's status word, its
// gradient written as zeros and its contributions left out; policy_loss_metrics() reports it.
//
// Kernels: fused (one kernel per row block + 2 tiny reductions); GSPO (RatioLevel::sequence_detached)
// needs the sequence's mean log-ratio before any gradient, so it runs a log-prob pass over
// the logits first (one extra read of T x V, 16 bytes per row stored), a per-sequence
// reduction, then the loss/gradient pass (a second read of the logits, from DRAM this time).
template <typename Logit>
Status fused_policy_loss(const LossConfig& config, const PolicyLossBatch<Logit, float>& batch,
                         const PolicyLossOutputs<Logit, float>& out, const int64_t* device_sequence_offsets,
                         void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  static_assert(std::is_same<Logit, float>::value || std::is_same<Logit, __half>::value ||
                    std::is_same<Logit, __nv_bfloat16>::value,
                "the CUDA path takes float, __half or __nv_bfloat16 logits");
  CGRPO_RETURN_IF_ERROR(validate_batch_shape(config, batch, out));
  CGRPO_RETURN_IF_ERROR(check_cuda_supported(config, batch.computed_weights()));
  if (out.policy_factor || out.token_terms)
    return make_error(StatusCode::invalid_argument, "the CUDA path does not write outputs.policy_factor or outputs.token_terms yet (the CPU path does)");
  const int64_t T = batch.num_tokens, V = batch.vocab_size;
  if (T >= (int64_t{1} << 31))
    return make_error(StatusCode::invalid_argument, "num_tokens must be < 2^31 on the GPU, got %lld",
                      static_cast<long long>(T));
  const bool sequence_ratio = config.ratio_level == RatioLevel::sequence_detached;
  const WorkspaceLayout layout(T, sequence_ratio ? batch.layout.num_sequences : 0, sequence_ratio);
  if (!workspace || workspace_bytes < layout.total)
    return make_error(StatusCode::invalid_argument, "workspace needs %zu bytes (fused_policy_loss_workspace_size), got %zu%s",
                      layout.total, workspace_bytes, workspace ? "" : " (null)");
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
    return make_error(StatusCode::invalid_argument, "workspace must be 16-byte aligned");
  if (sequence_ratio && batch.layout.offsets && !device_sequence_offsets && T > 0)
    return make_error(StatusCode::invalid_argument,
                      "clip = sequence with a packed layout needs device_sequence_offsets (layout.offsets on the device)");

  char* ws = static_cast<char*>(workspace);
  auto* status = reinterpret_cast<DeviceStatus*>(ws + layout.status);
  CGRPO_CUDA_CHECK(cudaMemsetAsync(status, 0xFF, sizeof(DeviceStatus), stream));
  if (T == 0) {
    CGRPO_CUDA_CHECK(cudaMemsetAsync(ws + layout.final_sums, 0, sizeof(MetricSums<double>), stream));
    return Status::success();
  }

  const PolicyLossArgs<Logit> args = make_policy_loss_args(config, batch, out, device_sequence_offsets, ws, layout);
  const unsigned grid = static_cast<unsigned>(T);

  CGRPO_RETURN_IF_ERROR(dispatch_row_threads(V, [&](auto threads) -> Status {
    constexpr int kThreads = decltype(threads)::value;
    if (!sequence_ratio) {
      if (args.grad) policy_loss_kernel<Logit, kThreads, true, false><<<grid, kThreads, 0, stream>>>(args);
      else policy_loss_kernel<Logit, kThreads, false, false><<<grid, kThreads, 0, stream>>>(args);
      CGRPO_CUDA_CHECK(cudaGetLastError());
      return Status::success();
    }
    token_logprobs_kernel<Logit, kThreads><<<grid, kThreads, 0, stream>>>(gspo_stats_args(args));
    CGRPO_CUDA_CHECK(cudaGetLastError());
    if (args.sequences.num_sequences > 0) {
      sequence_log_ratio_kernel<kSequenceThreads>
          <<<static_cast<unsigned>(args.sequences.num_sequences), kSequenceThreads, 0, stream>>>(
              args.rows, args.mask, args.kinds, args.old_logp, args.sequences, const_cast<float*>(args.seq_log_ratio));
      CGRPO_CUDA_CHECK(cudaGetLastError());
    }
    if (args.grad) policy_loss_kernel<Logit, kThreads, true, true><<<grid, kThreads, 0, stream>>>(args);
    else policy_loss_kernel<Logit, kThreads, false, true><<<grid, kThreads, 0, stream>>>(args);
    CGRPO_CUDA_CHECK(cudaGetLastError());
    return Status::success();
  }));
  return reduce_metric_sums(ws, layout, T, stream);
}

// Decodes a host copy of the first 392 bytes of the workspace (status word and final sums).
inline Status policy_loss_metrics_from_copy(const char* host, LossMetrics* metrics) {
  const WorkspaceLayout layout(0, 0, false);
  DeviceStatus status;
  MetricSums<double> sums;
  std::memcpy(&status, host + layout.status, sizeof(status));
  std::memcpy(&sums, host + layout.final_sums, sizeof(sums));
  CGRPO_RETURN_IF_ERROR(decode_device_status(status));
  *metrics = finalize_metrics(sums);
  return Status::success();
}

// Waits for `stream`, then copies the status word and the final sums (392 bytes) back:
// a flagged row gives its error Status (metrics untouched); otherwise *metrics =
// finalize_metrics(sums). The only call of the CUDA path that synchronizes.
inline Status policy_loss_metrics(const void* workspace, cudaStream_t stream, LossMetrics* metrics) {
  if (!workspace || !metrics)
    return make_error(StatusCode::invalid_argument, "policy_loss_metrics: workspace and metrics must not be null");
  const WorkspaceLayout layout(0, 0, false);
  alignas(16) char host[2 * kWorkspaceAlignment];
  static_assert(sizeof(host) >= 2 * kWorkspaceAlignment, "status and final sums");
  CGRPO_CUDA_CHECK(cudaMemcpyAsync(host, workspace, layout.final_sums + sizeof(MetricSums<double>),
                                   cudaMemcpyDeviceToHost, stream));
  CGRPO_CUDA_CHECK(cudaStreamSynchronize(stream));
  return policy_loss_metrics_from_copy(host, metrics);
}

}  // namespace cgrpo::cuda
