// cgrpo/presets/recipe_text.hpp: a Recipe from a short text, and every field of a Recipe back as text.
// "preset=verl/grpo;kl.coef=0.01", "verl.loss_mode=gspo;verl.use_kl_loss=true;entropy.coef=0",
// "trl.loss_type=dapo;trl.beta=0.04": what a trainer's yaml (or the Python package's Config) holds.
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/base/status.hpp"
#include "cgrpo/presets/recipe.hpp"
#include "cgrpo/presets/registry.hpp"
#include "cgrpo/presets/trl_options.hpp"
#include "cgrpo/presets/verl_options.hpp"

namespace cgrpo {

// The text: items "key=value" separated by ';' (or newlines); spaces around keys and values and
// empty items are ignored. Keys, in any order:
//
//   preset=NAME                a registry preset (presets/registry.hpp), "verl/NAME@legacy_dp_actor" too
//   verl.FIELD=VALUE           a cgrpo::VerlOptions field (verl's yaml names); the base is verl_recipe()
//   trl.FIELD=VALUE            a cgrpo::TrlOptions field (GRPOConfig's names); the base is trl_recipe()
//   PATH=VALUE                 a field of the recipe by its dotted path: a LossConfig field
//                              ("kl.coef", "policy.sapo.tau_pos", "off_policy.rollout.rejection[0].upper",
//                              recipe_field_paths() lists them all) or "advantage.FIELD" (AdvantageConfig)
//
// The base recipe comes from one of preset=, the verl.* keys or the trl.* keys (mixing them is an
// error), or is Recipe{} (the paper's released runs) when none is given; the PATH keys are then
// applied in the order they appear (a key given twice: the last one wins), and the result is
// validated (LossConfig::validate()). Values: numbers as strtod reads them ("inf", "-inf"; "nan"
// nowhere), booleans true / false / 1 / 0, enums by their to_string names (aggregations also by
// their enum name: "token_mean" for "token-mean"). In verl.* and trl.* fields where the peer's
// None is meaningful (NaN doubles, null strings: clip_ratio_low, epsilon_high, rollout_is, ...),
// "none" / "None" / "null" stands for it.
//
// Errors are invalid_argument naming the key and the value ("recipe text: kl.coef = \"abc\": not a
// number"); *out is written only on success.
inline Status recipe_from_text(const char* text, Recipe* out);

// Every field of `recipe` as "path=value" items joined by ';' (doubles with 17 significant
// digits: recipe_from_text of the result gives the same recipe, bit for bit).
inline Status recipe_to_text(const Recipe& recipe, std::string* out);

// Every PATH key (LossConfig and AdvantageConfig fields), ';'-joined.
inline Status recipe_field_paths(std::string* out);

namespace detail {

// The values an enum field takes: [0, count), named by to_string.
template <typename E>
struct TextEnum;
#define CGRPO_TEXT_ENUM(E, count) \
  template <>                     \
  struct TextEnum<E> {            \
    static constexpr int size = count; \
  };
CGRPO_TEXT_ENUM(PolicyLoss, kNumPolicyLosses)
CGRPO_TEXT_ENUM(RatioLevel, kNumRatioLevels)
CGRPO_TEXT_ENUM(KlEstimator, kNumKlEstimators)
CGRPO_TEXT_ENUM(Aggregation, kNumAggregations)
CGRPO_TEXT_ENUM(RolloutCorrectionMode, kNumRolloutModes)
CGRPO_TEXT_ENUM(RolloutIsLevel, kNumRolloutIsLevels)
CGRPO_TEXT_ENUM(RolloutIsMode, kNumRolloutIsModes)
CGRPO_TEXT_ENUM(RejectionStatistic, kNumRejectionStatistics)
CGRPO_TEXT_ENUM(SamplerCorrectionMode, kNumSamplerModes)
CGRPO_TEXT_ENUM(AdvantageEstimator, kNumAdvantageEstimators)
CGRPO_TEXT_ENUM(VerlActor, 2)
#undef CGRPO_TEXT_ENUM

// A field is new to one of these structs: add its path below (and to the C++ / Python tests).
static_assert(sizeof(PolicyParams) == 16 * sizeof(double), "recipe_text.hpp: a policy term's parameter is missing");
static_assert(sizeof(KlConfig) == 4 + 4 + 8 + 8, "recipe_text.hpp: a field of KlConfig is missing");
static_assert(sizeof(AggregationConvention) == 2 * sizeof(double) + 8, "recipe_text.hpp: a convention field is missing");
static_assert(sizeof(RatioConfig) == 8 * sizeof(double), "recipe_text.hpp: a field of RatioConfig is missing");
static_assert(sizeof(RolloutCorrectionConfig) == 16 + 2 * 8 + 8 + 4 * sizeof(RejectionOption),
              "recipe_text.hpp: a field of RolloutCorrectionConfig is missing");
static_assert(sizeof(SamplerCorrectionConfig) == 3 * sizeof(double), "recipe_text.hpp: a sampler field is missing");
static_assert(sizeof(AdvantageConfig) == 4 * sizeof(double), "recipe_text.hpp: a field of AdvantageConfig is missing");

// Every field of a recipe by its dotted path: visit(path, field&) for double, bool, int, uint64_t
// and the enums above. The one list of paths: parsing, printing and the tests iterate it.
template <typename R, typename Visit>
void for_each_recipe_field(R& r, Visit&& visit) {
  auto& c = r.loss;
  visit("policy.loss", c.policy.loss);
  visit("policy.refinement_gamma", c.policy.refinement_gamma);
  visit("policy.cispo_cap.ratio_cap", c.policy.cispo_cap.ratio_cap);
  visit("policy.sapo.tau_pos", c.policy.sapo.tau_pos);
  visit("policy.sapo.tau_neg", c.policy.sapo.tau_neg);
  visit("policy.kl_cov.ratio", c.policy.kl_cov.ratio);
  visit("policy.kl_cov.coef", c.policy.kl_cov.coef);
  visit("policy.clip_cov.ratio", c.policy.clip_cov.ratio);
  visit("policy.clip_cov.lower", c.policy.clip_cov.lower);
  visit("policy.clip_cov.upper", c.policy.clip_cov.upper);
  visit("policy.clip_cov.seed", c.policy.clip_cov.seed);
  visit("policy.vespo.k_pos", c.policy.vespo.k_pos);
  visit("policy.vespo.lambda_pos", c.policy.vespo.lambda_pos);
  visit("policy.vespo.k_neg", c.policy.vespo.k_neg);
  visit("policy.vespo.lambda_neg", c.policy.vespo.lambda_neg);
  visit("policy.dppo_tv.is_cap", c.policy.dppo_tv.is_cap);
  visit("policy.dppo_kl.is_cap", c.policy.dppo_kl.is_cap);
  visit("policy.dro.beta", c.policy.dro.beta);
  visit("ratio.level", c.ratio.level);
  visit("ratio.clip_eps_low", c.ratio.clip_eps_low);
  visit("ratio.clip_eps_high", c.ratio.clip_eps_high);
  visit("ratio.dual_clip", c.ratio.dual_clip);
  visit("ratio.dual_clip_c", c.ratio.dual_clip_c);
  visit("ratio.log_ratio_min", c.ratio.log_ratio_min);
  visit("ratio.log_ratio_max", c.ratio.log_ratio_max);
  visit("ratio.two_sided_delta", c.ratio.two_sided_delta);
  visit("kl.estimator", c.kl.estimator);
  visit("kl.coef", c.kl.coef);
  visit("kl.straight_through", c.kl.straight_through);
  visit("kl.k3_clamp", c.kl.k3_clamp);
  visit("kl.times_ratio", c.kl.times_ratio);
  visit("entropy.coef", c.entropy.coef);
  visit("aggregation.policy", c.aggregation.policy);
  visit("aggregation.entropy", c.aggregation.entropy);
  visit("aggregation.kl", c.aggregation.kl);
  visit("aggregation.convention.token_mean_eps", c.aggregation.convention.token_mean_eps);
  visit("aggregation.convention.row_count_eps", c.aggregation.convention.row_count_eps);
  visit("aggregation.convention.count_empty_rows", c.aggregation.convention.count_empty_rows);
  visit("aggregation.convention.sum_norm_per_row", c.aggregation.convention.sum_norm_per_row);
  visit("aggregation.convention.token_count_from_response_mask",
        c.aggregation.convention.token_count_from_response_mask);
  auto& rc = c.off_policy.rollout;
  visit("off_policy.rollout.mode", rc.mode);
  visit("off_policy.rollout.is_level", rc.is_level);
  visit("off_policy.rollout.is_mode", rc.is_mode);
  visit("off_policy.rollout.is_threshold", rc.is_threshold);
  visit("off_policy.rollout.is_threshold_lower", rc.is_threshold_lower);
  visit("off_policy.rollout.metrics_from_applied_weights", rc.metrics_from_applied_weights);
  visit("off_policy.rollout.is_batch_normalize", rc.is_batch_normalize);
  visit("off_policy.rollout.num_rejection_options", rc.num_rejection_options);
  static const char* const kRejection[RolloutCorrectionConfig::kMaxRejectionOptions][3] = {
      {"off_policy.rollout.rejection[0].statistic", "off_policy.rollout.rejection[0].lower",
       "off_policy.rollout.rejection[0].upper"},
      {"off_policy.rollout.rejection[1].statistic", "off_policy.rollout.rejection[1].lower",
       "off_policy.rollout.rejection[1].upper"},
      {"off_policy.rollout.rejection[2].statistic", "off_policy.rollout.rejection[2].lower",
       "off_policy.rollout.rejection[2].upper"},
      {"off_policy.rollout.rejection[3].statistic", "off_policy.rollout.rejection[3].lower",
       "off_policy.rollout.rejection[3].upper"}};
  static_assert(RolloutCorrectionConfig::kMaxRejectionOptions == 4, "recipe_text.hpp: list every rejection option");
  for (int k = 0; k < RolloutCorrectionConfig::kMaxRejectionOptions; ++k) {
    visit(kRejection[k][0], rc.rejection[k].statistic);
    visit(kRejection[k][1], rc.rejection[k].lower);
    visit(kRejection[k][2], rc.rejection[k].upper);
  }
  visit("off_policy.sampler.mode", c.off_policy.sampler.mode);
  visit("off_policy.sampler.min", c.off_policy.sampler.min);
  visit("off_policy.sampler.max", c.off_policy.sampler.max);
  visit("off_policy.opsm_threshold", c.off_policy.opsm_threshold);
  visit("entropy_mask.top_quantile", c.entropy_mask.top_quantile);
  visit("entropy_mask.count_all_tokens", c.entropy_mask.count_all_tokens);
  visit("metrics.mean_eps", c.metrics.mean_eps);
  visit("temperature", c.temperature);
  visit("advantage.estimator", r.advantage.estimator);
  visit("advantage.eps", r.advantage.eps);
  visit("advantage.whiten_eps", r.advantage.whiten_eps);
  visit("advantage.whiten_count_eps", r.advantage.whiten_count_eps);
}

// A string option of VerlOptions / TrlOptions; `nullable`: "none" / "None" / "null" is a null pointer.
struct TextString {
  const char** field;
  bool nullable;
};
// A double option; `none_is_nan`: "none" stands for the peer's None (NaN).
struct TextNumber {
  double* field;
  bool none_is_nan;
};

// Every VerlOptions field by its name (visit(name, TextString / TextNumber / bool& / VerlActor&)).
template <typename Visit>
void for_each_verl_option(VerlOptions& o, Visit&& visit) {
  visit("loss_mode", TextString{&o.loss_mode, false});
  visit("loss_agg_mode", TextString{&o.loss_agg_mode, false});
  visit("clip_ratio", TextNumber{&o.clip_ratio, false});
  visit("clip_ratio_low", TextNumber{&o.clip_ratio_low, true});
  visit("clip_ratio_high", TextNumber{&o.clip_ratio_high, true});
  visit("clip_ratio_c", TextNumber{&o.clip_ratio_c, false});
  visit("entropy_coeff", TextNumber{&o.entropy_coeff, false});
  visit("use_kl_loss", o.use_kl_loss);
  visit("kl_loss_coef", TextNumber{&o.kl_loss_coef, false});
  visit("kl_loss_type", TextString{&o.kl_loss_type, false});
  visit("tau_pos", TextNumber{&o.tau_pos, false});
  visit("tau_neg", TextNumber{&o.tau_neg, false});
  visit("kl_cov_ratio", TextNumber{&o.kl_cov_ratio, false});
  visit("ppo_kl_coef", TextNumber{&o.ppo_kl_coef, false});
  visit("clip_cov_ratio", TextNumber{&o.clip_cov_ratio, false});
  visit("clip_cov_lb", TextNumber{&o.clip_cov_lb, false});
  visit("clip_cov_ub", TextNumber{&o.clip_cov_ub, false});
  visit("dro_beta", TextNumber{&o.dro_beta, true});
  visit("temperature", TextNumber{&o.temperature, false});
  visit("adv_estimator", TextString{&o.adv_estimator, false});
  visit("norm_adv_by_std_in_grpo", o.norm_adv_by_std_in_grpo);
  visit("rollout_is", TextString{&o.rollout_is, true});
  visit("rollout_is_threshold", TextNumber{&o.rollout_is_threshold, false});
  visit("rollout_is_threshold_text", TextString{&o.rollout_is_threshold_text, true});
  visit("rollout_is_batch_normalize", o.rollout_is_batch_normalize);
  visit("rollout_rs", TextString{&o.rollout_rs, true});
  visit("rollout_rs_threshold", TextString{&o.rollout_rs_threshold, true});
  visit("bypass_mode", o.bypass_mode);
  visit("loss_type", TextString{&o.loss_type, false});
  visit("actor", o.actor);
}

// Every TrlOptions field by its name.
template <typename Visit>
void for_each_trl_option(TrlOptions& o, Visit&& visit) {
  visit("loss_type", TextString{&o.loss_type, false});
  visit("importance_sampling_level", TextString{&o.importance_sampling_level, false});
  visit("epsilon", TextNumber{&o.epsilon, false});
  visit("epsilon_high", TextNumber{&o.epsilon_high, true});
  visit("delta", TextNumber{&o.delta, true});
  visit("beta", TextNumber{&o.beta, false});
  visit("use_bias_correction_kl", o.use_bias_correction_kl);
  visit("scale_rewards", TextString{&o.scale_rewards, false});
  visit("use_vllm", o.use_vllm);
  visit("vllm_importance_sampling_correction", o.vllm_importance_sampling_correction);
  visit("vllm_importance_sampling_mode", TextString{&o.vllm_importance_sampling_mode, false});
  visit("vllm_importance_sampling_clip_min", TextNumber{&o.vllm_importance_sampling_clip_min, true});
  visit("vllm_importance_sampling_clip_max", TextNumber{&o.vllm_importance_sampling_clip_max, true});
  visit("off_policy_mask_threshold", TextNumber{&o.off_policy_mask_threshold, true});
  visit("top_entropy_quantile", TextNumber{&o.top_entropy_quantile, false});
  visit("sapo_temperature_pos", TextNumber{&o.sapo_temperature_pos, false});
  visit("sapo_temperature_neg", TextNumber{&o.sapo_temperature_neg, false});
  visit("vespo_k_pos", TextNumber{&o.vespo_k_pos, false});
  visit("vespo_lambda_pos", TextNumber{&o.vespo_lambda_pos, false});
  visit("vespo_k_neg", TextNumber{&o.vespo_k_neg, false});
  visit("vespo_lambda_neg", TextNumber{&o.vespo_lambda_neg, false});
  visit("temperature", TextNumber{&o.temperature, false});
}

inline bool text_is_none(const std::string& v) { return v == "none" || v == "None" || v == "null"; }

inline Status text_error(const std::string& key, const std::string& value, const char* what) {
  return make_error(StatusCode::invalid_argument, "recipe text: %s = \"%s\": %s", key.c_str(), value.c_str(), what);
}

// The value parsers: Status naming key and value on failure; the field is written only on success.
inline Status parse_text_value(const std::string& key, const std::string& v, double* field) {
  if (v.empty()) return text_error(key, v, "expected a number");
  char* end = nullptr;
  errno = 0;
  const double x = std::strtod(v.c_str(), &end);
  if (end != v.c_str() + v.size() || std::isnan(x))
    return text_error(key, v, "expected a number (\"inf\" and \"-inf\" allowed)");
  if (errno == ERANGE && std::isinf(x)) return text_error(key, v, "overflows a double");
  *field = x;
  return Status::success();
}
inline Status parse_text_value(const std::string& key, const std::string& v, bool* field) {
  if (v == "true" || v == "True" || v == "1") *field = true;
  else if (v == "false" || v == "False" || v == "0") *field = false;
  else return text_error(key, v, "expected true or false");
  return Status::success();
}
inline Status parse_text_value(const std::string& key, const std::string& v, int* field) {
  char* end = nullptr;
  errno = 0;
  const long x = v.empty() ? 0 : std::strtol(v.c_str(), &end, 10);
  if (v.empty() || end != v.c_str() + v.size() || errno == ERANGE || x < INT32_MIN || x > INT32_MAX)
    return text_error(key, v, "expected an integer");
  *field = static_cast<int>(x);
  return Status::success();
}
inline Status parse_text_value(const std::string& key, const std::string& v, uint64_t* field) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long x = v.empty() || v[0] == '-' ? 0 : std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || v[0] == '-' || end != v.c_str() + v.size() || errno == ERANGE)
    return text_error(key, v, "expected an unsigned 64-bit integer");
  *field = static_cast<uint64_t>(x);
  return Status::success();
}
template <typename E, int N = TextEnum<E>::size>
Status parse_text_value(const std::string& key, const std::string& v, E* field) {
  for (int i = 0; i < N; ++i) {
    std::string name = to_string(static_cast<E>(i));
    std::string alias = name;
    for (char& ch : alias)
      if (ch == '-') ch = '_';
    if (v == name || v == alias) {
      *field = static_cast<E>(i);
      return Status::success();
    }
  }
  std::string known;
  for (int i = 0; i < N; ++i) known += std::string(i ? ", " : "") + to_string(static_cast<E>(i));
  Status s = text_error(key, v, "expected one of ");
  const size_t used = strlen(s.message);
  snprintf(s.message + used, sizeof(s.message) - used, "%s", known.c_str());
  return s;
}

