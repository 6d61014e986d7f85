// examples/libtorch/cgrpo_torch.hpp: the fused loss as a torch::autograd::Function (LibTorch, CPU tensors).
// forward() runs cgrpo::cpu::fused_policy_loss once and keeps dJ/dlogits; backward() scales and returns it.
#pragma once

#include <torch/torch.h>

#include <cgrpo/cgrpo.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace cgrpo_torch {

// The per-token inputs of one batch of T token rows, as CPU tensors of shape [T]
// (contiguous; made so by the wrapper). Real tensors have the dtype of the logits.
struct PolicyLossInputs {
  torch::Tensor target_ids;       // int32
  torch::Tensor mask;             // uint8, 0 / 1
  torch::Tensor kinds;            // uint8 cgrpo::TokenKind; undefined: every token initial
  torch::Tensor advantages;       // Real
  torch::Tensor old_logp;         // Real
  torch::Tensor ref_logp;         // Real; needed when config.kl != none
  torch::Tensor pg_weights;       // Real: cgrpo::aggregation_weights of each term
  torch::Tensor entropy_weights;  // Real; undefined: no entropy term
  torch::Tensor kl_weights;       // Real; needed when config.kl != none
  cgrpo::SequenceLayout layout;   // needed by row-level features (offsets stay caller memory)
};

namespace detail {

template <typename Real>
const Real* data_or_null(const torch::Tensor& t) {
  return t.defined() ? t.data_ptr<Real>() : nullptr;
}

inline torch::Tensor contiguous_or_undefined(const torch::Tensor& t, torch::ScalarType dtype) {
  if (!t.defined()) return t;
  TORCH_CHECK(t.device().is_cpu(), "cgrpo_torch: per-token inputs must be CPU tensors");
  return t.to(dtype).contiguous();
}

template <typename Real>
cgrpo::Status run(const cgrpo::LossConfig& config, const torch::Tensor& logits, const PolicyLossInputs& in,
                  torch::Tensor& grad, cgrpo::LossMetrics* metrics) {
  cgrpo::PolicyLossBatch<Real> batch;
  batch.logits = logits.data_ptr<Real>();
  batch.num_tokens = logits.size(0);
  batch.vocab_size = logits.size(1);
  batch.row_stride = logits.stride(0);
  batch.target_ids = data_or_null<int32_t>(in.target_ids);
  batch.mask = data_or_null<uint8_t>(in.mask);
  batch.kinds = data_or_null<uint8_t>(in.kinds);
  batch.advantages = data_or_null<Real>(in.advantages);
  batch.old_logp = data_or_null<Real>(in.old_logp);
  batch.ref_logp = data_or_null<Real>(in.ref_logp);
  batch.pg_weights = data_or_null<Real>(in.pg_weights);
  batch.entropy_weights = data_or_null<Real>(in.entropy_weights);
  batch.kl_weights = data_or_null<Real>(in.kl_weights);
  batch.layout = in.layout;
  cgrpo::PolicyLossOutputs<Real> out;
  out.grad_logits = grad.data_ptr<Real>();
  out.grad_row_stride = grad.stride(0);
  out.metrics = metrics;
  return cgrpo::cpu::fused_policy_loss(config, batch, out);
}

}  // namespace detail

// loss = PolicyLoss::apply(logits, inputs, config, &metrics): logits [T, V] (float or double,
// CPU, row stride >= V allowed, last dimension contiguous). Returns the scalar J of MATH.md;
// its backward gives grad_output * dJ/dlogits as the library computed it. Throws c10::Error
// (the LibTorch convention) with the library's message when the library returns an error.
class PolicyLoss : public torch::autograd::Function<PolicyLoss> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor logits,
                               const PolicyLossInputs& inputs, const cgrpo::LossConfig& config,
                               cgrpo::LossMetrics* metrics) {
    TORCH_CHECK(logits.dim() == 2, "cgrpo_torch: logits must be [T, V]");
    TORCH_CHECK(logits.device().is_cpu(), "cgrpo_torch: this wrapper runs the CPU path (see docs/embedding.md for CUDA)");
    TORCH_CHECK(logits.scalar_type() == torch::kFloat || logits.scalar_type() == torch::kDouble,
                "cgrpo_torch: logits must be float32 or float64");
    if (logits.size(1) > 0 && logits.stride(1) != 1) logits = logits.contiguous();
    const torch::ScalarType real = logits.scalar_type();
    PolicyLossInputs in = inputs;
    in.target_ids = detail::contiguous_or_undefined(in.target_ids, torch::kInt32);
    in.mask = detail::contiguous_or_undefined(in.mask, torch::kUInt8);
    in.kinds = detail::contiguous_or_undefined(in.kinds, torch::kUInt8);
    for (torch::Tensor* t : {&in.advantages, &in.old_logp, &in.ref_logp, &in.pg_weights, &in.entropy_weights,
                             &in.kl_weights})
      *t = detail::contiguous_or_undefined(*t, real);

    torch::Tensor grad = torch::empty_like(logits, torch::MemoryFormat::Contiguous);
    cgrpo::LossMetrics local;
    cgrpo::LossMetrics* m = metrics ? metrics : &local;
    const cgrpo::Status s = real == torch::kFloat ? detail::run<float>(config, logits, in, grad, m)
                                                  : detail::run<double>(config, logits, in, grad, m);
    TORCH_CHECK(s.ok(), "cgrpo: ", cgrpo::status_code_name(s.code), ": ", s.message);
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
