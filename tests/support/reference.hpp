// tests/support/reference.hpp: the loss of MATH.md written plainly in double, for the tests.
// Independent of the library's code: naive log-softmax, aggregation weights, formulas as printed.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <cgrpo/cgrpo.hpp>

#include "batch.hpp"
#include "tolerance.hpp"

namespace ref {

// The tests' tolerance rule (tests/support/tolerance.hpp): |got - want| <= rel * max(|want|, scale).
using tolerance::close;
using tolerance::close_all;

// The batch and its library view (tests/support/batch.hpp).
using support::Batch;
using support::LibraryBatch;
using support::random_batch;

// The three ratio setups the tests loop over: no clip (the paper), PPO clip at token level, and
// PPO clip on verl's GSPO sequence ratio.
enum class Clip { none, token, sequence };
inline void set_clip(cgrpo::LossConfig& c, Clip k) {
  c.policy.loss = k == Clip::none ? cgrpo::PolicyLoss::ratio : cgrpo::PolicyLoss::ppo_clip;
  c.ratio.level = k == Clip::sequence ? cgrpo::RatioLevel::sequence_detached : cgrpo::RatioLevel::token;
  // verl's GSPO form aggregates its policy term seq-mean-token-mean (the config refuses any other).
  if (k == Clip::sequence) c.aggregation.policy = cgrpo::Aggregation::seq_mean_token_mean;
}
inline Clip clip_of(const cgrpo::LossConfig& c) {
  if (c.policy.loss == cgrpo::PolicyLoss::ratio) return Clip::none;
  return c.ratio.level == cgrpo::RatioLevel::token ? Clip::token : Clip::sequence;
}
inline const char* to_string(Clip k) { return k == Clip::none ? "none" : k == Clip::token ? "token" : "sequence"; }

// Largest |a_i - b_i| and largest |a_i|: the error measures of the tests.
inline double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = a.size() == b.size() ? 0.0 : INFINITY;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}
inline double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double x : a) m = std::max(m, std::fabs(x));
  return m;
}

// The batch with every real value rounded to Real: the float64 reference of what a
// float run actually receives (input rounding is not an error of the library).
template <typename Real>
inline Batch rounded_to(const Batch& b) {
  Batch r = b;
  for (auto* v : {&r.logits, &r.adv, &r.old_logp, &r.ref_logp, &r.w_pg, &r.w_h, &r.w_kl})
    for (double& x : *v) x = static_cast<double>(static_cast<Real>(x));
  return r;
}

// Per-token weights of an aggregation mode, written from MATH.md ("Aggregation: every mode is
// a per-token weight") and the convention's rules without calling the library, so that the tests
// can check cgrpo::aggregation_weights against it. Response i owns rows [offsets[i], offsets[i + 1]);
// a scale field of 0 means "from this batch", as in cgrpo::AggregationScale.
inline std::vector<double> aggregation_weights(cgrpo::Aggregation mode, const cgrpo::AggregationConvention& conv,
                                               const std::vector<int64_t>& offsets, const std::vector<uint8_t>& mask,
                                               const cgrpo::AggregationScale& scale = {}) {
  const size_t B = offsets.size() - 1;
  std::vector<double> w(static_cast<size_t>(offsets.back()), 0.0);
  double valid = 0, longest = 0, nonempty = 0;
  for (size_t i = 0; i < B; ++i) {
    longest = std::max(longest, static_cast<double>(offsets[i + 1] - offsets[i]));
    double n_i = 0;
    for (int64_t t = offsets[i]; t < offsets[i + 1]; ++t) n_i += mask[t];
    valid += n_i;
    nonempty += n_i > 0 ? 1 : 0;
  }
  const double sum_m = scale.token_count > 0 ? scale.token_count : valid;  // sum_all m
  // B: every row (paper, TRL) or the rows with a valid token (verl's B+).
  const double num_responses = conv.count_empty_rows
                                   ? (scale.sequence_count > 0 ? scale.sequence_count : static_cast<double>(B))
                                   : (scale.nonempty_sequence_count > 0 ? scale.nonempty_sequence_count : nonempty);
  const double L = scale.length > 0 ? scale.length : longest;
  for (size_t i = 0; i < B; ++i) {
    double n_i = 0;  // valid tokens of response i
    for (int64_t t = offsets[i]; t < offsets[i + 1]; ++t) n_i += mask[t];
    for (int64_t t = offsets[i]; t < offsets[i + 1]; ++t) {
      if (!mask[t]) continue;  // w_t = m_t * (...): 0 at masked tokens
      switch (mode) {
        case cgrpo::Aggregation::token_mean: w[t] = 1.0 / (sum_m + conv.token_mean_eps); break;
        case cgrpo::Aggregation::seq_mean_token_sum: w[t] = 1.0 / num_responses; break;
        case cgrpo::Aggregation::seq_mean_token_mean: w[t] = 1.0 / (num_responses * (n_i + conv.row_count_eps)); break;
        case cgrpo::Aggregation::seq_mean_token_sum_norm:  // verl 1dda039: a seq-mean of sums over L
          w[t] = conv.sum_norm_per_row ? 1.0 / (num_responses * L) : 1.0 / L;
          break;
        case cgrpo::Aggregation::token_sum: w[t] = 1.0; break;
      }
    }
  }
  return w;
}

