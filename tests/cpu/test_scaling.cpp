// The row sweeps at the limits of each dtype (issue 13, class 3): float and double logits from 0
// to near their largest value, temperatures from 1e-4 to 1e4 (1 / tau exact and inexact in
// float), rows holding both +max and -max, rows whose max z / tau overflows the dtype, ties at
// the top, targets at the max and 1e5 nats below it. Every kernel set on its own, then every
// entry point, against a reference in long double that shifts by the row max before it scales.
//
// Tolerances (relative with an absolute floor), float logits / double logits:
//   log p of the target  |got - want| <= 1e-12 |want| + 1e-5   /  1e-13 |want| + 1e-10
//     (the shift (z_y - max z) / tau is exact to 1e-16; the floor is the float sums of log S;
//      1e-12 relative is what makes a ratio exp(log p - old) right when log p ~ -1e5)
//   log p written to a float output: + 6e-8 |want| (its rounding); below -FLT_MAX: -FLT_MAX
//   H                     |got - want| <= 1e-5 max(1, H)       /  1e-10 max(1, H)
//   dJ/dz of a row        max_j |got - want| <= tol max(max_j |want_j|, (|a| + |b|) / tau),
//                         tol 1e-5 (a kernel set) or 5e-5 (an entry point: a_t carries log p's error)
//                         / 1e-9
//   the loss J            |got - want| <= 2e-5 sum |terms| / 1e-10 sum |terms|
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <cgrpo/cgrpo.hpp>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "batch.hpp"

namespace {

using LD = long double;

// ---------------------------------------------------------------------------
// The reference: shift by the row max in long double (no overflow for any float or double
// input: its exponent reaches 16383), then divide by tau.

struct RowRef {
  std::vector<LD> logp;  // every entry's log p
  LD entropy = 0;
};

template <typename Real>
RowRef row_reference(const Real* z, int64_t V, LD tau) {
  LD m = -INFINITY;
  for (int64_t j = 0; j < V; ++j) m = std::max(m, static_cast<LD>(z[j]));
  RowRef r;
  r.logp.resize(V);
  LD s = 0;
  for (int64_t j = 0; j < V; ++j) {
    r.logp[j] = z[j] == -std::numeric_limits<Real>::infinity() ? -INFINITY : (static_cast<LD>(z[j]) - m) / tau;
    s += std::exp(r.logp[j]);
  }
  const LD log_s = std::log(s);
  for (int64_t j = 0; j < V; ++j) {
    r.logp[j] -= log_s;
    const LD p = std::exp(r.logp[j]);
    if (p > 0) r.entropy -= p * r.logp[j];
  }
  return r;
}

// dJ/dz_j = ( a (onehot(y)_j - p_j) - b p_j (log p_j + H) ) / tau (MATH.md).
LD reference_gradient(const RowRef& r, int64_t j, int32_t y, LD a, LD b, LD tau) {
  const LD p = std::exp(r.logp[j]);
  return ((j == y ? a : 0) - a * p - (p > 0 ? b * p * (r.logp[j] + r.entropy) : 0)) / tau;
}

// ---------------------------------------------------------------------------
// The rows: for each dtype, a center c (both signs) with a spread of a few tau (several entries
// contribute wherever the dtype resolves them; ties where it does not), and rows holding both
// the largest and the most negative values of the dtype with ties at the top.

template <typename Real>
std::vector<double> centers();
template <>
std::vector<double> centers<float>() {
  return {0.0, 1e3, 1e6, 1e9, 1e12, 1e20, 1e30, 3e38};
}
template <>
std::vector<double> centers<double>() {
  return {0.0, 1e3, 1e12, 1e50, 1e150, 1e300, 1.7e308};
}

template <typename Real>
struct Row {
  std::vector<Real> z;
  int32_t y = 0;
  std::string what;
};

template <typename Real>
Real round_to(double x) {
  const double big = static_cast<double>(std::numeric_limits<Real>::max());
  return static_cast<Real>(std::min(std::max(x, -big), big));
}

// Target kinds: 0 the row max, 1 a random entry, 2 an entry about 1e5 nats below the max
// (where 1 / tau rounded to float put a relative 6e-8 error, 6e-3 nats, into log p).
template <typename Real>
int32_t pick_target(std::mt19937_64& rng, std::vector<Real>& z, int kind, double tau) {
  const int64_t V = static_cast<int64_t>(z.size());
  std::uniform_int_distribution<int64_t> pick(0, V - 1);
  const int64_t top = std::max_element(z.begin(), z.end()) - z.begin();
  if (kind == 0) return static_cast<int32_t>(top);
  int64_t y = pick(rng);
  while (z[y] == -std::numeric_limits<Real>::infinity()) y = pick(rng);
  if (kind == 2 && y != top) z[y] = round_to<Real>(static_cast<double>(z[top]) - 1e5 * tau);
  return static_cast<int32_t>(y);
}

template <typename Real>
std::vector<Row<Real>> scaling_rows(std::mt19937_64& rng, int64_t V, double tau) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  const Real big = std::numeric_limits<Real>::max();
  std::vector<Row<Real>> rows;
  char what[160];
  for (double c : centers<Real>())
    for (double sign : {1.0, -1.0}) {
      if (c == 0 && sign < 0) continue;
      for (int kind : {0, 1, 2}) {
        Row<Real> r;
        r.z.resize(V);
        for (Real& x : r.z) x = round_to<Real>(sign * c + 3.0 * tau * normal(rng));
        if (V > 8)
          for (int k = 0; k < 3; ++k) r.z[static_cast<int64_t>(uni(rng) * V)] = -std::numeric_limits<Real>::infinity();
        r.y = pick_target(rng, r.z, kind, tau);
        std::snprintf(what, sizeof(what), "center %g, target kind %d", sign * c, kind);
        r.what = what;
        rows.push_back(std::move(r));
      }
    }
  // Both ends of the dtype in one row: the top few values of +max (with ties), the bottom few of
  // -max, and moderate entries.
  for (int kind : {0, 1, 2}) {
    Row<Real> r;
    r.z.resize(V);
    for (Real& x : r.z) {
      const double u = uni(rng);
      Real v = big;
      const int steps = static_cast<int>(uni(rng) * 3);
      for (int k = 0; k < steps; ++k) v = std::nextafter(v, Real(0));
      x = u < 0.3 ? v : (u < 0.6 ? -v : static_cast<Real>(1e3 * normal(rng)));
    }
    r.z[0] = big;  // the top is +max
    r.z[V > 1 ? 1 : 0] = V > 1 ? -big : big;
    r.y = kind == 2 ? (V > 1 ? 1 : 0) : pick_target(rng, r.z, kind, tau);  // kind 2: the -max entry
    std::snprintf(what, sizeof(what), "+max and -max in one row, target kind %d", kind);
    r.what = what;
    rows.push_back(std::move(r));
  }
  return rows;
}

