// cgrpo/cpu/loss_passes.hpp: everything between the two sweeps over the logits, on the CPU:
// the row and batch pre-passes, the per-token pass (token_loss), the row post-pass, the metrics.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cgrpo/base/layout.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/corrections/entropy_mask.hpp"
#include "cgrpo/corrections/rollout_correction.hpp"
#include "cgrpo/corrections/sampler_correction.hpp"
#include "cgrpo/cpu/thread_pool.hpp"
#include "cgrpo/cpu/workspace_guard.hpp"
#include "cgrpo/loss/aggregation.hpp"
#include "cgrpo/loss/config.hpp"
#include "cgrpo/loss/metrics.hpp"
#include "cgrpo/loss/pass_plan.hpp"
#include "cgrpo/loss/policy_loss_batch.hpp"
#include "cgrpo/loss/row_pass.hpp"
#include "cgrpo/loss/token_loss.hpp"
#include "cgrpo/math/token_hash.hpp"

namespace cgrpo::cpu {

// O(T) scratch and the worker threads of the CPU path. Keep one per trainer and pass it to
// every call: it grows to the largest batch seen and then never allocates again, and its
// threads are started once. One call at a time per workspace: a call that finds its workspace
// in use by another returns an error (and writes nothing); concurrent calls need one each.
// num_threads: the rows of each call are split across this many threads (>= 1; capped at
// hardware_threads()); the results are bit for bit the same for every count.
struct Workspace {
  explicit Workspace(int threads = 1) : num_threads(threads) {}
  int num_threads;

  struct Row {
    double pivot;                  // from sweep 1: the row's max logit (RowSoftmaxStats::pivot)
    double lse, entropy, logp;     // from sweep 1; lse relative to pivot / tau
    double dJ_dlogp, dJ_dentropy;  // a_t, b_t from the per-token pass
    bool finite;
  };
  std::vector<Row> rows;

  // Per token, filled by the pre-passes (sized only when the config needs them).
  std::vector<double> pg_factor;               // IS weight x sampler weight x masks (1: none)
  std::vector<double> w_pg, w_entropy, w_kl;   // weights the loss computes (batch.pg_weights null)
  std::vector<uint8_t> terms;                  // TermBits of each token
  std::vector<double> train_logp, rollout_logp, log_values, advantages;  // double copies for the pre-passes
  std::vector<double> is_weight;               // verl's IS weights
  std::vector<uint8_t> keep;                   // verl's rejection: 1 kept
  std::vector<double> row_coupling;            // dq_i/dlogp_t of the row post-pass
  // Per sequence.
  std::vector<RowContext<double>> seq;
  std::vector<double> seq_grad;                // G_i = dJ/dq_i
  std::vector<double> phi;                     // vespo
  // Batch pass scratch.
  std::vector<double> scratch;
  std::vector<int64_t> order;
  std::vector<uint8_t> initial_mask;           // valid initial tokens (off-policy corrections)
  std::vector<int64_t> cov_valid, cov_candidates;  // kl_cov / clip_cov: token indices
  std::vector<double> cov_key;                 // clip_cov: each candidate's hash key
  // The per-token pass run over token ranges (token_pass_range): its sums so far, in token order.
  MetricSums<double> range_sums{};
  std::vector<double> row_below, row_above, row_count;  // per sequence: TRL's per-row clip fractions
  // The fused linear loss (cpu/fused_linear_policy_loss.hpp): its [chunk, V] logits buffer (one
  // of the two, by the type of the logits), each token row's bound on |z| and its largest |h|.
  std::vector<float> chunk_float;
  std::vector<double> chunk_double;
  std::vector<double> logit_bound, hidden_max;

