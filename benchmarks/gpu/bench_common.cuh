// benchmarks/gpu/bench_common.cuh: what the GPU benchmarks share. Error checks that stop the
// program (a benchmark has no one to return a status to), device buffers filled without host
// transfers, event timing (median of repeats), the device-to-device copy roofline, the paper's
// per-token inputs, and the device line / skip message of main().
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <random>
#include <vector>

#include <cgrpo/loss/aggregation.hpp>
#include <cgrpo/loss/config.hpp>
#include <cgrpo/base/layout.hpp>
#include <cgrpo/loss/policy_loss_batch.hpp>
#include <cgrpo/base/status.hpp>

#include "cgrpo/cuda/cgrpo_cuda.cuh"

#define BENCH_CUDA(call)                                                                                      \
  do {                                                                                                        \
    cudaError_t e_ = (call);                                                                                  \
    if (e_ != cudaSuccess) {                                                                                  \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", #call, __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                                           \
    }                                                                                                         \
  } while (0)

#define BENCH_OK(expr)                                            \
  do {                                                            \
    const cgrpo::Status s_ = (expr);                              \
    if (!s_.ok()) {                                               \
      std::fprintf(stderr, "%s failed: %s\n", #expr, s_.message); \
      std::exit(1);                                               \
    }                                                             \
  } while (0)

namespace bench {

// Uniform(-scale, scale) from a hash of the index: no host transfer of T x V values.
template <typename T>
__global__ void fill_uniform(T* x, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ static_cast<uint32_t>(i >> 32) ^ seed;
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    const float u = static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
    x[i] = cgrpo::cuda::LogitTraits<T>::from_float(scale * (2.0f * u - 1.0f));
  }
}

template <typename T>
void fill(T* x, size_t n, uint32_t seed, float scale, cudaStream_t stream) {
  fill_uniform<<<4096, 256, 0, stream>>>(x, n, seed, scale);
  BENCH_CUDA(cudaGetLastError());
}

template <typename T>
T* device_alloc(size_t n) {
  T* p = nullptr;
  BENCH_CUDA(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  return p;
}

template <typename T>
T* device_copy(const std::vector<T>& h) {
  T* p = device_alloc<T>(h.size());
  BENCH_CUDA(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

// Frees each non-null device pointer.
inline void device_free(std::initializer_list<const void*> pointers) {
  for (const void* p : pointers)
    if (p) BENCH_CUDA(cudaFree(const_cast<void*>(p)));
}

// Median milliseconds of fn over `repeats` calls, each between two events on `stream`.
template <typename Fn>
double median_ms(cudaStream_t stream, int repeats, Fn&& fn) {
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  std::vector<float> ms(static_cast<size_t>(repeats));
  for (int r = 0; r < repeats; ++r) {
    BENCH_CUDA(cudaEventRecord(start, stream));
    fn();
    BENCH_CUDA(cudaEventRecord(stop, stream));
    BENCH_CUDA(cudaEventSynchronize(stop));
    BENCH_CUDA(cudaEventElapsedTime(&ms[static_cast<size_t>(r)], start, stop));
  }
  BENCH_CUDA(cudaEventDestroy(start));
  BENCH_CUDA(cudaEventDestroy(stop));
  std::nth_element(ms.begin(), ms.begin() + repeats / 2, ms.end());
  return ms[static_cast<size_t>(repeats / 2)];
}

// The roofline: GB/s of cudaMemcpyAsync D2D moving `bytes` (bytes / 2 read and bytes / 2 written),
// from src into dst (each at least bytes / 2 long), timed as the benchmarks time themselves.
inline double copy_gbps(cudaStream_t stream, void* dst, const void* src, double bytes, int warmup, int repeats) {
  const size_t half = static_cast<size_t>(bytes / 2);
  auto copy = [&] { BENCH_CUDA(cudaMemcpyAsync(dst, src, half, cudaMemcpyDeviceToDevice, stream)); };
  for (int i = 0; i < warmup; ++i) copy();
  const double ms = median_ms(stream, repeats, copy);
  return 2.0 * static_cast<double>(half) / (ms * 1e-3) / 1e9;
}

// The bytes-moved counters every benchmark reports: bytes, GB/s, the copy roofline's GB/s in the
// same run, and the fraction of it.
inline void report_bytes(benchmark::State& state, double bytes, double ms, double roofline_gbps) {
  const double gbps = bytes / (ms * 1e-3) / 1e9;
  state.counters["bytes_GB"] = bytes / 1e9;
  state.counters["GB/s"] = gbps;
  state.counters["copy_GB/s"] = roofline_gbps;
  state.counters["frac_of_copy"] = roofline_gbps > 0 ? gbps / roofline_gbps : 0.0;
}

// The paper's batch shape: padded responses of L tokens (the last 10% padding), 1 refinement per
// group of 8, standard normal advantages, log-probs near -3; the caller's weights are the config's own
// (cgrpo::aggregation_weights). Host arrays, then device copies.
struct PaperTokens {
  int64_t T = 0, L = 0;
  std::vector<int32_t> targets;
  std::vector<uint8_t> mask, kinds;
  std::vector<float> adv, old_logp, rollout_logp, ref_logp, w_pg, w_h;

  PaperTokens(const cgrpo::LossConfig& config, int64_t T_, int64_t V, int64_t L_) : T(T_), L(L_) {
    std::mt19937_64 rng(7);
    std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int64_t t = 0; t < T; ++t) {
      targets.push_back(tok(rng));
      mask.push_back((t % L) < L * 9 / 10 ? 1 : 0);
      kinds.push_back((t / L) % 8 == 0 ? cgrpo::kRefinement : cgrpo::kInitial);
      adv.push_back(normal(rng));
      old_logp.push_back(-3.0f + 0.3f * normal(rng));
      rollout_logp.push_back(old_logp.back() + 0.05f * normal(rng));
      ref_logp.push_back(old_logp.back() + 0.1f * normal(rng));
    }
    w_pg.resize(static_cast<size_t>(T));
    w_h.resize(static_cast<size_t>(T));
    BENCH_OK(cgrpo::aggregation_weights(config, cgrpo::LossTerm::policy, layout(), mask.data(), cgrpo::AggregationScale{},
                                        w_pg.data()));
    BENCH_OK(cgrpo::aggregation_weights(config, cgrpo::LossTerm::entropy, layout(), mask.data(), cgrpo::AggregationScale{},
                                        w_h.data()));
  }
  cgrpo::SequenceLayout layout() const { return cgrpo::SequenceLayout::padded(T / L, L); }
};

// PaperTokens on the device, with log p / H outputs; frees them when it goes.
struct DeviceTokens {
  int32_t* targets;
  uint8_t *mask, *kinds;
  float *adv, *old_logp, *rollout_logp, *ref_logp, *w_pg, *w_h, *logp, *entropy;
  cgrpo::SequenceLayout layout;

  explicit DeviceTokens(const PaperTokens& p)
      : targets(device_copy(p.targets)), mask(device_copy(p.mask)), kinds(device_copy(p.kinds)),
        adv(device_copy(p.adv)), old_logp(device_copy(p.old_logp)), rollout_logp(device_copy(p.rollout_logp)),
        ref_logp(device_copy(p.ref_logp)), w_pg(device_copy(p.w_pg)), w_h(device_copy(p.w_h)),
        logp(device_alloc<float>(static_cast<size_t>(p.T))), entropy(device_alloc<float>(static_cast<size_t>(p.T))),
        layout(p.layout()) {}
  DeviceTokens(const DeviceTokens&) = delete;
  DeviceTokens& operator=(const DeviceTokens&) = delete;
  ~DeviceTokens() {
    device_free({targets, mask, kinds, adv, old_logp, rollout_logp, ref_logp, w_pg, w_h, logp, entropy});
  }

  // The batch (logits left null) with the caller's weights (computed_weights: the loss computes them).
  template <typename Logit>
  cgrpo::PolicyLossBatch<Logit, float> batch(int64_t T, int64_t V, bool computed_weights) const {
    cgrpo::PolicyLossBatch<Logit, float> b;
    b.num_tokens = T;
    b.vocab_size = V;
    b.target_ids = targets;
    b.mask = mask;
    b.kinds = kinds;
    b.advantages = adv;
    b.old_logp = old_logp;
    b.rollout_logp = rollout_logp;
    b.ref_logp = ref_logp;
    if (!computed_weights) {
      b.pg_weights = w_pg;
      b.entropy_weights = w_h;
    }
    b.layout = layout;
    return b;
  }
};

// main()'s first step: prints the device, or a skip line when there is none (returns false: exit 0,
// no benchmark ran).
inline bool print_device_or_skip() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    std::printf("SKIPPED: no CUDA device found (%s); no GPU benchmark ran\n",
                err == cudaSuccess ? "0 devices" : cudaGetErrorString(err));
    return false;
  }
  cudaDeviceProp prop{};
  BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, L2 %.0f MB, %.1f GiB\n", prop.name, prop.l2CacheSize / 1e6,
              prop.totalGlobalMem / 1073741824.0);
  return true;
}

// The rest of main(): Google Benchmark over what register_all() registered.
inline int run_benchmarks(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace bench
