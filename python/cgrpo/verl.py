"""A drop-in for verl's actor loss: the policy loss, entropy bonus and KL loss of verl's actor (its
``compute_policy_loss_<loss_mode>`` + ``agg_loss`` + ``kl_penalty``, and the rollout correction) from the
response logits (or the last hidden states and the LM head), with verl's argument and option names.

    from cgrpo import verl as cverl
    loss, metrics = cverl.actor_loss(logits, responses, old_log_prob, advantages, response_mask,
                                     config=actor_config,            # verl's actor config (or keywords)
                                     ref_log_prob=ref_log_prob, temperature=1.0)
    loss.backward()
    metrics["actor/pg_loss"], metrics["actor/pg_clipfrac"], metrics["actor/ppo_kl"], ...

The loss is verl's ``policy_loss = pg_loss - entropy_coeff * entropy + kl_loss_coef * kl_loss``; the
metrics carry verl's names (actor/*, rollout_corr/*). ``actor`` picks the conventions of verl's engine
actor (verl-project/verl 1dda039, the default) or of the legacy dp_actor (volcengine/verl b178a3c):
docs/peers.md. Gradients are meant to be summed across ranks: pass verl's global batch info
(batch_num_tokens, global_batch_size) and apply no dp_size factor.
"""

import torch

from ._errors import argument_names
from .config import Config
from .losses import Scale, fused_linear_policy_loss, group_advantages, linear_token_logprobs, policy_loss, token_logprobs

# VerlOptions fields read from verl's actor config (ActorConfig / its yaml): the name in the config,
# then where else verl keeps it (actor.policy_loss.*).
_ACTOR_FIELDS = ("clip_ratio", "clip_ratio_low", "clip_ratio_high", "clip_ratio_c", "loss_agg_mode", "entropy_coeff",
                 "use_kl_loss", "kl_loss_coef", "kl_loss_type", "tau_pos", "tau_neg", "kl_cov_ratio", "ppo_kl_coef",
                 "clip_cov_ratio", "clip_cov_lb", "clip_cov_ub", "dro_beta", "loss_mode")
# algorithm.rollout_correction fields (VerlOptions names).
_ROLLOUT_FIELDS = ("rollout_is", "rollout_is_threshold", "rollout_is_batch_normalize", "rollout_rs",
                   "rollout_rs_threshold", "bypass_mode", "loss_type")


# The ops' argument names as actor_loss / actor_loss_from_hidden call them (in error messages).
_NAMES = {"target_ids": "responses", "mask": "response_mask", "old_logp": "old_log_prob", "ref_logp": "ref_log_prob",
          "rollout_logp": "rollout_log_probs", "hidden": "hidden_states", "weight": "lm_head_weight",
          "bias": "lm_head_bias"}


def _get(obj, name):
    """obj.name or obj[name] (dataclass, OmegaConf DictConfig or dict), or a missing marker."""
    if obj is None:
        return _MISSING
    if isinstance(obj, dict):
        return obj.get(name, _MISSING)
    try:
        return obj[name]  # DictConfig
    except Exception:  # noqa: BLE001 (any container)
        return getattr(obj, name, _MISSING)


_MISSING = object()


def options_from_config(config=None, rollout_correction=None, **overrides):
    """The cgrpo::VerlOptions fields (a dict) of a verl actor config (actor_rollout_ref.actor: an
    ActorConfig, a DictConfig or a dict; its policy_loss.* too), algorithm.rollout_correction, and
    keyword overrides with the same names (loss_mode, clip_ratio, temperature, adv_estimator, actor, ...)."""
    opts = {}
    policy_loss_cfg = _get(config, "policy_loss")
    for name in _ACTOR_FIELDS:
        v = _get(config, name)
        if v is _MISSING and policy_loss_cfg is not _MISSING:
            v = _get(policy_loss_cfg, name)
        if v is not _MISSING:
            opts[name] = v
    for name in _ROLLOUT_FIELDS:
        v = _get(rollout_correction, name)
        if v is not _MISSING:
            opts[name] = v
    opts.update(overrides)
    return opts


def make_config(config=None, rollout_correction=None, **overrides):
    """The cgrpo.Config of verl's options (options_from_config): Config.verl(**options)."""
    return Config.verl(**options_from_config(config, rollout_correction, **overrides))


def _scale(loss_scale_factor, batch_num_tokens, global_batch_size):
    if loss_scale_factor is None and batch_num_tokens is None and global_batch_size is None:
        return None
    return Scale(token_count=batch_num_tokens or 0, sequence_count=global_batch_size or 0,
                 length=loss_scale_factor or 0)


