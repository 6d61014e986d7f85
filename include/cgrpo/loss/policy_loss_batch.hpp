// cgrpo/loss/policy_loss_batch.hpp: the inputs and outputs of the fused policy loss,
// as raw pointers plus sizes (caller memory, never copied), and their validation.
#pragma once

#include <cmath>
#include <cstdint>

#include "cgrpo/base/buffer_overlap.hpp"
#include "cgrpo/base/layout.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/loss/aggregation.hpp"
#include "cgrpo/loss/config.hpp"
#include "cgrpo/loss/metrics.hpp"
#include "cgrpo/loss/pass_plan.hpp"

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

  // Per-token arrays [T]. At a masked token (mask 0) only target_ids is read: padding may hold
  // anything, NaN and -inf included, in every other array.
  const int32_t* target_ids = nullptr;   // y_t in [0, V), at every token
  const uint8_t* mask = nullptr;         // 1 valid response token, 0 padding
  const uint8_t* kinds = nullptr;        // TokenKind; nullptr: every token is initial
  const Real* advantages = nullptr;      // the response's advantage on each of its tokens
  const Real* old_logp = nullptr;        // log-prob under the sampling policy (not read in bypass
                                         // mode, where rollout_logp is the ratio's reference)
  const Real* ref_logp = nullptr;        // reference policy; needed when config.kl.estimator != none
  const Real* rollout_logp = nullptr;    // log-prob under the engine that sampled the token (e.g.
                                         // vLLM); needed by config.off_policy.rollout (verl) or .sampler (TRL)
  const uint8_t* selection = nullptr;    // kl_cov / clip_cov: the tokens the caller selects
                                         // (nullptr: the loss selects them, see docs/MATH.md)

  // Aggregation weights of each term. Either none (the loss computes them from config's
  // aggregation modes over `layout`, the mask and `scale`: needed whenever a mask changes inside
  // the loss, e.g. rejection sampling) or every one the config uses: pg_weights always,
  // entropy_weights when entropy.coef != 0, kl_weights when kl.estimator != none.
  const Real* pg_weights = nullptr;
  const Real* entropy_weights = nullptr;
  const Real* kl_weights = nullptr;
  AggregationScale scale;                // global counts for the computed weights (0: this batch)

  SequenceLayout layout;                 // rows of each response; needed by the row-level features
                                         // (PassPlan::needs_layout) and by computed weights

  int64_t stride() const { return row_stride == 0 ? vocab_size : row_stride; }
  bool computed_weights() const { return pg_weights == nullptr; }
};

// The pass plan of a config for this batch (loss/pass_plan.hpp).
template <typename Logit, typename Real>
PassPlan plan_passes(const LossConfig& c, const PolicyLossBatch<Logit, Real>& b) {
  return plan_passes(c, PassInputs{b.computed_weights(), b.selection != nullptr, b.rollout_logp != nullptr});
}

// The array the ratio's log ratio is taken against: rollout_logp in verl's bypass mode, old_logp otherwise.
template <typename Logit, typename Real>
const Real* ratio_reference(const LossConfig& c, const PolicyLossBatch<Logit, Real>& b) {
  return c.bypass() ? b.rollout_logp : b.old_logp;
}

template <typename Logit, typename Real = Logit>
struct PolicyLossOutputs {
  // [T, grad_row_stride]: dJ/dlogits. May be the logits buffer itself (in place,
  // same stride). nullptr: forward only (loss and metrics, no gradient).
  Logit* grad_logits = nullptr;
  int64_t grad_row_stride = 0;  // 0 means the batch's row stride
  Real* logp = nullptr;         // [T], optional: log p of each target
  Real* entropy = nullptr;      // [T], optional: H of each row
  LossMetrics* metrics = nullptr;  // required: the loss and the metrics
  // Optional [T] views of what the loss applied (both paths; device memory on the CUDA path):
  Real* policy_factor = nullptr;   // the constant factor on each token's policy loss: verl's IS weight
                                   // (geo_mean: its row's geometric mean), TRL's sampler weight and masks;
                                   // 1 where none applies, 0 at padding
  uint8_t* token_terms = nullptr;  // TokenTerms bits of each token (0 at padding; a token verl's
                                   // rejection removes from a term loses that term's bit)
};

// outputs.token_terms holds the TermBit bits of loss/pass_plan.hpp (kTermPolicy, kTermEntropy,
// kTermKl, kTermSelected, kTermEntropyCount).

// The arrays of a batch that a loss call reads, one line each: the inputs of the overlap check.
template <typename Logit, typename Real>
void add_batch_inputs(const LossConfig& config, const PolicyLossBatch<Logit, Real>& b, BufferTable& table) {
  const int64_t T = b.num_tokens;
  table.input(row_span("logits", b.logits, T, b.vocab_size, b.stride()));
  table.input(array_span("target_ids", b.target_ids, T));
  table.input(array_span("mask", b.mask, T));
  table.input(array_span("kinds", b.kinds, T));
  table.input(array_span("advantages", b.advantages, T));
  table.input(array_span("old_logp", b.old_logp, T));
  table.input(array_span("ref_logp", b.ref_logp, T));
  table.input(array_span("rollout_logp", b.rollout_logp, T));
  table.input(array_span("selection", b.selection, T));
  table.input(array_span("pg_weights", b.pg_weights, T));
  table.input(array_span("entropy_weights", b.entropy_weights, T));
  table.input(array_span("kl_weights", b.kl_weights, T));
  if (plan_passes(config, b).needs_layout) table.input(b.layout.offsets_span());
}