const double kTemperatures[] = {1e-4, 3.3e-4, 0.013, 0.7, 1.0, 1.3, 97.0, 1e4};

template <typename Real>
struct Tolerance;
template <>
struct Tolerance<float> {
  static constexpr double logp_rel = 1e-12, logp_abs = 1e-5, entropy = 1e-5, kernel_grad = 1e-5, grad = 5e-5,
                          loss = 2e-5;
};
template <>
struct Tolerance<double> {
  static constexpr double logp_rel = 1e-13, logp_abs = 1e-10, entropy = 1e-10, kernel_grad = 1e-9, grad = 1e-9,
                          loss = 1e-10;
};

// The worst case of one kind of check, reported once (a failing run would otherwise print thousands of lines).
struct Worst {
  double ratio = 0;  // error / tolerance
  int failures = 0;
  std::string where;
  void add(double err, double tol, const std::string& ctx) {
    const double r = std::isnan(err) ? INFINITY : err / tol;
    if (!(r <= 1.0)) ++failures;
    if (!(r <= ratio)) {
      ratio = r;
      where = ctx;
    }
  }
};

void report(const char* what, const Worst& w) {
  INFO(what << ": " << w.failures << " failures; worst error / tolerance " << w.ratio << " at " << w.where);
  CHECK(w.failures == 0);
}

bool logp_close(double got, LD want, double rel, double abs) {
  if (std::isinf(static_cast<double>(want))) return got == static_cast<double>(want);
  return std::fabs(static_cast<LD>(got) - want) <= rel * std::fabs(want) + abs;
}

// ---------------------------------------------------------------------------
// Each kernel set on its own, behind the sweeps' API.

struct SweepResult {
  bool finite = false;
  double logp = 0, entropy = 0;
  double pivot = 0, lse = 0;  // what the gradient sweep takes
};

template <typename Real>
struct KernelSet {
  std::string name;
  bool available;
  std::function<SweepResult(const Real*, int64_t, double, int32_t)> stats;
  // The whole row's gradient, target's one-hot term included.
  std::function<void(const Real*, int64_t, double, int32_t, const SweepResult&, double, double, Real*)> gradient;
};

template <typename Real, typename Stats, typename Gradient>
KernelSet<Real> make_set(const char* name, bool available, Stats stats, Gradient gradient, bool adds_target) {
  KernelSet<Real> k;
  k.name = name;
  k.available = available;
  k.stats = [stats](const Real* z, int64_t V, double t, int32_t y) {
    const cgrpo::cpu::RowSoftmaxStats<Real> s = stats(z, V, t);
    SweepResult r;
    r.finite = cgrpo::cpu::row_softmax_finite(s);
    r.pivot = static_cast<double>(s.pivot);
    r.lse = cgrpo::cpu::row_lse_rel(s);
    r.entropy = cgrpo::row_entropy(s.rel);
    r.logp = cgrpo::cpu::shifted_logit(z[y], s.pivot, t) - r.lse;
    return r;
  };
  k.gradient = [gradient, adds_target](const Real* z, int64_t V, double t, int32_t y, const SweepResult& s, double a,
                                       double b, Real* g) {
    gradient(z, V, t, y, static_cast<Real>(s.pivot), s.lse, s.entropy, a, b, g);
    if (!adds_target) g[y] += static_cast<Real>(a * t);
  };
  return k;
}

