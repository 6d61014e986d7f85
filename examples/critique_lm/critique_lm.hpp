// examples/critique_lm/critique_lm.hpp: a small decoder-only transformer (LibTorch) trained by SFT, then by
// GRPO or Critique-GRPO, whose loss and LM-head gradients come only from cgrpo's fused LM head + loss.
// Shared by the program (critique_lm.cpp) and its test (test_critique_lm.cpp).
//
// The pieces, in the order a step uses them:
//   Tokenizer      a word-piece vocabulary (27 tokens): <eos>, the ten digits, and the fixed phrases of
//                  the strings the model reads (the questions, cgrpo::critique's critiques and its
//                  default refinement template), matched greedily; digits are always single tokens.
//   Task           the RL task (eight rules "Apply rule NN" on 4 digits; four are taught in SFT, four never)
//                  and the separate SFT family (Reverse / Sort / Shift / Guess / unknown rule numbers) on
//                  which reading a critique is taught.
//   Transformer    2 layers, 4 heads, d_model 64, causal attention, learned positions, final LayerNorm;
//                  hidden() returns the last hidden states h; the LM head W [V, H] is a parameter that
//                  only the library multiplies in the loss.
//   LibraryHeadLoss  a torch::autograd::Function: forward runs cgrpo::cpu::fused_linear_policy_loss on
//                  (h, W) and keeps the dJ/dh and dJ/dW the library returns; backward hands them back.
//   sample()       autoregressive sampling at temperature 1 from the model's own distribution.
#pragma once

#include <torch/torch.h>

#include <Eigen/Dense>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/cpu/fused_linear_policy_loss.hpp>
#include <cgrpo/cpu/fused_linear_token_logprobs.hpp>
#include <cgrpo/critique/critique_stage.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace critique_lm {

// ---------------------------------------------------------------- tokenizer
constexpr int kDigits = 4;              // every answer: 4 digits, then <eos>
constexpr int kMaxNew = kDigits + 2;    // sampling stops at <eos> or after this many tokens
constexpr int kContext = 48;            // positions the model has
constexpr const char* kAnswerMarker = "\nAnswer:";  // ends every prompt (plain question or refinement prompt)

// Greedy longest match over a fixed list of pieces. Token 0 is <eos> (never in a text); tokens 1-10
// are the digits 0-9. A text with a character no piece covers is an error (std::runtime_error).
class Tokenizer {
 public:
  Tokenizer() {
    pieces_.push_back("<eos>");
    for (char d = '0'; d <= '9'; ++d) pieces_.push_back(std::string(1, d));
    for (const char* p : {"Apply rule ", " to ", ".", "Reverse ", "Sort ", "Shift ", "Guess ", kAnswerMarker})
      pieces_.push_back(p);
    // The library's critiques: "The generated solution is correct." / "... incorrect." (simple) and
    // "The generated solution is incorrect, the ground truth is X." (simple_gt).
    for (const char* p : {"The generated solution is ", "correct", "incorrect", ", the ground truth is "})
      pieces_.push_back(p);
    // The literal text between the fields of the library's default refinement template, one piece each.
    const std::string t = cgrpo::critique::default_refinement_template();
    size_t at = 0;
    while (at < t.size()) {
      const size_t open = t.find('{', at);
      const std::string literal = t.substr(at, open == std::string::npos ? std::string::npos : open - at);
      if (!literal.empty()) pieces_.push_back(literal);
      if (open == std::string::npos) break;
      at = t.find('}', open) + 1;
    }
  }

  int vocab_size() const { return static_cast<int>(pieces_.size()); }
  static constexpr int32_t eos() { return 0; }
  static int32_t digit(int d) { return 1 + d; }
  static bool is_digit(int32_t id) { return id >= 1 && id <= 10; }
  const std::string& piece(int32_t id) const { return pieces_.at(static_cast<size_t>(id)); }

