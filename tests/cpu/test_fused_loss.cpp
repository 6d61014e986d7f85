// The fused CPU loss against the plain double reference (tests/support/reference.hpp):
// loss, metrics, log p, H, and the gradient against central finite differences.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <cgrpo/cgrpo.hpp>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "batch.hpp"
#include "reference.hpp"

namespace {

std::mt19937_64 fresh_rng() { return test_seed::fresh_rng(); }

using ref::max_abs;

struct RunOutput {
  cgrpo::Status status;
  cgrpo::LossMetrics metrics;
  std::vector<double> grad, logp, entropy;
};

template <typename Real>
RunOutput run_library(const ref::Batch& b, const cgrpo::LossConfig& c, bool in_place = false, int threads = 1) {
  ref::LibraryBatch<Real> lb(b);
  std::vector<Real> grad(in_place ? 0 : b.logits.size(), Real(0)), logp(b.T), ent(b.T);
  RunOutput r;
  cgrpo::PolicyLossOutputs<Real> out;
  out.grad_logits = in_place ? lb.logits.data() : grad.data();
  out.logp = logp.data();
  out.entropy = ent.data();
  out.metrics = &r.metrics;
  cgrpo::cpu::Workspace ws(threads);
  r.status = cgrpo::cpu::fused_policy_loss(c, lb.view, out, ws);
  const std::vector<Real>& g = in_place ? lb.logits : grad;
  r.grad.assign(g.begin(), g.end());
  if (in_place)  // the padding between V and the stride is not gradient: zero it for comparisons
    for (int64_t t = 0; t < b.T; ++t)
      for (int64_t v = b.V; v < b.stride; ++v) r.grad[t * b.stride + v] = 0;
  r.logp.assign(logp.begin(), logp.end());
  r.entropy.assign(ent.begin(), ent.end());
  return r;
}

// Each metric within rel of the size of the numbers it is made of (ref::Magnitudes says why
// that bounds the difference of two implementations); clip fractions are exact up to kinks.
void check_metrics(const cgrpo::LossMetrics& m, const ref::Result& want, double rel) {
  const ref::Magnitudes& s = want.mag;
  CHECK(ref::close(m.loss, want.loss, rel, s.loss));
  CHECK(ref::close(m.pg_loss, want.pg, rel, s.pg));
  CHECK(ref::close(m.pg_loss_initial, want.pg_initial, rel, s.pg_initial));
  CHECK(ref::close(m.pg_loss_refinement, want.pg_refinement, rel, s.pg_refinement));
  CHECK(ref::close(m.entropy_loss, want.entropy_agg, rel, s.entropy_agg));
  CHECK(ref::close(m.kl_loss, want.kl_agg, rel, s.kl_agg));
  CHECK(ref::close(m.pg_clipfrac, want.clipfrac, rel, 1.0));
  CHECK(ref::close(m.pg_clipfrac_lower, want.clipfrac_lower, rel, 1.0));
  CHECK(ref::close(m.ppo_kl, want.ppo_kl, rel, s.ppo_kl));
  CHECK(ref::close(m.entropy_mean, want.entropy_mean, rel, s.entropy_mean));
  CHECK(ref::close(m.kl_mean, want.kl_mean, rel, s.kl_mean));
  CHECK(ref::close(m.refinement_prob_mean, want.prob_mean, rel, s.prob_mean));
  CHECK(ref::close(m.ratio_mean, want.ratio_mean, rel, s.ratio_mean));
  CHECK(m.num_valid_tokens == want.valid);
  CHECK(m.num_initial_tokens == want.initial);
  CHECK(m.num_refinement_tokens == want.refinement);
}

}  // namespace

