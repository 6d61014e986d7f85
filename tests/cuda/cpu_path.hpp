// tests/cuda/cpu_path.hpp: the CPU path in double behind a plain interface, for the GPU tests.
// Compiled by the host compiler (cpu_path.cpp), so that no .cu file has to include Eigen.
#pragma once

#include <cstdint>
#include <vector>

#include <cgrpo/loss/aggregation.hpp>
#include <cgrpo/loss/config.hpp>
#include <cgrpo/base/layout.hpp>
#include <cgrpo/loss/metrics.hpp>
#include <cgrpo/base/status.hpp>

namespace gpu_test {

// One batch in double on the host: logits [T, stride] (the padding columns may hold NaN),
// per-token arrays [T], and the layout (offsets in `offsets` when packed).
struct HostBatch {
  int64_t T = 0, V = 0, stride = 0;
  std::vector<double> logits;
  std::vector<int32_t> targets;
  std::vector<uint8_t> mask, kinds;
  std::vector<double> adv, old_logp, ref_logp, w_pg, w_h, w_kl;
  std::vector<double> rollout_logp;  // empty: the batch has none
  std::vector<uint8_t> selection;    // empty: none (kl_cov / clip_cov select their own tokens)
  bool computed_weights = false;     // pass no weights: the loss computes them (w_pg etc. stay a scale)
  cgrpo::AggregationScale scale;     // the caller's global counts (computed weights)
  int64_t num_sequences = 0;
  bool padded = false;
  int64_t padded_length = 0;
  std::vector<int64_t> offsets;

  cgrpo::SequenceLayout layout() const {
    return padded ? cgrpo::SequenceLayout::padded(num_sequences, padded_length)
                  : cgrpo::SequenceLayout::packed(num_sequences, offsets.data());
  }
};

// cgrpo::cpu::fused_policy_loss<double>; grad is [T, stride] (resized here) unless want_grad is false;
// policy_factor and terms (outputs.policy_factor / token_terms) are written when not null.
cgrpo::Status cpu_fused_policy_loss(const cgrpo::LossConfig& config, const HostBatch& b, bool want_grad,
                                    std::vector<double>& grad, std::vector<double>& logp,
                                    std::vector<double>& entropy, cgrpo::LossMetrics& metrics,
                                    std::vector<double>* policy_factor = nullptr, std::vector<uint8_t>* terms = nullptr);

// cgrpo::cpu::token_logprobs<double>.
cgrpo::Status cpu_token_logprobs(const double* logits, int64_t T, int64_t V, int64_t row_stride, const int32_t* targets,
                                 double temperature, double* logp, double* entropy);

}  // namespace gpu_test
