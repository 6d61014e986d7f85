// cgrpo/cpu/fused_linear_policy_loss.hpp: the LM head and the whole loss of MATH.md in one call on the CPU:
// logits formed one chunk of tokens at a time (never [T, V]), loss, metrics, dJ/dhidden, dJ/dweight, dJ/dbias.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "cgrpo/loss/config.hpp"
#include "cgrpo/cpu/fused_policy_loss.hpp"
#include "cgrpo/cpu/linear_gemm.hpp"
#include "cgrpo/cpu/loss_passes.hpp"
#include "cgrpo/cpu/parallel_for.hpp"
#include "cgrpo/cpu/row_sweeps.hpp"
#include "cgrpo/cpu/workspace_guard.hpp"
#include "cgrpo/loss/linear_head.hpp"
#include "cgrpo/loss/metrics.hpp"
#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/loss/policy_loss_batch.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/loss/token_loss_bound.hpp"

namespace cgrpo::cpu {

namespace detail {

// What the scan of the head found: the largest row norm and entry of W, the largest |b|.
struct HeadScan {
  double weight_row_norm = 0, weight_max = 0, bias_max = 0;
};

// The [rows, stride] chunk buffer in the workspace, 64-byte aligned (grown, never shrunk).
inline float* chunk_buffer(Workspace& ws, float*, int64_t elems) {
  ws.chunk_float.resize(static_cast<size_t>(elems) + 16);
  const uintptr_t p = reinterpret_cast<uintptr_t>(ws.chunk_float.data());
  return ws.chunk_float.data() + ((64 - p % 64) % 64) / sizeof(float);
}
inline double* chunk_buffer(Workspace& ws, double*, int64_t elems) {
  ws.chunk_double.resize(static_cast<size_t>(elems) + 8);
  const uintptr_t p = reinterpret_cast<uintptr_t>(ws.chunk_double.data());
  return ws.chunk_double.data() + ((64 - p % 64) % 64) / sizeof(double);
}

// Reads hidden, weight and bias once: every entry finite (else the first bad one is named), and
// per token row the bound |z_tj| <= ||h_t|| max_j ||W_j|| + max |b| (Cauchy-Schwarz) into
// ws.logit_bound[t], max_k |h_tk| into ws.hidden_max[t]. W is scanned in fixed blocks of rows by
// the pool (per-block results in ws.scratch), h row by row.
template <typename Real>
Status scan_head(const LinearHead<Real>& head, int64_t T, int64_t V, int threads, Workspace& ws, HeadScan* scan) {
  const int64_t H = head.hidden_size, ldw = head.weight_stride(), ldh = head.hidden_stride();
  using Row = Eigen::Map<const Eigen::Array<Real, Eigen::Dynamic, 1>>;
  // The first entry of a row that is not finite, or -1 (a finite row whose squares overflow double
  // has none: its bound is then +inf and check_logit_range refuses it).
  auto first_bad = [H](const Real* x) -> int64_t {
    for (int64_t k = 0; k < H; ++k)
      if (!std::isfinite(static_cast<double>(x[k]))) return k;
    return -1;
  };
  const int64_t blocks = (V + kVocabBlock - 1) / kVocabBlock;
  ws.scratch.assign(static_cast<size_t>(2 * blocks), 0.0);
  ws.pool.run(blocks, threads, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double norm2 = 0, amax = 0;
      for (int64_t j = b * kVocabBlock; j < std::min(V, (b + 1) * kVocabBlock); ++j) {
        const auto w = Row(head.weight + j * ldw, H).template cast<double>();
        const double s = w.square().sum();  // NaN or +inf for a NaN or inf entry
        if (!std::isfinite(s)) {
          norm2 = INFINITY;
          continue;
        }
        norm2 = std::max(norm2, s);
        amax = std::max(amax, w.abs().maxCoeff());
      }
      ws.scratch[2 * b] = norm2;
      ws.scratch[2 * b + 1] = amax;
    }
  });
  double norm2 = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    if (!std::isfinite(ws.scratch[2 * b]))
      for (int64_t j = b * kVocabBlock; j < std::min(V, (b + 1) * kVocabBlock); ++j) {
        const int64_t k = first_bad(head.weight + j * ldw);
        if (k >= 0)
          return make_error(StatusCode::non_finite, "weight[%lld][%lld] is not finite; nothing was written",
                            static_cast<long long>(j), static_cast<long long>(k));
      }
    norm2 = std::max(norm2, ws.scratch[2 * b]);
    scan->weight_max = std::max(scan->weight_max, ws.scratch[2 * b + 1]);
  }
  scan->weight_row_norm = std::sqrt(norm2);
  for (int64_t j = 0; head.bias && j < V; ++j) {
    if (!std::isfinite(static_cast<double>(head.bias[j])))
      return make_error(StatusCode::non_finite, "bias[%lld] is not finite; nothing was written", static_cast<long long>(j));
    scan->bias_max = std::max(scan->bias_max, std::fabs(static_cast<double>(head.bias[j])));
  }
  ws.pool.run(T, threads, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const auto h = Row(head.hidden + t * ldh, H).template cast<double>();
      const double s = h.square().sum();
      ws.logit_bound[t] = s;
      ws.hidden_max[t] = std::isfinite(s) ? h.abs().maxCoeff() : INFINITY;
    }
  });
  for (int64_t t = 0; t < T; ++t) {
    if (!std::isfinite(ws.logit_bound[t])) {
      const int64_t k = first_bad(head.hidden + t * ldh);
      if (k >= 0)
        return make_error(StatusCode::non_finite, "hidden[%lld][%lld] is not finite; nothing was written",
                          static_cast<long long>(t), static_cast<long long>(k));
    }
    ws.logit_bound[t] = std::sqrt(ws.logit_bound[t]) * scan->weight_row_norm + scan->bias_max;
  }
  return Status::success();
}

