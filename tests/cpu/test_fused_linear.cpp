// The fused LM head + loss (cpu::fused_linear_policy_loss, fused_linear_token_logprobs, the
// vocabulary-parallel phases) against the logits-level loss composed with explicit GEMMs, and
// against central finite differences on h, W and b.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <Eigen/Core>
#include <cgrpo/cgrpo.hpp>
#include <cgrpo/cpu/fused_linear_policy_loss.hpp>
#include <cgrpo/cpu/fused_linear_token_logprobs.hpp>
#include <cgrpo/parallel/vocab_parallel_linear.hpp>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "reference.hpp"

namespace {

using ref::max_abs;
using ref::max_abs_diff;
template <typename Real>
using Mat = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// A batch whose logits are h W^T + b: the per-token arrays of ref::random_batch, old and
// reference log-probs near the current ones (away from the presets' kinks), rollout log-probs.
struct Problem {
  ref::Batch b;  // b.logits = h W^T + bias, stride V
  int64_t H = 0;
  std::vector<double> h, W, bias;  // [T, H], [V, H], [V] (empty: no bias)
  std::vector<double> rollout;
  std::vector<uint8_t> selection;
};

// b.logits = h W^T + b in double.
void set_logits(Problem& p) {
  ref::Batch& b = p.b;
  for (int64_t t = 0; t < b.T; ++t)
    for (int64_t v = 0; v < b.V; ++v) {
      double z = p.bias.empty() ? 0.0 : p.bias[v];
      for (int64_t k = 0; k < p.H; ++k) z += p.h[t * p.H + k] * p.W[v * p.H + k];
      b.logits[t * b.stride + v] = z;
    }
}

void set_logits_and_logps(Problem& p, std::mt19937_64& rng) {
  ref::Batch& b = p.b;
  set_logits(p);
  std::normal_distribution<double> normal(0.0, 1.0);
  const double kinks[] = {0.0, std::log(0.8), std::log(1.2), std::log(1.28), std::log(3.0), std::log(1.5)};
  auto near_kink = [&](double d) {
    for (double k : kinks)
      if (std::fabs(d - k) < 1e-4) return true;
    return false;
  };
  p.rollout.resize(b.T);
  for (int64_t t = 0; t < b.T; ++t) {
    const double lp = ref::log_softmax_entropy(&b.logits[t * b.stride], b.V, b.targets[t], 1.0).logp;
    double o, r;
    do o = lp + 0.3 * normal(rng);
    while (near_kink(lp - o));
    do r = lp + 0.5 * normal(rng);
    while (near_kink(lp - r));
    b.old_logp[t] = o;
    b.ref_logp[t] = r;
    p.rollout[t] = o + 0.2 * normal(rng);
  }
}

Problem make_problem(std::mt19937_64& rng, int64_t B, int64_t max_len, int64_t V, int64_t H, bool bias) {
  Problem p;
  p.b = ref::random_batch(rng, B, max_len, V, 0);
  p.H = H;
  std::normal_distribution<double> normal(0.0, 1.0);
  p.h.resize(p.b.T * H);
  p.W.resize(V * H);
  for (double& x : p.h) x = normal(rng);
  for (double& x : p.W) x = 2.0 * normal(rng) / std::sqrt(static_cast<double>(H));
  if (bias) {
    p.bias.resize(V);
    for (double& x : p.bias) x = 0.5 * normal(rng);
  }
  p.selection.resize(p.b.T);
  for (int64_t t = 0; t < p.b.T; ++t) p.selection[t] = (rng() % 5) == 0;
  set_logits_and_logps(p, rng);
  return p;
}

int64_t initial_tokens(const Problem& p) {
  int64_t n = 0;
  for (int64_t t = 0; t < p.b.T; ++t) n += p.b.mask[t] && p.b.kinds[t] == cgrpo::kInitial;
  return n;
}

// Which optional inputs a config reads.
struct Inputs {
  bool computed_weights = false;
  bool selection = false;
};

template <typename Real>
struct View {
  ref::LibraryBatch<Real> lib;
  std::vector<Real> rollout;
  std::vector<int32_t> targets;  // a copy: tests edit it
  explicit View(const Problem& p, const Inputs& in)
      : lib(p.b), rollout(p.rollout.begin(), p.rollout.end()), targets(p.b.targets) {
    lib.view.rollout_logp = rollout.data();
    lib.view.target_ids = targets.data();
    if (in.computed_weights) lib.view.pg_weights = lib.view.entropy_weights = lib.view.kl_weights = nullptr;
    if (in.selection) lib.view.selection = p.selection.data();
  }
};

struct Result {
  cgrpo::Status status;
  cgrpo::LossMetrics metrics;
  std::vector<double> gh, gw, gb, logp, entropy;
};

// The logits-level path composed with explicit GEMMs: z = h W^T + b in Real, cpu::fused_policy_loss
// on z (in place), then G W, G^T h and the column sums of G in Real.
template <typename Real>
Result composed(const Problem& p, const cgrpo::LossConfig& c, const Inputs& in) {
  const int64_t T = p.b.T, V = p.b.V, H = p.H;
  const Mat<Real> h = Eigen::Map<const Mat<double>>(p.h.data(), T, H).cast<Real>();
  const Mat<Real> W = Eigen::Map<const Mat<double>>(p.W.data(), V, H).cast<Real>();
  Mat<Real> z = h * W.transpose();
  if (!p.bias.empty())
    z.rowwise() += Eigen::Map<const Eigen::RowVectorXd>(p.bias.data(), V).cast<Real>();
  View<Real> view(p, in);
  view.lib.view.logits = z.data();
  view.lib.view.row_stride = V;
  std::vector<Real> logp(T), ent(T);
  Result r;
  cgrpo::PolicyLossOutputs<Real> out;
  out.grad_logits = z.data();
  out.logp = logp.data();
  out.entropy = ent.data();
  out.metrics = &r.metrics;
  r.status = cgrpo::cpu::fused_policy_loss(c, view.lib.view, out);
  if (!r.status.ok()) return r;
  const Mat<Real> gh = z * W, gw = z.transpose() * h;
  const Eigen::Matrix<Real, 1, Eigen::Dynamic> gb = z.colwise().sum();
  r.gh.assign(gh.data(), gh.data() + gh.size());
  r.gw.assign(gw.data(), gw.data() + gw.size());
  if (!p.bias.empty()) r.gb.assign(gb.data(), gb.data() + gb.size());
  r.logp.assign(logp.begin(), logp.end());
  r.entropy.assign(ent.begin(), ent.end());
  return r;
}

// How the fused linear call lays out its buffers.
struct Layout {
  int64_t chunk = 0;        // chunking.tokens
  int64_t hidden_pad = 0;   // hidden row stride H + pad
  int64_t weight_pad = 0;
  int64_t grad_pad = 0;     // grad_hidden and grad_weight strides H + pad
  bool in_place = false;    // grad_hidden == hidden
  bool accumulate = false;  // grad_weight and grad_bias start from `start` values and are added to
  int threads = 1;
};

template <typename Real>
Result run_linear(const Problem& p, const cgrpo::LossConfig& c, const Inputs& in, const Layout& lay,
                  cgrpo::cpu::Workspace* workspace = nullptr) {
  const int64_t T = p.b.T, V = p.b.V, H = p.H;
  const int64_t lh = H + lay.hidden_pad, lw = H + lay.weight_pad, lg = H + lay.grad_pad;
  std::vector<Real> h(T * lh, Real(-777)), W(V * lw, Real(-777)), bias(p.bias.begin(), p.bias.end());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < H; ++k) h[t * lh + k] = static_cast<Real>(p.h[t * H + k]);
  for (int64_t v = 0; v < V; ++v)
    for (int64_t k = 0; k < H; ++k) W[v * lw + k] = static_cast<Real>(p.W[v * H + k]);
  const Real start = lay.accumulate ? Real(0.25) : Real(0);
  std::vector<Real> gh(lay.in_place ? 0 : T * lg, Real(0)), gw(V * lg, start), gb(V, start), logp(T), ent(T);
  View<Real> view(p, in);
  view.lib.view.logits = nullptr;
  view.lib.view.row_stride = 0;
  cgrpo::LinearHead<Real> head;
  head.hidden = h.data();
  head.hidden_size = H;
  head.hidden_row_stride = lh;
  head.weight = W.data();
  head.weight_row_stride = lw;
  head.bias = p.bias.empty() ? nullptr : bias.data();
  cgrpo::LinearHeadGrads<Real> grads;
  grads.grad_hidden = lay.in_place ? h.data() : gh.data();
  grads.grad_hidden_row_stride = lay.in_place ? lh : lg;
  grads.grad_weight = gw.data();
  grads.grad_weight_row_stride = lg;
  grads.grad_bias = p.bias.empty() ? nullptr : gb.data();
  grads.accumulate = lay.accumulate;
  Result r;
  cgrpo::PolicyLossOutputs<Real> out;
  out.logp = logp.data();
  out.entropy = ent.data();
  out.metrics = &r.metrics;
  cgrpo::LinearChunking chunking;
  chunking.tokens = lay.chunk;
  cgrpo::cpu::Workspace local;
  cgrpo::cpu::Workspace& ws = workspace ? *workspace : local;
  ws.num_threads = lay.threads;
  r.status = cgrpo::cpu::fused_linear_policy_loss(c, view.lib.view, head, out, grads, ws, chunking);
  const std::vector<Real>& ghs = lay.in_place ? h : gh;
  const int64_t lgh = lay.in_place ? lh : lg;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < H; ++k) r.gh.push_back(static_cast<double>(ghs[t * lgh + k]));
  for (int64_t v = 0; v < V; ++v)
    for (int64_t k = 0; k < H; ++k) r.gw.push_back(static_cast<double>(gw[v * lg + k] - start));
  if (!p.bias.empty())
    for (int64_t v = 0; v < V; ++v) r.gb.push_back(static_cast<double>(gb[v] - start));
  r.logp.assign(logp.begin(), logp.end());
  r.entropy.assign(ent.begin(), ent.end());
  return r;
}