inline void append_text_value(std::string& out, double x) {
  char buf[40];
  if (std::isinf(x)) snprintf(buf, sizeof(buf), "%s", x > 0 ? "inf" : "-inf");
  else snprintf(buf, sizeof(buf), "%.17g", x);
  out += buf;
}
inline void append_text_value(std::string& out, bool x) { out += x ? "true" : "false"; }
inline void append_text_value(std::string& out, int x) { out += std::to_string(x); }
inline void append_text_value(std::string& out, uint64_t x) { out += std::to_string(static_cast<unsigned long long>(x)); }
template <typename E, int N = TextEnum<E>::size>
void append_text_value(std::string& out, E x) {
  out += to_string(x);
}

// The known keys under the key's first segment, for an unknown key's message.
inline std::string known_keys_like(const std::string& key) {
  const std::string head = key.substr(0, key.find('.'));
  std::string known;
  Recipe r;
  for_each_recipe_field(r, [&](const char* path, auto&) {
    const std::string p = path;
    if (p.compare(0, head.size(), head) == 0 && p.find("rejection[1]") == std::string::npos &&
        p.find("rejection[2]") == std::string::npos && p.find("rejection[3]") == std::string::npos)
      known += std::string(known.empty() ? "" : ", ") + p;
  });
  return known;
}

