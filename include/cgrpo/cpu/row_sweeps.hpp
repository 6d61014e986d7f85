// cgrpo/cpu/row_sweeps.hpp: the two sweeps over one logits row, vectorised with Eigen.
// Sweep 1 reads the row once for lse and H; sweep 2 reads it again and writes dJ/dz.
#pragma once

#include <Eigen/Core>
#include <cstdint>

#include "cgrpo/token_math.hpp"

namespace cgrpo::cpu {

// Rows are processed in chunks that stay in L1 between the max and the exp passes,
// so each sweep moves the row through memory once.
constexpr int64_t kChunk = 2048;

// Exponents below this floor are clamped: exp of it is still a normal number
// (so -inf logits contribute ~0 and e * (u - M) stays finite).
template <typename Real> constexpr Real exp_floor();
template <> constexpr float exp_floor<float>() { return -87.0f; }
template <> constexpr double exp_floor<double>() { return -708.0; }

template <typename Real>
using ArrayMap = Eigen::Map<Eigen::Array<Real, Eigen::Dynamic, 1>>;
template <typename Real>
using ConstArrayMap = Eigen::Map<const Eigen::Array<Real, Eigen::Dynamic, 1>>;

// Softmax statistics of u = z * inv_temperature. Chunk sums are taken in Real
// (vectorised) and merged across chunks in double.
template <typename Real>
RowStats<double> row_softmax_stats(const Real* z, int64_t vocab, Real inv_temperature) {
  RowStats<double> acc = row_stats_identity<double>();
  for (int64_t c0 = 0; c0 < vocab; c0 += kChunk) {
    const int64_t n = vocab - c0 < kChunk ? vocab - c0 : kChunk;
    ConstArrayMap<Real> x(z + c0, n);
    const Real m = (x * inv_temperature).maxCoeff();
    if (m == -INFINITY) continue;  // an all -inf chunk contributes nothing
    const auto d = (x * inv_temperature - m).max(exp_floor<Real>());
    const auto e = d.exp();
    // NaN or +inf anywhere makes m or these sums non-finite; the caller checks.
    const Real s = e.sum();
    const Real q = (e * d).sum();
    acc = row_stats_merge(acc, RowStats<double>{static_cast<double>(m), static_cast<double>(s),
                                                static_cast<double>(q)});
  }
  return acc;
}

// g_j = ( a (onehot(y)_j - p_j) - b p_j (log p_j + H) ) / tau for the whole row
// (cgrpo::logit_gradient, vectorised). g may be z (in place).
template <typename Real>
void row_logit_gradient(const Real* z, int64_t vocab, Real inv_temperature, int32_t target, double lse,
                        double entropy, double a, double b, Real* g) {
  ArrayMap<Real> out(g, vocab);
  if (a == 0.0 && b == 0.0) {  // masked rows: exactly zero without touching the logits
    out.setZero();
    return;
  }
  const Real lse_r = static_cast<Real>(lse), h = static_cast<Real>(entropy);
  const Real ar = static_cast<Real>(a), br = static_cast<Real>(b);
  for (int64_t c0 = 0; c0 < vocab; c0 += kChunk) {
    const int64_t n = vocab - c0 < kChunk ? vocab - c0 : kChunk;
    ConstArrayMap<Real> x(z + c0, n);
    ArrayMap<Real> o(g + c0, n);
    const auto logp = (x * inv_temperature - lse_r).max(exp_floor<Real>());
    o = -((ar + br * (logp + h)) * logp.exp()) * inv_temperature;
  }
  g[target] += ar * inv_temperature;
}

}  // namespace cgrpo::cpu
