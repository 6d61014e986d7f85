// cgrpo/advantages/group_advantages.hpp: group advantage estimators (one scalar per response).
// grpo, grpo_no_std, rloo, reinforce_pp_baseline, grpo_batch_std and gdpo (one reward component;
// several: cgrpo/advantages/gdpo_advantages.hpp), with verl's edge-case rules.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "cgrpo/base/buffer_overlap.hpp"
#include "cgrpo/base/layout.hpp"
#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/base/status.hpp"

namespace cgrpo {

// How one scalar advantage per response is computed from the rewards of its group.
enum class AdvantageEstimator : int {
  grpo = 0,                   // (R - mean_g) / (std_g + eps), std unbiased
  grpo_no_std = 1,            // R - mean_g (Dr. GRPO, the paper's released runs, TRL scale_rewards=none)
  rloo = 2,                   // n/(n-1) * (R - mean_g)
  reinforce_pp_baseline = 3,  // R - mean_g, then whitened over the batch's valid tokens
  grpo_batch_std = 4,         // (R - mean_g) / (std_batch + eps): TRL scale_rewards=batch
  gdpo = 5,                   // verl's GDPO: grpo per reward component, weighted sum, then whitened as
                              // reinforce_pp_baseline (here: one component, weight 1; gdpo_advantages.hpp)
};
inline constexpr int kNumAdvantageEstimators = 6;

inline const char* to_string(AdvantageEstimator e) {
  switch (e) {
    case AdvantageEstimator::grpo: return "grpo";
    case AdvantageEstimator::grpo_no_std: return "grpo_no_std";
    case AdvantageEstimator::rloo: return "rloo";
    case AdvantageEstimator::reinforce_pp_baseline: return "reinforce_pp_baseline";
    case AdvantageEstimator::grpo_batch_std: return "grpo_batch_std";
    case AdvantageEstimator::gdpo: return "gdpo";
  }
  return "unknown";
}

// The advantage settings of a recipe (presets give them beside the loss config).
struct AdvantageConfig {
  AdvantageEstimator estimator = AdvantageEstimator::grpo_no_std;  // the paper's released runs
  double eps = 1e-6;               // grpo / grpo_batch_std / gdpo: (std + eps) (verl 1e-6, TRL 1e-4)
  double whiten_eps = 1e-8;        // reinforce_pp_baseline / gdpo: rsqrt(var + whiten_eps)
  double whiten_count_eps = 0.0;   // reinforce_pp_baseline / gdpo: the whitening's mean and variance
                                   // divide by N + this (verl's masked_whiten: 1e-8; exact: 0)
};

// Threads: the functions here keep no state; calls may run at the same time (inputs may be
// shared, an output may not).

// Which group each response belongs to: group_ids[i] in [0, num_groups).
// Groups may be ragged and their members need not be contiguous.
struct GroupAssignment {
  int64_t num_responses = 0;
  const int32_t* group_ids = nullptr;
  int64_t num_groups = 0;
};

// Builds group ids from contiguous groups: group g owns responses
// [group_offsets[g], group_offsets[g+1]). Writes group_offsets[num_groups] ids; checks
// everything first, so an error writes nothing.
inline Status group_ids_from_offsets(int64_t num_groups, const int64_t* group_offsets, int32_t* group_ids) {
  if (num_groups < 0 || (num_groups > 0 && !group_offsets))
    return make_error(StatusCode::invalid_argument, "group_ids_from_offsets: bad num_groups or null offsets");
  if (num_groups > int64_t{INT32_MAX} + 1)
    return make_error(StatusCode::invalid_argument, "group_ids_from_offsets: num_groups (%lld) must fit int32 ids",
                      static_cast<long long>(num_groups));
  if (num_groups == 0) return Status::success();
  if (group_offsets[0] != 0)
    return make_error(StatusCode::invalid_argument, "group_offsets[0] must be 0");
  for (int64_t g = 0; g < num_groups; ++g)
    if (group_offsets[g + 1] < group_offsets[g])
      return make_error(StatusCode::invalid_argument, "group_offsets must be non-decreasing at group %lld",
                        static_cast<long long>(g));
  const int64_t n = group_offsets[num_groups];
  if (n > 0 && !group_ids)
    return make_error(StatusCode::invalid_argument, "group_ids_from_offsets: group_ids must not be null");
  BufferTable table;
  table.input(array_span("group_offsets", group_offsets, num_groups + 1));
  table.output(array_span("group_ids", group_ids, n));
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  for (int64_t g = 0; g < num_groups; ++g)
    for (int64_t i = group_offsets[g]; i < group_offsets[g + 1]; ++i) group_ids[i] = static_cast<int32_t>(g);
  return Status::success();
}

namespace detail {
// verl's masked_whiten of one value per response, response i counted token_counts[i] times (its
// valid tokens), in place on `values` (the caller's scratch): mu = sum n v / (N + count_eps),
// var = [sum n (v - mu)^2 / (N + count_eps)] N / (N - 1), v <- (v - mu) / sqrt(var + whiten_eps).
// Needs N >= 2 (invalid_argument); a mean or variance past double's range is non_finite (it
// would give A = 0 or NaN). `who` names the estimator in the messages. token_counts are >= 0.
inline Status masked_whiten(const char* who, int64_t n, const int64_t* token_counts, double* values,
                            double whiten_eps, double whiten_count_eps) {
  // Token-weighted mean and unbiased variance of the broadcast values.
  double tokens = 0, sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    tokens += static_cast<double>(token_counts[i]);
    sum += static_cast<double>(token_counts[i]) * values[i];
  }
  if (tokens < 2)
    return make_error(StatusCode::invalid_argument,
                      "%s whitening needs at least 2 valid tokens in the batch, got %g", who, tokens);
  // verl's masked_whiten: masked means divide by N + 1e-8 (whiten_count_eps), then Bessel's N / (N - 1).
  const double mu = sum / (tokens + whiten_count_eps);
  double var = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = values[i] - mu;
    var += static_cast<double>(token_counts[i]) * d * d;
  }
  var = var / (tokens + whiten_count_eps) * (tokens / (tokens - 1));
  if (!std::isfinite(mu) || !std::isfinite(var))
    return make_error(StatusCode::non_finite,
                      "%s whitening: the values spread too far for their token-weighted mean and variance "
                      "(mean %g, variance %g)",
                      who, mu, var);
  const double inv_std = 1.0 / std::sqrt(var + whiten_eps);
  for (int64_t i = 0; i < n; ++i) values[i] = (values[i] - mu) * inv_std;
  return Status::success();
}

