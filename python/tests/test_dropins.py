"""The drop-ins against the loss as each peer's trainer writes it in eager PyTorch (written here from the
peers' formulas, docs/MATH.md and tests/data/GOLDEN_README.md: verl's actor from the response logits,
TRL's GRPOTrainer._compute_loss from the last hidden states and the LM head), with the peers' argument
and option names; and the "From Python" snippets of docs/peers.md run as written."""

import os
import re
import types

import pytest
import torch

import cgrpo
from cgrpo import trl as ctrl
from cgrpo import verl as cverl

B, L, V, H = 4, 6, 13, 8
REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def _batch(seed, B=B, L=L):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, H, generator=g, dtype=torch.float64)
    weight = 0.7 * torch.randn(V, H, generator=g, dtype=torch.float64)
    ids = torch.randint(0, V, (B, L), generator=g)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    lengths[2] = 0  # an empty response
    mask = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    with torch.no_grad():
        logp = torch.log_softmax(hidden @ weight.T, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    far = (torch.rand(B, L, generator=g) < 0.25).double()  # some ratios far outside the clip range
    old = logp + (0.2 + 1.5 * far) * torch.randn(B, L, generator=g, dtype=torch.float64)
    ref = logp + 0.3 * torch.randn(B, L, generator=g, dtype=torch.float64)
    return hidden, weight, ids, mask, adv, old, ref


def _close(got, want, tol=1e-12):
    if isinstance(want, torch.Tensor):
        assert (got - want).abs().max().item() <= tol * max(1.0, want.abs().max().item())
    else:
        assert abs(got - want) <= tol * max(1.0, abs(want)), (got, want)


# -- verl ------------------------------------------------------------------------------------------------


def verl_eager(logits, responses, old_log_prob, advantages, response_mask, ref_log_prob, *, clip_ratio=0.2,
               clip_ratio_c=3.0, loss_agg_mode="token-mean", entropy_coeff=0.0, use_kl_loss=False, kl_loss_coef=0.001,
               temperature=1.0):
    """verl's engine actor, vanilla loss_mode, low_var_kl: logits / T, log-probs and entropy, the dual-clip
    PPO loss, agg_loss by loss_agg_mode, the entropy bonus and the KL loss; verl's metrics."""
    z = logits / temperature
    logp_all = torch.log_softmax(z, -1)
    log_prob = logp_all.gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    entropy = torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)
    m = response_mask.to(logits.dtype)
    A = advantages if advantages.dim() == 2 else advantages.unsqueeze(-1).expand_as(log_prob)

    def agg(mat):
        if loss_agg_mode == "token-mean":
            return (mat * m).sum() / m.sum()
        if loss_agg_mode == "seq-mean-token-mean":  # the engine: over every row B (the legacy dp_actor: B+)
            return ((mat * m).sum(-1) / (m.sum(-1) + 1e-8)).sum() / m.shape[0]
        raise NotImplementedError(loss_agg_mode)

    def masked_mean(x):
        return ((x * m).sum() / (m.sum() + 1e-8)).item()

    neg_kl = torch.clamp(log_prob - old_log_prob, -20.0, 20.0)
    ratio = torch.exp(neg_kl)
    pg1 = -A * ratio
    pg2 = -A * torch.clamp(ratio, 1 - clip_ratio, 1 + clip_ratio)
    clip1 = torch.maximum(pg1, pg2)
    pg3 = -A * clip_ratio_c
    clip2 = torch.minimum(pg3, clip1)
    pg_losses = torch.where(A < 0, clip2, clip1)
    pg_loss = agg(pg_losses)
    entropy_agg = agg(entropy)
    policy_loss = pg_loss - entropy_coeff * entropy_agg
    metrics = {"actor/pg_loss": pg_loss.item(), "actor/pg_clipfrac": masked_mean(torch.gt(pg2, pg1).double()),
               "actor/ppo_kl": masked_mean(-neg_kl), "actor/entropy": entropy_agg.item(),
               "actor/pg_clipfrac_lower": masked_mean((torch.gt(clip1, pg3) * (A < 0)).double())}
    if use_kl_loss:
        kl = torch.clamp(ref_log_prob - log_prob, -20.0, 20.0)
        kld = torch.clamp(torch.exp(kl) - kl - 1, -10.0, 10.0)
        kl_loss = agg(kld)
        policy_loss = policy_loss + kl_loss_coef * kl_loss
        metrics["actor/kl_loss"] = kl_loss.item()
    return policy_loss, metrics


