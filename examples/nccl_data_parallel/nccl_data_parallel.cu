// examples/nccl_data_parallel/nccl_data_parallel.cu: data-parallel Critique-GRPO over every visible GPU with NCCL.
// Responses are split across ranks with each group spread over several; group stats, normalizers and dW are all-reduced.
//
// One process drives all ranks (ncclCommInitAll), one rank per GPU; with one GPU it is one rank.
// Per step and rank r (its responses only):
//   host   group_partial_stats, aggregation_partials              -> device
//   NCCL   all-reduce SUM (counts, sums, sums of squares) and MAX (reward extrema, max length)
//   host   group_advantages_from_stats, aggregation_weights with the GLOBAL AggregationScale
//   GPU    Z_r = H_r W^T (cuBLAS), fused loss in place, dW_r = G_r^T H_r (cuBLAS)
//   NCCL   all-reduce SUM dW; every rank applies the same SGD step to its replica of W
// Step 0 is checked against the CPU path on the whole batch in double; exits 77 without a GPU.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/parallel/global_scale.hpp>
#include <cgrpo/parallel/group_stats.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "cgrpo/cuda/cgrpo_cuda.cuh"

namespace {

#define DP_CHECK_CUDA(call)                                                                         \
  do {                                                                                              \
    cudaError_t e_ = (call);                                                                        \
    if (e_ != cudaSuccess) {                                                                        \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));  \
      return 1;                                                                                     \
    }                                                                                               \
  } while (0)
#define DP_CHECK_CUBLAS(call)                                                                       \
  do {                                                                                              \
    cublasStatus_t s_ = (call);                                                                     \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                              \
      std::fprintf(stderr, "%s:%d: %s: cuBLAS status %d\n", __FILE__, __LINE__, #call, int(s_));   \
      return 1;                                                                                     \
    }                                                                                               \
  } while (0)
#define DP_CHECK_NCCL(call)                                                                         \
  do {                                                                                              \
    ncclResult_t r_ = (call);                                                                       \
    if (r_ != ncclSuccess) {                                                                        \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, ncclGetErrorString(r_));  \
      return 1;                                                                                     \
    }                                                                                               \
  } while (0)
#define DP_CHECK(status_expr)                                                                       \
  do {                                                                                              \
    const cgrpo::Status s_ = (status_expr);                                                         \
    if (!s_.ok()) {                                                                                 \
      std::fprintf(stderr, "%s:%d: cgrpo %s: %s\n", __FILE__, __LINE__,                            \
                   cgrpo::status_code_name(s_.code), s_.message);                                   \
      return 1;                                                                                     \
    }                                                                                               \
  } while (0)

// What one rank owns: its responses [r0, r1) (packed rows [t0, t1)), device buffers and handles.
struct Rank {
  int device = 0;
  int64_t r0 = 0, r1 = 0, t0 = 0, t1 = 0;
  cudaStream_t stream{};
  cublasHandle_t blas{};
  ncclComm_t comm{};
  float *W = nullptr, *dW = nullptr, *H = nullptr, *Z = nullptr;
  float *adv = nullptr, *old_logp = nullptr, *w_pg = nullptr, *w_h = nullptr;
  int32_t* targets = nullptr;
  uint8_t *mask = nullptr, *kinds = nullptr;
  double *sum_buf = nullptr, *max_buf = nullptr;  // all-reduce buffers (SUM, MAX)
  void* workspace = nullptr;
  size_t ws_bytes = 0;
};

// The whole batch on the host: B responses of random lengths (packed), G groups whose
// members are interleaved (group of response i: i % G), so every group spans the ranks.
struct Batch {
  std::vector<int64_t> offsets;
  std::vector<int32_t> group_ids, targets;
  std::vector<uint8_t> mask, kinds;
  std::vector<double> rewards;
  std::vector<float> hidden;
};

Batch make_batch(std::mt19937_64& rng, int64_t B, int64_t G, int64_t max_len, int64_t D, int64_t V) {
  Batch b;
  std::uniform_int_distribution<int64_t> length(1, max_len);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(V - 1));
  std::normal_distribution<float> normal(0.f, 1.f);
  b.offsets.push_back(0);
  for (int64_t i = 0; i < B; ++i) {
    const int64_t n = length(rng);
    int64_t good = 0;
    for (int64_t k = 0; k < n; ++k) {
      b.targets.push_back(token(rng));
      b.mask.push_back(k + 1 < n || n == 1 ? 1 : (rng() % 4 != 0));  // a few masked final tokens
      b.kinds.push_back(i < G ? cgrpo::kRefinement : cgrpo::kInitial);  // one refinement per group
      good += b.targets.back() < V / 2;
    }
    b.offsets.push_back(b.offsets.back() + n);
    b.group_ids.push_back(static_cast<int32_t>(i % G));
    b.rewards.push_back(2 * good > n ? 1.0 : 0.0);
  }
  b.hidden.resize(b.offsets.back() * D);
  for (float& h : b.hidden) h = normal(rng);
  return b;
}

