"""cgrpo.Config from presets, verl's options, TRL's options, dotted fields and text: what each resolves to
(the C++ recipe_from_text), equalities the option parsers promise, and the metric names per config."""

import math

import pytest
import torch

import cgrpo


def test_every_preset_resolves_and_round_trips():
    names = list(cgrpo.presets())
    assert "paper/critique_grpo" in names and "verl/grpo" in names and "trl/dapo" in names and len(names) >= 29
    for name in names + [n + "@legacy_dp_actor" for n in names if n.startswith("verl/")]:
        cfg = cgrpo.Config.preset(name)
        resolved = cfg.resolved()
        assert len(resolved) == len(cgrpo.Config.fields()) == 72
        # The resolved text is a config of its own, giving the same recipe (every field, exactly).
        text = ";".join("%s=%s" % kv for kv in cgrpo.ops.recipe_text(cfg.text).split(";") and
                        [tuple(i.split("=", 1)) for i in cgrpo.ops.recipe_text(cfg.text).split(";")])
        assert cgrpo.Config(text).resolved() == resolved


def _same_recipe(a, b):
    """The recipes of two configs are the same loss: every field equal except the parameters of policy
    terms neither uses (verl_recipe sets kl_cov's coef from ppo_kl_coef whatever the loss_mode; the
    C++ test_registry compares the losses), and the same loss and gradient on a random batch."""
    ra, rb = a.resolved(), b.resolved()
    used = {ra["policy.loss"], rb["policy.loss"]}

    def live(path):
        parts = path.split(".")
        return not (parts[0] == "policy" and len(parts) == 3 and parts[1] not in used)

    assert {k: v for k, v in ra.items() if live(k)} == {k: v for k, v in rb.items() if live(k)}
    g = torch.Generator().manual_seed(17)
    z = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 6, (3, 4), generator=g)
    m = torch.rand(3, 4, generator=g) < 0.8
    adv = torch.randn(3, generator=g, dtype=torch.float64)
    logp = torch.log_softmax(z, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    old = logp + 0.3 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    ref = logp + 0.3 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    out = []
    for cfg in (a, b):
        zz = z.clone().requires_grad_()
        loss, met = cgrpo.policy_loss(zz, y, m, adv, old, ref_logp=ref, config=cfg, metric_names="cgrpo")
        loss.backward()
        out.append((loss.item(), zz.grad, met))
    assert out[0][0] == out[1][0] and torch.equal(out[0][1], out[1][1]) and out[0][2] == out[1][2]


def test_presets_and_options_agree():
    # verl's and TRL's option structs at the peers' defaults are the presets (test_registry in C++).
    _same_recipe(cgrpo.Config.verl(), cgrpo.Config.preset("verl/vanilla"))
    _same_recipe(cgrpo.Config.verl(use_kl_loss=True), cgrpo.Config.preset("verl/grpo"))
    _same_recipe(cgrpo.Config.verl(actor="legacy_dp_actor"), cgrpo.Config.preset("verl/vanilla@legacy_dp_actor"))
    _same_recipe(cgrpo.Config.verl(loss_mode="gspo", loss_agg_mode="seq-mean-token-mean", clip_ratio_low=3e-4,
                                   clip_ratio_high=4e-4), cgrpo.Config.preset("verl/gspo"))
    # kl_cov with verl's defaults: the term's own parameters are compared too.
    assert cgrpo.Config.verl(loss_mode="kl_cov").resolved() == cgrpo.Config.preset("verl/kl_cov").resolved()
    # No options at all is still the peer's recipe, not the paper's defaults (Recipe{}).
    assert cgrpo.Config.verl().resolved() != cgrpo.Config().resolved()
    _same_recipe(cgrpo.Config.trl(), cgrpo.Config.preset("trl/dapo"))
    for lt in ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "vespo"):
        assert cgrpo.Config.trl(loss_type=lt).resolved() == cgrpo.Config.preset("trl/" + lt).resolved(), lt
    # The drop-ins' configs with no options: the peers' defaults too.
    _same_recipe(cgrpo.trl.make_config(), cgrpo.Config.preset("trl/dapo"))
    _same_recipe(cgrpo.verl.make_config(), cgrpo.Config.preset("verl/vanilla"))
    with pytest.raises(AssertionError):  # the comparison can fail: a different aggregation
        _same_recipe(cgrpo.Config.verl(), cgrpo.Config.preset("verl/vanilla").set("aggregation.policy", "seq-mean-token-mean"))


