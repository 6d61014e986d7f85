// cgrpo/cpu/parallel_for.hpp: splits a row range across threads in fixed contiguous parts.
// Each row's result depends only on that row, so the thread count never changes the bits.
#pragma once

#include <cstdint>
#include <thread>
#include <vector>

namespace cgrpo::cpu {

// Calls fn(begin, end) on num_threads contiguous parts of [0, n); the caller's
// thread takes the first part. num_threads <= 1 runs everything inline.
template <typename Fn>
void parallel_for_rows(int64_t n, int num_threads, Fn&& fn) {
  if (num_threads <= 1 || n < 2) {
    fn(int64_t{0}, n);
    return;
  }
  const int64_t parts = n < num_threads ? n : num_threads;
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(parts - 1));
  for (int64_t p = 1; p < parts; ++p) {
    const int64_t begin = n * p / parts, end = n * (p + 1) / parts;
    workers.emplace_back([&fn, begin, end] { fn(begin, end); });
  }
  fn(int64_t{0}, n / parts);
  for (auto& w : workers) w.join();
}

}  // namespace cgrpo::cpu
