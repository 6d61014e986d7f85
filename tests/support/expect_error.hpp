// tests/support/expect_error.hpp: the tests' one expect_error: a call's outputs poisoned before it,
// its Status checked (the code, every needle of the message), every output checked untouched after.
#pragma once

#include <catch2/catch.hpp>

#include <cgrpo/cgrpo.hpp>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

namespace support {

constexpr double kPoison = -12345.5;
constexpr uint8_t kPoisonByte = 77;

// The status is `code` and its message holds every needle.
inline void check_error(const cgrpo::Status& s, cgrpo::StatusCode code, std::initializer_list<const char*> needles) {
  INFO("status " << cgrpo::status_code_name(s.code) << ": " << s.message);
  CHECK(s.code == code);
  CHECK(s.message[0] != '\0');
  for (const char* n : needles) {
    INFO("wanted in the message: " << n);
    CHECK(std::string(s.message).find(n) != std::string::npos);
  }
}

// Every output of a loss call, poisoned: a gradient of `grad_entries` (0: none, forward only),
// log p, H, the policy factor and token terms of T tokens, and the metrics. out() points at them.
template <typename Real>
struct PoisonedOutputs {
  std::vector<Real> grad, logp, entropy, factor;
  std::vector<uint8_t> terms;
  cgrpo::LossMetrics metrics;
  cgrpo::PolicyLossOutputs<Real> out;

  PoisonedOutputs(int64_t T, int64_t grad_entries)
      : grad(static_cast<size_t>(grad_entries), static_cast<Real>(kPoison)),
        logp(static_cast<size_t>(T), static_cast<Real>(kPoison)),
        entropy(static_cast<size_t>(T), static_cast<Real>(kPoison)),
        factor(static_cast<size_t>(T), static_cast<Real>(kPoison)),
        terms(static_cast<size_t>(T), kPoisonByte) {
    std::memset(static_cast<void*>(&metrics), 0, sizeof(metrics));
    metrics.loss = kPoison;
    metrics.rollout.is_mean = kPoison;
    metrics.sampler.is_ratio_mean = kPoison;
    out.grad_logits = grad.empty() ? nullptr : grad.data();
    out.logp = logp.data();
    out.entropy = entropy.data();
    out.policy_factor = factor.data();
    out.token_terms = terms.data();
    out.metrics = &metrics;
  }
  PoisonedOutputs(const PoisonedOutputs&) = delete;

  // Nothing was written (the metrics: every byte as poisoned).
  void check_untouched() const {
    for (Real g : grad) REQUIRE(g == static_cast<Real>(kPoison));
    for (size_t t = 0; t < logp.size(); ++t) {
      REQUIRE(logp[t] == static_cast<Real>(kPoison));
      REQUIRE(entropy[t] == static_cast<Real>(kPoison));
      REQUIRE(factor[t] == static_cast<Real>(kPoison));
      REQUIRE(terms[t] == kPoisonByte);
    }
    cgrpo::LossMetrics poisoned;
    std::memset(static_cast<void*>(&poisoned), 0, sizeof(poisoned));
    poisoned.loss = kPoison;
    poisoned.rollout.is_mean = kPoison;
    poisoned.sampler.is_ratio_mean = kPoison;
    CHECK(std::memcmp(&metrics, &poisoned, sizeof(metrics)) == 0);
  }
};

// Runs `call(outputs)` (it returns the Status of one library call that writes into outputs.out),
// checks the error, and that nothing was written. A suite's own expect_error builds its fixture and
// calls this.
template <typename Real, typename Call>
void expect_error(int64_t num_tokens, int64_t grad_entries, Call&& call, cgrpo::StatusCode code,
                  std::initializer_list<const char*> needles) {
  PoisonedOutputs<Real> o(num_tokens, grad_entries);
  const cgrpo::Status s = call(o);
  check_error(s, code, needles);
  if (!s.ok()) o.check_untouched();
}

}  // namespace support
