// libFuzzer target: cgrpo::cpu::token_logprobs (float and double) over each input's whole
// domain: any temperature from the denormals to DBL_MAX, logits from the denormals to the
// largest values of the type and -inf entries, strides, thread counts, logp / entropy placed
// over the inputs or each other, and sizes near the int64 limits (at unmapped addresses).
// Invariants:
//   - an error has a message and leaves every byte as it was;
//   - OK: no output shares memory with an input or the other output, no byte outside the
//     outputs changed, H finite and >= 0, log p <= 0 and finite (-inf only for a -inf target
//     logit), both equal to a long double reference within the type's rounding;
//   - another thread count on another workspace gives the same status and bits.
#include "fuzz_loss_case.hpp"

namespace {

using namespace fuzz;

enum { kZ, kY, kLogp, kH, kSlots };

// log p of the target and H of one row, in long double, with u = z / tau, measured from the
// row's max z (z - max z first, then / tau), so that no value of the size of z / tau is rounded.
void reference_row(const double* z, int64_t V, int32_t y, double tau, long double* logp, long double* h) {
  double zmax = -kInf;
  for (int64_t v = 0; v < V; ++v) zmax = std::max(zmax, z[v]);
  long double s = 0, q = 0;
  for (int64_t v = 0; v < V; ++v) {
    if (z[v] == -kInf) continue;
    const long double d = (static_cast<long double>(z[v]) - zmax) / tau;
    const long double e = expl(d);
    s += e;
    q += e * d;
  }
  *logp = (static_cast<long double>(z[y]) - zmax) / tau - logl(s);
  *h = logl(s) - q / s;
}

template <typename Real>
void run_case(FuzzedDataProvider& in) {
  const int64_t T = in.ConsumeIntegralInRange<int64_t>(0, 8);
  int64_t V = in.ConsumeIntegralInRange<int>(0, 7) ? in.ConsumeIntegralInRange<int64_t>(1, 64)
                                                   : in.ConsumeIntegralInRange<int64_t>(65, 2200);
  if (T > 2 && V > 300) V = 300;
  int64_t row_stride = 0;
  switch (in.ConsumeIntegralInRange<int>(0, 5)) {
    case 0: row_stride = V + in.ConsumeIntegralInRange<int64_t>(1, 9); break;
    case 1: row_stride = in.ConsumeIntegralInRange<int64_t>(-2, V); break;
    default: break;
  }
  const int64_t stride = std::max<int64_t>(row_stride == 0 ? V : row_stride, V);
  bool nominal = true;
  double tau = 1.0;
  if (in.ConsumeBool()) tau = in.ConsumeIntegralInRange<int>(0, 15) ? draw(in, {5e-324, DBL_MAX, 0.05, 20}, &nominal) : anything(in);
  const int threads = in.ConsumeIntegralInRange<int>(0, 15) ? in.ConsumeIntegralInRange<int>(1, 4) : in.ConsumeIntegralInRange<int>(-1, 0);
  const bool with_entropy = in.ConsumeBool();

  std::vector<int32_t> y(T);
  std::vector<double> z(static_cast<size_t>(T * V));
  for (int64_t t = 0; t < T; ++t) {
    y[t] = in.ConsumeIntegralInRange<int>(0, 40) ? in.ConsumeIntegralInRange<int32_t>(0, static_cast<int32_t>(V - 1))
                                                : in.PickValueInArray({-1, static_cast<int32_t>(V), INT32_MIN, INT32_MAX});
    draw_logit_row(in, V, y[t], &z[t * V], &nominal);
  }

  std::vector<ArrayDesc> arrays(kSlots);
  arrays[kZ] = rows_desc<Real>("logits", T > 0, false, T, V, stride);
  arrays[kY] = array_desc<int32_t>("target_ids", true, false, T);
  arrays[kLogp] = array_desc<Real>("logp", true, true, T);
  arrays[kH] = array_desc<Real>("entropy", with_entropy, true, T);
  Arena arena;
  const int moved = place(in, arrays, arena, true);
  auto fill = [&](Arena& A) {
    std::fill(A.words.begin(), A.words.end(), ~uint64_t{0});
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t v = 0; v < V; ++v) A.at<Real>(arrays[kZ])[t * stride + v] = to_real<Real>(z[t * V + v]);
    }
    if (arrays[kY].present) std::memcpy(A.at<int32_t>(arrays[kY]), y.data(), T * sizeof(int32_t));
  };
  fill(arena);
  const std::vector<unsigned char> before = snapshot(arena);
  Real* logp = arena.at<Real>(arrays[kLogp]);
  Real* ent = arena.at<Real>(arrays[kH]);
  const Real* zp = arena.at<Real>(arrays[kZ]);
  const int32_t* yp = arena.at<int32_t>(arrays[kY]);
  const cgrpo::Status s = cgrpo::cpu::token_logprobs(zp, T, V, row_stride, yp, tau, logp, ent, threads, &workspace(0));

  bool certain = false;
  for (int o : {kLogp, kH}) {
    for (int i : {kZ, kY}) certain = certain || share_bytes(arrays[o], arrays[i]);
  }
  certain = certain || share_bytes(arrays[kLogp], arrays[kH]);
  if (!s.ok()) {
    check_error_message(s, "token_logprobs");
    check_untouched(arena, before, "token_logprobs", s);
    FUZZ_CHECK(certain || !says_overlap(s), "no array shares memory, yet: %s", s.message);
  } else {
    FUZZ_CHECK(!certain, "an output shares memory with an input or the other output, yet the call succeeded");
    check_only_outputs_written(arena, before, {&arrays[kLogp], &arrays[kH]}, "token_logprobs");
    const double lowest = -static_cast<double>(std::numeric_limits<Real>::max());
    const double tol = std::is_same<Real, float>::value ? 2e-5 : 1e-11;
    for (int64_t t = 0; t < T; ++t) {
      // The reference sees the logits as the call saw them (rounded to Real).
      std::vector<double> zr(V);
      for (int64_t v = 0; v < V; ++v) zr[v] = static_cast<double>(zp[t * stride + v]);
      const double lp = static_cast<double>(logp[t]);
      long double rl = 0, rh = 0;
      reference_row(zr.data(), V, yp[t], tau, &rl, &rh);
      if (const char* dump = std::getenv("FUZZ_DUMP_ROWS")) {  // replaying: the rows, to write a test from
        if (FILE* f = std::fopen(dump, "a")) {
          std::fprintf(f, "%s row %lld V %lld y %d tau %.17g logp %.17g H %.17g ref %.17Lg %.17Lg z:", sizeof(Real) == 4 ? "float" : "double",
                       (long long)t, (long long)V, yp[t], tau, lp, ent ? (double)ent[t] : kNaN, rl, rh);
          for (int64_t v = 0; v < V; ++v) std::fprintf(f, " %a", zr[v]);
          std::fprintf(f, "\n");
          std::fclose(f);
        }
      }
      if (zr[yp[t]] == -kInf) {
        FUZZ_CHECK(lp == -kInf, "row %lld: a -inf target logit gives log p %g", (long long)t, lp);
      } else {
        FUZZ_CHECK(std::isfinite(lp) && lp <= 0, "row %lld: log p = %g for the finite target logit %g (tau %g)",
                   (long long)t, lp, zr[yp[t]], tau);
      }
      if (std::isfinite(static_cast<double>(rl))) {
        const double want = rl < lowest ? lowest : static_cast<double>(rl);
        FUZZ_CHECK(std::fabs(lp - want) <= tol * (1 + std::fabs(want)),
                   "row %lld: log p %.17g, reference %.17g (tau %g, V %lld)", (long long)t, lp, want, tau, (long long)V);
      }
      if (!ent) continue;
      const double h = static_cast<double>(ent[t]);
      FUZZ_CHECK(std::isfinite(h) && h >= 0, "row %lld: H = %g", (long long)t, h);
      if (std::isfinite(static_cast<double>(rh)))
        FUZZ_CHECK(std::fabs(h - static_cast<double>(rh)) <= tol * (1 + static_cast<double>(rh) + std::log(static_cast<double>(V))),
                   "row %lld: H %.17g, reference %.17g (tau %g, V %lld)", (long long)t, h, static_cast<double>(rh), tau,
                   (long long)V);
    }
  }
  (void)nominal;

  // The same call on a copy with another thread count: same status, same bits.
  if (moved != 0) return;
  Arena other;
  other.bytes = arena.bytes;
  other.words.assign(arena.words.size(), 0);
  fill(other);
  const int threads2 = threads >= 1 ? 1 + (threads % 4) : threads;
  const cgrpo::Status s2 = cgrpo::cpu::token_logprobs(other.at<Real>(arrays[kZ]), T, V, row_stride, other.at<int32_t>(arrays[kY]),
                                                      tau, other.at<Real>(arrays[kLogp]), other.at<Real>(arrays[kH]), threads2,
                                                      &workspace(1));
  FUZZ_CHECK(s2.code == s.code && std::strcmp(s.message, s2.message) == 0, "threads changed the status: \"%s\" vs \"%s\"",
             s.message, s2.message);
  FUZZ_CHECK(!s.ok() || std::memcmp(arena.base(), other.base(), arena.bytes) == 0, "threads changed the bits");
}

