"""Packed (varlen) causal softmax attention on a GPU: our Triton kernel
(``kernels.softmax_attention``, one launch forward, two backward) against the per-sequence SDPA
loop it replaces (two launches per sequence per layer, plus a concatenation) and torch's own
varlen attention (``torch.nn.attention.varlen.varlen_attn``, FlashAttention) where this torch
has it — all measured in the same run, forward and forward + backward.

Shapes: Ring-mini-linear-2.0's softmax layers (16 query heads, 4 KV heads, head dim 128), a pack
of 8192 tokens.  Length cases (seeded):

* ``gpu_ring`` — the GPU recipe's sequences (``recipes/gpu_ring.yaml``: prompts of 22–23 tokens,
  completions of 1–40 = max_new_tokens, uniform): ~190 sequences per pack, the worst case for
  the per-sequence loop;
* ``n16`` / ``n32`` / ``n64`` — 8192 tokens split into 16, 32, 64 sequences of long-tailed
  lengths (lognormal, σ = 0.8): long-context RL packs (issue 19 item 3);
* ``--lengths 1,2,17,...`` — your own.

Also checked in the same run: each implementation's forward and gradients against a float64
per-sequence reference (relative Frobenius error), so a fast wrong kernel shows.  ``--configs``
also times other block configurations of the kernel (``causal_triton`` constants) for tuning.

Output: JSON lines on stdout (and ``DIR/varlen_attention.jsonl`` with ``--out DIR``): a header
(device, software, date), then one line per (case, dtype, implementation) with ms forward and
forward + backward (``triton.testing.do_bench`` medians), TFLOP/s and the ratios kernel ÷ anchor.
No network, one command:

    python -m benchmarks.gpu.varlen_attention [--out DIR] [--dtypes bf16,fp32] [--configs]
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import torch

from benchmarks.harness import environment, gpu_ms
from kernels.softmax_attention import causal_attention, naive_causal_attention

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Alternative launch configurations for --configs: (fwd M, fwd N, fwd warps, dkdv N, dkdv M, dq M,
# dq N, bwd warps, stages); the first is the shipped one (causal_triton's constants).
CONFIGS = [(128, 64, 8, 64, 32, 64, 32, 8, 2), (64, 64, 4, 64, 64, 64, 64, 8, 2),
           (128, 32, 8, 32, 32, 64, 32, 4, 2), (64, 32, 4, 64, 16, 64, 16, 4, 2),
           (128, 64, 8, 128, 32, 128, 32, 8, 3), (64, 64, 4, 64, 64, 64, 64, 4, 2)]
CONFIG_NAMES = ("FWD_BLOCK_M", "FWD_BLOCK_N", "FWD_WARPS", "DKDV_BLOCK_N", "DKDV_BLOCK_M", "DQ_BLOCK_M",
                "DQ_BLOCK_N", "BWD_WARPS", "NUM_STAGES")


def emit(record: dict, sink) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if sink is not None:
        sink.write(line + "\n")
        sink.flush()


def case_lengths(case: str, tokens: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    if case == "gpu_ring":  # prompt 22–23 + completion 1–40 until the pack is full
        lengths, total = [], 0
        while total < tokens:
            n = int(torch.randint(22, 24, (1,), generator=g)) + int(torch.randint(1, 41, (1,), generator=g))
            n = min(n, tokens - total)
            lengths.append(n)
            total += n
        return lengths
    count = int(case[1:])
    weights = torch.exp(0.8 * torch.randn(count, generator=g, dtype=torch.float64))
    lengths = (weights / weights.sum() * tokens).floor().clamp(min=1).long()
    lengths[torch.argmax(lengths)] += tokens - int(lengths.sum())   # exactly `tokens`
    return lengths.tolist()


def causal_flops(lengths: list[int], heads: int, dim: int) -> float:
    """Forward FLOPs: QKᵀ and PV, 2·d each per visible (query, key) pair, L(L+1)/2 pairs."""
    return 4.0 * dim * heads * sum(n * (n + 1) / 2 for n in lengths)


def torch_varlen():
    """(varlen_attn, how it was called) of this torch, or (None, why not)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except Exception as e:  # noqa: BLE001 - report whatever stops it
        return None, f"absent ({type(e).__name__}: {e})"
    params = inspect.signature(varlen_attn).parameters
    return varlen_attn, "signature: " + ", ".join(params)


