// cgrpo/loss/kl_estimators.hpp: the KL estimators of the policy against the reference, per token
// (docs/MATH.md): one struct each, their table, and the KL concern of the config.
#pragma once

#include <string.h>

#include <cmath>

#include "cgrpo/base/macros.hpp"
#include "cgrpo/base/variant_table.hpp"
#include "cgrpo/math/token_math.hpp"

namespace cgrpo {

template <typename Real>
struct KlTerm {
  Real value;
  Real dvalue_dlogp;
};

// What an estimator's struct carries: its names and its straight-through rule.
struct KlTraits {
  const char* name;           // the enum's name
  const char* verl_name;      // verl's kl_loss_type / kl_penalty name (nullptr: none)
  const char* verl_alias;     // its other name in verl (k1 for kl, ...)
  bool straight_through;      // a trailing "+" in verl gives the straight-through form (k2+ is plain k2)
};

// Each estimator: eval(diff = logp - ref, k3_clamp) -> value and d/dlogp, and its bound for the
// fused LM head (|v| <= loss, |dv| <= dlogp with X >= |logp - ref|; `ref` is |ref_logp|, logp_min
// the lowest log p the row can have).
struct KlBound {
  double value, dvalue;
};

struct NoKl {
  static constexpr KlTraits traits() { return KlTraits{"none", nullptr, nullptr, false}; }
  template <typename Real>
  CGRPO_HD static KlTerm<Real> eval(Real, bool) {
    return KlTerm<Real>{Real(0), Real(0)};
  }
  static KlBound bound(double, double, double, bool) { return KlBound{0.0, 0.0}; }
};

// k1 = logp - ref (verl "kl").
struct K1Kl {
  static constexpr KlTraits traits() { return KlTraits{"k1", "kl", "k1", true}; }
  template <typename Real>
  CGRPO_HD static KlTerm<Real> eval(Real diff, bool) {
    return KlTerm<Real>{diff, Real(1)};
  }
  static KlBound bound(double X, double, double, bool) { return KlBound{X, 1.0}; }
};

// |logp - ref| (verl "abs").
struct AbsKl {
  static constexpr KlTraits traits() { return KlTraits{"abs", "abs", nullptr, true}; }
  template <typename Real>
  CGRPO_HD static KlTerm<Real> eval(Real diff, bool) {
    return KlTerm<Real>{math::abs(diff), diff > Real(0) ? Real(1) : (diff < Real(0) ? Real(-1) : Real(0))};
  }
  static KlBound bound(double X, double, double, bool) { return KlBound{X, 1.0}; }
};

// 0.5 (logp - ref)^2 (verl "mse").
struct K2Kl {
  static constexpr KlTraits traits() { return KlTraits{"k2", "mse", "k2", false}; }
  template <typename Real>
  CGRPO_HD static KlTerm<Real> eval(Real diff, bool) {
    return KlTerm<Real>{Real(0.5) * diff * diff, diff};
  }
  static KlBound bound(double X, double, double, bool) { return KlBound{0.5 * X * X, X}; }
};

// e^(ref - logp) - (ref - logp) - 1 (verl "low_var_kl", TRL's k3). Clamped (verl):
// d = clamp(ref - logp, -20, 20), clamp(e^d - d - 1, -10, 10), each clamp passing gradient only
// inside its range. Unclamped (TRL): e^d - d - 1 with d = ref - logp.
struct K3Kl {
  static constexpr KlTraits traits() { return KlTraits{"k3", "low_var_kl", "k3", true}; }
  template <typename Real>
  CGRPO_HD static KlTerm<Real> eval(Real diff, bool k3_clamp) {
    const Real raw_d = -diff;  // ref - logp
    const Real d = k3_clamp ? math::clamp(raw_d, Real(-20), Real(20)) : raw_d;
    const Real ed = math::exp(d);
    const Real raw = ed - d - Real(1);
    const Real value = k3_clamp ? math::clamp(raw, Real(-10), Real(10)) : raw;
    const bool passes = !k3_clamp || (d == raw_d && value == raw);
    return KlTerm<Real>{value, passes ? Real(1) - ed : Real(0)};
  }
  // Clamped: 10 and 1 + e^20; unclamped: e^(|ref| - logp_min) + X + 1 and e^(|ref| - logp_min) + 1.
  static KlBound bound(double X, double ref, double logp_min, bool k3_clamp) {
    if (k3_clamp) return KlBound{10.0, 1.0 + std::exp(20.0)};
    const double e = std::exp(ref - logp_min);
    return KlBound{e + X + 1.0, e + 1.0};
  }
};

// X(enum name, struct). The order is the enum's values.
#define CGRPO_KL_ESTIMATORS(X) \
  X(none, NoKl)                \
  X(k1, K1Kl)                  \
  X(abs, AbsKl)                \
  X(k2, K2Kl)                  \
  X(k3, K3Kl)

enum class KlEstimator : int { CGRPO_KL_ESTIMATORS(CGRPO_VARIANT_ENUM_ENTRY) };
inline constexpr int kNumKlEstimators = 0 CGRPO_KL_ESTIMATORS(CGRPO_VARIANT_COUNT_ENTRY);

inline constexpr bool known(KlEstimator k) { return static_cast<unsigned>(k) < static_cast<unsigned>(kNumKlEstimators); }

inline constexpr KlTraits traits_of(KlEstimator k) {
  switch (k) {
#define CGRPO_TRAITS_CASE(name, Type) \
  case KlEstimator::name: return Type::traits();
    CGRPO_KL_ESTIMATORS(CGRPO_TRAITS_CASE)
#undef CGRPO_TRAITS_CASE
  }
  return KlTraits{"unknown", nullptr, nullptr, false};
}

inline const char* to_string(KlEstimator k) { return traits_of(k).name; }

// The KL concern of the config: J += coef * agg_KL(KL).
struct KlConfig {
  KlEstimator estimator = KlEstimator::none;
  double coef = 0.0;              // beta (must be 0 when estimator = none)
  bool straight_through = false;  // verl "k1+", "abs+", "k3+": the estimator's value, k2's gradient
  bool k3_clamp = true;           // k3: ref - logp clamped to +-20 and the value to +-10 (verl);
                                  // false: unclamped (TRL)
  bool times_ratio = false;       // TRL use_bias_correction_kl: KL_t * r (r differentiated)
};

// The estimator's value and derivative at diff = logp - ref; straight_through (verl "k1+", "abs+",
// "k3+"): the estimator's value, k2's gradient logp - ref (even where a clamp holds the value).
template <typename Real>
CGRPO_HD KlTerm<Real> kl_term(int estimator, Real logp, Real ref_logp, bool k3_clamp, bool straight_through) {
  const Real diff = logp - ref_logp;
  KlTerm<Real> k{Real(0), Real(0)};
  switch (estimator) {
#define CGRPO_EVAL_CASE(name, Type)         \
  case static_cast<int>(KlEstimator::name): \
    k = Type::eval(diff, k3_clamp);         \
    break;
    CGRPO_KL_ESTIMATORS(CGRPO_EVAL_CASE)
#undef CGRPO_EVAL_CASE
    default:
      return k;
  }
  if (estimator == static_cast<int>(KlEstimator::none)) return k;
  if (straight_through) k.dvalue_dlogp = diff;
  return k;
}

// |v| and |dv/dlogp| over the log p a row can have (X >= |logp - ref|, ref = |ref_logp|).
inline KlBound kl_estimator_bound(KlEstimator k, double X, double ref, double logp_min, bool k3_clamp) {
  switch (k) {
#define CGRPO_BOUND_CASE(name, Type) \
  case KlEstimator::name: return Type::bound(X, ref, logp_min, k3_clamp);
    CGRPO_KL_ESTIMATORS(CGRPO_BOUND_CASE)
#undef CGRPO_BOUND_CASE
  }
  return KlBound{INFINITY, INFINITY};
}

// The estimator named `name` in verl's kl_loss_type spelling (kl / k1, abs, mse / k2, low_var_kl / k3).
inline bool find_verl_kl(const char* name, KlEstimator* out) {
  for (int i = 1; name && i < kNumKlEstimators; ++i) {
    const KlTraits t = traits_of(static_cast<KlEstimator>(i));
    if ((t.verl_name && strcmp(t.verl_name, name) == 0) || (t.verl_alias && strcmp(t.verl_alias, name) == 0)) {
      *out = static_cast<KlEstimator>(i);
      return true;
    }
  }
  return false;
}

}  // namespace cgrpo
