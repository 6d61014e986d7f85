"""The losses as torch.autograd.Functions over the ops, the log-prob pass, group advantages, metrics.

Each loss runs its op once: the forward computes the loss, the metrics and the gradient the backward
needs (dJ/dlogits, or dJ/dhidden, dJ/dweight, dJ/dbias for the fused LM head); the backward returns
grad_output times that gradient (no second pass, no double backward). The ops (torch.ops.cgrpo.*,
python/src/ops.cpp) are the layer to build on for anything this module does not do (e.g. reducing
the metrics tensor across ranks: its layout is cgrpo::flatten_metrics, include/cgrpo/loss/metric_names.hpp).
"""

import collections
import functools

import torch

from ._ops import ops
from .config import Config, _resolved, as_config

# The optional per-token outputs of a loss call (per-token shape: [T] or [B, L]).
TokenOutputs = collections.namedtuple("TokenOutputs", ["logp", "entropy", "policy_factor", "token_terms"])
TokenOutputs.__doc__ = """Per token: log p of the target, H of the row, the constant factor the policy loss
was multiplied by (verl's IS weight, TRL's sampler weight and masks; 1 where none, 0 at padding), and
the cgrpo::TermBit bits of the terms the token stayed in (1 policy, 2 entropy, 4 KL, 8 selected, ...)."""

_NAMINGS = ("cgrpo", "verl", "trl")


def _scaled_grads(grads, grad_loss):
    """What a loss Function's backward returns for the gradients its forward kept: each times the
    incoming grad_loss, or the kept tensor itself where grad_loss is 1 (loss.backward(): no second
    [T, V] buffer; autograd steals it as .grad when the graph is freed, copies it when retained)."""
    if grad_loss.numel() == 1 and grad_loss.item() == 1.0:
        return tuple(grads)
    return tuple(None if g is None else g * grad_loss for g in grads)


class Scale(collections.namedtuple("Scale", ["token_count", "sequence_count", "length", "nonempty_sequence_count"])):
    """The global counts of cgrpo::AggregationScale (0: from this batch): token-mean's N, seq-mean's B,
    seq-mean-token-sum-norm's L (verl's loss_scale_factor, TRL dr_grpo's B * max_completion_length) and
    verl's B+. With data parallelism pass the global values and sum the gradients across ranks."""

    __slots__ = ()

    def __new__(cls, token_count=0.0, sequence_count=0.0, length=0.0, nonempty_sequence_count=0.0):
        return super().__new__(cls, float(token_count), float(sequence_count), float(length),
                               float(nonempty_sequence_count))


def _scale_list(scale, where="cgrpo"):
    if scale is None:
        return []
    if isinstance(scale, Scale):
        return list(scale)
    if isinstance(scale, dict):
        unknown = set(scale) - set(Scale._fields)
        if unknown:
            raise ValueError("%s: scale has unknown keys %s (known: %s)" % (where, sorted(unknown), ", ".join(Scale._fields)))
        return list(Scale(**scale))
    raise TypeError("%s: scale must be None, a cgrpo.Scale or a dict of its fields, got %s" % (where, type(scale).__name__))


@functools.lru_cache(maxsize=512)
def metric_keys(config_text, naming):
    """[(index into the metrics tensor, name)] of the metrics this config logs under `naming`
    ("cgrpo", "verl" or "trl"; cgrpo::metric_key)."""
    out = []
    for line in ops.metric_keys(config_text, naming).splitlines():
        index, _, key = line.partition("\t")
        out.append((int(index), key))
    return tuple(out)


def _namings(names):
    if names == "all":
        return _NAMINGS
    if isinstance(names, str):
        names = (names,)
    for n in names:
        if n not in _NAMINGS:
            raise ValueError("cgrpo: metric names must be 'all' or among %s, got %r" % (_NAMINGS, n))
    return tuple(names)


def metrics_dict(values, config, names="all"):
    """The metrics tensor a loss op returns as {name: float}: under the library's own names (cgrpo),
    verl's ("actor/pg_loss", "rollout_corr/rollout_is_mean", ...) and / or TRL's ("entropy",
    "clip_ratio/low_mean", ..., "policy_loss"), as far as the config logs them."""
    text = as_config(config).text
    vals = values.tolist()
    out = {}
    for naming in _namings(names):
        for index, key in metric_keys(text, naming):
            v = vals[index]
            out[key] = int(v) if key.startswith("num_") else v
        if naming == "trl":  # TRL's policy_loss: J before the entropy bonus
            coef = dict(_resolved(text))["entropy.coef"]
            out["policy_loss"] = vals[0] + coef * vals[4]
    return out