VERL_CASES = {
    "grpo_token_mean": dict(use_kl_loss=True, kl_loss_coef=0.01),
    "seq_mean_entropy_t07": dict(loss_agg_mode="seq-mean-token-mean", entropy_coeff=0.01, temperature=0.7),
    "vanilla_clip03": dict(clip_ratio=0.3, clip_ratio_c=2.5),
}


@pytest.mark.parametrize("name", sorted(VERL_CASES))
def test_verl_actor_loss_matches_verl_eager(name):
    opts = VERL_CASES[name]
    hidden, weight, responses, mask, adv, old, ref = _batch(seed=len(name))
    logits0 = (hidden @ weight.T).detach()
    z = logits0.clone().requires_grad_()
    want, want_m = verl_eager(z, responses, old, adv, mask, ref, **opts)
    want.backward()

    temperature = opts.get("temperature", 1.0)
    actor_config = {k: v for k, v in opts.items() if k != "temperature"}  # verl's actor config, as a dict
    actor_config["policy_loss"] = {"loss_mode": "vanilla"}
    z2 = logits0.clone().requires_grad_()
    loss, metrics = cverl.actor_loss(z2, responses, old, adv, mask, config=actor_config, ref_log_prob=ref,
                                     temperature=temperature)
    loss.backward()
    _close(loss.item(), want.item())
    _close(z2.grad, z.grad)
    assert z.grad.abs().max().item() > 1e-3
    for key, value in want_m.items():
        _close(metrics[key], value)
    # The same from the hidden states and the LM head (no [B, L, V] logits), gradients to both.
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss_h, metrics_h = cverl.actor_loss_from_hidden(h, w, responses, old, adv, mask, config=actor_config,
                                                     ref_log_prob=ref, temperature=temperature, chunk_tokens=5)
    loss_h.backward()
    h0, w0 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    want_h, _ = verl_eager(h0 @ w0.T, responses, old, adv, mask, ref, **opts)
    want_h.backward()
    _close(loss_h.item(), want.item())
    _close(h.grad, h0.grad)
    _close(w.grad, w0.grad)
    for key, value in want_m.items():
        _close(metrics_h[key], value)


