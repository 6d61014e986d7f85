// tests/cuda/test_cuda_row_ops_host.cu: the kernels' per-thread row code (cgrpo/cuda/block_row_ops.cuh),
// run thread by thread on the host against a double reference: no GPU needed, no CUB reduction.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gpu_test_util.cuh"
#include "test_seed.hpp"
#include "tolerance.hpp"
#include "cgrpo/cuda/block_row_ops.cuh"

namespace {

using namespace gpu_test;
using cgrpo::cuda::Packed;
using cgrpo::cuda::RowSoftmax;
using cgrpo::cuda::RowStatsMerge;

// large_u: z = 5000 + 0.05 N(0, 1) at tau = 0.02, so u = z / tau ~ 2.5e5 where a float ulp is
// 0.016 (the case that broke the CPU path's scale-then-shift; the kernels shift first).
enum class RowKind { normal, extreme, with_neg_inf, nan_entry, pos_inf_entry, all_neg_inf, large_u };

// 16-byte aligned storage; rows start `offset` elements after an aligned address.
template <typename Logit>
struct AlignedRow {
  std::vector<Packed<Logit>> storage;
  Logit* row;
  AlignedRow(int64_t n, int64_t offset) : storage(static_cast<size_t>((n + offset) / Packed<Logit>::size + 2)) {
    row = reinterpret_cast<Logit*>(storage.data()) + offset;
  }
};

struct Reference {
  double max, lse, entropy, logp;
};

Reference reference_softmax(const std::vector<double>& z, int32_t y, double tau) {
  Reference r{};
  r.max = -INFINITY;
  for (double x : z) r.max = std::max(r.max, x);
  double s = 0;
  for (double x : z) s += std::exp((x - r.max) / tau);
  r.lse = r.max / tau + std::log(s);
  r.entropy = 0;
  for (double x : z) {
    const double lp = x / tau - r.lse;
    if (std::isfinite(lp)) r.entropy -= std::exp(lp) * lp;
  }
  r.logp = z[y] / tau - r.lse;
  return r;
}

template <typename Logit> double grad_tol();
template <> double grad_tol<float>() { return 2e-6; }
template <> double grad_tol<__half>() { return 1e-3; }
template <> double grad_tol<__nv_bfloat16>() { return 8e-3; }

template <typename Logit, int THREADS>
void check_row(std::mt19937_64& rng, int64_t V, int64_t offset, int64_t grad_offset, double tau, RowKind kind,
               bool in_place) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  AlignedRow<Logit> logits(V, offset);
  std::vector<double> z(V);
  for (int64_t v = 0; v < V; ++v) {
    double x = 2.0 * normal(rng);
    if (kind == RowKind::extreme) x = uni(rng) < 0.3 ? 1e4 - 2.0 * std::fabs(normal(rng)) : -1e4 + 2.0 * std::fabs(normal(rng));
    if (kind == RowKind::large_u) x = 5000.0 + 0.05 * normal(rng);
    if (kind == RowKind::with_neg_inf && v % 7 == 3) x = -INFINITY;
    if (kind == RowKind::all_neg_inf) x = -INFINITY;
    logits.row[v] = from_double<Logit>(x);
    z[v] = to_double(logits.row[v]);
  }
  const int64_t bad_at = V / 2;
  if (kind == RowKind::nan_entry) logits.row[bad_at] = from_double<Logit>(NAN);
  if (kind == RowKind::pos_inf_entry) logits.row[bad_at] = from_double<Logit>(INFINITY);
  int32_t y = static_cast<int32_t>(std::uniform_int_distribution<int64_t>(0, V - 1)(rng));
  const double top = *std::max_element(z.begin(), z.end());
  while (kind != RowKind::all_neg_inf && (z[y] < top - 3.0 || z[y] == -INFINITY))
    y = static_cast<int32_t>(std::uniform_int_distribution<int64_t>(0, V - 1)(rng));

  // Sweep 1, every thread's share, then two merge orders (CUB's tree order is a third one).
  const float inv_tau = static_cast<float>(1.0 / tau);
  const RowStatsMerge merge{inv_tau};
  std::vector<cgrpo::RowStats<float>> parts(THREADS);
  bool bad = false;
  for (int tid = 0; tid < THREADS; ++tid)
    parts[tid] = cgrpo::cuda::thread_row_stats<Logit, THREADS>(logits.row, V, merge, tid, bad);
  cgrpo::RowStats<float> left = cgrpo::row_stats_identity<float>();
  for (const auto& p : parts) left = merge(left, p);
  std::vector<cgrpo::RowStats<float>> tree = parts;
  for (size_t width = 1; width < tree.size(); width *= 2)
    for (size_t i = 0; i + width < tree.size(); i += 2 * width) tree[i] = merge(tree[i], tree[i + width]);
  const RowSoftmax sm = cgrpo::cuda::row_softmax_from_stats(left, bad);
  const RowSoftmax sm_tree = cgrpo::cuda::row_softmax_from_stats(tree[0], bad);
  const char* dtype = dtype_name<Logit>();

