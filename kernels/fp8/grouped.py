"""Grouped block-scaled FP8 GEMM: the rows of many experts against their own weights, one launch.

``fp8_gemm_grouped(aq, a_scale, bq, b_scale, offsets, out_dtype)``:
- aq [R, K] e4m3 with a_scale [R, ceil(K/128)] (1×128 tiles): every group's rows, group g's in
  ``offsets[g]:offsets[g+1]`` (offsets [G+1] int, ascending, offsets[0] = 0, offsets[G] = R);
- bq [G, N, K] e4m3 with b_scale [G, ceil(N/128), ceil(K/128)]: each group's weight (128×128 blocks);
- returns C [R, N] in out_dtype, whose rows of group g are ``fp8_gemm(aq[rows_g], a_scale[rows_g],
  bq[g], b_scale[g])`` — bitwise: the same per-element math (each 128-wide K block's fp8 product
  on the tensor cores, promoted ``acc += P_k * (sA_k ⊗ sB_k)`` in K order), and a row's result
  depends neither on the tile shape nor on the other rows (fp8_gemm's batch invariance). The GPU
  benchmark (``benchmarks/fp8/ops.py --sections moe``) and the GPU tests check the bits.

What it is for: a MoE layer's FP8 experts in the rollout engine (``kernels.moe``'s
``stacked_experts_fp8``), instead of three GEMM launches per expert (771 for Ring-mini's 257).
The tile → group map is found in the kernel from the offsets alone (a binary search), so the
launch needs no host synchronisation on the routing and no other device work: the grid covers
``R // BLOCK_M + G`` row tiles, at least what the groups need, and a spare tile's program returns
at once. The PyTorch path (``backend=`` as in :mod:`kernels.backend`) runs ``fp8_gemm_torch``
per group.
"""

from __future__ import annotations

import torch

from ..backend import HAS_TRITON, Backend, resolve_backend, tl, triton
from .format import BLOCK, FP8_DTYPE, cdiv, check_2d
from .gemm_torch import fp8_gemm_torch
from .launch import launch

_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

if HAS_TRITON:
    from .gemm_triton import block_scaled_dot

    @triton.jit
    def _fp8_gemm_grouped_kernel(
        a_ptr, b_ptr, c_ptr, as_ptr, bs_ptr, offsets_ptr,
        G, N, K,
        stride_am, stride_bg, stride_bn, stride_cm,
        stride_asm, stride_ask, stride_bsg, stride_bsn, stride_bsk,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SEARCH_STEPS: tl.constexpr,
        EVEN_K: tl.constexpr,
    ):
        BLOCK_K: tl.constexpr = 128
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        # Group g owns the row tiles from first_tile(g) = offsets[g] // BLOCK_M + g to the next
        # group's first: the cdiv(rows, BLOCK_M) it needs and at most one spare (whose program
        # returns; an empty group has just that one), from the offsets alone, with no prefix
        # sum over the groups. This tile's group: the last g with first_tile(g) <= pid_m.
        lo = 0
        hi = G
        for _ in tl.static_range(SEARCH_STEPS):
            mid = (lo + hi) // 2
            right = tl.load(offsets_ptr + mid) // BLOCK_M + mid <= pid_m
            lo = tl.where(right, mid, lo)
            hi = tl.where(right, hi, mid)
        g = lo.to(tl.int64)
        row_start = tl.load(offsets_ptr + g)
        row_end = tl.load(offsets_ptr + g + 1)
        row0 = row_start + (pid_m - row_start // BLOCK_M - g) * BLOCK_M
        if row0 >= row_end:
            return
        rm = row0 + tl.arange(0, BLOCK_M)
        # Rows past the group re-read its last row (reads stay in bounds, stores are masked);
        # columns past N wrap, as in fp8_gemm's pointer kernel.
        offs_m = tl.where(rm < row_end, rm, row_end - 1)
        offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
        offs_k = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :]
        b_ptrs = b_ptr + g * stride_bg + offs_n[:, None] * stride_bn + offs_k[None, :]
        as_ptrs = as_ptr + offs_m * stride_asm
        bs_ptrs = bs_ptr + g * stride_bsg + (offs_n // 128) * stride_bsn

        acc = block_scaled_dot(a_ptrs, b_ptrs, as_ptrs, bs_ptrs, K, stride_ask, stride_bsk,
                               BLOCK_M, BLOCK_N, EVEN_K)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :]
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < row_end) & (rn[None, :] < N))


