// tests/torch/test_torch_checks.cpp: every tensor check of the LibTorch wrapper (cgrpo/torch/policy_loss.hpp).
// Each bad tensor must throw c10::Error naming it, its rule and what it has, before metrics or a gradient are written.
#include <torch/types.h>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/torch/policy_loss.hpp>

// glog (through LibTorch) defines CHECK; Catch2's macros go by their prefixed names here.
#define CATCH_CONFIG_PREFIX_ALL
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "batch.hpp"
#include "test_seed.hpp"

namespace {

using cgrpo_torch::PolicyLoss;
using cgrpo_torch::PolicyLossInputs;

// A valid batch of random values (never zeros): B packed responses over T rows, V columns. The
// values come from the tests' batch builder (support::Batch, in double); the tensors hold them in
// the logits' dtype, so that support::LibraryBatch gives the library the very same numbers.
struct Batch {
  support::Batch source;  // the values, in double, and the library's view of them (LibraryBatch)
  torch::Tensor logits;
  PolicyLossInputs in;
  torch::Tensor offsets;  // int64 [B + 1]; in.layout points into it
  cgrpo::LossConfig config;
  int64_t T = 0, V = 0;
};

Batch make_batch(torch::ScalarType real = torch::kDouble) {
  std::mt19937_64 rng = test_seed::fresh_rng();
  torch::manual_seed(static_cast<uint64_t>(rng() >> 1));  // the tests' own torch::randn
  Batch b;
  const int64_t B = 2 + static_cast<int64_t>(rng() % 4), V = 3 + static_cast<int64_t>(rng() % 10);
  support::Batch& src = b.source;
  src = support::random_batch(rng, B, 5, V, 0);
  // The caller's weights: positive, never zero at a valid token.
  std::uniform_real_distribution<double> uni(0.5, 1.5);
  for (auto* w : {&src.w_pg, &src.w_h, &src.w_kl})
    for (double& x : *w) x = uni(rng) / static_cast<double>(src.T);
  b.T = src.T;
  b.V = V;
  b.config = cgrpo::paper_critique_grpo().loss;
  b.config.policy.loss = cgrpo::PolicyLoss::ppo_clip;
  b.config.kl.estimator = cgrpo::KlEstimator::k3;
  b.config.kl.coef = 0.05;
  b.config.entropy.coef = 0.01;

  auto real_tensor = [real](const std::vector<double>& v) { return torch::tensor(v, torch::kDouble).to(real); };
  b.offsets = torch::tensor(src.offsets, torch::kLong);
  b.logits = real_tensor(src.logits).reshape({b.T, b.V}).contiguous();
  PolicyLossInputs& in = b.in;
  in.target_ids = torch::tensor(src.targets, torch::kInt32);
  in.mask = torch::tensor(std::vector<int64_t>(src.mask.begin(), src.mask.end()), torch::kLong).to(torch::kUInt8);
  in.kinds = torch::tensor(std::vector<int64_t>(src.kinds.begin(), src.kinds.end()), torch::kLong).to(torch::kUInt8);
  in.advantages = real_tensor(src.adv);
  in.old_logp = real_tensor(src.old_logp);
  in.ref_logp = real_tensor(src.ref_logp);
  in.rollout_logp = real_tensor(src.rollout_logp);  // checked even when unused
  in.pg_weights = real_tensor(src.w_pg);
  in.entropy_weights = real_tensor(src.w_h);
  in.kl_weights = real_tensor(src.w_kl);
  in.layout = cgrpo_torch::packed_layout(b.offsets);
  return b;
}

// Every per-token input by name, so that each check runs over all of them.
struct Field {
  const char* name;
  torch::Tensor PolicyLossInputs::*member;
  bool required;  // with config.kl != none
};
const std::vector<Field>& fields() {
  static const std::vector<Field> f = {
      {"target_ids", &PolicyLossInputs::target_ids, true},   {"mask", &PolicyLossInputs::mask, true},
      {"kinds", &PolicyLossInputs::kinds, false},            {"advantages", &PolicyLossInputs::advantages, true},
      {"old_logp", &PolicyLossInputs::old_logp, true},       {"ref_logp", &PolicyLossInputs::ref_logp, true},
      {"rollout_logp", &PolicyLossInputs::rollout_logp, false},
      {"pg_weights", &PolicyLossInputs::pg_weights, false},  {"entropy_weights", &PolicyLossInputs::entropy_weights, false},
      {"kl_weights", &PolicyLossInputs::kl_weights, true},
  };
  return f;
}

cgrpo::LossMetrics sentinel_metrics() {
  cgrpo::LossMetrics m;
  std::memset(static_cast<void*>(&m), 0x5A, sizeof(m));  // trivially copyable: bytes compare
  return m;
}

// The call must throw c10::Error whose message holds every one of `want`, leave the metrics
// byte for byte as they were, and produce no gradient for the logits.
void expect_refused(const Batch& b, const torch::Tensor& logits, const std::vector<std::string>& want) {
  torch::Tensor z = logits.defined() ? logits.detach().requires_grad_(logits.is_floating_point() && logits.device().is_cpu())
                                     : logits;
  cgrpo::LossMetrics m = sentinel_metrics();
  const cgrpo::LossMetrics before = m;
  std::string message;
  bool threw = false;
  try {
    torch::Tensor loss = PolicyLoss::apply(z, b.in, b.config, &m);
    loss.backward();
  } catch (const c10::Error& e) {
    threw = true;
    message = e.what_without_backtrace();
  }
  CATCH_INFO("message: " << message);
  CATCH_REQUIRE(threw);
  for (const std::string& w : want) {
    CATCH_INFO("expected in the message: " << w);
    CATCH_CHECK(message.find(w) != std::string::npos);
  }
  CATCH_CHECK(std::memcmp(&m, &before, sizeof(m)) == 0);
  if (z.defined() && z.requires_grad()) CATCH_CHECK(!z.grad().defined());
}

void expect_refused(const Batch& b, const std::vector<std::string>& want) { expect_refused(b, b.logits, want); }

std::string subject(const std::string& name) { return "cgrpo_torch: " + name + " must"; }

// The tensor of another dtype, same values where they fit (a type a caller could plausibly pass).
torch::ScalarType wrong_dtype(const torch::Tensor& t, torch::ScalarType real) {
  switch (t.scalar_type()) {
    case torch::kInt: return torch::kLong;
    case torch::kByte: return torch::kInt;
    default: return real == torch::kDouble ? torch::kFloat : torch::kDouble;
  }
}

std::string dtype_name(torch::ScalarType s) { return c10::toString(s); }

}  // namespace

