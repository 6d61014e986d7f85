// tests/support/reference_trl.hpp: TRL's GRPOTrainer._compute_loss written plainly in double over a
// padded [B, L] batch, in TRL's own parameters (loss_type, delta, beta, ...), for the tests.
// Independent of the library: no LossConfig, no presets, its own log-softmax, quantile and sums
// (to_support_batch, at the end, only copies a batch into the tests' batch builder).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "batch.hpp"

namespace trl_ref {

// GRPOConfig's fields that reach the loss; NaN stands for Python's None.
struct Params {
  std::string loss_type = "dapo";  // grpo bnpo dr_grpo dapo cispo sapo luspo vespo
  bool sequence = false;           // importance_sampling_level == "sequence"
  double epsilon = 0.2, epsilon_high = 0.2;
  double delta = NAN;
  double beta = 0.0;
  bool bias_correction_kl = false;
  double top_entropy_quantile = 1.0;
  std::string vllm_mode = "none";  // token_truncate token_mask sequence_truncate sequence_mask
  double vllm_min = NAN, vllm_max = NAN;
  double opsm_threshold = NAN;
  double entropy_coef = 0.0;
  double max_completion_length = 0;
  double sapo_pos = 1.0, sapo_neg = 1.05;
  double k_pos = 2, lambda_pos = 3, k_neg = 3, lambda_neg = 2;
  double temperature = 1.0;
};

// A padded batch: row i owns positions [i L, (i+1) L); the advantage is per row.
struct Batch {
  int64_t B = 0, L = 0, V = 0;
  std::vector<double> logits;            // [B L V]
  std::vector<int32_t> tokens;           // [B L]
  std::vector<uint8_t> mask;             // [B L]
  std::vector<double> old_logp, ref_logp, rollout_logp;  // [B L]
  std::vector<double> adv;               // [B]
  bool has_rollout = false;
};

struct Result {
  double loss = 0, policy_loss = 0;
  double entropy = 0, kl = 0;
  double clip_low_mean = 0, clip_high_mean = 0, clip_region_mean = 0, clip_low_min = 0, clip_high_max = 0;
  double cispo_clip_ratio = 0, vespo_phi_mean = 0;
  double is_min = 0, is_mean = 0, is_max = 0, diff_mean = 0, diff_max = 0;
  std::vector<int> branches;  // every discrete choice the loss made (finite differences must not move one)
};

inline void log_softmax_entropy(const double* z, int64_t V, int32_t y, double tau, double* logp, double* h) {
  double m = -INFINITY;
  for (int64_t v = 0; v < V; ++v) m = std::max(m, z[v] / tau);
  double s = 0;
  for (int64_t v = 0; v < V; ++v) s += std::exp(z[v] / tau - m);
  const double lse = m + std::log(s);
  *logp = z[y] / tau - lse;
  *h = 0;
  for (int64_t v = 0; v < V; ++v) {
    const double lp = z[v] / tau - lse;
    *h -= std::exp(lp) * lp;
  }
}

// J at logits z; every value TRL takes without gradient (sg(.), masks, phi, OPSM) is taken at
// `frozen` instead, so that finite differences of J(z) give autograd's gradient at z = frozen.
inline Result loss(const Batch& b, const std::vector<double>& z, const std::vector<double>& frozen, const Params& p) {
  const int64_t B = b.B, L = b.L, T = B * L;
  Result res;
  std::vector<double> logp(T), H(T), logp0(T), H0(T);
  for (int64_t t = 0; t < T; ++t) {
    log_softmax_entropy(&z[t * b.V], b.V, b.tokens[t], p.temperature, &logp[t], &H[t]);
    log_softmax_entropy(&frozen[t * b.V], b.V, b.tokens[t], p.temperature, &logp0[t], &H0[t]);
  }
  auto m = [&](int64_t t) { return static_cast<double>(b.mask[t]); };
  std::vector<double> n(B, 0.0);
  double N = 0;
  for (int64_t t = 0; t < T; ++t) n[t / L] += m(t), N += m(t);
  auto clamp1 = [](double x) { return std::max(x, 1.0); };

  // Entropy mask: quantile of the valid tokens' H (torch.quantile, linear), H >= Q.
  std::vector<double> e(T, 1.0);
  const bool entropy_mask = p.top_entropy_quantile < 1.0;
  if (entropy_mask) {
    std::vector<double> hs;
    for (int64_t t = 0; t < T; ++t)
      if (b.mask[t]) hs.push_back(H0[t]);
    std::sort(hs.begin(), hs.end());
    const double q = 1.0 - p.top_entropy_quantile;
    const double pos = q * (hs.size() - 1);
    const size_t lo = static_cast<size_t>(pos), hi = std::min(lo + 1, hs.size() - 1);
    const double Q = hs[lo] + (pos - lo) * (hs[hi] - hs[lo]);
    for (int64_t t = 0; t < T; ++t) e[t] = (b.mask[t] && H0[t] >= Q) ? 1.0 : 0.0;
  }

  // OPSM.
  const bool opsm = !std::isnan(p.opsm_threshold);
  std::vector<double> keep(B, 1.0);
  if (opsm) {
    for (int64_t i = 0; i < B; ++i) {
      double s = 0;
      for (int64_t t = i * L; t < (i + 1) * L; ++t)
        s += ((b.has_rollout ? b.rollout_logp[t] : b.old_logp[t]) - logp0[t]) * m(t);
      keep[i] = (b.adv[i] >= 0 || s / clamp1(n[i]) <= p.opsm_threshold) ? 1.0 : 0.0;
    }
  }

  // Ratio (coef_1), per token or per row, with its frozen value for the stop-gradient uses.
  std::vector<double> coef1(T), coef1_0(T);
  for (int64_t i = 0; i < B; ++i) {
    double s = 0, s0 = 0;
    for (int64_t t = i * L; t < (i + 1) * L; ++t)
      s += (logp[t] - b.old_logp[t]) * m(t), s0 += (logp0[t] - b.old_logp[t]) * m(t);
    for (int64_t t = i * L; t < (i + 1) * L; ++t) {
      coef1[t] = p.sequence ? std::exp(s / clamp1(n[i])) : std::exp(logp[t] - b.old_logp[t]);
      coef1_0[t] = p.sequence ? std::exp(s0 / clamp1(n[i])) : std::exp(logp0[t] - b.old_logp[t]);
    }
  }

  // KL.
  std::vector<double> kl(T, 0.0);
  if (p.beta != 0)
    for (int64_t t = 0; t < T; ++t) {
      const double d = b.ref_logp[t] - logp[t];
      kl[t] = std::exp(d) - d - 1;
      if (p.bias_correction_kl) kl[t] *= coef1[t];
    }

  // vLLM weight, from old and the sampler (constants).
  const bool vllm = p.vllm_mode != "none";
  const bool seq_is = p.vllm_mode == "sequence_truncate" || p.vllm_mode == "sequence_mask";
  std::vector<double> u(T, 1.0), row_u(B, 1.0);
  if (vllm) {
    auto bound = [&](double x) {
      const double lo = std::isnan(p.vllm_min) ? -INFINITY : p.vllm_min;
      const double hi = std::isnan(p.vllm_max) ? INFINITY : p.vllm_max;
      if (p.vllm_mode == "token_truncate" || p.vllm_mode == "sequence_truncate") return std::min(std::max(x, lo), hi);
      return (x < lo || x > hi) ? 0.0 : x;
    };
    for (int64_t i = 0; i < B; ++i) {
      double s = 0;
      for (int64_t t = i * L; t < (i + 1) * L; ++t) {
        const double d = (b.old_logp[t] - b.rollout_logp[t]) * m(t);
        s += d;
        if (!seq_is) u[t] = bound(std::exp(d));
      }
      if (seq_is) {
        row_u[i] = bound(std::exp(s));
        for (int64_t t = i * L; t < (i + 1) * L; ++t) u[t] = row_u[i];
      }
    }
  }

  // Per-token loss.
  std::vector<double> l(T, 0.0), phi(B, 0.0);
  const std::string& lt = p.loss_type;
  const bool ppo = lt == "grpo" || lt == "bnpo" || lt == "dr_grpo" || lt == "dapo" || lt == "luspo";
  std::vector<double> coef1c = coef1;
  if (ppo && !std::isnan(p.delta))
    for (int64_t t = 0; t < T; ++t) {
      res.branches.push_back(coef1[t] > p.delta);
      coef1c[t] = std::min(coef1[t], p.delta);
    }
  if (lt == "vespo") {
    const double floor = std::log(1e-8);
    for (int64_t i = 0; i < B; ++i) {
      double S = 0;
      for (int64_t t = i * L; t < (i + 1) * L; ++t) {
        S += std::min(std::max(logp0[t] - b.old_logp[t], -20.0), 20.0) * m(t);
        if (vllm) S += std::min(std::max(std::log(u[t]), floor), 20.0);  // every position, padding too
      }
      const double lw = std::min(std::max(S, floor), 20.0), w = std::exp(lw);
      const bool pos = b.adv[i] >= 0;
      const double k = pos ? p.k_pos : p.k_neg, lam = std::max(pos ? p.lambda_pos : p.lambda_neg, 1e-4);
      const double v = std::exp(lam + k * lw - lam * w);
      phi[i] = std::isfinite(v) ? v : 0.0;
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    const double A = b.adv[t / L];
    if (lt == "cispo") {
      l[t] = -std::min(coef1_0[t], p.epsilon_high) * A * logp[t];
    } else if (ppo) {
      const double c2 = std::min(std::max(coef1[t], 1 - p.epsilon), 1 + p.epsilon_high);
      res.branches.push_back(coef1[t] < 1 - p.epsilon);
      res.branches.push_back(coef1[t] > 1 + p.epsilon_high);
      res.branches.push_back(coef1c[t] * A < c2 * A);
      l[t] = -std::min(coef1c[t] * A, c2 * A);
    } else if (lt == "sapo") {
      const double tau = A > 0 ? p.sapo_pos : p.sapo_neg;
      l[t] = -(1.0 / (1.0 + std::exp(-tau * (coef1[t] - 1)))) * 4 / tau * A;
    } else {
      l[t] = -phi[t / L] * A * logp[t];
    }
    if (opsm) l[t] *= keep[t / L];
    if (entropy_mask) l[t] *= e[t];
    if (vllm && lt != "vespo") l[t] *= u[t];
    if (p.beta != 0) l[t] += p.beta * kl[t];
  }

  // Aggregation by loss_type.
  double J = 0;
  if (lt == "grpo" || lt == "sapo") {
    for (int64_t i = 0; i < B; ++i) {
      double s = 0;
      for (int64_t t = i * L; t < (i + 1) * L; ++t) s += l[t] * m(t);
      J += s / clamp1(n[i]) / B;
    }
  } else if (lt == "bnpo" || lt == "dapo" || lt == "cispo" || lt == "vespo") {
    for (int64_t t = 0; t < T; ++t) J += l[t] * m(t);
    J /= clamp1(N);
  } else if (lt == "dr_grpo") {
    for (int64_t t = 0; t < T; ++t) J += l[t] * m(t);
    J /= B * p.max_completion_length;
  } else {
    // luspo with a per-row loss (B, 1): mean over rows of l_i n_i. (Only that case is reproduced.)
    for (int64_t i = 0; i < B; ++i) J += l[i * L] * n[i] / B;
  }
  res.policy_loss = J;
  if (p.entropy_coef != 0) {
    double s = 0, d = 0;
    for (int64_t t = 0; t < T; ++t) s += H[t] * m(t) * e[t], d += m(t) * e[t];
    const bool global = lt == "dapo" || lt == "cispo" || lt == "vespo";
    J -= p.entropy_coef * s / (global ? clamp1(N) : clamp1(d));
  }
  res.loss = J;

  // Metrics.
  double hs = 0, ks = 0;
  for (int64_t t = 0; t < T; ++t) hs += H[t] * m(t), ks += kl[t] * m(t);
  res.entropy = hs / clamp1(N);
  res.kl = ks / clamp1(N);
  auto flag_metrics = [&](auto low, auto high, double* low_mean, double* high_mean, double* region, double* low_min,
                          double* high_max) {
    double sl = 0, sh = 0, sr = 0, cnt = 0, mn = INFINITY, mx = -INFINITY;
    for (int64_t i = 0; i < B; ++i) {
      if (p.sequence) {  // one value per row, every row
        const int64_t t = i * L;
        sl += low(t), sh += high(t), sr += (low(t) || high(t)), cnt += 1;
        mn = std::min(mn, double(low(t))), mx = std::max(mx, double(high(t)));
        continue;
      }
      double rl = 0, rh = 0;
      for (int64_t t = i * L; t < (i + 1) * L; ++t)
        if (b.mask[t]) sl += low(t), sh += high(t), sr += (low(t) || high(t)), cnt += 1, rl += low(t), rh += high(t);
      if (n[i] > 0) mn = std::min(mn, rl / n[i]), mx = std::max(mx, rh / n[i]);  // nanmin / nanmax
    }
    *low_mean = sl / clamp1(cnt);
    *high_mean = sh / clamp1(cnt);
    if (region) *region = sr / clamp1(cnt);
    if (low_min) *low_min = mn;
    if (high_max) *high_max = mx;
  };
  if (ppo) {
    auto low = [&](int64_t t) { return coef1c[t] < 1 - p.epsilon && b.adv[t / L] < 0; };
    auto high = [&](int64_t t) { return coef1c[t] > 1 + p.epsilon_high && b.adv[t / L] > 0; };
    flag_metrics(low, high, &res.clip_low_mean, &res.clip_high_mean, &res.clip_region_mean, &res.clip_low_min,
                 &res.clip_high_max);
  }
  if (lt == "cispo") {
    auto none = [](int64_t) { return false; };
    auto high = [&](int64_t t) { return coef1[t] > p.epsilon_high && b.adv[t / L] > 0; };
    double unused = 0;
    flag_metrics(none, high, &unused, &res.cispo_clip_ratio, nullptr, nullptr, nullptr);
  }
  if (lt == "vespo") {
    for (int64_t i = 0; i < B; ++i) res.vespo_phi_mean += phi[i] / B;
  }
  if (vllm) {
    double ds = 0, dm = 0, us = 0, un = 0, umin = INFINITY, umax = -INFINITY;
    for (int64_t t = 0; t < T; ++t)
      if (b.mask[t]) {
        const double d = std::fabs(b.old_logp[t] - b.rollout_logp[t]);
        ds += d, dm = std::max(dm, d);
        if (!seq_is) us += u[t], un += 1, umin = std::min(umin, u[t]), umax = std::max(umax, u[t]);
      }
    if (seq_is)
      for (int64_t i = 0; i < B; ++i) us += row_u[i], un += 1, umin = std::min(umin, row_u[i]), umax = std::max(umax, row_u[i]);
    res.diff_mean = N > 0 ? ds / N : 0;
    res.diff_max = dm;
    res.is_mean = un > 0 ? us / un : 0;
    res.is_min = un > 0 ? umin : 0;
    res.is_max = un > 0 ? umax : 0;
  }
  return res;
}

// Central finite differences of J at b.logits (the stop-gradient values stay at b.logits). Sets
// *stable = false when a perturbation moved a discrete choice (a kink inside the step).
inline std::vector<double> finite_difference_gradient(const Batch& b, const Params& p, bool* stable, double h = 1e-6) {
  std::vector<double> g(b.logits.size(), 0.0), z = b.logits;
  const std::vector<int> branches = loss(b, z, b.logits, p).branches;
  *stable = true;
  for (size_t k = 0; k < z.size(); ++k) {
    if (!b.mask[k / b.V]) continue;  // a masked token's logits reach no term
    const double z0 = z[k];
    z[k] = z0 + h;
    const Result plus = loss(b, z, b.logits, p);
    z[k] = z0 - h;
    const Result minus = loss(b, z, b.logits, p);
    z[k] = z0;
    if (plus.branches != branches || minus.branches != branches) *stable = false;
    g[k] = (plus.loss - minus.loss) / (2 * h);
  }
  return g;
}

// A random padded batch: ragged rows (the last one sometimes empty), advantages of both signs and
// one exactly 0, old / ref / rollout log-probs near the current ones so that ratios straddle the
// clip bounds and the vLLM weights straddle their bounds.
inline Batch random_batch(std::mt19937_64& rng, int64_t B, int64_t L, int64_t V, bool empty_row) {
  Batch b;
  b.B = B, b.L = L, b.V = V;
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_int_distribution<int64_t> len(1, L);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));
  b.logits.resize(B * L * V);
  for (double& x : b.logits) x = 1.5 * normal(rng);
  for (int64_t i = 0; i < B; ++i) {
    const int64_t n = (empty_row && i == B - 1) ? 0 : len(rng);
    for (int64_t j = 0; j < L; ++j) {
      b.tokens.push_back(tok(rng));
      b.mask.push_back(j < n ? 1 : 0);
    }
    // Row 1 has A = 0 exactly; an empty row gets A >= 0 (the library reads no advantage there and
    // gives vespo's phi the _pos pair).
    b.adv.push_back(i == 1 ? 0.0 : (n == 0 ? std::fabs(normal(rng)) : normal(rng)));
  }
  for (int64_t t = 0; t < B * L; ++t) {
    double lp, h;
    log_softmax_entropy(&b.logits[t * V], V, b.tokens[t], 1.0, &lp, &h);
    b.old_logp.push_back(lp + 0.25 * normal(rng));
    b.ref_logp.push_back(lp + 0.4 * normal(rng));
    b.rollout_logp.push_back(b.old_logp.back() + 0.3 * normal(rng));
  }
  b.has_rollout = true;
  return b;
}

// The batch as the tests' batch (support::Batch, padded B x L, every token initial), from which
// support::LibraryBatch gives the library's view; rollout_logp only when the batch has it.
inline support::Batch to_support_batch(const Batch& b) {
  const int64_t T = b.B * b.L;
  support::Batch x = support::padded_batch(b.B, b.L, b.V);
  x.logits = b.logits;
  x.targets = b.tokens;
  x.mask = b.mask;
  for (int64_t t = 0; t < T; ++t) x.adv[t] = b.adv[t / b.L];
  x.old_logp = b.old_logp;
  x.ref_logp = b.ref_logp;
  if (b.has_rollout) x.rollout_logp = b.rollout_logp;
  else x.rollout_logp.clear();
  return x;
}

}  // namespace trl_ref
