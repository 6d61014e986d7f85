// CPU benchmarks of the fused GRPO loss (forward+backward), the log-prob pass, a naive
// multi-pass version and memcpy of the same bytes, with bandwidth and the memcpy fraction.
//
// Bytes moved, per call, for logits [T, V] float:
//   forward+backward (fused and naive): one read and one write of the logits, 2 * T * V * 4;
//   log-prob only: one read, T * V * 4;
//   memcpy of T * V floats: read + write, 2 * T * V * 4 (the roofline of forward+backward);
//   read-only sum of T * V floats: T * V * 4 (the roofline of the log-prob pass).
// Each shape's memcpy / read rooflines run first (one and two threads) and store their
// bandwidth; every later benchmark of that shape reports GB/s and frac = its GB/s over
// the roofline's GB/s with the same thread count. Time is taken by hand around the call
// only (UseManualTime): refilling the logits for the in-place run is not timed. The
// counters use the fastest iteration (best_ms): on a shared machine other processes
// only ever add time; the Time column is Google Benchmark's mean.
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cgrpo/cgrpo.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <thread>
#include <utility>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Shape {
  int64_t T, V;
};
const Shape kShapes[] = {{512, 32000}, {512, 151936}, {4096, 32000}, {4096, 151936}};

// Roofline bandwidth (bytes/s) per (T, V, threads, kind): kind 0 copy, 1 read.
std::map<std::tuple<int64_t, int64_t, int, int>, double> g_roofline;

// A buffer the kernel allocates lazily and the OS maps only when first written; we
// touch every page before timing so that page faults stay out of the measurement.
std::vector<float> random_logits(int64_t n, uint32_t seed) {
  std::vector<float> z(static_cast<size_t>(n));
  uint32_t s = seed;
  for (auto& x : z) {  // xorshift32 -> roughly uniform in [-8, 8): a spread of real logits
    s ^= s << 13, s ^= s >> 17, s ^= s << 5;
    x = static_cast<float>(s >> 8) * (16.0f / 16777216.0f) - 8.0f;
  }
  return z;
}

// Splits [0, n) into `threads` parts and runs fn(begin, end) on each.
template <typename Fn>
void split(int64_t n, int threads, Fn&& fn) {
  cgrpo::cpu::parallel_for_rows(n, threads, fn);
}

// The per-token arrays of a batch with every token valid, the paper's configuration:
// half the responses initial, half refinements, weights 1/T.
struct TokenArrays {
  std::vector<int32_t> targets;
  std::vector<uint8_t> mask, kinds;
  std::vector<float> adv, old_logp, w_pg, w_h, logp, entropy;
  explicit TokenArrays(int64_t T, int64_t V) {
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
  cgrpo::PolicyLossBatch<float> batch(const float* logits, int64_t T, int64_t V) const {
    cgrpo::PolicyLossBatch<float> b;
    b.logits = logits, b.num_tokens = T, b.vocab_size = V;
    b.target_ids = targets.data(), b.mask = mask.data(), b.kinds = kinds.data();
    b.advantages = adv.data(), b.old_logp = old_logp.data();
    b.pg_weights = w_pg.data(), b.entropy_weights = w_h.data();
    return b;
  }
};

// Sets the bandwidth counters and, for the roofline runs, records the bandwidth.
void report(benchmark::State& state, double bytes_per_call, double best_seconds, int64_t T, int64_t V, int threads,
            int roofline_kind, bool is_roofline) {
  const double bw = bytes_per_call / best_seconds;
  state.counters["best_ms"] = best_seconds * 1e3;
  state.counters["GB/s"] = bw * 1e-9;
  state.counters["GB_moved"] = bytes_per_call * 1e-9;
  const auto key = std::make_tuple(T, V, threads, roofline_kind);
  if (is_roofline) {
    g_roofline[key] = bw;
    state.counters["frac"] = 1.0;  // every benchmark carries the same counters (CSV columns)
  } else {
    const auto it = g_roofline.find(key);
    state.counters["frac"] = it == g_roofline.end() ? 0.0 : bw / it->second;
  }
  state.counters["threads"] = threads;
}

// (d) memcpy of T * V floats: the copy roofline of forward+backward.
void BM_memcpy(benchmark::State& state) {
  const int64_t T = state.range(0), V = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  const int64_t n = T * V;
  std::vector<float> src = random_logits(n, 1), dst(static_cast<size_t>(n), 0.0f);
  double seconds = 1e300;  // the fastest iteration: other processes only ever slow one down
  for (auto _ : state) {
    const auto t0 = Clock::now();
    split(T, threads, [&](int64_t b, int64_t e) {
      std::memcpy(dst.data() + b * V, src.data() + b * V, sizeof(float) * static_cast<size_t>((e - b) * V));
    });
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
    state.SetIterationTime(dt);
    seconds = std::min(seconds, dt);
  }
  report(state, 2.0 * 4.0 * n, seconds, T, V, threads, 0, true);
}

// A vectorised sum of T * V floats: the read roofline of the log-prob pass.
void BM_read(benchmark::State& state) {
  const int64_t T = state.range(0), V = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  const int64_t n = T * V;
  std::vector<float> src = random_logits(n, 1);
  std::vector<double> part(static_cast<size_t>(T));
  double seconds = 1e300;  // the fastest iteration: other processes only ever slow one down
  for (auto _ : state) {
    const auto t0 = Clock::now();
    split(T, threads, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t)
        part[t] = Eigen::Map<const Eigen::ArrayXf>(src.data() + t * V, V).sum();
    });
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    benchmark::DoNotOptimize(part.data());
    state.SetIterationTime(dt);
    seconds = std::min(seconds, dt);
  }
  report(state, 4.0 * n, seconds, T, V, threads, 1, true);
}

