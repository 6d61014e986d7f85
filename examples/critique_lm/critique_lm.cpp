// examples/critique_lm: Critique-GRPO with a real (small) policy. A decoder-only transformer (LibTorch) learns
// the answer format and, on a separate family of tasks, to read a critique in its context (SFT); then the
// same checkpoint is trained on the RL task by GRPO and by Critique-GRPO, with the same seed, problems and
// steps. Critiques come from cgrpo::critique (simple, simple_gt), refinement prompts from refinement_prompt(),
// refinements are sampled by the model with the critique in its context, then selected and assembled by
// assemble_groups and trained as responses to the original question with f(p) = p / (p + gamma). The loss,
// dJ/dW and dJ/dh come only from cgrpo::cpu::fused_linear_policy_loss (SFT's too: see sft_config()).
#include "critique_lm.hpp"

#include "../common/svg_plot.hpp"

#include <atomic>
#include <cstdarg>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

using namespace critique_lm;
using cgrpo::critique::CritiqueKind;

namespace {

std::mutex print_mutex;
bool g_quiet = false;

void say(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void say(const char* fmt, ...) {
  if (g_quiet) return;
  std::lock_guard<std::mutex> lock(print_mutex);
  va_list args;
  va_start(args, fmt);
  std::vprintf(fmt, args);
  va_end(args);
  std::fflush(stdout);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---------------------------------------------------------------- options
struct Options {
  std::vector<unsigned> seeds = {1, 2, 3};
  std::vector<std::string> runs = {"grpo", "grpo16", "cgrpo_gt", "cgrpo_simple"};
  int sft_steps = 1500;
  int sft_batch = 64;
  double sft_lr = 2e-3;
  bool sft_unknown_rules = true;  // the critique family includes "Apply rule NN" with unknown rule numbers
  bool sft_plain_unknown = true;  // so do the plain questions (arbitrary answers)
  int steps = 400;           // RL steps
  int questions = 16;        // per RL step
  int train_per_rule = 16;   // 8 rules: 128 training problems
  int eval_per_rule = 64;    // held out: 256 hard, 256 easy
  double lr = 3e-4;          // RL (Adam; 1e-3 costs the easy rules a few points for tens of steps)
  int eval_every = 0;        // 0: every max(10, steps / 20) steps
  int jobs = 2;
  std::string out = "critique_lm_out";
  std::string sft_cache;     // a folder: load each seed's SFT checkpoint from it if there, else save it there
};

// An RL run: n responses per question, k of them refinements (0: plain GRPO).
struct RunKind {
  const char* id;
  const char* label;
  int group;
  int refinements;
  CritiqueKind critique;
};
const RunKind kRunKinds[] = {
    {"grpo", "GRPO (n = 8)", 8, 0, CritiqueKind::simple},
    {"grpo16", "GRPO (n = 16, as many samples)", 16, 0, CritiqueKind::simple},
    {"cgrpo_gt", "Critique-GRPO simple_gt (7 + 1)", 8, 1, CritiqueKind::simple_gt},
    {"cgrpo_simple", "Critique-GRPO simple (7 + 1)", 8, 1, CritiqueKind::simple},
};
const RunKind* find_run(const std::string& id) {
  for (const RunKind& r : kRunKinds)
    if (id == r.id) return &r;
  return nullptr;
}

// ---------------------------------------------------------------- data
struct Data {
  std::vector<Problem> train, eval_hard, eval_easy, eval_guess;
  std::set<std::pair<int, std::array<int, kDigits>>> held_out;  // (rule, input) never trained on in SFT
};

Data make_data(const Options& opt, unsigned seed) {
  Data d;
  std::mt19937_64 rng(seed * 7919ull + 17ull);
  std::set<std::pair<int, std::array<int, kDigits>>> train_keys;
  for (int c = 0; c < kRules; ++c)
    for (int i = 0; i < opt.train_per_rule;) {
      const Problem p = make_problem(c, random_input(rng), rng);
      if (!train_keys.insert({c, p.input}).second) continue;
      d.train.push_back(p);
      ++i;
    }
  for (int c = 0; c < kRules; ++c)
    for (int i = 0; i < opt.eval_per_rule;) {
      const Problem p = make_problem(c, random_input(rng), rng);
      if (train_keys.count({c, p.input}) || !d.held_out.insert({c, p.input}).second) continue;
      (is_hard_rule(c) ? d.eval_hard : d.eval_easy).push_back(p);
      ++i;
    }
  for (int i = 0; i < opt.eval_per_rule; ++i) d.eval_guess.push_back(make_problem(kGuess, random_input(rng), rng));
  return d;
}

// A wrong solution text for problem p: the answer with 1-2 digits changed, 4 random digits, or a random
// length of digits (0-6), never the answer itself.
std::string wrong_solution(const Problem& p, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> digit(0, 9), kind(0, 9), len(0, kDigits + 2), pos(0, kDigits - 1);
  const std::string answer = digits_text(p.answer);
  for (;;) {
    std::string s;
    const int k = kind(rng);
    if (k < 5) {
      s = answer;
      const int changes = 1 + (k % 2);
      for (int c = 0; c < changes; ++c) s[pos(rng)] = static_cast<char>('0' + digit(rng));
    } else if (k < 9) {
      for (int j = 0; j < kDigits; ++j) s += static_cast<char>('0' + digit(rng));
    } else {
      const int n = len(rng);
      for (int j = 0; j < n; ++j) s += static_cast<char>('0' + digit(rng));
    }
    if (s != answer) return s;
  }
}

// One SFT example (prompt, target response). 35%: an easy RL rule (0-3), plain question, inputs held out
// from evaluation excluded; 25%: plain Reverse / Sort / Shift, or (a quarter of them, unless plain_unknown
// is false) "Apply rule NN" with an unknown rule number and an arbitrary answer; 40%: a refinement prompt on the SFT family
// (Reverse / Sort / Shift / Guess / unknown rules, never an RL rule) with a critique written by
// cgrpo::critique of a previous solution (correct 25% of the time): with simple_gt the target is the
// ground truth the critique states; with simple, "correct" -> the previous solution, "incorrect" -> the
// answer (Reverse / Sort / Shift only: for Guess and unknown rules only the ground truth can tell).
// unknown_rules false: no unknown rules (the critique family is phrased unlike the RL task).
std::pair<std::vector<int32_t>, std::vector<int32_t>> sft_example(const Tokenizer& tok, const Data& data,
                                                                  bool unknown_rules, bool plain_unknown,
                                                                  std::mt19937_64& rng) {
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::uniform_int_distribution<int> easy(0, kFirstHardRule - 1), plain_family(kReverse, kShiftOne),
      critique_family(kReverse, unknown_rules ? kUnknownRule : kGuess);
  const double u = unit(rng);
  if (u < 0.35) {
    for (;;) {
      const Problem p = make_problem(easy(rng), random_input(rng), rng);
      if (data.held_out.count({p.family, p.input})) continue;
      return {plain_prompt(tok, p), answer_tokens(p)};
    }
  }
  if (u < 0.60) {
    // plain_unknown: a quarter of these are "Apply rule NN" with an unknown rule number and an arbitrary
    // answer, so that the model's answer to a rule it was never taught is uncertain, not a known rule's.
    int family = plain_family(rng);
    if (plain_unknown && unit(rng) < 0.25) family = kUnknownRule;
    const Problem p = make_problem(family, random_input(rng), rng);
    return {plain_prompt(tok, p), answer_tokens(p)};
  }
  const Problem p = make_problem(critique_family(rng), random_input(rng), rng);
  const bool correct = unit(rng) < 0.25;
  const std::string solution = correct ? digits_text(p.answer) : wrong_solution(p, rng);
  CritiqueKind kind = unit(rng) < 0.6 ? CritiqueKind::simple_gt : CritiqueKind::simple;
  if (kind == CritiqueKind::simple && !correct && p.family >= kGuess) kind = CritiqueKind::simple_gt;
  const std::string critique = critique_of(kind, p, solution, correct);
  return {refinement_prompt_tokens(tok, question_text(p), solution, critique), answer_tokens(p)};
}

// ---------------------------------------------------------------- evaluation
struct EvalSet {
  std::vector<std::vector<int32_t>> prompts, answers;
};
EvalSet plain_eval_set(const Tokenizer& tok, const std::vector<Problem>& problems) {
  EvalSet e;
  for (const Problem& p : problems) {
    e.prompts.push_back(plain_prompt(tok, p));
    e.answers.push_back(answer_tokens(p));
  }
  return e;
}
// Refinement prompts with a simple_gt critique of a wrong solution: P(refinement = ground truth) measures
// whether the model reads the critique.
EvalSet copy_eval_set(const Tokenizer& tok, const std::vector<Problem>& problems, unsigned seed) {
  std::mt19937_64 rng(seed * 104729ull + 3ull);
  EvalSet e;
  for (const Problem& p : problems) {
    const std::string solution = wrong_solution(p, rng);
    e.prompts.push_back(refinement_prompt_tokens(tok, question_text(p), solution,
                                                 critique_of(CritiqueKind::simple_gt, p, solution, false)));
    e.answers.push_back(answer_tokens(p));
  }
  return e;
}
double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

// ---------------------------------------------------------------- SFT
struct SftResult {
  Transformer model{nullptr};
  double pass1_hard = 0, pass1_easy = 0, copy_guess = 0, copy_hard = 0, entropy = 0, nll = 0, seconds = 0;
};

SftResult run_sft(const Options& opt, unsigned seed, const Data& data) {
  const auto t0 = std::chrono::steady_clock::now();
  const Tokenizer tok;
  ModelConfig mc;
  mc.vocab = tok.vocab_size();
  SftResult r;
  r.model = make_model(mc, seed);
  char cache_name[128];
  std::snprintf(cache_name, sizeof(cache_name), "/sft_seed%u_steps%d_lr%g_batch%d%s.pt", seed, opt.sft_steps, opt.sft_lr,
                opt.sft_batch, opt.sft_unknown_rules ? (opt.sft_plain_unknown ? "_plainunknown" : "") : "_nounknown");
  const std::string cache = opt.sft_cache.empty() ? std::string() : opt.sft_cache + cache_name;
  const bool cached = !cache.empty() && std::filesystem::exists(cache);
  if (cached) {
    torch::load(r.model, cache);
    say("[seed %u sft] loaded %s\n", seed, cache.c_str());
  }
  torch::optim::Adam adam(r.model->parameters(), torch::optim::AdamOptions(opt.sft_lr));
  const cgrpo::LossConfig config = sft_config();
  cgrpo::cpu::Workspace ws(1);
  std::mt19937_64 rng(seed * 31337ull + 5ull);
  double nll = 0;
  int nll_count = 0;
  for (int step = 0; step < (cached ? 0 : opt.sft_steps); ++step) {
    // Linear warm-up over 100 steps, then cosine decay to 10%.
    const double warm = std::min(1.0, (step + 1) / 100.0);
    const double cosine = 0.55 + 0.45 * std::cos(M_PI * step / std::max(1, opt.sft_steps));
    for (auto& g : adam.param_groups())
      static_cast<torch::optim::AdamOptions&>(g.options()).lr(opt.sft_lr * warm * cosine);
    std::vector<std::vector<int32_t>> prompts, targets;
    for (int i = 0; i < opt.sft_batch; ++i) {
      auto ex = sft_example(tok, data, opt.sft_unknown_rules, opt.sft_plain_unknown, rng);
      prompts.push_back(std::move(ex.first));
      targets.push_back(std::move(ex.second));
    }
    const TokenRows rows = token_rows(prompts, targets);
    std::vector<int32_t> ids;
    std::vector<int64_t> offsets{0};
    for (const auto& t : targets) {
      ids.insert(ids.end(), t.begin(), t.end());
      offsets.push_back(static_cast<int64_t>(ids.size()));
    }
    const int64_t T = static_cast<int64_t>(ids.size());
    const std::vector<uint8_t> mask(static_cast<size_t>(T), 1);
    const std::vector<float> advantages(static_cast<size_t>(T), 1.0f);
    cgrpo::PolicyLossBatch<float> view;
    view.num_tokens = T;
    view.vocab_size = mc.vocab;
    view.target_ids = ids.data();
    view.mask = mask.data();
    view.advantages = advantages.data();
    view.layout = cgrpo::SequenceLayout::packed(static_cast<int64_t>(targets.size()), offsets.data());
    std::vector<float> logp;
    update(r.model, adam, rows, view, config, ws, &logp);
    for (float x : logp) nll -= x;
    nll_count += static_cast<int>(logp.size());
    if ((step + 1) % 250 == 0 || step + 1 == opt.sft_steps) {
      say("[seed %u sft] step %5d  nll/token %.4f  (%.0f s)\n", seed, step + 1, nll / std::max(1, nll_count),
          seconds_since(t0));
      r.nll = nll / std::max(1, nll_count);
      nll = 0;
      nll_count = 0;
    }
  }
  if (!cache.empty() && !cached) {
    std::error_code made;
    std::filesystem::create_directories(opt.sft_cache, made);
    torch::save(r.model, cache);
  }
  const EvalSet hard = plain_eval_set(tok, data.eval_hard), easy = plain_eval_set(tok, data.eval_easy);
  const EvalSet copy_hard = copy_eval_set(tok, data.eval_hard, seed), copy_guess = copy_eval_set(tok, data.eval_guess, seed);
  r.pass1_hard = mean(exact_eval(r.model, hard.prompts, hard.answers, ws).pass1);
  const ExactEval e = exact_eval(r.model, easy.prompts, easy.answers, ws);
  r.pass1_easy = mean(e.pass1);
  r.entropy = e.entropy;
  r.copy_hard = mean(exact_eval(r.model, copy_hard.prompts, copy_hard.answers, ws).pass1);
  r.copy_guess = mean(exact_eval(r.model, copy_guess.prompts, copy_guess.answers, ws).pass1);
  r.seconds = seconds_since(t0);
  say("[seed %u sft] done: pass@1 hard %.4f easy %.4f; P(refinement = ground truth | simple_gt critique): "
      "Guess %.3f, hard RL rules %.3f  (%.0f s)\n",
      seed, r.pass1_hard, r.pass1_easy, r.copy_guess, r.copy_hard, r.seconds);
  return r;
}

// ---------------------------------------------------------------- RL
struct Point {
  int step;
  double reward, pass1_hard, pass1_easy, entropy_heldout, entropy_batch, refine_hard, loss;
};
struct RunResult {
  unsigned seed = 0;
  const RunKind* kind = nullptr;
  std::vector<Point> curve;
  double pass1_hard = 0, pass1_easy = 0, entropy = 0;
  int never_solved = 0, never_solved_hard = 0, hard_train = 0, train = 0;
  double refine_hard_first = -1, refine_hard_mean = -1;  // critique runs: hard questions with a correct refinement
  double seconds = 0;
  std::string first_prompt;  // the first refinement prompt (critique runs), as the library wrote it
};

RunResult run_rl(const Options& opt, unsigned seed, const RunKind& kind, const Data& data, const Transformer& checkpoint) {
  const auto t0 = std::chrono::steady_clock::now();
  const Tokenizer tok;
  RunResult res;
  res.seed = seed;
  res.kind = &kind;
  Transformer model = clone_model(checkpoint);
  torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(opt.lr));
  // The same recipe for every run: the paper's (grpo_no_std advantages over each mixed group, no clip,
  // gamma 0.1, entropy 0.001 token-mean, policy term seq-mean-token-sum-norm with L = kMaxNew).
  const cgrpo::Recipe recipe = cgrpo::paper_critique_grpo();
  cgrpo::critique::GroupAssemblyOptions assembly;
  assembly.refinements_per_group = kind.refinements;
  assembly.vocab_size = tok.vocab_size();
  assembly.scale.length = kMaxNew;
  cgrpo::cpu::Workspace ws(1);
  std::mt19937_64 order_rng(seed + 1000ull), sample_rng(seed + 2000ull);
  const EvalSet hard = plain_eval_set(tok, data.eval_hard), easy = plain_eval_set(tok, data.eval_easy);
  std::vector<std::vector<int32_t>> train_prompts;
  for (const Problem& p : data.train) train_prompts.push_back(plain_prompt(tok, p));
  std::vector<char> solved(data.train.size(), 0);
  std::vector<size_t> order(data.train.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  size_t cursor = order.size();
  double reward_sum = 0, refine_sum = 0, refine_count = 0, entropy_batch = 0, loss = 0;
  int reward_steps = 0;
  double refine_all_sum = 0;
  int refine_all_steps = 0;

  for (int step = 0; step <= opt.steps; ++step) {
    if (step % opt.eval_every == 0 || step == opt.steps) {
      Point pt{};
      pt.step = step;
      const ExactEval eh = exact_eval(model, hard.prompts, hard.answers, ws);
      const ExactEval e = exact_eval(model, easy.prompts, easy.answers, ws);
      pt.pass1_hard = mean(eh.pass1);
      pt.pass1_easy = mean(e.pass1);
      // Along the answers of the held-out problems, hard and easy (equally many).
      pt.entropy_heldout = 0.5 * (e.entropy + eh.entropy);
      pt.reward = reward_steps ? reward_sum / reward_steps : 0;
      pt.entropy_batch = reward_steps ? entropy_batch / reward_steps : 0;
      pt.loss = reward_steps ? loss / reward_steps : 0;
      pt.refine_hard = refine_count > 0 ? refine_sum / refine_count : -1;
      res.curve.push_back(pt);
      say("[seed %u %-12s] step %4d  reward %.3f  pass@1 hard %.4f  easy %.4f  entropy %.3f%s\n", seed, kind.id, step,
          pt.reward, pt.pass1_hard, pt.pass1_easy, pt.entropy_heldout,
          pt.refine_hard >= 0 ? ("  hard questions with a correct refinement " +
                                 std::to_string(static_cast<int>(std::lround(pt.refine_hard * 100))) + "%")
                                    .c_str()
                              : "");
      reward_sum = refine_sum = refine_count = entropy_batch = loss = 0;
      reward_steps = 0;
    }
    if (step == opt.steps) break;

    // 1. n initial responses per question, sampled from the plain question.
    std::vector<size_t> ids;
    std::vector<std::vector<int32_t>> prompts;
    for (int q = 0; q < opt.questions; ++q) {
      if (cursor == order.size()) {
        std::shuffle(order.begin(), order.end(), order_rng);
        cursor = 0;
      }
      ids.push_back(order[cursor++]);
      for (int i = 0; i < kind.group; ++i) prompts.push_back(train_prompts[ids.back()]);
    }
    const std::vector<std::vector<int32_t>> initial = sample(model, prompts, sample_rng);
    std::vector<cgrpo::critique::QuestionRollouts> rollouts(ids.size());
    double rewards = 0;
    for (size_t q = 0; q < ids.size(); ++q)
      for (int i = 0; i < kind.group; ++i) {
        cgrpo::critique::Response r{initial[q * kind.group + i], 0.0};
        r.reward = reward_of(data.train[ids[q]], r.tokens);
        rewards += r.reward;
        if (r.reward == 1.0) solved[ids[q]] = 1;
        rollouts[q].initial.push_back(std::move(r));
      }
    reward_sum += rewards / static_cast<double>(initial.size());
    ++reward_steps;

    // 2. Critique-GRPO: a critique of every initial response (cgrpo::critique), its refinement prompt
    //    (refinement_prompt(), the default template), one refinement sampled with it in the context.
    if (kind.refinements > 0) {
      std::vector<std::vector<int32_t>> refine_prompts;
      for (size_t q = 0; q < ids.size(); ++q) {
        const Problem& p = data.train[ids[q]];
        for (const cgrpo::critique::Response& r : rollouts[q].initial) {
          const std::string solution = tok.decode(r.tokens);
          const std::string critique = critique_of(kind.critique, p, solution, r.reward == 1.0);
          std::string text;
          refine_prompts.push_back(refinement_prompt_tokens(tok, question_text(p), solution, critique, &text));
          if (res.first_prompt.empty()) res.first_prompt = text;
        }
      }
      const std::vector<std::vector<int32_t>> refined = sample(model, refine_prompts, sample_rng);
      int hard_questions = 0, hard_hits = 0;
      for (size_t q = 0; q < ids.size(); ++q) {
        bool hit = false;
        for (int i = 0; i < kind.group; ++i) {
          cgrpo::critique::Response r{refined[q * kind.group + i], 0.0};
          r.reward = reward_of(data.train[ids[q]], r.tokens);
          hit = hit || r.reward == 1.0;
          rollouts[q].refinements.push_back(std::move(r));
        }
        if (is_hard_rule(data.train[ids[q]].family)) {
          ++hard_questions;
          hard_hits += hit;
        }
      }
      if (hard_questions > 0) {
        const double f = static_cast<double>(hard_hits) / hard_questions;
        refine_sum += f;
        refine_count += 1;
        refine_all_sum += f;
        ++refine_all_steps;
        if (res.refine_hard_first < 0) res.refine_hard_first = f;
      }
    }

    // 3. The groups (refinements selected and placed by the library), advantages and weights.
    cgrpo::critique::AssembledBatch<float> batch;
    const cgrpo::Status s = cgrpo::critique::assemble_groups(recipe, rollouts, assembly, batch);
    if (!s.ok()) throw std::runtime_error(std::string("assemble_groups: ") + s.message);

    // 4. Every response, refinements included, is trained after the ORIGINAL question's prompt.
    std::vector<std::vector<int32_t>> row_prompts, row_responses;
    const cgrpo::SequenceLayout layout = batch.layout();
    for (int64_t i = 0; i < batch.num_responses(); ++i) {
      row_prompts.push_back(train_prompts[ids[batch.sources[i].question]]);
      row_responses.emplace_back(batch.target_ids.begin() + layout.begin(i), batch.target_ids.begin() + layout.end(i));
    }
    const TokenRows rows = token_rows(row_prompts, row_responses);
    const cgrpo::LossMetrics m =
        update(model, adam, rows, batch.loss_batch(nullptr, tok.vocab_size(), nullptr), recipe.loss, ws);
    entropy_batch += m.entropy_mean;
    loss += m.loss;
  }

  res.pass1_hard = res.curve.back().pass1_hard;
  res.pass1_easy = res.curve.back().pass1_easy;
  res.entropy = res.curve.back().entropy_heldout;
  res.train = static_cast<int>(data.train.size());
  for (size_t i = 0; i < data.train.size(); ++i) {
    const bool hard_problem = is_hard_rule(data.train[i].family);
    res.hard_train += hard_problem;
    if (!solved[i]) {
      ++res.never_solved;
      res.never_solved_hard += hard_problem;
    }
  }
  if (refine_all_steps > 0) res.refine_hard_mean = refine_all_sum / refine_all_steps;
  res.seconds = seconds_since(t0);
  return res;
}

// ---------------------------------------------------------------- jobs
// Runs tasks on `jobs` threads, taken in order; task i starts once task after[i] (an earlier one, or -1
// for none) has finished: a seed's RL runs wait for its SFT, and a free thread meanwhile takes the next
// seed's SFT. Each task is sequential (one LibTorch thread, one library thread), so its results do not
// depend on how many run at once. After a failure the tasks not yet started are skipped.
void run_jobs(int jobs, const std::vector<std::function<void()>>& tasks, const std::vector<int>& after) {
  std::atomic<size_t> next{0};
  std::mutex mutex;
  std::condition_variable finished;
  std::vector<char> done(tasks.size(), 0);
  std::string error;
  auto worker = [&] {
    torch::set_num_threads(1);
    for (size_t i; (i = next++) < tasks.size();) {
      {
        std::unique_lock<std::mutex> lock(mutex);
        finished.wait(lock, [&] { return after[i] < 0 || done[static_cast<size_t>(after[i])]; });
        if (!error.empty()) {
          done[i] = 1;
          finished.notify_all();
          continue;
        }
      }
      std::string failure;
      try {
        tasks[i]();
      } catch (const std::exception& e) {
        failure = e.what();
      }
      std::lock_guard<std::mutex> lock(mutex);
      if (!failure.empty() && error.empty()) error = failure;
      done[i] = 1;
      finished.notify_all();
    }
  };
  std::vector<std::thread> threads;
  for (int j = 0; j < std::max(1, jobs); ++j) threads.emplace_back(worker);
  for (std::thread& t : threads) t.join();
  if (!error.empty()) throw std::runtime_error(error);
}

// ---------------------------------------------------------------- output
bool write_csv(const std::string& dir, const std::vector<SftResult>& sft, const std::vector<unsigned>& seeds,
               const std::vector<RunResult>& runs) {
  FILE* f = std::fopen((dir + "/curves.csv").c_str(), "w");
  if (!f) return false;
  std::fprintf(f, "seed,run,step,mean_reward,pass1_hard,pass1_easy,entropy_heldout,entropy_batch,refine_hard,loss\n");
  for (const RunResult& r : runs)
    for (const Point& p : r.curve)
      std::fprintf(f, "%u,%s,%d,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.8f\n", r.seed, r.kind->id, p.step, p.reward,
                   p.pass1_hard, p.pass1_easy, p.entropy_heldout, p.entropy_batch, p.refine_hard, p.loss);
  if (std::fclose(f) != 0) return false;
  f = std::fopen((dir + "/summary.csv").c_str(), "w");
  if (!f) return false;
  std::fprintf(f, "seed,run,pass1_hard,pass1_easy,entropy_heldout,never_solved,never_solved_hard,train,hard_train,"
                  "refine_hard_first,refine_hard_mean,copy_guess,copy_hard,seconds\n");
  for (size_t i = 0; i < seeds.size(); ++i)
    std::fprintf(f, "%u,sft,%.6f,%.6f,%.6f,,,,,,,%.6f,%.6f,%.2f\n", seeds[i], sft[i].pass1_hard, sft[i].pass1_easy,
                 sft[i].entropy, sft[i].copy_guess, sft[i].copy_hard, sft[i].seconds);
  for (const RunResult& r : runs)
    std::fprintf(f, "%u,%s,%.6f,%.6f,%.6f,%d,%d,%d,%d,%.4f,%.4f,,,%.2f\n", r.seed, r.kind->id, r.pass1_hard,
                 r.pass1_easy, r.entropy, r.never_solved, r.never_solved_hard, r.train, r.hard_train,
                 r.refine_hard_first, r.refine_hard_mean, r.seconds);
  return std::fclose(f) == 0;
}

// Two panels (pass@1 on held-out hard problems; entropy on held-out problems): a thin line per seed,
// a thick line for the mean over seeds, one colour per run. Written by hand.
bool write_svg(const std::string& path, const std::vector<std::string>& run_ids, const std::vector<RunResult>& runs,
               const std::string& title) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return false;
  const double W = 960, H = 430, pw = 380, ph = 250, top = 60;
  const double lefts[2] = {70, 540};
  const char* colors[] = {"#1f77b4", "#17becf", "#d62728", "#ff7f0e"};
  example_svg::begin(f, W, H, title);
  double max_entropy = 0, steps = 1;
  for (const RunResult& r : runs)
    for (const Point& p : r.curve) {
      max_entropy = std::max(max_entropy, p.entropy_heldout);
      steps = std::max(steps, static_cast<double>(p.step));
    }
  max_entropy = std::max(0.5, std::ceil(max_entropy * 2.0 + 1e-9) / 2.0);
  for (int panel = 0; panel < 2; ++panel) {
    const double x0 = lefts[panel], y_max = panel == 0 ? 1.0 : max_entropy;
    example_svg::panel_frame(f, x0, top, pw, ph, y_max, steps,
                             panel == 0 ? "pass@1 on held-out hard problems" : "entropy on held-out problems (nats/token)",
                             "RL step");
    for (size_t k = 0; k < run_ids.size(); ++k) {
      std::vector<const RunResult*> mine;
      for (const RunResult& r : runs)
        if (run_ids[k] == r.kind->id) mine.push_back(&r);
      if (mine.empty()) continue;
      auto value = [&](const Point& p) { return panel == 0 ? p.pass1_hard : p.entropy_heldout; };
      auto point = [&](double step, double v) {
        std::fprintf(f, "%.1f,%.1f ", x0 + pw * step / steps, top + ph - ph * std::min(1.0, v / y_max));
      };
      for (const RunResult* r : mine) {
        std::fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1\" stroke-opacity=\"0.45\" points=\"",
                     colors[k % 4]);
        for (const Point& p : r->curve) point(p.step, value(p));
        std::fprintf(f, "\"/>\n");
      }
      std::fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2.5\" points=\"", colors[k % 4]);
      for (size_t i = 0; i < mine[0]->curve.size(); ++i) {
        double s = 0;
        for (const RunResult* r : mine) s += value(r->curve[i]);
        point(mine[0]->curve[i].step, s / static_cast<double>(mine.size()));
      }
      std::fprintf(f, "\"/>\n");
    }
  }
  for (size_t k = 0; k < run_ids.size(); ++k) {
    const double x = 70 + 225 * static_cast<double>(k), y = H - 14;
    std::fprintf(f, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" stroke-width=\"3\"/>\n", x,
                 y - 4, x + 20, y - 4, colors[k % 4]);
    std::fprintf(f, "<text x=\"%.0f\" y=\"%.0f\">%s</text>\n", x + 25, y, find_run(run_ids[k])->label);
  }
  std::fprintf(f, "</svg>\n");
  return std::fclose(f) == 0;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

void usage() {
  std::fprintf(stderr,
               "usage: critique_lm [--short] [--seeds 1,2,3] [--runs grpo,grpo16,cgrpo_gt,cgrpo_simple]\n"
               "                   [--sft-steps N] [--steps N] [--lr X] [--sft-lr X] [--jobs N] [--out DIR] [--quiet]\n"
               "                   [--sft-cache DIR] [--sft-no-unknown-rules] [--sft-no-plain-unknown]\n"
               "  defaults: seeds 1,2,3, every run, SFT 1500 steps, RL 400 steps, 2 jobs (the scripts/demo --full run)\n"
               "  --short: seed 1, runs grpo,cgrpo_gt, RL 260 steps (the scripts/demo default)\n"
               "  --sft-cache DIR: load each seed's SFT checkpoint from DIR if there, else save it there\n");
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--quiet") {
      g_quiet = true;
    } else if (a == "--short") {
      // The full run's seed 1 with GRPO and Critique-GRPO simple_gt, cut at step 260 (the same numbers
      // as the full run's curves there: every run is deterministic).
      opt.seeds = {1};
      opt.runs = {"grpo", "cgrpo_gt"};
      opt.steps = 260;
    } else if (a == "--seeds" && has_value) {
      opt.seeds.clear();
      for (const std::string& s : split(argv[++i])) opt.seeds.push_back(static_cast<unsigned>(std::stoul(s)));
    } else if (a == "--runs" && has_value) {
      opt.runs = split(argv[++i]);
    } else if (a == "--sft-steps" && has_value) {
      opt.sft_steps = std::atoi(argv[++i]);
    } else if (a == "--steps" && has_value) {
      opt.steps = std::atoi(argv[++i]);
    } else if (a == "--lr" && has_value) {
      opt.lr = std::atof(argv[++i]);
    } else if (a == "--sft-no-unknown-rules") {
      opt.sft_unknown_rules = false;
    } else if (a == "--sft-no-plain-unknown") {
      opt.sft_plain_unknown = false;
    } else if (a == "--sft-lr" && has_value) {
      opt.sft_lr = std::atof(argv[++i]);
    } else if (a == "--sft-cache" && has_value) {
      opt.sft_cache = argv[++i];
    } else if (a == "--jobs" && has_value) {
      opt.jobs = std::atoi(argv[++i]);
    } else if (a == "--out" && has_value) {
      opt.out = argv[++i];
    } else {
      usage();
      return 2;
    }
  }
  for (const std::string& id : opt.runs)
    if (!find_run(id)) {
      std::fprintf(stderr, "unknown run \"%s\"\n", id.c_str());
      usage();
      return 2;
    }
  if (opt.seeds.empty() || opt.steps < 1 || opt.sft_steps < 0 || opt.jobs < 1) {
    usage();
    return 2;
  }
  if (opt.eval_every <= 0) opt.eval_every = std::max(10, opt.steps / 20);
  torch::set_num_threads(1);
  const auto t0 = std::chrono::steady_clock::now();
  const Tokenizer tok;
  std::printf("critique_lm: seeds %zu, SFT %d steps, RL %d steps x %d questions, %d job(s); vocabulary %d tokens\n",
              opt.seeds.size(), opt.sft_steps, opt.steps, opt.questions, opt.jobs, tok.vocab_size());
  std::fflush(stdout);

  try {
    std::vector<Data> data;
    for (unsigned seed : opt.seeds) data.push_back(make_data(opt, seed));
    std::vector<SftResult> sft(opt.seeds.size());
    std::vector<std::function<void()>> tasks;
    std::vector<int> after;
    for (size_t i = 0; i < opt.seeds.size(); ++i) {
      tasks.push_back([&, i] { sft[i] = run_sft(opt, opt.seeds[i], data[i]); });
      after.push_back(-1);
    }
    std::vector<RunResult> runs(opt.seeds.size() * opt.runs.size());
    for (size_t i = 0; i < opt.seeds.size(); ++i)
      for (size_t k = 0; k < opt.runs.size(); ++k) {
        tasks.push_back([&, i, k] {
          runs[i * opt.runs.size() + k] = run_rl(opt, opt.seeds[i], *find_run(opt.runs[k]), data[i], sft[i].model);
        });
        after.push_back(static_cast<int>(i));
      }
    run_jobs(opt.jobs, tasks, after);

    std::error_code made;
    std::filesystem::create_directories(opt.out, made);
    char title[200];
    std::snprintf(title, sizeof(title), "critique_lm: %zu seed(s), SFT %d steps, RL %d steps", opt.seeds.size(),
                  opt.sft_steps, opt.steps);
    if (!write_csv(opt.out, sft, opt.seeds, runs) || !write_svg(opt.out + "/curves.svg", opt.runs, runs, title)) {
      std::fprintf(stderr, "could not write into %s\n", opt.out.c_str());
      return 1;
    }
    for (const RunResult& r : runs)
      if (!r.first_prompt.empty()) {
        std::printf("\nthe first refinement prompt of seed %u (%s), as cgrpo::critique wrote it:\n%s", r.seed,
                    r.kind->label, r.first_prompt.c_str());
        break;
      }

    std::printf("\nSFT checkpoints (the start of every RL run of the seed):\n\n");
    std::printf("| seed | pass@1 hard | pass@1 easy | P(copy ground truth), Guess | P(copy ground truth), hard rules | time |\n");
    std::printf("|------|-------------|-------------|-----------------------------|----------------------------------|------|\n");
    for (size_t i = 0; i < opt.seeds.size(); ++i)
      std::printf("| %u | %.4f | %.4f | %.3f | %.3f | %.0f s |\n", opt.seeds[i], sft[i].pass1_hard, sft[i].pass1_easy,
                  sft[i].copy_guess, sft[i].copy_hard, sft[i].seconds);

    std::printf("\nRL from the SFT checkpoint (%d steps x %d questions; pass@1 exact on held-out problems; "
                "never solved: training problems no initial response solved):\n\n", opt.steps, opt.questions);
    std::printf("| seed | run | pass@1 hard | pass@1 easy | never solved (hard) | entropy | correct refinement, hard (first step / mean) | time |\n");
    std::printf("|------|-----|-------------|-------------|---------------------|---------|-----------------------------------------------|------|\n");
    auto refine_text = [](double first, double avg) {
      char b[64];
      if (first < 0) return std::string("-");
      std::snprintf(b, sizeof(b), "%.2f / %.2f", first, avg);
      return std::string(b);
    };
    for (const RunResult& r : runs)
      std::printf("| %u | %s | %.4f | %.4f | %d/%d (%d/%d) | %.3f | %s | %.0f s |\n", r.seed, r.kind->label,
                  r.pass1_hard, r.pass1_easy, r.never_solved, r.train, r.never_solved_hard, r.hard_train, r.entropy,
                  refine_text(r.refine_hard_first, r.refine_hard_mean).c_str(), r.seconds);
    for (const std::string& id : opt.runs) {
      double h = 0, e = 0, ent = 0, nev = 0, nevh = 0, rf = 0, rm = 0, sec = 0;
      int n = 0, train = 0, hard_train = 0;
      for (const RunResult& r : runs)
        if (id == r.kind->id) {
          h += r.pass1_hard;
          e += r.pass1_easy;
          ent += r.entropy;
          nev += r.never_solved;
          nevh += r.never_solved_hard;
          rf += r.refine_hard_first;
          rm += r.refine_hard_mean;
          sec += r.seconds;
          train = r.train;
          hard_train = r.hard_train;
          ++n;
        }
      std::printf("| mean | %s | %.4f | %.4f | %.1f/%d (%.1f/%d) | %.3f | %s | %.0f s |\n", find_run(id)->label, h / n,
                  e / n, nev / n, train, nevh / n, hard_train, ent / n, refine_text(rf / n, rm / n).c_str(), sec / n);
    }
    std::printf("\nwrote %s/curves.csv, %s/summary.csv and %s/curves.svg; total %.0f s\n", opt.out.c_str(),
                opt.out.c_str(), opt.out.c_str(), seconds_since(t0));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "critique_lm: %s\n", e.what());
    return 1;
  }
  return 0;
}
