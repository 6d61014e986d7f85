// cgrpo/corrections/rollout_correction.hpp: verl's rollout correction (rollout_corr_helper.py): truncated
// importance weights and rejection masks from the training / rollout log ratio, and their metrics.
#pragma once

#include <math.h>
#include <stdint.h>

#include <cmath>

#include "cgrpo/base/macros.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/base/variant_table.hpp"
#include "cgrpo/math/token_math.hpp"

namespace cgrpo {

// ---------------------------------------------------------------------------
// The modes, one struct each with its traits, and their tables.

struct RolloutModeTraits {
  const char* name;
  bool reads_current_logp;  // d is taken against the current log p (the pass needs every token's first)
  bool rejection_all_terms; // a rejected token leaves every term (policy, entropy, KL) and their
                            // denominators; false: the policy term only
};

struct NoRolloutCorrection {
  static constexpr RolloutModeTraits traits() { return RolloutModeTraits{"none", false, false}; }
};
// Decoupled (compute_rollout_correction_and_add_to_batch): d = old - rollout; the policy loss is
// multiplied by the IS weight and every term aggregates over the kept mask.
struct DecoupledRolloutCorrection {
  static constexpr RolloutModeTraits traits() { return RolloutModeTraits{"decoupled", false, true}; }
};
// Bypass (compute_policy_loss_bypass_mode): old = rollout; d = sg(logp) - rollout; the policy term
// (ppo_clip without IS factor, or reinforce with it) aggregates over the kept mask.
struct BypassRolloutCorrection {
  static constexpr RolloutModeTraits traits() { return RolloutModeTraits{"bypass", true, false}; }
};

#define CGRPO_ROLLOUT_MODES(X)             \
  X(none, NoRolloutCorrection)             \
  X(decoupled, DecoupledRolloutCorrection) \
  X(bypass, BypassRolloutCorrection)

enum class RolloutCorrectionMode : int { CGRPO_ROLLOUT_MODES(CGRPO_VARIANT_ENUM_ENTRY) };
inline constexpr int kNumRolloutModes = 0 CGRPO_ROLLOUT_MODES(CGRPO_VARIANT_COUNT_ENTRY);

inline constexpr RolloutModeTraits traits_of(RolloutCorrectionMode m) {
  switch (m) {
#define CGRPO_TRAITS_CASE(name, Type) \
  case RolloutCorrectionMode::name: return Type::traits();
    CGRPO_ROLLOUT_MODES(CGRPO_TRAITS_CASE)
#undef CGRPO_TRAITS_CASE
  }
  return RolloutModeTraits{"unknown", false, false};
}
inline const char* to_string(RolloutCorrectionMode m) { return traits_of(m).name; }

// The IS weight's level.
struct NoRolloutIs {
  static constexpr const char* name() { return "none"; }
};
// w_t = min(exp(clamp(d_t, -20, 20)), threshold).
struct TokenRolloutIs {
  static constexpr const char* name() { return "token"; }
};
// w_t = min(exp(clamp(sum_i d, -20, 20)), threshold) at every token of row i.
struct SequenceRolloutIs {
  static constexpr const char* name() { return "sequence"; }
};

#define CGRPO_ROLLOUT_IS_LEVELS(X) \
  X(none, NoRolloutIs)             \
  X(token, TokenRolloutIs)         \
  X(sequence, SequenceRolloutIs)

enum class RolloutIsLevel : int { CGRPO_ROLLOUT_IS_LEVELS(CGRPO_VARIANT_ENUM_ENTRY) };
inline constexpr int kNumRolloutIsLevels = 0 CGRPO_ROLLOUT_IS_LEVELS(CGRPO_VARIANT_COUNT_ENTRY);

inline const char* to_string(RolloutIsLevel l) {
  switch (l) {
#define CGRPO_NAME_CASE(id, Type) \
  case RolloutIsLevel::id: return Type::name();
    CGRPO_ROLLOUT_IS_LEVELS(CGRPO_NAME_CASE)
#undef CGRPO_NAME_CASE
  }
  return "unknown";
}

// How the raw weight u becomes the applied weight w.
// w = min(u, is_threshold): truncated importance sampling (verl's rollout_is_threshold = T).
struct TruncatedRolloutIs {
  static constexpr const char* name() { return "tis"; }
};
// IcePop (verl's rollout_is_threshold = "lo_hi"): w = u where lo <= u <= hi, else 0; the mask is
// unchanged, so a zeroed token keeps its place in every denominator (unlike rejection).
struct IcePopRolloutIs {
  static constexpr const char* name() { return "icepop"; }
};

#define CGRPO_ROLLOUT_IS_MODES(X) \
  X(truncate, TruncatedRolloutIs) \
  X(icepop, IcePopRolloutIs)

enum class RolloutIsMode : int { CGRPO_ROLLOUT_IS_MODES(CGRPO_VARIANT_ENUM_ENTRY) };
inline constexpr int kNumRolloutIsModes = 0 CGRPO_ROLLOUT_IS_MODES(CGRPO_VARIANT_COUNT_ENTRY);

inline const char* to_string(RolloutIsMode m) {
  switch (m) {
#define CGRPO_NAME_CASE(id, Type) \
  case RolloutIsMode::id: return Type::name();
    CGRPO_ROLLOUT_IS_MODES(CGRPO_NAME_CASE)
#undef CGRPO_NAME_CASE
  }
  return "unknown";
}

// One rejection statistic: k1 = -d, k2 = d^2 / 2 or k3 = e^d - 1 - d (d clamped to +-20), per
// token or per row (sum, mean or max over the row's valid tokens). X(name, scope, order):
// scope 0 token, 1 row sum, 2 row mean, 3 row max.
#define CGRPO_REJECTION_STATISTICS(X) \
  X(token_k1, 0, 1)                   \
  X(token_k2, 0, 2)                   \
  X(token_k3, 0, 3)                   \
  X(seq_sum_k1, 1, 1)                 \
  X(seq_sum_k2, 1, 2)                 \
  X(seq_sum_k3, 1, 3)                 \
  X(seq_mean_k1, 2, 1)                \
  X(seq_mean_k2, 2, 2)                \
  X(seq_mean_k3, 2, 3)                \
  X(seq_max_k2, 3, 2)                 \
  X(seq_max_k3, 3, 3)

#define CGRPO_STATISTIC_ENUM_ENTRY(name, scope, order) name,
enum class RejectionStatistic : int { CGRPO_REJECTION_STATISTICS(CGRPO_STATISTIC_ENUM_ENTRY) };
#undef CGRPO_STATISTIC_ENUM_ENTRY
#define CGRPO_STATISTIC_COUNT_ENTRY(name, scope, order) +1
inline constexpr int kNumRejectionStatistics = 0 CGRPO_REJECTION_STATISTICS(CGRPO_STATISTIC_COUNT_ENTRY);
#undef CGRPO_STATISTIC_COUNT_ENTRY

struct RejectionStatisticTraits {
  const char* name;  // verl's rollout_rs name
  int scope;         // 0 token, 1 row sum, 2 row mean, 3 row max
  int order;         // 1, 2 or 3: k1 tests a two-sided band, k2 / k3 an upper bound
};

inline constexpr RejectionStatisticTraits traits_of(RejectionStatistic s) {
  switch (s) {
#define CGRPO_TRAITS_CASE(name, scope, order) \
  case RejectionStatistic::name: return RejectionStatisticTraits{#name, scope, order};
    CGRPO_REJECTION_STATISTICS(CGRPO_TRAITS_CASE)
#undef CGRPO_TRAITS_CASE
  }
  return RejectionStatisticTraits{"unknown", 0, 0};
}
inline const char* to_string(RejectionStatistic s) { return traits_of(s).name; }

// k1 rejection statistics test a two-sided band; k2 / k3 an upper bound.
inline bool rejection_is_k1(RejectionStatistic s) { return traits_of(s).order == 1; }

struct RejectionOption {
  RejectionStatistic statistic = RejectionStatistic::token_k1;
  double lower = 0.0;  // k1 statistics: keep log(lower) <= stat <= log(upper); 0 means 1 / upper
  double upper = 2.0;  // k2 / k3 statistics: keep stat <= upper
};

// verl's rollout correction config (algorithm.rollout_correction). Needs batch.rollout_logp.
struct RolloutCorrectionConfig {
  static constexpr int kMaxRejectionOptions = 4;

  RolloutCorrectionMode mode = RolloutCorrectionMode::none;
  RolloutIsLevel is_level = RolloutIsLevel::none;
  RolloutIsMode is_mode = RolloutIsMode::truncate;      // truncate at is_threshold, or IcePop's band
  double is_threshold = 2.0;                            // upper truncation of the IS weight (IcePop: hi)
  double is_threshold_lower = 0.0;                      // IcePop's lo (0 < lo <= is_threshold); 0 otherwise
  bool metrics_from_applied_weights = false;            // the IS metrics' convention: verl 1dda039 computes
                                                        // mean, max, min, std, ESS and the row means from
                                                        // the applied weights w; b178a3c from the raw u
  bool is_batch_normalize = false;                      // verl rollout_is_batch_normalize: divide the
                                                        // truncated weights by their mean over the batch
  int num_rejection_options = 0;                        // a token is kept only if every option keeps it
  RejectionOption rejection[kMaxRejectionOptions] = {};
};

// Every check of the config; messages name the field as it sits in LossConfig (config.off_policy.rollout).
inline Status check_rollout_correction(const RolloutCorrectionConfig& r) {
  if (static_cast<unsigned>(r.mode) >= static_cast<unsigned>(kNumRolloutModes))
    return make_error(StatusCode::invalid_argument, "config.off_policy.rollout.mode: unknown mode %d", static_cast<int>(r.mode));
  if (static_cast<unsigned>(r.is_level) >= static_cast<unsigned>(kNumRolloutIsLevels))
    return make_error(StatusCode::invalid_argument, "config.off_policy.rollout.is_level: unknown level %d",
                      static_cast<int>(r.is_level));
  if (r.num_rejection_options < 0 || r.num_rejection_options > RolloutCorrectionConfig::kMaxRejectionOptions)
    return make_error(StatusCode::invalid_argument, "config.off_policy.rollout.num_rejection_options must be in [0, %d], got %d",
                      RolloutCorrectionConfig::kMaxRejectionOptions, r.num_rejection_options);
  if (r.mode == RolloutCorrectionMode::none && (r.is_level != RolloutIsLevel::none || r.num_rejection_options != 0))
    return make_error(StatusCode::invalid_argument,
                      "config.off_policy.rollout: is_level and rejection options need rollout.mode = decoupled or bypass");
  if (r.is_level != RolloutIsLevel::none && (!(r.is_threshold > 0) || std::isnan(r.is_threshold)))
    return make_error(StatusCode::invalid_argument, "config.off_policy.rollout.is_threshold must be > 0 (inf: no truncation), got %g",
                      r.is_threshold);
  if (static_cast<unsigned>(r.is_mode) >= static_cast<unsigned>(kNumRolloutIsModes))
    return make_error(StatusCode::invalid_argument, "config.off_policy.rollout.is_mode: unknown mode %d",
                      static_cast<int>(r.is_mode));
  if (r.is_mode == RolloutIsMode::icepop) {
    if (r.is_level == RolloutIsLevel::none)
      return make_error(StatusCode::invalid_argument,
                        "config.off_policy.rollout.is_mode = icepop needs rollout.is_level = token or sequence");
    if (!std::isfinite(r.is_threshold_lower) || !(r.is_threshold_lower > 0) || r.is_threshold_lower > r.is_threshold)
      return make_error(StatusCode::invalid_argument,
                        "config.off_policy.rollout: IcePop needs 0 < is_threshold_lower <= is_threshold (lo <= hi), "
                        "got lo %g and hi %g",
                        r.is_threshold_lower, r.is_threshold);
  } else if (r.is_threshold_lower != 0) {
    return make_error(StatusCode::invalid_argument,
                      "config.off_policy.rollout.is_threshold_lower (%g) is IcePop's lower bound: it needs is_mode = "
                      "icepop (truncation has an upper bound only)",
                      r.is_threshold_lower);
  }
  if (r.is_batch_normalize && r.is_level == RolloutIsLevel::none)
    return make_error(StatusCode::invalid_argument,
                      "config.off_policy.rollout.is_batch_normalize needs rollout.is_level = token or sequence");
  for (int i = 0; i < r.num_rejection_options; ++i) {
    const RejectionOption& o = r.rejection[i];
    if (static_cast<unsigned>(o.statistic) >= static_cast<unsigned>(kNumRejectionStatistics))
      return make_error(StatusCode::invalid_argument, "config.off_policy.rollout.rejection[%d].statistic: unknown statistic %d", i,
                        static_cast<int>(o.statistic));
    if (!std::isfinite(o.upper) || o.upper <= 0)
      return make_error(StatusCode::invalid_argument, "config.off_policy.rollout.rejection[%d].upper must be finite and > 0, got %g", i,
                        o.upper);
    if (rejection_is_k1(o.statistic)) {
      const double lo = o.lower == 0 ? 1.0 / o.upper : o.lower;
      if (!std::isfinite(o.lower) || o.lower < 0 || lo > o.upper)
        return make_error(StatusCode::invalid_argument,
                          "config.off_policy.rollout.rejection[%d] (%s): needs 0 < lower <= upper (lower 0: 1 / upper), got %g and %g", i,
                          to_string(o.statistic), o.lower, o.upper);
    } else if (o.lower != 0) {
      return make_error(StatusCode::invalid_argument,
                        "config.off_policy.rollout.rejection[%d] (%s) takes an upper threshold only; lower must be 0, got %g", i,
                        to_string(o.statistic), o.lower);
    }
  }
  return Status::success();
}

// verl's rollout_corr metrics (names as verl logs them, without the "rollout_corr/" prefix), over
// the tokens the correction covers (docs/MATH.md, "Rollout correction"). The IS statistics come
// from the raw weights u (verl b178a3c) or, with metrics_from_applied_weights, from the applied
// weights w (verl 1dda039; u still for the fractions), before batch normalization. Filled when
// config.off_policy.rollout.mode != none; zero otherwise (and when no token is covered).
struct RolloutMetrics {
  // IS weights (is_level != none). Token level: over covered tokens; sequence level: max, min and
  // the fractions over all rows, from S_i. lo is IcePop's lower bound, else 1 / T.
  double is_mean = 0, is_max = 0, is_min = 0, is_std = 0, is_eff_sample_size = 0;
  double is_ratio_fraction_high = 0, is_ratio_fraction_low = 0;
  double is_seq_mean = 0, is_seq_max = 0, is_seq_min = 0;  // of the row means v_i = sum_t u (or w) / (n_i + 1e-8), all rows
  double is_seq_std = 0;            // the unbiased std of the v_i (0 for one row)
  double is_seq_max_deviation = 0;  // max_i |v_i - 1|
  double is_seq_fraction_high = 0, is_seq_fraction_low = 0;  // rows with sum_t u / (n_i + 1e-8) > T (< lo),
                                                             // all rows (an empty row, 0, counts as low)
  double is_oob_ratio = 0;          // IcePop: the covered tokens with u outside [lo, hi] (verl's rollout_is_oob_ratio)
  double is_batch_norm_factor = 0;  // is_batch_normalize: the divisor (1 when the mean is <= 1e-8); 0 when off
  // Rejection (num_rejection_options > 0): all options together, then each option (rs_option[k] is
  // config.off_policy.rollout.rejection[k], logged by verl as rollout_rs_<statistic>_*).
  double rs_masked_fraction = 0;      // rejected covered tokens / covered tokens
  double rs_seq_masked_fraction = 0;  // rows with a rejected token / all rows
  struct Option {
    double mean = 0;                 // the statistic over covered tokens (a row statistic at each of its tokens)
    double max = 0, min = 0;         // token options: over covered tokens; row options: over non-empty rows
    double masked_fraction = 0;      // tokens this option rejects / covered tokens
    double seq_masked_fraction = 0;  // non-empty rows with a token this option rejects / non-empty rows
  } rs_option[RolloutCorrectionConfig::kMaxRejectionOptions];
  // Off-policy diagnostics (always). "training" is old_logp (decoupled) or log p (bypass).
  double kl = 0;          // mean of rollout - training
  double k3_kl = 0;       // mean of e^d - d - 1 (d unclamped)
  double chi2_token = 0;  // mean of exp(clamp(d))^2, minus 1
  double chi2_seq = 0;    // mean over rows of exp(2 clamp(S_i)), minus 1
  double training_ppl = 0, training_log_ppl = 0, rollout_ppl = 0, rollout_log_ppl = 0;  // means over rows
  double log_ppl_diff = 0, log_ppl_abs_diff = 0, log_ppl_diff_max = 0, log_ppl_diff_min = 0, ppl_ratio = 0;
};

// Every scalar field of RolloutMetrics (rs_option aside), for code that lists them (metric checks,
// logging): X(field). The static_assert below keeps the list complete.
#define CGRPO_ROLLOUT_METRIC_FIELDS(X)                                                                   \
  X(is_mean) X(is_max) X(is_min) X(is_std) X(is_eff_sample_size) X(is_ratio_fraction_high)                \
  X(is_ratio_fraction_low) X(is_seq_mean) X(is_seq_max) X(is_seq_min) X(is_seq_std) X(is_seq_max_deviation) \
  X(is_seq_fraction_high) X(is_seq_fraction_low) X(is_oob_ratio) X(is_batch_norm_factor)                  \
  X(rs_masked_fraction) X(rs_seq_masked_fraction) X(kl) X(k3_kl) X(chi2_token) X(chi2_seq) X(training_ppl) \
  X(training_log_ppl) X(rollout_ppl) X(rollout_log_ppl) X(log_ppl_diff) X(log_ppl_abs_diff)               \
  X(log_ppl_diff_max) X(log_ppl_diff_min) X(ppl_ratio)

#define CGRPO_ROLLOUT_METRIC_COUNT_ENTRY(field) +1
static_assert(sizeof(RolloutMetrics) ==
                  sizeof(double) * (0 CGRPO_ROLLOUT_METRIC_FIELDS(CGRPO_ROLLOUT_METRIC_COUNT_ENTRY) +
                                    5 * RolloutCorrectionConfig::kMaxRejectionOptions),
              "CGRPO_ROLLOUT_METRIC_FIELDS must list every scalar field of RolloutMetrics");
#undef CGRPO_ROLLOUT_METRIC_COUNT_ENTRY

// ---------------------------------------------------------------------------
// The per-token and per-row math, CGRPO_HD: a row's values are sums over its tokens (mergeable, so
// a row may be split across threads), and the batch metrics are sums, maxima and minima over rows
// and tokens (mergeable, so a GPU reduces them in any fixed order).

constexpr double kRolloutLogBound = 20.0;  // verl's SAFETY_BOUND: log ratios are clamped to +-20 before exp
constexpr int kRolloutMaxOptions = RolloutCorrectionConfig::kMaxRejectionOptions;

// One rejection option as the math uses it: keep iff lower <= statistic <= upper.
struct RejectionParams {
  int scope;     // 0 token, 1 row sum, 2 row mean, 3 row max
  int order;     // 1, 2 or 3: k1 = -e, k2 = e^2 / 2, k3 = e^e - 1 - e, e = clamp(d, +-20)
  double lower;  // k1: log(lower threshold); k2 / k3: -inf
  double upper;  // k1: log(upper threshold); k2 / k3: the threshold
};

// config.off_policy.rollout with its thresholds in the form the math compares against (host-built, passed by
// value to kernels).
struct RolloutParams {
  int is_level;               // RolloutIsLevel
  int icepop;                 // is_mode = icepop: w = u in [threshold_lower, threshold], else 0
  int applied_metrics;        // metrics_from_applied_weights
  double threshold;           // T
  double threshold_lower;     // IcePop's lo, else 1 / T (the metrics' lower bound)
  double log_threshold, log_threshold_lower;
  int num_options;
  RejectionParams option[kRolloutMaxOptions];
};

inline RolloutParams rollout_params(const RolloutCorrectionConfig& c) {
  RolloutParams p{};
  p.is_level = static_cast<int>(c.is_level);
  p.icepop = c.is_mode == RolloutIsMode::icepop ? 1 : 0;
  p.applied_metrics = c.metrics_from_applied_weights ? 1 : 0;
  p.threshold = c.is_threshold;
  p.threshold_lower = p.icepop ? c.is_threshold_lower : 1.0 / c.is_threshold;
  p.log_threshold = ::log(p.threshold);
  p.log_threshold_lower = ::log(p.threshold_lower);
  p.num_options = c.num_rejection_options;
  for (int k = 0; k < c.num_rejection_options; ++k) {
    const RejectionStatisticTraits s = traits_of(c.rejection[k].statistic);
    RejectionParams& o = p.option[k];
    o.scope = s.scope;
    o.order = s.order;
    if (o.order == 1) {
      const double upper = c.rejection[k].upper;
      const double lower = c.rejection[k].lower == 0 ? 1.0 / upper : c.rejection[k].lower;  // verl: lo = 1 / hi
      o.lower = ::log(lower);
      o.upper = ::log(upper);
    } else {
      o.lower = -INFINITY;
      o.upper = c.rejection[k].upper;
    }
  }
  return p;
}

// k1, k2 or k3 of e = clamp(d, +-20).
CGRPO_HD double rejection_statistic(int order, double e) {
  return order == 1 ? -e : order == 2 ? 0.5 * e * e : math::exp(e) - 1.0 - e;
}

// One row's sums over its covered tokens.
struct RolloutRowSums {
  double n;                        // covered tokens n_i
  double sum_d;                    // S_i = sum d (unclamped)
  double sum_k[3];                 // sums of k1, k2, k3 of e
  double max_k[3];                 // maxima of k1, k2, k3 of e (-inf: no token)
  double sum_u;                    // sum of exp(e): the untruncated token weights
  double sum_train, sum_rollout;   // for the perplexities
};

CGRPO_HD RolloutRowSums rollout_row_sums_zero() {
  RolloutRowSums s{};
  for (int k = 0; k < 3; ++k) s.max_k[k] = -INFINITY;
  return s;
}

CGRPO_HD void rollout_row_add(RolloutRowSums& s, double train, double rollout) {
  const double d = train - rollout;
  const double e = math::clamp(d, -kRolloutLogBound, kRolloutLogBound);
  s.n += 1;
  s.sum_d += d;
  for (int k = 0; k < 3; ++k) {
    const double v = rejection_statistic(k + 1, e);
    s.sum_k[k] += v;
    s.max_k[k] = math::max(s.max_k[k], v);
  }
  s.sum_u += math::exp(e);
  s.sum_train += train;
  s.sum_rollout += rollout;
}

CGRPO_HD RolloutRowSums rollout_row_sums_merge(const RolloutRowSums& a, const RolloutRowSums& b) {
  RolloutRowSums s;
  s.n = a.n + b.n;
  s.sum_d = a.sum_d + b.sum_d;
  for (int k = 0; k < 3; ++k) {
    s.sum_k[k] = a.sum_k[k] + b.sum_k[k];
    s.max_k[k] = math::max(a.max_k[k], b.max_k[k]);
  }
  s.sum_u = a.sum_u + b.sum_u;
  s.sum_train = a.sum_train + b.sum_train;
  s.sum_rollout = a.sum_rollout + b.sum_rollout;
  return s;
}

// What a row decides for all its tokens: the sequence IS weight and each row option's statistic.
struct RolloutRowValues {
  double seq_u;                       // exp(clamp(S_i, +-20)), the untruncated sequence weight
  double stat[kRolloutMaxOptions];    // row options: sum, mean (n_i + 1e-8) or max (0: empty row)
};

CGRPO_HD RolloutRowValues rollout_row_values(const RolloutParams& p, const RolloutRowSums& s) {
  RolloutRowValues v{};
  v.seq_u = math::exp(math::clamp(s.sum_d, -kRolloutLogBound, kRolloutLogBound));
  for (int k = 0; k < p.num_options; ++k) {
    const RejectionParams& o = p.option[k];
    const int j = o.order - 1;
    if (o.scope == 1) v.stat[k] = s.sum_k[j];
    else if (o.scope == 2) v.stat[k] = s.sum_k[j] / (s.n + 1e-8);
    else if (o.scope == 3) v.stat[k] = s.n > 0 ? s.max_k[j] : 0.0;
  }
  return v;
}

// The applied weight w of a raw weight u: min(u, T), or IcePop's u in [lo, hi], else 0.
CGRPO_HD double rollout_applied_weight(const RolloutParams& p, double u) {
  return p.icepop ? (u >= p.threshold_lower && u <= p.threshold ? u : 0.0) : math::min(u, p.threshold);
}

// One covered token's weight and rejection.
struct RolloutTokenValues {
  double d;                            // training - rollout
  double u;                            // untruncated weight: exp(clamp(d)) or the row's exp(clamp(S_i))
  double weight;                       // min(u, T) (IcePop: u in [lo, hi], else 0), or 1 when is_level = none
  double stat[kRolloutMaxOptions];     // each option's statistic at this token
  uint8_t rejected_by;                 // bit k: option k rejects the token
};

CGRPO_HD RolloutTokenValues rollout_token(const RolloutParams& p, const RolloutRowValues& row, double train,
                                          double rollout) {
  RolloutTokenValues v{};
  v.d = train - rollout;
  const double e = math::clamp(v.d, -kRolloutLogBound, kRolloutLogBound);
  v.u = p.is_level == static_cast<int>(RolloutIsLevel::sequence) ? row.seq_u : math::exp(e);
  v.weight = p.is_level == static_cast<int>(RolloutIsLevel::none) ? 1.0 : rollout_applied_weight(p, v.u);
  for (int k = 0; k < p.num_options; ++k) {
    const RejectionParams& o = p.option[k];
    v.stat[k] = o.scope == 0 ? rejection_statistic(o.order, e) : row.stat[k];
    const bool keep = v.stat[k] >= o.lower && v.stat[k] <= o.upper;  // NaN rejects
    if (!keep) v.rejected_by |= static_cast<uint8_t>(1u << k);
  }
  return v;
}

// The batch's metric sums. Counts are doubles so the struct reduces like MetricSums.
struct RolloutBatchSums {
  double tokens, rows, nonempty_rows;
  // IS, from the untruncated u; uc = clamp(u, 1/T, T).
  double u_sum, uc_sum, uc2_sum, u_above, u_below, u_max, u_min;
  double s_max, s_min, rows_above, rows_below;  // sequence level: S_i of all rows
  double w_sum, w_row_sum;                  // applied weights: token sum; sum over non-empty rows of row means
  double w2_sum, w_max, w_min, oob;         // applied weights: sum of squares, max, min; IcePop's outside count
  double row_v_sum, row_v2_sum, row_v_max, row_v_min;  // row means v_i = sum_t u (or w, the metrics'
                                                       // convention) / (n_i + 1e-8), all rows
  double rows_u_above, rows_u_below;        // rows whose mean sum_t u / (n_i + 1e-8) is > T (< lo)
  // Rejection.
  double opt_stat_sum[kRolloutMaxOptions], opt_max[kRolloutMaxOptions], opt_min[kRolloutMaxOptions];
  double opt_rejected[kRolloutMaxOptions], opt_rejected_rows[kRolloutMaxOptions];
  double rejected, rejected_rows;
  // Off-policy.
  double neg_d_sum, k3_sum, rho2_sum, rho2_seq_sum;
  double train_ppl_sum, train_log_ppl_sum, rollout_ppl_sum, rollout_log_ppl_sum;
  double log_ppl_diff_sum, log_ppl_abs_diff_sum, log_ppl_diff_max, log_ppl_diff_min, ppl_ratio_sum;
};

CGRPO_HD RolloutBatchSums rollout_batch_sums_zero() {
  RolloutBatchSums s{};
  s.u_max = s.s_max = s.log_ppl_diff_max = s.w_max = s.row_v_max = -INFINITY;
  s.u_min = s.s_min = s.log_ppl_diff_min = s.w_min = s.row_v_min = INFINITY;
  for (int k = 0; k < kRolloutMaxOptions; ++k) {
    s.opt_max[k] = -INFINITY;
    s.opt_min[k] = INFINITY;
  }
  return s;
}

// Per-row tally of the token pass: how many of the row's tokens each option (and all together) rejects.
struct RolloutRowTally {
  double rejected_by[kRolloutMaxOptions];
  double rejected;
  double w_sum;  // the applied weights of the row's covered tokens
};

CGRPO_HD RolloutRowTally rollout_row_tally_merge(const RolloutRowTally& a, const RolloutRowTally& b) {
  RolloutRowTally m;
  for (int k = 0; k < kRolloutMaxOptions; ++k) m.rejected_by[k] = a.rejected_by[k] + b.rejected_by[k];
  m.rejected = a.rejected + b.rejected;
  m.w_sum = a.w_sum + b.w_sum;
  return m;
}

CGRPO_HD void rollout_batch_add_token(RolloutBatchSums& s, const RolloutParams& p, const RolloutTokenValues& v,
                                      RolloutRowTally& tally) {
  s.tokens += 1;
  if (p.is_level != static_cast<int>(RolloutIsLevel::none)) {
    const double uc = math::clamp(v.u, p.threshold_lower, p.threshold);
    s.u_sum += v.u;
    s.uc_sum += uc;
    s.uc2_sum += uc * uc;
    s.u_above += v.u > p.threshold ? 1.0 : 0.0;
    s.u_below += v.u < p.threshold_lower ? 1.0 : 0.0;
    s.u_max = math::max(s.u_max, v.u);
    s.u_min = math::min(s.u_min, v.u);
    s.w_sum += v.weight;
    s.w2_sum += v.weight * v.weight;
    s.w_max = math::max(s.w_max, v.weight);
    s.w_min = math::min(s.w_min, v.weight);
    s.oob += p.icepop && (v.u < p.threshold_lower || v.u > p.threshold) ? 1.0 : 0.0;
    tally.w_sum += v.weight;
  }
  for (int k = 0; k < p.num_options; ++k) {
    s.opt_stat_sum[k] += v.stat[k];
    if (p.option[k].scope == 0) {
      s.opt_max[k] = math::max(s.opt_max[k], v.stat[k]);
      s.opt_min[k] = math::min(s.opt_min[k], v.stat[k]);
    }
    const double r = (v.rejected_by >> k) & 1u ? 1.0 : 0.0;
    s.opt_rejected[k] += r;
    tally.rejected_by[k] += r;
  }
  const double r = v.rejected_by ? 1.0 : 0.0;
  s.rejected += r;
  tally.rejected += r;
  const double e = math::clamp(v.d, -kRolloutLogBound, kRolloutLogBound);
  s.neg_d_sum += -v.d;
  s.k3_sum += math::exp(v.d) - v.d - 1.0;
  s.rho2_sum += math::exp(e) * math::exp(e);
}

// Adds a row once its tokens are added (every row of the batch, empty ones included).
CGRPO_HD void rollout_batch_add_row(RolloutBatchSums& s, const RolloutParams& p, const RolloutRowSums& r,
                                    const RolloutRowValues& v, const RolloutRowTally& tally) {
  const bool nonempty = r.n > 0;
  s.rows += 1;
  s.nonempty_rows += nonempty ? 1.0 : 0.0;
  const double inv_n = 1.0 / (r.n + 1e-8);
  if (p.is_level != static_cast<int>(RolloutIsLevel::none)) {
    const bool seq = p.is_level == static_cast<int>(RolloutIsLevel::sequence);
    const double row_u = (seq ? r.n * v.seq_u : r.sum_u) * inv_n;
    s.s_max = math::max(s.s_max, r.sum_d);
    s.s_min = math::min(s.s_min, r.sum_d);
    s.rows_above += r.sum_d > p.log_threshold ? 1.0 : 0.0;
    s.rows_below += r.sum_d < p.log_threshold_lower ? 1.0 : 0.0;
    s.rows_u_above += row_u > p.threshold ? 1.0 : 0.0;
    s.rows_u_below += row_u < p.threshold_lower ? 1.0 : 0.0;
    // The row mean of w: a sequence row holds n_i copies of its weight.
    const double row_w = (seq ? r.n * rollout_applied_weight(p, v.seq_u) : tally.w_sum) * inv_n;
    if (seq && nonempty) s.w_row_sum += row_w;
    const double row_v = p.applied_metrics ? row_w : row_u;
    s.row_v_sum += row_v;
    s.row_v2_sum += row_v * row_v;
    s.row_v_max = math::max(s.row_v_max, row_v);
    s.row_v_min = math::min(s.row_v_min, row_v);
  }
  for (int k = 0; k < p.num_options; ++k) {
    if (p.option[k].scope != 0 && nonempty) {
      s.opt_max[k] = math::max(s.opt_max[k], v.stat[k]);
      s.opt_min[k] = math::min(s.opt_min[k], v.stat[k]);
    }
    s.opt_rejected_rows[k] += tally.rejected_by[k] > 0 ? 1.0 : 0.0;
  }
  s.rejected_rows += tally.rejected > 0 ? 1.0 : 0.0;
  const double e_sum = math::clamp(r.sum_d, -kRolloutLogBound, kRolloutLogBound);
  s.rho2_seq_sum += math::exp(2.0 * e_sum);
  const double mean_train = r.sum_train * inv_n, mean_rollout = r.sum_rollout * inv_n;
  const double diff = mean_rollout - mean_train;
  s.train_ppl_sum += math::exp(-mean_train);
  s.train_log_ppl_sum += -mean_train;
  s.rollout_ppl_sum += math::exp(-mean_rollout);
  s.rollout_log_ppl_sum += -mean_rollout;
  s.log_ppl_diff_sum += diff;
  s.log_ppl_abs_diff_sum += math::abs(diff);
  s.log_ppl_diff_max = math::max(s.log_ppl_diff_max, diff);
  s.log_ppl_diff_min = math::min(s.log_ppl_diff_min, diff);
  s.ppl_ratio_sum += math::exp(diff);
}

CGRPO_HD RolloutBatchSums rollout_batch_sums_merge(const RolloutBatchSums& a, const RolloutBatchSums& b) {
  RolloutBatchSums s = a;
  s.tokens += b.tokens;
  s.rows += b.rows;
  s.nonempty_rows += b.nonempty_rows;
  s.u_sum += b.u_sum;
  s.uc_sum += b.uc_sum;
  s.uc2_sum += b.uc2_sum;
  s.u_above += b.u_above;
  s.u_below += b.u_below;
  s.u_max = math::max(a.u_max, b.u_max);
  s.u_min = math::min(a.u_min, b.u_min);
  s.s_max = math::max(a.s_max, b.s_max);
  s.s_min = math::min(a.s_min, b.s_min);
  s.rows_above += b.rows_above;
  s.rows_below += b.rows_below;
  s.w_sum += b.w_sum;
  s.w_row_sum += b.w_row_sum;
  s.w2_sum += b.w2_sum;
  s.w_max = math::max(a.w_max, b.w_max);
  s.w_min = math::min(a.w_min, b.w_min);
  s.oob += b.oob;
  s.row_v_sum += b.row_v_sum;
  s.row_v2_sum += b.row_v2_sum;
  s.row_v_max = math::max(a.row_v_max, b.row_v_max);
  s.row_v_min = math::min(a.row_v_min, b.row_v_min);
  s.rows_u_above += b.rows_u_above;
  s.rows_u_below += b.rows_u_below;
  for (int k = 0; k < kRolloutMaxOptions; ++k) {
    s.opt_stat_sum[k] += b.opt_stat_sum[k];
    s.opt_max[k] = math::max(a.opt_max[k], b.opt_max[k]);
    s.opt_min[k] = math::min(a.opt_min[k], b.opt_min[k]);
    s.opt_rejected[k] += b.opt_rejected[k];
    s.opt_rejected_rows[k] += b.opt_rejected_rows[k];
  }
  s.rejected += b.rejected;
  s.rejected_rows += b.rejected_rows;
  s.neg_d_sum += b.neg_d_sum;
  s.k3_sum += b.k3_sum;
  s.rho2_sum += b.rho2_sum;
  s.rho2_seq_sum += b.rho2_seq_sum;
  s.train_ppl_sum += b.train_ppl_sum;
  s.train_log_ppl_sum += b.train_log_ppl_sum;
  s.rollout_ppl_sum += b.rollout_ppl_sum;
  s.rollout_log_ppl_sum += b.rollout_log_ppl_sum;
  s.log_ppl_diff_sum += b.log_ppl_diff_sum;
  s.log_ppl_abs_diff_sum += b.log_ppl_abs_diff_sum;
  s.log_ppl_diff_max = math::max(a.log_ppl_diff_max, b.log_ppl_diff_max);
  s.log_ppl_diff_min = math::min(a.log_ppl_diff_min, b.log_ppl_diff_min);
  s.ppl_ratio_sum += b.ppl_ratio_sum;
  return s;
}

// verl's rollout_is_batch_normalize divisor: the mean truncated weight over covered tokens (token
// level) or over the non-empty rows' mean weights (sequence level); 1 when that mean is <= 1e-8.
// CGRPO_HD: the CUDA row pass divides the weights by it on the device.
CGRPO_HD double rollout_batch_norm_factor(const RolloutBatchSums& s, const RolloutParams& p) {
  const double mean = p.is_level == static_cast<int>(RolloutIsLevel::sequence)
                          ? s.w_row_sum / (s.nonempty_rows > 1e-8 ? s.nonempty_rows : 1e-8)
                          : s.w_sum / (s.tokens + 1e-8);
  return mean > 1e-8 ? mean : 1.0;
}

// verl's means divide by the count + 1e-8 (masked_mean) over tokens, exactly by the count over rows.
inline RolloutMetrics finalize_rollout_metrics(const RolloutBatchSums& s, const RolloutParams& p, bool batch_normalize) {
  RolloutMetrics m;
  if (s.tokens <= 0) return m;  // nothing covered (verl raises here)
  const double n_eps = s.tokens + 1e-8;
  const double rows = s.rows > 0 ? s.rows : 1.0;
  if (p.is_level != static_cast<int>(RolloutIsLevel::none)) {
    const bool seq = p.is_level == static_cast<int>(RolloutIsLevel::sequence);
    // b178a3c: mean of u, std and ESS of clamp(u, 1/T, T); 1dda039: of w (its clamp to [0, T] never acts).
    const bool applied = p.applied_metrics != 0;
    m.is_mean = (applied ? s.w_sum : s.u_sum) / n_eps;
    m.is_max = seq ? ::exp(s.s_max < kRolloutLogBound ? s.s_max : kRolloutLogBound) : applied ? s.w_max : s.u_max;
    m.is_min = seq ? ::exp(s.s_min) : applied ? s.w_min : s.u_min;
    const double c_sum = applied ? s.w_sum : s.uc_sum, c2_sum = applied ? s.w2_sum : s.uc2_sum;
    const double mean_c = c_sum / n_eps;
    if (s.tokens > 1) {
      const double var = c2_sum / n_eps - mean_c * mean_c;
      m.is_std = ::sqrt(var > 0 ? var : 0.0);
    }
    const double norm = mean_c + 1e-8;
    // Every applied weight 0 (IcePop zeroed them all): no effective sample, 0 (verl logs 1 / 0 = inf).
    m.is_eff_sample_size = c2_sum > 0 ? 1.0 / (c2_sum / (norm * norm) / n_eps) : 0.0;
    m.is_ratio_fraction_high = seq ? s.rows_above / rows : s.u_above / n_eps;
    m.is_ratio_fraction_low = seq ? s.rows_below / rows : s.u_below / n_eps;
    m.is_seq_mean = s.row_v_sum / rows;
    m.is_seq_max = s.row_v_max;
    m.is_seq_min = s.row_v_min;
    if (s.rows > 1) {
      const double var = (s.row_v2_sum - s.row_v_sum * s.row_v_sum / s.rows) / (s.rows - 1);
      m.is_seq_std = ::sqrt(var > 0 ? var : 0.0);
    }
    const double dev_hi = s.row_v_max - 1.0, dev_lo = 1.0 - s.row_v_min;
    m.is_seq_max_deviation = dev_hi > dev_lo ? dev_hi : dev_lo;
    m.is_seq_fraction_high = s.rows_u_above / rows;
    m.is_seq_fraction_low = s.rows_u_below / rows;
    if (p.icepop) m.is_oob_ratio = s.oob / n_eps;
    if (batch_normalize) m.is_batch_norm_factor = rollout_batch_norm_factor(s, p);
  }
  if (p.num_options > 0) {
    for (int k = 0; k < p.num_options; ++k) {
      RolloutMetrics::Option& o = m.rs_option[k];
      o.mean = s.opt_stat_sum[k] / n_eps;
      o.max = s.opt_max[k] == -INFINITY ? 0.0 : s.opt_max[k];
      o.min = s.opt_min[k] == INFINITY ? 0.0 : s.opt_min[k];
      o.masked_fraction = s.opt_rejected[k] / n_eps;
      o.seq_masked_fraction = s.nonempty_rows > 0 ? s.opt_rejected_rows[k] / s.nonempty_rows : 0.0;
    }
    m.rs_masked_fraction = s.rejected / n_eps;
    m.rs_seq_masked_fraction = s.rejected_rows / rows;
  }
  m.kl = s.neg_d_sum / n_eps;
  m.k3_kl = s.k3_sum / n_eps;
  m.chi2_token = s.rho2_sum / n_eps - 1.0;
  m.chi2_seq = s.rho2_seq_sum / rows - 1.0;
  m.training_ppl = s.train_ppl_sum / rows;
  m.training_log_ppl = s.train_log_ppl_sum / rows;
  m.rollout_ppl = s.rollout_ppl_sum / rows;
  m.rollout_log_ppl = s.rollout_log_ppl_sum / rows;
  m.log_ppl_diff = s.log_ppl_diff_sum / rows;
  m.log_ppl_abs_diff = s.log_ppl_abs_diff_sum / rows;
  m.log_ppl_diff_max = s.log_ppl_diff_max;
  m.log_ppl_diff_min = s.log_ppl_diff_min;
  m.ppl_ratio = s.ppl_ratio_sum / rows;
  return m;
}

// ---------------------------------------------------------------------------
// The host pre-pass (the CPU path calls it once per batch, after the log-prob pass).
//
// rows.count() == num_rows rows; row i owns token rows [rows.begin(i), rows.end(i)). `mask` marks
// the tokens the correction covers (the valid initial tokens). For every row, d_t = train_logp_t -
// rollout_logp_t at its covered tokens (train_logp: old_logp in decoupled mode, the current log p in
// bypass mode; arrays [T], read only where mask is 1). Writes, where mask is 1 (elsewhere both are
// left as they are):
//   is_weight[t]: the truncated IS weight min(u, T) (divided by the batch mean with
//                 cfg.is_batch_normalize); left as is when cfg.is_level = none;
//   keep[t]:      1 if every rejection option keeps the token (its row, for row options), else 0;
// and *metrics, over the covered tokens and all num_rows rows. A null array is invalid_argument when
// a row holds a token (rows without tokens read none), a non-finite d non_finite naming the token;
// nothing is written then. The config is not validated here (LossConfig::validate does it).
template <typename RowBounds>
Status rollout_correction(const RolloutCorrectionConfig& cfg, int64_t num_rows, const RowBounds& rows,
                          const uint8_t* mask, const double* train_logp, const double* rollout_logp, double* is_weight,
                          uint8_t* keep, RolloutMetrics* metrics) {
  // Rows without tokens read no array: the arrays may be null then (an empty batch).
  bool any_tokens = false;
  for (int64_t i = 0; i < num_rows && !any_tokens; ++i) any_tokens = rows.end(i) > rows.begin(i);
  if (!metrics || (any_tokens && (!mask || !train_logp || !rollout_logp || !keep ||
                                  (cfg.is_level != RolloutIsLevel::none && !is_weight))))
    return make_error(StatusCode::invalid_argument,
                      "rollout_correction: mask, train_logp, rollout_logp, keep, metrics (and is_weight when "
                      "is_level != none) must not be null");
  for (int64_t i = 0; i < num_rows; ++i)
    for (int64_t t = rows.begin(i); t < rows.end(i); ++t)
      if (mask[t] && !isfinite(train_logp[t] - rollout_logp[t]))
        return make_error(StatusCode::non_finite,
                          "rollout correction: token %lld has a non-finite log ratio (training %g, rollout_logp %g)",
                          static_cast<long long>(t), train_logp[t], rollout_logp[t]);
  const RolloutParams p = rollout_params(cfg);
  const bool weighted = cfg.is_level != RolloutIsLevel::none;
  RolloutBatchSums sums = rollout_batch_sums_zero();
  for (int64_t i = 0; i < num_rows; ++i) {
    const int64_t begin = rows.begin(i), end = rows.end(i);
    RolloutRowSums r = rollout_row_sums_zero();
    for (int64_t t = begin; t < end; ++t)
      if (mask[t]) rollout_row_add(r, train_logp[t], rollout_logp[t]);
    const RolloutRowValues v = rollout_row_values(p, r);
    RolloutRowTally tally{};
    for (int64_t t = begin; t < end; ++t) {
      if (!mask[t]) continue;
      const RolloutTokenValues tok = rollout_token(p, v, train_logp[t], rollout_logp[t]);
      if (weighted) is_weight[t] = tok.weight;
      keep[t] = tok.rejected_by ? 0 : 1;
      rollout_batch_add_token(sums, p, tok, tally);
    }
    rollout_batch_add_row(sums, p, r, v, tally);
  }
  if (weighted && cfg.is_batch_normalize) {
    const double factor = rollout_batch_norm_factor(sums, p);
    for (int64_t i = 0; i < num_rows; ++i)
      for (int64_t t = rows.begin(i); t < rows.end(i); ++t)
        if (mask[t]) is_weight[t] /= factor;
  }
  *metrics = finalize_rollout_metrics(sums, p, weighted && cfg.is_batch_normalize);
  return Status::success();
}

}  // namespace cgrpo
