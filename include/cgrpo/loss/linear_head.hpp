// cgrpo/loss/linear_head.hpp: the LM head of the fused linear loss (logits = hidden weight^T + bias, formed
// one chunk of tokens at a time), its gradients and chunking, and their validation (CPU and CUDA).
#pragma once

#include <cmath>
#include <cstdint>

#include "cgrpo/base/buffer_overlap.hpp"
#include "cgrpo/base/checked_size.hpp"
#include "cgrpo/loss/config.hpp"
#include "cgrpo/loss/policy_loss_batch.hpp"
#include "cgrpo/base/status.hpp"

namespace cgrpo {

// The last hidden states and the LM head. T = batch.num_tokens and V = batch.vocab_size (the
// shard's size in the vocabulary-parallel variant); the logits z_t = W h_t + b exist only one
// chunk of tokens at a time. Input: float or double on the CPU; float, __half or __nv_bfloat16
// on the GPU.
template <typename Input>
struct LinearHead {
  const Input* hidden = nullptr;    // [T, hidden_row_stride], the first hidden_size entries of a row used
  int64_t hidden_size = 0;          // H
  int64_t hidden_row_stride = 0;    // 0: H
  const Input* weight = nullptr;    // [V, weight_row_stride], row j the output embedding of token j
  int64_t weight_row_stride = 0;    // 0: H
  const Input* bias = nullptr;      // [V], optional

  int64_t hidden_stride() const { return hidden_row_stride == 0 ? hidden_size : hidden_row_stride; }
  int64_t weight_stride() const { return weight_row_stride == 0 ? hidden_size : weight_row_stride; }
};

// dJ/dhidden, dJ/dweight and dJ/dbias. Any of them may be null (not computed); all null is the
// forward pass only. grad_hidden is overwritten and may be head.hidden itself (in place, the same
// stride: each chunk's rows are read for the last time before they are written). grad_weight and
// grad_bias are overwritten, or added to when `accumulate` (a weight tied to the input embedding,
// or gradient accumulation over micro-batches). Grad: Input on the CPU; float on the GPU, where
// grad_hidden stays in the Input type.
template <typename Input, typename Grad = Input>
struct LinearHeadGrads {
  Input* grad_hidden = nullptr;        // [T, grad_hidden_row_stride]
  int64_t grad_hidden_row_stride = 0;  // 0: H
  Grad* grad_weight = nullptr;         // [V, grad_weight_row_stride]
  int64_t grad_weight_row_stride = 0;  // 0: H
  Grad* grad_bias = nullptr;           // [V]
  bool accumulate = false;             // grad_weight, grad_bias: += instead of =

