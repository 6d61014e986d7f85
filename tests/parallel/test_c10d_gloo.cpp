// Data and vocabulary parallelism over a real process group: LibTorch's c10d ProcessGroupGloo.
//
// The test binary starts N = 2 and 4 copies of itself (posix_spawn, `--c10d-worker <rank> ...`),
// which rendezvous over a c10d FileStore in a fresh temporary directory and create a
// ProcessGroupGloo on 127.0.0.1. Every worker builds the same whole batches from the run's seed
// and holds its shard; every reduction of the recipe in docs/embedding.md goes through the
// process group:
//   data parallel   group_partial_stats -> all-reduce SUM / MAX -> group_advantages_from_stats
//                   (reinforce_pp_baseline: + whitening_partial_stats -> SUM -> whiten_from_stats),
//                   aggregation_partials -> SUM / MAX -> to_scale, the fused loss on the shard,
//                   metrics_to_sums -> SUM -> metrics_from_sums, the shard's rows of dJ/dz and its
//                   dW = G^T h -> SUM.
//   vocab parallel  k = 1, 2, 3 (and N) column shards on sub-groups of k ranks (a PrefixStore per
//                   group): phase-1 row statistics -> MAX, row_stats_rebase, SUM (or all-gather +
//                   row_stats_merge) -> phase 2; dJ/dz columns -> SUM. The LM-head variant
//                   (vocab_parallel_linear.hpp): W's rows split, dJ/dh -> SUM, dJ/dW, dJ/db.
// Each worker writes what it holds after the reductions to a file; the parent process computes the
// one-process run over the whole batch and compares (1e-12 relative in double). Self-checks: a run
// in which one rank's gradient contribution is dropped, and one in which a reduction is applied
// twice, must FAIL the same comparison; a worker that fails is reported with its exit code (and the
// others are stopped), a worker that hangs is stopped at the timeout.
//
// CGRPO_C10D_BACKEND=nccl (for scripts/gpu-check) selects ProcessGroupNCCL, one GPU per rank, when
// the LibTorch found at build time has it (CGRPO_C10D_NCCL); otherwise the program exits 77 (skip).
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#if defined(CGRPO_C10D_NCCL)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

// LibTorch's headers bring glog, whose CHECK aborts the process: Catch2's CHECK must be the one
// defined last (catch.hpp after LibTorch, glog's macro undefined first).
#undef CHECK
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/parallel/global_scale.hpp>
#include <cgrpo/parallel/group_stats.hpp>
#include <cgrpo/parallel/metrics_reduce.hpp>
#include <cgrpo/parallel/vocab_parallel.hpp>
#include <cgrpo/parallel/vocab_parallel_linear.hpp>

#include "batch.hpp"
#include "reference.hpp"
#include "test_seed.hpp"

extern char** environ;

namespace {

constexpr double kRel = 1e-12;                                // every comparison, in double
constexpr std::chrono::seconds kCollectiveTimeout{30};        // a peer that died fails a collective
constexpr std::chrono::milliseconds kRunTimeout{120 * 1000};  // the parent stops a run's workers
constexpr int kWorkerErrorExit = 2;                           // an exception in a worker
constexpr int kInjectedFailureExit = 3;                       // Fault::fail
constexpr int kSkipExit = 77;                                 // CTest's SKIP_RETURN_CODE

// ------------------------------------------------------------------------------------------------
// The process group: all-reduce and all-gather of double buffers on the host.

enum class Backend { gloo, nccl };

// CGRPO_C10D_BACKEND: unset or "gloo" (CPU), "nccl" (GPU, one device per rank). Anything else is an
// error with its name.
bool backend_from_env(Backend* out, std::string* error) {
  const char* env = std::getenv("CGRPO_C10D_BACKEND");
  const std::string name = env ? env : "gloo";
  if (name == "gloo") {
    *out = Backend::gloo;
    return true;
  }
  if (name == "nccl") {
#if defined(CGRPO_C10D_NCCL)
    *out = Backend::nccl;
    return true;
#else
    *error = "CGRPO_C10D_BACKEND=nccl, but this build has no ProcessGroupNCCL (LibTorch without CUDA)";
    return false;
#endif
  }
  *error = "CGRPO_C10D_BACKEND must be gloo or nccl, got '" + name + "'";
  return false;
}

class Group {
 public:
  Group(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, Backend backend)
      : rank_(rank), size_(size), backend_(backend) {
    if (backend == Backend::gloo) {
      auto options = c10d::ProcessGroupGloo::Options::create();
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      options->timeout = kCollectiveTimeout;
      pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
    } else {
#if defined(CGRPO_C10D_NCCL)
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = kCollectiveTimeout;
      pg_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, options);
      device_ = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(rank));
#else
      throw std::runtime_error("ProcessGroupNCCL is not in this build");
#endif
    }
  }

  int rank() const { return rank_; }
  int size() const { return size_; }

  // x[0, n) <- op over the ranks, in place. Every rank must call with the same n and op.
  void all_reduce(double* x, int64_t n, c10d::ReduceOp::RedOpType op, const char* what) {
    if (n == 0) return;
    at::Tensor host = at::from_blob(x, {n}, at::TensorOptions().dtype(at::kDouble));
    std::vector<at::Tensor> tensors{on_device(host)};
    c10d::AllreduceOptions options;
    options.reduceOp = op;
    wait(pg_->allreduce(tensors, options), what);
    if (backend_ == Backend::nccl) host.copy_(tensors[0]);
  }

  // out[r * n, (r + 1) * n) <- rank r's x[0, n).
  void all_gather(const double* x, int64_t n, double* out, const char* what) {
    if (n == 0) return;
    at::Tensor in = at::from_blob(const_cast<double*>(x), {n}, at::TensorOptions().dtype(at::kDouble));
    at::Tensor gathered = at::from_blob(out, {size_, n}, at::TensorOptions().dtype(at::kDouble));
    std::vector<at::Tensor> inputs{on_device(in)};
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int r = 0; r < size_; ++r) outputs[0].push_back(on_device(gathered[r]));
    wait(pg_->allgather(outputs, inputs), what);
    if (backend_ == Backend::nccl)
      for (int r = 0; r < size_; ++r) gathered[r].copy_(outputs[0][r]);
  }

 private:
  at::Tensor on_device(const at::Tensor& host) const {
    if (backend_ == Backend::gloo) return host;
    return host.to(device_);
  }
  void wait(const c10::intrusive_ptr<c10d::Work>& work, const char* what) const {
    // wait() throws (the peer's failure, the timeout); false is a failure it did not throw for.
    if (!work->wait())
      throw std::runtime_error(std::string("collective '") + what + "' did not complete (rank " +
                               std::to_string(rank_) + " of " + std::to_string(size_) + ")");
  }

  int rank_ = 0, size_ = 0;
  Backend backend_ = Backend::gloo;
  at::Device device_{at::kCPU};
  c10::intrusive_ptr<c10d::ProcessGroup> pg_;
};

constexpr auto kSum = c10d::ReduceOp::SUM;
constexpr auto kMax = c10d::ReduceOp::MAX;

// A library error in a worker: the expression and the Status, as an exception (the worker exits 2).
void check(const cgrpo::Status& s, const char* what) {
  if (!s.ok())
    throw std::runtime_error(std::string(what) + ": " + cgrpo::status_code_name(s.code) + ": " + s.message);
}
#define CGRPO_WORKER_CHECK(expr) check((expr), #expr)

// ------------------------------------------------------------------------------------------------
// What a worker writes and the parent reads: named arrays of doubles in one file.

using Fields = std::map<std::string, std::vector<double>>;

