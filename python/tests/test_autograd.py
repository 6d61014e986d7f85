"""The autograd Functions: torch.autograd.gradcheck in double (small T, V) over token-level, sequence-level
and row-coupled configs (terms with a stop-gradient, as cispo, vespo or GSPO's detached ratio, are not
the derivative of their value: test_eager and the golden cases hold those), on the logits and on the fused LM head's hidden / weight / bias; the backward
scales the forward's gradient (one op call per step, none in backward); the fused LM head equals the
loss on the materialised logits; the log-prob pass and group advantages against plain formulas."""

import pytest
import torch
from torch.autograd import gradcheck

import cgrpo
import cgrpo.losses
from reference import random_batch

B, L, V, H = 3, 4, 5, 6

GRADCHECK_CONFIGS = {
    "paper_refinement": cgrpo.Config.preset("paper/critique_grpo"),
    "verl_grpo": cgrpo.Config.preset("verl/grpo").set("entropy.coef", 0.01),
    "verl_gmpo": cgrpo.Config.preset("verl/gmpo"),
    "verl_sapo": cgrpo.Config.preset("verl/sapo"),
    "verl_dro": cgrpo.Config.preset("verl/dro"),
    "trl_sequence_kl": cgrpo.Config.trl(loss_type="grpo", importance_sampling_level="sequence", beta=0.04,
                                        use_bias_correction_kl=True),
    "trl_delta": cgrpo.Config.trl(loss_type="bnpo", delta=1.5, epsilon_high=0.28),
    "temperature": cgrpo.Config.preset("verl/grpo").set("temperature", 0.6),
}


def _batch(seed=0):
    logits, targets, mask, adv, old, ref = random_batch(B, L, V, seed=seed, scale=1.0)
    return logits, targets, mask, adv, old, ref