CATCH_TEST_CASE("a valid batch gives the library's own loss and gradient, with bool masks and strided logits") {
  for (torch::ScalarType real : {torch::kDouble, torch::kFloat}) {
    Batch b = make_batch(real);
    // The library called directly on the same memory.
    cgrpo::LossMetrics want;
    torch::Tensor want_grad = torch::empty_like(b.logits);
    auto direct = [&](auto tag) {
      using Real = decltype(tag);
      support::LibraryBatch<Real> lib(b.source, b.config, support::Weights::caller);
      cgrpo::PolicyLossOutputs<Real> out;
      out.grad_logits = want_grad.data_ptr<Real>();
      out.metrics = &want;
      return cgrpo::cpu::fused_policy_loss(b.config, lib.view, out);
    };
    const cgrpo::Status s = real == torch::kDouble ? direct(double()) : direct(float());
    CATCH_REQUIRE(s.ok());

    auto check = [&](const torch::Tensor& logits, const PolicyLossInputs& in, const char* what) {
      CATCH_INFO(what << ", " << c10::toString(real));
      torch::Tensor z = logits.detach().requires_grad_(true);
      cgrpo::LossMetrics m;
      torch::Tensor loss = PolicyLoss::apply(z, in, b.config, &m);
      (3.0 * loss).backward();
      CATCH_CHECK(m.loss == want.loss);
      CATCH_CHECK(torch::equal(loss, torch::scalar_tensor(want.loss, b.logits.options())));
      CATCH_CHECK(torch::equal(z.grad(), 3.0 * want_grad));
    };
    check(b.logits, b.in, "as made");
    PolicyLossInputs bools = b.in;
    bools.mask = b.in.mask.to(torch::kBool);
    bools.kinds = b.in.kinds.to(torch::kBool);
    check(b.logits, bools, "bool mask and kinds");
    // Rows of a wider buffer: row stride > V, read in place.
    torch::Tensor wide = torch::randn({b.T, b.V + 5}, b.logits.options());
    wide.slice(1, 0, b.V).copy_(b.logits);
    check(wide.slice(1, 0, b.V), b.in, "row stride > V");
    // Optional inputs left out, and KL off with its inputs left out.
    Batch c = b;
    c.config.kl.estimator = cgrpo::KlEstimator::none;
    c.config.kl.coef = 0.0;
    c.in.ref_logp = torch::Tensor();
    c.in.kl_weights = torch::Tensor();
    c.in.kinds = torch::Tensor();
    c.in.entropy_weights = torch::Tensor();
    c.config.entropy.coef = 0.0;  // with caller weights, entropy_weights is needed only for an entropy term
    cgrpo::LossMetrics m;
    CATCH_CHECK_NOTHROW(PolicyLoss::apply(c.logits, c.in, c.config, &m));
    CATCH_CHECK(std::isfinite(m.loss));
    // No rows at all: every per-token tensor is [0] and nothing is read.
    Batch e = b;
    e.logits = b.logits.slice(0, 0, 0);
    for (torch::Tensor* t : {&e.in.target_ids, &e.in.mask, &e.in.kinds, &e.in.advantages, &e.in.old_logp,
                             &e.in.ref_logp, &e.in.rollout_logp, &e.in.pg_weights, &e.in.entropy_weights,
                             &e.in.kl_weights})
      *t = t->slice(0, 0, 0);
    e.in.layout = cgrpo::SequenceLayout();
    CATCH_CHECK_NOTHROW(PolicyLoss::apply(e.logits, e.in, e.config, &m));
    CATCH_CHECK(m.loss == 0.0);
  }
}

