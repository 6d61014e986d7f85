// libFuzzer target: the critique stage's entry points on arbitrary input.
//   fill_template        arbitrary template text and fields, against an independent reference
//   select_refinements   arbitrary rewards, counts, k: the selection rule's properties
//   assemble_groups      arbitrary rollouts and options; a batch it accepts is accepted by the loss
// Invariants: never crashes; outputs untouched on error; results obey the documented rules.
#include <fuzzer/FuzzedDataProvider.h>

#include <cgrpo/cgrpo.hpp>
#include <cmath>
#include <cstdlib>
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
  if (s.ok() != ok) std::abort();
  if (!s.ok() && out != "untouched") std::abort();
  if (s.ok() && out != want) std::abort();
}

void fuzz_selection(FuzzedDataProvider& in) {
  const int64_t count = in.ConsumeIntegralInRange<int64_t>(-1, 8);
  const int64_t k = in.ConsumeIntegralInRange<int64_t>(-1, 9);
  const double success = in.ConsumeBool() ? 1.0 : in.ConsumeFloatingPointInRange<double>(-2, 2);
  const bool allow_empty = in.ConsumeBool(), with_counts = in.ConsumeBool();
  std::vector<double> rewards(count > 0 ? count : 0);
  std::vector<int64_t> counts(rewards.size());
  for (size_t j = 0; j < rewards.size(); ++j) {
    const int pick = in.ConsumeIntegralInRange<int>(0, 40);
    rewards[j] = pick == 0 ? NAN : pick < 8 ? 1.0 : pick < 16 ? 0.0 : in.ConsumeFloatingPointInRange<double>(-2, 2);
    counts[j] = in.ConsumeIntegralInRange<int64_t>(0, 3);
  }
  std::vector<int64_t> chosen = {-7};
  const cgrpo::Status s = select_refinements(rewards.data(), with_counts ? counts.data() : nullptr, count, k, success,
                                             allow_empty, chosen);
  if (!s.ok()) {
    if (chosen.size() != 1 || chosen[0] != -7) std::abort();
    return;
  }
  if (static_cast<int64_t>(chosen.size()) != k) std::abort();
  std::vector<bool> seen(rewards.size(), false);
  bool in_correct = true;
  for (size_t c = 0; c < chosen.size(); ++c) {
    const int64_t j = chosen[c];
    if (j < 0 || j >= count || seen[j]) std::abort();
    seen[j] = true;
    if (with_counts && counts[j] == 0 && !allow_empty) std::abort();  // an empty refinement was chosen
    const bool correct = rewards[j] >= success;
    if (correct && !in_correct) std::abort();  // a correct one after an incorrect one
    if (!correct) in_correct = false;
    if (c > 0) {
      const int64_t p = chosen[c - 1];
      const bool prev_correct = rewards[p] >= success;
      if (correct && prev_correct && !(p < j)) std::abort();  // correct ones in generation order
      if (!correct && !prev_correct && (rewards[p] < rewards[j] || (rewards[p] == rewards[j] && p > j)))
        std::abort();  // the others by decreasing reward, ties by generation order
    }
  }
}

void fuzz_assembly(FuzzedDataProvider& in) {
  cgrpo::LossConfig config = cgrpo::paper_critique_grpo();
  config.advantage = static_cast<cgrpo::AdvantageEstimator>(in.ConsumeIntegralInRange<int>(0, 3));
  config.pg_aggregation = static_cast<cgrpo::Aggregation>(in.ConsumeIntegralInRange<int>(0, 3));
  GroupAssemblyOptions opt;
  opt.refinements_per_group = in.ConsumeIntegralInRange<int64_t>(-1, 3);
  opt.placement = static_cast<RefinementPlacement>(in.ConsumeIntegralInRange<int>(0, 1));
  opt.layout = static_cast<BatchLayout>(in.ConsumeIntegralInRange<int>(0, 1));
  opt.padded_length = in.ConsumeIntegralInRange<int64_t>(0, 5);
  opt.allow_empty_responses = in.ConsumeBool();
  constexpr int32_t V = 6;
  std::vector<QuestionRollouts> questions(in.ConsumeIntegralInRange<size_t>(0, 3));
  auto response = [&](Response& r) {
    r.tokens.resize(in.ConsumeIntegralInRange<size_t>(0, 4));
    for (auto& tok : r.tokens) tok = in.ConsumeIntegralInRange<int32_t>(in.ConsumeIntegralInRange<int>(0, 30) ? 0 : -1, V - 1);
    const int pick = in.ConsumeIntegralInRange<int>(0, 40);
    r.reward = pick == 0 ? NAN : pick < 20 ? static_cast<double>(pick % 2) : in.ConsumeFloatingPointInRange<double>(-3, 3);
  };
  for (auto& q : questions) {
    q.initial.resize(in.ConsumeIntegralInRange<size_t>(0, 4));
    q.refinements.resize(in.ConsumeIntegralInRange<size_t>(0, 3));
    for (auto& r : q.initial) response(r);
    for (auto& r : q.refinements) response(r);
  }
  AssembledBatch<double> out;
  out.rewards = {-7.0};
  const cgrpo::Status s = assemble_groups(config, questions, opt, out);
  if (!s.ok()) {
    if (out.rewards.size() != 1 || out.rewards[0] != -7.0 || !out.sources.empty()) std::abort();
    return;
  }
  const int64_t B = out.num_responses(), T = out.num_tokens();
  if (static_cast<int64_t>(out.offsets.size()) != B + 1 || out.offsets[B] != T) std::abort();
  if (static_cast<int64_t>(out.mask.size()) != T || static_cast<int64_t>(out.kinds.size()) != T ||
      static_cast<int64_t>(out.advantages.size()) != T || static_cast<int64_t>(out.pg_weights.size()) != T)
    std::abort();
  for (int64_t t = 0; t < T; ++t)
    if (!std::isfinite(out.advantages[t]) || !(out.pg_weights[t] >= 0) || out.target_ids[t] < 0 || out.target_ids[t] >= V)
      std::abort();
  for (int64_t i = 0; i < B; ++i)
    for (int64_t t = out.offsets[i]; t < out.offsets[i + 1]; ++t)
      if (out.mask[t] && out.kinds[t] != static_cast<uint8_t>(out.sources[i].kind)) std::abort();

  // Whatever assemble_groups accepts, the loss accepts, with finite results.
  if (T == 0) return;
  std::vector<double> logits(static_cast<size_t>(T * V)), old_logp(T, -1.5), grad(logits.size());
  for (size_t j = 0; j < logits.size(); ++j) logits[j] = std::sin(static_cast<double>(j) * 0.7) * 3;
  cgrpo::LossMetrics m;
  cgrpo::PolicyLossOutputs<double> o{grad.data(), 0, nullptr, nullptr, &m};
  const cgrpo::Status ls = cgrpo::cpu::fused_policy_loss(config, out.loss_batch(logits.data(), V, old_logp.data()), o);
  if (!ls.ok() || !std::isfinite(m.loss)) std::abort();
  for (double g : grad)
    if (!std::isfinite(g)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  switch (in.ConsumeIntegralInRange<int>(0, 2)) {
    case 0: fuzz_template(in); break;
    case 1: fuzz_selection(in); break;
    default: fuzz_assembly(in); break;
  }
  return 0;
}
