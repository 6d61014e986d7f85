// Overlapping buffers, for every entry point with outputs: each output is placed against each
// input and each other output (overlapping by one element at either end, from the same start,
// touching without overlap, interleaved between another array's rows). A brute-force oracle over
// the bytes decides whether the arrays share memory: if they do, the call must fail naming
// both and leave every byte as it was; if not, it must succeed with the results of a run whose
// arrays lie far apart, writing no byte outside its outputs.
#include <catch2/catch.hpp>

#include "test_seed.hpp"

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/parallel/global_scale.hpp>
#include <cgrpo/parallel/group_stats.hpp>
#include <cgrpo/parallel/vocab_parallel.hpp>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "reference.hpp"

namespace {

constexpr unsigned char kPoison = 0xA5;

// One array of a call: rows x row_elems elements at a stride, and its content (inputs) or none
// (outputs start as poison).
struct ArraySpec {
  std::string name;
  bool output = false;
  size_t elem = 0, align = 0;
  int64_t rows = 0, row_elems = 0, stride = 0;
  std::vector<unsigned char> image;  // inputs: extent() bytes
  size_t extent() const { return static_cast<size_t>(((rows - 1) * stride + row_elems) * static_cast<int64_t>(elem)); }
  bool holds(size_t offset_from_start) const {  // whether byte offset lies in a row
    const size_t row_bytes = static_cast<size_t>(row_elems) * elem, stride_bytes = static_cast<size_t>(stride) * elem;
    if (offset_from_start >= extent()) return false;
    return offset_from_start % stride_bytes < row_bytes;
  }
};

template <typename T>
ArraySpec rows_in(const std::string& name, const T* data, int64_t rows, int64_t row_elems, int64_t stride) {
  ArraySpec a{name, false, sizeof(T), alignof(T), rows, row_elems, stride, {}};
  a.image.assign(a.extent(), kPoison);
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(&a.image[r * stride * sizeof(T)], data + r * row_elems, row_elems * sizeof(T));
  return a;
}
template <typename T>
ArraySpec in(const std::string& name, const std::vector<T>& v) {
  return rows_in(name, v.data(), 1, static_cast<int64_t>(v.size()), static_cast<int64_t>(v.size()));
}
template <typename T>
ArraySpec out(const std::string& name, int64_t rows, int64_t row_elems, int64_t stride) {
  return ArraySpec{name, true, sizeof(T), alignof(T), rows, row_elems, stride, {}};
}
template <typename T>
ArraySpec out(const std::string& name, int64_t n) {
  return out<T>(name, 1, n, n);
}

struct EntryPoint {
  std::string name;
  std::vector<ArraySpec> arrays;
  std::function<cgrpo::Status(const std::vector<unsigned char*>&)> call;
  int in_place_out = -1, in_place_in = -1;  // an output that may be exactly this input
};

// Some entry points returned void before they returned a Status: treat that as OK.
template <typename F>
cgrpo::Status status_of(F&& f) {
  if constexpr (std::is_void<decltype(f())>::value) {
    f();
    return cgrpo::Status::success();
  } else {
    return f();
  }
}

size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }
size_t align_down(size_t x, size_t a) { return x / a * a; }

struct Layout {
  std::vector<size_t> pos;
  size_t arena = 0, slot = 0, margin = 0;
};

Layout default_layout(const EntryPoint& e) {
  size_t max_extent = 0;
  for (const auto& a : e.arrays) max_extent = std::max(max_extent, a.extent());
  Layout l;
  l.margin = align_up(max_extent + 64, 64);
  l.slot = align_up(2 * l.margin + max_extent + 64, 64);
  for (size_t i = 0; i < e.arrays.size(); ++i) l.pos.push_back(i * l.slot + l.margin);
  l.arena = e.arrays.size() * l.slot;
  return l;
}

