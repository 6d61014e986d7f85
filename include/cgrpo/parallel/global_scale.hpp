// cgrpo/parallel/global_scale.hpp: the global normalizers of the aggregation modes under data parallelism.
// Each rank measures its shard; the caller all-reduces; every rank builds its weights with the same AggregationScale.
#pragma once

#include <cstdint>

#include "cgrpo/loss/aggregation.hpp"
#include "cgrpo/base/buffer_overlap.hpp"
#include "cgrpo/base/layout.hpp"
#include "cgrpo/base/status.hpp"

namespace cgrpo::parallel {

// Threads: the functions here keep no state; calls may run at the same time (inputs may be
// shared, an output may not).

// What one rank (or one micro-batch of gradient accumulation) contributes to the
// global normalizers. All-reduce the counts with SUM and max_length with MAX (or use
// aggregation_partials_merge), then call to_scale(). Both row counts are kept: the loss takes
// every row or only the rows with a valid token as each term's rule says (its convention,
// GMPO's every-row mean), so one scale serves every config.
struct AggregationPartials {
  double token_count = 0;              // sum of the mask                        -> SUM
  double sequence_count = 0;           // responses on this rank                 -> SUM
  double nonempty_sequence_count = 0;  // responses with a valid token (verl B+) -> SUM
  double max_length = 0;               // longest response in rows               -> MAX

  // The AggregationScale to pass to aggregation_weights() on every rank.
  // `length` overrides max_length when > 0 (e.g. the configured max response
  // length of Dr. GRPO / the paper's loss_remove_token_mean).
  AggregationScale to_scale(double length = 0) const {
    AggregationScale s;
    s.token_count = token_count;
    s.sequence_count = sequence_count;
    s.nonempty_sequence_count = nonempty_sequence_count;
    s.length = length > 0 ? length : max_length;
    return s;
  }
};

// This rank's partials; *out may not share memory with mask or the layout's offsets.
inline Status aggregation_partials(const SequenceLayout& layout, const uint8_t* mask, AggregationPartials* out) {
  int64_t num_tokens = 0;
  CGRPO_RETURN_IF_ERROR(layout.count_tokens(&num_tokens));
  if (!out) return make_error(StatusCode::invalid_argument, "aggregation_partials: out must not be null");
  if (num_tokens > 0 && !mask) return make_error(StatusCode::invalid_argument, "aggregation_partials: mask must not be null");
  BufferTable table;
  table.input(array_span("mask", mask, num_tokens));
  table.input(layout.offsets_span());
  table.output(array_span("out", out, 1));
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  AggregationPartials p;
  for (int64_t t = 0; t < num_tokens; ++t) p.token_count += mask[t] ? 1.0 : 0.0;
  p.sequence_count = static_cast<double>(layout.num_sequences);
  for (int64_t i = 0; i < layout.num_sequences; ++i) {
    bool any = false;
    for (int64_t t = layout.begin(i); t < layout.end(i) && !any; ++t) any = mask[t] != 0;
    p.nonempty_sequence_count += any ? 1.0 : 0.0;
  }
  p.max_length = static_cast<double>(layout.max_length());
  *out = p;
  return Status::success();
}

// What the all-reduce does, for callers that gather instead.
inline AggregationPartials aggregation_partials_merge(const AggregationPartials& a, const AggregationPartials& b) {
  AggregationPartials m;
  m.token_count = a.token_count + b.token_count;
  m.sequence_count = a.sequence_count + b.sequence_count;
  m.nonempty_sequence_count = a.nonempty_sequence_count + b.nonempty_sequence_count;
  m.max_length = a.max_length > b.max_length ? a.max_length : b.max_length;
  return m;
}

}  // namespace cgrpo::parallel
