// cgrpo/presets/verl_options.hpp: verl's option strings (kl_loss_type, loss_agg_mode, rollout_rs with
// rollout_rs_threshold) turned into config fields, with verl's parsing rules.
#pragma once

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cgrpo/loss/config.hpp"
#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/base/status.hpp"

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
    KlEstimator e;
    if (s == "kl" || s == "k1") e = KlEstimator::k1;
    else if (s == "abs") e = KlEstimator::abs;
    else if (s == "mse" || s == "k2") e = KlEstimator::k2, plus = false;
    else if (s == "low_var_kl" || s == "k3") e = KlEstimator::k3;
    else
      return make_error(StatusCode::invalid_argument,
                        "kl_loss_type \"%s\": expected kl, k1, abs, mse, k2, low_var_kl or k3, optionally with a "
                        "trailing + (verl's \"full\" is not offered)",
                        name ? name : "(null)");
    *estimator = e;
    *straight_through = plus;
    return Status::success();
  });
}

// actor.loss_agg_mode. Pair it with verl_aggregation() (presets.hpp) for verl's denominators.
inline Status verl_loss_agg_mode(const char* name, Aggregation* mode) {
  if (!mode) return make_error(StatusCode::invalid_argument, "verl_loss_agg_mode: mode must not be null");
  return no_throw("verl_loss_agg_mode", [&]() -> Status {
    const std::string s = name ? name : "";
    if (s == "token-mean") *mode = Aggregation::token_mean;
    else if (s == "seq-mean-token-sum") *mode = Aggregation::seq_mean_token_sum;
    else if (s == "seq-mean-token-mean") *mode = Aggregation::seq_mean_token_mean;
    else if (s == "seq-mean-token-sum-norm") *mode = Aggregation::seq_mean_token_sum_norm;
    else
      return make_error(StatusCode::invalid_argument,
                        "loss_agg_mode \"%s\": expected token-mean, seq-mean-token-sum, seq-mean-token-mean or "
                        "seq-mean-token-sum-norm",
                        s.c_str());
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
    static const char* const kNames[] = {"token_k1",    "token_k2",    "token_k3",   "seq_sum_k1",
                                         "seq_sum_k2",  "seq_sum_k3",  "seq_mean_k1", "seq_mean_k2",
                                         "seq_mean_k3", "seq_max_k2",  "seq_max_k3"};
    std::vector<RejectionStatistic> stats;
    for (const std::string& name : detail::split_commas(rollout_rs)) {
      int found = -1;
      for (int k = 0; k < 11; ++k)
        if (name == kNames[k]) found = k;
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
                            spec.c_str(), kNames[static_cast<int>(stats[k])]);
        o.lower = lo;
        o.upper = hi;
      } else {
        if (us != std::string::npos || !detail::parse_number(spec, &hi) || !(hi > 0))
          return make_error(StatusCode::invalid_argument,
                            "rollout_rs_threshold \"%s\" for %s: expected a single upper bound > 0", spec.c_str(),
                            kNames[static_cast<int>(stats[k])]);
        o.lower = 0;
        o.upper = hi;
      }
    }
    for (size_t k = 0; k < stats.size(); ++k) out->rejection[k] = parsed[k];
    out->num_rejection_options = static_cast<int>(stats.size());
    return Status::success();
  });
}

}  // namespace cgrpo
