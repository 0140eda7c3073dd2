"""Bitwise check of the CPU FP8 path (kernels/fp8/quantize_torch.py, gemm_torch.py and their CPU
dispatch) and of the tests' references (kernels/fp8/reference.py) against an earlier version of
kernels/fp8/reference.py (which held the CPU path until it was split), loaded from git at run
time (or from a file).

    python -m benchmarks.tools.fp8_cpu_check [--old-rev REV | --old-file PATH] [--cases N]

Compares raw bits (fp8 as uint8, floats as same-width ints, so NaN payloads count too) of the
quantizers (fp32/bf16/fp16/fp64 inputs, pow2 on/off, shapes with K/M tails, K < 128, M = 1,
all-zero tiles, tiny tiles whose scale underflows, subnormals, ±0, outliers, NaN/inf), of
fp8_gemm_torch (block and 1×128 B scales, N = 1, NaN codes, out dtypes) and of FP8Linear's
forward and gradients. Exits non-zero on the first mismatch.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.fp8.cpu import BASE_REV, load_old_reference
from kernels.fp8 import FP8_DTYPE, fp8_linear
from kernels.fp8 import format as FMT
from kernels.fp8 import quantize_act_both, quantize_weight_t
from kernels.fp8 import reference as REF
from kernels.fp8.gemm_torch import fp8_gemm_torch
from kernels.fp8.quantize_torch import (
    _quantize_tiles,
    quantize_act_t_torch,
    quantize_act_torch,
    quantize_weight_torch,
)

_INT_OF = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16,
           torch.float16: torch.int16, FP8_DTYPE: torch.uint8}


def raw(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(_INT_OF[t.dtype])


def same(what: str, new, old) -> None:
    new, old = (new,) if torch.is_tensor(new) else new, (old,) if torch.is_tensor(old) else old
    for i, (a, b) in enumerate(zip(new, old, strict=True)):
        if (a.shape != b.shape or a.dtype != b.dtype or a.stride() != b.stride()
                or not torch.equal(raw(a), raw(b))):
            raise SystemExit(f"MISMATCH {what} [output {i}]: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}")


def make_input(m: int, k: int, dtype, g: torch.Generator, special: bool) -> torch.Tensor:
    """Random rows with ×100 outliers; some all-zero 128-tiles, tiny / subnormal / underflowing
    rows and columns, signed zeros; with ``special`` a few NaN / ±inf."""
    x = torch.randn(m, k, generator=g)
    x = torch.where(torch.rand(m, k, generator=g) < 0.02, x * 100, x)
    exps = torch.tensor([-147.0, -140.0, -100.0, -30.0, 0.0, 8.0, 20.0])
    rows = torch.rand(m, generator=g) < 0.2
    x[rows] *= 2.0 ** exps[torch.randint(len(exps), (int(rows.sum()),), generator=g)][:, None]
    cols = torch.rand(k, generator=g) < 0.1
    x[:, cols] *= 2.0 ** exps[torch.randint(len(exps), (int(cols.sum()),), generator=g)][None, :]
    if k > 128 and torch.rand(1, generator=g) < 0.5:
        x[:, 128:256] = 0.0
    if m > 128 and torch.rand(1, generator=g) < 0.5:
        x[:128] = -0.0
    x = torch.where(torch.rand(m, k, generator=g) < 0.01, -0.0 * x.sign(), x)
    if special:
        for v in (float("nan"), float("inf"), float("-inf")):
            idx = torch.randint(m * k, (max(1, m * k // 500),), generator=g)
            x.view(-1)[idx] = v
    return x.to(dtype)


SHAPES = [(1, 1), (1, 128), (1, 300), (3, 5), (7, 200), (128, 128), (128, 344), (344, 128), (129, 257),
          (256, 384), (300, 517), (130, 1), (64, 256), (1024, 128), (2, 129)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def check_quantizers(old, g, cases: int) -> int:
    n = 0
    for rep in range(cases):
        for m, k in SHAPES:
            for dtype in DTYPES:
                special = rep % 3 == 2
                x = make_input(m, k, dtype, g, special)
                if rep % 4 == 3:  # a non-contiguous input (a transposed view)
                    x = make_input(k, m, dtype, g, special).t()
                for p2 in (False, True):
                    what = f"{m}x{k} {dtype} pow2={p2} special={special} contiguous={x.is_contiguous()}"
                    same("quantize_act_torch " + what, quantize_act_torch(x, p2), old.quantize_act_ref(x, p2))
                    same("quantize_act_t_torch " + what, quantize_act_t_torch(x, p2), old.quantize_act_t_ref(x, p2))
                    same("quantize_weight_torch " + what, quantize_weight_torch(x, p2), old.quantize_weight_ref(x, p2))
                    same("reference.quantize_act_ref " + what, REF.quantize_act_ref(x, p2),
                         old.quantize_act_ref(x, p2))
                    same("reference.quantize_act_t_ref " + what, REF.quantize_act_t_ref(x, p2),
                         old.quantize_act_t_ref(x, p2))
                    same("reference.quantize_weight_ref " + what, REF.quantize_weight_ref(x, p2),
                         old.quantize_weight_ref(x, p2))
                    if dtype != torch.float64:  # the dispatch accepts fp32/bf16/fp16
                        same("quantize_act_both " + what, quantize_act_both(x, p2),
                             (*old.quantize_act_ref(x, p2), *old.quantize_act_t_ref(x, p2)))
                        wq, ws = old.quantize_weight_ref(x, p2)
                        same("quantize_weight_t " + what, quantize_weight_t(x, p2),
                             (wq.t().contiguous(), ws.t().contiguous()))
                    n += 1
                amax = x.double().abs().float()  # any fp32 values, including subnormal / inf / NaN
                for p2 in (False, True):
                    same(f"scale_from_amax {dtype}", FMT.scale_from_amax(amax, p2), old.scale_from_amax(amax, p2))
                s = old.scale_from_amax(amax, False)
                same("_quantize_tiles", _quantize_tiles(x.float(), s), old._quantize_tiles(x.float(), s))
    return n


def random_fp8(shape, g, nan: bool) -> torch.Tensor:
    b = torch.randint(256, shape, generator=g, dtype=torch.uint8)
    if not nan:  # 0x7F / 0xFF are e4m3fn's NaN codes
        b = torch.where((b & 0x7F) == 0x7F, b - 1, b)
    return b.view(FP8_DTYPE)


def random_scales(shape, g) -> torch.Tensor:
    """fp32 scales from 2^-140 to 2^20, half of them powers of two."""
    e = torch.randint(-140, 21, shape, generator=g).float()
    mant = torch.where(torch.rand(shape, generator=g) < 0.5, 1.0, 1 + torch.rand(shape, generator=g))
    return (mant * 2.0**e).float()


def check_gemm(old, g, cases: int) -> int:
    n = 0
    gemm_shapes = [(1, 1, 1), (1, 344, 128), (128, 344, 128), (128, 128, 344), (5, 1, 300), (33, 130, 260),
                   (70, 200, 300), (1, 7, 1000), (64, 256, 512), (3, 129, 127)]
    for rep in range(cases):
        for m, nn, k in gemm_shapes:
            kb, nb = -(-k // 128), -(-nn // 128)
            nan = rep % 3 == 2
            if rep % 2 == 0:  # operands from the quantizers
                aq, as_ = quantize_act_torch(make_input(m, k, torch.float32, g, nan))
                if rep % 4 == 0:
                    bq, bs = quantize_weight_torch(make_input(nn, k, torch.float32, g, nan))
                else:  # the wgrad form: B with 1×128 scales
                    bq, bs = quantize_act_torch(make_input(nn, k, torch.float32, g, nan))
            else:  # raw bytes and wide-range scales
                aq, as_ = random_fp8((m, k), g, nan), random_scales((m, kb), g)
                bq = random_fp8((nn, k), g, nan)
                bs = random_scales((nb, kb) if rep % 4 == 1 else (nn, kb), g)
            for out in (torch.float32, torch.bfloat16, torch.float16):
                what = f"{m}x{nn}x{k} {out} nan={nan} b_scale={tuple(bs.shape)}"
                same("fp8_gemm_torch " + what, fp8_gemm_torch(aq, as_, bq, bs, out),
                     old.fp8_gemm_torch(aq, as_, bq, bs, out))
                same("reference.fp8_gemm_blocks_ref " + what, REF.fp8_gemm_blocks_ref(aq, as_, bq, bs, out),
                     old.fp8_gemm_torch(aq, as_, bq, bs, out))
                n += 1
    return n


def check_linear(old, g, cases: int) -> int:
    """FP8Linear forward and gradients against the same autograd recipe built from the old module."""
    n = 0
    for rep in range(cases):
        for (m, k, nn), dtype in [((128, 128, 344), torch.float32), ((128, 344, 128), torch.bfloat16),
                                  ((1, 200, 70), torch.float32), ((130, 256, 300), torch.bfloat16)]:
            for p2 in (False, True):
                x = make_input(m, k, dtype, g, False).requires_grad_()
                w = (make_input(nn, k, torch.float32, g, False) * 0.05).to(dtype).requires_grad_()
                dy = make_input(m, nn, dtype, g, False)
                y = fp8_linear(x, w, pow2_scale=p2)
                y.backward(dy)
                xd, wd = x.detach(), w.detach()
                y_old = old.fp8_gemm_torch(*old.quantize_act_ref(xd, p2), *old.quantize_weight_ref(wd, p2), dtype)
                wq, ws = old.quantize_weight_ref(wd, p2)
                dx_old = old.fp8_gemm_torch(*old.quantize_act_ref(dy, p2), wq.t().contiguous(), ws.t().contiguous(),
                                            dtype)
                dw_old = old.fp8_gemm_torch(*old.quantize_act_t_ref(dy, p2), *old.quantize_act_t_ref(xd, p2), dtype)
                what = f"FP8Linear {m}x{k}->{nn} {dtype} pow2={p2}"
                same(what + " y", y.detach(), y_old)
                same(what + " dx", x.grad, dx_old)
                same(what + " dw", w.grad, dw_old)
                n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-rev", default=BASE_REV, help="git revision of kernels/fp8/reference.py to compare with")
    ap.add_argument("--old-file", default=None, help="compare with this file instead of a git revision")
    ap.add_argument("--cases", type=int, default=6, help="random repetitions per shape")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    old = load_old_reference(args.old_rev, args.old_file)
    g = torch.Generator().manual_seed(args.seed)
    nq = check_quantizers(old, g, args.cases)
    ng = check_gemm(old, g, args.cases)
    nl = check_linear(old, g, max(1, args.cases // 3))
    print(f"bitwise equal to {args.old_file or args.old_rev}: {nq} quantizer cases (x5 functions), "
          f"{ng} GEMM cases, {nl} FP8Linear cases")


if __name__ == "__main__":
    main()