  std::vector<int32_t> encode(const std::string& text) const {
    std::vector<int32_t> ids;
    size_t at = 0;
    while (at < text.size()) {
      int32_t best = -1;
      size_t best_len = 0;
      for (size_t id = 1; id < pieces_.size(); ++id) {
        const std::string& p = pieces_[id];
        if (p.size() > best_len && text.compare(at, p.size(), p) == 0) {
          best = static_cast<int32_t>(id);
          best_len = p.size();
        }
      }
      if (best < 0) throw std::runtime_error("tokenizer: no piece covers \"" + text.substr(at, 20) + "\"");
      ids.push_back(best);
      at += best_len;
    }
    return ids;
  }
  // The text of a response: its pieces up to the first <eos>.
  std::string decode(const std::vector<int32_t>& ids) const {
    std::string s;
    for (int32_t id : ids) {
      if (id == eos()) break;
      s += piece(id);
    }
    return s;
  }

 private:
  std::vector<std::string> pieces_;
};

// ---------------------------------------------------------------- tasks
// Families 0-7: the RL task's eight rules, "Apply rule NN to x1x2x3x4." with a two-digit rule number NN,
// y_j = (mult x_j + shift) mod 10 digit by digit. Rules 0-3 are taught in SFT (plain questions only);
// rules 4-7 are never seen before RL (hard). The SFT family on which the model learns to read critiques
// (never an RL rule): Reverse, Sort, Shift (+1), Guess (an arbitrary answer), and "unknown rules":
// "Apply rule NN" with any other rule number, whose answer is an arbitrary string, so that only a
// critique with the ground truth can tell it (kUnknownRule; Problem::rule_id holds its number).
constexpr int kRules = 8;
constexpr int kFirstHardRule = 4;
enum Family : int { kReverse = 8, kSort = 9, kShiftOne = 10, kGuess = 11, kUnknownRule = 12 };
constexpr int kMult[kRules] = {3, 7, 9, 1, 3, 7, 9, 1};
constexpr int kShift[kRules] = {1, 4, 2, 5, 8, 0, 6, 3};
constexpr int kRuleNumber[kRules] = {13, 27, 41, 86, 35, 52, 68, 94};

inline bool is_hard_rule(int family) { return family >= kFirstHardRule && family < kRules; }
inline bool is_rl_rule_number(int number) {
  for (int n : kRuleNumber)
    if (n == number) return true;
  return false;
}

struct Problem {
  int family = 0;
  int rule_id = 0;  // the rule number of the question (RL rules: kRuleNumber[family])
  std::array<int, kDigits> input{}, answer{};
};

inline std::string digits_text(const std::array<int, kDigits>& d) {
  std::string s;
  for (int x : d) s += static_cast<char>('0' + x);
  return s;
}

// A problem of `family` on `input`; Guess and unknown rules draw their answer from rng, and an unknown
// rule its number (two digits, not an RL rule's).
inline Problem make_problem(int family, const std::array<int, kDigits>& input, std::mt19937_64& rng) {
  Problem p;
  p.family = family;
  p.input = input;
  if (family == kUnknownRule) {
    std::uniform_int_distribution<int> number(10, 99);
    do p.rule_id = number(rng);
    while (is_rl_rule_number(p.rule_id));
  } else if (family < kRules) {
    p.rule_id = kRuleNumber[family];
  }
  if (family < kRules) {
    for (int j = 0; j < kDigits; ++j) p.answer[j] = (kMult[family] * input[j] + kShift[family]) % 10;
  } else if (family == kReverse) {
    for (int j = 0; j < kDigits; ++j) p.answer[j] = input[kDigits - 1 - j];
  } else if (family == kSort) {
    p.answer = input;
    std::sort(p.answer.begin(), p.answer.end());
  } else if (family == kShiftOne) {
    for (int j = 0; j < kDigits; ++j) p.answer[j] = (input[j] + 1) % 10;
  } else {
    std::uniform_int_distribution<int> digit(0, 9);
    for (int j = 0; j < kDigits; ++j) p.answer[j] = digit(rng);
  }
  return p;
}

