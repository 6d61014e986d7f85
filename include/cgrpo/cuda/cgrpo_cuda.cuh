// cgrpo/cuda/cgrpo_cuda.cuh: the umbrella header of the CUDA path, for .cu translation units.
// The fused policy loss (every mode of the CPU path: forward + backward, forward only) and the log-prob/entropy pass.
#pragma once

#include "cgrpo/presets/presets.hpp"
#include "cgrpo/cuda/cuda_check.cuh"
#include "cgrpo/cuda/device_status.cuh"
#include "cgrpo/cuda/fused_policy_loss.cuh"
#include "cgrpo/cuda/token_logprobs.cuh"
#include "cgrpo/cuda/workspace.cuh"
