// cgrpo/policy_loss_batch.hpp: the inputs and outputs of the fused policy loss,
// as raw pointers plus sizes (caller memory, never copied), and their validation.
#pragma once

#include <cmath>
#include <cstdint>

#include "cgrpo/config.hpp"
#include "cgrpo/layout.hpp"
#include "cgrpo/metrics.hpp"
#include "cgrpo/status.hpp"

namespace cgrpo {

// Token kinds, one byte per token row.
enum TokenKind : uint8_t {
  kInitial = 0,     // sampled on-policy from the question: ratio loss
  kRefinement = 1,  // written after a critique, trained as a response to the question: f(p)
};

// One batch of T token rows. Logit is the logits' element type; Real the type of
// every per-token array (the same as Logit on the CPU; float for bf16/fp16 on the GPU).
template <typename Logit, typename Real = Logit>
struct PolicyLossBatch {
  const Logit* logits = nullptr;  // [T, row_stride], the first vocab_size entries of a row used
  int64_t num_tokens = 0;         // T
  int64_t vocab_size = 0;         // V
  int64_t row_stride = 0;         // elements between rows; 0 means vocab_size

  const int32_t* target_ids = nullptr;   // [T], y_t in [0, V)
  const uint8_t* mask = nullptr;         // [T], 1 valid response token, 0 padding
  const uint8_t* kinds = nullptr;        // [T], TokenKind; nullptr: every token is initial
  const Real* advantages = nullptr;      // [T], the response's advantage on each of its tokens
  const Real* old_logp = nullptr;        // [T], log-prob under the sampling policy
  const Real* ref_logp = nullptr;        // [T], reference policy; needed when config.kl != none
  const Real* pg_weights = nullptr;      // [T], aggregation weights of the policy term
  const Real* entropy_weights = nullptr; // [T], of the entropy term; nullptr: no entropy term
  const Real* kl_weights = nullptr;      // [T], of the KL term; needed when config.kl != none
  SequenceLayout layout;                 // rows of each response; needed for ClipMode::sequence

