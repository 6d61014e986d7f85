// cgrpo/cuda/loss_passes.cuh: the pre-passes, the token pass and the row post-pass of the two-pass loss
// on the GPU (per-token values only, no logits): the CUDA side of cgrpo::cpu::per_token_pass.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cgrpo/corrections/rollout_correction.hpp"
#include "cgrpo/corrections/sampler_correction.hpp"
#include "cgrpo/loss/aggregation_modes.hpp"
#include "cgrpo/loss/config.hpp"
#include "cgrpo/loss/metrics.hpp"
#include "cgrpo/loss/pass_plan.hpp"
#include "cgrpo/loss/policy_loss_batch.hpp"
#include "cgrpo/loss/row_pass.hpp"
#include "cgrpo/loss/token_loss.hpp"
#include "cgrpo/cuda/block_row_ops.cuh"
#include "cgrpo/cuda/device_status.cuh"
#include "cgrpo/cuda/loss_metrics.cuh"
#include "cgrpo/cuda/policy_loss_kernels.cuh"
#include "cgrpo/cuda/workspace.cuh"

// Thread layouts. Per-token kernels: one thread per token (grid-stride). Row kernels: one block of
// kRowThreads per row (response); thread tid owns the row's tokens begin + tid, + kRowThreads, ...
// in every phase, so a thread only ever rewrites its own tokens and the phases of one kernel need
// no barrier but the reductions'; sums are per thread in token order, then cub::BlockReduce (a
// fixed tree): the same inputs give the same bits. The sampler pass runs TRL's per-row function
// (sampler_row) unchanged, one thread per row. Every per-thread piece is __host__ __device__ and
// takes the thread's index, so that tests/cuda/host_emulation.cuh runs them on the host.

