// python/src/parallel_ops.cpp: the data- and vocabulary-parallel pieces of include/cgrpo/parallel/ as torch
// ops (torch.ops.cgrpo.*), for python/cgrpo/distributed.py, which makes the reductions through a
// torch.distributed process group. Each op is a thin wrapper: the partial statistics a rank contributes,
// or its result from the all-reduced ones. CPU tensors only (the collectives may run on any backend:
// distributed.py moves the small statistic tensors to the group's device and back).
#include "linear_head.hpp"
#include "op_common.hpp"

#include <cgrpo/cpu/fused_linear_policy_loss.hpp>
#include <cgrpo/parallel/global_scale.hpp>
#include <cgrpo/parallel/group_stats.hpp>
#include <cgrpo/parallel/metrics_reduce.hpp>
#include <cgrpo/parallel/vocab_parallel.hpp>
#include <cgrpo/parallel/vocab_parallel_linear.hpp>

#include <tuple>

namespace cgrpo_ops {
namespace {

static_assert(sizeof(cgrpo::RowStats<double>) == 3 * sizeof(double), "RowStats<double> is read as [T, 3] doubles");

// A dense CPU tensor of `dtype` with exactly `shape`, contiguous (else copied: these are O(B) or O(T)).
Tensor exact(const Tensor& t, const char* name, c10::ScalarType dtype, c10::IntArrayRef shape, const char* shape_text) {
  TORCH_CHECK(t.defined(), "cgrpo: ", name, " must be a defined tensor ", shape_text, ", got None");
  cgrpo_torch::detail::check_dense_cpu(t, name);
  TORCH_CHECK(t.scalar_type() == dtype, "cgrpo: ", name, " must have dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "cgrpo: ", name, " must have shape ", shape_text, " = ", shape, ", got shape ", t.sizes());
  return t.contiguous();
}

// rewards [B] float / double and group ids [B] int32 / int64 in [0, num_groups), as int32.
Tensor checked_group_ids(const Tensor& rewards, const Tensor& group_ids, int64_t num_groups) {
  TORCH_CHECK(rewards.defined(), "cgrpo: rewards must be a defined tensor [B], got None");
  cgrpo_torch::detail::check_dense_cpu(rewards, "rewards");
  TORCH_CHECK(rewards.scalar_type() == torch::kFloat || rewards.scalar_type() == torch::kDouble,
              "cgrpo: rewards must have dtype float32 or float64, got ", rewards.scalar_type());
  TORCH_CHECK(rewards.dim() == 1, "cgrpo: rewards must be 1-D [B] (this rank's responses), got shape ", rewards.sizes());
  const int64_t B = rewards.size(0);
  TORCH_CHECK(num_groups >= 0 && num_groups <= INT32_MAX, "cgrpo: num_groups must be in [0, 2^31) (the GLOBAL G), got ",
              num_groups);
  const Tensor ids64 = group_ids_int64(group_ids, B);
  const int64_t* p = ids64.data_ptr<int64_t>();
  for (int64_t i = 0; i < B; ++i)
    TORCH_CHECK(p[i] >= 0 && p[i] < num_groups, "cgrpo: out_of_range: group_ids[", i, "] = ", p[i], " is outside [0, ",
                num_groups, ") (num_groups: the global G)");
  return ids64.to(torch::kInt);
}

// ------------------------------------------------------------------------------------------------
// Data parallelism: group statistics, whitening, the aggregation partials, the metric sums.

// sums [G, 3] (count, sum(R - shift), sum((R - shift)^2): all-reduce SUM), extrema [G, 2]
// (max R, -min R: all-reduce MAX) of this rank's responses.
std::tuple<Tensor, Tensor> group_partial_stats(const Tensor& rewards, const Tensor& group_ids, int64_t num_groups,
                                               double shift) {
  const Tensor ids = checked_group_ids(rewards, group_ids, num_groups);
  const Tensor r = rewards.contiguous();
  const auto dbl = torch::TensorOptions().dtype(torch::kDouble);
  Tensor sums = torch::empty({num_groups, cgrpo::parallel::kGroupSumFields}, dbl);
  Tensor extrema = torch::empty({num_groups, cgrpo::parallel::kGroupExtremaFields}, dbl);
  const cgrpo::GroupAssignment local{r.size(0), ids.data_ptr<int32_t>(), num_groups};
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "cgrpo::group_partial_stats", [&] {
    check_status(cgrpo::parallel::group_partial_stats(local, r.data_ptr<scalar_t>(), shift, sums.data_ptr<double>(),
                                                      extrema.data_ptr<double>()));
  });
  return {sums, extrema};
}

// A_i of this rank's responses from the all-reduced sums and extrema (the config's advantage.estimator
// and advantage.eps; reinforce_pp_baseline and gdpo: not yet whitened).
Tensor group_advantages_from_stats(const Tensor& rewards, const Tensor& group_ids, const Tensor& sums,
                                   const Tensor& extrema, double shift, const std::string& config_text) {
  const cgrpo::Recipe recipe = recipe_of(config_text);
  TORCH_CHECK(sums.defined() && sums.dim() == 2, "cgrpo: sums must be a defined tensor [G, 3], got ",
              sums.defined() ? sums.sizes() : c10::IntArrayRef{});
  const int64_t G = sums.size(0);
  const Tensor ids = checked_group_ids(rewards, group_ids, G);
  const Tensor s = exact(sums, "sums", torch::kDouble, {G, cgrpo::parallel::kGroupSumFields}, "[G, 3]");
  const Tensor e = exact(extrema, "extrema", torch::kDouble, {G, cgrpo::parallel::kGroupExtremaFields}, "[G, 2]");
  const Tensor r = rewards.contiguous();
  Tensor adv = torch::empty({r.size(0)}, r.options());
  const cgrpo::GroupAssignment local{r.size(0), ids.data_ptr<int32_t>(), G};
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "cgrpo::group_advantages_from_stats", [&] {
    check_status(cgrpo::parallel::group_advantages_from_stats(recipe.advantage.estimator, local, r.data_ptr<scalar_t>(),
                                                              s.data_ptr<double>(), e.data_ptr<double>(), shift,
                                                              recipe.advantage.eps, adv.data_ptr<scalar_t>()));
  });
  return adv;
}

// (valid tokens, sum n_i A_i, sum n_i A_i^2) of this rank's responses: all-reduce SUM.
Tensor whitening_partial_stats(const Tensor& token_counts, const Tensor& advantages) {
  TORCH_CHECK(advantages.defined() && advantages.dim() == 1, "cgrpo: advantages must be a defined 1-D tensor [B]");
  cgrpo_torch::detail::check_dense_cpu(advantages, "advantages");
  TORCH_CHECK(advantages.is_floating_point() && (advantages.scalar_type() == torch::kFloat || advantages.scalar_type() == torch::kDouble),
              "cgrpo: advantages must have dtype float32 or float64, got ", advantages.scalar_type());
  const int64_t B = advantages.size(0);
  TORCH_CHECK(token_counts.defined(), "cgrpo: token_counts must be a defined tensor [B], got None");
  cgrpo_torch::detail::check_dense_cpu(token_counts, "token_counts");
  TORCH_CHECK(c10::isIntegralType(token_counts.scalar_type(), false), "cgrpo: token_counts must have an integer dtype, got ",
              token_counts.scalar_type());
  TORCH_CHECK(token_counts.dim() == 1 && token_counts.size(0) == B, "cgrpo: token_counts must have shape [B] = [", B,
              "], got shape ", token_counts.sizes());
  const Tensor n = token_counts.to(torch::kLong).contiguous();
  const Tensor a = advantages.contiguous();
  Tensor sums = torch::empty({cgrpo::parallel::kWhitenFields}, torch::TensorOptions().dtype(torch::kDouble));
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "cgrpo::whitening_partial_stats", [&] {
    check_status(cgrpo::parallel::whitening_partial_stats(B, n.data_ptr<int64_t>(), a.data_ptr<scalar_t>(),
                                                          sums.data_ptr<double>()));
  });
  return sums;
}

