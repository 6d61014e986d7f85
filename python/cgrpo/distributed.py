"""cgrpo over torch.distributed: data parallelism and vocabulary (tensor) parallelism through a process group.

Data parallelism (each rank holds some responses; a group's responses may sit on several ranks)::

    import cgrpo, cgrpo.distributed as cd
    adv = cd.group_advantages(rewards, group_ids, config, mask=mask)      # global group statistics
    loss, metrics = cd.policy_loss(logits, targets, mask, adv, old_logp, config=config, offsets=offsets)
    loss.backward()                          # this rank's part: the sum over ranks is the one-process loss
    cd.all_reduce_gradients(model.parameters())   # SUM (DDP averages: use loss * world_size with DDP)
    metrics["actor/pg_clipfrac"]             # the whole batch's (every rank logs the same values)

Vocabulary parallelism (the LM head split by rows, the logits by columns; every rank holds every token)::

    start, size = cd.vocab_shard(V, tp_group)                        # this rank's rows [start, start + size)
    loss, metrics = cd.vocab_parallel_linear_policy_loss(h, W[start:start + size], None, targets, mask, adv,
                                                         old_logp, vocab_start=start, vocab_size=V, group=tp_group)
    loss.backward()   # dJ/dW of the local rows, dJ/dh of the whole head (all-reduced in the group)

What crosses the group, as include/cgrpo/parallel/ defines it (docs/embedding.md, sections 2, 3 and 8):
  data parallel    per group: count, sum(R - shift), sum((R - shift)^2) -> SUM; max R, -min R -> MAX
                   (reinforce_pp_baseline, gdpo: + (tokens, sum n A, sum n A^2) -> SUM, then the whitening);
                   tokens, responses, responses with a valid token -> SUM; the longest response -> MAX
                   (the AggregationScale every rank's weights use); the metric sums -> SUM (TRL's
                   clip_ratio/* as TRL logs them across processes: mean, min and max of the ranks' values);
                   the parameters' gradients -> SUM (all_reduce_gradients).
  vocab parallel   per token: the shard's row max -> MAX; (sum_exp, sum_exp_u) rebased to it, and the
                   target logit (on the rank holding the target, 0 elsewhere) -> SUM; 32 bytes a token.
                   The LM-head variant then all-reduces dJ/dhidden (SUM).

Devices: the ops are the CPU path (float32 / float64 CPU tensors). The collectives run on any backend:
over gloo on the CPU tensors themselves; over NCCL the statistics (O(G), O(T)) and the gradients
reduced here are copied to the current CUDA device for the collective and back (call
torch.cuda.set_device(local_rank) first). CUDA logits are refused by the ops, by name.

Batch couplings the library does not reduce across ranks stay per rank: the covariance selections of
verl/kl_cov and verl/clip_cov pick among each rank's tokens (as verl's per-rank loss does), and the
batch-level quantile and normalisation features see the rank's shard.

Every rank of a group must call each function with the same config, the same dtypes and the same
requires_grad pattern (each function runs a fixed sequence of collectives; a rank that skips one makes
the others wait until the group's timeout).
"""

import functools

import torch
import torch.distributed as dist

from ._ops import ops
from .config import as_config
from .losses import Scale, TokenOutputs, _check_tensor_arg, _scaled_grads, _token_counts, metrics_dict
from .losses import _scale_list as _losses_scale_list

SUM = dist.ReduceOp.SUM
MAX = dist.ReduceOp.MAX

# The TRL metrics TRL itself reduces across processes by the ranks' values (GRPOTrainer: gather, then
# nanmean / nanmin / nanmax), not from sums: (cgrpo metric name, how).
_TRL_RANK_METRICS = (("clip_ratio_low_mean", "mean"), ("clip_ratio_high_mean", "mean"),
                     ("clip_ratio_region_mean", "mean"), ("clip_ratio_low_min", "min"),
                     ("clip_ratio_high_max", "max"))
_WHITENED = ("reinforce_pp_baseline", "gdpo")


