// tests/cuda/test_cuda_emulated.cu: the GPU test's checks with the kernels' code run on the host
// (host_emulation.cuh): the per-row math, the checks and the reductions, verified without a GPU.
#include "policy_loss_checks.cuh"
#include "test_seed.hpp"

int main() {
  using namespace gpu_test;
  emulate_on_host() = true;
  std::mt19937_64 rng = test_seed::fresh_rng();  // prints the seed; CGRPO_TEST_SEED=<n> replays it
  test_against_cpu<float>(rng);
  test_against_cpu<__half>(rng);
  test_against_cpu<__nv_bfloat16>(rng);
  test_token_logprobs<float>(rng);
  test_token_logprobs<__half>(rng);
  test_token_logprobs<__nv_bfloat16>(rng);
  test_empty_batch<float>(rng);
  test_flagged_rows<float>(rng);
  test_flagged_rows<__nv_bfloat16>(rng);
  test_gradient_overflow<float>(rng);  // issue 13, class 9 (a)
  test_gradient_overflow<__half>(rng);
  test_gradient_overflow<__nv_bfloat16>(rng);
  test_extreme_rows<float>(rng);  // issue 13, class 9 (b) and class 3
  test_extreme_rows<__half>(rng);
  test_extreme_rows<__nv_bfloat16>(rng);
  if (failures() == 0) std::printf("PASSED (%lld checks): the kernels' code, emulated on the host, matches the CPU path\n", checks());
  else std::printf("FAILED: %d of %lld checks\n", failures(), checks());
  return failures() == 0 ? 0 : 1;
}
