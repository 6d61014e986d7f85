// cgrpo/rollout_correction.hpp: verl's rollout correction (rollout_corr_helper.py): truncated
// importance weights and rejection masks from the training / rollout log ratio, and their metrics.
#pragma once

#include <stdint.h>

#include "cgrpo/config.hpp"
#include "cgrpo/macros.hpp"

namespace cgrpo {

// verl's rollout_corr metrics (names as verl logs them, without the "rollout_corr/" prefix).
// Filled when config.rollout.mode != none; zero otherwise.
struct RolloutMetrics {
  double is_mean = 0, is_max = 0, is_min = 0, is_std = 0, is_eff_sample_size = 0;
  double is_ratio_fraction_high = 0, is_ratio_fraction_low = 0;
  double is_seq_mean = 0, is_seq_max = 0, is_seq_min = 0;
  double rs_masked_fraction = 0, rs_seq_masked_fraction = 0;
  struct Option {
    double mean = 0, max = 0, min = 0, masked_fraction = 0, seq_masked_fraction = 0;
  } rs_option[RolloutCorrectionConfig::kMaxRejectionOptions];
  double kl = 0, k3_kl = 0, chi2_token = 0, chi2_seq = 0;
};

// (TODO(verl parity): implement. The loss calls it once per batch, after the log-prob pass.)
//
// rows.count() rows; row i owns token rows [rows.begin(i), rows.end(i)). `mask` marks the tokens
// the correction covers (the valid initial tokens). For every row: d_t = train_logp_t -
// rollout_logp_t at its masked tokens (train_logp: old_logp in decoupled mode, the current log p
// in bypass mode; arrays [T], read only where mask is 1); writes
//   is_weight[t]: the truncated IS weight (1 at every token when cfg.is_level = none), constant;
//   keep[t]:      1 if every rejection option keeps the token (its row for sequence options), else 0;
// (both left as they are where mask is 0) and the metrics, over the mask. Returns an error Status
// for values it cannot use.
template <typename RowBounds>
Status rollout_correction(const RolloutCorrectionConfig& cfg, int64_t num_rows, const RowBounds& rows,
                          const uint8_t* mask, const double* train_logp, const double* rollout_logp, double* is_weight,
                          uint8_t* keep, RolloutMetrics* metrics) {
  (void)cfg;
  (void)num_rows;
  (void)rows;
  (void)mask;
  (void)train_logp;
  (void)rollout_logp;
  (void)is_weight;
  (void)keep;
  *metrics = RolloutMetrics{};
  return Status::success();
}

}  // namespace cgrpo