bool close(double got, double want, double tol) { return std::fabs(got - want) <= tol * std::max(1.0, std::fabs(want)); }

void check_metrics(const cgrpo::LossMetrics& a, const cgrpo::LossMetrics& b, double tol) {
  const double pa[] = {a.loss, a.pg_loss, a.pg_loss_initial, a.pg_loss_refinement, a.entropy_loss, a.kl_loss,
                       a.pg_clipfrac, a.pg_clipfrac_lower, a.ppo_kl, a.ratio_mean, a.clip_ratio_low_mean,
                       a.clip_ratio_high_mean, a.clip_ratio_region_mean, a.clip_ratio_low_min, a.clip_ratio_high_max,
                       a.entropy_mean, a.kl_mean, a.refinement_prob_mean, a.vespo_phi_mean};
  const double pb[] = {b.loss, b.pg_loss, b.pg_loss_initial, b.pg_loss_refinement, b.entropy_loss, b.kl_loss,
                       b.pg_clipfrac, b.pg_clipfrac_lower, b.ppo_kl, b.ratio_mean, b.clip_ratio_low_mean,
                       b.clip_ratio_high_mean, b.clip_ratio_region_mean, b.clip_ratio_low_min, b.clip_ratio_high_max,
                       b.entropy_mean, b.kl_mean, b.refinement_prob_mean, b.vespo_phi_mean};
  for (size_t i = 0; i < sizeof(pa) / sizeof(pa[0]); ++i) {
    INFO("metric " << i << ": " << pa[i] << " vs " << pb[i]);
    CHECK(close(pa[i], pb[i], tol));
  }
  CHECK(a.num_valid_tokens == b.num_valid_tokens);
  CHECK(a.num_initial_tokens == b.num_initial_tokens);
  CHECK(a.num_refinement_tokens == b.num_refinement_tokens);
}

