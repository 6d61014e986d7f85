"""cgrpo.policy_loss against a plain eager PyTorch implementation of the same loss (reference.py:
log_softmax + gather + entropy + the policy term + KL + each term's aggregation, autograd), over presets
and peer options; packed [T, V] inputs with offsets against the padded [B, L, V] batch."""

import zlib

import pytest
import torch

import cgrpo
from reference import eager_loss, random_batch

B, L = 4, 6

CONFIGS = {
    "paper": (cgrpo.Config.preset("paper/critique_grpo"), True, 0.0),
    "paper_ppo_token_mean": (cgrpo.Config.preset("paper/critique_grpo").set("policy.loss", "ppo_clip")
                             .set("aggregation.policy", "token-mean"), True, 0.0),
    "verl_grpo": (cgrpo.Config.preset("verl/grpo"), False, 0.0),
    "verl_grpo_t07": (cgrpo.Config.preset("verl/grpo").set("temperature", 0.7).set("entropy.coef", 0.01), False, 0.0),
    "verl_dapo": (cgrpo.Config.preset("verl/dapo"), False, 0.0),
    "verl_legacy_seq_mean": (cgrpo.Config.verl(actor="legacy_dp_actor", loss_agg_mode="seq-mean-token-mean",
                                               entropy_coeff=0.01, use_kl_loss=True, kl_loss_type="k2"), False, 0.0),
    "verl_sum_norm_engine": (cgrpo.Config.verl(loss_agg_mode="seq-mean-token-sum-norm", entropy_coeff=0.001), False,
                             0.0),
    "verl_token_sum": (cgrpo.Config.verl(loss_agg_mode="token-sum", use_kl_loss=True, kl_loss_type="abs"), False, 0.0),
    "verl_cispo": (cgrpo.Config.verl(loss_mode="cispo", clip_ratio_low=10.0, clip_ratio_high=0.28), False, 0.0),
    "verl_gpg_k1plus": (cgrpo.Config.verl(loss_mode="gpg", loss_agg_mode="seq-mean-token-sum", use_kl_loss=True,
                                          kl_loss_type="k1+", kl_loss_coef=0.1), False, 0.0),
    "verl_k3plus": (cgrpo.Config.verl(use_kl_loss=True, kl_loss_type="low_var_kl+", kl_loss_coef=0.2), False, 0.0),
    "trl_grpo_kl": (cgrpo.Config.trl(loss_type="grpo", beta=0.04, entropy_coef=0.01), False, 0.0),
    "trl_bnpo_delta": (cgrpo.Config.trl(loss_type="bnpo", delta=1.5, epsilon_high=0.28), False, 0.0),
    "trl_dr_grpo": (cgrpo.Config.trl(loss_type="dr_grpo"), False, B * 16.0),
    "trl_dapo": (cgrpo.Config.trl(loss_type="dapo", beta=0.01), False, 0.0),
}


def _both(name, eager_config=None):
    """The eager loss (with eager_config, default the case's) and cgrpo's on the same random batch."""
    config, with_kinds, length = CONFIGS[name]
    logits, targets, mask, adv, old, ref = random_batch(B, L, seed=zlib.crc32(name.encode()) % 1000)
    kinds = torch.tensor([1, 0, 0, 1], dtype=torch.uint8) if with_kinds else None
    z = logits.clone().requires_grad_()
    J, want, want_logp, want_h = eager_loss(z, targets, mask, adv, old, eager_config or config, ref_logp=ref,
                                            kinds=kinds, length=length)
    J.backward()
    eager = dict(loss=J.item(), grad=z.grad, metrics=want, logp=want_logp.detach(), entropy=want_h.detach())

    z2 = logits.clone().requires_grad_()
    loss, got, tok = cgrpo.policy_loss(z2, targets, mask, adv, old, ref_logp=ref, kinds=kinds, config=config,
                                       scale=cgrpo.Scale(length=length), metric_names="cgrpo",
                                       return_token_outputs=True)
    loss.backward()
    ours = dict(loss=loss.item(), grad=z2.grad, metrics=got, logp=tok.logp, entropy=tok.entropy)
    return ours, eager, mask


