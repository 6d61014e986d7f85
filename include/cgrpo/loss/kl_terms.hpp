// cgrpo/loss/kl_terms.hpp: the KL estimators of the policy against the reference, per token (docs/MATH.md).
// verl's kl_penalty (k1, abs, k2, k3 with its clamps, the straight-through "+" forms) and TRL's k3.
#pragma once

#include "cgrpo/loss/config.hpp"
#include "cgrpo/math/token_math.hpp"

namespace cgrpo {

template <typename Real>
struct KlTerm {
  Real value;
  Real dvalue_dlogp;
};

// The estimator's value and derivative at diff = logp - ref.
//   k3 clamped (verl low_var_kl): d = clamp(ref - logp, -20, 20), clamp(e^d - d - 1, -10, 10); each clamp
//   passes gradient only inside its range. k3 unclamped (TRL): e^d - d - 1 with d = ref - logp.
//   straight_through (verl "k1+", "abs+", "k3+"): the estimator's value, k2's gradient logp - ref
//   (even where a clamp holds the value).
template <typename Real>
CGRPO_HD KlTerm<Real> kl_term(int estimator, Real logp, Real ref_logp, bool k3_clamp, bool straight_through) {
  const Real diff = logp - ref_logp;
  KlTerm<Real> k{Real(0), Real(0)};
  switch (estimator) {
    case static_cast<int>(KlEstimator::k1):
      k = KlTerm<Real>{diff, Real(1)};
      break;
    case static_cast<int>(KlEstimator::abs):
      k = KlTerm<Real>{math::abs(diff), diff > Real(0) ? Real(1) : (diff < Real(0) ? Real(-1) : Real(0))};
      break;
    case static_cast<int>(KlEstimator::k2):
      k = KlTerm<Real>{Real(0.5) * diff * diff, diff};
      break;
    case static_cast<int>(KlEstimator::k3): {
      const Real raw_d = -diff;  // ref - logp
      const Real d = k3_clamp ? math::clamp(raw_d, Real(-20), Real(20)) : raw_d;
      const Real ed = math::exp(d);
      const Real raw = ed - d - Real(1);
      const Real value = k3_clamp ? math::clamp(raw, Real(-10), Real(10)) : raw;
      const bool passes = !k3_clamp || (d == raw_d && value == raw);
      k = KlTerm<Real>{value, passes ? Real(1) - ed : Real(0)};
      break;
    }
    default:
      return k;
  }
  if (straight_through) k.dvalue_dlogp = diff;
  return k;
}

}  // namespace cgrpo