template <typename Real>
std::vector<KernelSet<Real>> kernel_sets();
template <>
std::vector<KernelSet<double>> kernel_sets<double>() {
  return {make_set<double>(
      "eigen (double)", true, [](const double* z, int64_t v, double t) { return cgrpo::cpu::row_softmax_generic(z, v, t); },
      [](const double* z, int64_t v, double t, int32_t y, double c, double lse, double h, double a, double b, double* g) {
        cgrpo::cpu::row_logit_gradient_generic(z, v, t, y, c, lse, h, a, b, g);
      },
      true)};
}
// The float sets as the dispatcher runs them (AVX rows with |max z / tau| >= 2^24 and 1 / tau
// outside float_scale_ok go to the Eigen path inside the AVX functions).
template <>
std::vector<KernelSet<float>> kernel_sets<float>() {
  std::vector<KernelSet<float>> sets;
  sets.push_back(make_set<float>(
      "eigen", true, [](const float* z, int64_t v, double t) { return cgrpo::cpu::row_softmax_exact_shift(z, v, t); },
      [](const float* z, int64_t v, double t, int32_t y, float c, double lse, double h, double a, double b, float* g) {
        cgrpo::cpu::row_logit_gradient_exact_shift(z, v, t, y, c, lse, h, a, b, g);
      },
      true));
#if defined(CGRPO_CPU_AVX512)
  sets.push_back(make_set<float>(
      "avx2", cgrpo::cpu::avx2::available(),
      [](const float* z, int64_t v, double t) { return cgrpo::cpu::avx2::row_softmax(z, v, t); },
      [](const float* z, int64_t v, double t, int32_t, float c, double lse, double h, double a, double b, float* g) {
        cgrpo::cpu::avx2::row_logit_gradient(z, v, t, c, lse, h, a, b, g, false);
      },
      false));
  sets.push_back(make_set<float>(
      "avx512", cgrpo::cpu::avx512::available(),
      [](const float* z, int64_t v, double t) { return cgrpo::cpu::avx512::row_softmax(z, v, t); },
      [](const float* z, int64_t v, double t, int32_t, float c, double lse, double h, double a, double b, float* g) {
        cgrpo::cpu::avx512::row_logit_gradient(z, v, t, c, lse, h, a, b, g, false);
      },
      false));
#endif
  return sets;
}

template <typename Real>
void check_kernel_sets() {
  using Tol = Tolerance<Real>;
  std::mt19937_64 rng = test_seed::fresh_rng();
  std::normal_distribution<double> normal(0.0, 1.0);
  int ran = 0;
  for (const KernelSet<Real>& k : kernel_sets<Real>()) {
    if (!k.available) {
      std::printf("test_scaling: this CPU lacks %s; its kernels are not run here\n", k.name.c_str());
      continue;
    }
    ++ran;
    Worst finite, logp, entropy, grad;
    int rows = 0;
    // 1500 crosses the AVX sweeps' 1024-float chunks, 3000 also Eigen's 2048.
    for (int64_t V : {int64_t{1}, int64_t{7}, int64_t{1500}, int64_t{3000}})
      for (double tau : kTemperatures)
        for (Row<Real>& row : scaling_rows<Real>(rng, V, tau)) {
          ++rows;
          char ctx[300];
          std::snprintf(ctx, sizeof(ctx), "%s, V %lld, tau %g, %s", k.name.c_str(), static_cast<long long>(V), tau,
                        row.what.c_str());
          const Real* z = row.z.data();
          const RowRef want = row_reference(z, V, static_cast<LD>(tau));
          const SweepResult s = k.stats(z, V, 1.0 / tau, row.y);
          finite.add(s.finite ? 0.0 : INFINITY, 1.0, ctx);
          if (!s.finite) continue;
          const LD want_logp = want.logp[row.y];
          logp.add(logp_close(s.logp, want_logp, Tol::logp_rel, Tol::logp_abs) ? 0.0 : 2.0, 1.0,
                   std::string(ctx) + ": log p " + std::to_string(s.logp) + ", want " +
                       std::to_string(static_cast<double>(want_logp)));
          entropy.add(std::fabs(s.entropy - static_cast<double>(want.entropy)),
                      Tol::entropy * std::max(1.0, static_cast<double>(want.entropy)),
                      std::string(ctx) + ": H " + std::to_string(s.entropy));
          const double a = normal(rng), b = normal(rng);
          std::vector<Real> g(V, Real(-12345));
          k.gradient(z, V, 1.0 / tau, row.y, s, a, b, g.data());
          double err = 0, size = 0;
          for (int64_t j = 0; j < V; ++j) {
            const double w = static_cast<double>(reference_gradient(want, j, row.y, a, b, tau));
            err = std::max(err, std::isfinite(static_cast<double>(g[j])) ? std::fabs(g[j] - w) : INFINITY);
            size = std::max(size, std::fabs(w));
          }
          grad.add(err, Tol::kernel_grad * std::max(size, (std::fabs(a) + std::fabs(b)) / tau),
                   std::string(ctx) + ": gradient error " + std::to_string(err) + ", max |want| " + std::to_string(size));
        }
    INFO(k.name << ": " << rows << " rows");
    report("row is finite", finite);
    report("log p of the target", logp);
    report("entropy", entropy);
    report("gradient", grad);
  }
  CHECK(ran >= 1);
}

}  // namespace

