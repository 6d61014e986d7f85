// benchmarks/cpu/heap_counter.hpp: every byte malloc hands out in this process (std::vector, operator
// new, Eigen's GEMM panels), live and peak, by interposing glibc's malloc family. One translation unit only.
#pragma once

#include <malloc.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

extern "C" {
void* __libc_malloc(size_t);
void __libc_free(void*);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* __libc_memalign(size_t, size_t);
}

namespace heap_counter {

inline std::atomic<int64_t>& live() {
  static std::atomic<int64_t> v{0};
  return v;
}
inline std::atomic<int64_t>& peak() {
  static std::atomic<int64_t> v{0};
  return v;
}

inline void add(void* p) {
  if (!p) return;
  const int64_t now = live().fetch_add(static_cast<int64_t>(malloc_usable_size(p))) +
                      static_cast<int64_t>(malloc_usable_size(p));
  int64_t old = peak().load(std::memory_order_relaxed);
  while (now > old && !peak().compare_exchange_weak(old, now)) {
  }
}
inline void sub(void* p) {
  if (p) live().fetch_sub(static_cast<int64_t>(malloc_usable_size(p)));
}

// Starts a measurement: the peak is reset to what is live now; returns that baseline.
inline int64_t start() {
  const int64_t now = live().load();
  peak().store(now);
  return now;
}
// Bytes above the baseline at the highest point since start().
inline int64_t peak_above(int64_t baseline) { return peak().load() - baseline; }

}  // namespace heap_counter

extern "C" {
void* malloc(size_t n) {
  void* p = __libc_malloc(n);
  heap_counter::add(p);
  return p;
}
void free(void* p) {
  heap_counter::sub(p);
  __libc_free(p);
}
void* calloc(size_t n, size_t s) {
  void* p = __libc_calloc(n, s);
  heap_counter::add(p);
  return p;
}
void* realloc(void* old, size_t n) {
  heap_counter::sub(old);
  void* p = __libc_realloc(old, n);
  if (p) heap_counter::add(p);
  else if (old && n) heap_counter::add(old);  // failed: the old block is still live
  return p;
}
void* memalign(size_t a, size_t n) {
  void* p = __libc_memalign(a, n);
  heap_counter::add(p);
  return p;
}
void* aligned_alloc(size_t a, size_t n) { return memalign(a, n); }
int posix_memalign(void** out, size_t a, size_t n) {
  void* p = memalign(a, n);
  if (!p) return 12;  // ENOMEM
  *out = p;
  return 0;
}
void* valloc(size_t n) { return memalign(4096, n); }
void* pvalloc(size_t n) { return memalign(4096, (n + 4095) / 4096 * 4096); }
}
