// examples/critique_demo: a small real RL run on the CPU, plain GRPO against Critique-GRPO.
// Toy policy in Eigen, critiques and groups from cgrpo::critique; log-probs, loss and dJ/dW from
// cgrpo::cpu's fused LM head + loss (the policy's logits Phi W^T exist a few rows at a time, never whole).
//
// The task: a question is "rule c applied to the digits x1..xD"; the answer is D digits,
// y_j = (a_c * x_j + b_c) mod 10, checked exactly (reward 1 or 0). The base policy
// "half-knows" some rules (a prior on its weights) and not others: on the hard rules
// none of n samples is ever right, so GRPO's group advantages are all zero there.
// Critique-GRPO critiques the responses, samples refinements conditioned on the critique
// (the base policy can copy an answer it sees in its context and avoid digits a critique
// calls wrong), and trains the best refinement as a response to the ORIGINAL question.
#include <cgrpo/cgrpo.hpp>
#include <cgrpo/cpu/fused_linear_policy_loss.hpp>
#include <cgrpo/cpu/fused_linear_token_logprobs.hpp>
#include <cgrpo/critique/critique_stage.hpp>

#include <Eigen/Dense>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "../common/svg_plot.hpp"

namespace {

using cgrpo::critique::CritiqueKind;

constexpr int kVocab = 10;  // digits; every answer has exactly kDigits tokens
constexpr int kDigits = 6;

// ---------------------------------------------------------------- the task
struct Rule {
  int mult, shift;
  double prior;  // how well the base policy knows the rule: logit bonus on the right digit
  bool hard;
};

// Eight rules. Base pass@1 of one sample (6 digits, per-digit p = e^prior / (e^prior + 9)):
// prior 4: 0.40, prior 3: 0.11 (easy); prior 2: 0.008, prior 1: 1.5e-4, prior 0: 1e-6 (hard).
std::vector<Rule> make_rules() {
  return {{3, 1, 4.0, false}, {7, 4, 4.0, false}, {9, 2, 3.0, false}, {1, 5, 3.0, false},
          {3, 8, 2.0, true},  {7, 0, 1.0, true},  {9, 6, 0.0, true},  {1, 3, 0.0, true}};
}

struct Problem {
  int rule;
  std::array<int, kDigits> input, answer;
};

Problem make_problem(const std::vector<Rule>& rules, int rule, std::mt19937& rng) {
  std::uniform_int_distribution<int> digit(0, 9);
  Problem p;
  p.rule = rule;
  for (int j = 0; j < kDigits; ++j) {
    p.input[j] = digit(rng);
    p.answer[j] = (rules[rule].mult * p.input[j] + rules[rule].shift) % 10;
  }
  return p;
}

std::string digits_text(const int* d, int n) {
  std::string s;
  for (int j = 0; j < n; ++j) s += static_cast<char>('0' + d[j]);
  return s;
}
std::string question_text(const Problem& p) {
  return "Apply rule " + std::to_string(p.rule) + " to " + digits_text(p.input.data(), kDigits) + ".";
}

double reward_of(const Problem& p, const std::vector<int32_t>& tokens) {
  if (tokens.size() != kDigits) return 0.0;
  for (int j = 0; j < kDigits; ++j)
    if (tokens[j] != p.answer[j]) return 0.0;
  return 1.0;
}

// ---------------------------------------------------------------- the policy
// logits(token j) = W * phi, phi one-hot over three feature groups:
//   (rule, input digit x_j), position j, previous token (or "start").
// Linear in W; the rows of a batch stack into Phi [T, F] and logits = Phi * W^T.
struct Policy {
  int num_rules;
  Eigen::MatrixXd W;  // [V, F]

  int num_features() const { return num_rules * 10 + kDigits + kVocab + 1; }
  int f_rule_input(int rule, int x) const { return rule * 10 + x; }
  int f_position(int j) const { return num_rules * 10 + j; }
  int f_previous(int prev) const { return num_rules * 10 + kDigits + (prev < 0 ? kVocab : prev); }

