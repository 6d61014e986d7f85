// Critique sentences (simple, simple_gt), the free-text critic callback, and the prompt template.
#include <catch2/catch.hpp>

#include <cgrpo/critique/critique_stage.hpp>
#include <string>

using namespace cgrpo::critique;

TEST_CASE("simple and simple_gt critiques are the paper's sentences", "[critique]") {
  CritiqueRequest r;
  r.question = "2+2?";
  r.solution = "5";
  r.ground_truth = "4";
  std::string text;
  r.correct = false;
  REQUIRE(write_critique(CritiqueKind::simple, r, nullptr, text).ok());
  CHECK(text == "The generated solution is incorrect.");
  REQUIRE(write_critique(CritiqueKind::simple_gt, r, nullptr, text).ok());
  CHECK(text == "The generated solution is incorrect, the ground truth is 4.");
  r.correct = true;
  REQUIRE(write_critique(CritiqueKind::simple, r, nullptr, text).ok());
  CHECK(text == "The generated solution is correct.");
  REQUIRE(write_critique(CritiqueKind::simple_gt, r, nullptr, text).ok());
  CHECK(text == "The generated solution is correct, the ground truth is 4.");
}

TEST_CASE("simple_gt without a ground truth is an error and leaves the output alone", "[critique]") {
  CritiqueRequest r;
  std::string text = "untouched";
  const cgrpo::Status s = write_critique(CritiqueKind::simple_gt, r, nullptr, text);
  CHECK(s.code == cgrpo::StatusCode::invalid_argument);
  CHECK(std::string(s.message).find("ground truth") != std::string::npos);
  CHECK(text == "untouched");
}

TEST_CASE("free-text critiques come from the caller's critic", "[critique]") {
  CritiqueRequest r;
  r.question = "q";
  r.solution = "s";
  r.ground_truth = "g";
  int calls = 0;
  Critic critic = [&](const CritiqueRequest& req, std::string& out) {
    ++calls;
    out = "Step 2 of \"" + req.solution + "\" drops a sign; expected " + req.ground_truth;
    return cgrpo::Status::success();
  };
  std::string text;
  REQUIRE(write_critique(CritiqueKind::free_text, r, critic, text).ok());
  CHECK(calls == 1);
  CHECK(text == "Step 2 of \"s\" drops a sign; expected g");

  text = "untouched";
  CHECK(write_critique(CritiqueKind::free_text, r, nullptr, text).code == cgrpo::StatusCode::invalid_argument);
  Critic failing = [](const CritiqueRequest&, std::string&) {
    return cgrpo::make_error(cgrpo::StatusCode::invalid_argument, "critic offline");
  };
  const cgrpo::Status s = write_critique(CritiqueKind::free_text, r, failing, text);
  CHECK(std::string(s.message) == "critic offline");
  Critic silent = [](const CritiqueRequest&, std::string& out) {
    out.clear();
    return cgrpo::Status::success();
  };
  CHECK(write_critique(CritiqueKind::free_text, r, silent, text).code == cgrpo::StatusCode::invalid_argument);
  CHECK(text == "untouched");
}

TEST_CASE("critique kinds parse from their names", "[critique]") {
  CritiqueKind k = CritiqueKind::simple;
  REQUIRE(parse_critique_kind("simple_gt", k).ok());
  CHECK(k == CritiqueKind::simple_gt);
  REQUIRE(parse_critique_kind("free_text", k).ok());
  CHECK(k == CritiqueKind::free_text);
  CHECK_FALSE(parse_critique_kind("gt", k).ok());
  CHECK(k == CritiqueKind::free_text);
}

TEST_CASE("the default refinement prompt holds question, solution, critique and the instruction", "[template]") {
  std::string prompt;
  REQUIRE(refinement_prompt("What is 17*3?", "17*3 = 41", "The generated solution is incorrect.", prompt).ok());
  const std::string want =
      "Question:\nWhat is 17*3?\n\nPrevious solution:\n17*3 = 41\n\nCritique:\nThe generated solution is incorrect.\n\n"
      "Read the critique, correct every error it points out in the previous solution, "
      "and write a complete revised solution to the question, ending with the final answer.\n";
  CHECK(prompt == want);
}

TEST_CASE("templates: user templates, brace escapes and errors", "[template]") {
  std::string out;
  REQUIRE(refinement_prompt("Q", "S", "C", out, "<{critique}|{question}|{solution}|{question}> {{x}}").ok());
  CHECK(out == "<C|Q|S|Q> {x}");
  // Values are inserted verbatim, never re-expanded.
  REQUIRE(fill_template("{a}", {{"a", "{b}"}, {"b", "no"}}, out).ok());
  CHECK(out == "{b}");
  out = "untouched";
  cgrpo::Status s = fill_template("Q: {question} {answer}", {{"question", "x"}}, out);
  CHECK(s.code == cgrpo::StatusCode::invalid_argument);
  CHECK(std::string(s.message).find("{answer}") != std::string::npos);
  CHECK_FALSE(fill_template("open {question", {{"question", "x"}}, out).ok());
  CHECK_FALSE(fill_template("lone } brace", {}, out).ok());
  CHECK(out == "untouched");
}
