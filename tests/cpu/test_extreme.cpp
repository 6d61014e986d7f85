// Extreme but valid inputs: targets with p near 0 and 1, log-ratios of +-100, advantages of 0
// and 1e6, k3 at its clamp. Results are finite and equal the float64 reference.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <cgrpo/cgrpo.hpp>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "batch.hpp"
#include "reference.hpp"

namespace {

template <typename Real>
cgrpo::LossMetrics run(const ref::Batch& b, const cgrpo::LossConfig& c, std::vector<double>& grad_out) {
  ref::LibraryBatch<Real> lb(b);
  std::vector<Real> grad(b.logits.size());
  cgrpo::LossMetrics m;
  cgrpo::PolicyLossOutputs<Real> out{grad.data(), 0, nullptr, nullptr, &m};
  const auto st = cgrpo::cpu::fused_policy_loss(c, lb.view, out);
  INFO(st.message);
  REQUIRE(st.ok());
  grad_out.assign(grad.begin(), grad.end());
  return m;
}

}  // namespace

TEST_CASE("extreme values: p near 0 and 1, log-ratios of +-100, huge and zero advantages", "[extreme]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  for (auto kl : {cgrpo::KlEstimator::k3, cgrpo::KlEstimator::k1, cgrpo::KlEstimator::k2})
    for (auto clip : {ref::Clip::none, ref::Clip::token})
      for (bool huge : {true, false}) {  // huge: log-ratios +-100 and |A| = 1e6; else +-3 and |A| = 1
      ref::Batch b = ref::random_batch(rng, 6, 6, 64, 0);
      for (int64_t t = 0; t < b.T; ++t) {
        double* z = &b.logits[t * b.stride];
        switch (t % 4) {
          case 0: z[b.targets[t]] = 60; break;   // p -> 1 (f(p) -> 1/(1+gamma))
          case 1: z[b.targets[t]] = -60; break;  // p ~ 1e-27 (f(p) -> 0)
          default: break;
        }
      }
      for (int64_t t = 0; t < b.T; ++t) {
        const double lp = ref::log_softmax_entropy(&b.logits[t * b.stride], b.V, b.targets[t], 1.0).logp;
        const double r = huge ? 100.0 : 3.0;
        b.old_logp[t] = lp + (t % 3 == 0 ? r : t % 3 == 1 ? -r : 0.1);  // ratios e^-r, e^r
        b.ref_logp[t] = lp + (t % 2 ? 50.0 : -50.0);                           // k3 at its clamp both ways
      }
      for (int64_t i = 0; i < b.B; ++i)
        for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) b.adv[t] = (i % 3 == 0 ? 0.0 : (i % 3 == 1 ? 1.0 : -1.0)) * (huge ? 1e6 : 1.0);
      cgrpo::LossConfig c;
      ref::set_clip(c, clip);
      c.kl.estimator = kl;
      c.kl.coef = 0.1;
      c.entropy.coef = 0.01;
      ref::set_weights(b, c);
      CAPTURE(to_string(kl), to_string(clip), huge);
      const ref::Result want = ref::loss(b, b.logits, c);
      REQUIRE(std::isfinite(want.loss));
      std::vector<double> gd, gf, gd_rounded;
      const auto md = run<double>(b, c, gd);
      const auto mf = run<float>(b, c, gf);
      // float runs against the float64 reference on the same, float-rounded, inputs.
      const ref::Batch bf = ref::rounded_to<float>(b);
      const ref::Result want_f = ref::loss(bf, bf.logits, c);
      run<double>(bf, c, gd_rounded);
      // J sums terms up to |A| e^20 that cancel: compare relative to the size of the terms
      // (ref::Magnitudes), with the rel of each precision (ref::double_rel, ref::float_rel).
      CHECK(ref::close(md.loss, want.loss, ref::double_rel(want, b), want.mag.loss));
      CHECK(ref::close(mf.loss, want_f.loss, ref::float_rel(want_f), want_f.mag.loss));
      for (size_t k = 0; k < gd.size(); ++k) {
        REQUIRE(std::isfinite(gd[k]));
        REQUIRE(std::isfinite(gf[k]));
      }
      // Against the batch's largest entry, floored by its largest row size (ref::gradient_scale).
      CHECK(ref::close_all(gf, gd_rounded, ref::float_rel(want_f), ref::gradient_scale(bf, want_f, c)));
      // Finite differences where they are meaningful: with |A| e^20 terms in J their roundoff
      // (1e-16 |J| / h) exceeds the gradient itself. Roundoff here: T eps sum |terms of J| / h
      // < 1e-8 mag.terms (T <= 36); truncation h^2 |J^(3)| / 6 < 1e-12 max |g|.
      if (!huge) {
        const auto fd = ref::finite_difference_gradient(b, c, 1e-6);
        CHECK(ref::close_all(gd, fd, 1e-6, 0.1 * want.mag.terms));
      }
    }
}

