// cgrpo/advantages/gdpo_advantages.hpp: verl's GDPO advantages, one scalar per response from K reward
// components (verl-project/verl 1dda039, trainer/ppo/core_algos.py:compute_gdpo_outcome_advantage).
//
// For each reward component k of K, over the groups of `groups` (ragged, members anywhere):
//   A_ik = (r_ik - mean_g(r_k)) / (std_g(r_k) + eps)      std unbiased; a one-member group: mean 0,
//                                                          std 1; an all-equal group: 0 (grpo's rules,
//                                                          computed by AdvantageEstimator::grpo's code)
//   S_i  = sum_k w_k A_ik                                  weights w_k, default all 1
// then verl's masked_whiten over the batch's valid tokens, response i counted n_i = token_counts[i]
// times, N = sum_i n_i:
//   mu   = sum_i n_i S_i / (N + whiten_count_eps)
//   var  = [sum_i n_i (S_i - mu)^2 / (N + whiten_count_eps)] * N / (N - 1)
//   A_i  = (S_i - mu) / sqrt(var + whiten_eps)
// verl broadcasts A_i to every valid token of response i (cgrpo::broadcast_to_tokens). An empty
// response (n_i = 0) counts in its group's statistics and still gets A_i (it has no token to carry
// it). N >= 2 is required, as for reinforce_pp_baseline.
//
// verl's names: the components are non_tensor_batch[key] for each key of algorithm.gdpo_reward_keys
// (the keys of the dict compute_score returns), the weights algorithm.gdpo_reward_weights (in key
// order; unset: all 1); eps is verl's 1e-6, whiten_eps and whiten_count_eps its masked_whiten's 1e-8
// and 1e-8 (cgrpo::verl_advantages(AdvantageEstimator::gdpo) in presets/verl_presets.hpp gives all
// three). verl's trainer always divides by the std (norm_adv_by_std_in_grpo is not passed). verl
// builds the components and weights as float32, so its advantages carry float32 rounding (about 1e-7
// relative); this computes every step in double whatever Real is and rounds once at the end.
// Called without config (one component, token_level_rewards), verl's function is
// group_advantages(AdvantageEstimator::gdpo, ...) with the rewards: the same as K = 1 here.
//
// Data parallel (groups spread across ranks): run parallel::group_partial_stats and
// group_advantages_from_stats(AdvantageEstimator::gdpo, ...) once per component (one all-reduce per
// component, or K packed side by side), form S_i = sum_k w_k A_ik locally, then
// parallel::whitening_partial_stats / whiten_from_stats over S (cgrpo/parallel/group_stats.hpp).
//
// Errors (a clear Status, nothing written to advantages or weighted_sum): negative sizes; a config
// whose estimator is not gdpo or whose eps / whiten_eps / whiten_count_eps is not finite and >= 0;
// K < 1; null arrays; n x K overflowing int64; an output sharing memory with an input or the other
// output; a non-finite weight (any finite weight is allowed, as in verl) or component; a group id
// outside [0, num_groups); a negative token count; N < 2; a result past double's or Real's range.
// The keyed form also: a missing key (invalid_argument, naming it and the available names),
// duplicate keys or component names. An empty batch (num_responses = 0) is OK and writes nothing
// once the arguments are checked. Scratch: O(num_responses + num_groups) doubles; a failed
// allocation is out_of_memory.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "cgrpo/advantages/group_advantages.hpp"
#include "cgrpo/base/buffer_overlap.hpp"
#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/base/status.hpp"

