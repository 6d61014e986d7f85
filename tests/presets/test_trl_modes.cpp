// TRL's modes against the plain double reference of GRPOTrainer._compute_loss
// (tests/support/reference_trl.hpp): loss, metrics and the gradient against central finite differences
// for every loss_type, both importance-sampling levels, delta, beta (with use_bias_correction_kl),
// the entropy mask and bonus, OPSM and the four vLLM modes; and the pieces on their own
// (the vLLM weight, the entropy mask, TRL's advantages, the delta / dual clip equivalence).
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <cgrpo/cgrpo.hpp>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "batch.hpp"
#include "reference_trl.hpp"

namespace {

const double kInf = std::numeric_limits<double>::infinity();

// TRL's parameters as GRPOConfig's fields (cgrpo::TrlOptions) -> the library's recipe
// (cgrpo::trl_recipe, from the loss_type's preset, as a user would); the entropy bonus, not among
// TrlOptions' fields, is set on the config.
cgrpo::LossConfig to_config(const trl_ref::Params& p, int64_t B, cgrpo::AggregationScale* scale) {
  cgrpo::TrlOptions o;  // NaN: None, as in Params
  o.loss_type = p.loss_type.c_str();
  o.importance_sampling_level = p.sequence ? "sequence" : "token";
  o.epsilon = p.epsilon;
  o.epsilon_high = p.epsilon_high;  // cispo: the cap
  o.delta = p.delta;
  o.beta = p.beta;
  o.use_bias_correction_kl = p.bias_correction_kl;
  o.top_entropy_quantile = p.top_entropy_quantile;
  o.use_vllm = p.vllm_mode != "none";
  if (o.use_vllm) {
    o.vllm_importance_sampling_correction = true;
    o.vllm_importance_sampling_mode = p.vllm_mode.c_str();
    o.vllm_importance_sampling_clip_min = p.vllm_min;
    o.vllm_importance_sampling_clip_max = p.vllm_max;
  }
  o.off_policy_mask_threshold = p.opsm_threshold;
  o.sapo_temperature_pos = p.sapo_pos;
  o.sapo_temperature_neg = p.sapo_neg;
  o.vespo_k_pos = p.k_pos;
  o.vespo_lambda_pos = p.lambda_pos;
  o.vespo_k_neg = p.k_neg;
  o.vespo_lambda_neg = p.lambda_neg;
  o.temperature = p.temperature;
  cgrpo::Recipe r;
  const cgrpo::Status st = cgrpo::trl_recipe(o, &r);
  INFO(st.message);
  REQUIRE(st.ok());
  cgrpo::LossConfig c = r.loss;
  c.entropy.coef = p.entropy_coef;
  *scale = cgrpo::AggregationScale{};
  if (p.loss_type == "dr_grpo") scale->length = static_cast<double>(B) * p.max_completion_length;
  return c;
}

struct LibResult {
  cgrpo::Status status;
  cgrpo::LossMetrics metrics;
  std::vector<double> grad;
};

// The fused loss for config on the batch (weights computed by the loss, ref_logp when the config
// has a KL estimator).
LibResult run_config(const trl_ref::Batch& b, const cgrpo::LossConfig& c, const cgrpo::AggregationScale& scale,
                     int threads = 1) {
  const support::Batch x = trl_ref::to_support_batch(b);
  support::LibraryBatch<double> lb(x, c, support::Weights::computed);
  lb.view.scale = scale;
  cgrpo::cpu::Workspace ws(threads);
  LibResult r;
  r.grad.assign(b.logits.size(), 0.0);
  cgrpo::PolicyLossOutputs<double> out;
  out.grad_logits = r.grad.data();
  out.metrics = &r.metrics;
  r.status = cgrpo::cpu::fused_policy_loss(c, lb.view, out, ws);
  return r;
}

LibResult run_library(const trl_ref::Batch& b, const trl_ref::Params& p, int threads = 1) {
  cgrpo::AggregationScale scale;
  const cgrpo::LossConfig c = to_config(p, b.B, &scale);
  return run_config(b, c, scale, threads);
}

double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double x : a) m = std::max(m, std::fabs(x));
  return m;
}
double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}
bool close(double got, double want, double tol = 1e-12) {
  return std::fabs(got - want) <= tol * std::max(1.0, std::fabs(want));
}

