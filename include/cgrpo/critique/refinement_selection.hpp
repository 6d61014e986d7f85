// cgrpo/critique/refinement_selection.hpp: which refinements of one question join its group.
// The paper's rule: the first refinement with reward 1 if any, else the highest-scoring one.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/base/status.hpp"

namespace cgrpo::critique {

// Threads: the functions here keep no state; calls may run at the same time (inputs may be
// shared, an output may not).

// Picks k of the `count` refinements of one question and writes their indices to `chosen`,
// in priority order:
//   1. refinements with reward >= success_reward (correct ones, reward 1 in the paper),
//      in generation order, so that with k = 1 the FIRST correct refinement is kept;
//   2. then the others by decreasing reward, ties broken by generation order.
// token_counts (nullptr: every refinement is non-empty) marks empty refinements; they are
// never chosen unless allow_empty. Errors (chosen untouched): k < 0, a non-finite reward or
// success_reward, a negative token count, k larger than the number of choosable refinements,
// a failed allocation (out_of_memory).
inline Status select_refinements(const double* rewards, const int64_t* token_counts, int64_t count, int64_t k,
                                 double success_reward, bool allow_empty, std::vector<int64_t>& chosen) {
  if (count < 0 || k < 0)
    return make_error(StatusCode::invalid_argument, "select_refinements: count (%lld) and k (%lld) must be >= 0",
                      static_cast<long long>(count), static_cast<long long>(k));
  if (count > 0 && !rewards)
    return make_error(StatusCode::invalid_argument, "select_refinements: rewards must not be null");
  if (!std::isfinite(success_reward))
    return make_error(StatusCode::invalid_argument, "select_refinements: success_reward must be finite, got %g",
                      success_reward);
  return no_throw("select_refinements", [&]() -> Status {
    std::vector<int64_t> correct, others;
    for (int64_t j = 0; j < count; ++j) {
      if (!std::isfinite(rewards[j]))
        return make_error(StatusCode::non_finite, "refinement %lld has a non-finite reward", static_cast<long long>(j));
      if (token_counts && token_counts[j] < 0)
        return make_error(StatusCode::invalid_argument, "select_refinements: token_counts[%lld] = %lld is negative",
                          static_cast<long long>(j), static_cast<long long>(token_counts[j]));
      if (token_counts && token_counts[j] == 0 && !allow_empty) continue;
      (rewards[j] >= success_reward ? correct : others).push_back(j);
    }
    const int64_t available = static_cast<int64_t>(correct.size() + others.size());
    if (k > available)
      return make_error(StatusCode::invalid_argument,
                        "k = %lld refinements requested but only %lld of %lld are available%s",
                        static_cast<long long>(k), static_cast<long long>(available), static_cast<long long>(count),
                        available < count ? " (empty refinements are not selectable unless allow_empty)" : "");
    std::stable_sort(others.begin(), others.end(), [&](int64_t a, int64_t b) { return rewards[a] > rewards[b]; });
    correct.insert(correct.end(), others.begin(), others.end());
    correct.resize(static_cast<size_t>(k));
    chosen = std::move(correct);
    return Status::success();
  });
}

}  // namespace cgrpo::critique
