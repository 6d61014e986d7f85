// cgrpo/loss/aggregation_modes.hpp: the loss aggregation modes, one struct each, and their table.
// Every mode is a per-token weight w_t (agg(x) = sum_t w_t x_t); kernels never branch on a mode name.
#pragma once

#include <string.h>

#include "cgrpo/base/macros.hpp"
#include "cgrpo/base/variant_table.hpp"

namespace cgrpo {

// The peers' conventions for the denominators of the aggregation modes.
struct AggregationConvention {
  double token_mean_eps = 1e-8;  // token-mean divides by N + this (paper fork: 1e-8; verl, TRL: 0)
  double row_count_eps = 0.0;    // seq-mean-token-mean divides row i by n_i + this (verl: 1e-8)
  bool count_empty_rows = true;  // seq-mean-*: B counts every row (paper, TRL, verl's engine) or only
                                 // rows with a valid token (verl's legacy dp_actor: B+)
  bool sum_norm_per_row = false; // seq-mean-token-sum-norm divides by B L (verl 1dda039: a seq-mean
                                 // of token sums over L) instead of L (the paper, verl b178a3c)
  bool token_count_from_response_mask = false;  // token-mean's N counts the batch's response mask
                                 // (after a rejection that leaves every term) for every term, so a
                                 // rejection of the policy term only (bypass) leaves N unchanged
                                 // (verl's engine batch_num_tokens); false: each term's own mask
};

// The batch-level denominators of one term, counted on that term's mask (or supplied by the
// caller for data parallelism: AggregationScale).
struct AggregationCounts {
  double tokens = 0;     // N: valid tokens
  double rows = 0;       // B: rows (every row, or only rows with a valid token: convention)
  double length = 0;     // L of seq-mean-token-sum-norm
};

struct AggregationTraits {
  const char* name;  // verl's loss_agg_mode string (also to_string)
  bool uses_rows;    // the weights need the rows (batch.layout) and B
  bool uses_length;  // the weights need L
};

// Each mode: the denominator of a valid token's weight (0: the token gets weight 0) from the
// batch's counts and its row's count n_i of valid tokens.

// m / (N + token_mean_eps).
struct TokenMean {
  static constexpr AggregationTraits traits() { return AggregationTraits{"token-mean", false, false}; }
  CGRPO_HD static double denominator(const AggregationConvention& conv, const AggregationCounts& c, double) {
    return c.tokens + conv.token_mean_eps;
  }
};
// m / B.
struct SeqMeanTokenSum {
  static constexpr AggregationTraits traits() { return AggregationTraits{"seq-mean-token-sum", true, false}; }
  CGRPO_HD static double denominator(const AggregationConvention&, const AggregationCounts& c, double) {
    return c.rows;
  }
};
// m / (B (n_i + row_count_eps)).
struct SeqMeanTokenMean {
  static constexpr AggregationTraits traits() { return AggregationTraits{"seq-mean-token-mean", true, false}; }
  CGRPO_HD static double denominator(const AggregationConvention& conv, const AggregationCounts& c, double row_tokens) {
    return row_tokens > 0 ? c.rows * (row_tokens + conv.row_count_eps) : 0.0;
  }
};
// m / L (the paper's loss_remove_token_mean, verl b178a3c), or m / (B L) with
// convention.sum_norm_per_row (verl 1dda039: seq-mean-token-sum divided by L).
struct SeqMeanTokenSumNorm {
  static constexpr AggregationTraits traits() { return AggregationTraits{"seq-mean-token-sum-norm", true, true}; }
  CGRPO_HD static double denominator(const AggregationConvention& conv, const AggregationCounts& c, double) {
    return conv.sum_norm_per_row ? c.rows * c.length : c.length;
  }
};
// m: a plain sum (verl's token-sum; the loss grows with the batch). verl multiplies it, like every
// mode, by dp_size to undo DDP's mean over ranks: with cgrpo the shards' gradients are summed.
struct TokenSum {
  static constexpr AggregationTraits traits() { return AggregationTraits{"token-sum", false, false}; }
  CGRPO_HD static double denominator(const AggregationConvention&, const AggregationCounts&, double) { return 1.0; }
};

// X(enum name, struct). The order is the enum's values.
#define CGRPO_AGGREGATION_MODES(X)            \
  X(token_mean, TokenMean)                    \
  X(seq_mean_token_sum, SeqMeanTokenSum)      \
  X(seq_mean_token_mean, SeqMeanTokenMean)    \
  X(seq_mean_token_sum_norm, SeqMeanTokenSumNorm) \
  X(token_sum, TokenSum)

enum class Aggregation : int { CGRPO_AGGREGATION_MODES(CGRPO_VARIANT_ENUM_ENTRY) };
inline constexpr int kNumAggregations = 0 CGRPO_AGGREGATION_MODES(CGRPO_VARIANT_COUNT_ENTRY);

inline constexpr bool known(Aggregation a) { return static_cast<unsigned>(a) < static_cast<unsigned>(kNumAggregations); }

inline constexpr AggregationTraits traits_of(Aggregation a) {
  switch (a) {
#define CGRPO_TRAITS_CASE(name, Type) \
  case Aggregation::name: return Type::traits();
    CGRPO_AGGREGATION_MODES(CGRPO_TRAITS_CASE)
#undef CGRPO_TRAITS_CASE
  }
  return AggregationTraits{"unknown", false, false};
}

inline const char* to_string(Aggregation a) { return traits_of(a).name; }

// The mode named `name` in verl's loss_agg_mode spelling ("token-mean", ...). False if none.
inline bool find_aggregation(const char* name, Aggregation* out) {
  for (int i = 0; name && i < kNumAggregations; ++i)
    if (strcmp(traits_of(static_cast<Aggregation>(i)).name, name) == 0) {
      *out = static_cast<Aggregation>(i);
      return true;
    }
  return false;
}

// w_t of a valid token of a row holding `row_tokens` valid tokens (0 for a row without any).
// A zero denominator gives 0 (an empty batch contributes nothing; callers reject a zero B or L
// for a batch that has tokens). Shared by aggregation_weights() and the losses' own weights.
CGRPO_HD double aggregation_weight(int mode, const AggregationConvention& conv, const AggregationCounts& c,
                                   double row_tokens) {
  double denominator = 0;
  switch (mode) {
#define CGRPO_WEIGHT_CASE(name, Type)                          \
  case static_cast<int>(Aggregation::name):                    \
    denominator = Type::denominator(conv, c, row_tokens);      \
    break;
    CGRPO_AGGREGATION_MODES(CGRPO_WEIGHT_CASE)
#undef CGRPO_WEIGHT_CASE
    default: break;
  }
  return denominator > 0 ? 1.0 / denominator : 0.0;
}

// The aggregation concern of the config: a mode per term, and the denominators' conventions.
struct AggregationConfig {
  Aggregation policy = Aggregation::seq_mean_token_sum_norm;
  Aggregation entropy = Aggregation::token_mean;
  Aggregation kl = Aggregation::token_mean;
  AggregationConvention convention;  // shared by the three terms
};

}  // namespace cgrpo
