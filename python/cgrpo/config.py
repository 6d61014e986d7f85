"""Configs: a cgrpo::Recipe (the loss config and the advantage settings) as its text.

A Config is an ordered list of ``key=value`` items, the text ``cgrpo::recipe_from_text`` parses in
C++ (include/cgrpo/presets/recipe_text.hpp); it crosses the op boundary as that text::

    Config.preset("verl/grpo")                       # the registry; "verl/grpo@legacy_dp_actor" too
    Config.verl(loss_mode="gspo", use_kl_loss=True)  # cgrpo::VerlOptions fields (verl's yaml names)
    Config.trl(loss_type="dapo", beta=0.04)          # cgrpo::TrlOptions fields (GRPOConfig's names)
    Config.preset("verl/grpo").set("kl.coef", 0.01)  # any field by its dotted path (Config.fields())
    Config("preset=trl/grpo;entropy.coef=0.01")      # the text itself

Errors (an unknown key, a bad value, a config LossConfig::validate() refuses) are ValueError naming
the key; they surface when the config is first used or on ``validate()``.
"""

import functools
import math
import re

from ._ops import ops

_BAD_TEXT = re.compile(r"[;=\n]")


def _format(value):
    """A Python value as the text's value: bools true / false, None "none", floats exactly (repr)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "none"
        return repr(value)
    if hasattr(value, "item") and callable(value.item):  # a 0-dim tensor / numpy scalar
        return _format(value.item())
    text = str(value)
    if _BAD_TEXT.search(text):
        raise ValueError("cgrpo.Config: value %r may not hold ';', '=' or a newline" % (text,))
    return text


def _parse(text):
    """'k=v;k=v' -> [(k, v)], as the C++ parser splits it (later duplicates win there too)."""
    items = []
    for item in re.split(r"[;\n]", text or ""):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError("cgrpo.Config: item %r is not key=value" % (item,))
        items.append((key.strip(), value.strip()))
    return items


def _typed(value):
    """A resolved field's text as a Python value."""
    if value in ("true", "false"):
        return value == "true"
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


@functools.lru_cache(maxsize=256)
def _resolved(text):
    resolved = ops.recipe_text(text)  # raises ValueError naming the bad key
    return tuple((k, _typed(v)) for k, v in _parse(resolved))


# GRPOConfig fields that are not cgrpo::TrlOptions fields but set a config field.
_TRL_EXTRA_FIELDS = {"entropy_coef": "entropy.coef"}