// The oracle: whether any output shares a byte with another array (the allowed in-place pair,
// identical in pointer and stride, excepted). Byte by byte.
bool shares_memory(const EntryPoint& e, const Layout& l) {
  std::vector<int> owner(l.arena, -1);
  for (size_t i = 0; i < e.arrays.size(); ++i) {
    const ArraySpec& a = e.arrays[i];
    for (size_t b = 0; b < a.extent(); ++b) {
      if (!a.holds(b)) continue;
      int& o = owner[l.pos[i] + b];
      if (o >= 0) {
        const ArraySpec& prev = e.arrays[o];
        const bool in_place = ((int)i == e.in_place_out && o == e.in_place_in) ||
                              (o == e.in_place_out && (int)i == e.in_place_in);
        const bool identical = l.pos[i] == l.pos[o] && a.stride * a.elem == prev.stride * prev.elem &&
                               a.rows == prev.rows && a.row_elems * a.elem == prev.row_elems * prev.elem;
        if ((a.output || prev.output) && !(in_place && identical)) return true;
      }
      o = static_cast<int>(i);
    }
  }
  return false;
}

struct Outcome {
  cgrpo::Status status;
  std::vector<unsigned char> before, after;
  std::vector<std::vector<unsigned char>> outputs;  // row bytes of each output after the call
  std::vector<char> output_byte;                    // 1 where an output's row lies
};

Outcome run(const EntryPoint& e, const Layout& l) {
  std::vector<unsigned char> storage(l.arena + 64);
  unsigned char* base = storage.data() + (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) % 64;
  std::memset(base, kPoison, l.arena);
  std::vector<unsigned char*> ptrs;
  for (size_t i = 0; i < e.arrays.size(); ++i) {
    if (!e.arrays[i].output) std::memcpy(base + l.pos[i], e.arrays[i].image.data(), e.arrays[i].extent());
    ptrs.push_back(base + l.pos[i]);
  }
  Outcome o;
  o.before.assign(base, base + l.arena);
  o.status = e.call(ptrs);
  o.after.assign(base, base + l.arena);
  o.output_byte.assign(l.arena, 0);
  for (size_t i = 0; i < e.arrays.size(); ++i) {
    const ArraySpec& a = e.arrays[i];
    std::vector<unsigned char> rows;
    if (a.output)
      for (size_t b = 0; b < a.extent(); ++b)
        if (a.holds(b)) {
          rows.push_back(base[l.pos[i] + b]);
          o.output_byte[l.pos[i] + b] = 1;
        }
    o.outputs.push_back(rows);
  }
  return o;
}

// `name (role)` with a word boundary before it.
bool names(const std::string& msg, const std::string& name, const std::string& role) {
  const std::string needle = name + " (" + role + ")";
  for (size_t p = msg.find(needle); p != std::string::npos; p = msg.find(needle, p + 1))
    if (p == 0 || msg[p - 1] == ' ') return true;
  return false;
}

struct Tally {
  int errors = 0, passes = 0, in_place_passes = 0, interleaved_passes = 0;
};

// Every (output, other array) pair in every placement mode.
Tally check_entry(const EntryPoint& e) {
  INFO("entry point: " << e.name);
  const Layout base = default_layout(e);
  REQUIRE_FALSE(shares_memory(e, base));
  const Outcome reference = run(e, base);
  INFO("reference run: " << reference.status.message);
  REQUIRE(reference.status.ok());
  Tally tally;
  const char* modes[] = {"last element on first", "first element on last", "same start", "touching before",
                         "touching after", "in the first row gap", "one element into the first row"};
  for (size_t x = 0; x < e.arrays.size(); ++x) {
    if (!e.arrays[x].output) continue;
    for (size_t y = 0; y < e.arrays.size(); ++y) {
      if (y == x) continue;
      const ArraySpec& X = e.arrays[x];
      const ArraySpec& Y = e.arrays[y];
      const size_t y0 = base.pos[y], y_row = Y.row_elems * Y.elem;
      for (int mode = 0; mode < 7; ++mode) {
        if (mode >= 5 && Y.rows == 1) continue;  // no gap between rows
        size_t p = 0;
        switch (mode) {
          case 0: p = y0 - (X.extent() - X.elem); break;
          case 1: p = align_down(y0 + Y.extent() - Y.elem, X.align); break;
          case 2: p = y0; break;
          case 3: p = y0 - X.extent(); break;
          case 4: p = align_up(y0 + Y.extent(), X.align); break;
          case 5: p = align_up(y0 + y_row, X.align); break;
          case 6: p = align_down(y0 + y_row - 1, X.align); break;
        }
        Layout l = base;
        l.pos[x] = p;
        // The moved output stays inside y's slot, away from every other array.
        REQUIRE(p >= y * base.slot);
        REQUIRE(p + X.extent() <= (y + 1) * base.slot);
        const bool expect_error = shares_memory(e, l);
        INFO("output " << X.name << " against " << Y.name << ": " << modes[mode] << "; the oracle says they "
                       << (expect_error ? "share memory" : "do not share memory"));
        const Outcome o = run(e, l);
        INFO("status " << cgrpo::status_code_name(o.status.code) << ": " << o.status.message);
        if (expect_error) {
          ++tally.errors;
          CHECK(o.status.code == cgrpo::StatusCode::invalid_argument);
          const std::string msg = o.status.message;
          CHECK(names(msg, X.name, "output"));
          CHECK(names(msg, Y.name, Y.output ? "output" : "input"));
          size_t changed = 0;  // nothing written, anywhere
          for (size_t k = 0; k < l.arena; ++k) changed += o.after[k] != o.before[k];
          CHECK(changed == 0);
        } else {
          ++tally.passes;
          if (mode == 2) ++tally.in_place_passes;
          if (mode == 5) ++tally.interleaved_passes;
          REQUIRE(o.status.ok());
          for (size_t i = 0; i < e.arrays.size(); ++i)
            if (e.arrays[i].output) {
              INFO("output " << e.arrays[i].name << " equals the separate-buffer run");
              CHECK((o.outputs[i] == reference.outputs[i]));
            }
          size_t stray = 0;  // bytes written outside every output
          for (size_t b = 0; b < l.arena; ++b) stray += !o.output_byte[b] && o.after[b] != o.before[b];
          CHECK(stray == 0);
        }
      }
    }
  }
  return tally;
}

