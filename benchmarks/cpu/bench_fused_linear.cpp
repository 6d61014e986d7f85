// CPU benchmarks of the fused LM head + loss (cpu::fused_linear_policy_loss) against the composed path
// (materialised [T, V] logits, cpu::fused_policy_loss in place, the two backward GEMMs): time, GEMM
// throughput as a fraction of a forward GEMM measured in the same run, and peak extra heap memory.
//
// Work per call, logits [T, V] = h [T, H] W^T: three GEMMs of 2 T H V flops each (forward, dJ/dh = G W,
// dJ/dW = G^T h), 6 T H V in all, for the fused single pass and the composed path alike; the two
// sweeps over the logits move 3 T V 4 bytes (read, read, write), under 1% of the time at H >= 1024:
// the GEMMs bound both paths, so the roofline is a GEMM, not a copy. `gemm` runs the forward
// product alone over the whole batch (head_logits, the same blocked Eigen product both paths use,
// on the same threads) and stores its flop rate; every later benchmark of that shape and thread
// count reports frac = its flop rate over it.
//
// Memory: peak_extra_MB is the highest number of heap bytes live above the level before the first
// call (workspace created inside the measurement, the composed path's [T, V] logits buffer too),
// counted by interposing malloc (heap_counter.hpp): every std::vector, operator new and Eigen GEMM
// panel. Inputs (h, W, per-token arrays) and outputs (dJ/dh, dJ/dW) exist before and are not
// counted. bound_MB is the goal for the fused path, chunk x V x 4 + T x H x 4.
//
// Time: the fastest of CGRPO_BENCH_REPS calls (default 3) after the first (the machine is shared:
// other processes only ever add time), taken by hand around the call (UseManualTime). cpu_ms is the
// process's CPU time of the call with the least (every thread's, so about threads x best_ms on an
// idle machine): on a loaded machine it still compares two paths doing the same work.
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <cgrpo/cgrpo.hpp>
#include <cgrpo/cpu/fused_linear_policy_loss.hpp>
#include <cgrpo/cpu/linear_gemm.hpp>
#include <chrono>
#include <cmath>
#include <ctime>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "heap_counter.hpp"

