// libFuzzer target: the critique stage's entry points over each input's whole domain.
//   fill_template        arbitrary template text and fields, against an independent reference
//   select_refinements   any reward (NaN and +-inf included), count, k, success reward
//   critiques            parse_critique_kind, write_critique (any kind, failing critics),
//                        refinement_prompt (against the same reference grammar)
//   assemble_groups      any rollouts, token ids, rewards (finite ones of any size), options
//                        (sizes near the int64 limits, unknown enums, any pad token and V) and
//                        recipe (every estimator, aggregation and eps, some fields broken)
// Invariants: never crashes; outputs untouched on error, with a message; results obey the
// documented rules; an accepted batch has finite advantages and weights and target ids in
// [0, V), and the loss accepts it (rewards of ordinary size), with finite results.
#include "fuzz_common.hpp"

#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using namespace cgrpo::critique;

// The template grammar written again, differently: scan for the next brace with find_first_of.
bool reference_fill(const std::string& text, const TemplateFields& fields, std::string& out) {
  out.clear();
  size_t i = 0;
  while (i < text.size()) {
    const size_t b = text.find_first_of("{}", i);
    if (b == std::string::npos) {
      out.append(text, i, std::string::npos);
      return true;
    }
    out.append(text, i, b - i);
    if (b + 1 < text.size() && text[b + 1] == text[b]) {  // "{{" or "}}"
      out += text[b];
      i = b + 2;
      continue;
    }
    if (text[b] == '}') return false;
    const size_t close = text.find('}', b + 1);
    if (close == std::string::npos) return false;
    const std::string name = text.substr(b + 1, close - b - 1);
    const std::string* value = nullptr;
    for (auto it = fields.rbegin(); it != fields.rend() && !value; ++it)
      if (it->first == name) value = &it->second;  // the last field of a name wins, as in the library
    if (!value) return false;
    out += *value;
    i = close + 1;
  }
  return true;
}

void fuzz_template(FuzzedDataProvider& in) {
  const std::string text = in.ConsumeRandomLengthString(200);
  TemplateFields fields;
  const int n = in.ConsumeIntegralInRange<int>(0, 4);
  for (int f = 0; f < n; ++f) {
    std::string name = in.ConsumeRandomLengthString(8), value = in.ConsumeRandomLengthString(40);
    fields.emplace_back(std::move(name), std::move(value));
  }
  std::string out = "untouched", want;
  const cgrpo::Status s = fill_template(text, fields, out);
  const bool ok = reference_fill(text, fields, want);
  FUZZ_CHECK(!(s.ok() != ok), "critique-stage rule");
  FUZZ_CHECK(!(!s.ok() && out != "untouched"), "critique-stage rule");
  FUZZ_CHECK(!(s.ok() && out != want), "critique-stage rule");
}

void fuzz_selection(FuzzedDataProvider& in) {
  const int64_t count = in.ConsumeIntegralInRange<int64_t>(-1, 8);
  const int64_t k = in.ConsumeIntegralInRange<int64_t>(-1, 9);
  const double success = in.ConsumeBool() ? 1.0 : (in.ConsumeBool() ? in.ConsumeFloatingPointInRange<double>(-2, 2) : fuzz::anything(in));
  const bool allow_empty = in.ConsumeBool(), with_counts = in.ConsumeBool();
  std::vector<double> rewards(count > 0 ? count : 0);
  std::vector<int64_t> counts(rewards.size());
  for (size_t j = 0; j < rewards.size(); ++j) {
    const int pick = in.ConsumeIntegralInRange<int>(0, 40);
    rewards[j] = pick == 0 ? fuzz::anything(in) : pick < 8 ? 1.0 : pick < 16 ? 0.0 : in.ConsumeFloatingPointInRange<double>(-2, 2);
    counts[j] = in.ConsumeIntegralInRange<int>(0, 20) ? in.ConsumeIntegralInRange<int64_t>(0, 3) : in.PickValueInArray<int64_t>({-1, INT64_MIN, INT64_MAX});
  }
  std::vector<int64_t> chosen = {-7};
  const cgrpo::Status s = select_refinements(rewards.data(), with_counts ? counts.data() : nullptr, count, k, success,
                                             allow_empty, chosen);
  if (!s.ok()) {
    FUZZ_CHECK(!(chosen.size() != 1 || chosen[0] != -7 || s.message[0] == 0), "critique-stage rule");
    return;
  }
  FUZZ_CHECK(!(!std::isfinite(success)), "critique-stage rule");  // documented: a non-finite success reward is an error
  for (double r : rewards)
    FUZZ_CHECK(!(!std::isfinite(r)), "critique-stage rule");  // documented: a non-finite reward is an error
  FUZZ_CHECK(!(static_cast<int64_t>(chosen.size()) != k), "critique-stage rule");
  std::vector<bool> seen(rewards.size(), false);
  bool in_correct = true;
  for (size_t c = 0; c < chosen.size(); ++c) {
    const int64_t j = chosen[c];
    FUZZ_CHECK(!(j < 0 || j >= count || seen[j]), "critique-stage rule");
    seen[j] = true;
    FUZZ_CHECK(!(with_counts && counts[j] == 0 && !allow_empty), "critique-stage rule");  // an empty refinement was chosen
    const bool correct = rewards[j] >= success;
    FUZZ_CHECK(!(correct && !in_correct), "critique-stage rule");  // a correct one after an incorrect one
    if (!correct) in_correct = false;
    if (c > 0) {
      const int64_t p = chosen[c - 1];
      const bool prev_correct = rewards[p] >= success;
      FUZZ_CHECK(!(correct && prev_correct && !(p < j)), "critique-stage rule");  // correct ones in generation order
      // The others by decreasing reward, ties by generation order.
      FUZZ_CHECK(!(!correct && !prev_correct && (rewards[p] < rewards[j] || (rewards[p] == rewards[j] && p > j))),
                 "selection order");
    }
  }
}

