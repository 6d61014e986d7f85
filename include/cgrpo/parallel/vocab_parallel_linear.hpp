// cgrpo/parallel/vocab_parallel_linear.hpp: the fused linear loss with the LM head split by vocabulary rows
// across ranks (CPU path): phase 1 row statistics of the local shard's logits; the caller all-reduces; phase 2.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cgrpo/base/buffer_overlap.hpp"
#include "cgrpo/loss/config.hpp"
#include "cgrpo/cpu/fused_linear_policy_loss.hpp"
#include "cgrpo/cpu/fused_policy_loss.hpp"
#include "cgrpo/cpu/workspace_guard.hpp"
#include "cgrpo/loss/linear_head.hpp"
#include "cgrpo/loss/metrics.hpp"
#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/parallel/vocab_parallel.hpp"
#include "cgrpo/loss/policy_loss_batch.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/math/token_math.hpp"

namespace cgrpo::parallel {

// Each rank holds the rows [shard.begin, shard.begin + shard.size) of W (and of the bias): its head
// is hidden [T, H] (the whole batch, the same on every rank) and weight [shard.size, H]. In the
// batch given to both phases, logits are null, vocab_size = shard.size, target_ids are GLOBAL ids;
// every other per-token array is the whole batch. Between the phases the caller all-reduces the
// row statistics exactly as for parallel::vocab_parallel_policy_loss (24 + 8 bytes per token).
// After phase 2 it all-reduces (SUM) grad_hidden: each rank holds G_local W_local, and
// dJ/dh = sum over ranks. grad_weight and grad_bias are the local rows, complete on their rank.

namespace detail {

template <typename Real>
Status check_linear_shard(const PolicyLossBatch<Real>& local, const VocabShard& shard) {
  CGRPO_RETURN_IF_ERROR(check_vocab_shard(shard));
  if (local.vocab_size != shard.size)
    return make_error(StatusCode::invalid_argument, "batch.vocab_size (%lld) must be the shard size (%lld)",
                      static_cast<long long>(local.vocab_size), static_cast<long long>(shard.size));
  return Status::success();
}

}  // namespace detail

// Phase 1. Per chunk of tokens, the local logits z = h W_local^T + b_local (one GEMM), then each row's
// RowStats of u = z / tau and u[y] where this rank holds y (0 elsewhere): stats[T], target_logit[T].
// Validates the batch (target ids against the global vocabulary), every entry of hidden and of the
// local weight and bias, and the local logits' range, before anything is written; stats and
// target_logit may not share memory with an input or each other.
template <typename Real>
Status vocab_shard_linear_row_stats(const LossConfig& config, const PolicyLossBatch<Real>& local,
                                    const LinearHead<Real>& head, const VocabShard& shard, RowStats<double>* stats,
                                    double* target_logit, cpu::Workspace& ws,
                                    const LinearChunking& chunking = LinearChunking{}) {
  CGRPO_RETURN_IF_ERROR(detail::check_linear_shard(local, shard));
  LossMetrics unused;
  PolicyLossOutputs<Real> no_outputs;
  no_outputs.metrics = &unused;
  CGRPO_RETURN_IF_ERROR(validate_linear_loss_shape(config, local, head, no_outputs, LinearHeadGrads<Real, Real>{},
                                                   chunking, sizeof(Real)));
  const int64_t T = local.num_tokens;
  if (T > 0 && (!stats || !target_logit))
    return make_error(StatusCode::invalid_argument, "vocab_shard_linear_row_stats: stats and target_logit must not be null");
  BufferTable table;
  add_batch_inputs(config, local, table);
  add_head_inputs(T, shard.size, head, table);
  table.output(array_span("stats", stats, T));
  table.output(array_span("target_logit", target_logit, T));
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  CGRPO_RETURN_IF_ERROR(cpu::check_workspace(ws));
  cpu::ExclusiveUse use(ws.in_use);
  if (!use.acquired()) return cpu::workspace_busy_error("vocab_shard_linear_row_stats");
  return no_throw("vocab_shard_linear_row_stats", [&]() -> Status {
    const int64_t V = shard.size, ldz = chunk_row_stride(V, sizeof(Real)), ldh = head.hidden_stride();
    const int threads = ws.num_threads;
    int64_t c = 0;
    CGRPO_RETURN_IF_ERROR(chunk_rows(chunking, T, V, sizeof(Real), &c));
    PolicyLossBatch<Real> global_ids = local;
    global_ids.vocab_size = shard.global_size;
    Real* z = nullptr;
    cpu::detail::HeadScan scan;
    CGRPO_RETURN_IF_ERROR(cpu::detail::prepare_linear(
        head, T, V, c, ldz, config.temperature, threads, ws, [&] { return validate_batch_values(config, global_ids); },
        &z, &scan));
    const double inv_temperature = inverse_temperature(config.temperature);
    for (int64_t t0 = 0; t0 < T; t0 += c) {
      const int64_t n = std::min(c, T - t0);
      cpu::head_logits(ws.pool, threads, head.hidden + t0 * ldh, ldh, n, head.hidden_size, head.weight,
                       head.weight_stride(), head.bias, V, z, ldz);
      cpu::parallel_for_rows(ws.pool, n, threads, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t t = t0 + r;
          const Real* row = z + r * ldz;
          stats[t] = cpu::row_softmax_stats(row, V, inv_temperature);
          const int32_t y = local.target_ids[t];
          target_logit[t] = shard.holds(y) ? static_cast<double>(row[y - shard.begin]) * inv_temperature : 0.0;
        }
      });
    }
    return Status::success();
  });
}

