"""cgrpo.distributed over real process groups: N = 2 and 4 processes on localhost (torch.multiprocessing
spawn, a FileStore in a fresh temporary folder, gloo; CGRPO_DIST_BACKEND=nccl for scripts/gpu-check) against
the one-process run, in double, to 1e-12 (of each array's largest value; metrics: of max(|value|, 1)).

One spawn per world size runs every case (torch processes cost seconds each to start), mirroring
tests/parallel/test_c10d_gloo.cpp:
  data parallel   every aggregation mode (policy, entropy and KL terms) under the paper's, verl's engine,
                  verl's legacy dp_actor and TRL's conventions, the four estimators that reduce through
                  group statistics (whitening included), groups split across ranks and whole, packed and
                  padded rows, a rank with no response; every preset of the registry (rollout_logp given
                  to all) but the covariance selections (DP_INEXACT_PRESETS), and verl/grpo under the
                  legacy dp_actor; the loss from logits (z = h W^T in autograd) and the fused LM head.
                  Compared: advantages, the sum of the ranks' losses, every rank's metrics, dJ/dz rows,
                  dW summed by all_reduce_gradients; TRL's clip_ratio/* against the mean / min / max of
                  the ranks' own values (as TRL logs them across processes).
  vocab parallel  k = 1, 2, 3 (and 4) column shards on sub-groups (dist.new_group), uneven cuts, on logits
                  and on the LM head split by rows (dJ/dh, dJ/dW, dJ/db); with 4 processes also a 2 x 2
                  mesh (data parallel x vocab parallel). Compared: loss, metrics, log p, H, gradients.
Self-checks (the comparison cannot pass vacuously): the library's own reductions are re-run with one
rank's contribution dropped (it sends zeros) and with a reduction applied twice, by wrapping
cgrpo.distributed._all_reduce in the workers; the same comparison must report a mismatch for each.
Random inputs from a seed printed on failure (CGRPO_TEST_SEED replays it).
"""

import datetime
import os
import random
import sys
import tempfile
import time
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cgrpo
import cgrpo.distributed as cd

REL = 1e-12
BACKEND = os.environ.get("CGRPO_DIST_BACKEND", "gloo")
SEED = int(os.environ.get("CGRPO_TEST_SEED", random.randrange(1, 2 ** 31)))
RUN_TIMEOUT_S = 240
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)
DT = torch.float64

# The metrics cgrpo.distributed.reduce_metrics gives as the one-process values (the rest follow TRL's
# per-rank reduction or stay the rank's own).
EXACT_METRICS = ("loss", "pg_loss", "pg_loss_initial", "pg_loss_refinement", "entropy_loss", "kl_loss", "pg_clipfrac",
                 "pg_clipfrac_lower", "ppo_kl", "ratio_mean", "entropy_mean", "kl_mean", "refinement_prob_mean",
                 "num_valid_tokens", "num_initial_tokens", "num_refinement_tokens")


# ------------------------------------------------------------------------------------------------
# The cases, the same in every process.

# Presets whose loss couples the whole batch in a way include/cgrpo/parallel/ does not reduce: the
# covariance selections pick their tokens (top-k, or at random) among the tokens of the call, so over
# several ranks each rank selects among its own, as verl's per-rank loss does; not the one-process loss.
DP_INEXACT_PRESETS = {"verl/kl_cov": "covariance top-k over the rank's tokens",
                      "verl/clip_cov": "covariance selection over the rank's tokens"}