// This rank's advantages whitened with the all-reduced sums (advantage.whiten_eps / whiten_count_eps).
Tensor whiten_from_stats(const Tensor& advantages, const Tensor& sums, const std::string& config_text) {
  const cgrpo::Recipe recipe = recipe_of(config_text);
  TORCH_CHECK(advantages.defined() && advantages.dim() == 1, "cgrpo: advantages must be a defined 1-D tensor [B]");
  cgrpo_torch::detail::check_dense_cpu(advantages, "advantages");
  TORCH_CHECK(advantages.scalar_type() == torch::kFloat || advantages.scalar_type() == torch::kDouble,
              "cgrpo: advantages must have dtype float32 or float64, got ", advantages.scalar_type());
  const Tensor s = exact(sums, "sums", torch::kDouble, {cgrpo::parallel::kWhitenFields}, "[3]");
  Tensor out = advantages.contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "cgrpo::whiten_from_stats", [&] {
    check_status(cgrpo::parallel::whiten_from_stats(out.size(0), s.data_ptr<double>(), out.data_ptr<scalar_t>(),
                                                    recipe.advantage.whiten_eps, recipe.advantage.whiten_count_eps));
  });
  return out;
}

// (token_count, sequence_count, nonempty_sequence_count: SUM; max_length: MAX) of this rank's batch.
// mask [B, L] (padded rows) or [T] with offsets [B + 1] (packed); [T] without offsets counts the
// tokens only (sequence counts and length 0: configs that need them need a layout anyway).
Tensor aggregation_partials(const Tensor& mask, const OptTensor& offsets) {
  TORCH_CHECK(mask.defined(), "cgrpo: mask must be a defined tensor [T] or [B, L], got None");
  cgrpo_torch::detail::check_dense_cpu(mask, "mask");
  TORCH_CHECK(mask.dim() == 1 || mask.dim() == 2, "cgrpo: mask must be 1-D [T] or 2-D [B, L], got shape ", mask.sizes());
  Tokens tok;
  if (mask.dim() == 2) {
    tok.padded = true;
    tok.B = mask.size(0);
    tok.L = mask.size(1);
    tok.T = tok.B * tok.L;
  } else {
    tok.T = mask.size(0);
  }
  tok.shape = mask.sizes().vec();
  const Tensor m = per_token(mask, "mask", TokenValue::flag, tok, torch::kDouble, false);
  cgrpo::SequenceLayout layout;
  Tensor o;
  if (tok.padded) {
    TORCH_CHECK(!given(offsets), "cgrpo: offsets describe a packed [T] mask; a [B, L] mask is padded rows (offsets=None)");
    layout = cgrpo::SequenceLayout::padded(tok.B, tok.L);
  } else if (given(offsets)) {
    TORCH_CHECK(offsets->dtype() == torch::kLong || offsets->dtype() == torch::kInt,
                "cgrpo: offsets must have dtype int64 or int32, got ", offsets->scalar_type());
    cgrpo_torch::detail::check_dense_cpu(*offsets, "offsets");
    o = offsets->to(torch::kLong).contiguous();
    layout = cgrpo_torch::packed_layout(o);
    const cgrpo::Status s = layout.validate(tok.T);
    TORCH_CHECK(s.ok(), "cgrpo: offsets must cover the T = ", tok.T, " rows of mask: ", s.message);
  }
  Tensor out = torch::zeros({4}, torch::TensorOptions().dtype(torch::kDouble));
  double* p = out.data_ptr<double>();
  if (!tok.padded && !given(offsets)) {
    const uint8_t* mp = static_cast<const uint8_t*>(m.data_ptr());
    for (int64_t t = 0; t < tok.T; ++t) p[0] += mp[t] ? 1.0 : 0.0;
    return out;
  }
  cgrpo::parallel::AggregationPartials a;
  check_status(cgrpo::parallel::aggregation_partials(layout, static_cast<const uint8_t*>(m.data_ptr()), &a));
  p[0] = a.token_count;
  p[1] = a.sequence_count;
  p[2] = a.nonempty_sequence_count;
  p[3] = a.max_length;
  return out;
}

