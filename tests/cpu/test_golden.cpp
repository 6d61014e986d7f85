// Golden cases from the Critique-GRPO authors' released loss code (tests/data/*.txt):
// advantages, loss, gradient, log-probs and entropies must match, 1e-10 in double, 1e-5 in float.
#include <catch2/catch.hpp>

#include <cgrpo/cgrpo.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "golden_case.hpp"

namespace {

struct GoldenSetup {
  cgrpo::LossConfig config;
  int64_t B = 0, L = 0, V = 0, group_size = 0, refinements_per_group = 0;
};

GoldenSetup setup_from_params(const GoldenCase& g) {
  GoldenSetup s;
  const auto& logits = g.at("logits");
  s.B = logits.shape[0];
  s.L = logits.shape[1];
  s.V = logits.shape[2];
  cgrpo::LossConfig& c = s.config;
  c.advantage = g.param("advantage") == "grpo" ? cgrpo::AdvantageEstimator::grpo
                                                : cgrpo::AdvantageEstimator::grpo_no_std;
  if (!g.param("eps").empty()) c.advantage_eps = std::stod(g.param("eps"));
  // refinement_rows=first_K_of_each_group_of_N
  const std::string rr = g.param("refinement_rows");
  std::sscanf(rr.c_str(), "first_%ld_of_each_group_of_%ld", &s.refinements_per_group, &s.group_size);
  c.refinement_gamma = std::stod(g.param("gamma"));
  if (g.param("clip") == "ppo") {
    c.policy_loss = cgrpo::PolicyLoss::ppo_clip;
    c.clip_eps_low = std::stod(g.param("eps_low"));
    c.clip_eps_high = std::stod(g.param("eps_high"));
    REQUIRE(g.param("dual_clip") == "none");
  } else {
    REQUIRE(g.param("clip") == "none");
    c.policy_loss = cgrpo::PolicyLoss::ratio;
  }
  const std::string agg = g.param("pg_agg");
  c.pg_aggregation = agg == "token-mean" ? cgrpo::Aggregation::token_mean
                                         : cgrpo::Aggregation::seq_mean_token_sum_norm;
  c.entropy_coef = std::stod(g.param("entropy_coef"));
  REQUIRE(g.param("entropy_agg") == "token-mean");
  c.entropy_aggregation = cgrpo::Aggregation::token_mean;
  REQUIRE(g.param("kl") == "none");
  c.kl = cgrpo::KlEstimator::none;
  c.temperature = std::stod(g.param("temperature"));
  return s;
}

double seq_norm_length(const GoldenCase& g) {
  const std::string agg = g.param("pg_agg");
  const auto open = agg.find("L=");
  return open == std::string::npos ? 0.0 : std::stod(agg.substr(open + 2));
}

double rel_err(double got, double want) { return std::fabs(got - want) / std::max(std::fabs(want), 1e-300); }

// Max |got - want| over the array, divided by the max |want|: a relative error that
// does not blow up on individual near-zero entries of the gradient.
template <typename Real>
double max_rel_err(const std::vector<Real>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num = std::max(num, std::fabs(static_cast<double>(got[i]) - want[i]));
    den = std::max(den, std::fabs(want[i]));
  }
  return num / den;
}

