// cgrpo/cpu/workspace_guard.hpp: one call at a time per cpu::Workspace, checked on entry.
// A call that finds its workspace busy returns an error instead of racing the call that holds it.
#pragma once

#include <atomic>

#include "cgrpo/base/status.hpp"

namespace cgrpo::cpu {

// Whether a call holds the workspace now: one atomic exchange on entry, one store on exit.
// A moved or moved-to flag is free (moving a workspace that a call holds is the caller's bug).
class InUseFlag {
 public:
  InUseFlag() = default;
  InUseFlag(InUseFlag&&) noexcept {}
  InUseFlag& operator=(InUseFlag&&) noexcept { return *this; }
  InUseFlag(const InUseFlag&) = delete;
  InUseFlag& operator=(const InUseFlag&) = delete;

  // acquire / release: the next holder sees everything the last one wrote to the workspace.
  bool try_acquire() { return !busy_.exchange(true, std::memory_order_acquire); }
  void release() { busy_.store(false, std::memory_order_release); }
  bool busy() const { return busy_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> busy_{false};
};

// Holds a workspace's flag for the lifetime of one call.
class ExclusiveUse {
 public:
  explicit ExclusiveUse(InUseFlag& flag) : flag_(flag), acquired_(flag.try_acquire()) {}
  ~ExclusiveUse() {
    if (acquired_) flag_.release();
  }
  ExclusiveUse(const ExclusiveUse&) = delete;
  ExclusiveUse& operator=(const ExclusiveUse&) = delete;
  bool acquired() const { return acquired_; }

 private:
  InUseFlag& flag_;
  bool acquired_;
};

inline Status workspace_busy_error(const char* entry) {
  return make_error(StatusCode::invalid_argument,
                    "%s: the workspace is in use by another call (concurrent calls need one cpu::Workspace each); "
                    "nothing was written",
                    entry);
}

}  // namespace cgrpo::cpu
