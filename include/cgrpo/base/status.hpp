// cgrpo/base/status.hpp: the status every entry point returns instead of throwing.
// A Status carries a code and a fixed-size message; it never allocates.
#pragma once

#include <cstdarg>
#include <cstdio>

namespace cgrpo {

enum class StatusCode : int {
  ok = 0,
  invalid_argument = 1,   // sizes, pointers, config values
  out_of_range = 2,       // a token id outside [0, vocab)
  non_finite = 3,         // NaN or Inf in an input that must be finite
  cuda_error = 4,         // a CUDA runtime call failed (cgrpo/cuda only)
  out_of_memory = 5,      // an allocation failed (host vectors: workspace, group assembly, ...)
};

inline const char* status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::ok: return "ok";
    case StatusCode::invalid_argument: return "invalid_argument";
    case StatusCode::out_of_range: return "out_of_range";
    case StatusCode::non_finite: return "non_finite";
    case StatusCode::cuda_error: return "cuda_error";
    case StatusCode::out_of_memory: return "out_of_memory";
  }
  return "unknown";
}

struct Status {
  StatusCode code = StatusCode::ok;
  char message[240] = {0};

  bool ok() const { return code == StatusCode::ok; }
  explicit operator bool() const { return ok(); }

  static Status success() { return Status{}; }
};

// printf-style constructor for an error status; the message is truncated to fit.
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
inline Status make_error(StatusCode code, const char* fmt, ...) {
  Status s;
  s.code = code;
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(s.message, sizeof(s.message), fmt, args);
  va_end(args);
  return s;
}

}  // namespace cgrpo

// Returns early from the enclosing function when `expr` yields a non-ok Status.
#define CGRPO_RETURN_IF_ERROR(expr)          \
  do {                                       \
    ::cgrpo::Status cgrpo_status_ = (expr);  \
    if (!cgrpo_status_.ok()) return cgrpo_status_; \
  } while (0)