void write_fields(const std::string& path, const Fields& fields) {
  std::ofstream f(path, std::ios::binary);
  auto put = [&](const void* p, size_t n) { f.write(static_cast<const char*>(p), static_cast<std::streamsize>(n)); };
  const uint64_t count = fields.size();
  put(&count, sizeof count);
  for (const auto& [name, values] : fields) {
    const uint64_t name_size = name.size(), size = values.size();
    put(&name_size, sizeof name_size);
    put(name.data(), name.size());
    put(&size, sizeof size);
    put(values.data(), values.size() * sizeof(double));
  }
  f.close();
  if (!f) throw std::runtime_error("cannot write " + path);
}

bool read_fields(const std::string& path, Fields* fields, std::string* error) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    *error = "no result file " + path;
    return false;
  }
  auto get = [&](void* p, size_t n) { return static_cast<bool>(f.read(static_cast<char*>(p), static_cast<std::streamsize>(n))); };
  uint64_t count = 0;
  if (!get(&count, sizeof count) || count > 64) {
    *error = "bad header in " + path;
    return false;
  }
  for (uint64_t i = 0; i < count; ++i) {
    uint64_t name_size = 0, size = 0;
    std::string name;
    if (!get(&name_size, sizeof name_size) || name_size > 64) break;
    name.resize(name_size);
    if (!get(&name[0], name_size) || !get(&size, sizeof size) || size > (uint64_t{1} << 24)) break;
    std::vector<double> values(size);
    if (!get(values.data(), size * sizeof(double))) break;
    (*fields)[name] = std::move(values);
  }
  if (fields->size() != count) {
    *error = "truncated result file " + path;
    return false;
  }
  return true;
}

// The metrics that metrics_reduce.hpp carries, in a fixed order.
const char* const kMetricNames[] = {"loss",         "pg_loss",           "pg_loss_initial", "pg_loss_refinement",
                                    "entropy_loss", "kl_loss",           "pg_clipfrac",     "pg_clipfrac_lower",
                                    "ppo_kl",       "entropy_mean",      "kl_mean",         "refinement_prob_mean",
                                    "ratio_mean",   "num_valid_tokens",  "num_initial_tokens",
                                    "num_refinement_tokens"};
constexpr int kNumMetrics = static_cast<int>(sizeof kMetricNames / sizeof kMetricNames[0]);

std::vector<double> metric_values(const cgrpo::LossMetrics& m) {
  return {m.loss,         m.pg_loss,
          m.pg_loss_initial, m.pg_loss_refinement,
          m.entropy_loss, m.kl_loss,
          m.pg_clipfrac,  m.pg_clipfrac_lower,
          m.ppo_kl,       m.entropy_mean,
          m.kl_mean,      m.refinement_prob_mean,
          m.ratio_mean,   static_cast<double>(m.num_valid_tokens),
          static_cast<double>(m.num_initial_tokens), static_cast<double>(m.num_refinement_tokens)};
}

// The size each metric is made of (ref::Magnitudes): the `scale` of its comparison. Fractions of
// counts: 1; counts: exact.
std::vector<double> metric_scales(const ref::Magnitudes& g) {
  return {g.loss, g.pg, g.pg_initial, g.pg_refinement, g.entropy_agg, g.kl_agg, 1.0, 1.0,
          g.ppo_kl, g.entropy_mean, g.kl_mean, g.prob_mean, g.ratio_mean, 0.0, 0.0, 0.0};
}

// ------------------------------------------------------------------------------------------------
// The cases, the same in every process: configs, then batches drawn from the run's seed.

std::mt19937_64 case_rng(uint64_t seed, uint64_t kind, uint64_t index) {
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), static_cast<uint32_t>(kind),
                    static_cast<uint32_t>(index)};
  return std::mt19937_64(seq);
}

struct DpCase {
  std::string name;
  cgrpo::Recipe recipe;
  bool caller_weights = false;   // aggregation_weights with the global scale, or batch.scale (the loss forms them)
  bool split_groups = true;      // a group's responses on several ranks, or whole groups per rank
  bool faults = false;           // also write the dropped-rank and reduced-twice variants
  bool empty_last_rank = false;  // the last rank holds no response (it still joins every collective)
};

std::vector<DpCase> dp_cases() {
  using cgrpo::Aggregation;
  struct Convention {
    const char* name;
    cgrpo::AggregationConvention conv;
    double mean_eps;
  };
  const Convention conventions[] = {
      {"paper", cgrpo::AggregationConvention{}, 0.0},
      {"verl_engine", cgrpo::verl_aggregation(), 1e-8},
      {"verl_legacy_dp_actor", cgrpo::verl_aggregation(cgrpo::VerlActor::legacy_dp_actor), 1e-8},
      {"trl", cgrpo::trl_aggregation(), 0.0},
  };
  const Aggregation modes[] = {Aggregation::token_mean, Aggregation::seq_mean_token_sum,
                               Aggregation::seq_mean_token_mean, Aggregation::seq_mean_token_sum_norm,
                               Aggregation::token_sum};
  const cgrpo::AdvantageEstimator estimators[] = {
      cgrpo::AdvantageEstimator::grpo, cgrpo::AdvantageEstimator::grpo_no_std, cgrpo::AdvantageEstimator::rloo,
      cgrpo::AdvantageEstimator::reinforce_pp_baseline};
  std::vector<DpCase> cases;
  int i = 0;
  for (const Convention& conv : conventions)
    for (int m = 0; m < 5; ++m, ++i) {
      DpCase c;
      c.name = std::string(conv.name) + "/" + cgrpo::to_string(modes[m]);
      cgrpo::AdvantageConfig& a = c.recipe.advantage;
      a.estimator = estimators[i % 4];
      a.eps = 1e-6;
      a.whiten_count_eps = conv.mean_eps;  // verl's masked_whiten N + 1e-8 with verl's conventions
      cgrpo::LossConfig& l = c.recipe.loss;
      l.policy.loss = cgrpo::PolicyLoss::ppo_clip;
      l.ratio.dual_clip = i % 2 == 0;
      l.aggregation.policy = modes[m];
      l.aggregation.entropy = modes[(m + 2) % 5];
      l.aggregation.kl = modes[(m + 1) % 5];
      l.aggregation.convention = conv.conv;
      l.entropy.coef = 0.01;
      l.kl.estimator = cgrpo::KlEstimator::k3;
      l.kl.coef = 0.05;
      l.metrics.mean_eps = conv.mean_eps;
      c.name += std::string(" (") + cgrpo::to_string(a.estimator) + ")";
      c.caller_weights = i % 2 == 1;
      c.split_groups = i % 3 != 0;
      c.faults = i == 1;
      cases.push_back(c);
    }
  // The peers' own recipes, by name.
  const char* presets[] = {"paper/critique_grpo", "verl/grpo", "verl/gspo", "verl/dr_grpo",
                           "trl/grpo",            "trl/dapo",  "trl/bnpo",  "trl/dr_grpo"};
  for (const char* name : presets) {
    DpCase c;
    c.name = name;
    check(cgrpo::preset(name, &c.recipe), name);
    c.caller_weights = i % 2 == 1;
    c.split_groups = i % 3 != 0;
    c.faults = std::string(name) == "verl/grpo";
    cases.push_back(c);
    ++i;
    if (std::string(name) == "verl/grpo") {  // and under verl's legacy dp_actor
      DpCase legacy = c;
      legacy.name = "verl/grpo under VerlActor::legacy_dp_actor";
      legacy.recipe = cgrpo::verl_with_actor(c.recipe, cgrpo::VerlActor::legacy_dp_actor);
      legacy.faults = false;
      cases.push_back(legacy);
      ++i;
    }
  }
  DpCase empty = cases[0];
  empty.name = "paper/token-mean, the last rank empty";
  empty.empty_last_rank = true;
  empty.faults = false;
  cases.push_back(empty);
  return cases;
}