def _assert_same(ours, eager):
    J = eager["loss"]
    assert abs(ours["loss"] - J) <= 1e-12 * max(1.0, abs(J)), (ours["loss"], J)
    g = eager["grad"]
    assert (ours["grad"] - g).abs().max().item() <= 1e-12 * max(1.0, g.abs().max().item())
    for key, value in eager["metrics"].items():
        assert abs(ours["metrics"][key] - value) <= 1e-12 * max(1.0, abs(value)), (key, ours["metrics"][key], value)
    assert torch.allclose(ours["logp"], eager["logp"], rtol=0, atol=1e-12)
    assert torch.allclose(ours["entropy"], eager["entropy"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_eager_pytorch(name):
    ours, eager, _ = _both(name)
    assert ours["grad"].abs().max().item() > 1e-3  # a real gradient, not zeros on both sides
    _assert_same(ours, eager)


def test_the_comparison_catches_a_perturbed_gradient_or_config():
    ours, eager, mask = _both("verl_grpo")
    _assert_same(ours, eager)
    b, l = mask.nonzero()[0].tolist()
    for eps in (1e-9, -1e-9):  # one logit's gradient off by 1e-9 of the largest
        bad = dict(ours, grad=ours["grad"].clone())
        bad["grad"][b, l, 3] += eps * max(1.0, bad["grad"].abs().max().item())
        with pytest.raises(AssertionError):
            _assert_same(bad, eager)
    with pytest.raises(AssertionError):  # one metric off
        _assert_same(dict(ours, metrics=dict(ours["metrics"], pg_clipfrac=ours["metrics"]["pg_clipfrac"] + 1e-9)),
                     eager)
    # The eager side with a field changed: the losses differ (the comparison reads the config).
    for name, path, value in (("verl_grpo", "ratio.clip_eps_high", 0.21), ("verl_grpo", "kl.coef", 0.0011),
                              ("verl_grpo", "aggregation.policy", "seq-mean-token-mean"),
                              ("verl_sum_norm_engine", "ratio.dual_clip_c", 3.1), ("trl_grpo_kl", "kl.coef", 0.041),
                              ("paper", "policy.refinement_gamma", 0.11), ("verl_grpo_t07", "temperature", 0.71)):
        ours, eager, _ = _both(name)
        _assert_same(ours, eager)
        if path == "ratio.dual_clip_c":
            assert ours["metrics"]["pg_clipfrac_lower"] > 0  # the dual clip is active in this batch
        ours, eager, _ = _both(name, CONFIGS[name][0].copy().set(path, value))
        with pytest.raises(AssertionError):
            _assert_same(ours, eager)


def test_float32_matches_eager_in_float64():
    config = cgrpo.Config.preset("verl/grpo").set("entropy.coef", 0.01)
    logits, targets, mask, adv, old, ref = random_batch(B, L, seed=7)
    z = logits.clone().requires_grad_()
    J, _, _, _ = eager_loss(z, targets, mask, adv, old, config, ref_logp=ref)
    J.backward()
    z32 = logits.float().requires_grad_()
    loss, _ = cgrpo.policy_loss(z32, targets, mask, adv.float(), old.float(), ref_logp=ref.float(), config=config)
    loss.backward()
    assert abs(loss.item() - J.item()) <= 1e-5 * max(1.0, abs(J.item()))
    assert (z32.grad.double() - z.grad).abs().max().item() <= 1e-5 * z.grad.abs().max().item()


@pytest.mark.parametrize("config", [cgrpo.Config.trl(loss_type="grpo"), cgrpo.Config.preset("verl/gspo"),
                                    cgrpo.Config.preset("verl/gmpo")], ids=["trl_grpo", "verl_gspo", "verl_gmpo"])
def test_packed_offsets_equal_padded(config):
    """[T, V] with offsets [B + 1] (padding removed) gives the padded batch's loss and gradient."""
    logits, targets, mask, adv, old, ref = random_batch(B, L, seed=11)
    z = logits.clone().requires_grad_()
    loss, m = cgrpo.policy_loss(z, targets, mask, adv, old, ref_logp=ref, config=config, metric_names="cgrpo")
    loss.backward()
    keep = mask.reshape(-1)
    lengths = mask.sum(-1)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    zp = logits.reshape(-1, logits.shape[-1])[keep].clone().requires_grad_()
    adv_tok = adv.unsqueeze(1).expand(B, L).reshape(-1)[keep]
    loss_p, mp = cgrpo.policy_loss(zp, targets.reshape(-1)[keep], torch.ones(int(keep.sum()), dtype=torch.bool),
                                   adv_tok, old.reshape(-1)[keep], ref_logp=ref.reshape(-1)[keep], offsets=offsets,
                                   config=config, metric_names="cgrpo")
    loss_p.backward()
    assert abs(loss_p.item() - loss.item()) <= 1e-12 * max(1.0, abs(loss.item()))
    assert (zp.grad - z.grad.reshape(-1, logits.shape[-1])[keep]).abs().max().item() <= 1e-12
    assert mp["pg_clipfrac"] == pytest.approx(m["pg_clipfrac"], abs=1e-14)