def _device(group):
    """Where the group's collectives run: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend(group) == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(tensor, op, group, what):
    """tensor <- op over the group's ranks, in place (and returned). `what` names the reduction (the
    tests inject faults by it). A tensor not on the group's device crosses it through a copy."""
    device = _device(group)
    if tensor.device == device:
        dist.all_reduce(tensor, op=op, group=group)
        return tensor
    staged = tensor.to(device)
    dist.all_reduce(staged, op=op, group=group)
    tensor.copy_(staged)
    return tensor


def _world(group):
    return dist.get_world_size(group)


_WHERE = "cgrpo.distributed"
_check_tensor = functools.partial(_check_tensor_arg, where=_WHERE)
_scale_list = functools.partial(_losses_scale_list, where=_WHERE)


# ------------------------------------------------------------------------------------------------
# Data parallelism: the global statistics.

def global_scale(mask, offsets=None, *, group=None, length=0.0):
    """The AggregationScale of the whole batch across the group (cgrpo.Scale: token count, responses,
    longest response, responses with a valid token), from this rank's mask [B, L] (padded rows) or
    mask [T] with offsets [B + 1] (packed; without offsets only the token count is known, enough for
    token-mean / token-sum). `length` > 0 overrides the longest response (Dr. GRPO's / the paper's
    configured max response length). Two collectives (SUM, MAX); every rank gets the same Scale."""
    _check_tensor("mask", mask)
    _check_tensor("offsets", offsets, optional=True)
    p = ops.aggregation_partials(mask, offsets)  # token_count, sequence_count, nonempty, max_length
    counts = p[:3].clone()
    longest = p[3:].clone()
    _all_reduce(counts, SUM, group, "aggregation counts")
    _all_reduce(longest, MAX, group, "aggregation max length")
    c = counts.tolist()
    return Scale(token_count=c[0], sequence_count=c[1], length=length if length > 0 else longest.item(),
                 nonempty_sequence_count=c[2])


def group_advantages(rewards, group_ids, config=None, *, num_groups=None, mask=None, token_counts=None, shift=0.0,
                     group=None):
    """One advantage per response of this rank, from its group's statistics over the whole batch
    (parallel/group_stats.hpp): equal, to rounding, to cgrpo.group_advantages on the gathered batch.

    rewards [B_local] float; group_ids [B_local] GLOBAL group ids (a group's members may be on several
    ranks); num_groups: the global G (None: one extra MAX collective finds it). The config's
    advantage.estimator: grpo, grpo_no_std, rloo, reinforce_pp_baseline, gdpo (one reward component;
    the last two whiten over the valid tokens: give mask [B_local, L] or token_counts [B_local]).
    shift: any value near the rewards, the same on every rank (0 for rewards in [0, 1]); it keeps the
    one-pass variance accurate. Returns [B_local] in the rewards' dtype. CPU tensors."""
    _check_tensor("rewards", rewards)
    _check_tensor("group_ids", group_ids)
    cfg = as_config(config)
    text = cfg.text
    if num_groups is None:
        g = torch.tensor([int(group_ids.max().item()) + 1 if group_ids.numel() else 0], dtype=torch.float64)
        _all_reduce(g, MAX, group, "number of groups")
        num_groups = int(g.item())
    sums, extrema = ops.group_partial_stats(rewards, group_ids, int(num_groups), float(shift))
    _all_reduce(sums, SUM, group, "group sums")
    _all_reduce(extrema, MAX, group, "group extrema")
    adv = ops.group_advantages_from_stats(rewards, group_ids, sums, extrema, float(shift), text)
    if cfg.resolved()["advantage.estimator"] in _WHITENED:
        token_counts = _token_counts(mask, token_counts, where=_WHERE)
        if token_counts is None:
            raise ValueError("cgrpo.distributed: advantage.estimator %s whitens over the valid tokens: give mask "
                             "[B, L] or token_counts [B]" % cfg.resolved()["advantage.estimator"])
        w = ops.whitening_partial_stats(token_counts, adv)
        _all_reduce(w, SUM, group, "whitening sums")
        adv = ops.whiten_from_stats(adv, w, text)
    return adv


