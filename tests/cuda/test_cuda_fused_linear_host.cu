// tests/cuda/test_cuda_fused_linear_host.cu: the host side of the CUDA fused linear loss, which needs no
// GPU: the CPU path's validation messages before any CUDA or cuBLAS call, the CUDA limits, workspace sizes;
// and its chunked launch order (run_chunked_loss) emulated on the host for every mode.
#include <cstring>
#include <vector>

#include <cgrpo/presets/presets.hpp>
#include <cgrpo/presets/trl_presets.hpp>
#include <cgrpo/presets/verl_presets.hpp>

#include "cgrpo/cuda/fused_linear_policy_loss.cuh"
#include "policy_loss_checks.cuh"
#include "test_seed.hpp"

namespace {

using gpu_test::fake;

// A fake handle: every call below fails validation before the handle is used.
cublasHandle_t fake_handle() { return reinterpret_cast<cublasHandle_t>(uintptr_t{0x40}); }

struct FakeCall {
  cgrpo::PolicyLossBatch<__nv_bfloat16, float> batch;
  cgrpo::LinearHead<__nv_bfloat16> head;
  cgrpo::LinearHeadGrads<__nv_bfloat16, float> grads;
  cgrpo::PolicyLossOutputs<__nv_bfloat16, float> out;
  cgrpo::LossMetrics metrics;
  cgrpo::LinearChunking chunking;
  FakeCall() {
    gpu_test::set_fake_token_inputs(batch);
    head.hidden = fake<const __nv_bfloat16>(0x10000000);
    head.hidden_size = 128;
    head.weight = fake<const __nv_bfloat16>(0x11000000);
    grads.grad_hidden = fake<__nv_bfloat16>(0x30000000);
    grads.grad_weight = fake<float>(0x31000000);
    out.metrics = &metrics;
    chunking.tokens = 16;
  }
  cgrpo::Status run(const LossConfig& c, void* ws, size_t bytes) const {
    return cgrpo::cuda::fused_linear_policy_loss(fake_handle(), c, batch, head, out, grads, nullptr, ws, bytes, nullptr,
                                                 chunking);
  }
};

// The GPU API returns validate_linear_loss_shape's exact Status (the CPU path's first step) before
// any CUDA call: without a device any CUDA call would return cuda_error, so an equal message also
// shows that nothing was enqueued.
void expect_same_as_cpu(const char* name, const LossConfig& c, const FakeCall& f) {
  const cgrpo::Status want =
      cgrpo::validate_linear_loss_shape(c, f.batch, f.head, f.out, f.grads, f.chunking, sizeof(__nv_bfloat16));
  std::vector<char> ws(1 << 22);
  const cgrpo::Status got = f.run(c, ws.data(), ws.size());
  GPU_EXPECT(!want.ok(), "%s: the CPU validation should reject this call", name);
  GPU_EXPECT(got.code == want.code && std::strcmp(got.message, want.message) == 0, "%s: GPU '%s' vs CPU '%s'", name,
             got.message, want.message);
}

void test_validation_matches_cpu() {
  const LossConfig c;
  {
    FakeCall f;
    f.batch.logits = f.head.weight;
    expect_same_as_cpu("batch.logits set", c, f);
  }
  {
    FakeCall f;
    f.out.grad_logits = f.grads.grad_hidden;
    expect_same_as_cpu("grad_logits set", c, f);
  }
  {
    FakeCall f;
    f.head.hidden_size = 0;
    expect_same_as_cpu("hidden_size 0", c, f);
  }
  {
    FakeCall f;
    f.head.weight_row_stride = 100;
    expect_same_as_cpu("weight stride < H", c, f);
  }
  {
    FakeCall f;
    f.head.weight = nullptr;
    expect_same_as_cpu("weight null", c, f);
  }
  {
    FakeCall f;
    f.grads.grad_weight = reinterpret_cast<float*>(const_cast<__nv_bfloat16*>(f.head.weight)) + 8;
    expect_same_as_cpu("grad_weight overlaps weight", c, f);
  }
  {
    FakeCall f;
    f.grads.grad_hidden = const_cast<__nv_bfloat16*>(f.head.hidden);
    f.grads.grad_hidden_row_stride = 256;
    expect_same_as_cpu("in place at another stride", c, f);
  }
  {
    FakeCall f;
    f.chunking.tokens = -2;
    expect_same_as_cpu("negative chunk", c, f);
  }
  {
    FakeCall f;
    f.chunking.tokens = 0;
    f.chunking.max_bytes = 100;
    expect_same_as_cpu("budget below one row", c, f);
  }
  {
    FakeCall f;
    f.batch.target_ids = nullptr;
    expect_same_as_cpu("target_ids null", c, f);
  }
  {
    FakeCall f;
    expect_same_as_cpu("kl without ref_logp", cgrpo::verl_grpo().loss, f);
  }
}

void test_gpu_specific_checks() {
  const LossConfig c;
  FakeCall f;
  const size_t need = cgrpo::cuda::fused_linear_policy_loss_workspace_size<__nv_bfloat16>(
      c, f.batch.num_tokens, 0, f.batch.vocab_size, f.chunking);
  // The fused loss's layout plus 16 rows of 1000 bf16 logits padded to 1024 (64 bytes).
  const size_t loss_part = cgrpo::cuda::fused_policy_loss_workspace_size(c, f.batch.num_tokens, 0);
  GPU_EXPECT(need == cgrpo::cuda::align_up(loss_part) + cgrpo::cuda::align_up(16 * 1024 * 2), "workspace size %zu", need);
  std::vector<char> ws(need + 64);
  char* aligned = ws.data() + (256 - reinterpret_cast<uintptr_t>(ws.data()) % 256) % 256;
  cgrpo::Status s = f.run(c, aligned, need - 1);
  GPU_EXPECT(s.code == cgrpo::StatusCode::invalid_argument && std::strstr(s.message, "workspace needs"),
             "small workspace: %s", s.message);
  s = f.run(c, aligned + 8, need);
  GPU_EXPECT(s.code == cgrpo::StatusCode::invalid_argument && std::strstr(s.message, "16-byte aligned"),
             "misaligned workspace: %s", s.message);
  s = cgrpo::cuda::fused_linear_policy_loss(static_cast<cublasHandle_t>(nullptr), c, f.batch, f.head, f.out, f.grads,
                                            nullptr, aligned, need, nullptr, f.chunking);
  GPU_EXPECT(s.code == cgrpo::StatusCode::invalid_argument && std::strstr(s.message, "cuBLAS handle"), "null handle: %s",
             s.message);
  {
    // A config that reads the layout (computed weights counted per row: TRL's seq-mean-token-mean;
    // GSPO's sequence ratio) with a packed one and no device copy of its offsets: the fused loss's
    // plan refuses it before anything is enqueued.
    const std::vector<int64_t> offsets = {0, 10, 30, 64};
    for (const bool computed : {true, false}) {
      FakeCall g;
      if (computed) g.batch.pg_weights = g.batch.entropy_weights = nullptr;
      g.batch.layout = cgrpo::SequenceLayout::packed(3, offsets.data());
      const LossConfig k = computed ? cgrpo::trl_grpo().loss : cgrpo::verl_gspo().loss;
      const bool reads_layout = cgrpo::plan_passes(k, g.batch).needs_layout;
      GPU_EXPECT(reads_layout, "%s: the pass plan should read the layout", computed ? "computed weights" : "GSPO");
      if (!reads_layout) continue;  // the call would reach the (fake) cuBLAS handle
      const size_t n = cgrpo::cuda::fused_linear_policy_loss_workspace_size<__nv_bfloat16>(k, 64, 3, 1000, g.chunking);
      std::vector<char> big(n + 256);
      char* al = big.data() + (256 - reinterpret_cast<uintptr_t>(big.data()) % 256) % 256;
      s = g.run(k, al, n);
      GPU_EXPECT(s.code == cgrpo::StatusCode::invalid_argument && std::strstr(s.message, "device_sequence_offsets"),
                 "%s, packed layout without device offsets: %s", computed ? "computed weights" : "GSPO", s.message);
    }
  }
  {
    FakeCall g;
    g.head.weight_row_stride = int64_t{1} << 31;
    const size_t n = cgrpo::cuda::fused_linear_policy_loss_workspace_size<__nv_bfloat16>(c, 64, 0, 1000, g.chunking);
    s = g.run(c, aligned, n);
    GPU_EXPECT(s.code == cgrpo::StatusCode::invalid_argument && std::strstr(s.message, "cuBLAS takes int sizes"),
               "int strides: %s", s.message);
  }
  GPU_EXPECT(cgrpo::cuda::fused_linear_policy_loss_workspace_size<float>(c, 64, 0, 1000, cgrpo::LinearChunking{-1}) == 0,
             "a bad chunking has no size");
  // The default budget: as many rows as fit in 256 MiB, at most T.
  const size_t big = cgrpo::cuda::fused_linear_policy_loss_workspace_size<__nv_bfloat16>(c, 1 << 20, 0, 151936);
  const size_t rows = (size_t{256} << 20) / (151936 * 2);
  GPU_EXPECT(big >= rows * 151936 * 2 && big < (size_t{256} << 20) + (size_t{200} << 20), "default budget size %zu", big);
}

void test_logprobs_checks() {
  cgrpo::LinearHead<float> head{fake<const float>(0x10000000), 64, 0, fake<const float>(0x11000000), 0, nullptr};
  const cgrpo::LinearChunking chunking{8};
  const size_t need = cgrpo::cuda::fused_linear_token_logprobs_workspace_size<float>(32, 500, chunking);
  GPU_EXPECT(need == 256 + cgrpo::cuda::align_up(8 * 512 * 4), "log-prob workspace size %zu", need);
  std::vector<char> ws(need + 256);
  char* aligned = ws.data() + (256 - reinterpret_cast<uintptr_t>(ws.data()) % 256) % 256;
  cgrpo::Status s = cgrpo::cuda::fused_linear_token_logprobs(fake_handle(), head, 32, 500, fake<const int32_t>(0x20000000),
                                                             1.0, fake<float>(0x30000000), nullptr, aligned, need - 1,
                                                             nullptr, chunking);
  GPU_EXPECT(s.code == cgrpo::StatusCode::invalid_argument && std::strstr(s.message, "workspace needs"),
             "log-prob small workspace: %s", s.message);
  s = cgrpo::cuda::fused_linear_token_logprobs(fake_handle(), head, 32, 500, fake<const int32_t>(0x20000000), 0.0,
                                               fake<float>(0x30000000), nullptr, aligned, need, nullptr, chunking);
  GPU_EXPECT(s.code == cgrpo::StatusCode::invalid_argument && std::strstr(s.message, "temperature"),
             "log-prob temperature: %s", s.message);
  s = cgrpo::cuda::fused_linear_token_logprobs(fake_handle(), head, 32, 500, fake<const int32_t>(0x20000000), 1.0,
                                               fake<float>(0x10000000) + 4, nullptr, aligned, need, nullptr, chunking);
  GPU_EXPECT(s.code == cgrpo::StatusCode::invalid_argument && std::strstr(s.message, "logp (output) overlaps hidden"),
             "log-prob overlap: %s", s.message);
}

// run_chunked_loss's steps on the host: a chunk's "GEMM" copies its rows of the batch's logits into
// the chunk buffer (another row stride, the same 16-byte phase: the kernels' vector split, hence
// their rounding, follows a row's alignment); "backward" copies the chunk's dJ/dz out to [T, S].
template <typename Logit>
struct EmulatedLinearOps {
  const cgrpo::cuda::LossPlan<Logit>& plan;
  const std::vector<Logit>& full;  // the batch's logits [T, S]
  int64_t S, V;
  Logit* z;
  int64_t ldz, chunk;
  std::vector<Logit>& grad;  // [T, S]
  int logits_calls = 0;

