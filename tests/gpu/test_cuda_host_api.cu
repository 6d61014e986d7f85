// tests/gpu/test_cuda_host_api.cu: the host side of the CUDA API, which needs no GPU: validation
// gives the CPU path's messages before any CUDA call, workspace sizes, the status word's decoding.
#include <cstring>
#include <string>
#include <vector>

#include "gpu_test_util.cuh"
#include "kernels/cgrpo_cuda.cuh"

namespace {

using namespace gpu_test;
using cgrpo::LossConfig;

// Addresses that are never dereferenced: validation must fail before any device access.
template <typename T>
T* fake(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

struct FakeBatch {
  cgrpo::PolicyLossBatch<float, float> batch;
  cgrpo::PolicyLossOutputs<float, float> out;
  cgrpo::LossMetrics metrics;
  FakeBatch() {
    batch.logits = fake<const float>(0x10000000);
    batch.num_tokens = 64;
    batch.vocab_size = 1000;
    batch.target_ids = fake<const int32_t>(0x20000000);
    batch.mask = fake<const uint8_t>(0x20010000);
    batch.advantages = fake<const float>(0x20020000);
    batch.old_logp = fake<const float>(0x20030000);
    batch.pg_weights = fake<const float>(0x20040000);
    batch.entropy_weights = fake<const float>(0x20050000);
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
    LossConfig k = cgrpo::verl_grpo();
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
    LossConfig g = cgrpo::verl_gspo();
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
  LossConfig g = cgrpo::verl_gspo();
  const std::vector<int64_t> offsets = {0, 30, 64};
  f.batch.layout = cgrpo::SequenceLayout::packed(2, offsets.data());
  std::vector<char> ws2(cgrpo::cuda::fused_policy_loss_workspace_size(g, 64, 2));
  s = cgrpo::cuda::fused_policy_loss(g, f.batch, f.out, nullptr, ws2.data(), ws2.size(), nullptr);
  GPU_EXPECT(s.code == cgrpo::StatusCode::invalid_argument && std::strstr(s.message, "device_sequence_offsets"),
             "gspo without device offsets: %s", s.message);

  // Workspace: about 136 bytes per token, more under GSPO, growing with T.
  const size_t w1 = cgrpo::cuda::fused_policy_loss_workspace_size(c, 1000, 10);
  const size_t w2 = cgrpo::cuda::fused_policy_loss_workspace_size(c, 2000, 10);
  const size_t wg = cgrpo::cuda::fused_policy_loss_workspace_size(g, 1000, 10);
  GPU_EXPECT(w2 > w1 && wg > w1 && w2 - w1 >= 999 * sizeof(cgrpo::MetricSums<double>), "workspace sizes %zu %zu %zu",
             w1, w2, wg);
  GPU_EXPECT(w1 < 1000 * 200 + 16384, "workspace for 1000 tokens is O(T): %zu bytes", w1);
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

  const cgrpo::Status e = cgrpo::cuda::cuda_status(cudaErrorInvalidValue, "cudaMemcpy(x)", "f.cu", 12);
  GPU_EXPECT(e.code == cgrpo::StatusCode::cuda_error && std::strstr(e.message, "cudaMemcpy(x)") &&
                 std::strstr(e.message, "f.cu:12"),
             "cuda_status: %s", e.message);
}

}  // namespace

int main() {
  test_validation_matches_cpu();
  test_gpu_specific_checks();
  test_token_logprobs_validation();
  test_status_word_decoding();
  if (failures() == 0) std::printf("PASSED: CUDA host API (validation, workspace, status word), no GPU needed\n");
  else std::printf("FAILED: %d checks\n", failures());
  return failures() == 0 ? 0 : 1;
}
