// cgrpo/base/macros.hpp: the one portability macro of the library.
// CGRPO_HD marks per-token math that the CPU loop and the CUDA kernels both call.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define CGRPO_HD __host__ __device__ __forceinline__
#else
#define CGRPO_HD inline
#endif