TEST_CASE("every kernel set at the limits of float: |z| to FLT_MAX, tau 1e-4 to 1e4, max z / tau past FLT_MAX",
          "[scaling]") {
  check_kernel_sets<float>();
}

TEST_CASE("the double sweeps at the limits of double: |z| to DBL_MAX, tau 1e-4 to 1e4", "[scaling]") {
  check_kernel_sets<double>();
}

namespace {

// ---------------------------------------------------------------------------
// The entry points on batches of such rows: the fused loss (separate gradient and in place),
// token_logprobs, and the vocabulary-parallel loss on two shards.
//
// Config: no clipping, no KL, entropy bonus 0.01; initial and refinement tokens; weights 1/T.
// The reference loss, written from MATH.md with the reference log p and H:
//   initial:    l = -A exp(clamp(log p - old, +-20)), dl/dlogp = l inside the clamp, else 0
//   refinement: l = -A p / (p + gamma), dl/dlogp = -A gamma p / (p + gamma)^2
//   J = sum_t w l_t - c_H sum_t w H_t;  a_t = w dl/dlogp_t, b_t = -c_H w.

struct BatchRef {
  int64_t T = 0, V = 0;
  std::vector<int32_t> targets;
  std::vector<uint8_t> mask, kinds;
  std::vector<RowRef> rows;
  std::vector<LD> a, b, loss_terms;
  LD loss = 0;
  std::vector<std::string> what;
};

// The batch (every value exact in Real: the library's view rounds nothing) and its view in Real.
template <typename Real>
struct ScalingBatch {
  BatchRef ref;
  cgrpo::LossConfig config;
  support::Batch batch;
  std::unique_ptr<support::LibraryBatch<Real>> lib;
  const std::vector<Real>& logits() const { return lib->logits; }
  const cgrpo::PolicyLossBatch<Real>& view() const { return lib->view; }
};

// Rows of scaling_rows at temperature tau; `keep` selects which (the vocabulary-parallel loss
// takes only rows its double statistics represent).
template <typename Real>
void make_batch(std::mt19937_64& rng, int64_t V, double tau, const std::function<bool(const Row<Real>&, const RowRef&)>& keep,
                ScalingBatch<Real>& sb) {
  std::normal_distribution<double> normal(0.0, 1.0);
  cgrpo::LossConfig& c = sb.config;
  c = cgrpo::paper_critique_grpo().loss;
  c.policy.loss = cgrpo::PolicyLoss::ratio;
  c.entropy.coef = 0.01;
  c.aggregation.policy = c.aggregation.entropy = cgrpo::Aggregation::token_mean;
  c.temperature = tau;
  BatchRef& r = sb.ref;
  r = BatchRef{};
  r.V = V;
  support::Batch& b = sb.batch;
  b = support::Batch{};
  b.V = b.stride = V;
  for (Row<Real>& row : scaling_rows<Real>(rng, V, tau)) {
    RowRef rr = row_reference(row.z.data(), V, static_cast<LD>(tau));
    // The float64 log p must be finite (else the call's answer is an error, tested elsewhere).
    if (!std::isfinite(static_cast<double>(rr.logp[row.y])) || !keep(row, rr)) continue;
    b.logits.insert(b.logits.end(), row.z.begin(), row.z.end());
    r.targets.push_back(row.y);
    r.rows.push_back(std::move(rr));
    r.what.push_back(row.what);
  }
  const int64_t T = r.T = static_cast<int64_t>(r.targets.size());
  const Real w = static_cast<Real>(1.0 / static_cast<double>(T));
  b.w_pg.assign(T, static_cast<double>(w));
  b.w_h.assign(T, static_cast<double>(w));
  r.mask.assign(T, 1);
  r.kinds.resize(T);
  std::vector<Real> adv(T), old_logp(T);
  r.a.resize(T);
  r.b.resize(T);
  r.loss_terms.resize(T);
  r.loss = 0;
  const LD gamma = c.policy.refinement_gamma, cH = c.entropy.coef, lw = static_cast<LD>(w);
  for (int64_t t = 0; t < T; ++t) {
    r.kinds[t] = t % 3 == 2 ? cgrpo::kRefinement : cgrpo::kInitial;
    adv[t] = static_cast<Real>(normal(rng));
    const LD logp = r.rows[t].logp[r.targets[t]], A = static_cast<LD>(adv[t]);
    // old near log p (a ratio inside the clamp, sensitive to log p's absolute error), or far below it.
    old_logp[t] = std::fabs(static_cast<double>(logp)) < 1e7 ? static_cast<Real>(static_cast<double>(logp) + 0.5 * normal(rng))
                                                                : static_cast<Real>(-1.0);
    LD l, dl;
    if (r.kinds[t] == cgrpo::kRefinement) {
      const LD p = std::exp(logp);
      l = -A * p / (p + gamma);
      dl = -A * gamma * p / ((p + gamma) * (p + gamma));
    } else {
      const LD lr = logp - static_cast<LD>(old_logp[t]);
      const LD clamped = std::min<LD>(std::max<LD>(lr, -20), 20);
      l = -A * std::exp(clamped);
      dl = clamped == lr ? l : 0;
    }
    r.a[t] = lw * dl;
    r.b[t] = -cH * lw;
    r.loss_terms[t] = std::fabs(lw * l) + std::fabs(cH * lw * r.rows[t].entropy);
    r.loss += lw * l - cH * lw * r.rows[t].entropy;
  }
  // One response of T rows.
  b.T = T;
  b.B = 1;
  b.offsets = {0, T};
  b.targets = r.targets;
  b.mask = r.mask;
  b.kinds = r.kinds;
  b.adv.assign(adv.begin(), adv.end());
  b.old_logp.assign(old_logp.begin(), old_logp.end());
  sb.lib.reset(new support::LibraryBatch<Real>(b, c, support::Weights::caller));
}

template <typename Real>
double expected_output_logp(LD want) {
  const LD lowest = -static_cast<LD>(std::numeric_limits<Real>::max());
  return static_cast<double>(want < lowest ? lowest : want);
}

// Checks per-token log p / H outputs against the reference.
// floor[t]: an extra absolute tolerance of token t (the vocabulary-parallel loss's statistics
// carry 1e-16 |max u| of rounding); empty: none.
template <typename Real>
void check_token_outputs(const BatchRef& r, const Real* logp, const Real* entropy, double tau, const char* call,
                         Worst& wl, Worst& wh, const std::vector<double>& floor = {}) {
  using Tol = Tolerance<Real>;
  const double rounding = std::is_same<Real, float>::value ? 6e-8 : 1.2e-16;
  for (int64_t t = 0; t < r.T; ++t) {
    const LD want = r.rows[t].logp[r.targets[t]];
    const double expect = expected_output_logp<Real>(want);
    char ctx[300];
    std::snprintf(ctx, sizeof(ctx), "%s, tau %g, V %lld, %s: log p %.9g, want %.9Lg", call, tau,
                  static_cast<long long>(r.V), r.what[t].c_str(), static_cast<double>(logp[t]), want);
    const double extra = floor.empty() ? 0.0 : floor[t];
    wl.add(logp_close(static_cast<double>(logp[t]), expect, Tol::logp_rel + rounding, Tol::logp_abs + extra) ? 0.0 : 2.0,
           1.0, ctx);
    if (entropy)
      wh.add(std::fabs(static_cast<double>(entropy[t]) - static_cast<double>(r.rows[t].entropy)),
             Tol::entropy * std::max(1.0, static_cast<double>(r.rows[t].entropy)) + extra, ctx);
  }
}

template <typename Real>
void check_gradient(const BatchRef& r, const std::vector<Real>& g, int64_t g_stride, int64_t col0, int64_t cols, double tau,
                    const char* call, Worst& wg, const std::vector<double>& floor = {}) {
  for (int64_t t = 0; t < r.T; ++t) {
    double err = 0, size = 0;
    for (int64_t j = 0; j < cols; ++j) {
      const double w = static_cast<double>(reference_gradient(r.rows[t], col0 + j, r.targets[t], r.a[t], r.b[t], tau));
      const double x = static_cast<double>(g[t * g_stride + j]);
      err = std::max(err, std::isfinite(x) ? std::fabs(x - w) : INFINITY);
      size = std::max(size, std::fabs(w));
    }
    char ctx[300];
    std::snprintf(ctx, sizeof(ctx), "%s, tau %g, V %lld, %s: gradient error %.3g, max |want| %.3g", call, tau,
                  static_cast<long long>(r.V), r.what[t].c_str(), err, size);
    const double scale = static_cast<double>(std::fabs(r.a[t]) + std::fabs(r.b[t])) / tau;
    wg.add(err, Tolerance<Real>::grad * std::max(size, scale) + (floor.empty() ? 0.0 : floor[t] * scale), ctx);
  }
}

template <typename Real>
void check_entry_points() {
  std::mt19937_64 rng = test_seed::fresh_rng();
  Worst status, loss, logp, entropy, gradient;
  for (int64_t V : {int64_t{7}, int64_t{1500}})
    for (double tau : kTemperatures) {
      ScalingBatch<Real> sb;
      make_batch<Real>(rng, V, tau, [](const Row<Real>&, const RowRef&) { return true; }, sb);
      const BatchRef& r = sb.ref;
      const int64_t T = r.T;
      char ctx[200];
      std::snprintf(ctx, sizeof(ctx), "tau %g, V %lld", tau, static_cast<long long>(V));
      for (bool in_place : {false, true}) {
        std::vector<Real> logits = sb.logits(), grad(in_place ? 0 : logits.size()), lp(T), h(T);
        cgrpo::PolicyLossBatch<Real> view = sb.view();
        view.logits = logits.data();
        cgrpo::LossMetrics m;
        cgrpo::PolicyLossOutputs<Real> out{in_place ? logits.data() : grad.data(), 0, lp.data(), h.data(), &m};
        const cgrpo::Status st = cgrpo::cpu::fused_policy_loss(sb.config, view, out);
        const std::string call = in_place ? "fused_policy_loss in place" : "fused_policy_loss";
        status.add(st.ok() ? 0.0 : INFINITY, 1.0, call + ", " + ctx + ": " + st.message);
        if (!st.ok()) continue;
        LD terms = 0;
        for (LD x : r.loss_terms) terms += x;
        loss.add(std::fabs(m.loss - static_cast<double>(r.loss)), Tolerance<Real>::loss * static_cast<double>(terms) + 1e-300,
                 call + ", " + ctx + ": loss " + std::to_string(m.loss));
        check_token_outputs(r, lp.data(), h.data(), tau, call.c_str(), logp, entropy);
        check_gradient(r, in_place ? logits : grad, V, 0, V, tau, call.c_str(), gradient);
      }
      {
        std::vector<Real> lp(T), h(T);
        const cgrpo::Status st =
            cgrpo::cpu::token_logprobs(sb.logits().data(), T, V, 0, r.targets.data(), tau, lp.data(), h.data());
        status.add(st.ok() ? 0.0 : INFINITY, 1.0, std::string("token_logprobs, ") + ctx + ": " + st.message);
        if (st.ok()) check_token_outputs(r, lp.data(), h.data(), tau, "token_logprobs", logp, entropy);
      }
    }
  report("status OK", status);
  report("loss", loss);
  report("log p outputs", logp);
  report("entropy outputs", entropy);
  report("gradient", gradient);
}

// The vocabulary-parallel loss on two column shards (MAX + rebase + SUM between the phases).
// Its statistics cross ranks as RowStats of u = z / tau in double, so log p keeps an absolute
// error of about 1e-16 |max u|: only rows with |max z / tau| < 2^30 are given to it.
template <typename Real>
void check_vocab_parallel() {
  std::mt19937_64 rng = test_seed::fresh_rng();
  Worst status, loss, logp, entropy, gradient;
  for (int64_t V : {int64_t{7}, int64_t{1500}})
    for (double tau : kTemperatures) {
      ScalingBatch<Real> sb;
      make_batch<Real>(
          rng, V, tau,
          [tau](const Row<Real>& row, const RowRef&) {
            const double m = static_cast<double>(*std::max_element(row.z.begin(), row.z.end()));
            return std::fabs(m / tau) < 0x1p30;
          },
          sb);
      const BatchRef& r = sb.ref;
      const int64_t T = r.T;
      if (T == 0) continue;
      const int64_t cut = V / 2 + 1;
      const int64_t begin[2] = {0, cut}, size[2] = {cut, V - cut};
      std::vector<std::vector<Real>> shard_logits(2);
      std::vector<std::vector<cgrpo::RowStats<double>>> stats(2, std::vector<cgrpo::RowStats<double>>(T));
      std::vector<std::vector<double>> target(2, std::vector<double>(T));
      char ctx[200];
      std::snprintf(ctx, sizeof(ctx), "vocab parallel, tau %g, V %lld", tau, static_cast<long long>(V));
      // The exchanged statistics round max u in double: 1e-15 |max u| of absolute error on top.
      std::vector<double> floor(T);
      double floor_max = 0;
      for (int64_t t = 0; t < T; ++t) {
        const Real* z = &sb.logits()[t * V];
        floor[t] = 1e-15 * std::fabs(static_cast<double>(*std::max_element(z, z + V)) / tau);
        floor_max = std::max(floor_max, floor[t]);
      }
      bool ok = true;
      for (int k = 0; k < 2; ++k) {
        for (int64_t t = 0; t < T; ++t)
          for (int64_t j = 0; j < size[k]; ++j) shard_logits[k].push_back(sb.logits()[t * V + begin[k] + j]);
        cgrpo::PolicyLossBatch<Real> local = sb.view();
        local.logits = shard_logits[k].data();
        local.vocab_size = size[k];
        local.row_stride = 0;  // the shard's rows are back to back
        const cgrpo::parallel::VocabShard shard{begin[k], size[k], V};
        const cgrpo::Status st = cgrpo::parallel::vocab_shard_row_stats(sb.config, local, shard, stats[k].data(), target[k].data());
        status.add(st.ok() ? 0.0 : INFINITY, 1.0, std::string(ctx) + ", phase 1: " + st.message);
        ok = ok && st.ok();
      }
      if (!ok) continue;
      std::vector<cgrpo::RowStats<double>> reduced(T);
      std::vector<double> target_sum(T);
      for (int64_t t = 0; t < T; ++t) {
        const double m = std::max(stats[0][t].max, stats[1][t].max);
        reduced[t] = cgrpo::RowStats<double>{m, 0.0, 0.0};
        for (int k = 0; k < 2; ++k) {
          const cgrpo::RowStats<double> x = cgrpo::row_stats_rebase(stats[k][t], m);
          reduced[t].sum_exp += x.sum_exp;
          reduced[t].sum_exp_u += x.sum_exp_u;
        }
        target_sum[t] = target[0][t] + target[1][t];
      }
      for (int k = 0; k < 2; ++k) {
        cgrpo::PolicyLossBatch<Real> local = sb.view();
        local.logits = shard_logits[k].data();
        local.vocab_size = size[k];
        local.row_stride = 0;  // the shard's rows are back to back
        const cgrpo::parallel::VocabShard shard{begin[k], size[k], V};
        std::vector<Real> g(T * size[k]), lp(T), h(T);
        cgrpo::LossMetrics m;
        cgrpo::PolicyLossOutputs<Real> out{g.data(), 0, lp.data(), h.data(), &m};
        const cgrpo::Status st =
            cgrpo::parallel::vocab_parallel_policy_loss(sb.config, local, shard, reduced.data(), target_sum.data(), out);
        status.add(st.ok() ? 0.0 : INFINITY, 1.0, std::string(ctx) + ", phase 2: " + st.message);
        if (!st.ok()) continue;
        LD terms = 0;
        for (LD x : r.loss_terms) terms += x;
        loss.add(std::fabs(m.loss - static_cast<double>(r.loss)),
                 (Tolerance<Real>::loss + floor_max) * static_cast<double>(terms) + 1e-300,
                 std::string(ctx) + ": loss " + std::to_string(m.loss));
        check_token_outputs(r, lp.data(), h.data(), tau, "vocab parallel", logp, entropy, floor);
        check_gradient(r, g, size[k], begin[k], size[k], tau, "vocab parallel", gradient, floor);
      }
    }
  report("status OK", status);
  report("loss", loss);
  report("log p outputs", logp);
  report("entropy outputs", entropy);
  report("gradient", gradient);
}

// A gradient entry that would overflow the logits' dtype: an error naming the row, every output
// untouched; one well inside the range still succeeds. a_t = -w A exp(log p - old) with w = 1.
template <typename Real>
void check_gradient_overflow() {
  const Real big = std::numeric_limits<Real>::max();
  for (double scale : {4.0, 1e-2}) {  // |a| / tau about 4x the dtype's max, or 1% of it
    for (bool in_place : {false, true}) {
      const int64_t T = 4, V = 9;
      const double tau = 1e-4;
      cgrpo::LossConfig c = cgrpo::paper_critique_grpo().loss;
      c.policy.loss = cgrpo::PolicyLoss::ratio;
      c.entropy.coef = 0.0;
      c.temperature = tau;
      // One response of T rows; every value exact in Real.
      support::Batch batch = support::padded_batch(1, T, V);
      for (int64_t k = 0; k < T * V; ++k) batch.logits[k] = static_cast<Real>(0.25 * static_cast<double>(k % 7));
      batch.targets = {1, 2, 3, 4};
      const std::vector<Real> z(batch.logits.begin(), batch.logits.end());
      // log p of each target in double, so that old = log p gives a ratio of 1.
      for (int64_t t = 0; t < T; ++t) {
        const RowRef rr = row_reference(&z[t * V], V, static_cast<LD>(tau));
        batch.old_logp[t] = static_cast<Real>(rr.logp[batch.targets[t]]);
      }
      batch.adv.assign(T, 1.0);
      batch.adv[2] = static_cast<Real>(scale * (static_cast<double>(big) * tau));  // row 2: |a| / tau = scale * max
      batch.w_pg.assign(T, 1.0);
      support::LibraryBatch<Real> lib(batch, c, support::Weights::caller);
      std::vector<Real> logits = lib.logits;
      cgrpo::PolicyLossBatch<Real> v = lib.view;
      v.logits = logits.data();
      const Real poison = static_cast<Real>(-12345.5);
      std::vector<Real> grad(T * V, poison), lp(T, poison), h(T, poison);
      const std::vector<Real> logits_before = logits;
      cgrpo::LossMetrics m;
      m.loss = -12345.5;
      cgrpo::PolicyLossOutputs<Real> out{in_place ? logits.data() : grad.data(), 0, lp.data(), h.data(), &m};
      const cgrpo::Status st = cgrpo::cpu::fused_policy_loss(c, v, out);
      CAPTURE(scale, in_place, st.message);
      if (scale > 1) {
        CHECK(st.code == cgrpo::StatusCode::non_finite);
        CHECK(std::string(st.message).find("row 2") != std::string::npos);
        CHECK(std::string(st.message).find("overflow") != std::string::npos);
        CHECK(std::memcmp(logits.data(), logits_before.data(), logits.size() * sizeof(Real)) == 0);
        for (Real x : grad) REQUIRE(x == poison);
        for (int64_t t = 0; t < T; ++t) REQUIRE((lp[t] == poison && h[t] == poison));
        CHECK(m.loss == -12345.5);
      } else {
        REQUIRE(st.ok());
        for (Real x : in_place ? logits : grad) REQUIRE(std::isfinite(x));
      }
      if (in_place) continue;
      // The vocabulary-parallel loss (one shard holding the whole vocabulary) follows the same rule.
      const cgrpo::parallel::VocabShard shard{0, V, V};
      std::vector<cgrpo::RowStats<double>> stats(T);
      std::vector<double> target(T);
      v.logits = logits_before.data();
      REQUIRE(cgrpo::parallel::vocab_shard_row_stats(c, v, shard, stats.data(), target.data()).ok());
      std::vector<Real> g2(T * V, poison);
      cgrpo::PolicyLossOutputs<Real> out2{g2.data(), 0, nullptr, nullptr, &m};
      const cgrpo::Status st2 = cgrpo::parallel::vocab_parallel_policy_loss(c, v, shard, stats.data(), target.data(), out2);
      CAPTURE(st2.message);
      if (scale > 1) {
        CHECK(st2.code == cgrpo::StatusCode::non_finite);
        CHECK(std::string(st2.message).find("row 2") != std::string::npos);
        for (Real x : g2) REQUIRE(x == poison);
      } else {
        REQUIRE(st2.ok());
        for (Real x : g2) REQUIRE(std::isfinite(x));
      }
    }
  }
}

}  // namespace

