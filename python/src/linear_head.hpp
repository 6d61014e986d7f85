// python/src/linear_head.hpp: the LM head's tensors as the fused LM-head ops read them (linear_ops.cpp: the
// whole head; parallel_ops.cpp: this rank's rows of it): the checks, the cgrpo::LinearHead view, the chunking.
#pragma once

#include "op_common.hpp"

#include <cgrpo/loss/linear_head.hpp>

namespace cgrpo_ops {

// weight [V, H] (rows contiguous, row stride >= H), bias [V] or None, of hidden's dtype. `rows` is
// the hidden states as [T, H]; `v` names V in the messages ("V", or "V_shard" for a rank's rows).
struct Head {
  int64_t V = 0, H = 0;
  Tensor bias;
};

inline Head check_head(const Tensor& rows, const Tensor& weight, const OptTensor& bias, const char* v = "V") {
  Head h;
  h.H = rows.size(1);
  TORCH_CHECK(weight.defined(), "cgrpo: weight must be a defined tensor [", v, ", H], got None");
  cgrpo_torch::detail::check_dense_cpu(weight, "weight");
  TORCH_CHECK(weight.scalar_type() == rows.scalar_type(), "cgrpo: weight must have the dtype of hidden (", rows.scalar_type(),
              "), got ", weight.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == h.H, "cgrpo: weight must be 2-D [", v, ", H] with H = ", h.H,
              " (the last dimension of hidden), got shape ", weight.sizes());
  h.V = weight.size(0);
  TORCH_CHECK(h.V > 0, "cgrpo: weight must have ", v, " > 0 rows, got shape ", weight.sizes());
  TORCH_CHECK(h.H <= 1 || weight.stride(1) == 1, "cgrpo: weight must be contiguous along H (stride(1) = 1), got strides ",
              weight.strides(), "; pass weight.contiguous() (an lm_head.weight.t() view is [H, ", v, "])");
  TORCH_CHECK(h.V <= 1 || weight.stride(0) >= h.H, "cgrpo: weight must have rows that do not overlap (stride(0) >= H), got strides ",
              weight.strides());
  if (given(bias)) {
    const Tensor& b = *bias;
    cgrpo_torch::detail::check_dense_cpu(b, "bias");
    TORCH_CHECK(b.scalar_type() == rows.scalar_type(), "cgrpo: bias must have the dtype of hidden (", rows.scalar_type(),
                "), got ", b.scalar_type());
    TORCH_CHECK(b.dim() == 1 && b.size(0) == h.V, "cgrpo: bias must have shape [", v, "] = [", h.V,
                "] (the rows of weight), got shape ", b.sizes());
    TORCH_CHECK(h.V <= 1 || b.stride(0) == 1, "cgrpo: bias must be contiguous (stride 1), got stride ", b.stride(0),
                "; pass bias.contiguous()");
    h.bias = b;
  }
  return h;
}

template <typename Real>
cgrpo::LinearHead<Real> head_view(const Tensor& rows, const Tensor& weight, const Head& h, int64_t T) {
  cgrpo::LinearHead<Real> head;
  head.hidden = rows.data_ptr<Real>();
  head.hidden_size = h.H;
  head.hidden_row_stride = T <= 1 ? 0 : rows.stride(0);
  head.weight = weight.data_ptr<Real>();
  head.weight_row_stride = h.V <= 1 ? 0 : weight.stride(0);
  head.bias = h.bias.defined() ? h.bias.data_ptr<Real>() : nullptr;
  return head;
}

// dJ/dhidden (hidden's shape), dJ/dweight [V, H], dJ/dbias [V], each allocated when asked for (an
// empty tensor otherwise), and their view for the library.
struct HeadGradTensors {
  Tensor hidden, weight, bias;
  bool want_hidden, want_weight, want_bias;

  HeadGradTensors(const Tensor& h_in, const Head& h, bool want_h, bool want_w, bool want_b)
      : want_hidden(want_h), want_weight(want_w), want_bias(want_b) {
    const auto opts = h_in.options();
    hidden = want_hidden ? torch::empty(h_in.sizes(), opts.memory_format(torch::MemoryFormat::Contiguous))
                         : none_tensor(opts);
    weight = want_weight ? torch::empty({h.V, h.H}, opts) : none_tensor(opts);
    bias = want_bias ? torch::empty({h.V}, opts) : none_tensor(opts);
  }
  template <typename Real>
  cgrpo::LinearHeadGrads<Real, Real> view() const {
    cgrpo::LinearHeadGrads<Real, Real> g;
    if (want_hidden) g.grad_hidden = hidden.data_ptr<Real>();
    if (want_weight) g.grad_weight = weight.data_ptr<Real>();
    if (want_bias) g.grad_bias = bias.data_ptr<Real>();
    return g;
  }
};

inline cgrpo::LinearChunking chunking_of(int64_t chunk_tokens) {
  TORCH_CHECK(chunk_tokens >= 0, "cgrpo: chunk_tokens must be >= 0 (0: a 256 MiB buffer of logits), got ", chunk_tokens);
  cgrpo::LinearChunking c;
  c.tokens = chunk_tokens;
  return c;
}

}  // namespace cgrpo_ops
