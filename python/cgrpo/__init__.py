"""cgrpo: Critique-GRPO and the GRPO family of policy losses (verl's, TRL's, the paper's) as torch ops.

    import cgrpo, torch
    loss, metrics = cgrpo.policy_loss(logits, targets, mask, advantages, old_logp,
                                      config=cgrpo.Config.preset("verl/grpo"), ref_logp=ref_logp)
    loss.backward()                       # grad_output * dJ/dlogits, computed in the same pass
    metrics["actor/pg_clipfrac"]          # verl's names; TRL's ("clip_ratio/low_mean") and cgrpo's too

The C++ library (header-only, include/cgrpo) does the work; this package registers its ops
(torch.ops.cgrpo.*) and wraps them. Drop-ins: cgrpo.verl (verl's actor loss), cgrpo.trl (TRL's GRPO
loss from the last hidden states and the LM head). The CPU path: float32 / float64 CPU tensors.
"""

from ._ops import library_path, ops
from .config import Config, presets
from .losses import (Scale, TokenOutputs, fused_linear_policy_loss, group_advantages, linear_token_logprobs,
                     metric_keys, metrics_dict, policy_loss, token_logprobs)

from . import trl, verl  # noqa: E402  (the drop-ins use the names above)

__all__ = ["Config", "Scale", "TokenOutputs", "policy_loss", "fused_linear_policy_loss", "token_logprobs",
           "linear_token_logprobs", "group_advantages", "metrics_dict", "metric_keys", "presets", "ops",
           "library_path", "verl", "trl"]
__version__ = "0.1.0"
