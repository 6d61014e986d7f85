// cgrpo/cpu/fused_policy_loss.hpp: the whole loss of MATH.md on the CPU in one call:
// loss, metrics, per-token log p and H, and dJ/dlogits (separate buffer or in place).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "cgrpo/loss/config.hpp"
#include "cgrpo/cpu/loss_passes.hpp"
#include "cgrpo/cpu/parallel_for.hpp"
#include "cgrpo/cpu/row_sweeps.hpp"
#include "cgrpo/cpu/thread_pool.hpp"
#include "cgrpo/cpu/workspace_guard.hpp"
#include "cgrpo/loss/metrics.hpp"
#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/loss/policy_loss_batch.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/math/token_math.hpp"

namespace cgrpo::cpu {

// A row's lse, H and log p of its target from its softmax statistics s and u_y, both measured
// from the same origin (the row's pivot / tau on the CPU path; 0 for the vocabulary-parallel
// loss's exchanged statistics). H >= 0 and log p <= 0 hold exactly; rounding of a near one-hot
// row may cross them by ~1e-8, which is clamped (NaN passes through: the caller flags such a
// row). Shared with the vocabulary-parallel loss.
inline void set_row_values(const RowStats<double>& s, double target_u, Workspace::Row& r) {
  r.lse = row_logsumexp(s);
  const double h = row_entropy(s), logp = target_u - r.lse;
  r.entropy = h < 0 ? 0.0 : h;
  r.logp = logp > 0 ? 0.0 : logp;
}

// Sweep 1 for rows [begin, end): lse, H and log p of the target, and whether the row is finite.
// inv_temperature is 1 / tau in double; log p of the target is (z_y - pivot) / tau - lse in
// double, so no term of the size of z / tau is rounded. (Only double logits can give a log p
// below -DBL_MAX, with the target and the max of opposite signs near DBL_MAX and tau < 2: it is
// -inf, and the fused loss reports it as it reports a -inf target logit.)
template <typename Real>
void compute_row_stats(const Real* logits, int64_t stride, int64_t vocab, const int32_t* targets,
                       double inv_temperature, int64_t begin, int64_t end, Workspace::Row* rows) {
  for (int64_t t = begin; t < end; ++t) {
    const Real* z = logits + t * stride;
    const RowSoftmaxStats<Real> s = row_softmax(z, vocab, inv_temperature);
    Workspace::Row& r = rows[t];
    r.finite = row_softmax_finite(s);
    r.pivot = static_cast<double>(s.pivot);
    set_row_values(s.rel, r.finite ? shifted_logit(z[targets[t]], s.pivot, inv_temperature) : NAN, r);
  }
}

// A log p, H or other per-token value in the caller's dtype: a finite value below the dtype's
// range (log p of a target about FLT_MAX * tau below its row's max) is written as the lowest
// finite value rather than -inf; -inf (a -inf target logit) stays -inf.
template <typename Real>
Real to_output(double x) {
  const double lowest = -static_cast<double>(std::numeric_limits<Real>::max());
  return static_cast<Real>(x < lowest && x != -INFINITY ? lowest : x);
}

// log p in the caller's dtype when the target logit is known: -inf only for a -inf target logit;
// a finite target whose log p is below even double's range (logits of opposite signs near
// DBL_MAX, tau < 2: the double sum gives -inf) is written as the lowest finite value, as in float.
template <typename Real>
Real logp_output(double logp, bool target_logit_finite) {
  if (logp == -INFINITY && target_logit_finite) return std::numeric_limits<Real>::lowest();
  return to_output<Real>(logp);
}

// Index of the first row whose gradient would not fit Real (row_gradient_in_range), or -1.
template <typename Real>
int64_t first_gradient_overflow_row(const Workspace& ws, int64_t num_tokens, double inv_temperature) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    const Workspace::Row& r = ws.rows[t];
    if (!row_gradient_in_range<Real>(inv_temperature, r.entropy, r.dJ_dlogp, r.dJ_dentropy)) return t;
  }
  return -1;
}

// The error for a row whose gradient would overflow Real.
template <typename Real>
Status gradient_overflow_error(const Workspace& ws, int64_t row, double temperature) {
  const Workspace::Row& r = ws.rows[row];
  return make_error(StatusCode::non_finite,
                    "dJ/dlogits row %lld would overflow %s (dJ/dlogp = %g, dJ/dH = %g, temperature %g); nothing was written",
                    static_cast<long long>(row), std::is_same<Real, float>::value ? "float" : "double", r.dJ_dlogp,
                    r.dJ_dentropy, temperature);
}

// Index of the first row whose logits hold NaN or +inf (or are all -inf), or -1.
inline int64_t first_non_finite_row(const Workspace& ws, int64_t num_tokens) {
  for (int64_t t = 0; t < num_tokens; ++t)
    if (!ws.rows[t].finite) return t;
  return -1;
}

// Writes the metrics and the optional per-token outputs (log p, H, policy factor, terms) from the workspace.
template <typename Real>
void write_token_outputs(const LossMetrics& metrics, const Workspace& ws, int64_t num_tokens,
                         const PolicyLossOutputs<Real>& out) {
  *out.metrics = metrics;
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (out.logp) out.logp[t] = to_output<Real>(ws.rows[t].logp);
    if (out.entropy) out.entropy[t] = static_cast<Real>(ws.rows[t].entropy);
    if (out.policy_factor) out.policy_factor[t] = static_cast<Real>(ws.pg_factor[t]);
    if (out.token_terms) out.token_terms[t] = ws.terms[t];
  }
}

