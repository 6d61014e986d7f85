// examples/mpi_data_parallel/mpi_data_parallel.cpp: data-parallel Critique-GRPO over MPI, one process per rank.
// Each rank holds some responses of every group; group stats, normalizers and metrics are all-reduced, dW reduced.
//
//   mpirun -np 4 ./mpi_data_parallel [--seed N] [--preset NAME]... [--drop-rank R]
//
// Every rank builds the same whole batch description from the seed (hidden states, sampled tokens,
// rewards, the replica of the LM head W) and keeps responses [B r / n, B (r + 1) / n). Per preset:
//   local   group_partial_stats, aggregation_partials                      (its responses only)
//   MPI     MPI_Allreduce SUM (group counts, sums, sums of squares; token and row counts),
//           MPI_Allreduce MAX (reward extrema, longest response)
//   local   group_advantages_from_stats (+ one more SUM for a whitened estimator), the logits of its
//           rows z = h W^T, the fused loss with batch.scale = the GLOBAL AggregationScale,
//           dW_r = (dJ/dz)^T h
//   MPI     MPI_Allreduce SUM of metrics_to_sums (every rank logs the whole batch's metrics),
//           MPI_Reduce SUM of dW to rank 0 (a trainer would all-reduce it and step its replica)
// Rank 0 then runs the whole batch in one process and prints one line per preset: the loss both
// ways, a few metrics, the largest dW difference. Exit status 1 on every rank when any differs by
// more than 1e-12 relative (double throughout, so that the check is exact up to summation order).
// --drop-rank R makes rank R contribute zeros to the dW reduction: the check must then fail.
#include <mpi.h>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/parallel/global_scale.hpp>
#include <cgrpo/parallel/group_stats.hpp>
#include <cgrpo/parallel/metrics_reduce.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

int g_rank = 0;

// Every MPI call's result is checked (MPI_ERRORS_RETURN is set on the communicator). A failure on
// one rank would leave the others waiting in the next collective: abort them all.
#define MPI_CHECK(call)                                                                  \
  do {                                                                                   \
    const int rc_ = (call);                                                              \
    if (rc_ != MPI_SUCCESS) {                                                            \
      char msg_[MPI_MAX_ERROR_STRING];                                                   \
      int len_ = 0;                                                                      \
      MPI_Error_string(rc_, msg_, &len_);                                                \
      std::fprintf(stderr, "rank %d: %s:%d: %s: %s\n", g_rank, __FILE__, __LINE__, #call, msg_); \
      MPI_Abort(MPI_COMM_WORLD, 2);                                                      \
    }                                                                                    \
  } while (0)

#define CGRPO_CHECK(status_expr)                                                                  \
  do {                                                                                            \
    const cgrpo::Status s_ = (status_expr);                                                       \
    if (!s_.ok()) {                                                                               \
      std::fprintf(stderr, "rank %d: %s:%d: cgrpo %s: %s\n", g_rank, __FILE__, __LINE__,          \
                   cgrpo::status_code_name(s_.code), s_.message);                                 \
      MPI_Abort(MPI_COMM_WORLD, 3);                                                               \
    }                                                                                             \
  } while (0)

// The whole batch as every rank knows it before the forward pass: B responses of ragged lengths
// (packed), G groups with members interleaved (group of response i: i % G, so each group spans the
// ranks), one refinement per group, 0/1 rewards, hidden states h [T, D], the LM head W [V, D], and
// the drift of the old and reference log-probs from the current ones (the policy has moved).
struct Batch {
  int64_t B = 0, G = 0, T = 0, D = 0, V = 0;
  std::vector<int64_t> offsets;
  std::vector<int32_t> group_ids, targets;
  std::vector<uint8_t> mask, kinds;
  std::vector<double> rewards, hidden, W, old_drift, ref_drift;
};

Batch make_batch(uint64_t seed, int64_t B, int64_t G, int64_t max_len, int64_t D, int64_t V) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> length(2, max_len);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(V - 1));
  std::normal_distribution<double> normal(0.0, 1.0);
  Batch b;
  b.B = B, b.G = G, b.D = D, b.V = V;
  b.offsets.push_back(0);
  for (int64_t i = 0; i < B; ++i) {
    const int64_t n = length(rng);
    int64_t good = 0;
    for (int64_t k = 0; k < n; ++k) {
      b.targets.push_back(token(rng));
      b.mask.push_back(k + 1 < n || rng() % 4 != 0);  // a few masked final tokens
      b.kinds.push_back(i < G ? cgrpo::kRefinement : cgrpo::kInitial);
      good += b.targets.back() < V / 2;
    }
    b.offsets.push_back(b.offsets.back() + n);
    b.group_ids.push_back(static_cast<int32_t>(i % G));
    b.rewards.push_back(2 * good > n ? 1.0 : 0.0);
  }
  b.T = b.offsets.back();
  b.hidden.resize(b.T * D);
  b.W.resize(V * D);
  for (double& h : b.hidden) h = normal(rng);
  for (double& w : b.W) w = 2.0 * normal(rng) / std::sqrt(static_cast<double>(D));
  for (int64_t t = 0; t < b.T; ++t) {
    b.old_drift.push_back(0.3 * normal(rng));
    b.ref_drift.push_back(0.5 * normal(rng));
  }
  return b;
}

