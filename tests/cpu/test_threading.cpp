// Threads on the CPU path. workspace.num_threads far above the core count is capped and starts no
// thread per call once a workspace's pool has grown; a system that refuses threads is not an
// error; every thread count gives the same bits. Concurrency: calls on their own workspaces run
// at once and agree bit for bit; a call on a workspace that another call holds returns an error
// and writes nothing, and neither call is corrupted. Built and run under ThreadSanitizer too
// (preset tsan, label threading).
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/parallel/vocab_parallel.hpp>
#include <dlfcn.h>
#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "batch.hpp"

// Every thread the program starts goes through here (std::thread calls pthread_create): the
// tests count them, and can make the system refuse them.
namespace {
std::atomic<long> g_threads_started{0};
std::atomic<long> g_threads_allowed{LONG_MAX};  // further creations that succeed
}  // namespace

extern "C" int pthread_create(pthread_t* thread, const pthread_attr_t* attr, void* (*start)(void*), void* arg) {
  using Create = int (*)(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);
  static const Create real = reinterpret_cast<Create>(dlsym(RTLD_NEXT, "pthread_create"));
  if (g_threads_allowed.fetch_sub(1) <= 0) {
    g_threads_allowed.fetch_add(1);
    return EAGAIN;  // what pthread_create says when the system is out of threads
  }
  ++g_threads_started;
  return real(thread, attr, start, arg);
}

namespace {

struct Refuse {  // the system refuses every thread after `allowed` more, while in scope
  explicit Refuse(long allowed) { g_threads_allowed = allowed; }
  ~Refuse() { g_threads_allowed = LONG_MAX; }
};

cgrpo::LossConfig loss_config() {
  cgrpo::LossConfig c = cgrpo::verl_dapo().loss;
  c.entropy.coef = 0.01;
  return c;
}

// T tokens of one response, V logits each, every value drawn in float; the caller's weights
// 1 / T (policy) and 0.5 / T (entropy).
support::Batch random_float_batch(int64_t T, int64_t V) {
  std::mt19937_64 rng = test_seed::fresh_rng();
  std::normal_distribution<float> normal(0.f, 2.f);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));
  support::Batch b = support::padded_batch(1, T, V);
  b.rollout_logp.clear();  // not an input of these calls
  for (auto& z : b.logits) z = normal(rng);
  for (int64_t t = 0; t < T; ++t) {
    b.targets[t] = tok(rng);
    b.mask[t] = t % 5 != 4;
    b.kinds[t] = t % 7 == 3 ? cgrpo::kRefinement : cgrpo::kInitial;
    b.adv[t] = normal(rng);
    b.old_logp[t] = -std::log(static_cast<float>(V)) + 0.3f * normal(rng);
    b.w_pg[t] = 1.f / T;
    b.w_h[t] = 0.5f / T;
  }
  return b;
}

struct Batch {
  int64_t T = 0, V = 0;
  support::Batch data;
  support::LibraryBatch<float> lib;
  const std::vector<float>& logits;
  const std::vector<int32_t>& targets;
  const cgrpo::PolicyLossBatch<float>& view;

  Batch(int64_t T_, int64_t V_)
      : T(T_),
        V(V_),
        data(random_float_batch(T_, V_)),
        lib(data, loss_config(), support::Weights::caller),
        logits(lib.logits),
        targets(data.targets),
        view(lib.view) {}
  Batch(const Batch&) = delete;
};

constexpr float kPoison = -777.25f;

struct Result {
  cgrpo::Status status;
  cgrpo::LossMetrics metrics;
  std::vector<float> grad, logp, entropy;

  explicit Result(const Batch& b) : grad(b.T * b.V, kPoison), logp(b.T, kPoison), entropy(b.T, kPoison) {
    std::memset(static_cast<void*>(&metrics), 0, sizeof(metrics));  // padding too: same_bits compares bytes
    metrics.loss = kPoison;
  }
  cgrpo::PolicyLossOutputs<float> outputs() {
    return cgrpo::PolicyLossOutputs<float>{grad.data(), 0, logp.data(), entropy.data(), &metrics};
  }
  bool same_bits(const Result& o) const {
    return std::memcmp(&metrics, &o.metrics, sizeof(metrics)) == 0 && grad == o.grad && logp == o.logp &&
           entropy == o.entropy;
  }
  bool untouched() const {
    for (float g : grad)
      if (g != kPoison) return false;
    for (size_t t = 0; t < logp.size(); ++t)
      if (logp[t] != kPoison || entropy[t] != kPoison) return false;
    return metrics.loss == kPoison;
  }
};