class Config:
    """A recipe (loss config + advantage settings) as the text the C++ side parses."""

    def __init__(self, text=""):
        if isinstance(text, Config):
            text = text.text
        self._items = []
        for key, value in _parse(text):
            self._put(key, value)

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def preset(cls, name):
        """A registry preset by name ("paper/critique_grpo", "verl/grpo", "verl/grpo@legacy_dp_actor",
        "trl/dapo", ...; cgrpo.presets() lists them)."""
        return cls()._put("preset", _format(name))

    @classmethod
    def verl(cls, **options):
        """cgrpo::verl_recipe of cgrpo::VerlOptions with these fields (verl's names and defaults:
        loss_mode, loss_agg_mode, clip_ratio, clip_ratio_low, clip_ratio_high, clip_ratio_c,
        entropy_coeff, use_kl_loss, kl_loss_coef, kl_loss_type, tau_pos, tau_neg, kl_cov_ratio,
        ppo_kl_coef, clip_cov_ratio, clip_cov_lb, clip_cov_ub, dro_beta, temperature, adv_estimator,
        norm_adv_by_std_in_grpo, rollout_is, rollout_is_threshold (a number, or IcePop's "lo_hi"),
        rollout_is_batch_normalize, rollout_rs, rollout_rs_threshold, bypass_mode, loss_type, actor
        ("engine" or "legacy_dp_actor")). None is verl's None."""
        c = cls()
        # The base is verl_recipe() even with no options (an empty text would be the paper's Recipe{}):
        # verl's default loss_mode, replaced by an explicit one.
        c._put("verl.loss_mode", "vanilla")
        for key, value in options.items():
            if key == "rollout_is_threshold" and isinstance(value, str):
                key = "rollout_is_threshold_text"
            c._put("verl." + key, _format(value))
        return c

    @classmethod
    def trl(cls, **options):
        """cgrpo::trl_recipe of cgrpo::TrlOptions with these fields (GRPOConfig's names and defaults:
        loss_type, importance_sampling_level, epsilon, epsilon_high, delta, beta,
        use_bias_correction_kl, scale_rewards, use_vllm, vllm_importance_sampling_correction,
        vllm_importance_sampling_mode, vllm_importance_sampling_clip_min / _max,
        off_policy_mask_threshold, top_entropy_quantile, sapo_temperature_pos / _neg, vespo_k_pos,
        vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg, temperature), and GRPOConfig's entropy_coef
        (entropy.coef). None is TRL's None. max_completion_length and num_items_in_batch are batch
        values: pass them to cgrpo.trl.grpo_loss (or as scale=)."""
        c = cls()
        # The base is trl_recipe() even with no options (an empty text would be the paper's Recipe{}):
        # GRPOConfig's default loss_type, replaced by an explicit one.
        c._put("trl.loss_type", "dapo")
        overrides = []
        for key, value in options.items():
            if key in _TRL_EXTRA_FIELDS:
                overrides.append((_TRL_EXTRA_FIELDS[key], _format(value)))
            else:
                c._put("trl." + key, _format(value))
        for key, value in overrides:
            c._put(key, value)
        return c

    # -- editing ----------------------------------------------------------------------------------
    def _put(self, key, value):
        if not isinstance(key, str) or not key or _BAD_TEXT.search(key) or key != key.strip():
            raise ValueError("cgrpo.Config: bad key %r" % (key,))
        self._items = [(k, v) for k, v in self._items if k != key]
        self._items.append((key, value))
        return self

    def set(self, path, value):
        """Sets one field by its dotted path ("kl.coef", "policy.sapo.tau_pos",
        "off_policy.rollout.rejection[0].upper", "advantage.eps"; Config.fields() lists them), or a
        verl.* / trl.* option. Enums by name ("token-mean", "k3", "ppo_clip"). Returns self."""
        return self._put(path, _format(value))

    def copy(self):
        return Config(self.text)

    def updated(self, **paths):
        """A copy with fields set; '__' stands for '.' in the keyword names (kl__coef=0.01)."""
        c = self.copy()
        for key, value in paths.items():
            c.set(key.replace("__", "."), value)
        return c

    # -- reading ----------------------------------------------------------------------------------
    @property
    def text(self):
        """The text the ops take ("preset=verl/grpo;kl.coef=0.01")."""
        return ";".join("%s=%s" % kv for kv in self._items)

    def validate(self):
        """Parses and validates the config in C++ (ValueError naming the key). Returns self."""
        _resolved(self.text)
        return self

    def resolved(self):
        """Every field of the recipe this config gives, {path: value} (the C++ recipe_to_text)."""
        return dict(_resolved(self.text))

    def __getitem__(self, path):
        resolved = self.resolved()
        if path not in resolved:
            raise KeyError("cgrpo.Config has no field %r (Config.fields() lists them)" % (path,))
        return resolved[path]

    def get(self, path, default=None):
        return self.resolved().get(path, default)

    @staticmethod
    def fields():
        """Every field path a Config may set (LossConfig and advantage.* fields)."""
        return ops.field_paths().split(";")

    def __repr__(self):
        return "cgrpo.Config(%r)" % (self.text,)

    def __eq__(self, other):
        return isinstance(other, Config) and other.text == self.text

    def __hash__(self):
        return hash(self.text)


def as_config(config):
    """None (the paper's defaults), a Config, or its text -> Config."""
    if config is None:
        return Config()
    if isinstance(config, Config):
        return config
    if isinstance(config, str):
        return Config(config)
    raise TypeError("cgrpo: config must be a cgrpo.Config, its text or None, got %s" % type(config).__name__)


def presets():
    """The registry: {name: one-line summary}."""
    out = {}
    for line in ops.presets().splitlines():
        name, _, summary = line.partition("\t")
        out[name] = summary
    return out
