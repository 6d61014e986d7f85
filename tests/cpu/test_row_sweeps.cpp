// Each float kernel set of cpu/row_sweeps.hpp on its own: the Eigen path, AVX2+FMA and
// AVX-512 (the last two when this CPU has them). The dispatcher picks only the best one, so
// without this test a CPU with AVX2 but no AVX-512 would run kernels no test has run.
// Every set is compared with a float64 reference on the same float inputs.
#include <catch2/catch.hpp>

#include "test_seed.hpp"
#include "tolerance.hpp"

#include <cgrpo/cgrpo.hpp>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

struct KernelSet {
  std::string name;
  bool available;
  cgrpo::cpu::RowSoftmaxStats<float> (*stats)(const float*, int64_t, double);
  // The whole row's gradient, target's one-hot term included; lse relative to pivot / tau.
  void (*gradient)(const float*, int64_t, double, int32_t, float, double, double, double, double, float*, bool);
};

std::vector<KernelSet> kernel_sets() {
  std::vector<KernelSet> sets;
  sets.push_back({"eigen", true, [](const float* z, int64_t v, double t) { return cgrpo::cpu::row_softmax_generic(z, v, t); },
                  [](const float* z, int64_t v, double t, int32_t y, float c, double lse, double h, double a, double b,
                     float* g, bool) { cgrpo::cpu::row_logit_gradient_generic(z, v, t, y, c, lse, h, a, b, g); }});
#if defined(CGRPO_CPU_AVX512)
  sets.push_back({"avx2", cgrpo::cpu::avx2::available(),
                  [](const float* z, int64_t v, double t) { return cgrpo::cpu::avx2::row_softmax(z, v, t); },
                  [](const float* z, int64_t v, double t, int32_t y, float c, double lse, double h, double a, double b,
                     float* g, bool s) {
                    cgrpo::cpu::avx2::row_logit_gradient(z, v, t, c, lse, h, a, b, g, s);
                    if (s) cgrpo::cpu::stream_fence();
                    g[y] += static_cast<float>(a * t);
                  }});
  sets.push_back({"avx512", cgrpo::cpu::avx512::available(),
                  [](const float* z, int64_t v, double t) { return cgrpo::cpu::avx512::row_softmax(z, v, t); },
                  [](const float* z, int64_t v, double t, int32_t y, float c, double lse, double h, double a, double b,
                     float* g, bool s) {
                    cgrpo::cpu::avx512::row_logit_gradient(z, v, t, c, lse, h, a, b, g, s);
                    if (s) cgrpo::cpu::stream_fence();
                    g[y] += static_cast<float>(a * t);
                  }});
#endif
  return sets;
}

// lse, H and dJ/dz_j of u = z * inv_t in float64, written the long way.
struct RowReference {
  double lse = 0, entropy = 0;
  std::vector<double> grad;
};

RowReference reference_row(const std::vector<float>& z, double inv_t, int32_t y, double a, double b) {
  RowReference r;
  const int64_t V = static_cast<int64_t>(z.size());
  double m = -INFINITY;
  for (float x : z) m = std::max(m, static_cast<double>(x) * inv_t);
  double s = 0;
  for (float x : z) s += std::exp(static_cast<double>(x) * inv_t - m);
  r.lse = m + std::log(s);
  for (float x : z) {
    const double lp = static_cast<double>(x) * inv_t - r.lse, p = std::exp(lp);
    if (p > 0) r.entropy -= p * lp;
  }
  r.grad.resize(V);
  for (int64_t j = 0; j < V; ++j) {
    const double lp = static_cast<double>(z[j]) * inv_t - r.lse, p = std::exp(lp);
    r.grad[j] = ((j == y ? a : 0.0) - a * p - (p > 0 ? b * p * (lp + r.entropy) : 0.0)) * inv_t;
  }
  return r;
}

}  // namespace