def dp_cases():
    cases = []
    conventions = (("paper", "paper/critique_grpo"), ("verl_engine", "verl/grpo"),
                   ("verl_legacy_dp_actor", "verl/grpo@legacy_dp_actor"), ("trl", "trl/grpo"))
    modes = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm", "token-sum")
    estimators = ("grpo", "grpo_no_std", "rloo", "reinforce_pp_baseline")
    i = 0
    for conv, preset in conventions:
        for m in range(5):
            cfg = (cgrpo.Config.preset(preset).set("policy.loss", "ppo_clip").set("ratio.dual_clip", i % 2 == 0)
                   .set("aggregation.policy", modes[m]).set("aggregation.entropy", modes[(m + 2) % 5])
                   .set("aggregation.kl", modes[(m + 1) % 5]).set("entropy.coef", 0.01).set("kl.estimator", "k3")
                   .set("kl.coef", 0.05).set("advantage.estimator", estimators[i % 4]).set("advantage.eps", 1e-6))
            if conv.startswith("verl"):
                cfg.set("advantage.whiten_count_eps", 1e-8)
            cases.append(dict(name="%s/%s (%s)" % (conv, modes[m], estimators[i % 4]), config=cfg.text,
                              split_groups=i % 3 != 0, padded=i % 4 == 3, linear=i % 5 == 2, faults=i == 1,
                              kinds=conv == "paper", num_groups_given=i % 2 == 0, empty_last_rank=False))
            i += 1
    for preset in ["verl/grpo@legacy_dp_actor"] + [p for p in cgrpo.presets() if p not in DP_INEXACT_PRESETS]:
        cases.append(dict(name=preset, config=cgrpo.Config.preset(preset).text, split_groups=i % 3 != 0,
                          padded=i % 4 == 3, linear=i % 5 == 2, faults=preset == "verl/grpo",
                          kinds=preset.startswith("paper"), num_groups_given=True, empty_last_rank=False))
        i += 1
    empty = dict(cases[0])
    empty.update(name="paper/token-mean, the last rank empty", empty_last_rank=True, faults=False)
    cases.append(empty)
    linear_empty = dict(cases[2])
    linear_empty.update(name=cases[2]["name"] + ", LM head, the last rank empty", linear=True, empty_last_rank=True,
                        faults=False)
    cases.append(linear_empty)
    return cases


def vocab_cases():
    paper = cgrpo.Config.preset("paper/critique_grpo").set("entropy.coef", 0.02).set("temperature", 0.9)
    custom = (cgrpo.Config().set("policy.loss", "ppo_clip").set("ratio.dual_clip", True)
              .set("aggregation.policy", "seq-mean-token-mean").set("entropy.coef", 0.01).set("kl.estimator", "k3")
              .set("kl.coef", 0.05).set("temperature", 0.7))
    c = lambda name, cfg, linear, faults, kinds=False: dict(name=name, config=cfg.text, linear=linear, faults=faults,
                                                            kinds=kinds)
    return [c("paper/critique_grpo, tau 0.9, entropy 0.02", paper, False, True, True),
            c("verl/grpo", cgrpo.Config.preset("verl/grpo"), False, False),
            c("verl/gspo", cgrpo.Config.preset("verl/gspo"), False, False),
            c("trl/grpo", cgrpo.Config.preset("trl/grpo"), False, False),
            c("ppo clip + dual clip, k3 KL, entropy, tau 0.7", custom, False, False),
            c("LM head: paper/critique_grpo, tau 0.9", paper, True, True, True),
            c("LM head: verl/grpo", cgrpo.Config.preset("verl/grpo"), True, False),
            c("LM head: verl/gspo", cgrpo.Config.preset("verl/gspo"), True, False)]


def shard_counts(world):
    return sorted({k for k in (1, 2, 3, world) if k <= world})


def _gen(*key):
    g = torch.Generator()
    g.manual_seed(hash(key) % (2 ** 62))  # tuples of ints hash the same in every process
    return g


def _randint(g, lo, hi):
    return int(torch.randint(lo, hi, (1,), generator=g).item())


