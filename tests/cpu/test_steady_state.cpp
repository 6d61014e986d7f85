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
// per-token input present, some refinement tokens: fresh normal logits and log-probs.
struct Batch {
  int64_t B, L, T, V;
  std::vector<float> logits, adv, old_logp, ref_logp, rollout_logp;
  std::vector<int32_t> targets;
  std::vector<uint8_t> mask, kinds;

  Batch(int64_t B_, int64_t L_, int64_t V_) : B(B_), L(L_), T(B_ * L_), V(V_) {
    std::mt19937_64 rng = test_seed::fresh_rng();
    std::normal_distribution<float> normal(0.f, 1.5f);
    std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));
    logits.resize(static_cast<size_t>(T * V));
    for (auto& z : logits) z = normal(rng);
    for (int64_t i = 0; i < B; ++i) {
      const float a = normal(rng);
      for (int64_t j = 0; j < L; ++j) {
        const int64_t t = i * L + j;
        targets.push_back(tok(rng));
        mask.push_back(j < L - 1 - i % 3);
        kinds.push_back(i % 4 == 3 ? cgrpo::kRefinement : cgrpo::kInitial);
        adv.push_back(a);
        const float base = logits[static_cast<size_t>(t * V + targets.back())] - std::log(static_cast<float>(V));
        old_logp.push_back(base + 0.2f * normal(rng));
        ref_logp.push_back(base + 0.2f * normal(rng));
        rollout_logp.push_back(base + 0.2f * normal(rng));
      }
    }
  }

  cgrpo::PolicyLossBatch<float> view(const LossConfig& c) const {
    cgrpo::PolicyLossBatch<float> v;
    v.logits = logits.data();
    v.num_tokens = T;
    v.vocab_size = V;
    v.target_ids = targets.data();
    v.mask = mask.data();
    v.kinds = c.rollout.mode == cgrpo::RolloutCorrectionMode::none ? kinds.data() : nullptr;
    v.advantages = adv.data();
    v.old_logp = old_logp.data();
    v.ref_logp = c.kl != cgrpo::KlEstimator::none ? ref_logp.data() : nullptr;
    v.rollout_logp = c.needs_rollout_logp() ? rollout_logp.data() : nullptr;
    v.layout = cgrpo::SequenceLayout::padded(B, L);
    return v;
  }
};

std::vector<std::pair<std::string, LossConfig>> every_preset() {
  std::vector<std::pair<std::string, LossConfig>> out = {
      {"paper_critique_grpo", cgrpo::paper_critique_grpo()},
      {"verl_vanilla", cgrpo::verl_vanilla()},
      {"verl_grpo", cgrpo::verl_grpo()},
      {"verl_dapo", cgrpo::verl_dapo()},
      {"verl_dr_grpo", cgrpo::verl_dr_grpo()},
      {"verl_gspo", cgrpo::verl_gspo()},
      {"verl_cispo", cgrpo::verl_cispo()},
      {"verl_sapo", cgrpo::verl_sapo()},
      {"verl_gpg", cgrpo::verl_gpg()},
      {"verl_gmpo", cgrpo::verl_gmpo()},
      {"verl_kl_cov", cgrpo::verl_kl_cov()},
      {"verl_clip_cov", cgrpo::verl_clip_cov()},
      {"verl_decoupled(grpo, token)", cgrpo::verl_decoupled(cgrpo::verl_grpo(), cgrpo::RolloutIsLevel::token)},
      {"verl_decoupled(grpo, sequence)", cgrpo::verl_decoupled(cgrpo::verl_grpo())},
      {"verl_bypass_ppo_clip", cgrpo::verl_bypass_ppo_clip()},
      {"verl_bypass_reinforce", cgrpo::verl_bypass_reinforce()},
      {"trl_grpo", cgrpo::trl_grpo()},
      {"trl_bnpo", cgrpo::trl_bnpo()},
      {"trl_dr_grpo", cgrpo::trl_dr_grpo()},
      {"trl_dapo", cgrpo::trl_dapo()},
      {"trl_cispo", cgrpo::trl_cispo()},
      {"trl_sapo", cgrpo::trl_sapo()},
      {"trl_luspo", cgrpo::trl_luspo()},
      {"trl_vespo", cgrpo::trl_vespo()},
  };
  LossConfig vllm = cgrpo::trl_grpo();
  vllm.sampler = cgrpo::trl_vllm_importance_sampling();
  out.emplace_back("trl_grpo + vLLM importance sampling", vllm);
  LossConfig entropy_mask = cgrpo::trl_grpo();
  entropy_mask.top_entropy_quantile = 0.4;
  out.emplace_back("trl_grpo + top_entropy_quantile 0.4", entropy_mask);
  LossConfig off_policy_mask = cgrpo::trl_grpo();
  off_policy_mask.off_policy_mask_threshold = 0.5;
  out.emplace_back("trl_grpo + off_policy_mask_threshold 0.5", off_policy_mask);
  LossConfig rejection = cgrpo::verl_decoupled(cgrpo::verl_grpo(), cgrpo::RolloutIsLevel::token);
  if (!cgrpo::verl_rollout_rs("token_k1,seq_sum_k2", "0.5_2.0,1.0", &rejection.rollout).ok()) std::abort();
  out.emplace_back("verl_decoupled(grpo, token) + token_k1, seq_sum_k2 rejection", rejection);
  LossConfig kl = cgrpo::verl_grpo();
  kl.kl = cgrpo::KlEstimator::k3;
  kl.kl_coef = 0.05;
  kl.entropy_coef = 0.01;
  out.emplace_back("verl_grpo + k3 KL + entropy", kl);
  return out;
}

}  // namespace

TEST_CASE("steady state: a second call of the same size allocates nothing, for every preset", "[steady][allocation]") {
  const Batch b(6, 7, 33);
  std::vector<float> grad(static_cast<size_t>(b.T * b.V)), logp(static_cast<size_t>(b.T)), entropy(static_cast<size_t>(b.T));
  for (int threads : {1, 2}) {
    for (auto& named : every_preset()) {
      LossConfig c = named.second;
      c.num_threads = threads;
      INFO(named.first << ", num_threads " << threads);
      REQUIRE(c.validate().ok());
      const cgrpo::PolicyLossBatch<float> view = b.view(c);
      cgrpo::LossMetrics first{}, second{};
      cgrpo::cpu::Workspace ws;
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
  const LossConfig c = cgrpo::verl_grpo();
  cgrpo::LossMetrics m{};
  std::vector<float> grad(static_cast<size_t>(b.T * b.V));
  cgrpo::cpu::Workspace ws;
  const long before = g_allocations;
  REQUIRE(cgrpo::cpu::fused_policy_loss(c, b.view(c), cgrpo::PolicyLossOutputs<float>{grad.data(), 0, nullptr, nullptr, &m}, ws).ok());
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
    for (auto& named : every_preset()) {
      LossConfig c = named.second;
      c.num_threads = threads;
      INFO(named.first << ", num_threads " << threads);
      cgrpo::PolicyLossBatch<float> view = b.view(c);
      view.logits = nullptr;  // the head forms them
      cgrpo::LossMetrics first{}, second{};
      cgrpo::cpu::Workspace ws;
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
