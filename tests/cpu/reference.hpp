// tests/cpu/reference.hpp: the loss of MATH.md written plainly in double, for the tests.
// Independent of the library's per-token code: naive log-softmax, formulas as printed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <cgrpo/cgrpo.hpp>

namespace ref {

// A self-contained random batch in double (packed layout, row stride >= V).
struct Batch {
  int64_t T = 0, V = 0, stride = 0;
  std::vector<double> logits;          // [T, stride]
  std::vector<int32_t> targets;
  std::vector<uint8_t> mask, kinds;
  std::vector<double> adv, old_logp, ref_logp;
  std::vector<double> w_pg, w_h, w_kl;
  std::vector<int64_t> offsets;        // packed layout
  int64_t B = 0;

  cgrpo::SequenceLayout layout() const { return cgrpo::SequenceLayout::packed(B, offsets.data()); }
};

// Sequences of random lengths in [1, max_len]; a sequence is all initial or all refinement;
// about one token in six is masked; logits N(0, scale^2).
inline Batch random_batch(std::mt19937_64& rng, int64_t B, int64_t max_len, int64_t V, int64_t extra_stride,
                          double scale = 2.0) {
  Batch b;
  b.B = B;
  b.V = V;
  b.stride = V + extra_stride;
  std::uniform_int_distribution<int64_t> len(1, max_len);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  b.offsets.push_back(0);
  for (int64_t i = 0; i < B; ++i) b.offsets.push_back(b.offsets.back() + len(rng));
  b.T = b.offsets.back();
  b.logits.resize(b.T * b.stride);
  for (auto& z : b.logits) z = scale * normal(rng);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));
  for (int64_t i = 0; i < B; ++i) {
    // Random kinds, but the first two sequences are one of each, so both branches are exercised.
    const uint8_t kind = i == 0   ? cgrpo::kInitial
                         : i == 1 ? cgrpo::kRefinement
                                  : (uni(rng) < 0.3 ? cgrpo::kRefinement : cgrpo::kInitial);
    const double a = normal(rng);
    for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) {
      b.targets.push_back(tok(rng));
      b.mask.push_back(t == b.offsets[i] || uni(rng) < 0.85 ? 1 : 0);  // every sequence has a valid token
      b.kinds.push_back(kind);
      b.adv.push_back(a);
    }
  }
  // old / ref log-probs near the current ones, so ratios straddle the clip range.
  for (int64_t t = 0; t < b.T; ++t) {
    const double* z = &b.logits[t * b.stride];
    double m = *std::max_element(z, z + V), s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(z[v] - m);
    const double lp = z[b.targets[t]] - m - std::log(s);
    // ... but 1e-4 away from the kinks of the presets' losses (abs KL at 0, clip bounds 0.8, 1.2
    // and 1.28, dual clip 3): a kink between float and double log p, or inside a finite
    // difference step, would flip a token's gradient.
    const double kinks[] = {0.0, std::log(0.8), std::log(1.2), std::log(1.28), std::log(3.0)};
    auto near_kink = [&](double d) {
      for (double k : kinks)
        if (std::fabs(d - k) < 1e-4) return true;
      return false;
    };
    double old_lp, ref_lp;
    do old_lp = lp + 0.3 * normal(rng);
    while (near_kink(lp - old_lp));
    do ref_lp = lp + 0.5 * normal(rng);
    while (near_kink(lp - ref_lp));
    b.old_logp.push_back(old_lp);
    b.ref_logp.push_back(ref_lp);
  }
  b.w_pg.assign(b.T, 0.0);
  b.w_h.assign(b.T, 0.0);
  b.w_kl.assign(b.T, 0.0);
  return b;
}

