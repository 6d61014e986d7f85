// cgrpo/cpu/token_logprobs.hpp: log p of each target and H of each row, nothing else.
// The "compute old / reference log-probs" pass that every trainer runs before the update.
#pragma once

#include <cmath>
#include <cstdint>

#include "cgrpo/cpu/fused_policy_loss.hpp"
#include "cgrpo/cpu/parallel_for.hpp"
#include "cgrpo/cpu/row_sweeps.hpp"
#include "cgrpo/cpu/workspace_guard.hpp"
#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/loss/policy_loss_batch.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/math/token_math.hpp"

namespace cgrpo::cpu {

namespace detail {
template <typename Real>
Status token_logprobs(const Real* logits, int64_t num_tokens, int64_t vocab_size, int64_t row_stride,
                      const int32_t* target_ids, double temperature, Real* logp, Real* entropy, int num_threads,
                      Workspace& ws);
}  // namespace detail

// logits [T, row_stride] (row_stride 0: V); writes logp[T] and, when not null, entropy[T].
// One read of each row. Errors (nothing written): bad sizes or pointers, logp or entropy sharing
// memory with logits, target_ids or each other, a target outside [0, V), a row with NaN or +inf
// logits, a workspace that another call holds (invalid_argument) or cannot grow (out_of_memory).
// workspace: the trainer's reusable O(T) scratch and threads (no allocation and no thread start
// once it has grown); nullptr makes one for this call. num_threads is capped at hardware_threads().
template <typename Real>
Status token_logprobs(const Real* logits, int64_t num_tokens, int64_t vocab_size, int64_t row_stride,
                      const int32_t* target_ids, double temperature, Real* logp, Real* entropy,
                      int num_threads = 1, Workspace* workspace = nullptr) {
  static_assert(std::is_same<Real, float>::value || std::is_same<Real, double>::value,
                "the CPU path takes float or double logits");
  CGRPO_RETURN_IF_ERROR(validate_token_logprobs_buffers(num_tokens, vocab_size, row_stride, temperature, logits,
                                                        target_ids, logp, entropy));
  if (num_threads < 1)
    return make_error(StatusCode::invalid_argument, "num_threads must be >= 1, got %d", num_threads);
  if (num_tokens == 0) return Status::success();
  Workspace local;
  Workspace& ws = workspace ? *workspace : local;
  ExclusiveUse use(ws.in_use);
  if (!use.acquired()) return workspace_busy_error("token_logprobs");
  return no_throw("token_logprobs", [&] {
    return detail::token_logprobs(logits, num_tokens, vocab_size, row_stride, target_ids, temperature, logp, entropy,
                                  num_threads, ws);
  });
}

namespace detail {
// token_logprobs once the arguments are checked and the workspace is held.
template <typename Real>
Status token_logprobs(const Real* logits, int64_t num_tokens, int64_t vocab_size, int64_t row_stride,
                      const int32_t* target_ids, double temperature, Real* logp, Real* entropy, int num_threads,
                      Workspace& ws) {
  ws.rows.resize(static_cast<size_t>(num_tokens));  // first: a batch too large for memory fails before any read
  const int64_t stride = row_stride == 0 ? vocab_size : row_stride;
  for (int64_t t = 0; t < num_tokens; ++t)
    if (target_ids[t] < 0 || target_ids[t] >= vocab_size)
      return make_error(StatusCode::out_of_range, "target_ids[%lld] = %d is outside [0, %lld)",
                        static_cast<long long>(t), target_ids[t], static_cast<long long>(vocab_size));

  // Results go to the caller's buffers only once every row is known to be finite.
  const double inv_temperature = inverse_temperature(temperature);
  parallel_for_rows(ws.pool, num_tokens, num_threads, [&](int64_t begin, int64_t end) {
    compute_row_stats(logits, stride, vocab_size, target_ids, inv_temperature, begin, end, ws.rows.data());
  });
  const int64_t bad = first_non_finite_row(ws, num_tokens);
  if (bad >= 0)
    return make_error(StatusCode::non_finite, "logits row %lld holds NaN or +inf (or every entry is -inf)",
                      static_cast<long long>(bad));
  for (int64_t t = 0; t < num_tokens; ++t) {
    logp[t] = logp_output<Real>(ws.rows[t].logp, std::isfinite(static_cast<double>(logits[t * stride + target_ids[t]])));
    if (entropy) entropy[t] = static_cast<Real>(ws.rows[t].entropy);
  }
  return Status::success();
}
}  // namespace detail

}  // namespace cgrpo::cpu
