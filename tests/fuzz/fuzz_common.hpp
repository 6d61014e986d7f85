// tests/fuzz/fuzz_common.hpp: what the libFuzzer targets share: values drawn from each input's
// whole domain, an arena that places a call's arrays apart or overlapping, and the invariants.
#pragma once

#include <fuzzer/FuzzedDataProvider.h>

#include <cgrpo/cgrpo.hpp>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

// A broken invariant: say which and where, then abort (libFuzzer writes the input as crash-*).
// With FUZZ_SURVEY=<dir> (long exploration runs), the input is written to <dir>/<file>-<line>-<n>
// instead and the run goes on with the next input, so that one known, open finding does not
// stop the search for others; each check site keeps its first 20 inputs.
#define FUZZ_CHECK(cond, ...)                                                                      \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      std::fprintf(stderr, "\nFUZZ INVARIANT BROKEN at %s:%d: %s\n  ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                                           \
      std::fprintf(stderr, "\n");                                                                  \
      ::fuzz::broken(__FILE__, __LINE__);                                                          \
    }                                                                                              \
  } while (0)

namespace fuzz {

// The input being run (set by each target's entry point through Current) and the survey mode.
struct Survey {
  const uint8_t* data = nullptr;
  size_t size = 0;
  int counts[4096] = {};
};
inline Survey& survey() {
  static Survey s;
  return s;
}
struct Current {  // in LLVMFuzzerTestOneInput: Current current(data, size);
  Current(const uint8_t* data, size_t size) {
    survey().data = data;
    survey().size = size;
  }
};
struct Broken {};  // thrown in survey mode, caught by the target's entry point

[[noreturn]] inline void broken(const char* file, int line) {
  const char* dir = std::getenv("FUZZ_SURVEY");
  if (!dir) std::abort();
  Survey& s = survey();
  int& n = s.counts[line & 4095];
  if (n < 20) {
    const char* base = std::strrchr(file, '/');
    char path[512];
    std::snprintf(path, sizeof path, "%s/%s-%d-%d", dir, base ? base + 1 : file, line, n);
    if (FILE* f = std::fopen(path, "wb")) {
      std::fwrite(s.data, 1, s.size, f);
      std::fclose(f);
    }
  }
  ++n;
  throw Broken{};
}

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---------------------------------------------------------------------------------------------
// Values. Every draw can reach the boundaries of its domain, the denormals, DBL_MAX and (where
// the domain holds them) the infinities; `anything` also gives NaN and values of either sign.

inline double special(FuzzedDataProvider& in) {
  static const double k[] = {0.0,     -0.0,    5e-324,  -5e-324, 2.2250738585072014e-308, 1e-300, -1e-300,
                             1.4e-45, 1.2e-38, 1e-30,   1e-8,    -1e-8,   1e-4,   0.5,    1 - 0x1p-53,
                             1.0,     -1.0,    1 + 0x1p-52, 2.0, 3.0, -3.0, 20.0, -20.0, 88.7, 709.8, -745.2,
                             1e4,     -1e4,    1e10,    3.4028234663852886e38, -3.4028234663852886e38, 1e300,
                             -1e300,  DBL_MAX, -DBL_MAX, kInf, -kInf, kNaN};
  return k[in.ConsumeIntegralInRange<size_t>(0, sizeof(k) / sizeof(k[0]) - 1)];
}

// |x| log-uniform over every exponent of double, either sign.
inline double any_magnitude(FuzzedDataProvider& in) {
  const int e = in.ConsumeIntegralInRange<int>(-1074, 1023);
  const double x = std::ldexp(1.0 + in.ConsumeProbability<double>(), e);
  const double m = std::isfinite(x) ? x : DBL_MAX;
  return in.ConsumeBool() ? -m : m;
}

// Any double at all, NaN and the infinities included.
inline double anything(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0: return special(in);
    case 1: return any_magnitude(in);
    default: return in.ConsumeFloatingPointInRange<double>(-10, 10);
  }
}

