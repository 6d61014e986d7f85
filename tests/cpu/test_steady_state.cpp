// Steady state of the CPU path: once a Workspace has seen a batch, a further call of the same
// size allocates no memory, for every preset (verl, TRL, the paper), the row-coupled modes
// (kl_cov / clip_cov's batch pass, rollout and sampler corrections, the entropy mask) included.
// Every heap allocation of the program goes through the operator new below, which counts them.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/cpu/fused_linear_policy_loss.hpp>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "batch.hpp"
#include "catalog.hpp"

namespace {
std::atomic<long> g_allocations{0};

void* counted_alloc(std::size_t n) {
  ++g_allocations;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* counted_aligned_alloc(std::size_t n, std::align_val_t a) {
  ++g_allocations;
  const std::size_t align = static_cast<std::size_t>(a) < sizeof(void*) ? sizeof(void*) : static_cast<std::size_t>(a);
  void* p = nullptr;
  if (posix_memalign(&p, align, n == 0 ? 1 : n) == 0) return p;
  throw std::bad_alloc();
}
}  // namespace

void* operator new(std::size_t n) { return counted_alloc(n); }
void* operator new[](std::size_t n) { return counted_alloc(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  ++g_allocations;
  return std::malloc(n == 0 ? 1 : n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  ++g_allocations;
  return std::malloc(n == 0 ? 1 : n);
}
void* operator new(std::size_t n, std::align_val_t a) { return counted_aligned_alloc(n, a); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted_aligned_alloc(n, a); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace {

using cgrpo::LossConfig;

// A padded batch of B responses of length L (the last tokens of each masked), every optional
// per-token input present, some refinement tokens: fresh normal logits and log-probs, every value
// drawn in float.
struct Batch {
  int64_t B, L, T, V;
  support::Batch data;

  Batch(int64_t B_, int64_t L_, int64_t V_) : B(B_), L(L_), T(B_ * L_), V(V_), data(support::padded_batch(B_, L_, V_)) {
    std::mt19937_64 rng = test_seed::fresh_rng();
    std::normal_distribution<float> normal(0.f, 1.5f);
    std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));
    for (auto& z : data.logits) z = normal(rng);
    for (int64_t i = 0; i < B; ++i) {
      const float a = normal(rng);
      for (int64_t j = 0; j < L; ++j) {
        const int64_t t = i * L + j;
        data.targets[t] = tok(rng);
        data.mask[t] = j < L - 1 - i % 3;
        data.kinds[t] = i % 4 == 3 ? cgrpo::kRefinement : cgrpo::kInitial;
        data.adv[t] = a;
        const float base =
            static_cast<float>(data.logits[static_cast<size_t>(t * V + data.targets[t])]) - std::log(static_cast<float>(V));
        data.old_logp[t] = base + 0.2f * normal(rng);
        data.ref_logp[t] = base + 0.2f * normal(rng);
        data.rollout_logp[t] = base + 0.2f * normal(rng);
      }
    }
  }
};

// The library's view of b for c: what c reads, the loss forming its weights; no token kinds
// (every token initial) under verl's rollout correction.
struct View {
  support::LibraryBatch<float> lib;
  View(const Batch& b, const LossConfig& c) : lib(b.data, c, support::Weights::computed) {
    if (c.off_policy.rollout.mode != cgrpo::RolloutCorrectionMode::none) lib.view.kinds = nullptr;
  }
};

}  // namespace

TEST_CASE("steady state: a second call of the same size allocates nothing, for every preset", "[steady][allocation]") {
  const Batch b(6, 7, 33);
  std::vector<float> grad(static_cast<size_t>(b.T * b.V)), logp(static_cast<size_t>(b.T)), entropy(static_cast<size_t>(b.T));
  for (int threads : {1, 2}) {
    for (const support::CatalogEntry& entry : support::catalog()) {
      const LossConfig& c = entry.config();
      INFO(entry.name << ", workspace.num_threads " << threads);
      REQUIRE(c.validate().ok());
      const View v(b, c);
      const cgrpo::PolicyLossBatch<float>& view = v.lib.view;
      cgrpo::LossMetrics first{}, second{};
      cgrpo::cpu::Workspace ws(threads);
      const cgrpo::PolicyLossOutputs<float> out1{grad.data(), 0, logp.data(), entropy.data(), &first};
      const cgrpo::Status s1 = cgrpo::cpu::fused_policy_loss(c, view, out1, ws);
      INFO(s1.message);
      REQUIRE(s1.ok());
      const long before = g_allocations;
      const cgrpo::PolicyLossOutputs<float> out2{grad.data(), 0, logp.data(), entropy.data(), &second};
      const cgrpo::Status s2 = cgrpo::cpu::fused_policy_loss(c, view, out2, ws);
      const long allocated = g_allocations - before;
      REQUIRE(s2.ok());
      CHECK(allocated == 0);
      CHECK(std::isfinite(second.loss));
      CHECK(second.loss == first.loss);  // the same inputs, the same workspace: the same bits
    }
  }
}

TEST_CASE("steady state: the counter sees the allocations a call makes on a fresh workspace", "[steady][allocation]") {
  // The test above would pass vacuously if operator new were not the one counting.
  const Batch b(3, 4, 17);
  const LossConfig c = cgrpo::verl_grpo().loss;
  cgrpo::LossMetrics m{};
  std::vector<float> grad(static_cast<size_t>(b.T * b.V));
  const View v(b, c);
  cgrpo::cpu::Workspace ws;
  const long before = g_allocations;
  REQUIRE(cgrpo::cpu::fused_policy_loss(c, v.lib.view, cgrpo::PolicyLossOutputs<float>{grad.data(), 0, nullptr, nullptr, &m}, ws).ok());
  CHECK(g_allocations - before > 0);
}

TEST_CASE("steady state: the fused LM head's second call allocates nothing, chunked, for every preset",
          "[steady][allocation][linear]") {
  const Batch b(4, 5, 29);
  const int64_t H = 12;
  std::mt19937_64 rng = test_seed::fresh_rng();
  std::normal_distribution<float> normal(0.f, 0.5f);
  std::vector<float> hidden(static_cast<size_t>(b.T * H)), weight(static_cast<size_t>(b.V * H)), bias(static_cast<size_t>(b.V));
  for (auto& x : hidden) x = normal(rng);
  for (auto& x : weight) x = normal(rng);
  for (auto& x : bias) x = normal(rng);
  std::vector<float> grad_hidden(hidden.size()), grad_weight(weight.size()), grad_bias(bias.size());
  cgrpo::LinearHead<float> head;
  head.hidden = hidden.data();
  head.hidden_size = H;
  head.weight = weight.data();
  head.bias = bias.data();
  cgrpo::LinearHeadGrads<float> grads;
  grads.grad_hidden = grad_hidden.data();
  grads.grad_weight = grad_weight.data();
  grads.grad_bias = grad_bias.data();
  for (int threads : {1, 2}) {
    for (const support::CatalogEntry& entry : support::catalog()) {
      const LossConfig& c = entry.config();
      INFO(entry.name << ", workspace.num_threads " << threads);
      const View v(b, c);
      cgrpo::PolicyLossBatch<float> view = v.lib.view;
      view.logits = nullptr;  // the head forms them
      view.row_stride = 0;
      cgrpo::LossMetrics first{}, second{};
      cgrpo::cpu::Workspace ws(threads);
      const cgrpo::LinearChunking chunks{7, 0};  // ragged: 20 tokens in chunks of 7
      const cgrpo::Status s1 = cgrpo::cpu::fused_linear_policy_loss(
          c, view, head, cgrpo::PolicyLossOutputs<float>{nullptr, 0, nullptr, nullptr, &first}, grads, ws, chunks);
      INFO(s1.message);
      REQUIRE(s1.ok());
      const long before = g_allocations;
      const cgrpo::Status s2 = cgrpo::cpu::fused_linear_policy_loss(
          c, view, head, cgrpo::PolicyLossOutputs<float>{nullptr, 0, nullptr, nullptr, &second}, grads, ws, chunks);
      const long allocated = g_allocations - before;
      REQUIRE(s2.ok());
      CHECK(allocated == 0);
      CHECK(second.loss == first.loss);
    }
  }
}