namespace cgrpo::cuda {

constexpr int kTokenThreads = 256;  // per-token kernels
constexpr int kRowThreads = 128;    // row kernels (rows hold ~1e2-1e4 tokens)
constexpr int kItemThreads = 256;   // the one-block reductions over the rows' partials

// Bits of the workspace's per-token `terms` beside the TermBit bits the caller sees (outputs.token_terms
// gets the low five).
enum TokenState : uint8_t {
  kTokenLowEntropy = 32,  // TRL's entropy mask drops the token from the policy term (its factor is 0)
  kTokenInitial = 64,     // an initial (ratio-trained) token
  kTokenValid = 128,      // mask 1 and every value checked (a flagged token counts as padding)
};
constexpr uint8_t kCallerTermBits = kTermPolicy | kTermEntropy | kTermKl | kTermSelected | kTermEntropyCount;

// How one term's weights are formed when the loss computes them (aggregation_weight's inputs
// known on the host: the mode, the convention and the caller's global counts).
struct TermWeightParams {
  int mode;
  AggregationConvention conv;
  double scale_tokens, scale_rows, scale_nonempty_rows, length;  // batch.scale (0: from this batch);
                                                                 // length: L of the layout
};

// TRL's entropy mask in the batch pass.
struct EntropyMaskParams {
  double q;            // 1 - top_quantile
  bool count_all;      // the entropy term still divides by every valid token
};

// Everything the pre-pass, token-pass and post-pass kernels read and write (about 1.3 KB of kernel
// parameters, passed by value to each).
struct PassArgs {
  int64_t num_tokens;
  DeviceSequences rows;
  const int32_t* target_ids;
  TokenValueArrays values;
  // Caller outputs (optional).
  float* logp_out;
  float* entropy_out;
  float* policy_factor_out;
  uint8_t* terms_out;
  // Workspace.
  MetricsHeader* header;
  const StoredRow* stored;
  uint8_t* terms;
  double* factor;
  TokenGrad* grads;
  float* coupling;
  MetricSums<double>* token_sums;
  RowContext<float>* context;
  RowCounts* row_counts;
  BatchCounts* batch_counts;
  RolloutBatchSums* rollout_rows;
  SamplerRowPartial* sampler_rows;
  uint8_t* covered;                                   // sampler: valid initial tokens
  double *logp_d, *old_d, *rollout_d, *advantages_d;  // sampler: double copies at covered tokens
  // What runs.
  bool rollout_on;          // verl's rollout correction
  bool rollout_weight;      // its IS weight multiplies the policy loss (geo_mean: through the row's mean)
  bool rollout_bypass;      // d = log p - rollout (else old - rollout)
  bool rollout_normalize;   // divide the weights by their batch mean (is_batch_normalize)
  uint8_t rollout_scope;    // the terms a rejected token leaves
  bool rollout_row_mean;    // a row term takes its row's geometric mean of the IS weights (geo_mean)
  bool sampler_pass;        // TRL's sampler weight, OPSM or vespo
  bool selection_bits;      // a batch-selecting term with batch.selection: its tokens get kTermSelected
  bool row_weight;          // a row-weighted term (vespo): phi_i from the sampler pass
  bool row_context;         // the row pass forms a RowContext per row (PassPlan::row_context)
  bool computed_weights;
  RolloutParams rollout;
  TermWeightParams weights[3];  // policy, entropy, KL
  EntropyMaskParams entropy_mask;
  SelectionParams selection;    // the term's covariance selection (loss/row_pass.hpp)
  RowPassParams row;            // the row pass (loss/row_pass.hpp)
  SamplerRowParams sampler;     // sampler_row, as the CPU path calls it
  TokenLossParams<float> params;
};

CGRPO_ROW_HD bool is_initial_token(const PassArgs& a, int64_t t) { return !a.values.kinds || a.values.kinds[t] == kInitial; }

// Tokens the off-policy corrections cover: valid initial tokens.
CGRPO_ROW_HD bool covered_token(uint8_t terms) {
  return (terms & (kTokenValid | kTokenInitial)) == (kTokenValid | kTokenInitial);
}

// ---------------------------------------------------------------------------
// 1. Token preparation (one thread per token): the value checks of validate_batch_values (the
// statistics pass flagged bad ids and rows), each token's terms and factor, the log p / H outputs,
// and the sampler pass's double copies. 30-60 bytes per token.

CGRPO_ROW_HD void prepare_token(const PassArgs& a, int64_t t) {
  const StoredRow r = a.stored[t];
  const bool ok = token_values_ok(a.values, t, &a.header->status) && !isnan(r.max);
  const bool valid = ok && a.values.mask[t] == 1;
  const bool initial = is_initial_token(a, t);
  uint8_t bits = 0;
  if (valid) {
    bits = kTokenValid | kAllTerms | (initial ? kTokenInitial : 0);
    if (a.selection_bits && a.values.selection[t]) bits |= kTermSelected;
  }
  a.terms[t] = bits;
  a.factor[t] = valid ? 1.0 : 0.0;  // outputs.policy_factor is 0 at padding
  if (a.logp_out) a.logp_out[t] = r.logp;
  if (a.entropy_out) a.entropy_out[t] = r.entropy;
  if (a.sampler_pass) {
    const bool c = covered_token(bits);
    a.covered[t] = c ? 1 : 0;
    a.logp_d[t] = c ? static_cast<double>(r.logp) : 0.0;
    a.old_d[t] = c ? static_cast<double>(a.values.reference[t]) : 0.0;
    a.rollout_d[t] = c && a.values.rollout_logp ? static_cast<double>(a.values.rollout_logp[t]) : 0.0;
    a.advantages_d[t] = c ? static_cast<double>(a.values.advantages[t]) : 0.0;
  }
}

__global__ void __launch_bounds__(kTokenThreads) prepare_tokens_kernel(PassArgs a) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < a.num_tokens;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x)
    prepare_token(a, t);
}

// ---------------------------------------------------------------------------
// 2. verl's rollout correction, block = one row (rollout_correction.hpp's mergeable pieces):
// the row's sums over its covered tokens, then each token's weight and rejection, then the row's
// share of the batch's metric sums. ~12 bytes read and 9 written per covered token.

// d's two sides at token t: training (old_logp, or log p in bypass mode) and rollout.
CGRPO_ROW_HD double rollout_train(const PassArgs& a, int64_t t) {
  return a.rollout_bypass ? static_cast<double>(a.stored[t].logp) : static_cast<double>(a.values.reference[t]);
}
CGRPO_ROW_HD double rollout_value(const PassArgs& a, int64_t t) { return static_cast<double>(a.values.rollout_logp[t]); }

