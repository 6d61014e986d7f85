// tests/support/test_seed.hpp: fresh random inputs every run, and the seed to repeat a failing one.
// The seed is printed once per test program; CGRPO_TEST_SEED=<n> replays it.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>

namespace test_seed {

inline uint64_t base_seed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("CGRPO_TEST_SEED");
    const uint64_t s = env ? std::strtoull(env, nullptr, 10)
                           : (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
    std::fprintf(stderr, "random seed: %llu (CGRPO_TEST_SEED=%llu repeats this run)\n",
                 static_cast<unsigned long long>(s), static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

// A generator per call site and call, derived from the run's seed.
inline std::mt19937_64 fresh_rng() {
  static uint64_t calls = 0;
  return std::mt19937_64(base_seed() + 0x9E3779B97F4A7C15ull * ++calls);
}

}  // namespace test_seed
