// cgrpo/parallel/vocab_parallel.hpp: the fused loss with the vocabulary split across ranks (CPU path).
// Phase 1: per-row softmax statistics of the local shard; the caller all-reduces; phase 2: loss and local gradient.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cgrpo/base/buffer_overlap.hpp"
#include "cgrpo/loss/config.hpp"
#include "cgrpo/cpu/fused_policy_loss.hpp"
#include "cgrpo/cpu/parallel_for.hpp"
#include "cgrpo/cpu/row_sweeps.hpp"
#include "cgrpo/cpu/workspace_guard.hpp"
#include "cgrpo/loss/metrics.hpp"
#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/loss/policy_loss_batch.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/math/token_math.hpp"

namespace cgrpo::parallel {

// The columns [begin, begin + size) of a vocabulary of global_size entries that
// this rank holds. In the PolicyLossBatch given to both phases, `logits` points
// at the local shard [T, row_stride], `vocab_size` is shard.size, and
// `target_ids` are GLOBAL ids in [0, global_size). Every other per-token array is
// the whole batch, the same on every rank (tensor parallelism splits columns, not tokens).
struct VocabShard {
  int64_t begin = 0;
  int64_t size = 0;
  int64_t global_size = 0;

  bool holds(int32_t id) const { return id >= begin && id < begin + size; }
};

// Megatron's vocab-parallel cross-entropy, extended to H and the GRPO loss.
// The reduction between the phases, for the T rows:
//   stats[t]        RowStats of u = z / tau over the shard: max M, sum exp(u - M),
//                   sum exp(u - M)(u - M), in double. M is within rounding of max u (1e-16
//                   relative), so log p and dJ/dz keep an absolute error of about 1e-16 |max u|
//                   (the unsharded loss shifts by the row max and has none); a row with
//                   |max z / tau| beyond DBL_MAX (double logits only) is non-finite here.
//                   Merge across ranks with row_stats_merge
//                   (custom reduction or all-gather + merge), or with two standard
//                   collectives: all-reduce MAX of the maxima, row_stats_rebase()
//                   on each rank, all-reduce SUM of sum_exp and sum_exp_u.
//   target_logit[t] u[y_t] on the rank that holds y_t, 0 elsewhere: all-reduce SUM.
// The exchanged statistics hold u = z / tau absolutely, so log p, H and the exponents of dJ/dz
// carry an absolute error of about 1e-16 |max u|. Above 2^40 (1e12: 1e-4 nats) that error could
// scale a gradient entry by e^(error) past the overflow bound, so phase 2 refuses such a row
// (found by fuzz_parallel: double logits of 5e207 gave an inf gradient with OK). The unsharded
// loss, which shifts by the row max before it scales, takes them.
inline constexpr double kVocabParallelMaxAbsU = 0x1p40;

inline Status check_exchanged_row(const RowStats<double>& s, int64_t t) {
  if (!(std::fabs(s.max) <= kVocabParallelMaxAbsU))
    return make_error(StatusCode::invalid_argument,
                      "row %lld: |max z / tau| = %g exceeds 2^40, beyond what the exchanged statistics hold to "
                      "1e-4 nats (the unsharded loss takes it); nothing was written",
                      static_cast<long long>(t), s.max);
  return Status::success();
}

// Row t of phase 2 from the all-reduced statistics (both the logits and the LM-head variant):
// checked finite and within kVocabParallelMaxAbsU, then lse, H and log p; the gradient sweep
// shifts by a pivot in logit units, M * tau in Real's range, and lse is re-expressed against it
// (exact to the 1e-16 |M| of the exchanged statistics).
template <typename Real>
Status set_exchanged_row(const RowStats<double>& stats, double target_logit, double inv_temperature, int64_t t,
                         cpu::Workspace::Row& r) {
  r.finite = row_stats_finite(stats) && std::isfinite(target_logit);
  if (!r.finite)
    return make_error(StatusCode::non_finite,
                      "row %lld: the reduced statistics hold NaN or +inf (or every logit is -inf); nothing was written",
                      static_cast<long long>(t));
  CGRPO_RETURN_IF_ERROR(check_exchanged_row(stats, t));
  cpu::set_row_values(stats, target_logit, r);
  const double lowest = -static_cast<double>(std::numeric_limits<Real>::max());
  const double pivot = std::min(std::max(stats.max / inv_temperature, lowest), -lowest);
  r.pivot = static_cast<double>(static_cast<Real>(pivot));
  r.lse -= r.pivot * inv_temperature;
  return Status::success();
}

inline Status check_vocab_shard(const VocabShard& shard) {
  // size > global_size - begin rather than begin + size > global_size: no overflow.
  if (shard.global_size <= 0 || shard.size <= 0 || shard.begin < 0 || shard.begin > shard.global_size ||
      shard.size > shard.global_size - shard.begin)
    return make_error(StatusCode::invalid_argument,
                      "vocab shard (begin %lld, size %lld) must be a non-empty part of [0, %lld)",
                      static_cast<long long>(shard.begin), static_cast<long long>(shard.size),
                      static_cast<long long>(shard.global_size));
  return Status::success();
}

// Phase 1. Reads the shard once; writes stats[T] and target_logit[T]. Validates the batch
// exactly as the fused loss does (target ids against the global vocabulary); stats and
// target_logit may not share memory with the batch or each other. Rows are split across
// ws.num_threads threads of ws's pool; ws is held for the call (a call on a workspace that
// another call holds returns invalid_argument).
template <typename Real>
Status vocab_shard_row_stats(const LossConfig& config, const PolicyLossBatch<Real>& local, const VocabShard& shard,
                             RowStats<double>* stats, double* target_logit, cpu::Workspace& ws) {
  static_assert(std::is_same<Real, float>::value || std::is_same<Real, double>::value,
                "the CPU path takes float or double logits");
  CGRPO_RETURN_IF_ERROR(check_vocab_shard(shard));
  if (local.vocab_size != shard.size)
    return make_error(StatusCode::invalid_argument, "batch.vocab_size (%lld) must be the shard size (%lld)",
                      static_cast<long long>(local.vocab_size), static_cast<long long>(shard.size));
  LossMetrics unused;
  PolicyLossOutputs<Real> no_outputs;
  no_outputs.metrics = &unused;
  CGRPO_RETURN_IF_ERROR(validate_batch_shape(config, local, no_outputs));
  if (local.num_tokens > 0 && (!stats || !target_logit))
    return make_error(StatusCode::invalid_argument, "vocab_shard_row_stats: stats and target_logit must not be null");
  BufferTable table;
  add_batch_inputs(config, local, table);
  table.output(array_span("stats", stats, local.num_tokens));
  table.output(array_span("target_logit", target_logit, local.num_tokens));
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  PolicyLossBatch<Real> global_ids = local;  // target ids are checked against the global vocabulary
  global_ids.vocab_size = shard.global_size;
  CGRPO_RETURN_IF_ERROR(validate_batch_values(config, global_ids));
  CGRPO_RETURN_IF_ERROR(cpu::check_workspace(ws));
  cpu::ExclusiveUse use(ws.in_use);
  if (!use.acquired()) return cpu::workspace_busy_error("vocab_shard_row_stats");

  const int64_t stride = local.stride();
  const double inv_temperature = inverse_temperature(config.temperature);
  cpu::parallel_for_rows(ws.pool, local.num_tokens, ws.num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const Real* z = local.logits + t * stride;
      stats[t] = cpu::row_softmax_stats(z, shard.size, inv_temperature);
      const int32_t y = local.target_ids[t];
      target_logit[t] = shard.holds(y) ? static_cast<double>(z[y - shard.begin]) * inv_temperature : 0.0;
    }
  });
  return Status::success();
}