// Logits formed from finite h and W can still overflow Real: refuses any row whose bound, with
// room for the GEMM's rounding (2x), reaches Real's largest value. (z / tau beyond Real's range is
// fine: the sweeps shift by a pivot before they scale, in double.)
template <typename Real>
Status check_logit_range(const Workspace& ws, int64_t T, double temperature, const HeadScan& scan) {
  const double limit = static_cast<double>(std::numeric_limits<Real>::max()) / 2;
  for (int64_t t = 0; t < T; ++t)
    if (!(ws.logit_bound[t] < limit))
      return make_error(StatusCode::non_finite,
                        "token %lld: its logits may overflow %s (|z| <= ||h_t|| max_j ||W_j|| + max|b| = %g with "
                        "max_j ||W_j|| = %g); scale the hidden states or the head; nothing was written",
                        static_cast<long long>(t), sizeof(Real) == 4 ? "float" : "double", ws.logit_bound[t],
                        scan.weight_row_norm);
  (void)temperature;
  return Status::success();
}

// The lowest log p row t can have: u_y - lse >= -(max u - min u) - log V with |u| <= bound / tau.
inline double lowest_logp(double logit_bound, double temperature, int64_t V) {
  return -(2.0 * 1.01 * logit_bound / temperature + std::log(static_cast<double>(V)) + 1.0);
}

// ||dJ/dz_t||_1 <= 2 (|a_t| + |b_t| H_t) / tau: the a part sums |onehot - p| = 2 (1 - p_y), the b
// part sum p |log p + H| <= 2 H. Each gradient of the head is bounded through it:
// |dJ/dh_tk| <= ||g_t||_1 max|W|, |dJ/dW_jk| <= sum_t ||g_t||_1 max_k |h_tk|, |dJ/db_j| <= sum_t ||g_t||_1.
struct HeadGradientBound {
  double hidden = 0, weight = 0, bias = 0;
  void add(double g1, double weight_max, double hidden_max) {
    hidden = std::max(hidden, g1 * weight_max);
    weight += g1 * hidden_max;
    bias += g1;
  }
};

template <typename Real, typename Grad>
Status check_head_gradient_range(const HeadGradientBound& b, const LinearHeadGrads<Real, Grad>& grads) {
  const double limit = static_cast<double>(std::numeric_limits<Real>::max()) / 4;
  const char* type = sizeof(Real) == 4 ? "float" : "double";
  auto fail = [&](const char* what, double v) {
    return make_error(StatusCode::non_finite,
                      "dJ/d%s may overflow %s (its entries are bounded by %g, from dJ/dlogits and the head's "
                      "largest entries); nothing was written",
                      what, type, v);
  };
  if (grads.grad_hidden && !(b.hidden * 1.01 < limit)) return fail("hidden", b.hidden);
  if (grads.grad_weight && !(b.weight * 1.01 < limit)) return fail("weight", b.weight);
  if (grads.grad_bias && !(b.bias * 1.01 < limit)) return fail("bias", b.bias);
  return Status::success();
}

