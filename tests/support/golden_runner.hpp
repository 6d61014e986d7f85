// tests/support/golden_runner.hpp: one runner for every golden case (paper, verl, TRL): advantages,
// the fused loss (double and float, in place and not, 1 and 2 threads, the caller's weights and the
// loss's own where the case allows both) and the metrics a peer logs.
#pragma once

#include <catch2/catch.hpp>

#include <cgrpo/cgrpo.hpp>
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "batch.hpp"
#include "golden_case.hpp"

namespace golden {

// A metric the peer logs, the LossMetrics field that holds it, and the relative tolerance it is
// compared at (golden/README.md: 1e-10, or 1e-6 for metrics the peer computes in float32).
struct MetricCheck {
  std::string key;  // "metric_..." in the case file
  std::function<double(const cgrpo::LossMetrics&)> get;
  double tol = 1e-10;
};

// What the loss applied at one token (outputs.policy_factor, outputs.token_terms).
struct TokenView {
  bool valid;            // mask
  double policy_factor;  // 0 at padding
  uint8_t terms;         // cgrpo::TermBit bits (0 at padding)
};

// A per-token array the case holds (shape B, L), the value the library's outputs give for it, and
// the relative tolerance (max error over the array / max |want|) in double; float runs use 1e-5.
struct ArrayCheck {
  std::string key;
  std::function<double(const TokenView&)> get;
  double tol = 1e-10;
};

// What a case's params mean for the library. Filled by one setup function per peer.
struct Setup {
  cgrpo::Recipe recipe;               // the loss config and the advantage settings
  std::vector<int32_t> group_ids;     // per row
  int64_t num_groups = 0;
  std::vector<uint8_t> row_kinds;     // per row: kInitial / kRefinement
  bool caller_weights = false;        // true: run with the caller's weights from cgrpo::aggregation_weights
                                      // (the config's modes and conventions, with `scale`), and again with
                                      // the loss computing them; false: the loss computes them
  cgrpo::AggregationScale scale;      // global counts (length L of seq-mean-token-sum-norm, ...)
  // GDPO with reward components (verl's gdpo_reward_keys): B x K values and K weights; the
  // advantages come from cgrpo::gdpo_advantages, and the case's gdpo_weighted_sum is compared.
  int64_t num_reward_components = 0;
  std::vector<double> reward_components, reward_weights;
  std::vector<MetricCheck> metrics;   // every metric_* key of the case must be listed
  std::vector<ArrayCheck> arrays;     // the case's per-token arrays that are outputs (not inputs)
  std::vector<std::string> checked_by_setup;  // arrays the setup function compared itself (through
                                              // the library's standalone functions)