TEST_CASE("extreme but valid logits give finite results equal to the reference", "[extreme]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  ref::Batch b = ref::random_batch(rng, 4, 5, 30, 0, 1e3);  // |z| up to several thousand
  for (int64_t t = 0; t < b.T; ++t) b.logits[t * b.stride + (t % b.V)] = -INFINITY;  // masked vocabulary entries
  for (int64_t v = 0; v < b.V; ++v) b.logits[v] = 3.0;                                // a row of equal logits
  for (int64_t t = 0; t < b.T; ++t)
    if (b.logits[t * b.stride + b.targets[t]] == -INFINITY) b.targets[t] = static_cast<int32_t>((t + 1) % b.V);
  cgrpo::LossConfig c = cgrpo::paper_critique_grpo().loss;
  ref::set_clip(c, ref::Clip::token);
  ref::set_weights(b, c);
  ref::LibraryBatch<double> lb(b);
  std::vector<double> grad(b.logits.size()), logp(b.T), ent(b.T);
  cgrpo::LossMetrics m;
  cgrpo::PolicyLossOutputs<double> out{grad.data(), 0, logp.data(), ent.data(), &m};
  const auto st = cgrpo::cpu::fused_policy_loss(c, lb.view, out);
  INFO(st.message);
  REQUIRE(st.ok());
  CHECK(std::isfinite(m.loss));
  for (double g : grad) REQUIRE(std::isfinite(g));
  CHECK(ent[0] == Approx(std::log(static_cast<double>(b.V))).epsilon(1e-12));
  // The reference (which would give NaN on the -inf entries) on the same batch with those entries at -1e300.
  for (auto& z : b.logits)
    if (z == -INFINITY) z = -1e300;
  const ref::Result want = ref::loss(b, b.logits, c);
  CHECK(ref::close(m.loss, want.loss, ref::double_rel(want, b), want.mag.loss));
}

