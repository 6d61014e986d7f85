// cgrpo/critique/group_assembly.hpp: initial responses + selected refinements -> the loss's batch.
// Kinds, masks, group ids, advantages over the mixed group and per-token weights, packed or padded.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "cgrpo/advantages/group_advantages.hpp"
#include "cgrpo/base/checked_size.hpp"
#include "cgrpo/base/layout.hpp"
#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/critique/refinement_selection.hpp"
#include "cgrpo/loss/aggregation.hpp"
#include "cgrpo/loss/config.hpp"
#include "cgrpo/loss/policy_loss_batch.hpp"
#include "cgrpo/presets/recipe.hpp"

namespace cgrpo::critique {

// Threads: the functions here keep no state; calls may run at the same time (inputs may be
// shared, an output may not).

// One sampled response: its token ids (the prompt excluded) and its scalar reward.
struct Response {
  std::vector<int32_t> tokens;
  double reward = 0;
};

// Everything sampled for one question: n initial responses and the refinements made
// after critiquing them (any number; the selection rule picks k of them).
struct QuestionRollouts {
  std::vector<Response> initial;
  std::vector<Response> refinements;
};

enum class RefinementPlacement : int {
  // The k refinements take the slots of the LAST k initial responses: the group size stays
  // n (the paper). Initial responses are i.i.d. samples, so dropping the last k is the same
  // as dropping k at random, with no bias toward good or bad ones, and it is reproducible.
  replace_last_initial = 0,
  append = 1,  // the k refinements follow all n initial responses: the group has n + k members
};

enum class BatchLayout : int {
  packed = 0,  // response i owns rows offsets[i]..offsets[i+1], no padding
  padded = 1,  // every response owns padded_length rows, the tail masked out
};

struct GroupAssemblyOptions {
  int64_t refinements_per_group = 1;  // k (paper: 1); 0 gives plain GRPO groups
  RefinementPlacement placement = RefinementPlacement::replace_last_initial;
  BatchLayout layout = BatchLayout::packed;
  int64_t padded_length = 0;          // padded: rows per response (0: the longest response)
  int32_t pad_token = 0;              // target id written on padding rows (mask 0); in [0, V)
  int64_t vocab_size = 0;             // V when known: pad_token and every token id must be < V
                                      // (0: unknown; loss_batch's Status form checks them then)
  bool allow_empty_responses = false; // a response with no token is an error unless set
  double success_reward = 1.0;        // a refinement with reward >= this is "correct"; finite
  AggregationScale scale;             // global counts for data parallelism (0: this batch)
};

// Where a response of the batch came from, so the caller can compute its logits.
struct ResponseSource {
  int32_t question = 0;
  TokenKind kind = kInitial;  // kInitial: initial[index]; kRefinement: refinements[index]
  int32_t index = 0;
};

// The assembled batch. Responses are in group order (question 0 first); in each group the
// kept initial responses come first, in sampling order, then the selected refinements in
// selection order. Every refinement token has kind kRefinement; it is trained as a
// response to the ORIGINAL question: the caller computes its logits without the critique.
template <typename Real>
struct AssembledBatch {
  // Per response.
  std::vector<ResponseSource> sources;
  std::vector<int32_t> group_ids;
  std::vector<Real> rewards;
  std::vector<Real> response_advantages;  // over the mixed group (cgrpo::group_advantages)
  std::vector<int64_t> token_counts;      // valid tokens
  std::vector<int64_t> offsets;           // num_responses + 1 row offsets (padded layouts too)
  int64_t padded_length = 0;              // 0 for a packed batch
  AggregationScale scale;                 // options.scale: the global counts of weights the loss forms

  // Per token row.
  std::vector<int32_t> target_ids;
  std::vector<uint8_t> mask;
  std::vector<uint8_t> kinds;
  std::vector<Real> advantages;
  std::vector<Real> pg_weights, entropy_weights, kl_weights;  // empty when the loss forms its own
                                                              // (a config that changes a mask inside it)

  int64_t num_responses() const { return static_cast<int64_t>(sources.size()); }
  int64_t num_tokens() const { return static_cast<int64_t>(target_ids.size()); }
  SequenceLayout layout() const {
    return padded_length > 0 ? SequenceLayout::padded(num_responses(), padded_length)
                             : SequenceLayout::packed(num_responses(), offsets.data());
  }

