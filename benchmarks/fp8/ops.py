"""Benchmark and GPU correctness check for kernels/fp8 and kernels/lm_head (issue kernels/fp8).

Run on a CUDA machine:  python -m benchmarks.fp8.ops [--out DIR]
Smoke run on CPU (correctness section only, tiny sizes, Triton interpreter):
    TRITON_INTERPRET=1 python -m benchmarks.fp8.ops --smoke

Prints, with the device and the anchors measured in the same run:
1. correctness vs float64 references (quantize bitwise vs the PyTorch path, GEMM error,
   batch invariance across M and tile configs, FP8Linear gradients, token log-probs);
2. GEMM TFLOP/s: bf16 torch.matmul, torch._scaled_mm tensorwise and rowwise (cuBLAS), ours;
3. quantization / fused norm+quant / SwiGLU+quant bandwidth ÷ measured copy bandwidth;
4. FP8Linear forward+backward vs bf16 nn.Linear at 8192 tokens, 2048 → 5120;
5. token_logprobs (fp32 logits + log-prob gather, chunked) vs the naive fp32 path at V=157184;
6. (--sections moe) Ring-mini's MoE layer with FP8 experts: grouped GEMMs vs the per-expert loop
   and the bf16 layer, and the grouped layer's bits against the loop.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from benchmarks.harness import copy_bandwidth, gpu_ms, graph_ms, header, rel_error
from kernels.fp8 import (
    FP8_DTYPE,
    FP8Linear,
    fp8_gemm,
    fp8_gemm_grouped,
    fp8_linear,
    quantize_act,
    quantize_act_both,
    quantize_act_t,
    quantize_weight,
    quantize_weight_t,
    rmsnorm_quant,
    silu_mul_quant,
)
from kernels.fp8 import reference as R
from kernels.lm_head import logits_fp32, token_logprobs, token_logprobs_ref

GEMM_CONFIGS = [  # (BLOCK_M, BLOCK_N, num_warps, num_stages, kind); full Triton sweep of
    # 2026-11-26 in docs/benchmarks-log.md (ptr / tma / tma_ws / tma_pp: 206-690 TFLOP/s)
    (128, 128, 8, 4, "ptr"), (128, 128, 8, 4, "tma"), (64, 128, 4, 4, "tma"),
    (128, 128, 8, 4, "gluon"), (128, 128, 8, 5, "gluon"),
    (128, 256, 4, 3, "gluon_ws"), (128, 256, 4, 4, "gluon_ws"),
]  # the persistent variants' sweep: benchmarks/tools/fp8_gemm_variants.py
WS_CONFIGS = [(128, 128, 8, 4, "tma_ws"), (128, 128, 8, 4, "tma_pp_ws")]
QUANT_CONFIGS = {  # mode -> [(BLOCK_M, BLOCK_K, num_warps)]; 2026-11-26 sweeps in docs/benchmarks-log.md.
    # Tiles of more than 64 elements per thread spill registers.
    "row": [(32, 128, 4), (32, 256, 4), (64, 128, 4), (16, 256, 4)],
    "col": [(128, 64, 4), (128, 32, 4), (128, 64, 8), (128, 128, 8), (128, 128, 16)],
    "both": [(128, 128, 8), (128, 128, 8, 128)],  # 4th: maxnreg (2 blocks per SM, some spills)
}
# The Gluon kernel (kernels/fp8/quantize_hopper.py), every mode: ("gluon", STAGES, programs per SM).
# (STAGES, per SM[, register cap]): capped at 80 registers (no spills, ptxas) 3 programs of one
# stage fit an SM.
QUANT_GLUON_CONFIGS = [("gluon", 2, 2), ("gluon", 1, 2), ("gluon", 3, 1), ("gluon", 1, 3, 80),
                       ("gluon", 1, 4, 80), ("gluon", 1, 5, 80), ("gluon", 2, 3, 80)]
# The weight quantizer: "triton" or ("gluon", STAGES, programs per SM, warps).
WEIGHT_CONFIGS = ["triton", ("gluon", 1, 4, 8), ("gluon", 2, 2, 8), ("gluon", 3, 1, 8),
                  ("gluon", 1, 3, 8), ("gluon", 1, 5, 8), ("gluon", 2, 2, 4)]
FUSED_CONFIGS = {  # op -> [(rows per program, num_warps)]
    "rmsnorm": [(2, 8), (1, 4), (1, 8), (4, 8), (2, 4)],
    "silu": [(4, 4), (2, 4), (1, 4), (8, 8), (4, 8)],
}
LOGITS_CONFIGS = [  # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
    (128, 256, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 64, 4, 4), (128, 256, 64, 8, 4),
]
ROWS: list[str] = []
RESULTS: dict = {}


def say(line: str = "") -> None:
    print(line, flush=True)
    ROWS.append(line)


def bits_equal_frac(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.dtype == torch.float8_e4m3fn:
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return (a == b).float().mean().item()


def outlier_randn(*shape, device, dtype=torch.bfloat16, scale=1.0):
    x = torch.randn(*shape, device=device) * scale
    # sparse large outliers (×50) and a few exactly-zero 1×128 tiles
    mask = torch.rand(*shape, device=device) < 1e-3
    x = torch.where(mask, x * 50, x)
    return x.to(dtype)


# ----------------------------------------------------------------------------- correctness


def check_correctness(dev: str, smoke: bool) -> None:
    say("## correctness (vs PyTorch path bitwise / float64 reference)")
    be = "triton"
    m, k, n = (200, 300, 260) if smoke else (1000, 1500, 700)
    x = outlier_randn(m, k, device=dev)
    x[:, 128:256] = 0  # all-zero tiles
    w = outlier_randn(n, k, device=dev, dtype=torch.float32)
    for p2 in (False, True):
        q, s = quantize_act(x, p2, backend=be)
        qr, sr = R.quantize_act_ref(x, p2)
        q2, s2, qt, st = quantize_act_both(x, p2, backend=be)
        qtr, str_ = R.quantize_act_t_ref(x, p2)
        wq, ws = quantize_weight(w, p2, backend=be)
        wqr, wsr = R.quantize_weight_ref(w, p2)
        say(f"quantize pow2={p2}: act q/s bitwise {bits_equal_frac(q, qr):.6f}/{bits_equal_frac(s, sr):.6f}"
            f"  both {bits_equal_frac(q2, qr):.6f}/{bits_equal_frac(qt, qtr):.6f}/{bits_equal_frac(st, str_):.6f}"
            f"  weight {bits_equal_frac(wq, wqr):.6f}/{bits_equal_frac(ws, wsr):.6f}")
        RESULTS[f"quant_bitwise_pow2_{p2}"] = min(bits_equal_frac(q, qr), bits_equal_frac(qt, qtr),
                                                  bits_equal_frac(wq, wqr), bits_equal_frac(s, sr))
    xq, xs = quantize_act(x)
    wq, ws = quantize_weight(w)
    ref = R.fp8_gemm_ref(xq, xs, wq, ws)
    c = fp8_gemm(xq, xs, wq, ws, torch.float32)
    exact = x.double() @ w.double().t()
    say(f"fp8_gemm [{m}x{n}x{k}]: rel err vs float64-on-dequantized {rel_error(c, ref):.2e}; "
        f"quantization error vs unquantized float64 {rel_error(c, exact):.2e}; nan {bool(c.isnan().any())}")
    RESULTS["gemm_rel_err"] = rel_error(c, ref)
    # 1×128-scaled B (the wgrad form)
    bq, bs = quantize_act(w.to(torch.bfloat16))
    c2 = fp8_gemm(xq, xs, bq, bs, torch.float32)
    say(f"fp8_gemm 1x128-B: rel err {rel_error(c2, R.fp8_gemm_ref(xq, xs, bq, bs)):.2e}")

    if dev == "cuda":  # Gluon kernel (Hopper) at odd, TMA-legal shapes, both B granularities
        for (gm, gn, gk) in ((1000, 704, 1040), (77, 264, 2048), (300, 1024, 272)):
            ga = outlier_randn(gm, gk, device=dev)
            gb = outlier_randn(gn, gk, device=dev)
            gaq, gas = quantize_act(ga)
            for bname, (gbq, gbs) in (("block", quantize_weight(gb)), ("1x128", quantize_act(gb))):
                for od in (torch.float32, torch.bfloat16):
                    try:
                        cg = fp8_gemm(gaq, gas, gbq, gbs, od, config=(128, 128, 8, 4, "gluon"))
                        ct = fp8_gemm(gaq, gas, gbq, gbs, od, config=(128, 128, 8, 4, "ptr"))
                        say(f"gluon [{gm}x{gn}x{gk}] B {bname} {od}: rel err vs float64 "
                            f"{rel_error(cg, R.fp8_gemm_ref(gaq, gas, gbq, gbs)):.2e}, bitwise == ptr kernel "
                            f"{bool(torch.equal(cg, ct))}, nan {bool(cg.isnan().any())}")
                    except Exception as e:
                        say(f"gluon [{gm}x{gn}x{gk}] FAILED: {type(e).__name__}: {str(e)[:300]}")

    # batch invariance: rows of a large-M product vs the same rows computed with smaller M
    mm = 512 if smoke else 4096
    kk, nn_ = (256, 256) if smoke else (2048, 2048)
    a = outlier_randn(mm, kk, device=dev)
    b = outlier_randn(nn_, kk, device=dev)
    aq, as_ = quantize_act(a)
    bq, bs = quantize_weight(b)
    full = fp8_gemm(aq, as_, bq, bs, torch.bfloat16)
    same = []
    for sub in (1, 7, 128, 300, mm // 2):
        part = fp8_gemm(aq[:sub].contiguous(), as_[:sub].contiguous(), bq, bs, torch.bfloat16)
        same.append(bool(torch.equal(part, full[:sub])))
    # (run 2026-11-26 15:23 checked all of GEMM_CONFIGS + WS_CONFIGS bitwise: all equal)
    cfgs = [] if smoke or dev == "cpu" else [(128, 128, 8, 4, "ptr"), (64, 128, 4, 4, "tma"),
                                               (64, 64, 4, 3, "ptr"), (128, 128, 8, 4, "tma"),
                                               (128, 128, 8, 4, "gluon"), (64, 128, 4, 4, "gluon"),
                                               (128, 256, 4, 3, "gluon_ws"),
                                               (128, 256, 4, 3, "gluon_ws+g16+sa_tma")]
    for cfg in cfgs:
        print(f"  invariance check, config {cfg}", flush=True)
        try:
            same.append(bool(torch.equal(fp8_gemm(aq, as_, bq, bs, torch.bfloat16, config=cfg), full)))
        except Exception as e:
            say(f"  config {cfg} failed: {type(e).__name__}: {str(e)[:200]}")
    say(f"batch invariance (bitwise across M in 1,7,128,300,M/2 and tile configs {cfgs}): {same}")
    RESULTS["batch_invariant"] = all(same)

    # fused ops
    d = 2048 if not smoke else 320
    xr = torch.randn(m, d, device=dev) * 2
    g = torch.rand(d, device=dev) + 0.5
    y, yq, ys = rmsnorm_quant(xr, g, 1e-6, return_y=True, backend=be)
    yr = R.rmsnorm_ref(xr, g, 1e-6)
    qr2, sr2 = R.quantize_act_ref(y)
    say(f"rmsnorm_quant: y rel err vs fp32 ref {rel_error(y, yr):.2e} (bf16 rounding); q == quantize_act(y) "
        f"{bits_equal_frac(yq, qr2):.6f}, scales {bits_equal_frac(ys, sr2):.6f}")
    xs_ = torch.randn(m, 2 * (d + 64), device=dev, dtype=torch.bfloat16) * 3
    y, yq, ys = silu_mul_quant(xs_, return_y=True, backend=be)
    qr3, sr3 = R.quantize_act_ref(y)
    say(f"silu_mul_quant: y rel err {rel_error(y, R.silu_mul_ref(xs_)):.2e}; q == quantize_act(y) "
        f"{bits_equal_frac(yq, qr3):.6f}, scales {bits_equal_frac(ys, sr3):.6f}")

    # FP8Linear gradients vs bf16 linear, both against float64
    tm, ki, no = (64, 256, 384) if smoke else (2048, 2048, 5120)
    xin = torch.randn(tm, ki, device=dev, dtype=torch.bfloat16)
    lin = torch.nn.Linear(ki, no, bias=True, device=dev, dtype=torch.bfloat16)
    f8 = FP8Linear.from_linear(lin)
    dy = torch.randn(tm, no, device=dev, dtype=torch.bfloat16)
    out = {}
    for name, mod in (("fp8", f8), ("bf16", lin)):
        xx = xin.clone().requires_grad_()
        mod.zero_grad()
        yy = mod(xx)
        yy.backward(dy)
        out[name] = (yy.detach(), xx.grad, lin.weight.grad.clone(), lin.bias.grad.clone())
    x64 = xin.double().requires_grad_()
    w64 = lin.weight.detach().double().requires_grad_()
    y64 = F.linear(x64, w64, lin.bias.detach().double())
    y64.backward(dy.double())
    refs = (y64.detach(), x64.grad, w64.grad)
    for name in ("fp8", "bf16"):
        e = [rel_error(out[name][i], refs[i]) for i in range(3)]
        say(f"linear {name}: rel err vs float64  y {e[0]:.2e}  dx {e[1]:.2e}  dW {e[2]:.2e}")
        RESULTS[f"linear_{name}_rel"] = e

    # token log-probs vs float64
    nt, dm, vv = (64, 128, 1000) if smoke else (1024, 1024, 32000)
    h = (torch.randn(nt, dm, device=dev) * 0.5).to(torch.bfloat16).requires_grad_()
    wl = (torch.randn(vv, dm, device=dev) * 0.1).to(torch.bfloat16).requires_grad_()
    tok = torch.randint(0, vv, (nt,), device=dev)
    lp, ent = token_logprobs(h, wl, tok, chunk_size=vv // 3 + 1)
    gl, ge = torch.randn(nt, device=dev), torch.randn(nt, device=dev)
    (lp * gl + ent * ge).sum().backward()
    hd = h.detach().double().requires_grad_()
    wd = wl.detach().double().requires_grad_()
    lr, er = token_logprobs_ref(hd, wd, tok)
    (lr * gl.double() + er * ge.double()).sum().backward()
    say(f"token_logprobs: max|Δlogp| {(lp.double() - lr).abs().max().item():.2e}  max|Δent| "
        f"{(ent.double() - er).abs().max().item():.2e}  dh rel {rel_error(h.grad, hd.grad):.2e}  "
        f"dW rel {rel_error(wl.grad, wd.grad):.2e}")
    lg = logits_fp32(h.detach(), wl.detach())
    say(f"logits_fp32 rel err vs float64 {rel_error(lg, hd.detach() @ wd.detach().t()):.2e}")
    say()


# ----------------------------------------------------------------------------- performance


def rotating(x: torch.Tensor, total_bytes: int = 1 << 28) -> list:
    """x and copies of it, at least ``total_bytes`` together (for graph_ms)."""
    n = max(2, -(-total_bytes // (x.numel() * x.element_size())))
    return [x] + [x.clone() for _ in range(n - 1)]


def gemm_section(dev) -> None:
    say("## GEMM (TFLOP/s, median of do_bench; ratio = ours / _scaled_mm tensorwise)")
    shapes = [(8192, 8192, 8192), (4096, 7168, 16384), (4096, 4096, 7168), (128, 7168, 16384)]
    cfgs = GEMM_CONFIGS
    say("| M,N,K | bf16 | scaled_mm tensor | scaled_mm row | ours default | ours best (cfg) | best/tensor | best/bf16 |")
    say("|---|---|---|---|---|---|---|---|")
    for m, n, k in shapes:
        a = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        b = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
        fl = 2 * m * n * k
        tf = lambda t: fl / (t * 1e-3) / 1e12  # noqa: E731
        t_bf16 = gpu_ms(lambda: a @ b.t())
        a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
        one = torch.ones((), device=dev)
        t_ten = gpu_ms(lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
        sa = torch.rand(m, 1, device=dev) + 0.5
        sb = torch.rand(1, n, device=dev) + 0.5
        t_row = gpu_ms(lambda: torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16))
        aq, as_ = quantize_act(a)
        bq, bs = quantize_weight(b)
        t_def = gpu_ms(lambda: fp8_gemm(aq, as_, bq, bs, torch.bfloat16))
        best = (t_def, "default")
        per = {}
        for cfg in cfgs:
            try:
                t = gpu_ms(lambda: fp8_gemm(aq, as_, bq, bs, torch.bfloat16, config=cfg))
            except Exception as e:  # out of shared memory etc.
                per[str(cfg)] = f"fail {type(e).__name__}"
                continue
            per[str(cfg)] = round(tf(t), 1)
            print(f"  {m},{n},{k} {cfg}: {tf(t):.0f}", flush=True)
            if t < best[0]:
                best = (t, str(cfg))
        RESULTS[f"gemm_{m}_{n}_{k}"] = dict(bf16=tf(t_bf16), tensor=tf(t_ten), row=tf(t_row),
                                            ours_default=tf(t_def), configs=per)
        say(f"| {m},{n},{k} | {tf(t_bf16):.0f} | {tf(t_ten):.0f} | {tf(t_row):.0f} | {tf(t_def):.0f} | "
            f"{tf(best[0]):.0f} {best[1]} | {t_ten / best[0]:.2f} | {t_bf16 / best[0]:.2f} |")
        say(f"  configs: {per}")
        del a, b, a8, b8, aq, bq
    say()


def bandwidth_section(dev, copy_bw) -> None:
    say(f"## memory-bound kernels (copy bandwidth {copy_bw / 1e12:.2f} TB/s, read+write)")
    say("do_bench: median of single launches (host time included when the host is slower);")
    say("graph: GPU time per call, calls captured in a CUDA graph over rotating inputs (> L2).")
    say("| op | shape | do_bench us | ÷ copy | graph us | ÷ copy |")
    say("|---|---|---|---|---|---|")

    def row(name, shape, fn, nbytes, x=None):
        t = gpu_ms(fn)
        tg = graph_ms(lambda xx: fn(xx), rotating(x)) if x is not None else float("nan")
        RESULTS[f"bw_{name}_{shape}"] = (nbytes / (t * 1e-3) / copy_bw, nbytes / (tg * 1e-3) / copy_bw)
        say(f"| {name} | {shape} | {t * 1e3:.1f} | {nbytes / (t * 1e-3) / copy_bw:.2f} | "
            f"{tg * 1e3:.1f} | {nbytes / (tg * 1e-3) / copy_bw:.2f} |")

    for m, k in ((8192, 2048), (16384, 7168)):
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        sc = m * k // 128 * 4
        row("quantize_act", f"{m}x{k}", lambda xx=x: quantize_act(xx), m * k * 3 + sc, x)
        row("quantize_act_t", f"{m}x{k}", lambda xx=x: quantize_act_t(xx), m * k * 3 + sc, x)
        row("quantize_act_both", f"{m}x{k}", lambda xx=x: quantize_act_both(xx), m * k * 4 + 2 * sc, x)
        row("quantize_weight", f"{m}x{k}", lambda xx=x: quantize_weight(xx), m * k * 3, x)
        row("quantize_weight_t", f"{m}x{k}", lambda xx=x: quantize_weight_t(xx), m * k * 3, x)
    from kernels.fp8.quantize import _quant_act_triton

    for m, k in ((8192, 2048), (8192, 5120), (16384, 7168)):
        xs = rotating(torch.randn(m, k, device=dev, dtype=torch.bfloat16))
        sc = m * k // 128 * 4
        for mode, flags, nbytes in (("row", (True, False), m * k * 3 + sc),
                                    ("col", (False, True), m * k * 3 + sc),
                                    ("both", (True, True), m * k * 4 + 2 * sc)):
            per = {}
            for cfg in QUANT_CONFIGS[mode] + (QUANT_GLUON_CONFIGS if mode != "row" else []):
                try:
                    t = graph_ms(lambda xx: _quant_act_triton(xx, *flags, False, cfg), xs)
                    per[str(cfg)] = round(nbytes / (t * 1e-3) / copy_bw, 2)
                except Exception as e:
                    per[str(cfg)] = f"fail {type(e).__name__}: {str(e)[:100]}"
            say(f"  quantize {mode} {m}x{k} graph ÷copy per (BLOCK_M, BLOCK_K, warps) / (gluon, STAGES, "
                f"per SM): {per}")
        del xs
    m, d = 8192, 2048
    xr = torch.randn(m, d, device=dev)
    g = torch.rand(d, device=dev) + 0.5
    row("rmsnorm_quant fp32 in", f"{m}x{d}", lambda xx=xr: rmsnorm_quant(xx, g), m * d * 5 + m * d // 32, xr)
    row("rmsnorm_quant +y bf16", f"{m}x{d}", lambda xx=xr: rmsnorm_quant(xx, g, return_y=True),
        m * d * 7 + m * d // 32, xr)
    per = {}
    for cfg in FUSED_CONFIGS["rmsnorm"]:
        t = gpu_ms(lambda: rmsnorm_quant(xr, g, config=cfg))
        per[str(cfg)] = round((m * d * 5 + m * d // 32) / (t * 1e-3) / copy_bw, 2)
    say(f"  rmsnorm_quant {m}x{d} ÷copy per (rows, warps): {per}")
    for m, i in ((8192, 5120), (16384, 1024)):
        xs = torch.randn(m, 2 * i, device=dev, dtype=torch.bfloat16)
        row("silu_mul_quant", f"{m}x2*{i}", lambda xx=xs: silu_mul_quant(xx), m * i * 5 + m * i // 32, xs)
        row("silu_mul_quant +y", f"{m}x2*{i}", lambda xx=xs: silu_mul_quant(xx, return_y=True),
            m * i * 7 + m * i // 32, xs)
        per = {}
        for cfg in FUSED_CONFIGS["silu"]:
            t = gpu_ms(lambda: silu_mul_quant(xs, config=cfg))
            per[str(cfg)] = round((m * i * 5 + m * i // 32) / (t * 1e-3) / copy_bw, 2)
        say(f"  silu_mul_quant {m}x2*{i} ÷copy per (rows, warps): {per}")
    say()


def weight_section(dev, copy_bw) -> None:
    """quantize_weight / quantize_weight_t per kernel config: graph ÷ copy, bits vs Triton."""
    from kernels.fp8.quantize import _quant_weight_triton

    say(f"## weight quantizer, 128×128 blocks (copy {copy_bw / 1e12:.2f} TB/s; graph ÷ copy, "
        "bytes 3·N·K; '!' = bits differ from the Triton kernel)")
    for n, k in ((8192, 2048), (5120, 2048), (16384, 7168)):
        ws = rotating(torch.randn(n, k, device=dev, dtype=torch.bfloat16))
        for transposed in (False, True):
            want = _quant_weight_triton(ws[0], False, transposed, "triton")
            per = {}
            for cfg in WEIGHT_CONFIGS:
                try:
                    got = _quant_weight_triton(ws[0], False, transposed, cfg)
                    same = all(torch.equal(a.view(torch.uint8) if a.dtype == FP8_DTYPE else a,
                                           b.view(torch.uint8) if b.dtype == FP8_DTYPE else b)
                               for a, b in zip(got, want))
                    t = graph_ms(lambda w: _quant_weight_triton(w, False, transposed, cfg), ws)
                    per[str(cfg)] = f"{n * k * 3 / (t * 1e-3) / copy_bw:.2f}{'' if same else '!'}"
                except Exception as e:  # out of shared memory etc.
                    per[str(cfg)] = f"fail {type(e).__name__}"
            fn = quantize_weight_t if transposed else quantize_weight
            t = gpu_ms(lambda: fn(ws[0]))
            say(f"  {'W^T' if transposed else 'W'} {n}x{k}: default do_bench {t * 1e3:.1f} us "
                f"({n * k * 3 / (t * 1e-3) / copy_bw:.2f}); graph: {per}")
        del ws
    say()


# The activation quantizer's A/B (section "qa"): ("gluon", STAGES, per SM, register cap or 0,
# options) of kernels/fp8/quantize_hopper.py; the first of each mode is the old default.
QA_CONFIGS = {  # "gluon": the default (kernels/fp8/quantize_hopper.py, _GLUON_CFG); the first of
    # each mode is the reference the bits are compared with; the others: the A/B's alternatives
    "col": ["gluon", ("gluon", 1, 8, 80, "fmax")],
    "both": ["gluon", ("gluon", 1, 8, 80, "fmax")],
}


def quant_act_ab_section(dev, copy_bw, rounds: int = 3) -> None:
    """quantize_act_t / quantize_act_both per Gluon config, graph ÷ copy, every config timed
    once per round (rounds interleaved: the spread between rounds is the noise); bits compared
    with the first config of the mode ('!' = differ)."""
    from kernels.fp8.quantize import _quant_act_triton

    say(f"## activation quantizer A/B (copy {copy_bw / 1e12:.2f} TB/s; graph ÷ copy per round)")
    for m, k in ((8192, 2048), (8192, 5120), (16384, 7168)):
        xs = rotating(torch.randn(m, k, device=dev, dtype=torch.bfloat16))
        sc = m * k // 128 * 4
        for mode, flags, nbytes in (("col", (False, True), m * k * 3 + sc),
                                    ("both", (True, True), m * k * 4 + 2 * sc)):
            cfgs = QA_CONFIGS[mode]
            want = _quant_act_triton(xs[0], *flags, False, cfgs[0])
            same = {}
            for cfg in cfgs:
                got = _quant_act_triton(xs[0], *flags, False, cfg)
                same[cfg] = all(a is None or torch.equal(a.view(torch.uint8) if a.dtype == FP8_DTYPE else a,
                                                         b.view(torch.uint8) if b.dtype == FP8_DTYPE else b)
                                for a, b in zip(got, want))
            per = {cfg: [] for cfg in cfgs}
            for _ in range(rounds):
                for cfg in cfgs:
                    t = graph_ms(lambda xx: _quant_act_triton(xx, *flags, False, cfg), xs)
                    per[cfg].append(nbytes / (t * 1e-3) / copy_bw)
            for cfg in cfgs:
                name = "default" if cfg == "gluon" else cfg[1:]
                RESULTS[f"qa_{mode}_{m}x{k}_{name}"] = per[cfg]
                say(f"  {mode} {m}x{k} {name}: " + " / ".join(f"{r:.3f}" for r in per[cfg])
                    + ("" if same[cfg] else " !"))
        del xs
    say()


def linear_step_parts(x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor) -> dict:
    """The launches of one FP8Linear fwd+bwd step, in order, as callables on fixed inputs."""
    xq, xs, xqt, xst = quantize_act_both(x)
    wq, ws = quantize_weight(weight)
    dyq, dys, dyqt, dyst = quantize_act_both(dy)
    wqt, wst = quantize_weight_t(weight)
    return {
        "quant x both": lambda: quantize_act_both(x),
        "quant W": lambda: quantize_weight(weight),
        "fwd gemm": lambda: fp8_gemm(xq, xs, wq, ws),
        "quant dy both": lambda: quantize_act_both(dy),
        "quant W^T": lambda: quantize_weight_t(weight),
        "dgrad gemm": lambda: fp8_gemm(dyq, dys, wqt, wst),
        "wgrad gemm": lambda: fp8_gemm(dyqt, dyst, xqt, xst),
    }


def linear_section(dev) -> None:
    say("## FP8Linear forward+backward vs bf16 nn.Linear (8192 tokens, 2048 -> 5120, no bias)")
    m, k, n = 8192, 2048, 5120
    lin = torch.nn.Linear(k, n, bias=False, device=dev, dtype=torch.bfloat16)
    f8 = FP8Linear.from_linear(lin)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
    res = {}
    for name, mod in (("bf16", lin), ("fp8", f8)):
        res[name + "_fwd"] = gpu_ms(lambda: mod(x), grad_to_none=[x, lin.weight])
        res[name + "_fwdbwd"] = gpu_ms(lambda: mod(x).backward(dy), grad_to_none=[x, lin.weight])
    # where the FP8 time goes (the launches of one step, in order)
    parts = linear_step_parts(x.detach(), lin.weight.detach(), dy)
    times = {k_: gpu_ms(f_) * 1e3 for k_, f_ in parts.items()}
    say("breakdown (us): " + ", ".join(f"{k_} {t_:.0f}" for k_, t_ in times.items())
        + f"; sum {sum(times.values()):.0f}")
    # The same parts as GPU time (4 calls each in a CUDA graph, same inputs: no host launch cost).
    times = {k_: graph_ms(lambda _, f_=f_: f_(), [None] * 4) * 1e3 for k_, f_ in parts.items()}
    say("breakdown, CUDA graph (us): " + ", ".join(f"{k_} {t_:.0f}" for k_, t_ in times.items())
        + f"; sum {sum(times.values()):.0f}")
    # wgrad (both operands 1×128 along the token dim): the default kernel against Triton's,
    # bitwise on these inputs and timed in the same run (M=5120, N=2048, K=8192).
    from kernels.fp8.gemm_hopper import fp8_gemm_gluon_ws

    _, _, xqt, xst = quantize_act_both(x.detach())
    _, _, dyqt, dyst = quantize_act_both(dy)
    dw_ref = fp8_gemm(dyqt, dyst, xqt, xst, config=(128, 128, 8, 4, "tma"))
    wg = {"triton tma": lambda: fp8_gemm(dyqt, dyst, xqt, xst, config=(128, 128, 8, 4, "tma")),
          "default": lambda: fp8_gemm(dyqt, dyst, xqt, xst)}
    for regs in (224, 232, 240):
        wg[f"gluon_ws regs {regs}"] = (lambda r=regs: fp8_gemm_gluon_ws(dyqt, dyst, xqt, xst, torch.bfloat16,
                                                                     3, r, b_block=False))
    wfl = 2 * m * n * k
    for name_, f_ in wg.items():
        same = torch.equal(f_(), dw_ref)
        t = gpu_ms(f_)
        say(f"wgrad {name_}: {t * 1e3:.0f} us, {wfl / (t * 1e-3) / 1e12:.0f} TFLOP/s, bitwise equal to Triton: {same}")
    from kernels.fp8 import launch as B

    for key_, direct in B._COMPILED.items():  # registers / spills of the compiled GEMM kernels
        ck = direct.compiled
        if "gemm" in ck.name:
            say(f"  {ck.name} {[a for a in key_ if isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], str)]}: "
                f"{ck.n_regs} registers, {ck.n_spills} spills")
    host = {}
    for k_, f_ in parts.items():  # host time per call: 50 calls, no sync inside
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(50):
            f_()
        host[k_] = (time.perf_counter() - t0) / 50 * 1e6
        torch.cuda.synchronize()
    say("host us per call: " + ", ".join(f"{k_} {t_:.0f}" for k_, t_ in host.items()))
    fl = 6 * m * n * k
    for name in ("bf16", "fp8"):
        say(f"{name}: fwd {res[name + '_fwd'] * 1e3:.0f} us, fwd+bwd {res[name + '_fwdbwd'] * 1e3:.0f} us "
            f"({fl / (res[name + '_fwdbwd'] * 1e-3) / 1e12:.0f} TFLOP/s)")
    # Host time to enqueue one step (no sync inside; 20 steps fit the launch queue).
    for name, mod in (("bf16", lin), ("fp8", f8)):
        for _ in range(3):
            mod(x).backward(dy)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            mod(x).backward(dy)
        t_host = (time.perf_counter() - t0) / 20
        torch.cuda.synchronize()
        say(f"host enqueue time per {name} fwd+bwd: {t_host * 1e6:.0f} us")
    if os.environ.get("FP8_PROFILE"):
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                f8(x).backward(dy)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))
    sp = res["bf16_fwdbwd"] / res["fp8_fwdbwd"]
    say(f"speed-up fwd+bwd: {sp:.2f}x (fwd only {res['bf16_fwd'] / res['fp8_fwd']:.2f}x)")
    RESULTS["linear"] = {**res, "speedup": sp}
    say()


def lm_head_section(dev) -> None:
    n, d, v = 8192, 2048, 157184
    say(f"## token log-probs at N={n}, D={d}, V={v} (bf16 h, W)")
    h = (torch.randn(n, d, device=dev) * 0.5).to(torch.bfloat16)
    w = (torch.randn(v, d, device=dev) * 0.02).to(torch.bfloat16)
    tok = torch.randint(0, v, (n,), device=dev)

    def naive():
        return F.linear(h.float(), w.float()).log_softmax(-1).gather(1, tok[:, None]).squeeze(1)

    def ours():
        return token_logprobs(h, w, tok)[0]

    def peak(fn):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    d_ref = (ours().double() - naive().double()).abs().max().item()
    t_naive = gpu_ms(naive, rep=1000)
    t_ours = gpu_ms(ours, rep=1000)
    m_naive, m_ours = peak(naive), peak(ours)
    t_bf16 = gpu_ms(lambda: F.linear(h, w))
    t_logits = gpu_ms(lambda: logits_fp32(h, w))
    per = {}
    for cfg in LOGITS_CONFIGS:
        try:
            per[str(cfg)] = round(2 * n * v * d / gpu_ms(lambda: logits_fp32(h, w, config=cfg)) / 1e9)
        except Exception as e:
            per[str(cfg)] = f"fail {type(e).__name__}"
    say(f"logits_fp32 TFLOP/s per config: {per}")
    hg = h.clone().requires_grad_()
    wg = w.clone().requires_grad_()
    t_fb = gpu_ms(lambda: token_logprobs(hg, wg, tok)[0].sum().backward(), rep=1000, grad_to_none=[hg, wg])
    m_fb = peak(lambda: token_logprobs(hg, wg, tok)[0].sum().backward())
    fl = 2 * n * v * d
    say(f"max |ours - naive| logprob: {d_ref:.2e}")
    say("| path | time ms | peak extra GiB |")
    say("|---|---|---|")
    say(f"| naive fp32 F.linear+log_softmax+gather | {t_naive:.1f} | {m_naive / 2**30:.2f} |")
    say(f"| token_logprobs (chunked, fwd) | {t_ours:.1f} | {m_ours / 2**30:.2f} |")
    say(f"| token_logprobs fwd+bwd | {t_fb:.1f} | {m_fb / 2**30:.2f} |")
    say(f"| logits_fp32 alone (full [N,V] fp32 out) | {t_logits:.1f} ({fl / t_logits / 1e9:.0f} TFLOP/s) | - |")
    say(f"| bf16 F.linear (bf16 out, anchor) | {t_bf16:.1f} ({fl / t_bf16 / 1e9:.0f} TFLOP/s) | - |")
    say(f"ratios: time naive/ours {t_naive / t_ours:.2f}x, peak memory ours/naive {m_ours / m_naive:.3f}")
    RESULTS["lm_head"] = dict(t_naive=t_naive, t_ours=t_ours, m_naive=m_naive, m_ours=m_ours,
                              t_fwdbwd=t_fb, m_fwdbwd=m_fb, t_logits=t_logits, t_bf16=t_bf16)
    say()


def moe_section(dev) -> None:
    """Ring-mini's MoE layer with FP8 experts, as the rollout engine runs it (256 experts of
    2048 → 512 → 2048, top-8, the shared expert stacked last, bf16 weights quantized once):
    ``stacked_experts_fp8`` (grouped FP8 GEMMs, one launch per projection) against the per-expert
    loop it replaced (three fp8_linear calls per expert: 771 GEMMs) and the unquantized bf16
    layer (``stacked_experts``: torch._grouped_mm). Checks the grouped layer bitwise against the
    loop, which is what the trainer's per-expert FP8 modules compute."""
    from kernels.moe import _combined, _grouped_rows, quantize_stacked_experts, stacked_experts, stacked_experts_fp8
    from models.ring_linear.moe import MoEGate
    from models.ring_linear.presets import preset_config

    config = preset_config("mini")
    E, D, inter = config.num_experts, config.hidden_size, config.moe_intermediate_size
    say(f"## MoE layer with FP8 experts (Ring-mini: E={E}+1 shared, top-{config.num_experts_per_tok}, "
        f"D={D}, I={inter}; bf16 weights; ms, do_bench median)")
    gen = torch.Generator(device=dev).manual_seed(0)
    w13 = torch.randn(E + 1, 2 * inter, D, device=dev, generator=gen, dtype=torch.bfloat16) * 0.02
    w2 = torch.randn(E + 1, D, inter, device=dev, generator=gen, dtype=torch.bfloat16) * 0.02
    quantized = quantize_stacked_experts(w13, w2, False)
    gq, gs, uq, us, dq, ds = quantized
    gate = MoEGate(config).to(dev)
    with torch.no_grad():
        gate.weight.normal_(0, 0.02)

    def per_expert_loop(x, idx, w):  # the implementation before the grouped GEMM (commit 6241847)
        plan, rows, counts = _grouped_rows(x, idx, w, E, True)
        ys = []
        for e, part in enumerate(rows.split(counts.tolist())):
            h = (F.silu(fp8_linear(part, w13[e, :inter], weight_quant=(gq[e], gs[e])))
                 * fp8_linear(part, w13[e, inter:], weight_quant=(uq[e], us[e])))
            ys.append(fp8_linear(h, w2[e], weight_quant=(dq[e], ds[e])))
        return _combined(plan, torch.cat(ys), True)

    def gemms_fp8(rows, offsets, config=None):  # the grouped layer's GEMMs and quantizations alone
        a = quantize_act(rows)
        h = (F.silu(fp8_gemm_grouped(*a, gq, gs, offsets, rows.dtype, config=config))
             * fp8_gemm_grouped(*a, uq, us, offsets, rows.dtype, config=config))
        return fp8_gemm_grouped(*quantize_act(h), dq, ds, offsets, rows.dtype, config=config)

    def gemms_bf16(rows, offsets):  # the bf16 layer's two grouped GEMMs alone
        h = torch._grouped_mm(rows, w13.transpose(1, 2), offs=offsets[1:].to(torch.int32))
        return torch._grouped_mm(F.silu(h[:, :inter]) * h[:, inter:], w2.transpose(1, 2), offs=offsets[1:].to(torch.int32))

    def graphed(fn) -> str:
        try:
            return f"{graph_ms(lambda _: fn(), [None]):.3f}"
        except Exception as e:  # a layer that cannot be captured is reported, not hidden
            return f"n/a ({type(e).__name__})"

    say("Layer = routing + experts + combine, eager (do_bench: host launches included) and in a CUDA graph "
        "(GPU time); GEMMs = the expert GEMMs (+ FP8 quantizations) alone, in a CUDA graph.")
    say("| tokens | bitwise = loop | FP8 grouped | FP8 per-expert loop | bf16 | loop ÷ grouped | bf16 ÷ FP8 | "
        "graph: FP8 / bf16 | GEMMs graph: FP8 / bf16 |")
    say("|---|---|---|---|---|---|---|---|---|")
    with torch.no_grad():
        for tokens in (1, 8, 64, 256, 1024, 4096):
            x = outlier_randn(tokens, D, device=dev)
            idx, w = gate(x.float())
            grouped = lambda: stacked_experts_fp8(x, idx, w, *quantized, True, False)  # noqa: E731
            bf16 = lambda: stacked_experts(x, idx, w, w13, w2, True)  # noqa: E731
            same = torch.equal(grouped(), per_expert_loop(x, idx, w))
            t_grouped, t_bf16 = gpu_ms(grouped), gpu_ms(bf16)
            t_loop = gpu_ms(lambda: per_expert_loop(x, idx, w), rep=100)
            _, rows, counts = _grouped_rows(x, idx, w, E, True)
            offsets = F.pad(counts.cumsum(0), (1, 0))
            g_layer = f"{graphed(grouped)} / {graphed(bf16)}"
            g_gemms = f"{graphed(lambda: gemms_fp8(rows, offsets))} / {graphed(lambda: gemms_bf16(rows, offsets))}"
            RESULTS[f"moe_{tokens}"] = dict(bitwise=same, grouped=t_grouped, loop=t_loop, bf16=t_bf16,
                                            graph_layer=g_layer, graph_gemms=g_gemms)
            say(f"| {tokens} | {same} | {t_grouped:.3f} | {t_loop:.3f} | {t_bf16:.3f} | "
                f"{t_loop / t_grouped:.1f}× | {t_bf16 / t_grouped:.2f}× | {g_layer} | {g_gemms} |")
        say("Grouped GEMMs alone by tile config (BLOCK_M, BLOCK_N, warps, stages), CUDA graph ms; "
            "bits equal to the default's:")
        for tokens in (64, 1024, 4096):
            x = outlier_randn(tokens, D, device=dev)
            _, rows, counts = _grouped_rows(x, *gate(x.float()), E, True)
            offsets = F.pad(counts.cumsum(0), (1, 0))
            want = gemms_fp8(rows, offsets)
            cells = []
            for config in ((64, 128, 4, 4), (64, 128, 4, 3), (128, 128, 8, 4), (64, 256, 4, 3), (128, 256, 8, 3)):
                try:
                    same = torch.equal(gemms_fp8(rows, offsets, config), want)
                    cells.append(f"{config}: {graphed(lambda: gemms_fp8(rows, offsets, config))} {same}")
                except Exception as e:
                    cells.append(f"{config}: failed {type(e).__name__}")
            say(f"- {tokens} tokens: " + "; ".join(cells))


