// kernels/cgrpo_cuda.cuh: the umbrella header of the CUDA path, for .cu translation units.
// The fused policy loss (every mode of the CPU path: forward + backward, forward only) and the log-prob/entropy pass.
#pragma once

#include "cgrpo/presets.hpp"
#include "kernels/cuda_check.cuh"
#include "kernels/device_status.cuh"
#include "kernels/fused_policy_loss.cuh"
#include "kernels/token_logprobs.cuh"
#include "kernels/workspace.cuh"
