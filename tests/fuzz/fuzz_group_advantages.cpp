// libFuzzer target: the batch-level helpers (float and double) over each input's whole domain:
//   group_advantages        every estimator (gdpo included, and unknown ones), any finite reward
//                           from the denormals to DBL_MAX, any eps / whiten_eps, token counts
//   gdpo_advantages         K reward components (and bad K), weights from their whole domain or
//                           null, the optional weighted sum, any config
//   group_ids_from_offsets, broadcast_to_tokens, aggregation_weights (every mode, term and
//                           convention, any scale),
//   parallel::aggregation_partials
// with every output placed over an input (same start, one element at either end, touching,
// any offset), and layouts whose row counts overflow int64 (arrays at unmapped addresses).
// Invariants: an error has a message and leaves every byte as it was; OK: no output shares
// memory with an input, no byte outside the outputs changed, every output finite, and
//   - advantages: each group of grpo_no_std / rloo sums to 0 (to rounding), grpo_batch_std and
//     grpo too where their scale is finite;
//   - gdpo_advantages with one component of weight 1: group_advantages(gdpo), bit for bit, and
//     the same outcome (OK or not) unless the arrays overlap;
//   - weights: >= 0, 0 at masked tokens, summing to at most 1 for token-mean and
//     seq-mean-token-mean (scale from the batch, any convention);
//   - partials: the mask's count, the layout's rows and longest row.
#include "fuzz_common.hpp"

#include <cgrpo/parallel/global_scale.hpp>

#include <algorithm>
#include <map>

namespace {

using namespace fuzz;

template <typename Real>
Real to_real(double x) {
  if (std::is_same<Real, float>::value && std::isfinite(x) && std::fabs(x) > FLT_MAX) return static_cast<Real>(x > 0 ? kInf : -kInf);
  return static_cast<Real>(x);
}

// A reward: the usual 0 / 1, any finite value, rarely a non-finite one.
double reward(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 15)) {
    case 0: return any_magnitude(in);
    case 1: return special(in);
    case 2: case 3: return in.ConsumeFloatingPointInRange<double>(-1e6, 1e6);
    default: return in.ConsumeIntegralInRange<int>(0, 1);
  }
}

// Overlap outcome shared by the helpers: error => untouched; OK => no overlap, outputs only.
void check_call(const cgrpo::Status& s, Arena& arena, const std::vector<unsigned char>& before,
                const std::vector<ArrayDesc>& arrays, const char* entry) {
  bool overlap = false;
  for (const auto& o : arrays)
    if (o.output)
      for (const auto& i : arrays)
        if (&i != &o && (!i.output || &i > &o) && share_bytes(o, i)) overlap = true;
  if (!s.ok()) {
    check_error_message(s, entry);
    check_untouched(arena, before, entry, s);
    FUZZ_CHECK(overlap || !says_overlap(s), "%s: no array shares memory, yet: %s", entry, s.message);
    return;
  }
  FUZZ_CHECK(!overlap, "%s: an output shares memory with an input, yet the call succeeded", entry);
  std::vector<const ArrayDesc*> outs;
  for (const auto& a : arrays)
    if (a.output) outs.push_back(&a);
  check_only_outputs_written(arena, before, outs, entry);
}

