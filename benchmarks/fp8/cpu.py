"""CPU timings of the block-scaled FP8 path (kernels/fp8/quantize_torch.py, gemm_torch.py and their
CPU dispatch): the current code against an earlier kernels/fp8/reference.py (which held the CPU
path until it was split) loaded from git at run time, in the same run.

    python -m benchmarks.fp8.cpu [--old-rev REV] [--threads 1 2] [--repeats 7] [--quick]

Per shape (M tokens, K in, N out) and thread count: median µs of quantize_act, quantize_act_both,
quantize_weight, quantize_weight_t, fp8_gemm (the PyTorch path), FP8Linear forward and
forward+backward, and F.linear (fp32) forward and forward+backward as the anchor; old and new
alternate call by call (the machine is noisy), each timing the median over ``--repeats`` rounds
of the median of many calls. "old" runs the same dispatch (quantize.py, gemm.py, linear.py) with the
old reference functions patched in, so the ratio measures the CPU path's functions.
Bitwise equality of the two is checked by benchmarks/tools/fp8_cpu_check.py.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


import torch
import torch.nn.functional as F

from benchmarks.harness import header

from kernels.fp8 import fp8_gemm, fp8_linear
from kernels.fp8 import gemm as G
from kernels.fp8 import quantize as Q

REPO = Path(__file__).resolve().parents[2]

# The last commit before the CPU speed-up of reference.py (the default "old" for the comparison).
BASE_REV = "6241847"


def load_old_reference(rev: str = BASE_REV, path: str | None = None):
    """kernels/fp8/reference.py as of git revision ``rev`` (or the file ``path``), as a module."""
    if path is None:
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:kernels/fp8/reference.py"], check=True,
                             capture_output=True, text=True).stdout
        fd, path = tempfile.mkstemp(suffix="_fp8_reference_old.py")
        with os.fdopen(fd, "w") as f:
            f.write(src)
    spec = importlib.util.spec_from_file_location("fp8_reference_old", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def old_path(old):
    """Run the CPU dispatch with the old reference functions (and the old CPU branches: both
    orientations quantized from x separately)."""
    names = [(Q, "quantize_act_torch"), (Q, "quantize_act_t_torch"), (Q, "quantize_weight_torch"),
             (Q, "quantize_act_both_torch"), (G, "fp8_gemm_torch")]
    saved = {(mod, name): getattr(mod, name) for mod, name in names}
    try:
        Q.quantize_act_torch, Q.quantize_act_t_torch = old.quantize_act_ref, old.quantize_act_t_ref
        Q.quantize_weight_torch, G.fp8_gemm_torch = old.quantize_weight_ref, old.fp8_gemm_torch
        Q.quantize_act_both_torch = lambda x, p2: (*old.quantize_act_ref(x, p2), *old.quantize_act_t_ref(x, p2))
        yield
    finally:
        for (mod, name), fn in saved.items():
            setattr(mod, name, fn)


def paired_median_us(fn, old, rounds: int, min_time: float = 0.05, max_calls: int = 200) -> tuple[float, float]:
    """Median µs of fn on the old and on the new path: calls alternate old, new, old, new, ... (the
    switch happens outside the timed region) for ``rounds`` rounds of at least ``min_time``
    seconds and 5 pairs each; returns the medians over rounds of each round's median."""
    with old_path(old):
        fn()
    fn()
    med_old, med_new = [], []
    for _ in range(rounds):
        t_old, t_new, t_end = [], [], time.perf_counter() + min_time
        while len(t_new) < 5 or (time.perf_counter() < t_end and len(t_new) < max_calls):
            with old_path(old):
                t0 = time.perf_counter()
                fn()
                t_old.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fn()
            t_new.append(time.perf_counter() - t0)
        med_old.append(statistics.median(t_old))
        med_new.append(statistics.median(t_new))
    return statistics.median(med_old) * 1e6, statistics.median(med_new) * 1e6


def median_us(fn, rounds: int, min_time: float = 0.05, max_calls: int = 200) -> float:
    """Median over ``rounds`` of the median µs of calls to fn (at least ``min_time`` s, 5 calls)."""
    fn()
    meds = []
    for _ in range(rounds):
        ts, t_end = [], time.perf_counter() + min_time
        while len(ts) < 5 or (time.perf_counter() < t_end and len(ts) < max_calls):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        meds.append(statistics.median(ts))
    return statistics.median(meds) * 1e6


def cases(m: int, k: int, n: int):
    """name → (fn, uses the FP8 path) for one shape; fp32 activations and master weight (the CPU demo)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) * k**-0.5
    dy = torch.randn(m, n, generator=g)
    xq, xs = Q.quantize_act(x)
    wq, ws = Q.quantize_weight(w)
    xr = x.clone().requires_grad_()
    wr = w.clone().requires_grad_()

    def fwd_bwd(f):
        xr.grad = wr.grad = None
        f(xr, wr).backward(dy)

    return {
        "quantize_act": lambda: Q.quantize_act(x),
        "quantize_act_both": lambda: Q.quantize_act_both(x),
        "quantize_weight": lambda: Q.quantize_weight(w),
        "quantize_weight_t": lambda: Q.quantize_weight_t(w),
        "fp8_gemm": lambda: fp8_gemm(xq, xs, wq, ws, torch.float32),
        "FP8Linear fwd (inference)": lambda: fp8_linear(x, w),
        "FP8Linear fwd+bwd": lambda: fwd_bwd(fp8_linear),
        "F.linear fwd": lambda: F.linear(x, w),
        "F.linear fwd+bwd": lambda: fwd_bwd(F.linear),
    }


SHAPES = [(128, 128, 344), (128, 344, 128), (1024, 128, 344), (1024, 344, 128), (1024, 512, 512)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-rev", default=BASE_REV)
    ap.add_argument("--old-file", default=None)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5, help="rounds per timing (each a median of calls)")
    ap.add_argument("--quick", action="store_true", help="only the two demo shapes at M=128")
    args = ap.parse_args()
    old = load_old_reference(args.old_rev, args.old_file)
    print(header(f"fp8 CPU path: new (working tree) vs old ({args.old_file or args.old_rev})"))
    print(f"# medians of {args.repeats} rounds, each the median of calls alternating old/new")
    shapes = SHAPES[:2] if args.quick else SHAPES
    for threads in args.threads:
        torch.set_num_threads(threads)
        for m, k, n in shapes:
            print(f"\n## {threads} thread(s), M={m} K={k} N={n}")
            print(f"{'op':28s} {'old µs':>10s} {'new µs':>10s} {'old/new':>8s}")
            fns = cases(m, k, n)
            times = {}
            for name, fn in fns.items():
                if name.startswith("F.linear"):
                    times[name] = median_us(fn, args.repeats)
                    print(f"{name:28s} {times[name]:10.1f}")
                    continue
                o, nw = times[name] = paired_median_us(fn, old, args.repeats)
                print(f"{name:28s} {o:10.1f} {nw:10.1f} {o / nw:8.2f}")
            for mode, ours in (("fwd", "FP8Linear fwd (inference)"), ("fwd+bwd", "FP8Linear fwd+bwd")):
                (o, nw), ref = times[ours], times[f"F.linear {mode}"]
                print(f"FP8Linear {mode} ÷ F.linear {mode}: old {o / ref:.2f}×, new {nw / ref:.2f}×")

if __name__ == "__main__":
    main()
