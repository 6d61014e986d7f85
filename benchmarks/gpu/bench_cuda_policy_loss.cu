// benchmarks/gpu/bench_cuda_policy_loss.cu: the CUDA policy loss against the copy roofline.
// Each case reports bytes moved and the fraction of a device-to-device copy of as many bytes, same run.
//
// Timing: CUDA events around each call, median of kRepeats calls after kWarmup calls, per
// benchmark iteration (manual time). Bytes moved count the logits only (the per-token arrays are
// O(T)): forward+backward = logits read once + gradient written once (2 T V s; the kernel's second
// read of a row hits L2 when it can), forward only and log-probs = T V s. The coupled configs
// (cfg 1, 2) take two passes: forward+backward reads the logits twice from DRAM and writes the
// gradient (3 T V s), forward only reads them once. The copy reference moves the same bytes:
// cudaMemcpyAsync D2D of half of them (each copied byte is read and written).
//   cfg 0: the paper's configuration (one fused kernel);
//   cfg 1: verl bypass ppo_clip with seq_sum_k2 rejection and k3 KL (computed weights, rollout_logp);
//   cfg 2: TRL luspo (sequence-level ratio differentiated through the row mean, computed weights).
#include <benchmark/benchmark.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <cgrpo/aggregation.hpp>
#include <cgrpo/config.hpp>
#include <cgrpo/trl_presets.hpp>
#include <cgrpo/verl_options.hpp>
#include <cgrpo/verl_presets.hpp>

#include "kernels/cgrpo_cuda.cuh"

