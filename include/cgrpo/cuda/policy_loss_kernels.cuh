// cgrpo/cuda/policy_loss_kernels.cuh: the row kernels of the policy loss (one block per logits row: the
// fused loss, the statistics pass, the gradient pass) and the fixed-order reduction of the metric sums.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "cgrpo/loss/config.hpp"
#include "cgrpo/loss/metrics.hpp"
#include "cgrpo/loss/policy_loss_batch.hpp"
#include "cgrpo/loss/token_loss.hpp"
#include "cgrpo/math/token_math.hpp"
#include "cgrpo/cuda/block_row_ops.cuh"
#include "cgrpo/cuda/device_status.cuh"
#include "cgrpo/cuda/vector_io.cuh"
#include "cgrpo/cuda/workspace.cuh"

namespace cgrpo::cuda {

// The rows (responses) of a batch on the device: row i owns token rows [begin(i), end(i)). A batch
// without a layout is one row of every token (padded_length = T).
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

// The per-token arrays validate_batch_values reads, as the kernels check them (device pointers).
struct TokenValueArrays {
  const uint8_t* mask;
  const uint8_t* kinds;        // nullptr: every token initial
  const uint8_t* selection;    // kl_cov / clip_cov: the caller's selection (nullptr: none)
  const float* advantages;
  const float* pg_weights;     // nullptr: the loss computes the weights
  const float* entropy_weights;
  const float* kl_weights;
  const float* reference;      // the ratio's reference: old_logp, or rollout_logp in verl's bypass mode
  const float* rollout_logp;   // read where check_rollout
  const float* ref_logp;       // read where kl_on
  uint32_t reference_field;    // kFieldOldLogp or kFieldRolloutLogp (its name in the message)
  bool kl_on;
  bool check_rollout;          // the off-policy corrections read rollout_logp
};

// The checks validate_batch_values does on the CPU, for one token, in its order; flags the first
// failure and returns false. At a masked token only the mask is read (padding may hold NaN or -inf).
CGRPO_ROW_HD bool flag_value(DeviceStatus* status, int64_t t, uint32_t field) {
  flag_row(status, kNonFiniteValue, t, field);
  return false;
}

CGRPO_ROW_HD bool token_values_ok(const TokenValueArrays& v, int64_t t, DeviceStatus* status) {
  const uint8_t m = v.mask[t];
  if (m > 1) return flag_row(status, kInvalidMaskOrKind, t, (kByteMask << 8) | m), false;
  if (!m) return true;
  const uint8_t kind = v.kinds ? v.kinds[t] : uint8_t(kInitial);
  if (kind > 1) return flag_row(status, kInvalidMaskOrKind, t, (kByteKinds << 8) | kind), false;
  if (!isfinite(v.advantages[t])) return flag_value(status, t, kFieldAdvantages);
  if (v.pg_weights && !isfinite(v.pg_weights[t])) return flag_value(status, t, kFieldPgWeights);
  if (v.entropy_weights && !isfinite(v.entropy_weights[t])) return flag_value(status, t, kFieldEntropyWeights);
  if (v.kl_weights && v.kl_on && !isfinite(v.kl_weights[t])) return flag_value(status, t, kFieldKlWeights);
  const bool initial = kind == kInitial;
  if (initial && !isfinite(v.reference[t])) return flag_value(status, t, v.reference_field);
  if (initial && v.check_rollout && !isfinite(v.rollout_logp[t])) return flag_value(status, t, kFieldRolloutLogp);
  if (v.kl_on && !isfinite(v.ref_logp[t])) return flag_value(status, t, kFieldRefLogp);
  if (v.selection && v.selection[t] > 1)
    return flag_row(status, kInvalidMaskOrKind, t, (kByteSelection << 8) | v.selection[t]), false;
  return true;
}

// Everything the single-kernel path reads and writes, passed by value (about 230 bytes of kernel parameters).
template <typename Logit>
struct PolicyLossArgs {
  const Logit* logits;
  int64_t vocab_size, row_stride;
  Logit* grad;  // nullptr in the forward-only kernels
  int64_t grad_row_stride;
  const int32_t* target_ids;
  TokenValueArrays values;
  float* logp_out;     // optional
  float* entropy_out;  // optional
  TokenLossParams<float> params;
  MetricSums<double>* token_sums;  // [T], one per token, reduced in a fixed order afterwards
  DeviceStatus* status;
  int64_t first_row;               // the batch row of logits row 0 (and grad row 0): the per-token arrays
                                   // stay indexed by batch row (a chunked caller; 0 otherwise)
};

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
// 4-8 bytes per row (plus 16 bytes of StoredRow in the statistics pass of the two-pass loss).

template <typename Logit>
struct TokenLogprobArgs {
  const Logit* logits;
  int64_t vocab_size, row_stride;
  const int32_t* target_ids;
  float inv_temperature;
  float* logp_out;     // optional
  float* entropy_out;  // optional
  StoredRow* rows;     // optional (the two-pass loss's statistics)
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
// The fused policy loss, block = one row, THREADS threads (configs without row or batch coupling
// and with the caller's weights):
//   1. sweep 1 (block_row_softmax);
//   2. thread 0: checks, cgrpo::token_loss<float> (the function the CPU path calls), the
//      token's MetricSums<double> to the workspace, a_t and b_t to shared memory;
//   3. WRITE_GRAD: sweep 2 (block_row_gradient) into grad (zeros for masked or flagged rows).
// Bytes per row: V*sizeof(Logit) read twice (the second read mostly from L2: a block re-reads
// the row it has just read) + V*sizeof(Logit) written; forward only: read once.

// a_t, b_t and the row's softmax, from thread 0 to the block (shared memory).
struct TokenStep {
  float a, b;
  RowSoftmax softmax;
};

// What thread 0 does for row t once the row's softmax is known: the checks, cgrpo::token_loss<float>,
// the token's MetricSums<double> into the workspace; returns a_t and b_t (0 and 0 for a flagged row).
template <typename Logit>
CGRPO_ROW_HD TokenStep policy_loss_token_step(const PolicyLossArgs<Logit>& args, int64_t t, RowSoftmax sm) {
  const Logit* row = args.logits + (t - args.first_row) * args.row_stride;
  const int32_t target = args.target_ids[t];
  const TokenValueArrays& v = args.values;
  float logp;
  bool ok = target_logp(row, t, target, args.vocab_size, sm, args.params.inv_temperature, args.status, logp);
  ok = token_values_ok(v, t, args.status) && ok;
  if (args.logp_out) args.logp_out[t] = logp;
  if (args.entropy_out) args.entropy_out[t] = sm.entropy;

  MetricSums<double> sums = metric_sums_zero<double>();
  TokenStep step{0.0f, 0.0f, sm};
  if (ok && v.mask[t]) {  // a masked token adds nothing and none of its values are read
    TokenInputs<float> in{};
    in.valid = true;
    in.in_pg = true;
    in.pg_factor = 1.0f;
    in.logp = logp;
    in.entropy = sm.entropy;
    in.refinement = v.kinds && v.kinds[t] == kRefinement;
    in.old_logp = in.refinement ? 0.0f : v.reference[t];
    in.ref_logp = v.kl_on ? v.ref_logp[t] : 0.0f;
    in.advantage = v.advantages[t];
    in.w_pg = v.pg_weights[t];
    in.w_entropy = v.entropy_weights ? v.entropy_weights[t] : 0.0f;
    in.w_kl = v.kl_on ? v.kl_weights[t] : 0.0f;
    const TokenResult<float> res = token_loss(in, args.params);
    metric_sums_add(sums, in, res, args.params);
    step.a = res.dJ_dlogp;
    step.b = res.dJ_dentropy;
  }
  args.token_sums[t] = sums;
  return step;
}

// A row whose gradient overflowed Logit (block_row_gradient has zeroed it): flagged, and its
// share of the sums taken back, as for every other flagged row. Thread 0, after the sweep. A
// non-finite a_t or b_t is named as such (the CPU path's check after the per-token pass): the fused
// kernel finds it here rather than in the token step, where the check would cost registers.
CGRPO_ROW_HD void gradient_overflow_row_end(DeviceStatus* status, MetricSums<double>* token_sums, int64_t t,
                                            uint32_t dtype_code, float a, float b) {
  if (isfinite(a) && isfinite(b)) flag_row(status, kGradientOverflow, t, dtype_code);
  else flag_row(status, kNonFiniteTokenGrad, t, 0u);
  token_sums[t] = metric_sums_zero<double>();
}

template <typename Logit, int THREADS, bool WRITE_GRAD>
__global__ void __launch_bounds__(THREADS, RowKernelOccupancy<THREADS>::kLossBlocks)
    policy_loss_kernel(PolicyLossArgs<Logit> args) {
  __shared__ BlockRowSoftmaxStorage<THREADS> storage;
  __shared__ TokenStep shared_step;
  const int64_t t = args.first_row + blockIdx.x;
  const float inv_temperature = args.params.inv_temperature;
  const Logit* row = args.logits + static_cast<int64_t>(blockIdx.x) * args.row_stride;

  const RowSoftmax sm = block_row_softmax<Logit, THREADS>(row, args.vocab_size, inv_temperature, storage);
  if (threadIdx.x == 0) shared_step = policy_loss_token_step<Logit>(args, t, sm);
  if constexpr (WRITE_GRAD) {
    __syncthreads();
    const TokenStep step = shared_step;
    const bool overflow = block_row_gradient<Logit, THREADS>(
        row, args.grad + static_cast<int64_t>(blockIdx.x) * args.grad_row_stride, args.vocab_size, args.target_ids[t],
        step.softmax, step.a, step.b, inv_temperature);
    if (overflow && threadIdx.x == 0)
      gradient_overflow_row_end(args.status, args.token_sums, t, LogitTraits<Logit>::code, step.a, step.b);
  }
}

// ---------------------------------------------------------------------------
// The gradient pass of the two-pass loss, block = one row: sweep 2 from the row's StoredRow (the
// statistics pass) and its a_t, b_t (the token pass and the row post-pass). Reads the row's V
// logits (from DRAM: the statistics pass read it long before) and writes V gradient entries.

template <typename Logit>
struct StoredGradientArgs {
  const Logit* logits;
  int64_t vocab_size, row_stride;
  Logit* grad;
  int64_t grad_row_stride;
  const int32_t* target_ids;
  float inv_temperature;
  const StoredRow* rows;
  const TokenGrad* grads;
  MetricSums<double>* token_sums;
  DeviceStatus* status;
  int64_t first_row;  // the batch row of logits row 0 and grad row 0 (as PolicyLossArgs::first_row)
};

// Thread 0: the row's softmax and a_t, b_t (a flagged row has a = b = 0: its gradient is zeros).
template <typename Logit>
CGRPO_ROW_HD TokenStep stored_token_step(const StoredGradientArgs<Logit>& args, int64_t t) {
  const StoredRow r = args.rows[t];
  const TokenGrad g = args.grads[t];
  const RowSoftmax sm{r.max, r.log_sum, r.entropy, !isnan(r.max)};
  return sm.finite ? TokenStep{g.a, g.b, sm} : TokenStep{0.0f, 0.0f, sm};
}

template <typename Logit, int THREADS>
__global__ void __launch_bounds__(THREADS, RowKernelOccupancy<THREADS>::kLossBlocks)
    stored_gradient_kernel(StoredGradientArgs<Logit> args) {
  __shared__ TokenStep shared_step;
  const int64_t t = args.first_row + blockIdx.x;
  const int64_t local = blockIdx.x;
  if (threadIdx.x == 0) shared_step = stored_token_step(args, t);
  __syncthreads();
  const TokenStep step = shared_step;
  const bool overflow = block_row_gradient<Logit, THREADS>(args.logits + local * args.row_stride,
                                                           args.grad + local * args.grad_row_stride, args.vocab_size,
                                                           args.target_ids[t], step.softmax, step.a, step.b,
                                                           args.inv_temperature);
  if (overflow && threadIdx.x == 0)
    gradient_overflow_row_end(args.status, args.token_sums, t, LogitTraits<Logit>::code, step.a, step.b);
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