template <typename Real>
Status group_advantages(AdvantageEstimator estimator, const GroupAssignment& groups, const Real* rewards,
                        const int64_t* token_counts, double eps, Real* advantages, double whiten_eps,
                        double whiten_count_eps) {
  const int64_t n = groups.num_responses;
  if (n < 0 || groups.num_groups < 0)
    return make_error(StatusCode::invalid_argument, "group_advantages: negative sizes");
  // The arguments are checked even for an empty batch, as group_advantages_from_stats does.
  if (static_cast<unsigned>(estimator) >= static_cast<unsigned>(kNumAdvantageEstimators))
    return make_error(StatusCode::invalid_argument, "group_advantages: unknown estimator %d", static_cast<int>(estimator));
  if (!std::isfinite(eps) || eps < 0)
    return make_error(StatusCode::invalid_argument, "group_advantages: eps must be finite and >= 0, got %g", eps);
  if (!std::isfinite(whiten_eps) || whiten_eps < 0)
    return make_error(StatusCode::invalid_argument, "group_advantages: whiten_eps must be finite and >= 0, got %g",
                      whiten_eps);
  if (!std::isfinite(whiten_count_eps) || whiten_count_eps < 0)
    return make_error(StatusCode::invalid_argument,
                      "group_advantages: whiten_count_eps must be finite and >= 0, got %g", whiten_count_eps);
  if (n == 0) return Status::success();
  if (!rewards || !groups.group_ids || !advantages)
    return make_error(StatusCode::invalid_argument, "group_advantages: rewards, group_ids and advantages must not be null");
  const bool whiten = estimator == AdvantageEstimator::reinforce_pp_baseline || estimator == AdvantageEstimator::gdpo;
  BufferTable table;
  table.input(array_span("rewards", rewards, n));
  table.input(array_span("group_ids", groups.group_ids, n));
  table.input(array_span("token_counts", whiten ? token_counts : nullptr, n));
  table.output(array_span("advantages", advantages, n));
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  for (int64_t i = 0; i < n; ++i) {
    if (groups.group_ids[i] < 0 || groups.group_ids[i] >= groups.num_groups)
      return make_error(StatusCode::out_of_range, "group_advantages: group_ids[%lld] = %d is outside [0, %lld)",
                        static_cast<long long>(i), groups.group_ids[i], static_cast<long long>(groups.num_groups));
    if (!std::isfinite(static_cast<double>(rewards[i])))
      return make_error(StatusCode::non_finite, "group_advantages: rewards[%lld] is not finite",
                        static_cast<long long>(i));
  }
  if (whiten) {
    if (!token_counts)
      return make_error(StatusCode::invalid_argument, "%s needs token_counts (valid tokens per response)",
                        to_string(estimator));
    for (int64_t i = 0; i < n; ++i)
      if (token_counts[i] < 0)
        return make_error(StatusCode::invalid_argument, "token_counts[%lld] is negative", static_cast<long long>(i));
  }

  // Group statistics in double: count, mean, then the unbiased variance (two passes, as torch.std).
  std::vector<double> count(groups.num_groups, 0.0), mean(groups.num_groups, 0.0), m2(groups.num_groups, 0.0);
  std::vector<char> all_equal(groups.num_groups, 1);
  std::vector<double> first(groups.num_groups, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t g = groups.group_ids[i];
    const double r = static_cast<double>(rewards[i]);
    if (count[g] == 0) first[g] = r;
    else if (r != first[g]) all_equal[g] = 0;
    count[g] += 1;
    mean[g] += r;
  }
  for (int64_t g = 0; g < groups.num_groups; ++g)
    if (count[g] > 0) mean[g] /= count[g];
  for (int64_t i = 0; i < n; ++i) {
    const int32_t g = groups.group_ids[i];
    const double d = static_cast<double>(rewards[i]) - mean[g];
    m2[g] += d * d;
  }

  // The batch's unbiased std (grpo_batch_std), two passes.
  double batch_std = 0;
  if (estimator == AdvantageEstimator::grpo_batch_std && n > 1) {
    double mu = 0, ss = 0;
    for (int64_t i = 0; i < n; ++i) mu += static_cast<double>(rewards[i]);
    mu /= static_cast<double>(n);
    for (int64_t i = 0; i < n; ++i) ss += (static_cast<double>(rewards[i]) - mu) * (static_cast<double>(rewards[i]) - mu);
    batch_std = std::sqrt(ss / static_cast<double>(n - 1));
  }

  // Results stay in double until every check has passed: nothing is written on error.
  std::vector<double> result(n);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t g = groups.group_ids[i];
    const double r = static_cast<double>(rewards[i]);
    const double c = count[g];
    double a = 0;
    switch (estimator) {
      case AdvantageEstimator::grpo:
      case AdvantageEstimator::gdpo:  // one component: grpo's value, whitened below
        if (c < 2) a = r / (1.0 + eps);
        else if (all_equal[g]) a = 0.0;
        else if (!std::isfinite(m2[g]))  // the std would be inf and every A of the group 0: wrong, not OK
          return make_error(StatusCode::non_finite,
                            "group_advantages (%s): the rewards of group %d spread too far for their variance "
                            "(|R - mean| near 1e154 or more)",
                            to_string(estimator), g);
        else a = (r - mean[g]) / (std::sqrt(m2[g] / (c - 1)) + eps);
        break;
      case AdvantageEstimator::grpo_no_std:
        if (c < 2) a = r;
        else if (all_equal[g]) a = 0.0;
        else a = r - mean[g];
        break;
      case AdvantageEstimator::rloo:
        a = c < 2 ? r : c / (c - 1) * (r - mean[g]);
        break;
      case AdvantageEstimator::reinforce_pp_baseline:
        a = c < 2 ? r : r - mean[g];
        break;
      case AdvantageEstimator::grpo_batch_std:
        if (!all_equal[g] && !std::isfinite(batch_std))
          return make_error(StatusCode::non_finite,
                            "group_advantages (grpo_batch_std): the batch's rewards spread too far for their variance");
        a = all_equal[g] ? 0.0 : (r - mean[g]) / (batch_std + eps);
        break;
      default:
        return make_error(StatusCode::invalid_argument, "group_advantages: unknown estimator %d",
                          static_cast<int>(estimator));
    }
    result[i] = a;
  }

  if (whiten)
    CGRPO_RETURN_IF_ERROR(
        masked_whiten(to_string(estimator), n, token_counts, result.data(), whiten_eps, whiten_count_eps));
  // Finite rewards can still give a non-finite advantage (group sums past DBL_MAX, a value past
  // Real's range, whitening with whiten_eps = 0 and no spread): an error, never an OK.
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(static_cast<double>(static_cast<Real>(result[i]))))
      return make_error(StatusCode::non_finite,
                        "group_advantages (%s): the advantage of response %lld is not finite (rewards too large for "
                        "the arithmetic or the output type, or whitening with whiten_eps = 0 and no spread)",
                        to_string(estimator), static_cast<long long>(i));
  for (int64_t i = 0; i < n; ++i) advantages[i] = static_cast<Real>(result[i]);
  return Status::success();
}
}  // namespace detail