  cgrpo::Status begin() {
    cgrpo::cuda::metrics_header_begin(plan.header(), plan.info);
    return cgrpo::Status::success();
  }
  cgrpo::Status logits(int64_t t0, int64_t n) {
    ++logits_calls;
    Logit poison;
    std::memset(static_cast<void*>(&poison), 0xFF, sizeof(poison));
    std::fill(z, z + chunk * ldz, poison);  // nothing of an earlier chunk may be read
    for (int64_t r = 0; r < n; ++r) std::memcpy(z + r * ldz, &full[(t0 + r) * S], V * sizeof(Logit));
    return cgrpo::Status::success();
  }
  cgrpo::Status first_pass(int64_t t0, int64_t n) {
    emulate_logits_pass(plan, RowPhase::first, t0, n);
    return cgrpo::Status::success();
  }
  cgrpo::Status gradient(int64_t t0, int64_t n) {
    emulate_logits_pass(plan, RowPhase::gradient, t0, n);
    return cgrpo::Status::success();
  }
  cgrpo::Status backward(int64_t t0, int64_t n) {
    for (int64_t r = 0; r < n; ++r) std::memcpy(&grad[(t0 + r) * S], z + r * ldz, V * sizeof(Logit));
    return cgrpo::Status::success();
  }
  cgrpo::Status uncoupled_outputs() {
    emulate_uncoupled_outputs(plan);
    return cgrpo::Status::success();
  }
  cgrpo::Status token_passes() {
    emulate_token_passes(plan.passes);
    return cgrpo::Status::success();
  }
  cgrpo::Status reductions() {
    emulate_reductions(plan.reductions);
    return cgrpo::Status::success();
  }
};

struct LossRun {
  cgrpo::Status status;
  cgrpo::LossMetrics metrics;
  std::vector<float> grad, logp, entropy, policy_factor;
  std::vector<uint8_t> terms;
  std::vector<cgrpo::MetricSums<double>> token_sums;
  bool two_pass = false;
  int logits_calls = 0;
};

LossRun poisoned_run(int64_t T) {
  LossRun r;
  r.logp.assign(T, NAN);
  r.entropy.assign(T, NAN);
  r.policy_factor.assign(T, NAN);
  r.terms.assign(T, 0xFF);
  std::memset(static_cast<void*>(&r.metrics), 0xFF, sizeof(r.metrics));
  return r;
}

void keep_token_sums(LossRun& r, const char* ws, const cgrpo::cuda::WorkspaceLayout& layout, int64_t T) {
  const auto* sums = reinterpret_cast<const cgrpo::MetricSums<double>*>(ws + layout.token_sums);
  r.token_sums.assign(sums, sums + T);
}

// cuda::fused_policy_loss emulated over the whole batch (in place, or forward only).
LossRun whole_batch(const LossConfig& config, const HostBatch& hb, const std::vector<float>& logits, bool with_grad) {
  const HostLibraryBatch<float> host(hb, config);  // the arrays the config reads
  cgrpo::PolicyLossBatch<float, float> batch = host.view;
  LossRun r = poisoned_run(hb.T);
  r.grad = logits;
  batch.logits = r.grad.data();
  batch.row_stride = hb.stride;
  cgrpo::LossMetrics unused;
  cgrpo::PolicyLossOutputs<float, float> out;
  out.grad_logits = with_grad ? r.grad.data() : nullptr;
  out.logp = r.logp.data();
  out.entropy = r.entropy.data();
  out.policy_factor = r.policy_factor.data();
  out.token_terms = r.terms.data();
  out.metrics = &unused;
  std::vector<char> ws;
  r.status = emulate_fused_policy_loss(config, batch, out, ws, &r.metrics);
  const cgrpo::cuda::WorkspaceLayout layout(hb.T, batch.layout.num_sequences, cgrpo::cuda::workspace_needs(config));
  const char* base = reinterpret_cast<const char*>(
      (reinterpret_cast<uintptr_t>(ws.data()) + cgrpo::cuda::kWorkspaceAlignment - 1) /
      cgrpo::cuda::kWorkspaceAlignment * cgrpo::cuda::kWorkspaceAlignment);
  keep_token_sums(r, base, layout, hb.T);
  return r;
}

// fused_linear_policy_loss's plan and launch order (run_chunked_loss) emulated on the host, with
// chunks of c rows formed by copying the batch's logits.
LossRun chunked(const LossConfig& config, const HostBatch& hb, const std::vector<float>& logits, bool with_grad,
                int64_t c) {
  using namespace cgrpo::cuda;
  const HostLibraryBatch<float> host(hb, config);
  const int64_t T = hb.T, V = hb.V, S = hb.stride, ldz = S + 4;
  std::vector<float> z(static_cast<size_t>(c * ldz));
  LossRun r = poisoned_run(T);
  r.grad = logits;  // rows not written by "backward" keep the logits (none should)
  cgrpo::PolicyLossBatch<float, float> batch = host.view;
  batch.logits = z.data();
  batch.row_stride = ldz;
  cgrpo::LossMetrics unused;
  cgrpo::PolicyLossOutputs<float, float> out;
  out.grad_logits = with_grad ? z.data() : nullptr;
  out.grad_row_stride = ldz;
  out.logp = r.logp.data();
  out.entropy = r.entropy.data();
  out.policy_factor = r.policy_factor.data();
  out.token_terms = r.terms.data();
  out.metrics = &unused;
  const size_t bytes = fused_policy_loss_workspace_size(config, T, batch.layout.num_sequences);
  std::vector<char> storage;
  char* ws = aligned_workspace(storage, bytes);
  LossPlan<float> plan;
  r.status = plan_validated_policy_loss(config, batch, out, batch.layout.offsets, ws, bytes, &plan);
  if (!r.status.ok()) return r;
  r.two_pass = plan.two_pass;
  EmulatedLinearOps<float> ops{plan, logits, S, V, z.data(), ldz, c, r.grad};
  r.status = run_chunked_loss(plan, c, ops);
  r.logits_calls = ops.logits_calls;
  if (r.status.ok()) r.status = policy_loss_metrics_from_copy(ws, &r.metrics);
  keep_token_sums(r, ws, plan.layout, T);
  return r;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof(a)) == 0; }