// The whole batch of a data-parallel case: G ragged groups, rewards, and a hidden state per token
// for dW = (dJ/dz)^T h (the LM head's gradient that a trainer all-reduces).
struct DpBatch {
  ref::Batch full;
  int64_t G = 0, D = 5;
  std::vector<int32_t> group_ids;
  std::vector<int64_t> group_starts;  // whole groups: response index where each group begins (+ B)
  std::vector<double> rewards;
  std::vector<int64_t> token_counts;  // valid tokens per response
  std::vector<double> hidden;         // [T, D]
};

DpBatch make_dp_batch(uint64_t seed, int index, const DpCase& c) {
  std::mt19937_64 rng = case_rng(seed, 1, static_cast<uint64_t>(index));
  DpBatch b;
  b.G = 5 + static_cast<int64_t>(rng() % 3);
  for (int64_t g = 0; g < b.G; ++g) {
    b.group_starts.push_back(static_cast<int64_t>(b.group_ids.size()));
    const int64_t n = 1 + static_cast<int64_t>(rng() % 4);
    for (int64_t k = 0; k < n; ++k) b.group_ids.push_back(static_cast<int32_t>(g));
  }
  // At least 6 responses (4 ranks with one each, and some to spare): the last group grows.
  while (b.group_ids.size() < 6) b.group_ids.push_back(static_cast<int32_t>(b.G - 1));
  const int64_t n_resp = static_cast<int64_t>(b.group_ids.size());
  b.group_starts.push_back(n_resp);
  if (c.split_groups) std::shuffle(b.group_ids.begin(), b.group_ids.end(), rng);  // members on several ranks
  b.full = ref::random_batch(rng, n_resp, 9, 19, 1);
  // Two responses with no valid token (verl's B+ counts them out), never the last one: a rank's
  // dropped contribution must be visible.
  for (int64_t i : {int64_t{1}, n_resp / 2})
    for (int64_t t = b.full.begin(i); t < b.full.end(i); ++t) b.full.mask[t] = 0;
  ref::avoid_kinks(b.full, c.recipe.loss, rng);
  // Rewards by group: 0/1, graded in quarters (partial credit), or all equal (A = 0 by the extrema).
  std::vector<int> style(b.G);
  for (auto& s : style) s = static_cast<int>(rng() % 3);
  for (int64_t i = 0; i < n_resp; ++i) {
    const int s = style[b.group_ids[i]];
    b.rewards.push_back(s == 0 ? static_cast<double>(rng() % 2) : s == 1 ? 0.25 * static_cast<double>(rng() % 5) : 1.0);
  }
  for (int64_t i = 0; i < n_resp; ++i) {
    int64_t n = 0;
    for (int64_t t = b.full.begin(i); t < b.full.end(i); ++t) n += b.full.mask[t] != 0;
    b.token_counts.push_back(n);
  }
  std::normal_distribution<double> normal(0.0, 1.0);
  b.hidden.resize(static_cast<size_t>(b.full.T * b.D));
  for (double& h : b.hidden) h = normal(rng);
  return b;
}

// Response ranges [cuts[r], cuts[r + 1]) of `world` ranks: uneven, every rank at least one response
// (whole groups: cuts at group boundaries), or the last rank none.
std::vector<int64_t> dp_cuts(const DpBatch& b, const DpCase& c, int world, uint64_t seed, int index) {
  std::mt19937_64 rng = case_rng(seed, 2, static_cast<uint64_t>(index * 16 + world));
  const int holders = c.empty_last_rank ? world - 1 : world;
  const int64_t B = b.full.B;
  std::vector<int64_t> candidates;
  if (c.split_groups) {
    for (int64_t i = 1; i < B; ++i) candidates.push_back(i);
  } else {
    for (size_t g = 1; g + 1 < b.group_starts.size(); ++g) candidates.push_back(b.group_starts[g]);
  }
  std::shuffle(candidates.begin(), candidates.end(), rng);
  std::vector<int64_t> cuts{0, B};
  cuts.insert(cuts.end(), candidates.begin(), candidates.begin() + std::min<size_t>(holders - 1, candidates.size()));
  std::sort(cuts.begin(), cuts.end());
  while (static_cast<int>(cuts.size()) < world + 1) cuts.push_back(B);  // empty ranks at the end
  return cuts;
}

// dW[v, d] += sum_t G[t, v] h[t, d] over rows [0, T) of a gradient of row stride `stride`.
void add_head_gradient(const std::vector<double>& grad, int64_t T, int64_t V, int64_t stride, const double* hidden,
                       int64_t D, std::vector<double>& dW) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t v = 0; v < V; ++v)
      for (int64_t d = 0; d < D; ++d) dW[v * D + d] += grad[t * stride + v] * hidden[t * D + d];
}

bool whitened(cgrpo::AdvantageEstimator e) {
  return e == cgrpo::AdvantageEstimator::reinforce_pp_baseline || e == cgrpo::AdvantageEstimator::gdpo;
}

struct VocabCase {
  std::string name;
  cgrpo::LossConfig config;
  bool linear = false;  // the LM head split by rows (vocab_parallel_linear.hpp), or the logits by columns
  bool merge = false;   // all-gather + row_stats_merge instead of MAX, rebase, SUM
  bool faults = false;
};

std::vector<VocabCase> vocab_cases() {
  std::vector<VocabCase> cases;
  auto add = [&](const std::string& name, cgrpo::LossConfig c, bool linear, bool merge, bool faults) {
    cases.push_back(VocabCase{name, c, linear, merge, faults});
  };
  cgrpo::LossConfig paper = cgrpo::paper_critique_grpo().loss;
  paper.entropy.coef = 0.02;
  paper.temperature = 0.9;
  add("paper/critique_grpo, tau 0.9, entropy 0.02", paper, false, false, true);
  add("verl/grpo", cgrpo::verl_grpo().loss, false, false, false);
  add("verl/gspo", cgrpo::verl_gspo().loss, false, true, false);
  add("trl/grpo", cgrpo::trl_grpo().loss, false, false, false);
  cgrpo::LossConfig custom;
  custom.policy.loss = cgrpo::PolicyLoss::ppo_clip;
  custom.ratio.dual_clip = true;
  custom.aggregation.policy = cgrpo::Aggregation::seq_mean_token_mean;
  custom.entropy.coef = 0.01;
  custom.kl.estimator = cgrpo::KlEstimator::k3;
  custom.kl.coef = 0.05;
  custom.temperature = 0.7;
  add("ppo clip + dual clip, k3 KL, entropy, tau 0.7", custom, false, true, false);
  add("LM head: paper/critique_grpo, tau 0.9", paper, true, false, true);
  add("LM head: verl/grpo", cgrpo::verl_grpo().loss, true, true, false);
  add("LM head: verl/gspo", cgrpo::verl_gspo().loss, true, false, false);
  return cases;
}

// The shard counts of a run of `world` processes: 1, 2, 3 and world (each at most world).
std::vector<int> vocab_shard_counts(int world) {
  std::vector<int> ks;
  for (int k : {1, 2, 3, world})
    if (k <= world && std::find(ks.begin(), ks.end(), k) == ks.end()) ks.push_back(k);
  return ks;
}

struct VocabBatch {
  ref::Batch full;  // logits [T, V] (the LM head's, in the linear case); the caller's weights set
  int64_t H = 5;
  std::vector<double> hidden, W, bias;  // linear: h [T, H], W [V, H], b [V]
};