// The three ratio setups the tests loop over: no clip (the paper), PPO clip at token level, and
// PPO clip on verl's GSPO sequence ratio.
enum class Clip { none, token, sequence };
inline void set_clip(cgrpo::LossConfig& c, Clip k) {
  c.policy_loss = k == Clip::none ? cgrpo::PolicyLoss::ratio : cgrpo::PolicyLoss::ppo_clip;
  c.ratio_level = k == Clip::sequence ? cgrpo::RatioLevel::sequence_detached : cgrpo::RatioLevel::token;
}
inline Clip clip_of(const cgrpo::LossConfig& c) {
  if (c.policy_loss == cgrpo::PolicyLoss::ratio) return Clip::none;
  return c.ratio_level == cgrpo::RatioLevel::token ? Clip::token : Clip::sequence;
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

// Writes the three weight arrays for the config's aggregation modes.
inline void set_weights(Batch& b, const cgrpo::LossConfig& c, const cgrpo::AggregationScale& scale = {}) {
  const auto L = b.layout();
  REQUIRE(cgrpo::aggregation_weights(c.pg_aggregation, L, b.mask.data(), scale, b.w_pg.data()).ok());
  REQUIRE(cgrpo::aggregation_weights(c.entropy_aggregation, L, b.mask.data(), scale, b.w_h.data()).ok());
  REQUIRE(cgrpo::aggregation_weights(c.kl_aggregation, L, b.mask.data(), scale, b.w_kl.data()).ok());
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

struct Result {
  double loss = 0, pg = 0, pg_initial = 0, pg_refinement = 0, entropy_agg = 0, kl_agg = 0;
  double clipfrac = 0, clipfrac_lower = 0, ppo_kl = 0, entropy_mean = 0, kl_mean = 0, prob_mean = 0, ratio_mean = 0;
  int64_t valid = 0, initial = 0, refinement = 0;
  std::vector<double> logp, entropy;
};

// J of MATH.md for the batch (logits given separately so finite differences can perturb them).
inline Result loss(const Batch& b, const std::vector<double>& logits, const cgrpo::LossConfig& c) {
  Result r;
  r.logp.resize(b.T);
  r.entropy.resize(b.T);
  for (int64_t t = 0; t < b.T; ++t) {
    const TokenValues tv = log_softmax_entropy(&logits[t * b.stride], b.V, b.targets[t], c.temperature);
    r.logp[t] = tv.logp;
    r.entropy[t] = tv.entropy;
  }
  std::vector<double> seq_ratio(b.B, 0.0);
  for (int64_t i = 0; i < b.B; ++i) {
    double s = 0, n = 0;
    for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t)
      if (b.mask[t]) s += r.logp[t] - b.old_logp[t], n += 1;
    seq_ratio[i] = n > 0 ? s / n : 0.0;
  }
  const bool sequence = c.ratio_level != cgrpo::RatioLevel::token;
  double n_clip = 0, n_lower = 0, kl_sum = 0, ent_sum = 0, prob_sum = 0, ratio_sum = 0, ppo_kl = 0;
  for (int64_t i = 0; i < b.B; ++i) {
    for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) {
      const double A = b.adv[t];
      double l;
      if (b.kinds[t] == cgrpo::kRefinement) {
        const double p = std::exp(r.logp[t]);
        l = -A * p / (p + c.refinement_gamma);
        if (b.mask[t]) prob_sum += p, r.refinement++;
      } else {
        const double lr = sequence ? seq_ratio[i] : r.logp[t] - b.old_logp[t];
        const double ratio = std::exp(std::min(std::max(lr, c.log_ratio_min), c.log_ratio_max));
        const double pg1 = -A * ratio;
        l = pg1;
        bool clipped = false, lower = false;
        if (c.policy_loss == cgrpo::PolicyLoss::ppo_clip) {
          const double pg2 = -A * std::min(std::max(ratio, 1 - c.clip_eps_low), 1 + c.clip_eps_high);
          clipped = pg2 > pg1;
          l = std::max(pg1, pg2);
          if (c.dual_clip && A < 0) {
            lower = l > -A * c.dual_clip_c;
            l = std::min(l, -A * c.dual_clip_c);
          }
        }
        if (b.mask[t]) {
          r.initial++;
          n_clip += clipped;
          n_lower += lower;
          ratio_sum += ratio;
          const double x = r.logp[t] - b.old_logp[t];
          ppo_kl += sequence ? -x : -std::min(std::max(x, c.log_ratio_min), c.log_ratio_max);
        }
      }
      const double kl = kl_value(c.kl, r.logp[t], b.ref_logp[t]);
      (b.kinds[t] == cgrpo::kRefinement ? r.pg_refinement : r.pg_initial) += b.w_pg[t] * l;
      r.entropy_agg += b.w_h[t] * r.entropy[t];
      r.kl_agg += b.w_kl[t] * kl;
      if (b.mask[t]) {
        r.valid++;
        ent_sum += r.entropy[t];
        kl_sum += kl;
      }
    }
  }
  r.pg = r.pg_initial + r.pg_refinement;
  const double beta = c.kl == cgrpo::KlEstimator::none ? 0.0 : c.kl_coef;
  r.loss = r.pg - c.entropy_coef * r.entropy_agg + beta * r.kl_agg;
  if (c.kl == cgrpo::KlEstimator::none) r.kl_agg = 0;
  auto mean = [&c](double s, double n) { return n > 0 ? s / (n + c.metric_mean_eps) : 0.0; };
  r.clipfrac = mean(n_clip, r.initial);
  r.clipfrac_lower = mean(n_lower, r.initial);
  r.ppo_kl = mean(ppo_kl, r.initial);
  r.ratio_mean = mean(ratio_sum, r.initial);
  r.prob_mean = mean(prob_sum, r.refinement);
  r.entropy_mean = mean(ent_sum, r.valid);
  r.kl_mean = mean(kl_sum, r.valid);
  return r;
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

// The library's view of a reference batch, in precision Real.
template <typename Real>
struct LibraryBatch {
  std::vector<Real> logits, adv, old_logp, ref_logp, w_pg, w_h, w_kl;
  cgrpo::PolicyLossBatch<Real> view;

  explicit LibraryBatch(const Batch& b) {
    auto cast = [](const std::vector<double>& x) { return std::vector<Real>(x.begin(), x.end()); };
    logits = cast(b.logits);
    adv = cast(b.adv);
    old_logp = cast(b.old_logp);
    ref_logp = cast(b.ref_logp);
    w_pg = cast(b.w_pg);
    w_h = cast(b.w_h);
    w_kl = cast(b.w_kl);
    view.logits = logits.data();
    view.num_tokens = b.T;
    view.vocab_size = b.V;
    view.row_stride = b.stride;
    view.target_ids = b.targets.data();
    view.mask = b.mask.data();
    view.kinds = b.kinds.data();
    view.advantages = adv.data();
    view.old_logp = old_logp.data();
    view.ref_logp = ref_logp.data();
    view.pg_weights = w_pg.data();
    view.entropy_weights = w_h.data();
    view.kl_weights = w_kl.data();
    view.layout = b.layout();
  }
  LibraryBatch(const LibraryBatch&) = delete;
};

}  // namespace ref