def test_fields_and_overrides():
    cfg = cgrpo.Config.preset("verl/grpo").set("kl.coef", 0.01).set("ratio.clip_eps_high", 0.28)
    assert cfg.text == "preset=verl/grpo;kl.coef=0.01;ratio.clip_eps_high=0.28"
    assert cfg["kl.coef"] == 0.01 and cfg["ratio.clip_eps_high"] == 0.28
    assert cfg["kl.estimator"] == "k3" and cfg["aggregation.policy"] == "token-mean"
    cfg.set("kl.coef", 0.02)  # replaces, keeps the order of the rest
    assert cfg.text == "preset=verl/grpo;ratio.clip_eps_high=0.28;kl.coef=0.02"
    assert cgrpo.Config(cfg.text) == cfg and hash(cgrpo.Config(cfg.text)) == hash(cfg)
    other = cfg.updated(entropy__coef=0.001, aggregation__policy="seq_mean_token_mean")
    assert other["entropy.coef"] == 0.001 and other["aggregation.policy"] == "seq-mean-token-mean"
    assert cfg.get("entropy.coef") == 0  # cfg itself unchanged
    # Every kind of value: enums, bools, ints, the 64-bit seed, inf, the rejection options.
    c = (cgrpo.Config.preset("verl/clip_cov").set("policy.clip_cov.seed", 2 ** 64 - 1)
         .set("ratio.log_ratio_max", math.inf).set("off_policy.rollout.mode", "decoupled")
         .set("off_policy.rollout.num_rejection_options", 1)
         .set("off_policy.rollout.rejection[0].statistic", "seq_max_k3")
         .set("off_policy.rollout.rejection[0].upper", 0.5).set("advantage.estimator", "rloo"))
    r = c.resolved()
    assert r["policy.clip_cov.seed"] == 2 ** 64 - 1 and r["ratio.log_ratio_max"] == math.inf
    assert r["off_policy.rollout.rejection[0].statistic"] == "seq_max_k3"
    assert r["advantage.estimator"] == "rloo"
    with pytest.raises(KeyError):
        c["no.such.field"]
    with pytest.raises(ValueError, match="may not hold"):
        cgrpo.Config().set("preset", "a;b")


def test_verl_options():
    cfg = cgrpo.Config.verl(loss_mode="gspo", loss_agg_mode="seq-mean-token-mean", clip_ratio_low=3e-4,
                            clip_ratio_high=4e-4, use_kl_loss=True, kl_loss_type="low_var_kl+",
                            rollout_is="token", rollout_is_threshold="0.5_2.0", rollout_rs="token_k1",
                            rollout_rs_threshold="0.6_1.5")
    r = cfg.resolved()
    assert r["ratio.level"] == "sequence_detached" and r["ratio.clip_eps_low"] == 3e-4
    assert r["kl.straight_through"] is True and r["kl.estimator"] == "k3"
    assert r["off_policy.rollout.is_mode"] == "icepop" and r["off_policy.rollout.is_threshold_lower"] == 0.5
    assert r["off_policy.rollout.num_rejection_options"] == 1
    # verl's None: clip_ratio_low=None is clip_ratio.
    assert cgrpo.Config.verl(clip_ratio=0.3, clip_ratio_low=None)["ratio.clip_eps_low"] == 0.3
    assert cgrpo.Config.verl(rollout_is="sequence", rollout_is_threshold=3.0)["off_policy.rollout.is_threshold"] == 3.0
    with pytest.raises(ValueError, match="verl.clip_rato"):
        cgrpo.Config.verl(clip_rato=0.2).validate()
    with pytest.raises(ValueError, match="dro_beta"):
        cgrpo.Config.verl(loss_mode="dro").validate()