// (a) the fused loss, forward+backward; range(3): 0 gradient to a separate buffer, 1 in place.
void BM_fused_policy_loss(benchmark::State& state) {
  const int64_t T = state.range(0), V = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  const bool in_place = state.range(3) != 0;
  const int64_t n = T * V;
  const std::vector<float> pristine = random_logits(n, 2);
  std::vector<float> logits = pristine, grad(in_place ? 0 : static_cast<size_t>(n), 0.0f);
  TokenArrays tok(T, V);
  const cgrpo::LossConfig config{};  // the paper's released configuration
  cgrpo::cpu::Workspace ws(threads);
  cgrpo::LossMetrics metrics;
  cgrpo::PolicyLossOutputs<float> out;
  out.grad_logits = in_place ? logits.data() : grad.data();
  out.logp = tok.logp.data(), out.entropy = tok.entropy.data(), out.metrics = &metrics;
  const cgrpo::PolicyLossBatch<float> batch = tok.batch(logits.data(), T, V);
  double seconds = 1e300;  // the fastest iteration: other processes only ever slow one down
  for (auto _ : state) {
    if (in_place) std::memcpy(logits.data(), pristine.data(), sizeof(float) * static_cast<size_t>(n));  // not timed
    const auto t0 = Clock::now();
    const cgrpo::Status st = cgrpo::cpu::fused_policy_loss(config, batch, out, ws);
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!st.ok()) {
      state.SkipWithError(st.message);
      return;
    }
    benchmark::DoNotOptimize(metrics.loss);
    benchmark::ClobberMemory();
    state.SetIterationTime(dt);
    seconds = std::min(seconds, dt);
  }
  report(state, 2.0 * 4.0 * n, seconds, T, V, threads, 0, false);
}

// (b) the log-prob / entropy pass: one read of the logits.
void BM_token_logprobs(benchmark::State& state) {
  const int64_t T = state.range(0), V = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  const int64_t n = T * V;
  const std::vector<float> logits = random_logits(n, 3);
  TokenArrays tok(T, V);
  double seconds = 1e300;  // the fastest iteration: other processes only ever slow one down
  for (auto _ : state) {
    const auto t0 = Clock::now();
    const cgrpo::Status st = cgrpo::cpu::token_logprobs(logits.data(), T, V, 0, tok.targets.data(), 1.0,
                                                        tok.logp.data(), tok.entropy.data(), threads);
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!st.ok()) {
      state.SkipWithError(st.message);
      return;
    }
    benchmark::DoNotOptimize(tok.logp.data());
    state.SetIterationTime(dt);
    seconds = std::min(seconds, dt);
  }
  report(state, 4.0 * n, seconds, T, V, threads, 1, false);
}

