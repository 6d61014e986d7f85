// tests/support/batch.hpp: the tests' one batch builder: a self-contained batch in double (random or
// from a case's arrays) and the library's view of it in any precision, with what a config reads.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

#include <cgrpo/cgrpo.hpp>

namespace support {

// One batch of T token rows in double. Layout: packed (offsets) unless padded_length > 0 (B rows
// of padded_length each; offsets then hold i * L). Every per-token array has T entries; the ones
// a case does not have stay empty (the view passes null for them).
struct Batch {
  int64_t T = 0, V = 0, stride = 0;
  std::vector<double> logits;          // [T, stride]
  std::vector<int32_t> targets;
  std::vector<uint8_t> mask, kinds;
  std::vector<double> adv, old_logp, ref_logp, rollout_logp;
  std::vector<uint8_t> selection;      // kl_cov / clip_cov's caller selection (empty: none)
  std::vector<double> w_pg, w_h, w_kl; // the caller's weights (see LibraryBatch::weights)
  std::vector<int64_t> offsets;        // B + 1 row offsets
  int64_t B = 0;
  int64_t padded_length = 0;           // > 0: a padded layout of B x padded_length rows

  cgrpo::SequenceLayout layout() const {
    return padded_length > 0 ? cgrpo::SequenceLayout::padded(B, padded_length)
                             : cgrpo::SequenceLayout::packed(B, offsets.data());
  }
  // Response i's rows.
  int64_t begin(int64_t i) const { return offsets[i]; }
  int64_t end(int64_t i) const { return offsets[i + 1]; }
};

// An empty batch of B rows of L tokens each (padded), V entries per logits row: every array sized,
// every value 0, mask 1. Fill what a case needs.
inline Batch padded_batch(int64_t B, int64_t L, int64_t V) {
  Batch b;
  b.B = B;
  b.V = V;
  b.stride = V;
  b.padded_length = L;
  b.T = B * L;
  b.logits.assign(static_cast<size_t>(b.T * V), 0.0);
  b.targets.assign(static_cast<size_t>(b.T), 0);
  b.mask.assign(static_cast<size_t>(b.T), 1);
  b.kinds.assign(static_cast<size_t>(b.T), cgrpo::kInitial);
  for (auto* v : {&b.adv, &b.old_logp, &b.ref_logp, &b.rollout_logp, &b.w_pg, &b.w_h, &b.w_kl})
    v->assign(static_cast<size_t>(b.T), 0.0);
  for (int64_t i = 0; i <= B; ++i) b.offsets.push_back(i * L);
  return b;
}

// Sequences of random lengths in [1, max_len] (packed); a sequence is all initial or all
// refinement; about one token in six is masked; logits N(0, scale^2); old / ref / rollout log-probs
// near the current ones, so that ratios straddle the clip range.
inline Batch random_batch(std::mt19937_64& rng, int64_t B, int64_t max_len, int64_t V, int64_t extra_stride,
                          double scale = 2.0) {
  Batch b;
  b.B = B;
  b.V = V;
  b.stride = V + extra_stride;
  std::uniform_int_distribution<int64_t> len(1, max_len);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  b.offsets.push_back(0);
  for (int64_t i = 0; i < B; ++i) b.offsets.push_back(b.offsets.back() + len(rng));
  b.T = b.offsets.back();
  b.logits.resize(b.T * b.stride);
  for (auto& z : b.logits) z = scale * normal(rng);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));
  for (int64_t i = 0; i < B; ++i) {
    // Random kinds, but the first two sequences are one of each, so both branches are exercised.
    const uint8_t kind = i == 0   ? cgrpo::kInitial
                         : i == 1 ? cgrpo::kRefinement
                                  : (uni(rng) < 0.3 ? cgrpo::kRefinement : cgrpo::kInitial);
    const double a = normal(rng);
    for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) {
      b.targets.push_back(tok(rng));
      b.mask.push_back(t == b.offsets[i] || uni(rng) < 0.85 ? 1 : 0);  // every sequence has a valid token
      b.kinds.push_back(kind);
      b.adv.push_back(a);
    }
  }
  for (int64_t t = 0; t < b.T; ++t) {
    const double* z = &b.logits[t * b.stride];
    double m = *std::max_element(z, z + V), s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(z[v] - m);
    const double lp = z[b.targets[t]] - m - std::log(s);
    // ... but 1e-4 away from the kinks of the presets' losses (abs KL at 0, clip bounds 0.8, 1.2
    // and 1.28, dual clip 3): a kink between float and double log p, or inside a finite
    // difference step, would flip a token's gradient.
    const double kinks[] = {0.0, std::log(0.8), std::log(1.2), std::log(1.28), std::log(3.0)};
    auto near_kink = [&](double d) {
      for (double k : kinks)
        if (std::fabs(d - k) < 1e-4) return true;
      return false;
    };
    double old_lp, ref_lp;
    do old_lp = lp + 0.3 * normal(rng);
    while (near_kink(lp - old_lp));
    do ref_lp = lp + 0.5 * normal(rng);
    while (near_kink(lp - ref_lp));
    b.old_logp.push_back(old_lp);
    b.ref_logp.push_back(ref_lp);
    b.rollout_logp.push_back(old_lp + 0.1 * normal(rng));
  }
  b.w_pg.assign(b.T, 0.0);
  b.w_h.assign(b.T, 0.0);
  b.w_kl.assign(b.T, 0.0);
  return b;
}

