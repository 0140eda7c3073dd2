"""fp32 logits from bf16 operands: the LM-head GEMM of the alignment rule (DESIGN §4).

``logits_fp32(hidden, weight)``: hidden [N, D] bf16 × weight [V, D] bf16 → [N, V] fp32, with
fp32 accumulation and an fp32 result, never an fp32 copy of the weight.
``matmul_fp32(a, b, out=None, accumulate=False)``: the same kernel for any strides,
a [M, K] × b [K, N] → fp32 [M, N] (optionally ``out += a @ b``); the log-prob backward uses it.

Backends (``backend=`` as in :mod:`kernels.backend`): CUDA → a Triton tensor-core GEMM with a
fixed K order and no split-K (a row of the output does not depend on N: batch invariant).
CPU → float64 matmuls over vocabulary chunks, rounded to fp32 (products of bf16 values are
exact; the float64 sum carries 29 more bits than fp32, so the fp32 result does not depend on
the CPU library's blocking in practice).
"""

from __future__ import annotations

import torch

from ..backend import HAS_TRITON, Backend, resolve_backend, tl, triton
from ..tile_order import grouped_tile

_IN_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

if HAS_TRITON:

    @triton.jit
    def _mm_fp32_kernel(
        a_ptr, b_ptr, c_ptr, M, N, K,
        stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
        ACCUMULATE: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

        offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
        offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
        offs_k = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
        b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:
                a = tl.load(a_ptrs)
                b = tl.load(b_ptrs)
            else:
                kmask = offs_k < K - kb * BLOCK_K
                a = tl.load(a_ptrs, mask=kmask[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=kmask[:, None], other=0.0)
            if UPCAST:  # the Triton interpreter multiplies bf16 as raw uint16: upcast there
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if IEEE:  # fp32 operands: true fp32 products (tl.dot's default would be tf32)
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk

        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
        cmask = (rm[:, None] < M) & (rn[None, :] < N)
        if ACCUMULATE:
            acc += tl.load(c_ptrs, mask=cmask, other=0.0)
        tl.store(c_ptrs, acc, mask=cmask)


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); one config for every M (batch invariant).
_CONFIG_GPU = (128, 256, 64, 8, 4)  # best of 4 on an H100 (benchmarks/fp8/ops.py)
# fp32 operands take twice the shared memory per tile: the bf16 tiles would need 393 KB (H100:
# 227 KB), so fp32 gets smaller tiles (98 KB).
_CONFIG_GPU_FP32 = (128, 128, 32, 8, 3)
_CONFIG_INTERPRET = (32, 32, 32, 4, 1)
_CPU_CHUNK = 4096


def matmul_fp32_torch(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, accumulate: bool) -> torch.Tensor:
    """The PyTorch path of :func:`matmul_fp32` (any device): float64 matmuls over column chunks,
    rounded to fp32, written (or added) into ``out`` fp32 ``[M, N]``."""
    for c0 in range(0, b.shape[1], _CPU_CHUNK):
        part = (a.double() @ b[:, c0:c0 + _CPU_CHUNK].double()).float()
        if accumulate:
            out[:, c0:c0 + _CPU_CHUNK] += part
        else:
            out[:, c0:c0 + _CPU_CHUNK] = part
    return out


def logits_fp32_torch(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """:func:`logits_fp32` on its PyTorch path alone, on any device (the exported model code's
    LM head: ``trainer.ring_linear.remote_code``)."""
    out = torch.empty(hidden.shape[0], weight.shape[0], dtype=torch.float32, device=hidden.device)
    return matmul_fp32_torch(hidden, weight.t(), out, accumulate=False)


def matmul_fp32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None,
                accumulate: bool = False, *, backend: Backend = "auto",
                config: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """a [M, K] × b [K, N] (same dtype: bf16, fp16 or fp32; any strides) → fp32 [M, N].

    ``out``: an fp32 [M, N] to write into (returned); ``accumulate``: ``out += a @ b`` instead.
    ``config``: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) of the Triton kernel (benchmarks).
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul_fp32 needs a [M, K] and b [K, N], got {tuple(a.shape)}, {tuple(b.shape)}")
    if a.dtype != b.dtype or a.dtype not in _IN_DTYPES:
        raise ValueError(f"a and b must share a dtype in {_IN_DTYPES}, got {a.dtype}, {b.dtype}")
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs out")
        out = torch.empty(m, n, dtype=torch.float32, device=a.device)
    elif out.dtype != torch.float32 or tuple(out.shape) != (m, n):
        raise ValueError(f"out must be fp32 [{m}, {n}], got {out.dtype} {tuple(out.shape)}")
    if m == 0 or n == 0:
        return out
    if resolve_backend("lm_head.matmul_fp32", a, backend) == "torch":
        return matmul_fp32_torch(a, b, out, accumulate)
    ieee = a.dtype == torch.float32
    gpu_config = _CONFIG_GPU_FP32 if ieee else _CONFIG_GPU
    bm, bn, bk, warps, stages = config or (gpu_config if a.is_cuda else _CONFIG_INTERPRET)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    _mm_fp32_kernel[grid](
        a, b, out, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        out.stride(0), out.stride(1), ACCUMULATE=accumulate, IEEE=ieee and a.is_cuda, BLOCK_M=bm, BLOCK_N=bn,
        BLOCK_K=bk, GROUP_M=8, EVEN_K=(k % bk == 0), UPCAST=not a.is_cuda, num_warps=warps, num_stages=stages,
    )
    return out


def logits_fp32(hidden: torch.Tensor, weight: torch.Tensor, *, backend: Backend = "auto",
                config: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """LM-head logits in fp32: hidden [N, D] × weight [V, D] (one dtype: bf16, or fp16/fp32)
    → [N, V] fp32, fp32 accumulation; ``config`` as for :func:`matmul_fp32`."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"logits_fp32 needs hidden [N, D] and weight [V, D], got {tuple(hidden.shape)}, {tuple(weight.shape)}"
        )
    return matmul_fp32(hidden, weight.t(), backend=backend, config=config)