// The scalar fields and counts of LossMetrics from the flat metrics tensor (cgrpo::flatten_metrics order).
cgrpo::LossMetrics unflatten_loss_metrics(const double* p) {
  cgrpo::LossMetrics m;
  int i = 0;
#define CGRPO_UNFLAT_TOP(field, verl, trl) m.field = p[i++];
#define CGRPO_UNFLAT_COUNT(field) m.field = static_cast<int64_t>(p[i++] + 0.5);
  CGRPO_LOSS_METRIC_FIELDS(CGRPO_UNFLAT_TOP)
  CGRPO_LOSS_METRIC_COUNTS(CGRPO_UNFLAT_COUNT)
#undef CGRPO_UNFLAT_TOP
#undef CGRPO_UNFLAT_COUNT
  return m;
}

Tensor flat_metrics(const Tensor& metrics) {
  return exact(metrics, "metrics", torch::kDouble, {cgrpo::kNumMetricValues}, "[kNumMetricValues]");
}

// parallel::metrics_to_sums of a loss op's metrics tensor: [kMetricSumFields] doubles to all-reduce SUM.
Tensor metric_sums(const Tensor& metrics, double mean_eps) {
  const Tensor m = flat_metrics(metrics);
  Tensor sums = torch::empty({cgrpo::parallel::kMetricSumFields}, torch::TensorOptions().dtype(torch::kDouble));
  cgrpo::parallel::metrics_to_sums(unflatten_loss_metrics(m.data_ptr<double>()), sums.data_ptr<double>(), mean_eps);
  return sums;
}

