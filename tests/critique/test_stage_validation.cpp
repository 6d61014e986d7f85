// Values the critique stage used to accept and pass on: enum values out of range, a pad token
// (or response token) the loss then rejects, a non-finite success reward, negative token
// counts, a critic that throws. Each is an error naming the field, with the output untouched.
#include <catch2/catch.hpp>

#include <cgrpo/cgrpo.hpp>
#include <cgrpo/critique/critique_stage.hpp>
#include <cmath>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

#include "expect_error.hpp"

using namespace cgrpo::critique;

namespace {

std::vector<QuestionRollouts> two_questions() {
  std::vector<QuestionRollouts> qs(2);
  qs[0].initial = {{{1, 7}, 1.0}, {{2}, 0.0}, {{4, 4, 4}, 0.0}};
  qs[0].refinements = {{{3}, 1.0}, {{5, 6}, 0.0}};
  qs[1].initial = {{{1}, 0.0}, {{2, 3}, 0.0}, {{9}, 0.5}};
  qs[1].refinements = {{{4}, 0.0}};
  return qs;
}

// assemble_groups after `change` must fail with `code` naming `field`, leaving `out` as it was.
template <typename Change>
void expect_assembly_error(Change change, cgrpo::StatusCode code, const char* field) {
  auto qs = two_questions();
  GroupAssemblyOptions opt;
  change(opt, qs);
  AssembledBatch<double> out;
  REQUIRE(assemble_groups(cgrpo::paper_critique_grpo(), two_questions(), GroupAssemblyOptions{}, out).ok());
  const std::vector<int32_t> targets_before = out.target_ids;
  const std::vector<double> advantages_before = out.advantages;
  support::check_error(assemble_groups(cgrpo::paper_critique_grpo(), qs, opt, out), code, {field});
  CHECK(out.target_ids == targets_before);
  CHECK(out.advantages == advantages_before);
}

}  // namespace

TEST_CASE("assembly options: enum values out of range are errors", "[assembly][validation]") {
  for (int v : {2, -1, 7, 1 << 30}) {
    CAPTURE(v);
    expect_assembly_error([v](GroupAssemblyOptions& o, auto&) { o.placement = static_cast<RefinementPlacement>(v); },
                          cgrpo::StatusCode::invalid_argument, "placement");
    expect_assembly_error([v](GroupAssemblyOptions& o, auto&) { o.layout = static_cast<BatchLayout>(v); },
                          cgrpo::StatusCode::invalid_argument, "layout");
  }
}

TEST_CASE("assembly options: a pad token or token id the loss would reject is an error", "[assembly][validation]") {
  // Padded: the pad token is written on padding rows, which the loss checks like any target.
  expect_assembly_error(
      [](GroupAssemblyOptions& o, auto&) {
        o.layout = BatchLayout::padded;
        o.pad_token = -1;
      },
      cgrpo::StatusCode::out_of_range, "pad_token");
  expect_assembly_error(
      [](GroupAssemblyOptions& o, auto&) {
        o.layout = BatchLayout::padded;
        o.vocab_size = 10;
        o.pad_token = 10;
      },
      cgrpo::StatusCode::out_of_range, "pad_token");
  expect_assembly_error([](GroupAssemblyOptions& o, auto& qs) {
    o.vocab_size = 9;  // qs[1] holds token 9
    qs[1].initial[0].tokens = {9};
  },
                        cgrpo::StatusCode::out_of_range, "token id 9");
  expect_assembly_error([](GroupAssemblyOptions& o, auto&) { o.vocab_size = -5; }, cgrpo::StatusCode::invalid_argument,
                        "vocab_size");
  // A packed batch has no padding row: its pad token is never written, any value is fine.
  GroupAssemblyOptions packed;
  packed.pad_token = -100;
  AssembledBatch<double> out;
  CHECK(assemble_groups(cgrpo::paper_critique_grpo(), two_questions(), packed, out).ok());
  // With the vocabulary known, ids inside it pass.
  GroupAssemblyOptions known;
  known.layout = BatchLayout::padded;
  known.vocab_size = 10;
  known.pad_token = 9;
  CHECK(assemble_groups(cgrpo::paper_critique_grpo(), two_questions(), known, out).ok());
}

