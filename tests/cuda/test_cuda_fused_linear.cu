// tests/cuda/test_cuda_fused_linear.cu: the CUDA fused LM head + loss and the log-prob pass from hidden
// states, against the CPU path in double (the logits-level loss on h W^T + b, backward GEMMs in double)
// and against the composed GPU path (one cuBLAS GEMM into [T, V], cuda::fused_policy_loss, two GEMMs).
// fp32 and bf16; chunks of 1 row, odd, and more than T; strides, bias, in place, accumulate; every
// config of the catalog (tests/support/catalog.hpp), one-pass and two-pass plans (row and batch
// coupling, computed weights: each chunk's logits formed twice). Exits 77 (CTest: skipped) when no
// CUDA device is present. CGRPO_GPU_TEST_QUICK=1 (gpu-check under compute-sanitizer): the same
// configs and layouts at an eighth of the vocabulary.
#include <cstring>
#include <vector>

#include "cgrpo/cuda/fused_linear_policy_loss.cuh"
#include "policy_loss_checks.cuh"
#include "test_seed.hpp"

namespace {

using namespace gpu_test;
using cgrpo::LossConfig;
using cgrpo::LossMetrics;

// A batch whose logits are h W^T + b with h, W and b exact in Logit; b.logits holds them in double.
struct HeadProblem {
  HostBatch b;
  int64_t H = 0;
  std::vector<double> h, W, bias;
};

// The vocabulary of a problem: full, or under CGRPO_GPU_TEST_QUICK an eighth of it (odd, as the full
// sizes are, so rows stay ragged against the kernels' vector width).
int64_t vocab(int64_t full) { return quick_matrix() ? (full / 8) | 1 : full; }

// x rounded to Logit, in double.
template <typename Logit>
double exact_in(double x) {
  return to_double(from_double<Logit>(x));
}

// A float log-prob near lp (lp + sigma N(0, 1)), whose log ratio to lp is 1e-2 away from every kink.
double near_log_prob(std::mt19937_64& rng, double lp, double sigma, const std::vector<double>& kinks) {
  std::normal_distribution<double> normal(0.0, 1.0);
  for (;;) {
    const double x = rounded_float(lp + sigma * normal(rng));
    bool near = false;
    for (double k : kinks) near = near || std::fabs(lp - x - k) < 1e-2;
    if (!near) return x;
  }
}

// One draw of a problem: random_batch's tokens (its inputs from `in`), then h, W and b, the logits
// h W^T + b in double, and old / ref / rollout log-probs near the new log p, away from the kinks (as
// random_batch does).
template <typename Logit>
HeadProblem draw_problem(std::mt19937_64& rng, const LossConfig& config, const BatchInputs& in, int64_t V, int64_t H,
                         bool with_bias) {
  BatchSpec spec;
  spec.V = V;
  spec.num_sequences = 6;
  spec.max_len = 11;
  spec.extreme_fraction = 0;
  spec.neg_inf_fraction = 0;
  spec.rollout = in.rollout;
  spec.selection = in.selection;
  std::vector<Logit> unused;
  HeadProblem p;
  p.b = random_batch<Logit>(rng, spec, config, unused);
  p.b.computed_weights = in.computed;
  p.b.scale.length = in.scale_length * static_cast<double>(p.b.B);
  p.H = H;
  const int64_t T = p.b.T;
  std::normal_distribution<double> normal(0.0, 1.0);
  p.h.resize(T * H);
  p.W.resize(V * H);
  for (double& x : p.h) x = exact_in<Logit>(normal(rng));
  for (double& x : p.W) x = exact_in<Logit>(2.0 * normal(rng) / std::sqrt(static_cast<double>(H)));
  if (with_bias) {
    p.bias.resize(V);
    for (double& x : p.bias) x = exact_in<Logit>(0.5 * normal(rng));
  }
  const std::vector<double> kinks = loss_kinks(config);
  for (int64_t t = 0; t < T; ++t) {
    double* z = &p.b.logits[t * p.b.stride];
    for (int64_t v = 0; v < V; ++v) {
      double s = with_bias ? p.bias[v] : 0.0;
      for (int64_t k = 0; k < H; ++k) s += p.h[t * H + k] * p.W[v * H + k];
      z[v] = s;
    }
    double m = -INFINITY, s = 0;
    for (int64_t v = 0; v < V; ++v) m = std::max(m, z[v] / config.temperature);
    for (int64_t v = 0; v < V; ++v) s += std::exp(z[v] / config.temperature - m);
    const double lp = z[p.b.targets[t]] / config.temperature - m - std::log(s);
    p.b.old_logp[t] = near_log_prob(rng, lp, 0.3, kinks);
    p.b.ref_logp[t] = near_log_prob(rng, lp, 0.5, kinks);
    if (!p.b.rollout_logp.empty()) p.b.rollout_logp[t] = near_log_prob(rng, lp, 0.3, kinks);  // bypass: the ratio's reference
  }
  return p;
}

// The discrete choices of the CPU path on a batch (token_terms: rejection, selection, the entropy mask;
// where policy_factor is 0: the sampler's and OPSM's masks); empty when the call fails.
struct Choices {
  std::vector<uint8_t> terms, masked;
  bool operator==(const Choices& o) const { return terms == o.terms && masked == o.masked; }
};

Choices cpu_choices(const LossConfig& config, const HostBatch& b) {
  std::vector<double> grad, logp, entropy, factor;
  LossMetrics metrics;
  Choices c;
  if (!cpu_fused_policy_loss(config, b, false, grad, logp, entropy, metrics, &factor, &c.terms).ok()) return Choices{};
  for (double f : factor) c.masked.push_back(f == 0.0 ? 1 : 0);
  return c;
}

// A problem whose thresholds keep away from the values the GPU forms from its float log p
// (float_stable, on the double logits); with bf16_stable, also one whose discrete choices are the same
// on the logits rounded to bf16 (the GPU's bf16 logits, up to the GEMM's float rounding), so that the
// bf16 loss differs from the double one by rounding only. Drawn again until both hold.
template <typename Logit>
HeadProblem make_problem(std::mt19937_64& rng, const NamedConfig& nc, const BatchInputs& in, int64_t V, int64_t H,
                         bool with_bias, bool bf16_stable = false) {
  std::string why;
  for (int attempt = 0; attempt < 200; ++attempt) {
    HeadProblem p = draw_problem<Logit>(rng, nc.config, in, V, H, with_bias);
    if (!float_stable(nc.config, p.b, &why)) continue;
    if (bf16_stable) {
      HostBatch rounded = p.b;
      for (double& z : rounded.logits) z = exact_in<__nv_bfloat16>(static_cast<float>(z));
      if (!(cpu_choices(nc.config, p.b) == cpu_choices(nc.config, rounded))) {
        why = "a discrete choice changes with the bf16 rounding of the logits";
        continue;
      }
    }
    return p;
  }
  std::printf("FAIL: %s: no problem keeps away from its thresholds in 200 draws (%s)\n", nc.name.c_str(), why.c_str());
  ++failures();
  return draw_problem<Logit>(rng, nc.config, in, V, H, with_bias);
}

struct Grads {
  cgrpo::Status status;
  LossMetrics metrics;
  std::vector<double> gh, gw, gb, logp, entropy;
};

// The CPU path in double: the logits-level loss on b.logits, then G W, G^T h, column sums of G.
Grads cpu_reference(const LossConfig& config, const HeadProblem& p) {
  Grads r;
  std::vector<double> G;
  r.status = cpu_fused_policy_loss(config, p.b, true, G, r.logp, r.entropy, r.metrics);
  const int64_t T = p.b.T, V = p.b.V, H = p.H, S = p.b.stride;
  r.gh.assign(T * H, 0.0);
  r.gw.assign(V * H, 0.0);
  r.gb.assign(p.bias.empty() ? 0 : V, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t v = 0; v < V; ++v) {
      const double g = G[t * S + v];
      for (int64_t k = 0; k < H; ++k) {
        r.gh[t * H + k] += g * p.W[v * H + k];
        r.gw[v * H + k] += g * p.h[t * H + k];
      }
      if (!p.bias.empty()) r.gb[v] += g;
    }
  return r;
}

struct Layout {
  int64_t chunk = 0;  // 0: the default budget
  int64_t pad = 0;    // every row stride H + pad
  bool in_place = false, accumulate = false;
};

template <typename Logit>
struct DeviceHead {
  DeviceBuffer<Logit> h, W, bias;
  DeviceHead(const HeadProblem& p, int64_t pad) : h(p.b.T * (p.H + pad)), W(p.b.V * (p.H + pad)), bias(p.bias.size()) {
    auto padded = [&](const std::vector<double>& x, int64_t rows) {
      std::vector<Logit> out(rows * (p.H + pad), from_double<Logit>(0.0));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < p.H; ++k) out[r * (p.H + pad) + k] = from_double<Logit>(x[r * p.H + k]);
      return out;
    };
    h.upload(padded(p.h, p.b.T));
    W.upload(padded(p.W, p.b.V));
    if (!p.bias.empty()) {
      std::vector<Logit> b;
      for (double x : p.bias) b.push_back(from_double<Logit>(x));
      bias.upload(b);
    }
  }
};