template <typename Real>
void fuzz_advantages(FuzzedDataProvider& in) {
  const int64_t n = in.ConsumeIntegralInRange<int64_t>(0, 24);
  const int64_t groups = in.ConsumeIntegralInRange<int64_t>(0, 6);
  const auto est = draw_enum<cgrpo::AdvantageEstimator>(in, cgrpo::kNumAdvantageEstimators, in.ConsumeIntegralInRange<int>(0, 15) == 0);
  const double eps = in.ConsumeIntegralInRange<int>(0, 3) ? 1e-6 : (in.ConsumeBool() ? draw(in, {0, DBL_MAX, 0, 1}, nullptr) : anything(in));
  const double whiten_eps = in.ConsumeIntegralInRange<int>(0, 3) ? 1e-8 : (in.ConsumeBool() ? draw(in, {0, DBL_MAX, 0, 1}, nullptr) : anything(in));
  std::vector<double> rewards(n);
  std::vector<int32_t> ids(n);
  std::vector<int64_t> counts(n);
  for (int64_t i = 0; i < n; ++i) {
    ids[i] = in.ConsumeIntegralInRange<int>(0, 30) ? in.ConsumeIntegralInRange<int32_t>(0, static_cast<int32_t>(std::max<int64_t>(groups - 1, 0)))
                                                  : in.ConsumeIntegralInRange<int32_t>(-1, static_cast<int32_t>(groups));
    rewards[i] = reward(in);
    counts[i] = in.ConsumeIntegralInRange<int>(0, 30) ? in.ConsumeIntegralInRange<int64_t>(0, 50)
                                                     : in.PickValueInArray<int64_t>({-1, INT64_MAX, INT64_MAX / 2, 1LL << 53});
  }
  const bool with_counts = in.ConsumeBool();
  enum { kRewards, kIds, kCounts, kAdv };
  std::vector<ArrayDesc> arrays = {array_desc<Real>("rewards", true, false, n), array_desc<int32_t>("group_ids", true, false, n),
                                   array_desc<int64_t>("token_counts", with_counts, false, n),
                                   array_desc<Real>("advantages", true, true, n)};
  Arena arena;
  place(in, arrays, arena, true);
  // Drawn last (inputs that end before it keep the default 0): the whitening's count eps.
  const double whiten_count_eps = in.ConsumeIntegralInRange<int>(0, 3) ? 0.0
                                  : (in.ConsumeBool() ? draw(in, {0, DBL_MAX, 0, 1}, nullptr) : anything(in));
  std::fill(arena.words.begin(), arena.words.end(), ~uint64_t{0});
  for (int64_t i = 0; i < n; ++i) {
    arena.at<Real>(arrays[kRewards])[i] = to_real<Real>(rewards[i]);
    arena.at<int32_t>(arrays[kIds])[i] = ids[i];
    if (with_counts) arena.at<int64_t>(arrays[kCounts])[i] = counts[i];
  }
  const std::vector<unsigned char> before = snapshot(arena);
  const Real* r = arena.at<Real>(arrays[kRewards]);
  const int32_t* g = arena.at<int32_t>(arrays[kIds]);
  Real* adv = arena.at<Real>(arrays[kAdv]);
  const cgrpo::Status s = cgrpo::group_advantages(est, cgrpo::GroupAssignment{n, g, groups}, r,
                                                  arena.at<int64_t>(arrays[kCounts]), eps, adv, whiten_eps,
                                                  whiten_count_eps);
  // token_counts is an input only for the whitened estimators: drop it from the oracle otherwise.
  std::vector<ArrayDesc> checked = arrays;
  if (est != cgrpo::AdvantageEstimator::reinforce_pp_baseline && est != cgrpo::AdvantageEstimator::gdpo)
    checked[kCounts].present = false;
  check_call(s, arena, before, checked, "group_advantages");
  if (!s.ok()) return;
  const double eps_r = std::is_same<Real, float>::value ? 6e-8 : 1.2e-16;
  std::map<int32_t, std::vector<int64_t>> members;
  for (int64_t i = 0; i < n; ++i) {
    FUZZ_CHECK(std::isfinite(static_cast<double>(adv[i])), "group_advantages returned OK with A[%lld] = %g (R = %g, %s)",
               (long long)i, (double)adv[i], (double)r[i], cgrpo::to_string(est));
    members[g[i]].push_back(i);
  }
  if (est != cgrpo::AdvantageEstimator::grpo_no_std && est != cgrpo::AdvantageEstimator::rloo) return;
  for (const auto& m : members) {
    if (m.second.size() < 2) continue;
    long double sum = 0;  // advantages near DBL_MAX: their sum needs the wider type
    double scale = 0;
    for (int64_t i : m.second) {
      sum += static_cast<long double>(adv[i]);
      scale = std::max(scale, std::fabs(static_cast<double>(r[i])));
    }
    const double c = static_cast<double>(m.second.size());
    const double floor = 8 * c * static_cast<double>(std::numeric_limits<Real>::denorm_min());
    FUZZ_CHECK(fabsl(sum) <= 8 * c * c * eps_r * scale + floor, "group %d of %s sums to %Lg (rewards up to %g)", m.first,
               cgrpo::to_string(est), sum, scale);
  }
}

