// cgrpo/corrections/sampler_correction.hpp: TRL's corrections of the policy loss: the vLLM importance-sampling
// weight (truncate / mask), the off-policy sequence mask (OPSM) and VESPO's per-row gamma weights.
#pragma once

#include <math.h>
#include <stdint.h>

#include <cmath>
#include <limits>

#include "cgrpo/base/macros.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/base/variant_table.hpp"
#include "cgrpo/math/token_math.hpp"

namespace cgrpo {

// ---------------------------------------------------------------------------
// The vLLM weight's modes (GRPOConfig.vllm_importance_sampling_mode), one struct each.

struct SamplerModeTraits {
  const char* name;  // TRL's mode string
  bool on;           // a weight is applied (needs batch.rollout_logp)
  bool sequence;     // one weight per row from the row's summed log ratio (a product of token ratios)
  bool mask;         // outside [min, max] the weight is 0; false: clamped into [min, max]
};

// The weight from a log ratio d (old - rollout of a token, or their sum over a row). min = 0 and
// max = +inf are "no bound", as TRL's None.
struct NoSamplerWeight {
  CGRPO_HD static constexpr SamplerModeTraits traits() { return SamplerModeTraits{"none", false, false, false}; }
};
// clamp(e^d, min, max) per token.
struct TokenTruncateWeight {
  CGRPO_HD static constexpr SamplerModeTraits traits() { return SamplerModeTraits{"token_truncate", true, false, false}; }
};
// e^d inside [min, max], else 0, per token.
struct TokenMaskWeight {
  CGRPO_HD static constexpr SamplerModeTraits traits() { return SamplerModeTraits{"token_mask", true, false, true}; }
};
struct SequenceTruncateWeight {
  CGRPO_HD static constexpr SamplerModeTraits traits() { return SamplerModeTraits{"sequence_truncate", true, true, false}; }
};
struct SequenceMaskWeight {
  CGRPO_HD static constexpr SamplerModeTraits traits() { return SamplerModeTraits{"sequence_mask", true, true, true}; }
};

#define CGRPO_SAMPLER_MODES(X)                  \
  X(none, NoSamplerWeight)                      \
  X(token_truncate, TokenTruncateWeight)        \
  X(token_mask, TokenMaskWeight)                \
  X(sequence_truncate, SequenceTruncateWeight)  \
  X(sequence_mask, SequenceMaskWeight)

enum class SamplerCorrectionMode : int { CGRPO_SAMPLER_MODES(CGRPO_VARIANT_ENUM_ENTRY) };
inline constexpr int kNumSamplerModes = 0 CGRPO_SAMPLER_MODES(CGRPO_VARIANT_COUNT_ENTRY);

CGRPO_HD constexpr SamplerModeTraits traits_of(SamplerCorrectionMode m) {
  switch (m) {
#define CGRPO_TRAITS_CASE(name, Type) \
  case SamplerCorrectionMode::name: return Type::traits();
    CGRPO_SAMPLER_MODES(CGRPO_TRAITS_CASE)
#undef CGRPO_TRAITS_CASE
  }
  return SamplerModeTraits{"unknown", false, false, false};
}
inline const char* to_string(SamplerCorrectionMode m) { return traits_of(m).name; }

// TRL's vLLM importance-sampling correction (GRPOTrainer): a weight from old / rollout, computed
// without gradient, that multiplies the policy loss; a masked token keeps its place in every
// denominator. Needs batch.rollout_logp.
struct SamplerCorrectionConfig {
  SamplerCorrectionMode mode = SamplerCorrectionMode::none;
  double min = 0.0;                                       // 0: no lower bound
  double max = std::numeric_limits<double>::infinity();   // inf: no upper bound
};

// VESPO's gamma weights (k, lambda) by the sign of A (A >= 0: _pos): TRL vespo_k_pos, ...
struct VespoWeights {
  double k_pos = 2.0;
  double lambda_pos = 3.0;
  double k_neg = 3.0;
  double lambda_neg = 2.0;
};

// What one row of TRL's corrections needs to know of the config (host-built, passed by value to kernels).
struct SamplerRowParams {
  int mode;                 // SamplerCorrectionMode
  double min, max;          // the weight's bounds
  double opsm_threshold;    // OPSM's delta; +inf: off
  bool vespo;               // the policy term is vespo: phi_i from the row (and the vLLM weight goes into it)
  VespoWeights vespo_weights;
};

// Checks of the sampler config; messages name the field as it sits in LossConfig (config.off_policy.sampler).
inline Status check_sampler_correction(const SamplerCorrectionConfig& s) {
  if (static_cast<unsigned>(s.mode) >= static_cast<unsigned>(kNumSamplerModes))
    return make_error(StatusCode::invalid_argument, "config.off_policy.sampler.mode: unknown mode %d", static_cast<int>(s.mode));
  if (s.mode != SamplerCorrectionMode::none &&
      (std::isnan(s.min) || std::isnan(s.max) || s.min < 0 || s.min > s.max || std::isinf(s.min)))
    return make_error(StatusCode::invalid_argument,
                      "config.off_policy.sampler: needs 0 <= min <= max (max may be inf), got [%g, %g]", s.min, s.max);
  return Status::success();
}

// TRL's sampling/* metrics (GRPOTrainer). Filled when config.off_policy.sampler.mode != none.
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
  const SamplerModeTraits t = traits_of(static_cast<SamplerCorrectionMode>(mode));
  if (!t.on) return Real(1);
  if (!t.mask) return math::clamp(u, min, max);
  return (u < min || u > max) ? Real(0) : u;
}