namespace detail {
template <typename Real>
Status fused_policy_loss(const LossConfig& config, const PolicyLossBatch<Real>& batch,
                         const PolicyLossOutputs<Real>& out, Workspace& ws);
}  // namespace detail

// The fused forward and backward pass. Steps:
//   1. validate everything readable without touching the logits (nothing is written on error),
//      including that no output shares memory with an input or another output;
//   2. sweep 1 over every row: lse, H, log p (rows split across ws.num_threads, at most
//      hardware_threads(), on the workspace's pool); a row with NaN / +inf logits is an error,
//      reported before any output is written;
//   3. per_token_pass (loss_passes.hpp): the pre-passes, token_loss() per token in token order
//      (deterministic), the row post-pass; a_t = dJ/dlogp_t and b_t = dJ/dH_t; metric sums in
//      double; a non-finite J, a_t or b_t, or a gradient that would overflow Real, is an error;
//   4. sweep 2 over every row: dJ/dz from (lse, H, a_t, b_t), masked rows written as zeros.
// The logits are read twice and the gradient written once; see the README's benchmarks.
// Threads: calls with different workspaces may run at once (inputs may be shared, outputs not);
// a call on a workspace that another call holds returns invalid_argument and writes nothing.
// A workspace that cannot grow gives out_of_memory.
template <typename Real>
Status fused_policy_loss(const LossConfig& config, const PolicyLossBatch<Real>& batch,
                         const PolicyLossOutputs<Real>& out, Workspace& ws) {
  static_assert(std::is_same<Real, float>::value || std::is_same<Real, double>::value,
                "the CPU path takes float or double logits");
  CGRPO_RETURN_IF_ERROR(validate_batch_shape(config, batch, out));
  CGRPO_RETURN_IF_ERROR(check_workspace(ws));
  ExclusiveUse use(ws.in_use);
  if (!use.acquired()) return workspace_busy_error("fused_policy_loss");
  return no_throw("fused_policy_loss", [&] { return detail::fused_policy_loss(config, batch, out, ws); });
}

namespace detail {
// fused_policy_loss once the shapes are checked and the workspace is held.
template <typename Real>
Status fused_policy_loss(const LossConfig& config, const PolicyLossBatch<Real>& batch,
                         const PolicyLossOutputs<Real>& out, Workspace& ws) {
  ws.rows.resize(static_cast<size_t>(batch.num_tokens));  // first: a batch too large for memory fails before any read
  CGRPO_RETURN_IF_ERROR(validate_batch_values(config, batch));
  const int64_t T = batch.num_tokens, V = batch.vocab_size, stride = batch.stride();
  const double inv_temperature = inverse_temperature(config.temperature);

  parallel_for_rows(ws.pool, T, ws.num_threads, [&](int64_t begin, int64_t end) {
    compute_row_stats(batch.logits, stride, V, batch.target_ids, inv_temperature, begin, end, ws.rows.data());
  });
  const int64_t bad = first_non_finite_row(ws, T);
  if (bad >= 0)
    return make_error(StatusCode::non_finite,
                      "logits row %lld holds NaN or +inf (or every entry is -inf); nothing was written",
                      static_cast<long long>(bad));

  LossMetrics metrics;
  CGRPO_RETURN_IF_ERROR(per_token_pass(config, batch, ws, &metrics));
  if (out.grad_logits) {
    const int64_t overflow = first_gradient_overflow_row<Real>(ws, T, inv_temperature);
    if (overflow >= 0) return gradient_overflow_error<Real>(ws, overflow, config.temperature);
  }

  // Every check has passed: from here on the outputs are written.
  write_token_outputs(metrics, ws, T, out);
  if (out.grad_logits) {
    const int64_t gstride = out.grad_row_stride == 0 ? stride : out.grad_row_stride;
    // A separate gradient larger than the caches is written with streaming stores: no
    // read-for-ownership of its lines (4 bytes moved per entry instead of 8).
    const bool stream = static_cast<const void*>(out.grad_logits) != static_cast<const void*>(batch.logits) &&
                        static_cast<double>(T) * static_cast<double>(V) * sizeof(Real) >= kStreamBytes;
    parallel_for_rows(ws.pool, T, ws.num_threads, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const Workspace::Row& r = ws.rows[t];
        row_logit_gradient(batch.logits + t * stride, V, inv_temperature, batch.target_ids[t],
                           static_cast<Real>(r.pivot), r.lse, r.entropy, r.dJ_dlogp, r.dJ_dentropy,
                           out.grad_logits + t * gstride, stream);
      }
      if (stream) stream_fence();
    });
  }
  return Status::success();
}
}  // namespace detail

// Convenience overload with a workspace of its own (allocates O(T) and starts its threads per
// call: keep a Workspace when calling in a loop).
template <typename Real>
Status fused_policy_loss(const LossConfig& config, const PolicyLossBatch<Real>& batch,
                         const PolicyLossOutputs<Real>& out) {
  Workspace ws;
  return fused_policy_loss(config, batch, out, ws);
}

}  // namespace cgrpo::cpu