// A closed range [lo, hi] (either end may be infinite) with a nominal part [nlo, nhi] inside it
// where every call must succeed.
struct Range {
  double lo, hi, nlo, nhi;
  bool contains(double x) const { return x >= lo && x <= hi; }
  bool nominal(double x) const { return x >= nlo && x <= nhi; }
};

// A draw from r: its ends and their neighbours, special values and magnitudes that fall inside,
// or a uniform value in the nominal part. `*nominal` is cleared when the value leaves it.
inline double draw(FuzzedDataProvider& in, const Range& r, bool* nominal) {
  double x = 0;
  switch (in.ConsumeIntegralInRange<int>(0, 11)) {
    case 0: x = r.lo; break;
    case 1: x = r.hi; break;
    case 2: x = std::nextafter(r.lo, r.hi); break;
    case 3: x = std::nextafter(r.hi, r.lo); break;
    case 4: x = special(in); break;
    case 5: x = any_magnitude(in); break;
    default: x = in.ConsumeFloatingPointInRange<double>(r.nlo, std::max(r.nlo, r.nhi)); break;
  }
  if (!r.contains(x)) x = in.ConsumeFloatingPointInRange<double>(r.nlo, std::max(r.nlo, r.nhi));
  if (nominal && !r.nominal(x)) *nominal = false;
  return x;
}

// ---------------------------------------------------------------------------------------------
// The config: every field from its whole valid domain (config.hpp), with a few fields broken on
// purpose (any value, NaN included) in a share of the inputs.

struct ConfigDraw {
  cgrpo::LossConfig config;
  cgrpo::AdvantageConfig advantage;  // the recipe's advantage settings (assemble_groups reads them)
  int num_threads = 1;               // the workspace's thread count (cpu::Workspace::num_threads)
  bool nominal = true;  // every field inside its nominal range (a call on nominal data must succeed)
  cgrpo::Recipe recipe() const { return cgrpo::Recipe{config, advantage}; }
};

class FieldBreaker {
 public:
  explicit FieldBreaker(FuzzedDataProvider& in) {
    const int n = in.ConsumeIntegralInRange<int>(0, 7) == 0 ? in.ConsumeIntegralInRange<int>(1, 2) : 0;
    for (int i = 0; i < n; ++i) broken_[i] = in.ConsumeIntegralInRange<int>(0, 63);
  }
  // Whether field `id` gets an arbitrary value.
  bool broken(int id) const { return id == broken_[0] || id == broken_[1]; }

 private:
  int broken_[2] = {-1, -1};
};

// A value of an enum with `count` entries (the library's table: cgrpo::kNumPolicyLosses, ...), or
// one outside it when broken.
template <typename E>
E draw_enum(FuzzedDataProvider& in, int count, bool broken) {
  if (broken) {
    static const int bad[] = {-1, count, count + 1, 99, INT32_MIN, INT32_MAX};
    return static_cast<E>(bad[in.ConsumeIntegralInRange<int>(0, 5)]);
  }
  return static_cast<E>(in.ConsumeIntegralInRange<int>(0, count - 1));
}

// The policy terms whose traits say `bypass` (allowed in verl's bypass mode), in enum order.
inline std::vector<cgrpo::PolicyLoss> bypass_terms() {
  std::vector<cgrpo::PolicyLoss> terms;
  for (int i = 0; i < cgrpo::kNumPolicyLosses; ++i)
    if (cgrpo::traits_of(static_cast<cgrpo::PolicyLoss>(i)).bypass) terms.push_back(static_cast<cgrpo::PolicyLoss>(i));
  return terms;
}

// Whether the layout is read for some choice of weights (computed by the loss or given).
inline bool may_need_layout(const cgrpo::LossConfig& c) {
  cgrpo::PassInputs computed, caller;
  caller.computed_weights = false;
  return cgrpo::plan_passes(c, computed).needs_layout || cgrpo::plan_passes(c, caller).needs_layout;
}

