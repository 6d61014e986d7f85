// cgrpo/loss/metric_names.hpp: every LossMetrics value under the names the peers log it by (verl's
// "actor/pg_loss", "rollout_corr/rollout_is_mean", ...; TRL's "entropy", "clip_ratio/low_mean", ...), and
// LossMetrics as one flat array of doubles in a fixed order (for logging, bindings, reductions).
#pragma once

#include <stdint.h>

#include <cstdio>

#include "cgrpo/corrections/rollout_correction.hpp"
#include "cgrpo/corrections/sampler_correction.hpp"
#include "cgrpo/loss/config.hpp"
#include "cgrpo/loss/metrics.hpp"

namespace cgrpo {

// X(field, verl's name, TRL's name): the scalar fields of LossMetrics (doubles), nullptr where the
// peer logs no such value. verl logs the actor's values as actor/* (dp_actor and the engine's
// ppo_loss); "actor/entropy" is verl's aggregated entropy (entropy_loss). TRL's names are
// GRPOTrainer's _metrics keys; TRL logs cispo's clip fraction as "cispo_clip_ratio"
// (clip_ratio_high_mean, metric_key below) and "policy_loss" = loss + entropy.coef * entropy_loss,
// which is not a field (compute it from the two).
#define CGRPO_LOSS_METRIC_FIELDS(X)                                  \
  X(loss, nullptr, nullptr)                                          \
  X(pg_loss, "actor/pg_loss", nullptr)                               \
  X(pg_loss_initial, nullptr, nullptr)                               \
  X(pg_loss_refinement, nullptr, nullptr)                            \
  X(entropy_loss, "actor/entropy", nullptr)                          \
  X(kl_loss, "actor/kl_loss", nullptr)                               \
  X(pg_clipfrac, "actor/pg_clipfrac", nullptr)                       \
  X(pg_clipfrac_lower, "actor/pg_clipfrac_lower", nullptr)           \
  X(ppo_kl, "actor/ppo_kl", nullptr)                                 \
  X(ratio_mean, nullptr, nullptr)                                    \
  X(clip_ratio_low_mean, nullptr, "clip_ratio/low_mean")             \
  X(clip_ratio_high_mean, nullptr, "clip_ratio/high_mean")           \
  X(clip_ratio_region_mean, nullptr, "clip_ratio/region_mean")       \
  X(clip_ratio_low_min, nullptr, "clip_ratio/low_min")               \
  X(clip_ratio_high_max, nullptr, "clip_ratio/high_max")             \
  X(entropy_mean, nullptr, "entropy")                                \
  X(kl_mean, nullptr, "kl")                                          \
  X(refinement_prob_mean, nullptr, nullptr)                          \
  X(vespo_phi_mean, nullptr, "vespo/phi_seq_mean")

// X(field): the counts of LossMetrics (int64_t; flattened as doubles, exact below 2^53).
#define CGRPO_LOSS_METRIC_COUNTS(X) X(num_valid_tokens) X(num_initial_tokens) X(num_refinement_tokens)

// X(field, TRL's name): SamplerMetrics (TRL's vLLM importance sampling).
#define CGRPO_SAMPLER_METRIC_FIELDS(X)                                             \
  X(logp_difference_mean, "sampling/sampling_logp_difference/mean")               \
  X(logp_difference_max, "sampling/sampling_logp_difference/max")                 \
  X(is_ratio_min, "sampling/importance_sampling_ratio/min")                       \
  X(is_ratio_mean, "sampling/importance_sampling_ratio/mean")                     \
  X(is_ratio_max, "sampling/importance_sampling_ratio/max")

// X(field): the values of one rejection option (RolloutMetrics::Option), verl's
// rollout_corr/rollout_rs_<statistic>_<field>.
#define CGRPO_REJECTION_METRIC_FIELDS(X) X(mean) X(max) X(min) X(masked_fraction) X(seq_masked_fraction)

namespace detail {
#define CGRPO_METRIC_COUNT_3(field, verl, trl) +1
#define CGRPO_METRIC_COUNT_2(field, trl) +1
#define CGRPO_METRIC_COUNT_1(field) +1
inline constexpr int kNumTopMetrics = 0 CGRPO_LOSS_METRIC_FIELDS(CGRPO_METRIC_COUNT_3);
inline constexpr int kNumCountMetrics = 0 CGRPO_LOSS_METRIC_COUNTS(CGRPO_METRIC_COUNT_1);
inline constexpr int kNumRolloutMetrics = 0 CGRPO_ROLLOUT_METRIC_FIELDS(CGRPO_METRIC_COUNT_1);
inline constexpr int kNumOptionMetrics = 0 CGRPO_REJECTION_METRIC_FIELDS(CGRPO_METRIC_COUNT_1);
inline constexpr int kNumSamplerMetrics = 0 CGRPO_SAMPLER_METRIC_FIELDS(CGRPO_METRIC_COUNT_2);
#undef CGRPO_METRIC_COUNT_3
#undef CGRPO_METRIC_COUNT_2
#undef CGRPO_METRIC_COUNT_1
inline constexpr int kMetricOptions = RolloutCorrectionConfig::kMaxRejectionOptions;
}  // namespace detail

static_assert(sizeof(LossMetrics) == sizeof(double) * (detail::kNumTopMetrics + detail::kNumCountMetrics) +
                                         sizeof(RolloutMetrics) + sizeof(SamplerMetrics),
              "metric_names.hpp: CGRPO_LOSS_METRIC_FIELDS / _COUNTS must list every field of LossMetrics");
static_assert(sizeof(SamplerMetrics) == sizeof(double) * detail::kNumSamplerMetrics,
              "metric_names.hpp: CGRPO_SAMPLER_METRIC_FIELDS must list every field of SamplerMetrics");
static_assert(sizeof(RolloutMetrics::Option) == sizeof(double) * detail::kNumOptionMetrics,
              "metric_names.hpp: CGRPO_REJECTION_METRIC_FIELDS must list every field of RolloutMetrics::Option");

// The flat array: the CGRPO_LOSS_METRIC_FIELDS, the counts, the rollout fields
// (CGRPO_ROLLOUT_METRIC_FIELDS), the rejection options (option k's CGRPO_REJECTION_METRIC_FIELDS,
// k = 0 .. 3), the sampler fields; in that order.
inline constexpr int kNumMetricValues = detail::kNumTopMetrics + detail::kNumCountMetrics + detail::kNumRolloutMetrics +
                                        detail::kMetricOptions * detail::kNumOptionMetrics +
                                        detail::kNumSamplerMetrics;

// Writes the kNumMetricValues values of `m` to out.
inline void flatten_metrics(const LossMetrics& m, double* out) {
  int i = 0;
#define CGRPO_FLAT_TOP(field, verl, trl) out[i++] = m.field;
#define CGRPO_FLAT_COUNT(field) out[i++] = static_cast<double>(m.field);
#define CGRPO_FLAT_ROLLOUT(field) out[i++] = m.rollout.field;
#define CGRPO_FLAT_OPTION(field) out[i++] = m.rollout.rs_option[k].field;
#define CGRPO_FLAT_SAMPLER(field, trl) out[i++] = m.sampler.field;
  CGRPO_LOSS_METRIC_FIELDS(CGRPO_FLAT_TOP)
  CGRPO_LOSS_METRIC_COUNTS(CGRPO_FLAT_COUNT)
  CGRPO_ROLLOUT_METRIC_FIELDS(CGRPO_FLAT_ROLLOUT)
  for (int k = 0; k < detail::kMetricOptions; ++k) {
    CGRPO_REJECTION_METRIC_FIELDS(CGRPO_FLAT_OPTION)
  }
  CGRPO_SAMPLER_METRIC_FIELDS(CGRPO_FLAT_SAMPLER)
#undef CGRPO_FLAT_TOP
#undef CGRPO_FLAT_COUNT
#undef CGRPO_FLAT_ROLLOUT
#undef CGRPO_FLAT_OPTION
#undef CGRPO_FLAT_SAMPLER
}

// Whose names: the library's own (the field's path in LossMetrics: "pg_loss", "rollout.is_mean",
// "rollout.rs_option[0].mean", "sampler.is_ratio_mean", "num_valid_tokens"), verl's or TRL's.
enum class MetricNaming : int { cgrpo = 0, verl = 1, trl = 2 };

namespace detail {
// What flat index i is: its group and its field name within the group.
struct MetricSlot {
  int group;  // 0 top, 1 count, 2 rollout, 3 rejection option, 4 sampler
  int option; // the rejection option (group 3)
  const char* field;
  const char* verl;
  const char* trl;
};

inline MetricSlot metric_slot(int index) {
  static const MetricSlot top[] = {
#define CGRPO_SLOT_TOP(field, verl, trl) {0, 0, #field, verl, trl},
      CGRPO_LOSS_METRIC_FIELDS(CGRPO_SLOT_TOP)
#undef CGRPO_SLOT_TOP
#define CGRPO_SLOT_COUNT(field) {1, 0, #field, nullptr, nullptr},
      CGRPO_LOSS_METRIC_COUNTS(CGRPO_SLOT_COUNT)
#undef CGRPO_SLOT_COUNT
#define CGRPO_SLOT_ROLLOUT(field) {2, 0, #field, nullptr, nullptr},
      CGRPO_ROLLOUT_METRIC_FIELDS(CGRPO_SLOT_ROLLOUT)
#undef CGRPO_SLOT_ROLLOUT
  };
  static const char* const option_fields[] = {
#define CGRPO_SLOT_OPTION(field) #field,
      CGRPO_REJECTION_METRIC_FIELDS(CGRPO_SLOT_OPTION)
#undef CGRPO_SLOT_OPTION
  };
  static const MetricSlot sampler[] = {
#define CGRPO_SLOT_SAMPLER(field, trl) {4, 0, #field, nullptr, trl},
      CGRPO_SAMPLER_METRIC_FIELDS(CGRPO_SLOT_SAMPLER)
#undef CGRPO_SLOT_SAMPLER
  };
  constexpr int n_top = kNumTopMetrics + kNumCountMetrics + kNumRolloutMetrics;
  if (index < n_top) return top[index];
  index -= n_top;
  if (index < kMetricOptions * kNumOptionMetrics)
    return MetricSlot{3, index / kNumOptionMetrics, option_fields[index % kNumOptionMetrics], nullptr, nullptr};
  return sampler[index - kMetricOptions * kNumOptionMetrics];
}

inline bool starts_with(const char* s, const char* prefix) {
  while (*prefix)
    if (*s++ != *prefix++) return false;
  return true;
}
}  // namespace detail

// The name flat value `index` is logged under for this config, written to buf (NUL-terminated,
// truncated to size); false when that peer does not log it for this config (or index is out of
// range), and then buf is not written. Which values a config logs:
//   cgrpo: every top-level field and count; rollout.* with off_policy.rollout.mode != none, its
//          rs_option[k].* for k < num_rejection_options; sampler.* with off_policy.sampler.mode != none.
//   verl:  actor/pg_loss, pg_clipfrac, pg_clipfrac_lower, ppo_kl, entropy; actor/kl_loss with a KL;
//          with the rollout correction: rollout_corr/rollout_is_* (with an IS level; is_oob_ratio with
//          IcePop, is_batch_norm_factor with batch normalization), rollout_corr/rollout_rs_* (with
//          rejection options; per option rollout_rs_<statistic>_<field>), rollout_corr/<diagnostic>
//          (kl, k3_kl, chi2_token, ..., ppl_ratio).
//   trl:   entropy; kl with a KL; clip_ratio/* (every term but cispo_cap, sapo and vespo), cispo_clip_ratio
//          (cispo_cap), vespo/phi_seq_mean (vespo); sampling/* with the vLLM weight.
inline bool metric_key(const LossConfig& c, int index, MetricNaming naming, char* buf, size_t size) {
  if (index < 0 || index >= kNumMetricValues || !buf || size == 0) return false;
  const detail::MetricSlot s = detail::metric_slot(index);
  const RolloutCorrectionConfig& rc = c.off_policy.rollout;
  const bool rollout = rc.mode != RolloutCorrectionMode::none;
  const bool sampler = c.off_policy.sampler.mode != SamplerCorrectionMode::none;
  const bool option = s.group == 3 && rollout && s.option < rc.num_rejection_options;
  switch (naming) {
    case MetricNaming::cgrpo:
      if (s.group == 0 || s.group == 1) snprintf(buf, size, "%s", s.field);
      else if (s.group == 2 && rollout) snprintf(buf, size, "rollout.%s", s.field);
      else if (option) snprintf(buf, size, "rollout.rs_option[%d].%s", s.option, s.field);
      else if (s.group == 4 && sampler) snprintf(buf, size, "sampler.%s", s.field);
      else return false;
      return true;
    case MetricNaming::verl: {
      if (s.group == 0) {
        if (!s.verl || (detail::starts_with(s.field, "kl_loss") && !c.kl_on())) return false;
        snprintf(buf, size, "%s", s.verl);
        return true;
      }
      if (option) {
        snprintf(buf, size, "rollout_corr/rollout_rs_%s_%s", to_string(rc.rejection[s.option].statistic), s.field);
        return true;
      }
      if (s.group != 2 || !rollout) return false;
      const bool is = detail::starts_with(s.field, "is_"), rs = detail::starts_with(s.field, "rs_");
      if (is && rc.is_level == RolloutIsLevel::none) return false;
      if (is && detail::starts_with(s.field, "is_oob_ratio") && rc.is_mode != RolloutIsMode::icepop) return false;
      if (is && detail::starts_with(s.field, "is_batch_norm_factor") && !rc.is_batch_normalize) return false;
      if (rs && rc.num_rejection_options == 0) return false;
      snprintf(buf, size, "rollout_corr/%s%s", is || rs ? "rollout_" : "", s.field);
      return true;
    }
    case MetricNaming::trl: {
      if (s.group == 4) {
        if (!sampler) return false;
        snprintf(buf, size, "%s", s.trl);
        return true;
      }
      if (s.group != 0 || !s.trl) return false;
      const PolicyLoss term = c.policy.loss;
      const bool clip_ratio = detail::starts_with(s.field, "clip_ratio_");
      if (clip_ratio && term == PolicyLoss::cispo_cap) {
        if (!detail::starts_with(s.field, "clip_ratio_high_mean")) return false;
        snprintf(buf, size, "cispo_clip_ratio");
        return true;
      }
      if (clip_ratio && (term == PolicyLoss::sapo || term == PolicyLoss::vespo)) return false;
      if (detail::starts_with(s.field, "vespo_") && term != PolicyLoss::vespo) return false;
      if (detail::starts_with(s.field, "kl_mean") && !c.kl_on()) return false;
      snprintf(buf, size, "%s", s.trl);
      return true;
    }
  }
  return false;
}

}  // namespace cgrpo
