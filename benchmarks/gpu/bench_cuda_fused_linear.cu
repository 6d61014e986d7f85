// benchmarks/gpu/bench_cuda_fused_linear.cu: the CUDA fused LM head + loss against the composed GPU path
// (one cuBLAS GEMM into [T, V], cuda::fused_policy_loss in place, the two backward GEMMs): time, TFLOP/s
// as a fraction of the forward GEMM alone (same run), and the extra device memory each path allocates.
//
// Work: 3 GEMMs of 2 T H V flops (forward, dJ/dh, dJ/dW) in both paths, plus the loss kernel's
// passes over the logits. Extra memory: the composed path's [T, V] logits (its gradient is written
// in place) + the loss workspace; the fused path's workspace (the loss's O(T) part + the [chunk, V]
// buffer). Inputs (h, W, per-token arrays) and outputs (dJ/dh in bf16, dJ/dW in fp32) are the same
// for both and not counted; cuBLAS's own workspace neither (the same handle serves both).
// Timing: CUDA events around each call, median of kRepeats calls after kWarmup.
#include <benchmark/benchmark.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <cgrpo/aggregation.hpp>
#include <cgrpo/config.hpp>

#include "kernels/cgrpo_cuda.cuh"
#include "kernels/fused_linear_policy_loss.cuh"

namespace {

constexpr int kWarmup = 2;
constexpr int kRepeats = 7;

#define BENCH_CUDA(call)                                                                           \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) {                                                                       \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", #call, __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                                \
    }                                                                                              \
  } while (0)

