#!/usr/bin/env python3
"""benchmarks/python/bench_torch_op.py: the cgrpo torch ops against the same loss in eager PyTorch, fwd+bwd.

Variants, each timed and measured in a fresh subprocess (so that one's peak memory is not another's):
  op           cgrpo.policy_loss(logits, ...) + backward (one fused pass; dJ/dz saved for backward)
  op_raw       torch.ops.cgrpo.policy_loss with grad_out: the same pass into a dJ/dz buffer allocated once
               (no autograd, no fresh [T, V] allocation per call)
  eager        the loss as a Python trainer writes it (benchmarks/torch_reference.py, verl's way): log_softmax
               into [T, V], gather, softmax + entropy, ratio, shaping, masked means, autograd backward
  linear op    cgrpo.fused_linear_policy_loss(hidden, W, ...) + backward (the logits one chunk at a time)
  linear eager hidden @ W.T, then the eager loss, autograd (dJ/dh and dJ/dW)
The paper's config (paper/critique_grpo: ratio without clipping, refinement shaping f(p) = p / (p + 0.1),
entropy 0.001 token-mean, the policy term seq-mean-token-sum-norm) on padded [B, L, V] logits, responses
of L = 128 tokens with the last 10% padding, one refinement response in each group of 8. Both sides first
compute the same loss (checked: 1e-4 relative in float32) and run on the same number of threads.

Time: median and fastest of --repeats fwd+bwd calls after a warm-up. Bytes moved: one read and one write
of the logits (2 T V 4, what a fused forward+backward must move at least, as benchmarks/cpu counts it);
"of copy" is that rate over a torch copy of a [T, V] float32 buffer (read + write; at least 64 MiB)
measured in the same run. Peak extra memory: CPU: the process's peak RSS (ru_maxrss) during the first fwd+bwd minus its RSS
with the inputs allocated, in a fresh process per variant (so it counts every byte torch touches: the
gradient buffer, autograd's saved tensors, the op's workspace); CUDA: torch.cuda.max_memory_allocated
over memory_allocated before the call. "vs eager": eager time / op time and eager memory / op memory.

  python3 benchmarks/python/bench_torch_op.py                 # 512 x 32000 and 512 x 151936, CPU
  python3 benchmarks/python/bench_torch_op.py --quick         # a fast smoke (small shapes, 2 repeats)
  python3 benchmarks/python/bench_torch_op.py --device cuda   # gpu-check: the eager side on the GPU
The op library comes from the built package (PYTHONPATH=<build>/python, or CGRPO_PYTHON_DIR).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))  # torch_reference.py: the eager loss


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["512x32000", "512x151936"], help="T x V of the logits")
    p.add_argument("--linear-hidden", type=int, default=256,
                   help="H of the LM-head rows (hidden [T, H], W [V, H]); 0: no LM-head rows")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (the op uses as many)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small shapes, 2 repeats: a smoke test")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    p.add_argument("--shape", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.shapes, a.repeats = ["256x4096"], 2
        a.linear_hidden = min(a.linear_hidden, 64) if a.linear_hidden else 0
    return a


# ------------------------------------------------------------------------------------------------
# One variant, in its own process.

def loss_args(L):
    return argparse.Namespace(temperature=1.0, clip="none", clip_eps=0.2, gamma=0.1, entropy_coef=0.001,
                              response_length=L)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_variant(a):
    import torch
    import cgrpo
    from torch_reference import critique_grpo_loss

    torch.set_num_threads(a.threads)
    dev = a.device
    T, V = (int(x) for x in a.shape.split("x"))
    L = 128 if T >= 128 else T
    B = T // L
    T = B * L
    g = torch.Generator(device=dev).manual_seed(7)
    pos = torch.arange(T, device=dev)
    targets = torch.randint(0, V, (T,), device=dev, generator=g)
    mask = (pos % L) < (L * 9 // 10)
    refinement = ((pos // L) % 8) == 0
    adv = torch.randn(T, device=dev, generator=g)
    old_logp = -3.0 + 0.3 * torch.randn(T, device=dev, generator=g)
    config = cgrpo.Config.preset("paper/critique_grpo")
    args = loss_args(L)
    linear = a.variant.startswith("linear")
    H = a.linear_hidden
    if linear:
        hidden = torch.randn(T, H, device=dev, generator=g).requires_grad_()
        weight = (torch.randn(V, H, device=dev, generator=g) / H ** 0.5).requires_grad_()
        leaves = (hidden, weight)
    else:
        logits = (torch.rand(T, V, device=dev, generator=g) * 8 - 4).requires_grad_()
        leaves = (logits,)
    view = lambda x: x.view(B, L, *x.shape[1:])

    def op_loss():
        if linear:
            return cgrpo.fused_linear_policy_loss(view(hidden), weight, None, view(targets), view(mask), view(adv),
                                                  view(old_logp), kinds=view(refinement), config=config,
                                                  metric_names="cgrpo")[0]
        return cgrpo.policy_loss(view(logits), view(targets), view(mask), view(adv), view(old_logp),
                                 kinds=view(refinement), config=config, metric_names="cgrpo")[0]

    def eager_loss():
        z = hidden @ weight.T if linear else logits
        return critique_grpo_loss(torch, z, targets, mask, refinement, adv, old_logp, args)

    grad_buffer = torch.empty_like(logits) if a.variant == "op_raw" else None

    def op_raw():
        # The op itself, into a gradient buffer allocated once (what a trainer that owns dJ/dz can do):
        # the fused pass without autograd's backward multiply and without a fresh [T, V] allocation.
        return cgrpo.ops.policy_loss(view(logits.detach()), view(targets), view(mask), view(adv), view(old_logp),
                                     None, None, view(refinement), None, config.text, [], True, view(grad_buffer),
                                     0)[0]

    fn = {"op": op_loss, "linear_op": op_loss, "op_raw": op_raw}.get(a.variant, eager_loss)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def fwd_bwd():
        for x in leaves:
            x.grad = None
        loss = fn()
        if fn is not op_raw:
            loss.backward()
        sync()

    row = {"variant": a.variant, "T": T, "V": V, "H": H if linear else None, "device": dev, "threads": a.threads}
    if fn is not eager_loss and dev == "cuda":
        row["skipped"] = "the Python package's ops are the CPU path (CUDA tensors are refused by name)"
        return row
    if dev == "cuda":
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd()
        row["peak_extra_MB"] = (torch.cuda.max_memory_allocated() - base) / 1e6
    else:
        base = rss_bytes()
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        fwd_bwd()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        # ru_maxrss never falls: a peak before the call (the imports, the check above) above base + extra
        # would hide the call's own; say so rather than report it low.
        row["peak_extra_MB"] = (peak - base) / 1e6
        row["peak_extra_is_lower_bound"] = peak <= peak_before
    # The same loss on both sides (after the memory measurement: the other side's peak is not this one's).
    with torch.no_grad():
        got, want = float(op_loss()), float(eager_loss())
    row["loss"] = want if fn is eager_loss else got
    row["loss_rel_diff_op_vs_eager"] = abs(got - want) / max(abs(want), 1e-30)
    if row["loss_rel_diff_op_vs_eager"] > 1e-4:
        raise SystemExit("bench_torch_op: the op's loss %.9g and the eager loss %.9g differ" % (got, want))
    times = []
    for _ in range(a.repeats):
        start = time.perf_counter()
        fwd_bwd()
        times.append(time.perf_counter() - start)
    row["ms_median"] = 1e3 * statistics.median(times)
    row["ms_min"] = 1e3 * min(times)
    return row


def copy_roofline(a, T, V):
    """GB/s of a torch copy of a [T, V] float32 buffer (read + write; at least 64 MiB, so that it is not
    a copy within the caches), fastest of 6, in this process."""
    import torch
    torch.set_num_threads(a.threads)
    src = torch.rand(max(T * V, 16 << 20), device=a.device)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    best = float("inf")
    for _ in range(6):
        sync()
        start = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


# ------------------------------------------------------------------------------------------------
# The driver: one subprocess per (shape, variant), then one table.

def child(a, variant, shape):
    cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--shape", shape, "--device", a.device,
           "--threads", str(a.threads), "--repeats", str(a.repeats), "--linear-hidden", str(a.linear_hidden)]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit("bench_torch_op: %s at %s failed (exit %d):\n%s" % (variant, shape, r.returncode, r.stderr))
    return json.loads(r.stdout.strip().splitlines()[-1])


def machine():
    name = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return "%s, %d cores, load %.2f" % (name, os.cpu_count() or 0, load)


def main(argv=None):
    a = parse_args(argv)
    if a.variant:
        if a.variant == "copy":
            T, V = (int(x) for x in a.shape.split("x"))
            print(json.dumps({"copy_GBps": copy_roofline(a, T, V)}))
        else:
            print(json.dumps(run_variant(a)))
        return 0
    try:
        import torch
    except ImportError:
        print("SKIPPED: torch is not importable")
        return 0
    if a.device == "cuda" and not torch.cuda.is_available():
        print("SKIPPED: --device cuda, but torch sees no CUDA device")
        return 0
    dev_name = torch.cuda.get_device_name(0) if a.device == "cuda" else machine()
    print("device: %s; torch %s; %d thread(s); %d repeats" % (dev_name, torch.__version__, a.threads, a.repeats))
    rows = []
    for shape in a.shapes:
        copy = child(a, "copy", shape)["copy_GBps"]
        variants = ["op", "op_raw", "eager"] + (["linear_op", "linear_eager"] if a.linear_hidden > 0 else [])
        got = {v: child(a, v, shape) for v in variants}
        for v in variants:
            r = got[v]
            r["copy_GBps"] = copy
            if "skipped" not in r and not v.startswith("linear"):
                r["GBps"] = 2 * r["T"] * r["V"] * 4 / (r["ms_median"] * 1e-3) / 1e9
                r["of_copy"] = r["GBps"] / copy
            base = got["linear_eager" if v.startswith("linear") else "eager"]
            if v in ("op", "op_raw", "linear_op") and "skipped" not in r and "skipped" not in base:
                r["time_vs_eager"] = base["ms_median"] / r["ms_median"]
                r["memory_vs_eager"] = base["peak_extra_MB"] / max(r["peak_extra_MB"], 1e-9)
            rows.append(r)
    print()
    print("| T x V (x H) | variant | ms median | ms min | GB/s | of copy | peak extra MB | eager / op time | "
          "eager / op memory |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    names = {"op": "cgrpo.policy_loss", "op_raw": "torch.ops.cgrpo.policy_loss, grad_out", "eager": "eager PyTorch", "linear_op": "cgrpo.fused_linear_policy_loss",
             "linear_eager": "eager h @ W.T + loss"}
    f = lambda r, k, s: format(r[k], s) if r.get(k) is not None else ""
    for r in rows:
        shape = "%d x %d" % (r["T"], r["V"]) + (" x %d" % r["H"] if r.get("H") else "")
        if "skipped" in r:
            print("| %s | %s | skipped: %s | | | | | | |" % (shape, names[r["variant"]], r["skipped"]))
            continue
        mem = f(r, "peak_extra_MB", ".1f") + (" (lower bound)" if r.get("peak_extra_is_lower_bound") else "")
        print("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            shape, names[r["variant"]], f(r, "ms_median", ".2f"), f(r, "ms_min", ".2f"), f(r, "GBps", ".1f"),
            ("%.0f%%" % (100 * r["of_copy"])) if r.get("of_copy") is not None else "", mem,
            (f(r, "time_vs_eager", ".2f") + "x") if r.get("time_vs_eager") else "",
            (f(r, "memory_vs_eager", ".2f") + "x") if r.get("memory_vs_eager") else ""))
    print("\ncopy roofline (torch copy of a [T, V] float32 buffer, >= 64 MiB, read + write): " +
          ", ".join("%s: %.1f GB/s" % (s, next(r["copy_GBps"] for r in rows if "%dx%d" % (r["T"], r["V"]) == s))
                    for s in a.shapes if any("%dx%d" % (r["T"], r["V"]) == s for r in rows)))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
