// cgrpo/base/checked_size.hpp: int64 size arithmetic that reports overflow instead of wrapping.
// Validation multiplies caller-given sizes (rows x stride x bytes): it must never overflow itself.
#pragma once

#include <cstdint>
#include <limits>

namespace cgrpo {

// *out = a * b; false (and *out untouched) when the product does not fit in int64.
inline bool checked_mul(int64_t a, int64_t b, int64_t* out) {
#if defined(__GNUC__) || defined(__clang__)
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return false;
  *out = r;
  return true;
#else
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max(), kMin = std::numeric_limits<int64_t>::min();
  if (a != 0 && b != 0) {
    const bool overflow = a > 0 ? (b > 0 ? a > kMax / b : b < kMin / a) : (b > 0 ? a < kMin / b : a < kMax / b);
    if (overflow) return false;
  }
  *out = a * b;
  return true;
#endif
}

// *out = a + b; false (and *out untouched) when the sum does not fit in int64.
inline bool checked_add(int64_t a, int64_t b, int64_t* out) {
#if defined(__GNUC__) || defined(__clang__)
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) return false;
  *out = r;
  return true;
#else
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max(), kMin = std::numeric_limits<int64_t>::min();
  if ((b > 0 && a > kMax - b) || (b < 0 && a < kMin - b)) return false;
  *out = a + b;
  return true;
#endif
}

}  // namespace cgrpo
