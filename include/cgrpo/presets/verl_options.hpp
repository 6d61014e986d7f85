// cgrpo/presets/verl_options.hpp: verl's option strings (policy_loss.loss_mode, loss_agg_mode,
// kl_loss_type, rollout_is, rollout_rs with rollout_rs_threshold) turned into config fields with
// verl's parsing rules, and VerlOptions: verl's actor / algorithm fields as one struct -> a Recipe.
#pragma once

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cmath>
#include <limits>

#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/presets/recipe.hpp"
#include "cgrpo/presets/verl_presets.hpp"

namespace cgrpo {

// actor.kl_loss_type: "kl"/"k1", "abs", "mse"/"k2", "low_var_kl"/"k3", each optionally ending in "+"
// (straight-through: the estimator's value, k2's gradient; "mse+" / "k2+" are plain k2). verl's
// "full" is not offered (it needs the whole vocabulary of the reference).
inline Status verl_kl_loss_type(const char* name, KlEstimator* estimator, bool* straight_through) {
  if (!estimator || !straight_through)
    return make_error(StatusCode::invalid_argument, "verl_kl_loss_type: estimator and straight_through must not be null");
  return no_throw("verl_kl_loss_type", [&]() -> Status {
    std::string s = name ? name : "";
    bool plus = !s.empty() && s.back() == '+';
    if (plus) s.pop_back();
    KlEstimator e = KlEstimator::none;
    if (!find_verl_kl(s.c_str(), &e))
      return make_error(StatusCode::invalid_argument,
                        "kl_loss_type \"%s\": expected kl, k1, abs, mse, k2, low_var_kl or k3, optionally with a "
                        "trailing + (verl's \"full\" is not offered)",
                        name ? name : "(null)");
    if (!traits_of(e).straight_through) plus = false;  // "mse+" / "k2+" are plain k2
    *estimator = e;
    *straight_through = plus;
    return Status::success();
  });
}

// actor.loss_agg_mode. Pair it with verl_aggregation() (verl_presets.hpp) for verl's denominators.
inline Status verl_loss_agg_mode(const char* name, Aggregation* mode) {
  if (!mode) return make_error(StatusCode::invalid_argument, "verl_loss_agg_mode: mode must not be null");
  return no_throw("verl_loss_agg_mode", [&]() -> Status {
    const std::string s = name ? name : "";
    if (!find_aggregation(s.c_str(), mode)) {
      std::string known;
      for (int i = 0; i < kNumAggregations; ++i)
        known += std::string(i ? ", " : "") + traits_of(static_cast<Aggregation>(i)).name;
      return make_error(StatusCode::invalid_argument, "loss_agg_mode \"%s\": expected one of %s", s.c_str(),
                        known.c_str());
    }
    return Status::success();
  });
}

namespace detail {
inline std::vector<std::string> split_commas(const char* text) {
  std::vector<std::string> parts;
  std::string cur;
  auto flush = [&] {
    const size_t b = cur.find_first_not_of(" \t"), e = cur.find_last_not_of(" \t");
    if (b != std::string::npos) parts.push_back(cur.substr(b, e - b + 1));
    cur.clear();
  };
  for (const char* p = text ? text : ""; *p; ++p) {
    if (*p == ',') flush();
    else cur += *p;
  }
  flush();
  return parts;
}

inline bool parse_number(const std::string& s, double* v) {
  if (s.empty()) return false;
  char* end = nullptr;
  *v = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size();
}
}  // namespace detail

// algorithm.rollout_correction.rollout_rs and rollout_rs_threshold, parsed as verl parses them:
// a comma list of options (duplicates dropped, order kept; a token is kept only if every option
// keeps it) and either one threshold for all or one per option. k1 options take "lo_hi" or a single
// "hi" (then lo = 1 / hi); k2 / k3 options take a single upper bound. Writes out->rejection and
// out->num_rejection_options only on success (mode, IS level and threshold are left as they are).
inline Status verl_rollout_rs(const char* rollout_rs, const char* rollout_rs_threshold, RolloutCorrectionConfig* out) {
  if (!out) return make_error(StatusCode::invalid_argument, "verl_rollout_rs: out must not be null");
  return no_throw("verl_rollout_rs", [&]() -> Status {
    std::vector<RejectionStatistic> stats;
    for (const std::string& name : detail::split_commas(rollout_rs)) {
      int found = -1;
      for (int k = 0; k < kNumRejectionStatistics; ++k)
        if (name == to_string(static_cast<RejectionStatistic>(k))) found = k;
      if (found < 0)
        return make_error(StatusCode::invalid_argument,
                          "rollout_rs: unknown option \"%s\" (token_k1..k3, seq_sum_k1..k3, seq_mean_k1..k3, "
                          "seq_max_k2, seq_max_k3)",
                          name.c_str());
      const auto s = static_cast<RejectionStatistic>(found);
      bool seen = false;
      for (RejectionStatistic t : stats) seen = seen || t == s;
      if (!seen) stats.push_back(s);
    }
    if (stats.empty()) return make_error(StatusCode::invalid_argument, "rollout_rs: no option given");
    if (stats.size() > static_cast<size_t>(RolloutCorrectionConfig::kMaxRejectionOptions))
      return make_error(StatusCode::invalid_argument, "rollout_rs: at most %d options, got %zu",
                        RolloutCorrectionConfig::kMaxRejectionOptions, stats.size());
    std::vector<std::string> specs = detail::split_commas(rollout_rs_threshold);
    if (specs.empty())
      return make_error(StatusCode::invalid_argument, "rollout_rs_threshold must be given for rollout_rs");
    if (specs.size() != 1 && specs.size() != stats.size())
      return make_error(StatusCode::invalid_argument,
                        "rollout_rs_threshold: expected one threshold for all options or %zu (one per option), got %zu",
                        stats.size(), specs.size());
    RejectionOption parsed[RolloutCorrectionConfig::kMaxRejectionOptions];
    for (size_t k = 0; k < stats.size(); ++k) {
      const std::string& spec = specs.size() == 1 ? specs[0] : specs[k];
      RejectionOption& o = parsed[k];
      o.statistic = stats[k];
      const size_t us = spec.find('_');
      double lo = 0, hi = 0;
      if (rejection_is_k1(stats[k])) {
        const bool ok = us == std::string::npos
                            ? detail::parse_number(spec, &hi) && (lo = 1.0 / hi, true)
                            : detail::parse_number(spec.substr(0, us), &lo) && detail::parse_number(spec.substr(us + 1), &hi);
        if (!ok || !(lo > 0) || !(hi > 0))
          return make_error(StatusCode::invalid_argument,
                            "rollout_rs_threshold \"%s\" for %s: expected \"lower_upper\" or \"upper\", both > 0",
                            spec.c_str(), to_string(stats[k]));
        o.lower = lo;
        o.upper = hi;
      } else {
        if (us != std::string::npos || !detail::parse_number(spec, &hi) || !(hi > 0))
          return make_error(StatusCode::invalid_argument,
                            "rollout_rs_threshold \"%s\" for %s: expected a single upper bound > 0", spec.c_str(),
                            to_string(stats[k]));
        o.lower = 0;
        o.upper = hi;
      }
    }
    for (size_t k = 0; k < stats.size(); ++k) out->rejection[k] = parsed[k];
    out->num_rejection_options = static_cast<int>(stats.size());
    return Status::success();
  });
}

// actor.policy_loss.loss_mode: the term, and what verl's compute_policy_loss_<mode> fixes whatever
// the rest of the config says: vanilla's dual clip (clip_ratio_c), the +-20 clamp of the log ratio
// (none for geo_mean, kl_cov, clip_cov), the policy aggregation of sapo and geo_mean. "gspo" is
// ppo_clip at ratio.level = sequence_detached, its log ratio clamped at 10 from above only, no dual
// clip, aggregated seq-mean-token-mean. Clip bounds and coefficients are left as they are (they are
// verl options of their own: VerlOptions).
inline Status verl_loss_mode(const char* name, LossConfig* config) {
  if (!config) return make_error(StatusCode::invalid_argument, "verl_loss_mode: config must not be null");
  const std::string s = name ? name : "";
  LossConfig c = *config;
  PolicyLoss term = PolicyLoss::ppo_clip;
  const bool gspo = s == "gspo";
  if (!gspo && !find_policy_loss(s.c_str(), /*verl=*/true, &term)) {
    std::string known = "gspo";
    for (int i = 0; i < kNumPolicyLosses; ++i)
      if (const char* v = traits_of(static_cast<PolicyLoss>(i)).verl_name) known += std::string(", ") + v;
    return make_error(StatusCode::invalid_argument, "loss_mode \"%s\": expected one of %s", s.c_str(), known.c_str());
  }
  const PolicyTraits t = traits_of(term);
  c.policy.loss = term;
  c.ratio.level = gspo ? RatioLevel::sequence_detached : RatioLevel::token;
  c.ratio.dual_clip = t.dual_clip && !gspo;
  c.ratio.log_ratio_min = t.verl_log_ratio_clamp && !gspo ? -20.0 : -std::numeric_limits<double>::infinity();
  c.ratio.log_ratio_max = gspo ? 10.0 : t.verl_log_ratio_clamp ? 20.0 : std::numeric_limits<double>::infinity();
  if (t.fixed_aggregation || gspo) c.aggregation.policy = Aggregation::seq_mean_token_mean;
  *config = c;
  return Status::success();
}

// algorithm.rollout_correction.rollout_is: null / "" (off), "token" or "sequence".
inline Status verl_rollout_is(const char* name, RolloutIsLevel* level) {
  if (!level) return make_error(StatusCode::invalid_argument, "verl_rollout_is: level must not be null");
  const std::string s = name ? name : "";
  for (int i = 0; i < kNumRolloutIsLevels; ++i)
    if (s == (i == 0 ? "" : to_string(static_cast<RolloutIsLevel>(i)))) {
      *level = static_cast<RolloutIsLevel>(i);
      return Status::success();
    }
  return make_error(StatusCode::invalid_argument, "rollout_is \"%s\": expected token, sequence or none (null)",
                    s.c_str());
}

// algorithm.rollout_correction.rollout_is_threshold in verl's string form: a number T (truncation,
// w = min(u, T)) or IcePop's "lo_hi" (w = u where lo <= u <= hi, else 0; 0 < lo <= hi). Writes
// is_mode, is_threshold and is_threshold_lower only on success.
inline Status verl_rollout_is_threshold(const char* text, RolloutCorrectionConfig* out) {
  if (!out) return make_error(StatusCode::invalid_argument, "verl_rollout_is_threshold: out must not be null");
  return no_throw("verl_rollout_is_threshold", [&]() -> Status {
    const std::string spec = text ? text : "";
    const size_t us = spec.find('_');
    double lo = 0, hi = 0;
    if (us == std::string::npos) {
      if (!detail::parse_number(spec, &hi) || !(hi > 0))
        return make_error(StatusCode::invalid_argument,
                          "rollout_is_threshold \"%s\": expected a number > 0 or IcePop's \"lower_upper\"", spec.c_str());
      out->is_mode = RolloutIsMode::truncate;
      out->is_threshold = hi;
      out->is_threshold_lower = 0;
      return Status::success();
    }
    if (!detail::parse_number(spec.substr(0, us), &lo) || !detail::parse_number(spec.substr(us + 1), &hi) ||
        !std::isfinite(lo) || !std::isfinite(hi) || !(lo > 0) || !(hi > 0))
      return make_error(StatusCode::invalid_argument,
                        "rollout_is_threshold \"%s\": IcePop's \"lower_upper\" needs two finite numbers > 0",
                        spec.c_str());
    if (lo > hi)
      return make_error(StatusCode::invalid_argument,
                        "rollout_is_threshold \"%s\": IcePop's lower bound %g is above its upper bound %g", spec.c_str(),
                        lo, hi);
    out->is_mode = RolloutIsMode::icepop;
    out->is_threshold = hi;
    out->is_threshold_lower = lo;
    return Status::success();
  });
}

// verl's options as its yaml names them (actor_rollout_ref.actor.*, its policy_loss.*, and
// algorithm.*), with verl's defaults. NaN stands for verl's None; a null string for an unset one.
struct VerlOptions {
  // actor_rollout_ref.actor
  const char* loss_mode = "vanilla";        // policy_loss.loss_mode
  const char* loss_agg_mode = "token-mean";
  double clip_ratio = 0.2;
  double clip_ratio_low = std::numeric_limits<double>::quiet_NaN();   // None: clip_ratio
  double clip_ratio_high = std::numeric_limits<double>::quiet_NaN();  // None: clip_ratio
  double clip_ratio_c = 3.0;                // the dual clip; dppo_tv / dppo_kl: the IS cap min(r, c)
  double entropy_coeff = 0.0;
  bool use_kl_loss = false;
  double kl_loss_coef = 0.001;
  const char* kl_loss_type = "low_var_kl";
  // policy_loss.* of the other loss modes
  double tau_pos = 1.0, tau_neg = 1.05;     // sapo
  double kl_cov_ratio = 0.0002, ppo_kl_coef = 0.1;                     // kl_cov
  double clip_cov_ratio = 0.0002, clip_cov_lb = 1.0, clip_cov_ub = 5.0;  // clip_cov
  double dro_beta = std::numeric_limits<double>::quiet_NaN();          // dro: no default, must be > 0
  double temperature = 1.0;                 // actor_rollout_ref.rollout.temperature
  // algorithm
  const char* adv_estimator = "grpo";       // grpo, rloo, reinforce_plus_plus_baseline, gdpo (its reward
                                            // components and gdpo_reward_weights: cgrpo::gdpo_advantages)
  bool norm_adv_by_std_in_grpo = true;
  // algorithm.rollout_correction
  const char* rollout_is = nullptr;         // null, "token" or "sequence"
  double rollout_is_threshold = 2.0;
  const char* rollout_is_threshold_text = nullptr;  // verl's string form, if set: "T" or IcePop's "lo_hi"
                                                    // (verl_rollout_is_threshold); overrides the number
  bool rollout_is_batch_normalize = false;
  const char* rollout_rs = nullptr;         // a comma list of rejection options, or null
  const char* rollout_rs_threshold = nullptr;
  bool bypass_mode = false;                 // the trainer sets old_log_probs = rollout_log_probs
  const char* loss_type = "ppo_clip";       // bypass mode: ppo_clip or reinforce
  // Not a verl option: which actor's conventions (denominators, IS metrics) the recipe follows.
  VerlActor actor = VerlActor::engine;
  // actor.loss_scale_factor is a batch value here: pass it as batch.scale.length.
};

// The recipe verl runs for these options (its own function for each option, its conventions).
inline Status verl_recipe(const VerlOptions& o, Recipe* out) {
  if (!out) return make_error(StatusCode::invalid_argument, "verl_recipe: out must not be null");
  return no_throw("verl_recipe", [&]() -> Status {
    Recipe r = verl_vanilla();
    LossConfig& c = r.loss;
    CGRPO_RETURN_IF_ERROR(verl_loss_agg_mode(o.loss_agg_mode, &c.aggregation.policy));
    c.aggregation.entropy = c.aggregation.kl = c.aggregation.policy;
    CGRPO_RETURN_IF_ERROR(verl_loss_mode(o.loss_mode, &c));
    c.ratio.clip_eps_low = std::isnan(o.clip_ratio_low) ? o.clip_ratio : o.clip_ratio_low;
    c.ratio.clip_eps_high = std::isnan(o.clip_ratio_high) ? o.clip_ratio : o.clip_ratio_high;
    c.ratio.dual_clip_c = o.clip_ratio_c;
    c.policy.dppo_tv.is_cap = c.policy.dppo_kl.is_cap = o.clip_ratio_c;  // verl reads clip_ratio_c for both
    if (c.policy.loss == PolicyLoss::dro) {
      if (!(o.dro_beta > 0) || !std::isfinite(o.dro_beta))
        return make_error(StatusCode::invalid_argument,
                          "loss_mode dro needs policy_loss.dro_beta set > 0 (verl has no default), got %g", o.dro_beta);
      c.policy.dro.beta = o.dro_beta;
    }
    c.entropy.coef = o.entropy_coeff;
    if (o.use_kl_loss) {
      CGRPO_RETURN_IF_ERROR(verl_kl_loss_type(o.kl_loss_type, &c.kl.estimator, &c.kl.straight_through));
      c.kl.coef = o.kl_loss_coef;
    }
    c.policy.sapo.tau_pos = o.tau_pos;
    c.policy.sapo.tau_neg = o.tau_neg;
    c.policy.kl_cov.ratio = o.kl_cov_ratio;
    c.policy.kl_cov.coef = o.ppo_kl_coef;
    c.policy.clip_cov.ratio = o.clip_cov_ratio;
    c.policy.clip_cov.lower = o.clip_cov_lb;
    c.policy.clip_cov.upper = o.clip_cov_ub;
    c.temperature = o.temperature;
    const std::string adv = o.adv_estimator ? o.adv_estimator : "";
    if (adv == "grpo")
      r.advantage.estimator = o.norm_adv_by_std_in_grpo ? AdvantageEstimator::grpo : AdvantageEstimator::grpo_no_std;
    else if (adv == "rloo") r.advantage.estimator = AdvantageEstimator::rloo;
    else if (adv == "reinforce_plus_plus_baseline") r.advantage.estimator = AdvantageEstimator::reinforce_pp_baseline;
    else if (adv == "gdpo") r.advantage.estimator = AdvantageEstimator::gdpo;  // always divides by the std (verl
                                                                              // passes no norm_adv_by_std_in_grpo)
    else
      return make_error(StatusCode::invalid_argument,
                        "adv_estimator \"%s\": expected grpo, rloo, reinforce_plus_plus_baseline or gdpo (the others "
                        "are not offered)",
                        adv.c_str());
    RolloutCorrectionConfig& rc = c.off_policy.rollout;
    CGRPO_RETURN_IF_ERROR(verl_rollout_is(o.rollout_is, &rc.is_level));
    rc.is_threshold = o.rollout_is_threshold;
    if (o.rollout_is_threshold_text && rc.is_level != RolloutIsLevel::none)  // verl reads it only with rollout_is
      CGRPO_RETURN_IF_ERROR(verl_rollout_is_threshold(o.rollout_is_threshold_text, &rc));
    rc.is_batch_normalize = o.rollout_is_batch_normalize;
    const bool rs = o.rollout_rs && *o.rollout_rs;
    if (rs) CGRPO_RETURN_IF_ERROR(verl_rollout_rs(o.rollout_rs, o.rollout_rs_threshold, &rc));
    if (o.bypass_mode) {
      rc.mode = RolloutCorrectionMode::bypass;
      const std::string lt = o.loss_type ? o.loss_type : "";
      if (lt == "reinforce") {
        c.policy.loss = PolicyLoss::reinforce;
        c.ratio.dual_clip = false;
      } else if (lt != "ppo_clip") {
        return make_error(StatusCode::invalid_argument, "loss_type \"%s\": expected ppo_clip or reinforce", lt.c_str());
      }
    } else if (rc.is_level != RolloutIsLevel::none || rs) {
      rc.mode = RolloutCorrectionMode::decoupled;
    }
    if (o.actor != VerlActor::engine && o.actor != VerlActor::legacy_dp_actor)
      return make_error(StatusCode::invalid_argument, "verl_recipe: unknown actor %d", static_cast<int>(o.actor));
    r = verl_with_actor(r, o.actor);
    CGRPO_RETURN_IF_ERROR(r.loss.validate());
    *out = r;
    return Status::success();
  });
}

}  // namespace cgrpo