// Unpads [rows, H + pad] to [rows, H] in double, minus `start` (accumulate).
template <typename T>
std::vector<double> unpad(const std::vector<T>& x, int64_t rows, int64_t H, int64_t ld, double start = 0) {
  std::vector<double> out;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < H; ++k) out.push_back(to_double(x[r * ld + k]) - start);
  return out;
}

template <typename Logit>
Grads run_fused(const LossConfig& config, const HeadProblem& p, const Layout& lay) {
  const int64_t T = p.b.T, V = p.b.V, H = p.H, ld = H + lay.pad;
  const HostLibraryBatch<float> host(p.b, config);  // the arrays the config reads, as the CPU path gets them
  const DeviceBatch<Logit> d(host.view, std::vector<Logit>{});
  cgrpo::PolicyLossBatch<Logit, float> batch = d.view;
  batch.logits = nullptr;
  batch.row_stride = 0;
  DeviceHead<Logit> head_buf(p, lay.pad);
  const float start = lay.accumulate ? 0.5f : 0.0f;
  DeviceBuffer<Logit> gh(lay.in_place ? 0 : T * ld);
  DeviceBuffer<float> gw(V * ld), gb(V), logp(T), entropy(T);
  gw.upload(std::vector<float>(V * ld, start));
  gb.upload(std::vector<float>(V, start));
  cgrpo::LinearHead<Logit> head{head_buf.h.ptr, H, ld, head_buf.W.ptr, ld, p.bias.empty() ? nullptr : head_buf.bias.ptr};
  cgrpo::LinearHeadGrads<Logit, float> grads;
  grads.grad_hidden = lay.in_place ? head_buf.h.ptr : gh.ptr;
  grads.grad_hidden_row_stride = ld;
  grads.grad_weight = gw.ptr;
  grads.grad_weight_row_stride = ld;
  grads.grad_bias = p.bias.empty() ? nullptr : gb.ptr;
  grads.accumulate = lay.accumulate;
  LossMetrics unused;
  cgrpo::PolicyLossOutputs<Logit, float> out;
  out.logp = logp.ptr;
  out.entropy = entropy.ptr;
  out.metrics = &unused;
  cgrpo::LinearChunking chunking;
  chunking.tokens = lay.chunk;
  const size_t bytes = cgrpo::cuda::fused_linear_policy_loss_workspace_size<Logit>(config, T, batch.layout.num_sequences, V, chunking);
  DeviceBuffer<char> ws(bytes);
  ws.poison();
  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
    std::printf("cublasCreate failed\n");
    std::exit(1);
  }
  cudaStream_t stream;
  TEST_CUDA(cudaStreamCreate(&stream));
  Grads r;
  r.status = cgrpo::cuda::fused_linear_policy_loss(handle, config, batch, head, out, grads, d.offsets, ws.ptr, bytes,
                                                   stream, chunking);
  if (r.status.ok()) r.status = cgrpo::cuda::policy_loss_metrics(ws.ptr, stream, &r.metrics);
  TEST_CUDA(cudaStreamSynchronize(stream));
  TEST_CUDA(cudaStreamDestroy(stream));
  cublasDestroy(handle);
  r.gh = lay.in_place ? unpad(head_buf.h.download(), T, H, ld) : unpad(gh.download(), T, H, ld);
  r.gw = unpad(gw.download(), V, H, ld, start);
  if (!p.bias.empty()) r.gb = unpad(gb.download(), V, 1, 1, start);
  for (float x : logp.download()) r.logp.push_back(x);
  for (float x : entropy.download()) r.entropy.push_back(x);
  return r;
}

