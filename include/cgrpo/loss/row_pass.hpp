// cgrpo/loss/row_pass.hpp: the sums the row and batch passes form over per-token values, and how they
// merge and finish: written once (CGRPO_HD) for the CPU loop and the CUDA row / select kernels.
#pragma once

#include <stdint.h>

#include "cgrpo/base/macros.hpp"
#include "cgrpo/loss/config.hpp"
#include "cgrpo/loss/pass_plan.hpp"
#include "cgrpo/loss/policy_terms.hpp"
#include "cgrpo/loss/token_loss.hpp"
#include "cgrpo/math/token_math.hpp"

namespace cgrpo {

// ---------------------------------------------------------------------------
// The row pass: one row's sums over its valid initial tokens of the policy term (the sequence log
// ratio, a row term's q_i and Abar_i), the IS weights' geometric mean (a row term with verl's IS
// weights), and the tokens each term's denominator counts (the loss's own weights). A row may be
// split across threads and merged in any order: every field is a sum.

struct RowPassSums {
  double is_log_w, is_n;          // sum of log(w + 1e-10) over the row's covered policy tokens, and their count
  double n, sum_x, sum_a, sum_y;  // valid initial policy tokens: count, log ratios x, advantages, a row term's y
  double count[3];                // tokens each term's denominator counts (policy, entropy, KL)
};

// What the row pass reads of the config (host-built, passed by value to kernels).
struct RowPassParams {
  int term;                  // PolicyLoss
  bool row_term;             // the term's loss is a row value (traits.row_log_ratio): sum_y, its context
  bool sequence_ratio;       // r is the row's (sequence levels): its log ratio is sum_x / max(n, 1)
  bool ratio_through_row;    // ... differentiated through the mean (TRL): coupling 1 / max(n, 1)
  RatioParams<double> ratio;
  PolicyParams policy;
};

inline RowPassParams row_pass_params(const LossConfig& c) {
  RowPassParams p{};
  p.term = static_cast<int>(c.policy.loss);
  p.row_term = c.term().row_log_ratio;
  p.sequence_ratio = c.sequence_ratio();
  p.ratio_through_row = c.level().differentiated;
  p.ratio = ratio_params<double>(c.ratio);
  p.policy = c.policy;
  return p;
}

CGRPO_HD RowPassSums row_pass_sums_zero() {
  RowPassSums s{};
  return s;
}

// A valid initial token of the policy term with log ratio x = logp - old and advantage A.
CGRPO_HD void row_pass_add_token(RowPassSums& s, double x, double A, const RowPassParams& p) {
  s.n += 1;
  s.sum_x += x;
  s.sum_a += A;
  if (p.row_term) s.sum_y += policy_row_value(p.term, x, A, p.ratio, p.policy);
}

// A covered policy token's IS weight (rollout_row_mean).
CGRPO_HD void row_pass_add_is_weight(RowPassSums& s, double w) {
  s.is_log_w += ::log(w + 1e-10);
  s.is_n += 1;
}

CGRPO_HD RowPassSums row_pass_merge(const RowPassSums& x, const RowPassSums& y) {
  RowPassSums s;
  s.is_log_w = x.is_log_w + y.is_log_w;
  s.is_n = x.is_n + y.is_n;
  s.n = x.n + y.n;
  s.sum_x = x.sum_x + y.sum_x;
  s.sum_a = x.sum_a + y.sum_a;
  s.sum_y = x.sum_y + y.sum_y;
  for (int k = 0; k < 3; ++k) s.count[k] = x.count[k] + y.count[k];
  return s;
}

// The IS weight every covered token of the row takes (a row term): exp(sum log(w + 1e-10) / (n + 1e-8)).
CGRPO_HD double row_is_weight_mean(const RowPassSums& s) { return ::exp(s.is_log_w / (s.is_n + 1e-8)); }

// The row's context: a row term's (q_i, Abar_i, coupling), or the sequence log ratio; `weight` is
// the row weight of a row-weighted term (vespo's phi_i, 0 otherwise).
CGRPO_HD RowContext<double> row_pass_context(const RowPassSums& s, const RowPassParams& p, double weight) {
  RowContext<double> c{0, 0, 0, 0};
  if (p.row_term) {
    const RowTermContext t = policy_row_context(p.term, s.n, s.sum_a, s.sum_y, p.policy);
    c.log_ratio = t.log_ratio;
    c.advantage = t.advantage;
    c.coupling = t.coupling;
  } else if (p.sequence_ratio) {
    const double n = s.n > 1.0 ? s.n : 1.0;
    c.log_ratio = s.sum_x / n;
    c.coupling = p.ratio_through_row ? 1.0 / n : 0.0;
  }
  c.weight = weight;
  return c;
}

// ---------------------------------------------------------------------------
// The batch pass of the terms that select tokens by covariance (kl_cov, clip_cov): over the policy
// term's valid initial tokens, cov_t = (A_t - mean A)(logp_t - mean logp).

struct CovarianceSums {
  double n, sum_a, sum_logp;
};

CGRPO_HD void covariance_add(CovarianceSums& s, double A, double logp) {
  s.n += 1;
  s.sum_a += A;
  s.sum_logp += logp;
}

CGRPO_HD CovarianceSums covariance_merge(const CovarianceSums& x, const CovarianceSums& y) {
  return CovarianceSums{x.n + y.n, x.sum_a + y.sum_a, x.sum_logp + y.sum_logp};
}

struct CovarianceMeans {
  double a, logp;
};

// top_covariance (kl_cov): plain means (torch .mean()); covariance_window (clip_cov): verl's
// masked_mean (count + 1e-8).
CGRPO_HD CovarianceMeans covariance_means(const CovarianceSums& s, int selection) {
  const double n = selection == static_cast<int>(BatchSelection::top_covariance) ? s.n : s.n + 1e-8;
  return CovarianceMeans{s.sum_a / n, s.sum_logp / n};
}

CGRPO_HD double token_covariance(double A, double logp, const CovarianceMeans& m) { return (A - m.a) * (logp - m.logp); }

// k = max(1, floor(n ratio)) tokens.
CGRPO_HD long long covariance_select_count(double n, double ratio) {
  const long long k = static_cast<long long>(n * ratio);
  return k < 1 ? 1 : k;
}

// What the covariance selection reads of the config, in double on both paths.
struct SelectionParams {
  int selection;             // BatchSelection
  double ratio;              // the fraction selected
  double lower, upper;       // covariance_window: the candidates' window
  uint64_t seed;             // covariance_window: the counter-based choice
  RatioParams<double> clip;  // covariance_window: a candidate is not PPO-clipped
};

inline SelectionParams selection_params(const LossConfig& c) {
  const TermSelection t = policy_selection(c.policy.loss, c.policy);
  SelectionParams s{};
  s.selection = static_cast<int>(c.term().selection);
  s.ratio = t.ratio;
  s.lower = t.lower;
  s.upper = t.upper;
  s.seed = t.seed;
  s.clip = ratio_params<double>(c.ratio);
  return s;
}

// covariance_window's candidates: not clipped by the PPO clip, cov in (lower, upper).
CGRPO_HD bool covariance_candidate(double x, double A, double cov, const SelectionParams& p) {
  const double r = clamped_ratio(x, p.clip.log_ratio_min, p.clip.log_ratio_max).r;
  const bool clipped = -A * math::clamp(r, p.clip.clip_low, p.clip.clip_high) > -A * r;
  return !clipped && cov > p.lower && cov < p.upper;
}

}  // namespace cgrpo
