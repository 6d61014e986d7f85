// cgrpo/metrics.hpp: what a trainer logs per step, with verl's definitions.
// MetricSums are per-token sums (host/device, mergeable); finalize() turns them into means.
#pragma once

#include <cstdint>

#include "cgrpo/macros.hpp"
#include "cgrpo/token_math.hpp"

namespace cgrpo {

struct LossMetrics {
  double loss = 0;                // J = pg - c_H * entropy_loss + beta * kl_loss
  double pg_loss = 0;             // agg_pg(l)
  double pg_loss_initial = 0;     // the initial-token part of pg_loss (weights of pg_agg)
  double pg_loss_refinement = 0;  // the refinement-token part (pg_loss = initial + refinement)
  double entropy_loss = 0;        // agg_H(H)
  double kl_loss = 0;             // agg_KL(KL) (0 when KL is off)
  double pg_clipfrac = 0;         // masked mean over initial tokens of [pg2 > pg1]
  double pg_clipfrac_lower = 0;   // masked mean over initial tokens of [A < 0 and l > -A c]
  double ppo_kl = 0;              // masked mean over initial tokens of old - logp
  double entropy_mean = 0;        // masked mean of H over valid tokens
  double kl_mean = 0;             // masked mean of KL over valid tokens
  double refinement_prob_mean = 0;  // mean p_t over valid refinement tokens
  double ratio_mean = 0;          // mean r_t (or s_i) over valid initial tokens
  int64_t num_valid_tokens = 0;
  int64_t num_initial_tokens = 0;     // valid initial tokens
  int64_t num_refinement_tokens = 0;  // valid refinement tokens
};

// Per-token sums that finalize() turns into LossMetrics. Acc is double on the
// CPU; the CUDA path reduces them in a fixed order, so results are deterministic.
template <typename Acc>
struct MetricSums {
  Acc loss, pg_initial, pg_refinement, entropy_weighted, kl_weighted;
  Acc clipped, clipped_lower, ppo_kl, entropy, kl, refinement_prob, ratio;
  Acc valid, initial, refinement;
};

template <typename Acc>
CGRPO_HD MetricSums<Acc> metric_sums_zero() {
  MetricSums<Acc> s;
  s.loss = s.pg_initial = s.pg_refinement = s.entropy_weighted = s.kl_weighted = Acc(0);
  s.clipped = s.clipped_lower = s.ppo_kl = s.entropy = s.kl = s.refinement_prob = s.ratio = Acc(0);
  s.valid = s.initial = s.refinement = Acc(0);
  return s;
}

// Adds one token. `valid` is its mask; weighted terms use the token's weights,
// so masked tokens (weight 0) add nothing to the losses either way.
template <typename Acc, typename Real>
CGRPO_HD void metric_sums_add(MetricSums<Acc>& s, const TokenInputs<Real>& in, const TokenResult<Real>& r,
                              bool valid) {
  s.loss += Acc(r.loss);
  const Acc pg = Acc(in.w_pg) * Acc(r.policy.loss);
  if (in.refinement) s.pg_refinement += pg;
  else s.pg_initial += pg;
  s.entropy_weighted += Acc(in.w_entropy) * Acc(in.entropy);
  s.kl_weighted += Acc(in.w_kl) * Acc(r.kl);
  if (!valid) return;
  s.valid += Acc(1);
  s.entropy += Acc(in.entropy);
  s.kl += Acc(r.kl);
  if (in.refinement) {
    s.refinement += Acc(1);
    s.refinement_prob += Acc(r.policy.ratio);
  } else {
    s.initial += Acc(1);
    s.ratio += Acc(r.policy.ratio);
    s.clipped += r.policy.clipped ? Acc(1) : Acc(0);
    s.clipped_lower += r.policy.clipped_lower ? Acc(1) : Acc(0);
    s.ppo_kl += Acc(in.old_logp) - Acc(in.logp);
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
  s.entropy = a.entropy + b.entropy;
  s.kl = a.kl + b.kl;
  s.refinement_prob = a.refinement_prob + b.refinement_prob;
  s.ratio = a.ratio + b.ratio;
  s.valid = a.valid + b.valid;
  s.initial = a.initial + b.initial;
  s.refinement = a.refinement + b.refinement;
  return s;
}

template <typename Acc>
inline LossMetrics finalize_metrics(const MetricSums<Acc>& s) {
  auto mean = [](Acc sum, Acc n) { return n > Acc(0) ? static_cast<double>(sum) / static_cast<double>(n) : 0.0; };
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
  m.entropy_mean = mean(s.entropy, s.valid);
  m.kl_mean = mean(s.kl, s.valid);
  m.refinement_prob_mean = mean(s.refinement_prob, s.refinement);
  m.ratio_mean = mean(s.ratio, s.initial);
  m.num_valid_tokens = static_cast<int64_t>(s.valid);
  m.num_initial_tokens = static_cast<int64_t>(s.initial);
  m.num_refinement_tokens = static_cast<int64_t>(s.refinement);
  return m;
}

}  // namespace cgrpo
