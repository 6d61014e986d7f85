// cgrpo/loss/token_loss.hpp: everything one token contributes to J and to the backward pass.
// CGRPO_HD: the CPU per-token pass and the CUDA token step call this same function.
#pragma once

#include <stdint.h>

#include "cgrpo/loss/config.hpp"
#include "cgrpo/loss/kl_estimators.hpp"
#include "cgrpo/loss/policy_terms.hpp"
#include "cgrpo/math/token_math.hpp"

namespace cgrpo {

// Per-row values from the row pass (loss/row_pass.hpp), the same at every token of the row.
template <typename Real>
struct RowContext {
  Real log_ratio;   // sequence levels: mean of logp - old over the row's valid initial tokens;
                    // geo_mean: q_i = sum_t m y_t / (n_i + 1e-8)
  Real coupling;    // dq_i/dlogp_t of a valid initial token whose q path is open: 1 / max(n_i, 1)
                    // (TRL sequence level) or 1 / (n_i + 1e-8) (geo_mean); 0 otherwise
  Real advantage;   // geo_mean: Abar_i = sum_t m A / (n_i + 1e-8)
  Real weight;      // vespo: phi_i
};

// What token_loss reads for one token. A token that is not `valid` (mask 0) contributes nothing
// and none of its other values are read: padding may hold NaN or -inf (selects, not multiplies).
template <typename Real>
struct TokenInputs {
  bool valid;          // m_t
  bool in_pg;          // the token counts in the policy term (verl's rejection removes it: m'_t = 0)
  bool refinement;     // kind: refinement (shaping) or initial (policy term)
  bool selected;       // kl_cov / clip_cov: chosen by the batch pass
  Real logp;           // log softmax(z / tau)[y]
  Real entropy;        // H_t
  Real old_logp;       // the ratio's reference (the sampling policy; rollout_logp in bypass mode)
  Real ref_logp;       // reference policy (read only when KL is on)
  Real advantage;      // A of the token's response
  Real w_pg, w_entropy, w_kl;  // aggregation weights (0 where a term does not count the token)
  Real pg_factor;      // constant factor on the policy loss: IS weight, sampler weight, masks (1: none)
  RowContext<Real> row;
};

template <typename Real>
struct TokenResult {
  PolicyOutput<Real> policy;  // unweighted l_t (times pg_factor), its derivatives, ratio and flags
  Real kl;                    // unweighted KL_t (0 when KL is off)
  Real pg_loss;               // w_pg * pg_factor * l_t
  Real loss;                  // this token's contribution to J
  Real dJ_dlogp;              // a_t, the part local to this token
  Real dJ_dentropy;           // b_t = -c_H w_entropy
  Real row_grad;              // this token's share of G_i = dJ/dq_i (row-coupled losses)
  Real row_coupling;          // dq_i/dlogp_t: the post pass adds row_coupling * G_i to a_t
};

template <typename Real>
CGRPO_HD TokenResult<Real> token_loss(const TokenInputs<Real>& in, const TokenLossParams<Real>& p) {
  TokenResult<Real> res{};
  if (!in.valid) return res;
  // A token outside the policy term, or whose factor is 0 (a mask), gets no policy loss: selected
  // away, not multiplied, so that an infinite ratio there cannot become NaN.
  const bool pg_on = in.in_pg && in.pg_factor != Real(0);
  const bool row_coupled_ratio = p.ratio_through_row;
  Real ratio_for_kl = Real(1), dratio_for_kl = Real(0);  // kl_times_ratio: r and dr/dq
  if (in.refinement) {
    res.policy = refinement_term(in.logp, in.advantage, p.gamma);
  } else {
    PolicyInputs<Real> pin{};
    pin.logp = in.logp;
    pin.old_logp = in.old_logp;
    pin.log_ratio = in.logp - in.old_logp;
    pin.advantage = in.advantage;
    pin.selected = in.selected;
    pin.row_advantage = in.row.advantage;
    pin.row_log_ratio = in.row.log_ratio;
    pin.row_weight = in.row.weight;
    const Real q = p.ratio_from_row ? in.row.log_ratio : pin.log_ratio;
    pin.ratio = clamped_ratio(q, p.ratio.log_ratio_min, p.ratio.log_ratio_max);
    res.policy = policy_term(p.policy_loss, pin, p.ratio, p.policy);
    ratio_for_kl = pin.ratio.r;
    dratio_for_kl = pin.ratio.dr;
  }
  const Real wf = pg_on ? in.w_pg * in.pg_factor : Real(0);
  res.policy.loss = pg_on ? res.policy.loss * in.pg_factor : Real(0);
  if (!pg_on) res.policy.dlogp = res.policy.dq = Real(0);
  res.pg_loss = pg_on ? in.w_pg * res.policy.loss : Real(0);
  res.dJ_dlogp = wf * res.policy.dlogp;
  // The q path: local (dq/dlogp_t = 1) at token level and in verl's GSPO form; through the row
  // (G_i) at TRL's sequence level and for geo_mean.
  const bool row_q = !in.refinement && (row_coupled_ratio || p.row_term);
  if (row_q) {
    res.row_grad = wf * res.policy.dq;
    // A token outside the policy term (verl's rejection) is outside its row's q_i as well.
    res.row_coupling = (res.policy.flags & kRowPathClosed) || !in.in_pg ? Real(0) : in.row.coupling;
  } else {
    res.dJ_dlogp += wf * res.policy.dq;
  }
  res.loss = res.pg_loss;

  if (p.kl_estimator != static_cast<int>(KlEstimator::none)) {
    const KlTerm<Real> k = kl_term(p.kl_estimator, in.logp, in.ref_logp, p.kl_k3_clamp, p.kl_straight_through);
    Real value = k.value, dlocal = k.dvalue_dlogp, dq = Real(0);
    if (p.kl_times_ratio && !in.refinement) {  // TRL use_bias_correction_kl: k * r, r differentiated
      value = k.value * ratio_for_kl;
      dlocal = k.dvalue_dlogp * ratio_for_kl;
      dq = k.value * dratio_for_kl;
    }
    const Real wk = p.kl_coef * in.w_kl;
    res.kl = value;
    res.loss += wk * value;
    res.dJ_dlogp += wk * dlocal;
    if (row_coupled_ratio && !in.refinement) {
      res.row_grad += wk * dq;
      res.row_coupling = in.in_pg ? in.row.coupling : Real(0);
    } else {
      res.dJ_dlogp += wk * dq;
    }
  }
  res.dJ_dentropy = -p.entropy_coef * in.w_entropy;
  res.loss += res.dJ_dentropy * in.entropy;
  return res;
}

}  // namespace cgrpo
