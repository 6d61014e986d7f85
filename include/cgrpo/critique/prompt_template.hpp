// cgrpo/critique/prompt_template.hpp: plain-string prompt templates with named fields.
// The refinement prompt of Critique-GRPO: question, previous solution, critique, instruction.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "cgrpo/base/no_throw.hpp"
#include "cgrpo/base/status.hpp"

namespace cgrpo::critique {

// Threads: the functions here keep no state; calls may run at the same time (inputs may be
// shared, an output may not).

// The default refinement prompt (the paper's template, in our own words). Fields:
// {question}, {solution} (the previous solution) and {critique}. "{{" and "}}" write
// literal braces. Replace it with any string that uses the same fields.
inline const char* default_refinement_template() {
  return "Question:\n{question}\n\n"
         "Previous solution:\n{solution}\n\n"
         "Critique:\n{critique}\n\n"
         "Read the critique, correct every error it points out in the previous solution, "
         "and write a complete revised solution to the question, ending with the final answer.\n";
}

using TemplateFields = std::vector<std::pair<std::string, std::string>>;

// Replaces every {name} of `text` by the value of field `name`. Errors (out untouched):
// a field the template names but `fields` lacks, an unclosed '{', a lone '}'.
// Fields that the template does not use are allowed. A failed allocation is out_of_memory.
inline Status fill_template(const std::string& text, const TemplateFields& fields, std::string& out) {
  return no_throw("fill_template", [&]() -> Status {
    std::string result;
    result.reserve(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
      const char c = text[i];
      if (c == '{' && i + 1 < text.size() && text[i + 1] == '{') {
        result += '{';
        ++i;
      } else if (c == '}' && i + 1 < text.size() && text[i + 1] == '}') {
        result += '}';
        ++i;
      } else if (c == '}') {
        return make_error(StatusCode::invalid_argument, "template: lone '}' at offset %zu (write '}}' for a brace)", i);
      } else if (c == '{') {
        const size_t close = text.find('}', i + 1);
        if (close == std::string::npos)
          return make_error(StatusCode::invalid_argument, "template: '{' at offset %zu is never closed", i);
        const std::string name = text.substr(i + 1, close - i - 1);
        const std::pair<std::string, std::string>* field = nullptr;
        for (const auto& f : fields)
          if (f.first == name) field = &f;
        if (!field)
          return make_error(StatusCode::invalid_argument, "template names the field {%.64s}, which was not supplied",
                            name.c_str());
        result += field->second;
        i = close;
      } else {
        result += c;
      }
    }
    out = std::move(result);
    return Status::success();
  });
}

// The refinement prompt for one (question, previous solution, critique) triple.
inline Status refinement_prompt(const std::string& question, const std::string& solution,
                                const std::string& critique, std::string& prompt,
                                const std::string& templ = default_refinement_template()) {
  return no_throw("refinement_prompt", [&] {  // the field list copies the strings
    return fill_template(templ, {{"question", question}, {"solution", solution}, {"critique", critique}}, prompt);
  });
}

}  // namespace cgrpo::critique