// gdpo_advantages: K components per response (rarely K < 1), weights (null, 1, any finite or
// rarely anything), the optional weighted_sum, verl's config or one drawn from its whole domain.
template <typename Real>
void fuzz_gdpo(FuzzedDataProvider& in) {
  const int64_t n = in.ConsumeIntegralInRange<int64_t>(0, 16);
  const int64_t groups = in.ConsumeIntegralInRange<int64_t>(0, 5);
  const int64_t K = in.ConsumeIntegralInRange<int>(0, 20) ? in.ConsumeIntegralInRange<int64_t>(1, 4)
                                                         : in.ConsumeIntegralInRange<int64_t>(-1, 0);
  const int64_t Kp = std::max<int64_t>(K, 0);
  cgrpo::AdvantageConfig config = cgrpo::verl_advantages(cgrpo::AdvantageEstimator::gdpo);
  if (in.ConsumeIntegralInRange<int>(0, 15) == 0)
    config.estimator = draw_enum<cgrpo::AdvantageEstimator>(in, cgrpo::kNumAdvantageEstimators, in.ConsumeBool());
  double* eps_fields[3] = {&config.eps, &config.whiten_eps, &config.whiten_count_eps};
  for (double* e : eps_fields)
    if (in.ConsumeIntegralInRange<int>(0, 5) == 0) *e = in.ConsumeBool() ? draw(in, {0, DBL_MAX, 0, 1}, nullptr) : anything(in);
  std::vector<double> comps(static_cast<size_t>(n * Kp)), weights(static_cast<size_t>(Kp));
  std::vector<int32_t> ids(n);
  std::vector<int64_t> counts(n);
  for (int64_t i = 0; i < n; ++i) {
    ids[i] = in.ConsumeIntegralInRange<int>(0, 30) ? in.ConsumeIntegralInRange<int32_t>(0, static_cast<int32_t>(std::max<int64_t>(groups - 1, 0)))
                                                  : in.ConsumeIntegralInRange<int32_t>(-1, static_cast<int32_t>(groups));
    for (int64_t k = 0; k < Kp; ++k) comps[i * Kp + k] = reward(in);
    counts[i] = in.ConsumeIntegralInRange<int>(0, 30) ? in.ConsumeIntegralInRange<int64_t>(0, 50)
                                                     : in.PickValueInArray<int64_t>({-1, INT64_MAX, INT64_MAX / 2, 1LL << 53});
  }
  for (double& w : weights)
    switch (in.ConsumeIntegralInRange<int>(0, 7)) {
      case 0: w = anything(in); break;
      case 1: case 2: w = in.ConsumeFloatingPointInRange<double>(-2, 2); break;
      default: w = 1.0; break;
    }
  const bool with_weights = in.ConsumeBool(), with_sum = in.ConsumeBool();
  enum { kComps, kIds, kCounts, kWeights, kAdv, kSum };
  std::vector<ArrayDesc> arrays = {array_desc<Real>("components", true, false, n * Kp),
                                   array_desc<int32_t>("group_ids", true, false, n),
                                   array_desc<int64_t>("token_counts", true, false, n),
                                   array_desc<double>("weights", with_weights, false, Kp),
                                   array_desc<Real>("advantages", true, true, n),
                                   array_desc<Real>("weighted_sum", with_sum, true, n)};
  Arena arena;
  place(in, arrays, arena, true);
  std::fill(arena.words.begin(), arena.words.end(), ~uint64_t{0});
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < Kp; ++k) arena.at<Real>(arrays[kComps])[i * Kp + k] = to_real<Real>(comps[i * Kp + k]);
    arena.at<int32_t>(arrays[kIds])[i] = ids[i];
    arena.at<int64_t>(arrays[kCounts])[i] = counts[i];
  }
  if (arrays[kWeights].present) std::memcpy(arena.at<double>(arrays[kWeights]), weights.data(), weights.size() * 8);
  const std::vector<unsigned char> before = snapshot(arena);
  // What the call reads, copied out before it (an output may be placed over them).
  std::vector<Real> column(n);
  for (int64_t i = 0; i < n && Kp == 1; ++i) column[i] = to_real<Real>(comps[i]);
  const Real* c = arena.at<Real>(arrays[kComps]);
  const int32_t* g = arena.at<int32_t>(arrays[kIds]);
  const int64_t* t = arena.at<int64_t>(arrays[kCounts]);
  Real* adv = arena.at<Real>(arrays[kAdv]);
  Real* sum = arena.at<Real>(arrays[kSum]);
  const cgrpo::Status s = cgrpo::gdpo_advantages(config, cgrpo::GroupAssignment{n, g, groups}, c, K,
                                                 arena.at<double>(arrays[kWeights]), t, adv, sum);
  check_call(s, arena, before, arrays, "gdpo_advantages");
  if (s.ok())
    for (int64_t i = 0; i < n; ++i) {
      FUZZ_CHECK(std::isfinite(static_cast<double>(adv[i])), "gdpo_advantages returned OK with A[%lld] = %g",
                 (long long)i, (double)adv[i]);
      FUZZ_CHECK(!sum || std::isfinite(static_cast<double>(sum[i])), "gdpo_advantages returned OK with S[%lld] = %g",
                 (long long)i, (double)sum[i]);
    }
  // One component of weight 1 is the single-rewards estimator (same inputs, its own output).
  if (Kp != 1 || (with_weights && weights[0] != 1.0) || config.estimator != cgrpo::AdvantageEstimator::gdpo) return;
  if (!s.ok() && says_overlap(s)) return;
  std::vector<Real> single(n, static_cast<Real>(-7.5));
  std::vector<int64_t> counts_copy(counts);
  const cgrpo::Status s1 = cgrpo::group_advantages(config, cgrpo::GroupAssignment{n, ids.data(), groups}, column.data(),
                                                   counts_copy.data(), single.data());
  FUZZ_CHECK(s1.ok() == s.ok(), "gdpo_advantages %s (%s), group_advantages(gdpo) %s (%s)", s.ok() ? "OK" : "failed",
             s.message, s1.ok() ? "OK" : "failed", s1.message);
  if (!s.ok()) return;
  for (int64_t i = 0; i < n; ++i)
    FUZZ_CHECK(same_bits(static_cast<double>(adv[i]), static_cast<double>(single[i])),
               "A[%lld]: gdpo_advantages %.17g, group_advantages(gdpo) %.17g", (long long)i, (double)adv[i],
               (double)single[i]);
}