VocabBatch make_vocab_batch(uint64_t seed, int index, const VocabCase& c) {
  std::mt19937_64 rng = case_rng(seed, 3, static_cast<uint64_t>(index));
  VocabBatch b;
  b.full = ref::random_batch(rng, 5, 7, 31, 0);
  ref::Batch& f = b.full;
  if (c.linear) {
    std::normal_distribution<double> normal(0.0, 1.0);
    b.hidden.resize(static_cast<size_t>(f.T * b.H));
    b.W.resize(static_cast<size_t>(f.V * b.H));
    b.bias.resize(static_cast<size_t>(f.V));
    for (double& x : b.hidden) x = normal(rng);
    for (double& x : b.W) x = 2.0 * normal(rng) / std::sqrt(static_cast<double>(b.H));
    for (double& x : b.bias) x = 0.5 * normal(rng);
    for (int64_t t = 0; t < f.T; ++t)
      for (int64_t v = 0; v < f.V; ++v) {
        double z = b.bias[v];
        for (int64_t k = 0; k < b.H; ++k) z += b.hidden[t * b.H + k] * b.W[v * b.H + k];
        f.logits[t * f.stride + v] = z;
      }
    // Old and reference log-probs near the head's own log p, as random_batch draws them for its logits.
    for (int64_t t = 0; t < f.T; ++t) {
      const double lp = ref::log_softmax_entropy(&f.logits[t * f.stride], f.V, f.targets[t], c.config.temperature).logp;
      f.old_logp[t] = lp + 0.3 * normal(rng);
      f.ref_logp[t] = lp + 0.5 * normal(rng);
    }
  }
  ref::avoid_kinks(f, c.config, rng);
  const cgrpo::Status s = support::set_library_weights(f, c.config);
  check(s, "set_library_weights");
  return b;
}

// k non-empty uneven column ranges of [0, V).
std::vector<int64_t> vocab_cuts(int64_t V, int k, uint64_t seed, int index) {
  std::mt19937_64 rng = case_rng(seed, 4, static_cast<uint64_t>(index * 16 + k));
  std::vector<int64_t> cuts{0, V};
  while (static_cast<int>(cuts.size()) < k + 1) {
    const int64_t c = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(V - 1));
    if (std::find(cuts.begin(), cuts.end(), c) == cuts.end()) cuts.push_back(c);
  }
  std::sort(cuts.begin(), cuts.end());
  return cuts;
}

std::string result_path(const std::string& dir, int rank, const std::string& key) {
  return dir + "/rank" + std::to_string(rank) + "_" + key + ".bin";
}
std::string dp_key(int index, const char* variant) { return "dp" + std::to_string(index) + "_" + variant; }
std::string vocab_key(int k, int index, const char* variant) {
  return "vocab_k" + std::to_string(k) + "_" + std::to_string(index) + "_" + variant;
}

// ------------------------------------------------------------------------------------------------
// The worker: one rank.

enum class Fault { none, fail, hang };

// One data-parallel case on this rank: every reduction through the group; writes the honest
// results, and with c.faults the two faulty variants.
void worker_dp_case(Group& g, const std::string& out_dir, uint64_t seed, int index, const DpCase& c) {
  const int rank = g.rank(), world = g.size();
  DpBatch b = make_dp_batch(seed, index, c);
  const cgrpo::LossConfig& config = c.recipe.loss;
  const cgrpo::AdvantageConfig& adv_config = c.recipe.advantage;
  const std::vector<int64_t> cuts = dp_cuts(b, c, world, seed, index);
  const int64_t r0 = cuts[rank], r1 = cuts[rank + 1], G = b.G;
  ref::Batch s = support::slice_responses(b.full, r0, r1);
  const int64_t t0 = b.full.offsets[r0];
  const cgrpo::SequenceLayout layout = s.layout();
  const cgrpo::GroupAssignment local{r1 - r0, b.group_ids.data() + r0, G};
  const double shift = 0.5;  // near the rewards, the same on every rank

  // 1. Group statistics and aggregation partials, packed into one SUM and one MAX buffer.
  const int64_t n_sum = G * cgrpo::parallel::kGroupSumFields + 3, n_max = G * cgrpo::parallel::kGroupExtremaFields + 1;
  std::vector<double> sums(n_sum), maxes(n_max);
  CGRPO_WORKER_CHECK(
      cgrpo::parallel::group_partial_stats(local, b.rewards.data() + r0, shift, sums.data(), maxes.data()));
  cgrpo::parallel::AggregationPartials p;
  CGRPO_WORKER_CHECK(cgrpo::parallel::aggregation_partials(layout, s.mask.data(), &p));
  sums[n_sum - 3] = p.token_count;
  sums[n_sum - 2] = p.sequence_count;
  sums[n_sum - 1] = p.nonempty_sequence_count;
  maxes[n_max - 1] = p.max_length;
  g.all_reduce(sums.data(), n_sum, kSum, "group sums and counts");
  g.all_reduce(maxes.data(), n_max, kMax, "group extrema and max length");
  cgrpo::parallel::AggregationPartials global;
  global.token_count = sums[n_sum - 3];
  global.sequence_count = sums[n_sum - 2];
  global.nonempty_sequence_count = sums[n_sum - 1];
  global.max_length = maxes[n_max - 1];
  const cgrpo::AggregationScale scale = global.to_scale();

  // 2. This rank's advantages (+ the whitening's second reduction), broadcast to its tokens.
  std::vector<double> adv(static_cast<size_t>(r1 - r0));
  CGRPO_WORKER_CHECK(cgrpo::parallel::group_advantages_from_stats(adv_config.estimator, local, b.rewards.data() + r0,
                                                                  sums.data(), maxes.data(), shift, adv_config.eps,
                                                                  adv.data()));
  if (whitened(adv_config.estimator)) {
    double w[cgrpo::parallel::kWhitenFields];
    CGRPO_WORKER_CHECK(
        cgrpo::parallel::whitening_partial_stats(r1 - r0, b.token_counts.data() + r0, adv.data(), w));
    g.all_reduce(w, cgrpo::parallel::kWhitenFields, kSum, "whitening sums");
    CGRPO_WORKER_CHECK(cgrpo::parallel::whiten_from_stats(r1 - r0, w, adv.data(), adv_config.whiten_eps,
                                                          adv_config.whiten_count_eps));
  }
  CGRPO_WORKER_CHECK(cgrpo::broadcast_to_tokens(layout, adv.data(), s.adv.data()));

  // 3. The fused loss on this shard with the global scale (the caller's weights, or the loss's own).
  if (c.caller_weights) CGRPO_WORKER_CHECK(support::set_library_weights(s, config, scale));
  support::LibraryBatch<double> lib(s, config, c.caller_weights ? support::Weights::caller : support::Weights::computed);
  if (!c.caller_weights) lib.view.scale = scale;
  std::vector<double> grad(static_cast<size_t>(s.T * s.stride), 0.0);
  cgrpo::LossMetrics m;
  cgrpo::PolicyLossOutputs<double> out;
  out.grad_logits = grad.data();
  out.metrics = &m;
  cgrpo::cpu::Workspace ws(1);
  CGRPO_WORKER_CHECK(cgrpo::cpu::fused_policy_loss(config, lib.view, out, ws));

  // 4. What the trainer reduces: the metric sums, this rank's rows of dJ/dz in the whole batch's
  // [T, V] (each row from one rank), dW = G^T h, and (for the check) the advantages.
  const int64_t T = b.full.T, V = b.full.V, stride = b.full.stride, B = b.full.B, D = b.D;
  std::vector<double> metric_sums(cgrpo::parallel::kMetricSumFields);
  cgrpo::parallel::metrics_to_sums(m, metric_sums.data(), config.metrics.mean_eps);
  std::vector<double> grad_full(static_cast<size_t>(T * stride), 0.0), dW(static_cast<size_t>(V * D), 0.0),
      adv_full(static_cast<size_t>(B), 0.0);
  std::copy(grad.begin(), grad.end(), grad_full.begin() + t0 * stride);
  std::copy(adv.begin(), adv.end(), adv_full.begin() + r0);
  add_head_gradient(grad, s.T, V, stride, b.hidden.data() + t0 * D, D, dW);
  const std::vector<double> metric_local = metric_sums, grad_local = grad_full, dW_local = dW;

  g.all_reduce(metric_sums.data(), cgrpo::parallel::kMetricSumFields, kSum, "metric sums");
  g.all_reduce(grad_full.data(), T * stride, kSum, "dJ/dz rows");
  g.all_reduce(dW.data(), V * D, kSum, "dW");
  g.all_reduce(adv_full.data(), B, kSum, "advantages");
  auto fields = [&](const std::vector<double>& msums, const std::vector<double>& gz, const std::vector<double>& gw) {
    Fields f;
    f["metrics"] = metric_values(cgrpo::parallel::metrics_from_sums(msums.data(), config.metrics.mean_eps));
    f["grad"] = gz;
    f["dW"] = gw;
    f["adv"] = adv_full;
    return f;
  };
  write_fields(result_path(out_dir, rank, dp_key(index, "honest")), fields(metric_sums, grad_full, dW));
  if (!c.faults) return;

  // The self-check's variants. "drop": the last rank contributes zeros to the gradient all-reduces
  // (it joins them: a rank skipping a collective would hang). "twice": the reduced metric sums and
  // dW are all-reduced a second time (every rank's contribution counted `world` times).
  std::vector<double> grad_drop = rank == world - 1 ? std::vector<double>(grad_local.size(), 0.0) : grad_local;
  std::vector<double> dW_drop = rank == world - 1 ? std::vector<double>(dW_local.size(), 0.0) : dW_local;
  g.all_reduce(grad_drop.data(), T * stride, kSum, "dJ/dz rows, one rank dropped");
  g.all_reduce(dW_drop.data(), V * D, kSum, "dW, one rank dropped");
  write_fields(result_path(out_dir, rank, dp_key(index, "drop")), fields(metric_sums, grad_drop, dW_drop));
  std::vector<double> metric_twice = metric_sums, dW_twice = dW;
  g.all_reduce(metric_twice.data(), cgrpo::parallel::kMetricSumFields, kSum, "metric sums, again");
  g.all_reduce(dW_twice.data(), V * D, kSum, "dW, again");
  write_fields(result_path(out_dir, rank, dp_key(index, "twice")), fields(metric_twice, grad_full, dW_twice));
}