// Writes the three weight arrays for the config's aggregation modes and convention (the
// reference's weights).
inline void set_weights(Batch& b, const cgrpo::LossConfig& c, const cgrpo::AggregationScale& scale = {}) {
  const cgrpo::AggregationConvention& conv = c.aggregation.convention;
  b.w_pg = aggregation_weights(c.aggregation.policy, conv, b.offsets, b.mask, scale);
  b.w_h = aggregation_weights(c.aggregation.entropy, conv, b.offsets, b.mask, scale);
  b.w_kl = aggregation_weights(c.aggregation.kl, conv, b.offsets, b.mask, scale);
}

struct TokenValues {
  double logp, entropy;
};

// log softmax and entropy of z / tau, written the long way.
inline TokenValues log_softmax_entropy(const double* z, int64_t V, int32_t y, double tau) {
  std::vector<double> u(V);
  for (int64_t v = 0; v < V; ++v) u[v] = z[v] / tau;
  const double m = *std::max_element(u.begin(), u.end());
  double s = 0;
  for (double x : u) s += std::exp(x - m);
  const double lse = m + std::log(s);
  double h = 0;
  for (double x : u) {
    const double p = std::exp(x - lse);
    h -= p * (x - lse);
  }
  return {u[y] - lse, h};
}

inline double kl_value(cgrpo::KlEstimator k, double logp, double ref) {
  switch (k) {
    case cgrpo::KlEstimator::k1: return logp - ref;
    case cgrpo::KlEstimator::abs: return std::fabs(logp - ref);
    case cgrpo::KlEstimator::k2: return 0.5 * (logp - ref) * (logp - ref);
    case cgrpo::KlEstimator::k3: {
      const double d = ref - logp;
      return std::min(std::max(std::exp(d) - d - 1.0, -10.0), 10.0);
    }
    default: return 0.0;
  }
}