  // The loss's view of this batch, checked: vocab_size > 0 and every target id, the padding
  // rows' pad_token included, in [0, vocab_size) (the error names pad_token or the response
  // token); `view` is untouched on error. The caller adds its logits [num_tokens, row_stride]
  // (row t predicting target_ids[t]), old log-probs, and ref log-probs when KL is on.
  // The batch must outlive the view (it points into these vectors).
  Status loss_batch(const Real* logits, int64_t vocab_size, const Real* old_logp, const Real* ref_logp,
                    int64_t row_stride, PolicyLossBatch<Real>& view) const {
    if (vocab_size <= 0)
      return make_error(StatusCode::invalid_argument, "loss_batch: vocab_size must be > 0, got %lld",
                        static_cast<long long>(vocab_size));
    for (size_t t = 0; t < target_ids.size(); ++t) {
      const int32_t id = target_ids[t];
      if (id >= 0 && id < vocab_size) continue;
      if (!mask[t])
        return make_error(StatusCode::out_of_range,
                          "loss_batch: pad_token %d (written on padding row %zu) is outside [0, %lld): set "
                          "GroupAssemblyOptions.pad_token to a token id of the vocabulary",
                          id, t, static_cast<long long>(vocab_size));
      return make_error(StatusCode::out_of_range, "loss_batch: target_ids[%zu] = %d (a response token) is outside [0, %lld)",
                        t, id, static_cast<long long>(vocab_size));
    }
    view = loss_batch(logits, vocab_size, old_logp, ref_logp, row_stride);
    return Status::success();
  }