// The exact version for a_t, b_t and H_t in ws.rows (the two-pass path, after per_token_pass).
template <typename Real>
Status check_head_gradients(const Workspace& ws, int64_t T, double temperature, const HeadScan& scan,
                            const LinearHeadGrads<Real, Real>& grads) {
  HeadGradientBound b;
  for (int64_t t = 0; t < T; ++t) {
    const Workspace::Row& r = ws.rows[t];
    b.add(2.0 * (std::fabs(r.dJ_dlogp) + std::fabs(r.dJ_dentropy) * r.entropy) / temperature, scan.weight_max,
          ws.hidden_max[t]);
  }
  return check_head_gradient_range(b, grads);
}

// Whether the single pass may run: after prepare_token_pass, a bound on every token's |J_t| and
// |a_t| over the log p its row can have keeps the loss, dJ/dlogits (row_gradient_in_range's rule)
// and the head's gradients finite. Then no check after the logits are formed can fail, and writing
// chunk by chunk leaves the all-or-nothing contract intact. Otherwise the two-pass path runs, whose
// checks all come before its first write.
template <typename Real>
bool single_pass_bounded(const LossConfig& config, const PolicyLossBatch<Real>& batch, const Workspace& ws,
                         const HeadScan& scan, const LinearHeadGrads<Real, Real>& grads) {
  const int64_t T = batch.num_tokens, V = batch.vocab_size;
  const TokenLossParams<double> params = token_params<double>(config);
  const double max_entropy = std::log(static_cast<double>(V)) + 1.0;
  const Real* reference = ratio_reference(config, batch);
  const bool computed_weights = batch.computed_weights(), kl_on = config.kl_on();
  double loss = 0;
  HeadGradientBound head;
  for (int64_t t = 0; t < T; ++t) {
    TokenInputs<double> in{};
    in.valid = batch.mask[t] != 0;
    double b = 0;
    if (in.valid) {
      in.in_pg = (ws.terms[t] & kTermPolicy) != 0;
      in.refinement = batch.kinds && batch.kinds[t] == kRefinement;
      in.old_logp = in.refinement ? 0.0 : static_cast<double>(reference[t]);
      in.ref_logp = kl_on ? static_cast<double>(batch.ref_logp[t]) : 0.0;
      in.advantage = static_cast<double>(batch.advantages[t]);
      in.w_pg = computed_weights ? ws.w_pg[t] : static_cast<double>(batch.pg_weights[t]);
      in.w_entropy = computed_weights ? ws.w_entropy[t]
                                      : (batch.entropy_weights ? static_cast<double>(batch.entropy_weights[t]) : 0.0);
      in.w_kl = !kl_on ? 0.0 : computed_weights ? ws.w_kl[t] : static_cast<double>(batch.kl_weights[t]);
      in.pg_factor = ws.pg_factor[t];
      b = std::fabs(params.entropy_coef * in.w_entropy);
    }
    const TokenLossBound tb =
        token_loss_bound(in, lowest_logp(ws.logit_bound[t], config.temperature, V), max_entropy, params);
    loss += tb.loss;
    if (!(tb.dlogp < INFINITY) || !row_gradient_in_range<Real>(2.0 / config.temperature, max_entropy, tb.dlogp, b))
      return false;  // (twice the rule's bound: room for the bound's own rounding)
    head.add(2.0 * (tb.dlogp + b * max_entropy) / config.temperature, scan.weight_max, ws.hidden_max[t]);
  }
  if (!(loss < 1e300)) return false;
  return check_head_gradient_range(head, grads).ok();
}

// Sweep 1 over the chunk's rows: ws.rows[t0 + r] for r in [0, n).
template <typename Real>
void chunk_row_stats(Workspace& ws, int threads, const Real* z, int64_t ldz, int64_t V, const int32_t* targets,
                     double inv_temperature, int64_t t0, int64_t n) {
  parallel_for_rows(ws.pool, n, threads, [&](int64_t b, int64_t e) {
    compute_row_stats(z, ldz, V, targets + t0, inv_temperature, b, e, ws.rows.data() + t0);
  });
}

