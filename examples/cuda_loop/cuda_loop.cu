// examples/cuda_loop/cuda_loop.cu: a Critique-GRPO training loop in plain CUDA, no framework.
// cuBLAS linear head over hidden states -> fused loss in place over the logits -> cuBLAS head gradient -> SGD.
//
// Per step, with T tokens, hidden size D and vocabulary V (float):
//   Z  = H W^T            cublasSgemm, [T, V]           writes 4 T V bytes
//   old log p             cgrpo::cuda::token_logprobs   reads Z once (here: on-policy, old = current)
//   J, dJ/dZ -> Z         cgrpo::cuda::fused_policy_loss, in place: reads Z, writes dJ/dZ over it
//   dW = (dJ/dZ)^T H      cublasSgemm, [V, D]
//   W -= lr dW            cublasSaxpy
// Step 0 is checked against cgrpo::cpu::fused_policy_loss in double (loss and dW); exits 77 without a GPU.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cgrpo/cgrpo.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "cgrpo/cuda/cgrpo_cuda.cuh"

namespace {

// Every CUDA, cuBLAS and cgrpo call of the example goes through one of these: print and return 1.
#define LOOP_CHECK_CUDA(call)                                                                       \
  do {                                                                                              \
    cudaError_t e_ = (call);                                                                        \
    if (e_ != cudaSuccess) {                                                                        \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));  \
      return 1;                                                                                     \
    }                                                                                               \
  } while (0)
#define LOOP_CHECK_CUBLAS(call)                                                                     \
  do {                                                                                              \
    cublasStatus_t s_ = (call);                                                                     \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                              \
      std::fprintf(stderr, "%s:%d: %s: cuBLAS status %d\n", __FILE__, __LINE__, #call, int(s_));   \
      return 1;                                                                                     \
    }                                                                                               \
  } while (0)
#define LOOP_CHECK(status_expr)                                                                     \
  do {                                                                                              \
    const cgrpo::Status s_ = (status_expr);                                                         \
    if (!s_.ok()) {                                                                                 \
      std::fprintf(stderr, "%s:%d: cgrpo %s: %s\n", __FILE__, __LINE__,                            \
                   cgrpo::status_code_name(s_.code), s_.message);                                   \
      return 1;                                                                                     \
    }                                                                                               \
  } while (0)

// One rollout on the host: B responses padded to L tokens, groups of G with one refinement
// each. Reward 1 when most of a response's tokens lie in the lower half of the vocabulary.
struct Rollout {
  std::vector<float> hidden;  // [T, D]
  std::vector<int32_t> targets;
  std::vector<uint8_t> mask, kinds;
  std::vector<float> advantages, pg_weights, entropy_weights;
};