struct RolloutRowSumsMerge {
  CGRPO_ROW_HD RolloutRowSums operator()(const RolloutRowSums& x, const RolloutRowSums& y) const {
    return rollout_row_sums_merge(x, y);
  }
};

template <int THREADS>
CGRPO_ROW_HD RolloutRowSums rollout_thread_row_sums(const PassArgs& a, int64_t i, int tid) {
  RolloutRowSums s = rollout_row_sums_zero();
  for (int64_t t = a.rows.begin(i) + tid; t < a.rows.end(i); t += THREADS)
    if (covered_token(a.terms[t])) rollout_row_add(s, rollout_train(a, t), rollout_value(a, t));
  return s;
}

// A thread's share of the batch's metric sums and of the row's rejection tally.
struct RolloutThreadPart {
  RolloutBatchSums sums;
  RolloutRowTally tally;
};

struct RolloutThreadPartMerge {
  CGRPO_ROW_HD RolloutThreadPart operator()(const RolloutThreadPart& x, const RolloutThreadPart& y) const {
    RolloutThreadPart m;
    m.sums = rollout_batch_sums_merge(x.sums, y.sums);
    m.tally = rollout_row_tally_merge(x.tally, y.tally);
    return m;
  }
};

// Each covered token: its weight (multiplies the policy loss where rollout_weight) and its rejection
// (the token leaves rollout_scope's terms).
template <int THREADS>
CGRPO_ROW_HD RolloutThreadPart rollout_thread_tokens(const PassArgs& a, int64_t i, int tid, const RolloutRowValues& v) {
  RolloutThreadPart part{rollout_batch_sums_zero(), RolloutRowTally{}};
  for (int64_t t = a.rows.begin(i) + tid; t < a.rows.end(i); t += THREADS) {
    const uint8_t bits = a.terms[t];
    if (!covered_token(bits)) continue;
    const RolloutTokenValues tok = rollout_token(a.rollout, v, rollout_train(a, t), rollout_value(a, t));
    if (a.rollout_weight) a.factor[t] = tok.weight;
    if (tok.rejected_by) a.terms[t] = bits & static_cast<uint8_t>(~a.rollout_scope);
    rollout_batch_add_token(part.sums, a.rollout, tok, part.tally);
  }
  return part;
}

// Thread 0, once the row is reduced: the row's own terms of the metric sums.
CGRPO_ROW_HD void rollout_row_end(const PassArgs& a, int64_t i, const RolloutRowSums& s, const RolloutRowValues& v,
                                  RolloutThreadPart part) {
  rollout_batch_add_row(part.sums, a.rollout, s, v, part.tally);
  a.rollout_rows[i] = part.sums;
}

template <int THREADS>
__global__ void __launch_bounds__(THREADS) rollout_row_kernel(PassArgs a) {
  __shared__ union {
    typename cub::BlockReduce<RolloutRowSums, THREADS>::TempStorage row;
    typename cub::BlockReduce<RolloutThreadPart, THREADS>::TempStorage part;
  } storage;
  __shared__ RolloutRowSums row_sums;
  const int64_t i = blockIdx.x;
  const RolloutRowSums mine = rollout_thread_row_sums<THREADS>(a, i, threadIdx.x);
  const RolloutRowSums total = cub::BlockReduce<RolloutRowSums, THREADS>(storage.row).Reduce(mine, RolloutRowSumsMerge{});
  if (threadIdx.x == 0) row_sums = total;
  __syncthreads();
  const RolloutRowSums s = row_sums;
  const RolloutRowValues v = rollout_row_values(a.rollout, s);
  const RolloutThreadPart part = rollout_thread_tokens<THREADS>(a, i, threadIdx.x, v);
  const RolloutThreadPart merged = cub::BlockReduce<RolloutThreadPart, THREADS>(storage.part).Reduce(part, RolloutThreadPartMerge{});
  if (threadIdx.x == 0) rollout_row_end(a, i, s, v, merged);
}

// ---------------------------------------------------------------------------
// 3. TRL's sampler weight, OPSM and vespo's phi: sampler_row (sampler_correction.hpp) unchanged,
// one thread per row, over the double copies of the prepare pass. ~40 bytes per covered token.

