// cgrpo/presets/paper.hpp: the Critique-GRPO paper's released configuration (its verl fork).
#pragma once

#include "cgrpo/presets/recipe.hpp"

namespace cgrpo {

// grpo_no_std advantages, no clipping (-A r), gamma 0.1, entropy 0.001 token-mean (N + 1e-8),
// policy term seq-mean-token-sum-norm (sum / L), no KL: LossConfig's and AdvantageConfig's defaults.
inline Recipe paper_critique_grpo() { return Recipe{}; }

inline constexpr PresetEntry kPaperPresets[] = {
    {"paper/critique_grpo", "the Critique-GRPO paper's released runs (arXiv 2506.03106)", paper_critique_grpo},
};

}  // namespace cgrpo