def make_dp_batch(index, case):
    """G ragged groups of responses of 3..9 tokens, V = 19, H = 5; logits z = h W^T."""
    g = _gen(SEED, 1, index)
    G = 5 + _randint(g, 0, 3)
    ids = []
    for k in range(G):
        ids += [k] * (1 + _randint(g, 0, 4))
    while len(ids) < 6:
        ids.append(G - 1)
    B = len(ids)
    ids = torch.tensor(ids, dtype=torch.int64)
    if case["split_groups"]:
        ids = ids[torch.randperm(B, generator=g)]
    lengths = torch.randint(3, 10, (B,), generator=g)
    T, V, H = int(lengths.sum()), 19, 5
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    mask = torch.rand(T, generator=g) < 0.85
    for i in (1, B // 2):  # two responses without a valid token (verl's B+ counts them out)
        mask[offsets[i]:offsets[i + 1]] = False
    style = torch.randint(0, 3, (G,), generator=g)
    raw = torch.randint(0, 5, (B,), generator=g).to(DT)
    rewards = torch.where(style[ids] == 0, (raw >= 2).to(DT), torch.where(style[ids] == 1, 0.25 * raw,
                                                                          torch.ones(B, dtype=DT)))
    hidden = torch.randn(T, H, generator=g, dtype=DT)
    weight = 2.0 * torch.randn(V, H, generator=g, dtype=DT) / H ** 0.5
    targets = torch.randint(0, V, (T,), generator=g)
    logp = torch.log_softmax(hidden @ weight.T, dim=-1).gather(1, targets[:, None])[:, 0]
    old_logp = logp + 0.3 * torch.randn(T, generator=g, dtype=DT)
    ref_logp = logp + 0.5 * torch.randn(T, generator=g, dtype=DT)
    rollout_logp = old_logp + 0.2 * torch.randn(T, generator=g, dtype=DT)
    kinds = torch.rand(T, generator=g) < 0.3 if case["kinds"] else None
    token_counts = torch.stack([mask[offsets[i]:offsets[i + 1]].sum() for i in range(B)])
    return dict(G=G, ids=ids, lengths=lengths, offsets=offsets, mask=mask, rewards=rewards, hidden=hidden,
                weight=weight, targets=targets, old_logp=old_logp, ref_logp=ref_logp, rollout_logp=rollout_logp,
                kinds=kinds,
                token_counts=token_counts, B=B, T=T, V=V)


def dp_cuts(b, case, world, index):
    """Response ranges [cuts[r], cuts[r + 1]): uneven, each rank >= 1 response (whole groups when the
    groups are not split), or the last rank none."""
    g = _gen(SEED, 2, index, world)
    holders = world - 1 if case["empty_last_rank"] and world > 1 else world
    B = b["B"]
    if case["split_groups"]:
        candidates = list(range(1, B))
    else:
        ids = b["ids"].tolist()
        candidates = [i for i in range(1, B) if ids[i] != ids[i - 1]]
    perm = torch.randperm(len(candidates), generator=g).tolist()
    cuts = sorted([0, B] + [candidates[p] for p in perm[:holders - 1]])
    while len(cuts) < world + 1:
        cuts.append(B)
    return cuts


def rows_of(b, r0, r1):
    """Responses [r0, r1) of batch b: their token range and per-token tensors (packed), or padded [n, L]."""
    t0, t1 = int(b["offsets"][r0]), int(b["offsets"][r1])
    return t0, t1


def padded(x, b, r0, r1, L, fill=0):
    """Per-token x of responses [r0, r1) as [r1 - r0, L, ...] (rows past a response's length: fill)."""
    n = r1 - r0
    out = torch.full((n, L) + tuple(x.shape[1:]), fill, dtype=x.dtype)
    for j, i in enumerate(range(r0, r1)):
        a, e = int(b["offsets"][i]), int(b["offsets"][i + 1])
        out[j, :e - a] = x[a:e]
    return out


def dp_inputs(b, case, r0, r1):
    """The loss inputs of responses [r0, r1): packed [T_local, ...] with offsets, or padded [n, L, ...]
    (L the batch's longest response, the same on every rank)."""
    t0, t1 = rows_of(b, r0, r1)
    if case["padded"]:
        L = int(b["lengths"].max())
        p = lambda x, fill=0: padded(x, b, r0, r1, L, fill)
        return dict(hidden=p(b["hidden"]), targets=p(b["targets"]), mask=p(b["mask"], False),
                    old_logp=p(b["old_logp"]), ref_logp=p(b["ref_logp"]), rollout_logp=p(b["rollout_logp"]),
                    kinds=None if b["kinds"] is None else p(b["kinds"], False), offsets=None,
                    token_mask=p(b["mask"], False))
    return dict(hidden=b["hidden"][t0:t1], targets=b["targets"][t0:t1], mask=b["mask"][t0:t1],
                old_logp=b["old_logp"][t0:t1], ref_logp=b["ref_logp"][t0:t1], rollout_logp=b["rollout_logp"][t0:t1],
                kinds=None if b["kinds"] is None else b["kinds"][t0:t1],
                offsets=b["offsets"][r0:r1 + 1] - b["offsets"][r0], token_mask=None)


def token_advantages(adv, b, case, r0, r1):
    if case["padded"]:
        return adv  # [n] per response, broadcast over L by the op
    return adv.repeat_interleave(b["lengths"][r0:r1])


def dp_run(b, case, r0, r1, group, world):
    """Responses [r0, r1) through cgrpo.distributed (world > 0), or the whole batch through cgrpo
    (group None, world 0: the one-process reference). Returns the results to compare."""
    cfg = case["config"]
    x = dp_inputs(b, case, r0, r1)
    rewards, ids, counts = b["rewards"][r0:r1], b["ids"][r0:r1], b["token_counts"][r0:r1]
    if world:
        adv = cd.group_advantages(rewards, ids, cfg, num_groups=b["G"] if case["num_groups_given"] else None,
                                  token_counts=counts, shift=0.5, group=group)
    else:
        adv = cgrpo.group_advantages(rewards, ids, cfg, token_counts=counts)
    a = token_advantages(adv, b, case, r0, r1)
    weight = b["weight"].clone().requires_grad_()
    kw = dict(ref_logp=x["ref_logp"], rollout_logp=x["rollout_logp"], kinds=x["kinds"], offsets=x["offsets"],
              config=cfg, metric_names="cgrpo")
    out = dict(adv=adv)
    if case["linear"]:
        fn = (lambda *args, **k: cd.fused_linear_policy_loss(*args, group=group, **k)) if world else \
            cgrpo.fused_linear_policy_loss
        loss, metrics = fn(x["hidden"], weight, None, x["targets"], x["mask"], a, x["old_logp"], **kw)
        loss.backward()
    else:
        logits = x["hidden"] @ weight.T
        logits.retain_grad()
        fn = (lambda *args, **k: cd.policy_loss(*args, group=group, **k)) if world else cgrpo.policy_loss
        loss, metrics = fn(logits, x["targets"], x["mask"], a, x["old_logp"], **kw)
        loss.backward()
        g = logits.grad
        if case["padded"]:  # back to packed rows
            g = torch.cat([g[j, :int(b["lengths"][i])] for j, i in enumerate(range(r0, r1))]) if r1 > r0 else \
                torch.zeros(0, b["V"], dtype=DT)
        out["grad_logits"] = g.detach()
    if world:
        cd.all_reduce_gradients([weight], group=group)
        if any(k in metrics for k, _ in cd._TRL_RANK_METRICS):
            # This rank's own values of TRL's per-rank metrics (the same loss on the shard, one process,
            # with the global scale): reduce_metrics must give their mean / min / max over the ranks.
            scale = cd.global_scale(x["mask"], x["offsets"], group=group)
            with torch.no_grad():
                if case["linear"]:
                    _, local = cgrpo.fused_linear_policy_loss(x["hidden"], weight, None, x["targets"], x["mask"], a,
                                                              x["old_logp"], scale=scale, **kw)
                else:
                    _, local = cgrpo.policy_loss(x["hidden"] @ weight.T, x["targets"], x["mask"], a, x["old_logp"],
                                                 scale=scale, **kw)
            out["local_metrics"] = local
    out.update(loss=loss.item(), metrics=metrics, dW=weight.grad.detach().clone())
    return out


def make_vocab_batch(index, case):
    """5 responses of 3..9 tokens, V = 31 (H = 5 for the LM head: z = h W^T + b)."""
    g = _gen(SEED, 3, index)
    B, V, H = 5, 31, 5
    lengths = torch.randint(3, 10, (B,), generator=g)
    T = int(lengths.sum())
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    mask = torch.rand(T, generator=g) < 0.85
    hidden = torch.randn(T, H, generator=g, dtype=DT)
    weight = 2.0 * torch.randn(V, H, generator=g, dtype=DT) / H ** 0.5
    bias = 0.5 * torch.randn(V, generator=g, dtype=DT)
    logits = hidden @ weight.T + bias if case["linear"] else 2.0 * torch.randn(T, V, generator=g, dtype=DT)
    targets = torch.randint(0, V, (T,), generator=g)
    tau = cgrpo.Config(case["config"])["temperature"]
    logp = torch.log_softmax(logits / tau, dim=-1).gather(1, targets[:, None])[:, 0]
    return dict(B=B, V=V, H=H, T=T, lengths=lengths, offsets=offsets, mask=mask, hidden=hidden, weight=weight,
                bias=bias, logits=logits, targets=targets,
                advantages=torch.randn(T, generator=g, dtype=DT),
                old_logp=logp + 0.3 * torch.randn(T, generator=g, dtype=DT),
                ref_logp=logp + 0.5 * torch.randn(T, generator=g, dtype=DT),
                kinds=torch.rand(T, generator=g) < 0.3 if case["kinds"] else None)


def vocab_cuts(V, k, index):
    g = _gen(SEED, 4, index, k)
    inner = (torch.randperm(V - 1, generator=g)[:k - 1] + 1).tolist()
    return sorted([0, V] + inner)


def vocab_run(b, case, shard, group, r0=0, r1=None, data_group=None):
    """Rows of responses [r0, r1) (all by default), columns `shard` = (start, size) through
    cgrpo.distributed (group given), or everything through cgrpo (group None)."""
    r1 = b["B"] if r1 is None else r1
    t0, t1 = int(b["offsets"][r0]), int(b["offsets"][r1])
    sl = slice(t0, t1)
    kw = dict(ref_logp=b["ref_logp"][sl], kinds=None if b["kinds"] is None else b["kinds"][sl],
              offsets=b["offsets"][r0:r1 + 1] - b["offsets"][r0], config=case["config"], metric_names="cgrpo",
              return_token_outputs=True)
    args = (b["targets"][sl], b["mask"][sl], b["advantages"][sl], b["old_logp"][sl])
    out = {}
    if group is not None:
        kw.update(vocab_start=shard[0], vocab_size=b["V"], group=group, data_group=data_group)
    cols = slice(shard[0], shard[0] + shard[1])
    if case["linear"]:
        h = b["hidden"][sl].clone().requires_grad_()
        w = b["weight"][cols].clone().requires_grad_()
        bias = b["bias"][cols].clone().requires_grad_()
        fn = cd.vocab_parallel_linear_policy_loss if group is not None else cgrpo.fused_linear_policy_loss
        if group is not None:
            kw["chunk_tokens"] = 4
        loss, metrics, tok = fn(h, w, bias, *args, **kw)
        loss.backward()
        if data_group is not None:
            cd.all_reduce_gradients([w, bias], group=data_group)
        out.update(dh=h.grad, dW=w.grad, db=bias.grad)
    else:
        z = b["logits"][sl, cols].clone().requires_grad_()
        fn = cd.vocab_parallel_policy_loss if group is not None else cgrpo.policy_loss
        loss, metrics, tok = fn(z, *args, **kw)
        loss.backward()
        out.update(grad=z.grad)
    out.update(loss=loss.item(), metrics=metrics, logp=tok.logp.detach(), entropy=tok.entropy.detach())
    return out


# ------------------------------------------------------------------------------------------------
# The workers.

def _with_faults(kind, tags, fn):
    """Runs fn() with cgrpo.distributed's reductions named in `tags` made faulty: "drop" (the group's
    last rank sends zeros) or "twice" (the reduction is applied a second time)."""
    real = cd._all_reduce

    def faulty(tensor, op, group, what):
        if what not in tags:
            return real(tensor, op, group, what)
        if kind == "drop":
            last = dist.get_rank(group) == dist.get_world_size(group) - 1
            sent = torch.zeros_like(tensor) if last else tensor.clone()
            real(sent, op, group, what)
            tensor.copy_(sent)
            return tensor
        real(tensor, op, group, what)
        return real(tensor, op, group, what)

    cd._all_reduce = faulty
    try:
        return fn()
    except RuntimeError as e:  # a faulty reduction the library refuses is a detected fault too
        return dict(error=str(e))
    finally:
        cd._all_reduce = real


DP_FAULTS = {"drop": {"gradients", "metric sums"}, "twice": {"gradients", "metric sums"}}
VOCAB_FAULTS = {"drop": {"row sums"}, "twice": {"row sums"}}
LINEAR_DROP = {"grad_hidden"}


def _worker(rank, world, folder, seed, backend):
    global SEED
    SEED = seed
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    else:  # gloo on the loopback interface (127.0.0.1), not on whatever the host name resolves to
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    store = dist.FileStore(os.path.join(folder, "store"), world)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    results = {}
    for i, case in enumerate(dp_cases()):
        b = make_dp_batch(i, case)
        cuts = dp_cuts(b, case, world, i)
        run = lambda: dp_run(b, case, cuts[rank], cuts[rank + 1], None, world)
        results[("dp", i, "honest")] = run()
        if case["faults"] and world >= 2:
            for kind, tags in DP_FAULTS.items():
                results[("dp", i, kind)] = _with_faults(kind, tags, run)
    vocab = vocab_cases()
    for k in shard_counts(world):
        sub = dist.new_group(ranks=list(range(k)))  # every rank calls new_group, members or not
        if rank >= k:
            continue
        for i, case in enumerate(vocab):
            b = make_vocab_batch(i, case)
            cuts = vocab_cuts(b["V"], k, i)
            shard = (cuts[rank], cuts[rank + 1] - cuts[rank])
            run = lambda: vocab_run(b, case, shard, sub)
            results[("vocab", k, i, "honest")] = run()
            if case["faults"] and k >= 2:
                for kind, tags in VOCAB_FAULTS.items():
                    results[("vocab", k, i, kind)] = _with_faults(kind, tags, run)
                if case["linear"]:
                    results[("vocab", k, i, "drop_dh")] = _with_faults("drop", LINEAR_DROP, run)
    if world == 4:  # a 2 x 2 mesh: vocab groups {0, 1}, {2, 3}; data groups {0, 2}, {1, 3}
        tp = [dist.new_group(ranks=r) for r in ([0, 1], [2, 3])]
        dp = [dist.new_group(ranks=r) for r in ([0, 2], [1, 3])]
        d, t = rank // 2, rank % 2
        for i, case in enumerate(vocab):
            if i not in (0, 5):
                continue
            b = make_vocab_batch(i, case)
            cuts = vocab_cuts(b["V"], 2, i)
            r_cut = mesh_response_cut(b)
            r0, r1 = (0, r_cut) if d == 0 else (r_cut, b["B"])
            results[("mesh", i)] = vocab_run(b, case, (cuts[t], cuts[t + 1] - cuts[t]), tp[d], r0, r1, dp[t])
    torch.save(results, os.path.join(folder, "rank%d.pt" % rank))
    dist.barrier()
    dist.destroy_process_group()


def mesh_response_cut(b):
    return 2


def _spawn(world, folder, fn=_worker):
    """Runs fn(rank, world, folder, SEED, BACKEND) in `world` spawned processes; a failure raises with
    the rank's traceback, a run past RUN_TIMEOUT_S is stopped. While the children start, __main__ is
    a bare module: a test runner run as a script (run_pytest.py) must not be re-run in each child."""
    main = sys.modules["__main__"]
    stub = types.ModuleType("__main__")
    stub.__spec__ = None
    sys.modules["__main__"] = stub
    try:
        ctx = mp.spawn(fn, args=(world, folder, SEED, BACKEND), nprocs=world, join=False)
    finally:
        sys.modules["__main__"] = main
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise AssertionError("seed %d: %d workers still running after %d s: stopped" % (SEED, world,
                                                                                             RUN_TIMEOUT_S))


# ------------------------------------------------------------------------------------------------
# The comparison.

def mismatches(got, want, fields):
    """[field: what differs] over `fields` of two results (None where no entry differs)."""
    if "error" in got:
        return ["run: %s" % got["error"]]
    out = []
    for f in fields:
        if f == "metrics":
            for key in EXACT_METRICS:
                if key not in want["metrics"]:
                    continue
                g, w = got["metrics"].get(key), want["metrics"][key]
                if g is None:
                    out.append("metrics[%s]: missing" % key)
                elif abs(g - w) > REL * max(abs(w), 1.0) or (key.startswith("num_") and g != w):
                    out.append("metrics[%s]: got %.17g, want %.17g" % (key, g, w))
            continue
        g, w = got[f], want[f]
        if isinstance(w, float):
            if abs(g - w) > REL * max(abs(w), 1.0):
                out.append("%s: got %.17g, want %.17g" % (f, g, w))
            continue
        if g.shape != w.shape:
            out.append("%s: shape %s, want %s" % (f, tuple(g.shape), tuple(w.shape)))
            continue
        scale = max(float(w.abs().max()) if w.numel() else 0.0, 1e-300)
        err = float((g - w).abs().max()) if w.numel() else 0.0
        if not err <= REL * scale:
            out.append("%s: max |got - want| = %.3g > %.0e x %.3g" % (f, err, REL, scale))
    return out


def trl_rank_mismatches(results, i, world, got):
    """TRL's clip_ratio/* of the reduced metrics against the mean / min / max of the ranks' own values
    (ranks without a valid token log NaN in TRL and are left out of its nanmean; here: none is NaN)."""
    if "error" in got or "local_metrics" not in got:
        return []
    out = []
    local = [results[r][("dp", i, "honest")]["local_metrics"] for r in range(world)]
    for key, how in cd._TRL_RANK_METRICS:
        if key not in got["metrics"]:
            continue
        vals = [m[key] for m in local]
        want = {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals)}[how]
        if abs(got["metrics"][key] - want) > REL * max(abs(want), 1.0):
            out.append("metrics[%s] (TRL's %s over the ranks): got %.17g, want %.17g" % (key, how, got["metrics"][key],
                                                                                       want))
    return out