inline ConfigDraw draw_config(FuzzedDataProvider& in) {
  using namespace cgrpo;
  ConfigDraw d;
  LossConfig& c = d.config;
  bool* nom = &d.nominal;
  const FieldBreaker brk(in);
  int id = 0;
  // A field drawn from its valid range, or anything when broken.
  auto field = [&](const Range& r) {
    const bool b = brk.broken(id++);
    if (b) {
      d.nominal = false;
      return anything(in);
    }
    return draw(in, r, nom);
  };
  auto flag = [&]() {
    const bool b = in.ConsumeBool();
    ++id;
    return b;
  };

  d.advantage.estimator = draw_enum<AdvantageEstimator>(in, kNumAdvantageEstimators, brk.broken(id++));
  c.policy.loss = draw_enum<PolicyLoss>(in, kNumPolicyLosses, brk.broken(id++));
  c.ratio.level = in.ConsumeIntegralInRange<int>(0, 2) ? RatioLevel::token
                                                       : draw_enum<RatioLevel>(in, kNumRatioLevels, brk.broken(id));
  ++id;
  // geo_mean's band bounds the log ratio and cispo's may open below: clip_eps_low any finite >= 0.
  const bool low_unbounded = c.term().clip_low_unbounded;
  c.ratio.clip_eps_low = field(low_unbounded ? Range{0, DBL_MAX, 0, 2} : Range{0, std::nextafter(1.0, 0.0), 0, 0.9});
  c.ratio.clip_eps_high = field({0, DBL_MAX, 0, 10});
  c.ratio.dual_clip = c.term().dual_clip ? flag() : (brk.broken(id++) && in.ConsumeBool());
  c.ratio.dual_clip_c = field({std::nextafter(1.0, 2.0), DBL_MAX, 1.01, 100});
  c.ratio.log_ratio_min = field({-kInf, 0, -20, 0});
  c.ratio.log_ratio_max = field({0, kInf, 0, 20});
  PolicyConfig& p = c.policy;
  p.cispo_cap.ratio_cap = field({5e-324, DBL_MAX, 0.01, 100});
  p.sapo.tau_pos = field({5e-324, DBL_MAX, 0.01, 100});
  p.sapo.tau_neg = field({5e-324, DBL_MAX, 0.01, 100});
  // One draw for both terms' selected fraction: only the term in use reads (and checks) its own.
  p.kl_cov.ratio = p.clip_cov.ratio = field({5e-324, 1, 1e-4, 1});
  p.kl_cov.coef = field({-DBL_MAX, DBL_MAX, -10, 10});
  p.clip_cov.lower = field({-kInf, kInf, -1e3, 1e3});
  p.clip_cov.upper = field({-kInf, kInf, -1e3, 1e3});
  if (!(p.clip_cov.lower < p.clip_cov.upper) && !brk.broken(id++)) std::swap(p.clip_cov.lower, p.clip_cov.upper);
  if (p.clip_cov.lower == p.clip_cov.upper) p.clip_cov.upper = kInf;
  p.clip_cov.seed = in.ConsumeIntegral<uint64_t>();
  p.vespo.k_pos = field({-DBL_MAX, DBL_MAX, -1, 1});
  p.vespo.lambda_pos = field({-DBL_MAX, DBL_MAX, 0, 5});
  p.vespo.k_neg = field({-DBL_MAX, DBL_MAX, -1, 1});
  p.vespo.lambda_neg = field({-DBL_MAX, DBL_MAX, 0, 5});
  p.refinement_gamma = field({5e-324, DBL_MAX, 1e-3, 10});
  c.entropy.coef = in.ConsumeIntegralInRange<int>(0, 3) ? field({-DBL_MAX, DBL_MAX, -10, 10}) : 0.0;
  c.kl.estimator = draw_enum<KlEstimator>(in, kNumKlEstimators, brk.broken(id++));
  c.kl.coef = !c.kl_on() && !brk.broken(id++) ? 0.0 : field({-DBL_MAX, DBL_MAX, -10, 10});
  if (c.kl_on() || brk.broken(id++)) {
    c.kl.straight_through = in.ConsumeBool();
    c.kl.k3_clamp = in.ConsumeBool();
    c.kl.times_ratio = (c.defines_ratio() || brk.broken(id++)) && in.ConsumeBool();
  }
  c.aggregation.policy = draw_enum<Aggregation>(in, kNumAggregations, brk.broken(id++));
  c.aggregation.entropy = draw_enum<Aggregation>(in, kNumAggregations, brk.broken(id++));
  c.aggregation.kl = draw_enum<Aggregation>(in, kNumAggregations, brk.broken(id++));
  AggregationConvention& conv = c.aggregation.convention;
  conv.token_mean_eps = in.ConsumeBool() ? 0.0 : field({0, DBL_MAX, 0, 1});
  conv.row_count_eps = in.ConsumeBool() ? 0.0 : field({0, DBL_MAX, 0, 1});
  conv.count_empty_rows = in.ConsumeBool();

  // verl's rollout correction (needs rollout_logp) or TRL's sampler correction, OPSM, the entropy mask.
  switch (in.ConsumeIntegralInRange<int>(0, 5)) {
    case 0:
    case 1: {
      RolloutCorrectionConfig& r = c.off_policy.rollout;
      r.mode = static_cast<RolloutCorrectionMode>(in.ConsumeIntegralInRange<int>(1, kNumRolloutModes - 1));  // not none
      if (brk.broken(id++)) r.mode = draw_enum<RolloutCorrectionMode>(in, kNumRolloutModes, true);
      if (r.mode == RolloutCorrectionMode::bypass && !brk.broken(id++)) {
        // A term verl's bypass mode runs (ppo_clip or reinforce), picked from the last: the corpus's byte order.
        const std::vector<PolicyLoss> terms = bypass_terms();
        c.policy.loss = terms[terms.size() - 1 - in.ConsumeIntegralInRange<size_t>(0, terms.size() - 1)];
      }
      r.is_level = draw_enum<RolloutIsLevel>(in, kNumRolloutIsLevels, brk.broken(id++));
      r.is_threshold = field({5e-324, kInf, 0.1, 100});
      constexpr int kMax = RolloutCorrectionConfig::kMaxRejectionOptions;
      r.num_rejection_options = brk.broken(id++) ? in.ConsumeIntegralInRange<int>(-2, 2 * kMax)
                                                 : in.ConsumeIntegralInRange<int>(0, kMax);
      for (auto& o : r.rejection) {
        o.statistic = draw_enum<RejectionStatistic>(in, kNumRejectionStatistics, brk.broken(id++));
        o.upper = field({5e-324, DBL_MAX, 1e-3, 1e3});
        o.lower = cgrpo::rejection_is_k1(o.statistic) && in.ConsumeBool()
                      ? field({5e-324, o.upper, std::min(1e-3, o.upper), o.upper})
                      : (brk.broken(id++) ? anything(in) : 0.0);
      }
      break;
    }
    case 2: {
      SamplerCorrectionConfig& s = c.off_policy.sampler;
      s.mode = draw_enum<SamplerCorrectionMode>(in, kNumSamplerModes, brk.broken(id++));
      if (s.mode == SamplerCorrectionMode::none) s.mode = SamplerCorrectionMode::token_truncate;
      s.min = in.ConsumeBool() ? 0.0 : field({0, DBL_MAX, 0, 1});
      s.max = in.ConsumeBool() ? kInf : field({s.min, kInf, std::min(s.min + 1, DBL_MAX), 100});
      if (!(s.min <= s.max) && !brk.broken(id++)) std::swap(s.min, s.max);
      break;
    }
    default: break;
  }
  // A bypass-only term (reinforce) outside bypass mode: its bypass-free twin (gpg), unless broken.
  if (c.term().bypass_only && !c.bypass() && !brk.broken(id++)) c.policy.loss = PolicyLoss::gpg;
  if (in.ConsumeIntegralInRange<int>(0, 3) == 0) c.off_policy.opsm_threshold = field({-kInf, kInf, 0, 100});
  if (in.ConsumeIntegralInRange<int>(0, 3) == 0) c.entropy_mask.top_quantile = field({5e-324, 1, 0.01, 1});
  c.entropy_mask.count_all_tokens = in.ConsumeBool();
  c.metrics.mean_eps = in.ConsumeBool() ? 0.0 : field({0, DBL_MAX, 0, 1});
  c.temperature = in.ConsumeBool() ? 1.0 : field({5e-324, DBL_MAX, 0.5, 2});
  {
    const int pick = in.ConsumeIntegralInRange<int>(0, 15);
    d.num_threads = pick < 12 ? 1 + pick % 4 : pick == 12 ? 64 : pick == 13 ? (1 << 20) : pick == 14 ? 0 : -3;
    if (d.num_threads < 1) d.nominal = false;
  }
  // A term or ratio level that fixes its policy aggregation (sapo, geo_mean, verl's GSPO level:
  // traits) refuses any other mode: it gets seq-mean-token-mean unless broken, so that the corpus's
  // inputs of those terms still reach the loss. Last, so that no other field's id moves.
  if ((c.term().fixed_aggregation || c.level().fixes_aggregation) && !brk.broken(id++))
    c.aggregation.policy = Aggregation::seq_mean_token_mean;
  return d;
}