namespace cgrpo {

// One named reward component (verl: the value compute_score returned under `name`), one value per
// response of the batch.
template <typename Real>
struct RewardComponent {
  const char* name = nullptr;    // the key it is looked up by (algorithm.gdpo_reward_keys)
  const Real* values = nullptr;  // [num_responses]
};

namespace detail {

inline Status gdpo_check_config(const AdvantageConfig& c) {
  if (c.estimator != AdvantageEstimator::gdpo)
    return make_error(StatusCode::invalid_argument,
                      "gdpo_advantages: config.estimator is %s (%d), expected AdvantageEstimator::gdpo",
                      to_string(c.estimator), static_cast<int>(c.estimator));
  if (!std::isfinite(c.eps) || c.eps < 0)
    return make_error(StatusCode::invalid_argument, "gdpo_advantages: eps must be finite and >= 0, got %g", c.eps);
  if (!std::isfinite(c.whiten_eps) || c.whiten_eps < 0)
    return make_error(StatusCode::invalid_argument, "gdpo_advantages: whiten_eps must be finite and >= 0, got %g",
                      c.whiten_eps);
  if (!std::isfinite(c.whiten_count_eps) || c.whiten_count_eps < 0)
    return make_error(StatusCode::invalid_argument,
                      "gdpo_advantages: whiten_count_eps must be finite and >= 0, got %g", c.whiten_count_eps);
  return Status::success();
}

// "component 3" (array form) or "component \"format\"" (keyed form), for messages.
struct GdpoName {
  char text[96];
  GdpoName(const char* const* names, int64_t k) {
    if (names) std::snprintf(text, sizeof text, "component \"%s\"", names[k]);
    else std::snprintf(text, sizeof text, "component %lld", static_cast<long long>(k));
  }
};

inline Status gdpo_check_weights(int64_t K, const double* weights, const char* const* names) {
  if (!weights) return Status::success();
  for (int64_t k = 0; k < K; ++k)
    if (!std::isfinite(weights[k]))
      return make_error(StatusCode::non_finite, "gdpo_advantages: weights[%lld] (%s) is not finite (%g)",
                        static_cast<long long>(k), GdpoName(names, k).text, weights[k]);
  return Status::success();
}

// The value checks and the computation of both forms; the caller has checked the config, the sizes,
// the pointers and the overlaps. value(i, k): component k of response i, as double.
template <typename Real, typename Value>
Status gdpo_compute(const AdvantageConfig& config, const GroupAssignment& groups, int64_t K, const Value& value,
                    const char* const* names, const double* weights, const int64_t* token_counts, Real* advantages,
                    Real* weighted_sum) {
  const int64_t n = groups.num_responses;
  for (int64_t i = 0; i < n; ++i)
    if (groups.group_ids[i] < 0 || groups.group_ids[i] >= groups.num_groups)
      return make_error(StatusCode::out_of_range, "gdpo_advantages: group_ids[%lld] = %d is outside [0, %lld)",
                        static_cast<long long>(i), groups.group_ids[i], static_cast<long long>(groups.num_groups));
  double tokens = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (token_counts[i] < 0)
      return make_error(StatusCode::invalid_argument, "gdpo_advantages: token_counts[%lld] is negative (%lld)",
                        static_cast<long long>(i), static_cast<long long>(token_counts[i]));
    tokens += static_cast<double>(token_counts[i]);
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < K; ++k) {
      const double v = value(i, k);
      if (!std::isfinite(v))
        return make_error(StatusCode::non_finite, "gdpo_advantages: %s of response %lld is not finite (%g)",
                          GdpoName(names, k).text, static_cast<long long>(i), v);
    }
  if (tokens < 2)
    return make_error(StatusCode::invalid_argument,
                      "gdpo whitening needs at least 2 valid tokens in the batch, got %g", tokens);

  // Per component: grpo's advantages (AdvantageEstimator::grpo's own code, in double), summed with
  // the weights into S. Everything stays in scratch until every check has passed.
  std::vector<double> column(static_cast<size_t>(n)), a(static_cast<size_t>(n)), S(static_cast<size_t>(n));
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t i = 0; i < n; ++i) column[i] = value(i, k);
    const Status s = detail::group_advantages<double>(AdvantageEstimator::grpo, groups, column.data(), nullptr,
                                                      config.eps, a.data(), config.whiten_eps, config.whiten_count_eps);
    if (!s.ok()) return make_error(s.code, "gdpo_advantages, %s: %s", GdpoName(names, k).text, s.message);
    const double w = weights ? weights[k] : 1.0;
    if (k == 0)
      for (int64_t i = 0; i < n; ++i) S[i] = w * a[i];
    else
      for (int64_t i = 0; i < n; ++i) S[i] += w * a[i];
  }
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(S[i]))
      return make_error(StatusCode::non_finite,
                        "gdpo_advantages: the weighted sum of response %lld is not finite (weights too large)",
                        static_cast<long long>(i));
  std::vector<double> result(S);
  CGRPO_RETURN_IF_ERROR(
      masked_whiten("gdpo", n, token_counts, result.data(), config.whiten_eps, config.whiten_count_eps));
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(static_cast<double>(static_cast<Real>(result[i]))))
      return make_error(StatusCode::non_finite,
                        "gdpo_advantages: the advantage of response %lld is not finite (past the output type, or "
                        "whitening with whiten_eps = 0 and no spread)",
                        static_cast<long long>(i));
    if (weighted_sum && !std::isfinite(static_cast<double>(static_cast<Real>(S[i]))))
      return make_error(StatusCode::non_finite,
                        "gdpo_advantages: the weighted sum of response %lld (%g) is past the output type",
                        static_cast<long long>(i), S[i]);
  }
  for (int64_t i = 0; i < n; ++i) advantages[i] = static_cast<Real>(result[i]);
  if (weighted_sum)
    for (int64_t i = 0; i < n; ++i) weighted_sum[i] = static_cast<Real>(S[i]);
  return Status::success();
}