// The metrics tensor of the whole batch from the all-reduced sums: the fields metrics_reduce.hpp
// carries (the losses, clip fractions, ppo_kl, ratio / entropy / KL / refinement-prob means, the
// counts) replaced in a copy of this rank's `metrics`; every other entry is this rank's own.
Tensor metrics_from_sums(const Tensor& sums, const Tensor& metrics, double mean_eps) {
  const Tensor s = exact(sums, "sums", torch::kDouble, {cgrpo::parallel::kMetricSumFields}, "[kMetricSumFields]");
  Tensor out = flat_metrics(metrics).clone();
  std::vector<double> global(cgrpo::kNumMetricValues);
  cgrpo::flatten_metrics(cgrpo::parallel::metrics_from_sums(s.data_ptr<double>(), mean_eps), global.data());
  double* p = out.data_ptr<double>();
  int i = 0;
  const auto reduced = [](const char* f) {
    static const char* const kReduced[] = {"loss",         "pg_loss",  "pg_loss_initial", "pg_loss_refinement",
                                           "entropy_loss", "kl_loss",  "pg_clipfrac",     "pg_clipfrac_lower",
                                           "ppo_kl",       "ratio_mean", "entropy_mean",  "kl_mean",
                                           "refinement_prob_mean"};
    for (const char* r : kReduced)
      if (std::string(f) == r) return true;
    return false;
  };
#define CGRPO_FROM_SUMS_TOP(field, verl, trl) \
  if (reduced(#field)) p[i] = global[i];      \
  ++i;
#define CGRPO_FROM_SUMS_COUNT(field) \
  p[i] = global[i];                  \
  ++i;
  CGRPO_LOSS_METRIC_FIELDS(CGRPO_FROM_SUMS_TOP)
  CGRPO_LOSS_METRIC_COUNTS(CGRPO_FROM_SUMS_COUNT)
#undef CGRPO_FROM_SUMS_TOP
#undef CGRPO_FROM_SUMS_COUNT
  return out;
}

// ------------------------------------------------------------------------------------------------
// Vocabulary parallelism: the two phases, on the logits' columns or on the LM head's rows.

cgrpo::parallel::VocabShard shard_of(int64_t vocab_start, int64_t shard_size, int64_t vocab_size) {
  TORCH_CHECK(vocab_size > 0 && vocab_size <= INT32_MAX, "cgrpo: vocab_size (the global V) must be in [1, 2^31), got ",
              vocab_size);
  TORCH_CHECK(vocab_start >= 0 && vocab_start < vocab_size, "cgrpo: vocab_start must be in [0, vocab_size = ", vocab_size,
              "), got ", vocab_start);
  TORCH_CHECK(shard_size > 0 && shard_size <= vocab_size - vocab_start, "cgrpo: the shard [vocab_start, vocab_start + ",
              shard_size, ") = [", vocab_start, ", ", vocab_start + shard_size, ") must lie in [0, vocab_size = ", vocab_size, ")");
  return cgrpo::parallel::VocabShard{vocab_start, shard_size, vocab_size};
}

// stats [T, 3] (max, sum_exp, sum_exp_u) and target_logit [T], double contiguous.
void check_row_stats(const Tensor& stats, const Tensor& target_logit, int64_t T) {
  cgrpo_torch::detail::check_dense_cpu(stats, "stats");
  TORCH_CHECK(stats.scalar_type() == torch::kDouble && stats.dim() == 2 && stats.size(0) == T && stats.size(1) == 3 &&
                  stats.is_contiguous(),
              "cgrpo: stats must be a contiguous float64 tensor [T, 3] = [", T, ", 3] (max, sum_exp, sum_exp_u), got ",
              stats.scalar_type(), " ", stats.sizes());
  cgrpo_torch::detail::check_dense_cpu(target_logit, "target_logit");
  TORCH_CHECK(target_logit.scalar_type() == torch::kDouble && target_logit.dim() == 1 && target_logit.size(0) == T &&
                  target_logit.is_contiguous(),
              "cgrpo: target_logit must be a contiguous float64 tensor [T] = [", T, "], got ", target_logit.scalar_type(), " ",
              target_logit.sizes());
}

// Phase 1 on the local columns of the logits [T, V_shard] or [B, L, V_shard]: (stats [T, 3], target_logit [T]).
std::tuple<Tensor, Tensor> vocab_shard_row_stats(const Tensor& logits, const Tensor& target_ids, const Tensor& mask,
                                                 const Tensor& advantages, const OptTensor& old_logp,
                                                 const OptTensor& ref_logp, const OptTensor& rollout_logp,
                                                 const OptTensor& kinds, const OptTensor& offsets,
                                                 const std::string& config_text, c10::ArrayRef<double> scale,
                                                 int64_t vocab_start, int64_t vocab_size, int64_t num_threads) {
  const cgrpo::Recipe recipe = recipe_of(config_text);
  Tokens tok;
  const Tensor rows = token_rows(logits, "logits", "V_shard", &tok);
  const cgrpo::parallel::VocabShard shard = shard_of(vocab_start, rows.size(1), vocab_size);
  const LossInputs in = loss_inputs(tok, logits.scalar_type(), vocab_size, target_ids, mask, advantages, old_logp,
                                    ref_logp, rollout_logp, kinds, offsets, scale);
  const auto dbl = torch::TensorOptions().dtype(torch::kDouble);
  Tensor stats = torch::empty({tok.T, 3}, dbl), target = torch::empty({tok.T}, dbl);
  cgrpo::cpu::Workspace& ws = workspace(num_threads);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "cgrpo::vocab_shard_row_stats", [&] {
    cgrpo::PolicyLossBatch<scalar_t> batch = batch_view<scalar_t>(recipe.loss, tok, shard.size, in);
    batch.logits = rows.data_ptr<scalar_t>();
    batch.row_stride = tok.T <= 1 ? 0 : rows.stride(0);
    check_status(cgrpo::parallel::vocab_shard_row_stats(
        recipe.loss, batch, shard, reinterpret_cast<cgrpo::RowStats<double>*>(stats.data_ptr<double>()),
        target.data_ptr<double>(), ws));
  });
  return {stats, target};
}

// row_stats_rebase of each row against the all-reduced maximum: [T, 3] whose sum_exp and sum_exp_u
// columns may then be all-reduced with SUM.
Tensor row_stats_rebase(const Tensor& stats, const Tensor& global_max) {
  TORCH_CHECK(stats.defined() && stats.dim() == 2, "cgrpo: stats must be a defined tensor [T, 3]");
  const int64_t T = stats.size(0);
  const Tensor s = exact(stats, "stats", torch::kDouble, {T, 3}, "[T, 3]");
  const Tensor m = exact(global_max, "global_max", torch::kDouble, {T}, "[T]");
  Tensor out = torch::empty({T, 3}, s.options());
  const auto* in = reinterpret_cast<const cgrpo::RowStats<double>*>(s.data_ptr<double>());
  auto* o = reinterpret_cast<cgrpo::RowStats<double>*>(out.data_ptr<double>());
  const double* mp = m.data_ptr<double>();
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(!(mp[t] < in[t].max), "cgrpo: global_max[", t, "] = ", mp[t], " is below this rank's max ", in[t].max,
                " (all-reduce the maxima with MAX first)");
    o[t] = cgrpo::row_stats_rebase(in[t], mp[t]);
  }
  return out;
}