CGRPO_ROW_HD void sampler_row_thread(const PassArgs& a, int64_t i) {
  const SamplerRowInputs in{a.rows.begin(i), a.rows.end(i), a.covered,   a.logp_d,
                            a.old_d,         a.values.rollout_logp ? a.rollout_d : nullptr, a.advantages_d};
  SamplerRowPartial p = sampler_row_partial_zero();
  const double phi = sampler_row(a.sampler, in, a.factor, SamplerArrays{}, i, p.partial);
  p.phi = a.row_weight ? phi : 0.0;
  a.sampler_rows[i] = p;
}

__global__ void __launch_bounds__(kRowThreads) sampler_rows_kernel(PassArgs a) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < a.rows.num_sequences) sampler_row_thread(a, i);
}

// ---------------------------------------------------------------------------
// 4. The row pass, block = one row, after the batch pass (batch_select.cuh): the batch-normalised IS
// weights, a row term's geometric mean of them, the row context (loss/row_pass.hpp: sequence log
// ratios, a row term's q_i, vespo's phi) and each term's count for the computed weights. ~20 bytes
// per token.

struct RowPassSumsMerge {
  CGRPO_ROW_HD RowPassSums operator()(const RowPassSums& x, const RowPassSums& y) const { return row_pass_merge(x, y); }
};

// Which bit each term's denominator counts (k: 0 policy, 1 entropy, 2 KL), and which bit puts a
// token in its numerator: they differ for the entropy term only (TRL's entropy_count_all_tokens).
CGRPO_ROW_HD uint8_t count_bit(int k) { return k == 0 ? kTermPolicy : (k == 1 ? kTermEntropyCount : kTermKl); }
CGRPO_ROW_HD uint8_t numerator_bit(int k) { return k == 0 ? kTermPolicy : (k == 1 ? kTermEntropy : kTermKl); }

template <int THREADS>
CGRPO_ROW_HD RowPassSums row_pass_thread(const PassArgs& a, int64_t i, int tid, double norm) {
  RowPassSums s = row_pass_sums_zero();
  for (int64_t t = a.rows.begin(i) + tid; t < a.rows.end(i); t += THREADS) {
    const uint8_t bits = a.terms[t];
    if (!(bits & kTokenValid)) continue;
    const bool cov = covered_token(bits);
    if (cov && a.rollout_normalize) a.factor[t] /= norm;
    for (int k = 0; k < 3; ++k) s.count[k] += (bits & count_bit(k)) ? 1.0 : 0.0;
    if (!cov || !(bits & kTermPolicy)) continue;
    if (a.rollout_row_mean) row_pass_add_is_weight(s, a.factor[t]);
    const double x = static_cast<double>(a.stored[t].logp) - static_cast<double>(a.values.reference[t]);
    row_pass_add_token(s, x, static_cast<double>(a.values.advantages[t]), a.row);
  }
  return s;
}

// A row term: every covered token of the row takes the row's geometric mean of its kept tokens' weights.
template <int THREADS>
CGRPO_ROW_HD void row_pass_geo_factor(const PassArgs& a, int64_t i, int tid, double g) {
  for (int64_t t = a.rows.begin(i) + tid; t < a.rows.end(i); t += THREADS)
    if (covered_token(a.terms[t])) a.factor[t] = g;
}

// Thread 0: the row's context and counts, as cpu::per_token_pass's row pass forms them.
CGRPO_ROW_HD void row_pass_end(const PassArgs& a, int64_t i, const RowPassSums& s) {
  const RowContext<double> c = row_pass_context(s, a.row, a.row_weight ? a.sampler_rows[i].phi : 0.0);
  a.context[i] = RowContext<float>{static_cast<float>(c.log_ratio), static_cast<float>(c.coupling),
                                   static_cast<float>(c.advantage), static_cast<float>(c.weight)};
  a.row_counts[i] = RowCounts{{s.count[0], s.count[1], s.count[2]}};
}

// The divisor of is_batch_normalize, from the reduced rollout sums (1 when off).
CGRPO_ROW_HD double rollout_norm(const PassArgs& a) {
  return a.rollout_normalize ? rollout_batch_norm_factor(a.header->rollout, a.rollout) : 1.0;
}

