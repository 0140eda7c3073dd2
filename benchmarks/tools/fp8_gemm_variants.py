"""Compare Gluon FP8 GEMM variants against cuBLAS in one process (H100): bitwise checks, then TFLOP/s.

    python -m benchmarks.tools.fp8_gemm_variants [--variants "128,256,4,3,gluon_ws;..."] [--out DIR]

Correctness: each variant bitwise equal to the Triton pointer kernel at odd shapes (bf16 and
fp32 out; the output is uninitialised memory, so equality also shows every element written) and
across M (batch invariance). Timing: median of triton.testing.do_bench, with bf16 matmul and
torch._scaled_mm tensorwise / rowwise measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import triton

from benchmarks.harness import gpu_ms, header, rel_error
from kernels.fp8 import fp8_gemm, quantize_act, quantize_weight
from kernels.fp8 import reference as R

DEFAULT_VARIANTS = [
    (128, 128, 8, 4, "gluon"), (128, 256, 4, 2, "gluon_ws"),
    (128, 256, 4, 3, "gluon_ws"), (128, 256, 4, 4, "gluon_ws"),
]
SHAPES = [(8192, 8192, 8192), (4096, 7168, 16384), (4096, 4096, 7168), (128, 7168, 16384),
          (8192, 5120, 2048)]
REF = (128, 128, 8, 4, "ptr")


def bench(fn, graph=False):
    if graph:  # small GEMMs: a CUDA graph takes the Python launch cost out
        return triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median")
    return gpu_ms(fn)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="")
    ap.add_argument("--shapes", default="")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--repeats", type=int, default=1,
                    help="time the default and every variant this many times, interleaved; report medians")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    variants = DEFAULT_VARIANTS
    if args.variants:
        variants = [tuple(int(x) for x in v.split(",")[:4]) + (v.split(",")[4],) for v in args.variants.split(";")]
    shapes = SHAPES if not args.shapes else [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
    dev = "cuda"
    print(header("FP8 GEMM variants vs cuBLAS", ("torch", "triton")), flush=True)
    res = {"variants": [list(v) for v in variants], "checks": {}, "gemm": {}}
    torch.manual_seed(0)
    if not args.skip_check:
        for (m, n, k) in ((1000, 704, 1040), (77, 264, 2048), (300, 1024, 272), (300, 520, 128),
                          (129, 384, 384)):
            a = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            b = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
            aq, as_ = quantize_act(a)
            bq, bs = quantize_weight(b)
            for od in (torch.float32, torch.bfloat16):
                ref = fp8_gemm(aq, as_, bq, bs, od, config=REF)
                for v in variants:
                    try:
                        c = fp8_gemm(aq, as_, bq, bs, od, config=v)
                        ok = bool(torch.equal(c, ref))
                    except Exception as e:  # noqa: BLE001
                        ok = f"FAIL {type(e).__name__}: {str(e)[:200]}"
                    res["checks"][f"{m}x{n}x{k} {od} {v}"] = ok
                    if ok is not True:
                        print(f"  MISMATCH {m}x{n}x{k} {od} {v}: {ok}", flush=True)
            print(f"  checked {m}x{n}x{k} (rel err of ptr vs float64 "
                  f"{rel_error(ref, R.fp8_gemm_ref(aq, as_, bq, bs)):.2e})", flush=True)
        mm, kk, nn = 4096, 2048, 2048
        a = torch.randn(mm, kk, device=dev, dtype=torch.bfloat16)
        b = torch.randn(nn, kk, device=dev, dtype=torch.bfloat16)
        aq, as_ = quantize_act(a)
        bq, bs = quantize_weight(b)
        full = fp8_gemm(aq, as_, bq, bs, torch.bfloat16, config=REF)
        for v in variants:
            same = [bool(torch.equal(fp8_gemm(aq, as_, bq, bs, torch.bfloat16, config=v), full))]
            for sub in (1, 7, 300):
                part = fp8_gemm(aq[:sub].contiguous(), as_[:sub].contiguous(), bq, bs, torch.bfloat16, config=v)
                same.append(bool(torch.equal(part, full[:sub])))
            res["checks"][f"invariance {v}"] = all(same)
        bad = [k for k, ok in res["checks"].items() if ok is not True]
        print(f"checks: {len(res['checks']) - len(bad)}/{len(res['checks'])} bitwise equal; bad: {bad}", flush=True)

    rows = []
    for (m, n, k) in shapes:
        a = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        b = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
        tf = lambda t: 2 * m * n * k / (t * 1e-3) / 1e12  # noqa: E731
        r = {"bf16": tf(bench(lambda: a @ b.t()))}
        a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
        one = torch.ones((), device=dev)
        r["tensor"] = tf(bench(lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)))
        sa, sb = torch.rand(m, 1, device=dev) + 0.5, torch.rand(1, n, device=dev) + 0.5
        r["row"] = tf(bench(lambda: torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)))
        aq, as_ = quantize_act(a)
        bq, bs = quantize_weight(b)
        # Repeats interleaved (default, v1, v2, ..., default, v1, ...): the drift between
        # repeats hits every variant alike; the median of each is reported.
        runs = {"default": [], **{str(v): [] for v in variants}}
        for _ in range(args.repeats):
            runs["default"].append(tf(bench(lambda: fp8_gemm(aq, as_, bq, bs, torch.bfloat16))))
            for v in variants:
                if isinstance(runs[str(v)], str):
                    continue
                try:
                    runs[str(v)].append(tf(bench(lambda: fp8_gemm(aq, as_, bq, bs, torch.bfloat16, config=v))))
                except Exception as e:  # noqa: BLE001
                    runs[str(v)] = f"fail {type(e).__name__}: {str(e)[:120]}"
        for key, ts in runs.items():
            r[key] = ts if isinstance(ts, str) else sorted(ts)[len(ts) // 2]
            if isinstance(ts, list) and len(ts) > 1:
                r[f"{key} runs"] = ts
        print(f"  {m},{n},{k} default (dispatcher's pick): {r['default']:.0f} {runs['default']}", flush=True)
        for v in variants:
            if m <= 512 and isinstance(r[str(v)], float):
                r[f"{v} graph"] = tf(bench(lambda: fp8_gemm(aq, as_, bq, bs, torch.bfloat16, config=v), graph=True))
            print(f"  {m},{n},{k} {v}: {r[str(v)]} {[round(t) for t in runs[str(v)]] if isinstance(runs[str(v)], list) else ''}"
                  f" (graph {r.get(f'{v} graph')})", flush=True)
        if m <= 512:
            r["tensor graph"] = tf(bench(lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16), graph=True))
            print(f"  {m},{n},{k} tensorwise graph: {r['tensor graph']}", flush=True)
        r["tensor_again"] = tf(bench(lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)))
        res["gemm"][f"{m},{n},{k}"] = r
        rows.append((m, n, k, r))
        del a, b, a8, b8, aq, bq
    print("\n| M,N,K | bf16 | tensorwise (again) | rowwise | default | " + " | ".join(f"{v[0]}x{v[1]} w{v[2]} s{v[3]} {v[4]}" for v in variants) + " |")
    for m, n, k, r in rows:
        cells = []
        for v in variants:
            x = r[str(v)]
            cells.append(f"{x:.0f} ({x / r['tensor']:.2f})" if isinstance(x, float) else "fail")
        print(f"| {m},{n},{k} | {r['bf16']:.0f} | {r['tensor']:.0f} ({r['tensor_again']:.0f}) | {r['row']:.0f} | {r['default']:.0f} ({r['default'] / r['tensor']:.2f}) | " + " | ".join(cells) + " |")
    with open(os.path.join(args.out, "fp8_gemm_variants.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
