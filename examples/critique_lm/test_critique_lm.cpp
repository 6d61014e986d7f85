// examples/critique_lm/test_critique_lm.cpp: the example's loss and gradients come from the library.
// One Critique-GRPO batch of the example (assemble_groups, kinds, advantages, weights) through the
// example's own code (LibraryHeadLoss: cgrpo::cpu::fused_linear_policy_loss on the transformer's hidden
// states and LM head), against
//   (1) the composed logits path: logits = h W^T, then the library's fused loss from logits
//       (cgrpo_torch::PolicyLoss, the repo's LibTorch wrapper);
//   (2) the paper's loss written with plain torch ops in double (-A r on initial tokens, -A f(p) with
//       f(p) = p / (p + gamma) on refinement tokens, the entropy bonus), LibTorch's autograd;
// for J, dJ/dh, dJ/dW, and a parameter of the transformer's body (dJ/dh backpropagated). Also: the
// refinement tokens' dJ/dlogits is the shaping's (gamma p / (p + gamma)^2, not the ratio's), the metrics'
// refinement part, one update() step of the example against SGD on the reference gradient, the SFT config's
// gradient against the NLL's, the Eigen linear layer and the KV cache against LibTorch, the tokenizer.
#include "critique_lm.hpp"

#include <cgrpo/torch/policy_loss.hpp>

#include <cmath>
#include <cstdio>

using namespace critique_lm;

