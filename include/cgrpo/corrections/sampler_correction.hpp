// cgrpo/corrections/sampler_correction.hpp: TRL's corrections of the policy loss: the vLLM importance-sampling
// weight (truncate / mask), the off-policy sequence mask (OPSM) and VESPO's per-row gamma weights.
#pragma once

#include <math.h>
#include <stdint.h>

#include "cgrpo/loss/config.hpp"
#include "cgrpo/base/macros.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/math/token_math.hpp"

namespace cgrpo {

// TRL's sampling/* metrics (GRPOTrainer). Filled when config.sampler.mode != none.
struct SamplerMetrics {
  double logp_difference_mean = 0, logp_difference_max = 0;
  double is_ratio_min = 0, is_ratio_mean = 0, is_ratio_max = 0;
};

// ---------------------------------------------------------------------------
// Per-token and per-row math, CGRPO_HD so that the CUDA pre-pass evaluates the same code.

// The vLLM weight from a log ratio d (old - rollout of a token, or their sum over a row: a product
// of token ratios, not a mean). truncate: clamp(e^d, min, max); mask: e^d inside [min, max], else 0.
// min = 0 and max = +inf are "no bound", as TRL's None.
template <typename Real>
CGRPO_HD Real sampler_weight(int mode, Real d, Real min, Real max) {
  const Real u = math::exp(d);
  if (mode == static_cast<int>(SamplerCorrectionMode::token_truncate) ||
      mode == static_cast<int>(SamplerCorrectionMode::sequence_truncate))
    return math::clamp(u, min, max);
  if (mode == static_cast<int>(SamplerCorrectionMode::token_mask) ||
      mode == static_cast<int>(SamplerCorrectionMode::sequence_mask))
    return (u < min || u > max) ? Real(0) : u;
  return Real(1);
}

CGRPO_HD bool sampler_is_sequence(SamplerCorrectionMode m) {
  return m == SamplerCorrectionMode::sequence_truncate || m == SamplerCorrectionMode::sequence_mask;
}

// OPSM (DeepSeek-V3.2): keep unless the advantage is negative and the row's mean
// (rollout - sg(logp)) exceeds the threshold.
template <typename Real>
CGRPO_HD bool opsm_keep(Real advantage, Real row_mean_kl, Real threshold) {
  return advantage >= Real(0) || row_mean_kl <= threshold;
}

// VESPO's phi from a row's summed log weight S (get_gamma_weights): lw = clamp(S, log 1e-8, 20),
// phi = exp(lam + k lw - lam e^lw), (k, lam) by A >= 0, lam at least 1e-4, non-finite -> 0.
// TRL builds k and lam with torch.where over Python floats, that is as float32 tensors: they are
// rounded to float here too, so the double path gives TRL's number for any k, lam.
template <typename Real>
CGRPO_HD Real vespo_phi(Real log_w, Real advantage, double k_pos, double lambda_pos, double k_neg, double lambda_neg) {
  const Real lower = Real(-18.420680743952367);  // log(1e-8)
  const Real lw = math::clamp(log_w, lower, Real(20));
  const bool pos = advantage >= Real(0);
  const Real k = static_cast<Real>(static_cast<float>(pos ? k_pos : k_neg));
  const float lam_f = static_cast<float>(pos ? lambda_pos : lambda_neg);
  const Real lam = static_cast<Real>(lam_f > 1e-4f ? lam_f : 1e-4f);
  const Real phi = math::exp(lam + k * lw - lam * math::exp(lw));
  return isfinite(phi) ? phi : Real(0);
}

// One row's share of the sampler metrics; rows merge in any order (sums, mins, maxes), so the CUDA
// port reduces them as it likes and gets the same numbers up to the order of the sums.
template <typename Acc>
struct SamplerPartial {
  Acc diff_sum, diff_max, diff_count;      // |old - rollout| over valid tokens
  Acc is_sum, is_min, is_max, is_count;    // the final weight: per valid token, or per row (sequence)
};

template <typename Acc>
CGRPO_HD SamplerPartial<Acc> sampler_partial_zero() {
  SamplerPartial<Acc> p;
  p.diff_sum = p.diff_max = p.diff_count = Acc(0);
  p.is_sum = p.is_count = Acc(0);
  p.is_min = Acc(INFINITY);
  p.is_max = -Acc(INFINITY);
  return p;
}

template <typename Acc>
CGRPO_HD void sampler_partial_add_diff(SamplerPartial<Acc>& p, Acc abs_diff) {
  p.diff_sum += abs_diff;
  p.diff_max = p.diff_count > Acc(0) ? math::max(p.diff_max, abs_diff) : abs_diff;
  p.diff_count += Acc(1);
}

template <typename Acc>
CGRPO_HD void sampler_partial_add_weight(SamplerPartial<Acc>& p, Acc u) {
  p.is_sum += u;
  p.is_min = math::min(p.is_min, u);
  p.is_max = math::max(p.is_max, u);
  p.is_count += Acc(1);
}

template <typename Acc>
CGRPO_HD SamplerPartial<Acc> sampler_partial_merge(const SamplerPartial<Acc>& a, const SamplerPartial<Acc>& b) {
  SamplerPartial<Acc> s;
  s.diff_sum = a.diff_sum + b.diff_sum;
  s.diff_count = a.diff_count + b.diff_count;
  s.diff_max = a.diff_count == Acc(0) ? b.diff_max : (b.diff_count == Acc(0) ? a.diff_max : math::max(a.diff_max, b.diff_max));
  s.is_sum = a.is_sum + b.is_sum;
  s.is_count = a.is_count + b.is_count;
  s.is_min = math::min(a.is_min, b.is_min);
  s.is_max = math::max(a.is_max, b.is_max);
  return s;
}

// TRL's logged values: 0 where a set is empty (TRL's numel() == 0 branches).
template <typename Acc>
inline SamplerMetrics sampler_metrics_finalize(const SamplerPartial<Acc>& p) {
  SamplerMetrics m;
  if (p.diff_count > Acc(0)) {
    m.logp_difference_mean = static_cast<double>(p.diff_sum) / static_cast<double>(p.diff_count);
    m.logp_difference_max = static_cast<double>(p.diff_max);
  }
  if (p.is_count > Acc(0)) {
    m.is_ratio_min = static_cast<double>(p.is_min);
    m.is_ratio_mean = static_cast<double>(p.is_sum) / static_cast<double>(p.is_count);
    m.is_ratio_max = static_cast<double>(p.is_max);
  }
  return m;
}

// What one row of TRL's corrections reads: the row's tokens [begin, end) of the [T] arrays.
struct SamplerRowInputs {
  int64_t begin, end;
  const uint8_t* mask;          // covered tokens (valid initial tokens)
  const double* logp;           // current policy (sg: the corrections carry no gradient)
  const double* old_logp;
  const double* rollout_logp;   // nullptr: none (the vLLM weight is off; OPSM uses old_logp)
  const double* advantages;
};

// Optional per-token and per-row outputs of sampler_correction (tests, logging): each may be null.
struct SamplerArrays {
  double* is_ratio = nullptr;      // [T]: the vLLM weight of each covered token (sequence modes: its
                                   // row's); 1 elsewhere, and everywhere when the weight is off
  double* row_is_ratio = nullptr;  // [rows]: sequence modes: u_i of every row, empty rows included
  uint8_t* opsm_keep = nullptr;    // [T]: OPSM's keep flag at each covered token (1 elsewhere)
};

// One row: multiplies factor[t] (covered tokens) by the vLLM weight (not for vespo) and by OPSM's
// keep flag (a dropped token's factor is set to 0, never multiplied: an infinite weight there
// cannot become NaN), returns vespo's phi for the row (0 when the loss is not vespo), and adds the
// row to the metric partial. Positions of the row outside the mask count for vespo as TRL's padding:
// their vLLM weight is that of d = 0 (exp(0) truncated or masked).
template <typename Acc>
CGRPO_HD double sampler_row(const LossConfig& config, const SamplerRowInputs& in, double* factor,
                            SamplerArrays arrays, int64_t row, SamplerPartial<Acc>& partial) {
  const int mode = static_cast<int>(config.sampler.mode);
  const bool weight_on = config.sampler.mode != SamplerCorrectionMode::none;
  const bool sequence = sampler_is_sequence(config.sampler.mode);
  const bool vespo = config.policy_loss == PolicyLoss::vespo;
  const bool opsm = isfinite(config.off_policy_mask_threshold);
  const double lo = config.sampler.min, hi = config.sampler.max;

  double n = 0, sum_d = 0, sum_kl = 0, sum_x = 0, sum_log_u = 0;
  bool have_a = false;
  double row_a = 0;
  for (int64_t t = in.begin; t < in.end; ++t) {
    if (!in.mask[t]) continue;
    n += 1;
    if (!have_a) row_a = in.advantages[t], have_a = true;
    if (weight_on) {
      const double d = in.old_logp[t] - in.rollout_logp[t];
      sum_d += d;
      sampler_partial_add_diff(partial, static_cast<Acc>(math::abs(d)));
    }
    if (opsm) sum_kl += (in.rollout_logp ? in.rollout_logp[t] : in.old_logp[t]) - in.logp[t];
    if (vespo) sum_x += math::clamp(in.logp[t] - in.old_logp[t], -20.0, 20.0);
  }
  const double log_floor = -18.420680743952367;  // log(1e-8), TRL's floor of log u in vespo
  const double u_row = sequence ? sampler_weight(mode, sum_d, lo, hi) : 1.0;
  if (sequence) {
    sampler_partial_add_weight(partial, static_cast<Acc>(u_row));
    if (arrays.row_is_ratio) arrays.row_is_ratio[row] = u_row;
  }
  const double mean_kl = sum_kl / (n > 1 ? n : 1.0);
  for (int64_t t = in.begin; t < in.end; ++t) {
    if (!in.mask[t]) {
      // TRL's padding: u = exp(0) there, truncated or masked; vespo sums its log over every position.
      if (vespo && weight_on && !sequence)
        sum_log_u += math::clamp(math::log(sampler_weight(mode, 0.0, lo, hi)), log_floor, 20.0);
      continue;
    }
    double u = 1;
    if (weight_on) {
      u = sequence ? u_row : sampler_weight(mode, in.old_logp[t] - in.rollout_logp[t], lo, hi);
      if (!sequence) sampler_partial_add_weight(partial, static_cast<Acc>(u));
      if (vespo) sum_log_u += math::clamp(math::log(u), log_floor, 20.0);
      else factor[t] *= u;
    }
    if (arrays.is_ratio) arrays.is_ratio[t] = u;
    const bool keep = !opsm || opsm_keep(in.advantages[t], mean_kl, config.off_policy_mask_threshold);
    if (!keep) factor[t] = 0;
    if (arrays.opsm_keep) arrays.opsm_keep[t] = keep ? 1 : 0;
  }
  if (!vespo) return 0.0;
  // An empty row has no advantage to read: it takes the _pos pair (A = 0).
  return vespo_phi(sum_x + sum_log_u, row_a, config.vespo_k_pos, config.vespo_lambda_pos, config.vespo_k_neg,
                   config.vespo_lambda_neg);
}

// rows.count() rows; row i owns token rows [rows.begin(i), rows.end(i)); `mask` marks the tokens the
// corrections cover (the valid initial tokens); arrays are [T], read only where mask is 1: logp
// (current policy), old_logp, rollout_logp (nullptr when the batch has none: OPSM then uses
// old_logp, and the vLLM weight must be off), advantages. Writes
//   factor[t]: multiplied by the sampler weight u (token or sequence, truncated or masked; not for
//              vespo, whose phi takes it instead) and set to 0 where OPSM drops the row (factor is 1
//              on entry; left as is where mask is 0);
//   phi[i]:    vespo's per-row weight (config.policy_loss = vespo; untouched otherwise);
//   *arrays:   the optional per-token / per-row values above (nullptr: none);
// and the sampler metrics. Callable on its own (after validation of the config): the fused loss
// calls it between the sweeps.
template <typename RowBounds>
Status sampler_correction(const LossConfig& config, int64_t num_rows, const RowBounds& rows, const uint8_t* mask,
                          const double* logp, const double* old_logp, const double* rollout_logp,
                          const double* advantages, double* factor, double* phi, SamplerMetrics* metrics,
                          const SamplerArrays* arrays = nullptr) {
  // Rows without tokens read no array: rollout_logp may be null then (an empty batch).
  bool any_tokens = false;
  for (int64_t i = 0; i < num_rows && !any_tokens; ++i) any_tokens = rows.end(i) > rows.begin(i);
  if (config.sampler.mode != SamplerCorrectionMode::none && !rollout_logp && any_tokens)
    return make_error(StatusCode::invalid_argument, "config.sampler needs rollout_logp (the sampler's log-probs)");
  const SamplerArrays out = arrays ? *arrays : SamplerArrays{};
  SamplerPartial<double> partial = sampler_partial_zero<double>();
  for (int64_t i = 0; i < num_rows; ++i) {
    if (out.is_ratio || out.opsm_keep)
      for (int64_t t = rows.begin(i); t < rows.end(i); ++t) {
        if (out.is_ratio) out.is_ratio[t] = 1.0;
        if (out.opsm_keep) out.opsm_keep[t] = 1;
      }
    const SamplerRowInputs in{rows.begin(i), rows.end(i), mask, logp, old_logp, rollout_logp, advantages};
    const double p = sampler_row(config, in, factor, out, i, partial);
    if (config.policy_loss == PolicyLoss::vespo) phi[i] = p;
  }
  *metrics = config.sampler.mode != SamplerCorrectionMode::none ? sampler_metrics_finalize(partial) : SamplerMetrics{};
  return Status::success();
}

}  // namespace cgrpo
