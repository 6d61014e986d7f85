// tests/support/catalog.hpp: the one catalog of configs every suite iterates: each preset of the
// registry by its name, then the variants the presets leave out (each correction mode, KL form, mask).
#pragma once

#include <cgrpo/cgrpo.hpp>

#include <cstdlib>
#include <string>
#include <vector>

namespace support {

struct CatalogEntry {
  std::string name;  // the preset's registry name, or "<preset> + <what the variant changes>"
  cgrpo::Recipe recipe;
  const cgrpo::LossConfig& config() const { return recipe.loss; }
};

namespace detail {
inline cgrpo::Recipe preset_or_die(const char* name) {
  cgrpo::Recipe r;
  if (!cgrpo::preset(name, &r).ok()) std::abort();  // a name of the registry itself
  return r;
}
}  // namespace detail

// Every preset (cgrpo::preset_at), then one variant per mode the presets do not reach. Every entry
// validates; the batches of tests/support/batch.hpp have every array any of them reads.
inline std::vector<CatalogEntry> catalog() {
  std::vector<CatalogEntry> out;
  for (int i = 0; i < cgrpo::preset_count(); ++i) out.push_back({cgrpo::preset_at(i)->name, cgrpo::preset_at(i)->make()});
  auto variant = [&](const char* base, const std::string& what, auto&& change) {
    cgrpo::Recipe r = detail::preset_or_die(base);
    change(r.loss);
    out.push_back({std::string(base) + " + " + what, r});
  };
  using cgrpo::LossConfig;
  for (auto mode : {cgrpo::SamplerCorrectionMode::token_truncate, cgrpo::SamplerCorrectionMode::token_mask,
                    cgrpo::SamplerCorrectionMode::sequence_truncate, cgrpo::SamplerCorrectionMode::sequence_mask})
    variant("trl/grpo", std::string("vLLM IS ") + cgrpo::to_string(mode), [mode](LossConfig& c) {
      c.off_policy.sampler = cgrpo::trl_vllm_importance_sampling();
      c.off_policy.sampler.mode = mode;
      c.off_policy.sampler.min = 0.5;
    });
  variant("trl/vespo", "vLLM IS token_truncate", [](LossConfig& c) {
    c.off_policy.sampler.mode = cgrpo::SamplerCorrectionMode::token_truncate;
    c.off_policy.sampler.max = 3.0;
  });
  variant("trl/grpo", "top_entropy_quantile 0.4", [](LossConfig& c) { c.entropy_mask.top_quantile = 0.4; });
  variant("trl/dapo", "top_entropy_quantile 0.5 + entropy bonus", [](LossConfig& c) {
    c.entropy_mask.top_quantile = 0.5;
    c.entropy.coef = 0.01;
  });
  variant("trl/grpo", "OPSM 0.05", [](LossConfig& c) { c.off_policy.opsm_threshold = 0.05; });
  variant("trl/grpo", "sequence level", [](LossConfig& c) { c.ratio.level = cgrpo::RatioLevel::sequence; });
  variant("trl/dapo", "sequence level + k3 KL x ratio", [](LossConfig& c) {
    c.ratio.level = cgrpo::RatioLevel::sequence;
    c.kl.estimator = cgrpo::KlEstimator::k3;
    c.kl.coef = 0.04;
    c.kl.times_ratio = true;
  });
  variant("trl/bnpo", "k3 KL (beta 0.04)", [](LossConfig& c) {
    c.kl.estimator = cgrpo::KlEstimator::k3;
    c.kl.coef = 0.04;
  });
  variant("trl/grpo", "delta 1.1", [](LossConfig& c) { c.ratio.two_sided_delta = 1.1; });
  for (const char* k : {"kl", "abs", "mse", "low_var_kl", "kl+", "abs+", "low_var_kl+"})
    variant("verl/grpo", std::string("kl_loss_type ") + k + " + entropy", [k](LossConfig& c) {
      if (!cgrpo::verl_kl_loss_type(k, &c.kl.estimator, &c.kl.straight_through).ok()) std::abort();
      c.kl.coef = 0.05;
      c.entropy.coef = 0.01;
    });
  for (auto level : {cgrpo::RolloutIsLevel::token, cgrpo::RolloutIsLevel::sequence}) {
    const std::string l = cgrpo::to_string(level);
    variant("verl/grpo", "decoupled " + l + " IS + token_k1,seq_sum_k2 rejection", [level](LossConfig& c) {
      c = cgrpo::verl_decoupled(cgrpo::Recipe{c, {}}, level, 1.5).loss;
      if (!cgrpo::verl_rollout_rs("token_k1,seq_sum_k2", "0.5_2.0,1.0", &c.off_policy.rollout).ok()) std::abort();
    });
    variant("verl/grpo", "decoupled " + l + " IS + seq_mean_k3,seq_max_k3,token_k3 rejection", [level](LossConfig& c) {
      c = cgrpo::verl_decoupled(cgrpo::Recipe{c, {}}, level, 1.5).loss;
      if (!cgrpo::verl_rollout_rs("seq_mean_k3,seq_max_k3,token_k3", "0.01", &c.off_policy.rollout).ok()) std::abort();
    });
    variant("verl/grpo", "decoupled " + l + " IS, batch-normalized", [level](LossConfig& c) {
      c = cgrpo::verl_decoupled(cgrpo::Recipe{c, {}}, level, 1.5).loss;
      c.off_policy.rollout.is_batch_normalize = true;
    });
    variant("verl/gmpo", "decoupled " + l + " IS", [level](LossConfig& c) {
      c = cgrpo::verl_decoupled(cgrpo::Recipe{c, {}}, level, 1.5).loss;
    });
    variant("verl/bypass_pg_is", l + " IS + seq_mean_k1 rejection", [level](LossConfig& c) {
      c.off_policy.rollout.is_level = level;
      if (!cgrpo::verl_rollout_rs("seq_mean_k1", "0.9_1.1", &c.off_policy.rollout).ok()) std::abort();
    });
  }
  variant("verl/bypass_ppo_clip", "token_k2 rejection", [](LossConfig& c) {
    if (!cgrpo::verl_rollout_rs("token_k2", "0.02", &c.off_policy.rollout).ok()) std::abort();
  });
  variant("verl/clip_cov", "ratio 0.2, cov in (-1, 2), seed 7", [](LossConfig& c) {
    c.policy.clip_cov.ratio = 0.2;
    c.policy.clip_cov.lower = -1;
    c.policy.clip_cov.upper = 2;
    c.policy.clip_cov.seed = 7;
  });
  variant("verl/kl_cov", "ratio 0.1", [](LossConfig& c) { c.policy.kl_cov.ratio = 0.1; });
  // The verl presets carry the engine actor's denominators; the legacy dp_actor's are here.
  for (auto mode : {cgrpo::Aggregation::token_mean, cgrpo::Aggregation::seq_mean_token_sum,
                    cgrpo::Aggregation::seq_mean_token_mean, cgrpo::Aggregation::seq_mean_token_sum_norm,
                    cgrpo::Aggregation::token_sum})
    for (int conv = 0; conv < 3; ++conv) {
      if (mode == cgrpo::Aggregation::token_sum && conv > 0) continue;  // no denominator: one convention
      variant("paper/critique_grpo",
              std::string(cgrpo::to_string(mode)) +
                  (conv == 0 ? " (paper's" : conv == 1 ? " (verl's legacy dp_actor" : " (TRL's") +
                  " denominators) + k2 KL + entropy",
              [mode, conv](LossConfig& c) {
                c.aggregation.policy = c.aggregation.entropy = c.aggregation.kl = mode;
                if (conv == 1) c.aggregation.convention = cgrpo::verl_aggregation(cgrpo::VerlActor::legacy_dp_actor);
                if (conv == 2) c.aggregation.convention = cgrpo::trl_aggregation();
                c.kl.estimator = cgrpo::KlEstimator::k2;
                c.kl.coef = 0.02;
                c.entropy.coef = 0.003;
              });
    }
  variant("verl/decoupled_seq_is", "IcePop [0.8, 1.25] (sequence level)", [](LossConfig& c) {
    c.off_policy.rollout.is_mode = cgrpo::RolloutIsMode::icepop;
    c.off_policy.rollout.is_threshold_lower = 0.8;
    c.off_policy.rollout.is_threshold = 1.25;
  });
  variant("verl/dapo", "temperature 0.7 + entropy", [](LossConfig& c) {
    c.temperature = 0.7;
    c.entropy.coef = 0.002;
  });
  // Combinations no preset reaches: each couples two of the passes.
  variant("verl/gspo", "clip 0.2 / 0.28 (rows inside the band)", [](LossConfig& c) {
    c.ratio.clip_eps_low = 0.2;
    c.ratio.clip_eps_high = 0.28;
  });
  variant("verl/decoupled_seq_is", "batch-normalized + token_k1 rejection", [](LossConfig& c) {
    c.off_policy.rollout.is_batch_normalize = true;
    if (!cgrpo::verl_rollout_rs("token_k1", "0.7_1.4", &c.off_policy.rollout).ok()) std::abort();
  });
  variant("verl/bypass_ppo_clip", "k3 KL", [](LossConfig& c) {
    c.kl.estimator = cgrpo::KlEstimator::k3;
    c.kl.coef = 0.01;
  });
  variant("verl/gspo", "decoupled token IS + seq_mean_k1 rejection", [](LossConfig& c) {
    c = cgrpo::verl_decoupled(cgrpo::Recipe{c, {}}, cgrpo::RolloutIsLevel::token, 1.5).loss;
    if (!cgrpo::verl_rollout_rs("seq_mean_k1", "0.9_1.1", &c.off_policy.rollout).ok()) std::abort();
  });
  variant("verl/gmpo", "decoupled sequence IS + token_k2 rejection", [](LossConfig& c) {
    c = cgrpo::verl_decoupled(cgrpo::Recipe{c, {}}, cgrpo::RolloutIsLevel::sequence, 1.5).loss;
    if (!cgrpo::verl_rollout_rs("token_k2", "0.02", &c.off_policy.rollout).ok()) std::abort();
  });
  variant("trl/cispo", "vLLM IS token_mask", [](LossConfig& c) {
    c.off_policy.sampler = cgrpo::trl_vllm_importance_sampling();
    c.off_policy.sampler.mode = cgrpo::SamplerCorrectionMode::token_mask;
  });
  variant("trl/sapo", "vLLM IS sequence_truncate", [](LossConfig& c) {
    c.off_policy.sampler = cgrpo::trl_vllm_importance_sampling();
    c.off_policy.sampler.mode = cgrpo::SamplerCorrectionMode::sequence_truncate;
  });
  variant("trl/grpo", "vLLM IS token_truncate + OPSM 0.05", [](LossConfig& c) {
    c.off_policy.sampler = cgrpo::trl_vllm_importance_sampling();
    c.off_policy.sampler.mode = cgrpo::SamplerCorrectionMode::token_truncate;
    c.off_policy.opsm_threshold = 0.05;
  });
  variant("trl/grpo", "sequence level + top_entropy_quantile 0.5", [](LossConfig& c) {
    c.ratio.level = cgrpo::RatioLevel::sequence;
    c.entropy_mask.top_quantile = 0.5;
  });
  variant("paper/critique_grpo", "ppo_clip, gamma 0.3", [](LossConfig& c) {
    c.policy.loss = cgrpo::PolicyLoss::ppo_clip;
    c.policy.refinement_gamma = 0.3;
  });
  return out;
}

}  // namespace support