// ---------------------------------------------------------------------------------------------
// The arena: every array of a call lives in one block, at positions that either keep the arrays
// apart or make one output share bytes with another array (same start, one element at either
// end, touching, inside another array's row gaps, any offset).

struct ArrayDesc {
  const char* name = "";
  bool present = false;
  bool output = false;
  size_t elem = 1, align = 1;
  int64_t rows = 1, row_elems = 0, stride = 0;  // stride in elements (>= row_elems)
  size_t pos = 0;                                // byte offset in the arena
  size_t extent() const {
    if (!present || rows <= 0 || row_elems <= 0) return 0;
    return static_cast<size_t>((rows - 1) * stride + row_elems) * elem;
  }
  size_t row_bytes() const { return static_cast<size_t>(row_elems) * elem; }
  size_t stride_bytes() const { return static_cast<size_t>(stride) * elem; }
};

template <typename T>
ArrayDesc array_desc(const char* name, bool present, bool output, int64_t n) {
  ArrayDesc a;
  a.name = name;
  a.present = present && n > 0;
  a.output = output;
  a.elem = sizeof(T);
  a.align = alignof(T);
  a.rows = 1;
  a.row_elems = n;
  a.stride = n;
  return a;
}

template <typename T>
ArrayDesc rows_desc(const char* name, bool present, bool output, int64_t rows, int64_t row_elems, int64_t stride) {
  ArrayDesc a = array_desc<T>(name, present, output, row_elems);
  a.present = present && rows > 0 && row_elems > 0;
  a.rows = rows;
  a.stride = stride;
  return a;
}

