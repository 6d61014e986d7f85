// libFuzzer target: cgrpo::cpu::fused_policy_loss (float and double) over each input's whole
// domain: every policy loss, ratio level, KL form, aggregation mode and convention, the rollout
// and sampler corrections, OPSM, the entropy quantile, kl_cov / clip_cov with and without a
// selection, computed or caller weights; NaN and +-inf at masked tokens of every per-token array;
// extreme values and coefficients; every output placed over an input or another output; and
// sizes near the int64 limits (arrays at unmapped addresses: validation must refuse them).
// Invariants:
//   - an error has a message and leaves every byte of the arena as it was; a config that
//     config.validate() rejects is rejected with validate()'s message;
//   - OK: no output shares memory with an input or another output (brute-force oracle), no byte
//     outside the outputs changed, every output finite (gradient, log p <= 0, H >= 0, every
//     metric), masked rows' gradient zero, the metric counts match the batch, token_logprobs
//     gives the same log p and H;
//   - an overlap-free call whose config and data lie in their nominal ranges succeeds;
//   - a second run with other values at the masked tokens, another thread count (the workspace's
//     num_threads), a reused workspace and (when allowed) the gradient in place gives the same
//     status and the same bits.
#include "fuzz_loss_case.hpp"

#include <algorithm>

