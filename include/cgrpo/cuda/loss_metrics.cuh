// cgrpo/cuda/loss_metrics.cuh: the fixed-size head of the workspace that policy_loss_metrics() reads:
// the status word, the reduced sums of every metric family, and what finalizing them needs.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cgrpo/loss/config.hpp"
#include "cgrpo/loss/metrics.hpp"
#include "cgrpo/corrections/rollout_correction.hpp"
#include "cgrpo/corrections/sampler_correction.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/cuda/device_status.cuh"

namespace cgrpo::cuda {

// TRL's per-row clip metrics (clip_ratio/low_min, high_max, and the row means at sequence level)
// from each row's counts of valid initial policy tokens and of their below / above flags.
// Mergeable in any order (sums, min, max), so rows reduce like MetricSums.
struct RowClipSums {
  double rows, empty_rows;                 // rows seen; rows without a counted token
  double low_min, high_max;                // over the non-empty rows (+inf / -inf: none yet)
  double low_sum, high_sum, region_sum;    // sums over the non-empty rows of the row fractions
};

__host__ __device__ __forceinline__ RowClipSums row_clip_zero() {
  return RowClipSums{0.0, 0.0, INFINITY, -INFINITY, 0.0, 0.0, 0.0};
}

// One row from its counts (valid initial tokens in the policy term, and how many are below / above).
__host__ __device__ __forceinline__ RowClipSums row_clip_of_row(double count, double below, double above) {
  RowClipSums s = row_clip_zero();
  s.rows = 1;
  if (count == 0) {
    s.empty_rows = 1;
    return s;
  }
  s.low_min = s.low_sum = below / count;
  s.high_max = s.high_sum = above / count;
  s.region_sum = (below + above) / count;
  return s;
}

__host__ __device__ __forceinline__ RowClipSums row_clip_merge(const RowClipSums& a, const RowClipSums& b) {
  RowClipSums s;
  s.rows = a.rows + b.rows;
  s.empty_rows = a.empty_rows + b.empty_rows;
  s.low_min = math::min(a.low_min, b.low_min);
  s.high_max = math::max(a.high_max, b.high_max);
  s.low_sum = a.low_sum + b.low_sum;
  s.high_sum = a.high_sum + b.high_sum;
  s.region_sum = a.region_sum + b.region_sum;
  return s;
}

// TRL's sampler metric partial of a row and its vespo weight phi_i (summed for vespo_phi_mean).
struct SamplerRowPartial {
  SamplerPartial<double> partial;
  double phi;
};

__host__ __device__ __forceinline__ SamplerRowPartial sampler_row_partial_zero() {
  return SamplerRowPartial{sampler_partial_zero<double>(), 0.0};
}

__host__ __device__ __forceinline__ SamplerRowPartial sampler_row_partial_merge(const SamplerRowPartial& a,
                                                                               const SamplerRowPartial& b) {
  return SamplerRowPartial{sampler_partial_merge(a.partial, b.partial), a.phi + b.phi};
}

// What finalizing the sums needs from the config and the batch (policy_loss_metrics() gets the
// workspace pointer only): written by the first kernel of every call.
struct MetricsInfo {
  double metric_mean_eps;
  int64_t num_rows;         // rows of the per-row metrics (0: none)
  int32_t rollout_on;       // config.off_policy.rollout.mode != none: verl's rollout metrics
  int32_t batch_normalize;  // is_level != none and is_batch_normalize: report the divisor
  int32_t sampler_on;       // config.off_policy.sampler.mode != none: TRL's sampling metrics
  int32_t vespo;            // vespo_phi_mean
  int32_t sequence_level;   // ratio_level = sequence: TRL's clip means per row
  RolloutParams rollout;
};

// The head of every policy-loss workspace: 1 KB at offset 0. status must stay first
// (token_logprobs' workspace is the status word alone).
struct alignas(256) MetricsHeader {
  DeviceStatus status;
  MetricSums<double> sums;  // the per-token sums, reduced
  MetricsInfo info;
  RolloutBatchSums rollout;
  SamplerRowPartial sampler;
  RowClipSums row_clip;
};
static_assert(sizeof(MetricsHeader) <= 1024, "the metrics header is 1 KB");

// What the first kernel of a call writes: nothing flagged, every sum at its identity.
__host__ __device__ __forceinline__ void metrics_header_begin(MetricsHeader* h, const MetricsInfo& info) {
  for (int k = 0; k < kNumDeviceErrors; ++k) h->status.first[k] = ~0ull;
  h->status.vocab_size = -1;
  h->sums = metric_sums_zero<double>();
  h->info = info;
  h->rollout = rollout_batch_sums_zero();
  h->sampler = sampler_row_partial_zero();
  h->row_clip = row_clip_zero();
}

// The LossMetrics of a host copy of the header, or the error the kernels flagged. A non-finite
// loss or metric is an error as on the CPU path (its checks come after the per-token ones there too).
inline Status finalize_metrics_header(const MetricsHeader& h, LossMetrics* out) {
  CGRPO_RETURN_IF_ERROR(decode_device_status(h.status));
  if (!std::isfinite(h.sums.loss))
    return make_error(StatusCode::non_finite,
                      "the loss is not finite (a term overflowed: check the advantages, weights, coefficients and "
                      "log ratios); the outputs were written");
  const MetricsInfo& info = h.info;
  LossMetrics m = finalize_metrics(h.sums, info.metric_mean_eps);
  if (info.rollout_on) m.rollout = finalize_rollout_metrics(h.rollout, info.rollout, info.batch_normalize != 0);
  if (info.sampler_on) m.sampler = sampler_metrics_finalize(h.sampler.partial);
  if (info.num_rows > 0) {
    const RowClipSums& c = h.row_clip;
    const bool any = c.rows > c.empty_rows;
    m.clip_ratio_low_min = any ? c.low_min : 0.0;
    m.clip_ratio_high_max = any ? c.high_max : 0.0;
    if (info.sequence_level) {  // TRL: one value per row, averaged over every row; an empty row counts as 0
      const double B = static_cast<double>(info.num_rows);
      m.clip_ratio_low_mean = c.low_sum / B;
      m.clip_ratio_high_mean = c.high_sum / B;
      m.clip_ratio_region_mean = c.region_sum / B;
      if (c.empty_rows > 0) m.clip_ratio_low_min = 0.0;
    }
    if (info.vespo) m.vespo_phi_mean = h.sampler.phi / static_cast<double>(info.num_rows);
  }
  // OK means every metric is finite, as on the CPU path (finish_token_pass's check).
  if (const char* name = first_non_finite_metric(m))
    return make_error(StatusCode::non_finite,
                      "metrics.%s is not finite (a ratio, a KL or a correction weight overflowed: clamp the log "
                      "ratio or check the log-probs); the outputs were written",
                      name);
  *out = m;
  return Status::success();
}

}  // namespace cgrpo::cuda
