// python/src/linear_ops.cpp: the fused LM-head ops (torch.ops.cgrpo.fused_linear_policy_loss,
// linear_token_logprobs): the logits z = hidden weight^T + bias exist one chunk of tokens at a time.
#include "linear_head.hpp"
#include "op_common.hpp"

#include <cgrpo/cpu/fused_linear_policy_loss.hpp>
#include <cgrpo/cpu/fused_linear_token_logprobs.hpp>

#include <tuple>

namespace cgrpo_ops {
namespace {

// fused_linear_policy_loss: the loss of policy_loss on z = hidden weight^T + bias, with dJ/dhidden,
// dJ/dweight and dJ/dbias (each when asked for; empty tensors otherwise).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> fused_linear_policy_loss(
    const Tensor& hidden, const Tensor& weight, const OptTensor& bias, const Tensor& target_ids, const Tensor& mask,
    const Tensor& advantages, const OptTensor& old_logp, const OptTensor& ref_logp, const OptTensor& rollout_logp,
    const OptTensor& kinds, const OptTensor& offsets, const std::string& config_text, c10::ArrayRef<double> scale,
    bool want_hidden, bool want_weight, bool want_bias, int64_t chunk_tokens, int64_t num_threads) {
  const cgrpo::Recipe recipe = recipe_of(config_text);
  const cgrpo::LossConfig& config = recipe.loss;
  Tokens tok;
  const Tensor rows = token_rows(hidden, "hidden", "H", &tok);
  const Head h = check_head(rows, weight, bias);
  TORCH_CHECK(!want_bias || h.bias.defined(), "cgrpo: a bias gradient was asked for without a bias");
  const LossInputs in = loss_inputs(tok, hidden.scalar_type(), h.V, target_ids, mask, advantages, old_logp, ref_logp,
                                    rollout_logp, kinds, offsets, scale);
  const auto opts = hidden.options();
  const HeadGradTensors g(hidden, h, want_hidden, want_weight, want_bias);
  TokenOutputs outs(tok, opts);
  cgrpo::LossMetrics metrics;
  cgrpo::cpu::Workspace& ws = workspace(num_threads);
  const cgrpo::LinearChunking chunking = chunking_of(chunk_tokens);
  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "cgrpo::fused_linear_policy_loss", [&] {
    cgrpo::PolicyLossBatch<scalar_t> batch = batch_view<scalar_t>(config, tok, h.V, in);
    const cgrpo::LinearHead<scalar_t> head = head_view<scalar_t>(rows, weight, h, tok.T);
    const cgrpo::LinearHeadGrads<scalar_t, scalar_t> grads = g.view<scalar_t>();
    cgrpo::PolicyLossOutputs<scalar_t> out;
    out.metrics = &metrics;
    outs.attach(out);
    check_status(cgrpo::cpu::fused_linear_policy_loss(config, batch, head, out, grads, ws, chunking));
  });
  return {torch::scalar_tensor(metrics.loss, opts), g.hidden, g.weight, g.bias, metrics_tensor(metrics), outs.logp,
          outs.entropy, outs.policy_factor, outs.token_terms};
}

// linear_token_logprobs: log p and H from the hidden states and the head (no [T, V] logits).
std::tuple<Tensor, Tensor> linear_token_logprobs(const Tensor& hidden, const Tensor& weight, const OptTensor& bias,
                                                 const Tensor& target_ids, double temperature, bool with_entropy,
                                                 int64_t chunk_tokens, int64_t num_threads) {
  Tokens tok;
  const Tensor rows = token_rows(hidden, "hidden", "H", &tok);
  const Head h = check_head(rows, weight, bias);
  const Tensor targets = per_token(target_ids, "target_ids", TokenValue::target, tok, hidden.scalar_type(), false, h.V);
  Tensor logp = torch::empty(tok.shape, hidden.options());
  Tensor entropy = with_entropy ? torch::empty(tok.shape, hidden.options()) : none_tensor(hidden.options());
  cgrpo::cpu::Workspace& ws = workspace(num_threads);
  const cgrpo::LinearChunking chunking = chunking_of(chunk_tokens);
  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "cgrpo::linear_token_logprobs", [&] {
    const cgrpo::LinearHead<scalar_t> head = head_view<scalar_t>(rows, weight, h, tok.T);
    check_status(cgrpo::cpu::fused_linear_token_logprobs(head, tok.T, h.V, targets.data_ptr<int32_t>(), temperature,
                                                         logp.data_ptr<scalar_t>(),
                                                         with_entropy ? entropy.data_ptr<scalar_t>() : nullptr,
                                                         ws.num_threads, &ws, chunking));
  });
  return {logp, entropy};
}

}  // namespace
}  // namespace cgrpo_ops

TORCH_LIBRARY_FRAGMENT(cgrpo, m) {
  m.def("fused_linear_policy_loss(Tensor hidden, Tensor weight, Tensor? bias, Tensor target_ids, Tensor mask, "
        "Tensor advantages, Tensor? old_logp, Tensor? ref_logp, Tensor? rollout_logp, Tensor? kinds, Tensor? offsets, "
        "str config, float[] scale, bool grad_hidden, bool grad_weight, bool grad_bias, int chunk_tokens, "
        "int num_threads) -> (Tensor loss, Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias, Tensor metrics, "
        "Tensor logp, Tensor entropy, Tensor policy_factor, Tensor token_terms)",
        &cgrpo_ops::fused_linear_policy_loss);
  m.def("linear_token_logprobs(Tensor hidden, Tensor weight, Tensor? bias, Tensor target_ids, float temperature, "
        "bool entropy, int chunk_tokens, int num_threads) -> (Tensor logp, Tensor entropy)",
        &cgrpo_ops::linear_token_logprobs);
}