// Phase 1 with a workspace of its own (its threads are started for this call).
template <typename Real>
Status vocab_shard_row_stats(const LossConfig& config, const PolicyLossBatch<Real>& local, const VocabShard& shard,
                             RowStats<double>* stats, double* target_logit) {
  cpu::Workspace ws;
  return vocab_shard_row_stats(config, local, shard, stats, target_logit, ws);
}

namespace detail {
template <typename Real>
Status vocab_parallel_policy_loss(const LossConfig& config, const PolicyLossBatch<Real>& local,
                                  const VocabShard& shard, const RowStats<double>* stats,
                                  const double* target_logit, const PolicyLossOutputs<Real>& out,
                                  cpu::Workspace& ws);
}  // namespace detail

// Phase 2. From the all-reduced stats[T] and target_logit[T]: the loss and
// metrics of the whole batch (identical on every rank), per-token log p and H
// when asked, and dJ/dz for the local columns only (grad_logits [T, grad_row_stride],
// may be local.logits in place). Same checks and rules as cpu::fused_policy_loss:
// a non-finite row or a -inf target logit is an error and nothing is written; no output may
// share memory with the batch, stats, target_logit or another output; ws is held for the call.
template <typename Real>
Status vocab_parallel_policy_loss(const LossConfig& config, const PolicyLossBatch<Real>& local,
                                  const VocabShard& shard, const RowStats<double>* stats,
                                  const double* target_logit, const PolicyLossOutputs<Real>& out,
                                  cpu::Workspace& ws) {
  CGRPO_RETURN_IF_ERROR(check_vocab_shard(shard));
  if (local.vocab_size != shard.size)
    return make_error(StatusCode::invalid_argument, "batch.vocab_size (%lld) must be the shard size (%lld)",
                      static_cast<long long>(local.vocab_size), static_cast<long long>(shard.size));
  CGRPO_RETURN_IF_ERROR(validate_batch_shape(config, local, out));
  if (local.num_tokens > 0 && (!stats || !target_logit))
    return make_error(StatusCode::invalid_argument, "vocab_parallel_policy_loss: stats and target_logit must not be null");
  BufferTable table;
  add_batch_inputs(config, local, table);
  table.input(array_span("stats", stats, local.num_tokens));
  table.input(array_span("target_logit", target_logit, local.num_tokens));
  add_loss_outputs(local, out, table);
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  CGRPO_RETURN_IF_ERROR(cpu::check_workspace(ws));
  cpu::ExclusiveUse use(ws.in_use);
  if (!use.acquired()) return cpu::workspace_busy_error("vocab_parallel_policy_loss");
  return no_throw("vocab_parallel_policy_loss", [&] {
    return detail::vocab_parallel_policy_loss(config, local, shard, stats, target_logit, out, ws);
  });
}