// Redraws old / ref log-probs that put a token (or, with the sequence ratio, a response) within
// `margin` of a kink of the config's loss at the config's temperature: the clip bounds
// log(1 - eps_low) and log(1 + eps_high), the dual clip log(c), abs KL's 0 and k3's clamp
// (e^-d + d - 1 = 10). random_batch avoids the presets' kinks at tau = 1 only; a kink between
// two implementations' log p (float vs double: ~1e-5 at U ~ 100), or inside a finite difference
// step, flips a token's gradient, which would make a comparison fail for no bug.
inline void avoid_kinks(Batch& b, const cgrpo::LossConfig& c, std::mt19937_64& rng, double margin = 1e-4) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> ratio_kinks;
  if (c.policy.loss == cgrpo::PolicyLoss::ppo_clip) {
    ratio_kinks.push_back(std::log1p(-c.ratio.clip_eps_low));
    ratio_kinks.push_back(std::log1p(c.ratio.clip_eps_high));
    if (c.ratio.dual_clip) ratio_kinks.push_back(std::log(c.ratio.dual_clip_c));
  }
  double k3_clamp = -2.5;  // the root of e^-d + d - 11 below 0, by Newton's method
  for (int i = 0; i < 20; ++i) k3_clamp -= (std::exp(-k3_clamp) + k3_clamp - 11) / (1 - std::exp(-k3_clamp));
  auto near = [margin](double x, const std::vector<double>& kinks) {
    for (double k : kinks)
      if (std::fabs(x - k) < margin) return true;
    return false;
  };
  std::vector<double> lp(b.T);
  for (int64_t t = 0; t < b.T; ++t)
    lp[t] = log_softmax_entropy(&b.logits[t * b.stride], b.V, b.targets[t], c.temperature).logp;
  for (int64_t t = 0; t < b.T; ++t) {
    while (near(lp[t] - b.ref_logp[t], {0.0, k3_clamp})) b.ref_logp[t] = lp[t] + 0.5 * normal(rng);
    if (clip_of(c) == Clip::token && b.kinds[t] == cgrpo::kInitial)
      while (near(lp[t] - b.old_logp[t], ratio_kinks)) b.old_logp[t] = lp[t] + 0.3 * normal(rng);
  }
  if (clip_of(c) != Clip::sequence) return;
  for (int64_t i = 0; i < b.B; ++i) {
    for (;;) {
      double sum = 0, n = 0;
      for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t)
        if (b.mask[t]) sum += lp[t] - b.old_logp[t], n += 1;
      if (n == 0 || !near(sum / n, ratio_kinks)) break;
      for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) b.old_logp[t] = lp[t] + 0.3 * normal(rng);
    }
  }
}

// The size of the numbers each result is made of: the `scale` of ref::close for it.
//
// Two implementations of the log-softmax of a row agree on log p_t and H_t to delta, a few
// roundings of U = max |z / tau| + log V (the size of the numbers lse is made of; in double also
// V eps for the V summed exponentials): delta ~ c eps U. Every per-token value x_t of MATH.md is
// a function of log p_t, and |dx_t / dlogp| is bounded by its magnitude m_t below (the clipped
// ratio: |A| r = |l|, or 0 when clipped; f(p): |A| f (1 - f) <= |A|; k1, abs: 1; k2: |d|;
// k3: |1 - e^-d| <= k3 + |d| + 1 with d = log p - ref), so x_t is off by <= m_t (delta + eps).
// An aggregated value sum_t w_t x_t is then off by <= (delta + T eps) sum_t |w_t| m_t: that sum
// is its scale (a mean over n tokens: w_t = 1 / n). A fraction of counts (clipfrac) is exact
// unless a token sits within delta of a kink, which avoid_kinks prevents: scale 1. So a test's
// rel is c eps U (with c stated there), and these are the scales.
struct Magnitudes {
  double loss = 0, pg = 0, pg_initial = 0, pg_refinement = 0, entropy_agg = 0, kl_agg = 0;
  double ppo_kl = 0, entropy_mean = 0, kl_mean = 0, prob_mean = 0, ratio_mean = 0;
  double u = 0;      // U = max |z / tau| + log V: log p_t and H_t carry ~eps U (+ V eps in double)
  double terms = 0;  // sum |terms of J|: J's own rounding is ~T eps of it (finite differences)
};

struct Result {
  double loss = 0, pg = 0, pg_initial = 0, pg_refinement = 0, entropy_agg = 0, kl_agg = 0;
  double clipfrac = 0, clipfrac_lower = 0, ppo_kl = 0, entropy_mean = 0, kl_mean = 0, prob_mean = 0, ratio_mean = 0;
  int64_t valid = 0, initial = 0, refinement = 0;
  std::vector<double> logp, entropy;
  Magnitudes mag;
};

