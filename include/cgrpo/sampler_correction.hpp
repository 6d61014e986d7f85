// cgrpo/sampler_correction.hpp: TRL's corrections of the policy loss: the vLLM importance-sampling
// weight (truncate / mask), the off-policy sequence mask (OPSM) and VESPO's per-row gamma weights.
#pragma once

#include <stdint.h>

#include "cgrpo/config.hpp"
#include "cgrpo/macros.hpp"

namespace cgrpo {

// TRL's sampling/* metrics (GRPOTrainer). Filled when config.sampler.mode != none.
struct SamplerMetrics {
  double logp_difference_mean = 0, logp_difference_max = 0;
  double is_ratio_min = 0, is_ratio_mean = 0, is_ratio_max = 0;
};

// (TODO(TRL parity): implement.) rows.count() rows; row i owns token rows [rows.begin(i),
// rows.end(i)); `mask` marks the tokens the corrections cover (the valid initial tokens); arrays
// are [T], read only where mask is 1: logp (current policy), old_logp, rollout_logp (nullptr when
// the batch has none: OPSM then uses old_logp), advantages. Writes
//   factor[t]: multiplied by the sampler weight u (token or sequence, truncated or masked; not for
//              vespo, whose phi takes it instead) and by the row's OPSM keep flag (factor is 1 on
//              entry; left as is where mask is 0);
//   phi[i]:    vespo's per-row weight (config.policy_loss = vespo);
// and the sampler metrics.
template <typename RowBounds>
Status sampler_correction(const LossConfig& config, int64_t num_rows, const RowBounds& rows, const uint8_t* mask,
                          const double* logp, const double* old_logp, const double* rollout_logp,
                          const double* advantages, double* factor, double* phi, SamplerMetrics* metrics) {
  (void)config;
  (void)num_rows;
  (void)rows;
  (void)mask;
  (void)logp;
  (void)old_logp;
  (void)rollout_logp;
  (void)advantages;
  (void)factor;
  (void)phi;
  *metrics = SamplerMetrics{};
  return Status::success();
}

}  // namespace cgrpo
