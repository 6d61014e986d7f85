// cgrpo/loss/policy_terms.hpp: the table of policy terms. One row per term; the enum, the names, the
// config's parameters, the traits lookup, the per-token dispatch and the bounds are generated from it.
#pragma once

#include <string.h>

#include "cgrpo/base/status.hpp"
#include "cgrpo/base/variant_table.hpp"
#include "cgrpo/loss/policy/cispo.hpp"
#include "cgrpo/loss/policy/cispo_cap.hpp"
#include "cgrpo/loss/policy/clip_cov.hpp"
#include "cgrpo/loss/policy/dppo_kl.hpp"
#include "cgrpo/loss/policy/dppo_tv.hpp"
#include "cgrpo/loss/policy/dro.hpp"
#include "cgrpo/loss/policy/geo_mean.hpp"
#include "cgrpo/loss/policy/kl_cov.hpp"
#include "cgrpo/loss/policy/log_prob.hpp"
#include "cgrpo/loss/policy/ppo_clip.hpp"
#include "cgrpo/loss/policy/ratio.hpp"
#include "cgrpo/loss/policy/sapo.hpp"
#include "cgrpo/loss/policy/term.hpp"
#include "cgrpo/loss/policy/vespo.hpp"

namespace cgrpo {

// X(enum name, struct): the policy term of initial (on-policy) tokens. Refinement tokens always get
// the shaping -A f(p) (refinement_term below). The order is the enum's values: append new terms.
#define CGRPO_POLICY_TERMS(X) \
  X(ratio, RatioTerm)         \
  X(ppo_clip, PpoClipTerm)    \
  X(cispo, CispoTerm)         \
  X(cispo_cap, CispoCapTerm)  \
  X(sapo, SapoTerm)           \
  X(gpg, GpgTerm)             \
  X(geo_mean, GeoMeanTerm)    \
  X(kl_cov, KlCovTerm)        \
  X(clip_cov, ClipCovTerm)    \
  X(reinforce, ReinforceTerm) \
  X(vespo, VespoTerm)         \
  X(dppo_tv, DppoTvTerm)      \
  X(dppo_kl, DppoKlTerm)      \
  X(dro, DroTerm)

// The terms that have parameters of their own (Params other than NoParams): config.policy.<name>.
#define CGRPO_POLICY_TERM_PARAMS(X) \
  X(cispo_cap, CispoCapTerm)        \
  X(sapo, SapoTerm)                 \
  X(kl_cov, KlCovTerm)              \
  X(clip_cov, ClipCovTerm)          \
  X(vespo, VespoTerm)               \
  X(dppo_tv, DppoTvTerm)            \
  X(dppo_kl, DppoKlTerm)            \
  X(dro, DroTerm)

enum class PolicyLoss : int { CGRPO_POLICY_TERMS(CGRPO_VARIANT_ENUM_ENTRY) };
inline constexpr int kNumPolicyLosses = 0 CGRPO_POLICY_TERMS(CGRPO_VARIANT_COUNT_ENTRY);

inline constexpr bool known(PolicyLoss p) { return static_cast<unsigned>(p) < static_cast<unsigned>(kNumPolicyLosses); }

// Every term's own parameters, one member per term that has some (config.policy.sapo.tau_pos, ...).
struct PolicyParams {
#define CGRPO_PARAMS_MEMBER(name, Type) typename Type::Params name;
  CGRPO_POLICY_TERM_PARAMS(CGRPO_PARAMS_MEMBER)
#undef CGRPO_PARAMS_MEMBER
};

namespace detail {
// The parameters of term Type inside PolicyParams (NoParams for a term without any).
template <typename Type>
struct TermParamsOf {
  CGRPO_HD static NoParams get(const PolicyParams&) { return NoParams{}; }
};
#define CGRPO_PARAMS_OF(name, Type)                                         \
  template <>                                                               \
  struct TermParamsOf<Type> {                                               \
    CGRPO_HD static const Type::Params& get(const PolicyParams& p) { return p.name; } \
  };
CGRPO_POLICY_TERM_PARAMS(CGRPO_PARAMS_OF)
#undef CGRPO_PARAMS_OF
}  // namespace detail

// The traits of a term (PolicyTraits{}, name "unknown", outside the table).
inline constexpr PolicyTraits traits_of(PolicyLoss p) {
  switch (p) {
#define CGRPO_TRAITS_CASE(name, Type) \
  case PolicyLoss::name: return Type::traits();
    CGRPO_POLICY_TERMS(CGRPO_TRAITS_CASE)
#undef CGRPO_TRAITS_CASE
  }
  return PolicyTraits{};
}

inline const char* to_string(PolicyLoss p) { return traits_of(p).name; }

// The term's own parameter checks (the shared ones follow its traits: LossConfig::validate).
inline Status check_policy_params(PolicyLoss p, const PolicyParams& params) {
  switch (p) {
#define CGRPO_CHECK_CASE(name, Type) \
  case PolicyLoss::name: return Type::check(detail::TermParamsOf<Type>::get(params));
    CGRPO_POLICY_TERMS(CGRPO_CHECK_CASE)
#undef CGRPO_CHECK_CASE
  }
  return make_error(StatusCode::invalid_argument, "config.policy.loss: unknown policy loss %d", static_cast<int>(p));
}

// The term named `name` (its enum name, or verl's loss_mode where `verl` is true). False if none.
inline bool find_policy_loss(const char* name, bool verl, PolicyLoss* out) {
  for (int i = 0; name && i < kNumPolicyLosses; ++i) {
    const PolicyTraits t = traits_of(static_cast<PolicyLoss>(i));
    const char* n = verl ? t.verl_name : t.name;
    if (n && strcmp(n, name) == 0) {
      *out = static_cast<PolicyLoss>(i);
      return true;
    }
  }
  return false;
}

// The one place where the runtime PolicyLoss becomes a term: called once per token (thread 0 of a
// row block on the GPU), so a switch here costs nothing next to the row sweeps.
template <typename Real>
CGRPO_HD PolicyOutput<Real> policy_term(int term, const PolicyInputs<Real>& in, const RatioParams<Real>& ratio,
                                        const PolicyParams& params) {
  switch (term) {
#define CGRPO_EVAL_CASE(name, Type)        \
  case static_cast<int>(PolicyLoss::name): \
    return Type::eval(in, ratio, detail::TermParamsOf<Type>::get(params));
    CGRPO_POLICY_TERMS(CGRPO_EVAL_CASE)
#undef CGRPO_EVAL_CASE
  }
  return PolicyOutput<Real>{Real(0), Real(0), Real(0), Real(0), 0};
}

// The row pass hooks of a row term (traits.row_log_ratio); the defaults (0) for every other term.
template <typename Real>
CGRPO_HD Real policy_row_value(int term, Real x, Real A, const RatioParams<Real>& ratio, const PolicyParams& params) {
  switch (term) {
#define CGRPO_ROW_VALUE_CASE(name, Type)   \
  case static_cast<int>(PolicyLoss::name): \
    return Type::row_value(x, A, ratio, detail::TermParamsOf<Type>::get(params));
    CGRPO_POLICY_TERMS(CGRPO_ROW_VALUE_CASE)
#undef CGRPO_ROW_VALUE_CASE
  }
  return Real(0);
}

CGRPO_HD RowTermContext policy_row_context(int term, double n, double sum_a, double sum_y, const PolicyParams& params) {
  switch (term) {
#define CGRPO_ROW_CONTEXT_CASE(name, Type) \
  case static_cast<int>(PolicyLoss::name): \
    return Type::row_context(n, sum_a, sum_y, detail::TermParamsOf<Type>::get(params));
    CGRPO_POLICY_TERMS(CGRPO_ROW_CONTEXT_CASE)
#undef CGRPO_ROW_CONTEXT_CASE
  }
  return RowTermContext{0.0, 0.0, 0.0};
}

// The term's bound for the fused LM head (TermBound before its weight; kUnbounded: cannot be bounded).
inline TermBound policy_term_bound(PolicyLoss p, const BoundInputs& b, const RatioParams<double>& ratio,
                                   const PolicyParams& params) {
  switch (p) {
#define CGRPO_BOUND_CASE(name, Type) \
  case PolicyLoss::name: return Type::bound(b, ratio, detail::TermParamsOf<Type>::get(params));
    CGRPO_POLICY_TERMS(CGRPO_BOUND_CASE)
#undef CGRPO_BOUND_CASE
  }
  return kUnbounded;
}

// The term's batch selection parameters (zero for a term that selects nothing).
inline TermSelection policy_selection(PolicyLoss p, const PolicyParams& params) {
  switch (p) {
#define CGRPO_SELECTION_CASE(name, Type) \
  case PolicyLoss::name: return Type::selection(detail::TermParamsOf<Type>::get(params));
    CGRPO_POLICY_TERMS(CGRPO_SELECTION_CASE)
#undef CGRPO_SELECTION_CASE
  }
  return TermSelection{};
}

// Refinement token: l_t = -A f(p_t), p_t = exp(logp_t); no ratio, no clipping.
template <typename Real>
CGRPO_HD PolicyOutput<Real> refinement_term(Real logp, Real advantage, Real gamma) {
  const Real p = math::exp(logp);
  return PolicyOutput<Real>{-advantage * refinement_shaping(p, gamma), -advantage * refinement_shaping_dlogp(p, gamma),
                            Real(0), p, 0};
}

}  // namespace cgrpo