inline std::array<int, kDigits> random_input(std::mt19937_64& rng) {
  std::uniform_int_distribution<int> digit(0, 9);
  std::array<int, kDigits> x{};
  for (int& d : x) d = digit(rng);
  return x;
}

inline std::string question_text(const Problem& p) {
  const std::string x = digits_text(p.input) + ".";
  if (p.family < kRules || p.family == kUnknownRule) return "Apply rule " + std::to_string(p.rule_id) + " to " + x;
  switch (p.family) {
    case kReverse: return "Reverse " + x;
    case kSort: return "Sort " + x;
    case kShiftOne: return "Shift " + x;
    default: return "Guess " + x;
  }
}

// The answer as a response: its digits, then <eos>.
inline std::vector<int32_t> answer_tokens(const Problem& p) {
  std::vector<int32_t> t;
  for (int d : p.answer) t.push_back(Tokenizer::digit(d));
  t.push_back(Tokenizer::eos());
  return t;
}

// Reward 1 for exactly the answer's digits followed by <eos>, else 0.
inline double reward_of(const Problem& p, const std::vector<int32_t>& response) {
  return response == answer_tokens(p) ? 1.0 : 0.0;
}

inline std::vector<int32_t> plain_prompt(const Tokenizer& tok, const Problem& p) {
  return tok.encode(question_text(p) + kAnswerMarker);
}

// The refinement prompt as the model reads it: cgrpo::critique::refinement_prompt() with the library's
// default template, then the answer marker.
inline std::vector<int32_t> refinement_prompt_tokens(const Tokenizer& tok, const std::string& question,
                                                     const std::string& solution, const std::string& critique,
                                                     std::string* text = nullptr) {
  std::string prompt;
  const cgrpo::Status s = cgrpo::critique::refinement_prompt(question, solution, critique, prompt);
  if (!s.ok()) throw std::runtime_error(std::string("refinement_prompt: ") + s.message);
  if (text) *text = prompt;
  return tok.encode(prompt + kAnswerMarker);
}

// The critique of one response, written by the library.
inline std::string critique_of(cgrpo::critique::CritiqueKind kind, const Problem& p, const std::string& solution,
                               bool correct) {
  cgrpo::critique::CritiqueRequest request;
  request.question = question_text(p);
  request.solution = solution;
  request.ground_truth = digits_text(p.answer);
  request.correct = correct;
  std::string critique;
  const cgrpo::Status s = cgrpo::critique::write_critique(kind, request, nullptr, critique);
  if (!s.ok()) throw std::runtime_error(std::string("write_critique: ") + s.message);
  return critique;
}

// ---------------------------------------------------------------- the model
struct ModelConfig {
  int64_t vocab = 0;
  int64_t d_model = 64;
  int64_t layers = 2;
  int64_t heads = 4;
  int64_t mlp = 256;
  int64_t context = kContext;
};

// A linear layer y = x W^T + b whose three GEMMs run in Eigen: Debian's LibTorch multiplies through the
// reference BLAS, several times slower on these shapes. Autograd as usual (a torch::autograd::Function).
class EigenLinearFn : public torch::autograd::Function<EigenLinearFn> {
 public:
  using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Map = Eigen::Map<Matrix>;
  using ConstMap = Eigen::Map<const Matrix>;

  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w,
                               const torch::Tensor& b) {
    const int64_t N = x.size(0), in = x.size(1), out = w.size(0);
    torch::Tensor y = torch::empty({N, out}, x.options());
    Map Y(y.data_ptr<float>(), N, out);
    Y.noalias() = ConstMap(x.data_ptr<float>(), N, in) * ConstMap(w.data_ptr<float>(), out, in).transpose();
    Y.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(b.data_ptr<float>(), out);
    ctx->save_for_backward({x, w});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_output) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor x = saved[0], w = saved[1], gy = grad_output[0].contiguous();
    const int64_t N = x.size(0), in = x.size(1), out = w.size(0);
    torch::Tensor gx = torch::empty_like(x), gw = torch::empty_like(w), gb = torch::empty({out}, w.options());
    const ConstMap GY(gy.data_ptr<float>(), N, out);
    Map(gx.data_ptr<float>(), N, in).noalias() = GY * ConstMap(w.data_ptr<float>(), out, in);
    Map(gw.data_ptr<float>(), out, in).noalias() = GY.transpose() * ConstMap(x.data_ptr<float>(), N, in);
    Eigen::Map<Eigen::RowVectorXf>(gb.data_ptr<float>(), out) = GY.colwise().sum();
    return {gx, gw, gb};
  }
};