void check_against_reference(const trl_ref::Batch& b, const trl_ref::Params& p, const LibResult& got) {
  const trl_ref::Result want = trl_ref::loss(b, b.logits, b.logits, p);
  const cgrpo::LossMetrics& m = got.metrics;
  CHECK(close(m.loss, want.loss));
  CHECK(close(m.loss + p.entropy_coef * m.entropy_loss, want.policy_loss));
  CHECK(close(m.entropy_mean, want.entropy));
  CHECK(close(m.kl_mean, want.kl));
  const std::string& lt = p.loss_type;
  if (lt == "grpo" || lt == "bnpo" || lt == "dr_grpo" || lt == "dapo" || lt == "luspo") {
    CHECK(close(m.clip_ratio_low_mean, want.clip_low_mean));
    CHECK(close(m.clip_ratio_high_mean, want.clip_high_mean));
    CHECK(close(m.clip_ratio_region_mean, want.clip_region_mean));
    CHECK(close(m.clip_ratio_low_min, want.clip_low_min));
    CHECK(close(m.clip_ratio_high_max, want.clip_high_max));
  }
  if (lt == "cispo") CHECK(close(m.clip_ratio_high_mean, want.cispo_clip_ratio));
  if (lt == "vespo") CHECK(close(m.vespo_phi_mean, want.vespo_phi_mean));
  if (p.vllm_mode != "none") {
    CHECK(close(m.sampler.is_ratio_min, want.is_min));
    CHECK(close(m.sampler.is_ratio_mean, want.is_mean));
    CHECK(close(m.sampler.is_ratio_max, want.is_max));
    CHECK(close(m.sampler.logp_difference_mean, want.diff_mean));
    CHECK(close(m.sampler.logp_difference_max, want.diff_max));
  }
}

// The options a combination can switch on, one at a time or together.
enum Feature : unsigned {
  kKl = 1, kBiasKl = 2, kDeltaHigh = 4, kDeltaLow = 8, kEntropyMask = 16, kEntropyBonus = 32, kOpsm = 64,
  kOpsmNoRollout = 128,
};

bool allowed(const std::string& lt, bool sequence, unsigned f, const std::string& vllm) {
  const bool ppo = lt == "grpo" || lt == "bnpo" || lt == "dr_grpo" || lt == "dapo" || lt == "luspo";
  if ((f & (kDeltaHigh | kDeltaLow)) && !ppo) return false;
  if ((f & kDeltaHigh) && (f & kDeltaLow)) return false;
  if ((f & kBiasKl) && !(f & kKl)) return false;
  if ((f & kOpsmNoRollout) && !(f & kOpsm)) return false;
  if ((f & kOpsmNoRollout) && vllm != "none") return false;
  if (lt == "vespo" && (vllm == "sequence_truncate" || vllm == "sequence_mask")) return false;  // TRL raises
  if (lt == "luspo") {
    // TRL's luspo is reproduced for a per-row loss only (sequence level, nothing per token).
    if (!sequence || (f & (kKl | kEntropyMask)) || vllm == "token_truncate" || vllm == "token_mask") return false;
  }
  return true;
}