CGRPO_HD bool sampler_is_sequence(SamplerCorrectionMode m) { return traits_of(m).sequence; }

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
CGRPO_HD Real vespo_phi(Real log_w, Real advantage, const VespoWeights& w) {
  const Real lower = Real(-18.420680743952367);  // log(1e-8)
  const Real lw = math::clamp(log_w, lower, Real(20));
  const bool pos = advantage >= Real(0);
  const Real k = static_cast<Real>(static_cast<float>(pos ? w.k_pos : w.k_neg));
  const float lam_f = static_cast<float>(pos ? w.lambda_pos : w.lambda_neg);
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
CGRPO_HD double sampler_row(const SamplerRowParams& params, const SamplerRowInputs& in, double* factor,
                            SamplerArrays arrays, int64_t row, SamplerPartial<Acc>& partial) {
  const int mode = params.mode;
  const SamplerModeTraits traits = traits_of(static_cast<SamplerCorrectionMode>(mode));
  const bool weight_on = traits.on;
  const bool sequence = traits.sequence;
  const bool vespo = params.vespo;
  const bool opsm = isfinite(params.opsm_threshold);
  const double lo = params.min, hi = params.max;

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
    const bool keep = !opsm || opsm_keep(in.advantages[t], mean_kl, params.opsm_threshold);
    if (!keep) factor[t] = 0;
    if (arrays.opsm_keep) arrays.opsm_keep[t] = keep ? 1 : 0;
  }
  if (!vespo) return 0.0;
  // An empty row has no advantage to read: it takes the _pos pair (A = 0).
  return vespo_phi(sum_x + sum_log_u, row_a, params.vespo_weights);
}

// rows.count() rows; row i owns token rows [rows.begin(i), rows.end(i)); `mask` marks the tokens the
// corrections cover (the valid initial tokens); arrays are [T], read only where mask is 1: logp
// (current policy), old_logp, rollout_logp (nullptr when the batch has none: OPSM then uses
// old_logp, and the vLLM weight must be off), advantages. Writes
//   factor[t]: multiplied by the sampler weight u (token or sequence, truncated or masked; not for
//              vespo, whose phi takes it instead) and set to 0 where OPSM drops the row (factor is 1
//              on entry; left as is where mask is 0);
//   phi[i]:    vespo's per-row weight (params.vespo; untouched otherwise);
//   *arrays:   the optional per-token / per-row values above (nullptr: none);
// and the sampler metrics. Callable on its own (after validation of the config): the fused loss
// calls it between the sweeps.
template <typename RowBounds>
Status sampler_correction(const SamplerRowParams& params, int64_t num_rows, const RowBounds& rows, const uint8_t* mask,
                          const double* logp, const double* old_logp, const double* rollout_logp,
                          const double* advantages, double* factor, double* phi, SamplerMetrics* metrics,
                          const SamplerArrays* arrays = nullptr) {
  // Rows without tokens read no array: rollout_logp may be null then (an empty batch).
  bool any_tokens = false;
  for (int64_t i = 0; i < num_rows && !any_tokens; ++i) any_tokens = rows.end(i) > rows.begin(i);
  const bool weight_on = traits_of(static_cast<SamplerCorrectionMode>(params.mode)).on;
  if (weight_on && !rollout_logp && any_tokens)
    return make_error(StatusCode::invalid_argument, "config.off_policy.sampler needs rollout_logp (the sampler's log-probs)");
  const SamplerArrays out = arrays ? *arrays : SamplerArrays{};
  SamplerPartial<double> partial = sampler_partial_zero<double>();
  for (int64_t i = 0; i < num_rows; ++i) {
    if (out.is_ratio || out.opsm_keep)
      for (int64_t t = rows.begin(i); t < rows.end(i); ++t) {
        if (out.is_ratio) out.is_ratio[t] = 1.0;
        if (out.opsm_keep) out.opsm_keep[t] = 1;
      }
    const SamplerRowInputs in{rows.begin(i), rows.end(i), mask, logp, old_logp, rollout_logp, advantages};
    const double p = sampler_row(params, in, factor, out, i, partial);
    if (params.vespo) phi[i] = p;
  }
  *metrics = weight_on ? sampler_metrics_finalize(partial) : SamplerMetrics{};
  return Status::success();
}

}  // namespace cgrpo
