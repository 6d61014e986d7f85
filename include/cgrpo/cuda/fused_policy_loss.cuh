// cgrpo/cuda/fused_policy_loss.cuh: the host API of the CUDA policy loss (FlashInfer style: device
// pointers, sizes, strides, a stream, the config); asynchronous, returns a Status, never throws.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cgrpo/loss/config.hpp"
#include "cgrpo/loss/metrics.hpp"
#include "cgrpo/loss/policy_loss_batch.hpp"
#include "cgrpo/corrections/rollout_correction.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/cuda/batch_select.cuh"
#include "cgrpo/cuda/cuda_check.cuh"
#include "cgrpo/cuda/device_status.cuh"
#include "cgrpo/cuda/loss_metrics.cuh"
#include "cgrpo/cuda/loss_passes.cuh"
#include "cgrpo/cuda/policy_loss_kernels.cuh"
#include "cgrpo/cuda/workspace.cuh"

namespace cgrpo::cuda {

// Threads per row block: 128 for small rows, 512 from 8192 entries (V = 151936 bf16 is
// 18992 16-byte vectors: 37 per thread). Runtime V becomes a template parameter here.
template <typename Fn>
Status dispatch_row_threads(int64_t vocab, Fn&& launch) {
  if (vocab < 8192) return launch(std::integral_constant<int, 128>{});
  return launch(std::integral_constant<int, 512>{});
}

constexpr int kReduceThreads = 256;  // threads of each metric reduction block

// Tokens per block of the first reduction stage (at most kReduceBlocks blocks); depends on T only.
inline int64_t metric_reduce_chunk(int64_t num_tokens) { return (num_tokens + kReduceBlocks - 1) / kReduceBlocks; }

// The passes of the two-pass loss over per-token values only (no logits): the prepare pass, the
// rollout / sampler row passes, the batch pass, the row pass, the counts, the token pass and the row
// post-pass. Written for the fused loss, and for a caller that computes each token's softmax
// statistics itself (a chunked LM-head loss): it writes every token's StoredRow into args.stored,
// launches these, and finds a_t, b_t in args.grads. Filled from the loss's PassPlan (plan_passes).
struct PassLaunches {
  PassArgs args{};
  int64_t num_tokens = 0, num_rows = 0;
  bool rollout = false, sampler = false;            // row pre-passes
  bool entropy_select = false, cov_select = false;  // the batch pass
  bool row_pass = false, counts = false;
};

// Where the metric reductions read and write (both paths): per-token sums, per-row clip counts.
struct ReductionPlan {
  int64_t num_tokens = 0;
  DeviceSequences rows;
  MetricSums<double>* token_sums = nullptr;
  MetricSums<double>* partial_sums = nullptr;
  RowClipSums* row_clip = nullptr;
  MetricsHeader* header = nullptr;
};

// Every launch of one call, decided and filled on the host (no CUDA call): launch_policy_loss runs
// it on a stream, tests/cuda/host_emulation.cuh runs the same kernels' code on the host.
template <typename Logit>
struct LossPlan {
  int64_t num_tokens = 0;
  bool two_pass = false;
  bool write_grad = false;
  bool uncoupled_outputs = false;
  char* ws = nullptr;
  WorkspaceLayout layout;
  MetricsInfo info{};
  DeviceSequences rows;  // the rows the row kernels see (at least one when T > 0)
  PolicyLossArgs<Logit> fused{};
  TokenLogprobArgs<Logit> stats{};
  StoredGradientArgs<Logit> gradient{};
  PassLaunches passes;
  ReductionPlan reductions;
  UncoupledOutputs outputs{};