trl_ref::Params make_params(const std::string& lt, bool sequence, unsigned f, const std::string& vllm,
                            std::mt19937_64& rng) {
  trl_ref::Params p;
  p.loss_type = lt;
  p.sequence = sequence;
  p.epsilon = 0.2;
  p.epsilon_high = lt == "cispo" ? 1.1 : 0.28;  // cispo: an absolute cap, near the ratios drawn
  if (sequence && lt != "cispo") p.epsilon = 0.05, p.epsilon_high = 0.08;  // row means spread less
  if (f & kDeltaHigh) p.delta = 1.5;   // >= 1 + epsilon_high: the dual clip's region
  if (f & kDeltaLow) p.delta = 1.1;    // < 1 + epsilon_high: TRL's cap differs from the dual clip
  if (sequence && (f & kDeltaLow)) p.delta = 1.03;
  if (f & kKl) p.beta = 0.07;
  p.bias_correction_kl = (f & kBiasKl) != 0;
  if (f & kEntropyMask) p.top_entropy_quantile = 0.5, p.entropy_coef = 0.03;
  if (f & kEntropyBonus) p.entropy_coef = 0.02;
  if (f & kOpsm) p.opsm_threshold = 0.02;
  p.vllm_mode = vllm;
  std::uniform_int_distribution<int> pick(0, 2);
  const int bounds = pick(rng);
  if (vllm.find("truncate") != std::string::npos) {
    p.vllm_min = bounds == 0 ? NAN : 0.8;
    p.vllm_max = bounds == 2 ? NAN : 1.3;
    if (bounds == 2) p.vllm_min = 1.05;  // 1 outside the band: TRL's padding weight is not 1 (vespo)
  } else if (vllm == "token_mask") {
    p.vllm_min = bounds == 0 ? NAN : 0.7;
    p.vllm_max = bounds == 2 ? NAN : 1.4;
    if (bounds == 2) p.vllm_min = 0.9;
  } else if (vllm != "none") {  // sequence_mask: row sums spread more
    p.vllm_min = bounds == 0 ? NAN : 0.4;
    p.vllm_max = bounds == 2 ? NAN : 2.5;
    if (bounds == 2) p.vllm_min = 1.02;
  }
  p.max_completion_length = 7;
  p.temperature = pick(rng) == 0 ? 0.8 : 1.0;
  return p;
}

const char* kLossTypes[] = {"grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"};
const char* kVllm[] = {"none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"};

// One combination: draws batches until finite differences see no kink, then compares. Without
// rollout log-probs (kOpsmNoRollout) the batch has none: OPSM takes old_logp, as TRL does.
void run_combination(const trl_ref::Params& p, std::mt19937_64& rng, bool empty_row, bool has_rollout = true) {
  for (int attempt = 0; attempt < 20; ++attempt) {
    trl_ref::Batch b = trl_ref::random_batch(rng, 5, 4, 6, empty_row);
    b.has_rollout = has_rollout;
    bool stable = false;
    const std::vector<double> fd = trl_ref::finite_difference_gradient(b, p, &stable);
    if (!stable || max_abs(fd) == 0) continue;  // a kink in the step, or every row masked
    const LibResult got = run_library(b, p);
    INFO(got.status.message);
    REQUIRE(got.status.ok());
    check_against_reference(b, p, got);
    CHECK(max_abs_diff(got.grad, fd) <= 1e-7 * std::max(1.0, max_abs(fd)));
    // Two threads give the same bits.
    const LibResult two = run_library(b, p, 2);
    REQUIRE(two.status.ok());
    CHECK(two.grad == got.grad);
    CHECK(two.metrics.loss == got.metrics.loss);
    return;
  }
  FAIL("no batch without a kink inside the finite-difference step in 20 draws");
}

}  // namespace

TEST_CASE("TRL modes: loss, metrics and finite-difference gradient of every loss_type, level and option",
          "[trl][gradient]") {
  auto rng = test_seed::fresh_rng();
  const unsigned singles[] = {0,           kKl,   kKl | kBiasKl, kDeltaHigh, kDeltaLow, kEntropyMask,
                              kEntropyBonus, kOpsm, kOpsm | kOpsmNoRollout};
  int combos = 0;
  for (const char* lt : kLossTypes)
    for (bool sequence : {false, true}) {
      for (unsigned f : singles)
        if (allowed(lt, sequence, f, "none")) {
          const trl_ref::Params p = make_params(lt, sequence, f, "none", rng);
          CAPTURE(lt, sequence, f, combos);
          run_combination(p, rng, combos % 3 == 0, (f & kOpsmNoRollout) == 0);
          ++combos;
        }
      for (const char* vllm : kVllm)
        if (std::string(vllm) != "none" && allowed(lt, sequence, 0, vllm)) {
          const trl_ref::Params p = make_params(lt, sequence, 0, vllm, rng);
          CAPTURE(lt, sequence, vllm, p.vllm_min, p.vllm_max, combos);
          run_combination(p, rng, combos % 3 == 0);
          ++combos;
        }
    }
  // Several options at once, drawn at random.
  std::uniform_int_distribution<int> lt_pick(0, 7), vllm_pick(0, 4);
  std::uniform_int_distribution<unsigned> f_pick(0, 255);
  int mixed = 0;
  while (mixed < 60) {
    const std::string lt = kLossTypes[lt_pick(rng)];
    const bool sequence = f_pick(rng) % 2;
    const unsigned f = f_pick(rng);
    const std::string vllm = kVllm[vllm_pick(rng)];
    if (!allowed(lt, sequence, f, vllm)) continue;
    const trl_ref::Params p = make_params(lt, sequence, f, vllm, rng);
    CAPTURE(lt, sequence, f, vllm, p.vllm_min, p.vllm_max);
    run_combination(p, rng, mixed % 2 == 0, (f & kOpsmNoRollout) == 0);
    ++mixed;
  }
  CHECK(combos >= 150);
}

