// libFuzzer target: the data- and vocab-parallel entry points on arbitrary input.
//   group stats    k ranks' group_partial_stats, merged, then group_advantages_from_stats
//                  against the single-process group_advantages
//   vocab shards   k column shards through vocab_shard_row_stats + vocab_parallel_policy_loss
//                  against the unsharded cpu::fused_policy_loss (float logits: the AVX sweeps)
// Invariants: never crashes; outputs untouched on error; the sharded call succeeds exactly
// when the unsharded one does, with the same log p and H (kink-free values; the loss and the
// gradient can legitimately differ across a clip kink by rounding, so they are not compared).
#include <fuzzer/FuzzedDataProvider.h>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/parallel/group_stats.hpp>
#include <cgrpo/parallel/vocab_parallel.hpp>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

namespace {

std::vector<int64_t> cuts_of(FuzzedDataProvider& in, int64_t n, int k, bool non_empty) {
  std::vector<int64_t> cuts{0, n};
  for (int i = 1; i < k; ++i) cuts.push_back(in.ConsumeIntegralInRange<int64_t>(0, n));
  std::sort(cuts.begin(), cuts.end());
  if (non_empty) cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  return cuts;
}

void fuzz_group_stats(FuzzedDataProvider& in) {
  const int64_t B = in.ConsumeIntegralInRange<int64_t>(0, 12), G = in.ConsumeIntegralInRange<int64_t>(1, 4);
  const auto est = static_cast<cgrpo::AdvantageEstimator>(in.ConsumeIntegralInRange<int>(0, 2));  // grpo, no_std, rloo
  const double shift = in.ConsumeBool() ? 0.0 : in.ConsumeFloatingPointInRange<double>(-10, 10);
  std::vector<int32_t> ids(B);
  std::vector<double> rewards(B);
  for (int64_t i = 0; i < B; ++i) {
    ids[i] = in.ConsumeIntegralInRange<int32_t>(in.ConsumeIntegralInRange<int>(0, 40) ? 0 : -1, static_cast<int32_t>(G - 1));
    const int pick = in.ConsumeIntegralInRange<int>(0, 40);
    rewards[i] = pick == 0 ? NAN : pick < 20 ? static_cast<double>(pick % 2) : in.ConsumeFloatingPointInRange<double>(-100, 100);
  }
  const int k = in.ConsumeIntegralInRange<int>(1, 3);
  const auto cuts = cuts_of(in, B, k, false);
  std::vector<double> sums(G * cgrpo::parallel::kGroupSumFields, 0.0), ext(G * cgrpo::parallel::kGroupExtremaFields, -INFINITY);
  std::vector<double> s_k(sums.size()), e_k(ext.size());
  bool partial_ok = true;
  for (size_t r = 0; r + 1 < cuts.size(); ++r) {
    const cgrpo::GroupAssignment local{cuts[r + 1] - cuts[r], ids.data() + cuts[r], G};
    std::fill(s_k.begin(), s_k.end(), 7.5);
    const cgrpo::Status s = cgrpo::parallel::group_partial_stats(local, rewards.data() + cuts[r], shift, s_k.data(), e_k.data());
    if (!s.ok()) {
      if (std::count(s_k.begin(), s_k.end(), 7.5) != static_cast<std::ptrdiff_t>(s_k.size())) std::abort();
      partial_ok = false;
      break;
    }
    cgrpo::parallel::group_partial_stats_merge(G, s_k.data(), e_k.data(), sums.data(), ext.data());
  }
  std::vector<double> want(B, 7.5), got(B, 7.5);
  const cgrpo::Status single = cgrpo::group_advantages(est, cgrpo::GroupAssignment{B, ids.data(), G}, rewards.data(),
                                                       nullptr, 1e-6, want.data());
  if (!single.ok() && std::count(want.begin(), want.end(), 7.5) != B) std::abort();
  if (!partial_ok) {
    if (single.ok()) std::abort();  // a rank rejected what one process accepts
    return;
  }
  bool all_ok = true;
  for (size_t r = 0; r + 1 < cuts.size(); ++r) {
    const cgrpo::GroupAssignment local{cuts[r + 1] - cuts[r], ids.data() + cuts[r], G};
    const cgrpo::Status s = cgrpo::parallel::group_advantages_from_stats(est, local, rewards.data() + cuts[r], sums.data(),
                                                                         ext.data(), shift, 1e-6, got.data() + cuts[r]);
    if (!s.ok()) {
      for (int64_t i = cuts[r]; i < cuts[r + 1]; ++i)
        if (got[i] != 7.5) std::abort();
      all_ok = false;
    }
  }
  if (all_ok != single.ok()) std::abort();
  if (!all_ok) return;
  for (int64_t i = 0; i < B; ++i) {
    if (!std::isfinite(got[i])) std::abort();
    // Means only (no variance conditioning) for grpo_no_std and rloo: to rounding of |R - shift|.
    if (est != cgrpo::AdvantageEstimator::grpo && std::fabs(got[i] - want[i]) > 1e-9 * (1 + std::fabs(rewards[i] - shift) + std::fabs(shift)))
      std::abort();
  }
}

void fuzz_vocab_shards(FuzzedDataProvider& in) {
  const int64_t B = in.ConsumeIntegralInRange<int64_t>(1, 3);
  std::vector<int64_t> offsets{0};
  for (int64_t i = 0; i < B; ++i) offsets.push_back(offsets.back() + in.ConsumeIntegralInRange<int64_t>(1, 3));
  const int64_t T = offsets.back(), V = in.ConsumeIntegralInRange<int64_t>(2, 40);
  cgrpo::LossConfig c;
  {
    const int clip = in.ConsumeIntegralInRange<int>(0, 2);  // ratio, PPO clip, PPO clip on the GSPO ratio
    c.policy_loss = clip == 0 ? cgrpo::PolicyLoss::ratio : cgrpo::PolicyLoss::ppo_clip;
    c.ratio_level = clip == 2 ? cgrpo::RatioLevel::sequence_detached : cgrpo::RatioLevel::token;
  }
  c.kl = static_cast<cgrpo::KlEstimator>(in.ConsumeIntegralInRange<int>(0, 4));
  c.kl_coef = c.kl == cgrpo::KlEstimator::none ? 0.0 : 0.05;
  c.entropy_coef = 0.01;
  c.temperature = in.ConsumeFloatingPointInRange<double>(0.05, 3);
  std::vector<float> logits(T * V), adv(T), old_logp(T), ref_logp(T), w(T, 1.0f / static_cast<float>(T));
  for (auto& z : logits) {
    const int pick = in.ConsumeIntegralInRange<int>(0, 60);
    z = pick == 0 ? NAN : pick == 1 ? INFINITY : pick == 2 ? -INFINITY : pick == 3 ? 1e4f
                                                                        : static_cast<float>(in.ConsumeFloatingPointInRange<double>(-6, 6));
  }
  std::vector<int32_t> targets(T);
  std::vector<uint8_t> mask(T), kinds(T);
  for (int64_t t = 0; t < T; ++t) {
    targets[t] = in.ConsumeIntegralInRange<int32_t>(0, static_cast<int32_t>(V - 1));
    mask[t] = in.ConsumeIntegralInRange<uint8_t>(0, 1);
    kinds[t] = in.ConsumeIntegralInRange<uint8_t>(0, 1);
    adv[t] = static_cast<float>(in.ConsumeFloatingPointInRange<double>(-3, 3));
    old_logp[t] = static_cast<float>(in.ConsumeFloatingPointInRange<double>(-20, 0));
    ref_logp[t] = static_cast<float>(in.ConsumeFloatingPointInRange<double>(-20, 0));
  }
  cgrpo::PolicyLossBatch<float> full;
  full.logits = logits.data();
  full.num_tokens = T;
  full.vocab_size = V;
  full.target_ids = targets.data();
  full.mask = mask.data();
  full.kinds = kinds.data();
  full.advantages = adv.data();
  full.old_logp = old_logp.data();
  full.ref_logp = ref_logp.data();
  full.pg_weights = w.data();
  full.entropy_weights = w.data();
  full.kl_weights = w.data();
  full.layout = cgrpo::SequenceLayout::packed(B, offsets.data());
  std::vector<float> logp_full(T), ent_full(T);
  cgrpo::LossMetrics m_full;
  const cgrpo::Status s_full = cgrpo::cpu::fused_policy_loss(
      c, full, cgrpo::PolicyLossOutputs<float>{nullptr, 0, logp_full.data(), ent_full.data(), &m_full});

  const auto cuts = cuts_of(in, V, in.ConsumeIntegralInRange<int>(1, 3), true);
  const int k = static_cast<int>(cuts.size()) - 1;
  std::vector<std::vector<float>> shard_logits(k);
  std::vector<cgrpo::RowStats<double>> reduced(T, cgrpo::row_stats_identity<double>());
  std::vector<double> target_sum(T, 0.0), target(T);
  std::vector<cgrpo::RowStats<double>> stats(T);
  bool phase1_ok = true;
  for (int r = 0; r < k; ++r) {
    const cgrpo::parallel::VocabShard shard{cuts[r], cuts[r + 1] - cuts[r], V};
    shard_logits[r].resize(T * shard.size);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < shard.size; ++j) shard_logits[r][t * shard.size + j] = logits[t * V + shard.begin + j];
    cgrpo::PolicyLossBatch<float> local = full;
    local.logits = shard_logits[r].data();
    local.vocab_size = shard.size;
    const cgrpo::Status s = cgrpo::parallel::vocab_shard_row_stats(c, local, shard, stats.data(), target.data());
    if (!s.ok()) {
      phase1_ok = false;
      break;
    }
    for (int64_t t = 0; t < T; ++t) {
      reduced[t] = cgrpo::row_stats_merge(reduced[t], stats[t]);
      target_sum[t] += target[t];
    }
  }
  if (!phase1_ok) {
    if (s_full.ok()) std::abort();
    return;
  }
  bool phase2_ok = true;
  for (int r = 0; r < k; ++r) {
    const cgrpo::parallel::VocabShard shard{cuts[r], cuts[r + 1] - cuts[r], V};
    cgrpo::PolicyLossBatch<float> local = full;
    local.logits = shard_logits[r].data();
    local.vocab_size = shard.size;
    std::vector<float> grad(T * shard.size, 7.5f), logp(T, 7.5f), ent(T, 7.5f);
    cgrpo::LossMetrics m;
    m.loss = 7.5;
    const cgrpo::Status s = cgrpo::parallel::vocab_parallel_policy_loss(
        c, local, shard, reduced.data(), target_sum.data(), cgrpo::PolicyLossOutputs<float>{grad.data(), 0, logp.data(), ent.data(), &m});
    if (!s.ok()) {
      if (m.loss != 7.5 || std::count(grad.begin(), grad.end(), 7.5f) != static_cast<std::ptrdiff_t>(grad.size()) ||
          std::count(logp.begin(), logp.end(), 7.5f) != T)
        std::abort();
      phase2_ok = false;
      continue;
    }
    if (!s_full.ok()) std::abort();  // sharded accepted what the unsharded call rejected
    if (!std::isfinite(m.loss) || m.num_valid_tokens != m_full.num_valid_tokens) std::abort();
    for (float g : grad)
      if (!std::isfinite(g)) std::abort();
    for (int64_t t = 0; t < T; ++t)
      if (std::fabs(logp[t] - logp_full[t]) > 1e-4 * (1 + std::fabs(logp_full[t])) ||
          std::fabs(ent[t] - ent_full[t]) > 1e-4 * (1 + ent_full[t]))
        std::abort();
  }
  if (!phase2_ok && s_full.ok()) std::abort();  // sharded rejected what the unsharded call accepted
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  if (in.ConsumeBool())
    fuzz_group_stats(in);
  else
    fuzz_vocab_shards(in);
  return 0;
}
