// cgrpo/loss/aggregation.hpp: a config's aggregation turned into per-token weights, by the rule the
// loss uses for its own weights, so that weights a caller builds and weights the loss builds agree.
#pragma once

#include <cmath>
#include <cstdint>

#include "cgrpo/base/buffer_overlap.hpp"
#include "cgrpo/base/layout.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/loss/aggregation_modes.hpp"
#include "cgrpo/loss/config.hpp"
#include "cgrpo/loss/pass_plan.hpp"

namespace cgrpo {

// Threads: the functions here keep no state; calls may run at the same time (inputs may be
// shared, an output may not).

// Global quantities for data-parallel training and gradient accumulation. Each is used only by
// the modes that need it; a value of 0 means "take it from this batch"; a negative or non-finite
// value is an error. Supply the all-reduced value so that the summed gradient of the shards
// equals the gradient of the whole batch.
struct AggregationScale {
  double token_count = 0;              // token-mean: sum of the mask over the global batch
  double sequence_count = 0;           // seq-mean-*: B, every response of the global batch (the rule
                                       // of the paper, TRL, GMPO's torch.mean)
  double length = 0;                   // seq-mean-token-sum-norm: L (max response length)
  double nonempty_sequence_count = 0;  // seq-mean-*: B+, the responses with a valid token (verl's
                                       // rule, AggregationConvention::count_empty_rows = false)
};

// The three terms a weight belongs to.
enum class LossTerm : int { policy = 0, entropy = 1, kl = 2 };

// Each value is a count (tokens, rows) or a length: 0 (from this batch) or at least 1. A value in
// (0, 1) would make weights of up to 1 / value (4e307 for 2e-308: found by fuzz_critique_stage),
// which the loss then refuses as an overflowing gradient; it is refused here, by name.
inline Status check_aggregation_scale(const AggregationScale& scale) {
  const struct {
    const char* name;
    double value;
  } fields[] = {{"token_count", scale.token_count},
                {"sequence_count", scale.sequence_count},
                {"nonempty_sequence_count", scale.nonempty_sequence_count},
                {"length", scale.length}};
  for (const auto& f : fields)
    if (!std::isfinite(f.value) || f.value < 0 || (f.value > 0 && f.value < 1))
      return make_error(StatusCode::invalid_argument,
                        "batch.scale.%s must be 0 (from this batch) or a finite count >= 1, got %g", f.name, f.value);
  return Status::success();
}

// The batch-level counts of one term from its rows' counts n_i (row_count(i)), its rule's
// convention and the caller's global counts: the one rule of every weight the library forms.
template <typename RowCount>
Status aggregation_counts(const WeightRule& rule, int64_t num_rows, RowCount&& row_count, double layout_length,
                          const AggregationScale& scale, AggregationCounts* out) {
  AggregationCounts counts;
  double nonempty = 0;
  for (int64_t i = 0; i < num_rows; ++i) {
    const double n = row_count(i);
    counts.tokens += n;
    nonempty += n > 0 ? 1.0 : 0.0;
  }
  const double local_tokens = counts.tokens;
  if (rule.convention.count_empty_rows)
    counts.rows = scale.sequence_count > 0 ? scale.sequence_count : static_cast<double>(num_rows);
  else
    counts.rows = scale.nonempty_sequence_count > 0 ? scale.nonempty_sequence_count : nonempty;
  counts.length = layout_length;
  if (scale.token_count > 0) counts.tokens = scale.token_count;
  if (scale.length > 0) counts.length = scale.length;
  // Only a batch that has a token of the term needs B (a shard of empty rows forms no weight).
  const AggregationTraits mode = traits_of(rule.mode);
  if (mode.uses_rows && counts.rows <= 0 && local_tokens > 0)
    return make_error(StatusCode::invalid_argument, "%s: the number of sequences is zero", mode.name);
  *out = counts;
  return Status::success();
}

// Writes w_t of `term` for every token row of `layout`, exactly as the fused loss forms its own
// weights for `config` (its mode, its convention, a term's fixed rule) when nothing inside the loss
// changes a mask. mask[t] is 0 or 1. weights may not share memory with mask or the layout's offsets.
// The modes that need L take layout.max_length() unless scale.length is given.
template <typename Real>
Status aggregation_weights(const LossConfig& config, LossTerm term, const SequenceLayout& layout, const uint8_t* mask,
                           const AggregationScale& scale, Real* weights) {
  CGRPO_RETURN_IF_ERROR(config.validate());
  if (static_cast<unsigned>(term) > 2u)
    return make_error(StatusCode::invalid_argument, "aggregation_weights: unknown term %d", static_cast<int>(term));
  int64_t num_tokens = 0;
  CGRPO_RETURN_IF_ERROR(layout.count_tokens(&num_tokens));
  if (num_tokens > 0 && (!mask || !weights))
    return make_error(StatusCode::invalid_argument, "aggregation_weights: mask and weights must not be null");
  BufferTable table;
  table.input(array_span("mask", mask, num_tokens));
  table.input(layout.offsets_span());
  table.output(array_span("weights", weights, num_tokens));
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  CGRPO_RETURN_IF_ERROR(check_aggregation_scale(scale));
  for (int64_t t = 0; t < num_tokens; ++t)
    if (mask[t] > 1)
      return make_error(StatusCode::invalid_argument, "mask[%lld] = %d must be 0 or 1", static_cast<long long>(t),
                        mask[t]);

  const WeightRule rule = plan_passes(config, PassInputs{}).weights[static_cast<int>(term)];
  auto row_count = [&](int64_t i) {
    double n = 0;
    for (int64_t t = layout.begin(i); t < layout.end(i); ++t) n += mask[t] ? 1.0 : 0.0;
    return n;
  };
  AggregationCounts counts;
  CGRPO_RETURN_IF_ERROR(aggregation_counts(rule, layout.num_sequences, row_count,
                                           static_cast<double>(layout.max_length()), scale, &counts));
  const AggregationTraits mode = traits_of(rule.mode);
  if (num_tokens > 0 && mode.uses_length && counts.length <= 0)
    return make_error(StatusCode::invalid_argument, "%s: the length normalizer L is zero", mode.name);
  // The largest weight is a one-token row's (1 / N, 1 / B, 1 / L, ...): a tiny scale overflows it.
  const double largest = aggregation_weight(static_cast<int>(rule.mode), rule.convention, counts, 1.0);
  if (num_tokens > 0 && !std::isfinite(static_cast<double>(static_cast<Real>(largest))))
    return make_error(StatusCode::invalid_argument, "%s: the scale is too small: the weights overflow (%g)", mode.name,
                      largest);
  for (int64_t i = 0; i < layout.num_sequences; ++i) {
    const double w = aggregation_weight(static_cast<int>(rule.mode), rule.convention, counts, row_count(i));
    for (int64_t t = layout.begin(i); t < layout.end(i); ++t) weights[t] = mask[t] ? static_cast<Real>(w) : Real(0);
  }
  return Status::success();
}

}  // namespace cgrpo