// The config of aggregation_weights: `mode` for every term, the paper's convention (the default) or
// one drawn from its whole domain.
cgrpo::LossConfig weights_config(FuzzedDataProvider& in, cgrpo::Aggregation mode) {
  cgrpo::LossConfig c;
  c.aggregation.policy = c.aggregation.entropy = c.aggregation.kl = mode;
  if (in.ConsumeBool()) {
    cgrpo::AggregationConvention& conv = c.aggregation.convention;
    conv.token_mean_eps = in.ConsumeBool() ? 0.0 : draw(in, {0, DBL_MAX, 0, 1}, nullptr);
    conv.row_count_eps = in.ConsumeBool() ? 0.0 : draw(in, {0, DBL_MAX, 0, 1}, nullptr);
    conv.count_empty_rows = in.ConsumeBool();
  }
  return c;
}

// A packed or padded layout drawn with the number of rows it covers; offsets go into `offsets`.
cgrpo::SequenceLayout draw_layout(FuzzedDataProvider& in, std::vector<int64_t>& offsets, int64_t* rows) {
  const int64_t B = in.ConsumeIntegralInRange<int64_t>(0, 8);
  if (in.ConsumeIntegralInRange<int>(0, 3) == 0) {
    const int64_t L = in.ConsumeIntegralInRange<int64_t>(0, 6);
    *rows = B * L;
    return cgrpo::SequenceLayout::padded(B, L);
  }
  offsets.assign(1, 0);
  for (int64_t i = 0; i < B; ++i) offsets.push_back(offsets.back() + in.ConsumeIntegralInRange<int64_t>(0, 6));
  if (in.ConsumeIntegralInRange<int>(0, 15) == 0)  // malformed
    offsets[in.ConsumeIntegralInRange<size_t>(0, offsets.size() - 1)] += in.ConsumeIntegralInRange<int64_t>(-3, 3);
  *rows = std::max<int64_t>(0, *std::max_element(offsets.begin(), offsets.end()));
  return cgrpo::SequenceLayout::packed(B, nullptr);
}