// The library's view of a batch, in precision Real: Real copies of the batch's arrays and a
// PolicyLossBatch over them. With a config (the usual form), the view carries what that config
// reads: ref_logp only with a KL estimator, rollout_logp when the batch has it, kinds, selection
// when the batch has one, and the caller's weights only when `weights` is caller (weights of a
// term the config does not use stay null). Without one it carries every array (the old form).
enum class Weights { caller, computed };

template <typename Real>
struct LibraryBatch {
  std::vector<Real> logits, adv, old_logp, ref_logp, rollout_logp, w_pg, w_h, w_kl;
  cgrpo::PolicyLossBatch<Real> view;

  explicit LibraryBatch(const Batch& b) { build(b); }
  LibraryBatch(const Batch& b, const cgrpo::LossConfig& config, Weights weights = Weights::computed) {
    build(b);
    view.ref_logp = config.kl_on() && !b.ref_logp.empty() ? ref_logp.data() : nullptr;
    view.rollout_logp = b.rollout_logp.empty() ? nullptr : rollout_logp.data();
    if (weights == Weights::computed) {
      view.pg_weights = view.entropy_weights = view.kl_weights = nullptr;
    } else {
      view.entropy_weights = config.entropy.coef != 0 ? w_h.data() : nullptr;
      view.kl_weights = config.kl_on() ? w_kl.data() : nullptr;
    }
  }
  LibraryBatch(const LibraryBatch&) = delete;

 private:
  void build(const Batch& b) {
    auto cast = [](const std::vector<double>& x) { return std::vector<Real>(x.begin(), x.end()); };
    logits = cast(b.logits);
    adv = cast(b.adv);
    old_logp = cast(b.old_logp);
    ref_logp = cast(b.ref_logp);
    rollout_logp = cast(b.rollout_logp);
    w_pg = cast(b.w_pg);
    w_h = cast(b.w_h);
    w_kl = cast(b.w_kl);
    view.logits = logits.empty() ? nullptr : logits.data();
    view.num_tokens = b.T;
    view.vocab_size = b.V;
    view.row_stride = b.stride;
    view.target_ids = b.targets.empty() ? nullptr : b.targets.data();
    view.mask = b.mask.empty() ? nullptr : b.mask.data();
    view.kinds = b.kinds.empty() ? nullptr : b.kinds.data();
    view.advantages = adv.empty() ? nullptr : adv.data();
    view.old_logp = old_logp.empty() ? nullptr : old_logp.data();
    view.ref_logp = ref_logp.empty() ? nullptr : ref_logp.data();
    view.rollout_logp = nullptr;
    view.selection = b.selection.empty() ? nullptr : b.selection.data();
    view.pg_weights = w_pg.empty() ? nullptr : w_pg.data();
    view.entropy_weights = w_h.empty() ? nullptr : w_h.data();
    view.kl_weights = w_kl.empty() ? nullptr : w_kl.data();
    view.layout = b.layout();
  }
};

// The library's own weights for `config` over the batch's mask (cgrpo::aggregation_weights, the
// rule the loss uses when it forms them itself), written into b.w_pg, b.w_h, b.w_kl.
inline cgrpo::Status set_library_weights(Batch& b, const cgrpo::LossConfig& config,
                                         const cgrpo::AggregationScale& scale = {}) {
  for (auto* v : {&b.w_pg, &b.w_h, &b.w_kl}) v->assign(static_cast<size_t>(b.T), 0.0);
  const cgrpo::SequenceLayout layout = b.layout();
  CGRPO_RETURN_IF_ERROR(
      cgrpo::aggregation_weights(config, cgrpo::LossTerm::policy, layout, b.mask.data(), scale, b.w_pg.data()));
  CGRPO_RETURN_IF_ERROR(
      cgrpo::aggregation_weights(config, cgrpo::LossTerm::entropy, layout, b.mask.data(), scale, b.w_h.data()));
  return cgrpo::aggregation_weights(config, cgrpo::LossTerm::kl, layout, b.mask.data(), scale, b.w_kl.data());
}

// Responses [r0, r1) of a packed batch as a batch of their own (offsets rebased; what a data-parallel
// rank holds). The caller's selection is not carried.
inline Batch slice_responses(const Batch& full, int64_t r0, int64_t r1) {
  Batch s;
  const int64_t t0 = full.offsets[r0], t1 = full.offsets[r1];
  s.B = r1 - r0;
  s.V = full.V;
  s.stride = full.stride;
  s.T = t1 - t0;
  for (int64_t i = r0; i <= r1; ++i) s.offsets.push_back(full.offsets[i] - t0);
  s.logits.assign(full.logits.begin() + t0 * full.stride, full.logits.begin() + t1 * full.stride);
  auto cut = [&](const auto& v) { return std::decay_t<decltype(v)>(v.begin() + t0, v.begin() + t1); };
  s.targets = cut(full.targets);
  s.mask = cut(full.mask);
  s.kinds = cut(full.kinds);
  s.adv = cut(full.adv);
  s.old_logp = cut(full.old_logp);
  s.ref_logp = cut(full.ref_logp);
  s.rollout_logp = cut(full.rollout_logp);
  s.w_pg = cut(full.w_pg);
  s.w_h = cut(full.w_h);
  s.w_kl = cut(full.w_kl);
  return s;
}

}  // namespace support
