// Sizes near the limits: validation computes every byte count and row count without overflow
// and names the field that does not fit; a batch whose shape is valid but too large for memory
// gives out_of_memory, never an exception. The arrays here are never read (pointers to nowhere):
// each call must refuse before touching memory.
#include <catch2/catch.hpp>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/critique/critique_stage.hpp>
#include <cgrpo/parallel/global_scale.hpp>
#include <cgrpo/parallel/group_stats.hpp>
#include <cgrpo/parallel/vocab_parallel.hpp>
#include <cstdint>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "batch.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define CGRPO_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CGRPO_TEST_ASAN 1
#endif
#endif

namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
using Code = cgrpo::StatusCode;

// Address k << 56: far apart, so arrays of up to 2^56 bytes never overlap; never dereferenced.
template <typename T>
T* nowhere(int k) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(k) << 56);
}

bool says(const cgrpo::Status& s, const std::string& a, const std::string& b = "") {
  const std::string m = s.message;
  return m.find(a) != std::string::npos && (b.empty() || m.find(b) != std::string::npos);
}

cgrpo::PolicyLossBatch<float> batch_nowhere(int64_t T, int64_t V, int64_t stride = 0) {
  cgrpo::PolicyLossBatch<float> b;
  b.logits = nowhere<const float>(1);
  b.num_tokens = T;
  b.vocab_size = V;
  b.row_stride = stride;
  b.target_ids = nowhere<const int32_t>(2);
  b.mask = nowhere<const uint8_t>(3);
  b.advantages = nowhere<const float>(4);
  b.old_logp = nowhere<const float>(5);
  b.pg_weights = nowhere<const float>(6);
  b.entropy_weights = nowhere<const float>(10);  // LossConfig{} has an entropy term
  return b;
}

// The old mode-only aggregation_weights: one mode at the paper's conventions, as the policy term
// of a config that sets nothing else.
template <typename Real>
cgrpo::Status mode_weights(cgrpo::Aggregation mode, const cgrpo::SequenceLayout& layout, const uint8_t* mask,
                           const cgrpo::AggregationScale& scale, Real* w) {
  cgrpo::LossConfig c;
  c.aggregation.policy = mode;
  c.aggregation.convention = cgrpo::AggregationConvention{};
  return cgrpo::aggregation_weights(c, cgrpo::LossTerm::policy, layout, mask, scale, w);
}

struct Outputs {
  cgrpo::LossMetrics metrics;
  cgrpo::PolicyLossOutputs<float> out;
  Outputs() {
    metrics.loss = -3.5;
    out.metrics = &metrics;
  }
};

}  // namespace

TEST_CASE("sizes: batch shapes whose byte counts overflow int64 are refused before any read", "[sizes]") {
  struct Case {
    int64_t T, V, stride, grad_stride;
    const char* field;
  };
  const Case cases[] = {
      {kMax / 2, 4, 0, 0, "logits"},            // T x V x 4 bytes
      {kMax / 4 + 1, 1, 0, 0, "logits"},        // T x 4 bytes
      {3, kMax / 2, 0, 0, "logits"},            // one row of V floats
      {4, 8, kMax / 3, 0, "logits"},            // (T - 1) x row_stride
      {2, kMax, 0, 0, "logits"},                // V alone
      {1 << 20, 16, 0, kMax / 4, "grad_logits"},  // the gradient's own stride
      {kMax, 1, 0, 0, "logits"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.T, c.V, c.stride, c.grad_stride);
    cgrpo::PolicyLossBatch<float> b = batch_nowhere(c.T, c.V, c.stride);
    Outputs o;
    if (c.grad_stride) {
      o.out.grad_logits = nowhere<float>(9);
      o.out.grad_row_stride = c.grad_stride;
    }
    const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(cgrpo::LossConfig{}, b, o.out);
    INFO(s.message);
    CHECK(s.code == Code::invalid_argument);
    CHECK(says(s, c.field, "overflow"));
    CHECK(o.metrics.loss == -3.5);
    if (!c.grad_stride) {  // the same shape through the log-prob pass
      const cgrpo::Status t = cgrpo::cpu::token_logprobs(nowhere<const float>(1), c.T, c.V, c.stride,
                                                         nowhere<const int32_t>(2), 1.0, nowhere<float>(7),
                                                         nowhere<float>(8));
      INFO(t.message);
      CHECK(t.code == Code::invalid_argument);
      CHECK(says(t, "overflow"));
    }
  }
  // An array that would run past the end of the address space.
  cgrpo::PolicyLossBatch<float> b = batch_nowhere(1000, 1000);
  b.logits = reinterpret_cast<const float*>(UINTPTR_MAX - 4096 + 1);
  Outputs o;
  const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(cgrpo::LossConfig{}, b, o.out);
  CHECK(s.code == Code::invalid_argument);
  CHECK(says(s, "logits", "address space"));
}