TEST_CASE("TRL delta: equals the dual clip with c = delta for delta >= 1 + epsilon_high, not below",
          "[trl]") {
  auto rng = test_seed::fresh_rng();
  int differing = 0, between_total = 0;
  for (int trial = 0; trial < 20; ++trial) {
    const trl_ref::Batch b = trl_ref::random_batch(rng, 6, 5, 7, false);
    const int64_t T = b.B * b.L;
    trl_ref::Params p;
    p.loss_type = "grpo";
    p.epsilon_high = 0.28;
    for (double delta : {1.28, 1.6, 1.1}) {
      p.delta = delta;
      const LibResult two_sided = run_library(b, p);
      REQUIRE(two_sided.status.ok());
      // The same batch through verl's dual clip with c = delta.
      cgrpo::AggregationScale scale;
      cgrpo::LossConfig c = to_config(p, b.B, &scale);
      c.ratio.two_sided_delta = kInf;
      c.ratio.dual_clip = true;
      c.ratio.dual_clip_c = delta;
      const LibResult dual = run_config(b, c, scale);
      REQUIRE(dual.status.ok());
      const cgrpo::LossMetrics& m = dual.metrics;
      const std::vector<double>& grad = dual.grad;
      const trl_ref::Result want = trl_ref::loss(b, b.logits, b.logits, p);
      CHECK(close(two_sided.metrics.loss, want.loss));
      if (delta >= 1 + p.epsilon_high) {
        CHECK(m.loss == two_sided.metrics.loss);
        CHECK(grad == two_sided.grad);
      } else {
        // They differ exactly when a valid token (A != 0) has r > delta: TRL holds -A delta (A > 0) or
        // -A min(r, 1 + eps_high) (A < 0), the dual clip -A min(r, 1 + eps_high) or -A delta.
        int between = 0;
        for (int64_t t = 0; t < T; ++t) {
          double lp, h;
          trl_ref::log_softmax_entropy(&b.logits[t * b.V], b.V, b.tokens[t], 1.0, &lp, &h);
          const double r = std::exp(lp - b.old_logp[t]);
          between += (b.mask[t] && b.adv[t / b.L] != 0 && r > delta) ? 1 : 0;
        }
        const bool differs = m.loss != two_sided.metrics.loss || grad != two_sided.grad;
        CHECK(differs == (between > 0));
        between_total += between;
        differing += differs;
      }
    }
  }
  CHECK(differing > 0);  // the draws put ratios between delta and 1 + eps_high
  CHECK(between_total > 0);
}