def dp_reference(i, case):
    b = make_dp_batch(i, case)
    return b, dp_run(b, case, 0, b["B"], None, 0)


def assemble_dp(results, i, variant, b, cuts, world, case):
    """The ranks' pieces of a data-parallel case as one result: advantages and dJ/dz rows in batch
    order, the sum of the ranks' losses; the metrics and dW of each rank (checked on every rank)."""
    per_rank = [results[r][("dp", i, variant)] for r in range(world)]
    errors = [p for p in per_rank if "error" in p]
    if errors:
        return [errors[0]]
    whole = []
    for r, p in enumerate(per_rank):
        one = dict(p)
        one["adv"] = torch.cat([q["adv"] for q in per_rank])
        one["loss"] = sum(q["loss"] for q in per_rank)
        if not case["linear"]:
            one["grad_logits"] = torch.cat([q["grad_logits"] for q in per_rank])
        whole.append(one)
    return whole


def check_world(world):
    with tempfile.TemporaryDirectory(prefix="cgrpo_dist_") as folder:
        _spawn(world, folder)
        results = [torch.load(os.path.join(folder, "rank%d.pt" % r)) for r in range(world)]
    report, checked, self_checks = [], 0, 0
    for i, case in enumerate(dp_cases()):
        b, want = dp_reference(i, case)
        cuts = dp_cuts(b, case, world, i)
        fields = ["adv", "loss", "metrics", "dW"] + ([] if case["linear"] else ["grad_logits"])
        for r, got in enumerate(assemble_dp(results, i, "honest", b, cuts, world, case)):
            bad = mismatches(got, want, fields) + trl_rank_mismatches(results, i, world, got)
            checked += 1
            if bad:
                report.append("dp %s, rank %d of %d:\n    %s" % (case["name"], r, world, "\n    ".join(bad)))
        if case["faults"] and world >= 2:
            for kind in DP_FAULTS:
                got = assemble_dp(results, i, kind, b, cuts, world, case)[0]
                bad = mismatches(got, want, fields)
                must = ("dW", "metrics[loss]")
                if not all(any(m.startswith(f) for m in bad) for f in must) and "error" not in got:
                    report.append("self-check: dp %s with a %s reduction was not caught: %s" % (case["name"], kind, bad))
                self_checks += 1
    for i, case in enumerate(vocab_cases()):
        b = make_vocab_batch(i, case)
        want = vocab_run(b, case, (0, b["V"]), None)
        grads = ["dh", "dW", "db"] if case["linear"] else ["grad"]
        for k in shard_counts(world):
            cuts = vocab_cuts(b["V"], k, i)

            def assemble(variant, r):
                p = results[r][("vocab", k, i, variant)]
                if "error" in p:
                    return p
                one = dict(p)
                parts = [results[q][("vocab", k, i, variant)] for q in range(k)]
                if case["linear"]:
                    one["dW"] = torch.cat([q["dW"] for q in parts])
                    one["db"] = torch.cat([q["db"] for q in parts])
                else:
                    one["grad"] = torch.cat([q["grad"] for q in parts], dim=1)
                return one

            for r in range(k):
                bad = mismatches(assemble("honest", r), want, ["loss", "metrics", "logp", "entropy"] + grads)
                checked += 1
                if bad:
                    report.append("vocab %s, k = %d, rank %d:\n    %s" % (case["name"], k, r, "\n    ".join(bad)))
            if case["faults"] and k >= 2:
                variants = [("drop", "loss"), ("twice", "loss")] + ([("drop_dh", "dh")] if case["linear"] else [])
                for variant, must in variants:
                    got = assemble(variant, 0)
                    bad = mismatches(got, want, ["loss", "metrics"] + grads)
                    if "error" not in got and not any(m.startswith(must) for m in bad):
                        report.append("self-check: vocab %s, k = %d, %s was not caught" % (case["name"], k, variant))
                    if variant == "drop_dh" and any(not m.startswith("dh") for m in bad):
                        report.append("self-check: vocab %s, k = %d, dropping dJ/dh changed more than dh: %s" % (
                            case["name"], k, bad))
                    self_checks += 1
        if world == 4 and i in (0, 5):  # the 2 x 2 mesh: data shard d, columns t
            r_cut = mesh_response_cut(b)
            vcuts = vocab_cuts(b["V"], 2, i)
            t_cut = int(b["offsets"][r_cut])
            for r in range(4):
                d, t = r // 2, r % 2
                got = dict(results[r][("mesh", i)])
                mine = lambda f, rr: results[rr][("mesh", i)][f]
                got["loss"] = mine("loss", t) + mine("loss", 2 + t)  # the two data shards' parts
                sl = slice(0, t_cut) if d == 0 else slice(t_cut, b["T"])
                cols = slice(vcuts[t], vcuts[t + 1])
                w = dict(want)
                w["logp"], w["entropy"] = want["logp"][sl], want["entropy"][sl]
                if case["linear"]:
                    w["dh"], w["dW"], w["db"] = want["dh"][sl], want["dW"][cols], want["db"][cols]
                else:
                    w["grad"] = want["grad"][sl, cols]
                bad = mismatches(got, w, ["loss", "metrics", "logp", "entropy"] + grads)
                checked += 1
                if bad:
                    report.append("mesh 2 x 2 %s, rank %d:\n    %s" % (case["name"], r, "\n    ".join(bad)))
    assert self_checks > 0 or world == 1
    assert not report, "seed %d (CGRPO_TEST_SEED=%d replays), %d processes over %s:\n%s" % (
        SEED, SEED, world, BACKEND, "\n".join(report))
    print("test_distributed: %d processes over %s: %d rank results equal the one-process run to %.0e; "
          "%d self-checks failed as they must (seed %d)" % (world, BACKEND, checked, REL, self_checks, SEED))