TEST_CASE("fused loss: gradient equals finite differences for every clip, KL and aggregation combination",
          "[fused][gradient]") {
  auto rng = fresh_rng();
  const cgrpo::Aggregation aggs[] = {cgrpo::Aggregation::token_mean, cgrpo::Aggregation::seq_mean_token_sum,
                                     cgrpo::Aggregation::seq_mean_token_mean,
                                     cgrpo::Aggregation::seq_mean_token_sum_norm};
  const cgrpo::KlEstimator kls[] = {cgrpo::KlEstimator::none, cgrpo::KlEstimator::k1, cgrpo::KlEstimator::abs,
                                    cgrpo::KlEstimator::k2, cgrpo::KlEstimator::k3};
  struct ClipCase {
    cgrpo::PolicyLoss loss;
    cgrpo::RatioLevel level;
    bool dual;
  };
  const ClipCase clips[] = {{cgrpo::PolicyLoss::ratio, cgrpo::RatioLevel::token, false},
                            {cgrpo::PolicyLoss::ppo_clip, cgrpo::RatioLevel::token, false},
                            {cgrpo::PolicyLoss::ppo_clip, cgrpo::RatioLevel::token, true},
                            {cgrpo::PolicyLoss::ppo_clip, cgrpo::RatioLevel::sequence_detached, false},
                            {cgrpo::PolicyLoss::ppo_clip, cgrpo::RatioLevel::sequence_detached, true}};
  int combos = 0;
  for (const ClipCase& clip : clips)
    for (cgrpo::KlEstimator kl : kls)
      for (int a = 0; a < 4; ++a) {
        cgrpo::LossConfig c;
        c.policy.loss = clip.loss;
        c.ratio.level = clip.level;
        c.ratio.dual_clip = clip.dual;
        c.ratio.clip_eps_low = 0.2;
        c.ratio.clip_eps_high = 0.28;
        c.ratio.dual_clip_c = 1.5;  // small, so that dual clipping happens on random data
        c.kl.estimator = kl;
        c.kl.coef = kl == cgrpo::KlEstimator::none ? 0.0 : 0.3;
        c.entropy.coef = 0.05;
        // verl's GSPO form (sequence_detached) always aggregates its policy term seq-mean-token-mean
        // (the config refuses any other); the entropy and KL modes still vary.
        c.aggregation.policy =
            clip.level == cgrpo::RatioLevel::sequence_detached ? cgrpo::Aggregation::seq_mean_token_mean : aggs[a];
        c.aggregation.entropy = aggs[(a + 1) % 4];
        c.aggregation.kl = aggs[(a + 2) % 4];
        c.temperature = (combos % 3 == 0) ? 0.7 : 1.0;
        ref::Batch b = ref::random_batch(rng, 4, 4, 7, combos % 2 ? 3 : 0);
        ref::avoid_kinks(b, c, rng);
        ref::set_weights(b, c);
        CAPTURE(to_string(clip.loss), to_string(clip.level), clip.dual, to_string(kl), to_string(c.aggregation.policy),
                to_string(c.aggregation.entropy), to_string(c.aggregation.kl), c.temperature);

        const RunOutput got = run_library<double>(b, c);
        INFO(got.status.message);
        REQUIRE(got.status.ok());
        const ref::Result want = ref::loss(b, b.logits, c);
        check_metrics(got.metrics, want, ref::double_rel(want, b));
        CHECK(ref::close_all(got.logp, want.logp, 4 * DBL_EPSILON, want.mag.u + b.V));
        CHECK(ref::close_all(got.entropy, want.entropy, 4 * DBL_EPSILON, want.mag.u + b.V));
        const std::vector<double> fd = ref::finite_difference_gradient(b, c);
        REQUIRE(max_abs(fd) > 0);
        // Central differences of J with h = 1e-6: roundoff <= T eps sum |terms of J| / h < 4e-9
        // mag.terms (T <= 16), truncation h^2 |J^(3)| / 6 ~ 1e-13 max |g| / tau^2: within 1e-7 of
        // max |fd|, or of 0.1 mag.terms when every entry is ~0.
        CHECK(ref::close_all(got.grad, fd, 1e-7, 0.1 * want.mag.terms));
        ++combos;
      }
  CHECK(combos == 100);
}