template <int THREADS>
__global__ void __launch_bounds__(THREADS) row_pass_kernel(PassArgs a) {
  __shared__ typename cub::BlockReduce<RowPassSums, THREADS>::TempStorage storage;
  __shared__ RowPassSums row_sums;
  const int64_t i = blockIdx.x;
  const RowPassSums mine = row_pass_thread<THREADS>(a, i, threadIdx.x, rollout_norm(a));
  const RowPassSums total = cub::BlockReduce<RowPassSums, THREADS>(storage).Reduce(mine, RowPassSumsMerge{});
  if (threadIdx.x == 0) {
    row_sums = total;
    row_pass_end(a, i, total);
  }
  if (!a.rollout_row_mean) return;
  __syncthreads();
  row_pass_geo_factor<THREADS>(a, i, threadIdx.x, row_is_weight_mean(row_sums));
}

// ---------------------------------------------------------------------------
// 5. The token pass and the row post-pass, block = one row: cgrpo::token_loss<float> per token
// (the CPU path's function), its MetricSums<double>, a_t, b_t and dq_i/dlogp_t into the workspace;
// G_i = sum_t dJ/dq_i reduced over the row; then a_t += dq_i/dlogp_t G_i, and a non-finite a_t or
// b_t flagged (the token's gradient zeros, its sums taken back). ~190 bytes per token.

// The computed weights of row i: aggregation_weight from the batch's counts and the row's.
struct RowWeights {
  float w[3];
};

CGRPO_ROW_HD RowWeights row_weights(const PassArgs& a, int64_t i) {
  RowWeights r{{0.0f, 0.0f, 0.0f}};
  if (!a.computed_weights) return r;
  const BatchCounts& b = *a.batch_counts;
  const double num_rows = static_cast<double>(a.rows.num_sequences);
  for (int k = 0; k < 3; ++k) {
    const TermWeightParams& p = a.weights[k];
    AggregationCounts c;
    // The response mask's count is the KL term's (kTermResponseMask).
    c.tokens = p.scale_tokens > 0 ? p.scale_tokens : b.tokens[p.conv.token_count_from_response_mask ? 2 : k];
    c.rows = p.conv.count_empty_rows ? (p.scale_rows > 0 ? p.scale_rows : num_rows)
                                     : (p.scale_nonempty_rows > 0 ? p.scale_nonempty_rows : b.nonempty[k]);
    c.length = p.length;
    r.w[k] = static_cast<float>(aggregation_weight(p.mode, p.conv, c, a.row_counts[i].n[k]));
  }
  return r;
}

// Token t's inputs to token_loss (as cpu::per_token_pass builds them); in.valid false for padding
// and flagged tokens, whose other values are never read.
CGRPO_ROW_HD TokenInputs<float> pass_token_inputs(const PassArgs& a, int64_t i, int64_t t, const RowWeights& w,
                                                  float& factor) {
  TokenInputs<float> in{};
  const uint8_t bits = a.terms[t];
  factor = 0.0f;
  in.valid = (bits & kTokenValid) != 0;
  if (!in.valid) return in;
  const StoredRow r = a.stored[t];
  const TokenValueArrays& v = a.values;
  factor = (bits & kTokenLowEntropy) ? 0.0f : static_cast<float>(a.factor[t]);
  in.in_pg = (bits & kTermPolicy) != 0;
  in.refinement = !(bits & kTokenInitial);
  in.selected = (bits & kTermSelected) != 0;
  in.logp = r.logp;
  in.entropy = r.entropy;
  in.old_logp = in.refinement ? 0.0f : v.reference[t];
  in.ref_logp = v.kl_on ? v.ref_logp[t] : 0.0f;
  in.advantage = v.advantages[t];
  if (a.computed_weights) {
    in.w_pg = (bits & numerator_bit(0)) ? w.w[0] : 0.0f;
    in.w_entropy = (bits & numerator_bit(1)) ? w.w[1] : 0.0f;
    in.w_kl = v.kl_on && (bits & numerator_bit(2)) ? w.w[2] : 0.0f;
  } else {
    in.w_pg = v.pg_weights[t];
    in.w_entropy = v.entropy_weights ? v.entropy_weights[t] : 0.0f;
    in.w_kl = v.kl_on ? v.kl_weights[t] : 0.0f;
  }
  in.pg_factor = factor;
  if (a.row_context) in.row = a.context[i];
  return in;
}

