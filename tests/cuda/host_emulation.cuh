// tests/cuda/host_emulation.cuh: the CUDA path run on the host, block by block and thread by thread,
// with the kernels' own per-row and per-token code; only the launches, CUB and the barriers are emulated.
#pragma once

#include <cstring>
#include <functional>
#include <vector>

#include "cgrpo/cuda/cgrpo_cuda.cuh"

namespace gpu_test {

// cub::BlockReduce emulated: every thread's part, merged as a tree (CUB merges in another fixed order).
template <int THREADS, typename Part, typename ThreadFn, typename Merge>
Part emulate_block_reduce(ThreadFn&& part_of_thread, Merge merge) {
  std::vector<Part> parts;
  parts.reserve(THREADS);
  for (int tid = 0; tid < THREADS; ++tid) parts.push_back(part_of_thread(tid));
  for (int width = 1; width < THREADS; width *= 2)
    for (int i = 0; i + width < THREADS; i += 2 * width) parts[i] = merge(parts[i], parts[i + width]);
  return parts[0];
}

// Every thread's share of sweep 1, merged as a tree.
template <typename Logit, int THREADS>
cgrpo::cuda::RowSoftmax emulate_block_row_softmax(const Logit* row, int64_t vocab, float inv_temperature) {
  const cgrpo::cuda::RowStatsMerge merge{inv_temperature};
  bool bad = false;
  const cgrpo::RowStats<float> total = emulate_block_reduce<THREADS, cgrpo::RowStats<float>>(
      [&](int tid) { return cgrpo::cuda::thread_row_stats<Logit, THREADS>(row, vocab, merge, tid, bad); }, merge);
  return cgrpo::cuda::row_softmax_from_stats(total, bad);
}

// block_select: the histogram passes, thread by thread, then thread 0's pick.
template <int THREADS, typename Keys>
cgrpo::cuda::SelectThreshold emulate_block_select(const Keys& keys, int64_t T, long long rank, int key_bits,
                                                  bool exact_value) {
  using namespace cgrpo::cuda;
  SelectState st;
  select_begin(st, rank);
  while (!st.done) {
    for (unsigned& h : st.hist) h = 0;
    for (int tid = 0; tid < THREADS; ++tid) select_histogram_thread<THREADS>(keys, T, st, key_bits, tid);
    select_pick(st, key_bits, exact_value);
  }
  return SelectThreshold{st.key_prefix, st.index_prefix};
}

// block_select_sums: the block's CovarianceSums (counts, and the sums of A and log p).
template <int THREADS>
cgrpo::CovarianceSums emulate_select_sums(const std::function<cgrpo::CovarianceSums(int)>& fn) {
  return emulate_block_reduce<THREADS, cgrpo::CovarianceSums>(fn, cgrpo::cuda::CovarianceSumsMerge{});
}

// batch_select_kernel, phase by phase: the entropy mask (PassPlan::entropy_select), then the term's
// covariance selection (PassPlan::cov_select).
inline void emulate_batch_select(const cgrpo::cuda::PassArgs& a, bool entropy_on, bool cov_on) {
  using namespace cgrpo::cuda;
  constexpr int N = kSelectThreads;
  const int64_t T = a.num_tokens;
  if (entropy_on) {
    const EntropyKeys keys{a.terms, a.stored};
    const double n = emulate_select_sums<N>([&](int tid) { return select_thread_count<N>(keys, T, tid); }).n;
    if (n > 0) {
      const QuantilePosition p = quantile_position(n, a.entropy_mask.q);
      const float v_lo = float_of_order_key(emulate_block_select<N>(keys, T, p.lo + 1, 32, true).key);
      const float v_hi = float_of_order_key(emulate_block_select<N>(keys, T, p.hi + 1, 32, true).key);
      const double q = quantile_value(p, v_lo, v_hi);
      for (int tid = 0; tid < N; ++tid) entropy_mark_thread<N>(a, q, tid);
    }
  }
  if (cov_on) {
    const CovKeys base{a.terms, a.stored, a.values.advantages, cgrpo::CovarianceMeans{0.0, 0.0}};
    const cgrpo::CovarianceSums s = emulate_select_sums<N>([&](int tid) { return cov_thread_sums<N>(base, T, tid); });
    if (s.n > 0) {
      const CovKeys keys = cov_keys(a, s);
      if (a.selection.selection == static_cast<int>(cgrpo::BatchSelection::top_covariance)) {
        const SelectThreshold th = emulate_block_select<N>(keys, T, cov_select_count(a, s.n, s.n), 64, false);
        for (int tid = 0; tid < N; ++tid) mark_selected_thread<N>(a, keys, th, tid);
      } else {
        const CandidateKeys cand{keys, a.values.reference, a.selection};
        const double nc = emulate_select_sums<N>([&](int tid) { return select_thread_count<N>(cand, T, tid); }).n;
        const long long m = cov_select_count(a, s.n, nc);
        if (m > 0) {
          const SelectThreshold th = emulate_block_select<N>(cand, T, m, 64, false);
          for (int tid = 0; tid < N; ++tid) mark_selected_thread<N>(a, cand, th, tid);
        }
      }
    }
  }
}

// reduce_items_kernel.
template <typename In, typename Out, typename Convert, typename Merge>
void emulate_reduce_items(const In* in, int64_t n, Out identity, Convert convert, Merge merge, Out* out) {
  constexpr int N = cgrpo::cuda::kItemThreads;
  *out = emulate_block_reduce<N, Out>(
      [&](int tid) { return cgrpo::cuda::thread_reduce_items<N>(in, n, identity, convert, merge, tid); }, merge);
}

// block_row_gradient over one row (logits and gradient rows given): every thread's share, then
// (the barrier) zeros and the flag on overflow.
template <typename Logit, int THREADS>
void emulate_block_row_gradient(int64_t t, const cgrpo::cuda::TokenStep& step, const Logit* row, Logit* grad_row,
                                int64_t V, int32_t target, float inv_temperature, cgrpo::cuda::DeviceStatus* status,
                                cgrpo::MetricSums<double>* token_sums) {
  using namespace cgrpo::cuda;
  bool overflow = false;
  for (int tid = 0; tid < THREADS; ++tid)
    overflow |= thread_row_gradient<Logit, THREADS>(row, grad_row, V, target, step.softmax, step.a, step.b,
                                                    inv_temperature, tid);
  if (!overflow) return;
  for (int tid = 0; tid < THREADS; ++tid) thread_row_fill_zero<Logit, THREADS>(grad_row, V, tid);
  gradient_overflow_row_end(status, token_sums, t, LogitTraits<Logit>::code, step.a, step.b);
}

// The row-block kernels over the logits: the fused kernel, or the statistics pass, or the stored
// gradient pass.
enum class RowPhase { first, gradient };

// One launch of them over batch rows [first_row, first_row + n), block b = batch row first_row + b
// at row b of the plan's logits (and gradient): launch_first_pass_rows / launch_gradient_rows.
template <typename Logit, int THREADS>
void emulate_logits_kernels(const cgrpo::cuda::LossPlan<Logit>& p, RowPhase phase, int64_t first_row, int64_t n) {
  using namespace cgrpo::cuda;
  const int64_t V = p.fused.vocab_size;
  DeviceStatus* status = &p.header()->status;
  if (phase == RowPhase::gradient) {
    const StoredGradientArgs<Logit> g = gradient_rows_args(p, first_row);
    for (int64_t b = 0; b < n; ++b) {
      const int64_t t = first_row + b;
      emulate_block_row_gradient<Logit, THREADS>(t, stored_token_step(g, t), g.logits + b * g.row_stride,
                                                 g.grad + b * g.grad_row_stride, V, g.target_ids[t], g.inv_temperature,
                                                 status, p.token_sums());
    }
    return;
  }
  if (!p.two_pass) {
    const PolicyLossArgs<Logit> f = fused_rows_args(p, first_row);
    const float inv_temperature = f.params.inv_temperature;
    for (int64_t b = 0; b < n; ++b) {
      const int64_t t = first_row + b;
      const Logit* row = f.logits + b * f.row_stride;
      const RowSoftmax sm = emulate_block_row_softmax<Logit, THREADS>(row, V, inv_temperature);
      const TokenStep step = policy_loss_token_step<Logit>(f, t, sm);
      if (p.write_grad)
        emulate_block_row_gradient<Logit, THREADS>(t, step, row, f.grad + b * f.grad_row_stride, V, f.target_ids[t],
                                                   inv_temperature, status, p.token_sums());
    }
    return;
  }
  const TokenLogprobArgs<Logit> s = stats_rows_args(p, first_row);
  for (int64_t b = 0; b < n; ++b)
    token_logprobs_row_end(s, first_row + b,
                           emulate_block_row_softmax<Logit, THREADS>(s.logits + b * s.row_stride, V, s.inv_temperature));
}

template <typename Logit>
void emulate_logits_pass(const cgrpo::cuda::LossPlan<Logit>& p, RowPhase phase, int64_t first_row, int64_t n) {
  if (p.fused.vocab_size < 8192) emulate_logits_kernels<Logit, 128>(p, phase, first_row, n);
  else emulate_logits_kernels<Logit, 512>(p, phase, first_row, n);
}

// uncoupled_outputs_kernel (launch_uncoupled_outputs).
template <typename Logit>
void emulate_uncoupled_outputs(const cgrpo::cuda::LossPlan<Logit>& p) {
  if (!p.uncoupled_outputs) return;
  for (int64_t t = 0; t < p.num_tokens; ++t) cgrpo::cuda::uncoupled_output_token(p.outputs, t);
}

// rollout_row_kernel, block by block. (The thread count is spelled out inside the lambdas: nvcc's
// front end substitutes a local constexpr there and the host compiler then reports it unused.)
inline void emulate_rollout_rows(const cgrpo::cuda::PassArgs& a, int64_t R) {
  using namespace cgrpo::cuda;
  for (int64_t i = 0; i < R; ++i) {
    const cgrpo::RolloutRowSums s = emulate_block_reduce<kRowThreads, cgrpo::RolloutRowSums>(
        [&](int tid) { return rollout_thread_row_sums<kRowThreads>(a, i, tid); }, RolloutRowSumsMerge{});
    const cgrpo::RolloutRowValues v = cgrpo::rollout_row_values(a.rollout, s);
    const RolloutThreadPart part = emulate_block_reduce<kRowThreads, RolloutThreadPart>(
        [&](int tid) { return rollout_thread_tokens<kRowThreads>(a, i, tid, v); }, RolloutThreadPartMerge{});
    rollout_row_end(a, i, s, v, part);
  }
}

// row_pass_kernel, block by block: the row's sums, thread 0's context and counts, then (a row term
// with verl's IS weights) every thread's tokens take the row's geometric mean of them.
inline void emulate_row_pass(const cgrpo::cuda::PassArgs& a, int64_t R) {
  using namespace cgrpo::cuda;
  constexpr int N = kRowThreads;
  const double norm = rollout_norm(a);
  for (int64_t i = 0; i < R; ++i) {
    const cgrpo::RowPassSums s = emulate_block_reduce<N, cgrpo::RowPassSums>(
        [&](int tid) { return row_pass_thread<N>(a, i, tid, norm); }, RowPassSumsMerge{});
    row_pass_end(a, i, s);
    if (!a.rollout_row_mean) continue;
    for (int tid = 0; tid < N; ++tid) row_pass_geo_factor<N>(a, i, tid, cgrpo::row_is_weight_mean(s));
  }
}

struct DoubleSum {
  double operator()(double x, double y) const { return x + y; }
};

// token_pass_kernel, block by block.
inline void emulate_token_pass(const cgrpo::cuda::PassArgs& a, int64_t R) {
  using namespace cgrpo::cuda;
  constexpr int N = kRowThreads;
  for (int64_t i = 0; i < R; ++i) {
    const RowWeights w = row_weights(a, i);
    const double g = emulate_block_reduce<N, double>([&](int tid) { return token_pass_thread<N>(a, i, tid, w); },
                                                     DoubleSum{});
    for (int tid = 0; tid < N; ++tid) token_post_thread<N>(a, i, tid, g);
  }
}

// launch_token_passes on the host.
inline void emulate_token_passes(const cgrpo::cuda::PassLaunches& p) {
  using namespace cgrpo::cuda;
  const int64_t T = p.num_tokens, R = p.num_rows;
  const PassArgs& a = p.args;
  for (int64_t t = 0; t < T; ++t) prepare_token(a, t);
  if (R > 0 && p.rollout) {
    emulate_rollout_rows(a, R);
    emulate_reduce_items(a.rollout_rows, R, cgrpo::rollout_batch_sums_zero(), Identity{}, RolloutBatchSumsMerge{},
                         &a.header->rollout);
  }
  if (R > 0 && p.sampler) {
    for (int64_t i = 0; i < R; ++i) sampler_row_thread(a, i);
    emulate_reduce_items(a.sampler_rows, R, sampler_row_partial_zero(), Identity{}, SamplerRowPartialMerge{},
                         &a.header->sampler);
  }
  if (T == 0) return;
  if (p.entropy_select || p.cov_select) emulate_batch_select(a, p.entropy_select, p.cov_select);
  if (p.row_pass) emulate_row_pass(a, R);
  if (p.counts) emulate_reduce_items(a.row_counts, R, BatchCounts{}, RowCountsAsBatch{}, BatchCountsOfRows{}, a.batch_counts);
  emulate_token_pass(a, R);
}

// One block of reduce_metric_sums_kernel: block `block` of chunk c over the n sums at in.
inline cgrpo::MetricSums<double> emulate_metric_sums_block(const cgrpo::MetricSums<double>* in, int64_t n, int64_t c,
                                                           int64_t block) {
  using namespace cgrpo::cuda;
  return emulate_block_reduce<kReduceThreads, cgrpo::MetricSums<double>>(
      [&](int tid) { return thread_metric_sums<kReduceThreads>(in, n, c, block, tid); }, MetricSumsMerge{});
}

// launch_loss_reductions on the host: the metric sums' two stages, then the row clip metrics.
inline void emulate_reductions(const cgrpo::cuda::ReductionPlan& r) {
  using namespace cgrpo::cuda;
  const int64_t T = r.num_tokens, R = r.rows.num_sequences;
  if (T > 0) {
    const int64_t chunk = metric_reduce_chunk(T), blocks = (T + chunk - 1) / chunk;
    for (int64_t b = 0; b < blocks; ++b) r.partial_sums[b] = emulate_metric_sums_block(r.token_sums, T, chunk, b);
    r.header->sums = emulate_metric_sums_block(r.partial_sums, blocks, blocks, 0);
  }
  if (R > 0) {
    for (int64_t i = 0; i < R; ++i) {
      const RowClipCounts c = emulate_block_reduce<kRowThreads, RowClipCounts>(
          [&](int tid) { return row_clip_thread<kRowThreads>(r.token_sums, r.rows, i, tid); }, RowClipCountsSum{});
      r.row_clip[i] = row_clip_of_row(c.count, c.below, c.above);
    }
    emulate_reduce_items(r.row_clip, R, row_clip_zero(), Identity{}, RowClipSumsMerge{}, &r.header->row_clip);
  }
}

// launch_policy_loss on the host, launch by launch in the same order.
template <typename Logit>
cgrpo::Status emulate_plan(const cgrpo::cuda::LossPlan<Logit>& p) {
  using namespace cgrpo::cuda;
  const int64_t T = p.num_tokens;
  metrics_header_begin(p.header(), p.info);
  emulate_logits_pass(p, RowPhase::first, 0, T);
  if (!p.two_pass) {
    emulate_uncoupled_outputs(p);
  } else {
    emulate_token_passes(p.passes);
    if (p.write_grad) emulate_logits_pass(p, RowPhase::gradient, 0, T);
  }
  emulate_reductions(p.reductions);
  return cgrpo::Status::success();
}

// A workspace in host memory, aligned as cudaMalloc aligns.
inline char* aligned_workspace(std::vector<char>& storage, size_t bytes) {
  storage.assign(bytes + cgrpo::cuda::kWorkspaceAlignment, static_cast<char>(0xFF));  // poison: every part read must be written
  const uintptr_t base = reinterpret_cast<uintptr_t>(storage.data());
  const uintptr_t a = cgrpo::cuda::kWorkspaceAlignment;
  return reinterpret_cast<char*>((base + a - 1) / a * a);
}

// cgrpo::cuda::fused_policy_loss followed by policy_loss_metrics, with every pointer in host
// memory (device_sequence_offsets = batch.layout.offsets) and the workspace in `ws_storage`.
template <typename Logit>
cgrpo::Status emulate_fused_policy_loss(const cgrpo::LossConfig& config, const cgrpo::PolicyLossBatch<Logit, float>& batch,
                                        const cgrpo::PolicyLossOutputs<Logit, float>& out,
                                        std::vector<char>& ws_storage, cgrpo::LossMetrics* metrics) {
  using namespace cgrpo::cuda;
  CGRPO_RETURN_IF_ERROR(cgrpo::validate_batch_shape(config, batch, out));
  const size_t bytes = fused_policy_loss_workspace_size(config, batch.num_tokens, batch.layout.num_sequences);
  char* ws = aligned_workspace(ws_storage, bytes);
  LossPlan<Logit> plan;
  CGRPO_RETURN_IF_ERROR(plan_policy_loss(config, batch, out, batch.layout.offsets, ws, bytes, &plan));
  CGRPO_RETURN_IF_ERROR(emulate_plan(plan));
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