def _worlds():
    if BACKEND == "nccl":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [w for w in (1, 2, 4) if w <= n and (w > 1 or n == 1)] or [2]
    return [2, 4]


@pytest.mark.parametrize("world", _worlds())
def test_distributed_equals_one_process(world):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch")
    if BACKEND == "gloo" and not dist.is_gloo_available():
        pytest.skip("this torch has no gloo backend")
    if BACKEND == "nccl":
        if not (dist.is_nccl_available() and torch.cuda.is_available()):
            pytest.skip("CGRPO_DIST_BACKEND=nccl, but this torch has no NCCL or sees no GPU")
        if torch.cuda.device_count() < world:
            pytest.skip("NCCL: %d processes need %d GPUs (one per rank), %d visible" % (
                world, world, torch.cuda.device_count()))
    check_world(world)


def _failing_worker(rank, world, folder, seed, backend):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    store = dist.FileStore(os.path.join(folder, "store"), world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=20))
    if rank == 1:
        raise RuntimeError("injected failure on rank 1")
    cd.global_scale(torch.ones(4, dtype=torch.bool))  # waits for rank 1, which never comes


@pytest.mark.skipif(BACKEND != "gloo", reason="gloo only")
def test_a_failing_rank_is_reported():
    with tempfile.TemporaryDirectory(prefix="cgrpo_dist_") as folder:
        start = time.monotonic()
        with pytest.raises(Exception, match="injected failure on rank 1"):
            _spawn(2, folder, _failing_worker)
        assert time.monotonic() - start < 60