  // The same view unchecked: a token id outside [0, vocab_size) is then reported by the loss
  // itself (as target_ids[t]).
  PolicyLossBatch<Real> loss_batch(const Real* logits, int64_t vocab_size, const Real* old_logp,
                                   const Real* ref_logp = nullptr, int64_t row_stride = 0) const {
    PolicyLossBatch<Real> b;
    b.logits = logits;
    b.num_tokens = num_tokens();
    b.vocab_size = vocab_size;
    b.row_stride = row_stride;
    b.target_ids = target_ids.data();
    b.mask = mask.data();
    b.kinds = kinds.data();
    b.advantages = advantages.data();
    b.old_logp = old_logp;
    b.ref_logp = ref_logp;
    const bool weights = !pg_weights.empty() || num_tokens() == 0;
    b.pg_weights = weights ? pg_weights.data() : nullptr;
    b.entropy_weights = weights ? entropy_weights.data() : nullptr;
    b.kl_weights = weights ? kl_weights.data() : nullptr;
    b.layout = layout();
    b.scale = scale;
    return b;
  }
};

// Builds the batch the loss consumes from the rollouts of every question:
//   1. per question, select_refinements() picks k refinements (first correct, else best);
//   2. they replace the last k initial responses, or are appended (options.placement);
//   3. advantages over each mixed group with recipe.advantage (cgrpo::group_advantages),
//      broadcast to tokens;
//   4. per-token weights of the pg, entropy and KL terms (cgrpo::aggregation_weights: the
//      modes, conventions and rules of recipe.loss) with options.scale; none when the loss must
//      form them itself (verl's rejection, TRL's entropy mask, geo_mean), whose view then
//      passes null weights.
// Errors (out untouched): k < 0; k larger than a question's choosable refinements; k > n
// when replacing; an empty group; an empty response unless allowed; a token id outside
// [0, options.vocab_size) (>= 0 when it is 0); a non-finite reward or success_reward; an
// unknown placement or layout; a padded layout's pad_token outside [0, V) (>= 0 when V is
// unknown); a response longer than options.padded_length; more rows than int64 holds; more
// than 2^31 questions or responses per question (int32 ids); a failed allocation
// (out_of_memory).
template <typename Real>
Status assemble_groups(const Recipe& recipe, const std::vector<QuestionRollouts>& questions,
                       const GroupAssemblyOptions& options, AssembledBatch<Real>& out);

namespace detail {
inline Status check_assembly_options(const GroupAssemblyOptions& options, size_t num_questions) {
  if (options.refinements_per_group < 0)
    return make_error(StatusCode::invalid_argument, "refinements_per_group must be >= 0, got %lld",
                      static_cast<long long>(options.refinements_per_group));
  if (options.placement != RefinementPlacement::replace_last_initial && options.placement != RefinementPlacement::append)
    return make_error(StatusCode::invalid_argument,
                      "options.placement = %d is not a RefinementPlacement (0 replace_last_initial, 1 append)",
                      static_cast<int>(options.placement));
  if (options.layout != BatchLayout::packed && options.layout != BatchLayout::padded)
    return make_error(StatusCode::invalid_argument, "options.layout = %d is not a BatchLayout (0 packed, 1 padded)",
                      static_cast<int>(options.layout));
  if (options.padded_length < 0)
    return make_error(StatusCode::invalid_argument, "padded_length must be >= 0, got %lld",
                      static_cast<long long>(options.padded_length));
  if (options.vocab_size < 0)
    return make_error(StatusCode::invalid_argument, "options.vocab_size must be >= 0 (0: unknown), got %lld",
                      static_cast<long long>(options.vocab_size));
  if (options.layout == BatchLayout::padded &&
      (options.pad_token < 0 || (options.vocab_size > 0 && options.pad_token >= options.vocab_size)))
    return make_error(StatusCode::out_of_range,
                      "options.pad_token = %d must be a token id, >= 0 and < options.vocab_size (%lld; 0: unknown): "
                      "the loss rejects any other target id, padding rows included",
                      options.pad_token, static_cast<long long>(options.vocab_size));
  if (!std::isfinite(options.success_reward))
    return make_error(StatusCode::invalid_argument, "options.success_reward must be finite, got %g",
                      options.success_reward);
  if (num_questions > static_cast<size_t>(INT32_MAX))
    return make_error(StatusCode::invalid_argument, "%zu questions: more than group ids (int32) can number",
                      num_questions);
  return Status::success();
}

template <typename Real>
Status assemble_groups(const Recipe& recipe, const std::vector<QuestionRollouts>& questions,
                       const GroupAssemblyOptions& options, AssembledBatch<Real>& out) {
  const int64_t k = options.refinements_per_group;

  AssembledBatch<Real> b;
  std::vector<const Response*> members;
  for (size_t q = 0; q < questions.size(); ++q) {
    const QuestionRollouts& rollouts = questions[q];
    const int64_t n = static_cast<int64_t>(rollouts.initial.size());
    const int64_t m = static_cast<int64_t>(rollouts.refinements.size());
    if (n > INT32_MAX || m > INT32_MAX)
      return make_error(StatusCode::invalid_argument, "question %zu: more responses than int32 indices can number", q);
    std::vector<double> refinement_rewards(static_cast<size_t>(m));
    std::vector<int64_t> refinement_lengths(static_cast<size_t>(m));
    for (int64_t j = 0; j < m; ++j) {
      refinement_rewards[j] = rollouts.refinements[j].reward;
      refinement_lengths[j] = static_cast<int64_t>(rollouts.refinements[j].tokens.size());
    }
    std::vector<int64_t> chosen;
    if (k > 0) {
      Status s = select_refinements(refinement_rewards.data(), refinement_lengths.data(), m, k,
                                    options.success_reward, options.allow_empty_responses, chosen);
      if (!s.ok()) return make_error(s.code, "question %zu: %s", q, s.message);
    }
    const bool replace = options.placement == RefinementPlacement::replace_last_initial;
    if (replace && k > n)
      return make_error(StatusCode::invalid_argument,
                        "question %zu: k = %lld refinements cannot replace initial responses, it has only %lld", q,
                        static_cast<long long>(k), static_cast<long long>(n));
    const int64_t kept = replace ? n - k : n;
    if (kept + k == 0)
      return make_error(StatusCode::invalid_argument, "question %zu: its group is empty (no response to train on)", q);
    for (int64_t i = 0; i < kept + k; ++i) {
      const bool refinement = i >= kept;
      const int32_t index = static_cast<int32_t>(refinement ? chosen[i - kept] : i);
      const Response& r = refinement ? rollouts.refinements[index] : rollouts.initial[index];
      if (!std::isfinite(r.reward))
        return make_error(StatusCode::non_finite, "question %zu: %s response %d has a non-finite reward", q,
                          refinement ? "refinement" : "initial", index);
      if (r.tokens.empty() && !options.allow_empty_responses)
        return make_error(StatusCode::invalid_argument,
                          "question %zu: %s response %d is empty (set allow_empty_responses to train on it)", q,
                          refinement ? "refinement" : "initial", index);
      for (size_t t = 0; t < r.tokens.size(); ++t)
        if (r.tokens[t] < 0 || (options.vocab_size > 0 && r.tokens[t] >= options.vocab_size))
          return make_error(StatusCode::out_of_range,
                            "question %zu: %s response %d has token id %d at %zu (ids must be >= 0 and < "
                            "options.vocab_size, %lld; 0: unknown)",
                            q, refinement ? "refinement" : "initial", index, r.tokens[t], t,
                            static_cast<long long>(options.vocab_size));
      if (options.layout == BatchLayout::padded && options.padded_length > 0 &&
          static_cast<int64_t>(r.tokens.size()) > options.padded_length)
        return make_error(StatusCode::invalid_argument, "question %zu: %s response %d has %zu tokens > padded_length %lld",
                          q, refinement ? "refinement" : "initial", index, r.tokens.size(),
                          static_cast<long long>(options.padded_length));
      b.sources.push_back({static_cast<int32_t>(q), refinement ? kRefinement : kInitial, index});
      b.group_ids.push_back(static_cast<int32_t>(q));
      b.rewards.push_back(static_cast<Real>(r.reward));
      b.token_counts.push_back(static_cast<int64_t>(r.tokens.size()));
      members.push_back(&r);
    }
  }

  // Rows: packed back to back, or padded to L.
  b.scale = options.scale;
  const int64_t B = b.num_responses();
  int64_t longest = 0;
  for (int64_t c : b.token_counts) longest = c > longest ? c : longest;
  if (options.layout == BatchLayout::padded)
    b.padded_length = options.padded_length > 0 ? options.padded_length : (longest > 0 ? longest : 1);
  b.offsets.assign(static_cast<size_t>(B + 1), 0);
  for (int64_t i = 0; i < B; ++i)
    if (!checked_add(b.offsets[i], b.padded_length > 0 ? b.padded_length : b.token_counts[i], &b.offsets[i + 1]))
      return make_error(StatusCode::invalid_argument,
                        "%lld responses of padded_length %lld rows overflow int64 (the batch's row count)",
                        static_cast<long long>(B), static_cast<long long>(b.padded_length));
  const int64_t T = b.offsets[B];
  b.target_ids.assign(static_cast<size_t>(T), options.pad_token);
  b.mask.assign(static_cast<size_t>(T), 0);
  b.kinds.assign(static_cast<size_t>(T), kInitial);
  for (int64_t i = 0; i < B; ++i) {
    const std::vector<int32_t>& tokens = members[i]->tokens;
    for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) {
      const int64_t j = t - b.offsets[i];
      if (j < static_cast<int64_t>(tokens.size())) {
        b.target_ids[t] = tokens[j];
        b.mask[t] = 1;
      }
      b.kinds[t] = b.sources[i].kind;
    }
  }

