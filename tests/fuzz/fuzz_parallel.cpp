// libFuzzer target: the data- and vocab-parallel entry points over each input's whole domain.
//   group stats    k ranks' group_partial_stats, merged (group_partial_stats_merge), then
//                  group_advantages_from_stats, and the whitening pair; any finite reward and
//                  shift; every output placed over an input or the other output
//   vocab shards   a batch drawn like fuzz_fused_loss's (every loss mode, masked NaN / inf,
//                  extreme values, computed or caller weights) split into k column shards:
//                  vocab_shard_row_stats + vocab_parallel_policy_loss against the unsharded
//                  cpu::fused_policy_loss; each phase's outputs placed over its inputs
// Invariants: an error has a message and leaves every output (and every input) as it was;
// OK: every output finite (the extrema of a group without a local member are -inf, the
// identity); the sharded call succeeds exactly when the unsharded one does, with the same
// counts and log p and H to rounding; k ranks agree with one process.
#include "fuzz_loss_case.hpp"

#include <cgrpo/parallel/group_stats.hpp>
#include <cgrpo/parallel/vocab_parallel.hpp>

namespace {

using namespace fuzz;
using cgrpo::parallel::kGroupExtremaFields;
using cgrpo::parallel::kGroupSumFields;

std::vector<int64_t> cuts_of(FuzzedDataProvider& in, int64_t n, int k, bool non_empty) {
  std::vector<int64_t> cuts{0, n};
  for (int i = 1; i < k; ++i) cuts.push_back(in.ConsumeIntegralInRange<int64_t>(0, n));
  std::sort(cuts.begin(), cuts.end());
  if (non_empty) cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  return cuts;
}

double reward(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 15)) {
    case 0: return any_magnitude(in);
    case 1: return special(in);
    case 2: case 3: return in.ConsumeFloatingPointInRange<double>(-1e3, 1e3);
    default: return in.ConsumeIntegralInRange<int>(0, 1);
  }
}

// One call's arrays in an arena, an output maybe over an input: error => untouched,
// OK => no overlap and only the outputs written.
struct Call {
  std::vector<ArrayDesc> arrays;
  Arena arena;
  std::vector<unsigned char> before;
  template <typename T>
  T* at(int i) { return arena.at<T>(arrays[i]); }
  void start(FuzzedDataProvider& in, bool overlap) {
    place(in, arrays, arena, overlap);
    std::fill(arena.words.begin(), arena.words.end(), ~uint64_t{0});
  }
  void snap() { before = snapshot(arena); }
  bool overlapping() const {
    for (const auto& o : arrays)
      if (o.output)
        for (const auto& i : arrays)
          if (&i != &o && (!i.output || &i > &o) && share_bytes(o, i)) return true;
    return false;
  }
  void check(const cgrpo::Status& s, const char* entry) {
    if (!s.ok()) {
      check_error_message(s, entry);
      check_untouched(arena, before, entry, s);
      FUZZ_CHECK(overlapping() || !says_overlap(s), "%s: no array shares memory, yet: %s", entry, s.message);
      return;
    }
    FUZZ_CHECK(!overlapping(), "%s: an output shares memory with an input, yet the call succeeded", entry);
    std::vector<const ArrayDesc*> outs;
    for (const auto& a : arrays)
      if (a.output) outs.push_back(&a);
    check_only_outputs_written(arena, before, outs, entry);
  }
};

