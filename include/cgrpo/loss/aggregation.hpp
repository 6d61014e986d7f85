// cgrpo/loss/aggregation.hpp: loss aggregation modes turned into per-token weights.
// agg(x) = sum_t w_t x_t; the host computes w once, kernels never branch on a mode.
#pragma once

#include <cmath>
#include <cstdint>

#include "cgrpo/base/buffer_overlap.hpp"
#include "cgrpo/loss/config.hpp"
#include "cgrpo/base/layout.hpp"
#include "cgrpo/base/status.hpp"

namespace cgrpo {

// Threads: the functions here keep no state; calls may run at the same time (inputs may be
// shared, an output may not).

// Global quantities for data-parallel training and gradient accumulation. Each
// is used only by the modes that need it; a value of 0 means "take it from this
// batch"; a negative or non-finite value is an error. Supply the all-reduced value so that the summed gradient of the shards
// equals the gradient of the whole batch.
struct AggregationScale {
  double token_count = 0;     // token-mean: sum of the mask over the global batch
  double sequence_count = 0;  // seq-mean-*: B, the number of responses in the global batch
  double length = 0;          // seq-mean-token-sum-norm: L (max response length)
};

// Writes w_t for every token row of `layout`. mask[t] is 0 or 1. weights may not share memory
// with mask or the layout's offsets.
// token-mean adds 1e-8 to its divisor, exactly as verl's masked_mean.
template <typename Real>
Status aggregation_weights(Aggregation mode, const SequenceLayout& layout, const uint8_t* mask,
                           const AggregationScale& scale, Real* weights) {
  int64_t num_tokens = 0;
  CGRPO_RETURN_IF_ERROR(layout.count_tokens(&num_tokens));
  if (num_tokens > 0 && (!mask || !weights))
    return make_error(StatusCode::invalid_argument, "aggregation_weights: mask and weights must not be null");
  BufferTable table;
  table.input(array_span("mask", mask, num_tokens));
  table.input(layout.offsets_span());
  table.output(array_span("weights", weights, num_tokens));
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  for (double v : {scale.token_count, scale.sequence_count, scale.length})
    if (!std::isfinite(v) || v < 0)
      return make_error(StatusCode::invalid_argument,
                        "aggregation scale values must be finite and >= 0 (0: from this batch), got %g", v);

  switch (mode) {
    case Aggregation::token_mean: {
      double count = scale.token_count;
      if (count <= 0) {
        count = 0;
        for (int64_t t = 0; t < num_tokens; ++t) count += mask[t] ? 1.0 : 0.0;
      }
      const double w = 1.0 / (count + 1e-8);
      for (int64_t t = 0; t < num_tokens; ++t) weights[t] = mask[t] ? static_cast<Real>(w) : Real(0);
      return Status::success();
    }
    case Aggregation::seq_mean_token_sum:
    case Aggregation::seq_mean_token_mean: {
      const double b = scale.sequence_count > 0 ? scale.sequence_count : static_cast<double>(layout.num_sequences);
      if (b <= 0 && num_tokens > 0)
        return make_error(StatusCode::invalid_argument, "%s: the number of sequences is zero", to_string(mode));
      // The largest weight is 1 / B (a row of one token): a tiny scale.sequence_count overflows it.
      if (num_tokens > 0 && !std::isfinite(static_cast<double>(static_cast<Real>(1.0 / b))))
        return make_error(StatusCode::invalid_argument,
                          "%s: scale.sequence_count = %g is too small: the weights 1 / B overflow", to_string(mode), b);
      for (int64_t i = 0; i < layout.num_sequences; ++i) {
        double n = 1.0;
        if (mode == Aggregation::seq_mean_token_mean) {
          n = 0;
          for (int64_t t = layout.begin(i); t < layout.end(i); ++t) n += mask[t] ? 1.0 : 0.0;
        }
        const double w = n > 0 ? 1.0 / (b * n) : 0.0;
        for (int64_t t = layout.begin(i); t < layout.end(i); ++t) weights[t] = mask[t] ? static_cast<Real>(w) : Real(0);
      }
      return Status::success();
    }
    case Aggregation::seq_mean_token_sum_norm: {
      const double l = scale.length > 0 ? scale.length : static_cast<double>(layout.max_length());
      if (l <= 0 && num_tokens > 0)
        return make_error(StatusCode::invalid_argument, "seq-mean-token-sum-norm: the length normalizer L is zero");
      if (num_tokens > 0 && !std::isfinite(static_cast<double>(static_cast<Real>(1.0 / l))))
        return make_error(StatusCode::invalid_argument,
                          "seq-mean-token-sum-norm: scale.length = %g is too small: the weights 1 / L overflow", l);
      const double w = 1.0 / l;
      for (int64_t t = 0; t < num_tokens; ++t) weights[t] = mask[t] ? static_cast<Real>(w) : Real(0);
      return Status::success();
    }
  }
  return make_error(StatusCode::invalid_argument, "aggregation_weights: unknown mode %d", static_cast<int>(mode));
}

}  // namespace cgrpo
