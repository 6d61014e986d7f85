// cgrpo/critique/critique_stage.hpp: the umbrella header of the critique stage (host side).
// Critiques, the refinement prompt, refinement selection and group assembly.
#pragma once

#include "cgrpo/critique/critique.hpp"
#include "cgrpo/critique/group_assembly.hpp"
#include "cgrpo/critique/prompt_template.hpp"
#include "cgrpo/critique/refinement_selection.hpp"
