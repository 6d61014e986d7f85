// cgrpo/math/token_hash.hpp: the counter-based hash behind clip_cov's seeded choice of tokens.
// CGRPO_HD: the CPU batch pass and the CUDA select kernel draw the same tokens from the same seed.
#pragma once

#include <stdint.h>

#include "cgrpo/base/macros.hpp"

namespace cgrpo {

// splitmix64 of (seed, t): clip_cov keeps the k candidates with the smallest token_hash(seed, t) >> 11
// (ties by the lower index), a reproducible stand-in for verl's torch.randperm.
CGRPO_HD uint64_t token_hash(uint64_t seed, uint64_t t) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (t + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace cgrpo