  void features(const Problem& p, int j, int prev, int f[3]) const {
    f[0] = f_rule_input(p.rule, p.input[j]);
    f[1] = f_position(j);
    f[2] = f_previous(prev);
  }
  Eigen::Matrix<double, kVocab, 1> logits(const Problem& p, int j, int prev) const {
    int f[3];
    features(p, j, prev, f);
    return W.col(f[0]) + W.col(f[1]) + W.col(f[2]);
  }
};

// The base policy: a prior of rule.prior on the right digit of each (rule, input digit), small noise.
Policy base_policy(const std::vector<Rule>& rules, std::mt19937& rng) {
  Policy pi;
  pi.num_rules = static_cast<int>(rules.size());
  std::normal_distribution<double> noise(0.0, 0.05);
  pi.W = Eigen::MatrixXd::NullaryExpr(kVocab, pi.num_features(), [&]() { return noise(rng); });
  for (int c = 0; c < pi.num_rules; ++c)
    for (int x = 0; x < 10; ++x) pi.W((rules[c].mult * x + rules[c].shift) % 10, pi.f_rule_input(c, x)) += rules[c].prior;
  return pi;
}

// What the base policy does with a critique in its context: fixed in-context skills, never
// trained (as an LLM's ability to read a critique is not what RL trains here). The policy reads
// the critique STRING that cgrpo::critique wrote: the verdict and, for simple_gt, the answer.
struct CritiqueContext {
  bool present = false;
  bool says_correct = false;
  bool has_answer = false;
  std::array<int, kDigits> answer{}, previous{};
};
constexpr double kCopyBonus = 3.0;   // on the digit the critique's ground truth names
constexpr double kKeepBonus = 3.0;   // "correct": keep the previous digit
constexpr double kAvoidPenalty = 1.5;  // "incorrect": move away from the previous digit

CritiqueContext read_critique(const std::string& critique, const std::vector<int32_t>& previous) {
  CritiqueContext c;
  c.present = true;
  c.says_correct = critique.find("incorrect") == std::string::npos;
  for (int j = 0; j < kDigits && j < static_cast<int>(previous.size()); ++j) c.previous[j] = previous[j];
  const std::string key = "the ground truth is ";
  const size_t at = critique.find(key);
  if (at != std::string::npos && critique.size() >= at + key.size() + kDigits) {
    c.has_answer = true;
    for (int j = 0; j < kDigits; ++j) c.answer[j] = critique[at + key.size() + j] - '0';
  }
  return c;
}

int sample_token(const Eigen::Matrix<double, kVocab, 1>& z, double temperature, std::mt19937& rng) {
  const Eigen::Matrix<double, kVocab, 1> u = z / temperature;
  const Eigen::Matrix<double, kVocab, 1> p = (u.array() - u.maxCoeff()).exp();
  std::uniform_real_distribution<double> unit(0.0, p.sum());
  double r = unit(rng);
  for (int v = 0; v < kVocab; ++v) {
    r -= p(v);
    if (r <= 0) return v;
  }
  return kVocab - 1;
}

std::vector<int32_t> sample_response(const Policy& pi, const Problem& p, const CritiqueContext& critique,
                                     double temperature, std::mt19937& rng) {
  std::vector<int32_t> tokens;
  int prev = -1;
  for (int j = 0; j < kDigits; ++j) {
    Eigen::Matrix<double, kVocab, 1> z = pi.logits(p, j, prev);
    if (critique.present) {
      if (critique.has_answer) z(critique.answer[j]) += kCopyBonus;
      if (critique.says_correct) z(critique.previous[j]) += kKeepBonus;
      else z(critique.previous[j]) -= kAvoidPenalty;
    }
    prev = sample_token(z, temperature, rng);
    tokens.push_back(prev);
  }
  return tokens;
}

// Probability that one sample from the plain question is exactly right: pass@1 without sampling noise.
double exact_pass_at_1(const Policy& pi, const Problem& p, double temperature) {
  double prob = 1.0;
  int prev = -1;
  for (int j = 0; j < kDigits; ++j) {
    const Eigen::Matrix<double, kVocab, 1> u = pi.logits(p, j, prev) / temperature;
    const Eigen::Matrix<double, kVocab, 1> e = (u.array() - u.maxCoeff()).exp();
    prob *= e(p.answer[j]) / e.sum();
    prev = p.answer[j];
  }
  return prob;
}

// Mean per-token entropy of the plain-question policy on `problems`, along the correct answers.
double mean_entropy(const Policy& pi, const std::vector<Problem>& problems, double temperature) {
  double sum = 0;
  for (const Problem& p : problems) {
    int prev = -1;
    for (int j = 0; j < kDigits; ++j) {
      const Eigen::Matrix<double, kVocab, 1> u = pi.logits(p, j, prev) / temperature;
      const Eigen::Matrix<double, kVocab, 1> e = (u.array() - u.maxCoeff()).exp();
      const Eigen::Matrix<double, kVocab, 1> q = e / e.sum();
      sum -= (q.array() * (q.array().max(1e-300)).log()).sum();
      prev = p.answer[j];
    }
  }
  return problems.empty() ? 0.0 : sum / static_cast<double>(problems.size() * kDigits);
}

double mean_pass_at_1(const Policy& pi, const std::vector<Problem>& problems, double temperature) {
  double s = 0;
  for (const Problem& p : problems) s += exact_pass_at_1(pi, p, temperature);
  return problems.empty() ? 0.0 : s / static_cast<double>(problems.size());
}

// ---------------------------------------------------------------- training
// Rows of logits the fused LM head + loss forms at a time (a training batch has 16 x 8 x 6 = 768 rows).
constexpr int64_t kChunkRows = 64;

struct Options {
  unsigned seed = 1;
  CritiqueKind critique = CritiqueKind::simple_gt;
  int refinements = 1;         // k of the n group members are refinements
  int steps = 150;
  int group_size = 8;          // n
  int questions_per_step = 16;
  int train_per_rule = 16;
  int eval_per_rule = 64;
  double temperature = 1.0;
  double learning_rate = 0.05;
  std::string out = "critique_demo_out";
};

struct StepLog {
  int step;
  double mean_reward, pass1_hard, pass1_easy;
  double entropy;       // the library's metric: mean H over the training batch's tokens
  double entropy_eval;  // mean H over held-out problems (teacher-forced), a smooth curve
  double refinement_success, loss;
};

struct RunResult {
  std::vector<StepLog> curve;
  double pass1_hard = 0, pass1_easy = 0;
  int never_solved = 0, never_solved_hard = 0;
  double seconds = 0;
};

// Adam on W, written with Eigen array expressions.
struct Adam {
  Eigen::ArrayXXd m, v;
  int t = 0;
  void step(Eigen::MatrixXd& W, const Eigen::MatrixXd& grad, double lr) {
    if (m.size() == 0) {
      m = Eigen::ArrayXXd::Zero(W.rows(), W.cols());
      v = m;
    }
    ++t;
    m = 0.9 * m + 0.1 * grad.array();
    v = 0.999 * v + 0.001 * grad.array().square();
    const double c1 = 1.0 - std::pow(0.9, t), c2 = 1.0 - std::pow(0.999, t);
    W.array() -= lr * (m / c1) / ((v / c2).sqrt() + 1e-8);
  }
};

bool fail(const char* what, const cgrpo::Status& s) {
  std::fprintf(stderr, "%s failed (%s): %s\n", what, cgrpo::status_code_name(s.code), s.message);
  return false;
}

// One run: plain GRPO when critique_grpo is false (n initial responses per group), else
// Critique-GRPO (n initial responses sampled, each critiqued and refined, k refinements in
// place of the last k initial responses). Same seed, problems, order and budget of steps.
bool train(const Options& opt, bool critique_grpo, const std::vector<Rule>& rules, const std::vector<Problem>& train_set,
           const std::vector<Problem>& eval_hard, const std::vector<Problem>& eval_easy, bool verbose,
           RunResult& result) {
  const auto start = std::chrono::steady_clock::now();
  std::mt19937 init_rng(opt.seed), order_rng(opt.seed + 1000), sample_rng(opt.seed + 2000);
  Policy pi = base_policy(rules, init_rng);
  Adam adam;
  // The same recipe for both runs: the paper's loss and its advantages (grpo_no_std over each group).
  cgrpo::Recipe recipe = cgrpo::paper_critique_grpo();
  recipe.loss.temperature = opt.temperature;
  const cgrpo::LossConfig& config = recipe.loss;
  cgrpo::critique::GroupAssemblyOptions assembly;
  assembly.refinements_per_group = critique_grpo ? opt.refinements : 0;
  cgrpo::cpu::Workspace workspace(/*num_threads=*/1);  // one per run, reused by every step
  std::vector<char> solved(train_set.size(), 0);
  std::vector<size_t> order(train_set.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  size_t cursor = order.size();
  const char* name = critique_grpo ? "critique-grpo" : "grpo";

  for (int step = 0; step <= opt.steps; ++step) {
    StepLog log{};
    log.step = step;
    log.pass1_hard = mean_pass_at_1(pi, eval_hard, opt.temperature);
    log.pass1_easy = mean_pass_at_1(pi, eval_easy, opt.temperature);
    log.entropy_eval = (mean_entropy(pi, eval_hard, opt.temperature) * static_cast<double>(eval_hard.size()) +
                        mean_entropy(pi, eval_easy, opt.temperature) * static_cast<double>(eval_easy.size())) /
                       static_cast<double>(eval_hard.size() + eval_easy.size());
    if (step == opt.steps) {  // the last line is an evaluation only
      log.mean_reward = result.curve.empty() ? 0 : result.curve.back().mean_reward;
      log.entropy = result.curve.empty() ? 0 : result.curve.back().entropy;
      result.curve.push_back(log);
      break;
    }

    // 1. Rollouts: n initial responses per question, then critiques and refinements.
    std::vector<size_t> batch_problems;
    std::vector<cgrpo::critique::QuestionRollouts> rollouts;
    double reward_sum = 0;
    int refinement_hits = 0;
    for (int q = 0; q < opt.questions_per_step; ++q) {
      if (cursor == order.size()) {
        std::shuffle(order.begin(), order.end(), order_rng);
        cursor = 0;
      }
      const size_t id = order[cursor++];
      const Problem& p = train_set[id];
      batch_problems.push_back(id);
      cgrpo::critique::QuestionRollouts r;
      for (int i = 0; i < opt.group_size; ++i) {
        cgrpo::critique::Response resp;
        resp.tokens = sample_response(pi, p, CritiqueContext{}, opt.temperature, sample_rng);
        resp.reward = reward_of(p, resp.tokens);
        reward_sum += resp.reward;
        if (resp.reward == 1.0) solved[id] = 1;
        r.initial.push_back(resp);
      }
      if (critique_grpo) {
        for (const auto& initial : r.initial) {
          cgrpo::critique::CritiqueRequest request;
          request.question = question_text(p);
          request.solution = digits_text(initial.tokens.data(), static_cast<int>(initial.tokens.size()));
          request.ground_truth = digits_text(p.answer.data(), kDigits);
          request.correct = initial.reward == 1.0;
          std::string critique, prompt;
          cgrpo::Status s = cgrpo::critique::write_critique(opt.critique, request, nullptr, critique);
          if (s.ok()) s = cgrpo::critique::refinement_prompt(request.question, request.solution, critique, prompt);
          if (!s.ok()) return fail("critique", s);
          if (verbose && step == 0 && q == 0 && &initial == &r.initial.front())
            std::printf("[%s] the first refinement prompt (the toy policy reads the critique line):\n%s\n", name,
                        prompt.c_str());
          cgrpo::critique::Response refinement;
          refinement.tokens = sample_response(pi, p, read_critique(critique, initial.tokens), opt.temperature, sample_rng);
          refinement.reward = reward_of(p, refinement.tokens);
          r.refinements.push_back(refinement);
        }
        refinement_hits += std::any_of(r.refinements.begin(), r.refinements.end(),
                                       [](const cgrpo::critique::Response& x) { return x.reward == 1.0; });
      }
      rollouts.push_back(std::move(r));
    }
    log.mean_reward = reward_sum / (opt.questions_per_step * opt.group_size);
    log.refinement_success = critique_grpo ? static_cast<double>(refinement_hits) / opt.questions_per_step : 0.0;

    // 2. The loss batch: groups, kinds, advantages over the mixed group, weights.
    cgrpo::critique::AssembledBatch<double> batch;
    cgrpo::Status s = cgrpo::critique::assemble_groups(recipe, rollouts, assembly, batch);
    if (!s.ok()) return fail("assemble_groups", s);

    // 3. Features of every row as a response to the ORIGINAL question (refinements included:
    //    the critique is not in this context). Phi [T, F] one-hot: the policy's "hidden states",
    //    and W [V, F] its LM head. The logits Phi W^T are never formed for the whole batch: the
    //    library forms them kChunkRows rows at a time.
    using RowMajor = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const int64_t T = batch.num_tokens(), F = pi.num_features();
    RowMajor phi = RowMajor::Zero(T, F);
    const cgrpo::SequenceLayout layout = batch.layout();
    for (int64_t i = 0; i < batch.num_responses(); ++i) {
      const Problem& p = train_set[batch_problems[batch.sources[i].question]];
      for (int64_t t = layout.begin(i); t < layout.end(i); ++t) {
        const int j = static_cast<int>(t - layout.begin(i));
        int f[3];
        pi.features(p, j, j == 0 ? -1 : batch.target_ids[t - 1], f);
        for (int k = 0; k < 3; ++k) phi(t, f[k]) = 1.0;
      }
    }
    const RowMajor head_W = pi.W;  // [V, F], rows contiguous
    const cgrpo::LinearHead<double> head{phi.data(), F, 0, head_W.data(), 0, nullptr};
    const cgrpo::LinearChunking chunking{kChunkRows};

    // 4. The library: old log-probs (one update per batch: the sampling policy is this one),
    //    then the fused LM head + loss, which returns dJ/dW directly (dJ/dlogits never exists
    //    whole either). No other implementation of the loss exists here.
    std::vector<double> old_logp(static_cast<size_t>(T));
    s = cgrpo::cpu::fused_linear_token_logprobs(head, T, kVocab, batch.target_ids.data(), config.temperature,
                                                old_logp.data(), static_cast<double*>(nullptr),
                                                workspace.num_threads, &workspace, chunking);
    if (!s.ok()) return fail("fused_linear_token_logprobs", s);
    RowMajor grad_W(kVocab, F);
    cgrpo::LossMetrics metrics;
    cgrpo::PolicyLossOutputs<double> out;
    out.metrics = &metrics;
    cgrpo::LinearHeadGrads<double> grads;
    grads.grad_weight = grad_W.data();
    s = cgrpo::cpu::fused_linear_policy_loss(config, batch.loss_batch(nullptr, kVocab, old_logp.data()), head, out,
                                             grads, workspace, chunking);
    if (!s.ok()) return fail("fused_linear_policy_loss", s);
    log.entropy = metrics.entropy_mean;
    log.loss = metrics.loss;

    // 5. Adam on dJ/dW = (dJ/dlogits)^T Phi.
    adam.step(pi.W, Eigen::MatrixXd(grad_W), opt.learning_rate);

    result.curve.push_back(log);
    if (verbose)
      std::printf("[%-13s] step %4d  reward %.3f  pass@1 hard %.4f  easy %.4f  entropy %.4f (held out %.4f)%s\n",
                  name, step, log.mean_reward, log.pass1_hard, log.pass1_easy, log.entropy, log.entropy_eval,
                  critique_grpo ? ("  questions with a correct refinement " +
                                   std::to_string(static_cast<int>(std::lround(log.refinement_success * 100))) + "%")
                                      .c_str()
                                : "");
  }
  result.pass1_hard = result.curve.back().pass1_hard;
  result.pass1_easy = result.curve.back().pass1_easy;
  for (size_t i = 0; i < train_set.size(); ++i)
    if (!solved[i]) {
      ++result.never_solved;
      if (rules[train_set[i].rule].hard) ++result.never_solved_hard;
    }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return true;
}

// ---------------------------------------------------------------- output
bool write_csv(const std::string& path, const RunResult& grpo, const RunResult& cgrpo_run) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return false;
  std::fprintf(f, "run,step,mean_reward,pass1_hard,pass1_easy,entropy_batch,entropy_heldout,refinement_success,loss\n");
  for (int r = 0; r < 2; ++r)
    for (const StepLog& l : (r == 0 ? grpo : cgrpo_run).curve)
      std::fprintf(f, "%s,%d,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.8f\n", r == 0 ? "grpo" : "critique_grpo", l.step,
                   l.mean_reward, l.pass1_hard, l.pass1_easy, l.entropy, l.entropy_eval, l.refinement_success, l.loss);
  return std::fclose(f) == 0;
}

// Two panels (pass@1 on held-out hard problems; entropy), two lines each, written by hand.
bool write_svg(const std::string& path, const RunResult& grpo, const RunResult& cgrpo_run, const std::string& title) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return false;
  const double W = 900, H = 390, pw = 360, ph = 240, top = 60;
  const double lefts[2] = {70, 520};
  const char* colors[2] = {"#1f77b4", "#d62728"};
  const char* labels[2] = {"GRPO (n initial)", "Critique-GRPO (n-k initial + k refinements)"};
  example_svg::begin(f, W, H, title);
  const RunResult* runs[2] = {&grpo, &cgrpo_run};
  double max_entropy = 0;
  for (const RunResult* r : runs)
    for (const StepLog& l : r->curve) max_entropy = std::max(max_entropy, l.entropy_eval);
  max_entropy = std::ceil(max_entropy * 2.0 + 1e-9) / 2.0;
  const double steps = std::max<double>(1.0, static_cast<double>(grpo.curve.back().step));
  for (int panel = 0; panel < 2; ++panel) {
    const double x0 = lefts[panel], y_max = panel == 0 ? 1.0 : max_entropy;
    example_svg::panel_frame(f, x0, top, pw, ph, y_max, steps,
                             panel == 0 ? "pass@1 on held-out hard problems" : "policy entropy on held-out problems (nats/token)",
                             "step");
    for (int r = 0; r < 2; ++r) {
      std::fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", colors[r]);
      for (const StepLog& l : runs[r]->curve) {
        const double v = panel == 0 ? l.pass1_hard : l.entropy_eval;
        std::fprintf(f, "%.1f,%.1f ", x0 + pw * l.step / steps, top + ph - ph * (y_max > 0 ? v / y_max : 0));
      }
      std::fprintf(f, "\"/>\n");
    }
  }
  for (int r = 0; r < 2; ++r) {
    const double x = 70 + 330 * r, y = H - 14;
    std::fprintf(f, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" stroke-width=\"3\"/>\n", x,
                 y - 4, x + 24, y - 4, colors[r]);
    std::fprintf(f, "<text x=\"%.0f\" y=\"%.0f\">%s</text>\n", x + 30, y, labels[r]);
  }
  std::fprintf(f, "</svg>\n");
  return std::fclose(f) == 0;
}