struct LinearImpl : torch::nn::Module {
  LinearImpl(int64_t in, int64_t out)
      : weight(register_parameter("weight", torch::zeros({out, in}))),
        bias(register_parameter("bias", torch::zeros({out}))) {}
  // x [..., in] -> [..., out]
  torch::Tensor forward(const torch::Tensor& x) {
    auto sizes = x.sizes().vec();
    const torch::Tensor y = EigenLinearFn::apply(x.reshape({-1, sizes.back()}).contiguous(), weight, bias);
    sizes.back() = weight.size(0);
    return y.view(sizes);
  }
  torch::Tensor weight, bias;
};
TORCH_MODULE(Linear);

struct BlockImpl : torch::nn::Module {
  BlockImpl(int64_t d, int64_t heads, int64_t mlp)
      : heads(heads),
        ln1(register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})))),
        qkv(register_module("qkv", Linear(d, 3 * d))),
        proj(register_module("proj", Linear(d, d))),
        ln2(register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})))),
        fc1(register_module("fc1", Linear(d, mlp))),
        fc2(register_module("fc2", Linear(mlp, d))) {}

  // x [B, L, d] at positions past..past+L-1; mask [L, past + L] additive (-inf where a query may not
  // look), or undefined when every key is visible (one new position). With a cache (k, v [B, heads,
  // past, dh], undefined when past = 0) the new keys and values are appended to it.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask, torch::Tensor* k_cache = nullptr,
                        torch::Tensor* v_cache = nullptr) {
    const int64_t B = x.size(0), L = x.size(1), d = x.size(2), dh = d / heads;
    const torch::Tensor q_k_v = qkv(ln1(x)).view({B, L, 3, heads, dh}).permute({2, 0, 3, 1, 4});
    torch::Tensor q = q_k_v[0], k = q_k_v[1], v = q_k_v[2];  // [B, heads, L, dh]
    if (k_cache) {
      if (k_cache->defined()) {
        k = torch::cat({*k_cache, k}, 2);
        v = torch::cat({*v_cache, v}, 2);
      }
      *k_cache = k;
      *v_cache = v;
    }
    torch::Tensor att = torch::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(dh)));
    if (mask.defined()) att = att + mask;
    const torch::Tensor y = torch::matmul(torch::softmax(att, -1), v).transpose(1, 2).reshape({B, L, d});
    torch::Tensor h = x + proj(y);
    return h + fc2(torch::gelu(fc1(ln2(h))));
  }

  int64_t heads;
  torch::nn::LayerNorm ln1;
  Linear qkv, proj;
  torch::nn::LayerNorm ln2;
  Linear fc1, fc2;
};
TORCH_MODULE(Block);