// Found by fuzz_fused_loss: the in-place exemption compared the byte sizes of an output and its
// input (row_elems x elem_bytes) before it knew the two overlap, so an empty batch (T = 0, no range
// checked) with V near INT64_MAX multiplied past int64: undefined behaviour, which the sanitize
// preset (UBSan) turns into an abort. The exemption is now asked only of overlapping, checked spans.
TEST_CASE("sizes: an empty batch with a huge vocabulary and the gradient in place", "[sizes]") {
  for (int64_t V : {kMax, kMax / 4 + 1, kMax / 2}) {
    CAPTURE(V);
    cgrpo::PolicyLossBatch<float> b = batch_nowhere(0, V);
    Outputs o;
    o.out.grad_logits = const_cast<float*>(b.logits);
    CHECK(cgrpo::cpu::fused_policy_loss(cgrpo::LossConfig{}, b, o.out).ok());  // no row: nothing to do
    cgrpo::BufferTable table;
    table.input(cgrpo::row_span("logits", b.logits, 0, V, V));
    table.output(cgrpo::row_span("grad_logits", o.out.grad_logits, 0, V, V, "logits"));
    CHECK(cgrpo::check_buffers(table).ok());
    cgrpo::BufferTable nulls;  // both absent: the same (null) pointer
    nulls.input(cgrpo::row_span("logits", static_cast<const float*>(nullptr), 0, V, V));
    nulls.output(cgrpo::row_span("grad_logits", static_cast<float*>(nullptr), 0, V, V, "logits"));
    CHECK(cgrpo::check_buffers(nulls).ok());
  }
}

TEST_CASE("sizes: layouts whose row count overflows int64", "[sizes]") {
  const auto huge = cgrpo::SequenceLayout::padded(int64_t{1} << 40, int64_t{1} << 40);
  const auto negative_count = cgrpo::SequenceLayout::padded(-3, 5);
  std::vector<double> w(4, 7.0);
  const std::vector<uint8_t> mask(4, 1);
  for (const auto& layout : {huge, cgrpo::SequenceLayout::padded(kMax, 2), cgrpo::SequenceLayout::padded(3, kMax)}) {
    const cgrpo::Status s = mode_weights(cgrpo::Aggregation::token_mean, layout, nowhere<const uint8_t>(1), {},
                                                       nowhere<double>(2));
    INFO(s.message);
    CHECK(s.code == Code::invalid_argument);
    CHECK(says(s, "padded_length", "overflow"));
    const cgrpo::Status p = cgrpo::broadcast_to_tokens(layout, nowhere<const double>(1), nowhere<double>(2));
    CHECK(says(p, "padded_length", "overflow"));
    cgrpo::parallel::AggregationPartials partials;
    partials.token_count = -1;
    CHECK(says(cgrpo::parallel::aggregation_partials(layout, nowhere<const uint8_t>(1), &partials), "overflow"));
    CHECK(partials.token_count == -1);
    // The fused loss reads the layout under GSPO.
    cgrpo::PolicyLossBatch<float> b = batch_nowhere(12, 8);
    b.layout = layout;
    Outputs o;
    CHECK(says(cgrpo::cpu::fused_policy_loss(cgrpo::verl_gspo().loss, b, o.out), "padded_length", "overflow"));
  }
  // A negative count is an error, not a read before the offsets (packed) or a negative row count.
  const int64_t offsets[] = {0, 2, 4};
  for (const auto& layout : {negative_count, cgrpo::SequenceLayout::packed(-2, offsets + 2)}) {
    const cgrpo::Status s = mode_weights(cgrpo::Aggregation::token_mean, layout, mask.data(), {}, w.data());
    CHECK(s.code == Code::invalid_argument);
    CHECK(says(s, "num_sequences"));
  }
  CHECK(w == std::vector<double>(4, 7.0));
}