  // Advantages over the mixed groups, then the aggregation weights.
  b.response_advantages.assign(static_cast<size_t>(B), Real(0));
  const GroupAssignment groups{B, b.group_ids.data(), static_cast<int64_t>(questions.size())};
  CGRPO_RETURN_IF_ERROR(
      group_advantages(recipe.advantage, groups, b.rewards.data(), b.token_counts.data(), b.response_advantages.data()));
  const SequenceLayout layout = b.layout();
  b.advantages.assign(static_cast<size_t>(T), Real(0));
  CGRPO_RETURN_IF_ERROR(broadcast_to_tokens(layout, b.response_advantages.data(), b.advantages.data()));
  if (!plan_passes(recipe.loss, PassInputs{}).requires_computed_weights && T > 0) {
    const LossConfig& config = recipe.loss;
    b.pg_weights.assign(static_cast<size_t>(T), Real(0));
    b.entropy_weights.assign(static_cast<size_t>(T), Real(0));
    b.kl_weights.assign(static_cast<size_t>(T), Real(0));
    CGRPO_RETURN_IF_ERROR(
        aggregation_weights(config, LossTerm::policy, layout, b.mask.data(), options.scale, b.pg_weights.data()));
    CGRPO_RETURN_IF_ERROR(
        aggregation_weights(config, LossTerm::entropy, layout, b.mask.data(), options.scale, b.entropy_weights.data()));
    CGRPO_RETURN_IF_ERROR(
        aggregation_weights(config, LossTerm::kl, layout, b.mask.data(), options.scale, b.kl_weights.data()));
  }
  out = std::move(b);
  return Status::success();
}
}  // namespace detail

template <typename Real>
Status assemble_groups(const Recipe& recipe, const std::vector<QuestionRollouts>& questions,
                       const GroupAssemblyOptions& options, AssembledBatch<Real>& out) {
  CGRPO_RETURN_IF_ERROR(recipe.loss.validate());
  CGRPO_RETURN_IF_ERROR(detail::check_assembly_options(options, questions.size()));
  return no_throw("assemble_groups", [&] { return detail::assemble_groups(recipe, questions, options, out); });
}

}  // namespace cgrpo::critique