CATCH_TEST_CASE("a per-token tensor shorter or longer than T is refused, naming it") {
  for (const Field& f : fields()) {
    for (int64_t delta : {-1, +1}) {
      Batch b = make_batch();
      torch::Tensor& t = b.in.*f.member;
      t = delta < 0 ? t.slice(0, 0, b.T - 1).clone() : torch::cat({t, t.slice(0, 0, 1)});
      CATCH_INFO(f.name << " of length " << b.T + delta);
      expect_refused(b, {subject(f.name), "length " + std::to_string(b.T), "got length " + std::to_string(b.T + delta)});
    }
  }
}

CATCH_TEST_CASE("a per-token tensor or logits of another dtype is refused, naming it") {
  for (torch::ScalarType real : {torch::kDouble, torch::kFloat}) {
    for (const Field& f : fields()) {
      Batch b = make_batch(real);
      torch::Tensor& t = b.in.*f.member;
      const torch::ScalarType want = t.scalar_type(), got = wrong_dtype(t, real);
      t = t.to(got);
      CATCH_INFO(f.name << " as " << dtype_name(got) << " with " << dtype_name(real) << " logits");
      expect_refused(b, {subject(f.name), "dtype " + dtype_name(want), "got " + dtype_name(got)});
    }
  }
  Batch b = make_batch();
  expect_refused(b, b.logits.to(torch::kHalf), {subject("logits"), "Float or Double", "got Half"});
  expect_refused(b, b.logits.to(torch::kLong), {subject("logits"), "got Long"});
}

CATCH_TEST_CASE("a tensor that is not on the CPU (a meta tensor) is refused, naming it") {
  // No GPU here: the meta device gives a tensor with a device but no memory, which is exactly
  // what must never reach data_ptr().
  const torch::TensorOptions meta = torch::TensorOptions().device(c10::kMeta);
  for (const Field& f : fields()) {
    Batch b = make_batch();
    torch::Tensor& t = b.in.*f.member;
    t = torch::empty({b.T}, meta.dtype(t.scalar_type()));
    CATCH_INFO(f.name);
    expect_refused(b, {subject(f.name), "CPU tensor", "got device meta"});
  }
  Batch b = make_batch();
  expect_refused(b, torch::empty({b.T, b.V}, meta.dtype(torch::kDouble)), {subject("logits"), "got device meta"});
}

CATCH_TEST_CASE("a non-contiguous tensor is refused, naming it; nothing is copied behind the caller's back") {
  for (const Field& f : fields()) {
    Batch b = make_batch();
    torch::Tensor& t = b.in.*f.member;
    t = torch::stack({t, t}, 1).select(1, 0);  // the same values at stride 2
    CATCH_REQUIRE(t.stride(0) == 2);
    CATCH_INFO(f.name);
    expect_refused(b, {subject(f.name), "contiguous (stride 1)", "got stride 2"});
  }
  Batch b = make_batch();
  // Column-major logits: stride(1) = T.
  const torch::Tensor column_major = b.logits.t().contiguous().t();
  expect_refused(b, column_major, {subject("logits"), "stride(1) = 1", "got strides [1, " + std::to_string(b.T) + "]"});
  // Every row the same memory: rows overlap (stride(0) = 0 < V).
  const torch::Tensor one_row = b.logits.slice(0, 0, 1).expand({b.T, b.V});
  expect_refused(b, one_row, {subject("logits"), "stride(0) >= V", "got strides [0, 1]"});
}