// What a rank computes for rows [t0, t1) of the batch (its forward pass): logits z = h W^T, and the
// old and reference log-probs (the current ones, drifted).
struct Rows {
  std::vector<double> logits, old_logp, ref_logp;
};

Rows forward(const Batch& b, const cgrpo::LossConfig& config, int64_t t0, int64_t t1) {
  const int64_t n = t1 - t0, V = b.V, D = b.D;
  Rows r;
  r.logits.assign(n * V, 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t v = 0; v < V; ++v) {
      double z = 0;
      for (int64_t d = 0; d < D; ++d) z += b.hidden[(t0 + t) * D + d] * b.W[v * D + d];
      r.logits[t * V + v] = z;
    }
  std::vector<double> logp(n);
  CGRPO_CHECK(cgrpo::cpu::token_logprobs(r.logits.data(), n, V, 0, b.targets.data() + t0, config.temperature,
                                         logp.data(), static_cast<double*>(nullptr)));
  for (int64_t t = 0; t < n; ++t) {
    r.old_logp.push_back(logp[t] + b.old_drift[t0 + t]);
    r.ref_logp.push_back(logp[t] + b.ref_drift[t0 + t]);
  }
  return r;
}

bool whitened(cgrpo::AdvantageEstimator e) {
  return e == cgrpo::AdvantageEstimator::reinforce_pp_baseline || e == cgrpo::AdvantageEstimator::gdpo;
}