  int64_t stride() const { return row_stride == 0 ? vocab_size : row_stride; }
};

template <typename Logit, typename Real = Logit>
struct PolicyLossOutputs {
  // [T, grad_row_stride]: dJ/dlogits. May be the logits buffer itself (in place,
  // same stride). nullptr: forward only (loss and metrics, no gradient).
  Logit* grad_logits = nullptr;
  int64_t grad_row_stride = 0;  // 0 means the batch's row stride
  Real* logp = nullptr;         // [T], optional: log p of each target
  Real* entropy = nullptr;      // [T], optional: H of each row
  LossMetrics* metrics = nullptr;  // required: the loss and the metrics
};

// Checks sizes, pointers and the config; reads no array. Shared by the CPU path
// and the CUDA host API, so both report the same errors.
template <typename Logit, typename Real>
Status validate_batch_shape(const LossConfig& config, const PolicyLossBatch<Logit, Real>& b,
                            const PolicyLossOutputs<Logit, Real>& out) {
  CGRPO_RETURN_IF_ERROR(config.validate());
  if (b.num_tokens < 0)
    return make_error(StatusCode::invalid_argument, "num_tokens must be >= 0, got %lld",
                      static_cast<long long>(b.num_tokens));
  if (b.vocab_size <= 0)
    return make_error(StatusCode::invalid_argument, "vocab_size must be > 0, got %lld",
                      static_cast<long long>(b.vocab_size));
  if (b.row_stride != 0 && b.row_stride < b.vocab_size)
    return make_error(StatusCode::invalid_argument, "row_stride (%lld) must be 0 or >= vocab_size (%lld)",
                      static_cast<long long>(b.row_stride), static_cast<long long>(b.vocab_size));
  if (!out.metrics) return make_error(StatusCode::invalid_argument, "outputs.metrics must not be null");
  if (b.num_tokens == 0) return Status::success();
  if (!b.logits) return make_error(StatusCode::invalid_argument, "logits must not be null");
  if (!b.target_ids) return make_error(StatusCode::invalid_argument, "target_ids must not be null");
  if (!b.mask) return make_error(StatusCode::invalid_argument, "mask must not be null");
  if (!b.advantages) return make_error(StatusCode::invalid_argument, "advantages must not be null");
  if (!b.old_logp) return make_error(StatusCode::invalid_argument, "old_logp must not be null");
  if (!b.pg_weights) return make_error(StatusCode::invalid_argument, "pg_weights must not be null");
  if (config.kl != KlEstimator::none && (!b.ref_logp || !b.kl_weights))
    return make_error(StatusCode::invalid_argument, "config.kl = %s needs ref_logp and kl_weights",
                      to_string(config.kl));
  if (config.clip == ClipMode::sequence) {
    CGRPO_RETURN_IF_ERROR(b.layout.validate(b.num_tokens));
  }
  if (out.grad_logits) {
    const int64_t gs = out.grad_row_stride == 0 ? b.stride() : out.grad_row_stride;
    if (gs < b.vocab_size)
      return make_error(StatusCode::invalid_argument, "grad_row_stride (%lld) must be 0 or >= vocab_size (%lld)",
                        static_cast<long long>(gs), static_cast<long long>(b.vocab_size));
    const void* g = out.grad_logits;
    const void* z = b.logits;
    if (g == z && gs != b.stride())
      return make_error(StatusCode::invalid_argument, "in-place gradient needs grad_row_stride == row_stride");
    const char* g0 = static_cast<const char*>(g);
    const char* z0 = static_cast<const char*>(z);
    const char* g1 = g0 + sizeof(Logit) * static_cast<size_t>((b.num_tokens - 1) * gs + b.vocab_size);
    const char* z1 = z0 + sizeof(Logit) * static_cast<size_t>((b.num_tokens - 1) * b.stride() + b.vocab_size);
    if (g != z && g0 < z1 && z0 < g1)
      return make_error(StatusCode::invalid_argument,
                        "grad_logits overlaps logits without being the same buffer (in place needs the same pointer)");
  }
  return Status::success();
}

// Checks every per-token value that lives in host memory: target ids in range,
// finite advantages, log-probs and weights, mask and kinds in {0, 1}. O(T).
template <typename Logit, typename Real>
Status validate_batch_values(const LossConfig& config, const PolicyLossBatch<Logit, Real>& b) {
  auto finite = [](Real v) { return std::isfinite(static_cast<double>(v)); };
  for (int64_t t = 0; t < b.num_tokens; ++t) {
    if (b.target_ids[t] < 0 || b.target_ids[t] >= b.vocab_size)
      return make_error(StatusCode::out_of_range, "target_ids[%lld] = %d is outside [0, %lld)",
                        static_cast<long long>(t), b.target_ids[t], static_cast<long long>(b.vocab_size));
    if (b.mask[t] > 1)
      return make_error(StatusCode::invalid_argument, "mask[%lld] = %d must be 0 or 1", static_cast<long long>(t),
                        b.mask[t]);
    if (b.kinds && b.kinds[t] > 1)
      return make_error(StatusCode::invalid_argument, "kinds[%lld] = %d must be 0 (initial) or 1 (refinement)",
                        static_cast<long long>(t), b.kinds[t]);
    if (!finite(b.advantages[t]))
      return make_error(StatusCode::non_finite, "advantages[%lld] is not finite", static_cast<long long>(t));
    if (!finite(b.pg_weights[t]))
      return make_error(StatusCode::non_finite, "pg_weights[%lld] is not finite", static_cast<long long>(t));
    if (b.entropy_weights && !finite(b.entropy_weights[t]))
      return make_error(StatusCode::non_finite, "entropy_weights[%lld] is not finite", static_cast<long long>(t));
    const bool initial = !b.kinds || b.kinds[t] == kInitial;
    if (initial && b.mask[t] && !finite(b.old_logp[t]))
      return make_error(StatusCode::non_finite, "old_logp[%lld] is not finite", static_cast<long long>(t));
    if (config.kl != KlEstimator::none) {
      if (!finite(b.kl_weights[t]))
        return make_error(StatusCode::non_finite, "kl_weights[%lld] is not finite", static_cast<long long>(t));
      if (b.mask[t] && !finite(b.ref_logp[t]))
        return make_error(StatusCode::non_finite, "ref_logp[%lld] is not finite", static_cast<long long>(t));
    }
  }
  return Status::success();
}

// Checks the arguments of the log-prob/entropy pass that need no array read (the CPU
// path and the CUDA host API both call it, so their messages are the same).
inline Status validate_token_logprobs_args(int64_t num_tokens, int64_t vocab_size, int64_t row_stride,
                                           double temperature, const void* logits, const void* target_ids,
                                           const void* logp) {
  if (num_tokens < 0 || vocab_size <= 0)
    return make_error(StatusCode::invalid_argument, "token_logprobs: num_tokens (%lld) must be >= 0 and vocab_size (%lld) > 0",
                      static_cast<long long>(num_tokens), static_cast<long long>(vocab_size));
  const int64_t stride = row_stride == 0 ? vocab_size : row_stride;
  if (stride < vocab_size)
    return make_error(StatusCode::invalid_argument, "row_stride (%lld) must be 0 or >= vocab_size (%lld)",
                      static_cast<long long>(row_stride), static_cast<long long>(vocab_size));
  if (!std::isfinite(temperature) || temperature <= 0)
    return make_error(StatusCode::invalid_argument, "temperature must be finite and > 0, got %g", temperature);
  if (num_tokens > 0 && (!logits || !target_ids || !logp))
    return make_error(StatusCode::invalid_argument, "token_logprobs: logits, target_ids and logp must not be null");
  return Status::success();
}

}  // namespace cgrpo
