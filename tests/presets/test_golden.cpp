// Golden cases computed by the peers' own code (tests/data: the paper's fork; tests/data/verl;
// tests/data/verl3; tests/data/trl): advantages, loss, gradient, log-probs, entropies and the logged metrics must
// match, 1e-10 in double and 1e-5 in float (metrics in double, at the tolerance the case names).
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "golden_paper.hpp"
#include "golden_trl.hpp"
#include "golden_runner.hpp"
#include "golden_verl.hpp"
#include "golden_verl3.hpp"

namespace {

std::vector<std::string> case_files(const std::string& folder) {
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(std::string(CGRPO_TEST_DATA_DIR) + "/" + folder))
    if (e.path().extension() == ".txt") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

void run_folder(const std::string& folder, const golden::SetupFn& setup, size_t expected_cases) {
  const std::vector<std::string> files = case_files(folder);
  CHECK(files.size() == expected_cases);
  for (const std::string& file : files) {
    GoldenCase g;
    INFO(file);
    REQUIRE(load_golden_case(file, g));
    golden::Setup s;
    setup(g, s);
    golden::run_case<double>(file, g, s, 1e-10);
    golden::run_case<float>(file, g, s, 1e-5);
  }
}

}  // namespace

TEST_CASE("golden cases from the paper's code (its verl fork)", "[golden]") {
  run_folder(".", golden::setup_paper, 3);
}

TEST_CASE("golden cases from TRL", "[golden]") { run_folder("trl", golden::setup_trl, 12); }
TEST_CASE("golden cases from verl (b178a3c, under VerlActor::legacy_dp_actor)", "[golden]") {
  run_folder("verl", golden::setup_verl, 12);
}
TEST_CASE("golden cases from verl at 1dda039 (its engine actor, the verl presets' default)", "[golden]") {
  run_folder("verl3", golden::setup_verl3, 10);
}
