// python/src/op_common.hpp: what the cgrpo torch ops share: the config from its text, the tensor
// checks and conversions (every message names the argument), the per-thread workspace, the batch view.
// The ops (ops.cpp, linear_ops.cpp) register with TORCH_LIBRARY(cgrpo, m); python/cgrpo wraps them.
#pragma once

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/loss/metric_names.hpp>
#include <cgrpo/presets/recipe_text.hpp>
#include <cgrpo/torch/policy_loss.hpp>
#include <cgrpo/torch/tensor_checks.hpp>

#include <unistd.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cgrpo_ops {

using torch::Tensor;
using OptTensor = c10::optional<Tensor>;

inline bool given(const OptTensor& t) { return t.has_value() && t->defined(); }

// The recipe of a config text (presets/recipe_text.hpp); a bad key or value is a ValueError.
inline cgrpo::Recipe recipe_of(const std::string& text) {
  cgrpo::Recipe r;
  const cgrpo::Status s = cgrpo::recipe_from_text(text.c_str(), &r);
  TORCH_CHECK_VALUE(s.ok(), "cgrpo: config: ", s.message);
  return r;
}

// A library error: RuntimeError with the code and the library's message (which names the input).
inline void check_status(const cgrpo::Status& s) {
  TORCH_CHECK(s.ok(), "cgrpo: ", cgrpo::status_code_name(s.code), ": ", s.message);
}

// One workspace per calling thread (its O(T) scratch and its thread pool are reused across calls),
// remade when the thread count changes or after a fork (the child has none of the parent's threads:
// the parent's workspace is then left alone, never destroyed).
inline cgrpo::cpu::Workspace& workspace(int64_t num_threads) {
  TORCH_CHECK(num_threads >= 0 && num_threads <= 1024, "cgrpo: num_threads must be in [0, 1024] (0: torch.get_num_threads()), got ",
              num_threads);
  const int n = num_threads > 0 ? static_cast<int>(num_threads) : std::max(1, at::get_num_threads());
  thread_local std::unique_ptr<cgrpo::cpu::Workspace> ws;
  thread_local pid_t owner = 0;
  if (ws && owner != getpid()) (void)ws.release();  // forked: its threads are the parent's
  if (!ws || ws->num_threads != n) {
    ws.reset();
    ws = std::make_unique<cgrpo::cpu::Workspace>(n);
    owner = getpid();
  }
  return *ws;
}

// The token rows of a batch: [T, X] inputs (T tokens) or [B, L, X] (B padded responses of L).
struct Tokens {
  int64_t T = 0, B = 0, L = 0;
  bool padded = false;
  std::vector<int64_t> shape;  // of a per-token input: [T] or [B, L]

  std::string shape_text() const {
    return padded ? "[B, L] = [" + std::to_string(B) + ", " + std::to_string(L) + "]" : "[T] = [" + std::to_string(T) + "]";
  }
};