// Phase 2 on the local columns from the all-reduced stats: the whole batch's loss, metrics and
// per-token outputs, and dJ/dz of the local columns (when compute_grad).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> vocab_parallel_policy_loss(
    const Tensor& logits, const Tensor& target_ids, const Tensor& mask, const Tensor& advantages,
    const OptTensor& old_logp, const OptTensor& ref_logp, const OptTensor& rollout_logp, const OptTensor& kinds,
    const OptTensor& offsets, const std::string& config_text, c10::ArrayRef<double> scale, int64_t vocab_start,
    int64_t vocab_size, const Tensor& stats, const Tensor& target_logit, bool compute_grad, int64_t num_threads) {
  const cgrpo::Recipe recipe = recipe_of(config_text);
  Tokens tok;
  const Tensor rows = token_rows(logits, "logits", "V_shard", &tok);
  const cgrpo::parallel::VocabShard shard = shard_of(vocab_start, rows.size(1), vocab_size);
  const LossInputs in = loss_inputs(tok, logits.scalar_type(), vocab_size, target_ids, mask, advantages, old_logp,
                                    ref_logp, rollout_logp, kinds, offsets, scale);
  check_row_stats(stats, target_logit, tok.T);
  Tensor grad = compute_grad ? torch::empty(logits.sizes(), logits.options().memory_format(torch::MemoryFormat::Contiguous))
                             : none_tensor(logits.options());
  TokenOutputs outs(tok, logits.options());
  cgrpo::LossMetrics metrics;
  cgrpo::cpu::Workspace& ws = workspace(num_threads);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "cgrpo::vocab_parallel_policy_loss", [&] {
    cgrpo::PolicyLossBatch<scalar_t> batch = batch_view<scalar_t>(recipe.loss, tok, shard.size, in);
    batch.logits = rows.data_ptr<scalar_t>();
    batch.row_stride = tok.T <= 1 ? 0 : rows.stride(0);
    cgrpo::PolicyLossOutputs<scalar_t> out;
    if (compute_grad) {
      out.grad_logits = grad.data_ptr<scalar_t>();
      out.grad_row_stride = tok.T <= 1 ? 0 : shard.size;
    }
    out.metrics = &metrics;
    outs.attach(out);
    check_status(cgrpo::parallel::vocab_parallel_policy_loss(
        recipe.loss, batch, shard, reinterpret_cast<const cgrpo::RowStats<double>*>(stats.data_ptr<double>()),
        target_logit.data_ptr<double>(), out, ws));
  });
  return {torch::scalar_tensor(metrics.loss, logits.options()), grad, metrics_tensor(metrics), outs.logp, outs.entropy,
          outs.policy_factor, outs.token_terms};
}

