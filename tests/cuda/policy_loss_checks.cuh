// tests/cuda/policy_loss_checks.cuh: the checks of the CUDA policy loss against the double CPU path,
// shared by the GPU test (on the device) and the emulated test (the same kernel code on the host).
#pragma once

#include <cfloat>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <cgrpo/corrections/entropy_mask.hpp>
#include <cgrpo/loss/pass_plan.hpp>
#include <cgrpo/loss/row_pass.hpp>

#include "support_headers.hpp"  // support::catalog
#include "gpu_test_util.cuh"
#include "host_emulation.cuh"
#include "test_seed.hpp"
#include "tolerance.hpp"
#include "cgrpo/cuda/cgrpo_cuda.cuh"

namespace {

using namespace gpu_test;
using cgrpo::LossConfig;
using cgrpo::LossMetrics;

enum class Mode { separate_grad, in_place, forward_only };
const char* mode_name(Mode m) {
  return m == Mode::separate_grad ? "separate grad" : m == Mode::in_place ? "in place" : "forward only";
}

template <typename Logit>
struct GpuResult {
  cgrpo::Status launch, finish;
  LossMetrics metrics;
  std::vector<float> logp, entropy;
  std::vector<Logit> grad;  // [T, grad_stride]; empty for forward only
  int64_t grad_stride = 0;
  bool with_terms = false;           // outputs.policy_factor and token_terms were asked for
  std::vector<float> policy_factor;
  std::vector<uint8_t> terms;
};

// Modes that ask for outputs.policy_factor and token_terms (in place does not: both variants run).
bool asks_terms(Mode m) { return m != Mode::in_place; }

// One call of the CUDA path on fresh device buffers; every output poisoned (0xFF bytes: NaN) first.
// Where the "GPU" runs: false: the CUDA device; true: host_emulation.cuh (the kernels' per-row code
// on the host, for machines without a GPU).
bool& emulate_on_host() {
  static bool on = false;
  return on;
}

// CGRPO_GPU_TEST_QUICK=1 (scripts/gpu-check under compute-sanitizer): every config and every kernel,
// on the small shapes only.
bool quick_matrix() {
  static const bool quick = std::getenv("CGRPO_GPU_TEST_QUICK") && std::getenv("CGRPO_GPU_TEST_QUICK")[0] == '1';
  return quick;
}

template <typename Logit>
GpuResult<Logit> run_emulated(const LossConfig& config, const HostBatch& hb, std::vector<Logit> logits, Mode mode,
                              int64_t grad_extra_stride) {
  GpuResult<Logit> r;
  r.grad_stride = mode == Mode::separate_grad ? hb.V + grad_extra_stride : hb.stride;
  const HostLibraryBatch<float> host(hb, config);  // the arrays the config reads, as the CPU path gets them
  const cgrpo::PolicyLossBatch<Logit, float> batch = with_logits<Logit>(host.view, logits.empty() ? nullptr : logits.data());
  Logit poison;
  std::memset(static_cast<void*>(&poison), 0xFF, sizeof(poison));
  std::vector<Logit> grad(mode == Mode::separate_grad ? static_cast<size_t>(hb.T * r.grad_stride) : 0, poison);
  r.logp.assign(hb.T, NAN);
  r.entropy.assign(hb.T, NAN);
  std::memset(static_cast<void*>(&r.metrics), 0xFF, sizeof(r.metrics));
  LossMetrics unused;
  cgrpo::PolicyLossOutputs<Logit, float> out;
  out.grad_logits = mode == Mode::in_place ? logits.data() : (mode == Mode::separate_grad ? grad.data() : nullptr);
  out.grad_row_stride = mode == Mode::separate_grad ? r.grad_stride : 0;
  out.logp = r.logp.data();
  out.entropy = r.entropy.data();
  out.metrics = &unused;
  r.with_terms = asks_terms(mode);
  if (r.with_terms) {
    r.policy_factor.assign(hb.T, NAN);
    r.terms.assign(hb.T, 0xFF);
    out.policy_factor = r.policy_factor.data();
    out.token_terms = r.terms.data();
  }
  std::vector<char> ws;
  r.launch = cgrpo::Status::success();
  r.finish = emulate_fused_policy_loss(config, batch, out, ws, &r.metrics);
  if (mode == Mode::in_place) r.grad = logits;
  if (mode == Mode::separate_grad) r.grad = grad;
  return r;
}

template <typename Logit>
GpuResult<Logit> run_gpu(const LossConfig& config, const HostBatch& hb, const std::vector<Logit>& host_logits, Mode mode,
                         int64_t grad_extra_stride) {
  if (emulate_on_host()) return run_emulated(config, hb, host_logits, mode, grad_extra_stride);
  const HostLibraryBatch<float> host(hb, config);
  const DeviceBatch<Logit> d(host.view, host_logits);
  const cgrpo::PolicyLossBatch<Logit, float> batch = d.view;
  GpuResult<Logit> r;
  r.grad_stride = mode == Mode::separate_grad ? hb.V + grad_extra_stride : hb.stride;
  DeviceBuffer<Logit> grad(mode == Mode::separate_grad ? static_cast<size_t>(hb.T * r.grad_stride) : 0);
  grad.poison();
  DeviceBuffer<float> logp(hb.T), entropy(hb.T), policy_factor(hb.T);
  DeviceBuffer<uint8_t> terms(hb.T);
  logp.poison();
  entropy.poison();
  policy_factor.poison();
  terms.poison();
  r.with_terms = asks_terms(mode);
  const size_t ws_bytes = cgrpo::cuda::fused_policy_loss_workspace_size(config, hb.T, batch.layout.num_sequences);
  DeviceBuffer<char> ws(ws_bytes);
  ws.poison();
  std::memset(static_cast<void*>(&r.metrics), 0xFF, sizeof(r.metrics));  // NaN everywhere until written
  LossMetrics unused;
  cgrpo::PolicyLossOutputs<Logit, float> out;
  out.grad_logits = mode == Mode::in_place ? d.logits.ptr : (mode == Mode::separate_grad ? grad.ptr : nullptr);
  out.grad_row_stride = mode == Mode::separate_grad ? r.grad_stride : 0;
  out.logp = logp.ptr;
  out.entropy = entropy.ptr;
  out.metrics = &unused;
  if (r.with_terms) {
    out.policy_factor = policy_factor.ptr;
    out.token_terms = terms.ptr;
  }
  cudaStream_t stream;
  TEST_CUDA(cudaStreamCreate(&stream));
  r.launch = cgrpo::cuda::fused_policy_loss(config, batch, out, d.offsets, ws.ptr, ws_bytes, stream);
  r.finish = r.launch.ok() ? cgrpo::cuda::policy_loss_metrics(ws.ptr, stream, &r.metrics) : r.launch;
  TEST_CUDA(cudaStreamSynchronize(stream));
  TEST_CUDA(cudaStreamDestroy(stream));
  TEST_CUDA(cudaGetLastError());
  r.logp = logp.download();
  r.entropy = entropy.download();
  if (r.with_terms) {
    r.policy_factor = policy_factor.download();
    r.terms = terms.download();
  }
  if (mode == Mode::in_place) r.grad = d.logits.download();
  if (mode == Mode::separate_grad) r.grad = grad.download();
  return r;
}

struct CpuResult {
  cgrpo::Status status;
  LossMetrics metrics;
  std::vector<double> grad, logp, entropy, policy_factor;
  std::vector<uint8_t> terms;
};

CpuResult run_cpu(const LossConfig& config, const HostBatch& hb) {
  CpuResult c;
  c.status = cpu_fused_policy_loss(config, hb, true, c.grad, c.logp, c.entropy, c.metrics, &c.policy_factor, &c.terms);
  return c;
}

// A per-token log p or H: |got - want| <= tol * max(|want|, 1). log p = (z_y - max z) / tau -
// log s with s >= 1 a sum of exponentials whose float rounding is a few eps_f relatively, so
// log s carries a few eps_f absolutely: the floor 1 (H = -sum p log p likewise, eps_f (1 + H)).
bool close(double got, double want, double tol) { return tolerance::close(got, want, tol, 1.0).ok; }

// The size of what each metric is made of (tests/support/reference.hpp's ref::Magnitudes, from the
// CPU path's log p and H): sum_t |w_t| m_t, with m_t bounding |x_t| and |dx_t / dlogp| for the
// token's value x_t (policy term: |A| (1 + r), r = e^min(20, max |log p - old| of its response),
// or |A| (1 + |log p|) where the term is linear in log p;
// H: H + 1; KL: 1 + 2 |d| + d^2, d = log p - ref), and the same with w_t = 1 / n for a mean.
// Each value is off by ~(its tolerance) times this, however close to 0 the value itself is.
struct MetricScales {
  double loss = 0, pg = 0, pg_initial = 0, pg_refinement = 0, entropy_loss = 0, kl_loss = 0, ppo_kl = 0,
         entropy_mean = 0, kl_mean = 0, prob_mean = 0, ratio_mean = 0;
};

double mean_or_zero(double x, double n) { return n > 0 ? x / n : 0.0; }

MetricScales metric_scales(const LossConfig& c, const HostBatch& hb, const std::vector<double>& logp,
                           const std::vector<double>& entropy) {
  MetricScales s;
  const cgrpo::SequenceLayout layout = hb.view_layout();
  double valid = 0, initial = 0, refinement = 0;
  const double beta = c.kl_on() ? c.kl.coef : 0.0;
  // The policy factor (IS weights, sampler weights, vespo's phi) scales the policy term; kl_cov adds
  // coef |x|; the computed weights are of the size of the caller-style weights hb.w_* hold.
  const bool factor = c.off_policy.rollout.is_level != cgrpo::RolloutIsLevel::none ||
                      cgrpo::traits_of(c.off_policy.sampler.mode).on || c.term().row_weight;
  const double f = factor ? 10.0 : 1.0;
  const bool linear_in_logp = c.policy.loss == cgrpo::PolicyLoss::gpg || c.policy.loss == cgrpo::PolicyLoss::reinforce;
  const std::vector<double>& reference = c.bypass() ? hb.rollout_logp : hb.old_logp;
  for (int64_t i = 0; i < layout.num_sequences; ++i) {
    // The largest ratio of the response (the sequence ratio is the exp of a mean: at most this): from
    // the largest log ratio, clamped as the loss clamps it, and below e^50 (TRL clamps nothing, and a
    // row of the extreme-rows test has log ratios of -1e30, whose ratio is 0, not e^1e30).
    double spread = 0, top = -INFINITY;
    for (int64_t t = layout.begin(i); t < layout.end(i); ++t) {
      spread = std::max(spread, std::fabs(logp[t] - reference[t]));
      top = std::max(top, logp[t] - reference[t]);
    }
    const double r = std::exp(std::min({std::max(top, 0.0), c.ratio.log_ratio_max, 50.0}));
    const double kl_factor = c.kl.times_ratio ? 1 + r : 1.0;
    for (int64_t t = layout.begin(i); t < layout.end(i); ++t) {
      const bool ref = hb.kinds[t] == cgrpo::kRefinement;
      const double d = logp[t] - hb.ref_logp[t];
      const double cov_penalty = c.policy.loss == cgrpo::PolicyLoss::kl_cov ? std::fabs(c.policy.kl_cov.coef) * (1 + spread) : 0.0;
      // gpg and reinforce are -A log p (times the factor): |x_t| is |A| |log p|, not bounded by
      // |A| (1 + r) once log p is far below 0 (the extreme rows' 1e5 nats: seed 3 failed on verl gpg in fp16).
      // cispo is -sg(clip(r)) A log p: linear in log p too, times the clipped ratio (seed 50 failed
      // at 1.02x its bound on the extreme rows at tau 1e4).
      const double size = linear_in_logp ? 1 + std::fabs(logp[t])
                          : c.policy.loss == cgrpo::PolicyLoss::cispo ? (1 + r) * (1 + std::fabs(logp[t]))
                                                                       : 1 + r;
      const double m_pg = std::fabs(hb.w_pg[t]) * (f * std::fabs(hb.adv[t]) * size + cov_penalty);
      (ref ? s.pg_refinement : s.pg_initial) += m_pg;
      s.entropy_loss += std::fabs(hb.w_h[t]) * (entropy[t] + 1);
      s.kl_loss += std::fabs(hb.w_kl[t]) * (1 + 2 * std::fabs(d) + d * d) * kl_factor;
      if (!hb.mask[t]) continue;
      valid += 1;
      s.entropy_mean += entropy[t] + 1;
      s.kl_mean += (1 + 2 * std::fabs(d) + d * d) * kl_factor;
      if (ref) {
        refinement += 1;
        s.prob_mean += std::exp(logp[t]) + 1;
      } else {
        initial += 1;
        s.ppo_kl += std::fabs(reference[t] - logp[t]) + 1;
        s.ratio_mean += r + 1;
      }
    }
  }
  s.pg = s.pg_initial + s.pg_refinement;
  s.loss = s.pg + std::fabs(c.entropy.coef) * s.entropy_loss + beta * s.kl_loss;
  s.ppo_kl = mean_or_zero(s.ppo_kl, initial);
  s.ratio_mean = mean_or_zero(s.ratio_mean, initial);
  s.prob_mean = mean_or_zero(s.prob_mean, refinement);
  s.entropy_mean = mean_or_zero(s.entropy_mean, valid);
  s.kl_mean = mean_or_zero(s.kl_mean, valid);
  return s;
}

template <typename Logit>
bool is_poison(Logit x) {
  Logit p;
  std::memset(static_cast<void*>(&p), 0xFF, sizeof(p));
  return std::memcmp(&x, &p, sizeof(p)) == 0;
}

// Smallest gradient step the dtype can store near zero: fp16 flushes below 6e-8 (no loss scaling here).
template <typename Logit> double grad_floor() { return 0.0; }
template <> double grad_floor<__half>() { return 6e-8; }

struct GradTolerance {
  double global;  // max |g - w| over the tensor / max |w| over the tensor
  double row;     // the same within each row
};

template <typename Logit>
GradTolerance grad_tolerance();
template <> GradTolerance grad_tolerance<float>() { return {1e-5, 1e-3}; }
template <> GradTolerance grad_tolerance<__half>() { return {1e-3, 2e-3}; }
template <> GradTolerance grad_tolerance<__nv_bfloat16>() { return {1e-2, 1e-2}; }

void compare_metrics(const std::string& label, const LossMetrics& g, const LossMetrics& w, const MetricScales& s,
                     double tol) {
  struct Field {
    const char* name;
    double got, want, scale;
  };
  const Field fields[] = {
      {"loss", g.loss, w.loss, s.loss},
      {"pg_loss", g.pg_loss, w.pg_loss, s.pg},
      {"pg_loss_initial", g.pg_loss_initial, w.pg_loss_initial, s.pg_initial},
      {"pg_loss_refinement", g.pg_loss_refinement, w.pg_loss_refinement, s.pg_refinement},
      {"entropy_loss", g.entropy_loss, w.entropy_loss, s.entropy_loss},
      {"kl_loss", g.kl_loss, w.kl_loss, s.kl_loss},
      {"pg_clipfrac", g.pg_clipfrac, w.pg_clipfrac, 1.0},  // fractions: exact unless a flag flips at a kink
      {"pg_clipfrac_lower", g.pg_clipfrac_lower, w.pg_clipfrac_lower, 1.0},
      {"ppo_kl", g.ppo_kl, w.ppo_kl, s.ppo_kl},
      {"entropy_mean", g.entropy_mean, w.entropy_mean, s.entropy_mean},
      {"kl_mean", g.kl_mean, w.kl_mean, s.kl_mean},
      {"refinement_prob_mean", g.refinement_prob_mean, w.refinement_prob_mean, s.prob_mean},
      {"ratio_mean", g.ratio_mean, w.ratio_mean, s.ratio_mean},
  };
  for (const Field& f : fields) {
    const tolerance::Closeness c = tolerance::close(f.got, f.want, tol, f.scale);
    GPU_EXPECT(c.ok, "%s: metric %s = %.9g, CPU %.9g (|diff| %.3g > bound %.3g)", label.c_str(), f.name, c.got,
               c.want, c.err, c.bound);
  }
  // TRL's per-row clip metrics, vespo's phi, verl's rollout metrics and TRL's sampler metrics. The
  // fractions are exact unless a flag flips at a kink (the batches keep away from them); the rest is
  // formed in double from float log p (verl bypass, OPSM, vespo): 1e-4 of their size or of 1.
  const cgrpo::RolloutMetrics& gr = g.rollout;
  const cgrpo::RolloutMetrics& wr = w.rollout;
  std::vector<Field> more = {
      {"clip_ratio_low_mean", g.clip_ratio_low_mean, w.clip_ratio_low_mean, 1.0},
      {"clip_ratio_high_mean", g.clip_ratio_high_mean, w.clip_ratio_high_mean, 1.0},
      {"clip_ratio_region_mean", g.clip_ratio_region_mean, w.clip_ratio_region_mean, 1.0},
      {"clip_ratio_low_min", g.clip_ratio_low_min, w.clip_ratio_low_min, 1.0},
      {"clip_ratio_high_max", g.clip_ratio_high_max, w.clip_ratio_high_max, 1.0},
      {"vespo_phi_mean", g.vespo_phi_mean, w.vespo_phi_mean, 10.0},
#define CGRPO_ROLLOUT_FIELD_CHECK(field) {"rollout." #field, gr.field, wr.field, 10.0},
      CGRPO_ROLLOUT_METRIC_FIELDS(CGRPO_ROLLOUT_FIELD_CHECK)
#undef CGRPO_ROLLOUT_FIELD_CHECK
      {"sampler.logp_difference_mean", g.sampler.logp_difference_mean, w.sampler.logp_difference_mean, 10.0},
      {"sampler.logp_difference_max", g.sampler.logp_difference_max, w.sampler.logp_difference_max, 10.0},
      {"sampler.is_ratio_min", g.sampler.is_ratio_min, w.sampler.is_ratio_min, 10.0},
      {"sampler.is_ratio_mean", g.sampler.is_ratio_mean, w.sampler.is_ratio_mean, 10.0},
      {"sampler.is_ratio_max", g.sampler.is_ratio_max, w.sampler.is_ratio_max, 10.0},
  };
  for (int k = 0; k < cgrpo::RolloutCorrectionConfig::kMaxRejectionOptions; ++k) {
    const cgrpo::RolloutMetrics::Option &go = gr.rs_option[k], &wo = wr.rs_option[k];
    more.push_back({"rollout.rs_option.mean", go.mean, wo.mean, 10.0});
    more.push_back({"rollout.rs_option.max", go.max, wo.max, 10.0});
    more.push_back({"rollout.rs_option.min", go.min, wo.min, 10.0});
    more.push_back({"rollout.rs_option.masked_fraction", go.masked_fraction, wo.masked_fraction, 10.0});
    more.push_back({"rollout.rs_option.seq_masked_fraction", go.seq_masked_fraction, wo.seq_masked_fraction, 10.0});
  }
  for (const Field& f : more) {  // scale 10 x tol: 1e-4 of max(|value|, 1)
    const tolerance::Closeness c = tolerance::close(f.got, f.want, tol, std::max(f.scale, 10.0 * std::fabs(f.want)));
    GPU_EXPECT(c.ok, "%s: metric %s = %.9g, CPU %.9g (|diff| %.3g > bound %.3g)", label.c_str(), f.name, c.got,
               c.want, c.err, c.bound);
  }
  GPU_EXPECT(g.num_valid_tokens == w.num_valid_tokens && g.num_initial_tokens == w.num_initial_tokens &&
                 g.num_refinement_tokens == w.num_refinement_tokens,
             "%s: token counts %lld/%lld/%lld, CPU %lld/%lld/%lld", label.c_str(), (long long)g.num_valid_tokens,
             (long long)g.num_initial_tokens, (long long)g.num_refinement_tokens, (long long)w.num_valid_tokens,
             (long long)w.num_initial_tokens, (long long)w.num_refinement_tokens);
}

template <typename Logit>
void compare_with_cpu(const std::string& label, const LossConfig& config, const HostBatch& hb,
                      const GpuResult<Logit>& g, const CpuResult& c, Mode mode) {
  GPU_EXPECT(c.status.ok(), "%s: CPU path failed: %s", label.c_str(), c.status.message);
  GPU_EXPECT(g.launch.ok(), "%s: launch: %s", label.c_str(), g.launch.message);
  GPU_EXPECT(g.finish.ok(), "%s: policy_loss_metrics: %s", label.c_str(), g.finish.message);
  if (!c.status.ok() || !g.finish.ok()) return;
  compare_metrics(label, g.metrics, c.metrics, metric_scales(config, hb, c.logp, c.entropy), 1e-5);
  int bad_tokens = 0;
  for (int64_t t = 0; t < hb.T; ++t)
    if (!close(g.logp[t], c.logp[t], 1e-5) || !close(g.entropy[t], c.entropy[t], 1e-5)) {
      if (++bad_tokens <= 3)
        GPU_EXPECT(false, "%s: token %lld logp %.9g (CPU %.9g) entropy %.9g (CPU %.9g)", label.c_str(), (long long)t,
                   g.logp[t], c.logp[t], g.entropy[t], c.entropy[t]);
    }
  if (g.with_terms) {  // outputs.policy_factor (float of the CPU's double) and token_terms (exact)
    int bad_factor = 0, bad_terms = 0;
    for (int64_t t = 0; t < hb.T; ++t) {
      if (!tolerance::close(g.policy_factor[t], c.policy_factor[t], 1e-4, 1.0).ok && ++bad_factor <= 3)
        GPU_EXPECT(false, "%s: policy_factor[%lld] = %.9g, CPU %.9g", label.c_str(), (long long)t, g.policy_factor[t],
                   c.policy_factor[t]);
      if (g.terms[t] != c.terms[t] && ++bad_terms <= 3)
        GPU_EXPECT(false, "%s: token_terms[%lld] = %d, CPU %d", label.c_str(), (long long)t, g.terms[t], c.terms[t]);
    }
  }
  if (mode == Mode::forward_only) return;

  const GradTolerance tol = grad_tolerance<Logit>();
  const double floor = grad_floor<Logit>();
  double err = 0, den = 0;
  int bad_rows = 0, non_finite = 0, padding_written = 0;
  std::vector<double> row_err(hb.T, 0.0), row_den(hb.T, 0.0);
  for (int64_t t = 0; t < hb.T; ++t) {
    for (int64_t v = 0; v < hb.V; ++v) {
      const double got = to_double(g.grad[t * g.grad_stride + v]);
      const double want = c.grad[t * hb.stride + v];
      if (!std::isfinite(got)) ++non_finite;
      row_err[t] = std::max(row_err[t], std::fabs(got - want));
      row_den[t] = std::max(row_den[t], std::fabs(want));
    }
    err = std::max(err, row_err[t]);
    den = std::max(den, row_den[t]);
    // The padding columns: untouched poison (separate buffer) or the logits' NaN padding (in place).
    for (int64_t v = hb.V; v < g.grad_stride; ++v) {
      const Logit x = g.grad[t * g.grad_stride + v];
      if (mode == Mode::separate_grad ? !is_poison(x) : !std::isnan(to_double(x))) ++padding_written;
    }
  }
  // Per row, relative to the row's largest entry, above a floor of 1e-6 of the tensor's largest entry:
  // a row whose exact gradient is ~0 (clipped token, p uniform over ties) holds rounding noise only.
  for (int64_t t = 0; t < hb.T; ++t)
    if (!(row_err[t] <= tol.row * row_den[t] + 1e-6 * den + floor) && ++bad_rows <= 3)
      GPU_EXPECT(false, "%s: gradient row %lld (mask %d, kind %d): max error %.3g, max |want| %.3g", label.c_str(),
                 (long long)t, hb.mask[t], hb.kinds[t], row_err[t], row_den[t]);
  GPU_EXPECT(non_finite == 0, "%s: %d gradient entries are not finite (poison left or NaN)", label.c_str(), non_finite);
  GPU_EXPECT(padding_written == 0, "%s: %d padding entries beyond V were written", label.c_str(), padding_written);
  // A row factor the kernels form in float from a sum over the row (IS / vLLM weights, vespo's
  // phi, the sequence ratio, GMPO's mean) carries about L eps_f of relative error into the whole
  // row: 1e-4, as policy_factor is compared above (fp32 trl vespo + token_mask failed at 1e-5,
  // error 1.24e-9 against a largest entry of 1e-4).
  // The terms with such a factor: verl's IS weights, TRL's sampler weights, and every term with a row
  // pass (PassPlan::row_context: sequence ratios, a row term's q_i, vespo's phi).
  const bool row_factor = config.off_policy.rollout.is_level != cgrpo::RolloutIsLevel::none ||
                          cgrpo::traits_of(config.off_policy.sampler.mode).on ||
                          cgrpo::plan_passes(config, cgrpo::PassInputs{}).row_context;
  const double global = row_factor ? std::max(tol.global, 1e-4) : tol.global;
  GPU_EXPECT(err <= global * den + floor, "%s: gradient max error %.3g vs max |grad| %.3g (tolerance %.1g)",
             label.c_str(), err, den, global);
}

// One config of the catalog (tests/support/catalog.hpp: every preset of the registry, then the
// variants the presets leave out); `index` its place there, `large` whether it also runs on
// V = 151936 with a row stride > V (the registry's presets: one- and two-pass plans of every term).
struct NamedConfig {
  std::string name;
  LossConfig config;
  int index = 0;
  bool large = false;
};

std::vector<NamedConfig> configs() {
  std::vector<NamedConfig> v;
  for (const support::CatalogEntry& e : support::catalog()) {
    NamedConfig nc;
    nc.name = e.name;
    nc.config = e.config();
    nc.index = static_cast<int>(v.size());
    nc.large = e.name.find(" + ") == std::string::npos;
    v.push_back(nc);
  }
  return v;
}

// The pass plan of a config whatever the batch (what it always runs, and requires of a batch).
cgrpo::PassPlan config_plan(const LossConfig& c) { return cgrpo::plan_passes(c, cgrpo::PassInputs{}); }

// What a batch of a config carries besides the values: derived from the config's plan, so that every
// config of the catalog gets what it reads, and the variant (0, 1, ...) alternates what is optional.
struct BatchInputs {
  bool computed = false;     // the loss computes its weights (batch.pg_weights = nullptr)
  bool rollout = false;      // the batch carries rollout_logp
  bool selection = false;    // the batch carries batch.selection
  bool spread = false;       // the rows' H spread out (entropy mask)
  double scale_length = 0;   // batch.scale.length, in multiples of the number of sequences (0: the layout's)
};

// Variant v of a config's inputs:
//   weights: computed when the plan requires them, else computed in every other variant (the parity
//     of index + v, so that each layout of test_against_cpu sees both rules across the catalog);
//   rollout_logp: when a correction reads it, and in variant 0 for OPSM (its other reference,
//     old_logp, in the other variants);
//   batch.selection: a batch-selecting term (kl_cov, clip_cov) gets the caller's in variant 1 and
//     selects its own tokens (the batch pass) in the others;
//   the entropy mask's batches spread the rows' H; computed weights of variant 0 take the caller's
//     batch.scale.length (30 B: TRL's dr_grpo max_completion_length form).
BatchInputs batch_inputs(const NamedConfig& nc, int v) {
  const LossConfig& c = nc.config;
  const cgrpo::PassPlan plan = config_plan(c);
  BatchInputs in;
  in.computed = plan.requires_computed_weights || (nc.index + v) % 2 == 1;
  in.rollout = c.needs_rollout_logp() || (c.opsm_on() && v == 0);
  in.selection = plan.selection != cgrpo::BatchSelection::none && v == 1;
  in.spread = plan.entropy_select;
  in.scale_length = in.computed && v == 0 ? 30.0 : 0.0;
  return in;
}

// The label of a config and its inputs.
std::string config_label(const NamedConfig& nc, const BatchInputs& in) {
  std::string s = nc.name + (in.computed ? ", computed weights" : ", caller weights");
  if (in.rollout) s += ", rollout_logp";
  if (in.selection) s += ", batch.selection";
  if (in.scale_length > 0) s += ", batch.scale.length = 30 B";
  return s;
}

// True when the configs' thresholds are far enough (1e-4) from every value the GPU forms from its
// float log p (about 1e-6 off the CPU's double): verl bypass's d and its row statistics, OPSM's row
// means, the entropy quantile, kl_cov's k-th covariance, clip_cov's band, the sequence ratios.
// x is 1e-4 (relatively) away from a finite bound.
bool far(double x, double bound) {
  return !std::isfinite(bound) || std::fabs(x - bound) > 1e-4 * std::max(1.0, std::fabs(bound));
}

// A valid initial token (what the corrections and selections read).
bool valid_initial(const HostBatch& hb, int64_t t) { return hb.mask[t] && hb.kinds[t] == cgrpo::kInitial; }

bool float_stable(const LossConfig& c, const HostBatch& hb, std::string* why) {
  std::vector<double> lp(hb.T), H(hb.T);
  if (hb.T == 0) return true;
  if (!cpu_token_logprobs(hb.logits.data(), hb.T, hb.V, hb.stride, hb.targets.data(), c.temperature, lp.data(), H.data()).ok())
    return true;  // the test reports it
  const cgrpo::PassPlan plan = config_plan(c);
  const cgrpo::SequenceLayout layout = hb.view_layout();
  const bool bypass = c.bypass();
  const std::vector<double>& reference = bypass ? hb.rollout_logp : hb.old_logp;
  if (c.sequence_ratio()) {
    const std::vector<double> kinks = loss_kinks(c);
    for (int64_t i = 0; i < layout.num_sequences; ++i) {
      double n = 0, x = 0;
      for (int64_t t = layout.begin(i); t < layout.end(i); ++t)
        if (valid_initial(hb, t)) n += 1, x += lp[t] - reference[t];
      for (double k : kinks)
        if (n > 0 && !far(x / n, k)) return *why = "a sequence ratio at a clip bound", false;
    }
  }
  if (bypass) {
    const cgrpo::RolloutParams p = cgrpo::rollout_params(c.off_policy.rollout);
    for (int64_t i = 0; i < layout.num_sequences; ++i) {
      cgrpo::RolloutRowSums r = cgrpo::rollout_row_sums_zero();
      for (int64_t t = layout.begin(i); t < layout.end(i); ++t)
        if (valid_initial(hb, t)) cgrpo::rollout_row_add(r, lp[t], hb.rollout_logp[t]);
      if (!far(r.sum_d, p.log_threshold) || !far(r.sum_d, p.log_threshold_lower)) return *why = "a row's IS sum at the threshold", false;
      const cgrpo::RolloutRowValues v = cgrpo::rollout_row_values(p, r);
      for (int64_t t = layout.begin(i); t < layout.end(i); ++t) {
        if (!valid_initial(hb, t)) continue;
        const cgrpo::RolloutTokenValues tok = cgrpo::rollout_token(p, v, lp[t], hb.rollout_logp[t]);
        if (!far(tok.u, p.threshold) || !far(tok.u, p.threshold_lower)) return *why = "an IS weight at the threshold", false;
        for (int k = 0; k < p.num_options; ++k)
          if (!far(tok.stat[k], p.option[k].lower) || !far(tok.stat[k], p.option[k].upper))
            return *why = "a rejection statistic at its threshold", false;
      }
    }
  }
  if (c.opsm_on()) {
    for (int64_t i = 0; i < layout.num_sequences; ++i) {
      double n = 0, kl = 0;
      for (int64_t t = layout.begin(i); t < layout.end(i); ++t)
        if (valid_initial(hb, t)) n += 1, kl += (hb.rollout_logp.empty() ? hb.old_logp[t] : hb.rollout_logp[t]) - lp[t];
      if (!far(kl / std::max(n, 1.0), c.off_policy.opsm_threshold)) return *why = "an OPSM row mean at the threshold", false;
    }
  }
  if (plan.entropy_select) {
    std::vector<double> h;
    for (int64_t t = 0; t < hb.T; ++t)
      if (hb.mask[t]) h.push_back(H[t]);
    if (!h.empty()) {
      std::vector<double> sorted = h;
      const double q = cgrpo::quantile_linear(sorted, 1.0 - c.entropy_mask.top_quantile);
      for (double x : h)
        if (x != q && std::fabs(x - q) < 1e-4) return *why = "an entropy at the quantile", false;
    }
  }
  if (plan.selection != cgrpo::BatchSelection::none && hb.selection.empty()) {
    // The batch pass's covariances (loss/row_pass.hpp) from the double log p.
    const cgrpo::SelectionParams sel = cgrpo::selection_params(c);
    cgrpo::CovarianceSums sums{0.0, 0.0, 0.0};
    for (int64_t t = 0; t < hb.T; ++t)
      if (valid_initial(hb, t)) cgrpo::covariance_add(sums, hb.adv[t], lp[t]);
    const cgrpo::CovarianceMeans means = cgrpo::covariance_means(sums, sel.selection);
    std::vector<double> covs;
    for (int64_t t = 0; t < hb.T; ++t)
      if (valid_initial(hb, t)) covs.push_back(cgrpo::token_covariance(hb.adv[t], lp[t], means));
    std::sort(covs.begin(), covs.end(), std::greater<double>());
    const int64_t k = cgrpo::covariance_select_count(sums.n, sel.ratio);
    const bool top = plan.selection == cgrpo::BatchSelection::top_covariance;
    if (top && k < static_cast<int64_t>(covs.size()) && !far(covs[k - 1], covs[k])) return *why = "a tie at the k-th covariance", false;
    if (!top)
      for (double x : covs)
        if (!far(x, sel.lower) || !far(x, sel.upper)) return *why = "a covariance at the selection's window", false;
  }
  return true;
}

// random_batch with the config's inputs (rollout_logp, selection, computed weights, global counts),
// drawn again until float_stable holds.
template <typename Logit>
HostBatch config_batch(std::mt19937_64& rng, BatchSpec spec, const NamedConfig& nc, const BatchInputs& in,
                       std::vector<Logit>& logits) {
  spec.rollout = in.rollout;
  spec.selection = in.selection;
  spec.entropy_spread = in.spread;
  std::string why;
  auto draw = [&] {
    HostBatch hb = random_batch<Logit>(rng, spec, nc.config, logits);
    hb.computed_weights = in.computed;
    hb.scale.length = in.scale_length * static_cast<double>(hb.B);
    return hb;
  };
  for (int attempt = 0; attempt < 200; ++attempt) {
    HostBatch hb = draw();
    if (float_stable(nc.config, hb, &why)) return hb;
  }
  std::printf("FAIL: %s: no batch keeps away from its thresholds in 200 draws (%s)\n", nc.name.c_str(), why.c_str());
  ++failures();
  return draw();
}

// Every config on small odd-V batches (in place, separate grad with a different row alignment,
// forward only): shape 0 packed (inputs of variant 0), shape 1 padded (variant 1: the other weights
// rule, the caller's selection), and the `large` ones on V = 151936 with row stride > V (variant 2).
template <typename Logit>
void test_against_cpu(std::mt19937_64& rng) {
  for (const NamedConfig& nc : configs()) {
    for (int shape = 0; shape < 3; ++shape) {
      const bool large = shape == 2;
      if (large && !nc.large) continue;
      if (quick_matrix() && shape != 0) continue;
      const BatchInputs in = batch_inputs(nc, shape);
      BatchSpec spec;
      if (large) {
        spec.V = 151936;
        spec.num_sequences = 6;
        spec.max_len = 8;
        spec.extra_stride = 21;  // stride 151957 (odd): rows start at every 16-byte phase
      } else {
        spec.V = shape == 0 ? 1003 : 4099;
        spec.num_sequences = 24;
        spec.max_len = 20;
        spec.extra_stride = shape == 0 ? 0 : 5;
      }
      spec.padded = shape == 1;
      std::vector<Logit> logits;
      const HostBatch hb = config_batch<Logit>(rng, spec, nc, in, logits);
      const CpuResult cpu = run_cpu(nc.config, hb);
      const std::string name = config_label(nc, in);
      for (Mode mode : {Mode::separate_grad, Mode::in_place, Mode::forward_only}) {
        if (large && mode == Mode::forward_only) continue;
        const int64_t grad_extra = shape == 0 ? 3 : 0;  // 3: grad rows misaligned against logits rows
        char label[500];
        std::snprintf(label, sizeof(label), "[%s] %s, V=%lld T=%lld stride=%lld%s, %s", dtype_name<Logit>(), name.c_str(),
                      (long long)hb.V, (long long)hb.T, (long long)hb.stride, spec.padded ? " padded" : " packed",
                      mode_name(mode));
        const GpuResult<Logit> g = run_gpu<Logit>(nc.config, hb, logits, mode, grad_extra);
        compare_with_cpu(label, nc.config, hb, g, cpu, mode);
      }
    }
  }
}

// An empty batch (T = 0) with B rows of length 0 (packed, and padded of length 0), caller and computed
// weights: every metric as the CPU path gives it (vespo's phi of an empty row is 1), nothing launched
// over tokens.
template <typename Logit>
void test_empty_batch(std::mt19937_64& rng) {
  (void)rng;
  for (const NamedConfig& nc : configs()) {
    const bool required = config_plan(nc.config).requires_computed_weights;
    for (const bool computed : {false, true})
      for (const bool padded : {false, true}) {
        if (!computed && required) continue;
        HostBatch hb;
        hb.V = 11;
        hb.stride = 11;
        hb.B = 3;
        hb.offsets.assign(4, 0);
        hb.zero_length_padded = padded;
        hb.computed_weights = computed;
        const CpuResult cpu = run_cpu(nc.config, hb);
        const GpuResult<Logit> g = run_gpu<Logit>(nc.config, hb, {}, Mode::separate_grad, 0);
        char label[300];
        std::snprintf(label, sizeof(label), "[%s] %s, %s weights, empty batch (%s)", dtype_name<Logit>(), nc.name.c_str(),
                      computed ? "computed" : "caller", padded ? "padded, length 0" : "packed");
        GPU_EXPECT(g.finish.ok(), "%s: GPU '%s'", label, g.finish.message);
        // Both paths run it under every correction (rows without tokens read no array).
        GPU_EXPECT(cpu.status.ok(), "%s: CPU '%s'", label, cpu.status.message);
        if (cpu.status.ok() && g.finish.ok()) compare_metrics(label, g.metrics, cpu.metrics, MetricScales{}, 1e-12);
      }
  }
}

// Two runs on the same inputs give the same bits (loss, metrics, logp, gradient); forward only
// gives the same metric bits as forward + backward.
template <typename Logit>
void test_determinism(std::mt19937_64& rng) {
  for (const NamedConfig& nc : configs()) {
    BatchSpec spec;
    spec.V = quick_matrix() ? 4099 : 151936;
    spec.num_sequences = 40;
    spec.max_len = 8;
    std::vector<Logit> logits;
    const BatchInputs in = batch_inputs(nc, 0);
    const HostBatch hb = config_batch<Logit>(rng, spec, nc, in, logits);
    const std::string name = config_label(nc, in);
    const char* n = name.c_str();
    const GpuResult<Logit> a = run_gpu<Logit>(nc.config, hb, logits, Mode::separate_grad, 0);
    const GpuResult<Logit> b = run_gpu<Logit>(nc.config, hb, logits, Mode::separate_grad, 0);
    const GpuResult<Logit> f = run_gpu<Logit>(nc.config, hb, logits, Mode::forward_only, 0);
    GPU_EXPECT(a.finish.ok() && b.finish.ok() && f.finish.ok(), "[%s] %s: %s / %s / %s", dtype_name<Logit>(), n,
               a.finish.message, b.finish.message, f.finish.message);
    GPU_EXPECT(std::memcmp(&a.metrics, &b.metrics, sizeof(LossMetrics)) == 0, "[%s] %s: metrics differ run to run (loss %.17g vs %.17g)",
               dtype_name<Logit>(), n, a.metrics.loss, b.metrics.loss);
    GPU_EXPECT(std::memcmp(&a.metrics, &f.metrics, sizeof(LossMetrics)) == 0,
               "[%s] %s: forward-only metrics differ from forward+backward (loss %.17g vs %.17g)", dtype_name<Logit>(),
               n, f.metrics.loss, a.metrics.loss);
    GPU_EXPECT(a.grad.size() == b.grad.size() && std::memcmp(a.grad.data(), b.grad.data(), a.grad.size() * sizeof(Logit)) == 0,
               "[%s] %s: gradient bits differ run to run", dtype_name<Logit>(), n);
    GPU_EXPECT(std::memcmp(a.logp.data(), b.logp.data(), a.logp.size() * sizeof(float)) == 0,
               "[%s] %s: logp bits differ run to run", dtype_name<Logit>(), n);
    GPU_EXPECT(a.terms == b.terms && a.terms == f.terms &&
                   std::memcmp(a.policy_factor.data(), b.policy_factor.data(), a.policy_factor.size() * sizeof(float)) == 0,
               "[%s] %s: policy_factor or token_terms differ run to run", dtype_name<Logit>(), n);
  }
}

// The log-prob / entropy kernel against cpu::token_logprobs (odd V, stride > V, tau != 1).
template <typename Logit>
void test_token_logprobs(std::mt19937_64& rng) {
  for (int64_t V : {int64_t{151936}, int64_t{1003}, int64_t{7}}) {
    LossConfig c;
    c.temperature = V == 1003 ? 0.6 : 1.0;
    BatchSpec spec;
    spec.V = V;
    spec.num_sequences = V > 100000 ? 4 : 30;
    spec.max_len = 10;
    spec.extra_stride = 11;
    std::vector<Logit> logits;
    const HostBatch hb = random_batch<Logit>(rng, spec, c, logits);
    std::vector<double> want_logp(hb.T), want_entropy(hb.T);
    const cgrpo::Status cs = cpu_token_logprobs(hb.logits.data(), hb.T, hb.V, hb.stride, hb.targets.data(),
                                                c.temperature, want_logp.data(), want_entropy.data());
    GPU_EXPECT(cs.ok(), "cpu token_logprobs: %s", cs.message);
    if (emulate_on_host()) {
      std::vector<float> gl(hb.T, NAN), ge(hb.T, NAN);
      const cgrpo::Status st = emulate_token_logprobs(logits.data(), hb.T, hb.V, hb.stride, hb.targets.data(),
                                                      c.temperature, gl.data(), ge.data());
      GPU_EXPECT(st.ok(), "[%s] emulated token_logprobs V=%lld: %s", dtype_name<Logit>(), (long long)V, st.message);
      int bad = 0;
      for (int64_t t = 0; t < hb.T; ++t)
        if ((!close(gl[t], want_logp[t], 1e-5) || !close(ge[t], want_entropy[t], 1e-5)) && ++bad <= 3)
          GPU_EXPECT(false, "[%s] emulated token_logprobs V=%lld token %lld: logp %.9g (CPU %.9g) entropy %.9g (CPU %.9g)",
                     dtype_name<Logit>(), (long long)V, (long long)t, gl[t], want_logp[t], ge[t], want_entropy[t]);
      continue;
    }
    DeviceBuffer<Logit> d_logits(logits.size());
    d_logits.upload(logits);
    DeviceBuffer<int32_t> d_targets(hb.T);
    d_targets.upload(hb.targets);
    DeviceBuffer<float> logp(hb.T), entropy(hb.T);
    logp.poison();
    entropy.poison();
    DeviceBuffer<char> ws(cgrpo::cuda::token_logprobs_workspace_size());
    const cgrpo::Status launch =
        cgrpo::cuda::token_logprobs(d_logits.ptr, hb.T, hb.V, hb.stride, d_targets.ptr, c.temperature, logp.ptr,
                                    entropy.ptr, ws.ptr, ws.count, nullptr);
    const cgrpo::Status finish = launch.ok() ? cgrpo::cuda::token_logprobs_status(ws.ptr, nullptr) : launch;
    GPU_EXPECT(finish.ok(), "[%s] token_logprobs V=%lld: %s", dtype_name<Logit>(), (long long)V, finish.message);
    const std::vector<float> gl = logp.download(), ge = entropy.download();
    int bad = 0;
    for (int64_t t = 0; t < hb.T; ++t)
      if ((!close(gl[t], want_logp[t], 1e-5) || !close(ge[t], want_entropy[t], 1e-5)) && ++bad <= 3)
        GPU_EXPECT(false, "[%s] token_logprobs V=%lld token %lld: logp %.9g (CPU %.9g) entropy %.9g (CPU %.9g)",
                   dtype_name<Logit>(), (long long)V, (long long)t, gl[t], want_logp[t], ge[t], want_entropy[t]);

    // An out-of-range target is reported with the CPU path's message.
    std::vector<int32_t> bad_targets = hb.targets;
    bad_targets[3] = static_cast<int32_t>(V);
    d_targets.upload(bad_targets);
    const cgrpo::Status l2 = cgrpo::cuda::token_logprobs(d_logits.ptr, hb.T, hb.V, hb.stride, d_targets.ptr,
                                                         c.temperature, logp.ptr, entropy.ptr, ws.ptr, ws.count, nullptr);
    const cgrpo::Status f2 = l2.ok() ? cgrpo::cuda::token_logprobs_status(ws.ptr, nullptr) : l2;
    const cgrpo::Status c2 = cpu_token_logprobs(hb.logits.data(), hb.T, hb.V, hb.stride, bad_targets.data(),
                                                c.temperature, want_logp.data(), want_entropy.data());
    GPU_EXPECT(f2.code == cgrpo::StatusCode::out_of_range && std::strcmp(f2.message, c2.message) == 0,
               "[%s] token_logprobs out of range: GPU '%s', CPU '%s'", dtype_name<Logit>(), f2.message, c2.message);
  }
}

std::string before_semicolon(const char* s) {
  const char* p = std::strchr(s, ';');
  return p ? std::string(s, p) : std::string(s);
}

// Bad per-token values and bad logits: flagged in the status word with the CPU path's message
// (up to the "; ..." that says what was written), the bad row's gradient zeros, no garbage anywhere;
// on the single-kernel path and on the two-pass one (rows, batch passes and computed weights
// around the bad token), with the inputs only the two-pass configs read (rollout_logp, selection).
template <typename Logit>
void test_flagged_rows(std::mt19937_64& rng) {
  struct Breakage {
    const char* name;
    int64_t row;
    std::function<bool(const LossConfig&, const BatchInputs&)> applies;
    std::function<void(HostBatch&, std::vector<Logit>&)> apply;
  };
  const Logit nan_logit = from_double<Logit>(std::numeric_limits<double>::quiet_NaN());
  const Logit inf_logit = from_double<Logit>(INFINITY);
  const Logit neg_inf_logit = from_double<Logit>(-INFINITY);
  auto set_logit = [](HostBatch& b, std::vector<Logit>& z, int64_t t, int64_t v, Logit x) {
    z[t * b.stride + v] = x;
    b.logits[t * b.stride + v] = to_double(x);
  };
  auto any = [](const LossConfig&, const BatchInputs&) { return true; };
  auto caller_weights = [](const LossConfig&, const BatchInputs& in) { return !in.computed; };
  auto reads_rollout = [](const LossConfig& c, const BatchInputs&) { return c.needs_rollout_logp(); };
  auto has_selection = [](const LossConfig&, const BatchInputs& in) { return in.selection; };
  const std::vector<Breakage> breakages = {
      {"target out of range", 5, any, [](HostBatch& b, std::vector<Logit>&) { b.targets[9] = -1; b.targets[5] = static_cast<int32_t>(b.V + 3); }},
      {"NaN logit", 4, any, [&](HostBatch& b, std::vector<Logit>& z) { set_logit(b, z, 8, 1, inf_logit); set_logit(b, z, 4, 17, nan_logit); }},
      {"+inf logit", 6, any, [&](HostBatch& b, std::vector<Logit>& z) { set_logit(b, z, 6, b.V - 1, inf_logit); }},
      {"row all -inf", 7, any, [&](HostBatch& b, std::vector<Logit>& z) { for (int64_t v = 0; v < b.V; ++v) set_logit(b, z, 7, v, neg_inf_logit); }},
      {"-inf target logit", 9, any, [&](HostBatch& b, std::vector<Logit>& z) { set_logit(b, z, 9, b.targets[9], neg_inf_logit); }},
      {"mask value 2", 3, any, [](HostBatch& b, std::vector<Logit>&) { b.mask[3] = 2; }},
      // Per-token values are read at valid tokens only (padding may hold anything): these rows are made valid.
      {"kind value 5", 11, any, [](HostBatch& b, std::vector<Logit>&) { b.mask[11] = 1; b.kinds[11] = 5; }},
      {"NaN advantage", 2, any, [](HostBatch& b, std::vector<Logit>&) { b.mask[2] = 1; b.adv[2] = std::numeric_limits<double>::quiet_NaN(); }},
      {"inf pg weight", 12, caller_weights, [](HostBatch& b, std::vector<Logit>&) { b.mask[12] = 1; b.w_pg[12] = INFINITY; }},
      // Faults of two kinds: the CPU walks the tokens in order, so the lower row is named.
      {"mask at 3, target at 10", 3, any, [](HostBatch& b, std::vector<Logit>&) { b.mask[3] = 2; b.targets[10] = -1; }},
      {"NaN advantage at 2, target at 5", 2, any, [](HostBatch& b, std::vector<Logit>&) {
         b.mask[2] = 1;
         b.adv[2] = std::numeric_limits<double>::quiet_NaN();
         b.targets[5] = static_cast<int32_t>(b.V);
       }},
      // Sequence 3 is initial: a valid initial token reads rollout_logp (the ratio's reference in bypass mode).
      {"NaN rollout_logp", 33, reads_rollout, [](HostBatch& b, std::vector<Logit>&) {
         b.mask[33] = 1;
         b.rollout_logp[33] = std::numeric_limits<double>::quiet_NaN();
       }},
      {"selection value 2", 34, has_selection, [](HostBatch& b, std::vector<Logit>&) { b.mask[34] = 1; b.selection[34] = 2; }},
  };
  // One config of the catalog per kind of pass around the bad token, first found by its plan: the
  // single kernel (verl/grpo), a sequence ratio (verl/gspo), verl's batch-normalised IS weights, its
  // rejection, its bypass mode, each batch selection, a row weight (vespo), TRL's entropy mask; each
  // with both weights rules (where the plan allows the caller's) and, for a selecting term, the
  // caller's batch.selection (variant 1) and its own.
  const std::vector<NamedConfig> all = configs();
  std::vector<std::function<bool(const NamedConfig&)>> kinds = {
      [](const NamedConfig& nc) { return nc.name == "verl/grpo"; },
      [](const NamedConfig& nc) { return nc.name == "verl/gspo"; },
      [](const NamedConfig& nc) { return config_plan(nc.config).rollout_normalize; },
      [](const NamedConfig& nc) { return nc.config.off_policy.rollout.num_rejection_options > 0 && !nc.config.bypass(); },
      [](const NamedConfig& nc) { return nc.config.bypass(); },
      [](const NamedConfig& nc) { return config_plan(nc.config).selection == cgrpo::BatchSelection::top_covariance; },
      [](const NamedConfig& nc) { return config_plan(nc.config).selection == cgrpo::BatchSelection::covariance_window; },
      [](const NamedConfig& nc) { return nc.config.term().row_weight; },
      [](const NamedConfig& nc) { return config_plan(nc.config).entropy_select; },
  };
  struct FlaggedCase {
    NamedConfig nc;
    BatchInputs in;
  };
  std::vector<FlaggedCase> cases;
  for (const auto& kind : kinds) {
    const auto it = std::find_if(all.begin(), all.end(), kind);
    GPU_EXPECT(it != all.end(), "test_flagged_rows: the catalog has no config of one of the kinds (index %d)",
               static_cast<int>(&kind - kinds.data()));
    if (it == all.end()) continue;
    const cgrpo::PassPlan plan = config_plan(it->config);
    for (int v = 0; v < 2; ++v) {
      // Variant 0: the caller's weights where allowed (and a selecting term's batch.selection);
      // variant 1: computed weights (and the term's own selection).
      BatchInputs in = batch_inputs(*it, v);
      in.computed = plan.requires_computed_weights || v == 1;
      in.selection = plan.selection != cgrpo::BatchSelection::none && v == 0;
      in.scale_length = 0;
      if (v == 1 && in.computed == cases.back().in.computed && in.selection == cases.back().in.selection) continue;
      cases.push_back({*it, in});
    }
  }
  for (const FlaggedCase& fc : cases)
    for (const Breakage& br : breakages) {
      const NamedConfig& nc = fc.nc;
      if (!br.applies(nc.config, fc.in)) continue;
      const std::string label = config_label(nc, fc.in);
      const char* name = label.c_str();
      BatchSpec spec;
      spec.V = 1003;
      spec.num_sequences = 6;
      spec.max_len = 10;
      spec.padded = true;  // T = 60: every row the breakages name exists
      spec.extreme_fraction = spec.neg_inf_fraction = 0.0;
      std::vector<Logit> logits;
      HostBatch hb = config_batch<Logit>(rng, spec, nc, fc.in, logits);
      br.apply(hb, logits);
      const CpuResult cpu = run_cpu(nc.config, hb);
      const GpuResult<Logit> g = run_gpu<Logit>(nc.config, hb, logits, Mode::separate_grad, 0);
      GPU_EXPECT(g.launch.ok(), "[%s] %s, %s: launch should succeed (values are checked on the device): %s",
                 dtype_name<Logit>(), br.name, name, g.launch.message);
      GPU_EXPECT(!cpu.status.ok() && g.finish.code == cpu.status.code &&
                     before_semicolon(g.finish.message) == before_semicolon(cpu.status.message),
                 "[%s] %s, %s: GPU '%s' vs CPU '%s'", dtype_name<Logit>(), br.name, name, g.finish.message,
                 cpu.status.message);
      int non_zero = 0, non_finite = 0;
      for (int64_t t = 0; t < hb.T; ++t)
        for (int64_t v = 0; v < hb.V; ++v) {
          const double x = to_double(g.grad[t * g.grad_stride + v]);
          if (!std::isfinite(x)) ++non_finite;
          if (t == br.row && x != 0.0) ++non_zero;
        }
      int bad_outputs = 0;  // the optional outputs hold numbers, never poison
      for (int64_t t = 0; t < hb.T; ++t)
        if (!std::isfinite(g.policy_factor[t]) || (g.terms[t] & ~31) != 0) ++bad_outputs;
      GPU_EXPECT(non_finite == 0, "[%s] %s, %s: %d gradient entries are garbage (not finite)", dtype_name<Logit>(),
                 br.name, name, non_finite);
      GPU_EXPECT(non_zero == 0, "[%s] %s, %s: the flagged row %lld has %d non-zero gradient entries",
                 dtype_name<Logit>(), br.name, name, (long long)br.row, non_zero);
      GPU_EXPECT(bad_outputs == 0, "[%s] %s, %s: %d policy_factor / token_terms entries are garbage",
                 dtype_name<Logit>(), br.name, name, bad_outputs);
    }
}

// token_logprobs on the device, or emulated on the host: log p and H of every row of `logits`.
template <typename Logit>
cgrpo::Status gpu_token_logprobs(const HostBatch& hb, const std::vector<Logit>& logits, const std::vector<int32_t>& targets,
                                 double temperature, std::vector<float>& logp, std::vector<float>& entropy) {
  logp.assign(hb.T, NAN);
  entropy.assign(hb.T, NAN);
  if (emulate_on_host())
    return emulate_token_logprobs(logits.data(), hb.T, hb.V, hb.stride, targets.data(), temperature, logp.data(),
                                  entropy.data());
  DeviceBuffer<Logit> d_logits(logits.size());
  d_logits.upload(logits);
  DeviceBuffer<int32_t> d_targets(hb.T);
  d_targets.upload(targets);
  DeviceBuffer<float> d_logp(hb.T), d_entropy(hb.T);
  d_logp.poison();
  d_entropy.poison();
  DeviceBuffer<char> ws(cgrpo::cuda::token_logprobs_workspace_size());
  const cgrpo::Status launch = cgrpo::cuda::token_logprobs(d_logits.ptr, hb.T, hb.V, hb.stride, d_targets.ptr, temperature,
                                                           d_logp.ptr, d_entropy.ptr, ws.ptr, ws.count, nullptr);
  const cgrpo::Status finish = launch.ok() ? cgrpo::cuda::token_logprobs_status(ws.ptr, nullptr) : launch;
  logp = d_logp.download();
  entropy = d_entropy.download();
  return finish;
}

// Issue 13, class 9 (a): a gradient entry that does not fit the logits' dtype (fp16 past 65504,
// bf16 and fp32 past ~3.4e38) is flagged with a message naming the row, and the row is written
// as zeros, never as inf with status OK; a row well inside the range is not flagged.
template <typename Logit>
void test_gradient_overflow(std::mt19937_64& rng) {
  const double big = static_cast<double>(std::is_same<Logit, __half>::value ? 65504.0f : FLT_MAX);
  for (bool overflow : {true, false})
    for (Mode mode : {Mode::separate_grad, Mode::in_place}) {
      LossConfig config = cgrpo::paper_critique_grpo().loss;  // no clipping: the ratio's gradient reaches every row
      // tau = 0.01 lets a float advantage reach 4x FLT_MAX / tau; the control runs at tau = 1,
      // where float log p is exact enough for compare_with_cpu's 1e-5.
      config.temperature = overflow ? 0.01 : 1.0;
      BatchSpec spec;
      spec.V = 1003;
      spec.num_sequences = 6;
      spec.max_len = 10;
      spec.padded = true;  // T = 60
      spec.extreme_fraction = spec.neg_inf_fraction = 0.0;
      const int64_t R = 33;  // sequence 3: initial tokens, whose a_t = -w A r does not vanish with p
      std::vector<Logit> logits;
      HostBatch hb;
      CpuResult cpu;
      // At tau = 0.01 row R is nearly one-hot: when its target is the row's max (about 1 draw in V),
      // 1 - p_y ~ 0 and the exact gradient is far below the dtype's max. The overflow case redraws
      // such batches until the float64 gradient of row R is past 1.01x the max (every dtype rounds
      // it to inf; the float computation is accurate to 1e-6); the redraws come from a generator of
      // their own, so every later check sees the same draws as without them.
      std::mt19937_64 redraws = test_seed::fresh_rng();
      for (int attempt = 0; attempt < 100; ++attempt) {
        logits.clear();
        hb = random_batch<Logit>(attempt == 0 ? rng : redraws, spec, config, logits);
        hb.mask[R] = 1;
        hb.w_pg[R] = 1.0;
        // |dJ/dz_y| ~ |A| (1 - p_y) / tau: 4x the dtype's max, or 1e-3 of it.
        hb.adv[R] = rounded_float((overflow ? 4.0 : 1e-3) * big * config.temperature);
        cpu = run_cpu(config, hb);
        double row_max = 0;
        for (int64_t v = 0; v < hb.V && cpu.status.ok(); ++v)
          row_max = std::max(row_max, std::fabs(cpu.grad[R * hb.stride + v]));
        if (!overflow || row_max >= 1.01 * big) break;
      }
      const GpuResult<Logit> g = run_gpu<Logit>(config, hb, logits, mode, 0);
      char label[200];
      std::snprintf(label, sizeof(label), "[%s] gradient %s, %s", dtype_name<Logit>(),
                    overflow ? "past the dtype's max" : "inside the range", mode_name(mode));
      int non_finite = 0, row_non_zero = 0;
      for (int64_t t = 0; t < hb.T; ++t)
        for (int64_t v = 0; v < hb.V; ++v) {
          const double x = to_double(g.grad[t * g.grad_stride + v]);
          if (!std::isfinite(x)) ++non_finite;
          if (t == R && x != 0.0) ++row_non_zero;
        }
      GPU_EXPECT(non_finite == 0, "%s: %d gradient entries are not finite", label, non_finite);
      if (overflow) {
        GPU_EXPECT(g.finish.code == cgrpo::StatusCode::non_finite &&
                       std::strstr(g.finish.message, "row 33") != nullptr &&
                       std::strstr(g.finish.message, "overflow") != nullptr,
                   "%s: status '%s' should name row 33 and the overflow", label, g.finish.message);
        GPU_EXPECT(row_non_zero == 0, "%s: the flagged row has %d non-zero entries (should be zeros)", label, row_non_zero);
      } else {
        compare_with_cpu(label, config, hb, g, cpu, mode);
      }
    }
}

// Issue 13, class 9 (b) and class 3 on the GPU: rows holding both the dtype's largest value and
// its most negative one (0 x -inf in the statistics merge used to flag them as non-finite), rows
// whose max z / tau overflows float (fp32 / bf16), tau from 1e-4 to 1e4, against the CPU path in
// double; and token_logprobs on the same rows, with a log p below -FLT_MAX written as -FLT_MAX.
template <typename Logit>
void test_extreme_rows(std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  const double big = to_double(from_double<Logit>(std::is_same<Logit, __half>::value ? 65504.0 : 3.3895313892515355e38));
  const Logit big_l = from_double<Logit>(big);
  for (double tau : {1e-4, 1.0, 1e4})
    for (int64_t V : {int64_t{1003}, int64_t{9000}})
      for (const NamedConfig& nc : configs()) {
        if (quick_matrix() && (tau != 1.0 || V != 1003)) continue;
        const LossConfig& c = nc.config;
        const cgrpo::PassPlan plan = config_plan(c);
        // KL terms of |log p| ~ 1e30 are not float numbers: only verl's clamped k3 (its value and its
        // own gradient, not the straight-through k2 one) stays bounded; GSPO's mean ratio is clamped anyway.
        const bool bounded_kl = !c.kl_on() || (c.kl.estimator == cgrpo::KlEstimator::k3 && c.kl.k3_clamp &&
                                               !c.kl.straight_through);
        if (!bounded_kl || c.ratio.level != cgrpo::RatioLevel::token) continue;
        // Likewise a policy term whose loss is not a float number at |log p| ~ 1e30 (its own bound:
        // dro's (log p - old)^2 / 2 is ~1e60 there).
        const cgrpo::TermBound far = cgrpo::policy_term_bound(c.policy.loss, cgrpo::BoundInputs{1.0, 1e31, 1.0},
                                                              cgrpo::ratio_params<double>(c.ratio), c.policy);
        if (!(far.loss < 1e37 && far.dlogp < 1e37)) continue;
        // Token-level losses on both paths (computed weights take two passes: V = 9000 runs them); the
        // corrections, selections and row terms read log p against thresholds (or form row means)
        // that rows of |log p| ~ 1e30 make meaningless.
        if (plan.rollout || plan.sampler || plan.entropy_select || plan.selection != cgrpo::BatchSelection::none ||
            c.term().row_log_ratio || c.term().row_weight)
          continue;
        BatchInputs in;
        in.computed = plan.requires_computed_weights || V == 9000;
        LossConfig config = c;
        config.temperature = tau;
        BatchSpec spec;
        spec.V = V;
        spec.num_sequences = 6;
        spec.max_len = 8;
        spec.padded = true;  // T = 48
        spec.extreme_fraction = spec.neg_inf_fraction = 0.0;
        std::vector<Logit> logits;
        HostBatch hb = random_batch<Logit>(rng, spec, config, logits);
        hb.computed_weights = in.computed;
        std::vector<int32_t> far_targets = hb.targets;  // for token_logprobs: the most negative entry where there is one
        auto set = [&](int64_t t, int64_t v, double x) {
          const Logit q = from_double<Logit>(x);
          logits[t * hb.stride + v] = q;
          hb.logits[t * hb.stride + v] = to_double(q);
        };
        for (int64_t t = 0; t < hb.T; ++t) {
          if (t % 4 == 0) {  // +max (ties) and -max in one row, and moderate entries
            for (int64_t v = 0; v < V; ++v) {
              const double u = uni(rng);
              set(t, v, u < 0.2 ? big : (u < 0.5 ? -big : 1e3 * normal(rng)));
            }
            set(t, 0, big);
            set(t, 1, -big);
            far_targets[t] = 1;
            // The loss's target: -max where its log p (-2 max / tau) is a float, else a moderate
            // entry (-max / tau), else a top entry (log p = -log of the number of ties).
            hb.targets[t] = 2 * big / tau < 1e37 ? 1 : (big / tau < 1e37 ? 2 : 0);
            if (hb.targets[t] == 2) set(t, 2, 0.5);
          } else if (t % 4 == 1) {  // every entry in [max / 2, max]: max z / tau past FLT_MAX at small tau
            for (int64_t v = 0; v < V; ++v) set(t, v, big * (0.5 + 0.5 * uni(rng)));
            int64_t top = 0;
            for (int64_t v = 1; v < V; ++v)
              if (hb.logits[t * hb.stride + v] > hb.logits[t * hb.stride + top]) top = v;
            hb.targets[t] = static_cast<int32_t>(top);
            far_targets[t] = static_cast<int32_t>((top + 1) % V);
          }
        }
        (void)big_l;
        // old / ref log-probs near the (double) log p where it is moderate, else far below it.
        std::vector<double> lp(hb.T), h(hb.T);
        const cgrpo::Status cs = cpu_token_logprobs(hb.logits.data(), hb.T, hb.V, hb.stride, hb.targets.data(), tau,
                                                    lp.data(), h.data());
        GPU_EXPECT(cs.ok(), "[%s] extreme rows: CPU token_logprobs: %s", dtype_name<Logit>(), cs.message);
        if (!cs.ok()) return;
        // The GPU's per-token math is float: a log p of size L carries ~6e-8 L of rounding, so a
        // ratio is compared only where |log p| < 10 (elsewhere old = -1 puts it at the clamp), and
        // 1e-3 away from the clip bounds, as random_batch keeps it.
        const std::vector<double> kinks = loss_kinks(config);
        auto near_kink = [&](double d) {
          for (double k : kinks)
            if (std::fabs(d - k) < 1e-3) return true;
          return false;
        };
        for (int64_t t = 0; t < hb.T; ++t) {
          const bool moderate = std::fabs(lp[t]) < 10.0;
          double old_lp = -1.0, ref_lp = -1.0;
          if (moderate) {
            do old_lp = rounded_float(lp[t] + 0.3 * normal(rng));
            while (near_kink(lp[t] - old_lp));
            do ref_lp = rounded_float(lp[t] + 0.5 * normal(rng));
            while (near_kink(lp[t] - ref_lp));
          }
          hb.old_logp[t] = old_lp;
          hb.ref_logp[t] = ref_lp;
        }
        const CpuResult cpu = run_cpu(config, hb);
        char label[500];
        for (Mode mode : {Mode::separate_grad, Mode::in_place}) {
          std::snprintf(label, sizeof(label), "[%s] extreme rows (+-max, max z / tau past FLT_MAX), %s, tau %g, V %lld, %s",
                        dtype_name<Logit>(), config_label(nc, in).c_str(), tau, (long long)V, mode_name(mode));
          compare_with_cpu(label, config, hb, run_gpu<Logit>(config, hb, logits, mode, 0), cpu, mode);
        }
        // token_logprobs with the far targets: a log p below -FLT_MAX is -FLT_MAX.
        std::vector<double> want(hb.T), want_h(hb.T);
        const cgrpo::Status cs2 = cpu_token_logprobs(hb.logits.data(), hb.T, hb.V, hb.stride, far_targets.data(), tau,
                                                     want.data(), want_h.data());
        std::vector<float> got, got_h;
        const cgrpo::Status gs = gpu_token_logprobs<Logit>(hb, logits, far_targets, tau, got, got_h);
        std::snprintf(label, sizeof(label), "[%s] extreme rows, token_logprobs to the far entries, tau %g, V %lld",
                      dtype_name<Logit>(), tau, (long long)V);
        GPU_EXPECT(cs2.ok() && gs.ok(), "%s: CPU '%s', GPU '%s'", label, cs2.message, gs.message);
        if (!cs2.ok() || !gs.ok()) continue;
        int bad = 0;
        for (int64_t t = 0; t < hb.T; ++t) {
          const double w = std::max(want[t], -static_cast<double>(FLT_MAX));
          if ((!close(got[t], w, 1e-5) || !close(got_h[t], want_h[t], 1e-5)) && ++bad <= 3)
            GPU_EXPECT(false, "%s, token %lld: log p %.9g (want %.9g), H %.9g (want %.9g)", label, (long long)t, got[t], w,
                       got_h[t], want_h[t]);
        }
      }
}

}  // namespace
