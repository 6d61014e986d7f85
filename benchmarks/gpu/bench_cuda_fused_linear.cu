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
#include <cuda_bf16.h>

#include <map>
#include <string>
#include <tuple>

#include "bench_common.cuh"
#include "cgrpo/cuda/fused_linear_policy_loss.cuh"

namespace {

using namespace bench;

constexpr int kWarmup = 2;
constexpr int kRepeats = 7;

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
  fill(h, static_cast<size_t>(T * H), 1u, 1.0f, stream);
  fill(W, static_cast<size_t>(V * H), 2u, 9.0f / std::sqrt(static_cast<float>(H)), stream);

  const cgrpo::LossConfig config = cgrpo::paper_critique_grpo().loss;
  const PaperTokens tokens(config, T, V, L);
  const DeviceTokens d(tokens);
  const cgrpo::PolicyLossBatch<Logit, float> batch = d.batch<Logit>(T, V, false);
  cgrpo::LossMetrics metrics;
  cgrpo::PolicyLossOutputs<Logit, float> out;
  out.logp = d.logp;
  out.entropy = d.entropy;
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
    ms = median_ms(stream, kRepeats, run);
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

  device_free({h, W, gh, gw, z, ws});
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
  if (!bench::print_device_or_skip()) return 0;
  register_all();
  return bench::run_benchmarks(argc, argv);
}
