// cgrpo/loss/ratio.hpp: the importance ratio of initial tokens and its clipping, one concern of the
// loss config: where r comes from (its level), the clip band, the dual clip and the log-ratio clamp.
#pragma once

#include <math.h>
#include <stdint.h>

#include <limits>

#include "cgrpo/base/macros.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/base/variant_table.hpp"
#include "cgrpo/math/token_math.hpp"

namespace cgrpo {

// ---------------------------------------------------------------------------
// Ratio levels: one struct each, with its traits (the table below derives the enum and names).

struct RatioLevelTraits {
  const char* name;
  bool row_ratio;          // r is one number per row (the row pass forms its log ratio: needs the layout)
  bool differentiated;     // r's gradient goes through the row mean (couples the row's tokens)
  bool fixes_aggregation;  // the policy term aggregates seq-mean-token-mean whatever the config says
};

// r_t = exp(clamp(logp_t - old_t)).
struct TokenRatio {
  static constexpr RatioLevelTraits traits() { return RatioLevelTraits{"token", false, false, false}; }
};
// verl GSPO: r = exp(clamp(sg(mean_i x)) + logp_t - sg(logp_t)), so dr/dlogp_t = r; verl's
// compute_policy_loss_gspo always aggregates seq-mean-token-mean.
struct SequenceDetachedRatio {
  static constexpr RatioLevelTraits traits() { return RatioLevelTraits{"sequence_detached", true, false, true}; }
};
// TRL importance_sampling_level "sequence": r_i = exp(mean_i x), differentiated through the mean.
struct SequenceRatio {
  static constexpr RatioLevelTraits traits() { return RatioLevelTraits{"sequence", true, true, false}; }
};

// X(enum name, struct). The order is the enum's values.
#define CGRPO_RATIO_LEVELS(X)                \
  X(token, TokenRatio)                       \
  X(sequence_detached, SequenceDetachedRatio) \
  X(sequence, SequenceRatio)

enum class RatioLevel : int { CGRPO_RATIO_LEVELS(CGRPO_VARIANT_ENUM_ENTRY) };
inline constexpr int kNumRatioLevels = 0 CGRPO_RATIO_LEVELS(CGRPO_VARIANT_COUNT_ENTRY);

inline constexpr bool known(RatioLevel l) { return static_cast<unsigned>(l) < static_cast<unsigned>(kNumRatioLevels); }

// The traits of a level (a default-constructed one, name "unknown", for a value outside the table).
inline constexpr RatioLevelTraits traits_of(RatioLevel l) {
  switch (l) {
#define CGRPO_TRAITS_CASE(name, Type) \
  case RatioLevel::name: return Type::traits();
    CGRPO_RATIO_LEVELS(CGRPO_TRAITS_CASE)
#undef CGRPO_TRAITS_CASE
  }
  return RatioLevelTraits{"unknown", false, false, false};
}

inline const char* to_string(RatioLevel l) { return traits_of(l).name; }

// ---------------------------------------------------------------------------
// The concern in the config, and its checks.

struct RatioConfig {
  RatioLevel level = RatioLevel::token;
  double clip_eps_low = 0.2;    // ratio clamped to [1 - eps_low, 1 + eps_high] (geo_mean: the log ratio
  double clip_eps_high = 0.2;   // to [-eps_low, eps_high]); read by the terms whose traits say `clips`
  bool dual_clip = false;       // only where A < 0: l = min(l, -A c) (verl always; ppo_clip only)
  double dual_clip_c = 3.0;     // verl clip_ratio_c (also the DPPO losses' IS cap)
  double log_ratio_min = -20.0; // logp - old (or the row mean) is clamped to [min, max] before exp;
  double log_ratio_max = 20.0;  // +-inf: no clamp (TRL). The clamp passes no gradient outside.
  double two_sided_delta = std::numeric_limits<double>::infinity();  // TRL's delta (ppo_clip): the
                                // unclipped branch takes min(r, delta) for either sign of A; inf: off
};

// The ratio concern in the precision of the path that uses it (kernels take it by value).
template <typename Real>
struct RatioParams {
  int level;         // RatioLevel
  bool dual_clip;
  Real clip_low;     // 1 - eps_low
  Real clip_high;    // 1 + eps_high
  Real clip_eps_low, clip_eps_high;
  Real dual_clip_c;
  Real log_ratio_min, log_ratio_max;  // may be +-inf
  Real two_sided_delta;               // may be +inf (off)
};

template <typename Real>
inline RatioParams<Real> ratio_params(const RatioConfig& c) {
  RatioParams<Real> p{};
  p.level = static_cast<int>(c.level);
  p.dual_clip = c.dual_clip;
  p.clip_low = static_cast<Real>(1.0 - c.clip_eps_low);
  p.clip_high = static_cast<Real>(1.0 + c.clip_eps_high);
  p.clip_eps_low = static_cast<Real>(c.clip_eps_low);
  p.clip_eps_high = static_cast<Real>(c.clip_eps_high);
  p.dual_clip_c = static_cast<Real>(c.dual_clip_c);
  p.log_ratio_min = static_cast<Real>(c.log_ratio_min);
  p.log_ratio_max = static_cast<Real>(c.log_ratio_max);
  p.two_sided_delta = static_cast<Real>(c.two_sided_delta);
  return p;
}

// The ratio r = exp(clamp(q, lo, hi)) of a log ratio q (the token's logp - old, or its row's mean),
// and dr/dq: r inside the clamp, 0 outside (torch.clamp passes gradient on [lo, hi], bounds included).
template <typename Real>
struct RatioValue {
  Real log_ratio;  // q before the clamp
  Real r;
  Real dr;         // dr / dq
};

template <typename Real>
CGRPO_HD RatioValue<Real> clamped_ratio(Real q, Real lo, Real hi) {
  const Real c = math::clamp(q, lo, hi);
  const Real r = math::exp(c);
  return RatioValue<Real>{q, r, c == q ? r : Real(0)};
}

}  // namespace cgrpo
