// kernels/policy_loss_kernels.cuh: the __global__ kernels of the policy loss (one block per row),
// the GSPO per-sequence reduction and the fixed-order reduction of the per-token metric sums.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "cgrpo/config.hpp"
#include "cgrpo/metrics.hpp"
#include "cgrpo/policy_loss_batch.hpp"
#include "cgrpo/token_loss.hpp"
#include "cgrpo/token_math.hpp"
#include "kernels/block_row_ops.cuh"
#include "kernels/device_status.cuh"
#include "kernels/vector_io.cuh"

namespace cgrpo::cuda {

// Softmax of one row kept between the GSPO stats pass and the loss pass: 16 bytes per row.
// max = NaN marks a row that was flagged (its gradient is zeros).
struct StoredRow {
  float max, log_sum, entropy, logp;
};

// Which response a token row belongs to, on the device (GSPO only).
struct DeviceSequences {
  int64_t num_sequences = 0;
  const int64_t* offsets = nullptr;  // device copy of layout.offsets; nullptr: padded
  int64_t padded_length = 0;

  CGRPO_ROW_HD int64_t begin(int64_t i) const { return offsets ? offsets[i] : i * padded_length; }
  CGRPO_ROW_HD int64_t end(int64_t i) const { return offsets ? offsets[i + 1] : (i + 1) * padded_length; }
  // The i with begin(i) <= t < end(i) (empty sequences skipped): upper_bound(offsets, t) - 1.
  CGRPO_ROW_HD int64_t of_row(int64_t t) const {
    if (!offsets) return t / padded_length;
    int64_t lo = 0, hi = num_sequences;  // offsets[lo] <= t < offsets[hi]
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (offsets[mid] <= t) lo = mid;
      else hi = mid;
    }
    return lo;
  }
};

// Everything the row kernels read and write, passed by value (about 220 bytes of kernel parameters).
template <typename Logit>
struct PolicyLossArgs {
  const Logit* logits;
  int64_t vocab_size, row_stride;
  Logit* grad;  // nullptr in the forward-only kernels
  int64_t grad_row_stride;
  const int32_t* target_ids;
  const uint8_t* mask;
  const uint8_t* kinds;  // nullptr: every token initial
  const float *advantages, *old_logp, *ref_logp, *pg_weights, *entropy_weights, *kl_weights;
  float* logp_out;     // optional
  float* entropy_out;  // optional
  TokenLossParams<float> params;
  MetricSums<double>* token_sums;  // [T], one per token, reduced in a fixed order afterwards
  StoredRow* rows;                 // [T], GSPO only
  const float* seq_log_ratio;      // [B], GSPO only
  DeviceSequences sequences;       // GSPO only
  DeviceStatus* status;
  int64_t first_row;               // the batch row of logits row 0: per-token arrays are indexed by
                                   // batch row (the fused linear loss runs on one chunk; 0 otherwise)
};

// The checks validate_batch_values does on the CPU, for one token; flags and returns false on the
// first failure. At a masked token only the mask is read (padding may hold NaN or -inf).
template <typename Logit>
CGRPO_ROW_HD bool token_values_ok(const PolicyLossArgs<Logit>& args, int64_t t) {
  auto flag_value = [&](uint32_t field) { flag_row(args.status, kNonFiniteValue, t, field); };
  const uint8_t m = args.mask[t];
  if (m > 1) return flag_row(args.status, kInvalidMaskOrKind, t, (0u << 8) | m), false;
  if (!m) return true;
  const uint8_t kind = args.kinds ? args.kinds[t] : uint8_t(kInitial);
  if (kind > 1) return flag_row(args.status, kInvalidMaskOrKind, t, (1u << 8) | kind), false;
  if (!isfinite(args.advantages[t])) return flag_value(kFieldAdvantages), false;
  if (!isfinite(args.pg_weights[t])) return flag_value(kFieldPgWeights), false;
  if (args.entropy_weights && !isfinite(args.entropy_weights[t])) return flag_value(kFieldEntropyWeights), false;
  if (kind == kInitial && !isfinite(args.old_logp[t])) return flag_value(kFieldOldLogp), false;
  if (args.params.kl_estimator != static_cast<int>(KlEstimator::none)) {
    if (!isfinite(args.kl_weights[t])) return flag_value(kFieldKlWeights), false;
    if (!isfinite(args.ref_logp[t])) return flag_value(kFieldRefLogp), false;
  }
  return true;
}