// Sweep 2 over the chunk's rows, in place: z becomes dJ/dz.
template <typename Real>
void chunk_row_gradient(Workspace& ws, int threads, Real* z, int64_t ldz, int64_t V, const int32_t* targets,
                        double inv_temperature, int64_t t0, int64_t n) {
  parallel_for_rows(ws.pool, n, threads, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const Workspace::Row& row = ws.rows[t0 + r];
      row_logit_gradient(z + r * ldz, V, inv_temperature, targets[t0 + r], static_cast<Real>(row.pivot), row.lse,
                         row.entropy, row.dJ_dlogp, row.dJ_dentropy, z + r * ldz);
    }
  });
}

// The backward GEMMs of one chunk whose buffer holds dJ/dz: dJ/dW and dJ/db first (they read h),
// then dJ/dh (which may overwrite h: in place).
template <typename Real>
void chunk_backward(Workspace& ws, int threads, const LinearHead<Real>& head, const LinearHeadGrads<Real, Real>& grads,
                    int64_t V, const Real* z, int64_t ldz, int64_t t0, int64_t n, bool first_chunk) {
  const int64_t H = head.hidden_size, ldh = head.hidden_stride();
  const bool accumulate = grads.accumulate || !first_chunk;
  if (grads.grad_weight || grads.grad_bias)
    head_weight_grad(ws.pool, threads, z, ldz, n, V, head.hidden + t0 * ldh, ldh, H, grads.grad_weight,
                     grads.weight_stride(H), grads.grad_bias, accumulate);
  if (grads.grad_hidden) {
    const int64_t ldgh = grads.hidden_stride(H);
    head_hidden_grad(ws.pool, threads, z, ldz, n, V, head.weight, head.weight_stride(), H,
                     grads.grad_hidden + t0 * ldgh, ldgh);
  }
}

// A failure after the first write: only a bug in single_pass_bounded can get here.
inline Status after_write_error(const Status& s) {
  return make_error(s.code, "%.150s (internal: found after outputs were written; please report)", s.message);
}

template <typename Real>
Status fused_linear_policy_loss(const LossConfig& config, const PolicyLossBatch<Real>& batch,
                                const LinearHead<Real>& head, const PolicyLossOutputs<Real>& out,
                                const LinearHeadGrads<Real, Real>& grads, const LinearChunking& chunking,
                                Workspace& ws);

}  // namespace detail

// The fused LM head + policy loss: the fused loss of cpu/fused_policy_loss.hpp on the logits
// z = hidden weight^T + bias, which exist one chunk of tokens at a time. Per chunk of c tokens:
// one GEMM into a [c, V] buffer in the workspace, the row sweeps over it in place, then
// dJ/dW (+)= G^T h and dJ/dh = G W (G the chunk's dJ/dz). Extra memory: c x V x sizeof(Real)
// (chunking: rows, or a byte budget) + O(T); never [T, V].
//
//   batch:  the per-token arrays, config and layout of the fused loss; batch.logits null,
//           batch.vocab_size = V (the rows of head.weight), batch.row_stride 0.
//   out:    metrics (required), logp and entropy (optional); out.grad_logits must be null.
//   grads:  dJ/dhidden, dJ/dweight, dJ/dbias (each optional; all null: forward only).
//
// Two paths, the same results (equal to the logits-level loss on z to rounding):
//   single pass (a gradient is wanted, !plan.all_logp_first, and a bound on every token's
//     loss and dJ/dlogp shows nothing can overflow): per chunk, GEMM, sweep 1, the per-token pass
//     of the chunk's tokens (token_pass_range, with the pre-passes' weights known upfront), sweep
//     2, backward GEMMs. 3 GEMMs in all, as with materialised logits.
//   two passes (the row- and batch-coupled configs: sequence ratios, geo_mean, vespo, kl_cov /
//     clip_cov selection, verl's bypass correction, TRL's sampler weight and OPSM, the entropy
//     quantile; and forward only): pass 1 forms each chunk's logits for sweep 1 only, then
//     per_token_pass runs once over the whole batch, then pass 2 forms each chunk's logits again
//     for sweep 2 and the backward GEMMs. The cost: a second forward GEMM (4 GEMMs instead of 3,
//     about 1.33x the GEMM time); the memory is the same.
// Errors leave every output untouched, grad_weight and grad_bias in accumulate mode included:
// validation reads every per-token value, every entry of hidden, weight and bias (finite), and
// bounds each row's logits (|z_t| <= ||h_t|| max_j ||W_j|| + max|b|: a row that could overflow
// Real is refused; z / tau beyond Real is fine, the sweeps shift by a pivot first) and the head's
// gradients, before anything is written.
// Threads: ws.num_threads on the workspace's pool; the GEMMs run in fixed blocks and the rows
// in fixed parts, so every thread count gives the same bits. A workspace that another call holds
// gives invalid_argument; one that cannot grow, out_of_memory.
template <typename Real>
Status fused_linear_policy_loss(const LossConfig& config, const PolicyLossBatch<Real>& batch,
                                const LinearHead<Real>& head, const PolicyLossOutputs<Real>& out,
                                const LinearHeadGrads<Real, Real>& grads, Workspace& ws,
                                const LinearChunking& chunking = LinearChunking{}) {
  static_assert(std::is_same<Real, float>::value || std::is_same<Real, double>::value,
                "the CPU path takes float or double hidden states and weights");
  CGRPO_RETURN_IF_ERROR(validate_linear_loss_shape(config, batch, head, out, grads, chunking, sizeof(Real)));
  CGRPO_RETURN_IF_ERROR(check_workspace(ws));
  ExclusiveUse use(ws.in_use);
  if (!use.acquired()) return workspace_busy_error("fused_linear_policy_loss");
  return no_throw("fused_linear_policy_loss", [&] {
    return detail::fused_linear_policy_loss(config, batch, head, out, grads, chunking, ws);
  });
}