SECTIONS = ("correctness", "gemm", "bw", "linear", "lm", "ws", "wq", "qa", "moe")


def ws_probe(dev) -> None:
    """Warp-specialized TMA variant, run last in its own process (it may hang or fail to build)."""
    say("## GEMM with Triton automatic warp specialization (probe)")
    for m, n, k in ((8192, 8192, 8192), (4096, 7168, 16384)):
        a = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        b = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
        aq, as_ = quantize_act(a)
        bq, bs = quantize_weight(b)
        ref = fp8_gemm(aq, as_, bq, bs, torch.bfloat16, config=(128, 128, 8, 4, "ptr"))
        for cfg in WS_CONFIGS:
            c = fp8_gemm(aq, as_, bq, bs, torch.bfloat16, config=cfg)
            t = gpu_ms(lambda: fp8_gemm(aq, as_, bq, bs, torch.bfloat16, config=cfg))
            say(f"{m},{n},{k} {cfg}: {2 * m * n * k / t / 1e9:.0f} TFLOP/s, bitwise == ptr kernel: "
                f"{bool(torch.equal(c, ref))}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="CPU/interpreter correctness only, tiny sizes")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--sections", default="correctness,gemm,bw,linear,lm",
                    help=f"comma list out of {SECTIONS}")
    ap.add_argument("--json", action="store_true", help="also write the raw numbers as JSON")
    args = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    sections = args.sections.split(",")
    tag = "_".join(sections)
    say(header(f"kernels/fp8 benchmark [{tag}]" + ("" if dev == "cuda" else " (Triton interpreter)"),
               ("torch", "triton")))
    torch.manual_seed(0)
    todo = {
        "correctness": lambda: check_correctness(dev, args.smoke or dev == "cpu"),
        "gemm": lambda: gemm_section(dev),
        "bw": lambda: bandwidth_section(dev, RESULTS["copy_bw"]),
        "linear": lambda: linear_section(dev),
        "lm": lambda: lm_head_section(dev),
        "ws": lambda: ws_probe(dev),
        "wq": lambda: weight_section(dev, RESULTS["copy_bw"]),
        "qa": lambda: quant_act_ab_section(dev, RESULTS["copy_bw"]),
        "moe": lambda: moe_section(dev),
    }
    if dev == "cuda" and ("bw" in sections or "wq" in sections or "qa" in sections):
        RESULTS["copy_bw"] = copy_bandwidth(dev)
        say(f"copy bandwidth: {RESULTS['copy_bw'] / 1e12:.2f} TB/s (1 GiB bf16 copy_, read+write)")
    for key in sections:
        if key not in SECTIONS:
            raise SystemExit(f"unknown section {key!r}; choose from {SECTIONS}")
        if dev != "cuda" and key != "correctness":
            continue
        t1 = time.time()
        try:
            todo[key]()
        except Exception as e:  # keep the other sections' numbers
            say(f"section {key} FAILED: {type(e).__name__}: {e}")
        say(f"({key} {time.time() - t1:.0f} s)")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"fp8_{tag}.md"), "w") as f:
        f.write("\n".join(ROWS) + "\n")
    if args.json:
        with open(os.path.join(args.out, f"fp8_{tag}.json"), "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)


if __name__ == "__main__":
    main()
