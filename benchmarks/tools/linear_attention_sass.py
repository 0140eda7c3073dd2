"""Compile the linear-attention forward kernels for sm_90a on a machine without a GPU (no device
time): registers and spills of each launch of the segmented forward, and whether its output pass
runs the same floating-point instructions as the one-launch forward.

    TRITON_INTERPRET=0 python -m benchmarks.tools.linear_attention_sass [--out DIR]

Why the last check: a sequence of at most ``SEGMENT`` tokens gets the same bits from the one-launch
forward (T <= SEGMENT) and from the segmented one (it is packed into a longer batch) only if both
compiled variants of ``_chunk_fwd_kernel`` do the same arithmetic.  They differ in constexprs
outside the loop (where the segment starts, whether the state is loaded), so the check compares
the multiset of floating-point SASS instructions (FMUL, FFMA, MUFU, F2FP, ..., and the HGMMA
forms with their accumulator operands): equal counts mean no product or sum was fused, split or
dropped differently (the order of independent instructions changes no result).  The GPU check
that settles it is ``python -m benchmarks.linear_attention.ops --gpu --long`` (bitwise, on the
card).  Uses :mod:`benchmarks.tools.fp8_sass`'s fake sm_90 driver and report.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import os
import re
import sys

import torch

from benchmarks.tools.fp8_sass import fake_sm90, report

FLOAT_OPS = re.compile(r"^(HGMMA|FFMA|FMUL|FADD|F2FP|MUFU|FSEL|FMNMX|FSETP|FCHK|FRND|F2F)")


def float_ops(sass: str) -> collections.Counter:
    """Floating-point instructions of a SASS listing, registers erased (HGMMA keeps its form)."""
    ops = collections.Counter()
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*?);", line)
        if m and FLOAT_OPS.match(m.group(1)):
            operands = re.sub(r"gdesc\[[^]]*\]", "desc", re.sub(r"\bU?R\d+\b", "R", m.group(2)))
            ops[m.group(1) + (operands if m.group(1).startswith("HGMMA") else "")] += 1
    return ops


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/linear_attention_sass")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("set TRITON_INTERPRET=0: this compiles the kernels, it does not interpret them")
        return 2
    os.makedirs(args.out, exist_ok=True)
    fake_sm90()
    ck = importlib.import_module("kernels.linear_attention.chunk_triton")
    B, T, H, D = 1, 8192, 16, 128
    states = torch.empty(8, H, D, D)
    g, cu = torch.empty(H), torch.empty(3, dtype=torch.int32)
    common = dict(H=H, D=D, BT=ck.BT, BV=ck.BV, SEG=ck.SEGMENT, num_warps=ck.NUM_WARPS)
    same = True
    for dtype, stages in ((torch.bfloat16, ck.NUM_STAGES), (torch.float32, ck.NUM_STAGES_FP32)):
        x = torch.empty(B, T, H, D, dtype=dtype)
        low = dtype != torch.float32
        split = dict(SPLIT_D=ck.SPLIT_DERIVED and low, IN_PREC=ck.FP32_PRECISION, num_stages=stages)
        name = str(dtype).split(".")[-1]
        counts = {}
        for variant, seg, varlen, h0, ht in (("one-launch", False, False, False, False),
                                             ("one-launch h0 ht varlen", False, True, True, True),
                                             ("segmented", True, False, True, False),
                                             ("segmented ht varlen", True, True, True, True)):
            c = ck._chunk_fwd_kernel.warmup(x, x, x, x, g, states, states, cu, cu, cu, 0.1, T, 4, grid=(1,),
                                            SEGMENTED=seg, VARLEN=varlen, USE_H0=h0, STORE_HT=ht,
                                            SPLIT_S=ck.SPLIT_STATE and low, **common, **split)
            tag = f"outputs {name} {variant}"
            print(report(c, tag.replace(" ", "_"), args.out), flush=True)
            counts[variant] = float_ops(open(os.path.join(args.out, tag.replace(" ", "_") + ".sass")).read())
        ref = counts["one-launch"]
        for variant, ops in counts.items():
            # the segment index is an integer division, which SASS does through one MUFU.RCP
            diff = {k: ops[k] - ref[k] for k in set(ops) | set(ref) if ops[k] != ref[k] and k != "MUFU.RCP"}
            print(f"  {name} {variant}: floating-point instructions as one-launch: {not diff} {diff or ''}")
            same &= not diff
        c = ck._segment_state_kernel.warmup(x, x, g, states, cu, cu, cu, T, 4, grid=(1,), VARLEN=True,
                                            **common, **split)
        print(report(c, f"local_states_{name}", args.out), flush=True)
    c = ck._boundary_scan_kernel.warmup(states, states, g, cu, cu, T, 4, grid=(1,), H=H, D=D, SEG=ck.SEGMENT,
                                        BLOCK=ck.BOUNDARY_BLOCK, VARLEN=True, USE_H0=True)
    print(report(c, "boundary_scan", args.out), flush=True)
    print(f"same floating-point instructions in every output-pass variant: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