// Whether two arrays share a byte: every row of one against every row of the other (the
// library's check does it in O(1) or O(rows); this is the obvious version).
inline bool share_bytes(const ArrayDesc& a, const ArrayDesc& b) {
  if (!a.present || !b.present || a.extent() == 0 || b.extent() == 0) return false;
  for (int64_t i = 0; i < a.rows; ++i) {
    const size_t a0 = a.pos + static_cast<size_t>(i) * a.stride_bytes(), a1 = a0 + a.row_bytes();
    for (int64_t j = 0; j < b.rows; ++j) {
      const size_t b0 = b.pos + static_cast<size_t>(j) * b.stride_bytes(), b1 = b0 + b.row_bytes();
      if (a0 < b1 && b0 < a1) return true;
    }
  }
  return false;
}

inline bool same_array(const ArrayDesc& a, const ArrayDesc& b) {
  return a.present && b.present && a.pos == b.pos && a.rows == b.rows && a.row_bytes() == b.row_bytes() &&
         (a.rows == 1 || a.stride_bytes() == b.stride_bytes());
}

inline size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }
inline size_t align_down(size_t x, size_t a) { return x / a * a; }

struct Arena {
  std::vector<uint64_t> words;  // 8-byte aligned storage
  size_t bytes = 0;
  unsigned char* base() { return reinterpret_cast<unsigned char*>(words.data()); }
  template <typename T>
  T* at(const ArrayDesc& a) {
    return a.present ? reinterpret_cast<T*>(base() + a.pos) : nullptr;
  }
};