void fuzz_group_stats(FuzzedDataProvider& in) {
  const int64_t B = in.ConsumeIntegralInRange<int64_t>(0, 12), G = in.ConsumeIntegralInRange<int64_t>(1, 4);
  // The estimators of the parallel path: grpo ... reinforce_pp_baseline (group_advantages_from_stats);
  // a broken draw may give grpo_batch_std, which it refuses.
  constexpr int kParallelEstimators = static_cast<int>(cgrpo::AdvantageEstimator::reinforce_pp_baseline) + 1;
  const auto est = draw_enum<cgrpo::AdvantageEstimator>(in, kParallelEstimators, in.ConsumeIntegralInRange<int>(0, 15) == 0);
  const double shift = in.ConsumeBool() ? 0.0 : (in.ConsumeBool() ? in.ConsumeFloatingPointInRange<double>(-10, 10) : anything(in));
  const double eps = in.ConsumeIntegralInRange<int>(0, 3) ? 1e-6 : (in.ConsumeBool() ? draw(in, {0, DBL_MAX, 0, 1}, nullptr) : anything(in));
  const bool overlap = in.ConsumeIntegralInRange<int>(0, 3) == 0;
  std::vector<int32_t> ids(B);
  std::vector<double> rewards(B);
  std::vector<int64_t> tokens(B);
  for (int64_t i = 0; i < B; ++i) {
    ids[i] = in.ConsumeIntegralInRange<int32_t>(in.ConsumeIntegralInRange<int>(0, 40) ? 0 : -1, static_cast<int32_t>(G - 1));
    rewards[i] = reward(in);
    tokens[i] = in.ConsumeIntegralInRange<int64_t>(in.ConsumeIntegralInRange<int>(0, 40) ? 0 : -1, 9);
  }
  const int k = in.ConsumeIntegralInRange<int>(1, 3);
  const auto cuts = cuts_of(in, B, k, false);
  std::vector<double> sums(G * kGroupSumFields, 0.0), ext(G * kGroupExtremaFields, -kInf);
  std::vector<bool> has_member(G, false);
  bool partial_ok = true, partial_overflow = false;
  for (size_t r = 0; r + 1 < cuts.size(); ++r) {
    const int64_t n = cuts[r + 1] - cuts[r];
    enum { kRewards, kIds, kSums, kExt };
    Call c;
    c.arrays = {array_desc<double>("rewards", true, false, n), array_desc<int32_t>("group_ids", true, false, n),
                array_desc<double>("sums", true, true, G * kGroupSumFields),
                array_desc<double>("extrema", true, true, G * kGroupExtremaFields)};
    c.start(in, overlap);
    for (int64_t i = 0; i < n; ++i) {
      c.at<double>(kRewards)[i] = rewards[cuts[r] + i];
      c.at<int32_t>(kIds)[i] = ids[cuts[r] + i];
    }
    c.snap();
    const cgrpo::GroupAssignment local{n, c.at<int32_t>(kIds), G};
    const cgrpo::Status s = cgrpo::parallel::group_partial_stats(local, c.at<double>(kRewards), shift, c.at<double>(kSums),
                                                                 c.at<double>(kExt));
    c.check(s, "group_partial_stats");
    if (!s.ok()) {
      partial_ok = false;
      partial_overflow = std::strstr(s.message, "overflow") != nullptr;  // a documented limit of one all-reduce
      break;
    }
    for (int64_t i = 0; i < n; ++i) has_member[ids[cuts[r] + i]] = true;
    for (int64_t j = 0; j < G * kGroupSumFields; ++j)
      FUZZ_CHECK(std::isfinite(c.at<double>(kSums)[j]), "group_partial_stats returned OK with sums[%lld] = %g (shift %g)",
                 (long long)j, c.at<double>(kSums)[j], shift);
    // Merge this rank's partials into the running ones (through the merge entry point).
    enum { kOtherSums, kOtherExt, kMergeSums, kMergeExt };
    Call m;
    m.arrays = {array_desc<double>("other_sums", true, false, G * kGroupSumFields),
                array_desc<double>("other_extrema", true, false, G * kGroupExtremaFields),
                array_desc<double>("sums", true, true, G * kGroupSumFields),
                array_desc<double>("extrema", true, true, G * kGroupExtremaFields)};
    m.start(in, overlap);
    std::memcpy(m.at<double>(kOtherSums), c.at<double>(kSums), G * kGroupSumFields * 8);
    std::memcpy(m.at<double>(kOtherExt), c.at<double>(kExt), G * kGroupExtremaFields * 8);
    std::memcpy(m.at<double>(kMergeSums), sums.data(), G * kGroupSumFields * 8);
    std::memcpy(m.at<double>(kMergeExt), ext.data(), G * kGroupExtremaFields * 8);
    m.snap();
    const cgrpo::Status ms = cgrpo::parallel::group_partial_stats_merge(G, m.at<double>(kOtherSums), m.at<double>(kOtherExt),
                                                                        m.at<double>(kMergeSums), m.at<double>(kMergeExt));
    m.check(ms, "group_partial_stats_merge");
    if (!ms.ok()) {  // an overlap: merge by hand and go on
      for (size_t j = 0; j < sums.size(); ++j) sums[j] += c.at<double>(kSums)[j];
      for (size_t j = 0; j < ext.size(); ++j) ext[j] = std::max(ext[j], c.at<double>(kExt)[j]);
    } else {
      std::memcpy(sums.data(), m.at<double>(kMergeSums), sums.size() * 8);
      std::memcpy(ext.data(), m.at<double>(kMergeExt), ext.size() * 8);
    }
  }
  std::vector<double> want(B, 7.5);
  const cgrpo::Status single = cgrpo::group_advantages(est, cgrpo::GroupAssignment{B, ids.data(), G}, rewards.data(),
                                                       tokens.data(), eps, want.data());
  if (!partial_ok) {
    FUZZ_CHECK(!single.ok() || overlap || !std::isfinite(shift) || partial_overflow,
               "a rank rejected what one process accepts");
    return;
  }
  for (int64_t g = 0; g < G; ++g)
    for (int f = 0; f < kGroupExtremaFields; ++f)
      FUZZ_CHECK(std::isfinite(ext[g * kGroupExtremaFields + f]) || !has_member[g], "group %lld's extrema are %g",
                 (long long)g, ext[g * kGroupExtremaFields + f]);
  std::vector<double> got(B, 7.5);
  bool all_ok = true, any_overlap_error = false, rank_non_finite = false;
  for (size_t r = 0; r + 1 < cuts.size(); ++r) {
    const int64_t n = cuts[r + 1] - cuts[r];
    enum { kRewards, kIds, kSums, kExt, kAdv };
    Call c;
    c.arrays = {array_desc<double>("rewards", true, false, n), array_desc<int32_t>("group_ids", true, false, n),
                array_desc<double>("sums", true, false, G * kGroupSumFields),
                array_desc<double>("extrema", true, false, G * kGroupExtremaFields),
                array_desc<double>("advantages", true, true, n)};
    c.start(in, overlap);
    for (int64_t i = 0; i < n; ++i) {
      c.at<double>(kRewards)[i] = rewards[cuts[r] + i];
      c.at<int32_t>(kIds)[i] = ids[cuts[r] + i];
    }
    std::memcpy(c.at<double>(kSums), sums.data(), sums.size() * 8);
    std::memcpy(c.at<double>(kExt), ext.data(), ext.size() * 8);
    c.snap();
    const cgrpo::Status s = cgrpo::parallel::group_advantages_from_stats(
        est, cgrpo::GroupAssignment{n, c.at<int32_t>(kIds), G}, c.at<double>(kRewards), c.at<double>(kSums),
        c.at<double>(kExt), shift, eps, c.at<double>(kAdv));
    c.check(s, "group_advantages_from_stats");
    if (std::getenv("FUZZ_DEBUG")) std::fprintf(stderr, "rank %zu: %s\n", r, s.message);
    if (!s.ok()) {
      all_ok = false;
      any_overlap_error = any_overlap_error || says_overlap(s);
      rank_non_finite = rank_non_finite || s.code == cgrpo::StatusCode::non_finite;
      continue;
    }
    for (int64_t i = 0; i < n; ++i) got[cuts[r] + i] = c.at<double>(kAdv)[i];
  }
  if (any_overlap_error) return;
  const bool parallel_est = est != cgrpo::AdvantageEstimator::reinforce_pp_baseline &&
                            static_cast<unsigned>(est) < static_cast<unsigned>(kParallelEstimators);
  // One process may refuse (non_finite) sums that the ranks' shift keeps finite, and the ranks a
  // variance that their one-pass sums cancel to 0 (with eps = 0): nothing else may differ.
  if (parallel_est)
    FUZZ_CHECK(all_ok == single.ok() || (all_ok && single.code == cgrpo::StatusCode::non_finite) ||
                   (!all_ok && single.ok() && rank_non_finite),
               "ranks %s, one process %s (%s)", all_ok ? "OK" : "failed", single.ok() ? "OK" : "failed", single.message);
  if (!all_ok) return;
  for (int64_t i = 0; i < B; ++i) {
    FUZZ_CHECK(std::isfinite(got[i]), "group_advantages_from_stats returned OK with A[%lld] = %g", (long long)i, got[i]);
    // Means only (no variance conditioning) for grpo_no_std and rloo: to rounding of the group's
    // largest |R - shift| (the size of its shifted sums).
    double spread = 0;
    for (int64_t j = 0; j < B; ++j)
      if (ids[j] == ids[i]) spread = std::max(spread, std::fabs(rewards[j] - shift));
    if (parallel_est && est != cgrpo::AdvantageEstimator::grpo && single.ok())
      FUZZ_CHECK(std::fabs(got[i] - want[i]) <= 1e-9 * (1 + spread + std::fabs(shift)),
                 "A[%lld]: ranks %.17g, one process %.17g", (long long)i, got[i], want[i]);
  }
  if (est != cgrpo::AdvantageEstimator::reinforce_pp_baseline) return;

  // Whitening: partial sums per rank, summed, then each rank whitens in place.
  double wsum[cgrpo::parallel::kWhitenFields] = {0, 0, 0};
  for (size_t r = 0; r + 1 < cuts.size(); ++r) {
    const int64_t n = cuts[r + 1] - cuts[r];
    enum { kTokens, kAdv, kSums };
    Call c;
    c.arrays = {array_desc<int64_t>("token_counts", true, false, n), array_desc<double>("advantages", true, false, n),
                array_desc<double>("sums", true, true, cgrpo::parallel::kWhitenFields)};
    c.start(in, overlap);
    for (int64_t i = 0; i < n; ++i) {
      c.at<int64_t>(kTokens)[i] = tokens[cuts[r] + i];
      c.at<double>(kAdv)[i] = got[cuts[r] + i];
    }
    c.snap();
    const cgrpo::Status s = cgrpo::parallel::whitening_partial_stats(n, c.at<int64_t>(kTokens), c.at<double>(kAdv), c.at<double>(kSums));
    c.check(s, "whitening_partial_stats");
    if (!s.ok()) return;
    for (int f = 0; f < cgrpo::parallel::kWhitenFields; ++f) {
      FUZZ_CHECK(std::isfinite(c.at<double>(kSums)[f]), "whitening_partial_stats returned OK with sums[%d] = %g", f,
                 c.at<double>(kSums)[f]);
      wsum[f] += c.at<double>(kSums)[f];
    }
  }
  for (size_t r = 0; r + 1 < cuts.size(); ++r) {
    const int64_t n = cuts[r + 1] - cuts[r];
    enum { kSums, kAdv };
    Call c;
    c.arrays = {array_desc<double>("sums", true, false, cgrpo::parallel::kWhitenFields),
                array_desc<double>("advantages", true, true, n)};
    c.start(in, overlap);
    std::memcpy(c.at<double>(kSums), wsum, sizeof wsum);
    for (int64_t i = 0; i < n; ++i) c.at<double>(kAdv)[i] = got[cuts[r] + i];
    c.snap();
    const cgrpo::Status s = cgrpo::parallel::whiten_from_stats(n, c.at<double>(kSums), c.at<double>(kAdv));
    c.check(s, "whiten_from_stats");
    if (!s.ok()) return;
    for (int64_t i = 0; i < n; ++i)
      FUZZ_CHECK(std::isfinite(c.at<double>(kAdv)[i]), "whiten_from_stats returned OK with A[%lld] = %g", (long long)i,
                 c.at<double>(kAdv)[i]);
  }
}