// The arrays a loss call writes (grad_logits may be the logits themselves: in place).
template <typename Logit, typename Real>
void add_loss_outputs(const PolicyLossBatch<Logit, Real>& b, const PolicyLossOutputs<Logit, Real>& out,
                      BufferTable& table) {
  const int64_t T = b.num_tokens;
  const int64_t gs = out.grad_row_stride == 0 ? b.stride() : out.grad_row_stride;
  table.output(row_span("grad_logits", out.grad_logits, T, b.vocab_size, gs, "logits"));
  table.output(array_span("logp", out.logp, T));
  table.output(array_span("entropy", out.entropy, T));
  table.output(array_span("metrics", out.metrics, 1));
  table.output(array_span("policy_factor", out.policy_factor, T));
  table.output(array_span("token_terms", out.token_terms, T));
}

// Checks sizes, pointers and the config, and that no output shares memory with an input or
// another output (byte ranges, strides included); reads no array. Shared by the CPU path
// and the CUDA host API, so both report the same errors. logits_in_batch = false: the fused
// linear loss, whose logits come from its LM head (batch.logits is null there).
template <typename Logit, typename Real>
Status validate_batch_shape(const LossConfig& config, const PolicyLossBatch<Logit, Real>& b,
                            const PolicyLossOutputs<Logit, Real>& out, bool logits_in_batch = true) {
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
  // An empty batch reads no array (they may be null), but its layout and its overlaps are still
  // checked: the loss walks the layout's rows, and the metrics may not land on the offsets.
  if (b.num_tokens > 0) {
    if (logits_in_batch && !b.logits) return make_error(StatusCode::invalid_argument, "logits must not be null");
    if (!b.target_ids) return make_error(StatusCode::invalid_argument, "target_ids must not be null");
    if (!b.mask) return make_error(StatusCode::invalid_argument, "mask must not be null");
    if (!b.advantages) return make_error(StatusCode::invalid_argument, "advantages must not be null");
    const bool bypass = config.bypass();
    if (!b.old_logp && !bypass) return make_error(StatusCode::invalid_argument, "old_logp must not be null");
    if (config.kl_on() && !b.ref_logp)
      return make_error(StatusCode::invalid_argument, "config.kl.estimator = %s needs ref_logp",
                        to_string(config.kl.estimator));
    if (config.needs_rollout_logp() && !b.rollout_logp)
      return make_error(StatusCode::invalid_argument, "config.off_policy.%s needs rollout_logp (the sampler's log-probs)",
                        config.off_policy.rollout.mode != RolloutCorrectionMode::none ? "rollout" : "sampler");
    if (b.pg_weights) {
      if (config.entropy.coef != 0 && !b.entropy_weights)
        return make_error(StatusCode::invalid_argument,
                          "entropy_weights must not be null when pg_weights is given and config.entropy.coef != 0 "
                          "(pass every weight the config uses, or none to let the loss compute them)");
      if (config.kl_on() && !b.kl_weights)
        return make_error(StatusCode::invalid_argument,
                          "kl_weights must not be null when pg_weights is given and config.kl.estimator = %s (pass "
                          "every weight the config uses, or none to let the loss compute them)",
                          to_string(config.kl.estimator));
      const PassPlan plan = plan_passes(config, b);
      if (plan.requires_computed_weights) {
        if (config.term().computed_weights_only)
          return make_error(StatusCode::invalid_argument,
                            "config.policy.loss = %s sets the weights' denominators inside the loss: pass pg_weights = "
                            "entropy_weights = kl_weights = nullptr",
                            config.term().name);
        return make_error(StatusCode::invalid_argument,
                          "config.%s sets the weights' denominators inside the loss: pass pg_weights = "
                          "entropy_weights = kl_weights = nullptr",
                          plan.computed_weights_reason);
      }
    } else if (b.entropy_weights || b.kl_weights) {
      return make_error(StatusCode::invalid_argument,
                        "pg_weights is null but entropy_weights or kl_weights is not: pass every weight or none");
    }
  }
  if (plan_passes(config, b).needs_layout) {
    CGRPO_RETURN_IF_ERROR(b.layout.validate(b.num_tokens));
  }
  if (b.pg_weights == nullptr) CGRPO_RETURN_IF_ERROR(check_aggregation_scale(b.scale));
  if (out.grad_logits) {
    const int64_t gs = out.grad_row_stride == 0 ? b.stride() : out.grad_row_stride;
    if (gs < b.vocab_size)
      return make_error(StatusCode::invalid_argument, "grad_row_stride (%lld) must be 0 or >= vocab_size (%lld)",
                        static_cast<long long>(gs), static_cast<long long>(b.vocab_size));
    if (static_cast<const void*>(out.grad_logits) == static_cast<const void*>(b.logits) && gs != b.stride())
      return make_error(StatusCode::invalid_argument,
                        "grad_logits (output) overlaps logits (input): an in-place gradient needs grad_row_stride == "
                        "row_stride, got %lld and %lld",
                        static_cast<long long>(gs), static_cast<long long>(b.stride()));
  }
  BufferTable table;
  add_batch_inputs(config, b, table);
  add_loss_outputs(b, out, table);
  return check_buffers(table);
}

