// tests/cuda/test_cuda_emulated.cu: the GPU test's checks with the kernels' code run on the host
// (host_emulation.cuh): the per-row math, the checks and the reductions, verified without a GPU.
// Usage: test_cuda_emulated [float|half|bf16] (default: all three). CTest runs one process per dtype
// so that the three run side by side.
#include <cstring>

#include "policy_loss_checks.cuh"
#include "test_seed.hpp"

namespace {

template <typename T>
void run_dtype(std::mt19937_64& rng) {
  using namespace gpu_test;
  test_against_cpu<T>(rng);
  test_token_logprobs<T>(rng);
  if (std::is_same<T, float>::value) test_empty_batch<float>(rng);
  if (!std::is_same<T, __half>::value) test_flagged_rows<T>(rng);
  test_gradient_overflow<T>(rng);  // issue 13, class 9 (a)
  test_extreme_rows<T>(rng);       // issue 13, class 9 (b) and class 3
}

}  // namespace

int main(int argc, char** argv) {
  using namespace gpu_test;
  emulate_on_host() = true;
  std::mt19937_64 rng = test_seed::fresh_rng();  // prints the seed; CGRPO_TEST_SEED=<n> replays it
  const char* which = argc > 1 ? argv[1] : "all";
  const bool all = std::strcmp(which, "all") == 0;
  if (!all && std::strcmp(which, "float") != 0 && std::strcmp(which, "half") != 0 && std::strcmp(which, "bf16") != 0) {
    std::fprintf(stderr, "usage: test_cuda_emulated [float|half|bf16|all], got %s\n", which);
    return 2;
  }
  if (all || std::strcmp(which, "float") == 0) run_dtype<float>(rng);
  if (all || std::strcmp(which, "half") == 0) run_dtype<__half>(rng);
  if (all || std::strcmp(which, "bf16") == 0) run_dtype<__nv_bfloat16>(rng);
  if (failures() == 0)
    std::printf("PASSED (%lld checks, %s): the kernels' code, emulated on the host, matches the CPU path\n", checks(),
                which);
  else
    std::printf("FAILED: %d of %lld checks (%s)\n", failures(), checks(), which);
  return failures() == 0 ? 0 : 1;
}
