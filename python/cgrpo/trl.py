"""A drop-in for TRL's GRPO loss (``GRPOTrainer._compute_loss``) from the model's last hidden states and
its LM head, with GRPOConfig's field names: the [B, C, V] logits never exist.

    from cgrpo import trl as ctrl
    loss, metrics = ctrl.grpo_loss(hidden_states, model.lm_head.weight, completion_ids, completion_mask,
                                   advantages, old_per_token_logps, args=grpo_config,  # or keywords
                                   ref_per_token_logps=ref_per_token_logps)
    loss.backward()                     # reaches hidden_states (the model) and lm_head.weight
    metrics["clip_ratio/region_mean"], metrics["entropy"], metrics["kl"], ...

TRL's own advantage computation from rewards is ``advantages(rewards, num_generations, scale_rewards)``.
"""

import torch

from ._errors import argument_names
from .config import Config
from .losses import Scale, fused_linear_policy_loss, group_advantages, linear_token_logprobs, policy_loss

# GRPOConfig fields this loss reads (cgrpo::TrlOptions, plus entropy_coef): read from `args` when it
# has them, overridden by keywords.
_GRPO_FIELDS = ("loss_type", "importance_sampling_level", "epsilon", "epsilon_high", "delta", "beta",
                "use_bias_correction_kl", "scale_rewards", "use_vllm", "vllm_importance_sampling_correction",
                "vllm_importance_sampling_mode", "vllm_importance_sampling_clip_min",
                "vllm_importance_sampling_clip_max", "off_policy_mask_threshold", "top_entropy_quantile",
                "sapo_temperature_pos", "sapo_temperature_neg", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg",
                "vespo_lambda_neg", "temperature", "entropy_coef")
# The ops' argument names as grpo_loss / grpo_loss_from_logits call them (in error messages).
_NAMES = {"target_ids": "completion_ids", "mask": "completion_mask", "old_logp": "old_per_token_logps",
          "ref_logp": "ref_per_token_logps", "rollout_logp": "sampling_per_token_logps", "hidden": "hidden_states",
          "weight": "lm_head_weight", "bias": "lm_head_bias"}
# The loss types TRL divides by num_items_in_batch / num_processes.
_TOKEN_COUNT_LOSS_TYPES = ("dapo", "cispo", "vespo")
# Batch values of GRPOConfig (not loss config).
_BATCH_FIELDS = ("max_completion_length",)


def _get(obj, name):
    if obj is None:
        return _MISSING
    if isinstance(obj, dict):
        return obj.get(name, _MISSING)
    return getattr(obj, name, _MISSING)


_MISSING = object()


def options_from_args(args=None, **overrides):
    """GRPOConfig's loss fields (a dict, TrlOptions names) from a GRPOConfig-like `args` (an object or a
    dict) and keyword overrides; scale_rewards True / False are TRL's old spellings of group / none."""
    opts = {}
    for name in _GRPO_FIELDS:
        v = _get(args, name)
        if v is not _MISSING:
            opts[name] = v
    unknown = set(overrides) - set(_GRPO_FIELDS) - set(_BATCH_FIELDS)
    if unknown:
        raise TypeError("cgrpo.trl: unknown GRPOConfig field(s) %s (known: %s)"
                        % (sorted(unknown), ", ".join(_GRPO_FIELDS + _BATCH_FIELDS)))
    opts.update({k: v for k, v in overrides.items() if k in _GRPO_FIELDS})
    if isinstance(opts.get("scale_rewards"), bool):
        opts["scale_rewards"] = "group" if opts["scale_rewards"] else "none"
    return opts


def make_config(args=None, **overrides):
    """The cgrpo.Config of GRPOConfig's loss fields (options_from_args): Config.trl(**options)."""
    return Config.trl(**options_from_args(args, **overrides))


def _scale(cfg, args, overrides, batch_size, num_items_in_batch, num_processes):
    length = 0.0
    if cfg["aggregation.policy"] == "seq-mean-token-sum-norm":  # dr_grpo: B * max_completion_length
        mcl = overrides.get("max_completion_length", _get(args, "max_completion_length"))
        if mcl is _MISSING or mcl is None:
            raise ValueError("cgrpo.trl: loss_type dr_grpo divides by B * max_completion_length: pass "
                             "max_completion_length (or args with it)")
        length = float(batch_size) * float(mcl)
    token_count = 0.0
    loss_type = overrides.get("loss_type", _get(args, "loss_type"))
    if loss_type is _MISSING:
        loss_type = "dapo"  # GRPOConfig's default
    # dapo / cispo / vespo divide by num_items_in_batch / num_processes; TRL ignores it for the others
    # (bnpo, token-mean too, divides by this batch's completion_mask.sum()).
    if num_items_in_batch is not None and loss_type in _TOKEN_COUNT_LOSS_TYPES:
        n = num_items_in_batch.item() if isinstance(num_items_in_batch, torch.Tensor) else num_items_in_batch
        token_count = float(n) / float(num_processes)
    if length == 0.0 and token_count == 0.0:
        return None
    return Scale(token_count=token_count, length=length)


