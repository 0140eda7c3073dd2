"""One FP8 kernel (or its cuBLAS anchor) launched a few times, for Nsight Compute (H100).

    ncu --clock-control none -k regex:NAME --launch-skip 2 --launch-count 1 ... \\
        python -m benchmarks.tools.fp8_ncu gemm|scaled_mm|both [M N K] [--config ...]
"""

from __future__ import annotations

import argparse

import torch

from kernels.fp8 import fp8_gemm, quantize_act, quantize_act_both, quantize_weight


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["gemm", "scaled_mm", "both"])
    ap.add_argument("shape", nargs="*", type=int)
    ap.add_argument("--config", default="")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.what == "both":
        m, k = args.shape or (8192, 2048)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        for _ in range(4):
            quantize_act_both(x)
    else:
        m, n, k = args.shape or (8192, 8192, 8192)
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        if args.what == "scaled_mm":
            a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
            one = torch.ones((), device="cuda")
            for _ in range(4):
                torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        else:
            aq, as_ = quantize_act(a)
            bq, bs = quantize_weight(b)
            cfg = None
            if args.config:
                f = args.config.split(",")
                cfg = (*map(int, f[:4]), f[4])
            for _ in range(4):
                fp8_gemm(aq, as_, bq, bs, torch.bfloat16, config=cfg)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