// Phase 1 on this rank's rows of the LM head: (stats [T, 3], target_logit [T]).
std::tuple<Tensor, Tensor> vocab_shard_linear_row_stats(
    const Tensor& hidden, const Tensor& weight, const OptTensor& bias, const Tensor& target_ids, const Tensor& mask,
    const Tensor& advantages, const OptTensor& old_logp, const OptTensor& ref_logp, const OptTensor& rollout_logp,
    const OptTensor& kinds, const OptTensor& offsets, const std::string& config_text, c10::ArrayRef<double> scale,
    int64_t vocab_start, int64_t vocab_size, int64_t chunk_tokens, int64_t num_threads) {
  const cgrpo::Recipe recipe = recipe_of(config_text);
  Tokens tok;
  const Tensor rows = token_rows(hidden, "hidden", "H", &tok);
  const Head h = check_head(rows, weight, bias, "V_shard");
  const cgrpo::parallel::VocabShard shard = shard_of(vocab_start, h.V, vocab_size);
  const LossInputs in = loss_inputs(tok, hidden.scalar_type(), vocab_size, target_ids, mask, advantages, old_logp,
                                    ref_logp, rollout_logp, kinds, offsets, scale);
  const auto dbl = torch::TensorOptions().dtype(torch::kDouble);
  Tensor stats = torch::empty({tok.T, 3}, dbl), target = torch::empty({tok.T}, dbl);
  cgrpo::cpu::Workspace& ws = workspace(num_threads);
  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "cgrpo::vocab_shard_linear_row_stats", [&] {
    const cgrpo::PolicyLossBatch<scalar_t> batch = batch_view<scalar_t>(recipe.loss, tok, shard.size, in);
    check_status(cgrpo::parallel::vocab_shard_linear_row_stats(
        recipe.loss, batch, head_view<scalar_t>(rows, weight, h, tok.T), shard,
        reinterpret_cast<cgrpo::RowStats<double>*>(stats.data_ptr<double>()), target.data_ptr<double>(), ws,
        chunking_of(chunk_tokens)));
  });
  return {stats, target};
}

