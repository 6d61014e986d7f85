// cgrpo/loss/pass_plan.hpp: which passes one call runs, decided once from the config's variant traits
// and what the batch gives. Plain data: the CPU path, the CUDA launcher and the fused LM head read it.
#pragma once

#include <cmath>
#include <cstdint>

#include "cgrpo/loss/aggregation_modes.hpp"
#include "cgrpo/loss/config.hpp"

namespace cgrpo {

// What the plan needs to know of a batch (PolicyLossBatch gives it: plan_passes(config, batch)).
struct PassInputs {
  bool computed_weights = true;   // batch.pg_weights is null: the loss forms the weights
  bool caller_selection = false;  // batch.selection is given
  bool has_rollout_logp = false;  // batch.rollout_logp is given
};

// How one term's weights are formed when the loss computes them.
struct WeightRule {
  Aggregation mode;
  AggregationConvention convention;
};

// The bits of a token's terms (the policy term, the entropy term's numerator and denominator, KL).
enum TermBit : uint8_t {
  kTermPolicy = 1,        // the policy term (verl's rejection removes a token: m'_t)
  kTermEntropy = 2,       // the entropy term's numerator
  kTermKl = 4,            // the KL term
  kTermSelected = 8,      // kl_cov / clip_cov: selected by the batch pass (or batch.selection)
  kTermEntropyCount = 16, // the entropy term's denominator
};
constexpr uint8_t kAllTerms = kTermPolicy | kTermEntropy | kTermKl | kTermEntropyCount;
// The batch's response mask (verl's, after a rejection that leaves every term): the KL term's
// mask, which only such a rejection changes (AggregationConvention::token_count_from_response_mask).
constexpr uint8_t kTermResponseMask = kTermKl;

struct PassPlan {
  PassInputs inputs;

  // What the call reads.
  bool needs_layout = false;          // batch.layout (row features, row corrections, row-mode weights)
  bool ratio_vs_rollout = false;      // the ratio's reference is rollout_logp (verl's bypass), not old_logp
  bool checks_rollout_logp = false;   // rollout_logp is read (and checked finite) at valid initial tokens
  bool covered_copies = false;        // the corrections' double copies of the covered tokens' values

  // The pre-passes over per-token values, in the order they run (CPU: cpu/loss_passes.hpp;
  // GPU: cuda/loss_passes.cuh).
  bool rollout = false;               // verl's rollout correction (IS weights, rejection)
  bool rollout_bypass = false;        //   d against the current log p (else old_logp)
  bool rollout_weight = false;        //   its IS weight multiplies the policy loss
  bool rollout_normalize = false;     //   divided by its batch mean (is_batch_normalize)
  bool rollout_row_mean = false;      //   as each row's geometric mean (geo_mean)
  uint8_t rollout_scope = 0;          //   the terms a rejected token leaves (TermBit)
  bool sampler = false;               // TRL's sampler row pass: vLLM weight, OPSM, vespo's phi
  bool row_context = false;           // the row pass: sequence log ratios, a row term's q_i, vespo's phi
  bool entropy_select = false;        // TRL's entropy mask (a quantile of the valid H)
  bool cov_select = false;            // the term's batch selection from covariances
  bool selection_bits = false;        // the term's selection from batch.selection
  BatchSelection selection = BatchSelection::none;
  bool computed_weights = false;      // the weights from counts over each term's own mask
  WeightRule weights[3] = {};         // policy, entropy, KL (the policy's may be fixed by its term)

