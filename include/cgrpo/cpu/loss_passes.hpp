// cgrpo/cpu/loss_passes.hpp: everything between the two sweeps over the logits, on the CPU:
// the row and batch pre-passes, the per-token pass (token_loss), the row post-pass, the metrics.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cgrpo/loss/config.hpp"
#include "cgrpo/cpu/thread_pool.hpp"
#include "cgrpo/cpu/workspace_guard.hpp"
#include "cgrpo/corrections/entropy_mask.hpp"
#include "cgrpo/base/layout.hpp"
#include "cgrpo/loss/loss_weights.hpp"
#include "cgrpo/loss/metrics.hpp"
#include "cgrpo/loss/policy_loss_batch.hpp"
#include "cgrpo/corrections/rollout_correction.hpp"
#include "cgrpo/corrections/sampler_correction.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/math/token_hash.hpp"
#include "cgrpo/loss/token_loss.hpp"

namespace cgrpo::cpu {

// O(T) scratch and the worker threads of the CPU path. Keep one per trainer and pass it to
// every call: it grows to the largest batch seen and then never allocates again, and its
// threads are started once. One call at a time per workspace: a call that finds its workspace
// in use by another returns an error (and writes nothing); concurrent calls need one each.
struct Workspace {
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

  ThreadPool pool;   // config.num_threads' threads, capped at hardware_threads()
  InUseFlag in_use;  // held by the call using the workspace
};

// Which terms a valid token takes part in (a mask per term: rejection and the entropy mask change them).
enum TermBits : uint8_t {
  kInPg = 1,       // policy term (verl's rejected tokens leave it)
  kInEntropy = 2,  // entropy term (numerator)
  kInKl = 4,       // KL term
  kSelected = 8,   // kl_cov / clip_cov selection
  kCountEntropy = 16,  // counts in the entropy term's denominator
};
static_assert(int(kInPg) == int(kTermPolicy) && int(kInEntropy) == int(kTermEntropy) && int(kInKl) == int(kTermKl) &&
                  int(kSelected) == int(kTermSelected) && int(kCountEntropy) == int(kTermEntropyCount),
              "outputs.token_terms copies the TermBits");

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

// The rows the per-token pass sees: the layout when the config needs it (validated) or the caller
// gave a valid one (TRL's per-row clip metrics use it); one row of every token otherwise. An empty
// batch skipped the shape check's layout validation, so its layout is validated here.
template <typename Real>
RowBounds token_pass_rows(const LossConfig& config, const PolicyLossBatch<Real>& batch) {
  const int64_t T = batch.num_tokens;
  const bool have_layout = batch.layout.num_sequences > 0 &&
                           ((T > 0 && needs_layout(config, batch.computed_weights())) || batch.layout.validate(T).ok());
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

// True when a pre-pass reads the log p or H of tokens other than the one it scores: sequence
// ratios (GSPO, TRL's sequence level), GMPO's row sums, verl's bypass correction (its training
// log p is the current one), TRL's sampler weight, OPSM and VESPO (they take the current log p),
// the entropy quantile, and kl_cov / clip_cov choosing their tokens by covariance. Such a config
// needs every row's statistics before any token's a_t is known; any other config can score tokens
// as their rows come (prepare_token_pass, then token_pass_range over consecutive ranges).
inline bool needs_all_logp_first(const LossConfig& c, bool caller_selection) {
  return c.sequence_ratio() || c.policy_loss == PolicyLoss::geo_mean || c.policy_loss == PolicyLoss::vespo ||
         c.rollout.mode == RolloutCorrectionMode::bypass || c.sampler.mode != SamplerCorrectionMode::none ||
         std::isfinite(c.off_policy_mask_threshold) || c.top_entropy_quantile < 1 ||
         ((c.policy_loss == PolicyLoss::kl_cov || c.policy_loss == PolicyLoss::clip_cov) && !caller_selection);
}

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

// Everything between the sweeps, once ws.rows[t] holds lse, H and log p of every row:
//   1. off-policy corrections (verl rollout correction or TRL sampler weight / OPSM / vespo);
//   2. row context: sequence log ratios (GSPO / TRL sequence level), GMPO's row sums;
//   3. batch pass: TRL's entropy mask, kl_cov / clip_cov selection;
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
// Without needs_all_logp_first(config), prepare_token_pass reads no log p or H (ws.rows may hold
// anything) and token_pass_range needs ws.rows[t] for its own tokens only.
template <typename Real>
Status per_token_pass(const LossConfig& config, const PolicyLossBatch<Real>& batch, Workspace& ws,
                      LossMetrics* metrics);

// Steps 1-4 of per_token_pass; then the sums of token_pass_range set to zero.
template <typename Real>
Status prepare_token_pass(const LossConfig& config, const PolicyLossBatch<Real>& batch, Workspace& ws,
                          LossMetrics* metrics) {
  const int64_t T = batch.num_tokens;
  const TokenLossParams<double> params = token_params<double>(config);
  const bool computed_weights = batch.computed_weights();
  const RowBounds rows = detail::token_pass_rows(config, batch);
  const bool have_layout = rows.layout != nullptr;
  const int64_t B = rows.count();
  const Real* reference = ratio_reference(config, batch);
  const bool kl_on = config.kl != KlEstimator::none;

  // Terms each valid token takes part in, and the policy factor: everything by default.
  ws.terms.assign(static_cast<size_t>(T), 0);
  ws.pg_factor.assign(static_cast<size_t>(T), 1.0);
  for (int64_t t = 0; t < T; ++t)
    if (batch.mask[t]) ws.terms[t] = kInPg | kInEntropy | kInKl | kCountEntropy;
    else ws.pg_factor[t] = 0.0;  // outputs.policy_factor is 0 at padding

  auto copy_initial = [&](const Real* src, std::vector<double>& dst) {
    dst.assign(static_cast<size_t>(T), 0.0);
    for (int64_t t = 0; t < T; ++t)
      if (batch.mask[t] && detail::is_initial(batch, t)) dst[t] = static_cast<double>(src[t]);
  };

  // 1. Off-policy corrections. They cover the valid initial tokens (refinement tokens are not
  // ratio-trained: weight 1, never rejected).
  metrics->rollout = RolloutMetrics{};
  metrics->sampler = SamplerMetrics{};
  std::vector<uint8_t>& initial_mask = ws.initial_mask;
  initial_mask.clear();
  if (config.needs_rollout_logp() || std::isfinite(config.off_policy_mask_threshold) ||
      config.policy_loss == PolicyLoss::vespo) {
    initial_mask.assign(static_cast<size_t>(T), 0);
    for (int64_t t = 0; t < T; ++t) initial_mask[t] = batch.mask[t] && detail::is_initial(batch, t);
    ws.log_values.assign(static_cast<size_t>(T), 0.0);
    for (int64_t t = 0; t < T; ++t) ws.log_values[t] = ws.rows[t].logp;
  }
  if (config.rollout.mode != RolloutCorrectionMode::none) {
    const bool bypass = config.rollout.mode == RolloutCorrectionMode::bypass;
    copy_initial(batch.rollout_logp, ws.rollout_logp);
    if (bypass) {
      ws.train_logp.assign(static_cast<size_t>(T), 0.0);
      for (int64_t t = 0; t < T; ++t) ws.train_logp[t] = initial_mask[t] ? ws.rows[t].logp : 0.0;
    } else {
      copy_initial(batch.old_logp, ws.train_logp);
    }
    ws.is_weight.assign(static_cast<size_t>(T), 1.0);
    ws.keep.assign(static_cast<size_t>(T), 1);
    CGRPO_RETURN_IF_ERROR(rollout_correction(config.rollout, B, rows, initial_mask.data(), ws.train_logp.data(),
                                             ws.rollout_logp.data(), ws.is_weight.data(), ws.keep.data(),
                                             &metrics->rollout));
    // The IS weight multiplies the policy loss (bypass ppo_clip: the ratio is the correction).
    const bool weighted = config.rollout.is_level != RolloutIsLevel::none &&
                          !(bypass && config.policy_loss == PolicyLoss::ppo_clip);
    const uint8_t scope = bypass ? uint8_t(kInPg) : uint8_t(kInPg | kInEntropy | kInKl | kCountEntropy);
    for (int64_t t = 0; t < T; ++t) {
      if (!initial_mask[t]) continue;
      if (!ws.keep[t]) ws.terms[t] &= static_cast<uint8_t>(~scope);
      if (weighted && config.policy_loss != PolicyLoss::geo_mean) ws.pg_factor[t] = ws.is_weight[t];
    }
    if (weighted && config.policy_loss == PolicyLoss::geo_mean) {
      // GMPO takes the row's geometric mean of the weights: exp(sum_t m log(w + 1e-10) / (n_i + 1e-8)).
      for (int64_t i = 0; i < B; ++i) {
        double sum = 0, n = 0;
        for (int64_t t = rows.begin(i); t < rows.end(i); ++t)
          if (initial_mask[t] && (ws.terms[t] & kInPg)) {
            sum += std::log(ws.is_weight[t] + 1e-10);
            n += 1;
          }
        const double g = std::exp(sum / (n + 1e-8));
        for (int64_t t = rows.begin(i); t < rows.end(i); ++t)
          if (initial_mask[t]) ws.pg_factor[t] = g;
      }
    }
  }
  if (config.sampler.mode != SamplerCorrectionMode::none || std::isfinite(config.off_policy_mask_threshold) ||
      config.policy_loss == PolicyLoss::vespo) {
    copy_initial(reference, ws.train_logp);
    if (batch.rollout_logp) copy_initial(batch.rollout_logp, ws.rollout_logp);
    else ws.rollout_logp.assign(static_cast<size_t>(T), 0.0);
    copy_initial(batch.advantages, ws.advantages);
    ws.phi.assign(static_cast<size_t>(B), 0.0);
    CGRPO_RETURN_IF_ERROR(sampler_correction(config, B, rows, initial_mask.data(), ws.log_values.data(),
                                             ws.train_logp.data(), batch.rollout_logp ? ws.rollout_logp.data() : nullptr,
                                             ws.advantages.data(), ws.pg_factor.data(), ws.phi.data(),
                                             &metrics->sampler));
  }

  // 2. Row context.
  const bool geo_mean = config.policy_loss == PolicyLoss::geo_mean;
  const bool seq_ratio = config.sequence_ratio();
  ws.seq.assign(static_cast<size_t>(B), RowContext<double>{0, 0, 0, 0});
  if (seq_ratio || geo_mean || config.policy_loss == PolicyLoss::vespo) {
    for (int64_t i = 0; i < B; ++i) {
      RowContext<double>& c = ws.seq[i];
      double n = 0, sum_x = 0, sum_y = 0, sum_a = 0;
      for (int64_t t = rows.begin(i); t < rows.end(i); ++t) {
        if (!batch.mask[t] || !detail::is_initial(batch, t) || !(ws.terms[t] & kInPg)) continue;
        const double x = ws.rows[t].logp - static_cast<double>(reference[t]);
        const double A = static_cast<double>(batch.advantages[t]);
        n += 1;
        sum_x += x;
        sum_a += A;
        if (geo_mean) sum_y += GeoMeanTerm::clipped_log_ratio(x, A, params);
      }
      if (geo_mean) {
        c.log_ratio = sum_y / (n + 1e-8);
        c.advantage = sum_a / (n + 1e-8);
        c.coupling = 1.0 / (n + 1e-8);
      } else if (seq_ratio) {
        c.log_ratio = sum_x / std::max(n, 1.0);
        c.coupling = config.ratio_level == RatioLevel::sequence ? 1.0 / std::max(n, 1.0) : 0.0;
      }
      if (config.policy_loss == PolicyLoss::vespo) c.weight = ws.phi[i];
    }
  }

  // 3. Batch pass.
  if (config.top_entropy_quantile < 1) {
    // TRL: the policy term keeps the tokens whose H is at or above the (1 - rho) quantile of the
    // valid tokens' H; the entropy term then averages over the kept tokens.
    ws.scratch.clear();
    for (int64_t t = 0; t < T; ++t)
      if (batch.mask[t]) ws.scratch.push_back(ws.rows[t].entropy);
    if (!ws.scratch.empty()) {
      const double q = quantile_linear(ws.scratch, 1.0 - config.top_entropy_quantile);  // as top_entropy_mask()
      for (int64_t t = 0; t < T; ++t) {
        if (!batch.mask[t] || ws.rows[t].entropy >= q) continue;
        ws.pg_factor[t] = 0.0;
        ws.terms[t] &= static_cast<uint8_t>(~kInEntropy);
        if (!config.entropy_count_all_tokens) ws.terms[t] &= static_cast<uint8_t>(~kCountEntropy);
      }
    }
  }
  if (config.policy_loss == PolicyLoss::kl_cov || config.policy_loss == PolicyLoss::clip_cov) {
    if (batch.selection) {
      for (int64_t t = 0; t < T; ++t)
        if (batch.mask[t] && batch.selection[t]) ws.terms[t] |= kSelected;
    } else {
      // cov_t = (A_t - mean A)(logp_t - mean logp) over the policy term's valid initial tokens.
      std::vector<int64_t>& valid = ws.cov_valid;
      valid.clear();
      double sum_a = 0, sum_l = 0;
      for (int64_t t = 0; t < T; ++t)
        if (batch.mask[t] && detail::is_initial(batch, t) && (ws.terms[t] & kInPg)) {
          valid.push_back(t);
          sum_a += static_cast<double>(batch.advantages[t]);
          sum_l += ws.rows[t].logp;
        }
      const double n = static_cast<double>(valid.size());
      const bool kl_cov = config.policy_loss == PolicyLoss::kl_cov;
      // kl_cov: plain means (torch .mean()); clip_cov: verl's masked_mean (count + 1e-8).
      const double mean_a = sum_a / (kl_cov ? n : n + 1e-8), mean_l = sum_l / (kl_cov ? n : n + 1e-8);
      ws.scratch.assign(static_cast<size_t>(T), 0.0);
      for (int64_t t : valid)
        ws.scratch[t] = (static_cast<double>(batch.advantages[t]) - mean_a) * (ws.rows[t].logp - mean_l);
      const int64_t k = std::max<int64_t>(1, static_cast<int64_t>(n * config.cov_ratio));
      if (!valid.empty()) {
        if (kl_cov) {
          detail::top_k_by_key(ws.scratch, valid, k, ws.order);
        } else {
          // Candidates: not clipped by the PPO clip, cov in (lower, upper); k of them chosen by a
          // counter-based hash of (seed, token) (verl draws them with torch.randperm).
          std::vector<int64_t>& candidates = ws.cov_candidates;
          candidates.clear();
          for (int64_t t : valid) {
            const double x = ws.rows[t].logp - static_cast<double>(reference[t]);
            const double r = clamped_ratio(x, params.log_ratio_min, params.log_ratio_max).r;
            const double A = static_cast<double>(batch.advantages[t]);
            const bool clipped = -A * math::clamp(r, params.clip_low, params.clip_high) > -A * r;
            const double cov = ws.scratch[t];
            if (!clipped && cov > config.clip_cov_lower && cov < config.clip_cov_upper) candidates.push_back(t);
          }
          std::vector<double>& key = ws.cov_key;
          key.assign(static_cast<size_t>(T), 0.0);
          for (int64_t t : candidates)
            key[t] = -static_cast<double>(detail::token_hash(config.clip_cov_seed, static_cast<uint64_t>(t)) >> 11);
          detail::top_k_by_key(key, candidates, k, ws.order);
        }
        for (int64_t t : ws.order) ws.terms[t] |= kSelected;
      }
    }
  }

  // 4. Weights computed by the loss: each term over its own mask (verl's rejection and TRL's
  // entropy mask change them), with the caller's global counts where given.
  if (computed_weights) {
    ws.w_pg.assign(static_cast<size_t>(T), 0.0);
    ws.w_entropy.assign(static_cast<size_t>(T), 0.0);
    ws.w_kl.assign(static_cast<size_t>(T), 0.0);
    const double layout_length = have_layout ? static_cast<double>(batch.layout.max_length()) : static_cast<double>(T);
    auto term_weights = [&](Aggregation mode, const AggregationConvention& conv, uint8_t num_bit, uint8_t count_bit,
                            std::vector<double>& w) -> Status {
      AggregationCounts counts;
      double nonempty = 0;
      for (int64_t i = 0; i < B; ++i) {
        double n = 0;
        for (int64_t t = rows.begin(i); t < rows.end(i); ++t) n += (ws.terms[t] & count_bit) ? 1.0 : 0.0;
        counts.tokens += n;
        nonempty += n > 0 ? 1.0 : 0.0;
      }
      counts.rows = conv.count_empty_rows ? static_cast<double>(B) : nonempty;
      counts.length = layout_length;
      if (batch.scale.token_count > 0) counts.tokens = batch.scale.token_count;
      if (batch.scale.sequence_count > 0) counts.rows = batch.scale.sequence_count;
      if (batch.scale.length > 0) counts.length = batch.scale.length;
      if (mode != Aggregation::token_mean && mode != Aggregation::seq_mean_token_sum_norm && counts.rows <= 0 &&
          counts.tokens > 0)
        return make_error(StatusCode::invalid_argument, "%s: the number of sequences is zero", to_string(mode));
      for (int64_t i = 0; i < B; ++i) {
        double n = 0;
        for (int64_t t = rows.begin(i); t < rows.end(i); ++t) n += (ws.terms[t] & count_bit) ? 1.0 : 0.0;
        const double wi = aggregation_weight(static_cast<int>(mode), conv, counts, n);
        for (int64_t t = rows.begin(i); t < rows.end(i); ++t) w[t] = (ws.terms[t] & num_bit) ? wi : 0.0;
      }
      return Status::success();
    };
    if (geo_mean) {
      // GMPO ignores the aggregation mode: J_pg = (1/B) sum_i l_i over every row (verl torch.mean).
      AggregationConvention c = config.aggregation;
      c.row_count_eps = 0;
      c.count_empty_rows = true;
      CGRPO_RETURN_IF_ERROR(term_weights(Aggregation::seq_mean_token_mean, c, kInPg, kInPg, ws.w_pg));
    } else {
      CGRPO_RETURN_IF_ERROR(term_weights(config.pg_aggregation, config.aggregation, kInPg, kInPg, ws.w_pg));
    }
    // The entropy term's weights even when entropy_coef = 0: metrics.entropy_loss reports agg_H(H) (verl).
    CGRPO_RETURN_IF_ERROR(
        term_weights(config.entropy_aggregation, config.aggregation, kInEntropy, kCountEntropy, ws.w_entropy));
    if (kl_on) CGRPO_RETURN_IF_ERROR(term_weights(config.kl_aggregation, config.aggregation, kInKl, kInKl, ws.w_kl));
  }

  // The sums of step 5.
  ws.range_sums = metric_sums_zero<double>();
  ws.seq_grad.assign(static_cast<size_t>(B), 0.0);
  ws.row_coupling.assign(static_cast<size_t>(T), 0.0);
  ws.row_below.assign(static_cast<size_t>(B), 0.0);
  ws.row_above.assign(static_cast<size_t>(B), 0.0);
  ws.row_count.assign(static_cast<size_t>(B), 0.0);
  return Status::success();
}

// Step 5 of per_token_pass for tokens [begin, end), after prepare_token_pass and the ranges before
// it; ws.rows[t] holds lse, H and log p of these tokens. Checks that their log p, a_t and b_t are
// finite (the messages of per_token_pass).
template <typename Real>
Status token_pass_range(const LossConfig& config, const PolicyLossBatch<Real>& batch, Workspace& ws, int64_t begin,
                        int64_t end) {
  const TokenLossParams<double> params = token_params<double>(config);
  const bool computed_weights = batch.computed_weights();
  const RowBounds rows = detail::token_pass_rows(config, batch);
  const int64_t B = rows.count();
  const Real* reference = ratio_reference(config, batch);
  const bool kl_on = config.kl != KlEstimator::none;
  CGRPO_RETURN_IF_ERROR(check_target_logp(batch, ws, begin, end));

  // 5. The per-token pass, in token order.
  MetricSums<double>& sums = ws.range_sums;
  std::vector<double>& row_below = ws.row_below;
  std::vector<double>& row_above = ws.row_above;
  std::vector<double>& row_count = ws.row_count;
  const bool row_metrics = B > 0;
  for (int64_t i = detail::first_row_ending_after(rows, begin); i < B && rows.begin(i) < end; ++i) {
    for (int64_t t = std::max(begin, rows.begin(i)); t < std::min(end, rows.end(i)); ++t) {
      Workspace::Row& r = ws.rows[t];
      TokenInputs<double> in{};
      in.valid = batch.mask[t] != 0;
      if (in.valid) {
        const uint8_t bits = ws.terms[t];
        in.in_pg = (bits & kInPg) != 0;
        in.refinement = batch.kinds && batch.kinds[t] == kRefinement;
        in.selected = (bits & kSelected) != 0;
        in.logp = r.logp;
        in.entropy = r.entropy;
        in.old_logp = in.refinement ? 0.0 : static_cast<double>(reference[t]);
        in.ref_logp = kl_on ? static_cast<double>(batch.ref_logp[t]) : 0.0;
        in.advantage = static_cast<double>(batch.advantages[t]);
        if (computed_weights) {
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
        row_count[i] += 1;
        row_below[i] += (res.policy.flags & kRatioBelow) ? 1.0 : 0.0;
        row_above[i] += (res.policy.flags & kRatioAbove) ? 1.0 : 0.0;
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
  const RowBounds rows = detail::token_pass_rows(config, batch);
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
  *metrics = finalize_metrics(sums, config.metric_mean_eps);
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
    if (config.ratio_level == RatioLevel::sequence) detail::trl_sequence_clip_metrics(B, row_count, row_below, row_above, *metrics);
  }
  if (config.policy_loss == PolicyLoss::vespo && B > 0) {
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