template <typename Real>
void fuzz_weights(FuzzedDataProvider& in) {
  std::vector<int64_t> offsets;
  int64_t T = 0;
  cgrpo::SequenceLayout layout = draw_layout(in, offsets, &T);
  const auto mode = draw_enum<cgrpo::Aggregation>(in, cgrpo::kNumAggregations, in.ConsumeIntegralInRange<int>(0, 15) == 0);
  cgrpo::AggregationScale scale;
  double* sv[3] = {&scale.token_count, &scale.sequence_count, &scale.length};
  for (double* v : sv)
    if (in.ConsumeIntegralInRange<int>(0, 3) == 0) *v = in.ConsumeBool() ? draw(in, {0, DBL_MAX, 1, 1e6}, nullptr) : anything(in);
  std::vector<uint8_t> mask(T);
  for (auto& m : mask) m = in.ConsumeIntegralInRange<int>(0, 30) ? in.ConsumeIntegralInRange<uint8_t>(0, 1) : uint8_t{7};
  const int which = in.ConsumeIntegralInRange<int>(0, 2);  // weights, partials, broadcast
  enum { kMask, kOffsets, kOut, kPerResponse };
  std::vector<ArrayDesc> arrays = {array_desc<uint8_t>("mask", true, false, T),
                                   array_desc<int64_t>("offsets", !offsets.empty(), false, static_cast<int64_t>(offsets.size())),
                                   which == 1 ? array_desc<cgrpo::parallel::AggregationPartials>("partials", true, true, 1)
                                              : array_desc<Real>(which == 0 ? "weights" : "per_token", true, true, T),
                                   array_desc<Real>("per_response", which == 2, false, layout.num_sequences)};
  if (which == 2) arrays[kMask].present = false;  // broadcast reads no mask
  Arena arena;
  place(in, arrays, arena, true);
  std::fill(arena.words.begin(), arena.words.end(), ~uint64_t{0});
  if (arrays[kMask].present) std::memcpy(arena.at<uint8_t>(arrays[kMask]), mask.data(), T);
  if (arrays[kOffsets].present) std::memcpy(arena.at<int64_t>(arrays[kOffsets]), offsets.data(), offsets.size() * 8);
  std::vector<double> per_response(layout.num_sequences);
  for (int64_t i = 0; i < layout.num_sequences; ++i) {
    per_response[i] = reward(in);
    if (arrays[kPerResponse].present) arena.at<Real>(arrays[kPerResponse])[i] = to_real<Real>(per_response[i]);
  }
  if (arrays[kOffsets].present) layout.offsets = arena.at<int64_t>(arrays[kOffsets]);
  // Drawn last (inputs that end before it get the paper's convention and the policy term): the
  // term whose weights are formed (rarely an unknown one) and the config's convention.
  const int term_pick = in.ConsumeIntegralInRange<int>(0, 15);
  const auto term = static_cast<cgrpo::LossTerm>(term_pick < 13 ? term_pick % 3 : term_pick == 13 ? 3 : term_pick == 14 ? -1 : 0);
  const cgrpo::LossConfig config = weights_config(in, mode);
  const std::vector<unsigned char> before = snapshot(arena);
  const uint8_t* m = arena.at<uint8_t>(arrays[kMask]);

  if (which == 0) {
    Real* w = arena.at<Real>(arrays[kOut]);
    const cgrpo::Status s = cgrpo::aggregation_weights(config, term, layout, m, scale, w);
    check_call(s, arena, before, arrays, "aggregation_weights");
    if (!s.ok()) return;
    double sum = 0;
    for (int64_t t = 0; t < T; ++t) {
      const double x = static_cast<double>(w[t]);
      FUZZ_CHECK(std::isfinite(x) && x >= 0, "aggregation_weights (%s) returned OK with w[%lld] = %g (scale %g, %g, %g)",
                 cgrpo::to_string(mode), (long long)t, x, scale.token_count, scale.sequence_count, scale.length);
      FUZZ_CHECK(m[t] || x == 0, "a masked token has weight %g", x);
      sum += x;
    }
    const bool from_batch = (mode == cgrpo::Aggregation::token_mean && scale.token_count == 0) ||
                            (mode == cgrpo::Aggregation::seq_mean_token_mean && scale.sequence_count == 0);
    FUZZ_CHECK(!from_batch || sum <= 1 + 1e-5, "%s weights sum to %g", cgrpo::to_string(mode), sum);
  } else if (which == 1) {
    auto* p = arena.at<cgrpo::parallel::AggregationPartials>(arrays[kOut]);
    const cgrpo::Status s = cgrpo::parallel::aggregation_partials(layout, m, p);
    check_call(s, arena, before, arrays, "aggregation_partials");
    if (!s.ok()) return;
    int64_t valid = 0;
    for (int64_t t = 0; t < T; ++t) valid += m[t] ? 1 : 0;
    FUZZ_CHECK(p->token_count == static_cast<double>(valid) &&
                   p->sequence_count == static_cast<double>(layout.num_sequences) &&
                   p->max_length == static_cast<double>(layout.max_length()),
               "aggregation_partials: %g %g %g", p->token_count, p->sequence_count, p->max_length);
  } else {
    Real* out = arena.at<Real>(arrays[kOut]);
    const Real* pr = arena.at<Real>(arrays[kPerResponse]);
    const cgrpo::Status s = cgrpo::broadcast_to_tokens(layout, pr, out);
    check_call(s, arena, before, arrays, "broadcast_to_tokens");
    if (!s.ok()) return;
    for (int64_t i = 0; i < layout.num_sequences; ++i)
      for (int64_t t = layout.begin(i); t < layout.end(i); ++t)
        FUZZ_CHECK(same_bits(static_cast<double>(out[t]), static_cast<double>(pr[i])), "broadcast_to_tokens: row %lld", (long long)t);
  }
}