// Places the arrays apart, then moves up to two outputs onto other arrays as the input asks.
// Returns the number of overlaps it tried to make.
inline int place(FuzzedDataProvider& in, std::vector<ArrayDesc>& arrays, Arena& arena, bool allow_overlap) {
  size_t max_extent = 0;
  for (const auto& a : arrays) max_extent = std::max(max_extent, a.extent());
  const size_t margin = align_up(max_extent + 64, 64);
  size_t cursor = margin;
  for (auto& a : arrays) {
    a.pos = cursor;
    cursor = align_up(cursor + a.extent() + margin, 64);
  }
  const size_t total = cursor + margin;
  int moved = 0;
  const int wanted = allow_overlap ? (in.ConsumeIntegralInRange<int>(0, 3) == 0 ? in.ConsumeIntegralInRange<int>(1, 2) : 0) : 0;
  for (int k = 0; k < wanted; ++k) {
    std::vector<size_t> outs, others;
    for (size_t i = 0; i < arrays.size(); ++i) {
      if (!arrays[i].present) continue;
      if (arrays[i].output) outs.push_back(i);
      others.push_back(i);
    }
    if (outs.empty() || others.size() < 2) break;
    ArrayDesc& o = arrays[outs[in.ConsumeIntegralInRange<size_t>(0, outs.size() - 1)]];
    const ArrayDesc* pp = &arrays[others[in.ConsumeIntegralInRange<size_t>(0, others.size() - 1)]];
    if (pp == &o) continue;
    const ArrayDesc& p = *pp;
    const size_t oe = o.extent(), pe = p.extent();
    size_t pos = p.pos;
    switch (in.ConsumeIntegralInRange<int>(0, 6)) {
      case 0: pos = p.pos; break;                                  // same start
      case 1: pos = align_down(p.pos + o.elem - oe, o.align); break;  // o's last element on p's first
      case 2: pos = align_down(p.pos + pe - 1, o.align); break;       // o's first element on p's last
      case 3: pos = align_up(p.pos + pe, o.align); break;             // touching after
      case 4: pos = align_down(p.pos - oe, o.align); break;           // touching before
      case 5: pos = align_up(p.pos + p.row_bytes(), o.align); break;  // in p's first row gap
      default: pos = align_down(p.pos + in.ConsumeIntegralInRange<size_t>(0, pe), o.align); break;
    }
    o.pos = pos;
    ++moved;
  }
  arena.bytes = total;
  arena.words.assign(total / 8 + 1, 0);
  return moved;
}

// Byte image of the arena before the call.
inline std::vector<unsigned char> snapshot(Arena& a) { return std::vector<unsigned char>(a.base(), a.base() + a.bytes); }

// Every byte outside the listed output rows is as it was (inputs, gaps, everything else).
inline void check_only_outputs_written(Arena& arena, const std::vector<unsigned char>& before,
                                       const std::vector<const ArrayDesc*>& written, const char* entry) {
  std::vector<unsigned char> writable(arena.bytes, 0);
  for (const ArrayDesc* a : written) {
    if (!a->present) continue;
    for (int64_t r = 0; r < a->rows; ++r) {
      const size_t b0 = a->pos + static_cast<size_t>(r) * a->stride_bytes();
      std::memset(&writable[b0], 1, a->row_bytes());
    }
  }
  for (size_t i = 0; i < arena.bytes; ++i)
    FUZZ_CHECK(writable[i] || arena.base()[i] == before[i], "%s: byte %zu outside every output changed", entry, i);
}