// Thread tid's tokens of row i; returns its share of G_i (in double, token order).
template <int THREADS>
CGRPO_ROW_HD double token_pass_thread(const PassArgs& a, int64_t i, int tid, const RowWeights& w) {
  double row_grad = 0.0;
  for (int64_t t = a.rows.begin(i) + tid; t < a.rows.end(i); t += THREADS) {
    float factor;
    const TokenInputs<float> in = pass_token_inputs(a, i, t, w, factor);
    const TokenResult<float> res = token_loss(in, a.params);
    MetricSums<double> sums = metric_sums_zero<double>();
    metric_sums_add(sums, in, res, a.params);
    a.token_sums[t] = sums;
    a.grads[t] = TokenGrad{res.dJ_dlogp, res.dJ_dentropy};
    a.coupling[t] = res.row_coupling;
    row_grad += static_cast<double>(res.row_grad);
    if (a.policy_factor_out) a.policy_factor_out[t] = factor;
    if (a.terms_out) a.terms_out[t] = a.terms[t] & kCallerTermBits;
  }
  return row_grad;
}

// The row post-pass for thread tid's tokens, and the check that a_t and b_t are finite.
template <int THREADS>
CGRPO_ROW_HD void token_post_thread(const PassArgs& a, int64_t i, int tid, double row_grad) {
  for (int64_t t = a.rows.begin(i) + tid; t < a.rows.end(i); t += THREADS) {
    TokenGrad g = a.grads[t];
    if (row_grad != 0.0) g.a = static_cast<float>(static_cast<double>(g.a) + static_cast<double>(a.coupling[t]) * row_grad);
    if (!isfinite(g.a) || !isfinite(g.b)) {
      flag_row(&a.header->status, kNonFiniteTokenGrad, t, 0u);
      g = TokenGrad{0.0f, 0.0f};
      a.token_sums[t] = metric_sums_zero<double>();
    }
    a.grads[t] = g;
  }
}

template <int THREADS>
__global__ void __launch_bounds__(THREADS) token_pass_kernel(PassArgs a) {
  __shared__ typename cub::BlockReduce<double, THREADS>::TempStorage storage;
  __shared__ double row_grad;
  const int64_t i = blockIdx.x;
  const double mine = token_pass_thread<THREADS>(a, i, threadIdx.x, row_weights(a, i));
  const double total = cub::BlockReduce<double, THREADS>(storage).Sum(mine);
  if (threadIdx.x == 0) row_grad = total;
  __syncthreads();
  token_post_thread<THREADS>(a, i, threadIdx.x, row_grad);
}

// ---------------------------------------------------------------------------
// TRL's per-row clip metrics, block = one row (both paths, after the gradient pass so that a row
// whose gradient overflowed is left out as in every other sum): each row's count of valid initial
// policy tokens and of their below / above flags, from the per-token MetricSums. 24 bytes per token.

struct RowClipCounts {
  double count, below, above;
};

struct RowClipCountsSum {
  CGRPO_ROW_HD RowClipCounts operator()(const RowClipCounts& x, const RowClipCounts& y) const {
    return RowClipCounts{x.count + y.count, x.below + y.below, x.above + y.above};
  }
};

template <int THREADS>
CGRPO_ROW_HD RowClipCounts row_clip_thread(const MetricSums<double>* sums, const DeviceSequences& rows, int64_t i,
                                           int tid) {
  RowClipCounts c{0.0, 0.0, 0.0};
  for (int64_t t = rows.begin(i) + tid; t < rows.end(i); t += THREADS) {
    c.count += sums[t].initial;
    c.below += sums[t].ratio_below;
    c.above += sums[t].ratio_above;
  }
  return c;
}

template <int THREADS>
__global__ void __launch_bounds__(THREADS)
    row_clip_kernel(const MetricSums<double>* sums, DeviceSequences rows, RowClipSums* out) {
  __shared__ typename cub::BlockReduce<RowClipCounts, THREADS>::TempStorage storage;
  const int64_t i = blockIdx.x;
  const RowClipCounts mine = row_clip_thread<THREADS>(sums, rows, i, threadIdx.x);
  const RowClipCounts c = cub::BlockReduce<RowClipCounts, THREADS>(storage).Reduce(mine, RowClipCountsSum{});
  if (threadIdx.x == 0) out[i] = row_clip_of_row(c.count, c.below, c.above);
}