namespace {

int failures = 0, checks = 0;

void expect_close(const char* what, const torch::Tensor& got, const torch::Tensor& want, double rel_tol) {
  ++checks;
  const torch::Tensor g = got.to(torch::kDouble), w = want.to(torch::kDouble);
  const double scale = w.abs().max().item<double>();
  const double err = (g - w).abs().max().item<double>();
  // A reference that is all zero would let a zero (missing) gradient pass: it fails the check too.
  const bool ok = g.sizes() == w.sizes() && std::isfinite(err) && scale > 0 && err <= rel_tol * scale;
  std::printf("%s %-62s max |diff| %.3g, max |want| %.3g\n", ok ? "ok  " : "FAIL", what, err, scale);
  if (!ok) ++failures;
}
// The negative controls: `wrong` is what a plausible mistake would give (the ratio instead of the shaping
// on refinement tokens, another gamma, no entropy term); expect_close at rel_tol must tell it from `got`
// (max |diff| above 10x the tolerance), so that a check above can fail on that mistake.
void expect_distinguished(const char* what, const torch::Tensor& got, const torch::Tensor& wrong, double rel_tol) {
  ++checks;
  const torch::Tensor g = got.to(torch::kDouble), w = wrong.to(torch::kDouble);
  const double scale = w.abs().max().item<double>();
  const double err = (g - w).abs().max().item<double>();
  const bool ok = g.sizes() == w.sizes() && std::isfinite(err) && err > 10 * rel_tol * scale;
  std::printf("%s %-62s max |diff| %.3g > 10 x %.0e x %.3g\n", ok ? "ok  " : "FAIL", what, err, rel_tol, scale);
  if (!ok) ++failures;
}
void expect_true(const char* what, bool ok) {
  ++checks;
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

torch::Tensor as_tensor(const std::vector<float>& v) { return torch::tensor(v, torch::kFloat); }

// The paper's J from logits [T, V] with torch ops (no library), in the logits' dtype. shaping = false: the
// mistake of giving refinement tokens the ratio loss as well (a negative control).
torch::Tensor reference_loss(const torch::Tensor& logits, const cgrpo::critique::AssembledBatch<float>& b,
                             const torch::Tensor& old_logp, const cgrpo::LossConfig& c, bool shaping = true) {
  const auto real = logits.scalar_type();
  std::vector<int64_t> targets(b.target_ids.begin(), b.target_ids.end());
  const torch::Tensor y = torch::tensor(targets, torch::kLong);
  const torch::Tensor logp_all = torch::log_softmax(logits, 1);
  const torch::Tensor logp = logp_all.gather(1, y.unsqueeze(1)).squeeze(1);
  const torch::Tensor H = -(logp_all.exp() * logp_all).sum(1);
  const torch::Tensor A = as_tensor(b.advantages).to(real), w_pg = as_tensor(b.pg_weights).to(real),
                      w_h = as_tensor(b.entropy_weights).to(real);
  std::vector<float> ref(b.kinds.size());
  for (size_t t = 0; t < ref.size(); ++t) ref[t] = shaping && b.kinds[t] == cgrpo::kRefinement ? 1.0f : 0.0f;
  const torch::Tensor is_ref = as_tensor(ref).to(real);
  const torch::Tensor ratio = torch::exp(logp - old_logp.to(real));
  const torch::Tensor p = logp.exp();
  const torch::Tensor f = p / (p + c.policy.refinement_gamma);
  const torch::Tensor l = (1 - is_ref) * (-A * ratio) + is_ref * (-A * f);
  return (w_pg * l).sum() - c.entropy.coef * (w_h * H).sum();
}

// A Critique-GRPO batch as the example builds it: 3 questions of the RL task, n = 4 initial responses
// sampled by the model, one refinement per initial response sampled with a simple_gt critique in the
// context, k = 1 selected and placed by assemble_groups. Rewards are set by hand so that every group has
// a spread (the sampled responses of an untrained model are all wrong).
struct Fixture {
  Tokenizer tok;
  Transformer model{nullptr};
  cgrpo::Recipe recipe = cgrpo::paper_critique_grpo();
  cgrpo::critique::AssembledBatch<float> batch;
  TokenRows rows;
  std::vector<Problem> problems;
};

void make_fixture(Fixture& fx) {
  ModelConfig mc;
  mc.vocab = fx.tok.vocab_size();
  fx.model = make_model(mc, 11);
  {
    // Move off the initialisation (whose logits are all near 0) so the probabilities differ.
    torch::NoGradGuard no_grad;
    std::mt19937_64 rng(5);
    std::normal_distribution<float> n(0.0f, 0.3f);
    for (auto& p : fx.model->parameters()) {
      float* d = p.data_ptr<float>();
      for (int64_t i = 0; i < p.numel(); ++i) d[i] += n(rng);
    }
  }
  std::mt19937_64 rng(3);
  std::vector<cgrpo::critique::QuestionRollouts> rollouts;
  std::vector<std::vector<int32_t>> prompts;
  for (int q = 0; q < 3; ++q) {
    const Problem p = make_problem(q == 0 ? 1 : 4 + q, random_input(rng), rng);
    fx.problems.push_back(p);
    const std::vector<std::vector<int32_t>> initial =
        sample(fx.model, std::vector<std::vector<int32_t>>(4, plain_prompt(fx.tok, p)), rng);
    cgrpo::critique::QuestionRollouts r;
    std::vector<std::vector<int32_t>> refine_prompts;
    for (int i = 0; i < 4; ++i) {
      r.initial.push_back({initial[i], i == 1 ? 1.0 : 0.0});
      const std::string solution = fx.tok.decode(initial[i]);
      refine_prompts.push_back(refinement_prompt_tokens(
          fx.tok, question_text(p), solution, critique_of(cgrpo::critique::CritiqueKind::simple_gt, p, solution, false)));
    }
    const std::vector<std::vector<int32_t>> refined = sample(fx.model, refine_prompts, rng);
    for (int i = 0; i < 4; ++i) r.refinements.push_back({refined[i], i == 2 ? 1.0 : 0.0});
    rollouts.push_back(r);
  }
  cgrpo::critique::GroupAssemblyOptions options;
  options.refinements_per_group = 1;
  options.vocab_size = fx.tok.vocab_size();
  options.scale.length = kMaxNew;
  const cgrpo::Status s = cgrpo::critique::assemble_groups(fx.recipe, rollouts, options, fx.batch);
  if (!s.ok()) throw std::runtime_error(s.message);
  std::vector<std::vector<int32_t>> row_prompts, row_responses;
  const cgrpo::SequenceLayout layout = fx.batch.layout();
  for (int64_t i = 0; i < fx.batch.num_responses(); ++i) {
    row_prompts.push_back(plain_prompt(fx.tok, fx.problems[fx.batch.sources[i].question]));
    row_responses.emplace_back(fx.batch.target_ids.begin() + layout.begin(i), fx.batch.target_ids.begin() + layout.end(i));
  }
  fx.rows = token_rows(row_prompts, row_responses);
}

void test_loss_and_gradients() {
  std::printf("-- one Critique-GRPO batch: the example's LibraryHeadLoss against the composed logits path\n");
  Fixture fx;
  make_fixture(fx);
  const cgrpo::LossConfig& config = fx.recipe.loss;
  const int64_t T = fx.batch.num_tokens();
  int refinement_tokens = 0;
  for (uint8_t k : fx.batch.kinds) refinement_tokens += k == cgrpo::kRefinement;
  expect_true("the batch has refinement tokens and initial tokens", refinement_tokens > 0 && refinement_tokens < T);

  // Old log-probs off-policy (r != 1) so that the ratio's gradient differs from the shaping's.
  cgrpo::cpu::Workspace ws(1);
  std::vector<float> old_logp;
  {
    torch::NoGradGuard no_grad;
    head_logprobs(row_hidden(fx.model, fx.rows), fx.model->head, fx.batch.target_ids.data(), ws, old_logp, nullptr);
  }
  std::mt19937_64 rng(9);
  std::normal_distribution<float> jitter(0.0f, 0.2f);
  for (float& x : old_logp) x += jitter(rng);
  const cgrpo::PolicyLossBatch<float> view = fx.batch.loss_batch(nullptr, fx.tok.vocab_size(), old_logp.data());

  // The example's path: h from the body, J and its gradients from the library.
  cgrpo::LossMetrics m;
  const torch::Tensor h = row_hidden(fx.model, fx.rows);
  const torch::Tensor J = head_loss(h, fx.model->head, config, view, ws, m);
  const auto g = torch::autograd::grad({J}, {h, fx.model->head, fx.model->blocks[0]->qkv->weight});

  // (1) logits = h W^T materialised, the library's fused loss from logits (cgrpo_torch::PolicyLoss).
  const torch::Tensor h1 = h.detach().clone().requires_grad_(true);
  const torch::Tensor W1 = fx.model->head.detach().clone().requires_grad_(true);
  cgrpo_torch::PolicyLossInputs in;
  in.target_ids = torch::tensor(std::vector<int32_t>(fx.batch.target_ids), torch::kInt32);
  in.mask = torch::tensor(std::vector<uint8_t>(fx.batch.mask), torch::kUInt8);
  in.kinds = torch::tensor(std::vector<uint8_t>(fx.batch.kinds), torch::kUInt8);
  in.advantages = as_tensor(fx.batch.advantages);
  in.old_logp = as_tensor(old_logp);
  in.pg_weights = as_tensor(fx.batch.pg_weights);
  in.entropy_weights = as_tensor(fx.batch.entropy_weights);
  in.kl_weights = as_tensor(fx.batch.kl_weights);
  const torch::Tensor offsets = torch::tensor(fx.batch.offsets, torch::kLong);
  in.layout = cgrpo_torch::packed_layout(offsets);
  const torch::Tensor logits1 = torch::matmul(h1, W1.t());
  cgrpo::LossMetrics m1;
  const torch::Tensor J1 = cgrpo_torch::PolicyLoss::apply(logits1, in, config, &m1);
  const auto g1 = torch::autograd::grad({J1}, {h1, W1, logits1});
  expect_close("J: fused LM head vs logits path (float)", J, J1, 1e-5);
  expect_close("dJ/dh: fused LM head vs logits path", g[0], g1[0], 1e-4);
  expect_close("dJ/dW: fused LM head vs logits path", g[1], g1[1], 1e-4);
  expect_close("metrics.pg_loss_refinement: vs logits path", torch::scalar_tensor(m.pg_loss_refinement),
               torch::scalar_tensor(m1.pg_loss_refinement), 1e-5);

  // (2) the paper's loss in plain torch, double, LibTorch's autograd (through the body as well).
  const torch::Tensor h2 = h.detach().to(torch::kDouble).requires_grad_(true);
  const torch::Tensor W2 = fx.model->head.detach().to(torch::kDouble).requires_grad_(true);
  const torch::Tensor J2 = reference_loss(torch::matmul(h2, W2.t()), fx.batch, as_tensor(old_logp), config);
  const auto g2 = torch::autograd::grad({J2}, {h2, W2});
  expect_close("J: fused LM head vs plain torch (double)", J, J2, 1e-5);
  expect_close("dJ/dh: fused LM head vs plain torch", g[0], g2[0], 1e-4);
  expect_close("dJ/dW: fused LM head vs plain torch", g[1], g2[1], 1e-4);
  {
    // Negative controls: the checks above tell the library's gradients from those of plausible mistakes.
    // A fresh graph for each grad() (each call frees the graph it backpropagates through).
    const auto z2 = [&] { return torch::matmul(h2, W2.t()); };
    const auto g_ratio = torch::autograd::grad({reference_loss(z2(), fx.batch, as_tensor(old_logp), config, false)}, {h2, W2});
    expect_distinguished("control: dJ/dW with the ratio on refinement tokens differs", g[1], g_ratio[1], 1e-4);
    cgrpo::LossConfig other_gamma = config;
    other_gamma.policy.refinement_gamma = 1.0;
    const auto g_gamma = torch::autograd::grad({reference_loss(z2(), fx.batch, as_tensor(old_logp), other_gamma)}, {h2, W2});
    expect_distinguished("control: dJ/dh with gamma = 1 instead of 0.1 differs", g[0], g_gamma[0], 1e-4);
    cgrpo::LossConfig no_entropy = config;
    no_entropy.entropy.coef = 0.0;
    const auto g_noent = torch::autograd::grad({reference_loss(z2(), fx.batch, as_tensor(old_logp), no_entropy)}, {h2, W2});
    expect_distinguished("control: dJ/dW without the entropy bonus differs", g[1], g_noent[1], 1e-4);
  }
  {
    // The body: the same loss, all in torch (float), backpropagated into block 0's qkv weight.
    const torch::Tensor hb = row_hidden(fx.model, fx.rows);
    const torch::Tensor Jb = reference_loss(torch::matmul(hb, fx.model->head.t()), fx.batch, as_tensor(old_logp), config);
    const auto gb = torch::autograd::grad({Jb}, {fx.model->blocks[0]->qkv->weight});
    expect_close("d J / d block0.qkv.weight: library head vs all-torch", g[2], gb[0], 1e-3);
  }

  // The shaping: at refinement rows dJ/dlogp_t = -w_t A_t gamma p / (p + gamma)^2 (dJ/dz_t = a_t (e_y - p)
  // - b_t p (log p + H)), not the ratio's -w_t A_t r_t; the refinement part of the loss is -sum w A f(p).
  {
    const torch::Tensor z = torch::matmul(h.detach(), fx.model->head.detach().t()).to(torch::kDouble);
    const torch::Tensor lp = torch::log_softmax(z, 1), p = lp.exp();
    const torch::Tensor H = -(p * lp).sum(1);
    const torch::Tensor z_grad = g1[2].to(torch::kDouble);  // dJ/dlogits of the library's logits path
    const double gamma = config.policy.refinement_gamma;
    double part = 0, max_err = 0, max_g = 0, max_ratio_gap = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (fx.batch.kinds[t] != cgrpo::kRefinement) continue;
      const int64_t y = fx.batch.target_ids[t];
      const double py = p[t][y].item<double>(), A = fx.batch.advantages[t], w = fx.batch.pg_weights[t];
      const double a = -w * A * gamma * py / ((py + gamma) * (py + gamma));
      const double a_ratio = -w * A * std::exp(std::log(py) - old_logp[t]);
      const double b = -config.entropy.coef * fx.batch.entropy_weights[t];
      part += -w * A * py / (py + gamma);
      for (int64_t j = 0; j < z.size(1); ++j) {
        const double pj = p[t][j].item<double>();
        const double want = a * ((j == y) - pj) - b * pj * (lp[t][j].item<double>() + H[t].item<double>());
        max_err = std::max(max_err, std::fabs(z_grad[t][j].item<double>() - want));
        max_g = std::max(max_g, std::fabs(want));
      }
      max_ratio_gap = std::max(max_ratio_gap, std::fabs(a - a_ratio));
    }
    ++checks;
    const bool ok = max_err <= 1e-4 * max_g && max_ratio_gap > 10 * max_err;
    std::printf("%s refinement rows: dJ/dz = the shaping f(p) = p/(p+gamma)'s (max |diff| %.3g of %.3g; the ratio's "
                "would differ by %.3g)\n", ok ? "ok  " : "FAIL", max_err, max_g, max_ratio_gap);
    failures += !ok;
    expect_close("metrics.pg_loss_refinement = -sum w A f(p) over refinement tokens",
                 torch::scalar_tensor(m.pg_loss_refinement), torch::scalar_tensor(part), 1e-5);
    expect_true("metrics count the refinement tokens", m.num_refinement_tokens == refinement_tokens);
  }
}

void test_update_step() {
  std::printf("-- update(): one RL step of the example (on-policy old log-probs from the library) vs SGD on the torch gradient\n");
  Fixture fx;
  make_fixture(fx);
  Transformer ref = clone_model(fx.model);
  const double lr = 0.05;
  torch::optim::SGD sgd(fx.model->parameters(), torch::optim::SGDOptions(lr));
  cgrpo::cpu::Workspace ws(1);
  std::vector<float> old_logp;
  update(fx.model, sgd, fx.rows, fx.batch.loss_batch(nullptr, fx.tok.vocab_size(), nullptr), fx.recipe.loss, ws, &old_logp);
  // Reference: the same step with the loss in torch and old_logp = log p of the weights before the step.
  const torch::Tensor hb = row_hidden(ref, fx.rows);
  const torch::Tensor logits = torch::matmul(hb, ref->head.t());
  const torch::Tensor y = torch::tensor(std::vector<int64_t>(fx.batch.target_ids.begin(), fx.batch.target_ids.end()));
  const torch::Tensor logp = torch::log_softmax(logits, 1).gather(1, y.unsqueeze(1)).squeeze(1);
  expect_close("old_logp from the library = log p before the step", as_tensor(old_logp), logp.detach(), 1e-5);
  const torch::Tensor J = reference_loss(logits, fx.batch, logp.detach(), fx.recipe.loss);
  const auto params = ref->parameters();
  const auto grads = torch::autograd::grad({J}, params);
  const auto after = fx.model->parameters();
  double err = 0, scale = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const torch::Tensor want = params[i].detach() - lr * grads[i];
    err = std::max(err, (after[i].detach() - want).abs().max().item<double>());
    scale = std::max(scale, (lr * grads[i]).abs().max().item<double>());
  }
  ++checks;
  const bool ok = err <= 1e-3 * scale && scale > 0;
  std::printf("%s every parameter after one step = before - lr * torch gradient (max |diff| %.3g, max step %.3g)\n",
              ok ? "ok  " : "FAIL", err, scale);
  failures += !ok;
}