// Checks every per-token value that lives in host memory. Every token: target id in [0, V) and
// mask in {0, 1}. Valid tokens only (padding may hold anything): kind in {0, 1} and finite
// advantages, log-probs the config reads, and the caller's weights of the terms that are on. O(T).
template <typename Logit, typename Real>
Status validate_batch_values(const LossConfig& config, const PolicyLossBatch<Logit, Real>& b) {
  auto finite = [](Real v) { return std::isfinite(static_cast<double>(v)); };
  const Real* reference = ratio_reference(config, b);
  const bool kl_on = config.kl_on();
  // The off-policy corrections read rollout_logp at valid initial tokens (refinement tokens are
  // outside them: weight 1, never rejected); OPSM reads it too when given (TRL: the sampler's
  // log-probs when there are some, else old).
  const bool reads_rollout = plan_passes(config, b).checks_rollout_logp;
  for (int64_t t = 0; t < b.num_tokens; ++t) {
    if (b.target_ids[t] < 0 || b.target_ids[t] >= b.vocab_size)
      return make_error(StatusCode::out_of_range, "target_ids[%lld] = %d is outside [0, %lld)",
                        static_cast<long long>(t), b.target_ids[t], static_cast<long long>(b.vocab_size));
    if (b.mask[t] > 1)
      return make_error(StatusCode::invalid_argument, "mask[%lld] = %d must be 0 or 1", static_cast<long long>(t),
                        b.mask[t]);
    if (!b.mask[t]) continue;
    if (b.kinds && b.kinds[t] > 1)
      return make_error(StatusCode::invalid_argument, "kinds[%lld] = %d must be 0 (initial) or 1 (refinement)",
                        static_cast<long long>(t), b.kinds[t]);
    if (!finite(b.advantages[t]))
      return make_error(StatusCode::non_finite, "advantages[%lld] is not finite", static_cast<long long>(t));
    if (b.pg_weights && !finite(b.pg_weights[t]))
      return make_error(StatusCode::non_finite, "pg_weights[%lld] is not finite", static_cast<long long>(t));
    if (b.pg_weights && b.entropy_weights && !finite(b.entropy_weights[t]))
      return make_error(StatusCode::non_finite, "entropy_weights[%lld] is not finite", static_cast<long long>(t));
    if (b.pg_weights && kl_on && !finite(b.kl_weights[t]))
      return make_error(StatusCode::non_finite, "kl_weights[%lld] is not finite", static_cast<long long>(t));
    const bool initial = !b.kinds || b.kinds[t] == kInitial;
    if (initial && !finite(reference[t]))
      return make_error(StatusCode::non_finite, "%s[%lld] is not finite",
                        reference == b.old_logp ? "old_logp" : "rollout_logp", static_cast<long long>(t));
    if (initial && reads_rollout && !finite(b.rollout_logp[t]))
      return make_error(StatusCode::non_finite, "rollout_logp[%lld] is not finite", static_cast<long long>(t));
    if (kl_on && !finite(b.ref_logp[t]))
      return make_error(StatusCode::non_finite, "ref_logp[%lld] is not finite", static_cast<long long>(t));
    if (b.selection && b.selection[t] > 1)
      return make_error(StatusCode::invalid_argument, "selection[%lld] = %d must be 0 or 1", static_cast<long long>(t),
                        b.selection[t]);
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
  CGRPO_RETURN_IF_ERROR(check_temperature(temperature, "temperature"));
  if (num_tokens > 0 && (!logits || !target_ids || !logp))
    return make_error(StatusCode::invalid_argument, "token_logprobs: logits, target_ids and logp must not be null");
  return Status::success();
}

// validate_token_logprobs_args, then the sizes of the arrays and that neither output (logp,
// entropy) shares memory with an input (logits, target_ids) or with the other output.
template <typename Logit, typename Real>
Status validate_token_logprobs_buffers(int64_t num_tokens, int64_t vocab_size, int64_t row_stride,
                                       double temperature, const Logit* logits, const int32_t* target_ids,
                                       const Real* logp, const Real* entropy) {
  CGRPO_RETURN_IF_ERROR(
      validate_token_logprobs_args(num_tokens, vocab_size, row_stride, temperature, logits, target_ids, logp));
  BufferTable table;
  table.input(row_span("logits", logits, num_tokens, vocab_size, row_stride == 0 ? vocab_size : row_stride));
  table.input(array_span("target_ids", target_ids, num_tokens));
  table.output(array_span("logp", logp, num_tokens));
  table.output(array_span("entropy", entropy, num_tokens));
  return check_buffers(table);
}

}  // namespace cgrpo
