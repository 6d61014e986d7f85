// libFuzzer target: cgrpo::cpu::token_logprobs on arbitrary sizes, strides, targets and logits.
// Invariants: never crashes; outputs untouched on error; log p <= 0 and H >= 0 (to rounding) on success.
#include <fuzzer/FuzzedDataProvider.h>

#include <cgrpo/cgrpo.hpp>
#include <cmath>
#include <cstdlib>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const int64_t T = in.ConsumeIntegralInRange<int64_t>(-1, 8);
  const int64_t V = in.ConsumeIntegralInRange<int64_t>(-1, 3000);
  const int64_t stride = in.ConsumeBool() ? 0 : in.ConsumeIntegralInRange<int64_t>(0, 3005);
  const double tau = in.ConsumeIntegralInRange<int>(0, 7) ? 1.0 : in.ConsumeFloatingPointInRange<double>(-1, 4);
  const int64_t rows = T > 0 ? T : 0, cols = stride > V ? stride : (V > 0 ? V : 1);
  std::vector<float> logits(static_cast<size_t>(rows * cols));
  for (auto& z : logits) {
    const int k = in.ConsumeIntegralInRange<int>(0, 200);
    z = k == 0 ? NAN : k == 1 ? -INFINITY : k == 2 ? INFINITY : in.ConsumeFloatingPointInRange<float>(-1e4f, 1e4f);
  }
  std::vector<int32_t> targets(rows);
  for (auto& y : targets) y = in.ConsumeIntegralInRange<int32_t>(-1, V > 0 ? static_cast<int32_t>(V) : 1);
  std::vector<float> logp(rows, 7.5f), ent(rows, 7.5f);
  const cgrpo::Status s = cgrpo::cpu::token_logprobs(logits.data(), T, V, stride, targets.data(), tau, logp.data(),
                                                     ent.data(), in.ConsumeIntegralInRange<int>(1, 3));
  for (int64_t t = 0; t < rows; ++t) {
    if (!s.ok()) {
      if (logp[t] != 7.5f || ent[t] != 7.5f) std::abort();
    } else {
      if (!(logp[t] <= 1e-3f) && !std::isnan(logp[t])) std::abort();  // NaN only for a -inf target (-inf), never NaN
      if (std::isnan(logp[t]) || std::isnan(ent[t]) || ent[t] < -1e-3f) std::abort();
    }
  }
  return 0;
}