void usage() {
  std::fprintf(stderr,
               "usage: critique_demo [--seed N] [--critique simple|simple_gt] [--refinements K] [--steps N]\n"
               "                     [--group-size N] [--out DIR] [--quiet]\n");
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  bool quiet = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--quiet") {
      quiet = true;
    } else if (a == "--seed" && has_value) {
      opt.seed = static_cast<unsigned>(std::strtoul(argv[++i], nullptr, 10));
    } else if (a == "--critique" && has_value) {
      const cgrpo::Status s = cgrpo::critique::parse_critique_kind(argv[++i], opt.critique);
      if (!s.ok() || opt.critique == CritiqueKind::free_text) {
        std::fprintf(stderr, "--critique: expected simple or simple_gt, got %s\n", argv[i]);
        return 2;
      }
    } else if (a == "--refinements" && has_value) {
      opt.refinements = std::atoi(argv[++i]);
    } else if (a == "--steps" && has_value) {
      opt.steps = std::atoi(argv[++i]);
    } else if (a == "--group-size" && has_value) {
      opt.group_size = std::atoi(argv[++i]);
    } else if (a == "--out" && has_value) {
      opt.out = argv[++i];
    } else {
      usage();
      return 2;
    }
  }
  if (opt.steps < 1 || opt.group_size < 2 || opt.refinements < 1 || opt.refinements > opt.group_size) {
    std::fprintf(stderr, "need --steps >= 1, --group-size >= 2 and 1 <= --refinements <= --group-size\n");
    return 2;
  }

  // Problems: the same for both runs. Held-out problems never appear in training.
  const std::vector<Rule> rules = make_rules();
  std::mt19937 data_rng(opt.seed * 7919u + 17u);
  std::vector<Problem> train_set, eval_hard, eval_easy;
  for (int c = 0; c < static_cast<int>(rules.size()); ++c)
    for (int i = 0; i < opt.train_per_rule; ++i) train_set.push_back(make_problem(rules, c, data_rng));
  for (int c = 0; c < static_cast<int>(rules.size()); ++c)
    for (int i = 0; i < opt.eval_per_rule;) {
      const Problem p = make_problem(rules, c, data_rng);
      bool seen = false;
      for (const Problem& t : train_set) seen = seen || (t.rule == p.rule && t.input == p.input);
      if (seen) continue;
      (rules[c].hard ? eval_hard : eval_easy).push_back(p);
      ++i;
    }

  std::printf("critique_demo: seed %u, critique %s, %d refinement(s) per group of %d, %d steps x %d questions\n",
              opt.seed, cgrpo::critique::to_string(opt.critique), opt.refinements, opt.group_size, opt.steps,
              opt.questions_per_step);
  RunResult grpo, cgrpo_run;
  if (!train(opt, false, rules, train_set, eval_hard, eval_easy, !quiet, grpo)) return 1;
  if (!train(opt, true, rules, train_set, eval_hard, eval_easy, !quiet, cgrpo_run)) return 1;

  std::error_code made;
  std::filesystem::create_directories(opt.out, made);
  const std::string csv = opt.out + "/curves.csv", svg = opt.out + "/curves.svg";
  char title[200];
  std::snprintf(title, sizeof(title), "seed %u, critique %s, k = %d of n = %d", opt.seed,
                cgrpo::critique::to_string(opt.critique), opt.refinements, opt.group_size);
  if (!write_csv(csv, grpo, cgrpo_run) || !write_svg(svg, grpo, cgrpo_run, title)) {
    std::fprintf(stderr, "could not write %s or %s\n", csv.c_str(), svg.c_str());
    return 1;
  }
  const int hard_train = static_cast<int>(std::count_if(train_set.begin(), train_set.end(),
                                                        [&](const Problem& p) { return rules[p.rule].hard; }));
  std::printf("\nsummary (seed %u, critique %s, k %d)\n", opt.seed, cgrpo::critique::to_string(opt.critique),
              opt.refinements);
  std::printf("  %-14s pass@1 hard (held out) %.4f   easy %.4f   never-solved training problems %d/%zu (hard %d/%d)   %.1f s\n",
              "GRPO", grpo.pass1_hard, grpo.pass1_easy, grpo.never_solved, train_set.size(), grpo.never_solved_hard,
              hard_train, grpo.seconds);
  std::printf("  %-14s pass@1 hard (held out) %.4f   easy %.4f   never-solved training problems %d/%zu (hard %d/%d)   %.1f s\n",
              "Critique-GRPO", cgrpo_run.pass1_hard, cgrpo_run.pass1_easy, cgrpo_run.never_solved, train_set.size(),
              cgrpo_run.never_solved_hard, hard_train, cgrpo_run.seconds);
  std::printf("  base policy    pass@1 hard %.4f   easy %.4f\n", grpo.curve.front().pass1_hard,
              grpo.curve.front().pass1_easy);
  std::printf("  held-out entropy (nats/token): base %.3f, GRPO %.3f, Critique-GRPO %.3f\n",
              grpo.curve.front().entropy_eval, grpo.curve.back().entropy_eval, cgrpo_run.curve.back().entropy_eval);
  std::printf("SUMMARY seed=%u critique=%s k=%d grpo_hard=%.4f cgrpo_hard=%.4f grpo_easy=%.4f cgrpo_easy=%.4f "
              "grpo_never=%d cgrpo_never=%d\n",
              opt.seed, cgrpo::critique::to_string(opt.critique), opt.refinements, grpo.pass1_hard, cgrpo_run.pass1_hard,
              grpo.pass1_easy, cgrpo_run.pass1_easy, grpo.never_solved, cgrpo_run.never_solved);
  std::printf("wrote %s and %s\n", csv.c_str(), svg.c_str());
  return 0;
}
