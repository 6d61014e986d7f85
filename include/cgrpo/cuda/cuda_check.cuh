// cgrpo/cuda/cuda_check.cuh: the one checking macro every CUDA runtime call goes through.
// A failed call becomes a cgrpo::Status (code cuda_error) naming the call, file and line; nothing exits.
#pragma once

#include <cuda_runtime.h>

#include "cgrpo/base/status.hpp"

namespace cgrpo::cuda {

inline Status cuda_status(cudaError_t err, const char* call, const char* file, int line) {
  if (err == cudaSuccess) return Status::success();
  return make_error(StatusCode::cuda_error, "%s failed at %s:%d: %s (%s)", call, file, line, cudaGetErrorName(err),
                    cudaGetErrorString(err));
}

}  // namespace cgrpo::cuda

// Returns a cuda_error Status from the enclosing function when the CUDA call fails.
#define CGRPO_CUDA_CHECK(call) \
  CGRPO_RETURN_IF_ERROR(::cgrpo::cuda::cuda_status((call), #call, __FILE__, __LINE__))