// The composed GPU path: the whole [T, V] logits from one GEMM, cuda::fused_policy_loss in place, the
// backward GEMMs over every row.
template <typename Logit>
Grads run_composed(const LossConfig& config, const HeadProblem& p) {
  const int64_t T = p.b.T, V = p.b.V, H = p.H;
  const HostLibraryBatch<float> host(p.b, config);
  const DeviceBatch<Logit> d(host.view, std::vector<Logit>{});
  DeviceHead<Logit> head(p, 0);
  DeviceBuffer<Logit> z(T * V), gh(T * H);
  DeviceBuffer<float> gw(V * H), gb(V), logp(T), entropy(T);
  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) std::exit(1);
  Grads r;
  if (!p.bias.empty()) {
    const dim3 grid(static_cast<unsigned>((V + 255) / 256), static_cast<unsigned>(std::min<int64_t>(T, 65535)));
    cgrpo::cuda::broadcast_bias_kernel<Logit><<<grid, 256>>>(head.bias.ptr, V, T, z.ptr, V);
  }
  r.status = cgrpo::cuda::gemm_logits(handle, head.h.ptr, H, T, H, head.W.ptr, H, V, z.ptr, V, p.bias.empty() ? 0.0f : 1.0f);
  cgrpo::PolicyLossBatch<Logit, float> batch = d.view;
  batch.logits = z.ptr;
  batch.row_stride = V;
  LossMetrics unused;
  cgrpo::PolicyLossOutputs<Logit, float> out;
  out.grad_logits = z.ptr;
  out.logp = logp.ptr;
  out.entropy = entropy.ptr;
  out.metrics = &unused;
  const size_t bytes = cgrpo::cuda::fused_policy_loss_workspace_size(config, T, batch.layout.num_sequences);
  DeviceBuffer<char> ws(bytes);
  if (r.status.ok()) r.status = cgrpo::cuda::fused_policy_loss(config, batch, out, d.offsets, ws.ptr, bytes, nullptr);
  if (r.status.ok()) r.status = cgrpo::cuda::gemm_weight_grad(handle, z.ptr, V, T, V, head.h.ptr, H, H, gw.ptr, H, false);
  if (!p.bias.empty()) cgrpo::cuda::bias_grad_kernel<Logit><<<static_cast<unsigned>((V + 255) / 256), 256>>>(z.ptr, V, T, V, gb.ptr, false);
  if (r.status.ok()) r.status = cgrpo::cuda::gemm_hidden_grad(handle, z.ptr, V, T, V, head.W.ptr, H, H, gh.ptr, H);
  if (r.status.ok()) r.status = cgrpo::cuda::policy_loss_metrics(ws.ptr, nullptr, &r.metrics);
  TEST_CUDA(cudaDeviceSynchronize());
  cublasDestroy(handle);
  r.gh = unpad(gh.download(), T, H, H);
  r.gw = unpad(gw.download(), V, H, H);
  if (!p.bias.empty()) r.gb = unpad(gb.download(), V, 1, 1);
  for (float x : logp.download()) r.logp.push_back(x);
  for (float x : entropy.download()) r.entropy.push_back(x);
  return r;
}

double rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return INFINITY;
  double d = 0, m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, std::fabs(a[i] - b[i]));
    m = std::max(m, std::fabs(b[i]));
  }
  return d / std::max(1.0, m);
}

void expect_close(const char* what, const Grads& got, const Grads& want, double tol) {
  GPU_EXPECT(got.status.ok(), "%s: %s", what, got.status.message);
  GPU_EXPECT(want.status.ok(), "%s (reference): %s", what, want.status.message);
  if (!got.status.ok() || !want.status.ok()) return;
  GPU_EXPECT(std::fabs(got.metrics.loss - want.metrics.loss) <= tol * std::max(1.0, std::fabs(want.metrics.loss)),
             "%s: loss %.9g vs %.9g", what, got.metrics.loss, want.metrics.loss);
  GPU_EXPECT(got.metrics.num_valid_tokens == want.metrics.num_valid_tokens, "%s: valid tokens", what);
  GPU_EXPECT(rel_diff(got.logp, want.logp) <= tol, "%s: log p off by %g", what, rel_diff(got.logp, want.logp));
  GPU_EXPECT(rel_diff(got.entropy, want.entropy) <= tol, "%s: H off by %g", what, rel_diff(got.entropy, want.entropy));
  GPU_EXPECT(rel_diff(got.gh, want.gh) <= tol, "%s: dJ/dh off by %g", what, rel_diff(got.gh, want.gh));
  GPU_EXPECT(rel_diff(got.gw, want.gw) <= tol, "%s: dJ/dW off by %g", what, rel_diff(got.gw, want.gw));
  GPU_EXPECT(rel_diff(got.gb, want.gb) <= tol, "%s: dJ/db off by %g", what, rel_diff(got.gb, want.gb));
}

