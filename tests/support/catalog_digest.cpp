// tests/support/catalog_digest.cpp: a digest of every CPU output for every config of the catalog,
// to check a refactor bit for bit (build before and after, cmp the outputs; docs/architecture.md).
// Per (config, batch, path): the hex of the loss and FNV-1a digests of the metrics and of every
// output array. Fixed batches (seeded), so two builds of the same code print the same lines.
#include <cgrpo/cgrpo.hpp>
#include <cgrpo/cpu/fused_linear_policy_loss.hpp>

#include "catalog.hpp"

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace cgrpo;

static uint64_t fnv(const void* data, size_t n, uint64_t h = 1469598103934665603ull) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
template <typename T>
static uint64_t fnv_vec(const std::vector<T>& v) {
  return fnv(v.data(), v.size() * sizeof(T));
}
static std::string hexd(double x) {
  uint64_t u;
  std::memcpy(&u, &x, 8);
  char b[32];
  std::snprintf(b, sizeof b, "%016" PRIx64, u);
  return b;
}

// ---------------------------------------------------------------- the configs
struct Named {
  std::string name;
  LossConfig config;
};

static std::vector<Named> catalog() {
  std::vector<Named> out;
  for (const support::CatalogEntry& e : support::catalog()) out.push_back({e.name, e.config()});
  return out;
}

static int g_threads = 1;
static void set_threads(LossConfig&, int n) { g_threads = n; }
static bool uses_rollout(const LossConfig& c) { return c.needs_rollout_logp(); }
static bool uses_kl(const LossConfig& c) { return c.kl_on(); }
static bool allows_caller_weights(const LossConfig& c) {
  return !plan_passes(c, PassInputs{}).requires_computed_weights;
}
static bool is_cov(const LossConfig& c) {
  return c.term().selection != BatchSelection::none;
}

// The caller's weights of a term, by the config's own rule (what the loss forms itself).
template <typename Real>
static void term_weights(const LossConfig& c, LossTerm term, const SequenceLayout& layout, const uint8_t* mask, Real* w) {
  if (!aggregation_weights(c, term, layout, mask, AggregationScale{}, w).ok()) std::abort();
}
// ----------------------------------------------------------------

struct Data {
  int64_t B, L, T, V;
  std::vector<double> logits, adv, old_logp, ref_logp, rollout_logp, hidden, weight, bias;
  std::vector<int32_t> targets;
  std::vector<uint8_t> mask, kinds, selection;
  std::vector<int64_t> offsets;
  int64_t H = 6;
};

static Data make_data(uint64_t seed, int64_t B, int64_t L, int64_t V) {
  Data d;
  d.B = B;
  d.L = L;
  d.T = B * L;
  d.V = V;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.3);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(V - 1));
  d.logits.resize(d.T * V);
  for (auto& z : d.logits) z = normal(rng);
  d.hidden.resize(d.T * d.H);
  d.weight.resize(V * d.H);
  d.bias.resize(V);
  for (auto& z : d.hidden) z = 0.6 * normal(rng);
  for (auto& z : d.weight) z = 0.6 * normal(rng);
  for (auto& z : d.bias) z = 0.3 * normal(rng);
  for (int64_t i = 0; i < B; ++i) {
    const double a = normal(rng);
    const int64_t len = (i == 2) ? 0 : L - (i % 3);  // row 2 empty
    for (int64_t j = 0; j < L; ++j) {
      const int64_t t = i * L + j;
      d.targets.push_back(tok(rng));
      d.mask.push_back(j < len ? 1 : 0);
      d.kinds.push_back(i % 4 == 3 ? kRefinement : kInitial);
      d.adv.push_back(a);
      double m = d.logits[t * V]; 
      for (int64_t v = 1; v < V; ++v) m = std::max(m, d.logits[t * V + v]);
      const double base = d.logits[t * V + d.targets.back()] - m - 1.0;
      d.old_logp.push_back(base + 0.15 * normal(rng));
      d.ref_logp.push_back(base + 0.2 * normal(rng));
      d.rollout_logp.push_back(base + 0.15 * normal(rng));
      d.selection.push_back((t % 5) == 1);
    }
  }
  d.offsets.push_back(0);
  for (int64_t i = 0; i < B; ++i) d.offsets.push_back((i + 1) * L);
  return d;
}