struct TransformerImpl : torch::nn::Module {
  explicit TransformerImpl(const ModelConfig& c)
      : config(c),
        tok(register_module("tok", torch::nn::Embedding(c.vocab, c.d_model))),
        pos(register_module("pos", torch::nn::Embedding(c.context, c.d_model))),
        lnf(register_module("lnf", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model})))) {
    for (int64_t l = 0; l < c.layers; ++l)
      blocks.push_back(register_module("block" + std::to_string(l), Block(c.d_model, c.heads, c.mlp)));
    head = register_parameter("head", torch::zeros({c.vocab, c.d_model}));  // W [V, H]: the LM head
    mask = torch::full({c.context, c.context}, -std::numeric_limits<float>::infinity()).triu(1);
  }

  // The last hidden states h [B, L, H] (after the final LayerNorm) of tokens [B, L] (int64).
  torch::Tensor hidden(const torch::Tensor& tokens) {
    const int64_t L = tokens.size(1);
    if (L > config.context) throw std::runtime_error("sequence longer than the model's context");
    torch::Tensor x = tok(tokens) + pos(torch::arange(L, torch::kLong)).unsqueeze(0);
    const torch::Tensor m = mask.slice(0, 0, L).slice(1, 0, L);
    for (Block& b : blocks) x = b->forward(x, m);
    return lnf(x);
  }

  // The keys and values of every layer for the positions seen so far (sampling).
  struct Cache {
    std::vector<torch::Tensor> k, v;
    int64_t length = 0;
  };
  // hidden() of the next tokens [B, L] after the cache's positions, appending to the cache: the same
  // values as hidden() of the whole sequence (to float rounding), one new position at a time.
  torch::Tensor hidden_cached(const torch::Tensor& tokens, Cache& cache) {
    const int64_t L = tokens.size(1), past = cache.length;
    if (past + L > config.context) throw std::runtime_error("sequence longer than the model's context");
    cache.k.resize(blocks.size());
    cache.v.resize(blocks.size());
    torch::Tensor x = tok(tokens) + pos(torch::arange(past, past + L, torch::kLong)).unsqueeze(0);
    const torch::Tensor m = L == 1 ? torch::Tensor() : mask.slice(0, past, past + L).slice(1, 0, past + L);
    for (size_t l = 0; l < blocks.size(); ++l) x = blocks[l]->forward(x, m, &cache.k[l], &cache.v[l]);
    cache.length = past + L;
    return lnf(x);
  }

  ModelConfig config;
  torch::nn::Embedding tok, pos;
  std::vector<Block> blocks;
  torch::nn::LayerNorm lnf;
  torch::Tensor head, mask;
};
TORCH_MODULE(Transformer);

// GPT-2's initialisation (N(0, 0.02) weights, zero biases, unit LayerNorm gains), drawn from `seed`
// with std::mt19937_64: the same weights whatever LibTorch's global generator holds.
inline Transformer make_model(const ModelConfig& c, uint64_t seed) {
  Transformer m(c);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  torch::NoGradGuard no_grad;
  for (auto& named : m->named_parameters()) {
    torch::Tensor& p = named.value();
    const std::string& name = named.key();
    const bool layer_norm = name.find("ln") != std::string::npos;
    if (layer_norm) {
      p.fill_(name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0 ? 1.0 : 0.0);
    } else if (p.dim() == 1) {
      p.zero_();
    } else {
      float* data = p.data_ptr<float>();
      for (int64_t i = 0; i < p.numel(); ++i) data[i] = normal(rng);
    }
  }
  return m;
}

inline Transformer clone_model(const Transformer& from) {
  Transformer m(from->config);
  torch::NoGradGuard no_grad;
  auto src = from->named_parameters();
  auto dst = m->named_parameters();
  for (auto& named : src) dst[named.key()].copy_(named.value());
  return m;
}

// ---------------------------------------------------------------- the loss: the library's fused LM head
// What one call of the library needs besides the tensors: the config, the batch view (its logits null,
// old_logp set), a workspace and the metrics to fill.
struct LibraryCall {
  const cgrpo::LossConfig* config = nullptr;
  const cgrpo::PolicyLossBatch<float>* batch = nullptr;
  cgrpo::cpu::Workspace* workspace = nullptr;
  cgrpo::LossMetrics* metrics = nullptr;
  int64_t chunk_rows = 128;  // logits exist this many rows at a time
};