namespace {

using namespace fuzz;

template <typename Real>
void run_case(FuzzedDataProvider& in) {
  Case<Real> k = draw_case<Real>(in);
  const cgrpo::LossConfig& c = k.cfg.config;
  std::vector<ArrayDesc> arrays = describe(k);
  Arena sizing;
  const int moved = place(in, arrays, sizing, true);
  const bool in_place = k.grad_mode == 2;
  if (in_place) {  // the gradient is the logits buffer itself
    arrays[kGrad] = arrays[kLogits];
    arrays[kGrad].name = "grad_logits";
    arrays[kGrad].output = true;
    arrays[kGrad].present = arrays[kLogits].present && k.T > 0;
    arrays[kGrad].stride = std::max<int64_t>(k.grad_stride(), k.V);
  }
  const uint64_t seed = in.ConsumeIntegral<uint64_t>();
  const int threads_b = in.ConsumeIntegralInRange<int>(1, 4);
  const bool toggle_in_place = in.ConsumeBool();

  Run<Real> a;
  build(k, arrays, sizing.bytes, seed, in_place, a);
  const std::vector<unsigned char> before = snapshot(a.arena);
  const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(c, a.batch, a.out, workspace(0, k.cfg.num_threads));
  if (std::getenv("FUZZ_DEBUG")) debug_print(k, arrays, moved, s);
  if (std::getenv("FUZZ_CENSUS")) {  // which modes a corpus reaches: one line per input that got past validation
    const bool past = s.ok() || s.code == cgrpo::StatusCode::non_finite;
    std::printf("census %s %s %s %s st%d k3c%d xr%d pg:%s conv:%g/%g/%d rollout:%s/%s/%d sampler:%s opsm:%d quantile:%d "
                "selection:%d weights:%s T:%lld %s\n",
                past ? "past" : "refused", cgrpo::to_string(c.policy.loss), cgrpo::to_string(c.ratio.level),
                cgrpo::to_string(c.kl.estimator), (int)c.kl.straight_through, (int)c.kl.k3_clamp, (int)c.kl.times_ratio,
                cgrpo::to_string(c.aggregation.policy), c.aggregation.convention.token_mean_eps,
                c.aggregation.convention.row_count_eps, (int)c.aggregation.convention.count_empty_rows,
                cgrpo::to_string(c.off_policy.rollout.mode), cgrpo::to_string(c.off_policy.rollout.is_level),
                c.off_policy.rollout.num_rejection_options, cgrpo::to_string(c.off_policy.sampler.mode), (int)c.opsm_on(),
                (int)cgrpo::entropy_mask_on(c.entropy_mask), (int)k.has[kSelection], k.has[kWpg] ? "caller" : "computed",
                (long long)k.T, sizeof(Real) == 4 ? "float" : "double");
  }

  // The oracle: which outputs share bytes with a checked input or another output.
  bool certain = false, maybe = false;
  const Slot outs[] = {kGrad, kLogp, kEntropy, kMetrics};
  for (Slot o : outs) {
    const ArrayDesc& od = arrays[o];
    if (!od.present) continue;
    for (int i = kLogits; i <= kOffsets; ++i) {
      if (i == kLogits && o == kGrad && same_array(od, arrays[kLogits]) && k.grad_stride() == k.stride()) continue;
      if (!share_bytes(od, arrays[i])) continue;
      if (i == kOffsets && !cgrpo::plan_passes(c, a.batch).needs_layout) maybe = true;
      else certain = true;
    }
    for (Slot p : outs)
      if (p > o && share_bytes(od, arrays[p])) certain = true;
  }

  const cgrpo::Status cs = c.validate();
  if (!s.ok()) {
    check_error_message(s, "fused_policy_loss");
    check_untouched(a.arena, before, "fused_policy_loss", s);
    FUZZ_CHECK(cs.ok() || std::strcmp(cs.message, s.message) == 0,
               "config.validate() says \"%s\" but the call says \"%s\"", cs.message, s.message);
    FUZZ_CHECK(certain || maybe || !says_overlap(s), "no array shares memory, yet: %s", s.message);
    FUZZ_CHECK(!(k.nominal && k.cfg.nominal && cs.ok() && moved == 0), "nominal inputs were refused: %s [%s]",
               s.message, cgrpo::status_code_name(s.code));
  } else {
    FUZZ_CHECK(cs.ok(), "config.validate() refuses (%s) but the call succeeded", cs.message);
    FUZZ_CHECK(!certain, "an output shares memory with an input or another output, yet the call succeeded");
    std::vector<const ArrayDesc*> written;
    for (Slot o : outs) written.push_back(&arrays[o]);
    check_only_outputs_written(a.arena, before, written, "fused_policy_loss");

    const int64_t T = k.T, V = k.V;
    const cgrpo::LossMetrics m = *a.out.metrics;
    ExpectedCounts e;
    for (int64_t t = 0; t < T; ++t) {
      if (!a.batch.mask[t]) continue;
      ++e.valid;
      if (a.batch.kinds && a.batch.kinds[t] == cgrpo::kRefinement) ++e.valid_refinement;
      else ++e.valid_initial;
    }
    e.initial_exact = c.off_policy.rollout.mode == cgrpo::RolloutCorrectionMode::none ||
                      c.off_policy.rollout.num_rejection_options == 0;
    check_metrics(m, e, "fused_policy_loss");
    for (int64_t t = 0; t < T; ++t) {
      if (a.out.logp) FUZZ_CHECK(std::isfinite(a.out.logp[t]) && a.out.logp[t] <= 0, "logp[%lld] = %g", (long long)t, (double)a.out.logp[t]);
      if (a.out.entropy)
        FUZZ_CHECK(std::isfinite(a.out.entropy[t]) && a.out.entropy[t] >= 0, "entropy[%lld] = %g", (long long)t, (double)a.out.entropy[t]);
      if (!a.out.grad_logits) continue;
      const Real* g = a.out.grad_logits + t * k.grad_stride();
      for (int64_t v = 0; v < V; ++v) {
        FUZZ_CHECK(std::isfinite(g[v]), "grad[%lld][%lld] = %g with status OK", (long long)t, (long long)v, (double)g[v]);
        FUZZ_CHECK(a.batch.mask[t] || g[v] == 0, "masked row %lld has gradient %g", (long long)t, (double)g[v]);
      }
    }
    // The log-prob pass on the same logits (as they were before an in-place gradient) agrees.
    if (T > 0 && (a.out.logp || a.out.entropy)) {
      std::vector<Real> z(static_cast<size_t>(T * V)), lp(T), h(T);
      for (int64_t t = 0; t < T; ++t)
        std::memcpy(&z[t * V], before.data() + arrays[kLogits].pos + t * k.placed_stride() * sizeof(Real), V * sizeof(Real));
      const cgrpo::Status ls = cgrpo::cpu::token_logprobs(z.data(), T, V, 0, a.batch.target_ids, c.temperature, lp.data(), h.data());
      FUZZ_CHECK(ls.ok(), "token_logprobs refuses what the loss accepted: %s", ls.message);
      for (int64_t t = 0; t < T; ++t) {
        if (a.out.logp) FUZZ_CHECK(same_bits(lp[t], a.out.logp[t]), "token_logprobs log p differs at %lld", (long long)t);
        if (a.out.entropy) FUZZ_CHECK(same_bits(h[t], a.out.entropy[t]), "token_logprobs H differs at %lld", (long long)t);
      }
    }
  }

  // The second run: other masked values, another thread count, the other workspace, maybe in
  // place. Only for overlap-free placements (an overlap makes masked bytes someone's valid bytes).
  if (moved != 0 || in.remaining_bytes() == 0) return;
  const int threads2 = k.cfg.num_threads >= 1 ? threads_b : k.cfg.num_threads;
  const bool can_toggle = k.grad_mode != 0 && k.grad_stride() == k.stride() && k.stride() >= k.V && arrays[kLogits].present;
  const bool in_place_b = can_toggle && toggle_in_place ? !in_place : in_place;
  std::vector<ArrayDesc> arrays_b = arrays;
  if (in_place_b != in_place) {
    if (in_place_b) {
      arrays_b[kGrad] = arrays[kLogits];
      arrays_b[kGrad].output = true;
    } else {  // a separate gradient after the last array (the arena grows to hold it)
      arrays_b[kGrad] = rows_desc<Real>("grad_logits", true, true, k.T, k.V, k.grad_stride());
      arrays_b[kGrad].pos = align_up(arrays[kMetrics].pos + sizeof(cgrpo::LossMetrics) + 64, 64);
    }
  }
  size_t bytes_b = sizing.bytes;
  for (const auto& d : arrays_b) bytes_b = std::max(bytes_b, d.pos + d.extent() + 64);
  Run<Real> b;
  build(k, arrays_b, bytes_b, seed ^ 0x5DEECE66Dull, in_place_b, b);
  const cgrpo::Status s2 = cgrpo::cpu::fused_policy_loss(c, b.batch, b.out, workspace(1, threads2));
  FUZZ_CHECK(s2.code == s.code && std::strcmp(s.message, s2.message) == 0,
             "masked values / threads / in place changed the status: \"%s\" vs \"%s\"", s.message, s2.message);
  if (!s.ok()) return;
  FUZZ_CHECK(same_metrics(*a.out.metrics, *b.out.metrics), "masked values / threads / in place changed the metrics");
  for (int64_t t = 0; t < k.T; ++t) {
    if (a.out.logp) FUZZ_CHECK(same_bits(a.out.logp[t], b.out.logp[t]), "log p changed at %lld", (long long)t);
    if (a.out.entropy) FUZZ_CHECK(same_bits(a.out.entropy[t], b.out.entropy[t]), "H changed at %lld", (long long)t);
    if (!a.out.grad_logits) continue;
    const int64_t gs_b = in_place_b ? k.stride() : k.grad_stride();
    FUZZ_CHECK(std::memcmp(a.out.grad_logits + t * k.grad_stride(), b.out.grad_logits + t * gs_b, k.V * sizeof(Real)) == 0,
               "the gradient of row %lld changed (masked values / threads / in place)", (long long)t);
  }
}

// Sizes near the int64 limits, every array at an unmapped address: the call must refuse before
// it reads or writes anything (a read faults), with a message; the metrics stay untouched.
template <typename Real>
void run_huge(FuzzedDataProvider& in) {
  const ConfigDraw d = draw_config(in);
  const cgrpo::LossConfig& c = d.config;
  cgrpo::PolicyLossBatch<Real> b;
  b.num_tokens = huge_size(in);
  b.vocab_size = huge_size(in);
  b.row_stride = in.ConsumeBool() ? 0 : huge_size(in);
  int next = 1;
  auto addr = [&](bool present) -> int { return present ? (in.ConsumeIntegralInRange<int>(0, 15) ? next++ : in.ConsumeIntegralInRange<int>(1, 255)) : 0; };
  const int lk = addr(true);
  b.logits = nowhere<const Real>(lk);
  b.target_ids = nowhere<const int32_t>(addr(true));
  b.mask = nowhere<const uint8_t>(addr(true));
  b.advantages = nowhere<const Real>(addr(true));
  b.old_logp = nowhere<const Real>(addr(true));
  if (in.ConsumeBool()) b.kinds = nowhere<const uint8_t>(addr(true));
  if (in.ConsumeBool()) b.ref_logp = nowhere<const Real>(addr(true));
  if (in.ConsumeBool()) b.rollout_logp = nowhere<const Real>(addr(true));
  if (in.ConsumeBool()) b.selection = nowhere<const uint8_t>(addr(true));
  if (in.ConsumeBool()) {
    b.pg_weights = nowhere<const Real>(addr(true));
    b.entropy_weights = nowhere<const Real>(addr(true));
    b.kl_weights = nowhere<const Real>(addr(true));
  }
  if (in.ConsumeBool()) b.layout = cgrpo::SequenceLayout::padded(huge_size(in), huge_size(in));
  cgrpo::LossMetrics m;
  m.loss = -4321.25;
  cgrpo::PolicyLossOutputs<Real> o;
  o.metrics = &m;
  const int gk = in.ConsumeIntegralInRange<int>(0, 2);
  if (gk == 1) o.grad_logits = nowhere<Real>(addr(true));
  if (gk == 2) o.grad_logits = const_cast<Real*>(b.logits);
  o.grad_row_stride = in.ConsumeBool() ? 0 : huge_size(in);
  if (in.ConsumeBool()) o.logp = nowhere<Real>(addr(true));
  if (in.ConsumeBool()) o.entropy = nowhere<Real>(addr(true));

  // Must the call refuse without reading? (Otherwise it may legitimately read: skip it.)
  const int64_t T = b.num_tokens, V = b.vocab_size, S = b.stride();
  const int64_t GS = o.grad_row_stride == 0 ? S : o.grad_row_stride;
  bool refuse = T < 0 || V <= 0 || (b.row_stride != 0 && b.row_stride < V) || (o.grad_logits && GS < V);
  auto ov = [&](const void* p, int64_t rows, int64_t n, int64_t stride, size_t elem) {
    if (p && size_overflows(reinterpret_cast<uintptr_t>(p), rows, n, stride, elem)) refuse = true;
  };
  if (!refuse && T > 0) {
    ov(b.logits, T, V, S, sizeof(Real));
    ov(o.grad_logits, T, V, GS, sizeof(Real));
    const void* per_token[] = {b.target_ids, b.mask, b.kinds, b.selection};
    for (const void* p : per_token) ov(p, 1, T, T, 1);
    ov(b.target_ids, 1, T, T, 4);
    const void* reals[] = {b.advantages, b.old_logp, b.ref_logp, b.rollout_logp, b.pg_weights, b.entropy_weights,
                           b.kl_weights, o.logp, o.entropy};
    for (const void* p : reals) ov(p, 1, T, T, sizeof(Real));
  }
  if (!c.validate().ok() || d.num_threads < 1) refuse = true;
  if (!refuse && T != 0) return;  // a valid shape may be read: not at these addresses
  int64_t covered = 0;
  if (!refuse && b.layout.num_sequences > (1 << 20) && b.layout.count_tokens(&covered).ok() && covered == T)
    return;  // millions of empty rows: valid, and the loss may allocate O(rows) (out_of_memory, never a crash)
  const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(c, b, o, workspace(0, d.num_threads));
  FUZZ_CHECK(!refuse || !s.ok(), "fused_policy_loss accepted T=%lld V=%lld stride=%lld grad stride=%lld",
             (long long)T, (long long)V, (long long)b.row_stride, (long long)o.grad_row_stride);
  if (s.ok()) return;
  check_error_message(s, "fused_policy_loss (huge)");
  FUZZ_CHECK(m.loss == -4321.25, "metrics written on error");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Current current(data, size);
  FuzzedDataProvider in(data, size);
  try {
    const int mode = in.ConsumeIntegralInRange<int>(0, 15);
    const bool dbl = in.ConsumeBool();
    if (mode == 0) {
      if (dbl) run_huge<double>(in);
      else run_huge<float>(in);
    } else {
      if (dbl) run_case<double>(in);
      else run_case<float>(in);
    }
  } catch (const fuzz::Broken&) {  // FUZZ_SURVEY: the input is saved, go on
  }
  return 0;
}