// Phase 2 on this rank's rows of the head: the loss and metrics of the whole batch, dJ/dW and dJ/db of
// the local rows (complete), and this rank's part of dJ/dhidden (all-reduce SUM it).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> vocab_parallel_linear_policy_loss(
    const Tensor& hidden, const Tensor& weight, const OptTensor& bias, const Tensor& target_ids, const Tensor& mask,
    const Tensor& advantages, const OptTensor& old_logp, const OptTensor& ref_logp, const OptTensor& rollout_logp,
    const OptTensor& kinds, const OptTensor& offsets, const std::string& config_text, c10::ArrayRef<double> scale,
    int64_t vocab_start, int64_t vocab_size, const Tensor& stats, const Tensor& target_logit, bool want_hidden,
    bool want_weight, bool want_bias, int64_t chunk_tokens, int64_t num_threads) {
  const cgrpo::Recipe recipe = recipe_of(config_text);
  Tokens tok;
  const Tensor rows = token_rows(hidden, "hidden", "H", &tok);
  const Head h = check_head(rows, weight, bias, "V_shard");
  TORCH_CHECK(!want_bias || h.bias.defined(), "cgrpo: a bias gradient was asked for without a bias");
  const cgrpo::parallel::VocabShard shard = shard_of(vocab_start, h.V, vocab_size);
  const LossInputs in = loss_inputs(tok, hidden.scalar_type(), vocab_size, target_ids, mask, advantages, old_logp,
                                    ref_logp, rollout_logp, kinds, offsets, scale);
  check_row_stats(stats, target_logit, tok.T);
  const auto opts = hidden.options();
  const HeadGradTensors g(hidden, h, want_hidden, want_weight, want_bias);
  TokenOutputs outs(tok, opts);
  cgrpo::LossMetrics metrics;
  cgrpo::cpu::Workspace& ws = workspace(num_threads);
  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "cgrpo::vocab_parallel_linear_policy_loss", [&] {
    const cgrpo::PolicyLossBatch<scalar_t> batch = batch_view<scalar_t>(recipe.loss, tok, shard.size, in);
    const cgrpo::LinearHeadGrads<scalar_t, scalar_t> grads = g.view<scalar_t>();
    cgrpo::PolicyLossOutputs<scalar_t> out;
    out.metrics = &metrics;
    outs.attach(out);
    check_status(cgrpo::parallel::vocab_parallel_linear_policy_loss(
        recipe.loss, batch, head_view<scalar_t>(rows, weight, h, tok.T), shard,
        reinterpret_cast<const cgrpo::RowStats<double>*>(stats.data_ptr<double>()), target_logit.data_ptr<double>(), out,
        grads, ws, chunking_of(chunk_tokens)));
  });
  return {torch::scalar_tensor(metrics.loss, opts), g.hidden, g.weight, g.bias, metrics_tensor(metrics), outs.logp,
          outs.entropy, outs.policy_factor, outs.token_terms};
}

}  // namespace
}  // namespace cgrpo_ops