def reduce_metrics(metrics, config=None, *, group=None):
    """The flat metrics tensor of a loss op (torch.ops.cgrpo.*; cgrpo::flatten_metrics order) of this
    rank's shard -> that of the whole batch: the losses, pg_clipfrac(_lower), ppo_kl and the ratio,
    entropy, KL and refinement-prob means and the counts from their sums (parallel/metrics_reduce.hpp:
    the one-process values); TRL's clip_ratio/* as TRL reduces them across processes (the mean, min,
    max of the ranks' values). The rest (vespo_phi_mean, rollout_corr/*, sampling/*) stay this rank's
    own. Two collectives."""
    text = as_config(config).text
    mean_eps = float(as_config(config).resolved()["metrics.mean_eps"])
    sums = ops.metric_sums(metrics, mean_eps)
    _all_reduce(sums, SUM, group, "metric sums")
    out = ops.metrics_from_sums(sums, metrics, mean_eps)
    # TRL's per-rank values: (sum of the finite ones, how many) -> SUM, (max, -min) -> MAX.
    index = {name: i for i, name in _metric_names(text)}
    ranked = [(index[n], how) for n, how in _TRL_RANK_METRICS if n in index]
    if ranked:
        vals = [float(metrics[i]) for i, _ in ranked]
        fin = [v == v and abs(v) != float("inf") for v in vals]
        s = torch.tensor([v if f else 0.0 for v, f in zip(vals, fin)] + [1.0 if f else 0.0 for f in fin],
                         dtype=torch.float64)
        m = torch.tensor([(v if how == "max" else -v) if f else -float("inf")
                          for v, f, (_, how) in zip(vals, fin, ranked)], dtype=torch.float64)
        _all_reduce(s, SUM, group, "TRL rank metrics (sums)")
        _all_reduce(m, MAX, group, "TRL rank metrics (extrema)")
        n = len(ranked)
        for k, (i, how) in enumerate(ranked):
            if how == "mean":
                out[i] = s[k] / s[n + k] if s[n + k] > 0 else float("nan")
            else:
                out[i] = m[k] if how == "max" else -m[k]
    return out


def _metric_names(text):
    from .losses import metric_keys
    return metric_keys(text, "cgrpo")


def all_reduce_gradients(parameters, *, group=None):
    """Sums .grad of each parameter over the group (in place): with the losses of this module, the sum
    over ranks is the one-process gradient. (torch DDP averages instead: with DDP, backward
    loss * world_size.) Parameters without a gradient must be without one on every rank."""
    for p in parameters:
        if p.grad is not None:
            _all_reduce(p.grad, SUM, group, "gradients")


# ------------------------------------------------------------------------------------------------
# Data parallelism: the losses.

class _PolicyLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets, text, scale,
                num_threads):
        loss, grad, metrics, logp, entropy, factor, terms = ops.policy_loss(
            logits, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets, text, scale, True,
            None, num_threads)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(metrics, logp, entropy, factor, terms)
        return loss, metrics, logp, entropy, factor, terms

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, *unused):
        return _scaled_grads(ctx.saved_tensors, grad_loss) + (None,) * 11


class _FusedLinearPolicyLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets,
                text, scale, chunk_tokens, num_threads):
        want = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and bias is not None)
        loss, gh, gw, gb, metrics, logp, entropy, factor, terms = ops.fused_linear_policy_loss(
            hidden, weight, bias, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets, text,
            scale, want[0], want[1], want[2], chunk_tokens, num_threads)
        ctx.save_for_backward(gh if want[0] else None, gw if want[1] else None, gb if want[2] else None)
        ctx.mark_non_differentiable(metrics, logp, entropy, factor, terms)
        return loss, metrics, logp, entropy, factor, terms

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, *unused):
        return _scaled_grads(ctx.saved_tensors, grad_loss) + (None,) * 12