// Every output within tol of the reference, relative to the largest entry of each (absolute floor 1).
void check_same(const Result& got, const Result& want, double tol) {
  INFO(got.status.message);
  REQUIRE(got.status.ok());
  check_metrics(got.metrics, want.metrics, tol);
  auto rel = [](const std::vector<double>& a, const std::vector<double>& b) {
    return max_abs_diff(a, b) / std::max(1.0, max_abs(b));
  };
  CHECK(rel(got.logp, want.logp) <= tol);
  CHECK(rel(got.entropy, want.entropy) <= tol);
  CHECK(rel(got.gh, want.gh) <= tol);
  CHECK(rel(got.gw, want.gw) <= tol);
  CHECK(rel(got.gb, want.gb) <= tol);
  REQUIRE(max_abs(want.gh) > 0);
  REQUIRE(max_abs(want.gw) > 0);
}

struct NamedConfig {
  std::string name;
  cgrpo::LossConfig config;
  Inputs inputs;
};

// Every mode of the logits-level loss: the presets, each policy term, each KL form, the row- and
// batch-coupled features (two passes), computed weights, temperature.
std::vector<NamedConfig> all_modes() {
  using namespace cgrpo;
  std::vector<NamedConfig> v;
  auto add = [&](const char* name, LossConfig c, Inputs in = {}) { v.push_back({name, c, in}); };
  add("paper", paper_critique_grpo().loss);
  add("verl_grpo", verl_grpo().loss);
  add("verl_dr_grpo", verl_dr_grpo().loss);
  add("verl_dapo", verl_dapo().loss);
  add("verl_gspo (sequence_detached: two passes)", verl_gspo().loss);
  {
    LossConfig c = verl_vanilla().loss;
    c.ratio.dual_clip_c = 1.5;
    c.kl.estimator = KlEstimator::k1;
    c.kl.coef = 0.2;
    c.kl.straight_through = true;
    c.entropy.coef = 0.01;
    c.temperature = 0.7;
    add("ppo dual clip, k1+ KL, tau 0.7", c);
  }
  {
    LossConfig c;
    c.policy.loss = PolicyLoss::cispo;
    c.kl.estimator = KlEstimator::k2;
    c.kl.coef = 0.1;
    add("cispo, k2", c);
  }
  {
    LossConfig c;
    c.policy.loss = PolicyLoss::cispo_cap;
    c.policy.cispo_cap.ratio_cap = 1.1;
    c.kl.estimator = KlEstimator::abs;
    c.kl.coef = 0.1;
    add("cispo_cap, abs KL", c);
  }
  {
    LossConfig c;
    c.policy.loss = PolicyLoss::sapo;
    c.aggregation.policy = Aggregation::seq_mean_token_mean;  // sapo's own (the config refuses any other)
    c.kl.estimator = KlEstimator::k3;
    c.kl.k3_clamp = false;
    c.kl.coef = 0.05;
    c.ratio.log_ratio_min = -INFINITY;
    c.ratio.log_ratio_max = INFINITY;
    add("sapo, unclamped k3, no ratio clamp", c);
  }
  {
    LossConfig c;
    c.policy.loss = PolicyLoss::gpg;
    c.entropy.coef = 0.02;
    add("gpg", c);
  }
  {
    LossConfig c = verl_vanilla().loss;
    c.policy.loss = PolicyLoss::geo_mean;
    c.aggregation.policy = Aggregation::seq_mean_token_mean;  // geo_mean's own (the config refuses any other)
    c.ratio.dual_clip = false;
    add("geo_mean (two passes)", c, Inputs{true, false});
  }
  {
    LossConfig c = verl_vanilla().loss;
    c.ratio.dual_clip = false;
    c.policy.loss = PolicyLoss::kl_cov;
    c.policy.kl_cov.ratio = 0.2;
    add("kl_cov, selected by covariance (two passes)", c);
    add("kl_cov, caller's selection (single pass)", c, Inputs{false, true});
    c.policy.loss = PolicyLoss::clip_cov;
    c.policy.clip_cov.ratio = 0.2;
    c.policy.clip_cov.lower = -1.0;
    c.policy.clip_cov.upper = 1.0;
    add("clip_cov (two passes)", c);
    add("clip_cov, caller's selection", c, Inputs{false, true});
  }
  {
    LossConfig c;
    c.policy.loss = PolicyLoss::ppo_clip;
    c.ratio.level = RatioLevel::sequence;
    c.kl.estimator = KlEstimator::k3;
    c.kl.coef = 0.1;
    c.kl.times_ratio = true;
    add("TRL sequence level, k3 times ratio (two passes)", c);
  }
  {
    LossConfig c;
    c.policy.loss = PolicyLoss::vespo;
    add("vespo (two passes)", c);
  }
  {
    LossConfig c = verl_dapo().loss;
    c.entropy_mask.top_quantile = 0.5;
    c.entropy.coef = 0.01;
    add("entropy quantile (two passes)", c, Inputs{true, false});
  }
  {
    LossConfig c = verl_grpo().loss;
    c.off_policy.rollout.mode = RolloutCorrectionMode::decoupled;
    c.off_policy.rollout.is_level = RolloutIsLevel::token;
    add("verl rollout correction, decoupled (single pass)", c, Inputs{true, false});
    c.off_policy.rollout.mode = RolloutCorrectionMode::bypass;
    add("verl rollout correction, bypass (two passes)", c, Inputs{true, false});
  }
  {
    LossConfig c = verl_dapo().loss;
    c.off_policy.sampler.mode = SamplerCorrectionMode::token_truncate;
    c.off_policy.sampler.max = 2.0;
    add("TRL sampler correction (two passes)", c);
    c.off_policy.sampler.mode = SamplerCorrectionMode::none;
    c.off_policy.opsm_threshold = 0.5;
    add("TRL OPSM (two passes)", c);
  }
  // verl 1dda039's terms and IcePop.
  add("verl dppo_tv", verl_dppo_tv().loss);
  add("verl dppo_kl", verl_dppo_kl().loss);
  {
    LossConfig c = verl_dro(0.7).loss;
    c.kl.estimator = KlEstimator::k3;
    c.kl.coef = 0.05;
    add("verl dro, k3 KL", c);
  }
  {
    LossConfig c = verl_icepop(verl_decoupled(verl_grpo(), RolloutIsLevel::token), 0.9, 1.1).loss;
    add("verl IcePop, decoupled token (single pass)", c, Inputs{true, false});
  }
  const Aggregation aggs[] = {Aggregation::token_mean, Aggregation::seq_mean_token_sum,
                              Aggregation::seq_mean_token_mean, Aggregation::seq_mean_token_sum_norm,
                              Aggregation::token_sum};
  constexpr int kAggs = sizeof(aggs) / sizeof(aggs[0]);
  for (int a = 0; a < kAggs; ++a) {
    LossConfig c = verl_grpo().loss;
    c.entropy.coef = 0.01;
    c.aggregation.policy = aggs[a];
    c.aggregation.entropy = aggs[(a + 1) % kAggs];
    c.aggregation.kl = aggs[(a + 2) % kAggs];
    add((std::string("weights computed by the loss, pg ") + to_string(aggs[a])).c_str(), c, Inputs{true, false});
  }
  return v;
}

}  // namespace