  if (kind == RowKind::nan_entry || kind == RowKind::pos_inf_entry || kind == RowKind::all_neg_inf) {
    GPU_EXPECT(!sm.finite && !sm_tree.finite, "[%s] V=%lld kind %d: a bad row must be flagged", dtype, (long long)V,
               static_cast<int>(kind));
    return;
  }
  const Reference ref = reference_softmax(z, y, tau);
  const float logp = (static_cast<float>(z[y]) - sm.max) * inv_tau - sm.log_sum;
  GPU_EXPECT(sm.finite && sm_tree.finite, "[%s] V=%lld: finite row flagged", dtype, (long long)V);
  GPU_EXPECT(sm.max == ref.max, "[%s] V=%lld: max %.9g vs %.9g", dtype, (long long)V, sm.max, ref.max);
  // log p = (z_y - max z) / tau - log s, s >= 1: a few eps_f of |log p| and of 1 (log s); H likewise
  // eps_f (1 + H); the merged log s eps_f of 1 + |log s|.
  GPU_EXPECT(tolerance::close(logp, ref.logp, 1e-5, 1.0).ok,
             "[%s] V=%lld tau %.2f kind %d offset %lld: logp %.9g vs %.9g", dtype, (long long)V, tau,
             static_cast<int>(kind), (long long)offset, logp, ref.logp);
  GPU_EXPECT(tolerance::close(sm.entropy, ref.entropy, 1e-5, 1.0).ok,
             "[%s] V=%lld tau %.2f kind %d: entropy %.9g vs %.9g", dtype, (long long)V, tau, static_cast<int>(kind),
             sm.entropy, ref.entropy);
  GPU_EXPECT(tolerance::close(sm_tree.log_sum, sm.log_sum, 1e-5, 1.0).ok &&
                 sm_tree.max == sm.max,
             "[%s] V=%lld: merge order changes the stats beyond rounding", dtype, (long long)V);

  // Sweep 2 into a poisoned buffer (or in place), every thread's share.
  AlignedRow<Logit> grad_buffer(V + 2, grad_offset);
  Logit* grad = in_place ? logits.row : grad_buffer.row + 1;
  const Logit poison = from_double<Logit>(-777.0);
  if (!in_place)
    for (int64_t v = -1; v <= V; ++v) grad[v] = poison;
  for (int pass = 0; pass < 2; ++pass) {
    const float a = pass == 0 ? static_cast<float>(0.1 * normal(rng)) : 0.0f;
    const float b = pass == 0 ? static_cast<float>(-1e-3 * uni(rng)) : 0.0f;
    if (pass == 1 && in_place) break;  // the logits are gone
    for (int tid = 0; tid < THREADS; ++tid)
      cgrpo::cuda::thread_row_gradient<Logit, THREADS>(logits.row, grad, V, y, sm, a, b, inv_tau, tid);
    double err = 0, den = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double lp = z[v] / tau - ref.lse;
      const double p = std::exp(lp);
      const double want = pass == 1 ? 0.0
                                    : ((v == y ? a : 0.0) - a * p - (p > 0 ? b * p * (lp + ref.entropy) : 0.0)) / tau;
      const double got = to_double(grad[v]);
      err = std::max(err, std::fabs(got - want));
      den = std::max(den, std::fabs(want));
      if (pass == 1) GPU_EXPECT(got == 0.0, "[%s] V=%lld: a = b = 0 must write exact zeros", dtype, (long long)V);
    }
    // Float evaluation of a (1 - p_y) costs eps |a| however small 1 - p_y is: that is the floor.
    const double cancellation = 4 * 6e-8 * (std::fabs(a) + std::fabs(b)) / tau;
    GPU_EXPECT(err <= grad_tol<Logit>() * den + cancellation + (sizeof(Logit) == 2 ? 6e-8 : 0.0),
               "[%s] V=%lld THREADS=%d tau %.2f kind %d offsets %lld/%lld%s: gradient error %.3g of %.3g", dtype,
               (long long)V, THREADS, tau, static_cast<int>(kind), (long long)offset, (long long)grad_offset,
               in_place ? " in place" : "", err, den);
    if (!in_place)
      GPU_EXPECT(std::memcmp(&grad[-1], &poison, sizeof(Logit)) == 0 && std::memcmp(&grad[V], &poison, sizeof(Logit)) == 0,
                 "[%s] V=%lld: the gradient sweep wrote outside [0, V)", dtype, (long long)V);
  }
}

template <typename Logit>
void run_all(std::mt19937_64& rng) {
  for (int64_t V : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1003}, int64_t{4099}, int64_t{151936}, int64_t{262144}})
    for (int64_t offset : {int64_t{0}, int64_t{1}, int64_t{3}})
      for (RowKind kind : {RowKind::normal, RowKind::extreme, RowKind::with_neg_inf, RowKind::nan_entry,
                           RowKind::pos_inf_entry, RowKind::all_neg_inf, RowKind::large_u}) {
        if (V == 1 && kind == RowKind::with_neg_inf) continue;
        const double tau = kind == RowKind::large_u ? 0.02 : kind == RowKind::extreme ? 0.7 : (offset == 1 ? 1.3 : 1.0);
        check_row<Logit, 128>(rng, V, offset, offset, tau, kind, false);   // same alignment: vector path
        check_row<Logit, 512>(rng, V, offset, offset + 1, tau, kind, false);  // different: scalar path
        check_row<Logit, 512>(rng, V, offset, 0, tau, kind, true);
      }
}

}  // namespace

int main() {
  std::mt19937_64 rng = test_seed::fresh_rng();  // prints the seed; CGRPO_TEST_SEED=<n> replays it
  run_all<float>(rng);
  run_all<__half>(rng);
  run_all<__nv_bfloat16>(rng);
  if (failures() == 0) std::printf("PASSED (%lld checks): per-thread row code (softmax and gradient sweeps) matches the double reference\n", checks());
  else std::printf("FAILED: %d of %lld checks\n", failures(), checks());
  return failures() == 0 ? 0 : 1;
}