def _finish(loss, metrics, token_outputs, text, group, metric_names, return_token_outputs):
    m = metrics_dict(reduce_metrics(metrics, text, group=group), text, metric_names)
    if return_token_outputs:
        return loss, m, TokenOutputs(*token_outputs)
    return loss, m


def policy_loss(logits, targets, mask, advantages, old_logp, *, ref_logp=None, rollout_logp=None, kinds=None,
                offsets=None, config=None, scale=None, length=0.0, group=None, metric_names="all", num_threads=0,
                return_token_outputs=False):
    """cgrpo.policy_loss on this rank's responses, weighted by the whole batch's counts.

    The arguments are cgrpo.policy_loss's, for this rank's rows (advantages from group_advantages);
    scale: None (global_scale of this mask over `group`, with `length`) or the global cgrpo.Scale.
    Returns (loss, metrics): loss this rank's part of J (its backward gives dJ/dlogits of the local
    rows; sum the parameters' gradients over the group with all_reduce_gradients), metrics the whole
    batch's (reduce_metrics; metrics["loss"] is the global J). CPU logits; any backend (see the module)."""
    for name, t in (("logits", logits), ("targets", targets), ("mask", mask), ("advantages", advantages)):
        _check_tensor(name, t)
    text = as_config(config).text
    if scale is None:
        scale = global_scale(mask, offsets, group=group, length=length)
    s = _scale_list(scale)
    if torch.is_grad_enabled() and logits.requires_grad:
        loss, metrics, *tok = _PolicyLoss.apply(logits, targets, mask, advantages, old_logp, ref_logp, rollout_logp,
                                                kinds, offsets, text, s, num_threads)
    else:
        loss, _, metrics, *tok = ops.policy_loss(logits, targets, mask, advantages, old_logp, ref_logp, rollout_logp,
                                                 kinds, offsets, text, s, False, None, num_threads)
    return _finish(loss, metrics, tok, text, group, metric_names, return_token_outputs)


def fused_linear_policy_loss(hidden, weight, bias, targets, mask, advantages, old_logp, *, ref_logp=None,
                             rollout_logp=None, kinds=None, offsets=None, config=None, scale=None, length=0.0,
                             group=None, chunk_tokens=0, metric_names="all", num_threads=0,
                             return_token_outputs=False):
    """cgrpo.fused_linear_policy_loss on this rank's responses (hidden [T_local, H] or [B, L, H]; the
    whole head weight [V, H], bias [V]), weighted by the whole batch's counts. The backward gives this
    rank's dJ/dhidden and its part of dJ/dweight, dJ/dbias: all_reduce_gradients([weight, bias]) sums
    them to the one-process gradient. Returns (loss, metrics) as policy_loss."""
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets), ("mask", mask),
                    ("advantages", advantages)):
        _check_tensor(name, t)
    _check_tensor("bias", bias, optional=True)
    text = as_config(config).text
    if scale is None:
        scale = global_scale(mask, offsets, group=group, length=length)
    s = _scale_list(scale)
    needs = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad or
                                         (bias is not None and bias.requires_grad))
    if needs:
        loss, metrics, *tok = _FusedLinearPolicyLoss.apply(hidden, weight, bias, targets, mask, advantages, old_logp,
                                                           ref_logp, rollout_logp, kinds, offsets, text, s,
                                                           chunk_tokens, num_threads)
    else:
        loss, _, _, _, metrics, *tok = ops.fused_linear_policy_loss(
            hidden, weight, bias, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets, text, s,
            False, False, False, chunk_tokens, num_threads)
    return _finish(loss, metrics, tok, text, group, metric_names, return_token_outputs)


# ------------------------------------------------------------------------------------------------
# Vocabulary parallelism.