TEST_CASE("float rows whose scaled logits are large (u = z / tau ~ 2.5e5): log p <= 0, H >= 0, float64 values",
          "[extreme]") {
  // At u ~ 2.5e5 a float ulp is 0.016: scaling before shifting (u - round(max u)) used to leave
  // the max entry at +-half an ulp, which made log p positive and H negative (found by the
  // fuzzer) and shifted every probability of the gradient by up to 0.8%.
  std::mt19937_64 rng = test_seed::fresh_rng();
  std::normal_distribution<double> normal(0.0, 1.0);
  for (int64_t V : {1, 7, 3000}) {  // 3000 crosses the vectorised sweeps' chunk boundaries
    ref::Batch b = ref::random_batch(rng, 3, 3, V, 0);
    cgrpo::LossConfig c = cgrpo::paper_critique_grpo().loss;
    c.temperature = 0.02;  // 1 / tau = 50 exactly, z * 50 rounds in float
    ref::set_clip(c, ref::Clip::token);
    for (int64_t t = 0; t < b.T; ++t) {
      double* z = &b.logits[t * b.stride];
      const double center = t % 2 ? -5531.56 : 5000.0;
      for (int64_t v = 0; v < V; ++v) z[v] = center + 0.05 * normal(rng);  // u spread N(0, 2.5^2)
      if (t % 3 == 0) b.targets[t] = static_cast<int32_t>(std::max_element(z, z + V) - z);  // the max entry
    }
    b = ref::rounded_to<float>(b);
    for (int64_t t = 0; t < b.T; ++t) {
      const double lp = ref::log_softmax_entropy(&b.logits[t * b.stride], V, b.targets[t], c.temperature).logp;
      b.old_logp[t] = lp + 0.1 * normal(rng);
      b.ref_logp[t] = lp + 0.1 * normal(rng);
    }
    ref::set_weights(b, c);
    CAPTURE(V);

    ref::LibraryBatch<float> lb(b);
    std::vector<float> logp(b.T), ent(b.T);
    const auto st = cgrpo::cpu::token_logprobs(lb.view.logits, b.T, V, 0, lb.view.target_ids, c.temperature,
                                               logp.data(), ent.data());
    INFO(st.message);
    REQUIRE(st.ok());
    for (int64_t t = 0; t < b.T; ++t) {
      const double* z = &b.logits[t * b.stride];
      const auto want = ref::log_softmax_entropy(z, V, b.targets[t], c.temperature);
      CAPTURE(t, logp[t], ent[t], want.logp, want.entropy);
      CHECK(logp[t] <= 0.0f);
      CHECK(ent[t] >= 0.0f);
      // Shifted before it is scaled, log p is made of (z - max z) / tau, spread ~10 here, not
      // of u ~ 2.5e5, and of log(sum of exponentials >= 1): a few eps_f of 1 + spread + log V.
      const double zmax = *std::max_element(z, z + V);
      double spread = 0;
      for (int64_t v = 0; v < V; ++v) spread = std::max(spread, (zmax - z[v]) / c.temperature);
      spread += 1 + std::log(static_cast<double>(V));
      CHECK(ref::close(logp[t], want.logp, 16 * FLT_EPSILON, spread));
      CHECK(ref::close(ent[t], want.entropy, 16 * FLT_EPSILON, spread));
    }

    // The fused loss in float against the float64 path on the same inputs.
    std::vector<double> gf, gd;
    const auto mf = run<float>(b, c, gf);
    const auto md = run<double>(b, c, gd);
    // V = 1: the exact gradient is 0 and float keeps the rounding of a / tau: the floor is the
    // row size (2 |a| + |b| (3 + H)) / tau (ref::gradient_scale), and 1e-4 ~ 16 eps_f of a spread of 50.
    const ref::Result want = ref::loss(b, b.logits, c);
    CHECK(ref::close_all(gf, gd, 1e-4, ref::gradient_scale(b, want, c)));
    CHECK(ref::close(mf.loss, md.loss, 1e-4, want.mag.loss));
    CHECK(ref::close(md.loss, want.loss, ref::double_rel(want, b), want.mag.loss));
  }
}

// ---------------------------------------------------------------------------------------------
// Found by the widened fuzz targets (issue 13 class 11). Each input is valid, and the rule is
// "an error, or OK with every output finite". Each failed on the code before its fix (the scaling
// work of class 3 for all but one; the metrics check in finish_token_pass for the metrics).