def _old(old_log_prob, cfg, logp_fn):
    if old_log_prob is not None:
        return old_log_prob
    if cfg["off_policy.rollout.mode"] == "bypass":
        return None  # bypass mode: the ratio is taken against rollout_log_probs
    # verl on a fully on-policy step: old_log_prob = log_prob.detach() (ratio 1)
    return logp_fn()


def actor_loss(logits, responses, old_log_prob, advantages, response_mask, *, config=None, rollout_correction=None,
               ref_log_prob=None, rollout_log_probs=None, temperature=1.0, loss_scale_factor=None,
               batch_num_tokens=None, global_batch_size=None, return_token_outputs=False, **options):
    """verl's actor loss from the response logits.

    logits [B, L, V] (the logits of the response positions, before dividing by the temperature),
    responses [B, L] (the token ids), old_log_prob / ref_log_prob / rollout_log_probs [B, L] (verl's
    batch keys), advantages [B, L] or [B], response_mask [B, L]. config: verl's actor config (see
    options_from_config); rollout_correction: algorithm.rollout_correction; options: VerlOptions fields
    by name, overriding the config (loss_mode="gspo", loss_agg_mode="seq-mean-token-mean",
    actor="legacy_dp_actor", ...). temperature: rollout.temperature. loss_scale_factor,
    batch_num_tokens, global_batch_size: verl's global batch info (None: this batch).
    old_log_prob None: on-policy (verl's log_prob.detach(); in bypass mode rollout_log_probs).

    Returns (loss, metrics) with verl's metric names; the loss's backward gives dJ/dlogits.
    """
    with argument_names(_NAMES):
        cfg = make_config(config, rollout_correction, temperature=temperature, **options)
        old = _old(old_log_prob, cfg,
                   lambda: token_logprobs(logits.detach(), responses, cfg["temperature"], entropy=False)[0])
        return policy_loss(logits, responses, response_mask, advantages, old, ref_logp=ref_log_prob,
                           rollout_logp=rollout_log_probs, config=cfg,
                           scale=_scale(loss_scale_factor, batch_num_tokens, global_batch_size), metric_names="verl",
                           return_token_outputs=return_token_outputs)


def actor_loss_from_hidden(hidden_states, lm_head_weight, responses, old_log_prob, advantages, response_mask, *,
                           lm_head_bias=None, config=None, rollout_correction=None, ref_log_prob=None,
                           rollout_log_probs=None, temperature=1.0, loss_scale_factor=None, batch_num_tokens=None,
                           global_batch_size=None, chunk_tokens=0, return_token_outputs=False, **options):
    """actor_loss on the logits hidden_states @ lm_head_weight.T (+ lm_head_bias), formed one chunk of
    tokens at a time (the [B, L, V] logits never exist). hidden_states [B, L, H]: the last hidden
    states at the response positions; the backward reaches hidden_states, lm_head_weight and
    lm_head_bias."""
    with argument_names(_NAMES):
        cfg = make_config(config, rollout_correction, temperature=temperature, **options)
        old = _old(old_log_prob, cfg, lambda: linear_token_logprobs(
            hidden_states.detach(), lm_head_weight.detach(), None if lm_head_bias is None else lm_head_bias.detach(),
            responses, cfg["temperature"], entropy=False, chunk_tokens=chunk_tokens)[0])
        return fused_linear_policy_loss(hidden_states, lm_head_weight, lm_head_bias, responses, response_mask,
                                        advantages, old, ref_logp=ref_log_prob, rollout_logp=rollout_log_probs,
                                        config=cfg, scale=_scale(loss_scale_factor, batch_num_tokens, global_batch_size),
                                        chunk_tokens=chunk_tokens, metric_names="verl",
                                        return_token_outputs=return_token_outputs)


def compute_grpo_outcome_advantage(token_level_rewards, response_mask, index, epsilon=1e-6,
                                   norm_adv_by_std_in_grpo=True):
    """verl's compute_grpo_outcome_advantage: scores = token_level_rewards.sum(-1), grouped by the
    prompt uid `index` (any hashable per row), (score - mean) / (std + epsilon) (unbiased std; a
    one-member group: mean 0, std 1), broadcast over the response. Returns (advantages, returns),
    both [B, L] (verl returns the same tensor twice)."""
    scores = token_level_rewards.sum(dim=-1)
    uid = {}
    ids = torch.tensor([uid.setdefault(k, len(uid)) for k in list(index)], dtype=torch.int64)
    cfg = Config.verl(adv_estimator="grpo", norm_adv_by_std_in_grpo=bool(norm_adv_by_std_in_grpo)).set(
        "advantage.eps", float(epsilon))
    adv = group_advantages(scores, ids, cfg)
    out = adv.unsqueeze(-1) * response_mask.to(adv.dtype)
    return out, out


__all__ = ["actor_loss", "actor_loss_from_hidden", "options_from_config", "make_config",
           "compute_grpo_outcome_advantage"]