namespace {

using Clock = std::chrono::steady_clock;

int reps() {
  const char* env = std::getenv("CGRPO_BENCH_REPS");
  return env ? std::max(1, std::atoi(env)) : 3;
}

// Forward GEMM rate (flop/s) per (T, H, V, threads).
std::map<std::tuple<int64_t, int64_t, int64_t, int>, double> g_gemm_rate;

std::vector<float> uniform(int64_t n, uint32_t seed, float scale) {
  std::vector<float> x(static_cast<size_t>(n));
  uint32_t s = seed;
  for (auto& v : x) {  // xorshift32 -> uniform in [-scale, scale)
    s ^= s << 13, s ^= s >> 17, s ^= s << 5;
    v = (static_cast<float>(s >> 8) * (2.0f / 16777216.0f) - 1.0f) * scale;
  }
  return x;
}

// The batch of bench_cpu_loss: every token valid, half the responses refinements, weights 1/T,
// the paper's configuration. Hidden states uniform in [-1, 1], W uniform with logits of std ~3.
struct Problem {
  int64_t T, H, V;
  std::vector<float> h, W, gh, gw;
  std::vector<int32_t> targets;
  std::vector<uint8_t> mask, kinds;
  std::vector<float> adv, old_logp, w_pg, w_h, logp, entropy;
  Problem(int64_t T_, int64_t H_, int64_t V_) : T(T_), H(H_), V(V_) {
    h = uniform(T * H, 1, 1.0f);
    W = uniform(V * H, 2, 9.0f / std::sqrt(static_cast<float>(H)));
    gh.assign(static_cast<size_t>(T * H), 0.0f);
    gw.assign(static_cast<size_t>(V * H), 0.0f);
    targets.resize(T), mask.assign(T, 1), kinds.resize(T), adv.resize(T), old_logp.resize(T);
    w_pg.assign(T, 1.0f / static_cast<float>(T)), w_h.assign(T, 1.0f / static_cast<float>(T));
    logp.resize(T), entropy.resize(T);
    for (int64_t t = 0; t < T; ++t) {
      targets[t] = static_cast<int32_t>((t * 7919) % V);
      kinds[t] = (t / 64) % 2 ? cgrpo::kRefinement : cgrpo::kInitial;
      adv[t] = (t / 64) % 3 ? 0.5f : -0.75f;
      old_logp[t] = -std::log(static_cast<float>(V));
    }
  }
  cgrpo::PolicyLossBatch<float> batch(const float* logits) const {
    cgrpo::PolicyLossBatch<float> b;
    b.logits = logits, b.num_tokens = T, b.vocab_size = V;
    b.target_ids = targets.data(), b.mask = mask.data(), b.kinds = kinds.data();
    b.advantages = adv.data(), b.old_logp = old_logp.data();
    b.pg_weights = w_pg.data(), b.entropy_weights = w_h.data();
    return b;
  }
};

// Runs `call` once untimed with the heap measured, then reps() timed calls; sets the counters.
template <typename Call>
void measure(benchmark::State& state, const Problem& p, int threads, double bound_bytes, Call&& call,
             bool is_roofline = false) {
  const int64_t base = heap_counter::start();
  if (!call()) return;
  const double peak_extra = static_cast<double>(heap_counter::peak_above(base));
  auto cpu_seconds = [] {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  };
  double best = 1e300, best_cpu = 1e300;
  for (auto _ : state) {
    for (int r = 0; r < reps(); ++r) {
      const double c0 = cpu_seconds();
      const auto t0 = Clock::now();
      if (!call()) return;
      best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
      best_cpu = std::min(best_cpu, cpu_seconds() - c0);
    }
    state.SetIterationTime(best);
  }
  state.counters["cpu_ms"] = best_cpu * 1e3;
  const double flops = (is_roofline ? 2.0 : 6.0) * static_cast<double>(p.T) * static_cast<double>(p.H) *
                       static_cast<double>(p.V);
  const auto key = std::make_tuple(p.T, p.H, p.V, threads);
  if (is_roofline) g_gemm_rate[key] = flops / best;
  const auto it = g_gemm_rate.find(key);
  state.counters["best_ms"] = best * 1e3;
  state.counters["GFLOP/s"] = flops / best * 1e-9;
  state.counters["frac"] = is_roofline ? 1.0 : (it == g_gemm_rate.end() ? 0.0 : flops / best / it->second);
  state.counters["peak_extra_MB"] = peak_extra * 1e-6;
  state.counters["bound_MB"] = bound_bytes * 1e-6;
  state.counters["threads"] = threads;
}

// The forward GEMM over the whole batch: the roofline of both paths.
void BM_gemm(benchmark::State& state) {
  const Problem p(state.range(0), state.range(1), state.range(2));
  const int threads = static_cast<int>(state.range(3));
  cgrpo::cpu::ThreadPool pool;
  std::vector<float> z;
  measure(state, p, threads, 0.0, [&] {
    z.resize(static_cast<size_t>(p.T * p.V));
    cgrpo::cpu::head_logits(pool, threads, p.h.data(), p.H, p.T, p.H, p.W.data(), p.H, static_cast<const float*>(nullptr),
                            p.V, z.data(), p.V);
    benchmark::DoNotOptimize(z.data());
    return true;
  }, true);
}

// The same forward product as one Eigen product (one thread): how much the fixed blocks cost.
void BM_gemm_eigen(benchmark::State& state) {
  const Problem p(state.range(0), state.range(1), state.range(2));
  using M = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  M z;
  measure(state, p, 1, 0.0, [&] {
    z.resize(p.T, p.V);
    z.noalias() = Eigen::Map<const M>(p.h.data(), p.T, p.H) * Eigen::Map<const M>(p.W.data(), p.V, p.H).transpose();
    benchmark::DoNotOptimize(z.data());
    return true;
  }, false);
  state.counters["GFLOP/s"] = state.counters["GFLOP/s"] / 3.0;  // measure() counted 6 THV: this is one GEMM
  state.counters["frac"] = state.counters["frac"] / 3.0;
}

// Materialised logits + fused loss (in place) + the two backward GEMMs, on the same blocked GEMMs.
void BM_composed(benchmark::State& state) {
  Problem p(state.range(0), state.range(1), state.range(2));
  const int threads = static_cast<int>(state.range(3));
  const cgrpo::LossConfig config{};  // the paper's released configuration
  std::unique_ptr<cgrpo::cpu::Workspace> ws;
  std::vector<float> z;
  cgrpo::LossMetrics metrics;
  measure(state, p, threads, 4.0 * p.T * p.V, [&] {
    if (!ws) ws = std::make_unique<cgrpo::cpu::Workspace>(threads);
    z.resize(static_cast<size_t>(p.T * p.V));
    cgrpo::cpu::head_logits(ws->pool, threads, p.h.data(), p.H, p.T, p.H, p.W.data(), p.H,
                            static_cast<const float*>(nullptr), p.V, z.data(), p.V);
    cgrpo::PolicyLossOutputs<float> out;
    out.grad_logits = z.data();
    out.logp = p.logp.data(), out.entropy = p.entropy.data(), out.metrics = &metrics;
    const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(config, p.batch(z.data()), out, *ws);
    if (!s.ok()) {
      state.SkipWithError(s.message);
      return false;
    }
    cgrpo::cpu::head_weight_grad(ws->pool, threads, z.data(), p.V, p.T, p.V, p.h.data(), p.H, p.H, p.gw.data(), p.H,
                                 static_cast<float*>(nullptr), false);
    cgrpo::cpu::head_hidden_grad(ws->pool, threads, z.data(), p.V, p.T, p.V, p.W.data(), p.H, p.H, p.gh.data(), p.H);
    benchmark::DoNotOptimize(p.gw.data());
    return true;
  });
}

// The fused linear loss, chunk rows = range(4).
void BM_fused_linear(benchmark::State& state) {
  Problem p(state.range(0), state.range(1), state.range(2));
  const int threads = static_cast<int>(state.range(3));
  cgrpo::LinearChunking chunking;
  chunking.tokens = state.range(4);
  int64_t chunk = 0;
  if (!cgrpo::chunk_rows(chunking, p.T, p.V, 4, &chunk).ok()) return state.SkipWithError("chunking");
  const cgrpo::LossConfig config{};  // the paper's released configuration
  std::unique_ptr<cgrpo::cpu::Workspace> ws;
  cgrpo::LossMetrics metrics;
  cgrpo::LinearHead<float> head{p.h.data(), p.H, 0, p.W.data(), 0, nullptr};
  cgrpo::LinearHeadGrads<float> grads;
  grads.grad_hidden = p.gh.data();
  grads.grad_weight = p.gw.data();
  cgrpo::PolicyLossOutputs<float> out;
  out.logp = p.logp.data(), out.entropy = p.entropy.data(), out.metrics = &metrics;
  const double bound = 4.0 * static_cast<double>(chunk) * static_cast<double>(p.V) + 4.0 * p.T * p.H;
  measure(state, p, threads, bound, [&] {
    if (!ws) ws = std::make_unique<cgrpo::cpu::Workspace>(threads);
    const cgrpo::Status s = cgrpo::cpu::fused_linear_policy_loss(config, p.batch(nullptr), head, out, grads, *ws, chunking);
    if (!s.ok()) {
      state.SkipWithError(s.message);
      return false;
    }
    benchmark::DoNotOptimize(p.gw.data());
    return true;
  });
}

struct Shape {
  int64_t T, H, V;
};
const Shape kShapes[] = {{2048, 1024, 32000}, {2048, 2048, 151936}};

void register_all() {
  for (const Shape& s : kShapes)
    for (int threads : {1, 2}) {
      benchmark::RegisterBenchmark("gemm", BM_gemm)->Args({s.T, s.H, s.V, threads})->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
      if (threads == 1)
        benchmark::RegisterBenchmark("gemm_eigen", BM_gemm_eigen)->Args({s.T, s.H, s.V, 1})->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark("composed", BM_composed)->Args({s.T, s.H, s.V, threads})->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
      for (int64_t chunk : {int64_t{64}, int64_t{256}})
        benchmark::RegisterBenchmark("fused_linear", BM_fused_linear)
            ->Args({s.T, s.H, s.V, threads, chunk})
            ->UseManualTime()
            ->Iterations(1)
            ->Unit(benchmark::kMillisecond);
    }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
