"""The golden cases of tests/data (tests/data/GOLDEN_README.md) through the Python API: the loader and,
per folder, what a case's params mean as a cgrpo.Config (as tests/presets/golden_*.hpp do in C++,
here through Config.preset / Config.verl / Config.trl, the way a Python user switching over would)."""

import os
import re

import numpy as np
import torch

import cgrpo

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data")
FOLDERS = {".": 3, "verl": 12, "verl3": 10, "trl": 12}


def case_files(folder):
    d = os.path.join(DATA, folder)
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".txt"))


class Case:
    def __init__(self, path):
        self.path = path
        self.name = os.path.relpath(path, DATA)
        self.params = {}
        self.arrays = {}
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                if line.startswith("#"):
                    for tok in line[1:].split():
                        k, eq, v = tok.partition("=")
                        if eq:
                            self.params[k] = v
                    continue
                head, _, values = line.partition(":")
                parts = head.split()
                name, ndim = parts[0], int(parts[1])
                shape = tuple(int(x) for x in parts[2:2 + ndim])
                arr = np.array(values.split(), dtype=np.float64)
                assert arr.size == int(np.prod(shape)), (self.name, name)
                self.arrays[name] = arr.reshape(shape)

    def p(self, key):
        return self.params.get(key, "")

    def num(self, key):
        v = self.p(key)
        assert v, (self.name, key)
        return float(v)

    def num_or_none(self, key):
        v = self.p(key)
        assert v, (self.name, key)
        return None if v == "none" else float(v)

    def t(self, name, dtype=torch.float64):
        return torch.tensor(self.arrays[name], dtype=dtype)

    @property
    def shape(self):
        return self.arrays["logits"].shape


class Setup:
    """What a case needs: the config, the groups, the row kinds, the scale, the metric naming."""

    def __init__(self, config, group_ids, naming, kinds=None, scale=None, components=None, weights=None):
        self.config = config
        self.group_ids = group_ids
        self.naming = naming
        self.kinds = kinds
        self.scale = scale
        self.components = components
        self.weights = weights


def _agg_number(spec, key):
    m = re.search(key + r"=([0-9.eE+-]+)", spec)
    return float(m.group(1)) if m else 0.0


