// cgrpo/cpu/fused_policy_loss.hpp: the whole loss of MATH.md on the CPU in one call:
// loss, metrics, per-token log p and H, and dJ/dlogits (separate buffer or in place).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "cgrpo/config.hpp"
#include "cgrpo/cpu/parallel_for.hpp"
#include "cgrpo/cpu/row_sweeps.hpp"
#include "cgrpo/cpu/thread_pool.hpp"
#include "cgrpo/cpu/workspace_guard.hpp"
#include "cgrpo/metrics.hpp"
#include "cgrpo/no_throw.hpp"
#include "cgrpo/policy_loss_batch.hpp"
#include "cgrpo/status.hpp"
#include "cgrpo/token_math.hpp"

namespace cgrpo::cpu {

// O(T) scratch and the worker threads of the CPU path. Keep one per trainer and pass it to
// every call: it grows to the largest batch seen and then never allocates again, and its
// threads are started once. One call at a time per workspace: a call that finds its workspace
// in use by another returns an error (and writes nothing); concurrent calls need one each.
struct Workspace {
  struct Row {
    double lse, entropy, logp;  // from sweep 1
    double dJ_dlogp, dJ_dentropy;  // a_t, b_t from the per-token pass
    bool finite;
  };
  std::vector<Row> rows;
  std::vector<double> seq_log_ratio;  // GSPO only
  ThreadPool pool;   // config.num_threads' threads, capped at hardware_threads()
  InUseFlag in_use;  // held by the call using the workspace
};

// A row's lse, H and log p of its target from its softmax statistics and u_y = z_y / tau (in
// double, where z_y t is exact for float logits: no rounding of u, ~1e5 at small tau).
// H >= 0 and log p <= 0 hold exactly; rounding of a near one-hot row may cross them by ~1e-8,
// which is clamped (NaN passes through: the caller flags such a row). Shared with the
// vocabulary-parallel loss.
inline void set_row_values(const RowStats<double>& s, double target_u, Workspace::Row& r) {
  r.lse = row_logsumexp(s);
  const double h = row_entropy(s), logp = target_u - r.lse;
  r.entropy = h < 0 ? 0.0 : h;
  r.logp = logp > 0 ? 0.0 : logp;
}

// Sweep 1 for rows [begin, end): lse, H and log p of the target, and whether the row is finite.
template <typename Real>
void compute_row_stats(const Real* logits, int64_t stride, int64_t vocab, const int32_t* targets,
                       Real inv_temperature, int64_t begin, int64_t end, Workspace::Row* rows) {
  for (int64_t t = begin; t < end; ++t) {
    const Real* z = logits + t * stride;
    const RowStats<double> s = row_softmax_stats(z, vocab, inv_temperature);
    Workspace::Row& r = rows[t];
    r.finite = row_stats_finite(s);
    set_row_values(s, static_cast<double>(z[targets[t]]) * static_cast<double>(inv_temperature), r);
  }
}

// Index of the first row whose logits hold NaN or +inf (or are all -inf), or -1.
inline int64_t first_non_finite_row(const Workspace& ws, int64_t num_tokens) {
  for (int64_t t = 0; t < num_tokens; ++t)
    if (!ws.rows[t].finite) return t;
  return -1;
}

// The per-token pass, once ws.rows[t] holds lse, H and log p of every row: GSPO's
// sequence ratios, then cgrpo::token_loss() for each token in token order (so the sums
// are deterministic), metric sums in double, and a_t, b_t into ws.rows. Writes no output;
// a -inf target logit is an error. Shared with the vocabulary-parallel loss.
template <typename Real>
Status per_token_pass(const LossConfig& config, const PolicyLossBatch<Real>& batch, Workspace& ws,
                      MetricSums<double>& sums) {
  const int64_t T = batch.num_tokens;
  const TokenLossParams<double> params = token_params<double>(config);
  const bool sequence_ratio = config.clip == ClipMode::sequence;
  if (sequence_ratio) {
    // GSPO: s_i = exp(mean over valid tokens of (logp - old)).
    const SequenceLayout& L = batch.layout;
    ws.seq_log_ratio.assign(static_cast<size_t>(L.num_sequences), 0.0);
    for (int64_t i = 0; i < L.num_sequences; ++i) {
      double sum = 0, n = 0;
      for (int64_t t = L.begin(i); t < L.end(i); ++t)
        if (batch.mask[t]) {
          sum += ws.rows[t].logp - static_cast<double>(batch.old_logp[t]);
          n += 1;
        }
      ws.seq_log_ratio[i] = n > 0 ? sum / n : 0.0;
    }
  }

  sums = metric_sums_zero<double>();
  int64_t seq = 0;
  for (int64_t t = 0; t < T; ++t) {
    Workspace::Row& r = ws.rows[t];
    if (!std::isfinite(r.logp))  // a -inf target logit: log p = -inf would turn the sums into NaN
      return make_error(StatusCode::non_finite,
                        "target_ids[%lld] = %d has a -inf logit (log p = -inf); nothing was written",
                        static_cast<long long>(t), batch.target_ids[t]);
    TokenInputs<double> in{};
    in.logp = r.logp;
    in.entropy = r.entropy;
    in.old_logp = static_cast<double>(batch.old_logp[t]);
    in.ref_logp = batch.ref_logp ? static_cast<double>(batch.ref_logp[t]) : 0.0;
    in.advantage = static_cast<double>(batch.advantages[t]);
    in.w_pg = static_cast<double>(batch.pg_weights[t]);
    in.w_entropy = batch.entropy_weights ? static_cast<double>(batch.entropy_weights[t]) : 0.0;
    in.w_kl = batch.kl_weights ? static_cast<double>(batch.kl_weights[t]) : 0.0;
    in.refinement = batch.kinds && batch.kinds[t] == kRefinement;
    if (sequence_ratio) {
      while (t >= batch.layout.end(seq)) ++seq;
      in.seq_log_ratio = ws.seq_log_ratio[seq];
    }
    const TokenResult<double> res = token_loss(in, params);
    metric_sums_add(sums, in, res, batch.mask[t] != 0);
    r.dJ_dlogp = res.dJ_dlogp;
    r.dJ_dentropy = res.dJ_dentropy;
  }
  return Status::success();
}

// Writes the metrics and the optional per-token log p and H from the workspace.
template <typename Real>
void write_token_outputs(const MetricSums<double>& sums, const Workspace& ws, int64_t num_tokens,
                         const PolicyLossOutputs<Real>& out) {
  *out.metrics = finalize_metrics(sums);
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (out.logp) out.logp[t] = static_cast<Real>(ws.rows[t].logp);
    if (out.entropy) out.entropy[t] = static_cast<Real>(ws.rows[t].entropy);
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
//   2. sweep 1 over every row: lse, H, log p (rows split across config.num_threads, at most
//      hardware_threads(), on the workspace's pool); a row with NaN / +inf logits is an error,
//      reported before any output is written;
//   3. per-token pass in token order (deterministic): token_loss() gives each token's
//      loss, a_t = dJ/dlogp_t and b_t = dJ/dH_t; metric sums in double;
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
  const TokenLossParams<double> params = token_params<double>(config);
  const Real inv_temperature = static_cast<Real>(params.inv_temperature);

  parallel_for_rows(ws.pool, T, config.num_threads, [&](int64_t begin, int64_t end) {
    compute_row_stats(batch.logits, stride, V, batch.target_ids, inv_temperature, begin, end, ws.rows.data());
  });
  const int64_t bad = first_non_finite_row(ws, T);
  if (bad >= 0)
    return make_error(StatusCode::non_finite,
                      "logits row %lld holds NaN or +inf (or every entry is -inf); nothing was written (with float logits, also a row whose max / temperature overflows float)",
                      static_cast<long long>(bad));

  MetricSums<double> sums;
  CGRPO_RETURN_IF_ERROR(per_token_pass(config, batch, ws, sums));

  // Every check has passed: from here on the outputs are written.
  write_token_outputs(sums, ws, T, out);
  if (out.grad_logits) {
    const int64_t gstride = out.grad_row_stride == 0 ? stride : out.grad_row_stride;
    // A separate gradient larger than the caches is written with streaming stores: no
    // read-for-ownership of its lines (4 bytes moved per entry instead of 8).
    const bool stream = static_cast<const void*>(out.grad_logits) != static_cast<const void*>(batch.logits) &&
                        static_cast<double>(T) * static_cast<double>(V) * sizeof(Real) >= kStreamBytes;
    parallel_for_rows(ws.pool, T, config.num_threads, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const Workspace::Row& r = ws.rows[t];
        row_logit_gradient(batch.logits + t * stride, V, inv_temperature, batch.target_ids[t], r.lse, r.entropy,
                           r.dJ_dlogp, r.dJ_dentropy, out.grad_logits + t * gstride, stream);
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
