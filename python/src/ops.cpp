// python/src/ops.cpp: the torch ops of the cgrpo Python package (torch.ops.cgrpo.*): the fused loss from
// logits, the log-prob / entropy pass, group advantages, and the config / metric-name helpers. The fused
// LM-head ops are in linear_ops.cpp. Each op checks every tensor and raises (TORCH_CHECK) naming it
// before the library writes anything; the library's own errors come back with its message.
#include "op_common.hpp"

#include <algorithm>
#include <sstream>
#include <tuple>

namespace cgrpo_ops {
namespace {

// policy_loss: the fused loss, metrics and (when compute_grad) dJ/dlogits in one call.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> policy_loss(
    const Tensor& logits, const Tensor& target_ids, const Tensor& mask, const Tensor& advantages,
    const OptTensor& old_logp, const OptTensor& ref_logp, const OptTensor& rollout_logp, const OptTensor& kinds,
    const OptTensor& offsets, const std::string& config_text, c10::ArrayRef<double> scale, bool compute_grad,
    const OptTensor& grad_out, int64_t num_threads) {
  const cgrpo::Recipe recipe = recipe_of(config_text);
  const cgrpo::LossConfig& config = recipe.loss;
  Tokens tok;
  const Tensor rows = token_rows(logits, "logits", "V", &tok);
  const int64_t V = rows.size(1);
  const LossInputs in = loss_inputs(tok, logits.scalar_type(), V, target_ids, mask, advantages, old_logp, ref_logp,
                                    rollout_logp, kinds, offsets, scale);
  Tensor grad, grad_rows;
  if (given(grad_out)) {
    TORCH_CHECK(compute_grad, "cgrpo: grad_out is given but compute_grad is false");
    Tokens gtok;
    grad_rows = token_rows(*grad_out, "grad_out", "V", &gtok);
    TORCH_CHECK(grad_out->sizes() == logits.sizes() && grad_out->scalar_type() == logits.scalar_type(), "cgrpo: grad_out must have "
                "the shape and dtype of logits (", logits.sizes(), ", ", logits.scalar_type(), "), got ", grad_out->sizes(), ", ",
                grad_out->scalar_type());
    grad = *grad_out;
  } else if (compute_grad) {
    grad = torch::empty(logits.sizes(), logits.options().memory_format(torch::MemoryFormat::Contiguous));
    grad_rows = grad.view({tok.T, V});
  } else {
    grad = none_tensor(logits.options());
  }
  TokenOutputs outs(tok, logits.options());
  cgrpo::LossMetrics metrics;
  cgrpo::cpu::Workspace& ws = workspace(num_threads);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "cgrpo::policy_loss", [&] {
    cgrpo::PolicyLossBatch<scalar_t> batch = batch_view<scalar_t>(config, tok, V, in);
    batch.logits = rows.data_ptr<scalar_t>();
    batch.row_stride = tok.T <= 1 ? 0 : rows.stride(0);
    cgrpo::PolicyLossOutputs<scalar_t> out;
    if (grad_rows.defined()) {
      out.grad_logits = grad_rows.data_ptr<scalar_t>();
      out.grad_row_stride = tok.T <= 1 ? 0 : grad_rows.stride(0);
      if (tok.T <= 1) out.grad_row_stride = batch.row_stride;
    }
    out.metrics = &metrics;
    outs.attach(out);
    check_status(cgrpo::cpu::fused_policy_loss(config, batch, out, ws));
  });
  return {torch::scalar_tensor(metrics.loss, logits.options()), grad, metrics_tensor(metrics), outs.logp, outs.entropy,
          outs.policy_factor, outs.token_terms};
}

