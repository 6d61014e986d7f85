// cgrpo/advantages/trl_advantages.hpp: TRL's advantages from several reward functions, weighted and summed,
// with its handling of None (NaN) rewards (GRPOTrainer._generate_and_score_completions).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "cgrpo/advantages/group_advantages.hpp"
#include "cgrpo/base/buffer_overlap.hpp"
#include "cgrpo/advantages/group_advantages.hpp"
#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/base/status.hpp"

namespace cgrpo {

// Threads: no state; calls may run at the same time (inputs may be shared, an output may not).

// GRPOConfig.multi_objective_aggregation.
enum class RewardCombination : int {
  sum_then_normalize = 0,  // R = sum_k w_k r_k, then scale_rewards (TRL's default)
  normalize_then_sum = 1,  // each r_k normalised in its group, R = sum_k w_k r~_k, then over the batch (GDPO)
};

namespace detail {

// Mean and torch-style unbiased std (trl.trainer.utils.nanstd: nanmean of squares times n / (n-1))
// of the non-NaN values among `members`; std is NaN for fewer than 2 values, mean NaN for none.
struct NanStats {
  double mean, std, count;
};

template <typename Get>
NanStats nan_stats(const std::vector<int64_t>& members, Get value) {
  double n = 0, sum = 0;
  for (int64_t i : members) {
    const double v = value(i);
    if (!std::isnan(v)) n += 1, sum += v;
  }
  NanStats s{n > 0 ? sum / n : NAN, NAN, n};
  if (n > 1) {
    double sq = 0;
    for (int64_t i : members) {
      const double v = value(i);
      if (!std::isnan(v)) sq += (v - s.mean) * (v - s.mean);
    }
    s.std = std::sqrt(sq / n * (n / (n - 1)));
  }
  return s;
}

template <typename Real>
Status trl_advantages(AdvantageEstimator scaling, const GroupAssignment& groups, int64_t num_functions,
                      const Real* rewards_per_function, const double* reward_weights, double eps, Real* advantages,
                      Real* rewards, RewardCombination combination) {
  const int64_t n = groups.num_responses, K = num_functions;
  if (n < 0 || groups.num_groups < 0)
    return make_error(StatusCode::invalid_argument, "trl_advantages: negative sizes");
  if (K < 1) return make_error(StatusCode::invalid_argument, "trl_advantages: num_functions must be >= 1, got %lld",
                               static_cast<long long>(K));
  if (combination != RewardCombination::sum_then_normalize && combination != RewardCombination::normalize_then_sum)
    return make_error(StatusCode::invalid_argument, "trl_advantages: unknown combination %d", static_cast<int>(combination));
  if (combination == RewardCombination::sum_then_normalize && scaling != AdvantageEstimator::grpo &&
      scaling != AdvantageEstimator::grpo_batch_std && scaling != AdvantageEstimator::grpo_no_std)
    return make_error(StatusCode::invalid_argument,
                      "trl_advantages: scaling must be grpo (scale_rewards group), grpo_batch_std (batch) or "
                      "grpo_no_std (none), got %s", to_string(scaling));
  if (!std::isfinite(eps) || eps < 0)
    return make_error(StatusCode::invalid_argument, "trl_advantages: eps must be finite and >= 0, got %g", eps);
  if (n == 0) return Status::success();
  if (!rewards_per_function || !groups.group_ids || !advantages)
    return make_error(StatusCode::invalid_argument,
                      "trl_advantages: rewards_per_function, group_ids and advantages must not be null");
  if (n > INT64_MAX / K)
    return make_error(StatusCode::invalid_argument, "trl_advantages: num_responses x num_functions overflows");
  BufferTable table;
  table.input(array_span("rewards_per_function", rewards_per_function, n * K));
  table.input(array_span("group_ids", groups.group_ids, n));
  table.input(array_span("reward_weights", reward_weights, K));
  table.output(array_span("advantages", advantages, n));
  table.output(array_span("rewards", rewards, n));
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  for (int64_t k = 0; k < K; ++k)
    if (reward_weights && !std::isfinite(reward_weights[k]))
      return make_error(StatusCode::non_finite, "reward_weights[%lld] is not finite", static_cast<long long>(k));
  for (int64_t i = 0; i < n; ++i) {
    if (groups.group_ids[i] < 0 || groups.group_ids[i] >= groups.num_groups)
      return make_error(StatusCode::out_of_range, "trl_advantages: group_ids[%lld] = %d is outside [0, %lld)",
                        static_cast<long long>(i), groups.group_ids[i], static_cast<long long>(groups.num_groups));
    for (int64_t k = 0; k < K; ++k) {
      const double v = static_cast<double>(rewards_per_function[i * K + k]);
      if (std::isinf(v))  // NaN is a reward function's None; an infinity is an error
        return make_error(StatusCode::non_finite,
                          "rewards_per_function[%lld] (response %lld, function %lld) is infinite (NaN means None)",
                          static_cast<long long>(i * K + k), static_cast<long long>(i), static_cast<long long>(k));
    }
  }

  std::vector<std::vector<int64_t>> members(static_cast<size_t>(groups.num_groups));
  for (int64_t i = 0; i < n; ++i) members[groups.group_ids[i]].push_back(i);
  std::vector<int64_t> everyone(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) everyone[i] = i;
  auto weight = [&](int64_t k) { return reward_weights ? reward_weights[k] : 1.0; };
  auto raw = [&](int64_t i, int64_t k) { return static_cast<double>(rewards_per_function[i * K + k]); };
  auto unscorable = [&](int64_t i) {
    for (int64_t k = 0; k < K; ++k)
      if (!std::isnan(raw(i, k))) return false;
    return true;
  };

  std::vector<double> R(static_cast<size_t>(n), 0.0), A(static_cast<size_t>(n), 0.0);
  if (combination == RewardCombination::sum_then_normalize) {
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t k = 0; k < K; ++k)
        if (!std::isnan(raw(i, k))) R[i] += weight(k) * raw(i, k);  // nansum
      if (unscorable(i)) R[i] = NAN;
    }
    auto get = [&](int64_t i) { return R[i]; };
    const NanStats batch = nan_stats(everyone, get);
    for (const std::vector<int64_t>& g : members) {
      if (g.empty()) continue;
      const NanStats s = nan_stats(g, get);
      // A one-member group (TRL: num_generations = 1) has std 0, so its A is 0 as well.
      const double std_g = scaling == AdvantageEstimator::grpo_batch_std ? (n > 1 ? batch.std : 0.0)
                                                                          : (g.size() > 1 ? s.std : 0.0);
      for (int64_t i : g) {
        double a = R[i] - s.mean;
        if (scaling != AdvantageEstimator::grpo_no_std) a /= std_g + eps;
        A[i] = std::isnan(a) ? 0.0 : a;  // unscorable rows, and groups TRL cannot scale
      }
    }
  } else {
    // normalize_then_sum: each function in its group, then the weighted nansum, then the batch.
    std::vector<double> normed(static_cast<size_t>(n * K), NAN);
    for (const std::vector<int64_t>& g : members) {
      if (g.empty()) continue;
      for (int64_t k = 0; k < K; ++k) {
        const NanStats s = nan_stats(g, [&](int64_t i) { return raw(i, k); });
        const double std_k = g.size() > 1 ? s.std : 0.0;
        for (int64_t i : g) normed[i * K + k] = (raw(i, k) - s.mean) / (std_k + eps);
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t k = 0; k < K; ++k)
        if (!std::isnan(normed[i * K + k])) R[i] += weight(k) * normed[i * K + k];
      if (unscorable(i)) R[i] = NAN;
    }
    const NanStats s = nan_stats(everyone, [&](int64_t i) { return R[i]; });
    const double std_all = n > 1 ? s.std : 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double a = (R[i] - s.mean) / (std_all + eps);
      A[i] = std::isnan(a) ? 0.0 : a;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    advantages[i] = static_cast<Real>(A[i]);
    if (rewards) rewards[i] = static_cast<Real>(R[i]);
  }
  return Status::success();
}

}  // namespace detail