TORCH_LIBRARY_FRAGMENT(cgrpo, m) {
  m.def("group_partial_stats(Tensor rewards, Tensor group_ids, int num_groups, float shift) -> (Tensor sums, Tensor extrema)",
        &cgrpo_ops::group_partial_stats);
  m.def("group_advantages_from_stats(Tensor rewards, Tensor group_ids, Tensor sums, Tensor extrema, float shift, "
        "str config) -> Tensor",
        &cgrpo_ops::group_advantages_from_stats);
  m.def("whitening_partial_stats(Tensor token_counts, Tensor advantages) -> Tensor", &cgrpo_ops::whitening_partial_stats);
  m.def("whiten_from_stats(Tensor advantages, Tensor sums, str config) -> Tensor", &cgrpo_ops::whiten_from_stats);
  m.def("aggregation_partials(Tensor mask, Tensor? offsets) -> Tensor", &cgrpo_ops::aggregation_partials);
  m.def("metric_sums(Tensor metrics, float mean_eps) -> Tensor", &cgrpo_ops::metric_sums);
  m.def("metrics_from_sums(Tensor sums, Tensor metrics, float mean_eps) -> Tensor", &cgrpo_ops::metrics_from_sums);
  m.def("vocab_shard_row_stats(Tensor logits, Tensor target_ids, Tensor mask, Tensor advantages, Tensor? old_logp, "
        "Tensor? ref_logp, Tensor? rollout_logp, Tensor? kinds, Tensor? offsets, str config, float[] scale, "
        "int vocab_start, int vocab_size, int num_threads) -> (Tensor stats, Tensor target_logit)",
        &cgrpo_ops::vocab_shard_row_stats);
  m.def("row_stats_rebase(Tensor stats, Tensor global_max) -> Tensor", &cgrpo_ops::row_stats_rebase);
  m.def("vocab_parallel_policy_loss(Tensor logits, Tensor target_ids, Tensor mask, Tensor advantages, Tensor? old_logp, "
        "Tensor? ref_logp, Tensor? rollout_logp, Tensor? kinds, Tensor? offsets, str config, float[] scale, "
        "int vocab_start, int vocab_size, Tensor stats, Tensor target_logit, bool compute_grad, int num_threads) -> "
        "(Tensor loss, Tensor grad_logits, Tensor metrics, Tensor logp, Tensor entropy, Tensor policy_factor, "
        "Tensor token_terms)",
        &cgrpo_ops::vocab_parallel_policy_loss);
  m.def("vocab_shard_linear_row_stats(Tensor hidden, Tensor weight, Tensor? bias, Tensor target_ids, Tensor mask, "
        "Tensor advantages, Tensor? old_logp, Tensor? ref_logp, Tensor? rollout_logp, Tensor? kinds, Tensor? offsets, "
        "str config, float[] scale, int vocab_start, int vocab_size, int chunk_tokens, int num_threads) -> "
        "(Tensor stats, Tensor target_logit)",
        &cgrpo_ops::vocab_shard_linear_row_stats);
  m.def("vocab_parallel_linear_policy_loss(Tensor hidden, Tensor weight, Tensor? bias, Tensor target_ids, Tensor mask, "
        "Tensor advantages, Tensor? old_logp, Tensor? ref_logp, Tensor? rollout_logp, Tensor? kinds, Tensor? offsets, "
        "str config, float[] scale, int vocab_start, int vocab_size, Tensor stats, Tensor target_logit, "
        "bool grad_hidden, bool grad_weight, bool grad_bias, int chunk_tokens, int num_threads) -> (Tensor loss, "
        "Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias, Tensor metrics, Tensor logp, Tensor entropy, "
        "Tensor policy_factor, Tensor token_terms)",
        &cgrpo_ops::vocab_parallel_linear_policy_loss);
}
