// cgrpo/cpu/fused_linear_token_logprobs.hpp: log p of each target and H of each row from the hidden
// states and the LM head, one chunk of logits at a time: the old / reference log-prob pass without [T, V].
#pragma once

#include <algorithm>
#include <cstdint>

#include "cgrpo/cpu/fused_linear_policy_loss.hpp"
#include "cgrpo/cpu/workspace_guard.hpp"
#include "cgrpo/loss/linear_head.hpp"
#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/base/status.hpp"

namespace cgrpo::cpu {

namespace detail {
template <typename Real>
Status fused_linear_token_logprobs(const LinearHead<Real>& head, int64_t T, int64_t V, const int32_t* target_ids,
                                   double temperature, Real* logp, Real* entropy, int threads, Workspace& ws,
                                   const LinearChunking& chunking);
}  // namespace detail

// cpu::token_logprobs on z = hidden weight^T + bias (head: hidden [T, H], weight [V, H], bias [V]
// or null), formed chunk by chunk in the workspace (chunking: rows, or a byte budget): one GEMM
// and one sweep per chunk, O(chunk x V) extra memory. Writes logp[T] and, when not null,
// entropy[T], only once every row is known to be finite. Errors (nothing written): bad sizes,
// strides or pointers, an output sharing memory with an input or the other output, a target
// outside [0, V), a non-finite entry of hidden, weight or bias, logits that could overflow Real
// (the bound of fused_linear_policy_loss), a busy workspace, out of memory. workspace: nullptr
// makes one for this call; num_threads is capped at hardware_threads().
template <typename Real>
Status fused_linear_token_logprobs(const LinearHead<Real>& head, int64_t num_tokens, int64_t vocab_size,
                                   const int32_t* target_ids, double temperature, Real* logp, Real* entropy,
                                   int num_threads = 1, Workspace* workspace = nullptr,
                                   const LinearChunking& chunking = LinearChunking{}) {
  static_assert(std::is_same<Real, float>::value || std::is_same<Real, double>::value,
                "the CPU path takes float or double hidden states and weights");
  CGRPO_RETURN_IF_ERROR(validate_linear_logprobs_shape(num_tokens, vocab_size, head, target_ids, temperature, logp,
                                                       entropy, chunking, sizeof(Real)));
  if (num_threads < 1)
    return make_error(StatusCode::invalid_argument, "num_threads must be >= 1, got %d", num_threads);
  if (num_tokens == 0) return Status::success();
  Workspace local;
  Workspace& ws = workspace ? *workspace : local;
  ExclusiveUse use(ws.in_use);
  if (!use.acquired()) return workspace_busy_error("fused_linear_token_logprobs");
  return no_throw("fused_linear_token_logprobs", [&] {
    return detail::fused_linear_token_logprobs(head, num_tokens, vocab_size, target_ids, temperature, logp, entropy,
                                               num_threads, ws, chunking);
  });
}

namespace detail {
template <typename Real>
Status fused_linear_token_logprobs(const LinearHead<Real>& head, int64_t T, int64_t V, const int32_t* target_ids,
                                   double temperature, Real* logp, Real* entropy, int threads, Workspace& ws,
                                   const LinearChunking& chunking) {
  const int64_t ldz = chunk_row_stride(V, sizeof(Real)), ldh = head.hidden_stride();
  int64_t c = 0;
  CGRPO_RETURN_IF_ERROR(chunk_rows(chunking, T, V, sizeof(Real), &c));
  auto check_targets = [&]() -> Status {
    for (int64_t t = 0; t < T; ++t)
      if (target_ids[t] < 0 || target_ids[t] >= V)
        return make_error(StatusCode::out_of_range, "target_ids[%lld] = %d is outside [0, %lld)",
                          static_cast<long long>(t), target_ids[t], static_cast<long long>(V));
    return Status::success();
  };
  Real* z = nullptr;
  HeadScan scan;
  CGRPO_RETURN_IF_ERROR(prepare_linear(head, T, V, c, ldz, temperature, threads, ws, check_targets, &z, &scan));
  const double inv_temperature = inverse_temperature(temperature);
  for (int64_t t0 = 0; t0 < T; t0 += c) {
    const int64_t n = std::min(c, T - t0);
    head_logits(ws.pool, threads, head.hidden + t0 * ldh, ldh, n, head.hidden_size, head.weight, head.weight_stride(),
                head.bias, V, z, ldz);
    chunk_row_stats(ws, threads, z, ldz, V, target_ids, inv_temperature, t0, n);
  }
  const int64_t bad = first_non_finite_row(ws, T);
  if (bad >= 0)
    return make_error(StatusCode::non_finite, "logits row %lld is not finite; nothing was written",
                      static_cast<long long>(bad));
  for (int64_t t = 0; t < T; ++t) {
    logp[t] = logp_output<Real>(ws.rows[t].logp, true);  // logits of a finite head are finite (prepare_linear)
    if (entropy) entropy[t] = static_cast<Real>(ws.rows[t].entropy);
  }
  return Status::success();
}
}  // namespace detail

}  // namespace cgrpo::cpu