TEST_CASE("assembly options: a non-finite success reward is an error", "[assembly][validation]") {
  for (double r : {NAN, INFINITY, -INFINITY}) {
    CAPTURE(r);
    expect_assembly_error([r](GroupAssemblyOptions& o, auto&) { o.success_reward = r; },
                          cgrpo::StatusCode::invalid_argument, "success_reward");
    const double rewards[] = {0.0, 1.0};
    std::vector<int64_t> chosen = {42};
    support::check_error(select_refinements(rewards, nullptr, 2, 1, r, false, chosen),
                         cgrpo::StatusCode::invalid_argument, {"success_reward"});
    CHECK(chosen == std::vector<int64_t>{42});
  }
  // Negative token counts are not "non-empty": an error.
  const double rewards[] = {0.0, 1.0};
  const int64_t counts[] = {3, -1};
  std::vector<int64_t> chosen = {42};
  support::check_error(select_refinements(rewards, counts, 2, 1, 1.0, false, chosen),
                       cgrpo::StatusCode::invalid_argument, {"token_counts[1]"});
  CHECK(chosen == std::vector<int64_t>{42});
}

TEST_CASE("loss_batch's Status form checks the vocabulary: pad token and response tokens", "[assembly][validation]") {
  GroupAssemblyOptions opt;
  opt.layout = BatchLayout::padded;
  opt.pad_token = 8;  // fine for V = 50, not for V = 8
  AssembledBatch<double> b;
  REQUIRE(assemble_groups(cgrpo::paper_critique_grpo(), two_questions(), opt, b).ok());
  const std::vector<double> logits(b.num_tokens() * 50, 0.1), old_logp(b.num_tokens(), -3.0);
  // The view is an output here: a sentinel shows that an error leaves it as it was.
  cgrpo::PolicyLossBatch<double> view;
  view.num_tokens = -7;
  support::check_error(b.loss_batch(logits.data(), 8, old_logp.data(), nullptr, 0, view), cgrpo::StatusCode::out_of_range,
                       {"pad_token 8", "GroupAssemblyOptions.pad_token"});
  CHECK(view.num_tokens == -7);
  // Token 7 of question 0 is out too.
  support::check_error(b.loss_batch(logits.data(), 7, old_logp.data(), nullptr, 0, view), cgrpo::StatusCode::out_of_range,
                       {"loss_batch:", "[0, 7)"});
  CHECK(view.num_tokens == -7);
  support::check_error(b.loss_batch(logits.data(), 0, old_logp.data(), nullptr, 0, view),
                       cgrpo::StatusCode::invalid_argument, {"vocab_size must be > 0"});
  CHECK(view.num_tokens == -7);
  // Response token out of range (packed: no padding row at all).
  AssembledBatch<double> p;
  REQUIRE(assemble_groups(cgrpo::paper_critique_grpo(), two_questions(), GroupAssemblyOptions{}, p).ok());
  support::check_error(p.loss_batch(logits.data(), 7, old_logp.data(), nullptr, 0, view), cgrpo::StatusCode::out_of_range,
                       {"response token"});
  CHECK(view.num_tokens == -7);
  // In range: the checked view is the unchecked one, and the loss takes it.
  REQUIRE(b.loss_batch(logits.data(), 50, old_logp.data(), nullptr, 0, view).ok());
  const cgrpo::PolicyLossBatch<double> plain = b.loss_batch(logits.data(), 50, old_logp.data());
  CHECK(view.target_ids == plain.target_ids);
  CHECK(view.num_tokens == plain.num_tokens);
  cgrpo::LossMetrics m;
  cgrpo::PolicyLossOutputs<double> out;
  out.metrics = &m;
  CHECK(cgrpo::cpu::fused_policy_loss(cgrpo::paper_critique_grpo().loss, view, out).ok());
}

TEST_CASE("a critic that throws gives a Status, not an exception", "[critique][validation]") {
  CritiqueRequest r;
  r.solution = "s";
  std::string text = "untouched";
  Critic throws = [](const CritiqueRequest&, std::string&) -> cgrpo::Status { throw std::runtime_error("model down"); };
  cgrpo::Status s;
  REQUIRE_NOTHROW(s = write_critique(CritiqueKind::free_text, r, throws, text));
  support::check_error(s, cgrpo::StatusCode::invalid_argument, {"the critic threw", "model down"});
  CHECK(text == "untouched");
  support::check_error(write_critique(static_cast<CritiqueKind>(9), r, nullptr, text), cgrpo::StatusCode::invalid_argument,
                       {"unknown critique kind 9"});
  CHECK(text == "untouched");
}
