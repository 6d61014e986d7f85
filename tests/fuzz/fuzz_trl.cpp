// libFuzzer target: TRL's modes on arbitrary sizes, config and values: the fused loss from a TRL
// preset with every TRL option (level, delta, KL with the ratio, vLLM weight, OPSM, entropy mask),
// trl_advantages with None rewards, and top_entropy_mask.
// Invariants: never crashes; on error every output is untouched and the message is not empty; on
// success with finite inputs the loss, gradient and advantages are finite.
#include <fuzzer/FuzzedDataProvider.h>

#include <cgrpo/cgrpo.hpp>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

double pick(FuzzedDataProvider& in, double lo, double hi) {
  switch (in.ConsumeIntegralInRange<int>(0, 19)) {
    case 0: return NAN;
    case 1: return INFINITY;
    case 2: return -INFINITY;
    case 3: return 0.0;
    default: return in.ConsumeFloatingPointInRange<double>(lo, hi);
  }
}

// TRL's presets from the registry ("trl/..."), in its order.
std::vector<const cgrpo::PresetEntry*> trl_presets() {
  std::vector<const cgrpo::PresetEntry*> out;
  for (int i = 0; i < cgrpo::preset_count(); ++i)
    if (std::strncmp(cgrpo::preset_at(i)->name, "trl/", 4) == 0) out.push_back(cgrpo::preset_at(i));
  return out;
}

// A TRL preset with every TRL option drawn; *threads: the workspace's thread count.
cgrpo::LossConfig trl_config(FuzzedDataProvider& in, int* threads) {
  static const std::vector<const cgrpo::PresetEntry*> presets = trl_presets();
  cgrpo::LossConfig c = presets[in.ConsumeIntegralInRange<size_t>(0, presets.size() - 1)]->make().loss;
  c.ratio.level = static_cast<cgrpo::RatioLevel>(in.ConsumeIntegralInRange<int>(0, cgrpo::kNumRatioLevels));  // and one unknown
  // verl's GSPO level refuses any policy aggregation but seq-mean-token-mean (traits): keep that
  // level's inputs past validation.
  if (c.level().fixes_aggregation) c.aggregation.policy = cgrpo::Aggregation::seq_mean_token_mean;
  c.ratio.clip_eps_low = pick(in, -0.1, 1.1);
  c.ratio.clip_eps_high = pick(in, -0.1, 2);
  if (in.ConsumeBool()) c.ratio.two_sided_delta = pick(in, -0.5, 4);
  c.ratio.dual_clip = in.ConsumeIntegralInRange<int>(0, 7) == 0;
  c.policy.cispo_cap.ratio_cap = pick(in, -1, 6);
  c.policy.sapo.tau_pos = pick(in, -0.5, 3);
  c.policy.sapo.tau_neg = pick(in, -0.5, 3);
  c.policy.vespo.k_pos = pick(in, -2, 5);
  c.policy.vespo.lambda_pos = pick(in, -2, 5);
  c.policy.vespo.k_neg = pick(in, -2, 5);
  c.policy.vespo.lambda_neg = pick(in, -2, 5);
  if (in.ConsumeBool()) {
    c.kl.estimator = cgrpo::KlEstimator::k3;
    c.kl.coef = in.ConsumeFloatingPointInRange<double>(0, 1);
  }
  c.kl.times_ratio = in.ConsumeBool();
  c.off_policy.sampler.mode = static_cast<cgrpo::SamplerCorrectionMode>(
      in.ConsumeIntegralInRange<int>(0, cgrpo::kNumSamplerModes));  // and one unknown
  c.off_policy.sampler.min = in.ConsumeBool() ? 0.0 : pick(in, -0.5, 2);
  c.off_policy.sampler.max = in.ConsumeBool() ? INFINITY : pick(in, -0.5, 4);
  c.off_policy.opsm_threshold = in.ConsumeBool() ? INFINITY : pick(in, -1, 1);
  c.entropy_mask.top_quantile = in.ConsumeBool() ? 1.0 : pick(in, -0.2, 1.2);
  c.entropy.coef = in.ConsumeFloatingPointInRange<double>(-0.1, 0.1);
  c.temperature = in.ConsumeFloatingPointInRange<double>(0.2, 2);
  *threads = in.ConsumeIntegralInRange<int>(1, 2);
  return c;
}