  // What follows from them.
  bool all_logp_first = false;        // a pre-pass reads log p or H of tokens other than the one it
                                      // scores: every row's statistics first (the fused LM head runs
                                      // two passes over its chunks)
  bool any_prepass = false;           // some pass runs between the sweeps (the GPU splits its kernel)
  bool requires_computed_weights = false;  // the loss changes a denominator itself (rejection, the
  const char* computed_weights_reason = nullptr;  // entropy mask, a term's own rule): no caller weights
};

// The plan of a (validated) config for a batch.
inline PassPlan plan_passes(const LossConfig& c, const PassInputs& in) {
  const PolicyTraits term = c.term();
  const RatioLevelTraits level = c.level();
  const RolloutCorrectionConfig& r = c.off_policy.rollout;
  const RolloutModeTraits rollout = traits_of(r.mode);
  const SamplerModeTraits sampler = traits_of(c.off_policy.sampler.mode);
  PassPlan p;
  p.inputs = in;

  p.rollout = r.mode != RolloutCorrectionMode::none;
  p.rollout_bypass = rollout.reads_current_logp;
  p.rollout_weight = r.is_level != RolloutIsLevel::none && !(p.rollout_bypass && !term.bypass_is_factor);
  p.rollout_normalize = p.rollout_weight && r.is_batch_normalize;
  p.rollout_row_mean = p.rollout_weight && term.is_weight_row_mean;
  p.rollout_scope = rollout.rejection_all_terms ? kAllTerms : uint8_t(kTermPolicy);
  p.sampler = sampler.on || c.opsm_on() || term.row_weight;
  p.covered_copies = p.rollout || p.sampler;
  p.row_context = c.sequence_ratio() || term.row_log_ratio || term.row_weight;
  p.entropy_select = entropy_mask_on(c.entropy_mask);
  p.selection = term.selection;
  p.selection_bits = term.selection != BatchSelection::none && in.caller_selection;
  p.cov_select = term.selection != BatchSelection::none && !in.caller_selection;
  p.computed_weights = in.computed_weights;

  AggregationConvention policy_convention = c.aggregation.convention;
  if (term.exact_row_counts) {  // GMPO: J_pg = (1/B) sum_i l_i over every row (verl's torch.mean)
    policy_convention.row_count_eps = 0;
    policy_convention.count_empty_rows = true;
  }
  p.weights[0] = WeightRule{c.aggregation.policy, policy_convention};
  p.weights[1] = WeightRule{c.aggregation.entropy, c.aggregation.convention};
  p.weights[2] = WeightRule{c.aggregation.kl, c.aggregation.convention};

  p.ratio_vs_rollout = p.rollout_bypass;
  p.checks_rollout_logp = c.needs_rollout_logp() || (in.has_rollout_logp && c.opsm_on());
  const bool row_features = c.sequence_ratio() || term.row_log_ratio || term.row_weight || p.rollout || sampler.on ||
                            c.opsm_on();
  // A mode that reads the rows (B, n_i) or L of the layout.
  auto layout_mode = [](Aggregation a) { return traits_of(a).uses_rows || traits_of(a).uses_length; };
  const bool row_weights = in.computed_weights &&
                           (layout_mode(c.aggregation.policy) || (c.entropy.coef != 0 && layout_mode(c.aggregation.entropy)) ||
                            (c.kl_on() && layout_mode(c.aggregation.kl)));
  p.needs_layout = row_features || row_weights;
  // The sampler row pass takes every covered token's current log p (OPSM and vespo read it).
  p.all_logp_first = c.sequence_ratio() || term.row_log_ratio || term.row_weight || p.rollout_bypass || p.sampler ||
                     p.entropy_select || p.cov_select;
  p.any_prepass = in.computed_weights || level.row_ratio || term.row_log_ratio || term.row_weight ||
                  term.selection != BatchSelection::none || p.rollout || p.sampler || p.entropy_select;
  if (r.num_rejection_options > 0) p.computed_weights_reason = "off_policy.rollout rejection";
  else if (p.entropy_select) p.computed_weights_reason = "entropy_mask.top_quantile";
  else if (term.computed_weights_only) p.computed_weights_reason = term.name;
  p.requires_computed_weights = p.computed_weights_reason != nullptr;
  return p;
}

}  // namespace cgrpo