// (c) The naive multi-pass version, as a Python trainer runs it: one op at a time over
// the whole [T, V] tensor (each op vectorised and fused within itself, as torch's
// kernels are, and given one temporary only, which is generous to it):
//   1. logsm = log_softmax(z)                       read z (twice per row), write logsm
//   2. logp = gather(logsm, y)                      T reads
//   3. H = -(exp(logsm) * logsm).sum(-1)            read logsm
//   4. a, b per token (the paper's loss)            O(T)
//   5. grad = a (onehot - exp(logsm)) - b exp(logsm) (logsm + H)   read logsm, write grad
// Same loss as the fused one (paper config: no clip, f(p) shaping on refinements,
// token-mean entropy). The bytes counted are still 2 T V 4, so GB/s compare directly.
void BM_naive_multipass(benchmark::State& state) {
  const int64_t T = state.range(0), V = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  const int64_t n = T * V;
  const std::vector<float> logits = random_logits(n, 2);
  std::vector<float> logsm(static_cast<size_t>(n), 0.0f), grad(static_cast<size_t>(n), 0.0f);
  std::vector<float> a(static_cast<size_t>(T)), b(static_cast<size_t>(T));
  TokenArrays tok(T, V);
  const float gamma = 0.1f, c_h = 0.001f;
  using Row = Eigen::Map<Eigen::ArrayXf>;
  using ConstRow = Eigen::Map<const Eigen::ArrayXf>;
  double seconds = 1e300;  // the fastest iteration: other processes only ever slow one down
  for (auto _ : state) {
    const auto t0 = Clock::now();
    split(T, threads, [&](int64_t rb, int64_t re) {  // 1. log_softmax into the temporary
      for (int64_t t = rb; t < re; ++t) {
        ConstRow z(logits.data() + t * V, V);
        const float m = z.maxCoeff();
        const float lse = m + std::log((z - m).exp().sum());
        Row(logsm.data() + t * V, V) = z - lse;
      }
    });
    for (int64_t t = 0; t < T; ++t) tok.logp[t] = logsm[t * V + tok.targets[t]];  // 2. gather
    split(T, threads, [&](int64_t rb, int64_t re) {  // 3. entropy
      for (int64_t t = rb; t < re; ++t) {
        ConstRow ls(logsm.data() + t * V, V);
        tok.entropy[t] = -(ls.exp() * ls).sum();
      }
    });
    for (int64_t t = 0; t < T; ++t) {  // 4. dJ/dlogp and dJ/dH per token
      const float logp = tok.logp[t];
      if (tok.kinds[t] == cgrpo::kRefinement) {
        const float p = std::exp(logp);
        a[t] = -tok.adv[t] * gamma * p / ((p + gamma) * (p + gamma)) * tok.w_pg[t];
      } else {
        a[t] = -tok.adv[t] * std::exp(logp - tok.old_logp[t]) * tok.w_pg[t];
      }
      b[t] = -c_h * tok.w_h[t];
    }
    split(T, threads, [&](int64_t rb, int64_t re) {  // 5. softmax again for the gradient
      for (int64_t t = rb; t < re; ++t) {
        ConstRow ls(logsm.data() + t * V, V);
        Row g(grad.data() + t * V, V);
        g = -(a[t] + b[t] * (ls + tok.entropy[t])) * ls.exp();
        g(tok.targets[t]) += a[t];
      }
    });
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    benchmark::DoNotOptimize(grad.data());
    benchmark::ClobberMemory();
    state.SetIterationTime(dt);
    seconds = std::min(seconds, dt);
  }
  report(state, 2.0 * 4.0 * n, seconds, T, V, threads, 0, false);
}

// Iterations per run: about 1-2 s of work per benchmark for the 2.5 GB shapes.
int64_t iterations_for(const Shape& s) {
  const int64_t n = s.T * s.V;
  return n >= 400'000'000 ? 2 : (n >= 60'000'000 ? 5 : 20);
}

void register_all() {
  for (const Shape& s : kShapes) {
    const int64_t it = iterations_for(s);
    for (int threads : {1, 2}) {
      benchmark::RegisterBenchmark("memcpy", BM_memcpy)->Args({s.T, s.V, threads})->Iterations(it)->UseManualTime()->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark("read_sum", BM_read)->Args({s.T, s.V, threads})->Iterations(it)->UseManualTime()->Unit(benchmark::kMillisecond);
    }
    for (int threads : {1, 2}) {
      benchmark::RegisterBenchmark("fused_policy_loss/separate", BM_fused_policy_loss)->Args({s.T, s.V, threads, 0})->Iterations(it)->UseManualTime()->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark("fused_policy_loss/in_place", BM_fused_policy_loss)->Args({s.T, s.V, threads, 1})->Iterations(it)->UseManualTime()->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark("token_logprobs", BM_token_logprobs)->Args({s.T, s.V, threads})->Iterations(it)->UseManualTime()->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark("naive_multipass", BM_naive_multipass)->Args({s.T, s.V, threads})->Iterations(it)->UseManualTime()->Unit(benchmark::kMillisecond);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