// Computes A_i for every response (MATH.md, "Group advantages"):
//   grpo:        (R - mean_g) / (std_g + eps), std unbiased; one-member group: mean 0, std 1
//   grpo_no_std: R - mean_g; one-member group: R
//   rloo:        n/(n-1) (R - mean_g) for n > 1, else R
//   reinforce_pp_baseline: R - mean_g, then whitened over the valid tokens of the
//                batch (token_counts[i] valid tokens per response; masked mean and
//                unbiased masked variance, rsqrt(var + whiten_eps) as verl's masked_whiten;
//                whiten_count_eps is verl's 1e-8 in the masked means' counts)
//   grpo_batch_std: (R - mean_g) / (std_batch + eps), std_batch the unbiased std of all the
//                batch's rewards (TRL scale_rewards="batch"; a one-member group gets 0)
//   gdpo:        verl's GDPO with one reward component (the rewards) of weight 1: grpo's value,
//                then whitened as reinforce_pp_baseline (verl's compute_gdpo_outcome_advantage
//                called without config; several components: gdpo_advantages.hpp)
// A group whose rewards are all equal gets A = 0 under grpo, gdpo (before whitening) and grpo_no_std.
// token_counts is read only by reinforce_pp_baseline and gdpo and may be null otherwise. advantages may
// not share memory with the inputs. O(num_groups) scratch: a failed allocation is out_of_memory.
template <typename Real>
Status group_advantages(AdvantageEstimator estimator, const GroupAssignment& groups, const Real* rewards,
                        const int64_t* token_counts, double eps, Real* advantages, double whiten_eps = 1e-8,
                        double whiten_count_eps = 0.0) {
  return no_throw("group_advantages", [&] {
    return detail::group_advantages(estimator, groups, rewards, token_counts, eps, advantages, whiten_eps,
                                    whiten_count_eps);
  });
}