// Convenience overload with a workspace of its own (allocates and starts its threads per call).
template <typename Real>
Status fused_linear_policy_loss(const LossConfig& config, const PolicyLossBatch<Real>& batch,
                                const LinearHead<Real>& head, const PolicyLossOutputs<Real>& out,
                                const LinearHeadGrads<Real, Real>& grads,
                                const LinearChunking& chunking = LinearChunking{}) {
  Workspace ws;
  return fused_linear_policy_loss(config, batch, head, out, grads, ws, chunking);
}

namespace detail {

// Grows the workspace for T tokens and a chunk of c rows (first: a batch too large for memory
// fails before any read), then checks the per-token values (check_values), every entry of the
// head and the logits' range.
template <typename Real, typename CheckValues>
Status prepare_linear(const LinearHead<Real>& head, int64_t T, int64_t V, int64_t c, int64_t ldz, double temperature,
                      int threads, Workspace& ws, CheckValues&& check_values, Real** z, HeadScan* scan) {
  ws.rows.resize(static_cast<size_t>(T));
  ws.logit_bound.resize(static_cast<size_t>(T));
  ws.hidden_max.resize(static_cast<size_t>(T));
  *z = T > 0 ? chunk_buffer(ws, static_cast<Real*>(nullptr), c * ldz) : nullptr;
  CGRPO_RETURN_IF_ERROR(check_values());
  CGRPO_RETURN_IF_ERROR(scan_head(head, T, V, threads, ws, scan));
  return check_logit_range<Real>(ws, T, temperature, *scan);
}

template <typename Real>
Status fused_linear_policy_loss(const LossConfig& config, const PolicyLossBatch<Real>& batch,
                                const LinearHead<Real>& head, const PolicyLossOutputs<Real>& out,
                                const LinearHeadGrads<Real, Real>& grads, const LinearChunking& chunking,
                                Workspace& ws) {
  const int64_t T = batch.num_tokens, V = batch.vocab_size, H = head.hidden_size;
  const int64_t ldz = chunk_row_stride(V, sizeof(Real)), ldh = head.hidden_stride(), ldw = head.weight_stride();
  const int threads = ws.num_threads;
  int64_t c = 0;
  CGRPO_RETURN_IF_ERROR(chunk_rows(chunking, T, V, sizeof(Real), &c));
  Real* z = nullptr;
  HeadScan scan;
  CGRPO_RETURN_IF_ERROR(prepare_linear(
      head, T, V, c, ldz, config.temperature, threads, ws, [&] { return validate_batch_values(config, batch); }, &z,
      &scan));
  const double inv_temperature = inverse_temperature(config.temperature);
  auto logits = [&](int64_t t0, int64_t n) {
    head_logits(ws.pool, threads, head.hidden + t0 * ldh, ldh, n, H, head.weight, ldw, head.bias, V, z, ldz);
  };

  LossMetrics metrics;
  bool single = grads.any() && T > 0 && !plan_passes(config, batch).all_logp_first;
  if (single) {
    for (int64_t t = 0; t < T; ++t) ws.rows[t].logp = ws.rows[t].entropy = NAN;  // read by no pre-pass here
    CGRPO_RETURN_IF_ERROR(prepare_token_pass(config, batch, ws, &metrics));
    single = single_pass_bounded(config, batch, ws, scan, grads);
  }

  if (single) {
    // Everything that can fail has been checked: from here on the outputs are written, chunk by chunk.
    for (int64_t t0 = 0; t0 < T; t0 += c) {
      const int64_t n = std::min(c, T - t0);
      logits(t0, n);
      chunk_row_stats(ws, threads, z, ldz, V, batch.target_ids, inv_temperature, t0, n);
      for (int64_t t = t0; t < t0 + n; ++t)
        if (!ws.rows[t].finite)
          return after_write_error(make_error(StatusCode::non_finite, "logits row %lld is not finite", static_cast<long long>(t)));
      Status s = token_pass_range(config, batch, ws, t0, t0 + n);
      if (!s.ok()) return after_write_error(s);
      for (int64_t t = t0; t < t0 + n; ++t)
        if (!row_gradient_in_range<Real>(inv_temperature, ws.rows[t].entropy, ws.rows[t].dJ_dlogp, ws.rows[t].dJ_dentropy))
          return after_write_error(gradient_overflow_error<Real>(ws, t, config.temperature));
      chunk_row_gradient(ws, threads, z, ldz, V, batch.target_ids, inv_temperature, t0, n);
      chunk_backward(ws, threads, head, grads, V, z, ldz, t0, n, t0 == 0);
    }
    const Status s = finish_token_pass(config, batch, ws, &metrics);
    if (!s.ok()) return after_write_error(s);
    write_token_outputs(metrics, ws, T, out);
    return Status::success();
  }

  // Two passes. Pass 1: the statistics of every row; nothing is written.
  for (int64_t t0 = 0; t0 < T; t0 += c) {
    const int64_t n = std::min(c, T - t0);
    logits(t0, n);
    chunk_row_stats(ws, threads, z, ldz, V, batch.target_ids, inv_temperature, t0, n);
  }
  const int64_t bad = first_non_finite_row(ws, T);
  if (bad >= 0)
    return make_error(StatusCode::non_finite, "logits row %lld is not finite; nothing was written",
                      static_cast<long long>(bad));
  CGRPO_RETURN_IF_ERROR(per_token_pass(config, batch, ws, &metrics));
  if (grads.any()) {
    const int64_t overflow = first_gradient_overflow_row<Real>(ws, T, inv_temperature);
    if (overflow >= 0) return gradient_overflow_error<Real>(ws, overflow, config.temperature);
    CGRPO_RETURN_IF_ERROR(check_head_gradients(ws, T, config.temperature, scan, grads));
  }

  // Every check has passed: the outputs are written.
  write_token_outputs(metrics, ws, T, out);
  if (!grads.any()) return Status::success();
  if (T == 0) {  // G^T h over no token
    if (!grads.accumulate) {
      for (int64_t j = 0; grads.grad_weight && j < V; ++j)
        std::fill_n(grads.grad_weight + j * grads.weight_stride(H), H, Real(0));
      if (grads.grad_bias) std::fill_n(grads.grad_bias, V, Real(0));
    }
    return Status::success();
  }
  // Pass 2: each chunk's logits again, sweep 2, the backward GEMMs.
  for (int64_t t0 = 0; t0 < T; t0 += c) {
    const int64_t n = std::min(c, T - t0);
    logits(t0, n);
    chunk_row_gradient(ws, threads, z, ldz, V, batch.target_ids, inv_temperature, t0, n);
    chunk_backward(ws, threads, head, grads, V, z, ldz, t0, n, t0 == 0);
  }
  return Status::success();
}

}  // namespace detail

}  // namespace cgrpo::cpu