# (BLOCK_M, BLOCK_N, num_warps, num_stages): 64-row tiles, one Hopper warpgroup MMA (wgmma), as
# fp8_gemm's small-M configuration. Fastest of five at Ring-mini's MoE shape from 64 to 4096
# tokens (H100, BENCHMARKS.md, FP8, session 9: 128-row tiles were 1.2-1.7× slower: an expert's
# last tile is mostly empty at ~143 rows per expert, and there are half as many programs);
# every configuration gives the same bits (per-element math, checked there).
_CONFIG_GPU = (64, 128, 4, 4)
_CONFIG_INTERPRET = (32, 32, 4, 1)


def _validate(aq, a_scale, bq, b_scale, offsets, out_dtype):
    check_2d("aq", aq, (FP8_DTYPE,))
    check_2d("a_scale", a_scale, (torch.float32,))
    r, k = aq.shape
    if bq.dim() != 3 or bq.dtype != FP8_DTYPE or bq.shape[2] != k:
        raise ValueError(f"bq must be [G, N, K={k}] float8_e4m3fn, got {tuple(bq.shape)} {bq.dtype}")
    g, n, _ = bq.shape
    kb = cdiv(k, BLOCK)
    if tuple(a_scale.shape) != (r, kb):
        raise ValueError(f"a_scale must be [R, ceil(K/128)] = {(r, kb)}, got {tuple(a_scale.shape)}")
    if b_scale.dtype != torch.float32 or tuple(b_scale.shape) != (g, cdiv(n, BLOCK), kb):
        raise ValueError(f"b_scale must be fp32 [G, ceil(N/128), ceil(K/128)] = {(g, cdiv(n, BLOCK), kb)}, "
                         f"got {tuple(b_scale.shape)} {b_scale.dtype}")
    if offsets.dim() != 1 or offsets.shape[0] != g + 1 or offsets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"offsets must be int [G+1] = [{g + 1}] (group g's rows offsets[g]:offsets[g+1]), "
                         f"got {tuple(offsets.shape)} {offsets.dtype}")
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {_OUT_DTYPES}, got {out_dtype}")
    if len({t.device for t in (aq, a_scale, bq, b_scale, offsets)}) != 1:
        raise ValueError("aq, a_scale, bq, b_scale and offsets must be on one device, got "
                         f"{[str(t.device) for t in (aq, a_scale, bq, b_scale, offsets)]}")
    if aq.stride(1) != 1 or bq.stride(2) != 1:
        raise ValueError("aq and bq must be contiguous along K")
    if n == 0 or g == 0:
        raise ValueError(f"empty grouped GEMM: G={g}, N={n}")


def fp8_gemm_grouped(
    aq: torch.Tensor,
    a_scale: torch.Tensor,
    bq: torch.Tensor,
    b_scale: torch.Tensor,
    offsets: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    backend: Backend = "auto",
    config: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Each group's rows of ``aq·a_scale`` times its ``(bq[g]·b_scale[g])ᵀ`` → [R, N] out_dtype
    (shapes in the module docstring). ``offsets`` stays on the device: nothing here waits for it.
    One tile configuration serves every size (batch invariant by construction, as strict mode
    needs); ``config`` overrides it (BLOCK_M, BLOCK_N, num_warps, num_stages) for benchmarks."""
    _validate(aq, a_scale, bq, b_scale, offsets, out_dtype)
    r, k = aq.shape
    g, n, _ = bq.shape
    if r == 0:
        return torch.empty(0, n, dtype=out_dtype, device=aq.device)
    if resolve_backend("fp8_gemm_grouped", aq, backend) == "torch":
        bounds = offsets.tolist()
        return torch.cat([fp8_gemm_torch(aq[s:e], a_scale[s:e], bq[i], b_scale[i], out_dtype)
                          for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:]))])
    if config is None:
        config = _CONFIG_GPU if aq.is_cuda else _CONFIG_INTERPRET
    bm, bn, warps, stages = config
    c = torch.empty(r, n, dtype=out_dtype, device=aq.device)
    launch(_fp8_gemm_grouped_kernel, (r // bm + g, cdiv(n, bn)),  # first_tile(G): the tiles there are
        aq, bq, c, a_scale, b_scale, offsets, g, n, k,
        aq.stride(0), bq.stride(0), bq.stride(1), c.stride(0),
        a_scale.stride(0), a_scale.stride(1), b_scale.stride(0), b_scale.stride(1), b_scale.stride(2),
        BLOCK_M=bm, BLOCK_N=bn, SEARCH_STEPS=max(1, g.bit_length()), EVEN_K=(k % BLOCK == 0),
        num_warps=warps, num_stages=stages,
    )
    return c


__all__ = ["fp8_gemm_grouped"]