void test_sft_config() {
  std::printf("-- sft_config(): A = 1 on-policy through the library has the mean NLL's gradient\n");
  Fixture fx;
  make_fixture(fx);
  const int64_t T = fx.batch.num_tokens();
  std::vector<uint8_t> mask(static_cast<size_t>(T), 1);
  std::vector<float> ones(static_cast<size_t>(T), 1.0f), old_logp;
  cgrpo::PolicyLossBatch<float> view;
  view.num_tokens = T;
  view.vocab_size = fx.tok.vocab_size();
  view.target_ids = fx.batch.target_ids.data();
  view.mask = mask.data();
  view.advantages = ones.data();
  view.layout = fx.batch.layout();
  cgrpo::cpu::Workspace ws(1);
  const torch::Tensor h = row_hidden(fx.model, fx.rows);
  head_logprobs(h, fx.model->head, view.target_ids, ws, old_logp, nullptr);
  view.old_logp = old_logp.data();
  cgrpo::LossMetrics m;
  const cgrpo::LossConfig config = sft_config();
  const auto g = torch::autograd::grad({head_loss(h, fx.model->head, config, view, ws, m)}, {h, fx.model->head});
  const torch::Tensor y = torch::tensor(std::vector<int64_t>(fx.batch.target_ids.begin(), fx.batch.target_ids.end()));
  const torch::Tensor hr = h.detach().requires_grad_(true), Wr = fx.model->head.detach().clone().requires_grad_(true);
  const torch::Tensor nll = torch::nn::functional::cross_entropy(torch::matmul(hr, Wr.t()), y);
  const auto gr = torch::autograd::grad({nll}, {hr, Wr});
  expect_close("dJ/dh (SFT config) = d mean NLL / dh", g[0], gr[0], 1e-4);
  expect_close("dJ/dW (SFT config) = d mean NLL / dW", g[1], gr[1], 1e-4);
}

