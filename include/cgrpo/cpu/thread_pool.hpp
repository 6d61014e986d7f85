// cgrpo/cpu/thread_pool.hpp: the CPU path's worker threads, started once and reused by every call.
// A cpu::Workspace owns one; a call splits its rows in fixed contiguous parts across them.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace cgrpo::cpu {

// The most threads one call runs on, the caller's included: what the machine can run at once,
// std::thread::hardware_concurrency() (1 when it does not say). A larger workspace.num_threads is
// capped to it: more threads than cores would only queue, and each costs a stack.
inline int hardware_threads() {
  static const int n = [] {  // asked once: glibc reads /sys on every call
    const unsigned c = std::thread::hardware_concurrency();
    return c == 0 ? 1 : static_cast<int>(std::min(c, 1024u));
  }();
  return n;
}

// Part p of `parts` contiguous parts of [0, n): the first n % parts parts get one row more.
inline void part_range(int64_t n, int64_t parts, int64_t p, int64_t* begin, int64_t* end) {
  const int64_t q = n / parts, r = n % parts;
  *begin = p * q + std::min(p, r);
  *end = *begin + q + (p < r ? 1 : 0);
}

// Worker threads started on first need and kept until the pool is destroyed, so a call in
// steady state starts none. run() is one job at a time (a second caller waits); a cpu::Workspace
// adds the check that turns that into an error (cpu/workspace_guard.hpp).
class ThreadPool {
 public:
  // max_threads caps the threads of one call, the caller's included (0: hardware_threads()).
  explicit ThreadPool(int max_threads = 0) : max_threads_(max_threads) {}
  ThreadPool(ThreadPool&& other) noexcept = default;
  ThreadPool& operator=(ThreadPool&& other) noexcept {
    if (this != &other) {
      stop();
      state_ = std::move(other.state_);
      max_threads_ = other.max_threads_;
    }
    return *this;
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() { stop(); }

  int max_threads() const { return max_threads_ > 0 ? max_threads_ : hardware_threads(); }
  // Above hardware_threads() only oversubscribes the cores (tests use it to split finer).
  void set_max_threads(int max_threads) { max_threads_ = max_threads; }
  // Threads started so far, the caller's not counted.
  int num_workers() const { return state_ ? static_cast<int>(state_->workers.size()) : 0; }

  // Calls fn(begin, end) on parts = min(num_threads, max_threads(), n) contiguous parts of
  // [0, n) (part_range), the caller's thread running parts too, and returns when all are done.
  // The split depends only on (n, parts), and each row's result only on that row, so the thread
  // count never changes a bit. A worker that cannot be started (std::system_error: the system is
  // out of threads; std::bad_alloc) is not an error: the threads there are run its parts. fn must
  // not throw.
  template <typename Fn>
  void run(int64_t n, int num_threads, Fn&& fn) {
    const int64_t parts = std::min<int64_t>(std::min(num_threads, max_threads()), n);
    if (parts <= 1) {
      fn(int64_t{0}, n);
      return;
    }
    using F = std::remove_reference_t<Fn>;
    F* f = std::addressof(fn);
    auto call = [](void* g, int64_t begin, int64_t end) { (*static_cast<F*>(g))(begin, end); };
    void* ctx = const_cast<void*>(static_cast<const void*>(f));
    if (!start_workers(static_cast<int>(parts) - 1)) {
      for (int64_t p = 0; p < parts; ++p) {
        int64_t begin, end;
        part_range(n, parts, p, &begin, &end);
        call(ctx, begin, end);
      }
      return;
    }
    State& s = *state_;
    std::lock_guard<std::mutex> one_job(s.run_mutex);
    {
      std::unique_lock<std::mutex> lock(s.mutex);
      s.done.wait(lock, [&] { return s.busy == 0; });  // late wakers of the last job are gone
      s.call = call;
      s.ctx = ctx;
      s.n = n;
      s.parts = parts;
      s.next_part.store(0, std::memory_order_relaxed);
      s.parts_done = 0;
      ++s.job;
    }
    s.wake.notify_all();
    const int64_t mine = run_parts(s, call, ctx, n, parts);
    std::unique_lock<std::mutex> lock(s.mutex);
    s.parts_done += mine;
    s.done.wait(lock, [&] { return s.parts_done == parts && s.busy == 0; });
  }

 private:
  struct State {
    std::mutex run_mutex;  // one job at a time
    std::mutex mutex;      // guards everything below but next_part
    std::condition_variable wake, done;
    std::vector<std::thread> workers;
    bool stopping = false;
    uint64_t job = 0;  // counts jobs: a worker takes each one at most once
    void (*call)(void*, int64_t, int64_t) = nullptr;
    void* ctx = nullptr;
    int64_t n = 0, parts = 0;
    std::atomic<int64_t> next_part{0};  // parts are claimed in order by whoever is free
    int64_t parts_done = 0;
    int busy = 0;  // workers holding a copy of the current job
  };

  static int64_t run_parts(State& s, void (*call)(void*, int64_t, int64_t), void* ctx, int64_t n, int64_t parts) {
    int64_t count = 0;
    for (;;) {
      const int64_t p = s.next_part.fetch_add(1, std::memory_order_relaxed);
      if (p >= parts) return count;
      int64_t begin, end;
      part_range(n, parts, p, &begin, &end);
      call(ctx, begin, end);
      ++count;
    }
  }

  static void worker_loop(State* s, int index, uint64_t seen) {
    std::unique_lock<std::mutex> lock(s->mutex);
    for (;;) {
      s->wake.wait(lock, [&] { return s->stopping || s->job != seen; });
      if (s->stopping) return;
      seen = s->job;
      if (index + 1 >= s->parts) continue;  // this job has fewer parts than there are workers
      const auto call = s->call;
      void* const ctx = s->ctx;
      const int64_t n = s->n, parts = s->parts;
      ++s->busy;
      lock.unlock();
      const int64_t finished = run_parts(*s, call, ctx, n, parts);
      lock.lock();
      s->parts_done += finished;
      --s->busy;
      s->done.notify_all();
    }
  }

  // Starts workers until there are `wanted` (or the system refuses one); false when there is
  // none to run with.
  bool start_workers(int wanted) {
    try {
      if (!state_) state_ = std::make_unique<State>();
    } catch (...) {
      return false;
    }
    State& s = *state_;
    std::lock_guard<std::mutex> one_job(s.run_mutex);
    while (static_cast<int>(s.workers.size()) < wanted) {
      try {
        uint64_t job;
        {
          std::lock_guard<std::mutex> lock(s.mutex);
          job = s.job;
        }
        s.workers.emplace_back(worker_loop, &s, static_cast<int>(s.workers.size()), job);
      } catch (...) {  // std::system_error (no thread to be had), std::bad_alloc: run with fewer
        break;
      }
    }
    return !s.workers.empty();
  }

  void stop() {
    if (!state_) return;
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      state_->stopping = true;
    }
    state_->wake.notify_all();
    for (std::thread& w : state_->workers) w.join();
    state_.reset();
  }

  std::unique_ptr<State> state_;
  int max_threads_ = 0;
};

}  // namespace cgrpo::cpu