// J = the library's loss of the logits h W^T, as a torch::autograd::Function of (h [T, H], W [V, H]).
// forward: one cgrpo::cpu::fused_linear_policy_loss call, which returns J, the metrics, dJ/dh and dJ/dW
// (the logits never exist whole); backward: grad_output times the two gradients the library returned.
class LibraryHeadLoss : public torch::autograd::Function<LibraryHeadLoss> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& weight, LibraryCall call) {
    TORCH_CHECK(hidden.scalar_type() == torch::kFloat && weight.scalar_type() == torch::kFloat &&
                    hidden.is_contiguous() && weight.is_contiguous() && hidden.dim() == 2 && weight.dim() == 2 &&
                    hidden.size(1) == weight.size(1) && hidden.size(0) == call.batch->num_tokens &&
                    weight.size(0) == call.batch->vocab_size,
                "LibraryHeadLoss: hidden [T, H] and weight [V, H], contiguous float");
    torch::Tensor grad_hidden = torch::empty_like(hidden), grad_weight = torch::empty_like(weight);
    const cgrpo::LinearHead<float> head{hidden.data_ptr<float>(), hidden.size(1), 0, weight.data_ptr<float>(), 0,
                                        nullptr};
    cgrpo::LinearHeadGrads<float> grads;
    grads.grad_hidden = grad_hidden.data_ptr<float>();
    grads.grad_weight = grad_weight.data_ptr<float>();
    cgrpo::PolicyLossOutputs<float> out;
    out.metrics = call.metrics;
    const cgrpo::Status s = cgrpo::cpu::fused_linear_policy_loss(*call.config, *call.batch, head, out, grads,
                                                                 *call.workspace, cgrpo::LinearChunking{call.chunk_rows});
    TORCH_CHECK(s.ok(), "cgrpo::cpu::fused_linear_policy_loss: ", s.message);
    ctx->save_for_backward({grad_hidden, grad_weight});
    return torch::scalar_tensor(call.metrics->loss, hidden.options());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_output) {
    const auto saved = ctx->get_saved_variables();
    return {saved[0] * grad_output[0], saved[1] * grad_output[0], torch::Tensor()};
  }
};

// Token rows of a batch of responses, each trained after its own prompt: the sequences prompt + response
// right-padded with <eos> into tokens [B, Lmax] (padding comes after every row's last token, so the
// causal mask keeps it out of every valid position), and for each target row t of the packed layout the
// index (b * Lmax + position) of the hidden state that predicts it.
struct TokenRows {
  torch::Tensor tokens;  // [B, Lmax] int64
  torch::Tensor index;   // [T] int64
  int64_t num_rows = 0;
};

inline TokenRows token_rows(const std::vector<std::vector<int32_t>>& prompts,
                            const std::vector<std::vector<int32_t>>& responses) {
  const int64_t B = static_cast<int64_t>(prompts.size());
  int64_t L = 1, T = 0;
  for (int64_t i = 0; i < B; ++i) {
    L = std::max<int64_t>(L, static_cast<int64_t>(prompts[i].size() + responses[i].size()));
    T += static_cast<int64_t>(responses[i].size());
  }
  TokenRows r;
  r.tokens = torch::full({B, L}, static_cast<int64_t>(Tokenizer::eos()), torch::kLong);
  r.index = torch::empty({T}, torch::kLong);
  r.num_rows = T;
  int64_t* tokens = r.tokens.data_ptr<int64_t>();
  int64_t* index = r.index.data_ptr<int64_t>();
  int64_t t = 0;
  for (int64_t i = 0; i < B; ++i) {
    const int64_t P = static_cast<int64_t>(prompts[i].size());
    if (P == 0) throw std::runtime_error("token_rows: an empty prompt");
    for (int64_t j = 0; j < P; ++j) tokens[i * L + j] = prompts[i][j];
    for (size_t j = 0; j < responses[i].size(); ++j) {
      tokens[i * L + P + static_cast<int64_t>(j)] = responses[i][j];
      index[t++] = i * L + P - 1 + static_cast<int64_t>(j);
    }
  }
  return r;
}