// The fused loss over rows [t0, t1) (responses [r0, r1)) with the given advantages and scale; writes
// dW = (dJ/dz)^T h of those rows and returns the metrics.
cgrpo::LossMetrics loss_and_dW(const Batch& b, const cgrpo::LossConfig& config, int64_t r0, int64_t r1,
                               const std::vector<double>& adv_response, const cgrpo::AggregationScale& scale,
                               std::vector<double>& dW) {
  const int64_t t0 = b.offsets[r0], t1 = b.offsets[r1], n = t1 - t0, V = b.V, D = b.D;
  std::vector<int64_t> offsets(b.offsets.begin() + r0, b.offsets.begin() + r1 + 1);
  for (int64_t& o : offsets) o -= t0;
  const cgrpo::SequenceLayout layout = cgrpo::SequenceLayout::packed(r1 - r0, offsets.data());
  const Rows rows = forward(b, config, t0, t1);
  std::vector<double> adv(n), grad(n * V);
  CGRPO_CHECK(cgrpo::broadcast_to_tokens(layout, adv_response.data(), adv.data()));
  cgrpo::PolicyLossBatch<double> batch;
  batch.logits = rows.logits.data();
  batch.num_tokens = n;
  batch.vocab_size = V;
  batch.target_ids = b.targets.data() + t0;
  batch.mask = b.mask.data() + t0;
  batch.kinds = b.kinds.data() + t0;
  batch.advantages = adv.data();
  batch.old_logp = rows.old_logp.data();
  batch.ref_logp = config.kl.estimator != cgrpo::KlEstimator::none ? rows.ref_logp.data() : nullptr;
  batch.layout = layout;
  batch.scale = scale;  // no weights given: the loss forms them from the global counts
  cgrpo::LossMetrics m;
  cgrpo::PolicyLossOutputs<double> out;
  out.grad_logits = grad.data();
  out.metrics = &m;
  cgrpo::cpu::Workspace workspace(1);
  CGRPO_CHECK(cgrpo::cpu::fused_policy_loss(config, batch, out, workspace));
  dW.assign(V * D, 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t v = 0; v < V; ++v)
      for (int64_t d = 0; d < D; ++d) dW[v * D + d] += grad[t * V + v] * b.hidden[(t0 + t) * D + d];
  return m;
}

struct Line {
  double loss_ranks = 0, loss_one = 0, loss_err = 0, clipfrac = 0, entropy = 0, dW_err = 0;
  bool ok = false;
  std::string what;  // the fields that differ
};