// token_logprobs: log p of each target and H of each row (the old / reference log-prob pass).
// logp_out / entropy_out: the caller's buffers of the per-token shape (written only on success).
std::tuple<Tensor, Tensor> token_logprobs(const Tensor& logits, const Tensor& target_ids, double temperature,
                                          bool with_entropy, const OptTensor& logp_out, const OptTensor& entropy_out,
                                          int64_t num_threads) {
  Tokens tok;
  const Tensor rows = token_rows(logits, "logits", "V", &tok);
  const int64_t V = rows.size(1);
  const Tensor targets = per_token(target_ids, "target_ids", TokenValue::target, tok, logits.scalar_type(), false, V);
  auto output = [&](const OptTensor& given_out, const char* name) {
    if (!given(given_out)) return torch::empty(tok.shape, logits.options());
    const Tensor& o = *given_out;
    cgrpo_torch::detail::check_dense_cpu(o, name);
    TORCH_CHECK(o.sizes() == c10::IntArrayRef(tok.shape) && o.scalar_type() == logits.scalar_type() && o.is_contiguous(),
                "cgrpo: ", name, " must be a contiguous tensor of shape ", tok.shape_text(), " and the dtype of logits (",
                logits.scalar_type(), "), got shape ", o.sizes(), ", dtype ", o.scalar_type(),
                o.is_contiguous() ? "" : ", not contiguous");
    return o;
  };
  Tensor logp = output(logp_out, "logp_out");
  Tensor entropy = with_entropy ? output(entropy_out, "entropy_out") : none_tensor(logits.options());
  TORCH_CHECK(with_entropy || !given(entropy_out), "cgrpo: entropy_out is given but entropy is false");
  cgrpo::cpu::Workspace& ws = workspace(num_threads);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "cgrpo::token_logprobs", [&] {
    check_status(cgrpo::cpu::token_logprobs(rows.data_ptr<scalar_t>(), tok.T, V, tok.T <= 1 ? 0 : rows.stride(0),
                                            targets.data_ptr<int32_t>(), temperature, logp.data_ptr<scalar_t>(),
                                            with_entropy ? entropy.data_ptr<scalar_t>() : nullptr, ws.num_threads, &ws));
  });
  return {logp, entropy};
}

// group_advantages: one advantage per response from its group's rewards (config's advantage.*).
// rewards [B] (or [B, K] reward components for gdpo, with weights [K]); group_ids [B] in [0, G);
// token_counts [B] (the valid tokens of each response: the whitening estimators need them).
Tensor group_advantages(const Tensor& rewards, const Tensor& group_ids, const std::string& config_text,
                        const OptTensor& token_counts, const OptTensor& weights) {
  const cgrpo::Recipe recipe = recipe_of(config_text);
  TORCH_CHECK(rewards.defined(), "cgrpo: rewards must be a defined tensor [B], got None");
  cgrpo_torch::detail::check_dense_cpu(rewards, "rewards");
  TORCH_CHECK(rewards.scalar_type() == torch::kFloat || rewards.scalar_type() == torch::kDouble,
              "cgrpo: rewards must have dtype float32 or float64, got ", rewards.scalar_type());
  const bool components = rewards.dim() == 2;
  TORCH_CHECK(rewards.dim() == 1 || components, "cgrpo: rewards must be 1-D [B] (or 2-D [B, K]: gdpo's reward components), got shape ",
              rewards.sizes());
  TORCH_CHECK(!components || recipe.advantage.estimator == cgrpo::AdvantageEstimator::gdpo,
              "cgrpo: rewards [B, K] are gdpo's reward components: the config's advantage.estimator is ",
              cgrpo::to_string(recipe.advantage.estimator), ", not gdpo (pass rewards [B])");
  const int64_t B = rewards.size(0), K = components ? rewards.size(1) : 1;
  const Tensor ids64 = group_ids_int64(group_ids, B);
  int64_t num_groups = 0;
  for (int64_t i = 0; i < B; ++i) {
    const int64_t g = ids64.data_ptr<int64_t>()[i];
    TORCH_CHECK(g >= 0 && g <= INT32_MAX, "cgrpo: out_of_range: group_ids[", i, "] = ", g, " must be in [0, 2^31)");
    num_groups = std::max(num_groups, g + 1);
  }
  const Tensor ids = ids64.to(torch::kInt);
  Tensor counts;
  if (given(token_counts)) {
    cgrpo_torch::detail::check_dense_cpu(*token_counts, "token_counts");
    TORCH_CHECK(c10::isIntegralType(token_counts->scalar_type(), false), "cgrpo: token_counts must have an integer dtype, got ",
                token_counts->scalar_type());
    TORCH_CHECK(token_counts->dim() == 1 && token_counts->size(0) == B, "cgrpo: token_counts must have shape [B] = [", B,
                "], got shape ", token_counts->sizes());
    counts = token_counts->to(torch::kLong).contiguous();
  }
  Tensor w;
  if (given(weights)) {
    TORCH_CHECK(components, "cgrpo: weights are gdpo's reward-component weights: pass rewards [B, K]");
    cgrpo_torch::detail::check_dense_cpu(*weights, "weights");
    TORCH_CHECK(weights->dim() == 1 && weights->size(0) == K && weights->is_floating_point(), "cgrpo: weights must be a float "
                "tensor of shape [K] = [", K, "], got shape ", weights->sizes(), ", dtype ", weights->scalar_type());
    w = weights->to(torch::kDouble).contiguous();
  }
  const Tensor r = rewards.contiguous();
  Tensor adv = torch::empty({B}, rewards.options());
  const cgrpo::GroupAssignment groups{B, ids.data_ptr<int32_t>(), num_groups};
  AT_DISPATCH_FLOATING_TYPES(rewards.scalar_type(), "cgrpo::group_advantages", [&] {
    const int64_t* tc = counts.defined() ? counts.data_ptr<int64_t>() : nullptr;
    if (components)
      check_status(cgrpo::gdpo_advantages(recipe.advantage, groups, r.data_ptr<scalar_t>(), K,
                                          w.defined() ? w.data_ptr<double>() : nullptr, tc, adv.data_ptr<scalar_t>(),
                                          static_cast<scalar_t*>(nullptr)));
    else
      check_status(cgrpo::group_advantages(recipe.advantage, groups, r.data_ptr<scalar_t>(), tc, adv.data_ptr<scalar_t>()));
  });
  return adv;
}

