"""Host (CPU) cost of enqueueing FP8Linear's launches, per op and per fwd+bwd step.

Run on a CUDA machine:  python benchmarks/fp8_host.py [--profile N] [--out DIR]
Prints, at the FP8Linear benchmark shape (8192 tokens, 2048 -> 5120, bf16): host µs per call of
each launch of a training step (50 calls, no synchronisation inside, after warm-up), host µs to
enqueue a whole fwd+bwd (FP8 and bf16 nn.Linear), and the GPU time of a step for comparison.
--profile N: cProfile of N fwd+bwd steps, the top functions by own time (written to --out too).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402

from kernels.fp8 import FP8Linear, fp8_gemm, quantize_act_both, quantize_weight  # noqa: E402
from kernels.fp8.quantize import quantize_weight_t  # noqa: E402
from benchmarks.fp8 import linear_step_parts  # noqa: E402


def host_us(f, calls: int = 50) -> float:
    for _ in range(3):
        f()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        f()
    t = (time.perf_counter() - t0) / calls * 1e6
    torch.cuda.synchronize()
    return t


def pieces(xq, xs, wq, ws, xd) -> dict[str, float]:
    """Host µs of the pieces of one launch (what the launch paths do per call)."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from kernels.fp8 import gemm_hopper as H
    from kernels.fp8.quantize import _quant_act_triton

    m, n = xq.shape[0], wq.shape[0]
    c = torch.empty(m, n, dtype=torch.bfloat16, device=xq.device)
    lay = lambda: gl.NVMMASharedLayout.get_default_for([256, 128], gl.float8e4nv)  # noqa: E731
    lb = lay()
    la = gl.NVMMASharedLayout.get_default_for([128, 128], gl.float8e4nv)
    lc = gl.NVMMASharedLayout.get_default_for([64, 128], gl.bfloat16)
    da = TensorDescriptor.from_tensor(xq, [128, 128], la)
    db = TensorDescriptor.from_tensor(wq, [256, 128], lb)
    dc = TensorDescriptor.from_tensor(c, [64, 128], lc)
    launch = lambda: H._fp8_gemm_gluon_ws_kernel[(132,)](  # noqa: E731
        da, db, dc, xs, ws, m, n, xq.shape[1], xs.stride(0), xs.stride(1), ws.stride(0), ws.stride(1),
        STAGES=3, GROUP_M=8, C_BUFS=1, B_ROWWISE=False, CONSUMER_REGS=232,
        num_warps=4)
    return {
        "get_device_capability": host_us(lambda: torch.cuda.get_device_capability(xq.device), 200),
        "gluon_supported": host_us(lambda: H.gluon_supported(xq, wq, torch.bfloat16), 200),
        "get_default_for": host_us(lay, 200),
        "TensorDescriptor.from_tensor": host_us(lambda: TensorDescriptor.from_tensor(wq, [256, 128], lb), 200),
        "torch.empty": host_us(lambda: torch.empty(m, n, dtype=torch.bfloat16, device=xq.device), 200),
        "gluon_ws launch, descriptors built": host_us(launch, 50),
        "quant both launch": host_us(lambda: _quant_act_triton(xd, True, True, False), 50),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    m, k, n = 8192, 2048, 5120
    lin = torch.nn.Linear(k, n, bias=False, device=dev, dtype=torch.bfloat16)
    f8 = FP8Linear.from_linear(lin)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
    xd, wd = x.detach(), lin.weight.detach()
    parts = {
        **linear_step_parts(xd, wd, dy),
        "torch.empty x3": lambda: (torch.empty(m, n, device=dev), torch.empty(m, k, device=dev),
                                   torch.empty(n, k, device=dev)),
    }
    host = {name: host_us(f) for name, f in parts.items()}
    print("host us per call: " + ", ".join(f"{a} {b:.0f}" for a, b in host.items()))
    print("pieces (host us per call): " + ", ".join(f"{a} {b:.1f}" for a, b in pieces(xq, xs, wq, ws, xd).items()))
    for steps in (1, 3, 10, 20):  # does the enqueue slow down as the launch queue fills?
        t = host_us(lambda: [f8(x).backward(dy) for _ in range(steps)], calls=1) / steps
        print(f"fp8 host per step, {steps} steps after a sync: {t:.0f} us")
    fwd = host_us(lambda: f8(x), calls=20)
    print(f"fp8 forward alone host {fwd:.0f} us")
    wd.grad = None

    def manual_step(times):  # the launches of one step, on this thread, without autograd
        t = [time.perf_counter()]
        xq_, xs_, xqt_, xst_ = quantize_act_both(xd); t.append(time.perf_counter())
        wq_, ws_ = quantize_weight(wd); t.append(time.perf_counter())
        fp8_gemm(xq_, xs_, wq_, ws_); t.append(time.perf_counter())
        dq, ds, dqt, dst = quantize_act_both(dy); t.append(time.perf_counter())
        wqt_, wst_ = quantize_weight_t(wd); t.append(time.perf_counter())
        fp8_gemm(dq, ds, wqt_, wst_); t.append(time.perf_counter())
        fp8_gemm(dqt, dst, xqt_, xst_); t.append(time.perf_counter())
        times.append([(b - a) * 1e6 for a, b in zip(t, t[1:])])

    times: list = []
    for _ in range(3):
        manual_step(times)
    torch.cuda.synchronize()
    times.clear()
    for _ in range(10):
        manual_step(times)
    torch.cuda.synchronize()
    med = [sorted(col)[len(col) // 2] for col in zip(*times)]
    print("manual step (no autograd) host us, median of 10: " + ", ".join(f"{v:.0f}" for v in med)
          + f"; sum {sum(med):.0f}")
    autograd_trace(f8, x, dy)
    for name, mod in (("bf16", lin), ("fp8", f8)):
        t = host_us(lambda: mod(x).backward(dy), calls=20)
        g = triton.testing.do_bench(lambda: mod(x).backward(dy), grad_to_none=[x, lin.weight],
                                    return_mode="median") * 1e3
        print(f"{name}: host enqueue per fwd+bwd {t:.0f} us; measured fwd+bwd {g:.0f} us")
    if args.profile:
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(args.profile):
            f8(x).backward(dy)
        pr.disable()
        torch.cuda.synchronize()
        s = io.StringIO()
        st = pstats.Stats(pr, stream=s)
        st.sort_stats("tottime").print_stats(30)
        st.sort_stats("cumulative").print_stats(40)
        text = s.getvalue()
        print(text[:9000])
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "fp8_host_profile.txt"), "w") as fh:
                fh.write(text)


def autograd_trace(f8, x, dy) -> None:
    """Host µs of each launch inside the autograd step (which thread runs it), and the gaps."""
    import threading

    from kernels.fp8 import linear as L

    log: list = []
    orig = {name: getattr(L, name) for name in ("quantize_act_both", "quantize_weight", "quantize_weight_t",
                                                "fp8_gemm")}

    def wrap(name, f):
        def g(*a, **kw):
            t0 = time.perf_counter()
            r = f(*a, **kw)
            log.append((name, threading.current_thread().name, t0, time.perf_counter()))
            return r
        return g

    for name, f in orig.items():
        setattr(L, name, wrap(name, f))
    fb = L._FP8LinearFn.backward

    def bwd(ctx, g):
        log.append(("backward enter", threading.current_thread().name, time.perf_counter(), time.perf_counter()))
        r = fb(ctx, g)
        log.append(("backward exit", threading.current_thread().name, time.perf_counter(), time.perf_counter()))
        return r

    L._FP8LinearFn.backward = staticmethod(bwd)
    try:
        for rep in range(4):
            torch.cuda.synchronize()
            log.clear()
            t0 = time.perf_counter()
            y = f8(x)
            t1 = time.perf_counter()
            y.backward(dy)
            t2 = time.perf_counter()
            if rep == 3:
                print(f"autograd step: forward {1e6 * (t1 - t0):.0f} us, backward() call {1e6 * (t2 - t1):.0f} us")
                for name, th, a, b in log:
                    print(f"  {name:18s} {th:12s} start +{1e6 * (a - t0):6.0f} us, {1e6 * (b - a):5.0f} us")
    finally:
        for name, f in orig.items():
            setattr(L, name, f)
        L._FP8LinearFn.backward = staticmethod(fb)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