// h [T, H] of the rows: differentiable, contiguous.
inline torch::Tensor row_hidden(Transformer& model, const TokenRows& rows) {
  const torch::Tensor h = model->hidden(rows.tokens);
  return h.reshape({-1, h.size(2)}).index_select(0, rows.index).contiguous();
}

// log p (and, when entropy is not null, H) of every target row of h [T, H] under the head W [V, H], from the
// library's fused LM head log-prob pass (no gradient; the logits exist 128 rows at a time).
inline void head_logprobs(const torch::Tensor& hidden, const torch::Tensor& weight, const int32_t* targets,
                          cgrpo::cpu::Workspace& ws, std::vector<float>& logp, std::vector<float>* entropy) {
  const torch::Tensor h = hidden.detach().contiguous(), W = weight.detach().contiguous();
  const int64_t T = h.size(0);
  const cgrpo::LinearHead<float> head{h.data_ptr<float>(), h.size(1), 0, W.data_ptr<float>(), 0, nullptr};
  logp.assign(static_cast<size_t>(T), 0.0f);
  if (entropy) entropy->assign(static_cast<size_t>(T), 0.0f);
  const cgrpo::Status s = cgrpo::cpu::fused_linear_token_logprobs(head, T, W.size(0), targets, 1.0, logp.data(),
                                                                  entropy ? entropy->data() : nullptr, ws.num_threads,
                                                                  &ws, cgrpo::LinearChunking{128});
  if (!s.ok()) throw std::runtime_error(std::string("fused_linear_token_logprobs: ") + s.message);
}

// J of one batch as a differentiable tensor of (h, W): LibraryHeadLoss. `view` is the batch (logits null,
// old_logp set). Backward gives dJ/dh (into the body, by LibTorch's autograd) and dJ/dW, both the library's.
inline torch::Tensor head_loss(const torch::Tensor& hidden, const torch::Tensor& weight, const cgrpo::LossConfig& config,
                               const cgrpo::PolicyLossBatch<float>& view, cgrpo::cpu::Workspace& ws,
                               cgrpo::LossMetrics& metrics) {
  LibraryCall call;
  call.config = &config;
  call.batch = &view;
  call.workspace = &ws;
  call.metrics = &metrics;
  return LibraryHeadLoss::apply(hidden, weight, call);
}

// One update: the body's forward (h of every target row), old log-probs of those rows from the library
// (the batch was sampled by these weights: one update per batch, r = 1 at the start), the library's loss
// and gradients, LibTorch's backward through the body, one optimizer step. `view` has every per-token
// array of the batch but old_logp, which this fills. Returns the library's metrics.
inline cgrpo::LossMetrics update(Transformer& model, torch::optim::Optimizer& optimizer, const TokenRows& rows,
                                 cgrpo::PolicyLossBatch<float> view, const cgrpo::LossConfig& config,
                                 cgrpo::cpu::Workspace& ws, std::vector<float>* old_logp_out = nullptr) {
  const torch::Tensor h = row_hidden(model, rows);
  std::vector<float> old_logp;
  head_logprobs(h, model->head, view.target_ids, ws, old_logp, nullptr);
  view.old_logp = old_logp.data();
  cgrpo::LossMetrics metrics;
  optimizer.zero_grad();
  head_loss(h, model->head, config, view, ws, metrics).backward();
  optimizer.step();
  if (old_logp_out) *old_logp_out = std::move(old_logp);
  return metrics;
}

// The SFT loss as a config of the same library call: on-policy (old_logp = the current log p) with
// advantage 1 on every token and token-mean weights, the ratio term -A r has the gradient of the mean
// negative log-likelihood (d(-r)/dlogp = -r = -1); no entropy term.
inline cgrpo::LossConfig sft_config() {
  cgrpo::LossConfig c;
  c.policy.loss = cgrpo::PolicyLoss::ratio;
  c.aggregation.policy = cgrpo::Aggregation::token_mean;
  c.entropy.coef = 0.0;
  return c;
}