TEST_CASE("fused linear: equals the composed path for every mode, chunk size, stride and bias", "[linear]") {
  auto rng = test_seed::fresh_rng();
  const Layout layouts[] = {
      {1, 0, 0, 0, false, false, 1},  // chunks of one token
      {7, 3, 1, 2, false, true, 2},   // odd chunks, every row stride padded, accumulate, 2 threads
      {0, 0, 2, 0, true, false, 1},   // chunk from the byte budget (> T here), in place
      {5, 1, 0, 1, true, true, 3},    // ragged last chunk, in place with padding, accumulate
  };
  int cases = 0;
  for (const NamedConfig& nc : all_modes()) {
    const bool bias = cases % 2 == 0;
    Problem p = make_problem(rng, 5, 9, 37, 6, bias);
    // kl_cov's top-k over two valid initial tokens is an exact tie (both covariances are
    // (A_0 - A_1)(l_0 - l_1) / 4), which rounding breaks either way: draw three or more.
    while (nc.config.policy.loss == cgrpo::PolicyLoss::kl_cov && !nc.inputs.selection && initial_tokens(p) < 3)
      p = make_problem(rng, 5, 9, 37, 6, bias);
    ref::set_weights(p.b, nc.config);
    CAPTURE(nc.name, bias, p.b.T);
    const Result want = composed<double>(p, nc.config, nc.inputs);
    INFO(want.status.message);
    REQUIRE(want.status.ok());
    for (const Layout& lay : layouts) {
      CAPTURE(lay.chunk, lay.hidden_pad, lay.weight_pad, lay.grad_pad, lay.in_place, lay.accumulate, lay.threads);
      check_same(run_linear<double>(p, nc.config, nc.inputs, lay), want, 1e-10);
    }
    ++cases;
  }
  CHECK(cases == static_cast<int>(all_modes().size()));
}

TEST_CASE("fused linear: float equals the composed float path to 1e-5", "[linear][float]") {
  auto rng = test_seed::fresh_rng();
  for (cgrpo::LossConfig c : {cgrpo::paper_critique_grpo().loss, cgrpo::verl_grpo().loss, cgrpo::verl_gspo().loss}) {
    c.entropy.coef = 0.01;
    Problem p = make_problem(rng, 6, 20, 3000, 40, true);  // V > one 2048-entry sweep chunk and one GEMM block
    ref::set_weights(p.b, c);
    const Result want = composed<float>(p, c, {});
    REQUIRE(want.status.ok());
    for (int64_t chunk : {int64_t{1}, int64_t{13}, int64_t{0}}) {
      CAPTURE(chunk);
      check_same(run_linear<float>(p, c, {}, Layout{chunk, 2, 1, 3, false, false, 2}), want, 1e-5);
    }
  }
}

TEST_CASE("fused linear: uncoupled configs take the single pass, coupled ones two", "[linear]") {
  auto rng = test_seed::fresh_rng();
  for (const NamedConfig& nc : all_modes()) {
    CAPTURE(nc.name);
    const bool two = nc.name.find("two passes") != std::string::npos;
    // The batch of View: rollout_logp always given, the caller's selection and weights as Inputs says.
    const cgrpo::PassInputs inputs{nc.inputs.computed_weights, nc.inputs.selection, true};
    CHECK(cgrpo::plan_passes(nc.config, inputs).all_logp_first == two);
  }
  // And the bound lets the single pass run on ordinary inputs (else it would fall back silently).
  Problem p = make_problem(rng, 4, 8, 50, 8, true);
  const cgrpo::LossConfig c = cgrpo::verl_grpo().loss;
  ref::set_weights(p.b, c);
  View<double> view(p, {});
  view.lib.view.logits = nullptr;
  view.lib.view.row_stride = 0;
  cgrpo::LinearHead<double> head{p.h.data(), p.H, 0, p.W.data(), 0, p.bias.data()};
  std::vector<double> gw(p.W.size());
  cgrpo::LinearHeadGrads<double> grads;
  grads.grad_weight = gw.data();
  cgrpo::cpu::Workspace ws;
  ws.rows.resize(p.b.T);
  ws.logit_bound.resize(p.b.T);
  ws.hidden_max.resize(p.b.T);
  cgrpo::cpu::detail::HeadScan scan;
  REQUIRE(cgrpo::cpu::detail::scan_head(head, p.b.T, p.b.V, 1, ws, &scan).ok());
  cgrpo::LossMetrics m;
  REQUIRE(cgrpo::cpu::prepare_token_pass(c, view.lib.view, ws, &m).ok());
  CHECK(cgrpo::cpu::detail::single_pass_bounded(c, view.lib.view, ws, scan, grads));
}