void fuzz_assembly(FuzzedDataProvider& in) {
  const bool wide = in.ConsumeIntegralInRange<int>(0, 3) == 0;
  cgrpo::Recipe recipe = cgrpo::paper_critique_grpo();
  if (wide) {
    recipe = fuzz::draw_config(in).recipe();  // every field, some broken
  } else {
    recipe.advantage.estimator =
        static_cast<cgrpo::AdvantageEstimator>(in.ConsumeIntegralInRange<int>(0, cgrpo::kNumAdvantageEstimators - 1));
    recipe.loss.aggregation.policy = static_cast<cgrpo::Aggregation>(in.ConsumeIntegralInRange<int>(0, cgrpo::kNumAggregations - 1));
  }
  const cgrpo::LossConfig& config = recipe.loss;
  GroupAssemblyOptions opt;
  opt.refinements_per_group = in.ConsumeIntegralInRange<int>(0, 20) ? in.ConsumeIntegralInRange<int64_t>(-1, 3)
                                                                    : in.PickValueInArray<int64_t>({INT64_MIN, INT64_MAX, 1LL << 40});
  opt.placement = static_cast<RefinementPlacement>(in.ConsumeIntegralInRange<int>(0, 20) ? in.ConsumeIntegralInRange<int>(0, 1)
                                                                                         : in.PickValueInArray({-1, 2, 77}));
  opt.layout = static_cast<BatchLayout>(in.ConsumeIntegralInRange<int>(0, 20) ? in.ConsumeIntegralInRange<int>(0, 1)
                                                                              : in.PickValueInArray({-1, 2, 77}));
  opt.padded_length = in.ConsumeIntegralInRange<int64_t>(0, 5);
  const bool huge_padding = in.ConsumeIntegralInRange<int>(0, 20) == 0;
  opt.allow_empty_responses = in.ConsumeBool();
  constexpr int32_t V = 6;
  opt.vocab_size = in.ConsumeIntegralInRange<int>(0, 3) ? 0 : in.PickValueInArray<int64_t>({V, 1, 3, -1, INT64_MAX});
  opt.pad_token = in.ConsumeIntegralInRange<int>(0, 10) ? in.ConsumeIntegralInRange<int32_t>(0, V - 1)
                                                        : in.PickValueInArray<int32_t>({-1, V, INT32_MIN, INT32_MAX});
  opt.success_reward = in.ConsumeIntegralInRange<int>(0, 10) ? 1.0 : fuzz::anything(in);
  if (in.ConsumeIntegralInRange<int>(0, 7) == 0) {
    double* sv[3] = {&opt.scale.token_count, &opt.scale.sequence_count, &opt.scale.length};
    for (double* v : sv)
      if (in.ConsumeBool()) *v = in.ConsumeBool() ? in.ConsumeFloatingPointInRange<double>(1, 100) : fuzz::anything(in);
  }
  std::vector<QuestionRollouts> questions(in.ConsumeIntegralInRange<size_t>(0, 3));
  bool ordinary_rewards = true;
  auto response = [&](Response& r) {
    r.tokens.resize(in.ConsumeIntegralInRange<size_t>(0, 4));
    for (auto& tok : r.tokens)
      tok = in.ConsumeIntegralInRange<int>(0, 30) ? in.ConsumeIntegralInRange<int32_t>(0, V - 1)
                                                  : in.PickValueInArray<int32_t>({-1, V, INT32_MIN, INT32_MAX});
    const int pick = in.ConsumeIntegralInRange<int>(0, 40);
    r.reward = pick == 0 ? fuzz::anything(in) : pick < 20 ? static_cast<double>(pick % 2) : in.ConsumeFloatingPointInRange<double>(-3, 3);
    if (!(std::fabs(r.reward) <= 1e6)) ordinary_rewards = false;
  };
  size_t initial = 0;
  for (auto& q : questions) {
    q.initial.resize(in.ConsumeIntegralInRange<size_t>(0, 4));
    q.refinements.resize(in.ConsumeIntegralInRange<size_t>(0, 3));
    initial += q.initial.size();
    for (auto& r : q.initial) response(r);
    for (auto& r : q.refinements) response(r);
  }
  // Padded rows past int64 must be refused before anything is allocated: only with two or more
  // responses does a length this large overflow (one response of 2^62 rows is just too large).
  if (huge_padding && initial >= 2) opt.padded_length = in.PickValueInArray<int64_t>({INT64_MAX, INT64_MAX / 2 + 1});
  AssembledBatch<double> out;
  out.rewards = {-7.0};
  const cgrpo::Status s = assemble_groups(recipe, questions, opt, out);
  if (!s.ok()) {
    FUZZ_CHECK(!(out.rewards.size() != 1 || out.rewards[0] != -7.0 || !out.sources.empty() || s.message[0] == 0), "critique-stage rule");
    const cgrpo::Status cs = config.validate();
    FUZZ_CHECK(cs.ok() || std::strcmp(cs.message, s.message) == 0, "config.validate() says %s, assemble_groups %s",
               cs.message, s.message);
    return;
  }
  FUZZ_CHECK(config.validate().ok(), "assemble_groups accepted a config that validate() refuses");
  const int64_t B = out.num_responses(), T = out.num_tokens();
  FUZZ_CHECK(!(static_cast<int64_t>(out.offsets.size()) != B + 1 || out.offsets[B] != T), "critique-stage rule");
  // The weights: none when the loss must form them itself (rejection, the entropy mask, geo_mean).
  const bool own_weights = cgrpo::plan_passes(config, cgrpo::PassInputs{}).requires_computed_weights;
  const int64_t weights_size = own_weights ? 0 : T;
  FUZZ_CHECK(static_cast<int64_t>(out.mask.size()) == T && static_cast<int64_t>(out.kinds.size()) == T &&
                 static_cast<int64_t>(out.advantages.size()) == T &&
                 static_cast<int64_t>(out.pg_weights.size()) == weights_size &&
                 static_cast<int64_t>(out.entropy_weights.size()) == weights_size &&
                 static_cast<int64_t>(out.kl_weights.size()) == weights_size,
             "per-token arrays of the wrong length (weights %zu, T %lld, the loss forms its own: %d)",
             out.pg_weights.size(), (long long)T, (int)own_weights);
  const int64_t known_v = opt.vocab_size > 0 ? opt.vocab_size : INT64_MAX;
  for (int64_t t = 0; t < T; ++t) {
    FUZZ_CHECK(std::isfinite(out.advantages[t]), "assemble_groups returned OK with token %lld: A %g", (long long)t,
               out.advantages[t]);
    if (weights_size > 0)
      FUZZ_CHECK(std::isfinite(out.pg_weights[t]) && out.pg_weights[t] >= 0 && std::isfinite(out.entropy_weights[t]) &&
                     std::isfinite(out.kl_weights[t]),
                 "assemble_groups returned OK with token %lld: weights %g %g %g", (long long)t, out.pg_weights[t],
                 out.entropy_weights[t], out.kl_weights[t]);
    FUZZ_CHECK(out.target_ids[t] >= 0 && out.target_ids[t] < known_v, "target id %d", out.target_ids[t]);
  }
  for (int64_t i = 0; i < B; ++i)
    for (int64_t t = out.offsets[i]; t < out.offsets[i + 1]; ++t)
      FUZZ_CHECK(!(out.mask[t] && out.kinds[t] != static_cast<uint8_t>(out.sources[i].kind)), "critique-stage rule");

  // Whatever assemble_groups accepts, the loss accepts (ordinary rewards), with finite results;
  // loss_batch's Status form refuses exactly the target ids outside [0, V).
  if (T == 0) return;
  std::vector<double> logits(static_cast<size_t>(T * V)), old_logp(T, -1.5), grad(logits.size());
  for (size_t j = 0; j < logits.size(); ++j) logits[j] = std::sin(static_cast<double>(j) * 0.7) * 3;
  cgrpo::PolicyLossBatch<double> view;
  const cgrpo::Status vs = out.loss_batch(logits.data(), V, old_logp.data(), nullptr, 0, view);
  bool ids_ok = true;
  for (int32_t id : out.target_ids) ids_ok = ids_ok && id >= 0 && id < V;
  FUZZ_CHECK(vs.ok() == ids_ok, "loss_batch: %s", vs.message);
  if (!vs.ok() || wide || !ordinary_rewards) return;
  cgrpo::LossMetrics m;
  cgrpo::PolicyLossOutputs<double> o{grad.data(), 0, nullptr, nullptr, &m};
  const cgrpo::Status ls = cgrpo::cpu::fused_policy_loss(config, view, o);
  double max_abs_adv = 0, max_w = 0;
  for (int64_t t = 0; t < T; ++t) max_abs_adv = std::max(max_abs_adv, std::fabs(out.advantages[t]));
  for (double w : out.pg_weights) max_w = std::max(max_w, std::fabs(w));
  FUZZ_CHECK(ls.ok() && std::isfinite(m.loss),
             "the loss refused an assembled batch: %s (estimator %s, policy %s, aggregation %s, max |A| %g, max w_pg %g)",
             ls.message, cgrpo::to_string(recipe.advantage.estimator), config.term().name,
             cgrpo::to_string(config.aggregation.policy), max_abs_adv, max_w);
  for (double g : grad) FUZZ_CHECK(std::isfinite(g), "gradient %g", g);
}

