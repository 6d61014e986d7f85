// kernels/workspace.cuh: where the policy loss keeps its O(T) scratch in the caller's device buffer.
// The caller asks for the size once (fused_policy_loss_workspace_size) and allocates it once.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cgrpo/config.hpp"
#include "cgrpo/metrics.hpp"
#include "kernels/device_status.cuh"

namespace cgrpo::cuda {

constexpr size_t kWorkspaceAlignment = 256;  // what cudaMalloc returns; every part starts on it
constexpr int kReduceBlocks = 64;            // first stage of the metric reduction

inline size_t align_up(size_t bytes) { return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment; }

// Byte offsets of each part. The status word and the final sums sit at fixed offsets so that
// policy_loss_metrics() needs nothing but the workspace pointer.
struct WorkspaceLayout {
  size_t status = 0;                             // DeviceStatus, 48 bytes
  size_t final_sums = kWorkspaceAlignment;       // MetricSums<double>, 136 bytes
  size_t partial_sums = 2 * kWorkspaceAlignment; // kReduceBlocks x 136 bytes
  size_t token_sums = 0;                         // T x 136 bytes
  size_t rows = 0;                               // GSPO: T x 16 bytes (StoredRow)
  size_t seq_log_ratio = 0;                      // GSPO: B x 4 bytes
  size_t total = 0;

  WorkspaceLayout(int64_t num_tokens, int64_t num_sequences, bool sequence_ratio) {
    static_assert(sizeof(DeviceStatus) <= kWorkspaceAlignment, "status word fits its slot");
    static_assert(sizeof(MetricSums<double>) <= kWorkspaceAlignment, "final sums fit their slot");
    const size_t T = num_tokens > 0 ? static_cast<size_t>(num_tokens) : 0;
    const size_t B = num_sequences > 0 ? static_cast<size_t>(num_sequences) : 0;
    token_sums = partial_sums + align_up(kReduceBlocks * sizeof(MetricSums<double>));
    size_t end = token_sums + align_up(T * sizeof(MetricSums<double>));
    if (sequence_ratio) {
      rows = end;
      end += align_up(T * 16);
      seq_log_ratio = end;
      end += align_up(B * sizeof(float));
    }
    total = end;
  }
};

// Bytes of device workspace fused_policy_loss needs for T tokens (and B sequences under GSPO):
// about 136 bytes per token (152 with GSPO) plus 8.7 KB; independent of V.
inline size_t fused_policy_loss_workspace_size(const LossConfig& config, int64_t num_tokens, int64_t num_sequences) {
  return WorkspaceLayout(num_tokens, num_sequences, config.ratio_level == RatioLevel::sequence_detached).total;
}

// token_logprobs needs only the status word.
inline size_t token_logprobs_workspace_size() { return kWorkspaceAlignment; }

}  // namespace cgrpo::cuda