namespace {

// One response of one token (V = z.size() logits), the loss forming its own weights.
struct OneRow {
  int32_t target = 0;
  uint8_t mask = 1;
  double advantage = 1, old_logp = -1;
  template <typename Real>
  support::Batch batch(const std::vector<Real>& z) const {
    support::Batch b = support::padded_batch(1, 1, static_cast<int64_t>(z.size()));
    b.logits.assign(z.begin(), z.end());
    b.targets[0] = target;
    b.mask[0] = mask;
    b.adv[0] = advantage;
    b.old_logp[0] = old_logp;
    return b;
  }
};

bool all_finite(const cgrpo::LossMetrics& m) {
  const double v[] = {m.loss, m.pg_loss, m.entropy_loss, m.kl_loss, m.pg_clipfrac, m.ppo_kl, m.ratio_mean,
                      m.clip_ratio_low_mean, m.clip_ratio_high_mean, m.entropy_mean, m.kl_mean};
  for (double x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

}  // namespace

TEST_CASE("fuzz findings: a huge entropy coefficient does not overflow the gradient sweep to -inf", "[extreme]") {
  // b_t = -c_H w = -DBL_MAX / 4 passed the bound (|a| + |b| (1/e + H)) / tau, but the sweep forms
  // b (log p + H) first: x 700 at the entry with log p = -700, -inf with OK.
  cgrpo::LossConfig c;
  c.entropy.coef = DBL_MAX / 4;
  const std::vector<double> z = {0.0, -700.0, -3.0, -1.0};
  OneRow row;
  const support::Batch batch = row.batch(z);
  support::LibraryBatch<double> lib(batch, c);
  const cgrpo::PolicyLossBatch<double>& b = lib.view;
  std::vector<double> g(4);
  double lp = 0, h = 0;
  cgrpo::LossMetrics m;
  const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(c, b, cgrpo::PolicyLossOutputs<double>{g.data(), 0, &lp, &h, &m});
  INFO(s.message << " grad " << g[0] << " " << g[1] << " " << g[2] << " " << g[3]);
  if (s.ok())
    for (double x : g) CHECK(std::isfinite(x));
}

TEST_CASE("fuzz findings: a temperature near DBL_MAX gives a finite gradient or an error", "[extreme]") {
  // The sweep's centre lse / (1 / tau) overflowed to inf: (z - inf) t - (lse - inf t) = NaN with OK.
  cgrpo::LossConfig c;
  c.temperature = DBL_MAX;
  const std::vector<double> z = {1.0, 2.0, 3.0, 4.0};
  OneRow row;
  const support::Batch batch = row.batch(z);
  support::LibraryBatch<double> lib(batch, c);
  const cgrpo::PolicyLossBatch<double>& b = lib.view;
  std::vector<double> g(4);
  cgrpo::LossMetrics m;
  const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(c, b, cgrpo::PolicyLossOutputs<double>{g.data(), 0, nullptr, nullptr, &m});
  INFO(s.message << " grad " << g[0] << " " << g[1] << " " << g[2] << " " << g[3]);
  if (s.ok())
    for (double x : g) CHECK(std::isfinite(x));
}

TEST_CASE("fuzz findings: a float log p below -FLT_MAX is not written as -inf with OK", "[extreme]") {
  // Target at -3.4e38 in a row whose max is +3.4e38: log p = -6.8e38 exactly, -inf as a float.
  std::vector<float> z = {3.4e38f, -3.4e38f, 0.0f, -3.4e38f};
  const int32_t y = 1;
  float lp = 0, h = 0;
  const cgrpo::Status s = cgrpo::cpu::token_logprobs(z.data(), 1, 4, 0, &y, 1.0, &lp, &h);
  INFO(s.message << " log p " << lp << " H " << h);
  if (s.ok()) CHECK((std::isfinite(lp) && std::isfinite(h)));
  cgrpo::LossConfig c;
  OneRow row;
  row.target = 1;
  row.mask = 0;  // a padding row: its log p is still an output
  const support::Batch batch = row.batch(z);
  support::LibraryBatch<float> lib(batch, c);
  const cgrpo::PolicyLossBatch<float>& b = lib.view;
  float lp2 = 0, h2 = 0;
  cgrpo::LossMetrics m;
  const cgrpo::Status s2 = cgrpo::cpu::fused_policy_loss(c, b, cgrpo::PolicyLossOutputs<float>{nullptr, 0, &lp2, &h2, &m});
  INFO(s2.message << " log p " << lp2);
  if (s2.ok()) CHECK(std::isfinite(lp2));
}

TEST_CASE("fuzz findings: float rows with |z / tau| near 1e12 give the right entropy", "[extreme]") {
  // u = z / tau up to 1e12 fits a float; the row is one-hot (H = 0). The AVX sweep gave H = 6.36
  // (V = 1601) or a false "non-finite" error (smaller V).
  for (int V : {16, 200, 1601}) {
    std::vector<float> z(V);
    for (int v = 0; v < V; ++v) z[v] = -9999.0f + 19993.0f * static_cast<float>((v * 7919) % V) / static_cast<float>(V);
    z[V / 2] = 9994.34f;
    const int32_t y = V / 2;
    float lp = 1, h = 1;
    const cgrpo::Status s = cgrpo::cpu::token_logprobs(z.data(), 1, V, 0, &y, 1e-8, &lp, &h);
    INFO("V " << V << ": " << s.message << " log p " << lp << " H " << h);
    CHECK(s.ok());
    CHECK(std::fabs(h) <= 1e-5);
    CHECK(std::fabs(lp) <= 1e-5);
  }
}

TEST_CASE("fuzz findings: metrics are finite when the loss is (no log-ratio clamp)", "[extreme]") {
  // ppo_clip with log_ratio_max = inf (TRL) and a log ratio of +1000: r = inf, clipped, so the
  // loss (-A (1 + eps)) and the gradient (0) are finite, but ratio_mean = inf with OK. The
  // per-token pass checks J, a_t and b_t only; the metric sums need the same rule.
  cgrpo::LossConfig c;
  c.policy.loss = cgrpo::PolicyLoss::ppo_clip;
  c.ratio.log_ratio_max = INFINITY;
  const std::vector<double> z = {1.0, 2.0, 3.0, 4.0};
  OneRow row;
  row.target = 3;
  row.old_logp = -1000.0;
  const support::Batch batch = row.batch(z);
  support::LibraryBatch<double> lib(batch, c);
  const cgrpo::PolicyLossBatch<double>& b = lib.view;
  std::vector<double> g(4);
  cgrpo::LossMetrics m;
  const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(c, b, cgrpo::PolicyLossOutputs<double>{g.data(), 0, nullptr, nullptr, &m});
  INFO(s.message << " loss " << m.loss << " ratio_mean " << m.ratio_mean << " ppo_kl " << m.ppo_kl);
  if (s.ok()) CHECK(all_finite(m));
}

TEST_CASE("fuzz findings: merging row statistics with a max near DBL_MAX stays finite", "[extreme]") {
  // A double row with one entry at DBL_MAX, split into two vocabulary shards: the rebase of the
  // other shard's sum_exp_u, S (M_a - M) with M_a - M ~ -DBL_MAX, overflowed to -inf and times
  // exp(M_a - M) = 0 gave NaN, so vocab_parallel_policy_loss refused a row the unsharded loss takes.
  const std::vector<double> a = {7.76, -3.0, 4.1, 2.2, 5.5, -1.0}, b = {DBL_MAX};
  const auto sa = cgrpo::cpu::row_softmax_stats(a.data(), static_cast<int64_t>(a.size()), 1.0);
  const auto sb = cgrpo::cpu::row_softmax_stats(b.data(), 1, 1.0);
  const auto merged = cgrpo::row_stats_merge(cgrpo::row_stats_merge(cgrpo::row_stats_identity<double>(), sa), sb);
  INFO("merged {" << merged.max << ", " << merged.sum_exp << ", " << merged.sum_exp_u << "}");
  CHECK(cgrpo::row_stats_finite(merged));
}

namespace {
// token_logprobs on rows whose target sits about 2 x the dtype's max below the row's top: log p is
// below the dtype's range (below -DBL_MAX in double: the double sum itself overflows to -inf).
template <typename Real>
void check_logp_below_range(std::mt19937_64& rng) {
  const double big = static_cast<double>(std::numeric_limits<Real>::max());
  std::uniform_real_distribution<double> frac(0.5, 1.0);
  std::uniform_int_distribution<int> width(2, 40);
  for (int trial = 0; trial < 50; ++trial) {
    const int V = width(rng);
    std::vector<Real> z(V);
    for (Real& x : z) x = static_cast<Real>((rng() % 2 ? 1 : -1) * frac(rng) * big);
    z[0] = static_cast<Real>(frac(rng) * big);                        // the top
    z[V - 1] = static_cast<Real>(-frac(rng) * big);                   // the target, far below it
    // z_top - z_target >= max, so (z_target - z_top) / tau < -max for every tau < 1.
    const double tau = std::uniform_real_distribution<double>(0.25, 0.99)(rng);
    const int32_t ids[2] = {V - 1, 0};
    std::vector<Real> rows(2 * V);
    std::copy(z.begin(), z.end(), rows.begin());
    std::copy(z.begin(), z.end(), rows.begin() + V);
    rows[V + V - 1] = -std::numeric_limits<Real>::infinity();  // row 1: a -inf entry that is not its target
    Real logp[2] = {0, 0}, ent[2] = {-1, -1};
    const cgrpo::Status s = cgrpo::cpu::token_logprobs(rows.data(), 2, V, 0, ids, tau, logp, ent);
    INFO(s.message << " V " << V << " tau " << tau << " z_top " << z[0] << " z_target " << z[V - 1]);
    REQUIRE(s.ok());
    // Row 0: below the range, written as the lowest finite value.
    CHECK(std::isfinite(static_cast<double>(logp[0])));
    CHECK(logp[0] == std::numeric_limits<Real>::lowest());
    CHECK(std::isfinite(static_cast<double>(ent[0])));
    CHECK(ent[0] >= 0);
    // Row 1: the target is the top: log p finite and <= 0.
    CHECK(std::isfinite(static_cast<double>(logp[1])));
    CHECK(logp[1] <= 0);
  }
  // A -inf target logit keeps its exact log p, -inf.
  std::vector<Real> row = {Real(1), -std::numeric_limits<Real>::infinity(), Real(-2)};
  const int32_t id = 1;
  Real lp = 0;
  REQUIRE(cgrpo::cpu::token_logprobs(row.data(), 1, 3, 0, &id, 1.0, &lp, static_cast<Real*>(nullptr)).ok());
  CHECK(lp == -std::numeric_limits<Real>::infinity());
}
}  // namespace

TEST_CASE("token_logprobs: a finite target logit never gets log p = -inf, even below -DBL_MAX", "[extreme][logprobs]") {
  // Found by fuzz_token_logprobs (tests/fuzz/corpus/fuzz_token_logprobs/finding-logp-float-minus-inf-c869955bfc46):
  // double logits -8.98e307 (target) and +8.98e307 at tau 1 gave log p = -inf with OK.
  auto rng = test_seed::fresh_rng();
  check_logp_below_range<double>(rng);
  check_logp_below_range<float>(rng);
}

TEST_CASE("temperature: (0, 1e300] accepted; above it an error naming temperature, nothing written", "[extreme][errors]") {
  // Found by fuzz_token_logprobs (tests/fuzz/corpus/fuzz_token_logprobs/finding-logp-accuracy-tau-dbl-max): at tau = DBL_MAX a
  // double row of opposite-sign logits near DBL_MAX lost its shifted values (z - max = -inf while
  // (z - max) / tau is about -2) and log p came out 0 instead of -4.7, with OK.
  auto rng = test_seed::fresh_rng();
  std::uniform_real_distribution<double> frac(0.6, 0.99);
  const double top = frac(rng) * DBL_MAX, target = -frac(rng) * DBL_MAX;
  const std::vector<double> z = {top, target, frac(rng), -frac(rng)};
  const int32_t id = 1;
  // At the largest accepted tau the row is exact: log p = (target - top) / tau - log(1 + ...) with
  // every other entry far below top / tau.
  double lp = 1, h = -1;
  cgrpo::Status s = cgrpo::cpu::token_logprobs(z.data(), 1, 4, 0, &id, cgrpo::kMaxTemperature, &lp, &h);
  INFO(s.message);
  REQUIRE(s.ok());
  const double want = (target / 2 - top / 2) / cgrpo::kMaxTemperature * 2;
  CHECK(std::fabs(lp - want) <= 1e-12 * std::fabs(want));
  CHECK(h >= 0);
  for (double tau : {1.0000001e300, 1e301, DBL_MAX, std::numeric_limits<double>::infinity()}) {
    CAPTURE(tau);
    double lp2 = -12345.5, h2 = -12345.5;
    s = cgrpo::cpu::token_logprobs(z.data(), 1, 4, 0, &id, tau, &lp2, &h2);
    CHECK(s.code == cgrpo::StatusCode::invalid_argument);
    CHECK(std::string(s.message).find("temperature") != std::string::npos);
    CHECK(lp2 == -12345.5);
    CHECK(h2 == -12345.5);
    cgrpo::LossConfig c;
    c.temperature = tau;
    s = c.validate();
    CHECK(s.code == cgrpo::StatusCode::invalid_argument);
    CHECK(std::string(s.message).find("config.temperature") != std::string::npos);
  }
}