inline void check_untouched(Arena& arena, const std::vector<unsigned char>& before, const char* entry,
                            const cgrpo::Status& s) {
  FUZZ_CHECK(std::memcmp(arena.base(), before.data(), arena.bytes) == 0, "%s returned an error but wrote memory: %s",
             entry, s.message);
}

inline void check_error_message(const cgrpo::Status& s, const char* entry) {
  FUZZ_CHECK(s.message[0] != 0, "%s: error %s without a message", entry, cgrpo::status_code_name(s.code));
  FUZZ_CHECK(std::memchr(s.message, 0, sizeof(s.message)) != nullptr, "%s: message not terminated", entry);
}

inline bool says_overlap(const cgrpo::Status& s) { return std::strstr(s.message, "overlaps") != nullptr; }

// Address k << 56: never dereferenced (non-canonical on x86-64: any access faults), far apart.
template <typename T>
T* nowhere(int k) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(k) << 56);
}

// Whether an array of `rows` rows of `row_elems` elements at `stride`, starting at `address`,
// spans more bytes than int64 holds or runs past the end of the address space: the exact
// condition under which validation must refuse a size without reading anything.
inline bool size_overflows(uintptr_t address, int64_t rows, int64_t row_elems, int64_t stride, size_t elem) {
  if (rows <= 0 || row_elems <= 0) return false;
  using U = unsigned __int128;
  const U max64 = static_cast<U>(INT64_MAX);
  const U last = static_cast<U>(rows - 1) * static_cast<U>(stride);
  if (last > max64) return true;
  const U elems = last + static_cast<U>(row_elems);
  if (elems > max64) return true;
  const U bytes = elems * elem;
  if (bytes > max64) return true;
  if (static_cast<U>(stride) * elem > max64) return true;
  return static_cast<U>(address) + bytes > (static_cast<U>(1) << 64) - 1;
}

// An int64 size near the limits.
inline int64_t huge_size(FuzzedDataProvider& in) {
  static const int64_t k[] = {0,
                              1,
                              2,
                              3,
                              7,
                              int64_t{1} << 31,
                              int64_t{1} << 32,
                              int64_t{1} << 53,
                              int64_t{1} << 56,
                              int64_t{1} << 60,
                              int64_t{1} << 61,
                              int64_t{1} << 62,
                              INT64_MAX / 8 + 1,
                              INT64_MAX / 4 + 1,
                              INT64_MAX / 3,
                              INT64_MAX / 2,
                              INT64_MAX / 2 + 1,
                              INT64_MAX - 1,
                              INT64_MAX,
                              -1,
                              INT64_MIN};
  if (in.ConsumeIntegralInRange<int>(0, 3) == 0) return in.ConsumeIntegral<int64_t>();
  return k[in.ConsumeIntegralInRange<size_t>(0, sizeof(k) / sizeof(k[0]) - 1)];
}

// ---------------------------------------------------------------------------------------------
// Output invariants.

// Every metric is finite and the counts and fractions are consistent with the batch.
struct ExpectedCounts {
  int64_t valid = 0, valid_initial = 0, valid_refinement = 0;
  bool initial_exact = true;  // no rejection: every valid initial token is in the policy term
};

inline void check_metrics(const cgrpo::LossMetrics& m, const ExpectedCounts& e, const char* entry) {
  const double fields[] = {m.loss, m.pg_loss, m.pg_loss_initial, m.pg_loss_refinement, m.entropy_loss, m.kl_loss,
                           m.pg_clipfrac, m.pg_clipfrac_lower, m.ppo_kl, m.ratio_mean, m.clip_ratio_low_mean,
                           m.clip_ratio_high_mean, m.clip_ratio_region_mean, m.clip_ratio_low_min,
                           m.clip_ratio_high_max, m.entropy_mean, m.kl_mean, m.refinement_prob_mean,
                           m.vespo_phi_mean};
  const char* names[] = {"loss", "pg_loss", "pg_loss_initial", "pg_loss_refinement", "entropy_loss", "kl_loss",
                         "pg_clipfrac", "pg_clipfrac_lower", "ppo_kl", "ratio_mean", "clip_ratio_low_mean",
                         "clip_ratio_high_mean", "clip_ratio_region_mean", "clip_ratio_low_min",
                         "clip_ratio_high_max", "entropy_mean", "kl_mean", "refinement_prob_mean", "vespo_phi_mean"};
  for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); ++i)
    FUZZ_CHECK(std::isfinite(fields[i]), "%s returned OK with metrics.%s = %g", entry, names[i], fields[i]);
  const cgrpo::RolloutMetrics& r = m.rollout;