// The same, with a recipe's advantage settings (presets: Recipe::advantage).
template <typename Real>
Status group_advantages(const AdvantageConfig& config, const GroupAssignment& groups, const Real* rewards,
                        const int64_t* token_counts, Real* advantages) {
  return group_advantages(config.estimator, groups, rewards, token_counts, config.eps, advantages, config.whiten_eps,
                          config.whiten_count_eps);
}

// Copies one advantage per response onto each of its token rows. Errors (nothing written): a
// malformed layout, null arrays, per_token sharing memory with per_response or the offsets.
template <typename Real>
Status broadcast_to_tokens(const SequenceLayout& layout, const Real* per_response, Real* per_token) {
  int64_t num_tokens = 0;
  CGRPO_RETURN_IF_ERROR(layout.count_tokens(&num_tokens));
  if ((layout.num_sequences > 0 && !per_response) || (num_tokens > 0 && !per_token))
    return make_error(StatusCode::invalid_argument, "broadcast_to_tokens: per_response and per_token must not be null");
  BufferTable table;
  table.input(array_span("per_response", per_response, layout.num_sequences));
  table.input(layout.offsets_span());
  table.output(array_span("per_token", per_token, num_tokens));
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  for (int64_t i = 0; i < layout.num_sequences; ++i)
    for (int64_t t = layout.begin(i); t < layout.end(i); ++t) per_token[t] = per_response[i];
  return Status::success();
}

}  // namespace cgrpo