template <typename Real>
void run_loss(FuzzedDataProvider& in) {
  int threads = 1;
  const cgrpo::LossConfig c = trl_config(in, &threads);
  const int64_t B = in.ConsumeIntegralInRange<int64_t>(0, 4), L = in.ConsumeIntegralInRange<int64_t>(1, 4);
  const int64_t V = in.ConsumeIntegralInRange<int64_t>(1, 12), T = B * L;
  std::vector<Real> logits(static_cast<size_t>(T * V)), adv(T), old_logp(T), ref_logp(T), roll(T);
  std::vector<int32_t> targets(T);
  std::vector<uint8_t> mask(T);
  bool finite = true;
  for (auto& z : logits) {
    z = static_cast<Real>(in.ConsumeIntegralInRange<int>(0, 40) == 0 ? pick(in, -1e3, 1e3)
                                                                      : in.ConsumeFloatingPointInRange<double>(-6, 6));
    finite = finite && std::isfinite(static_cast<double>(z));
  }
  for (int64_t t = 0; t < T; ++t) {
    targets[t] = in.ConsumeIntegralInRange<int32_t>(0, static_cast<int32_t>(V - 1));
    mask[t] = in.ConsumeIntegralInRange<uint8_t>(0, in.ConsumeIntegralInRange<int>(0, 30) == 0 ? 2 : 1);
    adv[t] = static_cast<Real>(in.ConsumeIntegralInRange<int>(0, 20) ? in.ConsumeFloatingPointInRange<double>(-3, 3)
                                                                      : pick(in, -1e3, 1e3));
    old_logp[t] = static_cast<Real>(in.ConsumeFloatingPointInRange<double>(-12, 0));
    ref_logp[t] = static_cast<Real>(in.ConsumeFloatingPointInRange<double>(-12, 0));
    roll[t] = static_cast<Real>(in.ConsumeIntegralInRange<int>(0, 30) ? in.ConsumeFloatingPointInRange<double>(-12, 0)
                                                                       : pick(in, -50, 0));
    finite = finite && std::isfinite(static_cast<double>(adv[t])) && std::isfinite(static_cast<double>(roll[t]));
  }
  cgrpo::PolicyLossBatch<Real> b;
  b.logits = logits.data();
  b.num_tokens = T;
  b.vocab_size = V;
  b.target_ids = targets.data();
  b.mask = mask.data();
  b.advantages = adv.data();
  b.old_logp = old_logp.data();
  b.ref_logp = ref_logp.data();
  b.rollout_logp = in.ConsumeBool() ? roll.data() : nullptr;
  b.layout = cgrpo::SequenceLayout::padded(B + (in.ConsumeIntegralInRange<int>(0, 20) == 0 ? 1 : 0), L);
  if (in.ConsumeBool()) b.scale.length = in.ConsumeFloatingPointInRange<double>(-1, 50);
  if (in.ConsumeBool()) b.scale.token_count = in.ConsumeFloatingPointInRange<double>(-1, 50);

  const Real poison = static_cast<Real>(-4321.25);
  std::vector<Real> grad(logits.size(), poison);
  cgrpo::LossMetrics m;
  m.loss = -4321.25;
  m.sampler.is_ratio_mean = -4321.25;
  cgrpo::PolicyLossOutputs<Real> out{grad.data(), 0, nullptr, nullptr, &m};
  cgrpo::cpu::Workspace ws(threads);
  const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(c, b, out, ws);
  if (!s.ok()) {
    if (s.message[0] == 0) std::abort();
    for (Real g : grad)
      if (std::memcmp(&g, &poison, sizeof g) != 0) std::abort();
    if (m.loss != -4321.25 || m.sampler.is_ratio_mean != -4321.25) std::abort();
    return;
  }
  // A finite batch may still overflow (exp of a large log ratio): that is a non_finite error above,
  // never a non-finite result with OK.
  if (!std::isfinite(m.loss)) std::abort();
  for (Real g : grad)
    if (!std::isfinite(static_cast<double>(g))) std::abort();
  (void)finite;
}

