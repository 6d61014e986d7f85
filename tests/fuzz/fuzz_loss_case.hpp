// tests/fuzz/fuzz_loss_case.hpp: one fused-loss batch drawn from a fuzz input (config, shapes,
// values, which arrays are given) and its arrays laid out in an arena, for the loss targets.
#pragma once

#include "fuzz_common.hpp"

#include <algorithm>
#include <type_traits>
#include <utility>

namespace fuzz {

// Garbage for the masked positions: a different stream per run.
struct Garbage {
  uint64_t state;
  uint64_t next() {
    state += 0x9E3779B97F4A7C15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double value() {
    static const double k[] = {kNaN, -kNaN, kInf, -kInf, DBL_MAX, -DBL_MAX, 0.0, 1e300, -5e-324};
    const uint64_t r = next();
    if (r % 3 == 0) {
      double d;
      const uint64_t bits = next();
      std::memcpy(&d, &bits, sizeof d);  // any bit pattern
      return d;
    }
    return k[r % (sizeof(k) / sizeof(k[0]))];
  }
};

template <typename Real>
Real to_real(double x) {
  if (std::is_same<Real, float>::value && std::isfinite(x) && std::fabs(x) > FLT_MAX) return static_cast<Real>(x > 0 ? kInf : -kInf);
  return static_cast<Real>(x);
}

// How a per-token input is drawn at valid tokens.
enum class Style { nominal, wide, hostile };

// A per-token value: nominal range [nlo, nhi], or the whole domain (finite mostly), or anything.
inline double token_value(FuzzedDataProvider& in, Style style, double nlo, double nhi, bool* nominal) {
  if (style == Style::nominal) return in.ConsumeFloatingPointInRange<double>(nlo, nhi);
  *nominal = false;
  if (style == Style::wide) {
    switch (in.ConsumeIntegralInRange<int>(0, 7)) {
      case 0: return any_magnitude(in);
      case 1: {
        const double s = special(in);
        return std::isfinite(s) ? s : 0.0;
      }
      default: return in.ConsumeFloatingPointInRange<double>(nlo * 100, nhi * 100 + 1);
    }
  }
  return anything(in);
}

inline Style draw_style(FuzzedDataProvider& in) {
  const int k = in.ConsumeIntegralInRange<int>(0, 15);
  return k < 10 ? Style::nominal : k < 15 ? Style::wide : Style::hostile;
}

enum Slot {
  kLogits, kTargets, kMask, kKinds, kAdv, kOld, kRef, kRollout, kSelection, kWpg, kWent, kWkl, kOffsets,
  kGrad, kLogp, kEntropy, kMetrics, kNumSlots
};

// One drawn case: everything but the masked garbage, which each run draws itself.
template <typename Real>
struct Case {
  ConfigDraw cfg;
  bool nominal = true;  // data and shapes nominal too
  int64_t T = 0, V = 1, row_stride = 0, grad_row_stride = 0;
  int64_t stride() const { return row_stride == 0 ? V : row_stride; }
  int64_t placed_stride() const { return std::max(stride(), V); }  // an invalid stride is refused, never used
  int64_t grad_stride() const { return grad_row_stride == 0 ? stride() : grad_row_stride; }
  int grad_mode = 1;  // 0 none, 1 separate, 2 in place
  cgrpo::SequenceLayout layout;
  std::vector<int64_t> offsets;
  std::vector<double> logits;  // [T][V]
  std::vector<int32_t> targets;
  std::vector<uint8_t> mask, kinds, selection;
  std::vector<double> adv, old_logp, ref_logp, rollout_logp, w_pg, w_ent, w_kl;
  bool has[kNumSlots] = {};
  cgrpo::AggregationScale scale;
};

inline void draw_logit_row(FuzzedDataProvider& in, int64_t V, int32_t target, double* z, bool* nominal) {
  Garbage prng{in.ConsumeIntegral<uint64_t>()};
  auto uniform = [&](double lo, double hi) { return lo + (hi - lo) * static_cast<double>(prng.next() >> 11) * 0x1p-53; };
  const int style = in.ConsumeIntegralInRange<int>(0, 15);
  if (style >= 7) {
    for (int64_t v = 0; v < V; ++v) z[v] = uniform(-8, 8);
    return;
  }
  *nominal = false;
  switch (style) {
    case 0:
      for (int64_t v = 0; v < V; ++v) z[v] = uniform(-1e4, 1e4);
      break;
    case 1: {  // one scale from the denormals to the largest values
      const double s = std::ldexp(1.0, in.ConsumeIntegralInRange<int>(-1074, 1023));
      for (int64_t v = 0; v < V; ++v) z[v] = uniform(-1, 1) * s;
      break;
    }
    case 2: {  // near one-hot, at the target or elsewhere
      const double big = in.ConsumeBool() ? 3.4e38 : std::ldexp(1.0, in.ConsumeIntegralInRange<int>(0, 1023));
      const int64_t hot = in.ConsumeBool() ? target : in.ConsumeIntegralInRange<int64_t>(0, V - 1);
      for (int64_t v = 0; v < V; ++v) z[v] = v == hot ? big : -big;
      break;
    }
    case 3: {
      const double c = anything(in);
      for (int64_t v = 0; v < V; ++v) z[v] = std::isnan(c) ? 0.0 : c;
      break;
    }
    case 4:  // a masked vocabulary: -inf entries
      for (int64_t v = 0; v < V; ++v) z[v] = (prng.next() & 3) == 0 ? -kInf : uniform(-8, 8);
      break;
    case 5: {  // both ends of float's range in one row
      for (int64_t v = 0; v < V; ++v) z[v] = (prng.next() & 1) ? 3.4e38 : -3.4e38;
      break;
    }
    default:  // hostile: a few special entries
      for (int64_t v = 0; v < V; ++v) z[v] = uniform(-8, 8);
      for (int k = in.ConsumeIntegralInRange<int>(1, 3); k > 0; --k) z[in.ConsumeIntegralInRange<int64_t>(0, V - 1)] = special(in);
      break;
  }
}

template <typename Real>
Case<Real> draw_case(FuzzedDataProvider& in) {
  Case<Real> k;
  k.cfg = draw_config(in);
  const cgrpo::LossConfig& c = k.cfg.config;
  bool* nom = &k.nominal;

  // Rows and layout.
  const int layout_kind = in.ConsumeIntegralInRange<int>(0, 11);
  const int64_t B = in.ConsumeIntegralInRange<int64_t>(0, 5);
  if (layout_kind < 7) {  // packed
    k.offsets.push_back(0);
    for (int64_t i = 0; i < B; ++i) k.offsets.push_back(k.offsets.back() + in.ConsumeIntegralInRange<int64_t>(0, 6));
    k.T = k.offsets.back();
    k.layout = cgrpo::SequenceLayout::packed(B, nullptr);
  } else if (layout_kind < 9) {  // padded
    const int64_t L = in.ConsumeIntegralInRange<int64_t>(0, 6);
    k.layout = cgrpo::SequenceLayout::padded(B, L);
    k.T = B * L;
  } else if (layout_kind < 11) {  // none
    k.T = in.ConsumeIntegralInRange<int64_t>(0, 12);
    if (may_need_layout(c)) *nom = false;
  } else {  // malformed: offsets that do not start at 0, decrease, or cover another T
    k.offsets.push_back(0);
    for (int64_t i = 0; i < B; ++i) k.offsets.push_back(k.offsets.back() + in.ConsumeIntegralInRange<int64_t>(0, 6));
    k.T = k.offsets.back();
    k.offsets[in.ConsumeIntegralInRange<size_t>(0, k.offsets.size() - 1)] += in.ConsumeIntegralInRange<int64_t>(-3, 3);
    k.layout = cgrpo::SequenceLayout::packed(B, nullptr);
    *nom = false;
  }
  {
    const int pick = in.ConsumeIntegralInRange<int>(0, 19);
    k.V = pick < 16 ? in.ConsumeIntegralInRange<int64_t>(1, 48)
                    : pick < 19 ? in.ConsumeIntegralInRange<int64_t>(49, 300) : in.ConsumeIntegralInRange<int64_t>(1000, 2200);
    if (k.T > 6 && k.V > 300) k.V = 300;
    if (k.T > 12 && k.V > 64) k.V = 64;
  }
  switch (in.ConsumeIntegralInRange<int>(0, 9)) {
    case 0: k.row_stride = k.V; break;
    case 1: case 2: case 3: k.row_stride = k.V + in.ConsumeIntegralInRange<int64_t>(1, 9); break;
    case 4:
      k.row_stride = in.ConsumeIntegralInRange<int64_t>(-2, k.V);  // < V: an error (0: V)
      if (k.row_stride != 0 && k.row_stride != k.V) *nom = false;
      break;
    default: k.row_stride = 0; break;
  }
  const int64_t T = k.T, V = k.V;

  // Outputs.
  k.grad_mode = in.ConsumeIntegralInRange<int>(0, 3) == 0 ? 0 : in.ConsumeIntegralInRange<int>(1, 2);
  switch (in.ConsumeIntegralInRange<int>(0, 7)) {
    case 0: k.grad_row_stride = k.stride(); break;
    case 1: k.grad_row_stride = V + in.ConsumeIntegralInRange<int64_t>(0, 9); break;
    case 2:
      k.grad_row_stride = in.ConsumeIntegralInRange<int64_t>(-2, V);
      if (k.grad_mode && k.grad_row_stride != 0 && k.grad_row_stride < V) *nom = false;
      break;
    default: k.grad_row_stride = 0; break;
  }
  if (k.grad_mode == 2 && k.grad_stride() != k.stride()) *nom = false;
  k.has[kGrad] = k.grad_mode == 1;
  k.has[kLogp] = in.ConsumeBool();
  k.has[kEntropy] = in.ConsumeBool();
  k.has[kMetrics] = true;

  // Which inputs are given.
  const bool bypass = c.bypass();
  auto given = [&](bool needed) {
    const bool g = in.ConsumeIntegralInRange<int>(0, 15) ? needed || in.ConsumeBool() : !needed;
    if (needed && !g) *nom = false;
    return g;
  };
  k.has[kLogits] = k.has[kTargets] = k.has[kMask] = k.has[kAdv] = true;
  if (in.ConsumeIntegralInRange<int>(0, 31) == 0) {  // a required array missing
    const Slot s = static_cast<Slot>(in.ConsumeIntegralInRange<int>(kLogits, kAdv));
    if (s != kKinds) {
      k.has[s] = false;
      *nom = false;
    }
  }
  k.has[kKinds] = in.ConsumeBool();
  k.has[kOld] = given(!bypass);
  k.has[kRef] = given(c.kl_on());
  k.has[kRollout] = given(c.needs_rollout_logp());
  k.has[kSelection] = (c.term().selection != cgrpo::BatchSelection::none || in.ConsumeIntegralInRange<int>(0, 7) == 0) &&
                      in.ConsumeBool();
  switch (in.ConsumeIntegralInRange<int>(0, 7)) {
    case 0: case 1: case 2: {  // every weight the config uses, and maybe the others
      k.has[kWpg] = true;
      k.has[kWent] = c.entropy.coef != 0 || in.ConsumeBool();
      k.has[kWkl] = c.kl_on() || in.ConsumeBool();
      // Rejection, the entropy mask or a term's own rule (geo_mean): the loss forms the weights.
      if (cgrpo::plan_passes(c, cgrpo::PassInputs{}).requires_computed_weights) *nom = false;
      break;
    }
    case 3: {  // some but not all: an error
      k.has[kWpg] = in.ConsumeBool();
      k.has[kWent] = in.ConsumeBool();
      k.has[kWkl] = in.ConsumeBool();
      if (k.has[kWpg] || k.has[kWent] || k.has[kWkl]) *nom = false;
      break;
    }
    default: break;  // none: the loss computes them
  }
  if (k.has[kWpg] && ((c.entropy.coef != 0 && !k.has[kWent]) || (c.kl_on() && !k.has[kWkl])))
    *nom = false;
  if (!k.has[kWpg] && (k.has[kWent] || k.has[kWkl])) *nom = false;
  if (!k.has[kWpg] && in.ConsumeIntegralInRange<int>(0, 5) == 0) {
    double* s[3] = {&k.scale.token_count, &k.scale.sequence_count, &k.scale.length};
    for (double* v : s) {
      if (!in.ConsumeBool()) continue;
      *v = in.ConsumeBool() ? in.ConsumeFloatingPointInRange<double>(1, 1e6) : anything(in);
      if (!(*v == 0 || (*v >= 1 && *v <= 1e6))) *nom = false;
    }
  }
  k.has[kOffsets] = !k.offsets.empty();

  // Values.
  k.targets.resize(T);
  k.mask.resize(T);
  k.kinds.resize(T);
  k.selection.resize(T);
  k.logits.assign(static_cast<size_t>(T * V), 0.0);
  const int mask_density = in.ConsumeIntegralInRange<int>(0, 4);  // 0: all masked ... 4: all valid
  for (int64_t t = 0; t < T; ++t) {
    k.targets[t] = in.ConsumeIntegralInRange<int>(0, 40) ? in.ConsumeIntegralInRange<int32_t>(0, static_cast<int32_t>(V - 1))
                                                        : (*nom = false, in.PickValueInArray({-1, static_cast<int32_t>(V), INT32_MIN, INT32_MAX}));
    k.mask[t] = in.ConsumeIntegralInRange<int>(0, 60) ? (in.ConsumeIntegralInRange<int>(0, 3) < mask_density ? 1 : 0)
                                                     : (*nom = false, in.PickValueInArray<uint8_t>({2, 255}));
    k.kinds[t] = in.ConsumeIntegralInRange<int>(0, 60) ? in.ConsumeIntegralInRange<uint8_t>(0, 1)
                                                      : (k.mask[t] ? (*nom = false, uint8_t{2}) : uint8_t{200});
    k.selection[t] = in.ConsumeIntegralInRange<int>(0, 60) ? in.ConsumeIntegralInRange<uint8_t>(0, 1)
                                                          : (k.mask[t] && k.has[kSelection] ? (*nom = false, uint8_t{2}) : uint8_t{7});
    draw_logit_row(in, V, k.targets[t], &k.logits[static_cast<size_t>(t * V)], nom);
  }
  const Style adv_style = draw_style(in), logp_style = draw_style(in), w_style = draw_style(in);
  const double adv_bound = in.ConsumeBool() ? 3.0 : 1e3;
  auto fill = [&](std::vector<double>& v, Style s, double lo, double hi) {
    v.assign(static_cast<size_t>(T), 0.0);
    for (int64_t t = 0; t < T; ++t)
      if (k.mask[t]) v[t] = token_value(in, s, lo, hi, nom);
  };
  fill(k.adv, adv_style, -adv_bound, adv_bound);
  fill(k.old_logp, logp_style, -30, 0);
  fill(k.ref_logp, logp_style, -30, 0);
  fill(k.rollout_logp, in.ConsumeBool() ? logp_style : draw_style(in), -30, 0);
  fill(k.w_pg, w_style, 0, 1);
  fill(k.w_ent, w_style, 0, 1);
  fill(k.w_kl, w_style, 0, 1);
  return k;
}

// The arrays of one call, in slot order.
template <typename Real>
std::vector<ArrayDesc> describe(const Case<Real>& k) {
  const int64_t T = k.T;
  std::vector<ArrayDesc> a(kNumSlots);
  a[kLogits] = rows_desc<Real>("logits", k.has[kLogits], false, T, k.V, k.placed_stride());
  a[kTargets] = array_desc<int32_t>("target_ids", k.has[kTargets], false, T);
  a[kMask] = array_desc<uint8_t>("mask", k.has[kMask], false, T);
  a[kKinds] = array_desc<uint8_t>("kinds", k.has[kKinds], false, T);
  a[kAdv] = array_desc<Real>("advantages", k.has[kAdv], false, T);
  a[kOld] = array_desc<Real>("old_logp", k.has[kOld], false, T);
  a[kRef] = array_desc<Real>("ref_logp", k.has[kRef], false, T);
  a[kRollout] = array_desc<Real>("rollout_logp", k.has[kRollout], false, T);
  a[kSelection] = array_desc<uint8_t>("selection", k.has[kSelection], false, T);
  a[kWpg] = array_desc<Real>("pg_weights", k.has[kWpg], false, T);
  a[kWent] = array_desc<Real>("entropy_weights", k.has[kWent], false, T);
  a[kWkl] = array_desc<Real>("kl_weights", k.has[kWkl], false, T);
  a[kOffsets] = array_desc<int64_t>("layout.offsets", k.has[kOffsets], false, static_cast<int64_t>(k.offsets.size()));
  a[kGrad] = rows_desc<Real>("grad_logits", k.has[kGrad], true, T, k.V, std::max<int64_t>(k.grad_stride(), k.V));
  if (k.has[kGrad] && k.grad_stride() < k.V) a[kGrad].present = false;  // an invalid stride: the call gets a dummy
  a[kLogp] = array_desc<Real>("logp", k.has[kLogp], true, T);
  a[kEntropy] = array_desc<Real>("entropy", k.has[kEntropy], true, T);
  a[kMetrics] = array_desc<cgrpo::LossMetrics>("metrics", true, true, 1);
  return a;
}

// One call's memory: the arena with every array written, the batch and outputs pointing into it.
template <typename Real>
struct Run {
  Arena arena;
  std::vector<ArrayDesc> arrays;
  cgrpo::PolicyLossBatch<Real> batch;
  cgrpo::PolicyLossOutputs<Real> out;
  std::vector<Real> dummy_grad;  // an invalid grad stride gets a pointer that must not be written
};

template <typename Real>
void build(const Case<Real>& k, const std::vector<ArrayDesc>& arrays, size_t arena_bytes, uint64_t garbage_seed,
           bool in_place, Run<Real>& run) {
  run.arrays = arrays;
  run.arena.bytes = arena_bytes;
  run.arena.words.assign(arena_bytes / 8 + 1, ~uint64_t{0});  // gaps and poison: all ones (NaN, mask 255)
  Garbage g{garbage_seed};
  Arena& A = run.arena;
  const int64_t T = k.T;
  std::vector<ArrayDesc>& d = run.arrays;
  // Inputs, in slot order (an input placed over another takes its bytes from the later one).
  if (d[kLogits].present)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t v = 0; v < k.V; ++v) A.at<Real>(d[kLogits])[t * k.placed_stride() + v] = to_real<Real>(k.logits[t * k.V + v]);
  for (int64_t t = 0; t < T; ++t) {
    const bool valid = k.mask[t] != 0;
    if (d[kTargets].present) A.at<int32_t>(d[kTargets])[t] = k.targets[t];
    if (d[kMask].present) A.at<uint8_t>(d[kMask])[t] = k.mask[t];
    if (d[kKinds].present) A.at<uint8_t>(d[kKinds])[t] = valid ? k.kinds[t] : static_cast<uint8_t>(g.next());
    const std::pair<Slot, const std::vector<double>*> reals[] = {{kAdv, &k.adv},     {kOld, &k.old_logp},
                                                                 {kRef, &k.ref_logp}, {kRollout, &k.rollout_logp},
                                                                 {kWpg, &k.w_pg},     {kWent, &k.w_ent},
                                                                 {kWkl, &k.w_kl}};
    for (const auto& r : reals)
      if (d[r.first].present) A.at<Real>(d[r.first])[t] = to_real<Real>(valid ? (*r.second)[t] : g.value());
    if (d[kSelection].present) A.at<uint8_t>(d[kSelection])[t] = valid ? k.selection[t] : static_cast<uint8_t>(g.next());
  }
  if (d[kOffsets].present) std::memcpy(A.base() + d[kOffsets].pos, k.offsets.data(), k.offsets.size() * sizeof(int64_t));

