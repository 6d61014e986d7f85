// cgrpo/cuda/workspace.cuh: where the policy loss keeps its O(T) scratch in the caller's device buffer.
// The caller asks for the size once per config and max sizes (fused_policy_loss_workspace_size).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cgrpo/loss/config.hpp"
#include "cgrpo/loss/metrics.hpp"
#include "cgrpo/loss/pass_plan.hpp"
#include "cgrpo/loss/token_loss.hpp"
#include "cgrpo/cuda/device_status.cuh"
#include "cgrpo/cuda/loss_metrics.cuh"

namespace cgrpo::cuda {

constexpr size_t kWorkspaceAlignment = 256;  // what cudaMalloc returns; every part starts on it
constexpr int kReduceBlocks = 64;            // first stage of the metric reduction

inline size_t align_up(size_t bytes) { return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment; }

// Softmax of one row kept between the statistics pass and the gradient pass: 16 bytes per row.
// max = NaN marks a row that was flagged (its gradient is zeros).
struct StoredRow {
  float max, log_sum, entropy, logp;
};

// a_t = dJ/dlogp_t and b_t = dJ/dH_t of one token, from the token pass to the gradient pass.
struct TokenGrad {
  float a, b;
};

// Per row: the tokens each term's denominator counts (policy, entropy, KL), for the computed weights.
struct RowCounts {
  double n[3];
};

// The batch's counts: tokens of each term, and rows holding at least one of them (verl's B+).
struct BatchCounts {
  double tokens[3], nonempty[3];
};

// The parts of the workspace a config touches beyond the single-kernel path.
struct WorkspaceNeeds {
  bool rollout = false;  // verl's rollout correction: a RolloutBatchSums per row
  bool sampler = false;  // TRL's sampler weight / OPSM / vespo: per-row partials and double copies
};

// From the config's pass plan (whatever the batch: the workspace is sized once per config).
inline WorkspaceNeeds workspace_needs(const LossConfig& c) {
  const PassPlan p = plan_passes(c, PassInputs{});
  WorkspaceNeeds n;
  n.rollout = p.rollout;
  n.sampler = p.sampler;
  return n;
}

// Byte offsets of each part. The MetricsHeader sits at offset 0 so that policy_loss_metrics()
// needs nothing but the workspace pointer. The two-pass parts (rows .. batch_counts) are always
// reserved: whether a call takes two passes depends on the batch too (computed weights).
struct WorkspaceLayout {
  size_t header = 0;                               // MetricsHeader, 1 KB
  size_t partial_sums = sizeof(MetricsHeader);     // kReduceBlocks x MetricSums<double>
  size_t token_sums = 0;                           // T x MetricSums<double> (136 bytes)
  size_t row_clip = 0;                             // R x RowClipSums
  size_t rows = 0;                                 // T x StoredRow
  size_t terms = 0;                                // T bytes: TermBit bits and kToken* state
  size_t factor = 0;                               // T x double: the policy factor
  size_t grads = 0;                                // T x TokenGrad
  size_t coupling = 0;                             // T x float: dq_i/dlogp_t
  size_t context = 0;                              // R x RowContext<float>
  size_t row_counts = 0;                           // R x RowCounts
  size_t batch_counts = 0;                         // BatchCounts
  size_t rollout_rows = 0;                         // rollout: R x RolloutBatchSums
  size_t sampler_rows = 0;                         // sampler: R x SamplerRowPartial
  size_t covered = 0;                              // sampler: T bytes
  size_t sampler_values = 0;                       // sampler: 4 x T doubles (logp, old, rollout, advantages)
  size_t total = 0;

  WorkspaceLayout() = default;
  // num_rows: the batch's sequences (at least 1 is reserved: a batch without a layout is one row).
  WorkspaceLayout(int64_t num_tokens, int64_t num_rows, WorkspaceNeeds needs) {
    static_assert(sizeof(MetricsHeader) % kWorkspaceAlignment == 0, "the header keeps the parts aligned");
    const size_t T = num_tokens > 0 ? static_cast<size_t>(num_tokens) : 0;
    const size_t R = num_rows > 1 ? static_cast<size_t>(num_rows) : 1;
    size_t end = partial_sums + align_up(kReduceBlocks * sizeof(MetricSums<double>));
    end = place(token_sums, end, T * sizeof(MetricSums<double>));
    end = place(row_clip, end, R * sizeof(RowClipSums));
    end = place(rows, end, T * sizeof(StoredRow));
    end = place(terms, end, T);
    end = place(factor, end, T * sizeof(double));
    end = place(grads, end, T * sizeof(TokenGrad));
    end = place(coupling, end, T * sizeof(float));
    end = place(context, end, R * sizeof(RowContext<float>));
    end = place(row_counts, end, R * sizeof(RowCounts));
    end = place(batch_counts, end, sizeof(BatchCounts));
    if (needs.rollout) end = place(rollout_rows, end, R * sizeof(RolloutBatchSums));
    if (needs.sampler) {
      end = place(sampler_rows, end, R * sizeof(SamplerRowPartial));
      end = place(covered, end, T);
      end = place(sampler_values, end, 4 * T * sizeof(double));
    }
    total = end;
  }

 private:
  // Puts a part of `bytes` at `end`; returns the next free offset.
  static size_t place(size_t& offset, size_t end, size_t bytes) {
    offset = end;
    return end + align_up(bytes);
  }
};

// Bytes of device workspace fused_policy_loss needs for up to T tokens and B sequences: about
// 173 bytes per token (206 with TRL's sampler weight, OPSM or vespo), 100 bytes per sequence (530
// with verl's rollout correction), plus 10 KB; independent of V. Query it once per config with
// the largest T and B, and allocate once.
inline size_t fused_policy_loss_workspace_size(const LossConfig& config, int64_t num_tokens, int64_t num_sequences) {
  return WorkspaceLayout(num_tokens, num_sequences, workspace_needs(config)).total;
}

// token_logprobs needs only the status word.
inline size_t token_logprobs_workspace_size() { return kWorkspaceAlignment; }

}  // namespace cgrpo::cuda