  MetricsHeader* header() const { return reinterpret_cast<MetricsHeader*>(ws + layout.header); }
  MetricSums<double>* token_sums() const { return reinterpret_cast<MetricSums<double>*>(ws + layout.token_sums); }
};

namespace detail {

// The rows the row kernels see, as cpu::per_token_pass takes them: the layout when the plan needs
// it or the caller gave a valid one (TRL's per-row clip metrics read it), else one row of every token.
template <typename Logit>
bool has_layout(const PassPlan& plan, const PolicyLossBatch<Logit, float>& batch) {
  const int64_t T = batch.num_tokens;
  const SequenceLayout& L = batch.layout;
  return L.num_sequences > 0 && ((T > 0 && plan.needs_layout) || L.validate(T).ok());
}

template <typename Logit>
Status plan_rows(const PassPlan& plan, const PolicyLossBatch<Logit, float>& batch, const int64_t* device_offsets,
                 DeviceSequences* out) {
  const int64_t T = batch.num_tokens;
  const SequenceLayout& L = batch.layout;
  const bool have_layout = has_layout(plan, batch);
  if (have_layout && plan.needs_layout && L.offsets && !device_offsets && T > 0)
    return make_error(StatusCode::invalid_argument,
                      "this config reads batch.layout (row-level features or computed weights): a packed layout needs "
                      "device_sequence_offsets (layout.offsets on the device)");
  DeviceSequences rows;
  if (have_layout && !L.offsets) {
    rows = DeviceSequences{L.num_sequences, nullptr, L.padded_length};
  } else if (have_layout && T == 0) {
    rows = DeviceSequences{L.num_sequences, nullptr, 0};  // every row empty
  } else if (have_layout && device_offsets) {
    rows = DeviceSequences{L.num_sequences, device_offsets, 0};
  } else if (T > 0) {
    // No layout, or a packed one the kernels cannot see (offsets on the host only) in a config that
    // does not need it: one row of every token (the per-row clip metrics are then the batch's).
    rows = DeviceSequences{1, nullptr, T};
  }
  *out = rows;
  return Status::success();
}

// What the finalize step needs to know of the config (the metric families that are on).
inline MetricsInfo metrics_info(const LossConfig& config, const PassPlan& plan, int64_t num_rows) {
  MetricsInfo info{};
  info.metric_mean_eps = config.metrics.mean_eps;
  info.num_rows = num_rows;
  info.rollout_on = plan.rollout;
  info.batch_normalize = config.off_policy.rollout.is_level != RolloutIsLevel::none &&
                         config.off_policy.rollout.is_batch_normalize;
  info.sampler_on = traits_of(config.off_policy.sampler.mode).on;
  info.vespo = config.term().row_weight;
  info.sequence_level = config.ratio.level == RatioLevel::sequence;  // TRL's per-row clip metrics
  info.rollout = rollout_params(config.off_policy.rollout);
  return info;
}

// The per-token arrays every kernel reads.
template <typename Logit>
TokenValueArrays token_value_arrays(const LossConfig& config, const PassPlan& plan,
                                    const PolicyLossBatch<Logit, float>& batch) {
  TokenValueArrays values{};
  values.mask = batch.mask;
  values.kinds = batch.kinds;
  values.selection = batch.selection;
  values.advantages = batch.advantages;
  values.pg_weights = batch.pg_weights;
  values.entropy_weights = batch.entropy_weights;
  values.kl_weights = batch.kl_weights;
  values.reference = ratio_reference(config, batch);
  values.rollout_logp = batch.rollout_logp;
  values.ref_logp = batch.ref_logp;
  values.reference_field = plan.ratio_vs_rollout ? kFieldRolloutLogp : kFieldOldLogp;
  values.kl_on = config.kl_on();
  values.check_rollout = plan.checks_rollout_logp;
  return values;
}

// The row kernels' arguments: the fused kernel, the statistics kernel and the gradient kernel.
template <typename Logit>
void fill_row_kernel_args(const PolicyLossBatch<Logit, float>& batch, const PolicyLossOutputs<Logit, float>& out,
                          const TokenValueArrays& values, const TokenLossParams<float>& params, LossPlan<Logit>& p) {
  const WorkspaceLayout& layout = p.layout;
  char* ws = p.ws;
  DeviceStatus* status = &p.header()->status;
  auto* token_sums = p.token_sums();
  auto* stored = reinterpret_cast<StoredRow*>(ws + layout.rows);
  auto* grads = reinterpret_cast<TokenGrad*>(ws + layout.grads);

  PolicyLossArgs<Logit>& f = p.fused;
  f.logits = batch.logits;
  f.vocab_size = batch.vocab_size;
  f.row_stride = batch.stride();
  f.grad = out.grad_logits;
  f.grad_row_stride = out.grad_row_stride == 0 ? batch.stride() : out.grad_row_stride;
  f.target_ids = batch.target_ids;
  f.values = values;
  f.logp_out = out.logp;
  f.entropy_out = out.entropy;
  f.params = params;
  f.token_sums = token_sums;
  f.status = status;

  TokenLogprobArgs<Logit>& s = p.stats;
  s.logits = batch.logits;
  s.vocab_size = batch.vocab_size;
  s.row_stride = batch.stride();
  s.target_ids = batch.target_ids;
  s.inv_temperature = params.inv_temperature;
  s.rows = stored;
  s.status = status;

  StoredGradientArgs<Logit>& g = p.gradient;
  g.logits = batch.logits;
  g.vocab_size = batch.vocab_size;
  g.row_stride = batch.stride();
  g.grad = out.grad_logits;
  g.grad_row_stride = f.grad_row_stride;
  g.target_ids = batch.target_ids;
  g.inv_temperature = params.inv_temperature;
  g.rows = stored;
  g.grads = grads;
  g.token_sums = token_sums;
  g.status = status;
}

// The passes over per-token values: where each reads and writes in the workspace, what runs.
template <typename Logit>
void fill_pass_args(const LossConfig& config, const PassPlan& plan, const PolicyLossBatch<Logit, float>& batch,
                    const PolicyLossOutputs<Logit, float>& out, const TokenValueArrays& values,
                    const TokenLossParams<float>& params, LossPlan<Logit>& p) {
  const WorkspaceLayout& layout = p.layout;
  char* ws = p.ws;
  const int64_t T = batch.num_tokens;
  PassArgs& a = p.passes.args;
  a.num_tokens = T;
  a.rows = p.rows;
  a.target_ids = batch.target_ids;
  a.values = values;
  a.logp_out = out.logp;
  a.entropy_out = out.entropy;
  a.policy_factor_out = out.policy_factor;
  a.terms_out = out.token_terms;
  a.header = p.header();
  a.stored = reinterpret_cast<StoredRow*>(ws + layout.rows);
  a.terms = reinterpret_cast<uint8_t*>(ws + layout.terms);
  a.factor = reinterpret_cast<double*>(ws + layout.factor);
  a.grads = reinterpret_cast<TokenGrad*>(ws + layout.grads);
  a.coupling = reinterpret_cast<float*>(ws + layout.coupling);
  a.token_sums = p.token_sums();
  a.context = reinterpret_cast<RowContext<float>*>(ws + layout.context);
  a.row_counts = reinterpret_cast<RowCounts*>(ws + layout.row_counts);
  a.batch_counts = reinterpret_cast<BatchCounts*>(ws + layout.batch_counts);
  if (layout.rollout_rows) a.rollout_rows = reinterpret_cast<RolloutBatchSums*>(ws + layout.rollout_rows);
  if (layout.sampler_rows) {
    a.sampler_rows = reinterpret_cast<SamplerRowPartial*>(ws + layout.sampler_rows);
    a.covered = reinterpret_cast<uint8_t*>(ws + layout.covered);
    auto* values_d = reinterpret_cast<double*>(ws + layout.sampler_values);
    const size_t n = static_cast<size_t>(T);
    a.logp_d = values_d;
    a.old_d = values_d + n;
    a.rollout_d = values_d + 2 * n;
    a.advantages_d = values_d + 3 * n;
  }
  a.rollout_on = plan.rollout;
  a.rollout_weight = plan.rollout_weight;
  a.rollout_bypass = plan.rollout_bypass;
  a.rollout_normalize = plan.rollout_normalize;
  a.rollout_scope = plan.rollout_scope;
  a.rollout_row_mean = plan.rollout_row_mean;
  a.sampler_pass = layout.sampler_rows != 0;
  a.selection_bits = plan.selection_bits;
  a.row_weight = config.term().row_weight;
  a.row_context = plan.row_context;
  a.computed_weights = plan.computed_weights;
  a.rollout = rollout_params(config.off_policy.rollout);
  const double layout_length =
      has_layout(plan, batch) ? static_cast<double>(batch.layout.max_length()) : static_cast<double>(T);
  for (int k = 0; k < 3; ++k) {
    const WeightRule& rule = plan.weights[k];
    a.weights[k] = TermWeightParams{static_cast<int>(rule.mode), rule.convention, batch.scale.token_count,
                                    batch.scale.sequence_count, batch.scale.nonempty_sequence_count,
                                    batch.scale.length > 0 ? batch.scale.length : layout_length};
  }
  a.entropy_mask = EntropyMaskParams{1.0 - config.entropy_mask.top_quantile, config.entropy_mask.count_all_tokens};
  a.selection = selection_params(config);
  a.row = row_pass_params(config);
  a.sampler = sampler_row_params(config);
  a.params = params;

  PassLaunches& pp = p.passes;
  pp.num_tokens = T;
  pp.num_rows = p.rows.num_sequences;
  pp.rollout = plan.rollout;
  pp.sampler = a.sampler_pass;
  pp.entropy_select = plan.entropy_select;
  pp.cov_select = plan.cov_select;
  pp.row_pass = plan.rollout_normalize || plan.rollout_row_mean || plan.row_context || plan.computed_weights;
  pp.counts = plan.computed_weights;
}

template <typename Logit>
void fill_reductions(LossPlan<Logit>& p) {
  ReductionPlan& r = p.reductions;
  r.num_tokens = p.num_tokens;
  r.rows = p.rows;
  r.token_sums = p.token_sums();
  r.partial_sums = reinterpret_cast<MetricSums<double>*>(p.ws + p.layout.partial_sums);
  r.row_clip = reinterpret_cast<RowClipSums*>(p.ws + p.layout.row_clip);
  r.header = p.header();
}

}  // namespace detail

// plan_policy_loss after validate_batch_shape: the GPU's own rules, then the launches. A chunked
// caller (the fused linear loss) validates its own call and plans with batch.logits = its chunk
// buffer and row_stride = the buffer's: the row kernels then run on rows [first_row, first_row + n)
// of it (launch_first_pass_rows, launch_gradient_rows). The steps: the loss's pass plan
// (plan_passes, shared with the CPU path), the rows, the workspace's parts, the row kernels'
// arguments, the passes' arguments, the reductions.
template <typename Logit>
Status plan_validated_policy_loss(const LossConfig& config, const PolicyLossBatch<Logit, float>& batch,
                                  const PolicyLossOutputs<Logit, float>& out, const int64_t* device_sequence_offsets,
                                  void* workspace, size_t workspace_bytes, LossPlan<Logit>* plan) {
  const int64_t T = batch.num_tokens;
  if (T >= (int64_t{1} << 31))
    return make_error(StatusCode::invalid_argument, "num_tokens must be < 2^31 on the GPU, got %lld",
                      static_cast<long long>(T));
  const WorkspaceLayout layout(T, batch.layout.num_sequences, workspace_needs(config));
  if (!workspace || workspace_bytes < layout.total)
    return make_error(StatusCode::invalid_argument, "workspace needs %zu bytes (fused_policy_loss_workspace_size), got %zu%s",
                      layout.total, workspace_bytes, workspace ? "" : " (null)");
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
    return make_error(StatusCode::invalid_argument, "workspace must be 16-byte aligned");
  const PassPlan passes = plan_passes(config, batch);
  DeviceSequences rows;
  CGRPO_RETURN_IF_ERROR(detail::plan_rows(passes, batch, device_sequence_offsets, &rows));

  LossPlan<Logit> p;
  p.num_tokens = T;
  p.ws = static_cast<char*>(workspace);
  p.layout = layout;
  p.rows = rows;
  p.write_grad = out.grad_logits != nullptr;
  p.two_pass = passes.any_prepass;
  p.info = detail::metrics_info(config, passes, rows.num_sequences);
  const TokenLossParams<float> params = token_params<float>(config);
  const TokenValueArrays values = detail::token_value_arrays(config, passes, batch);
  detail::fill_row_kernel_args(batch, out, values, params, p);
  p.outputs = UncoupledOutputs{T, batch.mask, out.policy_factor, out.token_terms};
  p.uncoupled_outputs = !p.two_pass && (out.policy_factor || out.token_terms);
  detail::fill_pass_args(config, passes, batch, out, values, params, p);
  detail::fill_reductions(p);
  *plan = p;
  return Status::success();
}

// Checks a call (the CPU path's validation and messages, then the GPU's own rules) and decides its
// launches. Reads no device memory; batch.layout.offsets is read on the host.
template <typename Logit>
Status plan_policy_loss(const LossConfig& config, const PolicyLossBatch<Logit, float>& batch,
                        const PolicyLossOutputs<Logit, float>& out, const int64_t* device_sequence_offsets,
                        void* workspace, size_t workspace_bytes, LossPlan<Logit>* plan) {
  CGRPO_RETURN_IF_ERROR(validate_batch_shape(config, batch, out));
  return plan_validated_policy_loss(config, batch, out, device_sequence_offsets, workspace, workspace_bytes, plan);
}

// Grid of a grid-stride per-token kernel.
inline unsigned token_grid(int64_t n) {
  const int64_t blocks = (n + kTokenThreads - 1) / kTokenThreads;
  return static_cast<unsigned>(blocks < 4096 ? blocks : 4096);
}

// One block reduces n per-row partials into *out.
template <typename In, typename Out, typename Convert, typename Merge>
Status launch_reduce_items(const In* in, int64_t n, Out identity, Convert convert, Merge merge, Out* out,
                           cudaStream_t stream) {
  reduce_items_kernel<kItemThreads><<<1, kItemThreads, 0, stream>>>(in, n, identity, convert, merge, out);
  CGRPO_CUDA_CHECK(cudaGetLastError());
  return Status::success();
}

// Enqueues the passes over per-token values, in the CPU path's order: prepare_tokens_kernel,
// [rollout_row_kernel, sampler_rows_kernel + their metric reductions], [batch_select_kernel],
// [row_pass_kernel, the counts' reduction], token_pass_kernel (with the row post-pass).
inline Status launch_token_passes(const PassLaunches& p, cudaStream_t stream) {
  const int64_t T = p.num_tokens, R = p.num_rows;
  const unsigned row_grid = static_cast<unsigned>(R);
  const PassArgs& a = p.args;
  if (T > 0) {
    prepare_tokens_kernel<<<token_grid(T), kTokenThreads, 0, stream>>>(a);
    CGRPO_CUDA_CHECK(cudaGetLastError());
  }
  if (R > 0 && p.rollout) {
    rollout_row_kernel<kRowThreads><<<row_grid, kRowThreads, 0, stream>>>(a);
    CGRPO_CUDA_CHECK(cudaGetLastError());
    CGRPO_RETURN_IF_ERROR(launch_reduce_items(a.rollout_rows, R, rollout_batch_sums_zero(), Identity{},
                                              RolloutBatchSumsMerge{}, &a.header->rollout, stream));
  }
  if (R > 0 && p.sampler) {
    sampler_rows_kernel<<<static_cast<unsigned>((R + kRowThreads - 1) / kRowThreads), kRowThreads, 0, stream>>>(a);
    CGRPO_CUDA_CHECK(cudaGetLastError());
    CGRPO_RETURN_IF_ERROR(launch_reduce_items(a.sampler_rows, R, sampler_row_partial_zero(), Identity{},
                                              SamplerRowPartialMerge{}, &a.header->sampler, stream));
  }
  if (T == 0) return Status::success();
  if (p.entropy_select || p.cov_select) {
    batch_select_kernel<kSelectThreads><<<1, kSelectThreads, 0, stream>>>(a, p.entropy_select, p.cov_select);
    CGRPO_CUDA_CHECK(cudaGetLastError());
  }
  if (p.row_pass) {
    row_pass_kernel<kRowThreads><<<row_grid, kRowThreads, 0, stream>>>(a);
    CGRPO_CUDA_CHECK(cudaGetLastError());
  }
  if (p.counts)
    CGRPO_RETURN_IF_ERROR(launch_reduce_items(a.row_counts, R, BatchCounts{}, RowCountsAsBatch{}, BatchCountsOfRows{},
                                              a.batch_counts, stream));
  token_pass_kernel<kRowThreads><<<row_grid, kRowThreads, 0, stream>>>(a);
  CGRPO_CUDA_CHECK(cudaGetLastError());
  return Status::success();
}

// Enqueues the metric reductions (both paths, after the gradient pass): the per-token sums in two
// fixed-split stages, then row_clip_kernel and its reduction.
inline Status launch_loss_reductions(const ReductionPlan& r, cudaStream_t stream) {
  const int64_t T = r.num_tokens, R = r.rows.num_sequences;
  if (T > 0) {
    const int64_t chunk = metric_reduce_chunk(T);
    const int64_t blocks = (T + chunk - 1) / chunk;
    reduce_metric_sums_kernel<kReduceThreads>
        <<<static_cast<unsigned>(blocks), kReduceThreads, 0, stream>>>(r.token_sums, T, chunk, r.partial_sums);
    CGRPO_CUDA_CHECK(cudaGetLastError());
    reduce_metric_sums_kernel<kReduceThreads><<<1, kReduceThreads, 0, stream>>>(r.partial_sums, blocks, blocks,
                                                                                &r.header->sums);
    CGRPO_CUDA_CHECK(cudaGetLastError());
  }
  if (R > 0) {
    row_clip_kernel<kRowThreads><<<static_cast<unsigned>(R), kRowThreads, 0, stream>>>(r.token_sums, r.rows, r.row_clip);
    CGRPO_CUDA_CHECK(cudaGetLastError());
    CGRPO_RETURN_IF_ERROR(launch_reduce_items(r.row_clip, R, row_clip_zero(), Identity{}, RowClipSumsMerge{},
                                              &r.header->row_clip, stream));
  }
  return Status::success();
}

// The row kernels' arguments for rows [first_row, first_row + n) of the batch, whose logits (and
// gradient) row 0 is the plan's logits (and grad) pointer: a chunk's buffer, or the whole batch
// at first_row = 0.
template <typename Logit>
PolicyLossArgs<Logit> fused_rows_args(const LossPlan<Logit>& p, int64_t first_row) {
  PolicyLossArgs<Logit> a = p.fused;
  a.first_row = first_row;
  return a;
}

template <typename Logit>
TokenLogprobArgs<Logit> stats_rows_args(const LossPlan<Logit>& p, int64_t first_row) {
  TokenLogprobArgs<Logit> a = p.stats;
  a.first_row = first_row;
  return a;
}

template <typename Logit>
StoredGradientArgs<Logit> gradient_rows_args(const LossPlan<Logit>& p, int64_t first_row) {
  StoredGradientArgs<Logit> a = p.gradient;
  a.first_row = first_row;
  return a;
}

// The first read of rows [first_row, first_row + n): policy_loss_kernel (one pass: loss, metric
// sums and, when the plan writes one, the gradient), or token_logprobs_kernel (two passes: each
// row's StoredRow).
template <typename Logit>
Status launch_first_pass_rows(const LossPlan<Logit>& p, int64_t first_row, int64_t n, cudaStream_t stream) {
  if (n <= 0) return Status::success();
  const unsigned grid = static_cast<unsigned>(n);
  return dispatch_row_threads(p.fused.vocab_size, [&](auto threads) -> Status {
    constexpr int kThreads = decltype(threads)::value;
    if (p.two_pass) {
      token_logprobs_kernel<Logit, kThreads><<<grid, kThreads, 0, stream>>>(stats_rows_args(p, first_row));
    } else if (p.write_grad) {
      policy_loss_kernel<Logit, kThreads, true><<<grid, kThreads, 0, stream>>>(fused_rows_args(p, first_row));
    } else {
      policy_loss_kernel<Logit, kThreads, false><<<grid, kThreads, 0, stream>>>(fused_rows_args(p, first_row));
    }
    CGRPO_CUDA_CHECK(cudaGetLastError());
    return Status::success();
  });
}

// The gradient pass of the two-pass loss over rows [first_row, first_row + n) (after
// launch_token_passes has written every token's a_t, b_t).
template <typename Logit>
Status launch_gradient_rows(const LossPlan<Logit>& p, int64_t first_row, int64_t n, cudaStream_t stream) {
  if (n <= 0) return Status::success();
  return dispatch_row_threads(p.fused.vocab_size, [&](auto threads) -> Status {
    constexpr int kThreads = decltype(threads)::value;
    stored_gradient_kernel<Logit, kThreads>
        <<<static_cast<unsigned>(n), kThreads, 0, stream>>>(gradient_rows_args(p, first_row));
    CGRPO_CUDA_CHECK(cudaGetLastError());
    return Status::success();
  });
}

// The first kernel of every call: status word and sums reset, finalize info.
template <typename Logit>
Status launch_call_begin(const LossPlan<Logit>& p, cudaStream_t stream) {
  begin_call_kernel<<<1, 32, 0, stream>>>(p.header(), p.info);
  CGRPO_CUDA_CHECK(cudaGetLastError());
  return Status::success();
}

// After every row's first pass of a one-pass plan: policy_factor / token_terms when asked for.
template <typename Logit>
Status launch_uncoupled_outputs(const LossPlan<Logit>& p, cudaStream_t stream) {
  if (!p.uncoupled_outputs || p.num_tokens == 0) return Status::success();
  uncoupled_outputs_kernel<<<token_grid(p.num_tokens), kTokenThreads, 0, stream>>>(p.outputs);
  CGRPO_CUDA_CHECK(cudaGetLastError());
  return Status::success();
}

// Enqueues a plan's kernels on `stream` (docs/architecture.md):
//   every call:    begin_call_kernel (status word and sums reset, finalize info)
//   single kernel: policy_loss_kernel (+ uncoupled_outputs_kernel)
//   two passes:    token_logprobs_kernel (StoredRow), launch_token_passes, stored_gradient_kernel
//   every call:    launch_loss_reductions
template <typename Logit>
Status launch_policy_loss(const LossPlan<Logit>& p, cudaStream_t stream) {
  const int64_t T = p.num_tokens;
  CGRPO_RETURN_IF_ERROR(launch_call_begin(p, stream));
  CGRPO_RETURN_IF_ERROR(launch_first_pass_rows(p, 0, T, stream));
  if (!p.two_pass) {
    CGRPO_RETURN_IF_ERROR(launch_uncoupled_outputs(p, stream));
  } else {
    CGRPO_RETURN_IF_ERROR(launch_token_passes(p.passes, stream));
    if (p.write_grad) CGRPO_RETURN_IF_ERROR(launch_gradient_rows(p, 0, T, stream));
  }
  return launch_loss_reductions(p.reductions, stream);
}

// The fused forward (+ backward) policy loss of MATH.md on the GPU, every mode the CPU path runs.
// Enqueues work on `stream` and returns; call policy_loss_metrics() to get the loss, the metrics
// and the device status.
//
//   batch:   every pointer is device memory (logits [T, row_stride] in Logit, per-token arrays
//            in float), except batch.layout.offsets which is read on the host by validation; the
//            kernels read `device_sequence_offsets` instead (the same array in device memory;
//            needed when the config reads a packed layout, nullptr for a padded one).
//   out:     grad_logits (device, Logit; == batch.logits for in place, nullptr for forward
//            only), logp / entropy / policy_factor (device float) and token_terms (device bytes),
//            optional. out.metrics must be non-null (the CPU contract) but is not written here:
//            policy_loss_metrics() writes the LossMetrics.
//   workspace: device memory, 16-byte aligned, >= fused_policy_loss_workspace_size() bytes.
//
// Validation on the host (validate_batch_shape: the CPU path's checks and messages) happens
// before anything is enqueued. Per-token values (target ids, mask, non-finite values and
// logits) are checked by the kernels: a bad token is flagged in the workspace's status word, its
// gradient written as zeros and its contributions left out (in every pre-pass it counts as
// padding); policy_loss_metrics() reports it.
//
// Kernels and bytes (include/cgrpo/cuda/README.md): a config without row or batch coupling and with the
// caller's weights runs one fused kernel per row block (one read of the logits from DRAM, the
// re-read mostly from L2); every other config reads the logits once for the statistics, runs the
// pre-passes over per-token values, then reads them again (from DRAM) for the gradient.
template <typename Logit>
Status fused_policy_loss(const LossConfig& config, const PolicyLossBatch<Logit, float>& batch,
                         const PolicyLossOutputs<Logit, float>& out, const int64_t* device_sequence_offsets,
                         void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  static_assert(std::is_same<Logit, float>::value || std::is_same<Logit, __half>::value ||
                    std::is_same<Logit, __nv_bfloat16>::value,
                "the CUDA path takes float, __half or __nv_bfloat16 logits");
  LossPlan<Logit> plan;
  CGRPO_RETURN_IF_ERROR(
      plan_policy_loss(config, batch, out, device_sequence_offsets, workspace, workspace_bytes, &plan));
  return launch_policy_loss(plan, stream);
}

// Decodes a host copy of the workspace's MetricsHeader (its first 1 KB).
inline Status policy_loss_metrics_from_copy(const char* host, LossMetrics* metrics) {
  MetricsHeader h;
  std::memcpy(static_cast<void*>(&h), host, sizeof(h));
  return finalize_metrics_header(h, metrics);
}

// Waits for `stream`, then copies the workspace's MetricsHeader (1 KB) back: a flagged row gives its
// error Status (metrics untouched); otherwise *metrics = the finalized sums of every metric family.
// The only call of the CUDA path that synchronizes.
inline Status policy_loss_metrics(const void* workspace, cudaStream_t stream, LossMetrics* metrics) {
  if (!workspace || !metrics)
    return make_error(StatusCode::invalid_argument, "policy_loss_metrics: workspace and metrics must not be null");
  alignas(256) char host[sizeof(MetricsHeader)];
  CGRPO_CUDA_CHECK(cudaMemcpyAsync(host, workspace, sizeof(MetricsHeader), cudaMemcpyDeviceToHost, stream));
  CGRPO_CUDA_CHECK(cudaStreamSynchronize(stream));
  return policy_loss_metrics_from_copy(host, metrics);
}

}  // namespace cgrpo::cuda
