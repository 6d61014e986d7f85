"""A plain eager PyTorch version of the loss (docs/MATH.md) as a Python trainer writes it: log_softmax,
gather, entropy, the policy term, KL, each term's aggregation, differentiated by autograd. It reads the
resolved config (cgrpo.Config.resolved()) and covers the token-level terms ratio, ppo_clip (dual clip,
TRL's delta), cispo, gpg, the refinement shaping, the KL estimators k1 / abs / k2 / k3 (clamped or not,
straight-through), and every aggregation mode with its conventions."""

import torch


def _agg_weights(mode, m, conv, length):
    """Per-token weights of an aggregation mode over the mask m [B, L] (docs/MATH.md, its conventions)."""
    B, L = m.shape
    n_i = m.sum(-1, keepdim=True)
    rows = float(B) if conv["aggregation.convention.count_empty_rows"] else float((n_i > 0).sum())
    if mode == "token-mean":
        return m / (m.sum() + conv["aggregation.convention.token_mean_eps"])
    if mode == "token-sum":
        return m
    if mode == "seq-mean-token-sum":
        return m / rows
    if mode == "seq-mean-token-mean":
        eps = conv["aggregation.convention.row_count_eps"]
        div = (n_i + eps) if eps > 0 else n_i.clamp(min=1.0)
        return m / (rows * div)
    if mode == "seq-mean-token-sum-norm":
        Lk = length if length else float(L)
        return m / (Lk * (rows if conv["aggregation.convention.sum_norm_per_row"] else 1.0))
    raise NotImplementedError(mode)


def _kl(logp, ref, c):
    est = c["kl.estimator"]
    d = logp - ref
    if est == "k1":
        v = d
    elif est == "abs":
        v = d.abs()
    elif est == "k2":
        v = 0.5 * d * d
    elif est == "k3":
        e = ref - logp
        if c["kl.k3_clamp"]:
            e = e.clamp(-20, 20)
            v = (e.exp() - e - 1).clamp(-10, 10)
        else:
            v = e.exp() - e - 1
    else:
        raise NotImplementedError(est)
    if c["kl.straight_through"] and est != "k2":
        k2 = 0.5 * d * d
        v = k2 - k2.detach() + v.detach()
    return v


def eager_loss(logits, targets, mask, advantages, old_logp, config, ref_logp=None, kinds=None, length=0.0):
    """(J, metrics) for logits [B, L, V], per-token [B, L] inputs, advantages [B], kinds [B] or None."""
    c = config.resolved()
    # What this reference does not implement must be off, so that it never ignores a config field.
    neutral = {"ratio.level": "token", "kl.times_ratio": False, "off_policy.rollout.mode": "none",
               "off_policy.rollout.is_level": "none", "off_policy.rollout.num_rejection_options": 0,
               "off_policy.sampler.mode": "none", "off_policy.opsm_threshold": float("inf"),
               "entropy_mask.top_quantile": 1}
    for key, value in neutral.items():
        if c[key] != value:
            raise NotImplementedError("reference.eager_loss: %s = %r" % (key, c[key]))
    tau = c["temperature"]
    logp_all = torch.log_softmax(logits / tau, dim=-1)
    logp = logp_all.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    H = -(logp_all.exp() * logp_all).sum(-1)
    m = mask.to(logits.dtype)
    A = advantages.to(logits.dtype).unsqueeze(-1).expand_as(logp)
    refine = torch.zeros_like(m, dtype=torch.bool) if kinds is None else (kinds != 0).unsqueeze(-1).expand_as(m)
    init = (m > 0) & ~refine

    x = (logp - old_logp).clamp(c["ratio.log_ratio_min"], c["ratio.log_ratio_max"])
    r = x.exp()
    term = c["policy.loss"]
    el, eh = c["ratio.clip_eps_low"], c["ratio.clip_eps_high"]
    clipped = torch.zeros_like(m, dtype=torch.bool)
    lower = torch.zeros_like(m, dtype=torch.bool)
    if term == "ratio":
        l = -A * r
    elif term == "ppo_clip":
        delta = c["ratio.two_sided_delta"]
        pg1 = -A * (r.clamp(max=delta) if delta != float("inf") else r)
        pg2 = -A * r.clamp(1 - el, 1 + eh)
        l = torch.maximum(pg1, pg2)
        clipped = pg2 > pg1
        if c["ratio.dual_clip"]:
            cap = -A * c["ratio.dual_clip_c"]
            lower = (A < 0) & (l > cap)
            l = torch.where(A < 0, torch.minimum(l, cap), l)
    elif term == "cispo":
        cr = r.clamp(1 - el, 1 + eh)
        l = -cr.detach() * A * logp
        clipped = r != cr
    elif term == "gpg":
        l = -A * logp
    else:
        raise NotImplementedError(term)
    p = logp.exp()
    gamma = c["policy.refinement_gamma"]
    l = torch.where(refine, -A * p / (p + gamma), l)

    w_pg = _agg_weights(c["aggregation.policy"], m, c, length)
    w_h = _agg_weights(c["aggregation.entropy"], m, c, length)
    J = (w_pg * l).sum() - c["entropy.coef"] * (w_h * H).sum()
    kl_loss = torch.zeros((), dtype=logits.dtype)
    if c["kl.estimator"] != "none":
        k = _kl(logp, ref_logp, c)
        w_kl = _agg_weights(c["aggregation.kl"], m, c, length)
        kl_loss = (w_kl * k).sum()
        J = J + c["kl.coef"] * kl_loss

    eps = c["metrics.mean_eps"]
    n_init = init.sum().item()
    mean_init = (lambda v: (v.double() * init).sum().item() / (n_init + eps)) if n_init else (lambda v: 0.0)
    n = (m > 0).sum().item()
    metrics = {
        "loss": J.item(),
        "pg_loss": (w_pg * l).sum().item(),
        "entropy_loss": (w_h * H).sum().item(),
        "kl_loss": kl_loss.item(),
        "pg_clipfrac": mean_init(clipped),
        "pg_clipfrac_lower": mean_init(lower),
        "ppo_kl": mean_init(-x),
        "entropy_mean": (m * H).sum().item() / (n + eps),
        "num_valid_tokens": n,
    }
    return J, metrics, logp, H


def random_batch(B=4, L=6, V=11, dtype=torch.float64, seed=0, empty_row=True, scale=2.0):
    """Logits, targets, a ragged mask (one empty row), advantages [B], old / ref log-probs near log p."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, L, V, generator=g, dtype=torch.float64) * scale
    targets = torch.randint(0, V, (B, L), generator=g)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    if empty_row:
        lengths[1] = 0
    mask = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    logp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    # Most ratios near 1 (inside the clip range), about one token in four far off (both clips and verl's
    # dual clip at c = 3 active).
    far = (torch.rand(B, L, generator=g) < 0.25).double()
    old = logp + (0.3 + 1.5 * far) * torch.randn(B, L, generator=g, dtype=torch.float64)
    ref = logp + 0.3 * torch.randn(B, L, generator=g, dtype=torch.float64)
    return (logits.to(dtype), targets, mask, adv.to(dtype), old.to(dtype), ref.to(dtype))