TEST_CASE("sizes: vocabulary shards, group statistics and advantages near the limits", "[sizes]") {
  // A shard whose begin + size overflows: refused (it used to wrap and pass).
  // Two one-token responses, V = 3, every logit 0.5; the caller's weights 0.5.
  support::Batch batch = support::padded_batch(2, 1, 3);
  batch.logits.assign(6, 0.5);
  batch.targets = {1, 2};
  batch.adv.assign(2, 1.0);
  batch.old_logp.assign(2, -1.0);
  batch.w_pg.assign(2, 0.5);
  batch.w_h.assign(2, 0.5);
  support::LibraryBatch<float> lib(batch, cgrpo::LossConfig{}, support::Weights::caller);
  const cgrpo::PolicyLossBatch<float>& b = lib.view;
  std::vector<cgrpo::RowStats<double>> stats(2);
  std::vector<double> target(2, -9.0);
  for (const cgrpo::parallel::VocabShard shard : {cgrpo::parallel::VocabShard{kMax - 1, 3, kMax},
                                                   cgrpo::parallel::VocabShard{kMax, 3, kMax}}) {
    const cgrpo::Status s = cgrpo::parallel::vocab_shard_row_stats(cgrpo::LossConfig{}, b, shard, stats.data(), target.data());
    INFO(s.message);
    CHECK(s.code == Code::invalid_argument);
    CHECK(says(s, "vocab shard"));
    CHECK(target == std::vector<double>(2, -9.0));
  }

  // Group statistics of G groups span G x 3 and G x 2 doubles.
  namespace par = cgrpo::parallel;
  const int32_t ids[] = {0};
  const double rewards[] = {1.0};
  for (int64_t G : {kMax / 2, kMax / 3 + 1}) {
    CAPTURE(G);
    const cgrpo::GroupAssignment groups{1, ids, G};
    CHECK(says(par::group_partial_stats(groups, rewards, 0.0, nowhere<double>(1), nowhere<double>(2)), "sums",
               "overflow"));
    CHECK(says(par::group_partial_stats_merge(G, nowhere<const double>(1), nowhere<const double>(2), nowhere<double>(3),
                                              nowhere<double>(4)),
               "overflow"));
    double a = 5.0;
    CHECK(says(par::group_advantages_from_stats(cgrpo::AdvantageEstimator::grpo, groups, rewards,
                                                nowhere<const double>(1), nowhere<const double>(2), 0.0, 1e-6, &a),
               "overflow"));
    CHECK(a == 5.0);
  }
  // Per-response arrays: n x 8 bytes.
  CHECK(says(cgrpo::group_advantages(cgrpo::AdvantageEstimator::grpo, {kMax / 4, nowhere<const int32_t>(1), 1},
                                     nowhere<const double>(2), nullptr, 1e-6, nowhere<double>(3)),
             "rewards", "overflow"));
  // A number of groups past what a vector can hold: out_of_memory, not an exception.
  double a = 5.0;
  const cgrpo::Status s = cgrpo::group_advantages(cgrpo::AdvantageEstimator::grpo, {1, ids, int64_t{1} << 61}, rewards,
                                                  nullptr, 1e-6, &a);
  INFO(s.message);
  CHECK(s.code == Code::out_of_memory);
  CHECK(a == 5.0);
}