// The reduction between the two phases of the vocabulary-parallel loss, through the group.
// `twice`: the SUM is applied a second time (the self-check's double count).
void reduce_row_stats(Group& g, bool merge, bool twice, std::vector<cgrpo::RowStats<double>>& stats,
                      std::vector<double>& target) {
  const int64_t T = static_cast<int64_t>(target.size());
  if (merge) {  // all-gather (max, sum_exp, sum_exp_u, target) and fold with row_stats_merge
    std::vector<double> mine(static_cast<size_t>(4 * T)), all(static_cast<size_t>(4 * T * g.size()));
    for (int64_t t = 0; t < T; ++t) {
      mine[4 * t + 0] = stats[t].max;
      mine[4 * t + 1] = stats[t].sum_exp;
      mine[4 * t + 2] = stats[t].sum_exp_u;
      mine[4 * t + 3] = target[t];
    }
    g.all_gather(mine.data(), 4 * T, all.data(), "row statistics (all-gather)");
    for (int64_t t = 0; t < T; ++t) {
      cgrpo::RowStats<double> acc = cgrpo::row_stats_identity<double>();
      double y = 0;
      for (int r = 0; r < g.size(); ++r) {
        const double* x = all.data() + 4 * (r * T + t);
        acc = cgrpo::row_stats_merge(acc, cgrpo::RowStats<double>{x[0], x[1], x[2]});
        y += x[3];
      }
      stats[t] = acc;
      target[t] = y;
    }
    return;
  }
  std::vector<double> maxes(static_cast<size_t>(T)), sums(static_cast<size_t>(3 * T));
  for (int64_t t = 0; t < T; ++t) maxes[t] = stats[t].max;
  g.all_reduce(maxes.data(), T, kMax, "row maxima");
  for (int64_t t = 0; t < T; ++t) {
    const cgrpo::RowStats<double> x = cgrpo::row_stats_rebase(stats[t], maxes[t]);
    sums[3 * t + 0] = x.sum_exp;
    sums[3 * t + 1] = x.sum_exp_u;
    sums[3 * t + 2] = target[t];
  }
  g.all_reduce(sums.data(), 3 * T, kSum, "row sums and target logits");
  if (twice) g.all_reduce(sums.data(), 3 * T, kSum, "row sums and target logits, again");
  for (int64_t t = 0; t < T; ++t) {
    stats[t] = cgrpo::RowStats<double>{maxes[t], sums[3 * t + 0], sums[3 * t + 1]};
    target[t] = sums[3 * t + 2];
  }
}

// One vocabulary-parallel case on rank g.rank() of a group of k = g.size() shards.
void worker_vocab_case(Group& g, const std::string& out_dir, uint64_t seed, int index, const VocabCase& c) {
  const int rank = g.rank(), k = g.size();
  const VocabBatch vb = make_vocab_batch(seed, index, c);
  const ref::Batch& f = vb.full;
  const cgrpo::LossConfig& config = c.config;
  const int64_t T = f.T, V = f.V, H = vb.H;
  const std::vector<int64_t> cuts = vocab_cuts(V, k, seed, index);
  const cgrpo::parallel::VocabShard shard{cuts[rank], cuts[rank + 1] - cuts[rank], V};
  const int64_t pad = rank % 2, lstride = shard.size + pad;  // a row stride past the shard on odd ranks
  support::LibraryBatch<double> lib(f, config, support::Weights::caller);  // per-token arrays: the whole batch
  cgrpo::PolicyLossBatch<double> local = lib.view;
  local.vocab_size = shard.size;
  std::vector<double> columns;
  if (c.linear) {
    local.logits = nullptr;
    local.row_stride = 0;
  } else {
    columns.assign(static_cast<size_t>(T * lstride), -12345.0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < shard.size; ++j) columns[t * lstride + j] = f.logits[t * f.stride + shard.begin + j];
    local.logits = columns.data();
    local.row_stride = lstride;
  }
  const cgrpo::LinearHead<double> head{vb.hidden.data(), H, 0, c.linear ? vb.W.data() + shard.begin * H : nullptr, 0,
                                       c.linear ? vb.bias.data() + shard.begin : nullptr};
  const cgrpo::LinearChunking chunking{4};
  cgrpo::cpu::Workspace ws(1);

  // Phase 1, then the reduction.
  std::vector<cgrpo::RowStats<double>> stats0(static_cast<size_t>(T));
  std::vector<double> target0(static_cast<size_t>(T));
  if (c.linear)
    CGRPO_WORKER_CHECK(cgrpo::parallel::vocab_shard_linear_row_stats(config, local, head, shard, stats0.data(),
                                                                     target0.data(), ws, chunking));
  else
    CGRPO_WORKER_CHECK(cgrpo::parallel::vocab_shard_row_stats(config, local, shard, stats0.data(), target0.data(), ws));

  // Phase 2 from (a copy of) the reduced statistics; the gradients gathered into the whole
  // arrays by a SUM (each entry from one rank; dJ/dh: the sum of the ranks' parts).
  auto run = [&](bool twice, bool drop, const char* variant) {
    std::vector<cgrpo::RowStats<double>> stats = stats0;
    std::vector<double> target = target0;
    reduce_row_stats(g, c.merge, twice, stats, target);
    std::vector<double> logp(static_cast<size_t>(T)), entropy(static_cast<size_t>(T));
    cgrpo::LossMetrics m;
    cgrpo::PolicyLossOutputs<double> out;
    out.logp = logp.data();
    out.entropy = entropy.data();
    out.metrics = &m;
    Fields fields;
    const bool zero = drop && rank == k - 1;  // the self-check: this rank's gradient dropped
    if (c.linear) {
      std::vector<double> dh(static_cast<size_t>(T * H)), dW_local(static_cast<size_t>(shard.size * H)),
          db_local(static_cast<size_t>(shard.size));
      cgrpo::LinearHeadGrads<double> grads{dh.data(), 0, dW_local.data(), 0, db_local.data()};
      CGRPO_WORKER_CHECK(cgrpo::parallel::vocab_parallel_linear_policy_loss(config, local, head, shard, stats.data(),
                                                                           target.data(), out, grads, ws, chunking));
      std::vector<double> dW(static_cast<size_t>(V * H), 0.0), db(static_cast<size_t>(V), 0.0);
      std::copy(dW_local.begin(), dW_local.end(), dW.begin() + shard.begin * H);
      std::copy(db_local.begin(), db_local.end(), db.begin() + shard.begin);
      if (zero) std::fill(dh.begin(), dh.end(), 0.0), std::fill(dW.begin(), dW.end(), 0.0);
      g.all_reduce(dh.data(), T * H, kSum, "dJ/dh");
      g.all_reduce(dW.data(), V * H, kSum, "dJ/dW rows");
      g.all_reduce(db.data(), V, kSum, "dJ/db entries");
      fields["dh"] = dh;
      fields["dW"] = dW;
      fields["db"] = db;
    } else {
      std::vector<double> grad_local(static_cast<size_t>(T * lstride), 777.0);
      out.grad_logits = grad_local.data();
      out.grad_row_stride = lstride;
      CGRPO_WORKER_CHECK(
          cgrpo::parallel::vocab_parallel_policy_loss(config, local, shard, stats.data(), target.data(), out, ws));
      std::vector<double> grad(static_cast<size_t>(T * V), 0.0);
      if (!zero)
        for (int64_t t = 0; t < T; ++t)
          for (int64_t j = 0; j < shard.size; ++j) grad[t * V + shard.begin + j] = grad_local[t * lstride + j];
      g.all_reduce(grad.data(), T * V, kSum, "dJ/dz columns");
      fields["grad"] = grad;
    }
    fields["metrics"] = metric_values(m);
    fields["logp"] = logp;
    fields["entropy"] = entropy;
    write_fields(result_path(out_dir, g.rank(), vocab_key(k, index, variant)), fields);
  };
  run(false, false, "honest");
  if (c.faults && k >= 2) {
    run(false, true, "drop");
    if (!c.merge) run(true, false, "twice");
  }
}