void fuzz_ids_from_offsets(FuzzedDataProvider& in) {
  const int64_t G = in.ConsumeIntegralInRange<int64_t>(0, 6);
  std::vector<int64_t> offsets(1, 0);
  for (int64_t g = 0; g < G; ++g) offsets.push_back(offsets.back() + in.ConsumeIntegralInRange<int64_t>(0, 5));
  if (in.ConsumeIntegralInRange<int>(0, 7) == 0)
    offsets[in.ConsumeIntegralInRange<size_t>(0, offsets.size() - 1)] += in.ConsumeIntegralInRange<int64_t>(-3, 3);
  const int64_t n = std::max<int64_t>(0, *std::max_element(offsets.begin(), offsets.end()));
  std::vector<ArrayDesc> arrays = {array_desc<int64_t>("group_offsets", true, false, G + 1),
                                   array_desc<int32_t>("group_ids", true, true, n)};
  Arena arena;
  place(in, arrays, arena, true);
  std::fill(arena.words.begin(), arena.words.end(), ~uint64_t{0});
  std::memcpy(arena.at<int64_t>(arrays[0]), offsets.data(), offsets.size() * 8);
  const std::vector<unsigned char> before = snapshot(arena);
  const int64_t* off = arena.at<int64_t>(arrays[0]);
  int32_t* ids = arena.at<int32_t>(arrays[1]);
  const cgrpo::Status s = cgrpo::group_ids_from_offsets(G, off, ids);
  if (std::getenv("FUZZ_DEBUG")) {
    std::fprintf(stderr, "G=%lld n=%lld offsets:", (long long)G, (long long)n);
    for (int64_t o : offsets) std::fprintf(stderr, " %lld", (long long)o);
    std::fprintf(stderr, "\noffsets at %zu (%zu bytes), ids at %zu (%zu bytes): %s\n", arrays[0].pos, arrays[0].extent(),
                 arrays[1].pos, arrays[1].extent(), s.message);
  }
  // Only the first offsets[G] ids are written: the oracle's output is that long.
  if (s.ok() && off[G] < n) arrays[1].row_elems = arrays[1].stride = off[G];
  if (G == 0) arrays[1].present = false;  // no group: nothing read, nothing written
  check_call(s, arena, before, arrays, "group_ids_from_offsets");
  if (!s.ok()) return;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t i = off[g]; i < off[g + 1]; ++i) FUZZ_CHECK(ids[i] == g, "group_ids_from_offsets: id %lld", (long long)i);
}