template <typename Real>
Status gdpo_advantages(const AdvantageConfig& config, const GroupAssignment& groups, const Real* components,
                       int64_t num_components, const double* weights, const int64_t* token_counts, Real* advantages,
                       Real* weighted_sum) {
  const int64_t n = groups.num_responses, K = num_components;
  if (n < 0 || groups.num_groups < 0)
    return make_error(StatusCode::invalid_argument, "gdpo_advantages: negative sizes");
  // The arguments are checked even for an empty batch, as group_advantages does.
  CGRPO_RETURN_IF_ERROR(gdpo_check_config(config));
  if (K < 1)
    return make_error(StatusCode::invalid_argument, "gdpo_advantages: num_components must be >= 1, got %lld",
                      static_cast<long long>(K));
  CGRPO_RETURN_IF_ERROR(gdpo_check_weights(K, weights, nullptr));
  if (n == 0) return Status::success();
  if (!components || !groups.group_ids || !token_counts || !advantages)
    return make_error(StatusCode::invalid_argument,
                      "gdpo_advantages: components, group_ids, token_counts and advantages must not be null");
  if (n > INT64_MAX / K)
    return make_error(StatusCode::invalid_argument, "gdpo_advantages: num_responses x num_components overflows");
  BufferTable table;
  table.input(array_span("components", components, n * K));
  table.input(array_span("group_ids", groups.group_ids, n));
  table.input(array_span("token_counts", token_counts, n));
  table.input(array_span("weights", weights, K));
  table.output(array_span("advantages", advantages, n));
  table.output(array_span("weighted_sum", weighted_sum, n));
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  auto value = [&](int64_t i, int64_t k) { return static_cast<double>(components[i * K + k]); };
  return gdpo_compute(config, groups, K, value, nullptr, weights, token_counts, advantages, weighted_sum);
}

