// cgrpo/critique/critique.hpp: the critiques of Critique-GRPO, written on the host.
// simple and simple_gt are fixed sentences; free_text comes from a critic the caller supplies.
#pragma once

#include <exception>
#include <functional>
#include <string>

#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/base/status.hpp"

namespace cgrpo::critique {

// Threads: the functions here keep no state; calls may run at the same time (inputs may be
// shared, an output may not; a Critic shared by such calls must itself allow it).

enum class CritiqueKind : int {
  simple = 0,     // "The generated solution is correct." / "The generated solution is incorrect."
  simple_gt = 1,  // "The generated solution is incorrect, the ground truth is X."
  free_text = 2,  // whatever the caller's Critic writes (a critic model, a rule, a human)
};

inline const char* to_string(CritiqueKind kind) {
  switch (kind) {
    case CritiqueKind::simple: return "simple";
    case CritiqueKind::simple_gt: return "simple_gt";
    case CritiqueKind::free_text: return "free_text";
  }
  return "unknown";
}

// Parses "simple", "simple_gt" or "free_text" (the names to_string writes).
inline Status parse_critique_kind(const std::string& name, CritiqueKind& kind) {
  for (CritiqueKind k : {CritiqueKind::simple, CritiqueKind::simple_gt, CritiqueKind::free_text})
    if (name == to_string(k)) {
      kind = k;
      return Status::success();
    }
  return make_error(StatusCode::invalid_argument,
                    "unknown critique kind \"%.64s\" (expected simple, simple_gt or free_text)", name.c_str());
}

// What a critic sees of one response.
struct CritiqueRequest {
  std::string question;
  std::string solution;
  std::string ground_truth;  // the reference answer; empty when unknown
  bool correct = false;      // the verifier's verdict (reward == success reward)
};

// A caller-supplied critic: writes a free-text critique of `request` into `critique`.
// The library never calls a network; a critic that does is the caller's code.
using Critic = std::function<Status(const CritiqueRequest& request, std::string& critique)>;

// The sentence of a `simple` critique.
inline std::string simple_critique_text(bool correct) {
  return correct ? "The generated solution is correct." : "The generated solution is incorrect.";
}

// The sentence of a `simple_gt` critique. The ground truth is inserted verbatim between
// "the ground truth is " and a final period, after the verdict and a comma:
//   "The generated solution is incorrect, the ground truth is 42."
// Pass the answer without a trailing period: the sentence always ends with one.
inline std::string simple_gt_critique_text(bool correct, const std::string& ground_truth) {
  return std::string(correct ? "The generated solution is correct" : "The generated solution is incorrect") +
         ", the ground truth is " + ground_truth + ".";
}

// Writes the critique of one response. simple_gt needs a non-empty ground truth;
// free_text needs a critic, whose error is passed on (an exception it throws becomes an
// invalid_argument Status); an empty free-text critique is an error. critique is untouched on error.
inline Status write_critique(CritiqueKind kind, const CritiqueRequest& request, const Critic& critic,
                             std::string& critique) {
  return no_throw("write_critique", [&]() -> Status {
    switch (kind) {
      case CritiqueKind::simple:
        critique = simple_critique_text(request.correct);
        return Status::success();
      case CritiqueKind::simple_gt:
        if (request.ground_truth.empty())
          return make_error(StatusCode::invalid_argument, "simple_gt critique needs a ground truth, got an empty one");
        critique = simple_gt_critique_text(request.correct, request.ground_truth);
        return Status::success();
      case CritiqueKind::free_text: {
        if (!critic)
          return make_error(StatusCode::invalid_argument, "free_text critique needs a critic callback, got none");
        std::string text;
        Status s;
        try {
          s = critic(request, text);
        } catch (const std::bad_alloc&) {
          throw;
        } catch (const std::exception& e) {
          return make_error(StatusCode::invalid_argument, "the critic threw an exception: %.160s", e.what());
        } catch (...) {
          return make_error(StatusCode::invalid_argument, "the critic threw an exception");
        }
        CGRPO_RETURN_IF_ERROR(s);
        if (text.empty()) return make_error(StatusCode::invalid_argument, "the critic returned an empty critique");
        critique = std::move(text);
        return Status::success();
      }
    }
    return make_error(StatusCode::invalid_argument, "unknown critique kind %d", static_cast<int>(kind));
  });
}

}  // namespace cgrpo::critique
