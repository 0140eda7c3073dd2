"""Compile the FP8 Gluon kernels for sm_90a on a machine without a GPU and report registers,
spills and SASS instruction counts (no device time).

    python -m benchmarks.tools.fp8_sass quant [cfg...] | gemm [--out DIR]

A fake active driver reports GPUTarget("cuda", 90, 32); ``kernel.warmup`` compiles with CPU
tensors standing in for the device ones; ptxas -v / cuobjdump -sass read the result
(docs/benchmarks-log.md, FP8, "Off-device compile checks").
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver


class _FakeDriver:
    """Reports an sm_90 target; no GPU or CUDA driver needed for compiling."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, *args):
        return 0

    def get_device_interface(self):
        return torch.cuda

    def map_python_to_cpp_type(self, ty):
        return ty


def fake_sm90():
    driver.set_active(_FakeDriver())


def _tool(name: str) -> str:
    """Triton's bundled CUDA tool (the PATH may lack cuobjdump)."""
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def report(compiled, name: str, out: str) -> str:
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "k.ptx")
        open(p, "w").write(ptx)
        cubin = os.path.join(d, "k.cubin")
        r = subprocess.run([_tool("ptxas"), "-v", "-arch=sm_90a", p, "-o", cubin], capture_output=True, text=True)
        info = " ".join(l.strip() for l in r.stderr.splitlines() if "registers" in l or "spill" in l or "C75" in l)
        sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True).stdout
    open(os.path.join(out, f"{name}.sass"), "w").write(sass)
    ops = collections.Counter()
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m:
            ops[m.group(2).split(".")[0]] += 1
    top = ", ".join(f"{k} {v}" for k, v in ops.most_common(18))
    return f"{name}: {info}\n  {sum(ops.values())} SASS instructions: {top}"


def quant(cfgs, out):
    from kernels.fp8 import quantize_hopper as QH
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    m, k = 8192, 2048
    x = torch.empty(m, k, dtype=torch.bfloat16)
    q = torch.empty(m, k, dtype=torch.float8_e4m3fn)
    s = torch.empty(k // 128, m, dtype=torch.float32).t()
    qt = torch.empty(k, m, dtype=torch.float8_e4m3fn)
    st = torch.empty(m // 128, k, dtype=torch.float32).t()
    for cfg in cfgs:
        rowwise = cfg[0] == "both"
        stages, per_sm, cap, opts, warps = cfg[1:]
        x_desc = TensorDescriptor.from_tensor(x, [128, 64], QH._tile_layout(x.dtype))
        qt_desc = TensorDescriptor.from_tensor(qt, [128, 128], QH._qt_layout())
        qq, ss = (q, s) if rowwise else (qt, st)
        kw = dict(ROWWISE=rowwise, COLWISE=True, POW2=False, STAGES=stages, QT_BUFFERS=1 if per_sm == 0 else 2,
                  FMAX="fmax" in opts, num_warps=warps)
        if cap:
            kw["maxnreg"] = cap
        c = QH._quant_act_gluon_kernel.warmup(x_desc, qt_desc, qq, ss, st, m, k, qq.stride(0), ss.stride(1),
                                              st.stride(1), grid=(1,), **kw)
        print(report(c, "quant_" + "_".join(map(str, cfg)).replace("+", "-"), out), flush=True)


def gemm(variants, out):
    """variants: "key=value,..." constexpr overrides of the warp-specialized kernel."""
    from kernels.fp8 import gemm_hopper as GH
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    m, n, k = 8192, 8192, 8192
    aq = torch.empty(m, k, dtype=torch.float8_e4m3fn)
    bq = torch.empty(n, k, dtype=torch.float8_e4m3fn)
    c = torch.empty(m, n, dtype=torch.bfloat16)
    a_s = torch.empty(k // 128, m, dtype=torch.float32).t()
    b_s = torch.empty(n // 128, k // 128, dtype=torch.float32)
    for v in variants:
        kw = dict(STAGES=3, GROUP_M=8, C_BUFS=2, B_ROWWISE=False, CONSUMER_REGS=232, num_warps=4)
        for item in filter(None, v.split(",")):
            key, val = item.split("=")
            kw[key] = int(val)
        descs = (TensorDescriptor.from_tensor(aq, [128, 128], GH._smem_layout((128, 128), aq.dtype)),
                 TensorDescriptor.from_tensor(bq, [256, 128], GH._smem_layout((256, 128), bq.dtype)),
                 TensorDescriptor.from_tensor(c, [64, 128], GH._smem_layout((64, 128), c.dtype)))
        sa = TensorDescriptor.from_tensor(a_s.t(), [1, 128], GH._SCALE_LAYOUT) if kw.get("A_SCALES_TMA") else a_s
        comp = GH._fp8_gemm_gluon_ws_kernel.warmup(*descs, sa, b_s, m, n, k, a_s.stride(0), a_s.stride(1),
                                                    b_s.stride(0), b_s.stride(1), grid=(1,), **kw)
        print(report(comp, "gemm_" + (v.replace(",", "_").replace("=", "") or "default"), out), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["quant", "gemm"])
    ap.add_argument("--out", default="/tmp/sass")
    args, rest = ap.parse_known_args()
    os.makedirs(args.out, exist_ok=True)
    fake_sm90()
    if args.what == "quant":
        cfgs = [("both", 1, 0, 80, "fmax", 8), ("col", 1, 0, 80, "fmax", 8)] if not rest else [
            (r.split(",")[0], *map(int, r.split(",")[1:4]), r.split(",")[4], int(r.split(",")[5])) for r in rest]
        quant(cfgs, args.out)
    else:
        gemm(rest or [""], args.out)