TEST_CASE("fused linear: gradients equal central finite differences on h, W and b", "[linear][gradient]") {
  auto rng = test_seed::fresh_rng();
  cgrpo::LossConfig single = cgrpo::verl_grpo().loss;
  single.kl.estimator = cgrpo::KlEstimator::k2;
  single.kl.coef = 0.3;
  single.entropy.coef = 0.05;
  single.temperature = 0.8;
  cgrpo::LossConfig two = cgrpo::verl_gspo().loss;
  two.entropy.coef = 0.05;
  for (const cgrpo::LossConfig& c : {single, two}) {
    Problem p = make_problem(rng, 3, 4, 7, 5, true);
    ref::set_weights(p.b, c);
    const Result got = run_linear<double>(p, c, {}, Layout{3, 1, 0, 0, false, false, 1});
    INFO(got.status.message);
    REQUIRE(got.status.ok());
    // J as a function of one entry of h, W or b (the old and reference log-probs stay fixed).
    const double step = 1e-6;
    auto fd = [&](std::vector<double> Problem::*field, size_t i) {
      Problem q = p;
      const double x0 = (q.*field)[i];
      double j[2];
      for (int s = 0; s < 2; ++s) {
        (q.*field)[i] = x0 + (s == 0 ? step : -step);
        set_logits(q);
        j[s] = composed<double>(q, c, {}).metrics.loss;
      }
      return (j[0] - j[1]) / (2 * step);
    };
    std::vector<double> fh, fw, fb;
    for (size_t i = 0; i < p.h.size(); ++i) fh.push_back(fd(&Problem::h, i));
    for (size_t i = 0; i < p.W.size(); ++i) fw.push_back(fd(&Problem::W, i));
    for (size_t i = 0; i < p.bias.size(); ++i) fb.push_back(fd(&Problem::bias, i));
    REQUIRE(max_abs(fh) > 1e-6);
    CHECK(max_abs_diff(got.gh, fh) <= 1e-7 * std::max(1.0, max_abs(fh)));
    CHECK(max_abs_diff(got.gw, fw) <= 1e-7 * std::max(1.0, max_abs(fw)));
    CHECK(max_abs_diff(got.gb, fb) <= 1e-7 * std::max(1.0, max_abs(fb)));
  }
}

TEST_CASE("fused linear: the thread count never changes a bit, and the workspace does not regrow", "[linear][determinism]") {
  auto rng = test_seed::fresh_rng();
  cgrpo::LossConfig c = cgrpo::verl_grpo().loss;
  c.entropy.coef = 0.01;
  // V over two GEMM blocks of 1024 rows, H over two blocks of 256 columns.
  Problem p = make_problem(rng, 4, 12, 2100, 300, true);
  ref::set_weights(p.b, c);
  cgrpo::cpu::Workspace ws;
  const Result one = run_linear<float>(p, c, {}, Layout{16, 0, 0, 0, false, false, 1}, &ws);
  REQUIRE(one.status.ok());
  const float* buffer = ws.chunk_float.data();
  for (int threads : {2, 3, 5}) {
    CAPTURE(threads);
    const Result many = run_linear<float>(p, c, {}, Layout{16, 0, 0, 0, false, false, threads}, &ws);
    REQUIRE(many.status.ok());
    CHECK(std::memcmp(&many.metrics, &one.metrics, sizeof(one.metrics)) == 0);
    CHECK(many.gh == one.gh);
    CHECK(many.gw == one.gw);
    CHECK(many.gb == one.gb);
    CHECK(many.logp == one.logp);
  }
  CHECK(ws.chunk_float.data() == buffer);  // steady state: the chunk buffer is reused, not reallocated
}

namespace {

// A call on poisoned outputs; returns the status and whether every output byte is unchanged.
struct Untouched {
  cgrpo::Status status;
  bool untouched = false;
};

template <typename Real>
Untouched run_poisoned(const Problem& p, const cgrpo::LossConfig& c, const Inputs& in,
                       const std::function<void(cgrpo::PolicyLossBatch<Real>&, cgrpo::LinearHead<Real>&,
                                                cgrpo::LinearHeadGrads<Real>&, std::vector<Real>&, std::vector<Real>&,
                                                std::vector<Real>&)>& edit) {
  const int64_t T = p.b.T, V = p.b.V, H = p.H;
  std::vector<Real> h(p.h.begin(), p.h.end()), W(p.W.begin(), p.W.end()), bias(p.bias.begin(), p.bias.end());
  View<Real> view(p, in);
  view.lib.view.logits = nullptr;
  view.lib.view.row_stride = 0;
  cgrpo::LinearHead<Real> head{h.data(), H, 0, W.data(), 0, p.bias.empty() ? nullptr : bias.data()};
  const Real poison = static_cast<Real>(-31.5);
  std::vector<Real> gh(T * H, poison), gw(V * H, poison), gb(V, poison), logp(T, poison), ent(T, poison);
  cgrpo::LinearHeadGrads<Real> grads;
  grads.grad_hidden = gh.data();
  grads.grad_weight = gw.data();
  grads.grad_bias = p.bias.empty() ? nullptr : gb.data();
  grads.accumulate = true;
  cgrpo::LossMetrics m;
  m.loss = -31.5;
  cgrpo::PolicyLossOutputs<Real> out;
  out.logp = logp.data();
  out.entropy = ent.data();
  out.metrics = &m;
  edit(view.lib.view, head, grads, h, W, bias);
  Untouched u;
  u.status = cgrpo::cpu::fused_linear_policy_loss(c, view.lib.view, head, out, grads, cgrpo::LinearChunking{3, 0});
  auto all = [&](const std::vector<Real>& x) {
    for (Real v : x)
      if (std::memcmp(&v, &poison, sizeof(Real)) != 0) return false;
    return true;
  };
  u.untouched = all(gh) && all(gw) && all(gb) && all(logp) && all(ent) && m.loss == -31.5;
  return u;
}

}  // namespace