cgrpo::Status make_rollout(std::mt19937_64& rng, const cgrpo::Recipe& recipe, int64_t B, int64_t L, int64_t G,
                           int64_t D, int64_t V, Rollout& r) {
  const cgrpo::LossConfig& c = recipe.loss;
  const int64_t T = B * L;
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(V - 1));
  std::uniform_int_distribution<int64_t> length(1, L);
  r.hidden.resize(T * D);
  for (float& h : r.hidden) h = normal(rng);
  r.targets.resize(T);
  r.mask.assign(T, 0);
  r.kinds.resize(T);
  std::vector<float> rewards(B), adv(B);
  std::vector<int32_t> group_ids(B);
  for (int64_t i = 0; i < B; ++i) {
    const int64_t n = length(rng);
    int64_t good = 0;
    for (int64_t t = i * L; t < (i + 1) * L; ++t) {
      r.targets[t] = token(rng);
      r.mask[t] = t - i * L < n ? 1 : 0;
      r.kinds[t] = i % G == 0 ? cgrpo::kRefinement : cgrpo::kInitial;
      if (r.mask[t] && r.targets[t] < V / 2) ++good;
    }
    rewards[i] = 2 * good > n ? 1.f : 0.f;
    group_ids[i] = static_cast<int32_t>(i / G);
  }
  const cgrpo::SequenceLayout layout = cgrpo::SequenceLayout::padded(B, L);
  CGRPO_RETURN_IF_ERROR(cgrpo::group_advantages(recipe.advantage,
                                                cgrpo::GroupAssignment{B, group_ids.data(), (B + G - 1) / G},
                                                rewards.data(), nullptr, adv.data()));
  r.advantages.resize(T);
  cgrpo::broadcast_to_tokens(layout, adv.data(), r.advantages.data());
  r.pg_weights.resize(T);
  r.entropy_weights.resize(T);
  cgrpo::AggregationScale scale;
  scale.length = static_cast<double>(L);  // seq-mean-token-sum-norm: the max response length
  CGRPO_RETURN_IF_ERROR(
      cgrpo::aggregation_weights(c, cgrpo::LossTerm::policy, layout, r.mask.data(), scale, r.pg_weights.data()));
  CGRPO_RETURN_IF_ERROR(
      cgrpo::aggregation_weights(c, cgrpo::LossTerm::entropy, layout, r.mask.data(), scale, r.entropy_weights.data()));
  return cgrpo::Status::success();
}

template <typename T>
int upload(T* device, const std::vector<T>& host, cudaStream_t stream) {
  LOOP_CHECK_CUDA(cudaMemcpyAsync(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream));
  return 0;
}

std::vector<double> to_double_vector(const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); }