template <typename Real>
void fuzz_vocab_shards(FuzzedDataProvider& in) {
  Case<Real> k = draw_case<Real>(in);
  k.row_stride = 0;  // each shard is its own contiguous block; strides are fuzz_fused_loss's job
  k.grad_row_stride = 0;
  k.grad_mode = in.ConsumeBool() ? 1 : 0;
  k.has[kGrad] = k.grad_mode == 1;
  if (k.V < 2) return;
  const cgrpo::LossConfig& c = k.cfg.config;
  const int64_t T = k.T, V = k.V;
  std::vector<ArrayDesc> arrays = describe(k);
  Arena sizing;
  place(in, arrays, sizing, false);
  Run<Real> full;
  build(k, arrays, sizing.bytes, in.ConsumeIntegral<uint64_t>(), false, full);
  const cgrpo::Status s_full = cgrpo::cpu::fused_policy_loss(c, full.batch, full.out, workspace(0, k.cfg.num_threads));
  workspace(1, k.cfg.num_threads);  // the shards' workspace: the same thread count
  if (std::getenv("FUZZ_DEBUG")) debug_print(k, arrays, 0, s_full);
  const cgrpo::LossMetrics m_full = *full.out.metrics;

  const auto cuts = cuts_of(in, V, in.ConsumeIntegralInRange<int>(1, 3), true);
  const int shards = static_cast<int>(cuts.size()) - 1;
  // Aliasing: one output of one phase placed over one of its inputs (must be refused, untouched).
  const int alias = in.ConsumeIntegralInRange<int>(0, 7) == 0 ? in.ConsumeIntegralInRange<int>(1, 6) : 0;
  const int alias_shard = in.ConsumeIntegralInRange<int>(0, shards - 1);
  const std::vector<unsigned char> batch_bytes = snapshot(full.arena);

  std::vector<std::vector<Real>> shard_logits(shards);
  std::vector<cgrpo::RowStats<double>> reduced(T, cgrpo::row_stats_identity<double>());
  std::vector<double> target_sum(T, 0.0);
  bool phase1_ok = true;
  for (int r = 0; r < shards; ++r) {
    const cgrpo::parallel::VocabShard shard{cuts[r], cuts[r + 1] - cuts[r], V};
    shard_logits[r].resize(static_cast<size_t>(T * shard.size));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < shard.size; ++j)
        shard_logits[r][t * shard.size + j] = full.batch.logits ? full.batch.logits[t * k.placed_stride() + shard.begin + j] : Real(0);
    cgrpo::PolicyLossBatch<Real> local = full.batch;
    if (local.logits) local.logits = shard_logits[r].data();
    local.vocab_size = shard.size;
    local.row_stride = 0;
    std::vector<cgrpo::RowStats<double>> stats(T, cgrpo::RowStats<double>{7.5, 7.5, 7.5});
    std::vector<double> target(T, 7.5);
    cgrpo::RowStats<double>* sp = stats.data();
    double* tp = target.data();
    if (alias == 1 && r == alias_shard && T > 0 && arrays[kAdv].present)
      tp = reinterpret_cast<double*>(full.arena.base() + arrays[kAdv].pos);
    if (alias == 2 && r == alias_shard && T > 0) tp = reinterpret_cast<double*>(sp);
    if (alias == 3 && r == alias_shard && T > 0 && arrays[kTargets].present)
      sp = reinterpret_cast<cgrpo::RowStats<double>*>(full.arena.base() + arrays[kTargets].pos);
    const bool aliased = (sp != stats.data() || tp != target.data());
    const std::vector<cgrpo::RowStats<double>> stats_before = stats;
    const cgrpo::Status s = cgrpo::parallel::vocab_shard_row_stats(c, local, shard, sp, tp, workspace(1));
    if (aliased) FUZZ_CHECK(!s.ok(), "vocab_shard_row_stats accepted an output over an input");
    if (!s.ok()) {
      check_error_message(s, "vocab_shard_row_stats");
      FUZZ_CHECK(std::memcmp(full.arena.base(), batch_bytes.data(), batch_bytes.size()) == 0,
                 "vocab_shard_row_stats wrote into the batch on error: %s", s.message);
      FUZZ_CHECK((T == 0 || std::memcmp(stats.data(), stats_before.data(), T * sizeof(stats[0])) == 0) &&
                     std::count(target.begin(), target.end(), 7.5) == T,
                 "vocab_shard_row_stats wrote its outputs on error: %s", s.message);
      phase1_ok = false;
      if (aliased) return;
      break;
    }
    for (int64_t t = 0; t < T; ++t) {
      reduced[t] = cgrpo::row_stats_merge(reduced[t], stats[t]);
      target_sum[t] += target[t];
    }
  }
  if (!phase1_ok) {
    FUZZ_CHECK(!s_full.ok(), "a shard's statistics were refused, the unsharded loss accepted: ok");
    return;
  }
  // kl_cov / clip_cov pick their top-k tokens by a covariance of log p, and TRL's entropy mask by a
  // quantile of H: the sharded log p and H differ from the unsharded ones by rounding (the tolerance
  // below), so at a tie the two calls may select different tokens (two valid tokens always tie
  // exactly: both covariances are (A0 - A1)(l0 - l1) / 4), and with a huge coefficient one selection's
  // loss overflows where the other's does not. Only that disagreement (OK against non_finite) is
  // excused, and only for such a selection.
  const bool selects_by_rounded_values =
      c.term().selection != cgrpo::BatchSelection::none || cgrpo::entropy_mask_on(c.entropy_mask);
  const auto overflow_at_a_tie = [&](const cgrpo::Status& a, const cgrpo::Status& b) {
    return selects_by_rounded_values && (a.ok() || a.code == cgrpo::StatusCode::non_finite) &&
           (b.ok() || b.code == cgrpo::StatusCode::non_finite);
  };
  bool phase2_ok = true;
  cgrpo::Status s_phase2_error;
  for (int r = 0; r < shards; ++r) {
    const cgrpo::parallel::VocabShard shard{cuts[r], cuts[r + 1] - cuts[r], V};
    cgrpo::PolicyLossBatch<Real> local = full.batch;
    if (local.logits) local.logits = shard_logits[r].data();
    local.vocab_size = shard.size;
    local.row_stride = 0;
    std::vector<Real> grad(static_cast<size_t>(T * shard.size), Real(7.5)), logp(T, Real(7.5)), ent(T, Real(7.5));
    cgrpo::LossMetrics m;
    m.loss = 7.5;
    cgrpo::PolicyLossOutputs<Real> out{k.grad_mode ? grad.data() : nullptr, 0, logp.data(), ent.data(), &m};
    const cgrpo::RowStats<double>* sp = reduced.data();
    const double* tp = target_sum.data();
    std::vector<cgrpo::RowStats<double>> reduced_copy = reduced;
    std::vector<double> target_copy = target_sum;
    if (r == alias_shard && T > 0) {
      if (alias == 4) out.logp = reinterpret_cast<Real*>(target_copy.data());
      if (alias == 5 && arrays[kOld].present)
        out.metrics = reinterpret_cast<cgrpo::LossMetrics*>(full.arena.base() + arrays[kOld].pos);
      if (alias == 6 && k.grad_mode) out.grad_logits = reinterpret_cast<Real*>(reduced_copy.data());
      if (alias == 4) tp = target_copy.data();
      if (alias == 6) sp = reduced_copy.data();
    }
    const bool aliased = out.logp != logp.data() || out.metrics != &m || (k.grad_mode && out.grad_logits != grad.data());
    std::vector<uint8_t> dbg_terms(T, 0);
    if (std::getenv("FUZZ_DEBUG")) out.token_terms = dbg_terms.data();
    const cgrpo::Status s = cgrpo::parallel::vocab_parallel_policy_loss(c, local, shard, sp, tp, out, workspace(1));
    if (std::getenv("FUZZ_DEBUG"))
      std::fprintf(stderr, "shard %d [%lld, +%lld): %s, loss %g ppo_kl %g (unsharded: %s, loss %g ppo_kl %g)\n", r,
                   (long long)shard.begin, (long long)shard.size, s.message, m.loss, m.ppo_kl, s_full.message, m_full.loss,
                   m_full.ppo_kl);
    if (std::getenv("FUZZ_DEBUG") && s.ok()) {
      std::fprintf(stderr, "  pg %g (init %g ref %g) H %g kl %g clipfrac %g refp %g n_init %lld n_ref %lld\n", m.pg_loss,
                   m.pg_loss_initial, m.pg_loss_refinement, m.entropy_loss, m.kl_loss, m.pg_clipfrac,
                   m.refinement_prob_mean, (long long)m.num_initial_tokens, (long long)m.num_refinement_tokens);
      for (int64_t t = 0; t < T; ++t)
        if (local.mask[t])
          std::fprintf(stderr, "  t=%lld logp %.17g H %.17g terms %d A %.17g old %.17g\n", (long long)t, (double)logp[t],
                       (double)ent[t], dbg_terms[t], (double)local.advantages[t], local.old_logp ? (double)local.old_logp[t] : 0.0);
    }
    if (aliased) FUZZ_CHECK(!s.ok(), "vocab_parallel_policy_loss accepted an output over an input (case %d)", alias);
    if (!s.ok()) {
      check_error_message(s, "vocab_parallel_policy_loss");
      FUZZ_CHECK(std::memcmp(full.arena.base(), batch_bytes.data(), batch_bytes.size()) == 0,
                 "vocab_parallel_policy_loss wrote into the batch on error: %s", s.message);
      FUZZ_CHECK(m.loss == 7.5 && std::count(grad.begin(), grad.end(), Real(7.5)) == static_cast<std::ptrdiff_t>(grad.size()) &&
                     std::count(logp.begin(), logp.end(), Real(7.5)) == T && std::count(ent.begin(), ent.end(), Real(7.5)) == T,
                 "vocab_parallel_policy_loss wrote its outputs on error: %s", s.message);
      FUZZ_CHECK(T == 0 || (std::memcmp(reduced_copy.data(), reduced.data(), T * sizeof(reduced[0])) == 0 &&
                            std::memcmp(target_copy.data(), target_sum.data(), T * sizeof(double)) == 0),
                 "vocab_parallel_policy_loss wrote into its statistics on error");
      if (aliased) return;
      phase2_ok = false;
      s_phase2_error = s;
      continue;
    }
    if (!s_full.ok() && overflow_at_a_tie(s, s_full)) continue;
    FUZZ_CHECK(s_full.ok(), "sharded accepted what the unsharded call rejected: %s", s_full.message);
    ExpectedCounts e;
    for (int64_t t = 0; t < T; ++t) {
      if (!local.mask[t]) continue;
      ++e.valid;
      if (local.kinds && local.kinds[t] == cgrpo::kRefinement) ++e.valid_refinement;
      else ++e.valid_initial;
    }
    e.initial_exact = c.off_policy.rollout.mode == cgrpo::RolloutCorrectionMode::none ||
                      c.off_policy.rollout.num_rejection_options == 0;
    check_metrics(m, e, "vocab_parallel_policy_loss");
    FUZZ_CHECK(m.num_initial_tokens == m_full.num_initial_tokens, "initial tokens differ");
    for (Real g : grad) FUZZ_CHECK(std::isfinite(static_cast<double>(g)), "sharded gradient %g with status OK", (double)g);
    const double tol = std::is_same<Real, float>::value ? 1e-4 : 1e-9;
    for (int64_t t = 0; t < T; ++t) {
      FUZZ_CHECK(std::isfinite(static_cast<double>(logp[t])) && std::isfinite(static_cast<double>(ent[t])), "row %lld: log p %g, H %g",
                 (long long)t, (double)logp[t], (double)ent[t]);
      if (!full.out.logp || !full.out.entropy) continue;
      const double lf = full.out.logp[t], hf = full.out.entropy[t];
      // The exchanged statistics hold u = z / tau absolutely: log p and H carry an absolute error
      // of about 1e-16 |max u| (vocab_parallel.hpp says so), which the unsharded loss has not.
      const double exchange = 4e-16 * std::fabs(reduced[t].max);
      FUZZ_CHECK(std::fabs(logp[t] - lf) <= tol * (1 + std::fabs(lf)) + exchange &&
                     std::fabs(ent[t] - hf) <= tol * (1 + hf) + exchange,
                 "row %lld: sharded log p %g H %g, unsharded %g %g", (long long)t, (double)logp[t], (double)ent[t], lf, hf);
    }
  }
  // Rows whose |max z / tau| is beyond what the exchanged statistics hold are the sharded loss's to refuse.
  bool beyond = false;
  for (int64_t t = 0; t < T; ++t) beyond = beyond || !(std::fabs(reduced[t].max) <= cgrpo::parallel::kVocabParallelMaxAbsU);
  if (!phase2_ok)
    FUZZ_CHECK(!s_full.ok() || alias || beyond || overflow_at_a_tie(s_phase2_error, s_full),
               "sharded rejected what the unsharded call accepted: %s", s_phase2_error.message);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Current current(data, size);
  FuzzedDataProvider in(data, size);
  try {
    switch (in.ConsumeIntegralInRange<int>(0, 3)) {
      case 0: fuzz_group_stats(in); break;
      case 1: fuzz_vocab_shards<float>(in); break;
      default: fuzz_vocab_shards<double>(in); break;
    }
  } catch (const fuzz::Broken&) {  // FUZZ_SURVEY: the input is saved, go on
  }
  return 0;
}