int worker_main(int argc, char** argv) {
  // --c10d-worker <rank> <world> <store file> <out dir> <seed> <fault>
  if (argc != 8) {
    std::fprintf(stderr, "c10d worker: expected 6 arguments after --c10d-worker, got %d\n", argc - 2);
    return kWorkerErrorExit;
  }
  const int rank = std::atoi(argv[2]), world = std::atoi(argv[3]);
  const std::string store_path = argv[4], out_dir = argv[5];
  const uint64_t seed = std::strtoull(argv[6], nullptr, 10);
  const std::string fault = argv[7];
  try {
    Backend backend = Backend::gloo;
    std::string error;
    if (!backend_from_env(&backend, &error)) throw std::runtime_error(error);
    auto store = c10::make_intrusive<c10d::FileStore>(store_path, world);
    store->setTimeout(kCollectiveTimeout);
    Group g(store, rank, world, backend);
    if (fault == "fail" && rank == 1) {
      std::fprintf(stderr, "c10d worker rank %d: injected failure (exit %d)\n", rank, kInjectedFailureExit);
      return kInjectedFailureExit;
    }
    if (fault == "hang" && rank == 1)
      for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    const std::vector<DpCase> dp = dp_cases();
    for (size_t i = 0; i < dp.size(); ++i) worker_dp_case(g, out_dir, seed, static_cast<int>(i), dp[i]);
    const std::vector<VocabCase> vocab = vocab_cases();
    for (int k : vocab_shard_counts(world)) {
      if (rank < k) {  // a sub-group of the first k ranks, as torch.distributed.new_group would make
        auto prefixed = c10::make_intrusive<c10d::PrefixStore>("vocab" + std::to_string(k), store);
        Group sub(prefixed, rank, k, backend);
        for (size_t i = 0; i < vocab.size(); ++i) worker_vocab_case(sub, out_dir, seed, static_cast<int>(i), vocab[i]);
      }
    }
    // Every rank arrives: the SUM of ones is the world size.
    double one = 1.0;
    g.all_reduce(&one, 1, kSum, "final barrier");
    if (one != static_cast<double>(world))
      throw std::runtime_error("final barrier: the sum of ones is " + std::to_string(one));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "c10d worker rank %d of %d: %s\n", rank, world, e.what());
    return kWorkerErrorExit;
  }
}

// ------------------------------------------------------------------------------------------------
// The parent: starts the workers, collects their exit codes, stops them on failure or timeout.

struct TempDir {
  std::string path;
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "cgrpo_c10d_XXXXXX").string();
    if (!mkdtemp(&pattern[0])) throw std::runtime_error("mkdtemp failed: " + std::string(std::strerror(errno)));
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

struct RunReport {
  bool ok = false, timed_out = false;
  std::vector<int> exit_codes;  // -1: killed or signalled
  std::string summary;
  double seconds = 0;
};