// ---------------------------------------------------------------------------
// One block reduces n per-row partials into one (thread tid merges items tid, tid + THREADS, ... in
// index order, then cub::BlockReduce): the rollout and sampler metric sums, the computed weights'
// counts, the row clip metrics. B is ~1e2-1e4, so one block is enough.

struct RolloutBatchSumsMerge {
  CGRPO_ROW_HD RolloutBatchSums operator()(const RolloutBatchSums& x, const RolloutBatchSums& y) const {
    return rollout_batch_sums_merge(x, y);
  }
};
struct SamplerRowPartialMerge {
  CGRPO_ROW_HD SamplerRowPartial operator()(const SamplerRowPartial& x, const SamplerRowPartial& y) const {
    return sampler_row_partial_merge(x, y);
  }
};
struct RowClipSumsMerge {
  CGRPO_ROW_HD RowClipSums operator()(const RowClipSums& x, const RowClipSums& y) const { return row_clip_merge(x, y); }
};
// Row counts into the batch's: tokens summed, rows with a token counted.
struct BatchCountsOfRows {
  CGRPO_ROW_HD BatchCounts operator()(const BatchCounts& x, const BatchCounts& y) const {
    BatchCounts s;
    for (int k = 0; k < 3; ++k) {
      s.tokens[k] = x.tokens[k] + y.tokens[k];
      s.nonempty[k] = x.nonempty[k] + y.nonempty[k];
    }
    return s;
  }
};
struct RowCountsAsBatch {
  CGRPO_ROW_HD BatchCounts operator()(const RowCounts& r) const {
    BatchCounts b;
    for (int k = 0; k < 3; ++k) {
      b.tokens[k] = r.n[k];
      b.nonempty[k] = r.n[k] > 0 ? 1.0 : 0.0;
    }
    return b;
  }
};
struct Identity {
  template <typename S>
  CGRPO_ROW_HD S operator()(const S& s) const {
    return s;
  }
};

template <int THREADS, typename In, typename Out, typename Convert, typename Merge>
CGRPO_ROW_HD Out thread_reduce_items(const In* in, int64_t n, Out identity, Convert convert, Merge merge, int tid) {
  Out acc = identity;
  for (int64_t j = tid; j < n; j += THREADS) acc = merge(acc, convert(in[j]));
  return acc;
}

template <int THREADS, typename In, typename Out, typename Convert, typename Merge>
__global__ void __launch_bounds__(THREADS)
    reduce_items_kernel(const In* in, int64_t n, Out identity, Convert convert, Merge merge, Out* out) {
  __shared__ typename cub::BlockReduce<Out, THREADS>::TempStorage storage;
  const Out mine = thread_reduce_items<THREADS>(in, n, identity, convert, merge, threadIdx.x);
  const Out total = cub::BlockReduce<Out, THREADS>(storage).Reduce(mine, merge);
  if (threadIdx.x == 0) *out = total;
}

// outputs.policy_factor / token_terms on the single-kernel path, where nothing changes them: 1 and
// every term at a valid token, 0 at padding. One thread per token.
struct UncoupledOutputs {
  int64_t num_tokens;
  const uint8_t* mask;
  float* policy_factor;  // optional
  uint8_t* terms;        // optional
};

CGRPO_ROW_HD void uncoupled_output_token(const UncoupledOutputs& o, int64_t t) {
  const bool valid = o.mask[t] == 1;
  if (o.policy_factor) o.policy_factor[t] = valid ? 1.0f : 0.0f;
  if (o.terms) o.terms[t] = valid ? kAllTerms : 0;
}

__global__ void __launch_bounds__(kTokenThreads) uncoupled_outputs_kernel(UncoupledOutputs o) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < o.num_tokens;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x)
    uncoupled_output_token(o, t);
}

// The first kernel of every call: the metrics header at its identity, the finalize info written.
__global__ void begin_call_kernel(MetricsHeader* header, MetricsInfo info) {
  if (threadIdx.x == 0 && blockIdx.x == 0) metrics_header_begin(header, info);
}

}  // namespace cgrpo::cuda
