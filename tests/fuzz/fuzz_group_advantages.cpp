// libFuzzer target: group advantages and aggregation weights on arbitrary groups and rewards.
// Invariants: never crashes; outputs untouched on error; finite results from finite rewards.
#include <fuzzer/FuzzedDataProvider.h>

#include <cgrpo/cgrpo.hpp>
#include <cmath>
#include <cstdlib>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const int64_t n = in.ConsumeIntegralInRange<int64_t>(0, 24);
  const int64_t groups = in.ConsumeIntegralInRange<int64_t>(0, 6);
  const auto estimator = static_cast<cgrpo::AdvantageEstimator>(in.ConsumeIntegralInRange<int>(0, 4));
  const double eps = in.ConsumeIntegralInRange<int>(0, 9) ? 1e-6 : in.ConsumeFloatingPointInRange<double>(-1, 1);
  std::vector<double> rewards(n), adv(n, -99.5);
  std::vector<int32_t> ids(n);
  std::vector<int64_t> counts(n);
  for (int64_t i = 0; i < n; ++i) {
    ids[i] = in.ConsumeIntegralInRange<int32_t>(-1, static_cast<int32_t>(groups));
    rewards[i] = in.ConsumeIntegralInRange<int>(0, 15) ? static_cast<double>(in.ConsumeIntegralInRange<int>(0, 2))
                                                       : in.ConsumeFloatingPointInRange<double>(-1e300, 1e300);
    counts[i] = in.ConsumeIntegralInRange<int64_t>(-1, 5);
  }
  const cgrpo::Status s = cgrpo::group_advantages(estimator, {n, ids.data(), groups}, rewards.data(),
                                                  in.ConsumeBool() ? counts.data() : nullptr, eps, adv.data());
  if (!s.ok()) {
    for (double a : adv) if (a != -99.5) std::abort();
  } else {
    bool finite_in = true;
    for (double r : rewards) finite_in = finite_in && std::fabs(r) < 1e150;
    if (finite_in)
      for (double a : adv) if (!std::isfinite(a)) std::abort();
  }

  // Aggregation weights on a packed layout built from the same bytes.
  std::vector<int64_t> offsets = {0};
  for (int64_t i = 0; i < n; ++i) offsets.push_back(offsets.back() + in.ConsumeIntegralInRange<int64_t>(-1, 4));
  const int64_t T = offsets.back() > 0 ? offsets.back() : 0;
  std::vector<uint8_t> mask(T);
  for (auto& m : mask) m = in.ConsumeIntegralInRange<uint8_t>(0, 1);
  std::vector<double> w(T, -99.5);
  cgrpo::AggregationScale scale{in.ConsumeFloatingPointInRange<double>(-1, 100), in.ConsumeFloatingPointInRange<double>(-1, 10),
                                in.ConsumeFloatingPointInRange<double>(-1, 10)};
  const auto mode = static_cast<cgrpo::Aggregation>(in.ConsumeIntegralInRange<int>(0, 4));
  const cgrpo::Status sw =
      cgrpo::aggregation_weights(mode, cgrpo::SequenceLayout::packed(n, offsets.data()), mask.data(), scale, w.data());
  if (!sw.ok()) {
    for (double x : w) if (x != -99.5) std::abort();
  } else {
    for (double x : w) if (!std::isfinite(x) || x < 0) std::abort();
  }
  return 0;
}