// TRL's advantages for num_functions reward functions (MATH.md, "TRL: advantages").
//   rewards_per_function: [num_responses x num_functions], row-major; NaN where a function returned
//                         None. An infinite value is an error.
//   reward_weights:       [num_functions] (GRPOConfig.reward_weights); nullptr: all 1.
//   sum_then_normalize:   R_i = sum_k w_k r_ik over the functions that scored i (nansum); a response
//                         no function scored is unscorable (R_i = NaN): it is left out of every mean
//                         and std and gets A = 0. Then, with the group's nanmean and unbiased nanstd,
//                         scaling grpo (scale_rewards "group"): A = (R - mean_g) / (std_g + eps);
//                         grpo_batch_std ("batch"): std over all scorable responses; grpo_no_std
//                         ("none"): A = R - mean_g. A group with fewer than 2 scorable responses
//                         gets A = 0 when scaled (TRL's NaN std, turned into 0).
//   normalize_then_sum:   r~_ik = (r_ik - mean_gk) / (std_gk + eps) per function, R_i = nansum_k
//                         w_k r~_ik (NaN if unscorable), A = (R - mean) / (std + eps) over the batch;
//                         `scaling` is not read (as TRL ignores scale_rewards there).
// eps: TRL's 1e-4. rewards (optional, [num_responses]): R_i as above. Groups may be ragged (TRL's are
// contiguous blocks of num_generations). Errors write nothing.
template <typename Real>
Status trl_advantages(AdvantageEstimator scaling, const GroupAssignment& groups, int64_t num_functions,
                      const Real* rewards_per_function, const double* reward_weights, double eps, Real* advantages,
                      Real* rewards = nullptr,
                      RewardCombination combination = RewardCombination::sum_then_normalize) {
  return no_throw("trl_advantages", [&] {
    return detail::trl_advantages(scaling, groups, num_functions, rewards_per_function, reward_weights, eps,
                                  advantages, rewards, combination);
  });
}

}  // namespace cgrpo