  ThreadPool pool;   // num_threads' threads, capped at hardware_threads()
  InUseFlag in_use;  // held by the call using the workspace
};

// ws.terms holds each token's TermBit bits (loss/pass_plan.hpp): the terms a valid token takes part
// in after the loss's own masks (rejection and the entropy mask change them).

// A workspace's thread count is checked by every entry point that takes one.
inline Status check_workspace(const Workspace& ws) {
  if (ws.num_threads < 1)
    return make_error(StatusCode::invalid_argument, "workspace.num_threads must be >= 1, got %d", ws.num_threads);
  return Status::success();
}

// The rows of a batch, or one row holding every token when the batch has no layout.
struct RowBounds {
  const SequenceLayout* layout;
  int64_t num_tokens;
  int64_t count() const { return layout ? layout->num_sequences : (num_tokens > 0 ? 1 : 0); }
  int64_t begin(int64_t i) const { return layout ? layout->begin(i) : 0; }
  int64_t end(int64_t i) const { return layout ? layout->end(i) : num_tokens; }
};

namespace detail {

// TRL's clip_ratio/* at sequence level: one value per row (its ratio is one number), averaged over
// all B rows; an empty row has r = 1 and counts as unclipped, and enters low_min (TRL's row tensor
// has no NaN there).
inline void trl_sequence_clip_metrics(int64_t B, const std::vector<double>& count, const std::vector<double>& below,
                                      const std::vector<double>& above, LossMetrics& m) {
  double low = 0, high = 0, region = 0;
  bool empty = false;
  for (int64_t i = 0; i < B; ++i) {
    if (count[i] == 0) {
      empty = true;
      continue;
    }
    low += below[i] / count[i];
    high += above[i] / count[i];
    region += (below[i] + above[i]) / count[i];
  }
  m.clip_ratio_low_mean = low / static_cast<double>(B);
  m.clip_ratio_high_mean = high / static_cast<double>(B);
  m.clip_ratio_region_mean = region / static_cast<double>(B);
  if (empty) m.clip_ratio_low_min = 0;
}

template <typename Real>
bool is_initial(const PolicyLossBatch<Real>& b, int64_t t) {
  return !b.kinds || b.kinds[t] == kInitial;
}

// Token t's index among the valid tokens sorted by (key descending, index ascending): the first
// k of that order are the "top-k" of torch.topk (ties broken by the lower index, deterministically).
inline void top_k_by_key(const std::vector<double>& key, const std::vector<int64_t>& candidates, int64_t k,
                         std::vector<int64_t>& order) {
  order = candidates;
  const int64_t kk = std::min<int64_t>(k, static_cast<int64_t>(order.size()));
  std::partial_sort(order.begin(), order.begin() + kk, order.end(), [&](int64_t a, int64_t b) {
    return key[a] > key[b] || (key[a] == key[b] && a < b);
  });
  order.resize(static_cast<size_t>(kk));
}

// clip_cov's reproducible choice among candidates (token_hash.hpp, shared with the CUDA select kernel).
using cgrpo::token_hash;

// The rows the per-token pass sees: the layout when the plan needs it (validated) or the caller
// gave a valid one (TRL's per-row clip metrics use it); one row of every token otherwise. An empty
// batch skipped the shape check's layout validation, so its layout is validated here.
template <typename Real>
RowBounds token_pass_rows(const PassPlan& plan, const PolicyLossBatch<Real>& batch) {
  const int64_t T = batch.num_tokens;
  const bool have_layout =
      batch.layout.num_sequences > 0 && ((T > 0 && plan.needs_layout) || batch.layout.validate(T).ok());
  return RowBounds{have_layout ? &batch.layout : nullptr, T};
}

// The first row that ends after token t (rows are contiguous and in token order).
inline int64_t first_row_ending_after(const RowBounds& rows, int64_t t) {
  int64_t lo = 0, hi = rows.count();
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (rows.end(mid) > t) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

}  // namespace detail

// log p of every token in [begin, end) is finite (a -inf target logit would turn the sums into NaN).
template <typename Real>
Status check_target_logp(const PolicyLossBatch<Real>& batch, const Workspace& ws, int64_t begin, int64_t end) {
  for (int64_t t = begin; t < end; ++t)
    if (!std::isfinite(ws.rows[t].logp))
      return make_error(StatusCode::non_finite,
                        "target_ids[%lld] = %d has a -inf logit (log p = -inf); nothing was written",
                        static_cast<long long>(t), batch.target_ids[t]);
  return Status::success();
}

// a_t and b_t of every token in [begin, end) are finite.
inline Status check_token_gradients(const Workspace& ws, int64_t begin, int64_t end) {
  for (int64_t t = begin; t < end; ++t)
    if (!std::isfinite(ws.rows[t].dJ_dlogp) || !std::isfinite(ws.rows[t].dJ_dentropy))
      return make_error(StatusCode::non_finite,
                        "token %lld: dJ/dlogp is not finite (the policy, KL or entropy term overflowed: check the "
                        "advantages, weights, coefficients and log ratios); nothing was written",
                        static_cast<long long>(t));
  return Status::success();
}

// Everything between the sweeps, once ws.rows[t] holds lse, H and log p of every row, in the order
// of the pass plan (plan_passes: loss/pass_plan.hpp):
//   1. off-policy corrections: verl's rollout correction, TRL's sampler row pass (vLLM weight, OPSM,
//      vespo's phi);
//   2. the row pass: sequence log ratios (GSPO / TRL sequence level), a row term's q_i (GMPO);
//   3. the batch pass: TRL's entropy mask, a term's covariance selection (kl_cov / clip_cov);
//   4. the weights, when the caller passed none;
//   5. token_loss() per token in token order (deterministic sums), metric sums;
//   6. the row post-pass for row-coupled gradients (a_t += dq_i/dlogp_t G_i);
//   7. the check that J, every a_t and b_t are finite.
// Writes a_t, b_t into ws.rows and *metrics; writes no caller output. Shared by the fused loss,
// the vocabulary-parallel loss and the fused linear loss. It is three parts, which a caller that
// scores tokens as their rows come (the fused linear loss) calls itself:
//   prepare_token_pass:  steps 1-4, and the sums set to zero;
//   token_pass_range:    step 5 over tokens [begin, end) (consecutive ranges, in token order, add
//                        to the sums exactly as one pass over [0, T) does), and step 7's check of them;
//   finish_token_pass:   step 6, step 7 over every token, the metrics.
// Without plan.all_logp_first, prepare_token_pass reads no log p or H (ws.rows may hold anything)
// and token_pass_range needs ws.rows[t] for its own tokens only.
template <typename Real>
Status per_token_pass(const LossConfig& config, const PolicyLossBatch<Real>& batch, Workspace& ws,
                      LossMetrics* metrics);

namespace detail {

// What every step reads: the config, its plan for this batch, the rows, the ratio's reference.
template <typename Real>
struct PassContext {
  const LossConfig& config;
  const PolicyLossBatch<Real>& batch;
  PassPlan plan;
  RowBounds rows;
  const Real* reference;
  int64_t T, B;
};

template <typename Real>
PassContext<Real> pass_context(const LossConfig& config, const PolicyLossBatch<Real>& batch) {
  const PassPlan plan = plan_passes(config, batch);
  const RowBounds rows = token_pass_rows(plan, batch);
  return PassContext<Real>{config, batch, plan, rows, ratio_reference(config, batch), batch.num_tokens, rows.count()};
}

// Every valid token in every term with factor 1; padding in none, with factor 0 (outputs.policy_factor).
template <typename Real>
void reset_token_terms(const PassContext<Real>& x, Workspace& ws) {
  ws.terms.assign(static_cast<size_t>(x.T), 0);
  ws.pg_factor.assign(static_cast<size_t>(x.T), 1.0);
  for (int64_t t = 0; t < x.T; ++t)
    if (x.batch.mask[t]) ws.terms[t] = kAllTerms;
    else ws.pg_factor[t] = 0.0;
}

// The corrections cover the valid initial tokens (refinement tokens are not ratio-trained: weight 1,
// never rejected): their mask, and the current log p of every token.
template <typename Real>
void copy_covered_tokens(const PassContext<Real>& x, Workspace& ws) {
  ws.initial_mask.clear();
  if (!x.plan.covered_copies) return;
  ws.initial_mask.assign(static_cast<size_t>(x.T), 0);
  for (int64_t t = 0; t < x.T; ++t) ws.initial_mask[t] = x.batch.mask[t] && is_initial(x.batch, t);
  ws.log_values.assign(static_cast<size_t>(x.T), 0.0);
  for (int64_t t = 0; t < x.T; ++t) ws.log_values[t] = ws.rows[t].logp;
}

// src at the covered tokens in double, 0 elsewhere.
template <typename Real>
void copy_initial(const PassContext<Real>& x, const Real* src, std::vector<double>& dst) {
  dst.assign(static_cast<size_t>(x.T), 0.0);
  for (int64_t t = 0; t < x.T; ++t)
    if (x.batch.mask[t] && is_initial(x.batch, t)) dst[t] = static_cast<double>(src[t]);
}

// Step 1a. verl's rollout correction: each covered token's IS weight (the policy factor, or its
// row's geometric mean for a row term) and its rejection (it leaves plan.rollout_scope's terms).
template <typename Real>
Status apply_rollout_correction(const PassContext<Real>& x, Workspace& ws, LossMetrics* metrics) {
  const PassPlan& plan = x.plan;
  const std::vector<uint8_t>& covered = ws.initial_mask;
  copy_initial(x, x.batch.rollout_logp, ws.rollout_logp);
  if (plan.rollout_bypass) {
    ws.train_logp.assign(static_cast<size_t>(x.T), 0.0);
    for (int64_t t = 0; t < x.T; ++t) ws.train_logp[t] = covered[t] ? ws.rows[t].logp : 0.0;
  } else {
    copy_initial(x, x.batch.old_logp, ws.train_logp);
  }
  ws.is_weight.assign(static_cast<size_t>(x.T), 1.0);
  ws.keep.assign(static_cast<size_t>(x.T), 1);
  CGRPO_RETURN_IF_ERROR(rollout_correction(x.config.off_policy.rollout, x.B, x.rows, covered.data(),
                                           ws.train_logp.data(), ws.rollout_logp.data(), ws.is_weight.data(),
                                           ws.keep.data(), &metrics->rollout));
  for (int64_t t = 0; t < x.T; ++t) {
    if (!covered[t]) continue;
    if (!ws.keep[t]) ws.terms[t] &= static_cast<uint8_t>(~plan.rollout_scope);
    if (plan.rollout_weight && !plan.rollout_row_mean) ws.pg_factor[t] = ws.is_weight[t];
  }
  if (plan.rollout_row_mean) {
    // A row term takes the row's geometric mean of the weights: exp(sum_t m log(w + 1e-10) / (n_i + 1e-8)).
    for (int64_t i = 0; i < x.B; ++i) {
      RowPassSums sums = row_pass_sums_zero();
      for (int64_t t = x.rows.begin(i); t < x.rows.end(i); ++t)
        if (covered[t] && (ws.terms[t] & kTermPolicy)) row_pass_add_is_weight(sums, ws.is_weight[t]);
      const double g = row_is_weight_mean(sums);
      for (int64_t t = x.rows.begin(i); t < x.rows.end(i); ++t)
        if (covered[t]) ws.pg_factor[t] = g;
    }
  }
  return Status::success();
}

// Step 1b. TRL's sampler row pass: the vLLM weight and OPSM on the policy factor, vespo's phi.
template <typename Real>
Status apply_sampler_correction(const PassContext<Real>& x, Workspace& ws, LossMetrics* metrics) {
  copy_initial(x, x.reference, ws.train_logp);
  if (x.batch.rollout_logp) copy_initial(x, x.batch.rollout_logp, ws.rollout_logp);
  else ws.rollout_logp.assign(static_cast<size_t>(x.T), 0.0);
  copy_initial(x, x.batch.advantages, ws.advantages);
  ws.phi.assign(static_cast<size_t>(x.B), 0.0);
  return sampler_correction(sampler_row_params(x.config), x.B, x.rows, ws.initial_mask.data(), ws.log_values.data(),
                            ws.train_logp.data(), x.batch.rollout_logp ? ws.rollout_logp.data() : nullptr,
                            ws.advantages.data(), ws.pg_factor.data(), ws.phi.data(), &metrics->sampler);
}

// Step 2. The row pass (loss/row_pass.hpp) over each row's valid initial policy tokens.
template <typename Real>
void form_row_context(const PassContext<Real>& x, Workspace& ws) {
  ws.seq.assign(static_cast<size_t>(x.B), RowContext<double>{0, 0, 0, 0});
  if (!x.plan.row_context) return;
  const RowPassParams params = row_pass_params(x.config);
  const bool row_weight = x.config.term().row_weight;
  for (int64_t i = 0; i < x.B; ++i) {
    RowPassSums sums = row_pass_sums_zero();
    for (int64_t t = x.rows.begin(i); t < x.rows.end(i); ++t) {
      if (!x.batch.mask[t] || !is_initial(x.batch, t) || !(ws.terms[t] & kTermPolicy)) continue;
      row_pass_add_token(sums, ws.rows[t].logp - static_cast<double>(x.reference[t]),
                         static_cast<double>(x.batch.advantages[t]), params);
    }
    ws.seq[i] = row_pass_context(sums, params, row_weight ? ws.phi[i] : 0.0);
  }
}

// Step 3a. TRL's entropy mask: the policy term keeps the tokens whose H is at or above the
// (1 - rho) quantile of the valid tokens' H; the entropy term then averages over the kept tokens.
template <typename Real>
void apply_entropy_mask(const PassContext<Real>& x, Workspace& ws) {
  ws.scratch.clear();
  for (int64_t t = 0; t < x.T; ++t)
    if (x.batch.mask[t]) ws.scratch.push_back(ws.rows[t].entropy);
  if (ws.scratch.empty()) return;
  const EntropyMaskConfig& m = x.config.entropy_mask;
  const double q = quantile_linear(ws.scratch, 1.0 - m.top_quantile);  // as top_entropy_mask()
  for (int64_t t = 0; t < x.T; ++t) {
    if (!x.batch.mask[t] || ws.rows[t].entropy >= q) continue;
    ws.pg_factor[t] = 0.0;
    ws.terms[t] &= static_cast<uint8_t>(~kTermEntropy);
    if (!m.count_all_tokens) ws.terms[t] &= static_cast<uint8_t>(~kTermEntropyCount);
  }
}

// Step 3b. A term's batch selection: the caller's batch.selection, or from the covariances
// cov_t = (A_t - mean A)(logp_t - mean logp) over the policy term's valid initial tokens
// (top_covariance: the k largest; covariance_window: k of the candidates by a counter-based hash
// of (seed, token), where verl draws them with torch.randperm).
template <typename Real>
void select_tokens(const PassContext<Real>& x, Workspace& ws) {
  if (x.plan.selection_bits) {
    for (int64_t t = 0; t < x.T; ++t)
      if (x.batch.mask[t] && x.batch.selection[t]) ws.terms[t] |= kTermSelected;
    return;
  }
  const SelectionParams sel = selection_params(x.config);
  std::vector<int64_t>& valid = ws.cov_valid;
  valid.clear();
  CovarianceSums sums{0.0, 0.0, 0.0};
  for (int64_t t = 0; t < x.T; ++t)
    if (x.batch.mask[t] && is_initial(x.batch, t) && (ws.terms[t] & kTermPolicy)) {
      valid.push_back(t);
      covariance_add(sums, static_cast<double>(x.batch.advantages[t]), ws.rows[t].logp);
    }
  const CovarianceMeans means = covariance_means(sums, sel.selection);
  ws.scratch.assign(static_cast<size_t>(x.T), 0.0);
  for (int64_t t : valid) ws.scratch[t] = token_covariance(static_cast<double>(x.batch.advantages[t]), ws.rows[t].logp, means);
  const int64_t k = covariance_select_count(sums.n, sel.ratio);
  if (valid.empty()) return;
  if (sel.selection == static_cast<int>(BatchSelection::top_covariance)) {
    top_k_by_key(ws.scratch, valid, k, ws.order);
  } else {
    std::vector<int64_t>& candidates = ws.cov_candidates;
    candidates.clear();
    for (int64_t t : valid)
      if (covariance_candidate(ws.rows[t].logp - static_cast<double>(x.reference[t]),
                               static_cast<double>(x.batch.advantages[t]), ws.scratch[t], sel))
        candidates.push_back(t);
    std::vector<double>& key = ws.cov_key;
    key.assign(static_cast<size_t>(x.T), 0.0);
    for (int64_t t : candidates) key[t] = -static_cast<double>(token_hash(sel.seed, static_cast<uint64_t>(t)) >> 11);
    top_k_by_key(key, candidates, k, ws.order);
  }
  for (int64_t t : ws.order) ws.terms[t] |= kTermSelected;
}

// Step 4. The weights the loss computes: each term over its own mask (verl's rejection and TRL's
// entropy mask change them), by its rule (plan.weights) and the caller's global counts.
template <typename Real>
Status form_weights(const PassContext<Real>& x, Workspace& ws) {
  ws.w_pg.assign(static_cast<size_t>(x.T), 0.0);
  ws.w_entropy.assign(static_cast<size_t>(x.T), 0.0);
  ws.w_kl.assign(static_cast<size_t>(x.T), 0.0);
  const double layout_length =
      x.rows.layout ? static_cast<double>(x.batch.layout.max_length()) : static_cast<double>(x.T);
  auto term_weights = [&](const WeightRule& rule, uint8_t num_bit, uint8_t count_bit, std::vector<double>& w) -> Status {
    auto row_count = [&](int64_t i) {
      double n = 0;
      for (int64_t t = x.rows.begin(i); t < x.rows.end(i); ++t) n += (ws.terms[t] & count_bit) ? 1.0 : 0.0;
      return n;
    };
    AggregationCounts counts;
    CGRPO_RETURN_IF_ERROR(aggregation_counts(rule, x.B, row_count, layout_length, x.batch.scale, &counts));
    if (rule.convention.token_count_from_response_mask && !(x.batch.scale.token_count > 0)) {
      counts.tokens = 0;
      for (int64_t t = 0; t < x.T; ++t) counts.tokens += (ws.terms[t] & kTermResponseMask) ? 1.0 : 0.0;
    }
    for (int64_t i = 0; i < x.B; ++i) {
      const double wi = aggregation_weight(static_cast<int>(rule.mode), rule.convention, counts, row_count(i));
      for (int64_t t = x.rows.begin(i); t < x.rows.end(i); ++t) w[t] = (ws.terms[t] & num_bit) ? wi : 0.0;
    }
    return Status::success();
  };
  CGRPO_RETURN_IF_ERROR(term_weights(x.plan.weights[0], kTermPolicy, kTermPolicy, ws.w_pg));
  // The entropy term's weights even when its coefficient is 0: metrics.entropy_loss reports agg_H(H) (verl).
  CGRPO_RETURN_IF_ERROR(term_weights(x.plan.weights[1], kTermEntropy, kTermEntropyCount, ws.w_entropy));
  if (x.config.kl_on()) CGRPO_RETURN_IF_ERROR(term_weights(x.plan.weights[2], kTermKl, kTermKl, ws.w_kl));
  return Status::success();
}

// The sums of step 5, zero.
inline void reset_pass_sums(int64_t T, int64_t B, Workspace& ws) {
  ws.range_sums = metric_sums_zero<double>();
  ws.seq_grad.assign(static_cast<size_t>(B), 0.0);
  ws.row_coupling.assign(static_cast<size_t>(T), 0.0);
  ws.row_below.assign(static_cast<size_t>(B), 0.0);
  ws.row_above.assign(static_cast<size_t>(B), 0.0);
  ws.row_count.assign(static_cast<size_t>(B), 0.0);
}

}  // namespace detail

// Steps 1-4 of per_token_pass, as the plan says; then the sums of token_pass_range set to zero.
template <typename Real>
Status prepare_token_pass(const LossConfig& config, const PolicyLossBatch<Real>& batch, Workspace& ws,
                          LossMetrics* metrics) {
  const detail::PassContext<Real> x = detail::pass_context(config, batch);
  const PassPlan& plan = x.plan;
  metrics->rollout = RolloutMetrics{};
  metrics->sampler = SamplerMetrics{};
  detail::reset_token_terms(x, ws);
  detail::copy_covered_tokens(x, ws);
  if (plan.rollout) CGRPO_RETURN_IF_ERROR(detail::apply_rollout_correction(x, ws, metrics));
  if (plan.sampler) CGRPO_RETURN_IF_ERROR(detail::apply_sampler_correction(x, ws, metrics));
  detail::form_row_context(x, ws);
  if (plan.entropy_select) detail::apply_entropy_mask(x, ws);
  if (plan.selection_bits || plan.cov_select) detail::select_tokens(x, ws);
  if (plan.computed_weights) CGRPO_RETURN_IF_ERROR(detail::form_weights(x, ws));
  detail::reset_pass_sums(x.T, x.B, ws);
  return Status::success();
}

// Step 5 of per_token_pass for tokens [begin, end), after prepare_token_pass and the ranges before
// it; ws.rows[t] holds lse, H and log p of these tokens. Checks that their log p, a_t and b_t are
// finite (the messages of per_token_pass).
template <typename Real>
Status token_pass_range(const LossConfig& config, const PolicyLossBatch<Real>& batch, Workspace& ws, int64_t begin,
                        int64_t end) {
  const TokenLossParams<double> params = token_params<double>(config);
  const detail::PassContext<Real> x = detail::pass_context(config, batch);
  const bool kl_on = config.kl_on();
  CGRPO_RETURN_IF_ERROR(check_target_logp(batch, ws, begin, end));

  // 5. The per-token pass, in token order.
  MetricSums<double>& sums = ws.range_sums;
  const bool row_metrics = x.B > 0;
  for (int64_t i = detail::first_row_ending_after(x.rows, begin); i < x.B && x.rows.begin(i) < end; ++i) {
    for (int64_t t = std::max(begin, x.rows.begin(i)); t < std::min(end, x.rows.end(i)); ++t) {
      Workspace::Row& r = ws.rows[t];
      TokenInputs<double> in{};
      in.valid = batch.mask[t] != 0;
      if (in.valid) {
        const uint8_t bits = ws.terms[t];
        in.in_pg = (bits & kTermPolicy) != 0;
        in.refinement = batch.kinds && batch.kinds[t] == kRefinement;
        in.selected = (bits & kTermSelected) != 0;
        in.logp = r.logp;
        in.entropy = r.entropy;
        in.old_logp = in.refinement ? 0.0 : static_cast<double>(x.reference[t]);
        in.ref_logp = kl_on ? static_cast<double>(batch.ref_logp[t]) : 0.0;
        in.advantage = static_cast<double>(batch.advantages[t]);
        if (x.plan.computed_weights) {
          in.w_pg = ws.w_pg[t];
          in.w_entropy = ws.w_entropy[t];
          in.w_kl = kl_on ? ws.w_kl[t] : 0.0;
        } else {
          in.w_pg = static_cast<double>(batch.pg_weights[t]);
          in.w_entropy = batch.entropy_weights ? static_cast<double>(batch.entropy_weights[t]) : 0.0;
          in.w_kl = kl_on ? static_cast<double>(batch.kl_weights[t]) : 0.0;
        }
        in.pg_factor = ws.pg_factor[t];
        in.row = ws.seq[i];
      }
      const TokenResult<double> res = token_loss(in, params);
      metric_sums_add(sums, in, res, params);
      r.dJ_dlogp = res.dJ_dlogp;
      r.dJ_dentropy = res.dJ_dentropy;
      ws.seq_grad[i] += res.row_grad;
      ws.row_coupling[t] = res.row_coupling;
      if (row_metrics && in.valid && !in.refinement && in.in_pg) {
        ws.row_count[i] += 1;
        ws.row_below[i] += (res.policy.flags & kRatioBelow) ? 1.0 : 0.0;
        ws.row_above[i] += (res.policy.flags & kRatioAbove) ? 1.0 : 0.0;
      }
    }
  }
  return check_token_gradients(ws, begin, end);
}

// Steps 6 and 7 of per_token_pass and the metrics, once token_pass_range has covered [0, T).
template <typename Real>
Status finish_token_pass(const LossConfig& config, const PolicyLossBatch<Real>& batch, Workspace& ws,
                         LossMetrics* metrics) {
  const int64_t T = batch.num_tokens;
  const RowBounds rows = detail::token_pass_rows(plan_passes(config, batch), batch);
  const int64_t B = rows.count();
  const MetricSums<double>& sums = ws.range_sums;
  const std::vector<double>& row_below = ws.row_below;
  const std::vector<double>& row_above = ws.row_above;
  const std::vector<double>& row_count = ws.row_count;
  const bool row_metrics = B > 0;

  // 6. Row post-pass: the gradient of the row-coupled losses reaches each token of the row.
  for (int64_t i = 0; i < B; ++i) {
    if (ws.seq_grad[i] == 0) continue;
    for (int64_t t = rows.begin(i); t < rows.end(i); ++t) ws.rows[t].dJ_dlogp += ws.row_coupling[t] * ws.seq_grad[i];
  }

  // 7. A non-finite result is never returned with OK.
  CGRPO_RETURN_IF_ERROR(check_token_gradients(ws, 0, T));
  if (!std::isfinite(sums.loss))
    return make_error(StatusCode::non_finite,
                      "the loss is not finite (a term overflowed: check the advantages, weights, coefficients and "
                      "log ratios); nothing was written");

  const RolloutMetrics rollout_metrics = metrics->rollout;
  const SamplerMetrics sampler_metrics = metrics->sampler;
  *metrics = finalize_metrics(sums, config.metrics.mean_eps);
  metrics->rollout = rollout_metrics;
  metrics->sampler = sampler_metrics;
  if (row_metrics) {
    bool any = false;
    double low_min = 0, high_max = 0;
    for (int64_t i = 0; i < B; ++i) {
      if (row_count[i] == 0) continue;
      const double lo = row_below[i] / row_count[i], hi = row_above[i] / row_count[i];
      low_min = any ? std::min(low_min, lo) : lo;
      high_max = any ? std::max(high_max, hi) : hi;
      any = true;
    }
    metrics->clip_ratio_low_min = low_min;
    metrics->clip_ratio_high_max = high_max;
    // TRL's sequence level: one clip value per row.
    if (config.ratio.level == RatioLevel::sequence)
      detail::trl_sequence_clip_metrics(B, row_count, row_below, row_above, *metrics);
  }
  if (config.term().row_weight && B > 0) {
    double s = 0;
    for (int64_t i = 0; i < B; ++i) s += ws.phi[i];
    metrics->vespo_phi_mean = s / static_cast<double>(B);
  }
  // OK means every output is finite, the metrics included.
  if (const char* name = first_non_finite_metric(*metrics))
    return make_error(StatusCode::non_finite,
                      "metrics.%s is not finite (a ratio, a KL or a correction weight overflowed: clamp the log "
                      "ratio or check the log-probs); nothing was written",
                      name);
  return Status::success();
}

template <typename Real>
Status per_token_pass(const LossConfig& config, const PolicyLossBatch<Real>& batch, Workspace& ws,
                      LossMetrics* metrics) {
  CGRPO_RETURN_IF_ERROR(check_target_logp(batch, ws, 0, batch.num_tokens));
  CGRPO_RETURN_IF_ERROR(prepare_token_pass(config, batch, ws, metrics));
  CGRPO_RETURN_IF_ERROR(token_pass_range(config, batch, ws, 0, batch.num_tokens));
  return finish_token_pass(config, batch, ws, metrics);
}

}  // namespace cgrpo::cpu