template <typename Real>
Status gdpo_advantages_keyed(const AdvantageConfig& config, const GroupAssignment& groups,
                             const char* const* reward_keys, int64_t num_keys, const double* weights,
                             const RewardComponent<Real>* components, int64_t num_components,
                             const int64_t* token_counts, Real* advantages, Real* weighted_sum) {
  const int64_t n = groups.num_responses, K = num_keys;
  if (n < 0 || groups.num_groups < 0)
    return make_error(StatusCode::invalid_argument, "gdpo_advantages: negative sizes");
  CGRPO_RETURN_IF_ERROR(gdpo_check_config(config));
  if (K < 1 || !reward_keys)
    return make_error(StatusCode::invalid_argument,
                      "gdpo_advantages: needs at least one reward key (verl's algorithm.gdpo_reward_keys), got "
                      "num_keys %lld%s",
                      static_cast<long long>(K), reward_keys ? "" : " and null reward_keys");
  for (int64_t k = 0; k < K; ++k) {
    if (!reward_keys[k])
      return make_error(StatusCode::invalid_argument, "gdpo_advantages: reward_keys[%lld] is null",
                        static_cast<long long>(k));
    for (int64_t j = 0; j < k; ++j)
      if (std::strcmp(reward_keys[j], reward_keys[k]) == 0)
        return make_error(StatusCode::invalid_argument,
                          "gdpo_advantages: reward key \"%s\" is given twice (reward_keys[%lld] and [%lld])",
                          reward_keys[k], static_cast<long long>(j), static_cast<long long>(k));
  }
  if (num_components < 1 || !components)
    return make_error(StatusCode::invalid_argument,
                      "gdpo_advantages: needs at least one reward component, got num_components %lld%s",
                      static_cast<long long>(num_components), components ? "" : " and null components");
  for (int64_t c = 0; c < num_components; ++c) {
    if (!components[c].name)
      return make_error(StatusCode::invalid_argument, "gdpo_advantages: components[%lld].name is null",
                        static_cast<long long>(c));
    for (int64_t j = 0; j < c; ++j)
      if (std::strcmp(components[j].name, components[c].name) == 0)
        return make_error(StatusCode::invalid_argument,
                          "gdpo_advantages: two reward components are named \"%s\" (components[%lld] and [%lld])",
                          components[c].name, static_cast<long long>(j), static_cast<long long>(c));
  }
  // Each key by name among the components; K is small (verl: a handful of keys).
  std::vector<const Real*> column(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) {
    int64_t found = -1;
    for (int64_t c = 0; c < num_components && found < 0; ++c)
      if (std::strcmp(components[c].name, reward_keys[k]) == 0) found = c;
    if (found < 0) {
      char available[160] = {0};  // the names, as many as fit ("..." after the last one that does)
      size_t used = 0;
      for (int64_t c = 0; c < num_components; ++c) {
        const size_t room = sizeof available - 4 - used;  // keeps room for "..."
        const int w = std::snprintf(available + used, room, "%s\"%s\"", c ? ", " : "", components[c].name);
        if (w < 0 || static_cast<size_t>(w) >= room) {
          std::snprintf(available + used, sizeof available - used, "...");
          break;
        }
        used += static_cast<size_t>(w);
      }
      return make_error(StatusCode::invalid_argument,
                        "gdpo_advantages: reward key \"%s\" is not among the %lld reward components (available: %s)",
                        reward_keys[k], static_cast<long long>(num_components), available);
    }
    column[k] = components[found].values;
  }
  CGRPO_RETURN_IF_ERROR(gdpo_check_weights(K, weights, reward_keys));
  if (n == 0) return Status::success();
  if (!groups.group_ids || !token_counts || !advantages)
    return make_error(StatusCode::invalid_argument,
                      "gdpo_advantages: group_ids, token_counts and advantages must not be null");
  for (int64_t k = 0; k < K; ++k)
    if (!column[k])
      return make_error(StatusCode::invalid_argument, "gdpo_advantages: reward component \"%s\" has null values",
                        reward_keys[k]);
  BufferTable table;
  table.input(array_span("group_ids", groups.group_ids, n));
  table.input(array_span("token_counts", token_counts, n));
  table.input(array_span("weights", weights, K));
  table.input(array_span("reward_keys", reward_keys, K));
  table.input(array_span("components", components, num_components));
  table.output(array_span("advantages", advantages, n));
  table.output(array_span("weighted_sum", weighted_sum, n));
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  for (int64_t k = 0; k < K; ++k) {  // one table per component: any number of them
    BufferTable one;
    one.input(array_span("values", column[k], n));
    one.output(array_span("advantages", advantages, n));
    one.output(array_span("weighted_sum", weighted_sum, n));
    const Status s = check_buffers(one);
    if (!s.ok()) return make_error(s.code, "gdpo_advantages, reward component \"%s\": %s", reward_keys[k], s.message);
  }
  auto value = [&](int64_t i, int64_t k) { return static_cast<double>(column[k][i]); };
  return gdpo_compute(config, groups, K, value, reward_keys, weights, token_counts, advantages, weighted_sum);
}

}  // namespace detail

// GDPO advantages from a [num_responses x num_components] row-major array of reward components
// (response i's components at components[i * K, i * K + K)). weights: [K] or null (all 1).
// token_counts: [num_responses] valid tokens per response (>= 0, N >= 2). advantages: [num_responses]
// A_i. weighted_sum (optional, [num_responses]): S_i before the whitening (verl keeps it at the
// token level, so its empty rows read 0; here every row holds S_i). config: estimator gdpo, eps,
// whiten_eps, whiten_count_eps (verl: verl_advantages(AdvantageEstimator::gdpo)).
template <typename Real>
Status gdpo_advantages(const AdvantageConfig& config, const GroupAssignment& groups, const Real* components,
                       int64_t num_components, const double* weights, const int64_t* token_counts, Real* advantages,
                       Real* weighted_sum = nullptr) {
  return no_throw("gdpo_advantages", [&] {
    return detail::gdpo_advantages(config, groups, components, num_components, weights, token_counts, advantages,
                                   weighted_sum);
  });
}

// The same with named components (verl's gdpo_reward_keys over the dict compute_score returns):
// component k is the one of `components` whose name is reward_keys[k], weights[k] its weight (null:
// all 1). Components no key names are not read. A key no component has: invalid_argument naming it
// and the available names (StatusCode has no not_found); a key given twice or two components of
// one name: invalid_argument.
template <typename Real>
Status gdpo_advantages(const AdvantageConfig& config, const GroupAssignment& groups, const char* const* reward_keys,
                       int64_t num_keys, const double* weights, const RewardComponent<Real>* components,
                       int64_t num_components, const int64_t* token_counts, Real* advantages,
                       Real* weighted_sum = nullptr) {
  return no_throw("gdpo_advantages", [&] {
    return detail::gdpo_advantages_keyed(config, groups, reward_keys, num_keys, weights, components, num_components,
                                         token_counts, advantages, weighted_sum);
  });
}

}  // namespace cgrpo