// The fused loss (and the vocabulary-parallel phases) on a batch that uses every input: GSPO
// (layout offsets), k3 KL (ref log-probs and weights), entropy weights, mixed kinds.
struct LossData {
  ref::Batch b;
  cgrpo::LossConfig config;
};

LossData loss_data() {
  std::mt19937_64 rng = test_seed::fresh_rng();
  LossData d;
  d.b = ref::random_batch(rng, 3, 4, 7, 0);
  d.config = cgrpo::verl_gspo().loss;
  d.config.kl.estimator = cgrpo::KlEstimator::k3;
  d.config.kl.coef = 0.01;
  d.config.entropy.coef = 0.01;
  ref::set_weights(d.b, d.config);
  return d;
}

template <typename Real>
std::vector<Real> cast(const std::vector<double>& v) {
  return std::vector<Real>(v.begin(), v.end());
}

// Inputs 0..10 of a loss batch; logits at `logits_stride`.
template <typename Real>
std::vector<ArraySpec> batch_inputs(const LossData& d, int64_t logits_stride) {
  const ref::Batch& b = d.b;
  const std::vector<Real> logits = cast<Real>(b.logits);
  return {rows_in("logits", logits.data(), b.T, b.V, logits_stride),
          in("target_ids", b.targets),
          in("mask", b.mask),
          in("kinds", b.kinds),
          in("advantages", cast<Real>(b.adv)),
          in("old_logp", cast<Real>(b.old_logp)),
          in("ref_logp", cast<Real>(b.ref_logp)),
          in("pg_weights", cast<Real>(b.w_pg)),
          in("entropy_weights", cast<Real>(b.w_h)),
          in("kl_weights", cast<Real>(b.w_kl)),
          in("layout.offsets", b.offsets)};
}

template <typename Real>
cgrpo::PolicyLossBatch<Real> batch_view(const LossData& d, const std::vector<unsigned char*>& p, int64_t logits_stride) {
  cgrpo::PolicyLossBatch<Real> v;
  v.logits = reinterpret_cast<const Real*>(p[0]);
  v.num_tokens = d.b.T;
  v.vocab_size = d.b.V;
  v.row_stride = logits_stride;
  v.target_ids = reinterpret_cast<const int32_t*>(p[1]);
  v.mask = p[2];
  v.kinds = p[3];
  v.advantages = reinterpret_cast<const Real*>(p[4]);
  v.old_logp = reinterpret_cast<const Real*>(p[5]);
  v.ref_logp = reinterpret_cast<const Real*>(p[6]);
  v.pg_weights = reinterpret_cast<const Real*>(p[7]);
  v.entropy_weights = reinterpret_cast<const Real*>(p[8]);
  v.kl_weights = reinterpret_cast<const Real*>(p[9]);
  v.layout = cgrpo::SequenceLayout::packed(d.b.B, reinterpret_cast<const int64_t*>(p[10]));
  return v;
}