// A float / double CPU tensor of rows [T, X] or [B, L, X], each row contiguous, as its [T, X] view
// (no copy: [B, L, X] must have evenly spaced rows). `what` names the last dimension ("V", "H").
inline Tensor token_rows(const Tensor& z, const char* name, const char* what, Tokens* tok) {
  TORCH_CHECK(z.defined(), "cgrpo: ", name, " must be a defined tensor [T, ", what, "] or [B, L, ", what, "], got None");
  cgrpo_torch::detail::check_dense_cpu(z, name);
  TORCH_CHECK(z.scalar_type() == torch::kFloat || z.scalar_type() == torch::kDouble, "cgrpo: ", name,
              " must have dtype float32 or float64 (the CPU path; bf16 / fp16 run on the CUDA path), got ", z.scalar_type());
  TORCH_CHECK(z.dim() == 2 || z.dim() == 3, "cgrpo: ", name, " must be 2-D [T, ", what, "] or 3-D [B, L, ", what,
              "], got shape ", z.sizes());
  const int64_t X = z.size(-1);
  TORCH_CHECK(X <= 1 || z.stride(-1) == 1, "cgrpo: ", name, " must be contiguous along ", what,
              " (stride(-1) = 1), got strides ", z.strides(), "; pass ", name, ".contiguous()");
  Tensor rows = z;
  if (z.dim() == 3) {
    tok->padded = true;
    tok->B = z.size(0);
    tok->L = z.size(1);
    TORCH_CHECK(tok->B <= 1 || tok->L <= 1 || z.stride(0) == tok->L * z.stride(1), "cgrpo: ", name,
                " [B, L, ", what, "] must have evenly spaced rows (stride(0) = L * stride(1)), got shape ", z.sizes(),
                " and strides ", z.strides(), "; pass ", name, ".contiguous()");
    rows = z.view({tok->B * tok->L, X});
    tok->shape = {tok->B, tok->L};
  } else {
    tok->shape = {z.size(0)};
  }
  tok->T = rows.size(0);
  TORCH_CHECK(tok->T <= 1 || rows.stride(0) >= X, "cgrpo: ", name, " must have rows that do not overlap (row stride >= ",
              what, " = ", X, "), got strides ", z.strides());
  return rows;
}

enum class TokenValue { real, target, flag };

// A per-token input as a [T] contiguous tensor of the dtype the library reads: `real` inputs must
// have the logits' dtype (`real_dtype`); target ids int32 or int64 (in [0, vocab), checked before
// narrowing); flags (mask, kinds) bool / uint8, or another integer dtype holding only 0 and 1.
// Shape tok.shape, or [B] per response where `per_row` and the batch is padded (broadcast over L).
// A non-contiguous input is copied ([T] values; the logits are never copied). The library's own
// messages index a per-token value by its flat token row t = b * L + l.
inline Tensor per_token(const Tensor& t, const char* name, TokenValue kind, const Tokens& tok, c10::ScalarType real_dtype,
                        bool per_row, int64_t vocab = 0) {
  TORCH_CHECK(t.defined(), "cgrpo: ", name, " must be a defined tensor ", tok.shape_text(), ", got None");
  cgrpo_torch::detail::check_dense_cpu(t, name);
  Tensor x = t;
  if (per_row && tok.padded && t.dim() == 1 && t.size(0) == tok.B)
    x = t.unsqueeze(1).expand({tok.B, tok.L});
  else
    TORCH_CHECK(t.sizes() == c10::IntArrayRef(tok.shape), "cgrpo: ", name, " must have shape ", tok.shape_text(),
                " (the token rows of the logits)", per_row && tok.padded ? " or [B] (one value per response)" : "",
                ", got shape ", t.sizes());
  const c10::ScalarType dt = t.scalar_type();
  switch (kind) {
    case TokenValue::real:
      TORCH_CHECK(dt == real_dtype, "cgrpo: ", name, " must have dtype ", real_dtype, " (the dtype of the logits), got ", dt,
                  "; pass ", name, ".to(", real_dtype, ")");
      return x.contiguous().reshape({-1});
    case TokenValue::target: {
      TORCH_CHECK(dt == torch::kInt || dt == torch::kLong, "cgrpo: ", name, " must have dtype int32 or int64 (token ids), got ", dt);
      Tensor c = x.contiguous().reshape({-1});
      if (dt == torch::kInt) return c;
      const int64_t* p = c.data_ptr<int64_t>();
      for (int64_t i = 0; i < c.numel(); ++i)
        TORCH_CHECK(p[i] >= 0 && p[i] < vocab, "cgrpo: out_of_range: ", name, "[", i, "] = ", p[i], " is outside [0, ", vocab,
                    ") (the vocabulary of the logits)");
      return c.to(torch::kInt);
    }
    case TokenValue::flag: {
      const bool broadcast = x.sizes() != t.sizes();
      if (dt == torch::kBool || (dt == torch::kByte && !broadcast)) return x.contiguous().reshape({-1});
      TORCH_CHECK(c10::isIntegralType(dt, /*includeBool=*/false), "cgrpo: ", name,
                  " must have dtype bool, uint8 or another integer dtype holding 0 and 1, got ", dt);
      // Checked on the tensor as given (its own flat index in the message), then broadcast.
      const Tensor c = t.contiguous().reshape({-1}).to(torch::kLong);
      const int64_t* p = c.data_ptr<int64_t>();
      for (int64_t i = 0; i < c.numel(); ++i)
        TORCH_CHECK(p[i] == 0 || p[i] == 1, "cgrpo: invalid_argument: ", name, "[", i, "] = ", p[i], " must be 0 or 1");
      return x.to(torch::kByte).contiguous().reshape({-1});
    }
  }
  return x;
}

