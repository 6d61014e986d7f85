// cgrpo/cgrpo.hpp: the umbrella header of the host library (CPU path and critique stage).
// CUDA kernels live in kernels/ and are included separately by CUDA translation units.
#pragma once

#include "cgrpo/advantages.hpp"
#include "cgrpo/aggregation.hpp"
#include "cgrpo/config.hpp"
#include "cgrpo/entropy_mask.hpp"
#include "cgrpo/layout.hpp"
#include "cgrpo/macros.hpp"
#include "cgrpo/metrics.hpp"
#include "cgrpo/policy_loss_batch.hpp"
#include "cgrpo/presets.hpp"
#include "cgrpo/status.hpp"
#include "cgrpo/token_loss.hpp"
#include "cgrpo/token_math.hpp"
#include "cgrpo/trl_advantages.hpp"
#include "cgrpo/cpu/fused_policy_loss.hpp"
#include "cgrpo/cpu/token_logprobs.hpp"
#include "cgrpo/critique/critique_stage.hpp"
#include "cgrpo/parallel/global_scale.hpp"
#include "cgrpo/parallel/group_stats.hpp"
#include "cgrpo/parallel/metrics_reduce.hpp"
#include "cgrpo/parallel/vocab_parallel.hpp"