TEST_CASE("TRL vLLM weight: the four modes, None bounds, and metric partials that merge in any order", "[trl]") {
  using M = cgrpo::SamplerCorrectionMode;
  const double d = std::log(2.5);
  CHECK(cgrpo::sampler_weight(static_cast<int>(M::token_truncate), d, 0.0, 2.0) == 2.0);
  CHECK(cgrpo::sampler_weight(static_cast<int>(M::token_truncate), -d, 0.5, kInf) == 0.5);
  CHECK(cgrpo::sampler_weight(static_cast<int>(M::token_truncate), d, 0.0, kInf) == std::exp(d));
  CHECK(cgrpo::sampler_weight(static_cast<int>(M::token_mask), d, 0.0, 2.0) == 0.0);
  CHECK(cgrpo::sampler_weight(static_cast<int>(M::token_mask), -d, 0.5, kInf) == 0.0);
  CHECK(cgrpo::sampler_weight(static_cast<int>(M::sequence_mask), std::log(1.5), 0.5, 2.0) == std::exp(std::log(1.5)));
  CHECK(cgrpo::sampler_weight(static_cast<int>(M::sequence_truncate), std::log(0.1), 0.5, 2.0) == 0.5);
  // Bounds are inclusive (TRL masks u < min or u > max).
  CHECK(cgrpo::sampler_weight(static_cast<int>(M::token_mask), 0.0, 1.0, 1.0) == 1.0);

  auto rng = test_seed::fresh_rng();
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<cgrpo::SamplerPartial<double>> parts(7, cgrpo::sampler_partial_zero<double>());
  cgrpo::SamplerPartial<double> all = cgrpo::sampler_partial_zero<double>();
  for (int k = 0; k < 40; ++k) {
    const double diff = std::fabs(normal(rng)), u = std::exp(normal(rng));
    cgrpo::sampler_partial_add_diff(parts[k % 7], diff);
    cgrpo::sampler_partial_add_weight(parts[k % 7], u);
    cgrpo::sampler_partial_add_diff(all, diff);
    cgrpo::sampler_partial_add_weight(all, u);
  }
  cgrpo::SamplerPartial<double> fwd = cgrpo::sampler_partial_zero<double>(), bwd = fwd;
  for (int k = 0; k < 7; ++k) fwd = cgrpo::sampler_partial_merge(fwd, parts[k]);
  for (int k = 6; k >= 0; --k) bwd = cgrpo::sampler_partial_merge(parts[k], bwd);
  const cgrpo::SamplerMetrics a = cgrpo::sampler_metrics_finalize(all), f = cgrpo::sampler_metrics_finalize(fwd),
                              r = cgrpo::sampler_metrics_finalize(bwd);
  CHECK(f.is_ratio_min == a.is_ratio_min);
  CHECK(f.is_ratio_max == a.is_ratio_max);
  CHECK(r.logp_difference_max == a.logp_difference_max);
  CHECK(close(f.is_ratio_mean, a.is_ratio_mean, 1e-14));
  CHECK(close(r.logp_difference_mean, a.logp_difference_mean, 1e-14));
  // Nothing seen: TRL logs 0.
  const cgrpo::SamplerMetrics z = cgrpo::sampler_metrics_finalize(cgrpo::sampler_partial_zero<double>());
  CHECK(z.is_ratio_min == 0);
  CHECK(z.is_ratio_max == 0);
  CHECK(z.logp_difference_max == 0);
}

TEST_CASE("TRL vespo: phi at the golden parameters, the float32 k and lambda, lambda's floor, non-finite", "[trl]") {
  using W = cgrpo::VespoWeights;  // (k_pos, lambda_pos, k_neg, lambda_neg)
  const W golden{2, 3, 3, 2};
  // phi(w = 1) = 1 for any (k, lambda).
  CHECK(cgrpo::vespo_phi(0.0, 1.0, golden) == 1.0);
  CHECK(close(cgrpo::vespo_phi(std::log(2.0), 1.0, golden), std::exp(3 + 2 * std::log(2.0) - 6), 1e-15));
  CHECK(close(cgrpo::vespo_phi(std::log(2.0), -1.0, golden), std::exp(2 + 3 * std::log(2.0) - 4), 1e-15));
  // A = 0 takes the _pos pair (TRL: advantages >= 0).
  CHECK(cgrpo::vespo_phi(std::log(2.0), 0.0, golden) == cgrpo::vespo_phi(std::log(2.0), 1.0, golden));
  // k and lambda are float32 in TRL (torch.where over Python floats).
  const double k = 1.05, lam = 0.3;
  const double kf = static_cast<float>(k), lf = static_cast<float>(lam), lw = std::log(1.7);
  CHECK(cgrpo::vespo_phi(lw, 1.0, W{k, lam, 3, 2}) == std::exp(lf + kf * lw - lf * std::exp(lw)));
  CHECK(cgrpo::vespo_phi(lw, 1.0, W{k, lam, 3, 2}) != std::exp(lam + k * lw - lam * std::exp(lw)));
  // lambda floors at 1e-4 (float), log w clamps to [log 1e-8, 20].
  CHECK(cgrpo::vespo_phi(lw, 1.0, W{2, -5, 3, 2}) == std::exp(double(1e-4f) + 2 * lw - double(1e-4f) * std::exp(lw)));
  CHECK(cgrpo::vespo_phi(50.0, 1.0, W{2, 0.0, 3, 2}) == cgrpo::vespo_phi(20.0, 1.0, W{2, 0.0, 3, 2}));
  // exp overflow -> 0 (TRL's nan_to_num(posinf=0)).
  CHECK(cgrpo::vespo_phi(20.0, 1.0, W{2000, 0.0, 3, 2}) == 0.0);
}

