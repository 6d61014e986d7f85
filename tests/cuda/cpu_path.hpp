// tests/cuda/cpu_path.hpp: the CPU path in double behind a plain interface, for the GPU tests
// (cpu_path.cpp), and the tests' host batch: tests/support's batch plus what a call adds to it.
#pragma once

#include <cstdint>
#include <vector>

#include <cgrpo/base/layout.hpp>
#include <cgrpo/base/status.hpp>
#include <cgrpo/loss/aggregation.hpp>
#include <cgrpo/loss/config.hpp>
#include <cgrpo/loss/metrics.hpp>

#include "support_headers.hpp"  // support::Batch, support::LibraryBatch

namespace gpu_test {

// One batch in double on the host (support::Batch: logits [T, stride] whose padding columns may
// hold NaN, per-token arrays [T], the layout; an empty rollout_logp or selection: none), and how a
// call passes it: the caller's weights (w_pg, w_h, w_kl) or none (the loss computes them; w_* then
// only give the weights' size), the caller's global counts.
struct HostBatch : support::Batch {
  bool computed_weights = false;
  cgrpo::AggregationScale scale;
  bool zero_length_padded = false;  // an empty batch laid out as B padded rows of length 0

  support::Weights weights() const { return computed_weights ? support::Weights::computed : support::Weights::caller; }
  cgrpo::SequenceLayout view_layout() const {
    return zero_length_padded ? cgrpo::SequenceLayout::padded(B, 0) : layout();
  }
};

// The library's view of a host batch for `config` in precision Real (support::LibraryBatch: the
// arrays the config reads), with the batch's weights rule, global counts and layout. The CPU path
// and the CUDA path (host copies, then device copies) take the same view.
template <typename Real>
struct HostLibraryBatch : support::LibraryBatch<Real> {
  HostLibraryBatch(const HostBatch& hb, const cgrpo::LossConfig& config)
      : support::LibraryBatch<Real>(hb, config, hb.weights()) {
    this->view.scale = hb.scale;
    this->view.layout = hb.view_layout();
    if (hb.T == 0 && !hb.computed_weights) {  // an empty batch with the caller's (empty, non-null) weights
      static const Real none[1] = {Real(0)};
      this->view.pg_weights = none;
      this->view.entropy_weights = config.entropy.coef != 0 ? none : nullptr;
      this->view.kl_weights = config.kl_on() ? none : nullptr;
    }
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