def grpo_loss(hidden_states, lm_head_weight, completion_ids, completion_mask, advantages,
              old_per_token_logps=None, *, lm_head_bias=None, ref_per_token_logps=None, sampling_per_token_logps=None,
              num_items_in_batch=None, num_processes=1, args=None, chunk_tokens=0, return_token_outputs=False,
              **grpo_config):
    """TRL's GRPO loss from the last hidden states [B, C, H] at the completion positions (the ones
    whose logits predict completion_ids [B, C]) and the LM head (lm_head_weight [V, H], lm_head_bias
    [V] or None). advantages [B] (or [B, C]); completion_mask [B, C]; old_per_token_logps None:
    on-policy (TRL's per_token_logps.detach(): one extra log-prob pass over the head);
    ref_per_token_logps when beta != 0; sampling_per_token_logps: vLLM's log-probs (use_vllm with
    vllm_importance_sampling_correction). args: a GRPOConfig (or a dict); keywords: its fields by name
    (loss_type, beta, epsilon, epsilon_high, importance_sampling_level, top_entropy_quantile, ...,
    max_completion_length for dr_grpo). num_items_in_batch: TRL's input of that name (dapo, cispo,
    vespo divide by it over num_processes; the other loss types ignore it, as TRL does).

    Returns (loss, metrics) with TRL's metric names; the loss's backward gives dJ/dhidden_states,
    dJ/dlm_head_weight (and dJ/dlm_head_bias).
    """
    with argument_names(_NAMES):
        cfg = make_config(args, **grpo_config)
        old = old_per_token_logps
        if old is None:
            with torch.no_grad():
                old, _ = linear_token_logprobs(hidden_states.detach(), lm_head_weight.detach(),
                                               None if lm_head_bias is None else lm_head_bias.detach(), completion_ids,
                                               cfg["temperature"], entropy=False, chunk_tokens=chunk_tokens)
        scale = _scale(cfg, args, grpo_config, completion_ids.shape[0], num_items_in_batch, num_processes)
        return fused_linear_policy_loss(hidden_states, lm_head_weight, lm_head_bias, completion_ids, completion_mask,
                                        advantages, old, ref_logp=ref_per_token_logps,
                                        rollout_logp=sampling_per_token_logps, config=cfg, scale=scale,
                                        chunk_tokens=chunk_tokens, metric_names="trl",
                                        return_token_outputs=return_token_outputs)


def grpo_loss_from_logits(logits, completion_ids, completion_mask, advantages, old_per_token_logps=None, *,
                          ref_per_token_logps=None, sampling_per_token_logps=None, num_items_in_batch=None,
                          num_processes=1, args=None, return_token_outputs=False, **grpo_config):
    """grpo_loss on logits [B, C, V] (before the temperature) instead of the hidden states and the head."""
    with argument_names(_NAMES):
        cfg = make_config(args, **grpo_config)
        old = old_per_token_logps
        if old is None:
            from .losses import token_logprobs
            old, _ = token_logprobs(logits.detach(), completion_ids, cfg["temperature"], entropy=False)
        scale = _scale(cfg, args, grpo_config, completion_ids.shape[0], num_items_in_batch, num_processes)
        return policy_loss(logits, completion_ids, completion_mask, advantages, old, ref_logp=ref_per_token_logps,
                           rollout_logp=sampling_per_token_logps, config=cfg, scale=scale, metric_names="trl",
                           return_token_outputs=return_token_outputs)


def advantages(rewards, num_generations, scale_rewards="group"):
    """TRL's advantages of one reward per completion: groups are contiguous blocks of num_generations;
    scale_rewards "group" ((R - mean_g) / (std_g + 1e-4)), "batch" (std over the batch) or "none"."""
    if isinstance(scale_rewards, bool):
        scale_rewards = "group" if scale_rewards else "none"
    B = rewards.shape[0]
    if num_generations <= 0 or B % num_generations:
        raise ValueError("cgrpo.trl: rewards [%d] is not a whole number of groups of num_generations = %d"
                         % (B, num_generations))
    ids = torch.arange(B, dtype=torch.int64) // num_generations
    return group_advantages(rewards, ids, Config.trl(scale_rewards=scale_rewards))


__all__ = ["grpo_loss", "grpo_loss_from_logits", "advantages", "options_from_args", "make_config"]
