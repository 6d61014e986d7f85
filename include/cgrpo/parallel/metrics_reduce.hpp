// cgrpo/parallel/metrics_reduce.hpp: the metrics of several ranks (or micro-batches) combined into those of the whole batch.
// LossMetrics -> a vector of sums the caller all-reduces with SUM -> LossMetrics of the global batch.
#pragma once

#include <cstdint>

#include "cgrpo/loss/metrics.hpp"

namespace cgrpo::parallel {

// Threads: the functions here keep no state; calls may run at the same time (inputs may be
// shared, an output may not).

// Weighted losses are already additive (with the global AggregationScale); every mean is
// turned back into its sum by multiplying with its count, and the counts are carried along.
constexpr int kMetricSumFields = 15;

namespace detail {
// The count a metric mean of n items was divided by.
inline double mean_count(int64_t n, double eps) { return n > 0 ? static_cast<double>(n) + eps : 0.0; }
inline double mean_or_zero(double sum, double n, double eps) { return n > 0 ? sum / (n + eps) : 0.0; }
}  // namespace detail

// mean_eps: the config's metrics.mean_eps (verl's masked_mean divides each mean by its count + 1e-8):
// a mean is turned back into its sum with the count it was divided by, and the union's means divide
// by the union's count + mean_eps, as one process would. Pass the same value to both functions.
//
// Reads every field of m before it writes sums, so the two may even share memory.
inline void metrics_to_sums(const LossMetrics& m, double* sums, double mean_eps = 0.0) {
  const double valid = detail::mean_count(m.num_valid_tokens, mean_eps);
  const double initial = detail::mean_count(m.num_initial_tokens, mean_eps);
  const double refinement = detail::mean_count(m.num_refinement_tokens, mean_eps);
  const double v[kMetricSumFields] = {m.loss,
                                      m.pg_loss_initial,
                                      m.pg_loss_refinement,
                                      m.entropy_loss,
                                      m.kl_loss,
                                      m.pg_clipfrac * initial,
                                      m.pg_clipfrac_lower * initial,
                                      m.ppo_kl * initial,
                                      m.entropy_mean * valid,
                                      m.kl_mean * valid,
                                      m.refinement_prob_mean * refinement,
                                      m.ratio_mean * initial,
                                      static_cast<double>(m.num_valid_tokens),
                                      static_cast<double>(m.num_initial_tokens),
                                      static_cast<double>(m.num_refinement_tokens)};
  for (int i = 0; i < kMetricSumFields; ++i) sums[i] = v[i];
}

// The metrics of the union of the ranks whose metrics_to_sums() were summed into `sums`.
// (No lambdas here: nvcc compiles this header and warns about the typedefs it makes for them.)
inline LossMetrics metrics_from_sums(const double* sums, double mean_eps = 0.0) {
  const double valid = sums[12], initial = sums[13], refinement = sums[14];
  LossMetrics m;
  m.loss = sums[0];
  m.pg_loss_initial = sums[1];
  m.pg_loss_refinement = sums[2];
  m.pg_loss = sums[1] + sums[2];
  m.entropy_loss = sums[3];
  m.kl_loss = sums[4];
  m.pg_clipfrac = detail::mean_or_zero(sums[5], initial, mean_eps);
  m.pg_clipfrac_lower = detail::mean_or_zero(sums[6], initial, mean_eps);
  m.ppo_kl = detail::mean_or_zero(sums[7], initial, mean_eps);
  m.entropy_mean = detail::mean_or_zero(sums[8], valid, mean_eps);
  m.kl_mean = detail::mean_or_zero(sums[9], valid, mean_eps);
  m.refinement_prob_mean = detail::mean_or_zero(sums[10], refinement, mean_eps);
  m.ratio_mean = detail::mean_or_zero(sums[11], initial, mean_eps);
  m.num_valid_tokens = static_cast<int64_t>(valid + 0.5);
  m.num_initial_tokens = static_cast<int64_t>(initial + 0.5);
  m.num_refinement_tokens = static_cast<int64_t>(refinement + 0.5);
  return m;
}

}  // namespace cgrpo::parallel