void run_advantages(FuzzedDataProvider& in) {
  const int64_t n = in.ConsumeIntegralInRange<int64_t>(0, 9), K = in.ConsumeIntegralInRange<int64_t>(0, 3);
  const int64_t groups = in.ConsumeIntegralInRange<int64_t>(0, 4);
  std::vector<int32_t> ids(n);
  for (auto& g : ids) g = in.ConsumeIntegralInRange<int32_t>(-1, static_cast<int32_t>(groups));
  std::vector<double> r(static_cast<size_t>(n * (K > 0 ? K : 1))), w(K > 0 ? K : 1), a(n, -7.5), R(n, -7.5);
  for (auto& v : r) v = in.ConsumeIntegralInRange<int>(0, 4) == 0 ? NAN : pick(in, -5, 5);
  for (auto& v : w) v = pick(in, -2, 2);
  // Every estimator and combination, and one unknown of each.
  const auto scaling = static_cast<cgrpo::AdvantageEstimator>(in.ConsumeIntegralInRange<int>(0, cgrpo::kNumAdvantageEstimators));
  const auto comb = static_cast<cgrpo::RewardCombination>(
      in.ConsumeIntegralInRange<int>(0, static_cast<int>(cgrpo::RewardCombination::normalize_then_sum) + 1));
  const cgrpo::Status s = cgrpo::trl_advantages(scaling, cgrpo::GroupAssignment{n, ids.data(), groups}, K, r.data(),
                                                in.ConsumeBool() ? w.data() : nullptr, pick(in, -1e-3, 1e-3), a.data(),
                                                R.data(), comb);
  if (!s.ok()) {
    if (s.message[0] == 0) std::abort();
    for (int64_t i = 0; i < n; ++i)
      if (a[i] != -7.5 || R[i] != -7.5) std::abort();
    return;
  }
  for (int64_t i = 0; i < n; ++i)
    if (std::isnan(a[i])) std::abort();  // NaN rewards never reach an advantage
}

void run_entropy_mask(FuzzedDataProvider& in) {
  const int64_t T = in.ConsumeIntegralInRange<int64_t>(0, 16);
  std::vector<double> H(T);
  std::vector<uint8_t> mask(T), keep(T, 9);
  for (int64_t t = 0; t < T; ++t) {
    H[t] = pick(in, 0, 8);
    mask[t] = in.ConsumeIntegralInRange<uint8_t>(0, in.ConsumeIntegralInRange<int>(0, 20) == 0 ? 2 : 1);
  }
  const double rho = pick(in, -0.1, 1.1);
  const cgrpo::Status s = cgrpo::top_entropy_mask(T, mask.data(), H.data(), rho, keep.data());
  if (!s.ok()) {
    for (uint8_t k : keep)
      if (k != 9) std::abort();
    return;
  }
  int64_t valid = 0, kept = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (keep[t] > 1 || (keep[t] && !mask[t])) std::abort();
    valid += mask[t], kept += keep[t];
  }
  if (valid > 0 && kept == 0) std::abort();  // the maximum H is always at or above the quantile
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0: run_loss<float>(in); break;
    case 1: run_loss<double>(in); break;
    case 2: run_advantages(in); break;
    default: run_entropy_mask(in); break;
  }
  return 0;
}
