"""Every golden case of tests/data (the paper's 3, verl/ 12, verl3/ 10, trl/ 12) through the Python API:
advantages (cgrpo.group_advantages), loss, dJ/dlogits (autograd), log p, H, the arrays the loss applied
and every metric the peer logs under the peer's own name; 1e-10 in double, 1e-5 in float32."""

import os

import pytest
import torch

import cgrpo
from golden import F32_METRICS, FOLDERS, SEQ_F32, SETUPS, Case, case_files, golden_metric_key

CASES = [(folder, path) for folder in FOLDERS for path in case_files(folder)]


def test_every_folder_is_complete():
    for folder, count in FOLDERS.items():
        assert len(case_files(folder)) == count, folder


def _rel(got, want, floor=1e-300):
    num = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
    return num / max(want.double().abs().max().item() if want.numel() else 0.0, floor)


def _advantages(g, s, dtype):
    counts = torch.tensor(g.arrays["mask"] != 0).sum(-1)
    if s.components is not None:
        adv = cgrpo.group_advantages(s.components.to(dtype), s.group_ids, s.config, token_counts=counts,
                                     weights=s.weights)
    else:
        adv = cgrpo.group_advantages(g.t("rewards", dtype), s.group_ids, s.config, token_counts=counts)
    return adv, counts > 0


@pytest.mark.parametrize("folder,path", CASES, ids=[os.path.relpath(p, os.path.dirname(p) + "/..") for _, p in CASES])
def test_golden_case(folder, path):
    g = Case(path)
    s = SETUPS[folder](g)
    B, L, V = g.shape

    # Advantages on the non-empty rows (GOLDEN_README.md).
    adv64, nonempty = _advantages(g, s, torch.float64)
    want_adv = g.t("advantages")
    err = ((adv64 - want_adv).abs() / want_adv.abs().clamp(min=1.0))[nonempty]
    assert err.max().item() <= 1e-10

    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        adv = adv64 if dtype == torch.float64 else _advantages(g, s, dtype)[0]
        logits = g.t("logits", dtype).requires_grad_()
        # Masks as int64 in double, bool in float: both are taken (0 / 1 checked).
        mask = g.t("mask", torch.int64) if dtype == torch.float64 else g.t("mask") != 0
        opt = {}
        for key, arg in (("ref_logp", "ref_logp"), ("rollout_logp", "rollout_logp")):
            if key in g.arrays:
                opt[arg] = g.t(key, dtype)
        loss, metrics, tok = cgrpo.policy_loss(
            logits, g.t("tokens", torch.int64), mask, adv, g.t("old_logp", dtype), kinds=s.kinds, config=s.config,
            scale=s.scale, metric_names=s.naming, return_token_outputs=True, **opt)
        loss.backward()
        want_loss = float(g.arrays["loss"])
        mask_b = torch.tensor(g.arrays["mask"] != 0)
        mean_abs_adv = adv64.abs().unsqueeze(1).expand(B, L)[mask_b].mean().item()
        floor = 1e-12 if dtype == torch.float64 else mean_abs_adv
        assert abs(loss.item() - want_loss) / max(abs(want_loss), floor) <= tol, (loss.item(), want_loss)
        assert _rel(logits.grad, g.t("grad_logits")) <= tol
        assert torch.all(logits.grad[~mask_b] == 0)
        assert _rel(tok.logp, g.t("log_prob")) <= tol
        assert _rel(tok.entropy, g.t("entropy")) <= tol
        # The arrays the loss applied (verl's IS weights, kept mask, kl_cov's selection).
        arrays = {"is_weights": torch.where(mask_b, tok.policy_factor.double(), torch.zeros(())),
                  "rs_keep": ((tok.token_terms & 1) != 0).double(),
                  "kl_cov_selected": ((tok.token_terms & 8) != 0).double()}
        for key, got in arrays.items():
            if key in g.arrays:
                assert _rel(got, g.t(key), 1e-12) <= tol, key
        if dtype != torch.float64:
            continue
        # Every metric the case holds, under the peer's name.
        by_golden_key = {golden_metric_key(k): v for k, v in metrics.items()}
        seq_level = s.config["off_policy.rollout.is_level"] == "sequence"
        for key, arr in g.arrays.items():
            if not key.startswith("metric_"):
                continue
            assert key in by_golden_key, (key, sorted(metrics))
            want = float(arr)
            mtol = 1e-6 if F32_METRICS.match(key) or (seq_level and SEQ_F32.match(key)) else 1e-10
            got = by_golden_key[key]
            assert abs(got - want) <= mtol * max(abs(want), 1e-8), (key, got, want)