TEST_CASE("fused loss: refinement shaping and initial ratio loss in one batch match the reference", "[fused]") {
  auto rng = fresh_rng();
  for (cgrpo::LossConfig c : {cgrpo::paper_critique_grpo().loss, cgrpo::verl_grpo().loss, cgrpo::verl_dr_grpo().loss,
                              cgrpo::verl_dapo().loss, cgrpo::verl_gspo().loss}) {
    ref::Batch b = ref::random_batch(rng, 12, 20, 50, 5);
    ref::avoid_kinks(b, c, rng);
    ref::set_weights(b, c);
    const ref::Result want = ref::loss(b, b.logits, c);
    const RunOutput d = run_library<double>(b, c);
    REQUIRE(d.status.ok());
    check_metrics(d.metrics, want, ref::double_rel(want, b));
    REQUIRE(want.initial > 0);
    REQUIRE(want.refinement > 0);
    // float against the float64 reference on the same (float-rounded) inputs.
    const ref::Batch bf = ref::rounded_to<float>(b);
    const ref::Result want_f = ref::loss(bf, bf.logits, c);
    const RunOutput d_f = run_library<double>(bf, c);
    const RunOutput f = run_library<float>(b, c);
    REQUIRE(f.status.ok());
    const double rel = ref::float_rel(want_f);
    check_metrics(f.metrics, want_f, rel);
    CHECK(ref::close_rows(f.grad, d_f.grad, bf, rel, ref::row_gradient_scales(bf, want_f, c)));
    CHECK(ref::close_all(f.logp, want_f.logp, rel, want_f.mag.u));
  }
}

TEST_CASE("fused loss: in place equals a separate buffer, bit for bit", "[fused]") {
  auto rng = fresh_rng();
  cgrpo::LossConfig c = cgrpo::verl_grpo().loss;
  c.entropy.coef = 0.01;
  ref::Batch b = ref::random_batch(rng, 6, 30, 300, 17);
  ref::set_weights(b, c);
  for (int pass = 0; pass < 2; ++pass) {
    const RunOutput sep = pass ? run_library<float>(b, c) : run_library<double>(b, c);
    const RunOutput inp = pass ? run_library<float>(b, c, true) : run_library<double>(b, c, true);
    REQUIRE(sep.status.ok());
    REQUIRE(inp.status.ok());
    CHECK(sep.grad == inp.grad);
    CHECK(sep.metrics.loss == inp.metrics.loss);
  }
}

TEST_CASE("fused loss: the thread count never changes a bit", "[fused][determinism]") {
  auto rng = fresh_rng();
  cgrpo::LossConfig c = cgrpo::verl_dapo().loss;
  c.kl.estimator = cgrpo::KlEstimator::k3;
  c.kl.coef = 0.01;
  c.entropy.coef = 0.001;
  ref::Batch b = ref::random_batch(rng, 9, 40, 1000, 0);
  ref::set_weights(b, c);
  const RunOutput one = run_library<float>(b, c, false, 1);
  REQUIRE(one.status.ok());
  for (int threads : {2, 3, 8}) {  // the workspace's thread count
    const RunOutput many = run_library<float>(b, c, false, threads);
    REQUIRE(many.status.ok());
    CHECK(std::memcmp(&many.metrics, &one.metrics, sizeof(one.metrics)) == 0);
    CHECK(many.grad == one.grad);
    CHECK(many.logp == one.logp);
  }
  const RunOutput again = run_library<float>(b, c, false, 8);
  CHECK(again.grad == one.grad);
  CHECK(again.metrics.loss == one.metrics.loss);
}

TEST_CASE("fused loss: forward only gives the same loss and writes no gradient", "[fused]") {
  auto rng = fresh_rng();
  cgrpo::LossConfig c = cgrpo::paper_critique_grpo().loss;
  ref::Batch b = ref::random_batch(rng, 5, 10, 64, 0);
  ref::set_weights(b, c);
  ref::LibraryBatch<double> lb(b);
  cgrpo::LossMetrics m;
  cgrpo::PolicyLossOutputs<double> out;
  out.metrics = &m;
  REQUIRE(cgrpo::cpu::fused_policy_loss(c, lb.view, out).ok());
  const ref::Result want = ref::loss(b, b.logits, c);
  CHECK(ref::close(m.loss, want.loss, ref::double_rel(want, b), want.mag.loss));
  CHECK(lb.logits == std::vector<double>(b.logits.begin(), b.logits.end()));
}