// The step-0 check: the CPU path in double on the same logits and inputs; dW = G^T H in double.
int check_against_cpu(const cgrpo::LossConfig& c, const Rollout& r, const std::vector<float>& logits,
                      const std::vector<float>& old_logp, int64_t B, int64_t L, int64_t D, int64_t V,
                      double gpu_loss, const std::vector<float>& gpu_dW) {
  const int64_t T = B * L;
  const auto to_double = to_double_vector;
  const std::vector<double> z = to_double(logits), old = to_double(old_logp), adv = to_double(r.advantages),
                            w_pg = to_double(r.pg_weights), w_h = to_double(r.entropy_weights);
  std::vector<double> grad(T * V);
  cgrpo::PolicyLossBatch<double> batch;
  batch.logits = z.data();
  batch.num_tokens = T;
  batch.vocab_size = V;
  batch.target_ids = r.targets.data();
  batch.mask = r.mask.data();
  batch.kinds = r.kinds.data();
  batch.advantages = adv.data();
  batch.old_logp = old.data();
  batch.pg_weights = w_pg.data();
  batch.entropy_weights = w_h.data();
  batch.layout = cgrpo::SequenceLayout::padded(B, L);
  cgrpo::LossMetrics m;
  cgrpo::PolicyLossOutputs<double> out;
  out.grad_logits = grad.data();
  out.metrics = &m;
  cgrpo::cpu::Workspace ws(4);  // 4 threads (the same bits as 1)
  LOOP_CHECK(cgrpo::cpu::fused_policy_loss(c, batch, out, ws));
  // dW[v, d] = sum_t G[t, v] H[t, d] at the target columns of the first tokens and at random
  // entries (all V x D entries would be V D T multiply-adds on the host).
  std::mt19937_64 rng(1);
  double err = 0, scale = 0;
  for (int k = 0; k < 512; ++k) {
    const int64_t v = k < 64 ? r.targets[k % T] : static_cast<int64_t>(rng() % V);
    const int64_t d = static_cast<int64_t>(rng() % D);
    double s = 0;
    for (int64_t t = 0; t < T; ++t) s += grad[t * V + v] * static_cast<double>(r.hidden[t * D + d]);
    err = std::max(err, std::fabs(s - static_cast<double>(gpu_dW[v * D + d])));
    scale = std::max(scale, std::fabs(s));
  }
  const double loss_err = std::fabs(gpu_loss - m.loss) / std::max(1e-3, std::fabs(m.loss));
  std::printf("check step 0 against the CPU path (double): loss %.7g vs %.7g (rel %.2g), dW max rel err %.2g\n",
              gpu_loss, m.loss, loss_err, err / scale);
  return loss_err < 1e-4 && err <= 1e-3 * scale ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t B = 16, L = 64, G = 8, D = 256, V = 32768;
  int steps = 10;
  float lr = 0.5f;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--vocab")) V = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--hidden")) D = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--lr")) lr = static_cast<float>(std::atof(argv[i + 1]));
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("cuda_loop: no CUDA device; skipped\n");
    return 77;
  }
  const int64_t T = B * L;
  const cgrpo::Recipe recipe = cgrpo::paper_critique_grpo();  // the loss and the advantages
  const cgrpo::LossConfig& config = recipe.loss;

  cudaStream_t stream;
  cublasHandle_t blas;
  LOOP_CHECK_CUDA(cudaStreamCreate(&stream));
  LOOP_CHECK_CUBLAS(cublasCreate(&blas));
  LOOP_CHECK_CUBLAS(cublasSetStream(blas, stream));

  // Device memory, allocated once: W, dW, H, Z (logits, then dJ/dZ in place), per-token arrays, workspace.
  float *W, *dW, *H, *Z, *adv, *old_logp, *w_pg, *w_h;
  int32_t* targets;
  uint8_t *mask, *kinds;
  void* workspace;
  const size_t ws_bytes = std::max(cgrpo::cuda::fused_policy_loss_workspace_size(config, T, B),
                                   cgrpo::cuda::token_logprobs_workspace_size());
  LOOP_CHECK_CUDA(cudaMalloc(&W, V * D * sizeof(float)));
  LOOP_CHECK_CUDA(cudaMalloc(&dW, V * D * sizeof(float)));
  LOOP_CHECK_CUDA(cudaMalloc(&H, T * D * sizeof(float)));
  LOOP_CHECK_CUDA(cudaMalloc(&Z, T * V * sizeof(float)));
  for (float** p : {&adv, &old_logp, &w_pg, &w_h}) LOOP_CHECK_CUDA(cudaMalloc(p, T * sizeof(float)));
  LOOP_CHECK_CUDA(cudaMalloc(&targets, T * sizeof(int32_t)));
  LOOP_CHECK_CUDA(cudaMalloc(&mask, T));
  LOOP_CHECK_CUDA(cudaMalloc(&kinds, T));
  LOOP_CHECK_CUDA(cudaMalloc(&workspace, ws_bytes));

  std::mt19937_64 rng(2506);
  {
    std::vector<float> w0(V * D);
    std::normal_distribution<float> normal(0.f, 0.05f);
    for (float& w : w0) w = normal(rng);
    if (upload(W, w0, stream)) return 1;
  }
  cudaEvent_t start, stop;
  LOOP_CHECK_CUDA(cudaEventCreate(&start));
  LOOP_CHECK_CUDA(cudaEventCreate(&stop));
  std::printf("cuda_loop: T = %lld tokens (B %lld x L %lld), D = %lld, V = %lld\n", (long long)T, (long long)B,
              (long long)L, (long long)D, (long long)V);
  std::printf("step  loss        pg_loss     entropy  clipfrac  ms (loss kernel)\n");

  for (int step = 0; step < steps; ++step) {
    Rollout r;
    LOOP_CHECK(make_rollout(rng, recipe, B, L, G, D, V, r));
    if (upload(H, r.hidden, stream) || upload(targets, r.targets, stream) || upload(mask, r.mask, stream) ||
        upload(kinds, r.kinds, stream) || upload(adv, r.advantages, stream) || upload(w_pg, r.pg_weights, stream) ||
        upload(w_h, r.entropy_weights, stream))
      return 1;

    // Z = H W^T. Row-major [T, V] is column-major Z^T = W H^T with W^T (D x V, ld D) transposed.
    const float one = 1.f, zero = 0.f;
    LOOP_CHECK_CUBLAS(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, int(V), int(T), int(D), &one, W, int(D), H, int(D),
                                  &zero, Z, int(V)));

    // Old log-probs: a real trainer keeps them from the rollout policy; here the step is on-policy.
    LOOP_CHECK(cgrpo::cuda::token_logprobs(Z, T, V, 0, targets, config.temperature, old_logp, nullptr, workspace,
                                           ws_bytes, stream));
    std::vector<float> z_host, old_host;
    if (step == 0) {
      z_host.resize(T * V);
      old_host.resize(T);
      LOOP_CHECK_CUDA(cudaMemcpyAsync(z_host.data(), Z, T * V * sizeof(float), cudaMemcpyDeviceToHost, stream));
      LOOP_CHECK_CUDA(cudaMemcpyAsync(old_host.data(), old_logp, T * sizeof(float), cudaMemcpyDeviceToHost, stream));
    }

    // The fused loss: forward and backward in one pass over Z, the gradient written over Z.
    cgrpo::PolicyLossBatch<float, float> batch;
    batch.logits = Z;
    batch.num_tokens = T;
    batch.vocab_size = V;
    batch.target_ids = targets;
    batch.mask = mask;
    batch.kinds = kinds;
    batch.advantages = adv;
    batch.old_logp = old_logp;
    batch.pg_weights = w_pg;
    batch.entropy_weights = w_h;
    batch.layout = cgrpo::SequenceLayout::padded(B, L);
    cgrpo::LossMetrics metrics;
    cgrpo::PolicyLossOutputs<float, float> out;
    out.grad_logits = Z;  // in place
    out.metrics = &metrics;
    LOOP_CHECK_CUDA(cudaEventRecord(start, stream));
    LOOP_CHECK(cgrpo::cuda::fused_policy_loss(config, batch, out, nullptr, workspace, ws_bytes, stream));
    LOOP_CHECK_CUDA(cudaEventRecord(stop, stream));

    // dW = G^T H: column-major dW^T (D x V) = H^T (D x T) G (T x V), G^T stored as (V x T, ld V).
    LOOP_CHECK_CUBLAS(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, int(D), int(V), int(T), &one, H, int(D), Z, int(V),
                                  &zero, dW, int(D)));
    LOOP_CHECK(cgrpo::cuda::policy_loss_metrics(workspace, stream, &metrics));  // synchronizes
    float ms = 0;
    LOOP_CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    std::printf("%4d  %+.6f  %+.6f  %.4f   %.4f    %.3f\n", step, metrics.loss, metrics.pg_loss,
                metrics.entropy_mean, metrics.pg_clipfrac, ms);
    if (step == 0) {
      std::vector<float> dW_host(V * D);
      LOOP_CHECK_CUDA(cudaMemcpy(dW_host.data(), dW, V * D * sizeof(float), cudaMemcpyDeviceToHost));
      if (check_against_cpu(config, r, z_host, old_host, B, L, D, V, metrics.loss, dW_host)) {
        std::fprintf(stderr, "cuda_loop: step 0 does not match the CPU path\n");
        return 1;
      }
    }
    // SGD on the head: W -= lr dW.
    const float minus_lr = -lr;
    LOOP_CHECK_CUBLAS(cublasSaxpy(blas, int(V * D), &minus_lr, dW, 1, W, 1));
  }
  LOOP_CHECK_CUDA(cudaStreamSynchronize(stream));
  for (void* p : {(void*)W, (void*)dW, (void*)H, (void*)Z, (void*)adv, (void*)old_logp, (void*)w_pg, (void*)w_h,
                  (void*)targets, (void*)mask, (void*)kinds, workspace})
    cudaFree(p);
  cublasDestroy(blas);
  cudaStreamDestroy(stream);
  return 0;
}