// Every config of the catalog (its inputs of variant 0: the one-pass plans with the caller's weights,
// the two-pass ones, computed weights; each chunk's logits formed twice where the plan has a pre-pass)
// on every layout of the head, and the composed GPU path, against the CPU path in double.
void test_fp32_against_cpu(std::mt19937_64& rng) {
  const Layout layouts[] = {{1, 0, false, false}, {7, 3, false, true}, {0, 0, true, false}, {5, 1, true, true}};
  for (const NamedConfig& nc : configs()) {
    const LossConfig& c = nc.config;
    const BatchInputs in = batch_inputs(nc, 0);
    const std::string name = config_label(nc, in);
    const HeadProblem p = make_problem<float>(rng, nc, in, vocab(3001), 96, true);
    const Grads want = cpu_reference(c, p);
    for (const Layout& lay : layouts) {
      char what[400];
      std::snprintf(what, sizeof(what), "fp32 %s, chunk %lld pad %lld%s%s", name.c_str(), static_cast<long long>(lay.chunk),
                    static_cast<long long>(lay.pad), lay.in_place ? " in place" : "", lay.accumulate ? " accumulate" : "");
      expect_close(what, run_fused<float>(c, p, lay), want, 2e-4);
    }
    char composed[400];
    std::snprintf(composed, sizeof(composed), "fp32 %s, composed GPU path vs CPU", name.c_str());
    expect_close(composed, run_composed<float>(c, p), want, 2e-4);
  }
}

// bf16 logits are rounded after the fp32 GEMM: the fused path and the composed path round the same
// values; against the CPU on the unrounded logits only to bf16 precision (on problems whose discrete
// choices do not change with that rounding). Every config of the catalog, its inputs of variant 1.
void test_bf16_against_composed(std::mt19937_64& rng) {
  for (const NamedConfig& nc : configs()) {
    const LossConfig& c = nc.config;
    const BatchInputs in = batch_inputs(nc, 1);
    const std::string name = config_label(nc, in);
    const HeadProblem p = make_problem<__nv_bfloat16>(rng, nc, in, vocab(4099), 128, false, true);
    const Grads composed = run_composed<__nv_bfloat16>(c, p);
    for (int64_t chunk : {int64_t{1}, int64_t{9}, int64_t{0}}) {
      char what[400];
      std::snprintf(what, sizeof(what), "bf16 %s, chunk %lld vs composed", name.c_str(), static_cast<long long>(chunk));
      expect_close(what, run_fused<__nv_bfloat16>(c, p, Layout{chunk, 0, false, false}), composed, 2e-2);
    }
    char what[400];
    std::snprintf(what, sizeof(what), "bf16 %s, fused vs CPU (bf16 precision)", name.c_str());
    expect_close(what, run_fused<__nv_bfloat16>(c, p, Layout{}), cpu_reference(c, p), 5e-2);
  }
}