namespace detail {
// vocab_parallel_policy_loss once the shapes are checked and the workspace is held.
template <typename Real>
Status vocab_parallel_policy_loss(const LossConfig& config, const PolicyLossBatch<Real>& local,
                                  const VocabShard& shard, const RowStats<double>* stats,
                                  const double* target_logit, const PolicyLossOutputs<Real>& out,
                                  cpu::Workspace& ws) {
  const int64_t T = local.num_tokens, stride = local.stride();
  ws.rows.resize(static_cast<size_t>(T));  // first: a batch too large for memory fails before any read
  PolicyLossBatch<Real> global_ids = local;
  global_ids.vocab_size = shard.global_size;
  CGRPO_RETURN_IF_ERROR(validate_batch_values(config, global_ids));
  const double inv_temperature = inverse_temperature(config.temperature);
  for (int64_t t = 0; t < T; ++t)
    CGRPO_RETURN_IF_ERROR(set_exchanged_row<Real>(stats[t], target_logit[t], inv_temperature, t, ws.rows[t]));

  // From here on, exactly the per-token pass of cpu::fused_policy_loss, on the reduced rows.
  LossMetrics metrics;
  CGRPO_RETURN_IF_ERROR(cpu::per_token_pass(config, local, ws, &metrics));
  if (out.grad_logits) {
    const int64_t overflow = cpu::first_gradient_overflow_row<Real>(ws, T, inv_temperature);
    if (overflow >= 0) return cpu::gradient_overflow_error<Real>(ws, overflow, config.temperature);
  }
  cpu::write_token_outputs(metrics, ws, T, out);
  if (out.grad_logits) {
    // dJ/dz_j over the local columns (the vectorised sweep of the CPU path); the one-hot
    // term lands only on the rank holding y_t (target -1 elsewhere).
    const int64_t gstride = out.grad_row_stride == 0 ? stride : out.grad_row_stride;
    cpu::parallel_for_rows(ws.pool, T, ws.num_threads, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const cpu::Workspace::Row& r = ws.rows[t];
        const int32_t y = shard.holds(local.target_ids[t]) ? static_cast<int32_t>(local.target_ids[t] - shard.begin) : -1;
        cpu::row_logit_gradient(local.logits + t * stride, shard.size, inv_temperature, y, static_cast<Real>(r.pivot),
                                r.lse, r.entropy, r.dJ_dlogp, r.dJ_dentropy, out.grad_logits + t * gstride);
      }
    });
  }
  return Status::success();
}
}  // namespace detail

// Convenience overload with a workspace of its own (allocates O(T) and starts its threads per call).
template <typename Real>
Status vocab_parallel_policy_loss(const LossConfig& config, const PolicyLossBatch<Real>& local,
                                  const VocabShard& shard, const RowStats<double>* stats,
                                  const double* target_logit, const PolicyLossOutputs<Real>& out) {
  cpu::Workspace ws;
  return vocab_parallel_policy_loss(config, local, shard, stats, target_logit, out, ws);
}

}  // namespace cgrpo::parallel