TEST_CASE("fused linear: every error names its cause and leaves every output untouched, accumulate included",
          "[linear][errors]") {
  auto rng = test_seed::fresh_rng();
  Problem p = make_problem(rng, 4, 6, 20, 5, true);
  cgrpo::LossConfig c = cgrpo::verl_grpo().loss;
  ref::set_weights(p.b, c);
  using B = cgrpo::PolicyLossBatch<double>;
  using Hd = cgrpo::LinearHead<double>;
  using G = cgrpo::LinearHeadGrads<double>;
  using Vec = std::vector<double>;
  struct Case {
    const char* what;
    const char* message;
    std::function<void(B&, Hd&, G&, Vec&, Vec&, Vec&)> edit;
  };
  const double huge = 1e200;
  const Case cases[] = {
      {"NaN in hidden", "hidden[2][3] is not finite", [](B&, Hd&, G&, Vec& h, Vec&, Vec&) { h[2 * 5 + 3] = NAN; }},
      {"inf in weight", "weight[7][0] is not finite", [](B&, Hd&, G&, Vec&, Vec& W, Vec&) { W[7 * 5] = INFINITY; }},
      {"NaN in bias", "bias[19] is not finite", [](B&, Hd&, G&, Vec&, Vec&, Vec& b) { b[19] = NAN; }},
      {"bad target", "is outside [0, 20)", [](B& b, Hd&, G&, Vec&, Vec&, Vec&) { const_cast<int32_t*>(b.target_ids)[1] = 20; }},
      {"NaN advantage", "advantages[0] is not finite",
       [](B& b, Hd&, G&, Vec&, Vec&, Vec&) { const_cast<double*>(b.advantages)[0] = NAN; }},
      {"logits that could overflow", "its logits may overflow double",
       [huge](B&, Hd&, G&, Vec& h, Vec& W, Vec&) {
         h[0] = huge;
         W[0] = huge;
       }},
      {"a head gradient that could overflow", "dJ/dweight may overflow double",
       [](B& b, Hd&, G&, Vec& h, Vec& W, Vec&) {
         // |a_t| ~ 1e306: finite, and so are J and dJ/dlogits, but sum_t ||dJ/dz_t||_1 |h_t| is not
         // (h scaled up and W down by 1e3: the same logits).
         for (int64_t t = 0; t < b.num_tokens; ++t) {
           const_cast<double*>(b.advantages)[t] = 1e306;
           const_cast<double*>(b.pg_weights)[t] = 1.0;
         }
         for (double& x : h) x *= 1e3;
         for (double& x : W) x *= 1e-3;
       }},
      {"batch.logits set", "batch.logits must be null",
       [](B& b, Hd& hd, G&, Vec&, Vec&, Vec&) { b.logits = hd.weight; }},
      {"hidden_size 0", "head.hidden_size must be > 0", [](B&, Hd& hd, G&, Vec&, Vec&, Vec&) { hd.hidden_size = 0; }},
      {"stride below H", "row strides must be 0 or >= hidden_size",
       [](B&, Hd& hd, G&, Vec&, Vec&, Vec&) { hd.weight_row_stride = 4; }},
      {"grad_weight over weight", "grad_weight (output) overlaps weight (input)",
       [](B&, Hd& hd, G& g, Vec&, Vec&, Vec&) { g.grad_weight = const_cast<double*>(hd.weight); }},
      {"in place at another stride", "an in-place gradient needs grad_hidden_row_stride",
       [](B&, Hd& hd, G& g, Vec&, Vec&, Vec&) {
         g.grad_hidden = const_cast<double*>(hd.hidden);
         g.grad_hidden_row_stride = 6;
       }},
  };
  for (const Case& k : cases) {
    CAPTURE(k.what);
    const Untouched u = run_poisoned<double>(p, c, {}, k.edit);
    INFO(u.status.message);
    CHECK(!u.status.ok());
    CHECK(std::string(u.status.message).find(k.message) != std::string::npos);
    CHECK(u.untouched);
  }
  // The float logits bound: entries of 1e20 in h and W give logits near 1e40.
  const Untouched f = run_poisoned<float>(p, c, {}, [](cgrpo::PolicyLossBatch<float>&, cgrpo::LinearHead<float>&,
                                                      cgrpo::LinearHeadGrads<float>&, std::vector<float>& h,
                                                      std::vector<float>& W, std::vector<float>&) {
    h[5] = 1e20f;
    W[0] = 1e20f;
  });
  INFO(f.status.message);
  CHECK(std::string(f.status.message).find("token 1: its logits may overflow float") != std::string::npos);
  CHECK(f.untouched);
  // Chunking errors.
  cgrpo::LinearChunking bad;
  bad.max_bytes = 10;
  int64_t rows = 0;
  CHECK(std::string(cgrpo::chunk_rows(bad, 10, 20, 4, &rows).message).find("holds no row of logits") != std::string::npos);
  bad.tokens = -1;
  CHECK(!cgrpo::chunk_rows(bad, 10, 20, 4, &rows).ok());
}