// The per-token inputs of a loss call, converted; and the layout (padded from [B, L, X] inputs, or
// packed from offsets [B + 1] for [T, X] inputs).
struct LossInputs {
  Tensor target_ids, mask, kinds, advantages, old_logp, ref_logp, rollout_logp, offsets;
  cgrpo::SequenceLayout layout;
  bool layout_given = false;
  cgrpo::AggregationScale scale;
};

inline LossInputs loss_inputs(const Tokens& tok, c10::ScalarType real, int64_t vocab, const Tensor& target_ids,
                              const Tensor& mask, const Tensor& advantages, const OptTensor& old_logp,
                              const OptTensor& ref_logp, const OptTensor& rollout_logp, const OptTensor& kinds,
                              const OptTensor& offsets, c10::ArrayRef<double> scale) {
  LossInputs in;
  in.target_ids = per_token(target_ids, "target_ids", TokenValue::target, tok, real, false, vocab);
  in.mask = per_token(mask, "mask", TokenValue::flag, tok, real, false);
  in.advantages = per_token(advantages, "advantages", TokenValue::real, tok, real, true);
  if (given(old_logp)) in.old_logp = per_token(*old_logp, "old_logp", TokenValue::real, tok, real, false);
  if (given(ref_logp)) in.ref_logp = per_token(*ref_logp, "ref_logp", TokenValue::real, tok, real, false);
  if (given(rollout_logp)) in.rollout_logp = per_token(*rollout_logp, "rollout_logp", TokenValue::real, tok, real, false);
  if (given(kinds)) in.kinds = per_token(*kinds, "kinds", TokenValue::flag, tok, real, true);
  if (tok.padded) {
    TORCH_CHECK(!given(offsets), "cgrpo: offsets describe packed [T, V] inputs; [B, L, V] inputs are padded rows "
                                 "(pass offsets=None, or flatten to [B * L, V] with offsets)");
    in.layout = cgrpo::SequenceLayout::padded(tok.B, tok.L);
    in.layout_given = true;
  } else if (given(offsets)) {
    const Tensor& o = *offsets;
    TORCH_CHECK(o.dtype() == torch::kLong || o.dtype() == torch::kInt, "cgrpo: offsets must have dtype int64 or int32, got ",
                o.scalar_type());
    cgrpo_torch::detail::check_dense_cpu(o, "offsets");
    in.offsets = o.to(torch::kLong).contiguous();
    in.layout = cgrpo_torch::packed_layout(in.offsets);
    in.layout_given = true;
    const cgrpo::Status s = in.layout.validate(tok.T);
    TORCH_CHECK(s.ok(), "cgrpo: offsets must cover the T = ", tok.T, " token rows: ", s.message);
  }
  TORCH_CHECK(scale.size() <= 4, "cgrpo: scale takes at most 4 values (token_count, sequence_count, length, "
                                 "nonempty_sequence_count), got ", scale.size());
  double* fields[4] = {&in.scale.token_count, &in.scale.sequence_count, &in.scale.length, &in.scale.nonempty_sequence_count};
  for (size_t i = 0; i < scale.size(); ++i) *fields[i] = scale[i];
  return in;
}