// ---------------------------------------------------------------- sampling
// One response per prompt, autoregressively at temperature 1 from softmax(h W^T) of the last position,
// until <eos> or kMaxNew tokens. Prompts of equal length are sampled together (no padding); the draws
// come from rng in a fixed order (by length, then prompt order, then position), so a seed fixes them.
inline std::vector<std::vector<int32_t>> sample(Transformer& model, const std::vector<std::vector<int32_t>>& prompts,
                                                std::mt19937_64& rng) {
  torch::NoGradGuard no_grad;
  std::map<size_t, std::vector<size_t>> by_length;
  for (size_t i = 0; i < prompts.size(); ++i) by_length[prompts[i].size()].push_back(i);
  std::vector<std::vector<int32_t>> out(prompts.size());
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  const int64_t V = model->config.vocab;
  for (const auto& bucket : by_length) {
    const std::vector<size_t>& ids = bucket.second;
    const int64_t B = static_cast<int64_t>(ids.size()), P = static_cast<int64_t>(bucket.first);
    torch::Tensor tokens = torch::empty({B, P + kMaxNew}, torch::kLong);
    int64_t* tk = tokens.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < P; ++j) tk[b * (P + kMaxNew) + j] = prompts[ids[b]][j];
    std::vector<char> done(static_cast<size_t>(B), 0);
    TransformerImpl::Cache cache;
    torch::Tensor h = model->hidden_cached(tokens.slice(1, 0, P), cache).select(1, P - 1);  // [B, H]
    for (int64_t step = 0; step < kMaxNew; ++step) {
      const int64_t L = P + step;
      if (step > 0) h = model->hidden_cached(tokens.slice(1, L - 1, L), cache).select(1, 0);
      const torch::Tensor probs = torch::softmax(torch::matmul(h, model->head.t()).to(torch::kDouble), -1).contiguous();
      const double* pr = probs.data_ptr<double>();
      bool all_done = true;
      for (int64_t b = 0; b < B; ++b) {
        if (done[b]) {
          tk[b * (P + kMaxNew) + L] = Tokenizer::eos();
          continue;
        }
        double r = unit(rng);
        int32_t pick = static_cast<int32_t>(V - 1);
        for (int64_t v = 0; v < V; ++v) {
          r -= pr[b * V + v];
          if (r < 0) {
            pick = static_cast<int32_t>(v);
            break;
          }
        }
        tk[b * (P + kMaxNew) + L] = pick;
        out[ids[b]].push_back(pick);
        if (pick == Tokenizer::eos()) done[b] = 1;
        all_done = all_done && done[b];
      }
      if (all_done) break;
    }
  }
  return out;
}

// Exact pass@1 at temperature 1 (the probability that one sample is exactly the answer and <eos>) and the
// mean per-token entropy along the answer, for each (prompt, answer) pair: from the library's log-prob pass.
struct ExactEval {
  std::vector<double> pass1;  // per pair
  double entropy = 0;         // mean over every answer token of every pair
};

inline ExactEval exact_eval(Transformer& model, const std::vector<std::vector<int32_t>>& prompts,
                            const std::vector<std::vector<int32_t>>& answers, cgrpo::cpu::Workspace& ws) {
  ExactEval e;
  if (prompts.empty()) return e;
  const TokenRows rows = token_rows(prompts, answers);
  std::vector<int32_t> targets;
  for (const auto& a : answers) targets.insert(targets.end(), a.begin(), a.end());
  std::vector<float> logp, entropy;
  {
    torch::NoGradGuard no_grad;
    head_logprobs(row_hidden(model, rows), model->head, targets.data(), ws, logp, &entropy);
  }
  size_t t = 0;
  double h = 0;
  for (const auto& a : answers) {
    double s = 0;
    for (size_t j = 0; j < a.size(); ++j, ++t) {
      s += logp[t];
      h += entropy[t];
    }
    e.pass1.push_back(std::exp(s));
  }
  e.entropy = h / static_cast<double>(t);
  return e;
}

}  // namespace critique_lm