@pytest.mark.parametrize("name", sorted(GRADCHECK_CONFIGS))
def test_gradcheck_logits(name):
    config = GRADCHECK_CONFIGS[name]
    logits, targets, mask, adv, old, ref = _batch(seed=3)
    kinds = torch.tensor([1, 0, 0], dtype=torch.uint8) if name == "paper_refinement" else None

    def f(z):
        return cgrpo.policy_loss(z, targets, mask, adv, old, ref_logp=ref, kinds=kinds, config=config)[0]

    assert gradcheck(f, (logits.requires_grad_(),), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_catches_a_perturbed_gradient(monkeypatch):
    """The gradchecks above can fail: the op's dJ/dlogits off by 1e-4 of its largest entry in one entry."""
    logits, targets, mask, adv, old, ref = _batch(seed=3)
    config = GRADCHECK_CONFIGS["verl_grpo"]

    def f(z):
        return cgrpo.policy_loss(z, targets, mask, adv, old, ref_logp=ref, config=config)[0]

    real = cgrpo.losses.ops

    class PerturbedOps:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def policy_loss(*args):
            out = list(real.policy_loss(*args))
            if out[1].numel():
                out[1] = out[1].clone()
                out[1][0, 0, 1] += 1e-4 * out[1].abs().max()
            return tuple(out)

    z = logits.clone().requires_grad_()
    assert gradcheck(f, (z,), eps=1e-6, atol=1e-8, rtol=1e-6)
    monkeypatch.setattr(cgrpo.losses, "ops", PerturbedOps())
    assert not gradcheck(f, (z,), eps=1e-6, atol=1e-8, rtol=1e-6, raise_exception=False)


@pytest.mark.parametrize("name", ["verl_grpo", "verl_gmpo", "trl_sequence_kl"])
def test_gradcheck_fused_linear(name):
    config = GRADCHECK_CONFIGS[name]
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(B, L, H, generator=g, dtype=torch.float64, requires_grad=True)
    weight = (0.5 * torch.randn(V, H, generator=g, dtype=torch.float64)).requires_grad_()
    bias = (0.1 * torch.randn(V, generator=g, dtype=torch.float64)).requires_grad_()
    _, targets, mask, adv, _, _ = _batch(seed=4)
    with torch.no_grad():
        logp = torch.log_softmax(hidden @ weight.T + bias, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    old = logp + 0.2 * torch.randn(B, L, generator=g, dtype=torch.float64)
    ref = logp + 0.2 * torch.randn(B, L, generator=g, dtype=torch.float64)

    def f(h, w, b):
        return cgrpo.fused_linear_policy_loss(h, w, b, targets, mask, adv, old, ref_logp=ref, config=config,
                                              chunk_tokens=5)[0]

    assert gradcheck(f, (hidden, weight, bias), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("config", [cgrpo.Config.preset("verl/grpo"), cgrpo.Config.preset("verl/gspo")],
                         ids=["one_pass", "two_pass"])
def test_fused_linear_equals_loss_on_logits(config):
    g = torch.Generator().manual_seed(9)
    h0 = torch.randn(B, L, H, generator=g, dtype=torch.float64)
    w0 = 0.5 * torch.randn(V, H, generator=g, dtype=torch.float64)
    b0 = 0.1 * torch.randn(V, generator=g, dtype=torch.float64)
    _, targets, mask, adv, old, ref = _batch(seed=10)
    h, w, b = (t.clone().requires_grad_() for t in (h0, w0, b0))
    loss, m = cgrpo.policy_loss(h @ w.T + b, targets, mask, adv, old, ref_logp=ref, config=config)
    loss.backward()
    h2, w2, b2 = (t.clone().requires_grad_() for t in (h0, w0, b0))
    loss2, m2 = cgrpo.fused_linear_policy_loss(h2, w2, b2, targets, mask, adv, old, ref_logp=ref, config=config,
                                               chunk_tokens=4)
    loss2.backward()
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-12, abs=1e-14)
    for got, want in ((h2.grad, h.grad), (w2.grad, w.grad), (b2.grad, b.grad)):
        assert (got - want).abs().max().item() <= 1e-12 * max(1.0, want.abs().max().item())
    for key in ("actor/pg_clipfrac", "actor/ppo_kl", "entropy_mean", "kl_mean"):
        assert m2[key] == pytest.approx(m[key], rel=1e-12, abs=1e-14)
    # Only the inputs that require grad get one (weight frozen here), and no bias is fine.
    h3 = h0.clone().requires_grad_()
    loss3, _ = cgrpo.fused_linear_policy_loss(h3, w0, None, targets, mask, adv, old, ref_logp=ref, config=config)
    loss3.backward()
    assert h3.grad is not None and h3.grad.shape == h0.shape


class _CountingOps:
    def __init__(self, ops):
        self._ops, self.calls = ops, {}

    def __getattr__(self, name):
        fn = getattr(self._ops, name)

        def counted(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args)

        return counted


def test_backward_scales_the_forward_gradient_without_a_second_pass(monkeypatch):
    logits, targets, mask, adv, old, ref = _batch(seed=1)
    config = cgrpo.Config.preset("verl/grpo")
    z = logits.clone().requires_grad_()
    loss, _ = cgrpo.policy_loss(z, targets, mask, adv, old, ref_logp=ref, config=config)
    loss.backward()
    g1 = z.grad.clone()

    counting = _CountingOps(cgrpo.losses.ops)
    monkeypatch.setattr(cgrpo.losses, "ops", counting)
    z2 = logits.clone().requires_grad_()
    loss2, _ = cgrpo.policy_loss(z2, targets, mask, adv, old, ref_logp=ref, config=config)
    assert counting.calls == {"policy_loss": 1}
    (3.0 * loss2 + z2.sum() * 0).backward()  # grad_output 3, and the loss inside a larger graph
    assert counting.calls == {"policy_loss": 1}  # the backward ran no op
    assert torch.equal(z2.grad, 3.0 * g1)


def test_backward_of_grad_output_one_hands_over_the_kept_gradient_and_stays_right_when_retained():
    """loss.backward() (grad_output 1) returns the forward's own dJ/dlogits, no second [T, V] buffer;
    with retain_graph a second backward still adds the same gradient (autograd copies the kept one)."""
    logits, targets, mask, adv, old, ref = _batch(seed=3)
    config = cgrpo.Config.preset("verl/grpo").set("entropy.coef", 0.01)
    z = logits.clone().requires_grad_()
    loss, _ = cgrpo.policy_loss(z, targets, mask, adv, old, ref_logp=ref, config=config)
    loss.backward(retain_graph=True)
    g1 = z.grad.clone()
    assert g1.abs().max() > 0
    loss.backward(retain_graph=True)
    assert torch.equal(z.grad, 2.0 * g1)
    (0.5 * loss).backward()
    assert torch.equal(z.grad, 2.5 * g1)
    kept = []
    z2 = logits.clone().requires_grad_()
    z2.register_hook(lambda g: kept.append(g.data_ptr()))
    loss2, _ = cgrpo.policy_loss(z2, targets, mask, adv, old, ref_logp=ref, config=config)
    loss2.backward()
    assert torch.equal(z2.grad, g1) and z2.grad.data_ptr() == kept[0]  # the op's buffer became .grad


def test_no_grad_and_frozen_logits_compute_no_gradient():
    logits, targets, mask, adv, old, ref = _batch(seed=2)
    config = cgrpo.Config.preset("verl/grpo")
    loss, m = cgrpo.policy_loss(logits, targets, mask, adv, old, ref_logp=ref, config=config)
    assert loss.grad_fn is None and not loss.requires_grad
    z = logits.clone().requires_grad_()
    with torch.no_grad():
        loss2, m2 = cgrpo.policy_loss(z, targets, mask, adv, old, ref_logp=ref, config=config)
    assert loss2.grad_fn is None
    assert loss2.item() == loss.item() and m2 == m


def test_per_response_advantages_broadcast():
    logits, targets, mask, adv, old, ref = _batch(seed=6)
    config = cgrpo.Config.preset("trl/grpo")
    z1, z2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    l1, m1 = cgrpo.policy_loss(z1, targets, mask, adv, old, config=config)
    l2, m2 = cgrpo.policy_loss(z2, targets, mask, adv.unsqueeze(1).expand(B, L).contiguous(), old, config=config)
    l1.backward()
    l2.backward()
    assert l1.item() == l2.item() and m1 == m2 and torch.equal(z1.grad, z2.grad)


def test_token_logprobs_match_log_softmax():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 5, 9, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, 9, (2, 5), generator=g)
    for tau in (1.0, 0.7):
        lp = torch.log_softmax(logits / tau, -1)
        want = lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        want_h = -(lp.exp() * lp).sum(-1)
        logp, ent = cgrpo.token_logprobs(logits, targets, tau)
        assert logp.shape == (2, 5) and torch.allclose(logp, want, rtol=0, atol=1e-13)
        assert torch.allclose(ent, want_h, rtol=0, atol=1e-13)
        flat, none = cgrpo.token_logprobs(logits.reshape(10, 9), targets.reshape(10).int(), tau, entropy=False)
        assert none is None and torch.equal(flat, logp.reshape(10))
    w = torch.randn(9, 4, generator=g, dtype=torch.float64)
    b = torch.randn(9, generator=g, dtype=torch.float64)
    h = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    lin, lin_h = cgrpo.linear_token_logprobs(h, w, b, targets, 0.8, chunk_tokens=3)
    ref, ref_h = cgrpo.token_logprobs(h @ w.T + b, targets, 0.8)
    assert torch.allclose(lin, ref, rtol=0, atol=1e-12) and torch.allclose(lin_h, ref_h, rtol=0, atol=1e-12)
    out = torch.full((2, 5), -7.0, dtype=torch.float64)
    logp, _ = cgrpo.token_logprobs(logits, targets, logp_out=out, entropy=False)
    assert logp is out and torch.equal(out, cgrpo.token_logprobs(logits, targets)[0])


def test_group_advantages_match_their_formulas():
    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0, 1.0, 3.0, 7.0], dtype=torch.float64)
    ids = torch.tensor([0, 0, 1, 1, 0, 1, 2])
    def grpo(eps, std=True):
        out = torch.empty_like(rewards)
        for gid in ids.unique():
            sel = ids == gid
            r = rewards[sel]
            if sel.sum() == 1:
                out[sel] = r / (1 + eps) if std else r
            else:
                out[sel] = (r - r.mean()) / (r.std() + eps) if std else r - r.mean()
        return out
    got = cgrpo.group_advantages(rewards, ids, cgrpo.Config.preset("verl/grpo"))
    assert torch.allclose(got, grpo(1e-6), rtol=0, atol=1e-14)
    got = cgrpo.group_advantages(rewards, ids, cgrpo.Config.preset("paper/critique_grpo"))
    assert torch.allclose(got, grpo(0.0, std=False), rtol=0, atol=1e-14)
    got = cgrpo.group_advantages(rewards.float(), ids.int(), cgrpo.Config.trl(loss_type="grpo"))
    assert got.dtype == torch.float32 and torch.allclose(got.double(), grpo(1e-4), rtol=0, atol=1e-6)
    # reinforce_pp_baseline whitens over the valid tokens: it needs the mask (or token counts).
    mask = torch.ones(7, 3, dtype=torch.bool)
    mask[0, 2] = False
    cfg = cgrpo.Config.verl(adv_estimator="reinforce_plus_plus_baseline")
    a1 = cgrpo.group_advantages(rewards, ids, cfg, mask=mask)
    a2 = cgrpo.group_advantages(rewards, ids, cfg, token_counts=mask.sum(-1))
    assert torch.equal(a1, a2)
    with pytest.raises(RuntimeError, match="token_counts"):
        cgrpo.group_advantages(rewards, ids, cfg)


