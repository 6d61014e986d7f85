// tests/presets/test_verl_new_losses.cpp: verl's newer policy losses (verl-project/verl 1dda039,
// MATH-peers "Policy losses") against their formulas written plainly in double: the fused loss's J
// and every metric, its gradient against central finite differences of the plain formula, float
// against double, and the term's own parameter checks.
#include <catch2/catch.hpp>

#include <cgrpo/cgrpo.hpp>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "batch.hpp"
#include "expect_error.hpp"
#include "reference.hpp"
#include "test_seed.hpp"

namespace {

using cgrpo::LossConfig;

// One token's policy loss and its two flags (pg_clipfrac, pg_clipfrac_lower), from the formula.
// `sg` is the log p the formula's stop-gradient parts are taken at (sg(min(r, c)), the keep mask):
// the current log p for the value, held at the unperturbed one for finite differences.
struct TokenRef {
  double loss;
  bool clipped, lower;
};
using TermRef = std::function<TokenRef(double logp, double sg, double old, double A, const LossConfig& c)>;

struct PlainResult {
  double loss = 0, clipfrac = 0, clipfrac_lower = 0, ppo_kl = 0;
};

// J = token-mean of the term over valid tokens (N exactly: verl_aggregation), the metrics as
// verl's masked_mean (count + 1e-8), at temperature c.temperature. ppo_kl of x: clamped to
// +-20 unless `raw`.
PlainResult plain(const support::Batch& b, const std::vector<double>& logits, const LossConfig& c, const TermRef& term,
                  bool raw_ppo_kl, const std::vector<double>* frozen = nullptr) {
  PlainResult r;
  double n = 0;
  for (int64_t t = 0; t < b.T; ++t) n += b.mask[t];
  for (int64_t t = 0; t < b.T; ++t) {
    if (!b.mask[t]) continue;
    const double logp = ref::log_softmax_entropy(&logits[t * b.stride], b.V, b.targets[t], c.temperature).logp;
    const TokenRef k = term(logp, frozen ? (*frozen)[t] : logp, b.old_logp[t], b.adv[t], c);
    r.loss += k.loss / n;
    r.clipfrac += k.clipped;
    r.clipfrac_lower += k.lower;
    const double x = logp - b.old_logp[t];
    r.ppo_kl += raw_ppo_kl ? -x : -std::min(std::max(x, -20.0), 20.0);
  }
  r.clipfrac /= n + 1e-8;
  r.clipfrac_lower /= n + 1e-8;
  r.ppo_kl /= n + 1e-8;
  return r;
}

// A batch of initial tokens only (the terms are on-policy losses), old log-probs close to the
// current ones so that the thresholds split the tokens.
support::Batch batch_for(std::mt19937_64& rng, double spread) {
  support::Batch b = support::random_batch(rng, 16, 9, 13, 3, 1.0);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (int64_t t = 0; t < b.T; ++t) {
    b.kinds[t] = cgrpo::kInitial;
    const double lp = ref::log_softmax_entropy(&b.logits[t * b.stride], b.V, b.targets[t], 1.0).logp;
    b.old_logp[t] = lp + spread * normal(rng);
  }
  return b;
}

// Runs the fused loss (double and float) and compares J, the metrics and the gradient with the plain
// formula; `keep_away` redraws old log-probs of tokens within 1e-5 of a threshold (a finite
// difference step must not cross one).
void check_term(const LossConfig& c, const TermRef& term, bool raw_ppo_kl,
                const std::function<bool(double logp, double old, double A)>& near_kink, bool masks = true) {
  std::mt19937_64 rng = test_seed::fresh_rng();
  std::normal_distribution<double> normal(0.0, 1.0);
  support::Batch b = batch_for(rng, 0.4);
  for (int64_t t = 0; t < b.T; ++t) {
    const double lp = ref::log_softmax_entropy(&b.logits[t * b.stride], b.V, b.targets[t], c.temperature).logp;
    while (near_kink(lp, b.old_logp[t], b.adv[t])) b.old_logp[t] = lp + 0.4 * normal(rng);
  }
  const PlainResult want = plain(b, b.logits, c, term, raw_ppo_kl);
  if (masks) {  // the thresholds split the batch: both branches of the mask are exercised
    CHECK(want.clipfrac > 0.0);
    CHECK(want.clipfrac < 1.0);
  }

  support::LibraryBatch<double> lb(b, c);
  std::vector<double> grad(b.logits.size(), 0.0);
  cgrpo::LossMetrics m;
  cgrpo::PolicyLossOutputs<double> out;
  out.grad_logits = grad.data();
  out.metrics = &m;
  const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(c, lb.view, out);
  INFO(s.message);
  REQUIRE(s.ok());
  CHECK(ref::close(m.loss, want.loss, 1e-12, 1.0));
  CHECK(ref::close(m.pg_loss, want.loss, 1e-12, 1.0));
  CHECK(ref::close(m.pg_clipfrac, want.clipfrac, 1e-12, 1.0));
  CHECK(ref::close(m.pg_clipfrac_lower, want.clipfrac_lower, 1e-12, 1.0));
  CHECK(ref::close(m.ppo_kl, want.ppo_kl, 1e-12, 1.0));

  // Central differences of the plain formula, its stop-gradient parts held at the unperturbed log p
  // (h = 1e-6: truncation ~h^2, rounding ~1e-16 / h).
  std::vector<double> frozen(b.T);
  for (int64_t t = 0; t < b.T; ++t)
    frozen[t] = ref::log_softmax_entropy(&b.logits[t * b.stride], b.V, b.targets[t], c.temperature).logp;
  std::vector<double> fd(b.logits.size(), 0.0), z = b.logits;
  double gmax = 0;
  for (int64_t t = 0; t < b.T; ++t)
    for (int64_t v = 0; v < b.V; ++v) {
      const size_t k = static_cast<size_t>(t * b.stride + v);
      const double z0 = z[k], h = 1e-6;
      z[k] = z0 + h;
      const double jp = plain(b, z, c, term, raw_ppo_kl, &frozen).loss;
      z[k] = z0 - h;
      const double jm = plain(b, z, c, term, raw_ppo_kl, &frozen).loss;
      z[k] = z0;
      fd[k] = (jp - jm) / (2 * h);
      gmax = std::max(gmax, std::fabs(fd[k]));
    }
  CHECK(ref::close_all(grad, fd, 1e-6, gmax + 1e-3));
  CHECK(gmax > 1e-3);  // the gradient is not trivially zero

  // float on the same (rounded) inputs.
  support::LibraryBatch<float> lf(b, c);
  std::vector<float> gradf(b.logits.size(), 0.f);
  cgrpo::LossMetrics mf;
  cgrpo::PolicyLossOutputs<float> outf;
  outf.grad_logits = gradf.data();
  outf.metrics = &mf;
  REQUIRE(cgrpo::cpu::fused_policy_loss(c, lf.view, outf).ok());
  CHECK(ref::close(mf.loss, want.loss, 1e-4, 1.0));
  CHECK(ref::close_all(gradf, grad, 1e-4, gmax));
}

}  // namespace