void test_determinism(std::mt19937_64& rng) {
  NamedConfig nc;
  nc.name = "verl/grpo";
  nc.config = cgrpo::verl_grpo().loss;
  const LossConfig& c = nc.config;
  const HeadProblem p = make_problem<__nv_bfloat16>(rng, nc, BatchInputs{}, vocab(2000), 64, true);
  const Grads a = run_fused<__nv_bfloat16>(c, p, Layout{13, 0, false, false});
  const Grads b = run_fused<__nv_bfloat16>(c, p, Layout{13, 0, false, false});
  GPU_EXPECT(a.gw == b.gw && a.gh == b.gh && a.metrics.loss == b.metrics.loss, "two runs differ");
}

void test_logprobs(std::mt19937_64& rng) {
  NamedConfig nc;
  nc.name = "paper/critique_grpo";
  const HeadProblem p = make_problem<float>(rng, nc, BatchInputs{}, vocab(5003), 64, true);
  const int64_t T = p.b.T, V = p.b.V;
  std::vector<double> want_lp(T), want_h(T);
  const cgrpo::Status cs = cpu_token_logprobs(p.b.logits.data(), T, V, p.b.stride, p.b.targets.data(), 0.8,
                                              want_lp.data(), want_h.data());
  GPU_EXPECT(cs.ok(), "cpu token_logprobs: %s", cs.message);
  DeviceHead<float> head_buf(p, 2);
  DeviceBuffer<int32_t> targets(T);
  targets.upload(p.b.targets);
  DeviceBuffer<float> lp(T), ent(T);
  cgrpo::LinearHead<float> head{head_buf.h.ptr, p.H, p.H + 2, head_buf.W.ptr, p.H + 2, head_buf.bias.ptr};
  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) std::exit(1);
  for (int64_t chunk : {int64_t{1}, int64_t{6}, int64_t{0}}) {
    const cgrpo::LinearChunking chunking{chunk};
    const size_t bytes = cgrpo::cuda::fused_linear_token_logprobs_workspace_size<float>(T, V, chunking);
    DeviceBuffer<char> ws(bytes);
    cgrpo::Status s = cgrpo::cuda::fused_linear_token_logprobs(handle, head, T, V, targets.ptr, 0.8, lp.ptr, ent.ptr,
                                                               ws.ptr, bytes, nullptr, chunking);
    if (s.ok()) s = cgrpo::cuda::token_logprobs_status(ws.ptr, nullptr);
    GPU_EXPECT(s.ok(), "fused_linear_token_logprobs chunk %lld: %s", static_cast<long long>(chunk), s.message);
    std::vector<double> got_lp, got_h;
    for (float x : lp.download()) got_lp.push_back(x);
    for (float x : ent.download()) got_h.push_back(x);
    GPU_EXPECT(rel_diff(got_lp, want_lp) <= 1e-4, "log p off by %g", rel_diff(got_lp, want_lp));
    GPU_EXPECT(rel_diff(got_h, want_h) <= 1e-4, "H off by %g", rel_diff(got_h, want_h));
  }
  cublasDestroy(handle);
}

}  // namespace

int main() {
  if (!have_cuda_device()) return kSkipReturnCode;
  std::mt19937_64 rng = test_seed::fresh_rng();
  test_fp32_against_cpu(rng);
  test_bf16_against_composed(rng);
  test_determinism(rng);
  test_logprobs(rng);
  if (failures() == 0) std::printf("PASSED (%lld checks): the CUDA fused linear loss matches the CPU path and the composed GPU path\n", checks());
  else std::printf("FAILED: %d of %lld checks\n", failures(), checks());
  return failures() == 0 ? 0 : 1;
}