RunReport run_workers(int world, const std::string& dir, uint64_t seed, Fault fault, std::chrono::milliseconds timeout) {
  RunReport report;
  const auto start = std::chrono::steady_clock::now();
  const std::string store = dir + "/store", fault_name = fault == Fault::none ? "none" : fault == Fault::fail ? "fail" : "hang";
  std::vector<pid_t> pids(world, -1);
  std::vector<std::string> status(world, "running");
  report.exit_codes.assign(world, -1);
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> args{"test_c10d_gloo", "--c10d-worker", std::to_string(r), std::to_string(world), store,
                                  dir, std::to_string(seed), fault_name};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(&a[0]);
    argv.push_back(nullptr);
    const int e = posix_spawn(&pids[r], "/proc/self/exe", nullptr, nullptr, argv.data(), environ);
    if (e != 0) {
      status[r] = std::string("not started: ") + std::strerror(e);
      pids[r] = -1;
    }
  }
  auto kill_running = [&](const char* why) {
    for (int r = 0; r < world; ++r)
      if (pids[r] > 0) {
        kill(pids[r], SIGKILL);
        int st = 0;
        waitpid(pids[r], &st, 0);
        pids[r] = -1;
        status[r] = why;
      }
  };
  bool failed = std::count(pids.begin(), pids.end(), -1) > 0;
  if (failed) kill_running("stopped (SIGKILL): another worker was not started");
  // Poll every worker. After the first failure the others get a grace period to exit on their own
  // (a peer's failure fails their collectives within moments), so that the exit code of the rank
  // that failed first is the one reported, however slowly it exits; then the rest are killed.
  const auto grace = std::chrono::milliseconds(3000);
  auto failed_at = std::chrono::steady_clock::time_point::max();
  for (int running = world; running > 0;) {
    running = 0;
    for (int r = 0; r < world; ++r) {
      if (pids[r] <= 0) continue;
      int st = 0;
      const pid_t w = waitpid(pids[r], &st, WNOHANG);
      if (w == 0) {
        ++running;
        continue;
      }
      pids[r] = -1;
      bool bad = true;
      if (w < 0) {
        status[r] = std::string("waitpid failed: ") + std::strerror(errno);
      } else if (WIFEXITED(st)) {
        report.exit_codes[r] = WEXITSTATUS(st);
        status[r] = "exit " + std::to_string(WEXITSTATUS(st));
        bad = WEXITSTATUS(st) != 0;
      } else {
        status[r] = "killed by signal " + std::to_string(WIFSIGNALED(st) ? WTERMSIG(st) : -1);
      }
      if (bad && !failed) failed_at = std::chrono::steady_clock::now();
      failed = failed || bad;
    }
    if (running == 0) break;
    const auto now = std::chrono::steady_clock::now();
    if (failed && now - failed_at > grace) {
      kill_running("stopped (SIGKILL) after another worker failed");
      break;
    }
    if (now - start > timeout) {
      report.timed_out = failed = true;
      kill_running("stopped (SIGKILL) at the timeout");
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  report.ok = !failed;
  std::ostringstream os;
  os << world << " workers, " << report.seconds << " s" << (report.timed_out ? " (timed out)" : "") << ":";
  for (int r = 0; r < world; ++r) os << " rank " << r << ": " << status[r] << ";";
  report.summary = os.str();
  return report;
}

// ------------------------------------------------------------------------------------------------
// The parent's comparison with the one-process run.

struct Compared {
  std::vector<std::string> mismatches;  // "field: got ..., want ..." for each field off by more than the bound
  double worst = 0;                     // the largest |got - want| / bound over every field
  bool has(const std::string& field) const {
    for (const std::string& m : mismatches)
      if (m.compare(0, field.size() + 1, field + ":") == 0) return true;
    return false;
  }
  std::string text() const {
    std::string s;
    for (const std::string& m : mismatches) s += "  " + m + "\n";
    return s.empty() ? "  (none)\n" : s;
  }
};

void compare_array(Compared& c, const std::string& field, const Fields& got, const std::vector<double>& want,
                   double scale) {
  const auto it = got.find(field);
  if (it == got.end()) {
    c.mismatches.push_back(field + ": missing from the worker's results");
    return;
  }
  const tolerance::Closeness cl = tolerance::close_all(it->second, want, kRel, scale);
  if (cl.bound > 0) c.worst = std::max(c.worst, cl.err / cl.bound);
  if (!cl.ok) {
    std::ostringstream os;
    os << field << ": " << cl;
    c.mismatches.push_back(os.str());
  }
}

void compare_metrics(Compared& c, const Fields& got, const cgrpo::LossMetrics& want, const ref::Magnitudes& mag) {
  const auto it = got.find("metrics");
  if (it == got.end() || static_cast<int>(it->second.size()) != kNumMetrics) {
    c.mismatches.push_back("metrics: missing or of the wrong length");
    return;
  }
  const std::vector<double> w = metric_values(want), scales = metric_scales(mag);
  for (int i = 0; i < kNumMetrics; ++i) {
    const tolerance::Closeness cl = tolerance::close(it->second[i], w[i], kRel, scales[i]);
    if (cl.bound > 0) c.worst = std::max(c.worst, cl.err / cl.bound);
    const bool exact_count = i >= kNumMetrics - 3;
    if (exact_count ? it->second[i] != w[i] : !cl.ok) {
      std::ostringstream os;
      os << (i == 0 ? "loss" : kMetricNames[i]) << ": " << cl;
      c.mismatches.push_back(os.str());
    }
  }
}

// The one-process run of a data-parallel case, over the whole batch.
struct DpReference {
  std::vector<double> adv, grad, dW;
  double dW_scale = 0;  // max over entries of sum_t |G_tv h_td|: the size dW is made of
  cgrpo::LossMetrics metrics;
  ref::Magnitudes mag;
};

DpReference dp_reference(uint64_t seed, int index, const DpCase& c) {
  DpBatch b = make_dp_batch(seed, index, c);
  ref::Batch& f = b.full;
  const cgrpo::LossConfig& config = c.recipe.loss;
  DpReference want;
  want.adv.assign(static_cast<size_t>(f.B), 0.0);
  REQUIRE(cgrpo::group_advantages(c.recipe.advantage, cgrpo::GroupAssignment{f.B, b.group_ids.data(), b.G},
                                  b.rewards.data(), b.token_counts.data(), want.adv.data())
              .ok());
  REQUIRE(cgrpo::broadcast_to_tokens(f.layout(), want.adv.data(), f.adv.data()).ok());
  REQUIRE(support::set_library_weights(f, config).ok());  // AggregationScale{}: this (whole) batch
  support::LibraryBatch<double> lib(f, config, c.caller_weights ? support::Weights::caller : support::Weights::computed);
  want.grad.assign(static_cast<size_t>(f.T * f.stride), 0.0);
  cgrpo::PolicyLossOutputs<double> out;
  out.grad_logits = want.grad.data();
  out.metrics = &want.metrics;
  cgrpo::cpu::Workspace ws(1);
  const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(config, lib.view, out, ws);
  INFO(s.message);
  REQUIRE(s.ok());
  want.dW.assign(static_cast<size_t>(f.V * b.D), 0.0);
  add_head_gradient(want.grad, f.T, f.V, f.stride, b.hidden.data(), b.D, want.dW);
  std::vector<double> abs_grad(want.grad.size()), abs_hidden(b.hidden.size()), dW_abs(want.dW.size(), 0.0);
  for (size_t i = 0; i < abs_grad.size(); ++i) abs_grad[i] = std::fabs(want.grad[i]);
  for (size_t i = 0; i < abs_hidden.size(); ++i) abs_hidden[i] = std::fabs(b.hidden[i]);
  add_head_gradient(abs_grad, f.T, f.V, f.stride, abs_hidden.data(), b.D, dW_abs);
  want.dW_scale = ref::max_abs(dW_abs);
  want.mag = ref::loss(f, f.logits, config).mag;
  return want;
}

Compared compare_dp(const Fields& got, const DpReference& want) {
  Compared c;
  compare_metrics(c, got, want.metrics, want.mag);
  compare_array(c, "grad", got, want.grad, 0.0);
  compare_array(c, "dW", got, want.dW, want.dW_scale);
  compare_array(c, "adv", got, want.adv, 1.0);
  return c;
}

struct VocabReference {
  std::vector<double> grad, dh, dW, db, logp, entropy;
  double dh_scale = 0, dW_scale = 0;
  cgrpo::LossMetrics metrics;
  ref::Magnitudes mag;
};

VocabReference vocab_reference(uint64_t seed, int index, const VocabCase& c) {
  const VocabBatch vb = make_vocab_batch(seed, index, c);
  const ref::Batch& f = vb.full;
  const int64_t T = f.T, V = f.V, H = vb.H;
  VocabReference want;
  support::LibraryBatch<double> lib(f, c.config, support::Weights::caller);
  want.logp.assign(static_cast<size_t>(T), 0.0);
  want.entropy.assign(static_cast<size_t>(T), 0.0);
  cgrpo::PolicyLossOutputs<double> out;
  out.logp = want.logp.data();
  out.entropy = want.entropy.data();
  out.metrics = &want.metrics;
  cgrpo::cpu::Workspace ws(1);
  if (c.linear) {
    lib.view.logits = nullptr;
    lib.view.row_stride = 0;
    want.dh.assign(static_cast<size_t>(T * H), 0.0);
    want.dW.assign(static_cast<size_t>(V * H), 0.0);
    want.db.assign(static_cast<size_t>(V), 0.0);
    const cgrpo::LinearHead<double> head{vb.hidden.data(), H, 0, vb.W.data(), 0, vb.bias.data()};
    const cgrpo::LinearHeadGrads<double> grads{want.dh.data(), 0, want.dW.data(), 0, want.db.data()};
    const cgrpo::Status s =
        cgrpo::cpu::fused_linear_policy_loss(c.config, lib.view, head, out, grads, ws, cgrpo::LinearChunking{4});
    INFO(s.message);
    REQUIRE(s.ok());
    // The sizes the head's gradients are made of, from |dJ/dz| of the logits-level loss.
    std::vector<double> g(static_cast<size_t>(T * V), 0.0);
    cgrpo::PolicyLossOutputs<double> gout;
    cgrpo::LossMetrics unused;
    gout.grad_logits = g.data();
    gout.metrics = &unused;
    support::LibraryBatch<double> logits_lib(f, c.config, support::Weights::caller);
    REQUIRE(cgrpo::cpu::fused_policy_loss(c.config, logits_lib.view, gout, ws).ok());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < H; ++k) {
        double s_h = 0;
        for (int64_t v = 0; v < V; ++v) s_h += std::fabs(g[t * V + v] * vb.W[v * H + k]);
        want.dh_scale = std::max(want.dh_scale, s_h);
      }
    for (int64_t v = 0; v < V; ++v)
      for (int64_t k = 0; k < H; ++k) {
        double s_w = 0;
        for (int64_t t = 0; t < T; ++t) s_w += std::fabs(g[t * V + v] * vb.hidden[t * H + k]);
        want.dW_scale = std::max(want.dW_scale, s_w);
      }
  } else {
    want.grad.assign(static_cast<size_t>(T * f.stride), 0.0);
    out.grad_logits = want.grad.data();
    const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(c.config, lib.view, out, ws);
    INFO(s.message);
    REQUIRE(s.ok());
  }
  want.mag = ref::loss(f, f.logits, c.config).mag;
  return want;
}