def _check_tensor_arg(name, t, optional=False, where="cgrpo"):
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError("%s: %s must be a torch.Tensor%s, got %s" % (where, name, " or None" if optional else "",
                                                                     type(t).__name__))


def _token_counts(mask, token_counts, where="cgrpo"):
    """The valid tokens of each response for the whitened estimators: token_counts [B] as given, or
    from mask [B, L] (not both); None when neither is given."""
    if mask is not None and token_counts is not None:
        raise ValueError("%s: give mask or token_counts, not both" % where)
    if mask is None:
        return token_counts
    _check_tensor_arg("mask", mask, where=where)
    if mask.dim() != 2:
        raise ValueError("%s: mask must be [B, L], got shape %s" % (where, tuple(mask.shape)))
    return (mask != 0).sum(dim=-1)


class _PolicyLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets, text, scale,
                num_threads):
        loss, grad, metrics, logp, entropy, factor, terms = ops.policy_loss(
            logits, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets, text, scale, True,
            None, num_threads)
        ctx.save_for_backward(grad)  # an intermediate: freed with the graph (once_differentiable)
        ctx.mark_non_differentiable(metrics, logp, entropy, factor, terms)
        return loss, metrics, logp, entropy, factor, terms

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, *unused):
        return _scaled_grads(ctx.saved_tensors, grad_loss) + (None,) * 11


def policy_loss(logits, targets, mask, advantages, old_logp, *, ref_logp=None, rollout_logp=None, kinds=None,
                offsets=None, config=None, scale=None, metric_names="all", num_threads=0, return_token_outputs=False):
    """The fused loss J of docs/MATH.md from the logits, with the metrics, in one pass.

    logits: [T, V] or [B, L, V], float32 / float64 CPU, rows contiguous along V (never copied).
    targets, mask, old_logp, ref_logp, rollout_logp: per token, [T] or [B, L] (targets int32 / int64,
    mask bool / integer 0-1, the rest the logits' dtype). advantages, kinds: per token, or [B] per
    response with [B, L, V] logits. kinds: 1 marks refinement tokens (Critique-GRPO), None: all initial.
    offsets: [B + 1] rows of each response for [T, V] logits (needed by seq-mean aggregations and the
    row-level features). old_logp may be None in verl's bypass mode. config: a cgrpo.Config, its text,
    or None (the paper's defaults). scale: cgrpo.Scale / dict of global counts, or None.

    Returns (loss, metrics): loss a 0-dim tensor in the logits' dtype whose backward gives
    grad_output * dJ/dlogits; metrics a dict (metric_names: "all", "cgrpo", "verl", "trl" or a tuple of
    them). With return_token_outputs, (loss, metrics, TokenOutputs). Bad inputs raise (RuntimeError /
    ValueError naming the argument) before anything is computed or written.
    """
    for name, t in (("logits", logits), ("targets", targets), ("mask", mask), ("advantages", advantages)):
        _check_tensor_arg(name, t)
    for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp), ("rollout_logp", rollout_logp),
                    ("kinds", kinds), ("offsets", offsets)):
        _check_tensor_arg(name, t, optional=True)
    cfg = as_config(config)
    text = cfg.text
    scale_list = _scale_list(scale)
    if torch.is_grad_enabled() and logits.requires_grad:
        loss, metrics, logp, entropy, factor, terms = _PolicyLoss.apply(
            logits, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets, text, scale_list,
            num_threads)
    else:
        loss, _, metrics, logp, entropy, factor, terms = ops.policy_loss(
            logits, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets, text, scale_list, False,
            None, num_threads)
    m = metrics_dict(metrics, text, metric_names)
    if return_token_outputs:
        return loss, m, TokenOutputs(logp, entropy, factor, terms)
    return loss, m


class _FusedLinearPolicyLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets,
                text, scale, chunk_tokens, num_threads):
        want_h, want_w, want_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        loss, gh, gw, gb, metrics, logp, entropy, factor, terms = ops.fused_linear_policy_loss(
            hidden, weight, bias, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets, text,
            scale, want_h, want_w, want_b and bias is not None, chunk_tokens, num_threads)
        ctx.save_for_backward(gh if want_h else None, gw if want_w else None,
                              gb if want_b and bias is not None else None)
        ctx.mark_non_differentiable(metrics, logp, entropy, factor, terms)
        return loss, metrics, logp, entropy, factor, terms

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, *unused):
        return _scaled_grads(ctx.saved_tensors, grad_loss) + (None,) * 12