def varlen_call(fn, q, k, v, cu, max_len, scale, expand_kv: bool):
    """torch's varlen attention on ``[T, heads, D]``: causal through whichever argument this
    version has (2.10: ``is_causal``; later: ``window_size=(-1, 0)``), GQA through
    ``enable_gqa`` (2.12+), FlashAttention's own KV-head broadcast, or by repeating K, V."""
    params = inspect.signature(fn).parameters
    kwargs = {"scale": scale} if "scale" in params else {}   # 2.10 has none: its default is D^-0.5
    if "is_causal" in params:
        kwargs["is_causal"] = True
    else:
        kwargs["window_size"] = (-1, 0)
    if "enable_gqa" in params and not expand_kv:
        kwargs["enable_gqa"] = True
    if expand_kv:
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return fn(q, k, v, cu, cu, max_len, max_len, **kwargs)


def float64_reference(q, k, v, lengths, do):
    """Per-sequence float64 outputs and gradients (an independent softmax, no SDPA)."""
    ref = [x.detach().double().requires_grad_() for x in (q, k, v)]
    outs, start = [], 0
    for n in lengths:
        outs.append(naive_causal_attention(*(x[:, start:start + n] for x in ref)))
        start += n
    o = torch.cat(outs, 1)
    grads = torch.autograd.grad((o * do.double()).sum(), ref)
    return [o.detach(), *grads]


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def run_case(case, lengths, dtype_name, args, sink, varlen_fn) -> None:
    dt, dev = DTYPES[dtype_name], args.device
    H, KV, D, T = args.heads, args.kv_heads, args.head_dim, sum(lengths)
    g = torch.Generator(device=dev).manual_seed(args.seed)
    q = torch.randn(1, T, H, D, device=dev, generator=g).to(dt).requires_grad_()
    k = torch.randn(1, T, KV, D, device=dev, generator=g).to(dt).requires_grad_()
    v = torch.randn(1, T, KV, D, device=dev, generator=g).to(dt).requires_grad_()
    do = torch.randn(1, T, H, D, device=dev, generator=g).to(dt)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=dev)
    scale = D ** -0.5
    reference = float64_reference(q, k, v, lengths, do)

    impls = {"kernel": lambda: causal_attention(q, k, v, cu, scale, backend="triton"),
             "sdpa_loop": lambda: causal_attention(q, k, v, cu, scale, backend="torch")}
    if varlen_fn is not None and dt != torch.float32:
        for expand in (False, True):
            def call(expand=expand):
                return varlen_call(varlen_fn, q[0], k[0], v[0], cu, max(lengths), scale, expand)[None]
            try:
                call().sum().backward()
                impls["torch_varlen" + ("_kv_repeated" if expand else "")] = call
                break
            except Exception as e:  # noqa: BLE001 - this torch's varlen refuses these inputs
                emit({"case": case, "dtype": dtype_name, "impl": "torch_varlen", "kv_repeated": expand,
                      "error": f"{type(e).__name__}: {str(e)[:300]}"}, sink)
    base = {"case": case, "dtype": dtype_name, "tokens": T, "sequences": len(lengths),
            "max_len": max(lengths), "heads": H, "kv_heads": KV, "head_dim": D}
    flops = causal_flops(lengths, H, D)
    times = {}
    for name, fn in impls.items():
        out = fn()
        grads = torch.autograd.grad((out * do).sum(), (q, k, v))
        errors = {f"rel_err_{n}": rel(x, r) for n, x, r in zip(("o", "dq", "dk", "dv"), (out, *grads), reference)}

        def fwd_bwd(fn=fn):
            fn().backward(do)

        with torch.no_grad():
            fwd = gpu_ms(fn, warmup=args.warmup, rep=args.rep)
        both = gpu_ms(fwd_bwd, warmup=args.warmup, rep=args.rep, grad_to_none=[q, k, v])
        times[name] = (fwd, both)
        emit({**base, "impl": name, "fwd_ms": round(fwd, 4), "fwd_bwd_ms": round(both, 4),
              "fwd_tflops": round(flops / fwd * 1e-9, 1), "fwd_bwd_tflops": round(3.5 * flops / both * 1e-9, 1),
              **{k_: float(f"{e:.3g}") for k_, e in errors.items()}}, sink)
    kernel = times["kernel"]
    for name, (fwd, both) in times.items():
        if name != "kernel":
            emit({**base, "ratio": f"{name} / kernel", "fwd": round(fwd / kernel[0], 2),
                  "fwd_bwd": round(both / kernel[1], 2)}, sink)
    if args.configs and case in args.config_cases.split(",") and dtype_name == args.dtypes.split(",")[0]:
        sweep_configs(base, q, k, v, cu, scale, do, reference, flops, args, sink)