  bool any() const { return grad_hidden || grad_weight || grad_bias; }
  int64_t hidden_stride(int64_t H) const { return grad_hidden_row_stride == 0 ? H : grad_hidden_row_stride; }
  int64_t weight_stride(int64_t H) const { return grad_weight_row_stride == 0 ? H : grad_weight_row_stride; }
};

// How many tokens' logits exist at once: `tokens` rows, or as many as fit in `max_bytes` (the
// [chunk, V] buffer, its rows padded to 64 bytes). Memory O(chunk x V) instead of O(T x V); a
// chunk of 64 or more rows keeps the GEMMs efficient.
struct LinearChunking {
  int64_t tokens = 0;                          // > 0: rows per chunk; 0: from max_bytes
  int64_t max_bytes = int64_t{256} << 20;      // the buffer's budget when tokens = 0
};

// Entries of a padded chunk row: V rounded up to 64 bytes.
inline int64_t chunk_row_stride(int64_t vocab, int64_t elem_bytes) {
  const int64_t per_line = elem_bytes >= 64 ? 1 : 64 / elem_bytes;
  return (vocab + per_line - 1) / per_line * per_line;
}

// Rows per chunk for T tokens of V logits of elem_bytes each (>= 1, <= max(T, 1)); 0 and an error
// when the budget holds no row. Checked arithmetic: V near INT64_MAX is an error, not a wrap.
inline Status chunk_rows(const LinearChunking& c, int64_t num_tokens, int64_t vocab, int64_t elem_bytes,
                         int64_t* rows) {
  *rows = 0;
  if (c.tokens < 0)
    return make_error(StatusCode::invalid_argument, "chunking.tokens must be >= 0 (0: from max_bytes), got %lld",
                      static_cast<long long>(c.tokens));
  const int64_t stride = chunk_row_stride(vocab, elem_bytes);
  int64_t row_bytes = 0;
  if (stride < vocab || !checked_mul(stride, elem_bytes, &row_bytes))
    return make_error(StatusCode::invalid_argument, "vocab_size %lld: a row of logits overflows int64 bytes",
                      static_cast<long long>(vocab));
  int64_t n = c.tokens;
  if (n == 0) {
    if (c.max_bytes < row_bytes)
      return make_error(StatusCode::invalid_argument,
                        "chunking.max_bytes (%lld) holds no row of logits (%lld bytes for V = %lld): raise it or set "
                        "chunking.tokens",
                        static_cast<long long>(c.max_bytes), static_cast<long long>(row_bytes),
                        static_cast<long long>(vocab));
    n = c.max_bytes / row_bytes;
  }
  const int64_t cap = num_tokens > 0 ? num_tokens : 1;
  *rows = n < cap ? n : cap;
  int64_t total = 0;
  if (!checked_mul(*rows, row_bytes, &total)) {
    *rows = 0;
    return make_error(StatusCode::invalid_argument, "a chunk of %lld rows of %lld bytes overflows int64",
                      static_cast<long long>(n), static_cast<long long>(row_bytes));
  }
  return Status::success();
}

// The head's arrays read by a call: hidden [T, H], weight [V, H], bias [V].
template <typename Input>
void add_head_inputs(int64_t num_tokens, int64_t vocab, const LinearHead<Input>& h, BufferTable& table) {
  table.input(row_span("hidden", h.hidden, num_tokens, h.hidden_size, h.hidden_stride()));
  table.input(row_span("weight", h.weight, vocab, h.hidden_size, h.weight_stride()));
  table.input(array_span("bias", h.bias, vocab));
}

// The gradients a call writes; grad_hidden may be the hidden states themselves (in place).
template <typename Input, typename Grad>
void add_head_outputs(int64_t num_tokens, int64_t vocab, int64_t hidden_size, const LinearHeadGrads<Input, Grad>& g,
                      BufferTable& table) {
  table.output(row_span("grad_hidden", g.grad_hidden, num_tokens, hidden_size, g.hidden_stride(hidden_size), "hidden"));
  table.output(row_span("grad_weight", g.grad_weight, vocab, hidden_size, g.weight_stride(hidden_size)));
  table.output(array_span("grad_bias", g.grad_bias, vocab));
}

// The head's sizes, strides and pointers (reads no array).
template <typename Input, typename Grad>
Status validate_linear_head(int64_t num_tokens, const LinearHead<Input>& head, const LinearHeadGrads<Input, Grad>& grads) {
  const int64_t H = head.hidden_size;
  if (H <= 0)
    return make_error(StatusCode::invalid_argument, "head.hidden_size must be > 0, got %lld", static_cast<long long>(H));
  auto stride_ok = [H](int64_t s) { return s == 0 || s >= H; };
  if (!stride_ok(head.hidden_row_stride) || !stride_ok(head.weight_row_stride) ||
      !stride_ok(grads.grad_hidden_row_stride) || !stride_ok(grads.grad_weight_row_stride))
    return make_error(StatusCode::invalid_argument,
                      "row strides must be 0 or >= hidden_size (%lld): hidden %lld, weight %lld, grad_hidden %lld, "
                      "grad_weight %lld",
                      static_cast<long long>(H), static_cast<long long>(head.hidden_row_stride),
                      static_cast<long long>(head.weight_row_stride),
                      static_cast<long long>(grads.grad_hidden_row_stride),
                      static_cast<long long>(grads.grad_weight_row_stride));
  if (!head.weight) return make_error(StatusCode::invalid_argument, "head.weight must not be null");
  if (num_tokens > 0 && !head.hidden) return make_error(StatusCode::invalid_argument, "head.hidden must not be null");
  if (grads.grad_hidden && static_cast<const void*>(grads.grad_hidden) == static_cast<const void*>(head.hidden) &&
      grads.hidden_stride(H) != head.hidden_stride())
    return make_error(StatusCode::invalid_argument,
                      "grad_hidden (output) overlaps hidden (input): an in-place gradient needs grad_hidden_row_stride "
                      "== hidden_row_stride, got %lld and %lld",
                      static_cast<long long>(grads.hidden_stride(H)), static_cast<long long>(head.hidden_stride()));
  return Status::success();
}

// Everything of a fused linear loss call that needs no array read: the batch as the fused loss
// checks it (its logits null: they come from the head), the head, the chunking, and that no
// output shares memory with an input or another output (grad_hidden == hidden allowed, same
// stride). Shared by the CPU path and the CUDA host API.
template <typename Input, typename Real, typename Grad>
Status validate_linear_loss_shape(const LossConfig& config, const PolicyLossBatch<Input, Real>& batch,
                                  const LinearHead<Input>& head, const PolicyLossOutputs<Input, Real>& out,
                                  const LinearHeadGrads<Input, Grad>& grads, const LinearChunking& chunking,
                                  int64_t chunk_elem_bytes) {
  if (batch.logits)
    return make_error(StatusCode::invalid_argument,
                      "batch.logits must be null: the fused linear loss forms the logits from head.hidden and "
                      "head.weight");
  if (batch.row_stride != 0)
    return make_error(StatusCode::invalid_argument, "batch.row_stride must be 0 (there are no logits rows), got %lld",
                      static_cast<long long>(batch.row_stride));
  if (out.grad_logits)
    return make_error(StatusCode::invalid_argument,
                      "outputs.grad_logits must be null: the fused linear loss writes grads.grad_hidden, grad_weight "
                      "and grad_bias");
  CGRPO_RETURN_IF_ERROR(validate_batch_shape(config, batch, out, /*logits_in_batch=*/false));
  CGRPO_RETURN_IF_ERROR(validate_linear_head(batch.num_tokens, head, grads));
  int64_t rows = 0;
  CGRPO_RETURN_IF_ERROR(chunk_rows(chunking, batch.num_tokens, batch.vocab_size, chunk_elem_bytes, &rows));
  BufferTable table;
  add_batch_inputs(config, batch, table);
  add_head_inputs(batch.num_tokens, batch.vocab_size, head, table);
  add_loss_outputs(batch, out, table);
  add_head_outputs(batch.num_tokens, batch.vocab_size, head.hidden_size, grads, table);
  return check_buffers(table);
}

// The log-prob pass's arguments: validate_token_logprobs_args without logits, the head, chunking,
// and that logp / entropy share no memory with an input or each other.
template <typename Input, typename Real>
Status validate_linear_logprobs_shape(int64_t num_tokens, int64_t vocab_size, const LinearHead<Input>& head,
                                      const int32_t* target_ids, double temperature, const Real* logp,
                                      const Real* entropy, const LinearChunking& chunking, int64_t chunk_elem_bytes) {
  if (num_tokens < 0 || vocab_size <= 0)
    return make_error(StatusCode::invalid_argument,
                      "fused_linear_token_logprobs: num_tokens (%lld) must be >= 0 and vocab_size (%lld) > 0",
                      static_cast<long long>(num_tokens), static_cast<long long>(vocab_size));
  CGRPO_RETURN_IF_ERROR(check_temperature(temperature, "temperature"));
  CGRPO_RETURN_IF_ERROR(validate_linear_head(num_tokens, head, LinearHeadGrads<Input, Input>{}));
  if (num_tokens > 0 && (!target_ids || !logp))
    return make_error(StatusCode::invalid_argument, "fused_linear_token_logprobs: target_ids and logp must not be null");
  int64_t rows = 0;
  CGRPO_RETURN_IF_ERROR(chunk_rows(chunking, num_tokens, vocab_size, chunk_elem_bytes, &rows));
  BufferTable table;
  add_head_inputs(num_tokens, vocab_size, head, table);
  table.input(array_span("target_ids", target_ids, num_tokens));
  table.output(array_span("logp", logp, num_tokens));
  table.output(array_span("entropy", entropy, num_tokens));
  return check_buffers(table);
}

}  // namespace cgrpo
