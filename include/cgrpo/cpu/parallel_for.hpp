// cgrpo/cpu/parallel_for.hpp: splits a row range across threads in fixed contiguous parts.
// Each row's result depends only on that row, so the thread count never changes the bits.
#pragma once

#include <cstdint>
#include <utility>

#include "cgrpo/cpu/thread_pool.hpp"

namespace cgrpo::cpu {

// Calls fn(begin, end) on min(num_threads, pool.max_threads(), n) contiguous parts of [0, n)
// on the pool's threads and the caller's. num_threads <= 1 runs everything inline.
template <typename Fn>
void parallel_for_rows(ThreadPool& pool, int64_t n, int num_threads, Fn&& fn) {
  pool.run(n, num_threads, std::forward<Fn>(fn));
}

// The same on a pool of its own, started and joined in this call: for one-off callers. The
// library's entry points use the pool of the caller's cpu::Workspace, which starts no thread
// once it has grown.
template <typename Fn>
void parallel_for_rows(int64_t n, int num_threads, Fn&& fn) {
  ThreadPool pool;
  pool.run(n, num_threads, std::forward<Fn>(fn));
}

}  // namespace cgrpo::cpu