namespace {

constexpr int kWarmup = 3;
constexpr int kRepeats = 15;

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

// Logits ~ uniform(-4, 4) from a hash of the index: no host transfer of T x V values.
template <typename Logit>
__global__ void fill_logits(Logit* z, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ static_cast<uint32_t>(i >> 32) ^ seed;
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    const float u = static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
    z[i] = cgrpo::cuda::LogitTraits<Logit>::from_float(8.0f * u - 4.0f);
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

// Median milliseconds of fn over kRepeats calls, each between two events.
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

enum class Pass { forward_backward = 0, forward = 1, logprobs = 2, forward_backward_in_place = 3 };

// The paper's configuration: 8 responses per group of which 1 refinement, responses of 1024
// tokens (padded), 10% padding, f(p) shaping, entropy token-mean.
cgrpo::LossConfig bench_config(int cfg) {
  if (cfg == 1) {
    cgrpo::LossConfig c = cgrpo::verl_bypass_ppo_clip();
    c.kl = cgrpo::KlEstimator::k3;
    c.kl_coef = 0.1;
    c.entropy_coef = 0.01;
    BENCH_OK(cgrpo::verl_rollout_rs("seq_sum_k2", "0.5", &c.rollout));
    return c;
  }
  if (cfg == 2) return cgrpo::trl_luspo();
  return cgrpo::paper_critique_grpo();
}

template <typename Logit>
void bm_policy_loss(benchmark::State& state) {
  const int64_t T = state.range(0), V = state.range(1);
  const Pass pass = static_cast<Pass>(state.range(2));
  const int cfg = static_cast<int>(state.range(3));
  const bool coupled = cfg != 0;
  const int64_t L = 1024, B = T / L;
  const size_t n = static_cast<size_t>(T * V);
  cudaStream_t stream;
  BENCH_CUDA(cudaStreamCreate(&stream));

  Logit* logits = device_alloc<Logit>(n);
  // In place, the gradient overwrites the logits: later calls run on gradient values (finite, small),
  // which changes nothing in the work done per element.
  Logit* grad = pass == Pass::forward_backward ? device_alloc<Logit>(n)
                : pass == Pass::forward_backward_in_place ? logits : nullptr;
  const bool writes = grad != nullptr;
  fill_logits<<<4096, 256, 0, stream>>>(logits, n, 12345u);
  BENCH_CUDA(cudaGetLastError());

  const cgrpo::LossConfig config = bench_config(cfg);
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<int32_t> targets(T);
  std::vector<uint8_t> mask(T), kinds(T);
  std::vector<float> adv(T), old_logp(T), w_pg(T), w_h(T), rollout_logp(T), ref_logp(T);
  for (int64_t t = 0; t < T; ++t) {
    targets[t] = tok(rng);
    mask[t] = (t % L) < L * 9 / 10 ? 1 : 0;
    kinds[t] = (t / L) % 8 == 0 ? cgrpo::kRefinement : cgrpo::kInitial;
    adv[t] = normal(rng);
    old_logp[t] = -3.0f + 0.3f * normal(rng);
    rollout_logp[t] = old_logp[t] + 0.05f * normal(rng);
    ref_logp[t] = old_logp[t] + 0.1f * normal(rng);
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
  float* d_rollout = device_copy(rollout_logp);
  float* d_ref = device_copy(ref_logp);
  float* d_logp = device_alloc<float>(T);
  float* d_entropy = device_alloc<float>(T);
  const size_t ws_bytes = pass == Pass::logprobs ? cgrpo::cuda::token_logprobs_workspace_size()
                                                 : cgrpo::cuda::fused_policy_loss_workspace_size(config, T, B);
  void* ws = device_alloc<char>(ws_bytes);

  cgrpo::PolicyLossBatch<Logit, float> batch;
  batch.logits = logits;
  batch.num_tokens = T;
  batch.vocab_size = V;
  batch.target_ids = d_targets;
  batch.mask = d_mask;
  batch.kinds = d_kinds;
  batch.advantages = d_adv;
  batch.old_logp = d_old;
  if (!coupled) {  // the coupled configs compute their weights (rejection changes the denominators)
    batch.pg_weights = d_w_pg;
    batch.entropy_weights = d_w_h;
  }
  batch.rollout_logp = d_rollout;
  batch.ref_logp = d_ref;
  batch.layout = layout;
  cgrpo::LossMetrics metrics;
  cgrpo::PolicyLossOutputs<Logit, float> out;
  out.grad_logits = grad;
  out.logp = d_logp;
  out.entropy = d_entropy;
  out.metrics = &metrics;

  auto run = [&] {
    if (pass == Pass::logprobs)
      BENCH_OK(cgrpo::cuda::token_logprobs(logits, T, V, 0, d_targets, 1.0, d_logp, d_entropy, ws, ws_bytes, stream));
    else
      BENCH_OK(cgrpo::cuda::fused_policy_loss(config, batch, out, nullptr, ws, ws_bytes, stream));
  };
  const double bytes = static_cast<double>(n * sizeof(Logit)) * (writes ? (coupled ? 3.0 : 2.0) : 1.0);
  // The copy reference moves the same bytes: half of them read, half written.
  const bool own_copy_dst = pass != Pass::forward_backward;
  Logit* copy_dst = own_copy_dst ? device_alloc<Logit>(static_cast<size_t>(bytes / 2) / sizeof(Logit) + 1) : grad;
  const size_t copy_bytes = static_cast<size_t>(bytes / 2);
  auto copy = [&] { BENCH_CUDA(cudaMemcpyAsync(copy_dst, logits, copy_bytes, cudaMemcpyDeviceToDevice, stream)); };

  for (int i = 0; i < kWarmup; ++i) copy();
  const double copy_ms = median_ms(stream, copy);
  for (int i = 0; i < kWarmup; ++i) run();
  if (pass == Pass::logprobs) BENCH_OK(cgrpo::cuda::token_logprobs_status(ws, stream));
  else BENCH_OK(cgrpo::cuda::policy_loss_metrics(ws, stream, &metrics));  // the inputs are valid: any flag is a bug

  double kernel_ms = 0;
  for (auto _ : state) {
    kernel_ms = median_ms(stream, run);
    state.SetIterationTime(kernel_ms * 1e-3);
  }
  const double gbps = bytes / (kernel_ms * 1e-3) / 1e9;
  const double copy_gbps = bytes / (copy_ms * 1e-3) / 1e9;
  state.counters["bytes_GB"] = bytes / 1e9;
  state.counters["GB/s"] = gbps;
  state.counters["copy_GB/s"] = copy_gbps;
  state.counters["frac_of_copy"] = gbps / copy_gbps;
  state.counters["workspace_MB"] = static_cast<double>(ws_bytes) / 1e6;
  const char* pass_label[] = {" fwd+bwd", " fwd", " logprobs", " fwd+bwd in place"};
  const char* cfg_label[] = {"", " verl bypass + seq rejection (two passes)", " TRL luspo (two passes)"};
  state.SetLabel(std::string(cgrpo::cuda::LogitTraits<Logit>::name) + pass_label[static_cast<int>(pass)] + cfg_label[cfg]);

  if (own_copy_dst) BENCH_CUDA(cudaFree(copy_dst));
  if (pass == Pass::forward_backward) BENCH_CUDA(cudaFree(grad));
  for (void* p : {static_cast<void*>(logits), static_cast<void*>(d_targets),
                  static_cast<void*>(d_mask), static_cast<void*>(d_kinds), static_cast<void*>(d_adv),
                  static_cast<void*>(d_old), static_cast<void*>(d_w_pg), static_cast<void*>(d_w_h),
                  static_cast<void*>(d_rollout), static_cast<void*>(d_ref),
                  static_cast<void*>(d_logp), static_cast<void*>(d_entropy), ws})
    if (p) BENCH_CUDA(cudaFree(p));
  BENCH_CUDA(cudaStreamDestroy(stream));
}

void register_all() {
  const char* pass_names[] = {"fwd_bwd", "fwd", "logprobs", "fwd_bwd_in_place"};
  for (int pass : {0, 3, 1, 2})
    for (int64_t T : {4096, 16384})
      for (int64_t V : {32000, 151936}) {
        const char* pass_name = pass_names[pass];
        benchmark::RegisterBenchmark((std::string("policy_loss/bf16/") + pass_name).c_str(),
                                     bm_policy_loss<__nv_bfloat16>)
            ->Args({T, V, pass, 0})->ArgNames({"T", "V", "pass", "cfg"})->UseManualTime()->Iterations(5)->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark((std::string("policy_loss/fp32/") + pass_name).c_str(), bm_policy_loss<float>)
            ->Args({T, V, pass, 0})->ArgNames({"T", "V", "pass", "cfg"})->UseManualTime()->Iterations(5)->Unit(benchmark::kMillisecond);
      }
  // The two-pass cost: coupled configs, bf16, V = 151936 (compare with cfg 0 of the same T).
  for (int cfg : {1, 2})
    for (int pass : {0, 1})
      for (int64_t T : {4096, 16384})
        benchmark::RegisterBenchmark((std::string("policy_loss/bf16/") + pass_names[pass] + "/coupled").c_str(),
                                     bm_policy_loss<__nv_bfloat16>)
            ->Args({T, 151936, pass, cfg})->ArgNames({"T", "V", "pass", "cfg"})->UseManualTime()->Iterations(5)->Unit(benchmark::kMillisecond);
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
  std::printf("device: %s, L2 %.0f MB, %.1f GiB\n", prop.name, prop.l2CacheSize / 1e6, prop.totalGlobalMem / 1073741824.0);
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