template <typename T>
int upload(T* device, const T* host, size_t n, cudaStream_t stream) {
  DP_CHECK_CUDA(cudaMemcpyAsync(device, host, n * sizeof(T), cudaMemcpyHostToDevice, stream));
  return 0;
}

// The whole batch on the CPU in double: full-batch advantages and normalizers, J and sampled dW.
int check_against_cpu(const cgrpo::Recipe& recipe, const Batch& b, int64_t G, int64_t D, int64_t V,
                      const std::vector<float>& logits, const std::vector<float>& old_logp, double loss,
                      const std::vector<float>& dW) {
  const cgrpo::LossConfig& c = recipe.loss;
  const int64_t B = static_cast<int64_t>(b.rewards.size()), T = b.offsets.back();
  const cgrpo::SequenceLayout layout = cgrpo::SequenceLayout::packed(B, b.offsets.data());
  std::vector<double> adv(B), adv_tok(T), w_pg(T), w_h(T), grad(T * V);
  DP_CHECK(cgrpo::group_advantages(recipe.advantage, cgrpo::GroupAssignment{B, b.group_ids.data(), G}, b.rewards.data(),
                                   nullptr, adv.data()));
  cgrpo::broadcast_to_tokens(layout, adv.data(), adv_tok.data());
  DP_CHECK(cgrpo::aggregation_weights(c, cgrpo::LossTerm::policy, layout, b.mask.data(), {}, w_pg.data()));
  DP_CHECK(cgrpo::aggregation_weights(c, cgrpo::LossTerm::entropy, layout, b.mask.data(), {}, w_h.data()));
  const std::vector<double> z(logits.begin(), logits.end()), old(old_logp.begin(), old_logp.end());
  cgrpo::PolicyLossBatch<double> batch;
  batch.logits = z.data();
  batch.num_tokens = T;
  batch.vocab_size = V;
  batch.target_ids = b.targets.data();
  batch.mask = b.mask.data();
  batch.kinds = b.kinds.data();
  batch.advantages = adv_tok.data();
  batch.old_logp = old.data();
  batch.pg_weights = w_pg.data();
  batch.entropy_weights = w_h.data();
  batch.layout = layout;
  cgrpo::LossMetrics m;
  cgrpo::PolicyLossOutputs<double> out;
  out.grad_logits = grad.data();
  out.metrics = &m;
  DP_CHECK(cgrpo::cpu::fused_policy_loss(c, batch, out));
  std::mt19937_64 rng(1);
  double err = 0, scale = 0;
  for (int k = 0; k < 512; ++k) {
    const int64_t v = k < 64 ? b.targets[k % T] : static_cast<int64_t>(rng() % V), d = static_cast<int64_t>(rng() % D);
    double s = 0;
    for (int64_t t = 0; t < T; ++t) s += grad[t * V + v] * static_cast<double>(b.hidden[t * D + d]);
    err = std::max(err, std::fabs(s - static_cast<double>(dW[v * D + d])));
    scale = std::max(scale, std::fabs(s));
  }
  const double loss_err = std::fabs(loss - m.loss) / std::max(1e-3, std::fabs(m.loss));
  std::printf("check step 0 against the whole batch on the CPU (double): loss %.7g vs %.7g (rel %.2g), "
              "dW max rel err %.2g\n", loss, m.loss, loss_err, err / scale);
  return loss_err < 1e-4 && err <= 1e-3 * scale ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t B = 32, G = 4, max_len = 48, D = 128, V = 16384;
  int steps = 5, ranks = 0;
  float lr = 0.5f;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--ranks")) ranks = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--vocab")) V = std::atoll(argv[i + 1]);
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("nccl_data_parallel: no CUDA device; skipped\n");
    return 77;
  }
  const int k = ranks > 0 ? std::min(ranks, devices) : devices;
  const cgrpo::Recipe recipe = cgrpo::paper_critique_grpo();  // the loss and the advantages
  const cgrpo::LossConfig& config = recipe.loss;
  const int64_t kSum = G * cgrpo::parallel::kGroupSumFields + 2;      // + token_count, sequence_count
  const int64_t kMax = G * cgrpo::parallel::kGroupExtremaFields + 1;  // + max_length

  std::vector<Rank> rank(k);
  std::vector<int> device_list(k);
  for (int r = 0; r < k; ++r) device_list[r] = rank[r].device = r;
  std::vector<ncclComm_t> comms(k);
  DP_CHECK_NCCL(ncclCommInitAll(comms.data(), k, device_list.data()));
  std::mt19937_64 rng(2506);
  std::vector<float> w0(V * D);
  {
    std::normal_distribution<float> normal(0.f, 0.05f);
    for (float& w : w0) w = normal(rng);
  }
  const int64_t max_tokens = B * max_len;  // per-rank buffers sized for the worst case
  for (int r = 0; r < k; ++r) {
    Rank& R = rank[r];
    R.comm = comms[r];
    DP_CHECK_CUDA(cudaSetDevice(R.device));
    DP_CHECK_CUDA(cudaStreamCreate(&R.stream));
    DP_CHECK_CUBLAS(cublasCreate(&R.blas));
    DP_CHECK_CUBLAS(cublasSetStream(R.blas, R.stream));
    R.ws_bytes = std::max(cgrpo::cuda::fused_policy_loss_workspace_size(config, max_tokens, B),
                          cgrpo::cuda::token_logprobs_workspace_size());
    DP_CHECK_CUDA(cudaMalloc(&R.W, V * D * sizeof(float)));
    DP_CHECK_CUDA(cudaMalloc(&R.dW, V * D * sizeof(float)));
    DP_CHECK_CUDA(cudaMalloc(&R.H, max_tokens * D * sizeof(float)));
    DP_CHECK_CUDA(cudaMalloc(&R.Z, max_tokens * V * sizeof(float)));
    for (float** p : {&R.adv, &R.old_logp, &R.w_pg, &R.w_h}) DP_CHECK_CUDA(cudaMalloc(p, max_tokens * sizeof(float)));
    DP_CHECK_CUDA(cudaMalloc(&R.targets, max_tokens * sizeof(int32_t)));
    DP_CHECK_CUDA(cudaMalloc(&R.mask, max_tokens));
    DP_CHECK_CUDA(cudaMalloc(&R.kinds, max_tokens));
    DP_CHECK_CUDA(cudaMalloc(&R.sum_buf, kSum * sizeof(double)));
    DP_CHECK_CUDA(cudaMalloc(&R.max_buf, kMax * sizeof(double)));
    DP_CHECK_CUDA(cudaMalloc(&R.workspace, R.ws_bytes));
    if (upload(R.W, w0.data(), w0.size(), R.stream)) return 1;  // identical replicas
  }
  std::printf("nccl_data_parallel: %d rank(s), B = %lld responses in %lld groups, D = %lld, V = %lld\n", k,
              (long long)B, (long long)G, (long long)D, (long long)V);
  std::printf("step  loss (sum over ranks)  entropy (rank 0)\n");

  for (int step = 0; step < steps; ++step) {
    const Batch b = make_batch(rng, B, G, max_len, D, V);
    // 1. Local partials on the host, into each rank's all-reduce buffers.
    std::vector<std::vector<double>> sums(k, std::vector<double>(kSum)), maxes(k, std::vector<double>(kMax));
    for (int r = 0; r < k; ++r) {
      Rank& R = rank[r];
      R.r0 = B * r / k;
      R.r1 = B * (r + 1) / k;
      R.t0 = b.offsets[R.r0];
      R.t1 = b.offsets[R.r1];
      const cgrpo::GroupAssignment local{R.r1 - R.r0, b.group_ids.data() + R.r0, G};
      DP_CHECK(cgrpo::parallel::group_partial_stats(local, b.rewards.data() + R.r0, 0.0, sums[r].data(), maxes[r].data()));
      std::vector<int64_t> local_offsets(b.offsets.begin() + R.r0, b.offsets.begin() + R.r1 + 1);
      for (int64_t& o : local_offsets) o -= R.t0;
      cgrpo::parallel::AggregationPartials p;
      DP_CHECK(cgrpo::parallel::aggregation_partials(cgrpo::SequenceLayout::packed(R.r1 - R.r0, local_offsets.data()),
                                                     b.mask.data() + R.t0, &p));
      sums[r][kSum - 2] = p.token_count;
      sums[r][kSum - 1] = p.sequence_count;
      maxes[r][kMax - 1] = p.max_length;
      DP_CHECK_CUDA(cudaSetDevice(R.device));
      if (upload(R.sum_buf, sums[r].data(), kSum, R.stream) || upload(R.max_buf, maxes[r].data(), kMax, R.stream))
        return 1;
    }
    // 2. The two all-reduces of the statistics (one NCCL group: one launch per rank).
    DP_CHECK_NCCL(ncclGroupStart());
    for (Rank& R : rank) {
      DP_CHECK_NCCL(ncclAllReduce(R.sum_buf, R.sum_buf, kSum, ncclDouble, ncclSum, R.comm, R.stream));
      DP_CHECK_NCCL(ncclAllReduce(R.max_buf, R.max_buf, kMax, ncclDouble, ncclMax, R.comm, R.stream));
    }
    DP_CHECK_NCCL(ncclGroupEnd());

    // 3. Each rank: advantages and weights from the global statistics, then the loss on the GPU.
    std::vector<float> z_all, old_all;
    if (step == 0) {
      z_all.resize(b.offsets.back() * V);
      old_all.resize(b.offsets.back());
    }
    std::vector<cgrpo::LossMetrics> metrics(k);
    for (int r = 0; r < k; ++r) {
      Rank& R = rank[r];
      DP_CHECK_CUDA(cudaSetDevice(R.device));
      DP_CHECK_CUDA(cudaMemcpyAsync(sums[r].data(), R.sum_buf, kSum * sizeof(double), cudaMemcpyDeviceToHost, R.stream));
      DP_CHECK_CUDA(cudaMemcpyAsync(maxes[r].data(), R.max_buf, kMax * sizeof(double), cudaMemcpyDeviceToHost, R.stream));
      DP_CHECK_CUDA(cudaStreamSynchronize(R.stream));
      const int64_t Br = R.r1 - R.r0, Tr = R.t1 - R.t0;
      const cgrpo::GroupAssignment local{Br, b.group_ids.data() + R.r0, G};
      std::vector<float> adv(Br), adv_tok(Tr), w_pg(Tr), w_h(Tr);
      std::vector<float> rewards(b.rewards.begin() + R.r0, b.rewards.begin() + R.r1);
      DP_CHECK(cgrpo::parallel::group_advantages_from_stats(recipe.advantage.estimator, local, rewards.data(),
                                                            sums[r].data(), maxes[r].data(), 0.0, recipe.advantage.eps,
                                                            adv.data()));
      cgrpo::parallel::AggregationPartials global;
      global.token_count = sums[r][kSum - 2];
      global.sequence_count = sums[r][kSum - 1];
      global.max_length = maxes[r][kMax - 1];
      std::vector<int64_t> local_offsets(b.offsets.begin() + R.r0, b.offsets.begin() + R.r1 + 1);
      for (int64_t& o : local_offsets) o -= R.t0;
      const cgrpo::SequenceLayout layout = cgrpo::SequenceLayout::packed(Br, local_offsets.data());
      cgrpo::broadcast_to_tokens(layout, adv.data(), adv_tok.data());
      DP_CHECK(cgrpo::aggregation_weights(config, cgrpo::LossTerm::policy, layout, b.mask.data() + R.t0,
                                          global.to_scale(), w_pg.data()));
      DP_CHECK(cgrpo::aggregation_weights(config, cgrpo::LossTerm::entropy, layout, b.mask.data() + R.t0,
                                          global.to_scale(), w_h.data()));
      if (upload(R.H, b.hidden.data() + R.t0 * D, Tr * D, R.stream) ||
          upload(R.targets, b.targets.data() + R.t0, Tr, R.stream) ||
          upload(R.mask, b.mask.data() + R.t0, Tr, R.stream) || upload(R.kinds, b.kinds.data() + R.t0, Tr, R.stream) ||
          upload(R.adv, adv_tok.data(), Tr, R.stream) || upload(R.w_pg, w_pg.data(), Tr, R.stream) ||
          upload(R.w_h, w_h.data(), Tr, R.stream))
        return 1;
      if (Tr == 0) {
        DP_CHECK_CUDA(cudaMemsetAsync(R.dW, 0, V * D * sizeof(float), R.stream));
        continue;
      }
      const float one = 1.f, zero = 0.f;
      DP_CHECK_CUBLAS(cublasSgemm(R.blas, CUBLAS_OP_T, CUBLAS_OP_N, int(V), int(Tr), int(D), &one, R.W, int(D), R.H,
                                  int(D), &zero, R.Z, int(V)));
      DP_CHECK(cgrpo::cuda::token_logprobs(R.Z, Tr, V, 0, R.targets, config.temperature, R.old_logp, nullptr,
                                           R.workspace, R.ws_bytes, R.stream));
      if (step == 0) {
        DP_CHECK_CUDA(cudaMemcpyAsync(z_all.data() + R.t0 * V, R.Z, Tr * V * sizeof(float), cudaMemcpyDeviceToHost,
                                      R.stream));
        DP_CHECK_CUDA(cudaMemcpyAsync(old_all.data() + R.t0, R.old_logp, Tr * sizeof(float), cudaMemcpyDeviceToHost,
                                      R.stream));
      }
      cgrpo::PolicyLossBatch<float, float> batch;
      batch.logits = R.Z;
      batch.num_tokens = Tr;
      batch.vocab_size = V;
      batch.target_ids = R.targets;
      batch.mask = R.mask;
      batch.kinds = R.kinds;
      batch.advantages = R.adv;
      batch.old_logp = R.old_logp;
      batch.pg_weights = R.w_pg;
      batch.entropy_weights = R.w_h;
      batch.layout = layout;
      cgrpo::PolicyLossOutputs<float, float> out;
      out.grad_logits = R.Z;  // in place
      out.metrics = &metrics[r];
      DP_CHECK(cgrpo::cuda::fused_policy_loss(config, batch, out, nullptr, R.workspace, R.ws_bytes, R.stream));
      DP_CHECK_CUBLAS(cublasSgemm(R.blas, CUBLAS_OP_N, CUBLAS_OP_T, int(D), int(V), int(Tr), &one, R.H, int(D), R.Z,
                                  int(V), &zero, R.dW, int(D)));
      DP_CHECK(cgrpo::cuda::policy_loss_metrics(R.workspace, R.stream, &metrics[r]));
    }
    // 4. dW summed over the ranks: with the global normalizers this is the full-batch gradient.
    DP_CHECK_NCCL(ncclGroupStart());
    for (Rank& R : rank)
      DP_CHECK_NCCL(ncclAllReduce(R.dW, R.dW, V * D, ncclFloat, ncclSum, R.comm, R.stream));
    DP_CHECK_NCCL(ncclGroupEnd());
    double loss = 0;
    for (int r = 0; r < k; ++r)
      if (rank[r].t1 > rank[r].t0) loss += metrics[r].loss;
    std::printf("%4d  %+.6f              %.4f\n", step, loss, metrics[0].entropy_mean);
    if (step == 0) {
      std::vector<float> dW(V * D);
      DP_CHECK_CUDA(cudaSetDevice(rank[0].device));
      DP_CHECK_CUDA(cudaMemcpyAsync(dW.data(), rank[0].dW, V * D * sizeof(float), cudaMemcpyDeviceToHost,
                                    rank[0].stream));
      DP_CHECK_CUDA(cudaStreamSynchronize(rank[0].stream));
      if (check_against_cpu(recipe, b, G, D, V, z_all, old_all, loss, dW)) {
        std::fprintf(stderr, "nccl_data_parallel: step 0 does not match the whole batch on the CPU\n");
        return 1;
      }
    }
    const float minus_lr = -lr;
    for (Rank& R : rank) {
      DP_CHECK_CUDA(cudaSetDevice(R.device));
      DP_CHECK_CUBLAS(cublasSaxpy(R.blas, int(V * D), &minus_lr, R.dW, 1, R.W, 1));
    }
  }
  for (Rank& R : rank) {
    cudaSetDevice(R.device);
    cudaStreamSynchronize(R.stream);
    for (void* p : {(void*)R.W, (void*)R.dW, (void*)R.H, (void*)R.Z, (void*)R.adv, (void*)R.old_logp, (void*)R.w_pg,
                    (void*)R.w_h, (void*)R.targets, (void*)R.mask, (void*)R.kinds, (void*)R.sum_buf,
                    (void*)R.max_buf, R.workspace})
      cudaFree(p);
    cublasDestroy(R.blas);
    ncclCommDestroy(R.comm);
    cudaStreamDestroy(R.stream);
  }
  return 0;
}
