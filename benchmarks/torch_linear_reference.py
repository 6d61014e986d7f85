#!/usr/bin/env python3
"""benchmarks/torch_linear_reference.py: the LM head and the Critique-GRPO loss in plain PyTorch, verl-style.

logits = h @ W.T in the training dtype, then the loss of torch_reference.py (fp32 log_softmax, gather,
ratio, masked means) and autograd backward to h and W: the baseline the fused CUDA LM head + loss
(benchmarks/gpu/bench_cuda_fused_linear) is compared with, for time and peak extra memory. Same shapes
and configuration: T x H x V in {4096 x 4096 x 32000, 4096 x 4096 x 151936, 16384 x 4096 x 151936}, bf16,
responses of 1024 tokens, 1 refinement per group of 8, 10% padding, the paper's released
configuration. Needs a CUDA GPU and torch; prints a markdown table.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_reference import (add_loss_args, critique_grpo_loss, import_torch_with_cuda, median_ms,  # noqa: E402
                             paper_tokens)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["4096x4096x32000", "4096x4096x151936", "16384x4096x151936"],
                   help="T x H x V")
    p.add_argument("--dtypes", nargs="+", default=["bf16"], choices=["bf16", "fp16", "fp32"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7, help="timed runs; the median is reported")
    add_loss_args(p)
    return p.parse_args()


def run_case(torch, T, H, V, dtype_name, args):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(7)
    L = args.response_length
    h = ((torch.rand(T, H, device=dev, generator=g) * 2 - 1)).to(dtype).requires_grad_(True)
    W = ((torch.rand(V, H, device=dev, generator=g) * 2 - 1) * (9.0 / H ** 0.5)).to(dtype).requires_grad_(True)
    targets, mask, refinement, adv, old_logp = paper_tokens(torch, T, V, L, g)

    def fwd_bwd():
        h.grad = None
        W.grad = None
        logits = h @ W.T                                      # [T, V] in the training dtype
        loss = critique_grpo_loss(torch, logits, targets, mask, refinement, adv, old_logp, args)
        loss.backward()

    row = {"T": T, "H": H, "V": V, "dtype": dtype_name}
    try:
        torch.cuda.synchronize()
        h.grad = None
        W.grad = None
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd()
        torch.cuda.synchronize()
        # Extra memory over the inputs; the gradients of h and W are counted (the fused path writes
        # them into buffers that exist before the call: subtract them to compare like with like).
        grads = h.numel() * h.element_size() + W.numel() * W.element_size()
        row["peak_extra_GB"] = (torch.cuda.max_memory_allocated() - base) / 1e9
        row["peak_extra_minus_grads_GB"] = (torch.cuda.max_memory_allocated() - base - grads) / 1e9
        row["fwd_bwd_ms"] = median_ms(torch, fwd_bwd, args.warmup, args.repeats)
        row["TFLOPs"] = 6.0 * T * H * V / (row["fwd_bwd_ms"] * 1e-3) / 1e12
    except torch.cuda.OutOfMemoryError:
        row["fwd_bwd_ms"] = None
        row["peak_extra_GB"] = None
        row["peak_extra_minus_grads_GB"] = None
        row["TFLOPs"] = None
    del h, W
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
        for shape in args.shapes:
            T, H, V = (int(x) for x in shape.split("x"))
            rows.append(run_case(torch, T, H, V, dtype_name, args))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print()
    print("| dtype | T x H x V | torch h @ W.T + loss, fwd+bwd ms | TFLOP/s | peak extra GB | peak extra GB without dh, dW |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dtype']} | {r['T']} x {r['H']} x {r['V']} | {fmt(r['fwd_bwd_ms'], '.2f')} | {fmt(r['TFLOPs'], '.1f')} | "
              f"{fmt(r['peak_extra_GB'], '.2f')} | {fmt(r['peak_extra_minus_grads_GB'], '.2f')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
