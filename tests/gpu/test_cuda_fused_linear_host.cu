// tests/gpu/test_cuda_fused_linear_host.cu: the host side of the CUDA fused linear loss, which needs no
// GPU: the CPU path's validation messages before any CUDA or cuBLAS call, the CUDA limits, workspace sizes.
#include <cstring>
#include <vector>

#include <cgrpo/presets.hpp>

#include "gpu_test_util.cuh"
#include "host_emulation.cuh"
#include "kernels/fused_linear_policy_loss.cuh"
#include "test_seed.hpp"

namespace {

using namespace gpu_test;
using cgrpo::LossConfig;

template <typename T>
T* fake(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

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
    batch.num_tokens = 64;
    batch.vocab_size = 1000;
    batch.target_ids = fake<const int32_t>(0x20000000);
    batch.mask = fake<const uint8_t>(0x20010000);
    batch.advantages = fake<const float>(0x20020000);
    batch.old_logp = fake<const float>(0x20030000);
    batch.pg_weights = fake<const float>(0x20040000);
    batch.entropy_weights = fake<const float>(0x20050000);
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
    expect_same_as_cpu("kl without ref_logp", cgrpo::verl_grpo(), f);
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
    LossConfig k = c;
    FakeCall g;
    g.batch.pg_weights = g.batch.entropy_weights = nullptr;
    g.batch.layout = cgrpo::SequenceLayout::padded(4, 16);
    s = g.run(k, aligned, need);
    GPU_EXPECT(s.code == cgrpo::StatusCode::invalid_argument && std::strstr(s.message, "does not run"),
               "computed weights: %s", s.message);
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

// The kernels' per-row code run on the host over chunks of rows, as fused_linear_policy_loss
// launches it (args.first_row = the chunk's first batch row, logits and gradient rows relative to
// the chunk), against the same code over the whole batch at once (emulate_fused_policy_loss):
// log p, H, dJ/dz and every token's metric sums must be the same bits. Token level and GSPO.
void test_chunked_rows_emulated() {
  using namespace cgrpo::cuda;
  std::mt19937_64 rng = test_seed::fresh_rng();
  for (const LossConfig& config : {cgrpo::verl_grpo(), cgrpo::verl_gspo()}) {
    BatchSpec spec;
    spec.V = 300;
    std::vector<float> logits;
    const HostBatch hb = random_batch<float>(rng, spec, config, logits);
    const int64_t T = hb.T, V = hb.V, S = hb.stride;
    std::vector<int32_t> targets = hb.targets;
    std::vector<uint8_t> mask = hb.mask, kinds = hb.kinds;
    std::vector<float> adv = to_float_vector(hb.adv), old = to_float_vector(hb.old_logp),
                       ref = to_float_vector(hb.ref_logp), w_pg = to_float_vector(hb.w_pg),
                       w_h = to_float_vector(hb.w_h), w_kl = to_float_vector(hb.w_kl);
    cgrpo::PolicyLossBatch<float, float> batch;
    batch.logits = logits.data();
    batch.num_tokens = T;
    batch.vocab_size = V;
    batch.row_stride = S;
    batch.target_ids = targets.data();
    batch.mask = mask.data();
    batch.kinds = kinds.data();
    batch.advantages = adv.data();
    batch.old_logp = old.data();
    batch.ref_logp = ref.data();
    batch.pg_weights = w_pg.data();
    batch.entropy_weights = w_h.data();
    batch.kl_weights = w_kl.data();
    batch.layout = hb.layout();
    // The whole batch at once.
    std::vector<float> grad_all(T * S, 0.0f), logp_all(T), ent_all(T);
    cgrpo::LossMetrics m_all, unused;
    cgrpo::PolicyLossOutputs<float, float> out;
    out.grad_logits = grad_all.data();
    out.logp = logp_all.data();
    out.entropy = ent_all.data();
    out.metrics = &unused;
    std::vector<double> ws_all;
    const cgrpo::Status s = emulate_fused_policy_loss(config, batch, out, ws_all, &m_all);
    GPU_EXPECT(s.ok(), "whole batch: %s", s.message);
    // Chunks of 5 rows: each chunk copied to a buffer of its own, at another row stride with the
    // same 16-byte phase (the kernels' vector split, hence their rounding, follows a row's alignment).
    const int64_t c = 5, ldz = S + 4;
    const bool seq = config.ratio_level == cgrpo::RatioLevel::sequence_detached;
    const WorkspaceLayout layout(T, seq ? hb.num_sequences : 0, seq);
    std::vector<double> ws_storage(layout.total / sizeof(double) + 1);
    char* ws = reinterpret_cast<char*>(ws_storage.data());
    std::memset(ws, 0xFF, layout.total);
    std::vector<float> chunk(c * ldz), grad(T * S, 0.0f), logp(T), ent(T);
    cgrpo::PolicyLossBatch<float, float> cb = batch;
    cb.logits = chunk.data();
    cb.row_stride = ldz;
    cgrpo::PolicyLossOutputs<float, float> co = out;
    co.grad_logits = chunk.data();
    co.grad_row_stride = ldz;
    co.logp = logp.data();
    co.entropy = ent.data();
    const PolicyLossArgs<float> base = make_policy_loss_args(config, cb, co, hb.layout().offsets, ws, layout);
    const float inv_t = base.params.inv_temperature;
    auto load = [&](int64_t t0, int64_t n) {
      for (int64_t r = 0; r < n; ++r) std::memcpy(&chunk[r * ldz], &logits[(t0 + r) * S], V * sizeof(float));
    };
    const cgrpo::Status run = dispatch_row_threads(V, [&](auto threads) -> cgrpo::Status {
      constexpr int K = decltype(threads)::value;
      if (seq) {
        for (int64_t t0 = 0; t0 < T; t0 += c) {
          const int64_t n = std::min(c, T - t0);
          load(t0, n);
          PolicyLossArgs<float> a = base;
          a.first_row = t0;
          const TokenLogprobArgs<float> stats = gspo_stats_args(a);
          for (int64_t t = t0; t < t0 + n; ++t)
            token_logprobs_row_end(stats, t, emulate_block_row_softmax<float, K>(&chunk[(t - t0) * ldz], V, inv_t));
        }
        for (int64_t i = 0; i < base.sequences.num_sequences; ++i) {
          double sum = 0, count = 0;
          for (int tid = 0; tid < kSequenceThreads; ++tid) {
            double s1 = 0, c1 = 0;
            thread_sequence_sums<kSequenceThreads>(base.rows, base.mask, base.kinds, base.old_logp,
                                                   base.sequences.begin(i), base.sequences.end(i), tid, s1, c1);
            sum += s1;
            count += c1;
          }
          const_cast<float*>(base.seq_log_ratio)[i] = sequence_mean(sum, count);
        }
      }
      for (int64_t t0 = 0; t0 < T; t0 += c) {
        const int64_t n = std::min(c, T - t0);
        load(t0, n);
        PolicyLossArgs<float> a = base;
        a.first_row = t0;
        for (int64_t t = t0; t < t0 + n; ++t) {
          float* row = &chunk[(t - t0) * ldz];
          const TokenStep step = seq ? policy_loss_token_step<float, true>(a, t, RowSoftmax{})
                                     : policy_loss_token_step<float, false>(a, t, emulate_block_row_softmax<float, K>(row, V, inv_t));
          for (int tid = 0; tid < K; ++tid)
            thread_row_gradient<float, K>(row, row, V, targets[t], step.softmax, step.a, step.b, inv_t, tid);
        }
        for (int64_t r = 0; r < n; ++r) std::memcpy(&grad[(t0 + r) * S], &chunk[r * ldz], V * sizeof(float));
      }
      return cgrpo::Status::success();
    });
    GPU_EXPECT(run.ok(), "chunked: %s", run.message);
    const auto* sums_all = reinterpret_cast<const cgrpo::MetricSums<double>*>(
        reinterpret_cast<const char*>(ws_all.data()) + layout.token_sums);
    const auto* sums = reinterpret_cast<const cgrpo::MetricSums<double>*>(ws + layout.token_sums);
    GPU_EXPECT(std::memcmp(sums, sums_all, T * sizeof(cgrpo::MetricSums<double>)) == 0,
               "%s: per-token metric sums differ between chunked and whole-batch rows", to_string(config.ratio_level));
    bool same_grad = true;
    for (int64_t t = 0; t < T; ++t)
      same_grad = same_grad && std::memcmp(&grad[t * S], &grad_all[t * S], V * sizeof(float)) == 0;
    GPU_EXPECT(same_grad, "%s: dJ/dz differs between chunked and whole-batch rows", to_string(config.ratio_level));
    GPU_EXPECT(logp == logp_all && ent == ent_all, "%s: log p or H differ", to_string(config.ratio_level));
  }
}

}  // namespace

int main() {
  test_chunked_rows_emulated();
  test_validation_matches_cpu();
  test_gpu_specific_checks();
  test_logprobs_checks();
  if (failures() == 0) std::printf("PASSED: CUDA fused linear host API (validation, limits, workspace), no GPU needed\n");
  else std::printf("FAILED: %d checks\n", failures());
  return failures() == 0 ? 0 : 1;
}