TEST_CASE("verl dppo_tv: -A sg(min(r, c)) logp on the tokens within the TV threshold", "[verl][dppo]") {
  for (double cap : {10000.0, 1.05}) {  // the recipe's cap, and one that binds (pg_clipfrac_lower)
    LossConfig c = cgrpo::verl_dppo_tv().loss;
    c.policy.dppo_tv.is_cap = cap;
    c.ratio.clip_eps_low = 0.01;  // |p - q| ~ 0.02 here (p ~ 1 / 13, x ~ N(0, 0.4^2)): both sides drop some
    c.ratio.clip_eps_high = 0.015;
    CAPTURE(cap);
    auto term = [](double logp, double sg, double old, double A, const LossConfig& cfg) {
      const double p = std::exp(sg), q = std::exp(old);
      const bool keep = A > 0 ? p - q <= cfg.ratio.clip_eps_high : p - q >= -cfg.ratio.clip_eps_low;
      const double r = std::exp(std::min(std::max(sg - old, -20.0), 20.0)), w = std::min(r, cfg.policy.dppo_tv.is_cap);
      return TokenRef{keep ? -A * w * logp : 0.0, !keep, keep && r > cfg.policy.dppo_tv.is_cap};
    };
    const LossConfig cc = c;
    check_term(c, term, false, [cc](double logp, double old, double A) {
      const double d = std::exp(logp) - std::exp(old);
      const double r = std::exp(logp - old);
      return std::fabs(A > 0 ? d - cc.ratio.clip_eps_high : d + cc.ratio.clip_eps_low) < 1e-5 ||
             std::fabs(r - cc.policy.dppo_tv.is_cap) < 1e-5;
    });
  }
  LossConfig c = cgrpo::verl_dppo_tv().loss;
  for (double bad : {0.0, -1.0, static_cast<double>(INFINITY), static_cast<double>(NAN)}) {
    c.policy.dppo_tv.is_cap = bad;
    support::check_error(c.validate(), cgrpo::StatusCode::invalid_argument, {"config.policy.dppo_tv.is_cap"});
  }
  LossConfig parsed = cgrpo::verl_vanilla().loss;
  REQUIRE(cgrpo::verl_loss_mode("dppo_tv", &parsed).ok());
  CHECK(parsed.policy.loss == cgrpo::PolicyLoss::dppo_tv);
  CHECK(!parsed.ratio.dual_clip);
  CHECK(parsed.ratio.log_ratio_max == 20.0);
}