// Sizes near the limits at unmapped addresses: refused before any access.
template <typename Real>
void run_huge(FuzzedDataProvider& in) {
  const int64_t T = huge_size(in), V = huge_size(in), row_stride = in.ConsumeBool() ? 0 : huge_size(in);
  const Real* z = nowhere<const Real>(in.ConsumeIntegralInRange<int>(1, 255));
  const int32_t* y = nowhere<const int32_t>(in.ConsumeIntegralInRange<int>(1, 255));
  Real* lp = nowhere<Real>(in.ConsumeIntegralInRange<int>(1, 255));
  Real* h = in.ConsumeBool() ? nowhere<Real>(in.ConsumeIntegralInRange<int>(1, 255)) : nullptr;
  const int64_t S = row_stride == 0 ? V : row_stride;
  bool refuse = T < 0 || V <= 0 || S < V;
  if (!refuse && T > 0)
    refuse = size_overflows(reinterpret_cast<uintptr_t>(z), T, V, S, sizeof(Real)) ||
             size_overflows(reinterpret_cast<uintptr_t>(y), 1, T, T, 4) ||
             size_overflows(reinterpret_cast<uintptr_t>(lp), 1, T, T, sizeof(Real)) ||
             (h && size_overflows(reinterpret_cast<uintptr_t>(h), 1, T, T, sizeof(Real)));
  if (!refuse && T != 0) return;  // a valid shape would be read
  const cgrpo::Status s = cgrpo::cpu::token_logprobs(z, T, V, row_stride, y, 1.0, lp, h, 2, &workspace(0));
  FUZZ_CHECK(!refuse || !s.ok(), "token_logprobs accepted T=%lld V=%lld stride=%lld", (long long)T, (long long)V,
             (long long)row_stride);
  if (!s.ok()) check_error_message(s, "token_logprobs (huge)");
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