// parse_critique_kind, write_critique (every kind, unknown ones, critics that fail, throw or
// return nothing) and refinement_prompt (against the reference grammar).
void fuzz_critiques(FuzzedDataProvider& in) {
  const std::string name = in.ConsumeRandomLengthString(24);
  CritiqueKind parsed = CritiqueKind::simple;
  const cgrpo::Status ps = parse_critique_kind(name, parsed);
  FUZZ_CHECK(ps.ok() == (name == "simple" || name == "simple_gt" || name == "free_text"), "parse_critique_kind(%s)",
             name.c_str());
  FUZZ_CHECK(!ps.ok() || name == to_string(parsed), "parse_critique_kind round trip");
  FUZZ_CHECK(ps.ok() || ps.message[0], "parse_critique_kind: no message");
  CritiqueRequest request;
  request.question = in.ConsumeRandomLengthString(40);
  request.solution = in.ConsumeRandomLengthString(40);
  request.ground_truth = in.ConsumeBool() ? std::string() : in.ConsumeRandomLengthString(20);
  request.correct = in.ConsumeBool();
  const int behaviour = in.ConsumeIntegralInRange<int>(0, 5);
  const std::string text = in.ConsumeRandomLengthString(30);
  Critic critic;
  if (behaviour > 0)
    critic = [&](const CritiqueRequest&, std::string& out) -> cgrpo::Status {
      switch (behaviour) {
        case 1: return cgrpo::make_error(cgrpo::StatusCode::invalid_argument, "critic refuses");
        case 2: throw std::runtime_error("critic throws");
        case 3: throw 42;
        case 4: out.clear(); return cgrpo::Status::success();
        default: out = text; return cgrpo::Status::success();
      }
    };
  const auto kind = static_cast<CritiqueKind>(in.ConsumeIntegralInRange<int>(0, 15) ? in.ConsumeIntegralInRange<int>(0, 2)
                                                                                   : in.PickValueInArray({-1, 3, 99}));
  std::string critique = "untouched";
  const cgrpo::Status ws = write_critique(kind, request, critic, critique);
  if (!ws.ok()) {
    FUZZ_CHECK(critique == "untouched" && ws.message[0], "write_critique: output touched on error (%s)", ws.message);
  } else {
    FUZZ_CHECK(!critique.empty(), "write_critique returned OK with an empty critique");
    if (kind == CritiqueKind::free_text) FUZZ_CHECK(behaviour == 5 && !text.empty() && critique == text, "free_text critique");
    if (kind == CritiqueKind::simple_gt) FUZZ_CHECK(!request.ground_truth.empty(), "simple_gt without a ground truth");
  }
  const bool custom = in.ConsumeBool();
  const std::string templ = custom ? in.ConsumeRandomLengthString(120) : default_refinement_template();
  std::string prompt = "untouched", want;
  const cgrpo::Status rs = refinement_prompt(request.question, request.solution, critique, prompt, templ);
  const TemplateFields fields = {{"question", request.question}, {"solution", request.solution}, {"critique", critique}};
  const bool ok = reference_fill(templ, fields, want);
  FUZZ_CHECK(rs.ok() == ok, "refinement_prompt: %s", rs.message);
  FUZZ_CHECK(rs.ok() ? prompt == want : prompt == "untouched", "refinement_prompt output");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Current current(data, size);
  FuzzedDataProvider in(data, size);
  try {
    switch (in.ConsumeIntegralInRange<int>(0, 3)) {
      case 0: fuzz_template(in); break;
      case 1: fuzz_selection(in); break;
      case 2: fuzz_critiques(in); break;
      default: fuzz_assembly(in); break;
    }
  } catch (const fuzz::Broken&) {  // FUZZ_SURVEY: the input is saved, go on
  }
  return 0;
}