template <typename Real>
struct Buffers {
  std::vector<Real> logits, adv, old_logp, ref_logp, rollout_logp, hidden, weight, bias;
  explicit Buffers(const Data& d)
      : logits(d.logits.begin(), d.logits.end()), adv(d.adv.begin(), d.adv.end()),
        old_logp(d.old_logp.begin(), d.old_logp.end()), ref_logp(d.ref_logp.begin(), d.ref_logp.end()),
        rollout_logp(d.rollout_logp.begin(), d.rollout_logp.end()), hidden(d.hidden.begin(), d.hidden.end()),
        weight(d.weight.begin(), d.weight.end()), bias(d.bias.begin(), d.bias.end()) {}
};

template <typename Real>
static PolicyLossBatch<Real> view(const Data& d, Buffers<Real>& b, const LossConfig& c, bool with_kinds, bool packed,
                                  bool selection) {
  PolicyLossBatch<Real> v;
  v.logits = b.logits.data();
  v.num_tokens = d.T;
  v.vocab_size = d.V;
  v.target_ids = d.targets.data();
  v.mask = d.mask.data();
  v.kinds = with_kinds ? d.kinds.data() : nullptr;
  v.advantages = b.adv.data();
  v.old_logp = b.old_logp.data();
  v.ref_logp = uses_kl(c) ? b.ref_logp.data() : nullptr;
  v.rollout_logp = b.rollout_logp.data();
  v.selection = selection ? d.selection.data() : nullptr;
  v.layout = packed ? SequenceLayout::packed(d.B, d.offsets.data()) : SequenceLayout::padded(d.B, d.L);
  (void)uses_rollout;
  return v;
}

template <typename Real>
static void print_result(const std::string& label, const Status& s, const LossMetrics& m,
                         const std::vector<std::vector<uint8_t>>& blobs) {
  if (!s.ok()) {
    std::printf("%s ERROR %d %s\n", label.c_str(), static_cast<int>(s.code), s.message);
    return;
  }
  uint64_t h = fnv(&m, sizeof(m));
  std::printf("%s loss=%s metrics=%016" PRIx64, label.c_str(), hexd(m.loss).c_str(), h);
  for (const auto& b : blobs) std::printf(" %016" PRIx64, fnv(b.data(), b.size()));
  std::printf("\n");
}