// J of MATH.md given every token's log p and H (the part after the log-softmax).
inline Result loss_from_logp(const Batch& b, std::vector<double> logp, std::vector<double> entropy,
                             const cgrpo::LossConfig& c) {
  Result r;
  r.logp = std::move(logp);
  r.entropy = std::move(entropy);
  std::vector<double> seq_ratio(b.B, 0.0);
  for (int64_t i = 0; i < b.B; ++i) {
    double s = 0, n = 0;
    for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t)
      if (b.mask[t]) s += r.logp[t] - b.old_logp[t], n += 1;
    seq_ratio[i] = n > 0 ? s / n : 0.0;
  }
  const bool sequence = c.ratio.level != cgrpo::RatioLevel::token;
  const double beta = c.kl.estimator == cgrpo::KlEstimator::none ? 0.0 : c.kl.coef;
  double n_clip = 0, n_lower = 0, kl_sum = 0, ent_sum = 0, prob_sum = 0, ratio_sum = 0, ppo_kl = 0;
  for (int64_t i = 0; i < b.B; ++i) {
    for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) {
      const double A = b.adv[t];
      double l;
      if (b.kinds[t] == cgrpo::kRefinement) {
        const double p = std::exp(r.logp[t]);
        l = -A * p / (p + c.policy.refinement_gamma);
        if (b.mask[t]) prob_sum += p, r.refinement++, r.mag.prob_mean += p;
      } else {
        const double lr = sequence ? seq_ratio[i] : r.logp[t] - b.old_logp[t];
        const double ratio = std::exp(std::min(std::max(lr, c.ratio.log_ratio_min), c.ratio.log_ratio_max));
        const double pg1 = -A * ratio;
        l = pg1;
        bool clipped = false, lower = false;
        if (c.policy.loss == cgrpo::PolicyLoss::ppo_clip) {
          const double pg2 = -A * std::min(std::max(ratio, 1 - c.ratio.clip_eps_low), 1 + c.ratio.clip_eps_high);
          clipped = pg2 > pg1;
          l = std::max(pg1, pg2);
          if (c.ratio.dual_clip && A < 0) {
            lower = l > -A * c.ratio.dual_clip_c;
            l = std::min(l, -A * c.ratio.dual_clip_c);
          }
        }
        if (b.mask[t]) {
          r.initial++;
          n_clip += clipped;
          n_lower += lower;
          ratio_sum += ratio;
          const double x = r.logp[t] - b.old_logp[t];
          ppo_kl += sequence ? -x : -std::min(std::max(x, c.ratio.log_ratio_min), c.ratio.log_ratio_max);
          r.mag.ratio_mean += ratio;
          r.mag.ppo_kl += std::fabs(x) + 1;
        }
      }
      const double kl = kl_value(c.kl.estimator, r.logp[t], b.ref_logp[t]);
      const double d = r.logp[t] - b.ref_logp[t];
      (b.kinds[t] == cgrpo::kRefinement ? r.pg_refinement : r.pg_initial) += b.w_pg[t] * l;
      r.entropy_agg += b.w_h[t] * r.entropy[t];
      r.kl_agg += b.w_kl[t] * kl;
      // Magnitudes m_t (see Magnitudes), weighted.
      (b.kinds[t] == cgrpo::kRefinement ? r.mag.pg_refinement : r.mag.pg_initial) +=
          std::fabs(b.w_pg[t]) * (std::fabs(l) + std::fabs(A));
      r.mag.entropy_agg += std::fabs(b.w_h[t]) * (r.entropy[t] + 1);
      r.mag.kl_agg += std::fabs(b.w_kl[t]) * (std::fabs(kl) + std::fabs(d) + 1);
      r.mag.terms += std::fabs(b.w_pg[t] * l) + std::fabs(c.entropy.coef * b.w_h[t] * r.entropy[t]) +
                     std::fabs(beta * b.w_kl[t] * kl);
      if (b.mask[t]) {
        r.valid++;
        ent_sum += r.entropy[t];
        kl_sum += kl;
        r.mag.entropy_mean += r.entropy[t] + 1;
        r.mag.kl_mean += std::fabs(kl) + std::fabs(d) + 1;
      }
    }
  }
  r.pg = r.pg_initial + r.pg_refinement;
  r.loss = r.pg - c.entropy.coef * r.entropy_agg + beta * r.kl_agg;
  if (c.kl.estimator == cgrpo::KlEstimator::none) r.kl_agg = 0;
  auto mean = [&c](double s, double n) { return n > 0 ? s / (n + c.metrics.mean_eps) : 0.0; };
  r.clipfrac = mean(n_clip, r.initial);
  r.clipfrac_lower = mean(n_lower, r.initial);
  r.ppo_kl = mean(ppo_kl, r.initial);
  r.ratio_mean = mean(ratio_sum, r.initial);
  r.prob_mean = mean(prob_sum, r.refinement);
  r.entropy_mean = mean(ent_sum, r.valid);
  r.kl_mean = mean(kl_sum, r.valid);
  r.mag.pg = r.mag.pg_initial + r.mag.pg_refinement;
  r.mag.loss = r.mag.pg + std::fabs(c.entropy.coef) * r.mag.entropy_agg + beta * r.mag.kl_agg;
  r.mag.ppo_kl = mean(r.mag.ppo_kl, r.initial);
  r.mag.ratio_mean = mean(r.mag.ratio_mean, r.initial);
  r.mag.prob_mean = mean(r.mag.prob_mean, r.refinement);
  r.mag.entropy_mean = mean(r.mag.entropy_mean, r.valid);
  r.mag.kl_mean = mean(r.mag.kl_mean, r.valid);
  return r;
}

