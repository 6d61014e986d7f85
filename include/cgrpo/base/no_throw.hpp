// cgrpo/base/no_throw.hpp: runs an entry point's body so that a failed allocation becomes a Status.
// No exception escapes the API: std::bad_alloc and std::length_error turn into out_of_memory.
#pragma once

#include <new>
#include <stdexcept>
#include <utility>

#include "cgrpo/base/status.hpp"

namespace cgrpo {

// Returns body(), or out_of_memory naming `entry` when body throws std::bad_alloc (a vector
// could not grow) or std::length_error (it was asked for more than max_size()). The body must
// write its outputs only after its last allocation, so that the error leaves them untouched.
template <typename Body>
Status no_throw(const char* entry, Body&& body) {
  try {
    return std::forward<Body>(body)();
  } catch (const std::bad_alloc&) {
    return make_error(StatusCode::out_of_memory, "%s: a host allocation failed (std::bad_alloc); nothing was written",
                      entry);
  } catch (const std::length_error&) {
    return make_error(StatusCode::out_of_memory,
                      "%s: a host allocation larger than the maximum size was asked for; nothing was written", entry);
  }
}

}  // namespace cgrpo