TEST_CASE("float entry points at the limits of float: fused loss, in place, token_logprobs", "[scaling]") {
  check_entry_points<float>();
}

TEST_CASE("double entry points at the limits of double: fused loss, in place, token_logprobs", "[scaling]") {
  check_entry_points<double>();
}

TEST_CASE("the vocabulary-parallel loss on scaled rows (float and double)", "[scaling]") {
  check_vocab_parallel<float>();
  check_vocab_parallel<double>();
}

TEST_CASE("a gradient that would overflow the logits' dtype is an error naming the row; nothing is written",
          "[scaling]") {
  check_gradient_overflow<float>();
  check_gradient_overflow<double>();
}

TEST_CASE("every float kernel set: dJ/dlogp beyond FLT_MAX with dJ/dlogp / tau inside it gives a finite gradient",
          "[scaling]") {
  // a = 3e37 / tau at tau = 1e4 is past FLT_MAX while every entry of the gradient is below 3e37:
  // the sweeps scale a and b by 1 / tau in double before rounding them to float.
  std::mt19937_64 rng = test_seed::fresh_rng();
  std::normal_distribution<double> normal(0.0, 1.0);
  const double tau = 1e4, t = 1.0 / tau;
  for (const KernelSet<float>& k : kernel_sets<float>()) {
    if (!k.available) continue;
    for (int64_t V : {int64_t{7}, int64_t{1500}}) {
      std::vector<float> z(V);
      for (float& x : z) x = static_cast<float>(3e4 * normal(rng));  // a spread of a few tau
      const int32_t y = static_cast<int32_t>(V / 2);
      const RowRef want = row_reference(z.data(), V, static_cast<LD>(tau));
      for (double a : {3e41, -3e41}) {
        const double b = a * 1e-3;
        CAPTURE(k.name, V, a);
        const SweepResult s = k.stats(z.data(), V, t, y);
        REQUIRE(s.finite);
        REQUIRE(cgrpo::cpu::row_gradient_in_range<float>(t, s.entropy, a, b));
        std::vector<float> g(V);
        k.gradient(z.data(), V, t, y, s, a, b, g.data());
        double err = 0, size = 0;
        for (int64_t j = 0; j < V; ++j) {
          const double w = static_cast<double>(reference_gradient(want, j, y, a, b, tau));
          err = std::max(err, std::isfinite(g[j]) ? std::fabs(g[j] - w) : INFINITY);
          size = std::max(size, std::fabs(w));
        }
        CAPTURE(err, size);
        CHECK(err <= 1e-5 * std::max(size, (std::fabs(a) + std::fabs(b)) * t));
      }
    }
  }
}

