// cgrpo/cuda/device_status.cuh: the status word kernels write instead of garbage, and its host decoding.
// Each error kind keeps the first (lowest) bad row, so the reported row does not depend on scheduling.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cgrpo/base/status.hpp"

namespace cgrpo::cuda {

// Kinds of per-row errors found on the device, in the order the host reports them
// (the CPU path checks per-token values before the logits, so ids come first).
enum DeviceError : int {
  kTargetOutOfRange = 0,       // detail: the target id
  kInvalidMaskOrKind = 1,      // detail: (field << 8) | value, field 0 mask, 1 kinds
  kNonFiniteValue = 2,         // detail: which per-token array (NonFiniteField)
  kNonFiniteRow = 3,           // NaN or +inf logits, or every logit -inf
  kNonFiniteTargetLogit = 4,   // the target's logit is -inf (log p = -inf); detail: the target id
  kNonFiniteTokenGrad = 5,     // a_t or b_t (dJ/dlogp, dJ/dH) is not finite: a term overflowed
  kGradientOverflow = 6,       // a dJ/dz entry is not finite in the logits' dtype; detail: LogitTraits::code
  kNumDeviceErrors = 7,
};

// The logits dtype named by a kGradientOverflow detail.
inline const char* logit_dtype_name(uint32_t code) {
  return code == 0 ? "fp32" : code == 1 ? "fp16" : code == 2 ? "bf16" : "the logits' dtype";
}

enum NonFiniteField : uint32_t {
  kFieldAdvantages = 0, kFieldPgWeights = 1, kFieldEntropyWeights = 2, kFieldOldLogp = 3, kFieldKlWeights = 4,
  kFieldRefLogp = 5, kFieldRolloutLogp = 6,
};

// The byte arrays a kInvalidMaskOrKind detail names ((field << 8) | value).
enum ByteField : uint32_t { kByteMask = 0, kByteKinds = 1, kByteSelection = 2 };

// 64 bytes in the workspace. first[k] = (row << 32) | detail of the lowest bad row of kind k;
// all ones means none. Reset with cudaMemsetAsync(0xFF) before every launch. vocab_size is
// written by whoever flags an out-of-range id (every writer writes the same value), for the message.
struct DeviceStatus {
  unsigned long long first[kNumDeviceErrors];
  long long vocab_size;
};

// Keeps the lowest (row, detail) of each kind: atomicMin on the device, a plain min in the host tests.
__host__ __device__ __forceinline__ void flag_row(DeviceStatus* status, DeviceError kind, int64_t row,
                                                  uint32_t detail) {
  const unsigned long long code = (static_cast<unsigned long long>(row) << 32) | detail;
#if defined(__CUDA_ARCH__)
  atomicMin(&status->first[kind], code);
#else
  if (code < status->first[kind]) status->first[kind] = code;
#endif
}

inline const char* non_finite_field_name(uint32_t field) {
  switch (field) {
    case kFieldAdvantages: return "advantages";
    case kFieldPgWeights: return "pg_weights";
    case kFieldEntropyWeights: return "entropy_weights";
    case kFieldOldLogp: return "old_logp";
    case kFieldKlWeights: return "kl_weights";
    case kFieldRefLogp: return "ref_logp";
    case kFieldRolloutLogp: return "rollout_logp";
  }
  return "unknown";
}

// The Status a host copy of the word stands for; the messages follow the CPU path's.
// Rows that were flagged got a zero gradient and no share in the loss and metrics.
// Which fault is reported follows the CPU path's order: its validation walks the tokens in
// order and checks id, mask, kind, then the per-token values, so among kinds 0-2 the lowest
// row wins (ties in that kind order); only then a non-finite row, then a -inf target logit,
// then a non-finite a_t / b_t (the CPU's check after the per-token pass), then a gradient that
// overflowed (found last on the CPU path too).
inline Status decode_device_status(const DeviceStatus& s) {
  constexpr unsigned long long none = ~0ull;
  int pick = -1;
  for (int k = kTargetOutOfRange; k <= kNonFiniteValue; ++k)
    if (s.first[k] != none && (pick < 0 || (s.first[k] >> 32) < (s.first[pick] >> 32))) pick = k;
  for (int k = kNonFiniteRow; k < kNumDeviceErrors && pick < 0; ++k)
    if (s.first[k] != none) pick = k;
  if (pick >= 0) {
    const int k = pick;
    const long long row = static_cast<long long>(s.first[k] >> 32);
    const uint32_t detail = static_cast<uint32_t>(s.first[k] & 0xffffffffu);
    switch (k) {
      case kTargetOutOfRange:
        return make_error(StatusCode::out_of_range, "target_ids[%lld] = %d is outside [0, %lld)", row,
                          static_cast<int32_t>(detail), s.vocab_size);
      case kInvalidMaskOrKind:
        if ((detail >> 8) == kByteMask)
          return make_error(StatusCode::invalid_argument, "mask[%lld] = %u must be 0 or 1", row, detail & 0xffu);
        if ((detail >> 8) == kByteSelection)
          return make_error(StatusCode::invalid_argument, "selection[%lld] = %u must be 0 or 1", row, detail & 0xffu);
        return make_error(StatusCode::invalid_argument, "kinds[%lld] = %u must be 0 (initial) or 1 (refinement)", row,
                          detail & 0xffu);
      case kNonFiniteValue:
        return make_error(StatusCode::non_finite, "%s[%lld] is not finite", non_finite_field_name(detail), row);
      case kNonFiniteRow:
        return make_error(StatusCode::non_finite,
                          "logits row %lld holds NaN or +inf (or every entry is -inf); its gradient was written as zeros",
                          row);
      case kNonFiniteTargetLogit:
        return make_error(StatusCode::non_finite, "target_ids[%lld] = %d has a -inf logit (log p = -inf)", row,
                          static_cast<int32_t>(detail));
      case kNonFiniteTokenGrad:
        return make_error(StatusCode::non_finite,
                          "token %lld: dJ/dlogp is not finite (the policy, KL or entropy term overflowed: check the "
                          "advantages, weights, coefficients and log ratios); its gradient was written as zeros",
                          row);
      case kGradientOverflow:
        return make_error(StatusCode::non_finite,
                          "dJ/dlogits row %lld overflows %s (an entry is beyond its largest finite value); its gradient was written as zeros",
                          row, logit_dtype_name(detail));
    }
  }
  return Status::success();
}

}  // namespace cgrpo::cuda