// Layouts and group counts whose sizes overflow: refused, nothing touched (unmapped addresses).
void fuzz_huge(FuzzedDataProvider& in) {
  const cgrpo::SequenceLayout layout = cgrpo::SequenceLayout::padded(huge_size(in), huge_size(in));
  int64_t rows = 0;
  const bool overflow = !layout.count_tokens(&rows).ok();
  // Each call must refuse when one of its arrays cannot exist; otherwise it would read them.
  const uintptr_t at1 = static_cast<uintptr_t>(1) << 56;
  const bool bad_mask = overflow || size_overflows(at1, 1, rows, rows, 1);
  const bool bad_doubles = overflow || size_overflows(at1 * 2, 1, rows, rows, 8);
  if (bad_mask || bad_doubles) {
    cgrpo::LossConfig config;
    config.aggregation.policy = cgrpo::Aggregation::seq_mean_token_mean;
    const cgrpo::Status a = cgrpo::aggregation_weights(config, cgrpo::LossTerm::policy, layout, nowhere<const uint8_t>(1),
                                                       cgrpo::AggregationScale{}, nowhere<double>(2));
    FUZZ_CHECK(!a.ok() && a.message[0], "aggregation_weights accepted %lld x %lld rows", (long long)layout.num_sequences,
               (long long)layout.padded_length);
  }
  if (overflow || size_overflows(at1 * 4, 1, rows, rows, 8) || size_overflows(at1 * 3, 1, layout.num_sequences, layout.num_sequences, 8)) {
    const cgrpo::Status b = cgrpo::broadcast_to_tokens(layout, nowhere<const double>(3), nowhere<double>(4));
    FUZZ_CHECK(!b.ok() && b.message[0], "broadcast_to_tokens accepted a huge layout");
  }
  if (overflow || size_overflows(at1 * 5, 1, rows, rows, 1)) {
    cgrpo::parallel::AggregationPartials p;
    const cgrpo::Status c = cgrpo::parallel::aggregation_partials(layout, nowhere<const uint8_t>(5), &p);
    FUZZ_CHECK(!c.ok() && c.message[0], "aggregation_partials accepted a huge layout");
  }
  const int64_t n = huge_size(in), groups = huge_size(in);
  if (n > 0 && size_overflows(static_cast<uintptr_t>(6) << 56, 1, n, n, 8)) {
    const cgrpo::Status d = cgrpo::group_advantages(cgrpo::AdvantageEstimator::grpo, cgrpo::GroupAssignment{n, nowhere<const int32_t>(6), groups},
                                                    nowhere<const double>(7), nowhere<const int64_t>(8), 1e-6, nowhere<double>(9));
    FUZZ_CHECK(!d.ok() && d.message[0], "group_advantages accepted %lld responses", (long long)n);
    const cgrpo::Status e = cgrpo::gdpo_advantages(cgrpo::verl_advantages(cgrpo::AdvantageEstimator::gdpo),
                                                   cgrpo::GroupAssignment{n, nowhere<const int32_t>(6), groups},
                                                   nowhere<const double>(7), 1, nullptr, nowhere<const int64_t>(8),
                                                   nowhere<double>(9));
    FUZZ_CHECK(!e.ok() && e.message[0], "gdpo_advantages accepted %lld responses", (long long)n);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Current current(data, size);
  FuzzedDataProvider in(data, size);
  try {
    const int which = in.ConsumeIntegralInRange<int>(0, 9);
    const bool dbl = in.ConsumeBool();
    if (which < 4) {
      if (dbl) fuzz_advantages<double>(in);
      else fuzz_advantages<float>(in);
    } else if (which == 4) {
      if (dbl) fuzz_gdpo<double>(in);
      else fuzz_gdpo<float>(in);
    } else if (which < 8) {
      if (dbl) fuzz_weights<double>(in);
      else fuzz_weights<float>(in);
    } else if (which == 8) {
      fuzz_ids_from_offsets(in);
    } else {
      fuzz_huge(in);
    }
  } catch (const fuzz::Broken&) {  // FUZZ_SURVEY: the input is saved, go on
  }
  return 0;
}
