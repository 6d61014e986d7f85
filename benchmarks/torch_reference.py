#!/usr/bin/env python3
"""benchmarks/torch_reference.py: the Critique-GRPO loss in plain PyTorch, the way verl computes it.

log_softmax in fp32, gather, ratio, clamp, masked means, autograd backward: the baseline the fused
CUDA kernels (benchmarks/gpu/bench_cuda_policy_loss) are compared with, for time and peak memory.
Same shapes and configuration as the CUDA benchmark: T x V in {4096, 16384} x {32000, 151936},
bf16 and fp32, responses of 1024 tokens, 1 refinement in each group of 8, 10% padding, the paper's
released configuration (no clipping, f(p) = p / (p + 0.1), entropy coefficient 0.001 token-mean,
policy term seq-mean-token-sum-norm). Needs a CUDA GPU and torch; prints a markdown table.
"""
import argparse
import json
import statistics
import sys


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 151936])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp16", "fp32"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15, help="timed runs; the median is reported")
    add_loss_args(p)
    return p.parse_args()


def add_loss_args(p):
    """The batch shape and loss options both reference scripts take, and --json."""
    p.add_argument("--response-length", type=int, default=1024)
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--entropy-coef", type=float, default=0.001)
    p.add_argument("--clip", choices=["none", "token"], default="none")
    p.add_argument("--clip-eps", type=float, default=0.2)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--json", help="also write the rows as JSON to this file")


def critique_grpo_loss(torch, logits, targets, mask, refinement, adv, old_logp, args):
    """J of MATH.md as verl writes it; logits [T, V] in the training dtype (a leaf with grad)."""
    z = logits.float() / args.temperature                   # verl: logits.div_(temperature), fp32 softmax
    logp_all = torch.log_softmax(z, dim=-1)                 # [T, V] fp32
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    p_all = torch.softmax(z, dim=-1)                        # verl entropy_from_logits
    entropy = torch.logsumexp(z, dim=-1) - (p_all * z).sum(-1)

    log_ratio = torch.clamp(logp - old_logp, -20.0, 20.0)   # verl clamps before exp
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    if args.clip == "token":
        pg2 = -adv * torch.clamp(ratio, 1.0 - args.clip_eps, 1.0 + args.clip_eps)
        on_policy = torch.maximum(pg1, pg2)
    else:
        on_policy = pg1
    prob = torch.exp(logp)
    shaped = -adv * prob / (prob + args.gamma)              # refinement tokens: f(p), no ratio
    per_token = torch.where(refinement, shaped, on_policy)

    m = mask.float()
    pg_loss = (per_token * m).sum() / args.response_length  # seq-mean-token-sum-norm, L = response length
    entropy_loss = (entropy * m).sum() / (m.sum() + 1e-8)   # token-mean (verl masked_mean)
    return pg_loss - args.entropy_coef * entropy_loss


def median_ms(torch, fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def paper_tokens(torch, T, V, L, g):
    """Targets, mask (the last 10% of each response padding), refinement (1 response of each group
    of 8), advantages and old log-probs of the paper's batch shape, drawn from generator g."""
    dev = g.device
    targets = torch.randint(0, V, (T,), device=dev, generator=g)
    pos = torch.arange(T, device=dev)
    mask = (pos % L) < (L * 9 // 10)
    refinement = ((pos // L) % 8) == 0
    adv = torch.randn(T, device=dev, generator=g)
    old_logp = -3.0 + 0.3 * torch.randn(T, device=dev, generator=g)
    return targets, mask, refinement, adv, old_logp


def import_torch_with_cuda():
    """torch, or None after printing why no benchmark runs (not importable, no CUDA device)."""
    try:
        import torch
    except ImportError:
        print("SKIPPED: torch is not importable")
        return None
    if not torch.cuda.is_available():
        print("SKIPPED: torch sees no CUDA device")
        return None
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    return torch


def run_case(torch, T, V, dtype_name, args):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(7)
    L = args.response_length
    logits = (torch.rand(T, V, device=dev, generator=g) * 8 - 4).to(dtype).requires_grad_(True)
    targets, mask, refinement, adv, old_logp = paper_tokens(torch, T, V, L, g)

    def fwd_bwd():
        logits.grad = None
        loss = critique_grpo_loss(torch, logits, targets, mask, refinement, adv, old_logp, args)
        loss.backward()

    def fwd():
        with torch.no_grad():
            critique_grpo_loss(torch, logits, targets, mask, refinement, adv, old_logp, args)

    row = {"T": T, "V": V, "dtype": dtype_name}
    for name, fn in (("fwd_bwd", fwd_bwd), ("fwd", fwd)):
        try:
            torch.cuda.synchronize()
            logits.grad = None
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            # Extra memory over the inputs, the gradient buffer included for fwd_bwd (as the fused kernel's grad).
            row[name + "_peak_extra_GB"] = (torch.cuda.max_memory_allocated() - base) / 1e9
            row[name + "_ms"] = median_ms(torch, fn, args.warmup, args.repeats)
        except torch.cuda.OutOfMemoryError:
            row[name + "_ms"] = None
            row[name + "_peak_extra_GB"] = None
            logits.grad = None
            torch.cuda.empty_cache()
    elem = logits.element_size()
    row["logits_GB"] = T * V * elem / 1e9
    if row.get("fwd_bwd_ms"):
        row["fwd_bwd_GBps"] = 2 * T * V * elem / (row["fwd_bwd_ms"] * 1e-3) / 1e9
    del logits
    torch.cuda.empty_cache()
    return row


def fmt(x, spec):
    return "OOM" if x is None else format(x, spec)


def main():
    args = parse_args()
    torch = import_torch_with_cuda()
    if torch is None:
        return 0
    rows = []
    for dtype_name in args.dtypes:
        for T in args.tokens:
            for V in args.vocab:
                rows.append(run_case(torch, T, V, dtype_name, args))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print()
    print("| dtype | T | V | logits GB | torch fwd+bwd ms | torch fwd ms | peak extra GB (fwd+bwd) | peak extra GB (fwd) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dtype']} | {r['T']} | {r['V']} | {r['logits_GB']:.2f} | {fmt(r['fwd_bwd_ms'], '.2f')} | "
              f"{fmt(r['fwd_ms'], '.2f')} | {fmt(r['fwd_bwd_peak_extra_GB'], '.2f')} | {fmt(r['fwd_peak_extra_GB'], '.2f')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
