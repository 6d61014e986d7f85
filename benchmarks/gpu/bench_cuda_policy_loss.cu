// benchmarks/gpu/bench_cuda_policy_loss.cu: the CUDA policy loss against the copy roofline.
// Each case reports bytes moved and the fraction of a device-to-device copy of as many bytes, same run.
//
// Timing: CUDA events around each call, median of kRepeats calls after kWarmup calls, per
// benchmark iteration (manual time). Bytes moved count the logits only (the per-token arrays are
// O(T)): forward+backward = logits read once + gradient written once (2 T V s; the kernel's second
// read of a row hits L2 when it can), forward only and log-probs = T V s. A plan with a pre-pass
// (cgrpo::plan_passes: the coupled configs, cfg 1, 2) takes two passes: forward+backward reads the
// logits twice from DRAM and writes the gradient (3 T V s), forward only reads them once. The copy reference moves the same bytes:
// cudaMemcpyAsync D2D of half of them (each copied byte is read and written).
//   cfg 0: the paper's configuration (one fused kernel);
//   cfg 1: verl bypass ppo_clip with seq_sum_k2 rejection and k3 KL (computed weights, rollout_logp);
//   cfg 2: TRL luspo (sequence-level ratio differentiated through the row mean, computed weights).
#include <cuda_bf16.h>

#include <string>

#include <cgrpo/presets/trl_presets.hpp>
#include <cgrpo/presets/verl_options.hpp>
#include <cgrpo/presets/verl_presets.hpp>

#include "bench_common.cuh"

namespace {

using namespace bench;

constexpr int kWarmup = 3;
constexpr int kRepeats = 15;

enum class Pass { forward_backward = 0, forward = 1, logprobs = 2, forward_backward_in_place = 3 };

// The paper's configuration: 8 responses per group of which 1 refinement, responses of 1024
// tokens (padded), 10% padding, f(p) shaping, entropy token-mean.
cgrpo::LossConfig bench_config(int cfg) {
  if (cfg == 1) {
    cgrpo::LossConfig c = cgrpo::verl_bypass_ppo_clip().loss;
    c.kl.estimator = cgrpo::KlEstimator::k3;
    c.kl.coef = 0.1;
    c.entropy.coef = 0.01;
    BENCH_OK(cgrpo::verl_rollout_rs("seq_sum_k2", "0.5", &c.off_policy.rollout));
    return c;
  }
  if (cfg == 2) return cgrpo::trl_luspo().loss;
  return cgrpo::paper_critique_grpo().loss;
}

template <typename Logit>
void bm_policy_loss(benchmark::State& state) {
  const int64_t T = state.range(0), V = state.range(1);
  const Pass pass = static_cast<Pass>(state.range(2));
  const int cfg = static_cast<int>(state.range(3));
  const bool computed_weights = cfg != 0;  // the coupled configs compute their weights (rejection changes the denominators)
  const int64_t L = 1024, B = T / L;
  const size_t n = static_cast<size_t>(T * V);
  cudaStream_t stream;
  BENCH_CUDA(cudaStreamCreate(&stream));

  const cgrpo::LossConfig config = bench_config(cfg);
  // The batch's inputs (DeviceTokens::batch: rollout_logp given, no selection) and the pass plan they get.
  const bool two_pass = cgrpo::plan_passes(config, cgrpo::PassInputs{computed_weights, false, true}).any_prepass;
  const double bytes = static_cast<double>(n * sizeof(Logit)) * (pass == Pass::forward || pass == Pass::logprobs ? 1.0
                                                                  : two_pass ? 3.0 : 2.0);
  // The roofline first, on buffers of its own (freed before the loss's): a D2D copy of as many bytes.
  double roofline_gbps = 0;
  {
    char* src = device_alloc<char>(static_cast<size_t>(bytes / 2));
    char* dst = device_alloc<char>(static_cast<size_t>(bytes / 2));
    BENCH_CUDA(cudaMemsetAsync(src, 1, static_cast<size_t>(bytes / 2), stream));
    roofline_gbps = copy_gbps(stream, dst, src, bytes, kWarmup, kRepeats);
    device_free({src, dst});
  }

  Logit* logits = device_alloc<Logit>(n);
  // In place, the gradient overwrites the logits: later calls run on gradient values (finite, small),
  // which changes nothing in the work done per element.
  Logit* grad = pass == Pass::forward_backward ? device_alloc<Logit>(n)
                : pass == Pass::forward_backward_in_place ? logits : nullptr;
  fill(logits, n, 12345u, 4.0f, stream);  // uniform(-4, 4)

  const PaperTokens tokens(config, T, V, L);
  const DeviceTokens d(tokens);
  const size_t ws_bytes = pass == Pass::logprobs ? cgrpo::cuda::token_logprobs_workspace_size()
                                                 : cgrpo::cuda::fused_policy_loss_workspace_size(config, T, B);
  void* ws = device_alloc<char>(ws_bytes);

  cgrpo::PolicyLossBatch<Logit, float> batch = d.batch<Logit>(T, V, computed_weights);
  batch.logits = logits;
  cgrpo::LossMetrics metrics;
  cgrpo::PolicyLossOutputs<Logit, float> out;
  out.grad_logits = grad;
  out.logp = d.logp;
  out.entropy = d.entropy;
  out.metrics = &metrics;

  auto run = [&] {
    if (pass == Pass::logprobs)
      BENCH_OK(cgrpo::cuda::token_logprobs(logits, T, V, 0, d.targets, 1.0, d.logp, d.entropy, ws, ws_bytes, stream));
    else
      BENCH_OK(cgrpo::cuda::fused_policy_loss(config, batch, out, nullptr, ws, ws_bytes, stream));
  };
  for (int i = 0; i < kWarmup; ++i) run();
  if (pass == Pass::logprobs) BENCH_OK(cgrpo::cuda::token_logprobs_status(ws, stream));
  else BENCH_OK(cgrpo::cuda::policy_loss_metrics(ws, stream, &metrics));  // the inputs are valid: any flag is a bug

  double kernel_ms = 0;
  for (auto _ : state) {
    kernel_ms = median_ms(stream, kRepeats, run);
    state.SetIterationTime(kernel_ms * 1e-3);
  }
  report_bytes(state, bytes, kernel_ms, roofline_gbps);
  state.counters["workspace_MB"] = static_cast<double>(ws_bytes) / 1e6;
  state.counters["passes"] = two_pass ? 2 : 1;
  const char* pass_label[] = {" fwd+bwd", " fwd", " logprobs", " fwd+bwd in place"};
  const char* cfg_label[] = {"", " verl bypass + seq rejection (two passes)", " TRL luspo (two passes)"};
  state.SetLabel(std::string(cgrpo::cuda::LogitTraits<Logit>::name) + pass_label[static_cast<int>(pass)] + cfg_label[cfg]);

  device_free({logits, pass == Pass::forward_backward ? grad : nullptr, ws});
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
  if (!bench::print_device_or_skip()) return 0;
  register_all();
  return bench::run_benchmarks(argc, argv);
}
