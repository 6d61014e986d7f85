// cgrpo/presets/presets.hpp: every preset (the paper's, verl's, TRL's), the registry by name and the
// parsers of verl's and TRL's option strings.
#pragma once

#include "cgrpo/presets/paper.hpp"
#include "cgrpo/presets/recipe.hpp"
#include "cgrpo/presets/registry.hpp"
#include "cgrpo/presets/trl_options.hpp"
#include "cgrpo/presets/trl_presets.hpp"
#include "cgrpo/presets/verl_options.hpp"
#include "cgrpo/presets/verl_presets.hpp"