TEST_CASE("token_logprobs matches the reference log-softmax and entropy", "[logprobs]") {
  auto rng = fresh_rng();
  ref::Batch b = ref::random_batch(rng, 7, 9, 333, 4, 5.0);
  for (double tau : {1.0, 0.6, 1.3}) {
    std::vector<double> logp(b.T, -1.0), ent(b.T, -1.0);
    std::vector<float> logits_f(b.logits.begin(), b.logits.end()), logp_f(b.T), ent_f(b.T);
    REQUIRE(cgrpo::cpu::token_logprobs(b.logits.data(), b.T, b.V, b.stride, b.targets.data(), tau, logp.data(),
                                       ent.data(), 2)
                .ok());
    cgrpo::cpu::Workspace ws;  // the reusable-workspace overload
    REQUIRE(cgrpo::cpu::token_logprobs(logits_f.data(), b.T, b.V, b.stride, b.targets.data(), tau, logp_f.data(),
                                       ent_f.data(), 1, &ws)
                .ok());
    for (int64_t t = 0; t < b.T; ++t) {
      const double* z = &b.logits[t * b.stride];
      const ref::TokenValues w = ref::log_softmax_entropy(z, b.V, b.targets[t], tau);
      // log p and H of a row are made of numbers of size U = max |z / tau| + log V: double
      // carries ~(V + U) eps of them (V = 333, U ~ 50); float rounds each logit (eps_f |z|) and
      // computes u in float: ~4 eps_f U, 16 eps_f U with room.
      double U = std::log(static_cast<double>(b.V));
      for (int64_t v = 0; v < b.V; ++v) U = std::max(U, std::fabs(z[v] / tau) + std::log(static_cast<double>(b.V)));
      CAPTURE(t, tau);
      CHECK(ref::close(logp[t], w.logp, 4 * DBL_EPSILON, U + b.V));
      CHECK(ref::close(ent[t], w.entropy, 4 * DBL_EPSILON, U + b.V));
      CHECK(ref::close(logp_f[t], w.logp, 16 * FLT_EPSILON, U));
      CHECK(ref::close(ent_f[t], w.entropy, 16 * FLT_EPSILON, U));
    }
  }
}

TEST_CASE("fused loss: a separate gradient larger than the caches (streaming stores) equals in place", "[fused][large]") {
  // 150 x 151936 floats = 91 MB, above the 64 MB where the CPU path writes a separate gradient
  // with streaming stores; unaligned output pointer and an odd row stride on top.
  std::mt19937_64 rng = test_seed::fresh_rng();
  const int64_t T = 150, V = 151936, stride = V + 3;
  std::normal_distribution<float> normal(0.f, 3.f);
  std::uniform_int_distribution<int32_t> tok(0, V - 1);
  // One response of T rows; every value drawn in float (the library view's precision).
  support::Batch batch = support::padded_batch(1, T, V);
  batch.stride = stride;
  batch.logits.assign(static_cast<size_t>(T * stride), 0.0);
  for (auto& z : batch.logits) z = normal(rng);
  for (int64_t t = 0; t < T; ++t) {
    batch.targets[t] = tok(rng);
    batch.kinds[t] = t % 7 == 0 ? cgrpo::kRefinement : cgrpo::kInitial;
    batch.adv[t] = normal(rng);
    batch.old_logp[t] = -12.f + normal(rng) * 0.1f;
    batch.w_pg[t] = 1.f / T;
    batch.w_h[t] = 1.f / T;
  }
  cgrpo::LossConfig c = cgrpo::verl_dapo().loss;
  c.entropy.coef = 0.01;
  support::LibraryBatch<float> lib(batch, c, support::Weights::caller);
  const cgrpo::PolicyLossBatch<float>& b = lib.view;
  const std::vector<float>& logits = lib.logits;
  for (int threads : {1, 2}) {
    cgrpo::cpu::Workspace ws(threads);
    std::vector<float> grad_storage(T * stride + 1, -7.f);
    float* grad = grad_storage.data() + 1;  // not 16-byte aligned
    cgrpo::LossMetrics m_sep, m_inp;
    REQUIRE(cgrpo::cpu::fused_policy_loss(c, b, cgrpo::PolicyLossOutputs<float>{grad, 0, nullptr, nullptr, &m_sep}, ws).ok());
    std::vector<float> work = logits;
    cgrpo::PolicyLossBatch<float> bi = b;
    bi.logits = work.data();
    REQUIRE(cgrpo::cpu::fused_policy_loss(c, bi, cgrpo::PolicyLossOutputs<float>{work.data(), 0, nullptr, nullptr, &m_inp}, ws)
                .ok());
    CHECK(m_sep.loss == m_inp.loss);
    int64_t mismatches = 0, padding_touched = 0;
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t v = 0; v < V; ++v) mismatches += grad[t * stride + v] != work[t * stride + v];
      for (int64_t v = V; v < stride; ++v) padding_touched += grad[t * stride + v] != -7.f;
    }
    CHECK(mismatches == 0);
    CHECK(padding_touched == 0);
    CHECK(grad_storage[0] == -7.f);
  }
}