// J of MATH.md for the batch (logits given separately so finite differences can perturb them).
inline Result loss(const Batch& b, const std::vector<double>& logits, const cgrpo::LossConfig& c) {
  std::vector<double> logp(b.T), entropy(b.T);
  double u = 0;
  for (int64_t t = 0; t < b.T; ++t) {
    const TokenValues tv = log_softmax_entropy(&logits[t * b.stride], b.V, b.targets[t], c.temperature);
    logp[t] = tv.logp;
    entropy[t] = tv.entropy;
    for (int64_t v = 0; v < b.V; ++v) u = std::max(u, std::fabs(logits[t * b.stride + v] / c.temperature));
  }
  Result r = loss_from_logp(b, std::move(logp), std::move(entropy), c);
  r.mag.u = u + std::log(static_cast<double>(b.V));
  return r;
}

// The size of each row of the gradient, for rows whose exact entries are ~0 (near one-hot rows
// at small tau: a_t (1 - p_y) ~ 0 while a_t is not; or a_t ~ 0 itself, e.g. k3 at log p ~ ref):
// R_t = (2 |a_t| + |a'_t| + |b_t| (3 + H_t)) / tau, with a_t = dJ / dlogp_t and a'_t its change
// with log p (central differences of loss_from_logp: of log p_t alone, and of the whole
// response's for the sequence ratio) and b_t = -c_H w^H_t. Every entry dJ / dz_tv =
// (a_t (onehot - p) - b_t p (log p + H_t)) / tau computed from p, log p and H that carry a
// relative / absolute error e carries <= 2 e R_t: p |log p| <= 1/e, and a_t itself moves by
// |a'_t| e when log p moves by e.
inline std::vector<double> row_gradient_scales(const Batch& b, const Result& r, const cgrpo::LossConfig& c) {
  std::vector<double> scales(b.T);
  auto J = [&](const std::vector<double>& lp) { return loss_from_logp(b, lp, r.entropy, c).loss; };
  const double j0 = J(r.logp);
  for (int64_t i = 0; i < b.B; ++i)
    for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) {
      std::vector<double> lp = r.logp;
      const double h = 1e-6 * std::max(1.0, std::fabs(lp[t])), h2 = 100 * h;  // h2: a second difference
      auto at = [&](double x) {
        lp[t] = r.logp[t] + x;
        return J(lp);
      };
      const double a = (at(h) - at(-h)) / (2 * h);
      double a2 = std::fabs(at(h2) - 2 * j0 + at(-h2)) / (h2 * h2);
      if (clip_of(c) == Clip::sequence) {  // log p_t also moves the response's mean ratio
        auto all = [&](double x) {
          std::vector<double> q = r.logp;
          for (int64_t u = b.offsets[i]; u < b.offsets[i + 1]; ++u) q[u] += x;
          return J(q);
        };
        a2 = std::max(a2, std::fabs(all(h2) - 2 * j0 + all(-h2)) / (h2 * h2));
      }
      const double bh = c.entropy.coef * b.w_h[t];
      scales[t] = (2 * std::fabs(a) + a2 + std::fabs(bh) * (3 + r.entropy[t])) / c.temperature;
    }
  return scales;
}