// The loss on `ws` with `threads` threads (the workspace's count; written only when it changes, so
// that callers sharing a workspace at one count only read it).
Result loss(const Batch& b, int threads, cgrpo::cpu::Workspace& ws) {
  Result r(b);
  if (ws.num_threads != threads) ws.num_threads = threads;
  r.status = cgrpo::cpu::fused_policy_loss(loss_config(), b.view, r.outputs(), ws);
  return r;
}

}  // namespace

TEST_CASE("threads: workspace.num_threads far above the cores is capped and starts no thread per call", "[threading]") {
  const Batch b(256, 64);
  cgrpo::cpu::Workspace ws;
  const Result one = loss(b, 1, ws);
  REQUIRE(one.status.ok());
  const long cores = static_cast<long>(std::thread::hardware_concurrency() > 0 ? std::thread::hardware_concurrency() : 1);
  long started = g_threads_started;
  const Result first = loss(b, 1000, ws);
  REQUIRE(first.status.ok());
  CHECK(first.same_bits(one));
  CHECK(g_threads_started - started <= cores - 1);  // at most the cores, the caller's thread included
  for (int threads : {1000, 1 << 20, INT_MAX, 3, 1000}) {
    started = g_threads_started;
    const Result again = loss(b, threads, ws);
    REQUIRE(again.status.ok());
    CHECK(again.same_bits(one));
    CHECK(g_threads_started - started == 0);  // steady state: the workspace's threads are reused
  }
  // The log-prob pass reuses the same threads.
  std::vector<float> logp(b.T), ent(b.T);
  started = g_threads_started;
  REQUIRE(cgrpo::cpu::token_logprobs(b.logits.data(), b.T, b.V, 0, b.targets.data(), 1.0, logp.data(), ent.data(), 1000,
                                     &ws)
              .ok());
  CHECK(g_threads_started - started == 0);
  CHECK(logp == one.logp);
  // Without a workspace a call makes its own, of one thread: it starts none.
  Result convenience(b);
  started = g_threads_started;
  convenience.status = cgrpo::cpu::fused_policy_loss(loss_config(), b.view, convenience.outputs());
  REQUIRE(convenience.status.ok());
  CHECK(convenience.same_bits(one));
  CHECK(g_threads_started - started == 0);
}

TEST_CASE("threads: 2^20 threads on 2^17 rows neither terminates nor changes a bit", "[threading]") {
  const Batch b(1 << 17, 2);
  cgrpo::cpu::Workspace ws;
  const Result one = loss(b, 1, ws);
  REQUIRE(one.status.ok());
  const Result many = loss(b, 1 << 20, ws);
  REQUIRE(many.status.ok());
  CHECK(many.same_bits(one));
}

TEST_CASE("threads: a system that refuses threads is not an error", "[threading]") {
  const Batch b(97, 33);
  cgrpo::cpu::Workspace reference_ws;
  const Result one = loss(b, 1, reference_ws);
  REQUIRE(one.status.ok());
  for (long allowed : {0L, 1L, 2L}) {
    CAPTURE(allowed);
    Refuse refuse(allowed);
    cgrpo::cpu::Workspace ws;
    ws.pool.set_max_threads(8);  // ask for more threads than the system gives
    const Result r = loss(b, 8, ws);
    REQUIRE(r.status.ok());
    CHECK(r.same_bits(one));
    CHECK(ws.pool.num_workers() == allowed);
    Result c(b);  // the convenience overload too (its own workspace, one thread)
    c.status = cgrpo::cpu::fused_policy_loss(loss_config(), b.view, c.outputs());
    REQUIRE(c.status.ok());
    CHECK(c.same_bits(one));
  }
  // And with the plain API on any machine: the workspace's pool at the default cap.
  Refuse refuse(0);
  cgrpo::cpu::Workspace ws;
  const Result r = loss(b, 2, ws);
  REQUIRE(r.status.ok());
  CHECK(r.same_bits(one));
}

TEST_CASE("threads: every thread count and row count gives the same bits", "[threading]") {
  for (int64_t T : {1, 2, 3, 17, 100}) {
    const Batch b(T, 45);
    cgrpo::cpu::Workspace ws;
    ws.pool.set_max_threads(16);  // split finer than this machine's cores
    const Result one = loss(b, 1, ws);
    REQUIRE(one.status.ok());
    std::vector<float> logp1(T), ent1(T);
    REQUIRE(cgrpo::cpu::token_logprobs(b.logits.data(), T, b.V, 0, b.targets.data(), 0.8, logp1.data(), ent1.data(), 1,
                                       &ws)
                .ok());
    for (int threads : {2, 3, 4, 5, 7, 9, 16, 1000}) {
      CAPTURE(T, threads);
      const Result r = loss(b, threads, ws);
      REQUIRE(r.status.ok());
      CHECK(r.same_bits(one));
      std::vector<float> logp(T), ent(T);
      REQUIRE(cgrpo::cpu::token_logprobs(b.logits.data(), T, b.V, 0, b.targets.data(), 0.8, logp.data(), ent.data(),
                                         threads, &ws)
                  .ok());
      CHECK(logp == logp1);
      CHECK(ent == ent1);
    }
  }
}