#define BENCH_OK(expr)                                                                \
  do {                                                                                \
    const cgrpo::Status s_ = (expr);                                                  \
    if (!s_.ok()) {                                                                   \
      std::fprintf(stderr, "%s failed: %s\n", #expr, s_.message);                     \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

// Uniform(-scale, scale) from a hash of the index: no host transfer of large arrays.
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

template <typename Fn>
double median_ms(cudaStream_t stream, Fn&& fn) {
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  std::vector<float> ms(kRepeats);
  for (int r = 0; r < kRepeats; ++r) {
    BENCH_CUDA(cudaEventRecord(start, stream));
    fn();
    BENCH_CUDA(cudaEventRecord(stop, stream));
    BENCH_CUDA(cudaEventSynchronize(stop));
    BENCH_CUDA(cudaEventElapsedTime(&ms[r], start, stop));
  }
  BENCH_CUDA(cudaEventDestroy(start));
  BENCH_CUDA(cudaEventDestroy(stop));
  std::nth_element(ms.begin(), ms.begin() + kRepeats / 2, ms.end());
  return ms[kRepeats / 2];
}

// Forward GEMM time per (T, H, V): the roofline of both paths.
std::map<std::tuple<int64_t, int64_t, int64_t>, double> g_gemm_ms;

enum class Path { gemm = 0, composed = 1, fused = 2 };

// The paper's configuration on bf16 hidden states and head: responses of 1024 tokens, 1 refinement
// per group of 8, 10% padding. range(3): path; range(4): chunk rows (fused; 0 = the default budget).
void bm_linear(benchmark::State& state) {
  using Logit = __nv_bfloat16;
  const int64_t T = state.range(0), H = state.range(1), V = state.range(2);
  const Path path = static_cast<Path>(state.range(3));
  const int64_t L = 1024, B = T / L;
  cudaStream_t stream;
  BENCH_CUDA(cudaStreamCreate(&stream));
  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) std::exit(1);
  BENCH_OK(cgrpo::cuda::cublas_status(cublasSetStream(handle, stream), "cublasSetStream", __FILE__, __LINE__));

  Logit* h = device_alloc<Logit>(T * H);
  Logit* W = device_alloc<Logit>(V * H);
  Logit* gh = device_alloc<Logit>(T * H);
  float* gw = device_alloc<float>(V * H);
  fill_uniform<<<4096, 256, 0, stream>>>(h, static_cast<size_t>(T * H), 1u, 1.0f);
  fill_uniform<<<4096, 256, 0, stream>>>(W, static_cast<size_t>(V * H), 2u, 9.0f / std::sqrt(static_cast<float>(H)));
  BENCH_CUDA(cudaGetLastError());

  const cgrpo::LossConfig config = cgrpo::paper_critique_grpo();
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<int32_t> targets(T);
  std::vector<uint8_t> mask(T), kinds(T);
  std::vector<float> adv(T), old_logp(T), w_pg(T), w_h(T);
  for (int64_t t = 0; t < T; ++t) {
    targets[t] = tok(rng);
    mask[t] = (t % L) < L * 9 / 10 ? 1 : 0;
    kinds[t] = (t / L) % 8 == 0 ? cgrpo::kRefinement : cgrpo::kInitial;
    adv[t] = normal(rng);
    old_logp[t] = -3.0f + 0.3f * normal(rng);
  }
  const cgrpo::SequenceLayout layout = cgrpo::SequenceLayout::padded(B, L);
  BENCH_OK(cgrpo::aggregation_weights(config.pg_aggregation, layout, mask.data(), cgrpo::AggregationScale{}, w_pg.data()));
  BENCH_OK(cgrpo::aggregation_weights(config.entropy_aggregation, layout, mask.data(), cgrpo::AggregationScale{}, w_h.data()));
  int32_t* d_targets = device_copy(targets);
  uint8_t* d_mask = device_copy(mask);
  uint8_t* d_kinds = device_copy(kinds);
  float* d_adv = device_copy(adv);
  float* d_old = device_copy(old_logp);
  float* d_w_pg = device_copy(w_pg);
  float* d_w_h = device_copy(w_h);
  float* d_logp = device_alloc<float>(T);
  float* d_entropy = device_alloc<float>(T);

  cgrpo::PolicyLossBatch<Logit, float> batch;
  batch.num_tokens = T;
  batch.vocab_size = V;
  batch.target_ids = d_targets;
  batch.mask = d_mask;
  batch.kinds = d_kinds;
  batch.advantages = d_adv;
  batch.old_logp = d_old;
  batch.pg_weights = d_w_pg;
  batch.entropy_weights = d_w_h;
  batch.layout = layout;
  cgrpo::LossMetrics metrics;
  cgrpo::PolicyLossOutputs<Logit, float> out;
  out.logp = d_logp;
  out.entropy = d_entropy;
  out.metrics = &metrics;

  // The extra memory of each path, allocated here.
  cgrpo::LinearChunking chunking;
  chunking.tokens = state.range(4);
  size_t extra = 0;
  Logit* z = nullptr;
  void* ws = nullptr;
  if (path == Path::fused) {
    extra = cgrpo::cuda::fused_linear_policy_loss_workspace_size<Logit>(config, T, B, V, chunking);
  } else {
    extra = static_cast<size_t>(T * V) * sizeof(Logit) +
            (path == Path::composed ? cgrpo::cuda::fused_policy_loss_workspace_size(config, T, B) : 0);
    z = device_alloc<Logit>(static_cast<size_t>(T * V));
  }
  if (path != Path::gemm) ws = device_alloc<char>(path == Path::fused ? extra : extra - T * V * sizeof(Logit));

  auto run = [&] {
    if (path == Path::gemm) {
      BENCH_OK(cgrpo::cuda::gemm_logits(handle, h, H, T, H, W, H, V, z, V, 0.0f));
    } else if (path == Path::composed) {
      BENCH_OK(cgrpo::cuda::gemm_logits(handle, h, H, T, H, W, H, V, z, V, 0.0f));
      cgrpo::PolicyLossBatch<Logit, float> b = batch;
      b.logits = z;
      cgrpo::PolicyLossOutputs<Logit, float> o = out;
      o.grad_logits = z;
      BENCH_OK(cgrpo::cuda::fused_policy_loss(config, b, o, nullptr, ws, extra - T * V * sizeof(Logit), stream));
      BENCH_OK(cgrpo::cuda::gemm_weight_grad(handle, z, V, T, V, h, H, H, gw, H, false));
      BENCH_OK(cgrpo::cuda::gemm_hidden_grad(handle, z, V, T, V, W, H, H, gh, H));
    } else {
      cgrpo::LinearHead<Logit> head{h, H, 0, W, 0, nullptr};
      cgrpo::LinearHeadGrads<Logit, float> grads;
      grads.grad_hidden = gh;
      grads.grad_weight = gw;
      BENCH_OK(cgrpo::cuda::fused_linear_policy_loss(handle, config, batch, head, out, grads, nullptr, ws, extra, stream,
                                                     chunking));
    }
  };
  for (int i = 0; i < kWarmup; ++i) run();
  if (path != Path::gemm) BENCH_OK(cgrpo::cuda::policy_loss_metrics(ws, stream, &metrics));  // valid inputs: a flag is a bug

  double ms = 0;
  for (auto _ : state) {
    ms = median_ms(stream, run);
    state.SetIterationTime(ms * 1e-3);
  }
  const double flops = (path == Path::gemm ? 2.0 : 6.0) * static_cast<double>(T) * H * V;
  const auto key = std::make_tuple(T, H, V);
  if (path == Path::gemm) g_gemm_ms[key] = ms;
  const auto it = g_gemm_ms.find(key);
  const double gemm_tflops = it == g_gemm_ms.end() ? 0.0 : 2.0 * T * H * V / (it->second * 1e-3) / 1e12;
  state.counters["TFLOP/s"] = flops / (ms * 1e-3) / 1e12;
  state.counters["frac_of_gemm"] = gemm_tflops > 0 ? flops / (ms * 1e-3) / 1e12 / gemm_tflops : 0.0;
  state.counters["extra_GB"] = static_cast<double>(extra) / 1e9;
  int64_t rows = 0;
  (void)cgrpo::chunk_rows(chunking, T, V, sizeof(Logit), &rows);
  state.counters["chunk_rows"] = path == Path::fused ? static_cast<double>(rows) : static_cast<double>(T);
  const char* names[] = {"forward GEMM", "composed", "fused linear"};
  state.SetLabel(std::string("bf16 ") + names[static_cast<int>(path)]);

  for (void* p : {static_cast<void*>(h), static_cast<void*>(W), static_cast<void*>(gh), static_cast<void*>(gw),
                  static_cast<void*>(z), ws, static_cast<void*>(d_targets), static_cast<void*>(d_mask),
                  static_cast<void*>(d_kinds), static_cast<void*>(d_adv), static_cast<void*>(d_old),
                  static_cast<void*>(d_w_pg), static_cast<void*>(d_w_h), static_cast<void*>(d_logp),
                  static_cast<void*>(d_entropy)})
    if (p) BENCH_CUDA(cudaFree(p));
  cublasDestroy(handle);
  BENCH_CUDA(cudaStreamDestroy(stream));
}

void register_all() {
  struct Shape {
    int64_t T, H, V;
  };
  for (const Shape& s : {Shape{4096, 4096, 32000}, Shape{4096, 4096, 151936}, Shape{16384, 4096, 151936}}) {
    auto reg = [&](const char* name, int path, int64_t chunk) {
      benchmark::RegisterBenchmark(name, bm_linear)
          ->Args({s.T, s.H, s.V, path, chunk})
          ->ArgNames({"T", "H", "V", "path", "chunk"})
          ->UseManualTime()
          ->Iterations(1)
          ->Unit(benchmark::kMillisecond);
    };
    reg("linear/bf16/gemm", 0, 0);
    reg("linear/bf16/composed", 1, 0);
    reg("linear/bf16/fused", 2, 0);
    reg("linear/bf16/fused", 2, 4096);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    std::printf("SKIPPED: no CUDA device found (%s); no GPU benchmark ran\n",
                err == cudaSuccess ? "0 devices" : cudaGetErrorString(err));
    return 0;
  }
  cudaDeviceProp prop{};
  BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %.1f GiB\n", prop.name, prop.totalGlobalMem / 1073741824.0);
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