  cgrpo::PolicyLossBatch<Real>& b = run.batch;
  b = cgrpo::PolicyLossBatch<Real>{};
  b.logits = A.at<Real>(d[kLogits]);
  b.num_tokens = T;
  b.vocab_size = k.V;
  b.row_stride = k.row_stride;
  b.target_ids = A.at<int32_t>(d[kTargets]);
  b.mask = A.at<uint8_t>(d[kMask]);
  b.kinds = A.at<uint8_t>(d[kKinds]);
  b.advantages = A.at<Real>(d[kAdv]);
  b.old_logp = A.at<Real>(d[kOld]);
  b.ref_logp = A.at<Real>(d[kRef]);
  b.rollout_logp = A.at<Real>(d[kRollout]);
  b.selection = A.at<uint8_t>(d[kSelection]);
  b.pg_weights = A.at<Real>(d[kWpg]);
  b.entropy_weights = A.at<Real>(d[kWent]);
  b.kl_weights = A.at<Real>(d[kWkl]);
  b.scale = k.scale;
  b.layout = k.layout;
  if (d[kOffsets].present) b.layout.offsets = A.at<int64_t>(d[kOffsets]);

  cgrpo::PolicyLossOutputs<Real>& o = run.out;
  o = cgrpo::PolicyLossOutputs<Real>{};
  if (in_place) {
    o.grad_logits = const_cast<Real*>(b.logits);
  } else if (d[kGrad].present) {
    o.grad_logits = A.at<Real>(d[kGrad]);
  } else if (k.has[kGrad] && T > 0) {
    run.dummy_grad.assign(1, Real(0));  // grad stride < V: the call must refuse before writing
    o.grad_logits = run.dummy_grad.data();
  }
  o.grad_row_stride = k.grad_row_stride;
  o.logp = A.at<Real>(d[kLogp]);
  o.entropy = A.at<Real>(d[kEntropy]);
  o.metrics = A.at<cgrpo::LossMetrics>(d[kMetrics]);
}

// The two workspaces of the loss targets (the second splits rows finer than the cores: the bits
// must not change). A call sets the thread count it drew (ConfigDraw::num_threads) first.
inline cgrpo::cpu::Workspace& workspace(int which) {
  static cgrpo::cpu::Workspace ws[2];
  static bool init = false;
  if (!init) {
    ws[1].pool.set_max_threads(4);
    init = true;
  }
  return ws[which];
}

inline cgrpo::cpu::Workspace& workspace(int which, int num_threads) {
  cgrpo::cpu::Workspace& ws = workspace(which);
  ws.num_threads = num_threads;
  return ws;
}

// FUZZ_DEBUG=1 (replaying one input): what the input drew.
template <typename Real>
void debug_print(const Case<Real>& k, const std::vector<ArrayDesc>& arrays, int moved, const cgrpo::Status& s) {
  const cgrpo::LossConfig& c = k.cfg.config;
  std::fprintf(stderr, "%s T=%lld V=%lld row_stride=%lld grad_mode=%d grad_row_stride=%lld moved=%d nominal=%d/%d\n",
               sizeof(Real) == 4 ? "float" : "double", (long long)k.T, (long long)k.V, (long long)k.row_stride,
               k.grad_mode, (long long)k.grad_row_stride, moved, (int)k.nominal, (int)k.cfg.nominal);
  const cgrpo::PolicyConfig& p = c.policy;
  const cgrpo::RatioConfig& r = c.ratio;
  const cgrpo::AggregationConfig& g = c.aggregation;
  const cgrpo::OffPolicyConfig& off = c.off_policy;
  std::fprintf(stderr,
               "config: policy.loss %s ratio.level %s clip [%g, %g] dual %d c %g log ratio [%g, %g] cispo_cap %g "
               "sapo %g/%g kl_cov %g/%g clip_cov %g [%g, %g] vespo %g/%g/%g/%g gamma %g entropy.coef %g kl %s coef %g "
               "st %d k3clamp %d times_r %d aggregation %s/%s/%s eps %g/%g/%d rollout %s/%s thr %g rej %d sampler %s "
               "[%g, %g] opsm %g quantile %g/%d metrics eps %g tau %g workspace.num_threads %d advantage %s\n",
               cgrpo::to_string(p.loss), cgrpo::to_string(r.level), r.clip_eps_low, r.clip_eps_high, (int)r.dual_clip,
               r.dual_clip_c, r.log_ratio_min, r.log_ratio_max, p.cispo_cap.ratio_cap, p.sapo.tau_pos, p.sapo.tau_neg,
               p.kl_cov.ratio, p.kl_cov.coef, p.clip_cov.ratio, p.clip_cov.lower, p.clip_cov.upper, p.vespo.k_pos,
               p.vespo.lambda_pos, p.vespo.k_neg, p.vespo.lambda_neg, p.refinement_gamma, c.entropy.coef,
               cgrpo::to_string(c.kl.estimator), c.kl.coef, (int)c.kl.straight_through, (int)c.kl.k3_clamp,
               (int)c.kl.times_ratio, cgrpo::to_string(g.policy), cgrpo::to_string(g.entropy), cgrpo::to_string(g.kl),
               g.convention.token_mean_eps, g.convention.row_count_eps, (int)g.convention.count_empty_rows,
               cgrpo::to_string(off.rollout.mode), cgrpo::to_string(off.rollout.is_level), off.rollout.is_threshold,
               off.rollout.num_rejection_options, cgrpo::to_string(off.sampler.mode), off.sampler.min, off.sampler.max,
               off.opsm_threshold, c.entropy_mask.top_quantile, (int)c.entropy_mask.count_all_tokens, c.metrics.mean_eps,
               c.temperature, k.cfg.num_threads, cgrpo::to_string(k.cfg.advantage.estimator));
  for (const auto& a : arrays)
    if (a.present)
      std::fprintf(stderr, "  %-16s %s pos %6zu extent %6zu rows %lld stride %lld\n", a.name, a.output ? "out" : "in ",
                   a.pos, a.extent(), (long long)a.rows, (long long)a.stride);
  for (int64_t t = 0; t < k.T; ++t)
    std::fprintf(stderr, "  t=%lld y=%d m=%d kind=%d A=%g old=%g ref=%g roll=%g w=%g/%g/%g z[y]=%g\n", (long long)t,
                 k.targets[t], k.mask[t], k.kinds[t], k.adv[t], k.old_logp[t], k.ref_logp[t], k.rollout_logp[t],
                 k.w_pg[t], k.w_ent[t], k.w_kl[t],
                 k.targets[t] >= 0 && k.targets[t] < k.V ? k.logits[t * k.V + k.targets[t]] : kNaN);
  if (std::atoi(std::getenv("FUZZ_DEBUG")) >= 2)  // FUZZ_DEBUG=2: every logit too
    for (int64_t t = 0; t < k.T; ++t) {
      std::fprintf(stderr, "  z[%lld]:", (long long)t);
      for (int64_t v = 0; v < k.V; ++v) std::fprintf(stderr, " %a", k.logits[t * k.V + v]);
      std::fprintf(stderr, "\n");
    }
  std::fprintf(stderr, "status: %s %s\n", cgrpo::status_code_name(s.code), s.message);
}

}  // namespace fuzz