TEST_CASE("sizes: group assembly whose padded rows overflow int64", "[sizes]") {
  std::vector<cgrpo::critique::QuestionRollouts> qs(2);
  for (auto& q : qs) {
    q.initial = {{{1, 2}, 1.0}, {{3}, 0.0}};
    q.refinements = {{{4, 5}, 1.0}};
  }
  cgrpo::critique::GroupAssemblyOptions o;
  o.layout = cgrpo::critique::BatchLayout::padded;
  o.padded_length = kMax / 3;
  cgrpo::critique::AssembledBatch<double> out;
  out.padded_length = -42;
  const cgrpo::Status s = cgrpo::critique::assemble_groups(cgrpo::Recipe{}, qs, o, out);
  INFO(s.message);
  CHECK(s.code == Code::invalid_argument);
  CHECK(says(s, "padded_length", "overflow"));
  CHECK(out.padded_length == -42);
}

TEST_CASE("sizes: a failed allocation becomes out_of_memory", "[sizes]") {
  // The helper every entry point runs its allocating part in.
  const cgrpo::Status a = cgrpo::no_throw("entry_a", []() -> cgrpo::Status { throw std::bad_alloc(); });
  CHECK(a.code == Code::out_of_memory);
  CHECK(says(a, "entry_a"));
  const cgrpo::Status l = cgrpo::no_throw("entry_b", []() -> cgrpo::Status { throw std::length_error("too long"); });
  CHECK(l.code == Code::out_of_memory);
  CHECK(says(l, "entry_b"));
  CHECK(std::string(cgrpo::status_code_name(Code::out_of_memory)) == "out_of_memory");
#if defined(CGRPO_TEST_ASAN)
  WARN("AddressSanitizer aborts on an allocation of terabytes instead of throwing: the allocations below run in "
       "builds without it");
#else
  // Valid shapes that no machine can hold, whatever its overcommit policy: more bytes than a
  // 57-bit address space has. 2^52 rows of workspace (48 bytes each).
  const int64_t T = int64_t{1} << 52;
  Outputs o;
  const cgrpo::Status f = cgrpo::cpu::fused_policy_loss(cgrpo::LossConfig{}, batch_nowhere(T, 1), o.out);
  INFO(f.message);
  CHECK(f.code == Code::out_of_memory);
  CHECK(o.metrics.loss == -3.5);
  const cgrpo::Status t = cgrpo::cpu::token_logprobs(nowhere<const float>(1), T, 1, 0, nowhere<const int32_t>(2), 1.0,
                                                     nowhere<float>(3), nowhere<float>(4));
  CHECK(t.code == Code::out_of_memory);
  // Group assembly of 2 x 2^56 padded rows (4-byte target ids: 2^59 bytes).
  std::vector<cgrpo::critique::QuestionRollouts> qs(1);
  qs[0].initial = {{{1}, 1.0}, {{2}, 0.0}};
  qs[0].refinements = {{{3}, 1.0}};
  cgrpo::critique::GroupAssemblyOptions opt;
  opt.layout = cgrpo::critique::BatchLayout::padded;
  opt.padded_length = int64_t{1} << 56;
  cgrpo::critique::AssembledBatch<float> out;
  const cgrpo::Status g = cgrpo::critique::assemble_groups(cgrpo::Recipe{}, qs, opt, out);
  INFO(g.message);
  CHECK(g.code == Code::out_of_memory);
  // Group advantages over 2^59 groups (2^62 bytes of statistics).
  const int32_t ids[] = {0};
  const double rewards[] = {1.0};
  double adv = 5.0;
  CHECK(cgrpo::group_advantages(cgrpo::AdvantageEstimator::grpo, {1, ids, int64_t{1} << 59}, rewards, nullptr, 1e-6, &adv)
            .code == Code::out_of_memory);
  CHECK(adv == 5.0);
#endif
}