TEST_CASE("TRL entropy mask: top_entropy_mask against a brute-force quantile; 0 and 1", "[trl]") {
  auto rng = test_seed::fresh_rng();
  std::uniform_real_distribution<double> uni(0.0, 3.0);
  for (int trial = 0; trial < 50; ++trial) {
    const int64_t T = 5 + trial;
    std::vector<double> H(T);
    std::vector<uint8_t> mask(T), keep(T);
    int valid = 0;
    for (int64_t t = 0; t < T; ++t) {
      H[t] = uni(rng);
      mask[t] = (t % 4 != 3);
      valid += mask[t];
    }
    for (double rho : {0.0, 0.2, 0.5, 1.0}) {
      REQUIRE(cgrpo::top_entropy_mask(T, mask.data(), H.data(), rho, keep.data()).ok());
      // Q by definition: the (1 - rho) position among the sorted valid H, linear between neighbours.
      std::vector<double> v;
      for (int64_t t = 0; t < T; ++t)
        if (mask[t]) v.push_back(H[t]);
      std::sort(v.begin(), v.end());
      const double pos = (1 - rho) * (v.size() - 1);
      const size_t lo = static_cast<size_t>(pos);
      const double Q = lo + 1 < v.size() ? v[lo] + (pos - lo) * (v[lo + 1] - v[lo]) : v[lo];
      int kept = 0;
      for (int64_t t = 0; t < T; ++t) {
        CHECK(keep[t] == (mask[t] && H[t] >= Q ? 1 : 0));
        kept += keep[t];
      }
      if (rho == 1.0) CHECK(kept == valid);
      if (rho == 0.0) CHECK(kept == 1);  // distinct draws: only the maximum
    }
  }
  // No valid token: nothing kept.
  std::vector<double> H = {1.0, 2.0};
  std::vector<uint8_t> mask = {0, 0}, keep = {7, 7};
  REQUIRE(cgrpo::top_entropy_mask(2, mask.data(), H.data(), 0.5, keep.data()).ok());
  CHECK((keep[0] == 0 && keep[1] == 0));
}

TEST_CASE("TRL sequence level: clip metrics per row over all B rows, an empty row included", "[trl]") {
  // Row 0: A < 0, r below 1 - eps; row 1: A > 0, r above 1 + eps_high; row 2: inside; row 3: empty.
  const int64_t B = 4, L = 3, V = 4, T = B * L;
  support::Batch b = support::padded_batch(B, L, V);  // targets 0, every token initial
  b.rollout_logp.clear();
  for (int64_t t = 0; t < T; ++t) b.logits[t * V + 1] = 0.3 * (t % 3);  // log p = log(1/4)-ish, not all equal
  const double A[] = {-1.0, 1.0, 0.5, 1.0};
  const double shift[] = {0.5, -0.5, 0.0, 0.0};  // old = logp + shift: x = -shift
  for (int64_t t = 0; t < T; ++t) {
    b.adv[t] = A[t / L];
    double z[V];
    for (int64_t v = 0; v < V; ++v) z[v] = b.logits[t * V + v];
    double m = -INFINITY, s = 0;
    for (double x : z) m = std::max(m, x);
    for (double x : z) s += std::exp(x - m);
    b.old_logp[t] = z[0] - m - std::log(s) + shift[t / L];
    if (t / L == 3) b.mask[t] = 0;
  }
  cgrpo::LossConfig c = cgrpo::trl_grpo().loss;
  c.ratio.level = cgrpo::RatioLevel::sequence;
  const support::LibraryBatch<double> lb(b, c, support::Weights::computed);
  std::vector<double> grad(T * V);
  cgrpo::LossMetrics m;
  cgrpo::PolicyLossOutputs<double> out;
  out.grad_logits = grad.data();
  out.metrics = &m;
  REQUIRE(cgrpo::cpu::fused_policy_loss(c, lb.view, out).ok());
  CHECK(m.clip_ratio_low_mean == 0.25);   // 1 row of 4 (TRL: over all B rows)
  CHECK(m.clip_ratio_high_mean == 0.25);
  CHECK(m.clip_ratio_region_mean == 0.5);
  CHECK(m.clip_ratio_low_min == 0.0);     // rows 1, 2 and the empty row 3
  CHECK(m.clip_ratio_high_max == 1.0);
  // At token level the same batch averages over the 9 valid tokens and skips the empty row.
  c.ratio.level = cgrpo::RatioLevel::token;
  REQUIRE(cgrpo::cpu::fused_policy_loss(c, lb.view, out).ok());
  CHECK(close(m.clip_ratio_low_mean, 3.0 / 9.0, 1e-15));
  CHECK(close(m.clip_ratio_region_mean, 6.0 / 9.0, 1e-15));
}

