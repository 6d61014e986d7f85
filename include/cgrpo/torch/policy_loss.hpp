// cgrpo/torch/policy_loss.hpp: the fused loss as a torch::autograd::Function over CPU tensors (target cgrpo::torch).
// forward() checks every tensor, runs cgrpo::cpu::fused_policy_loss once and keeps dJ/dlogits; backward() scales it.
#pragma once

#include <torch/csrc/autograd/custom_function.h>  // torch::autograd::Function
#include <torch/types.h>                            // torch::Tensor and the factories

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/torch/tensor_checks.hpp>

#include <cstdint>
#include <type_traits>

namespace cgrpo_torch {

// The per-token inputs of one batch of T token rows: CPU tensors of shape [T], stride 1, of
// exactly the dtype below (nothing is converted or copied; a mismatch throws). "Real" is the
// dtype of the logits. Undefined (torch::Tensor()) is allowed only where marked.
struct PolicyLossInputs {
  torch::Tensor target_ids;       // Int (int32)
  torch::Tensor mask;             // Byte (uint8) or Bool, 0 / 1
  torch::Tensor kinds;            // Byte or Bool, cgrpo::TokenKind (1: refinement); undefined: every token initial
  torch::Tensor advantages;       // Real
  torch::Tensor old_logp;         // Real
  torch::Tensor ref_logp;         // Real; required when config.kl.estimator != none, else may be undefined
  torch::Tensor rollout_logp;     // Real; the sampler's log-probs, required by config.off_policy.rollout / .sampler
  // Aggregation weights (Real): all undefined, and the library computes them from config over the
  // layout and mask; or every one the config uses (cgrpo::aggregation_weights of each term).
  torch::Tensor pg_weights;
  torch::Tensor entropy_weights;
  torch::Tensor kl_weights;
  // Response rows. Checked against T whenever it is set or the config needs it; packed
  // offsets stay caller memory of num_sequences + 1 entries (packed_layout() checks a tensor).
  cgrpo::SequenceLayout layout;
};

// A packed layout over an offsets tensor: Long (int64), CPU, 1-D [B + 1], stride 1. The tensor
// must outlive every call that uses the layout.
inline cgrpo::SequenceLayout packed_layout(const torch::Tensor& offsets) {
  TORCH_CHECK(offsets.defined(), "cgrpo_torch: layout offsets must be a defined tensor [B + 1], got an undefined tensor");
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1,
              "cgrpo_torch: layout offsets must be 1-D of shape [B + 1] with B >= 0, got shape ", offsets.sizes());
  const int64_t* o = detail::checked_vector<int64_t>(offsets, "layout offsets", offsets.size(0), "B + 1");
  return cgrpo::SequenceLayout::packed(offsets.size(0) - 1, o);
}