CATCH_TEST_CASE("a tensor of the wrong rank is refused, naming it") {
  for (const Field& f : fields()) {
    Batch b = make_batch();
    torch::Tensor& t = b.in.*f.member;
    t = t.unsqueeze(1);  // [T, 1]: T elements, but not the shape asked for
    CATCH_INFO(f.name);
    expect_refused(b, {subject(f.name), "1-D of shape [" + std::to_string(b.T) + "]",
                       "got shape [" + std::to_string(b.T) + ", 1]"});
  }
  Batch b = make_batch();
  // [B, L, V] is not read as [T, V]: it must be flattened by the caller.
  expect_refused(b, b.logits.reshape({1, b.T, b.V}),
                 {subject("logits"), "2-D [T, V]", "got shape [1, " + std::to_string(b.T) + ", " + std::to_string(b.V) + "]"});
  expect_refused(b, b.logits.reshape({-1}), {subject("logits"), "2-D [T, V]", "got shape [" + std::to_string(b.T * b.V) + "]"});
}

CATCH_TEST_CASE("an undefined tensor is refused where it is required, naming it") {
  for (const Field& f : fields()) {
    if (!f.required) continue;
    Batch b = make_batch();
    b.in.*f.member = torch::Tensor();
    CATCH_INFO(f.name);
    expect_refused(b, {subject(f.name), "defined tensor [" + std::to_string(b.T) + "]", "got an undefined tensor"});
  }
  Batch b = make_batch();
  expect_refused(b, torch::Tensor(), {subject("logits"), "got an undefined tensor"});
  // ref_logp and kl_weights are required because of config.kl.estimator; the message says so.
  b.in.ref_logp = torch::Tensor();
  expect_refused(b, {subject("ref_logp"), "config.kl.estimator = k3"});
}

CATCH_TEST_CASE("a layout that does not cover T rows is refused, whatever the clip mode") {
  {
    Batch b = make_batch();  // clip = token: the library itself never looks at the layout
    const torch::Tensor short_offsets = b.offsets.slice(0, 0, b.offsets.size(0) - 1).clone();
    b.in.layout = cgrpo_torch::packed_layout(short_offsets);
    const int64_t covered = short_offsets[-1].item<int64_t>();
    expect_refused(b, {"cgrpo_torch: layout must cover the T = " + std::to_string(b.T),
                       "covers " + std::to_string(covered) + " token rows"});
  }
  {
    Batch b = make_batch();
    b.in.layout = cgrpo::SequenceLayout::padded(b.T, 2);  // 2T rows
    expect_refused(b, {"cgrpo_torch: layout must cover the T = " + std::to_string(b.T),
                       "covers " + std::to_string(2 * b.T) + " token rows"});
  }
  {
    Batch b = make_batch();
    b.config.policy.loss = cgrpo::PolicyLoss::ppo_clip;
    b.config.ratio.level = cgrpo::RatioLevel::sequence_detached;
    b.config.aggregation.policy = cgrpo::Aggregation::seq_mean_token_mean;  // the only one GSPO takes
    CATCH_REQUIRE(b.config.validate().ok());
    b.in.layout = cgrpo::SequenceLayout();  // none given, but sequence clipping needs one
    expect_refused(b, {"cgrpo_torch: layout must cover the T = " + std::to_string(b.T), "the config needs it"});
  }
}

CATCH_TEST_CASE("packed_layout checks its offsets tensor") {
  Batch b = make_batch();
  const cgrpo::SequenceLayout ok = cgrpo_torch::packed_layout(b.offsets);
  CATCH_CHECK(ok.num_sequences == b.offsets.size(0) - 1);
  CATCH_CHECK(ok.offsets == b.offsets.data_ptr<int64_t>());
  auto refused = [](const torch::Tensor& offsets, const std::string& want) {
    std::string message;
    try {
      cgrpo_torch::packed_layout(offsets);
    } catch (const c10::Error& e) {
      message = e.what_without_backtrace();
    }
    CATCH_INFO("message: " << message);
    CATCH_CHECK(message.find("cgrpo_torch: layout offsets must") != std::string::npos);
    CATCH_CHECK(message.find(want) != std::string::npos);
  };
  refused(b.offsets.to(torch::kInt), "got Int");
  refused(torch::stack({b.offsets, b.offsets}, 1).select(1, 0), "got stride 2");
  refused(b.offsets.unsqueeze(0), "got shape [1, ");
  refused(torch::empty({0}, torch::kLong), "got shape [0]");
  refused(torch::Tensor(), "got an undefined tensor");
}

CATCH_TEST_CASE("the library's own errors come back as c10::Error with its message, outputs untouched") {
  Batch b = make_batch();
  b.in.target_ids = b.in.target_ids.clone();
  const int64_t t = b.T / 2;
  b.in.target_ids[t] = static_cast<int32_t>(b.V);  // outside [0, V)
  expect_refused(b, {"cgrpo: out_of_range", "target_ids[" + std::to_string(t) + "]"});
  Batch c = make_batch();
  c.in.mask = c.in.mask.clone();
  c.in.mask[0] = 2;
  expect_refused(c, {"cgrpo: invalid_argument", "mask[0] = 2"});
}