inline std::string trim_text(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

// One option of a peer's options struct (verl.* / trl.*), parsed into `o`; strings are kept in `storage`.
template <typename Options, typename ForEach>
Status set_peer_option(Options& o, ForEach&& for_each, const char* peer, const std::string& key, const std::string& name,
                       const std::string& value, std::deque<std::string>& storage) {
  Status result = make_error(StatusCode::invalid_argument, "recipe text: unknown option %s (not a field of cgrpo::%s)",
                             key.c_str(), peer);
  bool found = false;
  for_each(o, [&](const char* field, auto&& target) {
    if (found || name != field) return;
    found = true;
    using T = std::decay_t<decltype(target)>;
    if constexpr (std::is_same<T, TextString>::value) {
      if (target.nullable && (text_is_none(value) || value.empty())) {
        *target.field = nullptr;
      } else {
        storage.push_back(value);
        *target.field = storage.back().c_str();
      }
      result = Status::success();
    } else if constexpr (std::is_same<T, TextNumber>::value) {
      if (target.none_is_nan && text_is_none(value)) {
        *target.field = std::numeric_limits<double>::quiet_NaN();
        result = Status::success();
      } else {
        result = parse_text_value(key, value, target.field);
      }
    } else {
      result = parse_text_value(key, value, &target);
    }
  });
  if (!found) {
    std::string known;
    for_each(o, [&](const char* field, auto&&) { known += std::string(known.empty() ? "" : ", ") + field; });
    const size_t used = strlen(result.message);
    snprintf(result.message + used, sizeof(result.message) - used, "; known: %s", known.c_str());
  }
  return result;
}

inline Status recipe_from_text(const char* text, Recipe* out) {
  // Split into items at ';' and newlines.
  std::vector<std::string> items;
  std::string cur;
  for (const char* p = text ? text : ""; ; ++p) {
    if (*p == ';' || *p == '\n' || *p == '\0') {
      const std::string item = trim_text(cur);
      if (!item.empty()) items.push_back(item);
      cur.clear();
      if (*p == '\0') break;
    } else {
      cur += *p;
    }
  }
  std::string preset_name;
  VerlOptions verl;
  TrlOptions trl;
  std::deque<std::string> storage;  // the options' strings
  bool have_preset = false, have_verl = false, have_trl = false;
  std::string first_verl, first_trl;
  std::vector<std::pair<std::string, std::string>> overrides;
  for (const std::string& item : items) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos)
      return make_error(StatusCode::invalid_argument, "recipe text: item \"%s\" is not key=value", item.c_str());
    const std::string key = trim_text(item.substr(0, eq)), value = trim_text(item.substr(eq + 1));
    if (key.empty()) return make_error(StatusCode::invalid_argument, "recipe text: item \"%s\" has no key", item.c_str());
    if (key == "preset") {
      if (have_preset && value != preset_name)
        return make_error(StatusCode::invalid_argument, "recipe text: preset given twice (\"%s\" and \"%s\")",
                          preset_name.c_str(), value.c_str());
      have_preset = true;
      preset_name = value;
    } else if (key.compare(0, 5, "verl.") == 0) {
      if (!have_verl) first_verl = key;
      have_verl = true;
      CGRPO_RETURN_IF_ERROR(set_peer_option(verl, [](VerlOptions& o, auto&& v) { for_each_verl_option(o, v); },
                                            "VerlOptions", key, key.substr(5), value, storage));
    } else if (key.compare(0, 4, "trl.") == 0) {
      if (!have_trl) first_trl = key;
      have_trl = true;
      CGRPO_RETURN_IF_ERROR(set_peer_option(trl, [](TrlOptions& o, auto&& v) { for_each_trl_option(o, v); },
                                            "TrlOptions", key, key.substr(4), value, storage));
    } else {
      overrides.emplace_back(key, value);
    }
  }
  if ((have_preset ? 1 : 0) + (have_verl ? 1 : 0) + (have_trl ? 1 : 0) > 1)
    return make_error(StatusCode::invalid_argument,
                      "recipe text: %s%s%s%s%s each give the base recipe: use one of them (field paths such as "
                      "kl.coef apply on top of any)",
                      have_preset ? "preset" : "", have_preset && (have_verl || have_trl) ? " and " : "",
                      have_verl ? first_verl.c_str() : "", have_verl && have_trl ? " and " : "",
                      have_trl ? first_trl.c_str() : "");
  Recipe r;
  if (have_preset) {
    const Status s = preset(preset_name.c_str(), &r);
    if (!s.ok()) return s;
  } else if (have_verl) {
    Status s = verl_recipe(verl, &r);
    if (!s.ok()) {
      Status e = make_error(StatusCode::invalid_argument, "recipe text (verl.* options): %s", s.message);
      return e;
    }
  } else if (have_trl) {
    Status s = trl_recipe(trl, &r);
    if (!s.ok()) return make_error(StatusCode::invalid_argument, "recipe text (trl.* options): %s", s.message);
  }
  for (const auto& kv : overrides) {
    bool found = false;
    Status s = Status::success();
    for_each_recipe_field(r, [&](const char* path, auto& field) {
      if (found || kv.first != path) return;
      found = true;
      s = parse_text_value(kv.first, kv.second, &field);
    });
    if (!found) {
      const std::string known = known_keys_like(kv.first);
      Status e = make_error(StatusCode::invalid_argument, "recipe text: unknown key \"%s\"", kv.first.c_str());
      const size_t used = strlen(e.message);
      if (!known.empty()) snprintf(e.message + used, sizeof(e.message) - used, " (known: %s)", known.c_str());
      else
        snprintf(e.message + used, sizeof(e.message) - used,
                 " (expected preset, verl.*, trl.*, advantage.* or a LossConfig path such as kl.coef)");
      return e;
    }
    if (!s.ok()) return s;
  }
  {
    const Status s = r.loss.validate();
    if (!s.ok()) return make_error(StatusCode::invalid_argument, "recipe text: %s", s.message);
  }
  *out = r;
  return Status::success();
}

}  // namespace detail

inline Status recipe_from_text(const char* text, Recipe* out) {
  if (!out) return make_error(StatusCode::invalid_argument, "recipe_from_text: out must not be null");
  return no_throw("recipe_from_text", [&] { return detail::recipe_from_text(text, out); });
}

inline Status recipe_to_text(const Recipe& recipe, std::string* out) {
  if (!out) return make_error(StatusCode::invalid_argument, "recipe_to_text: out must not be null");
  return no_throw("recipe_to_text", [&] {
    std::string text;
    detail::for_each_recipe_field(recipe, [&](const char* path, const auto& field) {
      if (!text.empty()) text += ';';
      text += path;
      text += '=';
      detail::append_text_value(text, field);
    });
    *out = std::move(text);
    return Status::success();
  });
}

inline Status recipe_field_paths(std::string* out) {
  if (!out) return make_error(StatusCode::invalid_argument, "recipe_field_paths: out must not be null");
  return no_throw("recipe_field_paths", [&] {
    std::string text;
    const Recipe r;
    detail::for_each_recipe_field(r, [&](const char* path, const auto&) {
      if (!text.empty()) text += ';';
      text += path;
    });
    *out = std::move(text);
    return Status::success();
  });
}

}  // namespace cgrpo