def test_trl_options():
    cfg = cgrpo.Config.trl(loss_type="grpo", importance_sampling_level="sequence", beta=0.04, epsilon_high=0.28,
                           use_vllm=True, vllm_importance_sampling_mode="token_truncate",
                           off_policy_mask_threshold=0.5, entropy_coef=0.01, top_entropy_quantile=0.8)
    r = cfg.resolved()
    assert r["ratio.level"] == "sequence" and r["kl.coef"] == 0.04 and r["kl.k3_clamp"] is False
    assert r["off_policy.sampler.mode"] == "token_truncate" and r["off_policy.sampler.max"] == 3.0
    assert r["off_policy.opsm_threshold"] == 0.5 and r["entropy.coef"] == 0.01
    assert r["advantage.eps"] == 1e-4 and r["entropy_mask.top_quantile"] == 0.8
    assert cgrpo.Config.trl(delta=None)["ratio.two_sided_delta"] == math.inf
    assert cgrpo.Config.trl(scale_rewards="batch")["advantage.estimator"] == "grpo_batch_std"
    with pytest.raises(ValueError, match="loss_type"):
        cgrpo.Config.trl(loss_type="ppo").validate()


def test_metric_names_per_config():
    def names(cfg, naming):
        return {k for _, k in cgrpo.metric_keys(cfg.text, naming)}

    verl = names(cgrpo.Config.preset("verl/grpo"), "verl")
    assert verl == {"actor/pg_loss", "actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/ppo_kl", "actor/entropy",
                    "actor/kl_loss"}
    is_ = names(cgrpo.Config.verl(rollout_is="token", rollout_rs="seq_mean_k1", rollout_rs_threshold="0.9_1.1"), "verl")
    assert {"rollout_corr/rollout_is_mean", "rollout_corr/rollout_is_eff_sample_size", "rollout_corr/kl",
            "rollout_corr/rollout_rs_seq_mean_k1_masked_fraction", "rollout_corr/rollout_rs_masked_fraction"} <= is_
    assert "actor/kl_loss" not in is_ and "rollout_corr/rollout_is_oob_ratio" not in is_
    trl = names(cgrpo.Config.preset("trl/dapo"), "trl")
    assert trl == {"entropy", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
                   "clip_ratio/low_min", "clip_ratio/high_max"}
    assert names(cgrpo.Config.preset("trl/cispo"), "trl") == {"entropy", "cispo_clip_ratio"}
    assert "vespo/phi_seq_mean" in names(cgrpo.Config.preset("trl/vespo"), "trl")
    s = names(cgrpo.Config.trl(use_vllm=True, beta=0.1), "trl")
    assert {"kl", "sampling/sampling_logp_difference/mean", "sampling/importance_sampling_ratio/max"} <= s
    own = names(cgrpo.Config.preset("paper/critique_grpo"), "cgrpo")
    assert {"loss", "pg_loss_refinement", "refinement_prob_mean", "num_valid_tokens"} <= own
    assert not any(k.startswith("rollout.") for k in own)


def test_metrics_dict_values():
    z = torch.randn(2, 3, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (2, 3))
    m = torch.ones(2, 3, dtype=torch.bool)
    loss, met = cgrpo.policy_loss(z, y, m, torch.tensor([1.0, -1.0], dtype=torch.float64),
                                  torch.full((2, 3), -1.5, dtype=torch.float64),
                                  config=cgrpo.Config.trl(loss_type="bnpo", entropy_coef=0.1))
    assert met["policy_loss"] == pytest.approx(met["loss"] + 0.1 * met["entropy_loss"], rel=1e-15)
    assert met["loss"] == pytest.approx(loss.item(), rel=1e-15)
    assert met["num_valid_tokens"] == 6 and isinstance(met["num_valid_tokens"], int)
    assert met["entropy"] == met["entropy_mean"]
    with pytest.raises(ValueError, match="metric names"):
        cgrpo.policy_loss(z, y, m, torch.tensor([1.0, -1.0], dtype=torch.float64),
                          torch.full((2, 3), -1.5, dtype=torch.float64), metric_names="wandb")