// Outputs first + grad_index .. + 3 of a loss call.
template <typename Real>
cgrpo::PolicyLossOutputs<Real> loss_outputs(const std::vector<unsigned char*>& p, size_t first, int64_t grad_stride) {
  cgrpo::PolicyLossOutputs<Real> o;
  o.grad_logits = reinterpret_cast<Real*>(p[first]);
  o.grad_row_stride = grad_stride;
  o.logp = reinterpret_cast<Real*>(p[first + 1]);
  o.entropy = reinterpret_cast<Real*>(p[first + 2]);
  o.metrics = reinterpret_cast<cgrpo::LossMetrics*>(p[first + 3]);
  return o;
}

template <typename Real>
void add_loss_outputs(std::vector<ArraySpec>& a, const LossData& d, int64_t grad_stride) {
  a.push_back(out<Real>("grad_logits", d.b.T, d.b.V, grad_stride));
  a.push_back(out<Real>("logp", d.b.T));
  a.push_back(out<Real>("entropy", d.b.T));
  a.push_back(out<cgrpo::LossMetrics>("metrics", 1));
}

template <typename Real>
EntryPoint fused_entry(const LossData& d, int64_t logits_stride, int64_t grad_stride) {
  EntryPoint e;
  e.name = std::string("cpu::fused_policy_loss<") + (sizeof(Real) == 4 ? "float" : "double") + ">";
  e.arrays = batch_inputs<Real>(d, logits_stride);
  add_loss_outputs<Real>(e.arrays, d, grad_stride);
  e.in_place_out = 11;
  e.in_place_in = 0;
  e.call = [&d, logits_stride, grad_stride](const std::vector<unsigned char*>& p) {
    return cgrpo::cpu::fused_policy_loss(d.config, batch_view<Real>(d, p, logits_stride),
                                         loss_outputs<Real>(p, 11, grad_stride));
  };
  return e;
}

}  // namespace

TEST_CASE("overlap: the fused loss, every output against every input and output", "[overlap]") {
  const LossData d = loss_data();
  const int64_t V = d.b.V;
  Tally total;
  // (logits stride, gradient stride): gaps between rows, interleaved rows at equal and at
  // different strides (gradient rows between the logits rows must be accepted).
  for (auto strides : {std::pair<int64_t, int64_t>{V + 3, V + 3}, {2 * V, 2 * V}, {4 * V, 2 * V}, {2 * V, 3 * V}}) {
    CAPTURE(strides.first, strides.second);
    const Tally t = check_entry(fused_entry<double>(d, strides.first, strides.second));
    total.errors += t.errors;
    total.passes += t.passes;
    total.in_place_passes += t.in_place_passes;
    total.interleaved_passes += t.interleaved_passes;
  }
  const Tally f = check_entry(fused_entry<float>(d, V + 1, V + 2));
  CHECK(f.errors > 0);
  CHECK(total.errors > 0);
  CHECK(total.in_place_passes > 0);      // grad_logits == logits with the same stride
  CHECK(total.interleaved_passes > 0);   // gradient rows in the gaps of the logits rows
}

