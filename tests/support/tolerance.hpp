// tests/support/tolerance.hpp: the tests' one tolerance rule, which holds for values near zero.
// Catch2 tests get it through cpu/reference.hpp (ref::close); the CUDA checks include it directly.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <ostream>

namespace tolerance {

// got is close to want when |got - want| <= rel * max(|want|, scale).
//
// Why a scale: a rounding error is relative to the numbers a value is computed FROM, not to
// the value. A sum of terms that cancel to 1e-17 still carries eps * sum |terms|; log p of a
// row carries eps * (max |z / tau| + |lse|) however small |log p| is. `scale` is that size (each
// call says what it is), so the bound holds however close `want` is to 0, and still tightens to
// a relative bound for large values. `rel` is the dtype's rounding times a stated count of
// operations. A non-finite `got` is never close.
struct Closeness {
  bool ok = false;
  double got = 0, want = 0, err = 0, bound = 0;
  std::ptrdiff_t index = -1;  // the worst element of an array, -1 for scalars
  explicit operator bool() const { return ok; }
};

inline std::ostream& operator<<(std::ostream& os, const Closeness& c) {
  os << (c.ok ? "close: " : "NOT close: ");
  if (c.index >= 0) os << "worst element " << c.index << ": ";
  return os << "got " << c.got << ", want " << c.want << ", |got - want| = " << c.err << ", bound " << c.bound;
}

inline Closeness close(double got, double want, double rel, double scale) {
  Closeness c;
  c.got = got;
  c.want = want;
  c.err = std::fabs(got - want);
  c.bound = rel * std::max(std::fabs(want), scale);
  c.ok = std::isfinite(got) && c.err <= c.bound;
  return c;
}

// Arrays: max_i |got_i - want_i| <= rel * max(max_i |want_i|, scale): the error of every element
// measured against the array's largest value (a gradient's near-zero entries carry the rounding
// of the row's large ones), floored by `scale` for an array whose exact values are all ~0.
template <typename Got, typename Want>
Closeness close_all(const Got& got, const Want& want, double rel, double scale) {
  Closeness c;
  double size = scale;
  for (const auto& w : want) size = std::max(size, std::fabs(static_cast<double>(w)));
  c.bound = rel * size;
  c.ok = got.size() == want.size();
  if (!c.ok) c.err = INFINITY;
  for (std::size_t i = 0; i < got.size() && i < want.size(); ++i) {
    const double g = static_cast<double>(got[i]), w = static_cast<double>(want[i]);
    double e = std::fabs(g - w);
    if (!std::isfinite(g) || !(e <= INFINITY)) e = INFINITY;  // a NaN anywhere is the worst error
    if (c.index < 0 || e > c.err) c.err = e, c.index = static_cast<std::ptrdiff_t>(i), c.got = g, c.want = w;
  }
  c.ok = c.ok && c.err <= c.bound;
  return c;
}

}  // namespace tolerance
