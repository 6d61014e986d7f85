// tests/cuda/gpu_test_util.cuh: what the GPU test programs share: the skip rule (exit code 77),
// a failure counter, device buffers and device copies of a batch, dtype conversions and the random
// batch generator.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <vector>

#include <cgrpo/loss/aggregation.hpp>
#include <cgrpo/loss/config.hpp>
#include <cgrpo/loss/policy_loss_batch.hpp>
#include <cgrpo/loss/policy_terms.hpp>

#include "cpu_path.hpp"

namespace gpu_test {

constexpr int kSkipReturnCode = 77;  // CTest SKIP_RETURN_CODE of every GPU test

inline int& failures() {
  static int n = 0;
  return n;
}

// Every check made (GPU_EXPECT), passed or failed: the count the mains print.
inline long long& checks() {
  static long long n = 0;
  return n;
}

#define GPU_EXPECT(cond, ...)                                                  \
  do {                                                                         \
    ++::gpu_test::checks();                                                    \
    if (!(cond)) {                                                             \
      ++::gpu_test::failures();                                                \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);              \
      std::printf(__VA_ARGS__);                                                \
      std::printf("\n");                                                       \
    }                                                                          \
  } while (0)

// A CUDA call of the test harness itself: a failure ends the program (exit 1).
#define TEST_CUDA(call)                                                                        \
  do {                                                                                         \
    cudaError_t e_ = (call);                                                                   \
    if (e_ != cudaSuccess) {                                                                   \
      std::printf("CUDA error %s at %s:%d: %s\n", #call, __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

// Addresses that are never dereferenced, for the host-API tests: validation must fail before any
// device access.
template <typename T>
T* fake(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// The per-token inputs of a 64-token batch over V = 1000 at fake addresses (the logits and the
// outputs are the caller's).
template <typename Logit>
void set_fake_token_inputs(cgrpo::PolicyLossBatch<Logit, float>& b) {
  b.num_tokens = 64;
  b.vocab_size = 1000;
  b.target_ids = fake<const int32_t>(0x20000000);
  b.mask = fake<const uint8_t>(0x20010000);
  b.advantages = fake<const float>(0x20020000);
  b.old_logp = fake<const float>(0x20030000);
  b.pg_weights = fake<const float>(0x20040000);
  b.entropy_weights = fake<const float>(0x20050000);
}

// Returns true when a device is present; otherwise prints the skip line.
inline bool have_cuda_device() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    std::printf("SKIPPED: no CUDA device found (%s)\n", err == cudaSuccess ? "0 devices" : cudaGetErrorString(err));
    return false;
  }
  cudaDeviceProp prop{};
  TEST_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d, %.1f GiB)\n", prop.name, prop.major, prop.minor,
              prop.totalGlobalMem / 1073741824.0);
  return true;
}

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t count = 0;
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) { allocate(n); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }
  void allocate(size_t n) {
    release();
    count = n;
    TEST_CUDA(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T)));
  }
  void release() {
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    count = 0;
  }
  void upload(const std::vector<T>& h) { TEST_CUDA(cudaMemcpy(ptr, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice)); }
  // A device copy of the n values at h (nullptr stays nullptr: an array the call does not pass).
  const T* mirror(const T* h, size_t n) {
    if (!h) return nullptr;
    allocate(n);
    TEST_CUDA(cudaMemcpy(ptr, h, n * sizeof(T), cudaMemcpyHostToDevice));
    return ptr;
  }
  std::vector<T> download() const {
    std::vector<T> h(count);
    TEST_CUDA(cudaMemcpy(h.data(), ptr, count * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  void poison() { TEST_CUDA(cudaMemset(ptr, 0xFF, count * sizeof(T))); }  // NaN in fp32, fp16 and bf16
};

// A host view (float per-token arrays) with Logit logits: the same arrays, `logits` in place of its own.
template <typename Logit>
cgrpo::PolicyLossBatch<Logit, float> with_logits(const cgrpo::PolicyLossBatch<float>& v, const Logit* logits) {
  cgrpo::PolicyLossBatch<Logit, float> b;
  b.logits = logits;
  b.num_tokens = v.num_tokens;
  b.vocab_size = v.vocab_size;
  b.row_stride = v.row_stride;
  b.target_ids = v.target_ids;
  b.mask = v.mask;
  b.kinds = v.kinds;
  b.advantages = v.advantages;
  b.old_logp = v.old_logp;
  b.ref_logp = v.ref_logp;
  b.rollout_logp = v.rollout_logp;
  b.selection = v.selection;
  b.pg_weights = v.pg_weights;
  b.entropy_weights = v.entropy_weights;
  b.kl_weights = v.kl_weights;
  b.scale = v.scale;
  b.layout = v.layout;
  return b;
}

// A host view's arrays in device memory (logits in Logit, per-token values in float): every array
// the host view passes, and no other. view.layout keeps the host offsets (validation reads them on
// the host); `offsets` is their device copy (nullptr for a padded layout).
template <typename Logit>
struct DeviceBatch {
  DeviceBuffer<Logit> logits;
  DeviceBuffer<int32_t> targets;
  DeviceBuffer<uint8_t> mask, kinds, selection;
  DeviceBuffer<float> adv, old_logp, ref_logp, rollout_logp, w_pg, w_h, w_kl;
  DeviceBuffer<int64_t> device_offsets;
  const int64_t* offsets = nullptr;
  cgrpo::PolicyLossBatch<Logit, float> view;

  // host_logits empty: no logits (view.logits null; the fused linear loss forms them).
  DeviceBatch(const cgrpo::PolicyLossBatch<float>& host, const std::vector<Logit>& host_logits) {
    const size_t T = static_cast<size_t>(std::max<int64_t>(host.num_tokens, 0));
    view = with_logits<Logit>(host, logits.mirror(host_logits.empty() ? nullptr : host_logits.data(), host_logits.size()));
    view.target_ids = targets.mirror(host.target_ids, T);
    view.mask = mask.mirror(host.mask, T);
    view.kinds = kinds.mirror(host.kinds, T);
    view.selection = selection.mirror(host.selection, T);
    view.advantages = adv.mirror(host.advantages, T);
    view.old_logp = old_logp.mirror(host.old_logp, T);
    view.ref_logp = ref_logp.mirror(host.ref_logp, T);
    view.rollout_logp = rollout_logp.mirror(host.rollout_logp, T);
    view.pg_weights = w_pg.mirror(host.pg_weights, T);
    view.entropy_weights = w_h.mirror(host.entropy_weights, T);
    view.kl_weights = w_kl.mirror(host.kl_weights, T);
    const cgrpo::SequenceLayout& L = host.layout;
    offsets = device_offsets.mirror(L.offsets, static_cast<size_t>(std::max<int64_t>(L.num_sequences, 0) + 1));
  }
  DeviceBatch(const DeviceBatch&) = delete;
  DeviceBatch& operator=(const DeviceBatch&) = delete;
};

// Host conversions to and from the logits dtype (round to nearest even, as the kernels store).
template <typename Logit> Logit from_double(double x);
template <> inline float from_double<float>(double x) { return static_cast<float>(x); }
template <> inline __half from_double<__half>(double x) { return __float2half_rn(static_cast<float>(x)); }
template <> inline __nv_bfloat16 from_double<__nv_bfloat16>(double x) { return __float2bfloat16_rn(static_cast<float>(x)); }
inline double to_double(float x) { return x; }
inline double to_double(__half x) { return __half2float(x); }
inline double to_double(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename Logit> const char* dtype_name();
template <> inline const char* dtype_name<float>() { return "fp32"; }
template <> inline const char* dtype_name<__half>() { return "fp16"; }
template <> inline const char* dtype_name<__nv_bfloat16>() { return "bf16"; }

inline double rounded_float(double x) { return static_cast<double>(static_cast<float>(x)); }

// Shapes and contents of one random batch.
struct BatchSpec {
  int64_t num_sequences = 8, max_len = 12, V = 1003, extra_stride = 0;
  bool padded = false;
  double extreme_fraction = 0.1;  // rows with |z| ~ 1e4 (target near the row's maximum)
  double neg_inf_fraction = 0.1;  // rows where 3% of the entries are -inf (never the target)
  bool rollout = false;           // draw rollout_logp (near log p, as old_logp)
  bool selection = false;         // draw batch.selection (30% of the tokens)
  bool entropy_spread = false;    // scale each row's logits by 0.2-3: the rows' H spread out (entropy mask)
};

// The log ratios where a config's loss has a kink (or a metric counts a flag): float and double log p
// differ by ~1e-6, so random batches keep every token's log ratio 1e-3 away from them.
inline std::vector<double> loss_kinks(const cgrpo::LossConfig& c) {
  const cgrpo::RatioConfig& r = c.ratio;
  std::vector<double> k = {std::log1p(-std::min(r.clip_eps_low, 0.999)), std::log1p(r.clip_eps_high),
                           std::log(r.dual_clip_c), 0.0};
  if (c.policy.loss == cgrpo::PolicyLoss::geo_mean) {  // GMPO clips the log ratio itself
    k.push_back(r.clip_eps_high);
    k.push_back(-r.clip_eps_low);
  }
  if (c.policy.loss == cgrpo::PolicyLoss::cispo_cap) k.push_back(std::log(c.policy.cispo_cap.ratio_cap));
  if (std::isfinite(r.two_sided_delta)) k.push_back(std::log(r.two_sided_delta));
  return k;
}

// A random batch whose logits are exactly representable in Logit (`logits` holds them in Logit,
// b.logits the same values in double) and whose per-token values are exactly floats; the caller's
// weights are the library's own for `config` (support::set_library_weights), rounded to float.
// Sequence 0 is fully masked, sequence 1 is empty when packed, sequence 2 is a refinement.
template <typename Logit>
HostBatch random_batch(std::mt19937_64& rng, const BatchSpec& spec, const cgrpo::LossConfig& config,
                       std::vector<Logit>& logits) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  HostBatch b;
  b.V = spec.V;
  b.stride = spec.V + spec.extra_stride;
  b.B = spec.num_sequences;
  b.padded_length = spec.padded ? spec.max_len : 0;
  b.offsets.push_back(0);
  std::uniform_int_distribution<int64_t> len(1, spec.max_len);
  for (int64_t i = 0; i < spec.num_sequences; ++i) {
    const int64_t n = spec.padded ? spec.max_len : (i == 1 ? 0 : len(rng));
    b.offsets.push_back(b.offsets.back() + n);
  }
  b.T = b.offsets.back();
  const int64_t T = b.T, V = b.V, S = b.stride;
  b.logits.assign(static_cast<size_t>(T * S), std::numeric_limits<double>::quiet_NaN());  // NaN padding: never read
  logits.assign(static_cast<size_t>(T * S), from_double<Logit>(std::numeric_limits<double>::quiet_NaN()));
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));
  const double tau = config.temperature;
  const std::vector<double> kinks = loss_kinks(config);
  auto near_kink = [&](double d) {
    for (double k : kinks)
      if (std::fabs(d - k) < 1e-3) return true;
    return false;
  };
  for (int64_t i = 0; i < spec.num_sequences; ++i) {
    const uint8_t kind = i == 2 ? cgrpo::kRefinement : (i == 3 || uni(rng) >= 0.3 ? cgrpo::kInitial : cgrpo::kRefinement);
    const double a = normal(rng);
    for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) {
      const double r = uni(rng);
      const bool extreme = r < spec.extreme_fraction;
      const bool with_neg_inf = !extreme && r < spec.extreme_fraction + spec.neg_inf_fraction;
      const double spread = spec.entropy_spread ? 0.2 + 2.8 * uni(rng) : 1.0;
      double* z = &b.logits[t * S];
      for (int64_t v = 0; v < V; ++v) {
        // Extreme rows: |z| ~ 1e4 of both signs; the top entries lie within a few units of 1e4 (ties
        // in bf16, whose step there is 64), so p is spread over them and no p is within eps of 1.
        double x = extreme ? (uni(rng) < 0.3 ? 1e4 - 2.0 * std::fabs(normal(rng)) : -1e4 + 2.0 * std::fabs(normal(rng)))
                           : 2.0 * spread * normal(rng);
        if (with_neg_inf && uni(rng) < 0.03) x = -INFINITY;
        const Logit q = from_double<Logit>(x);
        logits[t * S + v] = q;
        z[v] = to_double(q);
      }
      int32_t y = tok(rng);
      if (extreme) {  // a target among the entries within 3 of the maximum: log p stays moderate
        const double top = *std::max_element(z, z + V);
        while (z[y] < top - 3.0) y = tok(rng);
      }
      while (z[y] == -INFINITY) y = tok(rng);
      b.targets.push_back(y);
      b.mask.push_back(i == 0 ? 0 : (uni(rng) < 0.85 ? 1 : 0));
      b.kinds.push_back(kind);
      b.adv.push_back(rounded_float(a));
      // old / ref near the current log-prob, so ratios straddle the clip range.
      double m = -INFINITY, s = 0;
      for (int64_t v = 0; v < V; ++v) m = std::max(m, z[v] / tau);
      for (int64_t v = 0; v < V; ++v) s += std::exp(z[v] / tau - m);
      const double lp = z[y] / tau - m - std::log(s);
      // ... but at least 1e-3 away from every kink of the loss (loss_kinks: the clip bounds, the dual
      // clip, the abs KL's 0, ...): float and double log p differ by ~1e-6, and a kink between them
      // flips the token's gradient (a fresh seed found one: abs KL with logp - ref within 1e-6 of 0).
      // rollout_logp is the ratio's reference in verl's bypass mode: it keeps away from them too.
      double old_lp, ref_lp, rollout_lp;
      do old_lp = rounded_float(lp + 0.3 * normal(rng));
      while (near_kink(lp - old_lp));
      do ref_lp = rounded_float(lp + 0.5 * normal(rng));
      while (near_kink(lp - ref_lp));
      do rollout_lp = rounded_float(lp + 0.3 * normal(rng));
      while (near_kink(lp - rollout_lp));
      b.old_logp.push_back(old_lp);
      b.ref_logp.push_back(ref_lp);
      if (spec.rollout) b.rollout_logp.push_back(rollout_lp);
      if (spec.selection) b.selection.push_back(uni(rng) < 0.3 ? 1 : 0);
    }
  }
  const cgrpo::Status st = support::set_library_weights(b, config);
  if (!st.ok()) {
    std::printf("set_library_weights: %s\n", st.message);
    std::exit(1);
  }
  for (auto* w : {&b.w_pg, &b.w_h, &b.w_kl})
    for (double& x : *w) x = rounded_float(x);
  return b;
}

}  // namespace gpu_test