// One preset on every rank; rank 0 also runs the whole batch and fills the comparison.
Line run_preset(const Batch& b, const cgrpo::Recipe& recipe, int rank, int size, int drop_rank) {
  const cgrpo::LossConfig& config = recipe.loss;
  const int64_t B = b.B, G = b.G;
  const int64_t r0 = B * rank / size, r1 = B * (rank + 1) / size;
  const int64_t t0 = b.offsets[r0];
  std::vector<int64_t> offsets(b.offsets.begin() + r0, b.offsets.begin() + r1 + 1);
  for (int64_t& o : offsets) o -= t0;
  const cgrpo::SequenceLayout layout = cgrpo::SequenceLayout::packed(r1 - r0, offsets.data());
  const cgrpo::GroupAssignment local{r1 - r0, b.group_ids.data() + r0, G};
  const double shift = 0.5;  // near the rewards, the same on every rank

  // 1. Local partials, packed: SUM [G x (count, sum, sum of squares), tokens, rows, non-empty rows],
  //    MAX [G x (max R, -min R), longest response].
  const int64_t n_sum = G * cgrpo::parallel::kGroupSumFields + 3, n_max = G * cgrpo::parallel::kGroupExtremaFields + 1;
  std::vector<double> sums(n_sum), maxes(n_max);
  CGRPO_CHECK(cgrpo::parallel::group_partial_stats(local, b.rewards.data() + r0, shift, sums.data(), maxes.data()));
  cgrpo::parallel::AggregationPartials p;
  CGRPO_CHECK(cgrpo::parallel::aggregation_partials(layout, b.mask.data() + t0, &p));
  sums[n_sum - 3] = p.token_count;
  sums[n_sum - 2] = p.sequence_count;
  sums[n_sum - 1] = p.nonempty_sequence_count;
  maxes[n_max - 1] = p.max_length;
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sums.data(), static_cast<int>(n_sum), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, maxes.data(), static_cast<int>(n_max), MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
  cgrpo::parallel::AggregationPartials global;
  global.token_count = sums[n_sum - 3];
  global.sequence_count = sums[n_sum - 2];
  global.nonempty_sequence_count = sums[n_sum - 1];
  global.max_length = maxes[n_max - 1];

  // 2. This rank's advantages from the global group statistics (+ the batch whitening's SUM).
  std::vector<double> adv(r1 - r0);
  CGRPO_CHECK(cgrpo::parallel::group_advantages_from_stats(recipe.advantage.estimator, local, b.rewards.data() + r0,
                                                           sums.data(), maxes.data(), shift, recipe.advantage.eps,
                                                           adv.data()));
  if (whitened(recipe.advantage.estimator)) {
    std::vector<int64_t> token_counts(r1 - r0, 0);
    for (int64_t i = r0; i < r1; ++i)
      for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) token_counts[i - r0] += b.mask[t];
    double w[cgrpo::parallel::kWhitenFields];
    CGRPO_CHECK(cgrpo::parallel::whitening_partial_stats(r1 - r0, token_counts.data(), adv.data(), w));
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, w, cgrpo::parallel::kWhitenFields, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
    CGRPO_CHECK(cgrpo::parallel::whiten_from_stats(r1 - r0, w, adv.data(), recipe.advantage.whiten_eps,
                                                   recipe.advantage.whiten_count_eps));
  }

  // 3. The loss on this rank's rows with the global scale; 4. metrics and dW across the ranks.
  std::vector<double> dW;
  const cgrpo::LossMetrics m = loss_and_dW(b, config, r0, r1, adv, global.to_scale(), dW);
  double metric_sums[cgrpo::parallel::kMetricSumFields];
  cgrpo::parallel::metrics_to_sums(m, metric_sums, config.metrics.mean_eps);
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, metric_sums, cgrpo::parallel::kMetricSumFields, MPI_DOUBLE, MPI_SUM,
                          MPI_COMM_WORLD));
  const cgrpo::LossMetrics global_metrics = cgrpo::parallel::metrics_from_sums(metric_sums, config.metrics.mean_eps);
  if (rank == drop_rank) std::fill(dW.begin(), dW.end(), 0.0);  // --drop-rank: a lost contribution
  std::vector<double> dW_sum(rank == 0 ? dW.size() : 0);
  MPI_CHECK(MPI_Reduce(dW.data(), rank == 0 ? dW_sum.data() : nullptr, static_cast<int>(dW.size()), MPI_DOUBLE,
                       MPI_SUM, 0, MPI_COMM_WORLD));

  Line line;
  line.loss_ranks = global_metrics.loss;
  line.clipfrac = global_metrics.pg_clipfrac;
  line.entropy = global_metrics.entropy_mean;
  if (rank != 0) return line;

  // The one-process run on rank 0: advantages over the whole batch, the loss with the batch's own
  // normalizers, dW over every row.
  std::vector<int64_t> token_counts(B, 0);
  for (int64_t i = 0; i < B; ++i)
    for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) token_counts[i] += b.mask[t];
  std::vector<double> adv_all(B), dW_one;
  CGRPO_CHECK(cgrpo::group_advantages(recipe.advantage, cgrpo::GroupAssignment{B, b.group_ids.data(), G},
                                      b.rewards.data(), token_counts.data(), adv_all.data()));
  const cgrpo::LossMetrics one = loss_and_dW(b, config, 0, B, adv_all, cgrpo::AggregationScale{}, dW_one);
  auto rel = [](double got, double want) { return std::fabs(got - want) / std::max(1.0, std::fabs(want)); };
  double dW_max = 0, dW_diff = 0;
  for (size_t i = 0; i < dW_one.size(); ++i) {
    dW_max = std::max(dW_max, std::fabs(dW_one[i]));
    dW_diff = std::max(dW_diff, std::fabs(dW_sum[i] - dW_one[i]));
  }
  line.loss_one = one.loss;
  line.loss_err = rel(global_metrics.loss, one.loss);
  line.dW_err = dW_diff / std::max(dW_max, 1e-300);
  const double tol = 1e-12;
  const struct {
    const char* name;
    double err;
  } checks[] = {{"loss", line.loss_err},
                {"pg_loss", rel(global_metrics.pg_loss, one.pg_loss)},
                {"pg_clipfrac", rel(global_metrics.pg_clipfrac, one.pg_clipfrac)},
                {"entropy_mean", rel(global_metrics.entropy_mean, one.entropy_mean)},
                {"ratio_mean", rel(global_metrics.ratio_mean, one.ratio_mean)},
                {"refinement_prob_mean", rel(global_metrics.refinement_prob_mean, one.refinement_prob_mean)},
                {"num_valid_tokens", global_metrics.num_valid_tokens == one.num_valid_tokens ? 0.0 : 1.0},
                {"dW", line.dW_err}};
  for (const auto& c : checks)
    if (!(c.err <= tol)) line.what += line.what.empty() ? c.name : std::string(", ") + c.name;
  line.ok = line.what.empty();
  return line;
}

}  // namespace