TEST_CASE("verl dppo_kl: dppo's loss on the tokens within the binary-KL threshold or moving against A", "[verl][dppo]") {
  auto binary_kl = [](double logp, double old) {
    const double p = std::exp(logp), q = std::exp(old);
    return q * (old - logp) + (1 - q) * std::log((1 - q + 1e-8) / (1 - p + 1e-8));
  };
  for (double cap : {10000.0, 1.05}) {
    LossConfig c = cgrpo::verl_dppo_kl().loss;
    c.policy.dppo_kl.is_cap = cap;
    c.ratio.clip_eps_low = 0.002;
    c.ratio.clip_eps_high = 0.003;
    CAPTURE(cap);
    auto term = [binary_kl](double logp, double sg, double old, double A, const LossConfig& cfg) {
      const double p = std::exp(sg), q = std::exp(old), d = binary_kl(sg, old);
      const bool keep = A > 0 ? (d <= cfg.ratio.clip_eps_high || p <= q) : (d <= cfg.ratio.clip_eps_low || p >= q);
      const double r = std::exp(std::min(std::max(sg - old, -20.0), 20.0)), w = std::min(r, cfg.policy.dppo_kl.is_cap);
      return TokenRef{keep ? -A * w * logp : 0.0, !keep, keep && r > cfg.policy.dppo_kl.is_cap};
    };
    const LossConfig cc = c;
    check_term(c, term, false, [cc, binary_kl](double logp, double old, double A) {
      const double d = binary_kl(logp, old);
      return std::fabs(d - (A > 0 ? cc.ratio.clip_eps_high : cc.ratio.clip_eps_low)) < 1e-6 ||
             std::fabs(logp - old) < 1e-5 || std::fabs(std::exp(logp - old) - cc.policy.dppo_kl.is_cap) < 1e-5;
    });
  }
  LossConfig c = cgrpo::verl_dppo_kl().loss;
  c.policy.dppo_kl.is_cap = -2;
  support::check_error(c.validate(), cgrpo::StatusCode::invalid_argument, {"config.policy.dppo_kl.is_cap"});
  LossConfig parsed = cgrpo::verl_vanilla().loss;
  REQUIRE(cgrpo::verl_loss_mode("dppo_kl", &parsed).ok());
  CHECK(parsed.policy.loss == cgrpo::PolicyLoss::dppo_kl);
}

TEST_CASE("verl dro: -(A logp - beta/2 (logp - old)^2), no ratio, no clamp", "[verl][dro]") {
  for (double beta : {1.0, 0.05}) {
    LossConfig c = cgrpo::verl_dro(beta).loss;
    CAPTURE(beta);
    auto term = [](double logp, double, double old, double A, const LossConfig& cfg) {
      const double x = logp - old;
      return TokenRef{-(A * logp - cfg.policy.dro.beta / 2 * x * x), false, false};
    };
    check_term(c, term, /*raw_ppo_kl=*/true, [](double, double, double) { return false; }, /*masks=*/false);
  }
  for (double bad : {0.0, -1.0, static_cast<double>(NAN), static_cast<double>(INFINITY)}) {
    const LossConfig c = cgrpo::verl_dro(bad).loss;
    support::check_error(c.validate(), cgrpo::StatusCode::invalid_argument, {"config.policy.dro.beta", "no default"});
  }
  LossConfig parsed = cgrpo::verl_vanilla().loss;  // verl's loss_mode: no ratio, no clamp, no dual clip
  REQUIRE(cgrpo::verl_loss_mode("dro", &parsed).ok());
  CHECK(parsed.policy.loss == cgrpo::PolicyLoss::dro);
  CHECK((std::isinf(parsed.ratio.log_ratio_min) && !parsed.ratio.dual_clip));
  parsed.ratio.level = cgrpo::RatioLevel::sequence;  // a term without a ratio has no sequence level
  CHECK(!parsed.validate().ok());
}
