// cgrpo/corrections/entropy_mask.hpp: TRL's top_entropy_quantile mask ("Beyond the 80/20 rule"): the policy
// term keeps only the tokens whose entropy is at or above a quantile of the batch's valid tokens.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cgrpo/base/buffer_overlap.hpp"
#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/base/status.hpp"

namespace cgrpo {

// The entropy mask concern of the loss config (TRL's top_entropy_quantile).
struct EntropyMaskConfig {
  double top_quantile = 1.0;      // < 1 trains the policy term only on tokens whose H is at or above the
                                  // (1 - this) quantile of the batch's valid H (1: off)
  bool count_all_tokens = false;  // TRL dapo / cispo / vespo: the entropy term still divides by every
                                  // valid token
};

inline bool entropy_mask_on(const EntropyMaskConfig& c) { return c.top_quantile < 1; }

inline Status check_entropy_mask(const EntropyMaskConfig& c) {
  if (!(c.top_quantile >= 0 && c.top_quantile <= 1))
    return make_error(StatusCode::invalid_argument,
                      "config.entropy_mask.top_quantile must be in [0, 1] (1: off; 0 keeps the highest H only), got %g",
                      c.top_quantile);
  return Status::success();
}

// Threads: no state; calls may run at the same time (inputs may be shared, an output may not).

// torch.quantile(values, q) (linear interpolation between the two order statistics around
// q (n - 1)); sorts `values` in place. values must not be empty.
inline double quantile_linear(std::vector<double>& values, double q) {
  std::sort(values.begin(), values.end());
  const double pos = q * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (pos - static_cast<double>(lo)) * (values[hi] - values[lo]);
}

// The threshold Q of TRL's get_high_entropy_mask: the (1 - top_quantile) quantile of H over the
// tokens with mask 1. Returns false when there is no such token (TRL then keeps none).
//
// Precision: TRL gathers the entropies as float32 and takes the quantile in float32; this takes it
// in double over the entropies as given. The masks differ only for a token whose H lies within
// float32 rounding (about 1e-7 relative) of Q, where TRL's own answer depends on its dtype.
// Data parallelism: TRL takes Q over every process's tokens; this takes it over the batch given.
template <typename Real>
bool top_entropy_threshold(int64_t num_tokens, const uint8_t* mask, const Real* entropy, double top_quantile,
                           std::vector<double>& scratch, double* threshold) {
  scratch.clear();
  for (int64_t t = 0; t < num_tokens; ++t)
    if (mask[t]) scratch.push_back(static_cast<double>(entropy[t]));
  if (scratch.empty()) return false;
  *threshold = quantile_linear(scratch, 1.0 - top_quantile);
  return true;
}

// keep[t] = 1 where mask[t] is 1 and H_t >= Q (top_entropy_threshold), else 0: the mask the fused
// loss applies to the policy term when config.entropy_mask.top_quantile < 1. top_quantile in [0, 1]
// (0 keeps the tokens at the maximum H; 1 keeps every valid token). Errors (nothing written):
// null arrays, a mask value other than 0 / 1, a non-finite H at a valid token, keep sharing
// memory with an input.
template <typename Real>
Status top_entropy_mask(int64_t num_tokens, const uint8_t* mask, const Real* entropy, double top_quantile,
                        uint8_t* keep) {
  return no_throw("top_entropy_mask", [&]() -> Status {
    if (num_tokens < 0) return make_error(StatusCode::invalid_argument, "top_entropy_mask: num_tokens must be >= 0");
    if (!(top_quantile >= 0 && top_quantile <= 1))
      return make_error(StatusCode::invalid_argument, "top_entropy_mask: top_quantile must be in [0, 1], got %g",
                        top_quantile);
    if (num_tokens == 0) return Status::success();
    if (!mask || !entropy || !keep)
      return make_error(StatusCode::invalid_argument, "top_entropy_mask: mask, entropy and keep must not be null");
    BufferTable table;
    table.input(array_span("mask", mask, num_tokens));
    table.input(array_span("entropy", entropy, num_tokens));
    table.output(array_span("keep", keep, num_tokens));
    CGRPO_RETURN_IF_ERROR(check_buffers(table));
    for (int64_t t = 0; t < num_tokens; ++t) {
      if (mask[t] > 1)
        return make_error(StatusCode::invalid_argument, "mask[%lld] = %d must be 0 or 1", static_cast<long long>(t),
                          mask[t]);
      if (mask[t] && !std::isfinite(static_cast<double>(entropy[t])))
        return make_error(StatusCode::non_finite, "entropy[%lld] is not finite", static_cast<long long>(t));
    }
    std::vector<double> scratch;
    double q = 0;
    const bool any = top_entropy_threshold(num_tokens, mask, entropy, top_quantile, scratch, &q);
    for (int64_t t = 0; t < num_tokens; ++t)
      keep[t] = (any && mask[t] && static_cast<double>(entropy[t]) >= q) ? 1 : 0;
    return Status::success();
  });
}

}  // namespace cgrpo