// Every metric the finalize writes, bit for bit.
bool same_metrics(const cgrpo::LossMetrics& a, const cgrpo::LossMetrics& b) {
  const double x[] = {a.loss, a.pg_loss, a.pg_loss_initial, a.pg_loss_refinement, a.entropy_loss, a.kl_loss,
                      a.pg_clipfrac, a.pg_clipfrac_lower, a.ppo_kl, a.ratio_mean, a.clip_ratio_low_mean,
                      a.clip_ratio_high_mean, a.clip_ratio_region_mean, a.clip_ratio_low_min, a.clip_ratio_high_max,
                      a.entropy_mean, a.kl_mean, a.refinement_prob_mean, a.vespo_phi_mean, a.rollout.is_mean,
                      a.rollout.is_max, a.rollout.is_batch_norm_factor, a.rollout.rs_masked_fraction, a.rollout.kl,
                      a.sampler.is_ratio_mean, a.sampler.logp_difference_max};
  const double y[] = {b.loss, b.pg_loss, b.pg_loss_initial, b.pg_loss_refinement, b.entropy_loss, b.kl_loss,
                      b.pg_clipfrac, b.pg_clipfrac_lower, b.ppo_kl, b.ratio_mean, b.clip_ratio_low_mean,
                      b.clip_ratio_high_mean, b.clip_ratio_region_mean, b.clip_ratio_low_min, b.clip_ratio_high_max,
                      b.entropy_mean, b.kl_mean, b.refinement_prob_mean, b.vespo_phi_mean, b.rollout.is_mean,
                      b.rollout.is_max, b.rollout.is_batch_norm_factor, b.rollout.rs_masked_fraction, b.rollout.kl,
                      b.sampler.is_ratio_mean, b.sampler.logp_difference_max};
  for (size_t i = 0; i < sizeof(x) / sizeof(x[0]); ++i)
    if (!same_bits(x[i], y[i])) return false;
  return a.num_valid_tokens == b.num_valid_tokens;
}