  cgrpo::LossConfig& config() { return recipe.loss; }
  const cgrpo::LossConfig& config() const { return recipe.loss; }
};

// A case's params -> Setup. Returns false (with a Catch failure) for params it does not know.
using SetupFn = std::function<void(const GoldenCase&, Setup&)>;

inline double param_double(const GoldenCase& g, const std::string& key) {
  const std::string v = g.param(key);
  INFO("param " << key);
  REQUIRE(!v.empty());
  return std::stod(v);
}

// The number inside "mode(...L=K...)" style aggregation keys, or 0.
inline double agg_number(const std::string& agg, const std::string& key) {
  const auto at = agg.find(key + "=");
  if (at == std::string::npos) return 0.0;
  return std::stod(agg.substr(at + key.size() + 1));
}

// Max |got - want| over the array divided by max(max |want|, floor): a relative error that does
// not blow up on individual near-zero entries.
template <typename Real>
double max_rel_err(const std::vector<Real>& got, const std::vector<double>& want, double floor = 1e-300) {
  double num = 0, den = floor;
  for (size_t i = 0; i < want.size(); ++i) {
    num = std::max(num, std::fabs(static_cast<double>(got[i]) - want[i]));
    den = std::max(den, std::fabs(want[i]));
  }
  return got.size() == want.size() ? num / den : INFINITY;
}

inline double rel_err(double got, double want, double floor = 1e-12) {
  return std::fabs(got - want) / std::max(std::fabs(want), floor);
}

// Everything a case checks, for one precision.
template <typename Real>
void run_case(const std::string& file, const GoldenCase& g, const Setup& s, double tol) {
  const auto& logits_arr = g.at("logits");
  const int64_t B = logits_arr.shape[0], L = logits_arr.shape[1], V = logits_arr.shape[2], T = B * L;
  const auto& mask_d = g.at("mask").values;
  // Every array of the case is an input, an expected value checked below, a metric or a listed ArrayCheck.
  for (const auto& kv : g.arrays) {
    static const char* const kChecked[] = {"logits",  "tokens",   "mask",       "old_logp",  "ref_logp",
                                           "rollout_logp", "rewards", "refine", "group_ids", "advantages",
                                           "log_prob", "entropy", "loss",       "grad_logits",
                                           "reward_components", "gdpo_reward_weights", "gdpo_weighted_sum"};
    const bool known = std::find(std::begin(kChecked), std::end(kChecked), kv.first) != std::end(kChecked) ||
                       kv.first.rfind("metric_", 0) == 0 ||
                       std::any_of(s.arrays.begin(), s.arrays.end(), [&](const ArrayCheck& a) { return a.key == kv.first; }) ||
                       std::find(s.checked_by_setup.begin(), s.checked_by_setup.end(), kv.first) != s.checked_by_setup.end();
    INFO(file << ": array " << kv.first << " is not checked (add an ArrayCheck)");
    CHECK(known);
  }

  // Advantages over each group, with the recipe's advantage settings.
  const auto& rewards = g.at("rewards").values;
  std::vector<Real> rewards_r(rewards.begin(), rewards.end()), adv(B);
  REQUIRE(static_cast<int64_t>(s.group_ids.size()) == B);
  cgrpo::GroupAssignment groups{B, s.group_ids.data(), s.num_groups};
  std::vector<int64_t> token_counts(B, 0);
  for (int64_t i = 0; i < B; ++i)
    for (int64_t j = 0; j < L; ++j) token_counts[i] += mask_d[i * L + j] != 0 ? 1 : 0;
  std::vector<Real> weighted_sum(B, Real(-777));
  cgrpo::Status sa;
  if (s.num_reward_components > 0) {
    const std::vector<Real> components(s.reward_components.begin(), s.reward_components.end());
    sa = cgrpo::gdpo_advantages(s.recipe.advantage, groups, components.data(), s.num_reward_components,
                                s.reward_weights.data(), token_counts.data(), adv.data(), weighted_sum.data());
  } else {
    sa = cgrpo::group_advantages(s.recipe.advantage, groups, rewards_r.data(), token_counts.data(), adv.data());
  }
  INFO(file << ": " << sa.message);
  REQUIRE(sa.ok());
  if (s.num_reward_components > 0) {
    const auto& want_sum = g.at("gdpo_weighted_sum").values;
    for (int64_t i = 0; i < B; ++i)
      if (token_counts[i] > 0) {
        INFO(file << " gdpo_weighted_sum of row " << i);
        CHECK(std::fabs(weighted_sum[i] - want_sum[i]) <= tol * std::max(1.0, std::fabs(want_sum[i])));
      }
  }
  const auto& want_adv = g.at("advantages").values;
  for (int64_t i = 0; i < B; ++i)
    if (token_counts[i] > 0) {  // the README: compare advantages on non-empty rows only
      INFO(file << " advantage of row " << i);
      CHECK(std::fabs(adv[i] - want_adv[i]) <= tol * std::max(1.0, std::fabs(want_adv[i])));
    }

  // The case's arrays in the tests' batch (padded B x L); the library's view of it in Real. The
  // advantages are the ones just computed in Real (exact in the double batch).
  support::Batch batch = support::padded_batch(B, L, V);
  batch.logits = logits_arr.values;
  const bool has_ref = g.arrays.count("ref_logp") != 0, has_rollout = g.arrays.count("rollout_logp") != 0;
  if (!has_ref) batch.ref_logp.clear();
  if (!has_rollout) batch.rollout_logp.clear();
  for (int64_t t = 0; t < T; ++t) {
    batch.targets[t] = static_cast<int32_t>(g.at("tokens").values[t]);
    batch.mask[t] = static_cast<uint8_t>(mask_d[t]);
    batch.kinds[t] = s.row_kinds.empty() ? uint8_t(cgrpo::kInitial) : s.row_kinds[t / L];
    batch.adv[t] = static_cast<double>(adv[t / L]);
    batch.old_logp[t] = g.at("old_logp").values[t];
    if (has_ref) batch.ref_logp[t] = g.at("ref_logp").values[t];
    if (has_rollout) batch.rollout_logp[t] = g.at("rollout_logp").values[t];
  }
  const cgrpo::LossConfig& config = s.config();
  if (s.caller_weights) {
    // The caller's weights by the config's own rule (cgrpo::aggregation_weights per term).
    const cgrpo::Status sw = support::set_library_weights(batch, config, s.scale);
    INFO(file << ": " << sw.message);
    REQUIRE(sw.ok());
  }
  const std::vector<uint8_t>& mask = batch.mask;
  double mean_abs_adv = 0, valid_tokens = 0;
  for (int64_t t = 0; t < T; ++t)
    if (mask[t]) mean_abs_adv += std::fabs(batch.adv[t]), valid_tokens += 1;
  mean_abs_adv /= std::max(valid_tokens, 1.0);
  std::vector<support::Weights> weight_modes = {support::Weights::computed};
  if (s.caller_weights) weight_modes.insert(weight_modes.begin(), support::Weights::caller);

  for (const support::Weights weights : weight_modes) {
    const support::LibraryBatch<Real> lib(batch, config, weights);
    const bool caller = weights == support::Weights::caller;
    for (bool in_place : {false, true}) {
      for (int threads : {1, 2}) {
        CAPTURE(file, caller, in_place, threads);
        cgrpo::cpu::Workspace ws(threads);
        std::vector<Real> work = lib.logits;  // in place overwrites its own copy
        cgrpo::PolicyLossBatch<Real> view = lib.view;
        view.logits = work.data();
        view.scale = s.scale;
        std::vector<Real> grad(in_place ? 0 : T * V, Real(-777)), logp(T), entropy(T), factor(T, Real(-777));
        std::vector<uint8_t> terms(T, 255);
        cgrpo::LossMetrics metrics;
        cgrpo::PolicyLossOutputs<Real> out;
        out.grad_logits = in_place ? work.data() : grad.data();
        out.logp = logp.data();
        out.entropy = entropy.data();
        out.metrics = &metrics;
        out.policy_factor = factor.data();
        out.token_terms = terms.data();
        const cgrpo::Status st = cgrpo::cpu::fused_policy_loss(config, view, out, ws);
        INFO(st.message);
        REQUIRE(st.ok());
        const std::vector<Real>& got_grad = in_place ? work : grad;

        // J sums signed token losses: in float its error follows the terms' size, not |J| (a case
        // whose terms cancel to 1/20 of their size, e.g. icepop_sequence_decoupled, sees 1.5e-5 of
        // |J| from the float inputs alone). Float compares relative to max(|J|, mean |A|), the size of
        // one token's loss; double relative to |J|.
        CHECK(rel_err(metrics.loss, g.at("loss").values[0], std::is_same<Real, float>::value ? mean_abs_adv : 1e-12) <=
              tol);
        CHECK(max_rel_err(got_grad, g.at("grad_logits").values) <= tol);
        CHECK(max_rel_err(logp, g.at("log_prob").values) <= tol);
        CHECK(max_rel_err(entropy, g.at("entropy").values) <= tol);
        for (const ArrayCheck& a : s.arrays) {
          INFO(file << ": array " << a.key);
          REQUIRE(g.arrays.count(a.key) == 1);
          std::vector<double> got_arr(T);
          for (int64_t t = 0; t < T; ++t)
            got_arr[t] = a.get(TokenView{mask[t] != 0, static_cast<double>(factor[t]), terms[t]});
          CHECK(max_rel_err(got_arr, g.at(a.key).values, 1e-12) <= (std::is_same<Real, double>::value ? a.tol : 1e-5));
        }
        // Masked rows of the gradient are exactly zero, as autograd gives.
        for (int64_t t = 0; t < T; ++t)
          if (!mask[t])
            for (int64_t v = 0; v < V; ++v) REQUIRE(got_grad[t * V + v] == Real(0));
        // The metrics the peer logs, in double (a float run may flip a token at a threshold).
        if (std::is_same<Real, double>::value && threads == 1 && !in_place) {
          for (const auto& kv : g.arrays) {
            if (kv.first.rfind("metric_", 0) != 0) continue;
            const auto it = std::find_if(s.metrics.begin(), s.metrics.end(),
                                         [&](const MetricCheck& m) { return m.key == kv.first; });
            INFO(file << ": " << kv.first);
            REQUIRE(it != s.metrics.end());  // every logged metric has a LossMetrics field
            const double want = kv.second.values[0], got = it->get(metrics);
            INFO("got " << got << ", want " << want);
            CHECK(std::fabs(got - want) <= it->tol * std::max(std::fabs(want), 1e-8));
          }
        }
      }
    }
  }
}

}  // namespace golden