// Row by row: every row t of got within rel * max(max_v |want_tv|, row_scales[t]) of want, for
// gradients [T, stride] (columns >= V ignored). Stricter than close_all on the whole array: a
// row with small entries is held to its own size, not to the batch's largest. The worst row's
// Closeness (index = the row) comes back.
template <typename Got>
tolerance::Closeness close_rows(const Got& got, const std::vector<double>& want, const Batch& b, double rel,
                                const std::vector<double>& row_scales) {
  tolerance::Closeness worst;
  worst.ok = true;
  for (int64_t t = 0; t < b.T; ++t) {
    const std::vector<double> g(got.begin() + t * b.stride, got.begin() + t * b.stride + b.V);
    const std::vector<double> w(want.begin() + t * b.stride, want.begin() + t * b.stride + b.V);
    tolerance::Closeness c = close_all(g, w, rel, row_scales[t]);
    c.index = t;
    if (worst.index < 0 || (worst.ok && !c.ok) || (worst.ok == c.ok && c.err / c.bound > worst.err / worst.bound))
      worst = c;
  }
  return worst;
}

// The largest row scale: the floor of a whole-gradient comparison (ref::close_all).
inline double gradient_scale(const Batch& b, const Result& r, const cgrpo::LossConfig& c) {
  double m = 0;
  for (double s : row_gradient_scales(b, r, c)) m = std::max(m, s);
  return m;
}

// rel for the float path against float64 on the same float inputs. It computes u = z / tau in
// float: each u and lse carry ~eps_f U (U = max |z / tau| + log V), so every p, log p and ratio
// carries ~2 eps_f U relatively, and so does every value made of them, measured against its
// scale (Magnitudes, row_gradient_scales). 8 eps_f U leaves a factor 4. At tau = 1 and logits
// N(0, 4) that is ~1e-5; at tau = 0.05 it is ~2e-4, all that float can hold of u ~ 200.
inline double float_rel(const Result& want) { return 8 * FLT_EPSILON * want.mag.u; }

// rel for double against double (the reference, or another double path): log p carries
// (U + V) eps (V summed exponentials), an aggregate T eps more (T tokens in another order).
inline double double_rel(const Result& want, const Batch& b) {
  return 16 * DBL_EPSILON * (want.mag.u + static_cast<double>(b.V + b.T));
}

// Central finite differences of J with respect to every logit (padding entries of a row stay 0).
inline std::vector<double> finite_difference_gradient(const Batch& b, const cgrpo::LossConfig& c, double h = 1e-6) {
  std::vector<double> g(b.logits.size(), 0.0), z = b.logits;
  for (int64_t t = 0; t < b.T; ++t)
    for (int64_t v = 0; v < b.V; ++v) {
      const size_t k = t * b.stride + v;
      const double z0 = z[k];
      z[k] = z0 + h;
      const double jp = loss(b, z, c).loss;
      z[k] = z0 - h;
      const double jm = loss(b, z, c).loss;
      z[k] = z0;
      g[k] = (jp - jm) / (2 * h);
    }
  return g;
}

}  // namespace ref
