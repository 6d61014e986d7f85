// tests/cuda/test_cuda_host_api.cu: the host side of the CUDA API, which needs no GPU: validation
// gives the CPU path's messages before any CUDA call, workspace sizes, the status word's decoding.
#include <cstring>
#include <string>
#include <vector>

#include <cgrpo/presets/trl_presets.hpp>
#include <cgrpo/presets/verl_presets.hpp>

#include "support_headers.hpp"  // support::catalog
#include "gpu_test_util.cuh"
#include "cgrpo/cuda/cgrpo_cuda.cuh"

namespace {

using namespace gpu_test;
using cgrpo::LossConfig;

struct FakeBatch {
  cgrpo::PolicyLossBatch<float, float> batch;
  cgrpo::PolicyLossOutputs<float, float> out;
  cgrpo::LossMetrics metrics;
  FakeBatch() {
    batch.logits = fake<const float>(0x10000000);
    set_fake_token_inputs(batch);
    out.grad_logits = fake<float>(0x30000000);
    out.metrics = &metrics;
  }
};

// The GPU API gives validate_batch_shape's exact Status (the CPU path's first step) and
// returns before any CUDA call: on this machine a CUDA call without a device would return
// cuda_error, so an equal message also shows that nothing was enqueued.
void expect_same_as_cpu(const char* name, const LossConfig& config, const FakeBatch& f) {
  const cgrpo::Status want = cgrpo::validate_batch_shape(config, f.batch, f.out);
  std::vector<char> ws(1 << 20);
  const cgrpo::Status got =
      cgrpo::cuda::fused_policy_loss(config, f.batch, f.out, nullptr, ws.data(), ws.size(), nullptr);
  GPU_EXPECT(!want.ok(), "%s: the CPU validation should reject this batch", name);
  GPU_EXPECT(got.code == want.code && std::strcmp(got.message, want.message) == 0, "%s: GPU '%s' vs CPU '%s'", name,
             got.message, want.message);
}

void test_validation_matches_cpu() {
  LossConfig c;
  {
    FakeBatch f;
    f.batch.vocab_size = 0;
    expect_same_as_cpu("vocab_size 0", c, f);
  }
  {
    FakeBatch f;
    f.batch.row_stride = 999;
    expect_same_as_cpu("row_stride < V", c, f);
  }
  {
    FakeBatch f;
    f.out.metrics = nullptr;
    expect_same_as_cpu("metrics null", c, f);
  }
  {
    FakeBatch f;
    f.batch.target_ids = nullptr;
    expect_same_as_cpu("target_ids null", c, f);
  }
  {
    FakeBatch f;
    f.batch.num_tokens = -1;
    expect_same_as_cpu("negative num_tokens", c, f);
  }
  {
    FakeBatch f;
    LossConfig k = cgrpo::verl_grpo().loss;
    expect_same_as_cpu("kl without ref_logp", k, f);
  }
  {
    FakeBatch f;
    f.out.grad_logits = const_cast<float*>(f.batch.logits) + 10;
    expect_same_as_cpu("grad overlaps logits", c, f);
  }
  {
    FakeBatch f;
    f.out.grad_logits = const_cast<float*>(f.batch.logits);
    f.out.grad_row_stride = 1024;
    expect_same_as_cpu("in place with another stride", c, f);
  }
  {
    FakeBatch f;
    LossConfig bad = c;
    bad.temperature = 0;
    expect_same_as_cpu("temperature 0", bad, f);
  }
  {
    FakeBatch f;
    LossConfig g = cgrpo::verl_gspo().loss;
    const std::vector<int64_t> offsets = {0, 10, 20};  // covers 20 rows, the batch has 64
    f.batch.layout = cgrpo::SequenceLayout::packed(2, offsets.data());
    expect_same_as_cpu("gspo layout does not cover the batch", g, f);
  }
}

void test_gpu_specific_checks() {
  FakeBatch f;
  const LossConfig c;
  const size_t need = cgrpo::cuda::fused_policy_loss_workspace_size(c, f.batch.num_tokens, 0);
  std::vector<char> ws(need);
  cgrpo::Status s = cgrpo::cuda::fused_policy_loss(c, f.batch, f.out, nullptr, ws.data(), need - 1, nullptr);
  GPU_EXPECT(s.code == cgrpo::StatusCode::invalid_argument && std::strstr(s.message, "workspace needs"),
             "small workspace: %s", s.message);
  s = cgrpo::cuda::fused_policy_loss(c, f.batch, f.out, nullptr, nullptr, need, nullptr);
  GPU_EXPECT(s.code == cgrpo::StatusCode::invalid_argument && std::strstr(s.message, "(null)"), "null workspace: %s",
             s.message);
  {
    // The CPU path's optional per-token outputs are written on the GPU too (they used to be refused):
    // the plan (host only, no CUDA call) accepts them and adds their kernel to the single-kernel path.
    FakeBatch g;
    g.out.policy_factor = fake<float>(0x30100000);
    g.out.token_terms = fake<uint8_t>(0x30200000);
    cgrpo::cuda::LossPlan<float> plan;
    s = cgrpo::cuda::plan_policy_loss(c, g.batch, g.out, nullptr, ws.data(), need, &plan);
    GPU_EXPECT(s.ok() && !plan.two_pass && plan.uncoupled_outputs, "policy_factor / token_terms on the GPU: %s",
               s.message);
  }
  // A workspace that is not 16-byte aligned (the status word's 64-bit atomics would fault).
  std::vector<char> big(need + 64);
  char* odd = big.data() + (16 - reinterpret_cast<uintptr_t>(big.data()) % 16) % 16 + 8;
  s = cgrpo::cuda::fused_policy_loss(c, f.batch, f.out, nullptr, odd, need, nullptr);
  GPU_EXPECT(s.code == cgrpo::StatusCode::invalid_argument && std::strstr(s.message, "16-byte aligned"),
             "misaligned workspace: %s", s.message);
  {
    std::vector<char> tw(cgrpo::cuda::token_logprobs_workspace_size() + 64);
    char* todd = tw.data() + (16 - reinterpret_cast<uintptr_t>(tw.data()) % 16) % 16 + 8;
    s = cgrpo::cuda::token_logprobs(fake<const float>(0x10000000), 4, 10, 0, fake<const int32_t>(0x20000000), 1.0,
                                    fake<float>(0x30000000), nullptr, todd, cgrpo::cuda::token_logprobs_workspace_size(),
                                    nullptr);
    GPU_EXPECT(s.code == cgrpo::StatusCode::invalid_argument && std::strstr(s.message, "16-byte aligned"),
               "token_logprobs misaligned workspace: %s", s.message);
  }
  LossConfig g = cgrpo::verl_gspo().loss;
  const std::vector<int64_t> offsets = {0, 30, 64};
  f.batch.layout = cgrpo::SequenceLayout::packed(2, offsets.data());
  std::vector<char> ws2(cgrpo::cuda::fused_policy_loss_workspace_size(g, 64, 2));
  s = cgrpo::cuda::fused_policy_loss(g, f.batch, f.out, nullptr, ws2.data(), ws2.size(), nullptr);
  GPU_EXPECT(s.code == cgrpo::StatusCode::invalid_argument && std::strstr(s.message, "device_sequence_offsets"),
             "gspo without device offsets: %s", s.message);

  // Workspace: about 173 bytes per token (the two-pass parts are always reserved), more with verl's
  // rollout correction (per row) and TRL's sampler pass (per token), growing with T.
  LossConfig r = cgrpo::verl_decoupled(cgrpo::verl_grpo()).loss;
  LossConfig t = cgrpo::trl_vespo().loss;
  const size_t w1 = cgrpo::cuda::fused_policy_loss_workspace_size(c, 1000, 10);
  const size_t w2 = cgrpo::cuda::fused_policy_loss_workspace_size(c, 2000, 10);
  const size_t wg = cgrpo::cuda::fused_policy_loss_workspace_size(g, 1000, 10);
  const size_t wr = cgrpo::cuda::fused_policy_loss_workspace_size(r, 1000, 10);
  const size_t wt = cgrpo::cuda::fused_policy_loss_workspace_size(t, 1000, 10);
  GPU_EXPECT(w2 > w1 && wg == w1 && w2 - w1 >= 990 * (sizeof(cgrpo::MetricSums<double>) + 37),
             "workspace sizes %zu %zu %zu", w1, w2, wg);
  GPU_EXPECT(wr >= w1 + 10 * sizeof(cgrpo::RolloutBatchSums) && wt >= w1 + 1000 * 33, "rollout %zu, sampler %zu vs %zu",
             wr, wt, w1);
  GPU_EXPECT(w1 < 1000 * 200 + 16384 && wt < 1000 * 240 + 16384, "workspace for 1000 tokens is O(T): %zu / %zu bytes",
             w1, wt);
}

// Which launches a call plans, for every config of the catalog with the caller's weights (where its
// plan allows them) and computed weights: one fused kernel exactly when the pass plan has no pre-pass
// (cgrpo::plan_passes: no coupling and the caller's weights), two passes otherwise (computed weights
// always); the rows the row kernels see: a padded layout always, a packed one from device offsets,
// refused without them where the plan needs the layout, one row of every token where it does not.
void test_plans() {
  std::vector<char> ws(1 << 22);
  const std::vector<int64_t> offsets = {0, 30, 64};
  int one_pass = 0, two_pass = 0, needs_layout = 0, no_layout = 0;
  for (const support::CatalogEntry& e : support::catalog()) {
    const LossConfig& config = e.config();
    for (const bool computed : {false, true}) {
      FakeBatch f;
      f.batch.layout = cgrpo::SequenceLayout::padded(4, 16);
      f.batch.ref_logp = fake<const float>(0x20060000);
      f.batch.rollout_logp = fake<const float>(0x20070000);
      f.batch.kl_weights = fake<const float>(0x20080000);
      if (computed) f.batch.pg_weights = f.batch.entropy_weights = f.batch.kl_weights = nullptr;
      const cgrpo::PassPlan want = cgrpo::plan_passes(config, f.batch);
      if (!computed && want.requires_computed_weights) continue;  // the config refuses the caller's weights
      const std::string name = e.name + (computed ? ", computed weights" : ", caller weights");
      const char* n = name.c_str();
      GPU_EXPECT(!computed || want.any_prepass, "%s: computed weights plan no pre-pass", n);
      (want.any_prepass ? two_pass : one_pass) += 1;
      (want.needs_layout ? needs_layout : no_layout) += 1;
      cgrpo::cuda::LossPlan<float> plan;
      cgrpo::Status s = cgrpo::cuda::plan_policy_loss(config, f.batch, f.out, nullptr, ws.data(), ws.size(), &plan);
      GPU_EXPECT(s.ok() && plan.two_pass == want.any_prepass && plan.rows.num_sequences == 4 &&
                     plan.rows.padded_length == 16,
                 "%s: plan %s, two_pass %d (want %d), rows %lld", n, s.message, plan.two_pass, want.any_prepass,
                 (long long)plan.rows.num_sequences);
      // A packed layout in device memory: needed by every config whose plan reads the layout.
      f.batch.layout = cgrpo::SequenceLayout::packed(2, offsets.data());
      s = cgrpo::cuda::plan_policy_loss(config, f.batch, f.out, nullptr, ws.data(), ws.size(), &plan);
      if (want.needs_layout) {
        GPU_EXPECT(s.code == cgrpo::StatusCode::invalid_argument && std::strstr(s.message, "device_sequence_offsets"),
                   "%s, packed without device offsets: %s", n, s.message);
      } else {
        // Not needed: one row of every token (the per-row clip metrics are then the batch's).
        GPU_EXPECT(s.ok() && plan.rows.num_sequences == 1 && plan.rows.padded_length == 64,
                   "%s, packed without device offsets, not needed: %s, rows %lld", n, s.message,
                   (long long)plan.rows.num_sequences);
      }
      const int64_t* d_offsets = fake<const int64_t>(0x20090000);
      s = cgrpo::cuda::plan_policy_loss(config, f.batch, f.out, d_offsets, ws.data(), ws.size(), &plan);
      GPU_EXPECT(s.ok() && plan.rows.num_sequences == 2 && plan.rows.offsets == d_offsets &&
                     plan.two_pass == want.any_prepass,
                 "%s, packed: %s", n, s.message);
    }
  }
  // The catalog reaches both launch plans and both layout rules.
  GPU_EXPECT(one_pass >= 10 && two_pass >= 20 && needs_layout >= 10 && no_layout >= 10,
             "catalog plans: %d one-pass, %d two-pass, %d read the layout, %d do not", one_pass, two_pass, needs_layout,
             no_layout);
}

// What policy_loss_metrics() decodes from the workspace's header: the CPU path's finalize, a
// non-finite loss or metric refused as on the CPU path, TRL's per-row clip metrics.
void test_metrics_header() {
  cgrpo::cuda::MetricsInfo info{};
  info.metric_mean_eps = 0.5;
  info.num_rows = 4;
  info.sequence_level = 1;
  cgrpo::cuda::MetricsHeader h;
  cgrpo::cuda::metrics_header_begin(&h, info);
  h.sums.initial = 2;
  h.sums.ratio = 3;
  h.row_clip = cgrpo::cuda::row_clip_merge(cgrpo::cuda::row_clip_of_row(2, 1, 0), cgrpo::cuda::row_clip_of_row(4, 0, 1));
  h.row_clip = cgrpo::cuda::row_clip_merge(h.row_clip, cgrpo::cuda::row_clip_of_row(0, 0, 0));
  cgrpo::LossMetrics m;
  cgrpo::Status s = cgrpo::cuda::finalize_metrics_header(h, &m);
  GPU_EXPECT(s.ok() && m.ratio_mean == 3 / 2.5, "metric_mean_eps: ratio_mean %g (want %g): %s", m.ratio_mean, 3 / 2.5,
             s.message);
  // Rows: 1/2 low, 1/4 high; one empty row of 4 (sequence level: means over every row, low_min 0).
  GPU_EXPECT(m.clip_ratio_low_mean == 0.5 / 4 && m.clip_ratio_high_mean == 0.25 / 4 && m.clip_ratio_low_min == 0 &&
                 m.clip_ratio_high_max == 0.25,
             "row clip metrics %g %g %g %g", m.clip_ratio_low_mean, m.clip_ratio_high_mean, m.clip_ratio_low_min,
             m.clip_ratio_high_max);
  // A finite loss with a metric that overflowed (the mean ratio of clipped tokens): refused, naming
  // the metric, as the CPU path's first_non_finite_metric check does; metrics untouched.
  h.sums.ratio = INFINITY;
  cgrpo::LossMetrics kept = m;
  s = cgrpo::cuda::finalize_metrics_header(h, &m);
  GPU_EXPECT(s.code == cgrpo::StatusCode::non_finite && std::strstr(s.message, "metrics.ratio_mean is not finite") &&
                 m.ratio_mean == kept.ratio_mean,
             "non-finite metric: %s", s.message);
  h.sums.loss = INFINITY;
  s = cgrpo::cuda::finalize_metrics_header(h, &m);
  GPU_EXPECT(s.code == cgrpo::StatusCode::non_finite && std::strncmp(s.message, "the loss is not finite", 22) == 0,
             "non-finite loss: %s", s.message);
}

void test_token_logprobs_validation() {
  const int32_t* targets = fake<const int32_t>(0x20000000);
  const float* logits = fake<const float>(0x10000000);
  float* out = fake<float>(0x30000000);
  std::vector<char> ws(cgrpo::cuda::token_logprobs_workspace_size());
  struct Case {
    const char* name;
    int64_t T, V, stride;
    double tau;
    bool null_logits;
  };
  const Case cases[] = {{"V = 0", 4, 0, 0, 1.0, false},
                        {"T < 0", -1, 10, 0, 1.0, false},
                        {"stride < V", 4, 10, 9, 1.0, false},
                        {"temperature 0", 4, 10, 0, 0.0, false},
                        {"temperature NaN", 4, 10, 0, NAN, false},
                        {"null logits", 4, 10, 0, 1.0, true}};
  for (const Case& k : cases) {
    const std::vector<double> dummy(1);
    double* d_out = nullptr;
    const cgrpo::Status want = cpu_token_logprobs(k.null_logits ? nullptr : dummy.data(), k.T, k.V, k.stride,
                                                  k.null_logits ? nullptr : reinterpret_cast<const int32_t*>(dummy.data()),
                                                  k.tau, k.null_logits ? nullptr : d_out, nullptr);
    const cgrpo::Status got = cgrpo::cuda::token_logprobs(k.null_logits ? nullptr : logits, k.T, k.V, k.stride, targets,
                                                          k.tau, out, nullptr, ws.data(), ws.size(), nullptr);
    GPU_EXPECT(!want.ok() && got.code == want.code && std::strcmp(got.message, want.message) == 0,
               "token_logprobs %s: GPU '%s' vs CPU '%s'", k.name, got.message, want.message);
  }
}

void test_status_word_decoding() {
  cgrpo::cuda::DeviceStatus s;
  std::memset(&s, 0xFF, sizeof(s));
  GPU_EXPECT(cgrpo::cuda::decode_device_status(s).ok(), "all-ones status word means no error");
  s.first[cgrpo::cuda::kNonFiniteRow] = (7ull << 32);
  s.first[cgrpo::cuda::kTargetOutOfRange] = (9ull << 32) | static_cast<uint32_t>(-1);
  s.vocab_size = 1003;
  cgrpo::Status st = cgrpo::cuda::decode_device_status(s);
  GPU_EXPECT(st.code == cgrpo::StatusCode::out_of_range &&
                 std::string(st.message) == "target_ids[9] = -1 is outside [0, 1003)",
             "ids are reported before logits, with the CPU message: %s", st.message);
  s.first[cgrpo::cuda::kTargetOutOfRange] = ~0ull;
  st = cgrpo::cuda::decode_device_status(s);
  GPU_EXPECT(st.code == cgrpo::StatusCode::non_finite && std::strncmp(st.message, "logits row 7 holds NaN", 22) == 0,
             "non-finite row: %s", st.message);
  s.first[cgrpo::cuda::kNonFiniteRow] = ~0ull;
  s.first[cgrpo::cuda::kNonFiniteValue] = (3ull << 32) | cgrpo::cuda::kFieldOldLogp;
  st = cgrpo::cuda::decode_device_status(s);
  GPU_EXPECT(std::string(st.message) == "old_logp[3] is not finite", "non-finite value: %s", st.message);
  // Faults of several kinds: the lowest row among ids, masks/kinds and values, as the CPU walks
  // the tokens; on one row, id before mask/kind before value.
  s.first[cgrpo::cuda::kTargetOutOfRange] = (9ull << 32) | 2000u;
  s.first[cgrpo::cuda::kNonFiniteRow] = (1ull << 32);
  st = cgrpo::cuda::decode_device_status(s);
  GPU_EXPECT(std::string(st.message) == "old_logp[3] is not finite", "lowest row across kinds: %s", st.message);
  s.first[cgrpo::cuda::kInvalidMaskOrKind] = (3ull << 32) | 7u;
  st = cgrpo::cuda::decode_device_status(s);
  GPU_EXPECT(std::string(st.message) == "mask[3] = 7 must be 0 or 1", "mask before value on one row: %s", st.message);
  s.first[cgrpo::cuda::kTargetOutOfRange] = (3ull << 32) | 2000u;
  st = cgrpo::cuda::decode_device_status(s);
  GPU_EXPECT(std::string(st.message) == "target_ids[3] = 2000 is outside [0, 1003)", "id first on one row: %s",
             st.message);
  // A gradient that overflowed the dtype (issue 13, class 9 a): named with its row and dtype, and
  // reported after every other kind, as the CPU path finds it after the per-token pass.
  std::memset(&s, 0xFF, sizeof(s));
  s.first[cgrpo::cuda::kGradientOverflow] = (5ull << 32) | cgrpo::cuda::LogitTraits<__half>::code;
  st = cgrpo::cuda::decode_device_status(s);
  GPU_EXPECT(st.code == cgrpo::StatusCode::non_finite &&
                 std::strncmp(st.message, "dJ/dlogits row 5 overflows fp16", 31) == 0,
             "gradient overflow: %s", st.message);
  s.first[cgrpo::cuda::kNonFiniteTargetLogit] = (8ull << 32) | 4u;
  st = cgrpo::cuda::decode_device_status(s);
  GPU_EXPECT(std::strncmp(st.message, "target_ids[8] = 4 has a -inf logit", 34) == 0,
             "a -inf target logit before an overflow: %s", st.message);
  // The two-pass loss's kinds: a non-finite a_t (after a -inf target logit, before an overflow), a
  // selection byte, a non-finite rollout_logp.
  s.first[cgrpo::cuda::kNonFiniteTargetLogit] = ~0ull;
  s.first[cgrpo::cuda::kNonFiniteTokenGrad] = (12ull << 32);
  st = cgrpo::cuda::decode_device_status(s);
  GPU_EXPECT(st.code == cgrpo::StatusCode::non_finite && std::strncmp(st.message, "token 12: dJ/dlogp is not finite", 32) == 0,
             "a non-finite a_t before an overflow: %s", st.message);
  std::memset(&s, 0xFF, sizeof(s));
  s.first[cgrpo::cuda::kInvalidMaskOrKind] = (4ull << 32) | (cgrpo::cuda::kByteSelection << 8) | 2u;
  st = cgrpo::cuda::decode_device_status(s);
  GPU_EXPECT(std::string(st.message) == "selection[4] = 2 must be 0 or 1", "selection: %s", st.message);
  s.first[cgrpo::cuda::kNonFiniteValue] = (3ull << 32) | cgrpo::cuda::kFieldRolloutLogp;
  st = cgrpo::cuda::decode_device_status(s);
  GPU_EXPECT(std::string(st.message) == "rollout_logp[3] is not finite", "rollout_logp: %s", st.message);

  const cgrpo::Status e = cgrpo::cuda::cuda_status(cudaErrorInvalidValue, "cudaMemcpy(x)", "f.cu", 12);
  GPU_EXPECT(e.code == cgrpo::StatusCode::cuda_error && std::strstr(e.message, "cudaMemcpy(x)") &&
                 std::strstr(e.message, "f.cu:12"),
             "cuda_status: %s", e.message);
}

}  // namespace

int main() {
  test_validation_matches_cpu();
  test_gpu_specific_checks();
  test_plans();
  test_metrics_header();
  test_token_logprobs_validation();
  test_status_word_decoding();
  if (failures() == 0) std::printf("PASSED (%lld checks): CUDA host API (validation, workspace, status word), no GPU needed\n", checks());
  else std::printf("FAILED: %d of %lld checks\n", failures(), checks());
  return failures() == 0 ? 0 : 1;
}