// Checks the target id and the row's softmax, and gives log p of the target (NaN when unusable).
template <typename Logit>
CGRPO_ROW_HD bool target_logp(const Logit* row, int64_t t, int32_t target, int64_t vocab, const RowSoftmax& sm,
                            float inv_temperature, DeviceStatus* status, float& logp) {
  logp = NAN;
  if (target < 0 || target >= vocab) {
    status->vocab_size = vocab;
    flag_row(status, kTargetOutOfRange, t, static_cast<uint32_t>(target));
    return false;
  }
  if (!sm.finite) {
    flag_row(status, kNonFiniteRow, t, 0u);
    return false;
  }
  // In double: z_y - max of logits of opposite signs near FLT_MAX overflows float although
  // log p, for tau > 2, does not. A finite logit whose log p is below -FLT_MAX (the target about
  // FLT_MAX * tau below the max) gets -FLT_MAX, as the CPU path writes it; a -inf logit, -inf.
  const float z_y = LogitTraits<Logit>::to_float(row[target]);
  const double lp = (static_cast<double>(z_y) - static_cast<double>(sm.max)) * static_cast<double>(inv_temperature) -
                    static_cast<double>(sm.log_sum);
  logp = lp < -static_cast<double>(FLT_MAX) && isfinite(z_y) ? -FLT_MAX : static_cast<float>(lp);
  if (!isfinite(logp)) {
    flag_row(status, kNonFiniteTargetLogit, t, static_cast<uint32_t>(target));
    return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Log-prob / entropy pass: block = one row, THREADS threads. Reads the row once and writes
// 4-8 bytes per row (plus 16 bytes of StoredRow in the GSPO stats pass).

template <typename Logit>
struct TokenLogprobArgs {
  const Logit* logits;
  int64_t vocab_size, row_stride;
  const int32_t* target_ids;
  float inv_temperature;
  float* logp_out;     // optional
  float* entropy_out;  // optional
  StoredRow* rows;     // optional (GSPO stats pass)
  DeviceStatus* status;
  int64_t first_row;   // the batch row of logits row 0 (as PolicyLossArgs::first_row)
};

// What thread 0 does once the row's softmax is known.
template <typename Logit>
CGRPO_ROW_HD void token_logprobs_row_end(const TokenLogprobArgs<Logit>& args, int64_t t, const RowSoftmax& sm) {
  const Logit* row = args.logits + (t - args.first_row) * args.row_stride;
  float logp;
  const bool ok = target_logp(row, t, args.target_ids[t], args.vocab_size, sm, args.inv_temperature, args.status, logp);
  if (args.logp_out) args.logp_out[t] = logp;
  if (args.entropy_out) args.entropy_out[t] = sm.entropy;
  if (args.rows) args.rows[t] = StoredRow{ok ? sm.max : NAN, sm.log_sum, sm.entropy, logp};
}

// Occupancy, pinned. The fused row kernel needs 56-64 registers (sm_90, -Xptxas -v): at 64,
// 1024 threads per SM (2 blocks of 512 or 8 of 128, half the SM's 2048) are resident, which
// is what it has been measured against; one register more would halve that to 1 block of 512,
// so the bound caps it at 64 instead. The log-prob kernel needs 32: full occupancy (2048 threads),
// capped there for the same reason. Both are checked for spills with -Xptxas -v.
template <int THREADS>
struct RowKernelOccupancy {
  static constexpr int kLossBlocks = 1024 / THREADS;     // <= 64 registers per thread
  static constexpr int kLogprobBlocks = 2048 / THREADS;  // <= 32 registers per thread
};

template <typename Logit, int THREADS>
__global__ void __launch_bounds__(THREADS, RowKernelOccupancy<THREADS>::kLogprobBlocks)
    token_logprobs_kernel(TokenLogprobArgs<Logit> args) {
  __shared__ BlockRowSoftmaxStorage<THREADS> storage;
  const int64_t t = args.first_row + blockIdx.x;
  const Logit* row = args.logits + static_cast<int64_t>(blockIdx.x) * args.row_stride;
  const RowSoftmax sm = block_row_softmax<Logit, THREADS>(row, args.vocab_size, args.inv_temperature, storage);
  if (threadIdx.x == 0) token_logprobs_row_end(args, t, sm);
}

// ---------------------------------------------------------------------------
// GSPO: mean (logp - old) over the valid initial tokens of each sequence. Block = one sequence;
// sums in double in a fixed order (strided per thread, then cub::BlockReduce). Reads 21 bytes per row.

// Thread `tid`'s share of one sequence: rows begin + tid, begin + tid + THREADS, ...
// A flagged row (max = NaN) is left out, so that one bad row does not turn the rest of its
// sequence into NaN gradients (the call reports the error either way).
template <int THREADS>
CGRPO_ROW_HD void thread_sequence_sums(const StoredRow* rows, const uint8_t* mask, const uint8_t* kinds,
                                       const float* old_logp, int64_t begin, int64_t end, int tid, double& sum,
                                       double& count) {
  for (int64_t t = begin + tid; t < end; t += THREADS)
    if (mask[t] && (!kinds || kinds[t] == kInitial) && !isnan(rows[t].max)) {
      sum += static_cast<double>(rows[t].logp) - static_cast<double>(old_logp[t]);
      count += 1.0;
    }
}

// The mean log-ratio from the block's sums (0 for a sequence without valid tokens).
CGRPO_ROW_HD float sequence_mean(double sum, double count) { return count > 0.0 ? static_cast<float>(sum / count) : 0.0f; }

// The configs the CUDA kernels run today: per-token policy terms (ratio, ppo_clip, cispo, cispo_cap,
// sapo, gpg) at token level or in verl's GSPO form, every KL form, caller weights. The row- and
// batch-coupled features run on the CPU path only, for now.
inline Status check_cuda_supported(const LossConfig& c, bool computed_weights) {
  const char* what = nullptr;
  if (computed_weights) what = "weights computed by the loss (pass pg/entropy/kl weights from aggregation_weights)";
  else if (c.ratio_level == RatioLevel::sequence) what = "ratio_level = sequence";
  else if (c.policy_loss == PolicyLoss::geo_mean || c.policy_loss == PolicyLoss::kl_cov ||
           c.policy_loss == PolicyLoss::clip_cov || c.policy_loss == PolicyLoss::vespo ||
           c.policy_loss == PolicyLoss::reinforce)
    what = to_string(c.policy_loss);
  else if (c.rollout.mode != RolloutCorrectionMode::none) what = "config.rollout";
  else if (c.sampler.mode != SamplerCorrectionMode::none) what = "config.sampler";
  else if (std::isfinite(c.off_policy_mask_threshold)) what = "config.off_policy_mask_threshold";
  else if (c.top_entropy_quantile < 1) what = "config.top_entropy_quantile";
  if (!what) return Status::success();
  return make_error(StatusCode::invalid_argument, "the CUDA path does not run %s yet (the CPU path does)", what);
}

template <int THREADS>
__global__ void __launch_bounds__(THREADS)
    sequence_log_ratio_kernel(const StoredRow* rows, const uint8_t* mask, const uint8_t* kinds, const float* old_logp,
                              DeviceSequences sequences, float* seq_log_ratio) {
  using Reduce = cub::BlockReduce<double, THREADS>;
  __shared__ typename Reduce::TempStorage storage;
  const int64_t i = blockIdx.x;
  double sum = 0.0, count = 0.0;
  thread_sequence_sums<THREADS>(rows, mask, kinds, old_logp, sequences.begin(i), sequences.end(i), threadIdx.x, sum,
                                count);
  const double total = Reduce(storage).Sum(sum);
  __syncthreads();  // storage is reused
  const double n = Reduce(storage).Sum(count);
  if (threadIdx.x == 0) seq_log_ratio[i] = sequence_mean(total, n);
}

// ---------------------------------------------------------------------------
// The policy loss, block = one row, THREADS threads:
//   1. sweep 1 (block_row_softmax), or the StoredRow of the GSPO stats pass (STORED_ROWS);
//   2. thread 0: checks, cgrpo::token_loss<float> (the function the CPU path calls), the
//      token's MetricSums<double> to the workspace, a_t and b_t to shared memory;
//   3. WRITE_GRAD: sweep 2 (block_row_gradient) into grad (zeros for masked or flagged rows).
// Bytes per row: fused V*sizeof(Logit) read twice (the second read mostly from L2: a block
// re-reads the row it has just read) + V*sizeof(Logit) written; forward only: read once.
// With STORED_ROWS and no gradient the logits are not read at all (one scalar per row).

// What thread 0 does for row t once the row's softmax is known (from sweep 1, or from the
// StoredRow of the GSPO stats pass when STORED_ROWS): the checks, cgrpo::token_loss<float>, the
// token's MetricSums<double> into the workspace; returns a_t and b_t (0 and 0 for a flagged row).
struct TokenStep {
  float a, b;
  RowSoftmax softmax;
};

template <typename Logit, bool STORED_ROWS>
CGRPO_ROW_HD TokenStep policy_loss_token_step(const PolicyLossArgs<Logit>& args, int64_t t, RowSoftmax sm) {
  const Logit* row = args.logits + (t - args.first_row) * args.row_stride;
  const int32_t target = args.target_ids[t];
  float logp;
  bool ok;
  if (STORED_ROWS) {
    const StoredRow r = args.rows[t];
    sm = RowSoftmax{r.max, r.log_sum, r.entropy, !isnan(r.max)};
    logp = r.logp;
    ok = sm.finite;  // the stats pass flagged the row otherwise
  } else {
    ok = target_logp(row, t, target, args.vocab_size, sm, args.params.inv_temperature, args.status, logp);
  }
  ok = token_values_ok(args, t) && ok;
  if (args.logp_out) args.logp_out[t] = logp;
  if (args.entropy_out) args.entropy_out[t] = sm.entropy;

  MetricSums<double> sums = metric_sums_zero<double>();
  TokenStep step{0.0f, 0.0f, sm};
  if (ok && args.mask[t]) {  // a masked token adds nothing and none of its values are read
    TokenInputs<float> in{};
    in.valid = true;
    in.in_pg = true;
    in.pg_factor = 1.0f;
    in.logp = logp;
    in.entropy = sm.entropy;
    in.refinement = args.kinds && args.kinds[t] == kRefinement;
    in.old_logp = in.refinement ? 0.0f : args.old_logp[t];
    in.ref_logp = args.params.kl_estimator != static_cast<int>(KlEstimator::none) ? args.ref_logp[t] : 0.0f;
    in.advantage = args.advantages[t];
    in.w_pg = args.pg_weights[t];
    in.w_entropy = args.entropy_weights ? args.entropy_weights[t] : 0.0f;
    in.w_kl = args.params.kl_estimator != static_cast<int>(KlEstimator::none) ? args.kl_weights[t] : 0.0f;
    if (STORED_ROWS) in.row.log_ratio = args.seq_log_ratio[args.sequences.of_row(t)];
    const TokenResult<float> res = token_loss(in, args.params);
    metric_sums_add(sums, in, res, args.params);
    step.a = res.dJ_dlogp;
    step.b = res.dJ_dentropy;
  }
  args.token_sums[t] = sums;
  return step;
}

// A row whose gradient overflowed Logit (block_row_gradient has zeroed it): flagged, and its
// share of the sums taken back, as for every other flagged row. Thread 0, after the sweep.
template <typename Logit>
CGRPO_ROW_HD void gradient_overflow_row_end(const PolicyLossArgs<Logit>& args, int64_t t) {
  flag_row(args.status, kGradientOverflow, t, LogitTraits<Logit>::code);
  args.token_sums[t] = metric_sums_zero<double>();
}

template <typename Logit, int THREADS, bool WRITE_GRAD, bool STORED_ROWS>
__global__ void __launch_bounds__(THREADS, RowKernelOccupancy<THREADS>::kLossBlocks)
    policy_loss_kernel(PolicyLossArgs<Logit> args) {
  __shared__ BlockRowSoftmaxStorage<THREADS> storage;
  __shared__ TokenStep shared_step;
  const int64_t t = args.first_row + blockIdx.x;
  const float inv_temperature = args.params.inv_temperature;
  const Logit* row = args.logits + static_cast<int64_t>(blockIdx.x) * args.row_stride;

  RowSoftmax sm{};
  if constexpr (!STORED_ROWS) sm = block_row_softmax<Logit, THREADS>(row, args.vocab_size, inv_temperature, storage);
  if (threadIdx.x == 0) shared_step = policy_loss_token_step<Logit, STORED_ROWS>(args, t, sm);
  if constexpr (WRITE_GRAD) {
    __syncthreads();
    const TokenStep step = shared_step;
    const bool overflow = block_row_gradient<Logit, THREADS>(
        row, args.grad + static_cast<int64_t>(blockIdx.x) * args.grad_row_stride, args.vocab_size,
        args.target_ids[t], step.softmax, step.a, step.b, inv_temperature);
    if (overflow && threadIdx.x == 0) gradient_overflow_row_end(args, t);
  }
}

// ---------------------------------------------------------------------------
// Fixed-order reduction of n MetricSums<double>: block k sums [k * chunk, (k + 1) * chunk)
// (per thread in index order, then cub::BlockReduce), writing out[k]. The split depends only
// on n, so the same inputs give the same bits on every run. 136 bytes read per token.

struct MetricSumsMerge {
  CGRPO_ROW_HD MetricSums<double> operator()(const MetricSums<double>& a,
                                                           const MetricSums<double>& b) const {
    return metric_sums_merge(a, b);
  }
};

// Thread `tid` of block `block`: tokens block * chunk + tid, + THREADS, ... in index order.
template <int THREADS>
CGRPO_ROW_HD MetricSums<double> thread_metric_sums(const MetricSums<double>* in, int64_t n, int64_t chunk, int64_t block,
                                                   int tid) {
  const int64_t begin = block * chunk;
  const int64_t end = begin + chunk < n ? begin + chunk : n;
  MetricSums<double> acc = metric_sums_zero<double>();
  for (int64_t t = begin + tid; t < end; t += THREADS) acc = metric_sums_merge(acc, in[t]);
  return acc;
}

template <int THREADS>
__global__ void __launch_bounds__(THREADS)
    reduce_metric_sums_kernel(const MetricSums<double>* in, int64_t n, int64_t chunk, MetricSums<double>* out) {
  using Reduce = cub::BlockReduce<MetricSums<double>, THREADS>;
  __shared__ typename Reduce::TempStorage storage;
  const MetricSums<double> acc = thread_metric_sums<THREADS>(in, n, chunk, blockIdx.x, threadIdx.x);
  const MetricSums<double> total = Reduce(storage).Reduce(acc, MetricSumsMerge{});
  if (threadIdx.x == 0) out[blockIdx.x] = total;
}

}  // namespace cgrpo::cuda
