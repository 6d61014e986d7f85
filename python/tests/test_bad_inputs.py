"""Bad tensors and configs raise a Python exception naming the argument, and write nothing: the caller's
output buffers (grad_out, logp_out, entropy_out) keep their values, no gradient reaches the inputs."""

import pytest
import torch

import cgrpo
from reference import random_batch

B, L, V = 3, 4, 7
SENTINEL = -12345.5


def batch(dtype=torch.float64):
    logits, targets, mask, adv, old, ref = random_batch(B, L, V, dtype=dtype, seed=21)
    return dict(logits=logits, targets=targets, mask=mask, advantages=adv, old_logp=old, ref_logp=ref)


CFG = cgrpo.Config.preset("verl/grpo")  # needs ref_logp (its k3 KL)


def call(b, config=CFG, **kw):
    b = dict(b)
    b.update(kw)
    return cgrpo.policy_loss(b["logits"], b["targets"], b["mask"], b["advantages"], b["old_logp"],
                             ref_logp=b["ref_logp"], kinds=b.get("kinds"), offsets=b.get("offsets"),
                             rollout_logp=b.get("rollout_logp"), config=config)


def raw_call(b, grad_out, config=CFG):
    """The op itself, with the caller's gradient buffer."""
    return cgrpo.ops.policy_loss(b["logits"], b["targets"], b["mask"], b["advantages"], b["old_logp"],
                                 b["ref_logp"], b.get("rollout_logp"), b.get("kinds"), b.get("offsets"),
                                 config.text, [], True, grad_out, 0)


def nan_at(t, index):
    t = t.clone()
    t.view(-1)[index] = float("nan")
    return t


def bad_cases():
    b = batch()
    first_valid = 0  # row 0 has at least one valid token (random_batch: lengths >= 1 except row 1)
    z_t = b["logits"].transpose(0, 1).contiguous().transpose(0, 1)  # [B, L, V] with uneven row strides
    yield "logits int", dict(logits=b["logits"].long()), "logits", RuntimeError
    yield "logits half", dict(logits=b["logits"].half()), "logits", RuntimeError
    yield "logits 1-D", dict(logits=b["logits"].reshape(-1)), "logits", RuntimeError
    yield "logits V stride", dict(logits=b["logits"].transpose(1, 2).contiguous().transpose(1, 2)), "contiguous along V", RuntimeError
    yield "logits rows", dict(logits=z_t), "evenly spaced rows", RuntimeError
    yield "logits meta", dict(logits=torch.empty(B, L, V, dtype=torch.float64, device="meta")), "CPU", RuntimeError
    yield "logits nan", dict(logits=nan_at(b["logits"], 3)), "logits row 0", RuntimeError
    yield "targets float", dict(targets=b["targets"].double()), "target_ids", RuntimeError
    yield "targets int64 range", dict(targets=b["targets"].clone().index_fill_(1, torch.tensor([0]), V)), "target_ids[0] = 7", RuntimeError
    yield "targets int32 range", dict(targets=b["targets"].int().index_fill_(1, torch.tensor([0]), -1)), "target_ids[0] = -1", RuntimeError
    yield "targets shape", dict(targets=b["targets"][:, :2]), "target_ids must have shape", RuntimeError
    yield "mask float", dict(mask=b["mask"].double()), "mask", RuntimeError
    yield "mask value", dict(mask=b["mask"].long() * 2), "mask[0] = 2", RuntimeError
    yield "advantages dtype", dict(advantages=b["advantages"].float()), "advantages must have dtype", RuntimeError
    yield "advantages shape", dict(advantages=b["advantages"][:2]), "advantages must have shape", RuntimeError
    yield "advantages nan", dict(advantages=nan_at(b["advantages"], first_valid)), "advantages[0] is not finite", RuntimeError
    yield "old_logp dtype", dict(old_logp=b["old_logp"].float()), "old_logp", RuntimeError
    yield "old_logp nan", dict(old_logp=nan_at(b["old_logp"], 0)), "old_logp[0] is not finite", RuntimeError
    yield "ref_logp missing", dict(ref_logp=None), "ref_logp", RuntimeError
    yield "ref_logp shape", dict(ref_logp=b["ref_logp"].reshape(-1)), "ref_logp must have shape", RuntimeError
    yield "kinds value", dict(kinds=torch.tensor([0, 3, 0])), "kinds[1] = 3", RuntimeError
    yield "offsets with [B, L, V]", dict(offsets=torch.tensor([0, 4, 8, 12])), "offsets", RuntimeError
    yield "rollout_logp dtype", dict(rollout_logp=b["old_logp"].float()), "rollout_logp", RuntimeError