TEST_CASE("fused linear: when the bound cannot rule out an overflow, the two-pass path gives the result", "[linear]") {
  auto rng = test_seed::fresh_rng();
  // No ratio clamp and old log-probs of -87: the bound's largest ratio is e^87 (any log p <= 0),
  // the true ratios are near e^83; the float gradients stay finite, the bound on them does not.
  cgrpo::LossConfig c = cgrpo::paper_critique_grpo().loss;
  c.ratio.log_ratio_min = -INFINITY;
  c.ratio.log_ratio_max = INFINITY;
  // Redrawn while the two-pass path's own bound on dJ/dhidden (from the real dJ/dlogits) cannot
  // rule out an overflow either: a draw whose target logits are near the row's top gives real
  // ratios near e^87 (12 of 500 seeds), which that path refuses, rightly, by name.
  for (int attempt = 0; attempt < 20; ++attempt) {
    Problem p = make_problem(rng, 3, 5, 20, 4, false);
    for (double& o : p.b.old_logp) o = -87.0;
    for (double& a : p.b.adv) a = 1.0;
    for (uint8_t& k : p.b.kinds) k = cgrpo::kInitial;
    for (uint8_t& m : p.b.mask) m = 1;
    ref::set_weights(p.b, c);
    View<float> view(p, {});
    view.lib.view.logits = nullptr;
    view.lib.view.row_stride = 0;
    std::vector<float> h(p.h.begin(), p.h.end()), W(p.W.begin(), p.W.end()), gw(p.W.size());
    cgrpo::LinearHead<float> head{h.data(), p.H, 0, W.data(), 0, nullptr};
    cgrpo::LinearHeadGrads<float> grads;
    grads.grad_weight = gw.data();
    cgrpo::cpu::Workspace ws;
    ws.rows.resize(p.b.T);
    ws.logit_bound.resize(p.b.T);
    ws.hidden_max.resize(p.b.T);
    cgrpo::cpu::detail::HeadScan scan;
    REQUIRE(cgrpo::cpu::detail::scan_head(head, p.b.T, p.b.V, 1, ws, &scan).ok());
    cgrpo::LossMetrics m;
    REQUIRE(cgrpo::cpu::prepare_token_pass(c, view.lib.view, ws, &m).ok());
    CHECK_FALSE(cgrpo::cpu::detail::single_pass_bounded(c, view.lib.view, ws, scan, grads));
    const Result want = composed<float>(p, c, {});
    REQUIRE(want.status.ok());
    const Result got = run_linear<float>(p, c, {}, Layout{2, 0, 0, 0, false, false, 1});
    if (got.status.code == cgrpo::StatusCode::non_finite &&
        std::string(got.status.message).find("may overflow") != std::string::npos)
      continue;
    check_same(got, want, 1e-5);
    return;
  }
  FAIL("20 draws whose head gradients the two-pass path could not bound");
}

TEST_CASE("fused linear token_logprobs: equals token_logprobs on the composed logits", "[linear][logprobs]") {
  auto rng = test_seed::fresh_rng();
  Problem p = make_problem(rng, 5, 9, 300, 12, true);
  const int64_t T = p.b.T, V = p.b.V, H = p.H;
  for (double tau : {1.0, 0.6}) {
    std::vector<double> lp(T), ent(T), lp2(T, -1), ent2(T, -1);
    REQUIRE(cgrpo::cpu::token_logprobs(p.b.logits.data(), T, V, 0, p.b.targets.data(), tau, lp.data(), ent.data()).ok());
    std::vector<double> h(T * (H + 2), 9.0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < H; ++k) h[t * (H + 2) + k] = p.h[t * H + k];
    cgrpo::LinearHead<double> head{h.data(), H, H + 2, p.W.data(), 0, p.bias.data()};
    cgrpo::cpu::Workspace ws;
    for (int64_t chunk : {int64_t{1}, int64_t{4}, int64_t{0}}) {
      const cgrpo::Status s = cgrpo::cpu::fused_linear_token_logprobs(head, T, V, p.b.targets.data(), tau, lp2.data(),
                                                                      ent2.data(), 2, &ws, cgrpo::LinearChunking{chunk});
      INFO(s.message);
      REQUIRE(s.ok());
      CHECK(max_abs_diff(lp, lp2) <= 1e-12 * std::max(1.0, max_abs(lp)));
      CHECK(max_abs_diff(ent, ent2) <= 1e-12 * std::max(1.0, max_abs(ent)));
    }
    // Float against float logits from the same float GEMM order is not the point: against the
    // double result, to float precision.
    std::vector<float> hf(p.h.begin(), p.h.end()), Wf(p.W.begin(), p.W.end()), bf(p.bias.begin(), p.bias.end());
    std::vector<float> lpf(T), entf(T);
    cgrpo::LinearHead<float> headf{hf.data(), H, 0, Wf.data(), 0, bf.data()};
    REQUIRE(cgrpo::cpu::fused_linear_token_logprobs(headf, T, V, p.b.targets.data(), tau, lpf.data(), entf.data()).ok());
    CHECK(max_abs_diff(std::vector<double>(lpf.begin(), lpf.end()), lp) <= 1e-5 * std::max(1.0, max_abs(lp)));
  }
  // Errors write nothing.
  std::vector<double> lp(T, 5.0);
  std::vector<int32_t> bad = p.b.targets;
  bad[2] = -1;
  cgrpo::LinearHead<double> head{p.h.data(), H, 0, p.W.data(), 0, nullptr};
  const cgrpo::Status s = cgrpo::cpu::fused_linear_token_logprobs(head, T, V, bad.data(), 1.0, lp.data(),
                                                                  static_cast<double*>(nullptr));
  CHECK(std::string(s.message).find("target_ids[2] = -1") != std::string::npos);
  CHECK(lp == std::vector<double>(T, 5.0));
}