def test_verl_options_by_keyword_and_on_policy():
    hidden, weight, responses, mask, adv, old, ref = _batch(seed=3)
    z0 = (hidden @ weight.T).detach()
    # Keywords instead of a config, override a config's field; advantages [B, L] as verl's batch has them.
    adv_tok = adv.unsqueeze(-1) * mask
    z1 = z0.clone().requires_grad_()
    l1, m1 = cverl.actor_loss(z1, responses, old, adv_tok, mask, config={"clip_ratio": 0.1}, clip_ratio=0.3,
                              use_kl_loss=True, ref_log_prob=ref)
    z2 = z0.clone().requires_grad_()
    want, _ = verl_eager(z2, responses, old, adv, mask, ref, clip_ratio=0.3, use_kl_loss=True)
    l1.backward()
    want.backward()
    _close(l1.item(), want.item())
    _close(z1.grad, z2.grad)
    # old_log_prob None: verl's on-policy step (old = log_prob.detach(): ratio 1, no clipping).
    z3 = z0.clone().requires_grad_()
    l3, m3 = cverl.actor_loss(z3, responses, None, adv, mask, temperature=0.8)
    with torch.no_grad():
        old_on = torch.log_softmax(z0 / 0.8, -1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    z4 = z0.clone().requires_grad_()
    want4, _ = verl_eager(z4, responses, old_on, adv, mask, None, temperature=0.8)
    l3.backward()
    want4.backward()
    _close(l3.item(), want4.item())
    _close(z3.grad, z4.grad)
    assert m3["actor/pg_clipfrac"] == 0 and abs(m3["actor/ppo_kl"]) < 1e-15


def test_verl_global_batch_info():
    """batch_num_tokens (token-mean's N), global_batch_size (seq-mean's B) and loss_scale_factor
    (seq-mean-token-sum-norm's L): the local values give the local loss; other ranks' tokens / rows
    scale it down (each rank's gradients are then summed)."""
    hidden, weight, ids, mask, adv, old, ref = _batch(seed=14)
    z = (hidden @ weight.T).detach()
    N, rows = int(mask.sum()), mask.shape[0]
    for mode, kw, local in (("token-mean", "batch_num_tokens", N), ("seq-mean-token-mean", "global_batch_size", rows),
                            ("seq-mean-token-sum", "global_batch_size", rows)):
        base, _ = cverl.actor_loss(z, ids, old, adv, mask, loss_agg_mode=mode)
        same, _ = cverl.actor_loss(z, ids, old, adv, mask, loss_agg_mode=mode, **{kw: local})
        half, _ = cverl.actor_loss(z, ids, old, adv, mask, loss_agg_mode=mode, **{kw: 2 * local})
        _close(same.item(), base.item())
        _close(half.item(), base.item() / 2)
    base, _ = cverl.actor_loss(z, ids, old, adv, mask, loss_agg_mode="seq-mean-token-sum-norm")
    for factor in (L, 3.0 * L):
        got, _ = cverl.actor_loss(z, ids, old, adv, mask, loss_agg_mode="seq-mean-token-sum-norm",
                                  loss_scale_factor=factor, global_batch_size=rows)
        _close(got.item(), base.item() * L / factor)


def test_verl_grpo_advantage():
    g = torch.Generator().manual_seed(8)
    scores = torch.rand(6, generator=g, dtype=torch.float64)
    rewards = torch.zeros(6, L, dtype=torch.float64)
    mask = torch.ones(6, L, dtype=torch.bool)
    mask[1, 3:] = False
    rewards[torch.arange(6), mask.sum(-1) - 1] = scores  # the score at the last valid token
    index = ["a", "b", "a", "b", "a", "c"]
    adv, ret = cverl.compute_grpo_outcome_advantage(rewards, mask, index)
    want = torch.empty(6, dtype=torch.float64)
    for uid in set(index):
        sel = torch.tensor([u == uid for u in index])
        s = scores[sel]
        want[sel] = (s - s.mean()) / (s.std() + 1e-6) if sel.sum() > 1 else s / (1 + 1e-6)
    _close(adv, want.unsqueeze(-1) * mask)
    assert torch.equal(adv, ret)


# -- TRL -------------------------------------------------------------------------------------------------


def trl_eager(hidden, weight, completion_ids, completion_mask, advantages, old_per_token_logps, ref_per_token_logps,
              *, loss_type="dapo", beta=0.0, epsilon=0.2, epsilon_high=None, temperature=1.0,
              max_completion_length=None, num_items_in_batch=None, num_processes=1):
    """GRPOTrainer._compute_loss at token level: logits = hidden @ W^T / T, the per-token log-probs, the
    clipped ratio loss, TRL's unclamped k3 KL times beta, the aggregation of loss_type; TRL's metrics."""
    logits = (hidden @ weight.T) / temperature
    logps = torch.log_softmax(logits, -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    m = completion_mask.to(logps.dtype)
    old = logps.detach() if old_per_token_logps is None else old_per_token_logps
    coef_1 = torch.exp(logps - old)
    eh = epsilon if epsilon_high is None else epsilon_high
    coef_2 = torch.clamp(coef_1, 1 - epsilon, 1 + eh)
    A = advantages.unsqueeze(1)
    per_token_loss = -torch.min(coef_1 * A, coef_2 * A)
    metrics = {}
    if beta != 0.0:
        d = ref_per_token_logps - logps
        per_token_kl = torch.exp(d) - d - 1
        per_token_loss = per_token_loss + beta * per_token_kl
        metrics["kl"] = ((per_token_kl * m).sum() / m.sum()).item()
    if loss_type == "grpo":
        loss = ((per_token_loss * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token_loss * m).sum() / m.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * m).sum() / (per_token_loss.size(0) * max_completion_length)
    elif loss_type == "dapo":
        loss = (per_token_loss * m).sum() / (num_items_in_batch / num_processes)
    else:
        raise NotImplementedError(loss_type)
    low = ((coef_1 < 1 - epsilon) & (A < 0)).double()
    high = ((coef_1 > 1 + eh) & (A > 0)).double()
    metrics["clip_ratio/low_mean"] = ((low * m).sum() / m.sum()).item()
    metrics["clip_ratio/high_mean"] = ((high * m).sum() / m.sum()).item()
    metrics["clip_ratio/region_mean"] = (((low + high) * m).sum() / m.sum()).item()
    return loss, metrics


TRL_CASES = {
    "grpo_beta": dict(loss_type="grpo", beta=0.04),
    "bnpo_eps_high_t09": dict(loss_type="bnpo", epsilon_high=0.28, temperature=0.9),
    "dr_grpo": dict(loss_type="dr_grpo", max_completion_length=16),
    "dapo_two_processes": dict(loss_type="dapo", beta=0.01, num_items_in_batch=30, num_processes=2),
}
# TRL passes num_items_in_batch to every loss type; only dapo / cispo / vespo divide by it.
TRL_NUM_ITEMS = {"grpo_beta": 29, "bnpo_eps_high_t09": 31, "dr_grpo": 33}


@pytest.mark.parametrize("name", sorted(TRL_CASES))
@pytest.mark.parametrize("as_args", [False, True], ids=["keywords", "args"])
def test_trl_grpo_loss_matches_trl_eager(name, as_args):
    opts = dict(TRL_CASES[name])
    hidden, weight, ids, mask, adv, old, ref = _batch(seed=len(name) + 40)
    h0, w0 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    want, want_m = trl_eager(h0, w0, ids, mask, adv, old, ref, **opts)
    want.backward()

    batch_kw = {k: opts.pop(k) for k in ("num_items_in_batch", "num_processes") if k in opts}
    if name in TRL_NUM_ITEMS:
        batch_kw = dict(num_items_in_batch=torch.tensor(TRL_NUM_ITEMS[name]), num_processes=2)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    if as_args:  # a GRPOConfig-like object with the fields (and TRL's other fields, ignored)
        args = types.SimpleNamespace(learning_rate=1e-6, num_generations=4, **opts)
        loss, metrics = ctrl.grpo_loss(h, w, ids, mask, adv, old, ref_per_token_logps=ref, args=args, chunk_tokens=7,
                                       **batch_kw)
    else:
        loss, metrics = ctrl.grpo_loss(h, w, ids, mask, adv, old, ref_per_token_logps=ref, chunk_tokens=7,
                                       **batch_kw, **opts)
    loss.backward()
    _close(loss.item(), want.item())
    _close(h.grad, h0.grad)
    _close(w.grad, w0.grad)
    assert h0.grad.abs().max().item() > 1e-4
    for key, value in want_m.items():
        _close(metrics[key], value)
    # From the logits: the same numbers.
    z = (hidden @ weight.T).detach().requires_grad_()
    loss_z, metrics_z = ctrl.grpo_loss_from_logits(z, ids, mask, adv, old, ref_per_token_logps=ref, **batch_kw, **opts)
    _close(loss_z.item(), want.item())
    for key, value in want_m.items():
        _close(metrics_z[key], value)


def test_trl_on_policy_defaults_and_errors():
    hidden, weight, ids, mask, adv, _, _ = _batch(seed=12)
    # No old log-probs (on-policy: TRL's per_token_logps.detach()) and GRPOConfig's defaults (dapo).
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, metrics = ctrl.grpo_loss(h, w, ids, mask, adv, num_items_in_batch=int(mask.sum()))
    loss.backward()
    h0, w0 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    want, _ = trl_eager(h0, w0, ids, mask, adv, None, None, num_items_in_batch=int(mask.sum()))
    want.backward()
    _close(loss.item(), want.item())
    _close(h.grad, h0.grad)
    _close(w.grad, w0.grad)
    assert metrics["clip_ratio/region_mean"] == 0
    with pytest.raises(ValueError, match="max_completion_length"):
        ctrl.grpo_loss(hidden, weight, ids, mask, adv, loss_type="dr_grpo")
    with pytest.raises(TypeError, match="epsilon_hgih"):
        ctrl.grpo_loss(hidden, weight, ids, mask, adv, epsilon_hgih=0.28)


def test_trl_advantages():
    g = torch.Generator().manual_seed(2)
    rewards = torch.rand(8, generator=g, dtype=torch.float64)
    grouped = rewards.view(-1, 4)
    mean, std = grouped.mean(-1, keepdim=True), grouped.std(-1, keepdim=True)
    _close(ctrl.advantages(rewards, 4), ((grouped - mean) / (std + 1e-4)).reshape(-1))
    _close(ctrl.advantages(rewards, 4, "none"), (grouped - mean).reshape(-1))
    _close(ctrl.advantages(rewards, 4, "batch"), ((grouped - mean).reshape(-1)) / (rewards.std() + 1e-4))
    with pytest.raises(ValueError, match="num_generations"):
        ctrl.advantages(rewards, 3)


def test_the_comparisons_can_fail():
    """A different option on the cgrpo side changes the numbers the eager side is compared with."""
    hidden, weight, ids, mask, adv, old, ref = _batch(seed=5)
    want, _ = trl_eager(hidden, weight, ids, mask, adv, old, ref, loss_type="grpo", beta=0.04)
    for change in (dict(beta=0.041), dict(epsilon=0.21), dict(loss_type="bnpo"), dict(temperature=0.99)):
        opts = dict(loss_type="grpo", beta=0.04)
        opts.update(change)
        loss, _ = ctrl.grpo_loss(hidden, weight, ids, mask, adv, old, ref_per_token_logps=ref, **opts)
        with pytest.raises(AssertionError):
            _close(loss.item(), want.item())
    z = (hidden @ weight.T).detach()
    want, _ = verl_eager(z, ids, old, adv, mask, ref, use_kl_loss=True)
    for change in (dict(kl_loss_coef=0.0011), dict(clip_ratio_c=2.9), dict(loss_agg_mode="seq-mean-token-mean")):
        loss, _ = cverl.actor_loss(z, ids, old, adv, mask, ref_log_prob=ref, use_kl_loss=True, **change)
        with pytest.raises(AssertionError):
            _close(loss.item(), want.item())


def test_bad_inputs_name_the_drop_ins_arguments_and_write_nothing():
    hidden, weight, ids, mask, adv, old, ref = _batch(seed=9)
    z = (hidden @ weight.T).detach().requires_grad_()
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    nan_old = old.clone()
    nan_old[0, 0] = float("nan")
    far_ids = ids.clone()
    far_ids[0, 1] = V
    verl_cases = (
        (dict(responses=ids.double()), r"responses must have dtype"),
        (dict(responses=far_ids), r"responses\[1\] = 13 is outside"),
        (dict(response_mask=mask.double()), r"response_mask must have dtype"),
        (dict(old_log_prob=nan_old), r"old_log_prob\[0\] is not finite"),
        (dict(old_log_prob=old.float()), r"old_log_prob must have dtype"),
        (dict(ref_log_prob=ref[:, :2], use_kl_loss=True), r"ref_log_prob must have shape"),
        (dict(advantages=adv[:3]), r"advantages must have shape"),
        (dict(loss_mode="vanila"), r'loss_mode "vanila"'),
    )
    for change, needle in verl_cases:
        kw = dict(responses=ids, old_log_prob=old, advantages=adv, response_mask=mask, ref_log_prob=ref)
        kw.update(change)
        with pytest.raises((RuntimeError, ValueError), match=needle):
            cverl.actor_loss(z, kw.pop("responses"), kw.pop("old_log_prob"), kw.pop("advantages"),
                             kw.pop("response_mask"), **kw)
    with pytest.raises(RuntimeError, match=r"lm_head_weight must be 2-D \[V, H\] with H = 8 \(the last dimension "
                                           r"of hidden_states\)"):
        cverl.actor_loss_from_hidden(h, w[:, :5], ids, old, adv, mask)
    trl_cases = (
        (dict(completion_ids=far_ids), r"completion_ids\[1\] = 13 is outside"),
        (dict(completion_mask=mask.long() * 2), r"completion_mask\[0\] = 2"),
        (dict(old_per_token_logps=nan_old), r"old_per_token_logps\[0\] is not finite"),
        (dict(ref_per_token_logps=ref.float(), beta=0.04), r"ref_per_token_logps must have dtype"),
        (dict(lm_head_weight=w.detach().float()), r"lm_head_weight must have the dtype of hidden_states"),
        (dict(lm_head_bias=torch.zeros(V - 1, dtype=torch.float64)), r"lm_head_bias must have shape"),
    )
    for change, needle in trl_cases:
        kw = dict(lm_head_weight=w, completion_ids=ids, completion_mask=mask, old_per_token_logps=old,
                  ref_per_token_logps=ref)
        kw.update(change)
        with pytest.raises(RuntimeError, match=needle):
            ctrl.grpo_loss(h, kw.pop("lm_head_weight"), kw.pop("completion_ids"), kw.pop("completion_mask"), adv,
                           kw.pop("old_per_token_logps"), **kw)
    assert z.grad is None and h.grad is None and w.grad is None
    # The names are replaced as whole words only, and errors that name none pass through unchanged.
    with pytest.raises(TypeError, match="advantages must be a torch.Tensor"):
        ctrl.grpo_loss(h, w, ids, mask, [1.0, 2.0], old)


# -- docs/peers.md ---------------------------------------------------------------------------------------


def _doc_snippets():
    """The Python blocks of docs/peers.md's "From Python" section that call the drop-ins (the "after"
    snippets; the "before" ones call verl / TRL, not installed here)."""
    with open(os.path.join(REPO, "docs", "peers.md")) as f:
        text = f.read()
    start = text.find("## From Python")
    assert start >= 0, "docs/peers.md has no '## From Python' section"
    end = text.find("\n## ", start + 1)
    section = text[start:end if end >= 0 else len(text)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    return [b for b in blocks if "import cgrpo" in b or "from cgrpo" in b]


def test_peers_md_snippets_run():
    snippets = _doc_snippets()
    assert len(snippets) == 2, "expected the verl and the TRL 'after' snippets"
    hidden, weight, ids, mask, adv, old, ref = _batch(seed=30)
    # What the snippets take from the trainer: verl's batch, TRL's inputs, a model with an lm_head.
    lm_head = torch.nn.Linear(H, V, bias=False).double()
    with torch.no_grad():
        lm_head.weight.copy_(weight)
    logits = (hidden @ weight.T).requires_grad_()
    last_hidden = hidden.clone().requires_grad_()
    env = dict(logits=logits, responses=ids, old_log_prob=old, advantages=adv.unsqueeze(-1) * mask,
               response_mask=mask, ref_log_prob=ref, temperature=1.0,
               last_hidden_state=last_hidden, model=types.SimpleNamespace(lm_head=lm_head), completion_ids=ids,
               completion_mask=mask, old_per_token_logps=old, ref_per_token_logps=ref,
               rewards=torch.rand(B, dtype=torch.float64), num_items_in_batch=int(mask.sum()))
    for code in snippets:
        ns = dict(env)
        exec(compile(code, "docs/peers.md", "exec"), ns)  # noqa: S102 (the repository's own docs)
        assert torch.isfinite(ns["loss"]) and isinstance(ns["metrics"], dict) and ns["metrics"]
    assert logits.grad is not None and logits.grad.abs().max().item() > 0
    assert last_hidden.grad is not None and lm_head.weight.grad is not None