def fused_linear_policy_loss(hidden, weight, bias, targets, mask, advantages, old_logp, *, ref_logp=None,
                             rollout_logp=None, kinds=None, offsets=None, config=None, scale=None, chunk_tokens=0,
                             metric_names="all", num_threads=0, return_token_outputs=False):
    """policy_loss on the logits z = hidden @ weight.T + bias, formed one chunk of tokens at a time
    (cpu::fused_linear_policy_loss: the [T, V] logits never exist).

    hidden: [T, H] or [B, L, H]; weight: [V, H] (an nn.Linear's / lm_head's weight); bias: [V] or None;
    all float32 or all float64. chunk_tokens: rows of logits per chunk (0: a 256 MiB budget). The other
    arguments and the result are policy_loss's; the backward gives grad_output times dJ/dhidden,
    dJ/dweight and dJ/dbias (each computed only when that input requires grad).
    """
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets), ("mask", mask),
                    ("advantages", advantages)):
        _check_tensor_arg(name, t)
    for name, t in (("bias", bias), ("old_logp", old_logp), ("ref_logp", ref_logp), ("rollout_logp", rollout_logp),
                    ("kinds", kinds), ("offsets", offsets)):
        _check_tensor_arg(name, t, optional=True)
    text = as_config(config).text
    scale_list = _scale_list(scale)
    needs = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad or
                                         (bias is not None and bias.requires_grad))
    if needs:
        loss, metrics, logp, entropy, factor, terms = _FusedLinearPolicyLoss.apply(
            hidden, weight, bias, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets, text,
            scale_list, chunk_tokens, num_threads)
    else:
        loss, _, _, _, metrics, logp, entropy, factor, terms = ops.fused_linear_policy_loss(
            hidden, weight, bias, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets, text,
            scale_list, False, False, False, chunk_tokens, num_threads)
    m = metrics_dict(metrics, text, metric_names)
    if return_token_outputs:
        return loss, m, TokenOutputs(logp, entropy, factor, terms)
    return loss, m


def token_logprobs(logits, targets, temperature=1.0, *, entropy=True, logp_out=None, entropy_out=None, num_threads=0):
    """log p of each target and the entropy H of each row at `temperature` (verl's
    logprobs_from_logits / entropy_from_logits in one read of the logits): the old / reference
    log-prob pass. logits [T, V] or [B, L, V]; returns (logp, entropy) of the per-token shape (entropy
    None when entropy=False). No gradient (train with policy_loss). logp_out / entropy_out: your
    buffers, written only when the call succeeds."""
    _check_tensor_arg("logits", logits)
    _check_tensor_arg("targets", targets)
    with torch.no_grad():
        logp, ent = ops.token_logprobs(logits, targets, float(temperature), bool(entropy), logp_out, entropy_out,
                                       num_threads)
    return logp, (ent if entropy else None)


def linear_token_logprobs(hidden, weight, bias, targets, temperature=1.0, *, entropy=True, chunk_tokens=0,
                          num_threads=0):
    """token_logprobs on z = hidden @ weight.T + bias, one chunk of logits at a time."""
    _check_tensor_arg("hidden", hidden)
    _check_tensor_arg("weight", weight)
    _check_tensor_arg("bias", bias, optional=True)
    _check_tensor_arg("targets", targets)
    with torch.no_grad():
        logp, ent = ops.linear_token_logprobs(hidden, weight, bias, targets, float(temperature), bool(entropy),
                                              chunk_tokens, num_threads)
    return logp, (ent if entropy else None)


def group_advantages(rewards, group_ids, config=None, *, mask=None, token_counts=None, weights=None):
    """One advantage per response from its group's rewards, by the config's advantage.* settings
    (grpo, grpo_no_std, rloo, reinforce_pp_baseline, grpo_batch_std, gdpo). rewards [B] float; group_ids
    [B] int (groups may be ragged and interleaved). reinforce_pp_baseline and gdpo whiten over the
    valid tokens: give mask [B, L] or token_counts [B]. gdpo's reward components: rewards [B, K] with
    weights [K] (None: all 1). Returns [B] in the rewards' dtype."""
    _check_tensor_arg("rewards", rewards)
    _check_tensor_arg("group_ids", group_ids)
    token_counts = _token_counts(mask, token_counts)
    if weights is not None and not isinstance(weights, torch.Tensor):
        weights = torch.tensor(weights, dtype=torch.float64)
    with torch.no_grad():
        return ops.group_advantages(rewards, group_ids, as_config(config).text, token_counts, weights)


__all__ = ["Config", "Scale", "TokenOutputs", "policy_loss", "fused_linear_policy_loss", "token_logprobs",
           "linear_token_logprobs", "group_advantages", "metrics_dict", "metric_keys"]
