// libFuzzer target: cgrpo::cpu::fused_policy_loss on arbitrary sizes, config and values.
// Invariants: never crashes; on error every output is untouched; on success with finite logits, all finite.
#include <fuzzer/FuzzedDataProvider.h>

#include <cgrpo/cgrpo.hpp>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

template <typename Real>
Real pick_value(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 15)) {
    case 0: return static_cast<Real>(NAN);
    case 1: return static_cast<Real>(INFINITY);
    case 2: return static_cast<Real>(-INFINITY);
    case 3: return static_cast<Real>(in.ConsumeFloatingPointInRange<double>(-1e4, 1e4));
    default: return static_cast<Real>(in.ConsumeFloatingPointInRange<double>(-8, 8));
  }
}

template <typename Real>
void run(FuzzedDataProvider& in) {
  const int64_t B = in.ConsumeIntegralInRange<int64_t>(0, 4);
  std::vector<int64_t> offsets = {0};
  for (int64_t i = 0; i < B; ++i) offsets.push_back(offsets.back() + in.ConsumeIntegralInRange<int64_t>(0, 4));
  const int64_t T = offsets.back();
  const int64_t V = in.ConsumeIntegralInRange<int64_t>(-1, 40);
  const int64_t stride = in.ConsumeBool() ? 0 : in.ConsumeIntegralInRange<int64_t>(0, 45);
  const int64_t rows_alloc = T * (stride > V ? stride : (V > 0 ? V : 1));

  cgrpo::LossConfig c;
  c.advantage = static_cast<cgrpo::AdvantageEstimator>(in.ConsumeIntegralInRange<int>(0, 3));
  {
    const int clip = in.ConsumeIntegralInRange<int>(0, 2);  // ratio, PPO clip, PPO clip on the GSPO ratio
    c.policy_loss = clip == 0 ? cgrpo::PolicyLoss::ratio : cgrpo::PolicyLoss::ppo_clip;
    c.ratio_level = clip == 2 ? cgrpo::RatioLevel::sequence_detached : cgrpo::RatioLevel::token;
  }
  c.dual_clip = in.ConsumeBool();
  c.clip_eps_low = in.ConsumeFloatingPointInRange<double>(-0.1, 1.1);
  c.clip_eps_high = in.ConsumeFloatingPointInRange<double>(-0.1, 1.1);
  c.dual_clip_c = in.ConsumeFloatingPointInRange<double>(0.5, 5);
  c.refinement_gamma = in.ConsumeFloatingPointInRange<double>(-0.1, 2);
  c.kl = static_cast<cgrpo::KlEstimator>(in.ConsumeIntegralInRange<int>(0, 5));
  c.kl_coef = c.kl == cgrpo::KlEstimator::none ? 0.0 : in.ConsumeFloatingPointInRange<double>(0, 1);
  c.entropy_coef = in.ConsumeFloatingPointInRange<double>(-0.1, 0.1);
  c.temperature = in.ConsumeFloatingPointInRange<double>(-0.5, 3);
  c.num_threads = in.ConsumeIntegralInRange<int>(0, 3);

  std::vector<Real> logits(static_cast<size_t>(rows_alloc)), adv(T), old_logp(T), ref_logp(T), w(T), wh(T), wk(T);
  std::vector<int32_t> targets(T);
  std::vector<uint8_t> mask(T), kinds(T);
  bool all_finite = true;
  for (auto& z : logits) {
    z = in.ConsumeIntegralInRange<int>(0, 30) == 0 ? pick_value<Real>(in)
                                                    : static_cast<Real>(in.ConsumeFloatingPointInRange<double>(-6, 6));
    all_finite = all_finite && std::isfinite(static_cast<double>(z));
  }
  for (int64_t t = 0; t < T; ++t) {
    targets[t] = in.ConsumeIntegralInRange<int32_t>(-1, V > 0 ? static_cast<int32_t>(V) : 1);
    mask[t] = in.ConsumeIntegralInRange<uint8_t>(0, 2);
    kinds[t] = in.ConsumeIntegralInRange<uint8_t>(0, 2);
    adv[t] = in.ConsumeIntegralInRange<int>(0, 20) ? static_cast<Real>(in.ConsumeFloatingPointInRange<double>(-3, 3))
                                                   : pick_value<Real>(in);
    old_logp[t] = static_cast<Real>(in.ConsumeFloatingPointInRange<double>(-30, 0));
    ref_logp[t] = static_cast<Real>(in.ConsumeFloatingPointInRange<double>(-30, 0));
    w[t] = static_cast<Real>(in.ConsumeFloatingPointInRange<double>(0, 1));
    wh[t] = static_cast<Real>(in.ConsumeFloatingPointInRange<double>(0, 1));
    wk[t] = static_cast<Real>(in.ConsumeFloatingPointInRange<double>(0, 1));
  }

  cgrpo::PolicyLossBatch<Real> b;
  b.logits = logits.data();
  b.num_tokens = T;
  b.vocab_size = V;
  b.row_stride = stride;
  b.target_ids = targets.data();
  b.mask = mask.data();
  b.kinds = in.ConsumeBool() ? kinds.data() : nullptr;
  b.advantages = adv.data();
  b.old_logp = old_logp.data();
  b.ref_logp = ref_logp.data();
  b.pg_weights = w.data();
  b.entropy_weights = wh.data();
  b.kl_weights = wk.data();
  b.layout = cgrpo::SequenceLayout::packed(B, offsets.data());

  const Real poison = static_cast<Real>(-4321.25);
  const bool in_place = in.ConsumeBool();
  std::vector<Real> grad(logits.size(), poison), logp(T, poison), ent(T, poison);
  const std::vector<Real> logits_before = logits;
  cgrpo::LossMetrics m;
  m.loss = -4321.25;
  cgrpo::PolicyLossOutputs<Real> out{in_place ? logits.data() : grad.data(), 0, logp.data(), ent.data(), &m};
  const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(c, b, out);
  if (!s.ok()) {
    if (s.message[0] == 0) std::abort();  // every error carries a message
    for (Real g : grad) if (std::memcmp(&g, &poison, sizeof g) != 0) std::abort();
    for (int64_t t = 0; t < T; ++t) if (logp[t] != poison || ent[t] != poison) std::abort();
    if (m.loss != -4321.25) std::abort();
    if (!logits.empty() && std::memcmp(logits.data(), logits_before.data(), logits.size() * sizeof(Real)) != 0)
      std::abort();
    return;
  }
  if (all_finite) {
    if (!std::isfinite(m.loss)) std::abort();
    const std::vector<Real>& g = in_place ? logits : grad;
    const int64_t gs = stride == 0 ? V : stride;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t v = 0; v < V; ++v)
        if (!std::isfinite(static_cast<double>(g[t * gs + v]))) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  if (in.ConsumeBool()) run<float>(in);
  else run<double>(in);
  return 0;
}
