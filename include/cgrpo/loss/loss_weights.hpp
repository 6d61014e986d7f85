// cgrpo/loss/loss_weights.hpp: one aggregation weight from counts, the rule aggregation_weights() and the
// fused losses' own weights share (CGRPO_HD), so that caller-built and loss-built weights agree.
#pragma once

#include "cgrpo/loss/config.hpp"
#include "cgrpo/base/macros.hpp"

namespace cgrpo {

// The batch-level denominators of one term, counted on that term's mask (or supplied by the
// caller for data parallelism: AggregationScale).
struct AggregationCounts {
  double tokens = 0;     // N: valid tokens
  double rows = 0;       // B: rows (every row, or only rows with a valid token: convention)
  double length = 0;     // L of seq-mean-token-sum-norm
};

// w_t of a valid token of a row holding `row_tokens` valid tokens (0 for a row without any).
//   token-mean:               1 / (N + token_mean_eps)
//   seq-mean-token-sum:       1 / B
//   seq-mean-token-mean:      1 / (B (n_i + row_count_eps))
//   seq-mean-token-sum-norm:  1 / L
// A zero denominator gives 0 (an empty batch contributes nothing; callers reject a zero B or L
// for a batch that has tokens).
CGRPO_HD double aggregation_weight(int mode, const AggregationConvention& conv, const AggregationCounts& c,
                                   double row_tokens) {
  double denominator = 0;
  switch (mode) {
    case static_cast<int>(Aggregation::token_mean): denominator = c.tokens + conv.token_mean_eps; break;
    case static_cast<int>(Aggregation::seq_mean_token_sum): denominator = c.rows; break;
    case static_cast<int>(Aggregation::seq_mean_token_mean):
      denominator = row_tokens > 0 ? c.rows * (row_tokens + conv.row_count_eps) : 0.0;
      break;
    case static_cast<int>(Aggregation::seq_mean_token_sum_norm): denominator = c.length; break;
    default: break;
  }
  return denominator > 0 ? 1.0 / denominator : 0.0;
}

}  // namespace cgrpo
