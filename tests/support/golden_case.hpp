// tests/support/golden_case.hpp: reads the golden cases computed by the paper's released loss code.
// Format (tests/data/GOLDEN_README.md): a "# params k=v ..." line, then "name ndim d0.. : values".
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

struct GoldenArray {
  std::vector<int64_t> shape;
  std::vector<double> values;
};

struct GoldenCase {
  std::map<std::string, std::string> params;
  std::map<std::string, GoldenArray> arrays;

  const GoldenArray& at(const std::string& name) const { return arrays.at(name); }
  std::string param(const std::string& key) const {
    auto it = params.find(key);
    return it == params.end() ? std::string() : it->second;
  }
};

inline bool load_golden_case(const std::string& path, GoldenCase& out) {
  std::ifstream in(path);
  if (!in) return false;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream ss(line.substr(1));
      std::string tok;
      while (ss >> tok) {
        const auto eq = tok.find('=');
        if (eq != std::string::npos) out.params[tok.substr(0, eq)] = tok.substr(eq + 1);
      }
      continue;
    }
    std::istringstream ss(line);
    std::string name;
    int ndim = 0;
    ss >> name >> ndim;
    GoldenArray a;
    int64_t count = 1;
    for (int d = 0; d < ndim; ++d) {
      int64_t n;
      ss >> n;
      a.shape.push_back(n);
      count *= n;
    }
    std::string colon;
    ss >> colon;
    if (colon != ":") return false;
    a.values.reserve(static_cast<size_t>(count));
    double v;
    while (ss >> v) a.values.push_back(v);
    if (static_cast<int64_t>(a.values.size()) != count) return false;
    out.arrays[name] = std::move(a);
  }
  return true;
}
