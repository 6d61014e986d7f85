// cgrpo/parallel/group_stats.hpp: group advantages when a group's responses are spread across ranks.
// Each rank writes per-group partial sums, the caller all-reduces them, each rank finishes its own responses.
#pragma once

#include <cmath>
#include <cstdint>

#include "cgrpo/advantages/group_advantages.hpp"
#include "cgrpo/base/buffer_overlap.hpp"
#include "cgrpo/advantages/group_advantages.hpp"
#include "cgrpo/base/status.hpp"

namespace cgrpo::parallel {

// Threads: the functions here keep no state; calls may run at the same time (inputs may be
// shared, an output may not).

// Layout of the two buffers the caller all-reduces, G = number of groups in the
// GLOBAL batch (group ids are global, the same on every rank):
//   sums     [G * kGroupSumFields]:     count, sum(R - shift), sum((R - shift)^2)  -> all-reduce SUM
//   extrema  [G * kGroupExtremaFields]: max R, -min R                              -> all-reduce MAX
// The extrema give the exact "every reward of the group is equal" test (A = 0)
// that a sum of squares cannot give in floating point. `shift` is any value near
// the rewards, the same on every rank (0 is fine for rewards in [0, 1]); it keeps
// the sum of squares accurate when |mean| is much larger than the spread. Precision:
// the variance carries a relative error of about 1e-16 * sum (R - shift)^2 / sum (R - mean)^2
// (one all-reduce cannot do better); e.g. rewards 5.12 and 5.09 with shift 0 give A to
// about 1e-11 relative instead of the single-process 1e-16.
constexpr int kGroupSumFields = 3;
constexpr int kGroupExtremaFields = 2;

// Writes this rank's partial statistics of every global group (groups with no
// local member get the identity: zeros and -inf). local.group_ids are global ids
// in [0, local.num_groups), local.num_groups the global G.
template <typename Real>
Status group_partial_stats(const GroupAssignment& local, const Real* local_rewards, double shift, double* sums,
                           double* extrema) {
  if (local.num_responses < 0 || local.num_groups < 0)
    return make_error(StatusCode::invalid_argument, "group_partial_stats: negative sizes");
  if (local.num_groups > 0 && (!sums || !extrema))
    return make_error(StatusCode::invalid_argument, "group_partial_stats: sums and extrema must not be null");
  if (local.num_responses > 0 && (!local_rewards || !local.group_ids))
    return make_error(StatusCode::invalid_argument, "group_partial_stats: rewards and group_ids must not be null");
  BufferTable table;
  table.input(array_span("rewards", local_rewards, local.num_responses));
  table.input(array_span("group_ids", local.group_ids, local.num_responses));
  table.output(row_span("sums", sums, local.num_groups, kGroupSumFields, kGroupSumFields));
  table.output(row_span("extrema", extrema, local.num_groups, kGroupExtremaFields, kGroupExtremaFields));
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  if (!std::isfinite(shift))
    return make_error(StatusCode::invalid_argument, "group_partial_stats: shift must be finite, got %g", shift);
  for (int64_t i = 0; i < local.num_responses; ++i) {
    if (local.group_ids[i] < 0 || local.group_ids[i] >= local.num_groups)
      return make_error(StatusCode::out_of_range, "group_partial_stats: group_ids[%lld] = %d is outside [0, %lld)",
                        static_cast<long long>(i), local.group_ids[i], static_cast<long long>(local.num_groups));
    if (!std::isfinite(static_cast<double>(local_rewards[i])))
      return make_error(StatusCode::non_finite, "group_partial_stats: rewards[%lld] is not finite",
                        static_cast<long long>(i));
    // The sums hold at most num_responses squares of R - shift: refuse any that could overflow.
    const double d = static_cast<double>(local_rewards[i]) - shift;
    if (!std::isfinite(d * d * static_cast<double>(local.num_responses)))
      return make_error(StatusCode::non_finite,
                        "group_partial_stats: rewards[%lld] - shift = %g: the sum of squares would overflow (pick a "
                        "shift near the rewards)",
                        static_cast<long long>(i), d);
  }
  for (int64_t g = 0; g < local.num_groups; ++g) {
    sums[g * kGroupSumFields + 0] = sums[g * kGroupSumFields + 1] = sums[g * kGroupSumFields + 2] = 0.0;
    extrema[g * kGroupExtremaFields + 0] = extrema[g * kGroupExtremaFields + 1] = -INFINITY;
  }
  for (int64_t i = 0; i < local.num_responses; ++i) {
    const int64_t g = local.group_ids[i];
    const double r = static_cast<double>(local_rewards[i]);
    const double d = r - shift;
    sums[g * kGroupSumFields + 0] += 1.0;
    sums[g * kGroupSumFields + 1] += d;
    sums[g * kGroupSumFields + 2] += d * d;
    double* e = extrema + g * kGroupExtremaFields;
    e[0] = r > e[0] ? r : e[0];
    e[1] = -r > e[1] ? -r : e[1];
  }
  return Status::success();
}

// Merges the partials of another rank into (sums, extrema): what the all-reduce
// does (SUM on sums, MAX on extrema), for callers that gather instead. Errors (nothing
// written): a negative or overflowing size, null arrays, the other rank's arrays sharing
// memory with sums or extrema.
inline Status group_partial_stats_merge(int64_t num_groups, const double* other_sums, const double* other_extrema,
                                        double* sums, double* extrema) {
  if (num_groups < 0) return make_error(StatusCode::invalid_argument, "group_partial_stats_merge: negative num_groups");
  if (num_groups > 0 && (!other_sums || !other_extrema || !sums || !extrema))
    return make_error(StatusCode::invalid_argument, "group_partial_stats_merge: null pointer argument");
  BufferTable table;
  table.input(row_span("other_sums", other_sums, num_groups, kGroupSumFields, kGroupSumFields));
  table.input(row_span("other_extrema", other_extrema, num_groups, kGroupExtremaFields, kGroupExtremaFields));
  table.output(row_span("sums", sums, num_groups, kGroupSumFields, kGroupSumFields));
  table.output(row_span("extrema", extrema, num_groups, kGroupExtremaFields, kGroupExtremaFields));
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  for (int64_t k = 0; k < num_groups * kGroupSumFields; ++k) sums[k] += other_sums[k];
  for (int64_t k = 0; k < num_groups * kGroupExtremaFields; ++k)
    extrema[k] = other_extrema[k] > extrema[k] ? other_extrema[k] : extrema[k];
  return Status::success();
}

// A_i of this rank's responses from the all-reduced statistics, with the rules
// of cgrpo::group_advantages (MATH.md): grpo, grpo_no_std, rloo. `shift` must be
// the value given to group_partial_stats. reinforce_pp_baseline writes R - mean_g
// (one-member group: R), not yet whitened: its batch whitening is a second,
// token-weighted reduction (whitening_partial_stats, all-reduce SUM, whiten_from_stats).
// gdpo (one reward component) writes grpo's value, not yet whitened: the same second
// reduction then gives cgrpo::group_advantages(gdpo), with verl's whiten_eps = 1e-8 and
// whiten_count_eps = 1e-8 passed to whiten_from_stats. GDPO with K components
// (cgrpo::gdpo_advantages): group_partial_stats and this function once per component
// (its own sums and extrema, or K sets packed into one all-reduce), S_i = sum_k w_k A_ik
// on each rank, then whitening_partial_stats / whiten_from_stats over S. grpo_batch_std
// (a batch-wide std) is refused. Nothing is written on error.
template <typename Real>
Status group_advantages_from_stats(AdvantageEstimator estimator, const GroupAssignment& local,
                                   const Real* local_rewards, const double* sums, const double* extrema,
                                   double shift, double eps, Real* advantages) {
  if (static_cast<unsigned>(estimator) > static_cast<unsigned>(AdvantageEstimator::reinforce_pp_baseline) &&
      estimator != AdvantageEstimator::gdpo)
    return make_error(StatusCode::invalid_argument,
                      "group_advantages_from_stats: estimator %d (%s) is not offered (grpo, grpo_no_std, rloo, "
                      "reinforce_pp_baseline, gdpo)",
                      static_cast<int>(estimator), to_string(estimator));
  if (!std::isfinite(eps) || eps < 0)
    return make_error(StatusCode::invalid_argument, "group_advantages_from_stats: eps must be finite and >= 0, got %g",
                      eps);
  if (local.num_responses < 0 || local.num_groups < 0)
    return make_error(StatusCode::invalid_argument, "group_advantages_from_stats: negative sizes");
  if (local.num_responses == 0) return Status::success();
  if (!local_rewards || !local.group_ids || !sums || !extrema || !advantages)
    return make_error(StatusCode::invalid_argument, "group_advantages_from_stats: null pointer argument");
  BufferTable table;
  table.input(array_span("rewards", local_rewards, local.num_responses));
  table.input(array_span("group_ids", local.group_ids, local.num_responses));
  table.input(row_span("sums", sums, local.num_groups, kGroupSumFields, kGroupSumFields));
  table.input(row_span("extrema", extrema, local.num_groups, kGroupExtremaFields, kGroupExtremaFields));
  table.output(array_span("advantages", advantages, local.num_responses));
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  for (int64_t i = 0; i < local.num_responses; ++i) {
    const int64_t g = local.group_ids[i];
    if (g < 0 || g >= local.num_groups)
      return make_error(StatusCode::out_of_range, "group_advantages_from_stats: group_ids[%lld] = %lld is outside [0, %lld)",
                        static_cast<long long>(i), static_cast<long long>(g), static_cast<long long>(local.num_groups));
    if (!std::isfinite(static_cast<double>(local_rewards[i])))
      return make_error(StatusCode::non_finite, "group_advantages_from_stats: rewards[%lld] is not finite",
                        static_cast<long long>(i));
    if (!(sums[g * kGroupSumFields] >= 1.0))
      return make_error(StatusCode::invalid_argument,
                        "group_advantages_from_stats: group %lld has count %g after the reduction (were the partials all-reduced?)",
                        static_cast<long long>(g), sums[g * kGroupSumFields]);
    if (!std::isfinite(sums[g * kGroupSumFields + 1]) || !std::isfinite(sums[g * kGroupSumFields + 2]))
      return make_error(StatusCode::non_finite,
                        "group_advantages_from_stats: group %lld's reduced sums are not finite (%g, %g)",
                        static_cast<long long>(g), sums[g * kGroupSumFields + 1], sums[g * kGroupSumFields + 2]);
  }
  auto advantage = [&](int64_t i) {
    const int64_t g = local.group_ids[i];
    const double c = sums[g * kGroupSumFields + 0];
    const double mean_shifted = sums[g * kGroupSumFields + 1] / c;
    const double r = static_cast<double>(local_rewards[i]);
    const double centered = (r - shift) - mean_shifted;  // R - mean
    const bool all_equal = extrema[g * kGroupExtremaFields + 0] == -extrema[g * kGroupExtremaFields + 1];
    double a = 0;
    switch (estimator) {
      case AdvantageEstimator::grpo:
      case AdvantageEstimator::gdpo:  // one component, before whitening
        if (c < 2) a = r / (1.0 + eps);
        else if (all_equal) a = 0.0;
        else {
          // Unbiased variance from the shifted sums: (S2 - S1^2 / n) / (n - 1), never below 0.
          double m2 = sums[g * kGroupSumFields + 2] - sums[g * kGroupSumFields + 1] * mean_shifted;
          m2 = m2 > 0 ? m2 : 0.0;
          a = centered / (std::sqrt(m2 / (c - 1)) + eps);
        }
        break;
      case AdvantageEstimator::grpo_no_std:
        a = c < 2 ? r : (all_equal ? 0.0 : centered);
        break;
      case AdvantageEstimator::rloo:
        a = c < 2 ? r : c / (c - 1) * centered;
        break;
      default:  // reinforce_pp_baseline, before whitening
        a = c < 2 ? r : centered;
        break;
    }
    return a;
  };
  // A cancelled variance (S2 - S1 mean = 0 for distinct rewards) with eps = 0, or a value past
  // Real's range, is not finite: an error before anything is written, never an OK.
  for (int64_t i = 0; i < local.num_responses; ++i)
    if (!std::isfinite(static_cast<double>(static_cast<Real>(advantage(i)))))
      return make_error(StatusCode::non_finite,
                        "group_advantages_from_stats (%s): the advantage of response %lld is not finite (a zero "
                        "variance from the shifted sums with eps = 0, or a value past the output type)",
                        to_string(estimator), static_cast<long long>(i));
  for (int64_t i = 0; i < local.num_responses; ++i) advantages[i] = static_cast<Real>(advantage(i));
  return Status::success();
}

// reinforce_pp_baseline's and gdpo's whitening over the valid tokens of the GLOBAL batch, as
// cgrpo::group_advantages does it on one process (masked mean, unbiased masked
// variance, rsqrt(var + 1e-8)). Each rank writes sums[kWhitenFields] = (valid tokens,
// sum n_i A_i, sum n_i A_i^2) over its responses; the caller all-reduces them with SUM;
// whiten_from_stats() then whitens this rank's A_i in place.
constexpr int kWhitenFields = 3;

template <typename Real>
Status whitening_partial_stats(int64_t num_responses, const int64_t* token_counts, const Real* advantages,
                               double* sums) {
  if (num_responses < 0 || !sums || (num_responses > 0 && (!token_counts || !advantages)))
    return make_error(StatusCode::invalid_argument, "whitening_partial_stats: bad size or null pointer");
  BufferTable table;
  table.input(array_span("token_counts", token_counts, num_responses));
  table.input(array_span("advantages", advantages, num_responses));
  table.output(array_span("sums", sums, kWhitenFields));
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  double s0 = 0, s1 = 0, s2 = 0;
  for (int64_t i = 0; i < num_responses; ++i) {
    if (token_counts[i] < 0)
      return make_error(StatusCode::invalid_argument, "token_counts[%lld] is negative", static_cast<long long>(i));
    const double n = static_cast<double>(token_counts[i]), a = static_cast<double>(advantages[i]);
    if (!std::isfinite(a))
      return make_error(StatusCode::non_finite, "whitening_partial_stats: advantages[%lld] is not finite",
                        static_cast<long long>(i));
    if (!std::isfinite(n * a * a * static_cast<double>(num_responses)))
      return make_error(StatusCode::non_finite,
                        "whitening_partial_stats: token_counts[%lld] x advantages[%lld]^2 would overflow the sums",
                        static_cast<long long>(i), static_cast<long long>(i));
    s0 += n;
    s1 += n * a;
    s2 += n * a * a;
  }
  sums[0] = s0;
  sums[1] = s1;
  sums[2] = s2;
  return Status::success();
}

template <typename Real>
Status whiten_from_stats(int64_t num_responses, const double* sums, Real* advantages, double whiten_eps = 1e-8,
                         double whiten_count_eps = 0.0) {
  if (num_responses < 0 || !sums || (num_responses > 0 && !advantages))
    return make_error(StatusCode::invalid_argument, "whiten_from_stats: bad size or null pointer");
  if (!std::isfinite(whiten_eps) || whiten_eps < 0 || !std::isfinite(whiten_count_eps) || whiten_count_eps < 0)
    return make_error(StatusCode::invalid_argument,
                      "whiten_from_stats: whiten_eps and whiten_count_eps must be finite and >= 0, got %g and %g",
                      whiten_eps, whiten_count_eps);
  BufferTable table;  // advantages are whitened in place; the sums must be elsewhere
  table.input(array_span("sums", sums, kWhitenFields));
  table.output(array_span("advantages", advantages, num_responses));
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  const double tokens = sums[0];
  if (!(tokens >= 2))
    return make_error(StatusCode::invalid_argument,
                      "whitening (reinforce_pp_baseline, gdpo) needs at least 2 valid tokens in the batch, got %g",
                      tokens);
  if (!std::isfinite(tokens) || !std::isfinite(sums[1]) || !std::isfinite(sums[2]))
    return make_error(StatusCode::non_finite, "whiten_from_stats: the reduced sums are not finite (%g, %g, %g)", tokens,
                      sums[1], sums[2]);
  // As group_advantages: the masked means divide by N + whiten_count_eps (verl's masked_whiten:
  // 1e-8), then Bessel's N / (N - 1). sum n (A - mu)^2 = s2 - 2 mu s1 + mu^2 N (= s2 - s1 mu when
  // the count is exact).
  const double count = tokens + whiten_count_eps;
  const double mu = sums[1] / count;
  double m2 = whiten_count_eps == 0 ? sums[2] - sums[1] * mu : sums[2] - 2.0 * mu * sums[1] + mu * mu * tokens;
  m2 = m2 > 0 ? m2 : 0.0;
  const double var = whiten_count_eps == 0 ? m2 / (tokens - 1) : m2 / count * (tokens / (tokens - 1));
  const double inv_std = 1.0 / std::sqrt(var + whiten_eps);
  for (int64_t i = 0; i < num_responses; ++i)
    advantages[i] = static_cast<Real>((static_cast<double>(advantages[i]) - mu) * inv_std);
  return Status::success();
}

}  // namespace cgrpo::parallel