def sweep_configs(base, q, k, v, cu, scale, do, reference, flops, args, sink) -> None:
    import kernels.softmax_attention.causal_triton as ct

    shipped = {name: getattr(ct, name) for name in CONFIG_NAMES}
    try:
        for config in CONFIGS:
            for name, value in zip(CONFIG_NAMES, config):
                setattr(ct, name, value)
            label = dict(zip(CONFIG_NAMES, config))
            try:
                def fn():
                    return causal_attention(q, k, v, cu, scale, backend="triton")

                def fwd_bwd():
                    fn().backward(do)

                out = fn()
                grads = torch.autograd.grad((out * do).sum(), (q, k, v))
                worst = max(rel(x, r) for x, r in zip((out, *grads), reference))
                with torch.no_grad():
                    fwd = gpu_ms(fn, warmup=args.warmup, rep=args.rep)
                both = gpu_ms(fwd_bwd, warmup=args.warmup, rep=args.rep, grad_to_none=[q, k, v])
                emit({**base, "impl": "kernel_config", **label, "fwd_ms": round(fwd, 4),
                      "fwd_bwd_ms": round(both, 4), "fwd_bwd_tflops": round(3.5 * flops / both * 1e-9, 1),
                      "worst_rel_err": float(f"{worst:.3g}")}, sink)
            except Exception as e:  # noqa: BLE001 - a config may not fit the GPU's shared memory
                emit({**base, "impl": "kernel_config", **label, "error": f"{type(e).__name__}: {str(e)[:200]}"}, sink)
    finally:
        for name, value in shipped.items():
            setattr(ct, name, value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="also write DIR/varlen_attention.jsonl")
    p.add_argument("--tokens", type=int, default=8192, help="tokens per pack")
    p.add_argument("--cases", default="gpu_ring,n16,n32,n64")
    p.add_argument("--lengths", default="", help="comma-separated sequence lengths (replaces --cases)")
    p.add_argument("--dtypes", default="bf16,fp32", help="of bf16, fp16, fp32")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=25, help="do_bench warm-up ms")
    p.add_argument("--rep", type=int, default=100, help="do_bench measured ms")
    p.add_argument("--configs", action="store_true", help="also time the kernel's other launch configurations "
                   "(first dtype, --config-cases)")
    p.add_argument("--config-cases", default="gpu_ring,n32")
    args = p.parse_args(argv)
    args.device = "cuda"
    if not torch.cuda.is_available():
        print(json.dumps({"error": "needs a CUDA GPU (the Triton kernels are timed on the device)"}))
        return 2
    sink = None
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        sink = (args.out / "varlen_attention.jsonl").open("w")
    varlen_fn, varlen_note = torch_varlen()
    emit({"header": "packed causal softmax attention: kernel vs per-sequence SDPA vs torch varlen",
          **environment(("torch", "triton")), "torch_varlen": varlen_note}, sink)
    cases = {"custom": [int(x) for x in args.lengths.split(",")]} if args.lengths else {
        c: case_lengths(c, args.tokens, args.seed) for c in args.cases.split(",")}
    for case, lengths in cases.items():
        for dtype_name in args.dtypes.split(","):
            try:
                run_case(case, lengths, dtype_name, args, sink, varlen_fn)
            except Exception as e:  # noqa: BLE001 - one failing case must not lose the others
                emit({"case": case, "dtype": dtype_name, "error": f"{type(e).__name__}: {str(e)[:500]}"}, sink)
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