def test_ops_name_bad_arguments():
    """The parallel ops refuse bad tensors by name (no process group needed)."""
    ops = cgrpo.ops
    r = torch.rand(4, dtype=DT)
    with pytest.raises(RuntimeError, match="group_ids"):
        ops.group_partial_stats(r, torch.tensor([0, 1, 2, 3]), 3, 0.0)
    with pytest.raises(RuntimeError, match="rewards"):
        ops.group_partial_stats(r.to(torch.int64), torch.tensor([0, 1, 1, 0]), 2, 0.0)
    with pytest.raises(RuntimeError, match="extrema"):
        ops.group_advantages_from_stats(r, torch.tensor([0, 1, 1, 0]), torch.zeros(2, 3, dtype=DT),
                                        torch.zeros(3, 2, dtype=DT), 0.0, "")
    with pytest.raises(RuntimeError, match="count 0"):
        ops.group_advantages_from_stats(r, torch.tensor([0, 1, 1, 0]), torch.zeros(2, 3, dtype=DT),
                                        torch.zeros(2, 2, dtype=DT), 0.0, "")
    with pytest.raises(RuntimeError, match="token_counts"):
        ops.whitening_partial_stats(torch.ones(3, dtype=torch.int64), r)
    with pytest.raises(RuntimeError, match="offsets"):
        ops.aggregation_partials(torch.ones(5, dtype=torch.bool), torch.tensor([0, 2, 4]))
    with pytest.raises(RuntimeError, match="metrics"):
        ops.metric_sums(torch.zeros(3, dtype=DT), 0.0)
    T, V = 6, 10
    z = torch.randn(T, 4, dtype=DT)
    args = (torch.randint(0, V, (T,)), torch.ones(T, dtype=torch.bool), torch.randn(T, dtype=DT),
            torch.randn(T, dtype=DT) - 2, None, None, None, None, "preset=trl/dapo", [])
    with pytest.raises(RuntimeError, match="vocab_start"):
        ops.vocab_shard_row_stats(z, *args, 10, V, 1)
    with pytest.raises(RuntimeError, match="vocab_size"):
        ops.vocab_shard_row_stats(z, *args, 8, V, 1)
    stats, target = ops.vocab_shard_row_stats(z, *args, 2, V, 1)
    assert stats.shape == (T, 3) and target.shape == (T,)
    with pytest.raises(RuntimeError, match="global_max"):
        ops.row_stats_rebase(stats, stats[:, 0] - 1.0)
    with pytest.raises(RuntimeError, match="target_logit"):
        ops.vocab_parallel_policy_loss(z, *args, 2, V, stats, target[:-1].contiguous(), True, 1)
    with pytest.raises(RuntimeError, match="target_ids"):
        bad = (torch.full((T,), V, dtype=torch.int64),) + args[1:]
        ops.vocab_shard_row_stats(z, *bad, 2, V, 1)
