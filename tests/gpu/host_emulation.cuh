// tests/gpu/host_emulation.cuh: the CUDA path run on the host, block by block and thread by thread,
// with the kernels' own per-row code; only the launches, CUB and the barriers are emulated.
#pragma once

#include <cstring>
#include <vector>

#include "kernels/cgrpo_cuda.cuh"

namespace gpu_test {

// Every thread's share of sweep 1, merged as a tree (CUB merges in another fixed order).
template <typename Logit, int THREADS>
cgrpo::cuda::RowSoftmax emulate_block_row_softmax(const Logit* row, int64_t vocab, float inv_temperature) {
  const cgrpo::cuda::RowStatsMerge merge{inv_temperature};
  bool bad = false;
  std::vector<cgrpo::RowStats<float>> parts(THREADS);
  for (int tid = 0; tid < THREADS; ++tid)
    parts[tid] = cgrpo::cuda::thread_row_stats<Logit, THREADS>(row, vocab, merge, tid, bad);
  for (int width = 1; width < THREADS; width *= 2)
    for (int i = 0; i + width < THREADS; i += 2 * width) parts[i] = merge(parts[i], parts[i + width]);
  return cgrpo::cuda::row_softmax_from_stats(parts[0], bad);
}

// cgrpo::cuda::fused_policy_loss followed by policy_loss_metrics, with every pointer in host
// memory (device_sequence_offsets = batch.layout.offsets) and the workspace in `ws_storage`.
template <typename Logit>
cgrpo::Status emulate_fused_policy_loss(const cgrpo::LossConfig& config, const cgrpo::PolicyLossBatch<Logit, float>& batch,
                                        const cgrpo::PolicyLossOutputs<Logit, float>& out,
                                        std::vector<double>& ws_storage, cgrpo::LossMetrics* metrics) {
  using namespace cgrpo::cuda;
  CGRPO_RETURN_IF_ERROR(cgrpo::validate_batch_shape(config, batch, out));
  const int64_t T = batch.num_tokens, V = batch.vocab_size;
  const bool sequence_ratio = config.ratio_level == cgrpo::RatioLevel::sequence_detached;
  const WorkspaceLayout layout(T, sequence_ratio ? batch.layout.num_sequences : 0, sequence_ratio);
  ws_storage.assign(layout.total / sizeof(double) + 1, 0.0);
  char* ws = reinterpret_cast<char*>(ws_storage.data());
  std::memset(ws, 0xFF, layout.total);  // poison: every part the kernels read must have been written
  auto* final_sums = reinterpret_cast<cgrpo::MetricSums<double>*>(ws + layout.final_sums);
  if (T == 0) {
    *final_sums = cgrpo::metric_sums_zero<double>();
    return policy_loss_metrics_from_copy(ws, metrics);
  }
  const PolicyLossArgs<Logit> args = make_policy_loss_args(config, batch, out, batch.layout.offsets, ws, layout);
  const float inv_temperature = args.params.inv_temperature;
  CGRPO_RETURN_IF_ERROR(dispatch_row_threads(V, [&](auto threads) -> cgrpo::Status {
    constexpr int kThreads = decltype(threads)::value;
    // block_row_gradient: every thread's share, then (the barrier) zeros and the flag on overflow.
    auto gradient = [&](int64_t t, const TokenStep& step) {
      if (!args.grad) return;
      bool overflow = false;
      for (int tid = 0; tid < kThreads; ++tid)
        overflow |= thread_row_gradient<Logit, kThreads>(args.logits + t * args.row_stride,
                                                         args.grad + t * args.grad_row_stride, V, args.target_ids[t],
                                                         step.softmax, step.a, step.b, inv_temperature, tid);
      if (!overflow) return;
      for (int tid = 0; tid < kThreads; ++tid)
        thread_row_fill_zero<Logit, kThreads>(args.grad + t * args.grad_row_stride, V, tid);
      gradient_overflow_row_end(args, t);
    };
    if (!sequence_ratio) {
      for (int64_t t = 0; t < T; ++t) {
        const RowSoftmax sm = emulate_block_row_softmax<Logit, kThreads>(args.logits + t * args.row_stride, V, inv_temperature);
        gradient(t, policy_loss_token_step<Logit, false>(args, t, sm));
      }
      return cgrpo::Status::success();
    }
    const TokenLogprobArgs<Logit> stats = gspo_stats_args(args);
    for (int64_t t = 0; t < T; ++t)
      token_logprobs_row_end(stats, t, emulate_block_row_softmax<Logit, kThreads>(args.logits + t * args.row_stride, V,
                                                                                  inv_temperature));
    for (int64_t i = 0; i < args.sequences.num_sequences; ++i) {
      double sum = 0, count = 0;
      for (int tid = 0; tid < kSequenceThreads; ++tid) {
        double s = 0, c = 0;
        thread_sequence_sums<kSequenceThreads>(args.rows, args.mask, args.kinds, args.old_logp, args.sequences.begin(i),
                                               args.sequences.end(i), tid, s, c);
        sum += s;
        count += c;
      }
      const_cast<float*>(args.seq_log_ratio)[i] = sequence_mean(sum, count);
    }
    for (int64_t t = 0; t < T; ++t) gradient(t, policy_loss_token_step<Logit, true>(args, t, RowSoftmax{}));
    return cgrpo::Status::success();
  }));
  // The two reduction stages.
  auto* token_sums = reinterpret_cast<cgrpo::MetricSums<double>*>(ws + layout.token_sums);
  auto* partial = reinterpret_cast<cgrpo::MetricSums<double>*>(ws + layout.partial_sums);
  const int64_t chunk = metric_reduce_chunk(T), blocks = (T + chunk - 1) / chunk;
  auto reduce_block = [](const cgrpo::MetricSums<double>* in, int64_t n, int64_t c, int64_t block) {
    cgrpo::MetricSums<double> acc = cgrpo::metric_sums_zero<double>();
    for (int tid = 0; tid < kReduceThreads; ++tid)
      acc = cgrpo::metric_sums_merge(acc, thread_metric_sums<kReduceThreads>(in, n, c, block, tid));
    return acc;
  };
  for (int64_t b = 0; b < blocks; ++b) partial[b] = reduce_block(token_sums, T, chunk, b);
  *final_sums = reduce_block(partial, blocks, blocks, 0);
  return policy_loss_metrics_from_copy(ws, metrics);
}

// cgrpo::cuda::token_logprobs (valid arguments) followed by token_logprobs_status, on the host.
template <typename Logit>
cgrpo::Status emulate_token_logprobs(const Logit* logits, int64_t T, int64_t V, int64_t row_stride, const int32_t* targets,
                                     double temperature, float* logp, float* entropy) {
  using namespace cgrpo::cuda;
  DeviceStatus status;
  std::memset(&status, 0xFF, sizeof(status));
  TokenLogprobArgs<Logit> args{};
  args.logits = logits;
  args.vocab_size = V;
  args.row_stride = row_stride == 0 ? V : row_stride;
  args.target_ids = targets;
  args.inv_temperature = static_cast<float>(1.0 / temperature);
  args.logp_out = logp;
  args.entropy_out = entropy;
  args.status = &status;
  CGRPO_RETURN_IF_ERROR(dispatch_row_threads(V, [&](auto threads) -> cgrpo::Status {
    constexpr int kThreads = decltype(threads)::value;
    for (int64_t t = 0; t < T; ++t)
      token_logprobs_row_end(args, t, emulate_block_row_softmax<Logit, kThreads>(logits + t * args.row_stride, V,
                                                                                 args.inv_temperature));
    return cgrpo::Status::success();
  }));
  return decode_device_status(status);
}

}  // namespace gpu_test