Compared compare_vocab(const Fields& got, const VocabReference& want, const VocabCase& c) {
  Compared cmp;
  compare_metrics(cmp, got, want.metrics, want.mag);
  // log p and H carry ~eps U (ref::Magnitudes::u) absolutely: the exchanged statistics hold u = z / tau.
  compare_array(cmp, "logp", got, want.logp, want.mag.u);
  compare_array(cmp, "entropy", got, want.entropy, want.mag.u);
  if (c.linear) {
    compare_array(cmp, "dh", got, want.dh, want.dh_scale);
    compare_array(cmp, "dW", got, want.dW, want.dW_scale);
    compare_array(cmp, "db", got, want.db, 0.0);
  } else {
    compare_array(cmp, "grad", got, want.grad, 0.0);
  }
  return cmp;
}

Fields read_or_fail(const std::string& path) {
  Fields f;
  std::string error;
  const bool ok = read_fields(path, &f, &error);
  INFO(error);
  REQUIRE(ok);
  return f;
}

// N workers, every case: the honest results equal the one-process run on every rank; the faulty
// variants do not.
void check_world(int world) {
  const uint64_t seed = test_seed::base_seed();
  TempDir dir;
  const RunReport report = run_workers(world, dir.path, seed, Fault::none, kRunTimeout);
  INFO(report.summary);
  REQUIRE(report.ok);
  double worst = 0;
  int checked = 0, self_checks = 0;

  const std::vector<DpCase> dp = dp_cases();
  for (size_t i = 0; i < dp.size(); ++i) {
    const DpCase& c = dp[i];
    CAPTURE(world, c.name, c.caller_weights, c.split_groups);
    const DpReference want = dp_reference(seed, static_cast<int>(i), c);
    for (int r = 0; r < world; ++r) {
      CAPTURE(r);
      const Compared cmp = compare_dp(read_or_fail(result_path(dir.path, r, dp_key(static_cast<int>(i), "honest"))), want);
      INFO("mismatches:\n" << cmp.text());
      CHECK(cmp.mismatches.empty());
      worst = std::max(worst, cmp.worst);
      ++checked;
    }
    if (!c.faults) continue;
    // The self-check: the same comparison must reject a dropped rank and a double count.
    const Compared drop = compare_dp(read_or_fail(result_path(dir.path, 0, dp_key(static_cast<int>(i), "drop"))), want);
    INFO("drop mismatches:\n" << drop.text());
    CHECK(drop.has("grad"));
    CHECK(drop.has("dW"));
    const Compared twice =
        compare_dp(read_or_fail(result_path(dir.path, 0, dp_key(static_cast<int>(i), "twice"))), want);
    INFO("twice mismatches:\n" << twice.text());
    CHECK(twice.has("loss"));
    CHECK(twice.has("dW"));
    self_checks += 2;
  }

  const std::vector<VocabCase> vocab = vocab_cases();
  for (size_t i = 0; i < vocab.size(); ++i) {
    const VocabCase& c = vocab[i];
    const VocabReference want = vocab_reference(seed, static_cast<int>(i), c);
    for (int k : vocab_shard_counts(world)) {
      CAPTURE(world, c.name, k);
      for (int r = 0; r < k; ++r) {
        CAPTURE(r);
        const Compared cmp = compare_vocab(
            read_or_fail(result_path(dir.path, r, vocab_key(k, static_cast<int>(i), "honest"))), want, c);
        INFO("mismatches:\n" << cmp.text());
        CHECK(cmp.mismatches.empty());
        worst = std::max(worst, cmp.worst);
        ++checked;
      }
      if (!c.faults || k < 2) continue;
      const Compared drop =
          compare_vocab(read_or_fail(result_path(dir.path, 0, vocab_key(k, static_cast<int>(i), "drop"))), want, c);
      INFO("drop mismatches:\n" << drop.text());
      CHECK(drop.has(c.linear ? "dW" : "grad"));
      ++self_checks;
      if (c.merge) continue;
      const Compared twice =
          compare_vocab(read_or_fail(result_path(dir.path, 0, vocab_key(k, static_cast<int>(i), "twice"))), want, c);
      INFO("twice mismatches:\n" << twice.text());
      CHECK(twice.has("loss"));
      ++self_checks;
    }
  }
  REQUIRE(self_checks > 0);
  std::printf("test_c10d_gloo: %d processes over ProcessGroupGloo: %d rank results against the one-process run "
              "(worst error %.2g of its 1e-12 bound), %d self-checks failed as they must; workers ran %.1f s\n",
              world, checked, worst, self_checks, report.seconds);
}

}  // namespace

TEST_CASE("c10d gloo, 2 processes: data and vocabulary parallel equal the one-process run", "[parallel][c10d]") {
  check_world(2);
}

TEST_CASE("c10d gloo, 4 processes: data and vocabulary parallel equal the one-process run", "[parallel][c10d]") {
  check_world(4);
}

TEST_CASE("c10d gloo: a worker that fails is reported with its exit code, and the others are stopped",
          "[parallel][c10d]") {
  TempDir dir;
  const RunReport report = run_workers(3, dir.path, test_seed::base_seed(), Fault::fail, kRunTimeout);
  INFO(report.summary);
  REQUIRE(!report.ok);
  CHECK(!report.timed_out);
  CHECK(report.exit_codes[1] == kInjectedFailureExit);
  CHECK(report.summary.find("rank 1: exit 3") != std::string::npos);
  CHECK(report.seconds < 20);  // the others were stopped, not waited for (their collective timeout is 30 s)
}

TEST_CASE("c10d gloo: a worker that hangs is stopped at the timeout", "[parallel][c10d]") {
  TempDir dir;
  const RunReport report =
      run_workers(2, dir.path, test_seed::base_seed(), Fault::hang, std::chrono::milliseconds(2000));
  INFO(report.summary);
  REQUIRE(!report.ok);
  CHECK(report.timed_out);
  CHECK(report.summary.find("at the timeout") != std::string::npos);
  CHECK(report.seconds < 10);
}

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "--c10d-worker") == 0) return worker_main(argc, argv);
  Backend backend = Backend::gloo;
  std::string error;
  if (!backend_from_env(&backend, &error)) {
    std::fprintf(stderr, "test_c10d_gloo: %s; skipped\n", error.c_str());
    return std::getenv("CGRPO_C10D_BACKEND") && std::strcmp(std::getenv("CGRPO_C10D_BACKEND"), "nccl") == 0 ? kSkipExit
                                                                                                            : 1;
  }
  test_seed::base_seed();  // printed once, before any worker starts
  return Catch::Session().run(argc, argv);
}