// The library's batch view of the inputs (logits set by the caller, or null for the fused LM head).
template <typename Real>
cgrpo::PolicyLossBatch<Real> batch_view(const cgrpo::LossConfig& config, const Tokens& tok, int64_t vocab,
                                        const LossInputs& in) {
  cgrpo::PolicyLossBatch<Real> b;
  b.num_tokens = tok.T;
  b.vocab_size = vocab;
  b.target_ids = in.target_ids.data_ptr<int32_t>();
  b.mask = static_cast<const uint8_t*>(in.mask.data_ptr());
  b.kinds = in.kinds.defined() ? static_cast<const uint8_t*>(in.kinds.data_ptr()) : nullptr;
  b.advantages = in.advantages.data_ptr<Real>();
  b.old_logp = in.old_logp.defined() ? in.old_logp.data_ptr<Real>() : nullptr;
  b.ref_logp = in.ref_logp.defined() ? in.ref_logp.data_ptr<Real>() : nullptr;
  b.rollout_logp = in.rollout_logp.defined() ? in.rollout_logp.data_ptr<Real>() : nullptr;
  b.scale = in.scale;
  b.layout = in.layout;
  TORCH_CHECK(in.layout_given || !cgrpo::plan_passes(config, b).needs_layout,
              "cgrpo: this config needs the rows of each response (a sequence-level ratio, a seq-mean aggregation, a "
              "row correction, ...): pass [B, L, V] inputs, or offsets [B + 1] with [T, V] inputs");
  return b;
}

// The optional [T] outputs of a loss call, in the per-token shape.
struct TokenOutputs {
  Tensor logp, entropy, policy_factor, token_terms;
  TokenOutputs(const Tokens& tok, const torch::TensorOptions& real) {
    logp = torch::empty(tok.shape, real);
    entropy = torch::empty(tok.shape, real);
    policy_factor = torch::empty(tok.shape, real);
    token_terms = torch::empty(tok.shape, real.dtype(torch::kByte));
  }
  template <typename Real>
  void attach(cgrpo::PolicyLossOutputs<Real>& out) {
    out.logp = logp.data_ptr<Real>();
    out.entropy = entropy.data_ptr<Real>();
    out.policy_factor = policy_factor.data_ptr<Real>();
    out.token_terms = static_cast<uint8_t*>(token_terms.data_ptr());
  }
};

// group_ids [B] int32 / int64 (one per row of rewards) as a contiguous int64 tensor; the caller checks
// the range (ids in [0, 2^31), or in [0, G) for a given G).
inline Tensor group_ids_int64(const Tensor& group_ids, int64_t B) {
  TORCH_CHECK(group_ids.defined(), "cgrpo: group_ids must be a defined tensor [B], got None");
  cgrpo_torch::detail::check_dense_cpu(group_ids, "group_ids");
  TORCH_CHECK(group_ids.scalar_type() == torch::kInt || group_ids.scalar_type() == torch::kLong,
              "cgrpo: group_ids must have dtype int32 or int64, got ", group_ids.scalar_type());
  TORCH_CHECK(group_ids.dim() == 1 && group_ids.size(0) == B, "cgrpo: group_ids must have shape [B] = [", B,
              "] (the rows of rewards), got shape ", group_ids.sizes());
  return group_ids.to(torch::kLong).contiguous();
}

// LossMetrics as the flat double tensor [kNumMetricValues] (loss/metric_names.hpp).
inline Tensor metrics_tensor(const cgrpo::LossMetrics& m) {
  Tensor t = torch::empty({cgrpo::kNumMetricValues}, torch::TensorOptions().dtype(torch::kDouble));
  cgrpo::flatten_metrics(m, t.data_ptr<double>());
  return t;
}

inline Tensor none_tensor(const torch::TensorOptions& o) { return torch::empty({0}, o); }

}  // namespace cgrpo_ops