def vocab_shard(vocab_size, group=None, rank=None):
    """(start, size) of this rank's part of a vocabulary of vocab_size split evenly over the group
    (sizes differ by at most one; the first vocab_size % world ranks hold one more)."""
    world = _world(group)
    if rank is None:
        rank = dist.get_rank(group)
    if not 0 <= rank < world:
        raise ValueError("cgrpo.distributed: rank %d is not in the group of %d" % (rank, world))
    if vocab_size < world:
        raise ValueError("cgrpo.distributed: vocab_size %d must be at least the group size %d" % (vocab_size, world))
    base, extra = divmod(int(vocab_size), world)
    start = rank * base + min(rank, extra)
    return start, base + (1 if rank < extra else 0)


def _reduce_row_stats(stats, target, group):
    """Phase 1's (stats [T, 3], target_logit [T]) of every shard -> those of the whole rows: MAX of the
    maxima, each shard's sums rebased to it, SUM of (sum_exp, sum_exp_u, target logit)."""
    maxima = stats[:, 0].contiguous()
    _all_reduce(maxima, MAX, group, "row maxima")
    rebased = ops.row_stats_rebase(stats, maxima)
    sums = torch.cat([rebased[:, 1:], target.unsqueeze(1)], dim=1).contiguous()
    _all_reduce(sums, SUM, group, "row sums")
    return torch.stack([maxima, sums[:, 0], sums[:, 1]], dim=1).contiguous(), sums[:, 2].contiguous()


def _vocab_scale(scale, data_group, mask, offsets, length):
    if scale is None and data_group is not None:
        scale = global_scale(mask, offsets, group=data_group, length=length)
    return _scale_list(scale)


class _VocabParallelPolicyLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets, text, scale,
                vocab_start, vocab_size, group, compute_grad, num_threads):
        args = (targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets, text, scale, vocab_start,
                vocab_size)
        stats, target = ops.vocab_shard_row_stats(logits, *args, num_threads)
        stats, target = _reduce_row_stats(stats, target, group)
        loss, grad, metrics, logp, entropy, factor, terms = ops.vocab_parallel_policy_loss(
            logits, *args, stats, target, compute_grad, num_threads)
        ctx.save_for_backward(grad if compute_grad else None)
        ctx.mark_non_differentiable(metrics, logp, entropy, factor, terms)
        return loss, metrics, logp, entropy, factor, terms

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, *unused):
        return _scaled_grads(ctx.saved_tensors, grad_loss) + (None,) * 15


def vocab_parallel_policy_loss(logits, targets, mask, advantages, old_logp, *, vocab_start, vocab_size,
                               ref_logp=None, rollout_logp=None, kinds=None, offsets=None, config=None, group=None,
                               scale=None, data_group=None, length=0.0, metric_names="all", num_threads=0,
                               return_token_outputs=False):
    """cgrpo.policy_loss with the logits split by columns over `group` (parallel/vocab_parallel.hpp).

    logits: this rank's columns [vocab_start, vocab_start + V_shard) of the logits, [T, V_shard] or
    [B, L, V_shard]; targets: GLOBAL ids in [0, vocab_size); every other per-token input the whole
    batch's, the same on every rank of the group. Returns (loss, metrics) of the whole batch (the same
    on every rank); the backward gives dJ/dlogits of the local columns. Three collectives per call
    (row maxima MAX, row sums SUM: 32 bytes per token in all).

    With data parallelism too (a 2-D mesh: `group` the vocab ranks holding one data shard, `data_group`
    the ranks holding the same columns of other shards): scale None and data_group given takes the
    global scale over data_group, and the metrics are reduced over it; the loss is then this data
    shard's part. CPU logits; the statistics cross any backend (NCCL: through the CUDA device)."""
    for name, t in (("logits", logits), ("targets", targets), ("mask", mask), ("advantages", advantages)):
        _check_tensor(name, t)
    text = as_config(config).text
    s = _vocab_scale(scale, data_group, mask, offsets, length)
    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    loss, metrics, *tok = _VocabParallelPolicyLoss.apply(
        logits, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets, text, s,
        int(vocab_start), int(vocab_size), group, compute_grad, num_threads)
    if data_group is not None:
        metrics = reduce_metrics(metrics, text, group=data_group)
    m = metrics_dict(metrics, text, metric_names)
    return (loss, m, TokenOutputs(*tok)) if return_token_outputs else (loss, m)


class _VocabParallelLinearPolicyLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets,
                text, scale, vocab_start, vocab_size, group, want_hidden, want_weight, want_bias, reduce_grad_hidden,
                chunk_tokens, num_threads):
        args = (targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets, text, scale, vocab_start,
                vocab_size)
        stats, target = ops.vocab_shard_linear_row_stats(hidden, weight, bias, *args, chunk_tokens, num_threads)
        stats, target = _reduce_row_stats(stats, target, group)
        loss, gh, gw, gb, metrics, logp, entropy, factor, terms = ops.vocab_parallel_linear_policy_loss(
            hidden, weight, bias, *args, stats, target, want_hidden, want_weight, want_bias, chunk_tokens, num_threads)
        if want_hidden and reduce_grad_hidden:
            _all_reduce(gh, SUM, group, "grad_hidden")  # each rank holds G_local W_local
        ctx.save_for_backward(gh if want_hidden else None, gw if want_weight else None, gb if want_bias else None)
        ctx.mark_non_differentiable(metrics, logp, entropy, factor, terms)
        return loss, metrics, logp, entropy, factor, terms

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, *unused):
        return _scaled_grads(ctx.saved_tensors, grad_loss) + (None,) * 19


def vocab_parallel_linear_policy_loss(hidden, weight, bias, targets, mask, advantages, old_logp, *, vocab_start,
                                      vocab_size, ref_logp=None, rollout_logp=None, kinds=None, offsets=None,
                                      config=None, group=None, scale=None, data_group=None, length=0.0,
                                      reduce_grad_hidden=True, chunk_tokens=0, metric_names="all", num_threads=0,
                                      return_token_outputs=False):
    """cgrpo.fused_linear_policy_loss with the LM head split by rows over `group`
    (parallel/vocab_parallel_linear.hpp): weight is this rank's rows [V_shard, H] of the head (bias
    [V_shard] or None), hidden the whole batch's [T, H] or [B, L, H] on every rank, targets GLOBAL ids.
    Returns (loss, metrics) of the whole batch. The backward gives dJ/dweight and dJ/dbias of the local
    rows (complete) and dJ/dhidden: all-reduced over the group in the forward (reduce_grad_hidden=False:
    this rank's part G_local W_local, for callers whose own input layer sums it, as Megatron's
    copy_to_tensor_model_parallel_region does). The [T, V_shard] logits exist one chunk at a time;
    phase 2 forms them again (two GEMM passes over the chunks). data_group: as
    vocab_parallel_policy_loss. CPU tensors; the statistics and dJ/dh cross any backend."""
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets), ("mask", mask),
                    ("advantages", advantages)):
        _check_tensor(name, t)
    _check_tensor("bias", bias, optional=True)
    text = as_config(config).text
    s = _vocab_scale(scale, data_group, mask, offsets, length)
    grad_on = torch.is_grad_enabled()
    want = (grad_on and hidden.requires_grad, grad_on and weight.requires_grad,
            grad_on and bias is not None and bias.requires_grad)
    loss, metrics, *tok = _VocabParallelLinearPolicyLoss.apply(
        hidden, weight, bias, targets, mask, advantages, old_logp, ref_logp, rollout_logp, kinds, offsets, text, s,
        int(vocab_start), int(vocab_size), group, want[0], want[1], want[2], bool(reduce_grad_hidden),
        int(chunk_tokens), num_threads)
    if data_group is not None:
        metrics = reduce_metrics(metrics, text, group=data_group)
    m = metrics_dict(metrics, text, metric_names)
    return (loss, m, TokenOutputs(*tok)) if return_token_outputs else (loss, m)


__all__ = ["global_scale", "group_advantages", "reduce_metrics", "all_reduce_gradients", "policy_loss",
           "fused_linear_policy_loss", "vocab_shard", "vocab_parallel_policy_loss",
           "vocab_parallel_linear_policy_loss"]