def setup_paper(g):
    B, L, _ = g.shape
    k, n = map(int, re.match(r"first_(\d+)_of_each_group_of_(\d+)", g.p("refinement_rows")).groups())
    rows = torch.arange(B)
    kinds = ((rows % n) < k).to(torch.uint8)
    assert torch.equal(kinds.double(), g.t("refine")), g.name
    cfg = cgrpo.Config.preset("paper/critique_grpo")
    cfg.set("advantage.estimator", "grpo" if g.p("advantage") == "grpo" else "grpo_no_std")
    if g.p("eps"):
        cfg.set("advantage.eps", g.num("eps"))
    cfg.set("policy.refinement_gamma", g.num("gamma"))
    if g.p("clip") == "ppo":
        assert g.p("dual_clip") == "none"
        cfg.set("policy.loss", "ppo_clip").set("ratio.clip_eps_low", g.num("eps_low")).set("ratio.clip_eps_high",
                                                                                            g.num("eps_high"))
    else:
        assert g.p("clip") == "none"
        cfg.set("policy.loss", "ratio")
    agg = g.p("pg_agg")
    cfg.set("aggregation.policy", "token-mean" if agg == "token-mean" else "seq-mean-token-sum-norm")
    length = _agg_number(agg, "L")
    cfg.set("entropy.coef", g.num("entropy_coef")).set("aggregation.entropy", "token-mean")
    assert g.p("kl") == "none"
    cfg.set("temperature", g.num("temperature"))
    return Setup(cfg, rows // n, "cgrpo", kinds=kinds, scale=cgrpo.Scale(length=length) if length else None)


def _verl_common(g, o):
    o["entropy_coeff"] = g.num("entropy_coef")
    kl = g.p("kl")
    o["use_kl_loss"] = kl != "none"
    if kl != "none":
        o["kl_loss_type"] = kl
        o["kl_loss_coef"] = g.num("kl_coef")
    o["temperature"] = g.num("temperature")
    o["adv_estimator"] = g.p("advantage")


def setup_verl(g):
    assert g.p("source") == "verl" and g.p("refinement_rows") == "none"
    clip, mode = g.p("clip"), g.p("rollout_correction")
    o = {"actor": "legacy_dp_actor", "loss_mode": "vanilla" if clip in ("ppo", "reinforce") else clip}
    if g.p("eps_low"):
        o["clip_ratio_low"] = g.num("eps_low")
    if g.p("eps_high"):
        o["clip_ratio_high"] = g.num("eps_high")
    if g.p("dual_clip"):
        o["clip_ratio_c"] = g.num("dual_clip")
    if clip == "sapo":
        o["tau_pos"], o["tau_neg"] = g.num("tau_pos"), g.num("tau_neg")
    if clip == "kl_cov":
        o["kl_cov_ratio"], o["ppo_kl_coef"] = g.num("kl_cov_ratio"), g.num("ppo_kl_coef")
    o["loss_agg_mode"] = g.p("entropy_agg").split("(")[0]
    _verl_common(g, o)
    is_, rs = g.p("rollout_is"), g.p("rollout_rs")
    if is_ and is_ != "none":
        o["rollout_is"] = is_
        o["rollout_is_threshold"] = g.num("rollout_is_threshold")
    if rs and rs != "none":
        o["rollout_rs"] = rs
        o["rollout_rs_threshold"] = g.p("rollout_rs_threshold")
    o["bypass_mode"] = mode == "bypass"
    o["loss_type"] = "reinforce" if clip == "reinforce" else "ppo_clip"
    cfg = cgrpo.Config.verl(**o)
    assert cfg["off_policy.rollout.mode"] == mode, g.name
    return Setup(cfg, g.t("group_ids", torch.int64), "verl")


def setup_verl3(g):
    assert g.p("source") == "verl" and g.p("batch_info") == "engine"
    loss_mode, clip = g.p("loss_mode"), g.p("clip")
    o = {"bypass_mode": loss_mode == "bypass_mode"}
    o["loss_mode"] = "vanilla" if o["bypass_mode"] else loss_mode
    if o["bypass_mode"]:
        o["loss_type"] = g.p("loss_type")
    if clip == "ppo":
        o["clip_ratio_low"], o["clip_ratio_high"], o["clip_ratio_c"] = g.num("eps_low"), g.num("eps_high"), g.num("dual_clip")
    elif clip in ("dppo_tv", "dppo_kl"):
        o["clip_ratio_low"], o["clip_ratio_high"] = g.num("clip_ratio_low"), g.num("clip_ratio_high")
        o["clip_ratio_c"] = g.num("clip_ratio_c")
    elif clip == "dro":
        o["dro_beta"] = g.num("dro_beta")
    o["loss_agg_mode"] = g.p("loss_agg_mode")
    _verl_common(g, o)
    is_ = g.p("rollout_is")
    if is_ and is_ != "none":
        o["rollout_is"] = is_
        o["rollout_is_threshold"] = g.p("rollout_is_threshold")  # a string: "T" or IcePop's "lo_hi"
    cfg = cgrpo.Config.verl(**o)
    assert cfg["off_policy.rollout.mode"] == g.p("rollout_correction"), g.name
    scale = None
    if g.p("loss_scale_factor"):
        scale = cgrpo.Scale(length=g.num("loss_scale_factor"))
    components = weights = None
    if g.p("advantage") == "gdpo" and g.p("gdpo_components") != "none":
        components = g.t("reward_components")
        w = g.p("gdpo_reward_weights")
        weights = None if w == "none" else torch.tensor([float(x) for x in w.split(",")], dtype=torch.float64)
    return Setup(cfg, g.t("group_ids", torch.int64), "verl", scale=scale, components=components, weights=weights)


def setup_trl(g):
    assert g.p("source") == "trl" and g.p("refinement_rows") == "none"
    B = g.shape[0]
    adv = g.p("advantage")
    o = {"loss_type": g.p("trl_loss_type"),
         "scale_rewards": {"grpo": "group", "grpo_batch_std": "batch", "grpo_no_std": "none"}[adv],
         "importance_sampling_level": g.p("is_level")}
    clip = g.p("clip")
    if clip == "ppo":
        o["epsilon"], o["epsilon_high"] = g.num("eps_low"), g.num("eps_high")
        o["delta"] = g.num_or_none("dual_clip")
    elif clip == "cispo_max":
        o["epsilon_high"] = g.num("ratio_max")
    elif clip == "sapo":
        o["sapo_temperature_pos"], o["sapo_temperature_neg"] = g.num("tau_pos"), g.num("tau_neg")
    else:
        assert clip == "vespo"
        for k in ("k_pos", "lambda_pos", "k_neg", "lambda_neg"):
            o["vespo_" + k] = g.num(k)
    o["top_entropy_quantile"] = g.num("top_entropy_quantile")
    is_ = g.p("vllm_is")
    o["use_vllm"] = is_ != "none"
    if is_ != "none":
        o["vllm_importance_sampling_mode"] = is_
        o["vllm_importance_sampling_clip_min"] = g.num_or_none("vllm_is_min")
        o["vllm_importance_sampling_clip_max"] = g.num_or_none("vllm_is_max")
    o["off_policy_mask_threshold"] = g.num_or_none("opsm_threshold")
    if g.p("kl") != "none":
        o["beta"] = g.num("kl_coef")
        o["use_bias_correction_kl"] = g.p("kl_is_weighted") == "yes"
    o["temperature"] = g.num("temperature")
    o["entropy_coef"] = g.num("entropy_coef")
    cfg = cgrpo.Config.trl(**o)
    G = int(g.num("group_size"))
    ids = torch.arange(B) // G
    assert torch.equal(ids.double(), g.t("group_ids")), g.name
    scale = None
    if cfg["aggregation.policy"] == "seq-mean-token-sum-norm":
        length = _agg_number(g.p("pg_agg"), "L")
        assert length == B * g.num("max_completion_length")
        scale = cgrpo.Scale(length=length)
    return Setup(cfg, ids, "trl", scale=scale)


SETUPS = {".": setup_paper, "verl": setup_verl, "verl3": setup_verl3, "trl": setup_trl}


def golden_metric_key(name):
    """A peer's metric name as the golden files spell it ("actor/pg_loss" -> "metric_pg_loss")."""
    if name == "actor/entropy":
        return "metric_entropy_loss"
    key = name.replace("actor/", "").replace("rollout_corr/rollout_", "rollout_").replace("rollout_corr/", "rollout_corr_")
    key = key.replace("sampling/sampling_", "sampling_").replace("/", "_")
    return "metric_" + key


# Metrics the peers compute in float32 (GOLDEN_README.md "(f32)"): compared at 1e-6.
F32_METRICS = re.compile(r"metric_(clip_ratio_|cispo_clip_ratio|rollout_rs_seq_masked_fraction|rollout_is_seq_fraction_)")
SEQ_F32 = re.compile(r"metric_rollout_is_ratio_fraction_")