TEST_CASE("fused linear, vocabulary parallel: k row shards of W give the unsharded loss and gradients",
          "[linear][vocab_parallel]") {
  auto rng = test_seed::fresh_rng();
  for (cgrpo::LossConfig c : {cgrpo::paper_critique_grpo().loss, cgrpo::verl_grpo().loss, cgrpo::verl_gspo().loss}) {
    c.entropy.coef = 0.02;
    c.temperature = 0.9;
    Problem p = make_problem(rng, 4, 8, 29, 6, true);
    ref::set_weights(p.b, c);
    const Result want = run_linear<double>(p, c, {}, Layout{5, 0, 0, 0, false, false, 1});
    REQUIRE(want.status.ok());
    const int64_t T = p.b.T, V = p.b.V, H = p.H;
    for (int k : {1, 2, 3}) {
      CAPTURE(k);
      std::vector<int64_t> cuts{0};
      for (int r = 1; r < k; ++r) cuts.push_back(V * r / k + (r == 1 ? 2 : 0));
      cuts.push_back(V);
      View<double> view(p, {});
      view.lib.view.logits = nullptr;
      view.lib.view.row_stride = 0;
      std::vector<std::vector<cgrpo::RowStats<double>>> stats(k, std::vector<cgrpo::RowStats<double>>(T));
      std::vector<std::vector<double>> target(k, std::vector<double>(T));
      std::vector<cgrpo::cpu::Workspace> ws(k);
      auto local = [&](int r) {
        cgrpo::PolicyLossBatch<double> b = view.lib.view;
        b.vocab_size = cuts[r + 1] - cuts[r];
        return b;
      };
      auto head = [&](int r) {
        return cgrpo::LinearHead<double>{p.h.data(), H, 0, p.W.data() + cuts[r] * H, 0, p.bias.data() + cuts[r]};
      };
      auto shard = [&](int r) { return cgrpo::parallel::VocabShard{cuts[r], cuts[r + 1] - cuts[r], V}; };
      for (int r = 0; r < k; ++r) {
        const cgrpo::Status s = cgrpo::parallel::vocab_shard_linear_row_stats(
            c, local(r), head(r), shard(r), stats[r].data(), target[r].data(), ws[r], cgrpo::LinearChunking{4});
        INFO(s.message);
        REQUIRE(s.ok());
      }
      std::vector<cgrpo::RowStats<double>> reduced(T);
      std::vector<double> target_sum(T, 0.0);
      for (int64_t t = 0; t < T; ++t) {
        reduced[t] = stats[0][t];
        for (int r = 1; r < k; ++r) reduced[t] = cgrpo::row_stats_merge(reduced[t], stats[r][t]);
        for (int r = 0; r < k; ++r) target_sum[t] += target[r][t];
      }
      Result got;
      got.gh.assign(T * H, 0.0);
      for (int r = 0; r < k; ++r) {
        const int64_t Vr = cuts[r + 1] - cuts[r];
        std::vector<double> gh(T * H), gw(Vr * H), gb(Vr), logp(T), ent(T);
        cgrpo::LossMetrics m;
        cgrpo::PolicyLossOutputs<double> out;
        out.logp = logp.data();
        out.entropy = ent.data();
        out.metrics = &m;
        cgrpo::LinearHeadGrads<double> grads;
        grads.grad_hidden = gh.data();
        grads.grad_weight = gw.data();
        grads.grad_bias = gb.data();
        const cgrpo::Status s = cgrpo::parallel::vocab_parallel_linear_policy_loss(
            c, local(r), head(r), shard(r), reduced.data(), target_sum.data(), out, grads, ws[r],
            cgrpo::LinearChunking{3});
        INFO(s.message);
        REQUIRE(s.ok());
        for (int64_t i = 0; i < T * H; ++i) got.gh[i] += gh[i];  // the caller's all-reduce of dJ/dh
        got.gw.insert(got.gw.end(), gw.begin(), gw.end());
        got.gb.insert(got.gb.end(), gb.begin(), gb.end());
        if (r == 0) {
          got.metrics = m;
          got.logp.assign(logp.begin(), logp.end());
          got.entropy.assign(ent.begin(), ent.end());
        }
      }
      check_same(got, want, 1e-10);
    }
  }
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define CGRPO_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define CGRPO_TEST_ASAN 1
#endif
#endif

TEST_CASE("fused linear: a batch too large for memory is out_of_memory before any array is read", "[linear][sizes]") {
#if defined(CGRPO_TEST_ASAN)
  WARN("AddressSanitizer and ThreadSanitizer abort on an allocation of terabytes instead of throwing: this runs in "
       "builds without them");
#else
  // Pointers to nowhere (never read), 2^56 bytes apart; 2^50 tokens of workspace rows cannot be had.
  auto nowhere = [](int k) { return static_cast<uintptr_t>(k) << 56; };
  const int64_t T = int64_t{1} << 50;
  cgrpo::PolicyLossBatch<float> b;
  b.num_tokens = T;
  b.vocab_size = 1;
  b.target_ids = reinterpret_cast<const int32_t*>(nowhere(2));
  b.mask = reinterpret_cast<const uint8_t*>(nowhere(3));
  b.advantages = reinterpret_cast<const float*>(nowhere(4));
  b.old_logp = reinterpret_cast<const float*>(nowhere(5));
  b.pg_weights = reinterpret_cast<const float*>(nowhere(6));
  b.entropy_weights = reinterpret_cast<const float*>(nowhere(10));
  cgrpo::LinearHead<float> head{reinterpret_cast<const float*>(nowhere(1)), 1, 0, reinterpret_cast<const float*>(nowhere(7)),
                                0, nullptr};
  float gw = 4.5f;
  cgrpo::LinearHeadGrads<float> grads;
  grads.grad_weight = &gw;
  cgrpo::LossMetrics m;
  m.loss = -3.5;
  cgrpo::PolicyLossOutputs<float> out;
  out.metrics = &m;
  const cgrpo::Status s = cgrpo::cpu::fused_linear_policy_loss(cgrpo::LossConfig{}, b, head, out, grads,
                                                               cgrpo::LinearChunking{1});
  INFO(s.message);
  CHECK(s.code == cgrpo::StatusCode::out_of_memory);
  CHECK(m.loss == -3.5);
  CHECK(gw == 4.5f);
  const cgrpo::Status t = cgrpo::cpu::fused_linear_token_logprobs(
      head, T, 1, b.target_ids, 1.0, reinterpret_cast<float*>(nowhere(8)), static_cast<float*>(nullptr), 1, nullptr,
      cgrpo::LinearChunking{1});
  CHECK(t.code == cgrpo::StatusCode::out_of_memory);
#endif
}