TEST_CASE("concurrency: calls on their own workspaces run at once and agree bit for bit", "[threading]") {
  const Batch b(64, 200);
  cgrpo::cpu::Workspace reference_ws;
  const Result one = loss(b, 1, reference_ws);
  REQUIRE(one.status.ok());
  constexpr int kCallers = 6, kCalls = 8;
  std::atomic<int> mismatches{0}, failures{0};
  std::vector<std::thread> callers;
  for (int i = 0; i < kCallers; ++i)
    callers.emplace_back([&, i] {
      cgrpo::cpu::Workspace ws;  // one per caller; the batch (inputs) is shared
      ws.pool.set_max_threads(3);
      for (int k = 0; k < kCalls; ++k) {
        const Result r = loss(b, 1 + (i + k) % 3, ws);
        if (!r.status.ok()) ++failures;
        else if (!r.same_bits(one)) ++mismatches;
      }
    });
  for (auto& c : callers) c.join();
  CHECK(failures == 0);
  CHECK(mismatches == 0);
}

TEST_CASE("concurrency: a workspace that another call holds gives an error and writes nothing", "[threading]") {
  const Batch b(40, 30);
  cgrpo::cpu::Workspace ws;
  const Result one = loss(b, 2, ws);
  REQUIRE(one.status.ok());
  {
    cgrpo::cpu::ExclusiveUse other_call(ws.in_use);  // what a call in progress holds
    REQUIRE(other_call.acquired());
    const Result r = loss(b, 2, ws);
    CHECK(r.status.code == cgrpo::StatusCode::invalid_argument);
    CHECK(std::string(r.status.message).find("workspace is in use") != std::string::npos);
    CHECK(r.untouched());
    std::vector<float> logp(b.T, kPoison), ent(b.T, kPoison);
    const cgrpo::Status s = cgrpo::cpu::token_logprobs(b.logits.data(), b.T, b.V, 0, b.targets.data(), 1.0,
                                                       logp.data(), ent.data(), 2, &ws);
    CHECK(s.code == cgrpo::StatusCode::invalid_argument);
    CHECK(std::string(s.message).find("workspace is in use") != std::string::npos);
    CHECK(logp == std::vector<float>(b.T, kPoison));
    CHECK(ent == std::vector<float>(b.T, kPoison));
    const cgrpo::parallel::VocabShard shard{0, b.V, b.V};
    std::vector<cgrpo::RowStats<double>> stats(b.T);
    std::vector<double> target(b.T, -5.0);
    CHECK(cgrpo::parallel::vocab_shard_row_stats(loss_config(), b.view, shard, stats.data(), target.data(), ws).code ==
          cgrpo::StatusCode::invalid_argument);
    CHECK(target == std::vector<double>(b.T, -5.0));
  }
  const Result after = loss(b, 2, ws);  // released: the workspace works again
  REQUIRE(after.status.ok());
  CHECK(after.same_bits(one));
}

TEST_CASE("concurrency: calls racing for one workspace: each succeeds exactly or fails untouched", "[threading]") {
  // Two different batches (of different sizes, so the workspace's rows are resized), one
  // workspace, callers alternating between them: a call that read the other's rows would differ.
  const Batch batches[] = {Batch(48, 500), Batch(61, 300)};
  cgrpo::cpu::Workspace shared;
  const Result refs[] = {loss(batches[0], 1, shared), loss(batches[1], 1, shared)};
  REQUIRE((refs[0].status.ok() && refs[1].status.ok()));
  shared.num_threads = 2;  // the callers' count, set before they share the workspace
  constexpr int kCallers = 4, kCalls = 40;
  std::atomic<int> ok{0}, busy{0}, wrong{0};
  std::vector<std::thread> callers;
  for (int i = 0; i < kCallers; ++i)
    callers.emplace_back([&, i] {
      for (int k = 0; k < kCalls; ++k) {
        const int which = (i + k) % 2;
        const Batch& b = batches[which];
        const Result r = loss(b, 2, shared);
        if (r.status.ok()) r.same_bits(refs[which]) ? ++ok : ++wrong;
        else if (r.status.code == cgrpo::StatusCode::invalid_argument && r.untouched() &&
                 std::string(r.status.message).find("workspace is in use") != std::string::npos)
          ++busy;
        else
          ++wrong;
      }
    });
  for (auto& c : callers) c.join();
  INFO(ok << " calls succeeded, " << busy << " found the workspace busy");
  CHECK(wrong == 0);
  CHECK(ok + busy == kCallers * kCalls);
  CHECK(ok > 0);
}