void test_parts() {
  std::printf("-- the parts: Eigen linear layer, KV cache, tokenizer, sampling\n");
  torch::manual_seed(7);
  Linear lin(16, 24);
  {
    torch::NoGradGuard no_grad;
    lin->weight.copy_(torch::randn({24, 16}));
    lin->bias.copy_(torch::randn({24}));
  }
  const torch::Tensor x = torch::randn({3, 5, 16}, torch::requires_grad());
  const torch::Tensor gy = torch::randn({3, 5, 24});
  const torch::Tensor y = lin->forward(x);
  const auto g = torch::autograd::grad({y}, {x, lin->weight, lin->bias}, {gy});
  const torch::Tensor w = lin->weight.detach().requires_grad_(true), b = lin->bias.detach().requires_grad_(true);
  const torch::Tensor x2 = x.detach().requires_grad_(true);
  const torch::Tensor y2 = torch::nn::functional::linear(x2, w, b);
  const auto g2 = torch::autograd::grad({y2}, {x2, w, b}, {gy});
  expect_close("Linear (Eigen): y vs torch linear", y, y2, 1e-5);
  expect_close("Linear (Eigen): dy/dx", g[0], g2[0], 1e-5);
  expect_close("Linear (Eigen): dy/dW", g[1], g2[1], 1e-5);
  expect_close("Linear (Eigen): dy/db", g[2], g2[2], 1e-5);

  Fixture fx;
  make_fixture(fx);
  torch::NoGradGuard no_grad;
  const torch::Tensor tokens = fx.rows.tokens.slice(0, 0, 4);
  const torch::Tensor full = fx.model->hidden(tokens);
  TransformerImpl::Cache cache;
  std::vector<torch::Tensor> parts{fx.model->hidden_cached(tokens.slice(1, 0, 7), cache)};
  for (int64_t j = 7; j < tokens.size(1); ++j) parts.push_back(fx.model->hidden_cached(tokens.slice(1, j, j + 1), cache));
  expect_close("hidden_cached (prefill 7, then one at a time) = hidden", torch::cat(parts, 1), full, 1e-4);

  const Problem& p = fx.problems[1];
  std::string text;
  const std::vector<int32_t> ids = refinement_prompt_tokens(
      fx.tok, question_text(p), "1234", critique_of(cgrpo::critique::CritiqueKind::simple_gt, p, "1234", false), &text);
  expect_true("tokenizer: the refinement prompt decodes to the library's text + the answer marker",
              fx.tok.decode(ids) == text + kAnswerMarker);
  expect_true("tokenizer: the prompt fits the context with a full response",
              static_cast<int64_t>(ids.size()) + kMaxNew + 2 <= kContext);
  std::mt19937_64 r1(42), r2(42);
  const std::vector<std::vector<int32_t>> prompts{plain_prompt(fx.tok, p), ids, plain_prompt(fx.tok, fx.problems[0])};
  const auto s1 = sample(fx.model, prompts, r1), s2 = sample(fx.model, prompts, r2);
  bool lengths_ok = true;
  for (const auto& s : s1) lengths_ok = lengths_ok && !s.empty() && static_cast<int>(s.size()) <= kMaxNew;
  expect_true("sample(): deterministic from the seed, 1..kMaxNew tokens", s1 == s2 && lengths_ok);
}

}  // namespace

int main() {
  torch::set_num_threads(1);
  try {
    test_loss_and_gradients();
    test_update_step();
    test_sft_config();
    test_parts();
  } catch (const std::exception& e) {
    std::printf("FAIL exception: %s\n", e.what());
    return 1;
  }
  std::printf("%d of %d checks passed\n", checks - failures, checks);
  return failures == 0 ? 0 : 1;
}