TEST_CASE("overlap: interleaved gradient rows that do not overlap are accepted", "[overlap]") {
  // logits rows at stride 2V, gradient rows in the gaps (offset V, stride 2V); and logits at
  // stride 4V with gradient rows at stride 2V from offset V: disjoint, so both must run and
  // equal the separate-buffer result. One element further and they overlap.
  const LossData d = loss_data();
  const int64_t T = d.b.T, V = d.b.V;
  ref::LibraryBatch<double> lb(d.b);
  cgrpo::LossMetrics m_ref;
  std::vector<double> g_ref(T * V);
  lb.view.row_stride = V;
  REQUIRE(cgrpo::cpu::fused_policy_loss(d.config, lb.view,
                                        cgrpo::PolicyLossOutputs<double>{g_ref.data(), V, nullptr, nullptr, &m_ref})
              .ok());
  for (auto geometry : {std::pair<int64_t, int64_t>{2, 2}, {4, 2}}) {
    const int64_t zs = geometry.first * V, gs = geometry.second * V;
    for (int64_t shift : {int64_t{0}, int64_t{-1}}) {
      std::vector<double> buffer(T * std::max(zs, gs) + 2 * V, 0.0);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t v = 0; v < V; ++v) buffer[t * zs + v] = d.b.logits[t * V + v];
      const std::vector<double> before = buffer;
      cgrpo::PolicyLossBatch<double> view = lb.view;
      view.logits = buffer.data();
      view.row_stride = zs;
      cgrpo::LossMetrics m;
      double* grad = buffer.data() + V + shift;
      const cgrpo::Status s = cgrpo::cpu::fused_policy_loss(
          d.config, view, cgrpo::PolicyLossOutputs<double>{grad, gs, nullptr, nullptr, &m});
      CAPTURE(zs, gs, shift, s.message);
      if (shift == 0) {
        REQUIRE(s.ok());
        CHECK(m.loss == m_ref.loss);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t v = 0; v < V; ++v) CHECK(grad[t * gs + v] == g_ref[t * V + v]);
      } else {
        CHECK(s.code == cgrpo::StatusCode::invalid_argument);
        CHECK(names(s.message, "grad_logits", "output"));
        CHECK(names(s.message, "logits", "input"));
        CHECK(buffer == before);
      }
    }
  }
}

TEST_CASE("overlap: token_logprobs", "[overlap]") {
  std::mt19937_64 rng = test_seed::fresh_rng();
  const ref::Batch b = ref::random_batch(rng, 3, 4, 9, 2);
  std::vector<float> packed;  // rows_in takes the rows back to back
  for (int64_t t = 0; t < b.T; ++t)
    packed.insert(packed.end(), b.logits.begin() + t * b.stride, b.logits.begin() + t * b.stride + b.V);
  EntryPoint e;
  e.name = "cpu::token_logprobs<float>";
  e.arrays = {rows_in("logits", packed.data(), b.T, b.V, b.stride), in("target_ids", b.targets),
              out<float>("logp", b.T), out<float>("entropy", b.T)};
  e.call = [&b](const std::vector<unsigned char*>& p) {
    return cgrpo::cpu::token_logprobs(reinterpret_cast<const float*>(p[0]), b.T, b.V, b.stride,
                                      reinterpret_cast<const int32_t*>(p[1]), 0.7, reinterpret_cast<float*>(p[2]),
                                      reinterpret_cast<float*>(p[3]), 2);
  };
  CHECK(check_entry(e).errors > 0);
}

TEST_CASE("overlap: the vocabulary-parallel phases", "[overlap]") {
  const LossData d = loss_data();
  const int64_t T = d.b.T, V = d.b.V, stride = V + 2;
  const cgrpo::parallel::VocabShard shard{0, V, V};
  EntryPoint p1;
  p1.name = "parallel::vocab_shard_row_stats";
  p1.arrays = batch_inputs<double>(d, stride);
  p1.arrays.push_back(out<cgrpo::RowStats<double>>("stats", T));
  p1.arrays.push_back(out<double>("target_logit", T));
  p1.call = [&](const std::vector<unsigned char*>& p) {
    return cgrpo::parallel::vocab_shard_row_stats(d.config, batch_view<double>(d, p, stride), shard,
                                                  reinterpret_cast<cgrpo::RowStats<double>*>(p[11]),
                                                  reinterpret_cast<double*>(p[12]));
  };
  CHECK(check_entry(p1).errors > 0);

  // Phase 2's stats and target logits, from phase 1 on one shard (= the reduced values).
  ref::LibraryBatch<double> lb(d.b);
  lb.view.row_stride = d.b.stride;
  std::vector<cgrpo::RowStats<double>> stats(T);
  std::vector<double> target(T);
  REQUIRE(cgrpo::parallel::vocab_shard_row_stats(d.config, lb.view, shard, stats.data(), target.data()).ok());
  EntryPoint p2;
  p2.name = "parallel::vocab_parallel_policy_loss";
  p2.arrays = batch_inputs<double>(d, stride);
  p2.arrays.push_back(in("stats", stats));
  p2.arrays.push_back(in("target_logit", target));
  add_loss_outputs<double>(p2.arrays, d, stride);
  p2.in_place_out = 13;
  p2.in_place_in = 0;
  p2.call = [&](const std::vector<unsigned char*>& p) {
    return cgrpo::parallel::vocab_parallel_policy_loss(d.config, batch_view<double>(d, p, stride), shard,
                                                       reinterpret_cast<const cgrpo::RowStats<double>*>(p[11]),
                                                       reinterpret_cast<const double*>(p[12]),
                                                       loss_outputs<double>(p, 13, stride));
  };
  CHECK(check_entry(p2).errors > 0);
}