// The resolved recipe of a config text: every field as "path=value;..." (recipe_to_text).
std::string recipe_text(const std::string& config_text) {
  const cgrpo::Recipe r = recipe_of(config_text);
  std::string out;
  check_status(cgrpo::recipe_to_text(r, &out));
  return out;
}

std::string field_paths() {
  std::string out;
  check_status(cgrpo::recipe_field_paths(&out));
  return out;
}

// The registry: "name\tsummary" lines.
std::string presets() {
  std::string out;
  for (int i = 0; i < cgrpo::preset_count(); ++i)
    out += std::string(cgrpo::preset_at(i)->name) + "\t" + cgrpo::preset_at(i)->summary + "\n";
  return out;
}

// The metrics this config logs under `naming` (cgrpo, verl or trl): "index\tkey" lines, index into
// the metrics tensor the loss ops return.
std::string metric_keys(const std::string& config_text, const std::string& naming) {
  const cgrpo::Recipe r = recipe_of(config_text);
  cgrpo::MetricNaming n = cgrpo::MetricNaming::cgrpo;
  if (naming == "verl") n = cgrpo::MetricNaming::verl;
  else if (naming == "trl") n = cgrpo::MetricNaming::trl;
  else TORCH_CHECK_VALUE(naming == "cgrpo", "cgrpo: metric naming must be cgrpo, verl or trl, got \"", naming, "\"");
  std::string out;
  char key[128];
  for (int i = 0; i < cgrpo::kNumMetricValues; ++i)
    if (cgrpo::metric_key(r.loss, i, n, key, sizeof(key))) out += std::to_string(i) + "\t" + key + "\n";
  return out;
}

}  // namespace
}  // namespace cgrpo_ops

TORCH_LIBRARY(cgrpo, m) {
  m.def("policy_loss(Tensor logits, Tensor target_ids, Tensor mask, Tensor advantages, Tensor? old_logp, Tensor? ref_logp, "
        "Tensor? rollout_logp, Tensor? kinds, Tensor? offsets, str config, float[] scale, bool compute_grad, "
        "Tensor? grad_out, int num_threads) -> (Tensor loss, Tensor grad_logits, Tensor metrics, Tensor logp, "
        "Tensor entropy, Tensor policy_factor, Tensor token_terms)",
        &cgrpo_ops::policy_loss);
  m.def("token_logprobs(Tensor logits, Tensor target_ids, float temperature, bool entropy, Tensor? logp_out, "
        "Tensor? entropy_out, int num_threads) -> (Tensor logp, Tensor entropy)",
        &cgrpo_ops::token_logprobs);
  m.def("group_advantages(Tensor rewards, Tensor group_ids, str config, Tensor? token_counts, Tensor? weights) -> Tensor",
        &cgrpo_ops::group_advantages);
  m.def("recipe_text(str config) -> str", &cgrpo_ops::recipe_text);
  m.def("field_paths() -> str", &cgrpo_ops::field_paths);
  m.def("presets() -> str", &cgrpo_ops::presets);
  m.def("metric_keys(str config, str naming) -> str", &cgrpo_ops::metric_keys);
}