// Every config of the catalog (the one-kernel token-level configs, and the row- and batch-coupled
// ones and computed weights, which take two passes), packed with the inputs of variant 0 and padded
// with those of variant 1 (policy_loss_checks.cuh: the other weights rule, the caller's selection):
// the chunked launch order on rows [t0, t0 + n) of a chunk buffer gives the same bits as the fused
// loss over the whole batch at once: the loss and metrics, every token's metric sums, log p, H,
// policy_factor, token_terms and dJ/dz; with and without a gradient. The plan is the pass plan's
// (cgrpo::plan_passes: two passes exactly when it has a pre-pass), and the number of forward "GEMMs"
// follows: one per chunk for a one-pass plan and for forward only, two per chunk for a two-pass plan
// with a gradient (the recompute).
void test_chunked_emulated() {
  std::mt19937_64 rng = test_seed::fresh_rng();
  int coupled = 0;
  for (const NamedConfig& nc : configs())
    for (int variant = 0; variant < 2; ++variant) {
      const BatchInputs in = batch_inputs(nc, variant);
      BatchSpec spec;
      spec.V = 300;  // row stride 300 floats: chunk rows keep the batch rows' 16-byte phase
      spec.num_sequences = 7;
      spec.max_len = 9;
      spec.padded = variant == 1;
      std::vector<float> logits;
      const HostBatch hb = config_batch<float>(rng, spec, nc, in, logits);
      const int64_t T = hb.T, V = hb.V, S = hb.stride;
      const bool two_pass = cgrpo::plan_passes(nc.config, HostLibraryBatch<float>(hb, nc.config).view).any_prepass;
      const std::string name = config_label(nc, in) + (spec.padded ? ", padded" : ", packed");
      const char* n = name.c_str();
      for (const bool with_grad : {true, false}) {
        const LossRun want = whole_batch(nc.config, hb, logits, with_grad);
        const int64_t c = 5;
        const LossRun got = chunked(nc.config, hb, logits, with_grad, c);
        const char* what = with_grad ? "with gradient" : "forward only";
        GPU_EXPECT(want.status.ok(), "%s (%s): whole batch: %s", n, what, want.status.message);
        GPU_EXPECT(got.status.ok(), "%s (%s): chunked: %s", n, what, got.status.message);
        if (!want.status.ok() || !got.status.ok()) continue;
        GPU_EXPECT(got.two_pass == two_pass, "%s (%s): the plan takes %d passes, the pass plan says %d", n, what,
                   got.two_pass ? 2 : 1, two_pass ? 2 : 1);
        if (with_grad && two_pass) ++coupled;
        const int64_t chunks = (T + c - 1) / c;
        GPU_EXPECT(got.logits_calls == (with_grad && two_pass ? 2 : 1) * chunks, "%s (%s): %d chunk GEMMs for %lld chunks",
                   n, what, got.logits_calls, static_cast<long long>(chunks));
        GPU_EXPECT(same_metrics(got.metrics, want.metrics), "%s (%s): metrics differ (loss %.17g vs %.17g)", n, what,
                   got.metrics.loss, want.metrics.loss);
        GPU_EXPECT(std::memcmp(got.token_sums.data(), want.token_sums.data(), T * sizeof(cgrpo::MetricSums<double>)) == 0,
                   "%s (%s): per-token metric sums differ", n, what);
        GPU_EXPECT(std::memcmp(got.logp.data(), want.logp.data(), T * sizeof(float)) == 0 &&
                       std::memcmp(got.entropy.data(), want.entropy.data(), T * sizeof(float)) == 0,
                   "%s (%s): log p or H differ", n, what);
        GPU_EXPECT(std::memcmp(got.policy_factor.data(), want.policy_factor.data(), T * sizeof(float)) == 0 &&
                       got.terms == want.terms,
                   "%s (%s): policy_factor or token_terms differ", n, what);
        if (!with_grad) continue;
        bool same_grad = true;
        for (int64_t t = 0; t < T; ++t)
          same_grad = same_grad && std::memcmp(&got.grad[t * S], &want.grad[t * S], V * sizeof(float)) == 0;
        GPU_EXPECT(same_grad, "%s: dJ/dz differs between chunked and whole-batch rows", n);
      }
    }
  GPU_EXPECT(coupled >= 20, "only %d runs took the two-pass (recompute) path", coupled);
}

}  // namespace

int main() {
  test_chunked_emulated();
  test_validation_matches_cpu();
  test_gpu_specific_checks();
  test_logprobs_checks();
  if (failures() == 0) std::printf("PASSED (%lld checks): CUDA fused linear host API (validation, limits, workspace), no GPU needed\n", checks());
  else std::printf("FAILED: %d of %lld checks\n", failures(), checks());
  return failures() == 0 ? 0 : 1;
}