TEST_CASE("TRL vespo with a token vLLM weight: padding positions count as TRL's padding", "[trl]") {
  // Bounds that exclude 1: the weight of a padding position (d = 0) is min, and TRL's phi sums its
  // log over every position. A padded layout reproduces that; the reference is TRL's formula.
  auto rng = test_seed::fresh_rng();
  trl_ref::Params p;
  p.loss_type = "vespo";
  p.vllm_mode = "token_truncate";
  p.vllm_min = 1.05;
  p.vllm_max = 1.3;
  const trl_ref::Batch b = trl_ref::random_batch(rng, 5, 6, 5, true);
  const LibResult got = run_library(b, p);
  REQUIRE(got.status.ok());
  const trl_ref::Result want = trl_ref::loss(b, b.logits, b.logits, p);
  CHECK(close(got.metrics.loss, want.loss));
  CHECK(close(got.metrics.vespo_phi_mean, want.vespo_phi_mean));
  // Without the padding term the phi differ (the check above can fail).
  trl_ref::Params no_vllm = p;
  no_vllm.vllm_mode = "none";
  CHECK(!close(trl_ref::loss(b, b.logits, b.logits, no_vllm).vespo_phi_mean, want.vespo_phi_mean, 1e-6));
}

TEST_CASE("TRL advantages: several reward functions, weights, None and unscorable responses", "[trl][advantages]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  using E = cgrpo::AdvantageEstimator;
  // Two groups of 4, three reward functions, weights (1, 0.5, 2).
  const int32_t gid[] = {0, 0, 0, 0, 1, 1, 1, 1};
  const cgrpo::GroupAssignment groups{8, gid, 2};
  const double w[] = {1.0, 0.5, 2.0};
  const double r[] = {
      1.0, 0.0, nan,   //
      0.0, nan, 1.0,   //
      nan, nan, nan,   // unscorable
      1.0, 1.0, 0.0,   //
      0.5, 0.0, 0.0,   //
      nan, 2.0, nan,   //
      1.0, nan, 0.0,   //
      0.0, 0.0, 1.0,   //
  };
  // TRL's R: nansum of w r; unscorable NaN.
  const double R[] = {1.0, 2.0, nan, 1.5, 0.5, 1.0, 1.0, 2.0};
  auto mean_std = [&](std::initializer_list<int> idx, double* mean, double* sd) {
    double s = 0, n = 0, q = 0;
    for (int i : idx) s += R[i], n += 1;
    *mean = s / n;
    for (int i : idx) q += (R[i] - *mean) * (R[i] - *mean);
    *sd = std::sqrt(q / (n - 1));
  };
  double m0, s0, m1, s1, mb, sb;
  mean_std({0, 1, 3}, &m0, &s0);
  mean_std({4, 5, 6, 7}, &m1, &s1);
  mean_std({0, 1, 3, 4, 5, 6, 7}, &mb, &sb);
  std::vector<double> A(8), Rout(8);
  REQUIRE(cgrpo::trl_advantages(E::grpo, groups, 3, r, w, 1e-4, A.data(), Rout.data()).ok());
  for (int i = 0; i < 8; ++i) {
    if (i == 2) {
      CHECK(A[i] == 0.0);
      CHECK(std::isnan(Rout[i]));
      continue;
    }
    CHECK(Rout[i] == R[i]);
    const double want = i < 4 ? (R[i] - m0) / (s0 + 1e-4) : (R[i] - m1) / (s1 + 1e-4);
    CHECK(close(A[i], want, 1e-14));
  }
  REQUIRE(cgrpo::trl_advantages(E::grpo_batch_std, groups, 3, r, w, 1e-4, A.data()).ok());
  for (int i = 0; i < 8; ++i)
    if (i != 2) CHECK(close(A[i], (R[i] - (i < 4 ? m0 : m1)) / (sb + 1e-4), 1e-14));
  REQUIRE(cgrpo::trl_advantages(E::grpo_no_std, groups, 3, r, w, 1e-4, A.data()).ok());
  for (int i = 0; i < 8; ++i) CHECK(close(A[i], i == 2 ? 0.0 : R[i] - (i < 4 ? m0 : m1), 1e-14));
  CHECK(A[2] == 0.0);

  // A group with one scorable response: A = 0 when scaled (TRL's NaN std), R - mean = 0 otherwise.
  const double one[] = {nan, 3.0, nan, nan, 1.0, 2.0, 3.0, 4.0};
  std::vector<double> A1(8);
  REQUIRE(cgrpo::trl_advantages(E::grpo, groups, 1, one, nullptr, 1e-4, A1.data()).ok());
  for (int i = 0; i < 4; ++i) CHECK(A1[i] == 0.0);
  CHECK(A1[4] < 0);

  // One finite function of weight 1 equals group_advantages (grpo, batch, none).
  auto rng = test_seed::fresh_rng();
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> rewards(8), a_trl(8), a_lib(8);
  for (double& x : rewards) x = normal(rng);
  for (E e : {E::grpo, E::grpo_batch_std, E::grpo_no_std}) {
    REQUIRE(cgrpo::trl_advantages(e, groups, 1, rewards.data(), nullptr, 1e-4, a_trl.data()).ok());
    REQUIRE(cgrpo::group_advantages(e, groups, rewards.data(), nullptr, 1e-4, a_lib.data()).ok());
    for (int i = 0; i < 8; ++i) CHECK(close(a_trl[i], a_lib[i], 1e-13));
  }

  // normalize_then_sum (GDPO): each function in its group, weighted nansum, then the batch.
  std::vector<double> An(8), Rn(8);
  REQUIRE(cgrpo::trl_advantages(E::grpo, groups, 3, r, w, 1e-4, An.data(), Rn.data(),
                                cgrpo::RewardCombination::normalize_then_sum)
              .ok());
  {
    std::vector<double> want_R(8, 0.0);
    for (int k = 0; k < 3; ++k)
      for (int g = 0; g < 2; ++g) {
        double s = 0, n = 0, q = 0;
        for (int i = 4 * g; i < 4 * g + 4; ++i)
          if (!std::isnan(r[i * 3 + k])) s += r[i * 3 + k], n += 1;
        const double mean = s / n;
        for (int i = 4 * g; i < 4 * g + 4; ++i)
          if (!std::isnan(r[i * 3 + k])) q += (r[i * 3 + k] - mean) * (r[i * 3 + k] - mean);
        const double sd = n > 1 ? std::sqrt(q / (n - 1)) : nan;
        for (int i = 4 * g; i < 4 * g + 4; ++i) {
          const double v = (r[i * 3 + k] - mean) / (sd + 1e-4);
          if (!std::isnan(v)) want_R[i] += w[k] * v;
        }
      }
    double s = 0, n = 0, q = 0;
    for (int i = 0; i < 8; ++i)
      if (i != 2) s += want_R[i], n += 1;
    const double mean = s / n;
    for (int i = 0; i < 8; ++i)
      if (i != 2) q += (want_R[i] - mean) * (want_R[i] - mean);
    const double sd = std::sqrt(q / (n - 1));
    for (int i = 0; i < 8; ++i) {
      if (i == 2) {
        CHECK(An[i] == 0.0);
        CHECK(std::isnan(Rn[i]));
        continue;
      }
      CHECK(close(Rn[i], want_R[i], 1e-13));
      CHECK(close(An[i], (want_R[i] - mean) / (sd + 1e-4), 1e-13));
    }
  }
}