template <typename Real>
void check_golden(const std::string& file, double tol) {
  GoldenCase g;
  REQUIRE(load_golden_case(std::string(CGRPO_TEST_DATA_DIR) + "/" + file, g));
  const GoldenSetup s = setup_from_params(g);
  const int64_t B = s.B, L = s.L, V = s.V, T = B * L;

  // Advantages over each group (row / N), refinements included.
  const auto& rewards = g.at("rewards").values;
  std::vector<int32_t> group_ids(B);
  for (int64_t i = 0; i < B; ++i) group_ids[i] = static_cast<int32_t>(i / s.group_size);
  std::vector<Real> rewards_r(rewards.begin(), rewards.end()), adv(B);
  cgrpo::GroupAssignment groups{B, group_ids.data(), (B + s.group_size - 1) / s.group_size};
  REQUIRE(cgrpo::group_advantages(s.config.advantage, groups, rewards_r.data(), nullptr, s.config.advantage_eps,
                                  adv.data()).ok());
  const auto& want_adv = g.at("advantages").values;
  for (int64_t i = 0; i < B; ++i) REQUIRE(std::fabs(adv[i] - want_adv[i]) <= tol * std::max(1.0, std::fabs(want_adv[i])));

  // The refine flags follow the layout rule of the params line.
  const auto& refine = g.at("refine").values;
  for (int64_t i = 0; i < B; ++i)
    REQUIRE(refine[i] == ((i % s.group_size) < s.refinements_per_group ? 1.0 : 0.0));

  std::vector<Real> logits(g.at("logits").values.begin(), g.at("logits").values.end());
  std::vector<int32_t> targets(T);
  std::vector<uint8_t> mask(T), kinds(T);
  std::vector<Real> old_logp(T), adv_tok(T), w_pg(T), w_h(T);
  for (int64_t t = 0; t < T; ++t) {
    targets[t] = static_cast<int32_t>(g.at("tokens").values[t]);
    mask[t] = static_cast<uint8_t>(g.at("mask").values[t]);
    kinds[t] = refine[t / L] != 0 ? cgrpo::kRefinement : cgrpo::kInitial;
    old_logp[t] = static_cast<Real>(g.at("old_logp").values[t]);
  }
  const auto layout = cgrpo::SequenceLayout::padded(B, L);
  cgrpo::broadcast_to_tokens(layout, adv.data(), adv_tok.data());
  cgrpo::AggregationScale scale;
  scale.length = seq_norm_length(g);
  if (s.config.pg_aggregation == cgrpo::Aggregation::seq_mean_token_sum_norm) REQUIRE(scale.length == double(L));
  REQUIRE(cgrpo::aggregation_weights(s.config.pg_aggregation, layout, mask.data(), scale, w_pg.data()).ok());
  REQUIRE(cgrpo::aggregation_weights(s.config.entropy_aggregation, layout, mask.data(), scale, w_h.data()).ok());

  cgrpo::PolicyLossBatch<Real> batch;
  batch.logits = logits.data();
  batch.num_tokens = T;
  batch.vocab_size = V;
  batch.target_ids = targets.data();
  batch.mask = mask.data();
  batch.kinds = kinds.data();
  batch.advantages = adv_tok.data();
  batch.old_logp = old_logp.data();
  batch.pg_weights = w_pg.data();
  batch.entropy_weights = w_h.data();
  batch.layout = layout;

  for (bool in_place : {false, true}) {
    for (int threads : {1, 2}) {
      CAPTURE(file, in_place, threads);
      cgrpo::LossConfig config = s.config;
      config.num_threads = threads;
      std::vector<Real> work = logits;  // in place overwrites its own copy
      batch.logits = work.data();
      std::vector<Real> grad(in_place ? 0 : T * V, Real(-777)), logp(T), entropy(T);
      cgrpo::LossMetrics metrics;
      cgrpo::PolicyLossOutputs<Real> out;
      out.grad_logits = in_place ? work.data() : grad.data();
      out.logp = logp.data();
      out.entropy = entropy.data();
      out.metrics = &metrics;
      const cgrpo::Status st = cgrpo::cpu::fused_policy_loss(config, batch, out);
      INFO(st.message);
      REQUIRE(st.ok());
      const std::vector<Real>& got_grad = in_place ? work : grad;

      CHECK(rel_err(metrics.loss, g.at("loss").values[0]) <= tol);
      CHECK(max_rel_err(got_grad, g.at("grad_logits").values) <= tol);
      CHECK(max_rel_err(logp, g.at("log_prob").values) <= tol);
      CHECK(max_rel_err(entropy, g.at("entropy").values) <= tol);
      // Masked rows of the gradient are exactly zero, as autograd gives.
      for (int64_t t = 0; t < T; ++t)
        if (!mask[t])
          for (int64_t v = 0; v < V; ++v) REQUIRE(got_grad[t * V + v] == Real(0));
    }
  }
}

}  // namespace

TEST_CASE("golden cases from the paper's code match in double (1e-10)", "[golden]") {
  for (const char* f : {"tiny.txt", "clip_token_mean.txt", "paper_config.txt"}) check_golden<double>(f, 1e-10);
}

TEST_CASE("golden cases from the paper's code match in float (1e-5)", "[golden]") {
  for (const char* f : {"tiny.txt", "clip_token_mean.txt", "paper_config.txt"}) check_golden<float>(f, 1e-5);
}