@pytest.mark.parametrize("config", [cgrpo.Config.preset("trl/dapo"), cgrpo.Config.preset("verl/gspo")],
                         ids=["one_pass", "two_pass"])
def test_fused_linear_float32_against_float64(config):
    g = torch.Generator().manual_seed(12)
    h = torch.randn(B, L, 16, generator=g, dtype=torch.float64)
    w = 0.3 * torch.randn(40, 16, generator=g, dtype=torch.float64)
    b = 0.1 * torch.randn(40, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 40, (B, L), generator=g)
    mask = torch.rand(B, L, generator=g) < 0.8
    mask[0, 0] = True
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    old = cgrpo.linear_token_logprobs(h, w, b, targets)[0] + 0.2 * torch.randn(B, L, generator=g, dtype=torch.float64)
    out = {}
    for dt in (torch.float64, torch.float32):
        hh, ww, bb = (t.to(dt).clone().requires_grad_() for t in (h, w, b))
        loss, _ = cgrpo.fused_linear_policy_loss(hh, ww, bb, targets, mask, adv.to(dt), old.to(dt), config=config,
                                                 chunk_tokens=4)
        loss.backward()
        assert loss.dtype == dt and hh.grad.dtype == dt
        out[dt] = (loss.item(), hh.grad.double(), ww.grad.double(), bb.grad.double())
    want, got = out[torch.float64], out[torch.float32]
    assert abs(got[0] - want[0]) <= 1e-5 * max(1.0, abs(want[0]))
    for g32, g64 in zip(got[1:], want[1:]):
        assert (g32 - g64).abs().max().item() <= 1e-5 * g64.abs().max().item()
