// cgrpo/loss/metrics.hpp: what a trainer logs per step, with the peers' definitions.
// MetricSums are per-token sums (host/device, mergeable); finalize_metrics() turns them into means.
#pragma once

#include <stdint.h>

#include <cmath>

#include "cgrpo/base/macros.hpp"
#include "cgrpo/corrections/rollout_correction.hpp"
#include "cgrpo/corrections/sampler_correction.hpp"
#include "cgrpo/loss/config.hpp"
#include "cgrpo/loss/token_loss.hpp"

namespace cgrpo {

struct LossMetrics {
  double loss = 0;                // J = pg - c_H * entropy_loss + beta * kl_loss
  double pg_loss = 0;             // agg_pg(l)
  double pg_loss_initial = 0;     // the initial-token part of pg_loss (weights of pg_agg)
  double pg_loss_refinement = 0;  // the refinement-token part (pg_loss = initial + refinement)
  double entropy_loss = 0;        // agg_H(H)
  double kl_loss = 0;             // agg_KL(KL) (0 when KL is off)
  // Means over the valid initial tokens of the policy term (verl's metrics; verl divides by the count
  // + 1e-8: config.metrics.mean_eps).
  double pg_clipfrac = 0;         // ppo_clip: [pg2 > pg1]; cispo: r outside the band; geo_mean: clipped
                                  // where A > 0; kl_cov / clip_cov: selected tokens
  double pg_clipfrac_lower = 0;   // dual clip: [A < 0 and l > -A c]; geo_mean: clipped where A < 0
  double ppo_kl = 0;              // old - logp (clamped like the ratio at token level; kl_cov: |logp - old|)
  double ratio_mean = 0;          // r (or s_i, rho_i) over valid initial tokens
  // TRL's clip_ratio/* (fractions over valid initial tokens; r capped at the dual clip c when on).
  double clip_ratio_low_mean = 0;     // [A < 0 and r < 1 - eps_low]
  double clip_ratio_high_mean = 0;    // [A > 0 and r > 1 + eps_high]; cispo_cap: [A > 0 and r > cap]
  double clip_ratio_region_mean = 0;  // either
  double clip_ratio_low_min = 0;      // min over rows with a valid token of the row's low fraction
  double clip_ratio_high_max = 0;     // max over rows of the row's high fraction
  // Over every valid token.
  double entropy_mean = 0;        // H
  double kl_mean = 0;             // KL (after kl_times_ratio)
  double refinement_prob_mean = 0;  // p_t over valid refinement tokens
  double vespo_phi_mean = 0;      // vespo: sum_i phi_i / B
  int64_t num_valid_tokens = 0;
  int64_t num_initial_tokens = 0;     // valid initial tokens in the policy term
  int64_t num_refinement_tokens = 0;  // valid refinement tokens
  RolloutMetrics rollout;         // config.off_policy.rollout (verl)
  SamplerMetrics sampler;         // config.off_policy.sampler (TRL)
};

// The name of the first metric that is not finite, or nullptr: the loss returns OK only with every
// metric finite (a metric can overflow where J does not, e.g. the mean ratio of clipped tokens
// without a log-ratio clamp, or a KL of weight 0).
inline const char* first_non_finite_metric(const LossMetrics& m) {
  struct Named {
    const char* name;
    double value;
  };
  const Named top[] = {{"loss", m.loss}, {"pg_loss", m.pg_loss}, {"pg_loss_initial", m.pg_loss_initial},
                       {"pg_loss_refinement", m.pg_loss_refinement}, {"entropy_loss", m.entropy_loss},
                       {"kl_loss", m.kl_loss}, {"pg_clipfrac", m.pg_clipfrac},
                       {"pg_clipfrac_lower", m.pg_clipfrac_lower}, {"ppo_kl", m.ppo_kl}, {"ratio_mean", m.ratio_mean},
                       {"clip_ratio_low_mean", m.clip_ratio_low_mean}, {"clip_ratio_high_mean", m.clip_ratio_high_mean},
                       {"clip_ratio_region_mean", m.clip_ratio_region_mean},
                       {"clip_ratio_low_min", m.clip_ratio_low_min}, {"clip_ratio_high_max", m.clip_ratio_high_max},
                       {"entropy_mean", m.entropy_mean}, {"kl_mean", m.kl_mean},
                       {"refinement_prob_mean", m.refinement_prob_mean}, {"vespo_phi_mean", m.vespo_phi_mean}};
  for (const Named& n : top)
    if (!std::isfinite(n.value)) return n.name;
  const RolloutMetrics& r = m.rollout;
  const Named rollout[] = {
#define CGRPO_NAMED_ROLLOUT(field) {"rollout." #field, r.field},
      CGRPO_ROLLOUT_METRIC_FIELDS(CGRPO_NAMED_ROLLOUT)
#undef CGRPO_NAMED_ROLLOUT
  };
  for (const Named& n : rollout)
    if (!std::isfinite(n.value)) return n.name;
  for (const RolloutMetrics::Option& o : r.rs_option)
    for (double v : {o.mean, o.max, o.min, o.masked_fraction, o.seq_masked_fraction})
      if (!std::isfinite(v)) return "rollout.rs_option";
  const SamplerMetrics& s = m.sampler;
  for (double v : {s.logp_difference_mean, s.logp_difference_max, s.is_ratio_min, s.is_ratio_mean, s.is_ratio_max})
    if (!std::isfinite(v)) return "sampler";
  return nullptr;
}

// Per-token sums that finalize_metrics() turns into LossMetrics. Acc is double on the CPU; the
// CUDA path reduces them in a fixed order, so results are deterministic.
template <typename Acc>
struct MetricSums {
  Acc loss, pg_initial, pg_refinement, entropy_weighted, kl_weighted;
  Acc clipped, clipped_lower, ppo_kl, ratio_below, ratio_above, entropy, kl, refinement_prob, ratio;
  Acc valid, initial, refinement;
};

template <typename Acc>
CGRPO_HD MetricSums<Acc> metric_sums_zero() {
  MetricSums<Acc> s;
  s.loss = s.pg_initial = s.pg_refinement = s.entropy_weighted = s.kl_weighted = Acc(0);
  s.clipped = s.clipped_lower = s.ppo_kl = s.ratio_below = s.ratio_above = Acc(0);
  s.entropy = s.kl = s.refinement_prob = s.ratio = Acc(0);
  s.valid = s.initial = s.refinement = Acc(0);
  return s;
}

// The log ratio a token's ppo_kl metric averages, as verl's loss functions log it (the term's
// PpoKl): -clamp(x) at token level (the clamp of the ratio), -x at sequence levels and for the
// terms without a clamp (geo_mean, reinforce), |x| for kl_cov.
template <typename Real>
CGRPO_HD Real ppo_kl_term(Real x, const TokenLossParams<Real>& p) {
  if (p.ppo_kl == static_cast<int>(PpoKl::absolute)) return math::abs(x);
  if (p.ppo_kl == static_cast<int>(PpoKl::raw)) return -x;
  return -math::clamp(x, p.ratio.log_ratio_min, p.ratio.log_ratio_max);
}

// Adds one token. A token that is not valid adds nothing (none of its values are read).
template <typename Acc, typename Real>
CGRPO_HD void metric_sums_add(MetricSums<Acc>& s, const TokenInputs<Real>& in, const TokenResult<Real>& r,
                              const TokenLossParams<Real>& p) {
  if (!in.valid) return;
  s.loss += Acc(r.loss);
  if (in.refinement) s.pg_refinement += Acc(r.pg_loss);
  else s.pg_initial += Acc(r.pg_loss);
  s.entropy_weighted += Acc(in.w_entropy) * Acc(in.entropy);
  s.kl_weighted += Acc(in.w_kl) * Acc(r.kl);
  s.valid += Acc(1);
  s.entropy += Acc(in.entropy);
  s.kl += Acc(r.kl);
  if (in.refinement) {
    s.refinement += Acc(1);
    s.refinement_prob += Acc(r.policy.ratio);
  } else if (in.in_pg) {
    const uint8_t f = r.policy.flags;
    s.initial += Acc(1);
    s.ratio += Acc(r.policy.ratio);
    s.clipped += (f & kClipped) ? Acc(1) : Acc(0);
    s.clipped_lower += (f & kClippedLower) ? Acc(1) : Acc(0);
    s.ratio_below += (f & kRatioBelow) ? Acc(1) : Acc(0);
    s.ratio_above += (f & kRatioAbove) ? Acc(1) : Acc(0);
    s.ppo_kl += Acc(ppo_kl_term(in.logp - in.old_logp, p));
  }
}

template <typename Acc>
CGRPO_HD MetricSums<Acc> metric_sums_merge(const MetricSums<Acc>& a, const MetricSums<Acc>& b) {
  MetricSums<Acc> s;
  s.loss = a.loss + b.loss;
  s.pg_initial = a.pg_initial + b.pg_initial;
  s.pg_refinement = a.pg_refinement + b.pg_refinement;
  s.entropy_weighted = a.entropy_weighted + b.entropy_weighted;
  s.kl_weighted = a.kl_weighted + b.kl_weighted;
  s.clipped = a.clipped + b.clipped;
  s.clipped_lower = a.clipped_lower + b.clipped_lower;
  s.ppo_kl = a.ppo_kl + b.ppo_kl;
  s.ratio_below = a.ratio_below + b.ratio_below;
  s.ratio_above = a.ratio_above + b.ratio_above;
  s.entropy = a.entropy + b.entropy;
  s.kl = a.kl + b.kl;
  s.refinement_prob = a.refinement_prob + b.refinement_prob;
  s.ratio = a.ratio + b.ratio;
  s.valid = a.valid + b.valid;
  s.initial = a.initial + b.initial;
  s.refinement = a.refinement + b.refinement;
  return s;
}

// mean_eps: added to every count (verl's masked_mean adds 1e-8; config.metrics.mean_eps).
template <typename Acc>
inline LossMetrics finalize_metrics(const MetricSums<Acc>& s, double mean_eps = 0.0) {
  auto mean = [mean_eps](Acc sum, Acc n) {
    return n > Acc(0) ? static_cast<double>(sum) / (static_cast<double>(n) + mean_eps) : 0.0;
  };
  LossMetrics m;
  m.loss = static_cast<double>(s.loss);
  m.pg_loss_initial = static_cast<double>(s.pg_initial);
  m.pg_loss_refinement = static_cast<double>(s.pg_refinement);
  m.pg_loss = m.pg_loss_initial + m.pg_loss_refinement;
  m.entropy_loss = static_cast<double>(s.entropy_weighted);
  m.kl_loss = static_cast<double>(s.kl_weighted);
  m.pg_clipfrac = mean(s.clipped, s.initial);
  m.pg_clipfrac_lower = mean(s.clipped_lower, s.initial);
  m.ppo_kl = mean(s.ppo_kl, s.initial);
  m.ratio_mean = mean(s.ratio, s.initial);
  m.clip_ratio_low_mean = mean(s.ratio_below, s.initial);
  m.clip_ratio_high_mean = mean(s.ratio_above, s.initial);
  m.clip_ratio_region_mean = mean(s.ratio_below + s.ratio_above, s.initial);
  m.entropy_mean = mean(s.entropy, s.valid);
  m.kl_mean = mean(s.kl, s.valid);
  m.refinement_prob_mean = mean(s.refinement_prob, s.refinement);
  m.num_valid_tokens = static_cast<int64_t>(s.valid);
  m.num_initial_tokens = static_cast<int64_t>(s.initial);
  m.num_refinement_tokens = static_cast<int64_t>(s.refinement);
  return m;
}

}  // namespace cgrpo