template <typename T>
static std::vector<uint8_t> bytes(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

template <typename Real>
static void run_fused(const std::string& name, const Data& d, LossConfig c, bool with_kinds, bool packed,
                      bool in_place, int threads, bool caller_weights, bool selection, bool forward_only) {
  set_threads(c, threads);
  Buffers<Real> b(d);
  PolicyLossBatch<Real> v = view(d, b, c, with_kinds, packed, selection);
  std::vector<Real> wp(d.T), wh(d.T), wk(d.T);
  if (caller_weights) {
    term_weights(c, LossTerm::policy, v.layout, d.mask.data(), wp.data());
    term_weights(c, LossTerm::entropy, v.layout, d.mask.data(), wh.data());
    term_weights(c, LossTerm::kl, v.layout, d.mask.data(), wk.data());
    v.pg_weights = wp.data();
    v.entropy_weights = wh.data();
    v.kl_weights = uses_kl(c) ? wk.data() : nullptr;
  }
  std::vector<Real> grad(in_place ? 0 : d.T * d.V), logp(d.T), ent(d.T), factor(d.T);
  std::vector<uint8_t> terms(d.T);
  LossMetrics m;
  PolicyLossOutputs<Real> out;
  out.grad_logits = forward_only ? nullptr : (in_place ? b.logits.data() : grad.data());
  out.logp = logp.data();
  out.entropy = ent.data();
  out.policy_factor = factor.data();
  out.token_terms = terms.data();
  out.metrics = &m;
  cpu::Workspace ws(g_threads);
  Status s = cpu::fused_policy_loss(c, v, out, ws);
  char label[512];
  std::snprintf(label, sizeof label, "%s|fused|%s|k%d|p%d|ip%d|t%d|cw%d|sel%d|fw%d", name.c_str(),
                sizeof(Real) == 8 ? "f64" : "f32", with_kinds, packed, in_place, threads, caller_weights, selection,
                forward_only);
  print_result<Real>(label, s, m,
                     {bytes(forward_only ? std::vector<Real>{} : (in_place ? b.logits : grad)), bytes(logp), bytes(ent),
                      bytes(factor), bytes(terms)});
}

template <typename Real>
static void run_linear(const std::string& name, const Data& d, LossConfig c, bool with_kinds, int threads) {
  set_threads(c, threads);
  Buffers<Real> b(d);
  PolicyLossBatch<Real> v = view(d, b, c, with_kinds, false, false);
  v.logits = nullptr;
  LinearHead<Real> head;
  head.hidden = b.hidden.data();
  head.hidden_size = d.H;
  head.weight = b.weight.data();
  head.bias = b.bias.data();
  std::vector<Real> gh(d.T * d.H), gw(d.V * d.H), gb(d.V), logp(d.T), ent(d.T);
  LinearHeadGrads<Real> g;
  g.grad_hidden = gh.data();
  g.grad_weight = gw.data();
  g.grad_bias = gb.data();
  LossMetrics m;
  PolicyLossOutputs<Real> out;
  out.logp = logp.data();
  out.entropy = ent.data();
  out.metrics = &m;
  cpu::Workspace ws(g_threads);
  Status s = cpu::fused_linear_policy_loss(c, v, head, out, g, ws, LinearChunking{5, 0});
  char label[512];
  std::snprintf(label, sizeof label, "%s|linear|%s|k%d|t%d", name.c_str(), sizeof(Real) == 8 ? "f64" : "f32",
                with_kinds, threads);
  print_result<Real>(label, s, m, {bytes(gh), bytes(gw), bytes(gb), bytes(logp), bytes(ent)});
}

int main() {
  const Data d1 = make_data(12345, 7, 9, 37);
  const Data d2 = make_data(777, 5, 13, 64);
  for (const Named& n : catalog()) {
    if (!n.config.validate().ok()) {
      std::printf("%s INVALID %s\n", n.name.c_str(), n.config.validate().message);
      continue;
    }
    const bool cov = is_cov(n.config);
    for (const Data* dp : {&d1, &d2}) {
      const Data& d = *dp;
      const std::string nm = n.name + (dp == &d1 ? "@d1" : "@d2");
      for (bool kinds : {false, true}) {
        run_fused<double>(nm, d, n.config, kinds, false, false, 1, false, false, false);
        run_fused<float>(nm, d, n.config, kinds, false, true, 2, false, false, false);
        run_fused<double>(nm, d, n.config, kinds, true, false, 2, false, false, false);
        run_fused<float>(nm, d, n.config, kinds, false, false, 1, false, false, true);
        if (allows_caller_weights(n.config)) {
          run_fused<double>(nm, d, n.config, kinds, false, false, 1, true, false, false);
          run_fused<float>(nm, d, n.config, kinds, true, true, 1, true, false, false);
        }
        if (cov) run_fused<double>(nm, d, n.config, kinds, false, false, 1, false, true, false);
        run_linear<float>(nm, d, n.config, kinds, 2);
        run_linear<double>(nm, d, n.config, kinds, 1);
      }
    }
  }
  // Advantages: every estimator on ragged groups.
  {
    std::mt19937_64 rng(99);
    std::normal_distribution<double> normal(0.0, 1.0);
    const int64_t n = 23;
    std::vector<double> rewards(n);
    std::vector<int32_t> gid(n);
    std::vector<int64_t> counts(n);
    for (int64_t i = 0; i < n; ++i) {
      rewards[i] = i % 5 == 0 ? 1.0 : std::round(normal(rng) * 2) / 2;
      gid[i] = static_cast<int32_t>(i / 4);
      counts[i] = 1 + (i * 7) % 11;
    }
    GroupAssignment groups{n, gid.data(), 6};
    for (int e = 0; e <= 4; ++e) {
      std::vector<double> adv(n);
      Status s = group_advantages(static_cast<AdvantageEstimator>(e), groups, rewards.data(), counts.data(), 1e-6,
                                  adv.data(), 1e-8);
      std::printf("advantages|%d %s %016" PRIx64 "\n", e, s.ok() ? "ok" : s.message, fnv_vec(adv));
    }
  }
  return 0;
}