int main(int argc, char** argv) {
  if (MPI_Init(&argc, &argv) != MPI_SUCCESS) {
    std::fprintf(stderr, "mpi_data_parallel: MPI_Init failed\n");
    return 2;
  }
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  int size = 1;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &g_rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  const int rank = g_rank;

  uint64_t seed = 2506;
  int drop_rank = -1;
  std::vector<std::string> presets;
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (!std::strcmp(argv[i], "--seed") && has_value) seed = std::strtoull(argv[++i], nullptr, 10);
    else if (!std::strcmp(argv[i], "--preset") && has_value) presets.push_back(argv[++i]);
    else if (!std::strcmp(argv[i], "--drop-rank") && has_value) drop_rank = std::atoi(argv[++i]);
    else {
      if (rank == 0)
        std::fprintf(stderr, "usage: mpirun -np N %s [--seed N] [--preset NAME]... [--drop-rank R]\n", argv[0]);
      MPI_Finalize();
      return 2;
    }
  }
  if (presets.empty()) presets = {"paper/critique_grpo", "verl/grpo", "trl/grpo", "trl/dr_grpo"};

  const int64_t B = 24, G = 6, max_len = 20, D = 16, V = 64;
  const Batch batch = make_batch(seed, B, G, max_len, D, V);
  if (rank == 0) {
    std::printf("mpi_data_parallel: %d ranks, B = %lld responses in %lld groups (each spread over the ranks), "
                "T = %lld tokens, V = %lld, D = %lld, seed %llu%s\n",
                size, (long long)B, (long long)G, (long long)batch.T, (long long)V, (long long)D,
                (unsigned long long)seed, drop_rank >= 0 ? " (--drop-rank: a rank's dW is dropped)" : "");
    std::printf("%-20s %18s %18s %9s %9s %9s %13s  %s\n", "preset", "loss (ranks)", "loss (1 process)", "rel diff",
                "clipfrac", "entropy", "max|ddW|/|dW|", "check");
  }
  bool all_ok = true;
  for (const std::string& name : presets) {
    cgrpo::Recipe recipe;
    CGRPO_CHECK(cgrpo::preset(name.c_str(), &recipe));
    const Line line = run_preset(batch, recipe, rank, size, drop_rank);
    if (rank == 0) {
      std::printf("%-20s %+18.12f %+18.12f %9.1e %9.4f %9.4f %13.1e  %s%s\n", name.c_str(), line.loss_ranks,
                  line.loss_one, line.loss_err, line.clipfrac, line.entropy, line.dW_err,
                  line.ok ? "ok" : "MISMATCH: ", line.what.c_str());
      all_ok = all_ok && line.ok;
    }
  }
  // Rank 0's verdict on every rank, so that mpirun's exit status is the check's.
  int ok = all_ok ? 1 : 0;
  MPI_CHECK(MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD));
  if (rank == 0)
    std::printf("%s\n", ok ? "every preset: the ranks' loss, metrics and dW equal the one-process run (1e-12)"
                           : "MISMATCH against the one-process run");
  MPI_CHECK(MPI_Finalize());
  return ok ? 0 : 1;
}
