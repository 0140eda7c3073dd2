"""Host (CPU) cost of enqueueing FP8Linear's launches, per op and per fwd+bwd step.

Run on a CUDA machine:  python -m benchmarks.fp8.host [--profile N] [--out DIR] [--kernels-root DIR]
Prints, at the FP8Linear benchmark shape (8192 tokens, 2048 -> 5120, bf16): host µs per call of
each launch of a training step (50 calls, no synchronisation inside, after warm-up), host µs to
enqueue a whole fwd+bwd (FP8 and bf16 nn.Linear), the measured step (do_bench: host and GPU
together), and the step captured in a CUDA graph and replayed (GPU time alone; FP8Linear can be
captured). The last line is a one-line summary.
--profile N: cProfile of N fwd+bwd steps, the top functions by own time (written to --out too).
--kernels-root DIR: import ``kernels`` from DIR instead (an older copy, for before/after runs
in one call: e.g. ``git archive HEAD kernels | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

# --kernels-root: an older copy of `kernels` shadows the working tree's (before/after runs in one
# call); it must come first on the path before anything imports kernels.
if "--kernels-root" in sys.argv:
    sys.path.insert(0, os.path.abspath(sys.argv[sys.argv.index("--kernels-root") + 1]))

import torch  # noqa: E402

from benchmarks.fp8.ops import linear_step_parts  # noqa: E402
from benchmarks.harness import gpu_ms, header, replay_ms  # noqa: E402
from kernels.fp8 import FP8Linear, fp8_gemm, quantize_act_both, quantize_weight  # noqa: E402
from kernels.fp8.quantize import quantize_weight_t  # noqa: E402


def host_us(f, calls: int = 50) -> float:
    """Median host µs of one call of f, calls timed one by one without synchronisation (after 3
    warm-up calls and a sync): the median drops the odd slow call (GC pause, preemption)."""
    for _ in range(3):
        f()
    torch.cuda.synchronize()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    return sorted(times)[len(times) // 2] * 1e6


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
    ap.add_argument("--kernels-root", default=None, help="import kernels from here (see above)")
    ap.add_argument("--quick", action="store_true", help="host per call, per step, measured and graph steps only")
    args = ap.parse_args()
    dev = torch.device("cuda")
    import kernels.fp8

    print(header(f"FP8Linear host cost, kernels from {kernels.fp8.__file__}", ("torch", "triton")))
    m, k, n = 8192, 2048, 5120
    lin = torch.nn.Linear(k, n, bias=False, device=dev, dtype=torch.bfloat16)
    f8 = FP8Linear.from_linear(lin)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
    xd, wd = x.detach(), lin.weight.detach()
    # bf16 first: its backward makes the autograd worker thread's CUDA context current. Kernels
    # before 2026-11-27 (--kernels-root) failed when FP8Linear's backward was that thread's first
    # CUDA work (Triton's TMA encoder needs a current context; backend.ensure_cuda_context).
    lin(x).backward(dy)
    parts = {
        **linear_step_parts(xd, wd, dy),
        "torch.empty x3": lambda: (torch.empty(m, n, device=dev), torch.empty(m, k, device=dev),
                                   torch.empty(n, k, device=dev)),
    }
    host = {name: host_us(f) for name, f in parts.items()}
    print("host us per call: " + ", ".join(f"{a} {b:.0f}" for a, b in host.items()))
    xq, xs, _, _ = quantize_act_both(xd)
    wq, ws = quantize_weight(wd)
    if not args.quick:
        print("pieces (host us per call): " + ", ".join(f"{a} {b:.1f}" for a, b in pieces(xq, xs, wq, ws, xd).items()))
    for steps in (1, 3, 10, 20) if not args.quick else ():  # does the enqueue slow down as the launch queue fills?
        t = host_us(lambda: [f8(x).backward(dy) for _ in range(steps)], calls=1) / steps
        print(f"fp8 host per step, {steps} steps after a sync: {t:.0f} us")
    fwd = host_us(lambda: f8(x), calls=20)
    print(f"fp8 forward alone host {fwd:.0f} us")
    lin.weight.grad = x.grad = None

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

    if not args.quick:
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
    lin.weight.grad = x.grad = None
    summary = {}
    for name, mod in (("bf16", lin), ("fp8", f8)):
        t = host_us(lambda: mod(x).backward(dy), calls=20)
        g = gpu_ms(lambda: mod(x).backward(dy), warmup=25, rep=100, grad_to_none=[x, lin.weight]) * 1e3
        summary[name] = (t, g)
        print(f"{name}: host enqueue per fwd+bwd {t:.0f} us; measured fwd+bwd {g:.0f} us")
    for name, mod in (("bf16", lin), ("fp8", f8)):
        summary[name] += (graph_step_us(mod, x, dy),)
        print(f"{name}: fwd+bwd captured in a CUDA graph, replayed: {summary[name][2]:.0f} us per step")
    (hb, sb, gb), (hf, sf, gf) = summary["bf16"], summary["fp8"]
    print(f"SUMMARY host enqueue fp8 {hf:.0f} us (bf16 {hb:.0f}); measured step fp8 {sf:.0f} us, bf16 {sb:.0f} us, "
          f"speed-up {sb / sf:.2f}x; CUDA graph step fp8 {gf:.0f} us, bf16 {gb:.0f} us, speed-up {gb / gf:.2f}x")
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


def graph_step_us(mod, x, dy, steps: int = 4, reps: int = 20) -> float:
    """GPU µs per fwd+bwd of ``mod`` with ``steps`` steps captured in one CUDA graph (PyTorch's
    whole-network capture: warm-up on a side stream, gradients set to None before capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            mod(x).backward(dy)
    torch.cuda.current_stream().wait_stream(side)
    x.grad = mod.weight.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(steps):
            mod(x).backward(dy)
    us = replay_ms(graph, reps, steps) * 1e3
    del graph
    x.grad = mod.weight.grad = None
    return us


def autograd_trace(f8, x, dy, steps: int = 20) -> None:
    """Where the host time of an autograd fwd+bwd goes, per thread: each op FP8Linear calls, the
    kernel launches inside them and the output allocations, summed per step (median over
    ``steps`` steps, no synchronisation), and the backward's hand-off from the caller."""
    import importlib
    import threading

    from kernels.fp8 import linear as L

    log: list = []

    def wrap(name, f):
        def g(*a, **kw):
            t0 = time.perf_counter()
            r = f(*a, **kw)
            log.append((name, threading.current_thread().name, t0, time.perf_counter()))
            return r
        return g

    patched = [(L, name, name) for name in ("quantize_act", "quantize_act_both", "quantize_act_t", "quantize_weight",
                                            "quantize_weight_t", "fp8_gemm")]
    for mod_name in ("quantize", "quantize_hopper", "gemm", "gemm_hopper"):
        mod = importlib.import_module(f"kernels.fp8.{mod_name}")
        if hasattr(mod, "launch"):
            patched.append((mod, "launch", "launch"))
    patched += [(torch, "empty", "alloc"), (torch, "empty_strided", "alloc")]
    orig = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patched if hasattr(obj, attr)]
    for (obj, attr, f), (_, _, label) in zip(orig, patched):
        setattr(obj, attr, wrap(label, f))
    fb = L._FP8LinearFn.backward

    def bwd(ctx, g):
        t0 = time.perf_counter()
        r = fb(ctx, g)
        log.append(("backward body", threading.current_thread().name, t0, time.perf_counter()))
        return r

    L._FP8LinearFn.backward = staticmethod(bwd)
    # TMA descriptors: lookups in launch's cache and encodings (cache misses), where it has one.
    from kernels.fp8 import launch as B
    from triton.backends.nvidia import driver as D

    counts = {"lookups": 0, "encodes": 0}

    def counted(key, f):
        def g(*a, **kw):
            counts[key] += 1
            return f(*a, **kw)
        return g

    orig.append((D, "make_tensordesc_arg", D.make_tensordesc_arg))
    D.make_tensordesc_arg = counted("encodes", D.make_tensordesc_arg)
    if hasattr(B, "_tensormap_args"):
        orig.append((B, "_tensormap_args", B._tensormap_args))
        B._tensormap_args = counted("lookups", B._tensormap_args)
    per_step: list = []
    try:
        for _ in range(steps + 3):
            if len(per_step) == 3:  # the warm-up steps are left out of the counts too
                counts.update(lookups=0, encodes=0)
            log.clear()
            t0 = time.perf_counter()
            y = f8(x)
            t1 = time.perf_counter()
            y.backward(dy)
            t2 = time.perf_counter()
            sums: dict = {("forward (caller)", "main"): t1 - t0, ("backward() (caller)", "main"): t2 - t1}
            for name, th, a, b in log:
                key = (name, "main" if th == "MainThread" else "autograd worker")
                sums[key] = sums.get(key, 0.0) + (b - a)
            per_step.append(sums)
    finally:
        for obj, attr, f in orig:
            setattr(obj, attr, f)
        L._FP8LinearFn.backward = staticmethod(fb)
    torch.cuda.synchronize()
    per_step = per_step[3:]
    print(f"autograd step, host µs summed per step (median of {steps} steps, no sync; launch and alloc are "
          "inside the ops):")
    for key in per_step[-1]:
        vals = sorted(d.get(key, 0.0) for d in per_step)
        print(f"  {key[0]:22s} {key[1]:16s} {vals[len(vals) // 2] * 1e6:7.0f}")
    print(f"TMA descriptors per step: {counts['lookups'] / steps:.1f} cache lookups, "
          f"{counts['encodes'] / steps:.1f} encodings")
    if hasattr(B, "_DirectLaunch"):
        fallbacks = [(d.compiled.name, d.why_not_direct) for d in B._COMPILED.values() if d.why_not_direct]
        print(f"kernels launched directly: {len(B._COMPILED) - len(fallbacks)}, through Triton's launcher: {fallbacks}")


if __name__ == "__main__":
    main()