TEST_CASE("row_stats_push / merge / rebase of parts whose maxima are of opposite signs near the float max",
          "[scaling]") {
  // (-max) - (+max) overflows float to -inf; exp(-inf) = 0 times shift * S = -inf used to be NaN
  // (the GPU merges its threads' parts with row_stats_merge, so a row holding +3e38 and -3e38
  // was reported non-finite). The smaller part now adds exactly nothing, and NaN still propagates.
  using S = cgrpo::RowStats<float>;
  const float big = FLT_MAX;
  for (float lo : {-big, -3e38f, -1e38f})
    for (float hi : {big, 3e38f, 2e38f}) {
      CAPTURE(lo, hi);
      const S a = cgrpo::row_stats_push(cgrpo::row_stats_identity<float>(), lo);
      const S b = cgrpo::row_stats_push(cgrpo::row_stats_push(cgrpo::row_stats_identity<float>(), hi), 0.5f * hi);
      for (const S& m : {cgrpo::row_stats_merge(a, b), cgrpo::row_stats_merge(b, a),
                         cgrpo::row_stats_push(cgrpo::row_stats_push(a, hi), 0.5f * hi),
                         cgrpo::row_stats_push(cgrpo::row_stats_push(b, lo), lo)}) {
        CHECK(cgrpo::row_stats_finite(m));
        CHECK(m.max == hi);
        CHECK(m.sum_exp == 1.0f);  // exp(0.5 hi - hi) and exp(lo - hi) are 0 in float
        CHECK(m.sum_exp_u == 0.0f);
        CHECK(cgrpo::row_entropy(m) == 0.0f);
      }
      const S r = cgrpo::row_stats_rebase(a, hi);
      CHECK((r.max == hi && r.sum_exp == 0.0f && r.sum_exp_u == 0.0f));
      // A NaN part still makes the merge non-finite.
      const S bad{lo, NAN, NAN};
      CHECK_FALSE(cgrpo::row_stats_finite(cgrpo::row_stats_merge(b, bad)));
      CHECK_FALSE(cgrpo::row_stats_finite(cgrpo::row_stats_rebase(bad, hi)));
    }
}