#define CGRPO_FUZZ_ROLLOUT_FIELD(field)                                                                  \
  FUZZ_CHECK(std::isfinite(r.field), "%s returned OK with rollout metric %s = %g", entry, #field, r.field);
  CGRPO_ROLLOUT_METRIC_FIELDS(CGRPO_FUZZ_ROLLOUT_FIELD)
#undef CGRPO_FUZZ_ROLLOUT_FIELD
  for (const auto& o : r.rs_option) {
    const double of[] = {o.mean, o.max, o.min, o.masked_fraction, o.seq_masked_fraction};
    for (double v : of) FUZZ_CHECK(std::isfinite(v), "%s returned OK with a non-finite rejection metric %g", entry, v);
  }
  const cgrpo::SamplerMetrics& s = m.sampler;
  const double sf[] = {s.logp_difference_mean, s.logp_difference_max, s.is_ratio_min, s.is_ratio_mean, s.is_ratio_max};
  for (double v : sf) FUZZ_CHECK(std::isfinite(v), "%s returned OK with a non-finite sampler metric %g", entry, v);

  FUZZ_CHECK(m.num_valid_tokens == e.valid, "%s: num_valid_tokens %lld, the mask holds %lld", entry,
             static_cast<long long>(m.num_valid_tokens), static_cast<long long>(e.valid));
  FUZZ_CHECK(m.num_refinement_tokens == e.valid_refinement, "%s: num_refinement_tokens %lld, expected %lld", entry,
             static_cast<long long>(m.num_refinement_tokens), static_cast<long long>(e.valid_refinement));
  FUZZ_CHECK(m.num_initial_tokens <= e.valid_initial && m.num_initial_tokens >= 0 &&
                 (!e.initial_exact || m.num_initial_tokens == e.valid_initial),
             "%s: num_initial_tokens %lld, valid initial tokens %lld", entry,
             static_cast<long long>(m.num_initial_tokens), static_cast<long long>(e.valid_initial));
  const double fractions[] = {m.pg_clipfrac, m.pg_clipfrac_lower, m.clip_ratio_low_mean, m.clip_ratio_high_mean,
                              m.clip_ratio_region_mean, m.clip_ratio_low_min, m.clip_ratio_high_max,
                              r.is_ratio_fraction_high, r.is_ratio_fraction_low, r.rs_masked_fraction,
                              r.rs_seq_masked_fraction};
  for (double f : fractions) FUZZ_CHECK(f >= 0 && f <= 1, "%s: a fraction metric is %g", entry, f);
  FUZZ_CHECK(m.entropy_mean >= 0, "%s: entropy_mean %g", entry, m.entropy_mean);
  FUZZ_CHECK(m.refinement_prob_mean >= 0 && m.refinement_prob_mean <= 1, "%s: refinement_prob_mean %g", entry,
             m.refinement_prob_mean);
  FUZZ_CHECK(m.pg_loss == m.pg_loss_initial + m.pg_loss_refinement, "%s: pg_loss is not initial + refinement", entry);
}

// Bitwise equality of two metric structs, field by field (no padding compared).
inline bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

inline bool same_metrics(const cgrpo::LossMetrics& a, const cgrpo::LossMetrics& b) {
  static_assert(sizeof(cgrpo::LossMetrics) % 8 == 0, "LossMetrics is 8-byte words");
  return std::memcmp(&a, &b, sizeof a) == 0;
}

}  // namespace fuzz