namespace detail {

enum class Need { required, optional, with_kl };  // with_kl: required when config.kl.estimator != none

// Every per-token input: its name, when it is needed, and the batch field it feeds (whose
// element type fixes the dtype). A new per-token input is one line here (and its field above).
template <typename Batch, typename Visit>
void for_each_token_input(const PolicyLossInputs& in, Batch& b, Visit&& visit) {
  visit("target_ids", in.target_ids, Need::required, b.target_ids);
  visit("mask", in.mask, Need::required, b.mask);
  visit("kinds", in.kinds, Need::optional, b.kinds);
  visit("advantages", in.advantages, Need::required, b.advantages);
  visit("old_logp", in.old_logp, Need::required, b.old_logp);
  visit("ref_logp", in.ref_logp, Need::with_kl, b.ref_logp);
  visit("rollout_logp", in.rollout_logp, Need::optional, b.rollout_logp);
  visit("pg_weights", in.pg_weights, Need::optional, b.pg_weights);
  visit("entropy_weights", in.entropy_weights, Need::optional, b.entropy_weights);
  visit("kl_weights", in.kl_weights, Need::with_kl, b.kl_weights);
}

// Checks every tensor and the layout, then runs the library. Throws before the library is
// called when a check fails, so nothing is written; the library's own errors (values out of
// range, non-finite inputs) come back as c10::Error with its message.
template <typename Real>
void run(const cgrpo::LossConfig& config, const torch::Tensor& logits, const PolicyLossInputs& in,
         torch::Tensor& grad, cgrpo::LossMetrics* metrics) {
  const int64_t T = logits.size(0);
  cgrpo::PolicyLossBatch<Real> batch;
  batch.logits = logits.data_ptr<Real>();
  batch.num_tokens = T;
  batch.vocab_size = logits.size(1);
  batch.row_stride = T <= 1 ? 0 : logits.stride(0);
  for_each_token_input(in, batch, [&](const char* name, const torch::Tensor& t, Need need, auto& field) {
    using Elem = std::remove_const_t<std::remove_pointer_t<std::remove_reference_t<decltype(field)>>>;
    if (!t.defined()) {
      TORCH_CHECK(need == Need::optional || (need == Need::with_kl && !config.kl_on()),
                  "cgrpo_torch: ", name, " must be a defined tensor [", T, "]",
                  need == Need::with_kl ? " when config.kl.estimator != none (config.kl.estimator = " : "",
                  need == Need::with_kl ? cgrpo::to_string(config.kl.estimator) : "", need == Need::with_kl ? ")" : "",
                  ", got an undefined tensor");
      field = nullptr;
      return;
    }
    const bool real = std::is_floating_point<Elem>::value;
    field = checked_vector<Elem>(t, name, T, "T, the rows of logits", real ? " (the dtype of logits)" : "");
  });
  batch.layout = in.layout;
  const bool layout_given = in.layout.num_sequences != 0 || in.layout.offsets != nullptr;
  if (layout_given || cgrpo::plan_passes(config, batch).needs_layout) {
    const cgrpo::Status s = in.layout.validate(T);
    TORCH_CHECK(s.ok(), "cgrpo_torch: layout must cover the T = ", T, " rows of logits",
                layout_given ? "" : " (the config needs it)", ": ", s.message);
  }

  cgrpo::PolicyLossOutputs<Real> out;
  out.grad_logits = grad.data_ptr<Real>();
  out.grad_row_stride = grad.size(1);
  out.metrics = metrics;
  const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(config, batch, out);
  TORCH_CHECK(s.ok(), "cgrpo: ", cgrpo::status_code_name(s.code), ": ", s.message);
}

}  // namespace detail

// loss = PolicyLoss::apply(logits, inputs, config, &metrics): logits [T, V] (Float or Double,
// CPU, stride(1) = 1, row stride >= V allowed; [B, L, V] must be flattened). Returns the scalar
// J of MATH.md; its backward gives grad_output * dJ/dlogits as the library computed it.
// metrics may be null. Throws c10::Error (the LibTorch convention) naming the tensor when a
// tensor breaks a rule above, and with the library's message when the library returns an
// error; either way before anything is written to metrics or a gradient is saved.
class PolicyLoss : public torch::autograd::Function<PolicyLoss> {
 public:
  // Checks the logits before LibTorch's autograd machinery touches them (it fails on an
  // undefined tensor with a message that names nothing), then runs Function::apply.
  static torch::Tensor apply(const torch::Tensor& logits, const PolicyLossInputs& inputs,
                             const cgrpo::LossConfig& config, cgrpo::LossMetrics* metrics) {
    detail::check_logits(logits);
    return torch::autograd::Function<PolicyLoss>::apply(logits, inputs, config, metrics);
  }

  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& logits,
                               const PolicyLossInputs& inputs, const cgrpo::LossConfig& config,
                               cgrpo::LossMetrics* metrics) {
    detail::check_logits(logits);
    torch::Tensor grad = torch::empty(logits.sizes(), logits.options().memory_format(torch::MemoryFormat::Contiguous));
    cgrpo::LossMetrics local;
    cgrpo::LossMetrics* m = metrics ? metrics : &local;
    if (logits.scalar_type() == torch::kFloat)
      detail::run<float>(config, logits, inputs, grad, m);
    else
      detail::run<double>(config, logits, inputs, grad, m);
    ctx->save_for_backward({grad});
    return torch::scalar_tensor(m->loss, logits.options());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::Tensor grad = ctx->get_saved_variables()[0];
    // One gradient per forward argument: logits, then none for inputs, config and metrics.
    return {grad * grad_outputs[0], torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace cgrpo_torch
