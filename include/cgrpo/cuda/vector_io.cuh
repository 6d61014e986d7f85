// cgrpo/cuda/vector_io.cuh: the logits element types (fp32, fp16, bf16) and 16-byte packed vectors.
// Conversions to and from float, host and device (the host tests run the per-thread row code thread by thread).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace cgrpo::cuda {

template <typename Logit> struct LogitTraits;
// overflow: the smallest float that from_float rounds to inf (round to nearest even: the
// halfway point above the largest finite value rounds up to inf); code: the dtype's number in
// DeviceStatus details.
template <> struct LogitTraits<float> {
  static constexpr const char* name = "fp32";
  static constexpr float overflow = INFINITY;
  static constexpr uint32_t code = 0;
  __host__ __device__ __forceinline__ static float to_float(float x) { return x; }
  __host__ __device__ __forceinline__ static float from_float(float x) { return x; }
};
template <> struct LogitTraits<__half> {
  static constexpr const char* name = "fp16";
  static constexpr float overflow = 65520.0f;  // 65504 + half its ulp of 32
  static constexpr uint32_t code = 1;
  __host__ __device__ __forceinline__ static float to_float(__half x) { return __half2float(x); }
  __host__ __device__ __forceinline__ static __half from_float(float x) { return __float2half_rn(x); }
};
template <> struct LogitTraits<__nv_bfloat16> {
  static constexpr const char* name = "bf16";
  static constexpr float overflow = 0x1.ffp+127f;  // 0x7F7F8000: bf16's max 0x1.fep127 + half its ulp
  static constexpr uint32_t code = 2;
  __host__ __device__ __forceinline__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  __host__ __device__ __forceinline__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

// 16 bytes of logits: 4 fp32 or 8 fp16/bf16, loaded and stored with one 128-bit instruction.
constexpr int kVectorBytes = 16;
template <typename Logit>
struct alignas(kVectorBytes) Packed {
  static constexpr int size = kVectorBytes / static_cast<int>(sizeof(Logit));
  Logit v[size];
};

// Elements before the first 16-byte boundary of a row (a row may start anywhere when
// the row stride is not a multiple of the vector width); at most `n`.
template <typename Logit>
__host__ __device__ __forceinline__ int64_t elements_to_alignment(const Logit* p, int64_t n) {
  const int64_t misaligned_bytes = static_cast<int64_t>(reinterpret_cast<uintptr_t>(p) & (kVectorBytes - 1));
  const int64_t head = ((kVectorBytes - misaligned_bytes) & (kVectorBytes - 1)) / static_cast<int64_t>(sizeof(Logit));
  return head < n ? head : n;
}

// True when two rows are misaligned by the same number of bytes: then one prologue
// aligns both and the gradient sweep can read and write 16 bytes at a time.
template <typename Logit>
__host__ __device__ __forceinline__ bool same_alignment(const Logit* a, const Logit* b) {
  return ((reinterpret_cast<uintptr_t>(a) ^ reinterpret_cast<uintptr_t>(b)) & (kVectorBytes - 1)) == 0;
}

}  // namespace cgrpo::cuda