TEST_CASE("overlap: aggregation, advantages and broadcast", "[overlap]") {
  const LossData d = loss_data();
  const ref::Batch& b = d.b;
  EntryPoint agg;
  agg.name = "aggregation_weights";
  agg.arrays = {in("mask", b.mask), in("layout.offsets", b.offsets), out<double>("weights", b.T)};
  cgrpo::LossConfig agg_config;  // seq-mean-token-mean policy weights at the paper's conventions
  agg_config.aggregation.policy = cgrpo::Aggregation::seq_mean_token_mean;
  agg.call = [&](const std::vector<unsigned char*>& p) {
    return cgrpo::aggregation_weights(agg_config, cgrpo::LossTerm::policy,
                                      cgrpo::SequenceLayout::packed(b.B, reinterpret_cast<const int64_t*>(p[1])), p[0],
                                      {}, reinterpret_cast<double*>(p[2]));
  };
  CHECK(check_entry(agg).errors > 0);

  const std::vector<double> rewards = {0.5, 1.0, 0.0, 1.0, 0.25, 0.75, 0.0, 1.0, 0.5};
  const std::vector<int32_t> ids = {0, 1, 0, 2, 1, 2, 0, 1, 2};
  const std::vector<int64_t> counts = {3, 1, 4, 1, 5, 9, 2, 6, 5};
  EntryPoint adv;
  adv.name = "group_advantages";
  adv.arrays = {in("rewards", rewards), in("group_ids", ids), in("token_counts", counts),
                out<double>("advantages", 9)};
  adv.call = [](const std::vector<unsigned char*>& p) {
    return cgrpo::group_advantages(cgrpo::AdvantageEstimator::reinforce_pp_baseline,
                                   {9, reinterpret_cast<const int32_t*>(p[1]), 3},
                                   reinterpret_cast<const double*>(p[0]), reinterpret_cast<const int64_t*>(p[2]), 1e-6,
                                   reinterpret_cast<double*>(p[3]));
  };
  CHECK(check_entry(adv).errors > 0);

  const std::vector<double> per_response = {0.5, -1.25, 2.0};
  EntryPoint bc;
  bc.name = "broadcast_to_tokens";
  bc.arrays = {in("per_response", per_response), in("layout.offsets", b.offsets), out<double>("per_token", b.T)};
  bc.call = [&](const std::vector<unsigned char*>& p) {
    return status_of([&] {
      return cgrpo::broadcast_to_tokens(cgrpo::SequenceLayout::packed(b.B, reinterpret_cast<const int64_t*>(p[1])),
                                        reinterpret_cast<const double*>(p[0]), reinterpret_cast<double*>(p[2]));
    });
  };
  CHECK(check_entry(bc).errors > 0);

  const std::vector<int64_t> group_offsets = {0, 3, 5, 9};
  EntryPoint gi;
  gi.name = "group_ids_from_offsets";
  gi.arrays = {in("group_offsets", group_offsets), out<int32_t>("group_ids", 9)};
  gi.call = [](const std::vector<unsigned char*>& p) {
    return cgrpo::group_ids_from_offsets(3, reinterpret_cast<const int64_t*>(p[0]), reinterpret_cast<int32_t*>(p[1]));
  };
  CHECK(check_entry(gi).errors > 0);
}

