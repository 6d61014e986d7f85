// cgrpo/presets/recipe.hpp: what a preset gives: the loss config and the advantage settings of one
// peer recipe, and the entry a preset has in the registry (presets/registry.hpp).
#pragma once

#include "cgrpo/advantages/group_advantages.hpp"
#include "cgrpo/loss/config.hpp"

namespace cgrpo {

struct Recipe {
  LossConfig loss;
  AdvantageConfig advantage;
};

// One named preset: "peer/recipe" (e.g. "verl/grpo"), what it reproduces, and its function.
struct PresetEntry {
  const char* name;
  const char* summary;
  Recipe (*make)();
};

}  // namespace cgrpo