TEST_CASE("every float kernel set gives lse, H and the gradient of the float64 reference", "[sweeps]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  int ran = 0;
  for (const KernelSet& k : kernel_sets()) {
    if (!k.available) {
      std::printf("test_row_sweeps: this CPU lacks %s; its kernels are not run here\n", k.name.c_str());
      continue;
    }
    ++ran;
    // Sizes around the vector widths (8, 16), the unrolled steps (16, 32) and the chunks (1024, 2048).
    for (int64_t V : {1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 1023, 1024, 1025, 2049, 5000, 40000})
      for (double tau : {1.0, 0.7, 1.9, 0.02}) {
        const double scale = tau == 0.02 ? 0.05 : 3.0;  // tau = 0.02: u ~ 2.5e5, a float ulp of 0.016
        const double center = tau == 0.02 ? 5000.0 : 0.0;
        // The row sits at a float offset inside its buffer, so every alignment of z and g is met.
        const int64_t offset = static_cast<int64_t>(uni(rng) * 16);
        std::vector<float> buf(V + offset + 16), gbuf(V + offset + 16, 123.0f);
        float* z = buf.data() + offset;
        float* g = gbuf.data() + static_cast<int64_t>(uni(rng) * 16);
        for (int64_t j = 0; j < V; ++j) z[j] = static_cast<float>(center + scale * normal(rng));
        if (V > 4)
          for (int j = 0; j < 3; ++j) z[static_cast<int64_t>(uni(rng) * V)] = -INFINITY;  // masked entries
        int32_t y = static_cast<int32_t>(uni(rng) * V);
        if (z[y] == -INFINITY) z[y] = static_cast<float>(center);
        const double inv_t = 1.0 / tau;
        const double a = normal(rng), b = normal(rng);
        const std::vector<float> row(z, z + V);
        const RowReference want = reference_row(row, inv_t, y, a, b);
        CAPTURE(k.name, V, tau, offset);

        const cgrpo::cpu::RowSoftmaxStats<float> s = k.stats(z, V, inv_t);
        REQUIRE(cgrpo::cpu::row_softmax_finite(s));
        const double lse_rel = cgrpo::cpu::row_lse_rel(s), h = cgrpo::row_entropy(s.rel);
        const double lse = static_cast<double>(s.pivot) * inv_t + lse_rel;
        // lse: ~8 eps_f of its own size (the float reference point is folded back in double), and
        // of 1 for lse ~ 0. H = -sum p log p: each term within ~eps_f (1 + |log p|) p, so H within
        // ~eps_f (1 + H) (80 eps_f allowed: the d's are rounded in float).
        CHECK(tolerance::close(lse, want.lse, 1e-6, 1 + std::fabs(want.lse)));
        CHECK(tolerance::close(h, want.entropy, 1e-5, 1 + want.entropy));
        CHECK(h >= -1e-7);  // a one-hot row's H is 0 to rounding; the callers clamp it at 0

        for (bool stream : {false, true}) {
          k.gradient(z, V, inv_t, y, s.pivot, lse_rel, h, a, b, g, stream);
          CAPTURE(stream);
          // float: 1e-5 of the row's largest entry, or of (|a| + |b|) / tau for a row whose exact
          // gradient is ~0 (a (1 - p_y) with p_y ~ 1 still carries eps_f |a| / tau).
          CHECK(tolerance::close_all(std::vector<double>(g, g + V), want.grad, 1e-5,
                                     (std::fabs(a) + std::fabs(b)) * inv_t));
          // Nothing outside [g, g + V) is touched.
          for (float* p = gbuf.data(); p < g; ++p) REQUIRE(*p == 123.0f);
          for (float* p = g + V; p < gbuf.data() + gbuf.size(); ++p) REQUIRE(*p == 123.0f);
        }
      }
  }
  CHECK(ran >= 1);
}

TEST_CASE("every float kernel set flags NaN, +inf and all -inf rows wherever they are", "[sweeps]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  std::normal_distribution<double> normal(0.0, 2.0);
  for (const KernelSet& k : kernel_sets()) {
    if (!k.available) continue;
    for (int64_t V : {1, 9, 17, 33, 1025, 3000}) {
      std::vector<float> z(V);
      for (auto& x : z) x = static_cast<float>(normal(rng));
      for (int64_t pos : {int64_t{0}, V / 2, V - 1})
        for (float bad : {NAN, INFINITY}) {
          std::vector<float> w = z;
          w[pos] = bad;
          CAPTURE(k.name, V, pos, bad);
          CHECK_FALSE(cgrpo::cpu::row_softmax_finite(k.stats(w.data(), V, 1.0)));
          CHECK_FALSE(cgrpo::cpu::row_softmax_finite(k.stats(w.data(), V, 0.5)));
        }
      std::vector<float> all_minus_inf(V, -INFINITY);
      CAPTURE(k.name, V);
      CHECK_FALSE(cgrpo::cpu::row_softmax_finite(k.stats(all_minus_inf.data(), V, 1.0)));
      // One finite entry among -inf: finite, lse equal to that entry, H = 0.
      all_minus_inf[V - 1] = 2.5f;
      const auto s = k.stats(all_minus_inf.data(), V, 1.0);
      CHECK(cgrpo::cpu::row_softmax_finite(s));
      CHECK(s.pivot * 1.0 + cgrpo::cpu::row_lse_rel(s) == Approx(2.5).epsilon(1e-7));
      CHECK(std::fabs(cgrpo::row_entropy(s.rel)) <= 1e-6);
    }
  }
}