TEST_CASE("overlap: the data-parallel helpers", "[overlap]") {
  namespace par = cgrpo::parallel;
  const LossData d = loss_data();
  const ref::Batch& b = d.b;
  EntryPoint ap;
  ap.name = "parallel::aggregation_partials";
  ap.arrays = {in("mask", b.mask), in("layout.offsets", b.offsets), out<par::AggregationPartials>("out", 1)};
  ap.call = [&](const std::vector<unsigned char*>& p) {
    return par::aggregation_partials(cgrpo::SequenceLayout::packed(b.B, reinterpret_cast<const int64_t*>(p[1])), p[0],
                                     reinterpret_cast<par::AggregationPartials*>(p[2]));
  };
  CHECK(check_entry(ap).errors > 0);

  const int64_t G = 3, n = 9;
  const std::vector<double> rewards = {0.5, 1.0, 0.0, 1.0, 0.25, 0.75, 0.0, 1.0, 0.5};
  const std::vector<int32_t> ids = {0, 1, 0, 2, 1, 2, 0, 1, 2};
  EntryPoint ps;
  ps.name = "parallel::group_partial_stats";
  ps.arrays = {in("rewards", rewards), in("group_ids", ids), out<double>("sums", G * par::kGroupSumFields),
               out<double>("extrema", G * par::kGroupExtremaFields)};
  ps.call = [&](const std::vector<unsigned char*>& p) {
    return par::group_partial_stats(cgrpo::GroupAssignment{n, reinterpret_cast<const int32_t*>(p[1]), G},
                                    reinterpret_cast<const double*>(p[0]), 0.0, reinterpret_cast<double*>(p[2]),
                                    reinterpret_cast<double*>(p[3]));
  };
  CHECK(check_entry(ps).errors > 0);

  std::vector<double> sums(G * par::kGroupSumFields), extrema(G * par::kGroupExtremaFields);
  REQUIRE(par::group_partial_stats(cgrpo::GroupAssignment{n, ids.data(), G}, rewards.data(), 0.0, sums.data(),
                                   extrema.data())
              .ok());
  EntryPoint merge;
  merge.name = "parallel::group_partial_stats_merge";
  merge.arrays = {in("other_sums", sums), in("other_extrema", extrema), out<double>("sums", G * par::kGroupSumFields),
                  out<double>("extrema", G * par::kGroupExtremaFields)};
  merge.call = [&](const std::vector<unsigned char*>& p) {
    return status_of([&] {
      return par::group_partial_stats_merge(G, reinterpret_cast<const double*>(p[0]),
                                            reinterpret_cast<const double*>(p[1]), reinterpret_cast<double*>(p[2]),
                                            reinterpret_cast<double*>(p[3]));
    });
  };
  CHECK(check_entry(merge).errors > 0);

  EntryPoint fs;
  fs.name = "parallel::group_advantages_from_stats";
  fs.arrays = {in("rewards", rewards), in("group_ids", ids), in("sums", sums), in("extrema", extrema),
               out<double>("advantages", n)};
  fs.call = [&](const std::vector<unsigned char*>& p) {
    return par::group_advantages_from_stats(cgrpo::AdvantageEstimator::grpo,
                                            cgrpo::GroupAssignment{n, reinterpret_cast<const int32_t*>(p[1]), G},
                                            reinterpret_cast<const double*>(p[0]), reinterpret_cast<const double*>(p[2]),
                                            reinterpret_cast<const double*>(p[3]), 0.0, 1e-6,
                                            reinterpret_cast<double*>(p[4]));
  };
  CHECK(check_entry(fs).errors > 0);

  const std::vector<int64_t> counts = {3, 1, 4, 1, 5, 9, 2, 6, 5};
  EntryPoint wp;
  wp.name = "parallel::whitening_partial_stats";
  wp.arrays = {in("token_counts", counts), in("advantages", rewards), out<double>("sums", par::kWhitenFields)};
  wp.call = [&](const std::vector<unsigned char*>& p) {
    return par::whitening_partial_stats(n, reinterpret_cast<const int64_t*>(p[0]),
                                        reinterpret_cast<const double*>(p[1]), reinterpret_cast<double*>(p[2]));
  };
  CHECK(check_entry(wp).errors > 0);

  const std::vector<double> wsums = {30.0, 4.5, 12.25};
  EntryPoint wf;
  wf.name = "parallel::whiten_from_stats";
  wf.arrays = {in("sums", wsums), out<double>("advantages", n)};  // advantages are whitened in place
  wf.call = [&](const std::vector<unsigned char*>& p) {
    return par::whiten_from_stats(n, reinterpret_cast<const double*>(p[0]), reinterpret_cast<double*>(p[1]));
  };
  CHECK(check_entry(wf).errors > 0);
}