def test_good_inputs_pass_and_write_the_buffers():
    """The checks below can fail: the same calls with good tensors succeed and write grad_out."""
    b = batch()
    grad_out = torch.full(b["logits"].shape, SENTINEL, dtype=torch.float64)
    raw_call(b, grad_out)
    assert not torch.any(grad_out == SENTINEL)
    z = b["logits"].clone().requires_grad_()
    loss, _ = call(dict(b, logits=z))
    loss.backward()
    assert z.grad is not None and z.grad.abs().max().item() > 0


def test_non_contiguous_per_token_inputs_are_taken():
    """Strided per-token inputs (a [L, B] tensor transposed, a slice) are copied: same loss and gradient."""
    b = batch()
    strided = {k: b[k].t().contiguous().t() for k in ("targets", "mask", "old_logp", "ref_logp")}
    strided["advantages"] = torch.stack([b["advantages"], b["advantages"]], 1)[:, 0]
    assert not any(v.is_contiguous() for v in strided.values())
    z1, z2 = b["logits"].clone().requires_grad_(), b["logits"].clone().requires_grad_()
    l1, m1 = call(dict(b, logits=z1))
    l2, m2 = call(dict(b, logits=z2, **strided))
    l1.backward()
    l2.backward()
    assert l1.item() == l2.item() and m1 == m2 and torch.equal(z1.grad, z2.grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (the meta device stands in above)")
def test_cuda_tensors_are_refused_naming_them():
    b = batch()
    with pytest.raises(RuntimeError, match="logits"):
        call(dict(b, logits=b["logits"].cuda()))
    with pytest.raises(RuntimeError, match="old_logp"):
        call(dict(b, old_logp=b["old_logp"].cuda()))


@pytest.mark.parametrize("case", list(bad_cases()), ids=lambda c: c[0])
def test_bad_tensor_raises_naming_it_and_writes_nothing(case):
    _, change, needle, exc = case
    b = batch()
    b.update(change)
    logits = b["logits"]
    if logits.device.type == "cpu" and logits.is_floating_point() and logits.dtype in (torch.float32, torch.float64):
        logits = logits.detach().clone().requires_grad_()
        b["logits"] = logits
    with pytest.raises(exc, match=needle.replace("[", r"\[").replace("]", r"\]")):
        call(b)
    if logits.requires_grad:
        assert logits.grad is None
    # The op with the caller's gradient buffer: untouched after the error (where the logits can hold one).
    if b["logits"].dtype == torch.float64 and b["logits"].dim() == 3 and b["logits"].device.type == "cpu":
        grad_out = torch.full(b["logits"].shape, SENTINEL, dtype=torch.float64)
        with pytest.raises(exc):
            raw_call({k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in b.items()}, grad_out)
        assert torch.all(grad_out == SENTINEL)


def test_packed_without_offsets_is_refused_when_the_config_needs_rows():
    b = batch()
    flat = {k: (v.reshape(B * L, V) if k == "logits" else v.reshape(-1)) for k, v in b.items() if k != "advantages"}
    flat["advantages"] = b["advantages"].unsqueeze(1).expand(B, L).reshape(-1)
    cfg = cgrpo.Config.preset("trl/grpo")  # seq-mean-token-mean: needs the rows
    with pytest.raises(RuntimeError, match="offsets"):
        call(flat, config=cfg)
    with pytest.raises(RuntimeError, match="offsets must cover"):
        call(flat, config=cfg, offsets=torch.tensor([0, 4, 8]))
    loss, _ = call(flat, config=cfg, offsets=torch.tensor([0, 4, 8, 12], dtype=torch.int32))
    assert torch.isfinite(loss)


def test_bad_configs_raise_value_error_naming_the_key():
    b = batch()
    for config, needle in ((cgrpo.Config("kl.cof=0.1"), 'unknown key "kl.cof"'),
                           (cgrpo.Config.preset("verl/grpo").set("kl.coef", "abc"), 'kl.coef = "abc"'),
                           (cgrpo.Config.preset("verl/nope"), 'preset "verl/nope" is unknown'),
                           (cgrpo.Config.verl(loss_mod="gspo"), "verl.loss_mod"),
                           (cgrpo.Config.preset("verl/sapo").set("aggregation.policy", "token-mean"),
                            "config.aggregation.policy")):
        with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
            call(b, config=config)
    with pytest.raises(TypeError, match="config"):
        call(b, config=3)
    with pytest.raises(ValueError, match="scale"):
        cgrpo.policy_loss(b["logits"], b["targets"], b["mask"], b["advantages"], b["old_logp"], ref_logp=b["ref_logp"],
                          config=CFG, scale={"lenght": 3})
    with pytest.raises(TypeError, match="advantages"):
        cgrpo.policy_loss(b["logits"], b["targets"], b["mask"], [1.0, 2.0, 3.0], b["old_logp"], config=CFG)


def test_token_logprobs_errors_write_nothing():
    b = batch()
    logp_out = torch.full((B, L), SENTINEL, dtype=torch.float64)
    ent_out = torch.full((B, L), SENTINEL, dtype=torch.float64)
    for change, needle in ((dict(logits=nan_at(b["logits"], 5)), "logits row 0"),
                           (dict(targets=b["targets"].clone().fill_(V)), "target_ids"),
                           (dict(temperature=0.0), "temperature")):
        args = dict(logits=b["logits"], targets=b["targets"], temperature=1.0)
        args.update(change)
        with pytest.raises(RuntimeError, match=needle):
            cgrpo.token_logprobs(args["logits"], args["targets"], args["temperature"], logp_out=logp_out,
                                 entropy_out=ent_out)
        assert torch.all(logp_out == SENTINEL) and torch.all(ent_out == SENTINEL)
    with pytest.raises(RuntimeError, match="logp_out"):
        cgrpo.token_logprobs(b["logits"], b["targets"], logp_out=torch.empty(B, L, dtype=torch.float32))
    with pytest.raises(RuntimeError, match="logp_out"):
        cgrpo.token_logprobs(b["logits"], b["targets"], logp_out=torch.empty(L, B, dtype=torch.float64).t())


def test_fused_linear_bad_head_raises_naming_it():
    b = batch()
    g = torch.Generator().manual_seed(1)
    H = 5
    hidden = torch.randn(B, L, H, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(V, generator=g, dtype=torch.float64)

    def run(h=hidden, w=weight, bb=bias, **kw):
        return cgrpo.fused_linear_policy_loss(h, w, bb, b["targets"], b["mask"], b["advantages"], b["old_logp"],
                                              ref_logp=b["ref_logp"], config=CFG, **kw)

    for kw, needle in ((dict(w=weight.detach().t().contiguous()), "weight must be 2-D"),
                       (dict(w=weight.detach().float()), "weight must have the dtype"),
                       (dict(w=torch.randn(H, V, dtype=torch.float64).t()), "weight must be contiguous along H"),
                       (dict(bb=bias[:3]), "bias must have shape"),
                       (dict(h=hidden.detach().clone().index_fill_(2, torch.tensor([1]), float("inf"))),
                        r"hidden\[0\]\[1\] is not finite"),
                       (dict(w=weight.detach().clone().index_fill_(0, torch.tensor([2]), float("nan"))),
                        r"weight\[2\]\[0\] is not finite"),
                       (dict(chunk_tokens=-1), "chunk_tokens")):
        with pytest.raises(RuntimeError, match=needle):
            run(**kw)
    assert hidden.grad is None and weight.grad is None


def test_group_advantages_bad_inputs():
    r = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    ids = torch.tensor([0, 0, 1])
    with pytest.raises(RuntimeError, match="rewards"):
        cgrpo.group_advantages(r.long(), ids)
    with pytest.raises(RuntimeError, match="group_ids must have shape"):
        cgrpo.group_advantages(r, ids[:2])
    with pytest.raises(RuntimeError, match="group_ids"):
        cgrpo.group_advantages(r, ids.double())
    with pytest.raises(RuntimeError, match=r"group_ids\[1\] = -1"):
        cgrpo.group_advantages(r, torch.tensor([0, -1, 1]))
    with pytest.raises(RuntimeError, match=r"rewards\[2\] is not finite"):
        cgrpo.group_advantages(torch.tensor([1.0, 0.0, float("inf")], dtype=torch.float64), ids)
    with pytest.raises(RuntimeError, match="gdpo"):
        cgrpo.group_advantages(r.reshape(3, 1), ids, cgrpo.Config.preset("verl/grpo"))