namespace {

// The float path against the float64 path on the same float-rounded inputs at temperature tau,
// every clip mode; logits of size 2 (|u| up to ~10 / tau: near one-hot rows at small tau) and
// 2 tau (u ~ N(0, 4)). Tolerances: float_rel of ref::Magnitudes / ref::gradient_scale.
void check_float_against_double_at(double tau, std::mt19937_64& rng) {
  struct ClipCase {
    ref::Clip mode;
    bool dual;
  };
  const ClipCase clips[] = {{ref::Clip::none, false},
                            {ref::Clip::token, false},
                            {ref::Clip::token, true},
                            {ref::Clip::sequence, false},
                            {ref::Clip::sequence, true}};
  int k = 0;
  for (const ClipCase& clip : clips)
    for (double logit_scale : {2.0, 2.0 * tau}) {
      cgrpo::LossConfig c;
      ref::set_clip(c, clip.mode);
      c.ratio.dual_clip = clip.dual;
      c.ratio.clip_eps_low = 0.2;
      c.ratio.clip_eps_high = 0.28;
      c.ratio.dual_clip_c = 1.5;
      c.kl.estimator = cgrpo::KlEstimator::k3;
      c.kl.coef = 0.1;
      c.entropy.coef = 0.01;
      c.aggregation.policy = cgrpo::Aggregation::seq_mean_token_mean;
      c.temperature = tau;
      // V = 37: the sweeps' scalar tails only; V >= 1000: their vector and chunk paths.
      const int64_t V = k++ % 2 ? 37 : 1000 + static_cast<int64_t>(rng() % 3000);
      ref::Batch b = ref::random_batch(rng, 5, 8, V, 3, logit_scale);
      ref::avoid_kinks(b, c, rng);
      ref::set_weights(b, c);
      const ref::Batch bf = ref::rounded_to<float>(b);
      const ref::Result want = ref::loss(bf, bf.logits, c);
      const RunOutput d = run_library<double>(bf, c);
      const RunOutput f = run_library<float>(b, c);
      CAPTURE(tau, ref::to_string(clip.mode), clip.dual, V, logit_scale, want.mag.u);
      INFO("float: " << f.status.message << "; double: " << d.status.message);
      REQUIRE(d.status.ok());
      REQUIRE(f.status.ok());
      REQUIRE(max_abs(d.grad) > 0);
      check_metrics(d.metrics, want, ref::double_rel(want, bf));  // the float64 path is the reference here
      const double rel = ref::float_rel(want);
      check_metrics(f.metrics, want, rel);
      CHECK(ref::close_all(f.logp, d.logp, rel, want.mag.u));
      CHECK(ref::close_all(f.entropy, d.entropy, rel, want.mag.u));
      // Row by row: (2 |a_t| + |b_t| (3 + H_t)) / tau is the row's size (ref::row_gradient_scales);
      // measured: <= 1 eps_f U of it at every tau from 0.001 to 7 (8 allowed).
      CHECK(ref::close_rows(f.grad, d.grad, bf, rel, ref::row_gradient_scales(bf, want, c)));
    }
}

}  // namespace

TEST_CASE("fused loss: float gradient equals float64 at temperatures 0.01 to 5, every clip mode",
          "[fused][temperature]") {
  auto rng = fresh_rng();
  for (double tau : {0.01, 0.05, 0.1, 0.3, 0.7, 1.3, 2.0, 5.0}) check_float_against_double_at(tau, rng);
}
