// cgrpo/torch/tensor_checks.hpp: the checks the LibTorch wrapper makes of a tensor before it reads any of it.
// Each failure throws c10::Error (TORCH_CHECK) naming the tensor, the rule, and what the tensor has instead.
#pragma once

#include <torch/types.h>  // torch::Tensor, TORCH_CHECK (not <torch/torch.h>: the nn / optim front end triples the compile time)

#include <cstdint>

namespace cgrpo_torch {
namespace detail {

// Dense (strided) CPU memory with no lazy negation: what a raw pointer into it means is what
// the tensor means. Sparse, meta and GPU tensors are refused before data_ptr() is touched.
inline void check_dense_cpu(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "cgrpo_torch: ", name, " must be a CPU tensor, got device ", t.device(),
              " (this wrapper runs the CPU path; docs/embedding.md says how to call the CUDA one)");
  TORCH_CHECK(t.layout() == torch::kStrided, "cgrpo_torch: ", name, " must be a dense (strided) tensor, got layout ",
              t.layout());
  TORCH_CHECK(!t.is_neg(), "cgrpo_torch: ", name, " must not be a lazily negated view; pass ", name,
              ".resolve_neg()");
}

// The dtype of the batch field a tensor feeds, exactly: no conversion that could hide a
// mistake (an int64 id past 2^31, a float tensor where double logits were meant). uint8 fields
// also take bool, which LibTorch stores as the same bytes, 0 or 1.
template <typename T>
void check_dtype(const torch::Tensor& t, const char* name, const char* why) {
  const c10::ScalarType want = c10::CppTypeToScalarType<T>::value;
  const bool bool_as_byte = want == torch::kByte && t.scalar_type() == torch::kBool;
  TORCH_CHECK(t.scalar_type() == want || bool_as_byte, "cgrpo_torch: ", name, " must have dtype ", want,
              want == torch::kByte ? " or Bool" : "", why, ", got ", t.scalar_type());
}

// A 1-D tensor of exactly `length` elements at stride 1; returns its data. `length_name` says
// where the length comes from ("T, the rows of logits").
template <typename T>
const T* checked_vector(const torch::Tensor& t, const char* name, int64_t length, const char* length_name,
                        const char* dtype_why = "") {
  check_dense_cpu(t, name);
  check_dtype<T>(t, name, dtype_why);
  TORCH_CHECK(t.dim() == 1, "cgrpo_torch: ", name, " must be 1-D of shape [", length, "] (", length_name,
              "), got shape ", t.sizes());
  TORCH_CHECK(t.size(0) == length, "cgrpo_torch: ", name, " must have length ", length, " (", length_name,
              "), got length ", t.size(0));
  TORCH_CHECK(length <= 1 || t.stride(0) == 1, "cgrpo_torch: ", name,
              " must be contiguous (stride 1), got stride ", t.stride(0), "; pass ", name, ".contiguous()");
  return static_cast<const T*>(t.data_ptr());
}

// Logits [T, V], float or double, each row contiguous, rows that do not overlap (a row stride
// above V, as in a slice of a wider buffer, is fine). Nothing is copied.
inline void check_logits(const torch::Tensor& z) {
  TORCH_CHECK(z.defined(), "cgrpo_torch: logits must be a defined tensor [T, V], got an undefined tensor");
  check_dense_cpu(z, "logits");
  TORCH_CHECK(z.scalar_type() == torch::kFloat || z.scalar_type() == torch::kDouble,
              "cgrpo_torch: logits must have dtype Float or Double, got ", z.scalar_type());
  TORCH_CHECK(z.dim() == 2, "cgrpo_torch: logits must be 2-D [T, V] (flatten [B, L, V] with reshape({-1, V})), got shape ",
              z.sizes());
  TORCH_CHECK(z.size(1) <= 1 || z.stride(1) == 1, "cgrpo_torch: logits must be contiguous along V (stride(1) = 1), got strides ",
              z.strides(), "; pass logits.contiguous()");
  TORCH_CHECK(z.size(0) <= 1 || z.stride(0) >= z.size(1), "cgrpo_torch: logits must have rows that do not overlap (stride(0) >= V = ",
              z.size(1), "), got strides ", z.strides());
}

}  // namespace detail
}  // namespace cgrpo_torch
