// tests/cuda/test_cuda_kernels.cu: every CUDA kernel against the double-precision CPU path, on random
// batches in fp32, fp16 and bf16. Exits 77 (CTest: skipped) when no CUDA device is present.
#include "policy_loss_checks.cuh"
#include "test_seed.hpp"

int main() {
  using namespace gpu_test;
  if (!have_cuda_device()) return kSkipReturnCode;
  std::mt19937_64 rng = test_seed::fresh_rng();  // prints the seed; CGRPO_TEST_SEED=<n> replays it
  test_against_cpu<float>(rng);
  if (!quick_matrix()) test_against_cpu<__half>(rng);
  test_against_cpu<__nv_bfloat16>(rng);
  test_token_logprobs<float>(rng);
  test_token_logprobs<__half>(rng);
  test_token_logprobs<__nv_bfloat16>(rng);
  test_determinism<__nv_bfloat16>(rng);
  test_determinism<float>(rng);
  test_empty_batch<float>(rng);
  test_flagged_rows<float>(rng);
  test_flagged_rows<__nv_bfloat16>(rng);
  test_gradient_overflow<float>(rng);  // issue 13, class 9 (a)
  test_gradient_overflow<__half>(rng);
  test_gradient_overflow<__nv_bfloat16>(rng);
  test_extreme_rows<float>(rng);  // issue 13, class 9 (b) and class 3
  test_extreme_rows<__half>(rng);
  test_extreme_rows<__nv_bfloat16>(rng);
  if (failures() == 0) std::printf("PASSED (%lld checks): every CUDA kernel matches the CPU path\n", checks());
  else std::printf("FAILED: %d of %lld checks\n", failures(), checks());
  return failures() == 0 ? 0 : 1;
}