// Phase 2. From the all-reduced stats[T] and target_logit[T]: the loss and metrics of the whole
// batch (the same on every rank), log p and H when asked, dJ/dW and dJ/db of the local rows, and
// this rank's part of dJ/dh (G_local W_local: all-reduce SUM it). The local logits are formed again,
// chunk by chunk (the second forward GEMM of the two-pass path: phase 1's logits are not kept).
// Every check (the fused loss's, the head's values and range, the gradients' range) comes before
// the first write; no output may share memory with an input, stats, target_logit or another output.
template <typename Real>
Status vocab_parallel_linear_policy_loss(const LossConfig& config, const PolicyLossBatch<Real>& local,
                                         const LinearHead<Real>& head, const VocabShard& shard,
                                         const RowStats<double>* stats, const double* target_logit,
                                         const PolicyLossOutputs<Real>& out, const LinearHeadGrads<Real, Real>& grads,
                                         cpu::Workspace& ws, const LinearChunking& chunking = LinearChunking{}) {
  CGRPO_RETURN_IF_ERROR(detail::check_linear_shard(local, shard));
  CGRPO_RETURN_IF_ERROR(validate_linear_loss_shape(config, local, head, out, grads, chunking, sizeof(Real)));
  const int64_t T = local.num_tokens, V = shard.size, H = head.hidden_size;
  if (T > 0 && (!stats || !target_logit))
    return make_error(StatusCode::invalid_argument,
                      "vocab_parallel_linear_policy_loss: stats and target_logit must not be null");
  BufferTable table;
  table.input(array_span("stats", stats, T));
  table.input(array_span("target_logit", target_logit, T));
  add_loss_outputs(local, out, table);
  add_head_outputs(T, V, H, grads, table);
  CGRPO_RETURN_IF_ERROR(check_buffers(table));
  CGRPO_RETURN_IF_ERROR(cpu::check_workspace(ws));
  cpu::ExclusiveUse use(ws.in_use);
  if (!use.acquired()) return cpu::workspace_busy_error("vocab_parallel_linear_policy_loss");
  return no_throw("vocab_parallel_linear_policy_loss", [&]() -> Status {
    const int64_t ldz = chunk_row_stride(V, sizeof(Real)), ldh = head.hidden_stride();
    const int threads = ws.num_threads;
    int64_t c = 0;
    CGRPO_RETURN_IF_ERROR(chunk_rows(chunking, T, V, sizeof(Real), &c));
    PolicyLossBatch<Real> global_ids = local;
    global_ids.vocab_size = shard.global_size;
    Real* z = nullptr;
    cpu::detail::HeadScan scan;
    CGRPO_RETURN_IF_ERROR(cpu::detail::prepare_linear(
        head, T, V, c, ldz, config.temperature, threads, ws, [&] { return validate_batch_values(config, global_ids); },
        &z, &scan));
    const double inv_temperature = inverse_temperature(config.temperature);
    for (int64_t t = 0; t < T; ++t)
      CGRPO_RETURN_IF_ERROR(set_exchanged_row<Real>(stats[t], target_logit[t], inv_temperature, t, ws.rows[t]));
    LossMetrics metrics;
    CGRPO_RETURN_IF_ERROR(cpu::per_token_pass(config, local, ws, &metrics));
    if (grads.any()) {
      const int64_t overflow = cpu::first_gradient_overflow_row<Real>(ws, T, inv_temperature);
      if (overflow >= 0) return cpu::gradient_overflow_error<Real>(ws, overflow, config.temperature);
      CGRPO_RETURN_IF_ERROR(cpu::detail::check_head_gradients(ws, T, config.temperature, scan, grads));
    }

    // Every check has passed: the outputs are written.
    cpu::write_token_outputs(metrics, ws, T, out);
    if (!grads.any()) return Status::success();
    if (T == 0) {
      if (!grads.accumulate) {
        for (int64_t j = 0; grads.grad_weight && j < V; ++j)
          std::fill_n(grads.grad_weight + j * grads.weight_stride(H), H, Real(0));
        if (grads.grad_bias) std::fill_n(grads.grad_bias, V, Real(0));
      }
      return Status::success();
    }
    for (int64_t t0 = 0; t0 < T; t0 += c) {
      const int64_t n = std::min(c, T - t0);
      cpu::head_logits(ws.pool, threads, head.hidden + t0 * ldh, ldh, n, H, head.weight, head.weight_stride(),
                       head.bias, V, z, ldz);
      // dJ/dz over the local columns; the one-hot term lands only on the rank holding y_t.
      cpu::parallel_for_rows(ws.pool, n, threads, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const cpu::Workspace::Row& row = ws.rows[t0 + r];
          const int32_t y_global = local.target_ids[t0 + r];
          const int32_t y = shard.holds(y_global) ? static_cast<int32_t>(y_global - shard.begin) : -1;
          cpu::row_logit_gradient(z + r * ldz, V, inv_temperature, y, static_cast<Real>(row.pivot), row.lse,
                                  row.entropy, row.dJ_dlogp, row.dJ_dentropy, z + r * ldz);
        }
      });
      cpu::detail::chunk_backward(ws, threads, head, grads, V, z, ldz, t0, n, t0 == 0);
    }
    return Status::success();
  });
}

}  // namespace cgrpo::parallel
