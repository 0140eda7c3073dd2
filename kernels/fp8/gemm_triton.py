"""Triton kernels of the block-scaled FP8 GEMM (the "ptr" and "tma*" kinds of ``gemm.py``) and
the per-K-block promotion they share with the grouped GEMM (``grouped.py``): for each 128-wide K
block in increasing order, the fp8 partial product on the tensor cores, then
``acc += P_k * (sA_k ⊗ sB_k)`` in fp32.
"""

from __future__ import annotations

from ..backend import HAS_TRITON, tl, triton
from ..tile_order import grouped_tile

if HAS_TRITON:

    @triton.jit
    def block_scaled_dot(a_ptrs, b_ptrs, as_ptrs, bs_ptrs, K, stride_ask, stride_bsk,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_K: tl.constexpr):
        """The block-scaled product of one output tile by pointer loads: for each 128-wide K
        block in increasing order, P_k = A_k @ B_kᵀ on the tensor cores (fp32 accumulation),
        then ``acc += P_k * (sA_k ⊗ sB_k)`` in fp32. a_ptrs [BLOCK_M, 128] / b_ptrs [BLOCK_N, 128]
        point at K block 0 of the tile's rows of A and B (K contiguous), as_ptrs [BLOCK_M] /
        bs_ptrs [BLOCK_N] at their K-block-0 scales (the next block's a stride_ask / stride_bsk
        further). Shared by fp8_gemm's pointer kernel and the grouped GEMM, so the two compute
        each element alike."""
        BLOCK_K: tl.constexpr = 128
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:
                a = tl.load(a_ptrs)
                b = tl.load(b_ptrs)
            else:
                kmask = offs_k < K - kb * BLOCK_K
                a = tl.load(a_ptrs, mask=kmask[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=kmask[None, :], other=0.0)
            sa = tl.load(as_ptrs + kb * stride_ask)
            sb = tl.load(bs_ptrs + kb * stride_bsk)
            part = tl.dot(a, tl.trans(b))
            acc += part * (sa[:, None] * sb[None, :])
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K
        return acc

    @triton.jit
    def fp8_gemm_kernel(
        a_ptr, b_ptr, c_ptr, as_ptr, bs_ptr,
        M, N, K,
        stride_am, stride_bn, stride_cm,
        stride_asm, stride_ask, stride_bsn, stride_bsk,
        B_BLOCK_SCALED: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
        EVEN_K: tl.constexpr,
    ):
        BLOCK_K: tl.constexpr = 128
        pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

        # Out-of-range rows/cols wrap around (reads stay in bounds, stores are masked).
        offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
        offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
        offs_k = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :]
        b_ptrs = b_ptr + offs_n[:, None] * stride_bn + offs_k[None, :]
        as_ptrs = as_ptr + offs_m * stride_asm
        if B_BLOCK_SCALED:
            bs_ptrs = bs_ptr + (offs_n // 128) * stride_bsn
        else:
            bs_ptrs = bs_ptr + offs_n * stride_bsn

        acc = block_scaled_dot(a_ptrs, b_ptrs, as_ptrs, bs_ptrs, K, stride_ask, stride_bsk,
                               BLOCK_M, BLOCK_N, EVEN_K)

        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :]
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.jit
    def fp8_gemm_tma_kernel(
        a_desc, b_desc, c_ptr, as_ptr, bs_ptr,
        M, N, K,
        stride_cm, stride_asm, stride_ask, stride_bsn, stride_bsk,
        B_BLOCK_SCALED: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
        WARP_SPECIALIZE: tl.constexpr, PIPELINE: tl.constexpr,
    ):
        # Same math as _fp8_gemm_kernel; operands arrive through TMA descriptors (Hopper's
        # bulk tensor copy engine), which zero-fill out-of-bounds rows and the K tail.
        BLOCK_K: tl.constexpr = 128
        pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        rm = off_m + tl.arange(0, BLOCK_M)
        rn = off_n + tl.arange(0, BLOCK_N)
        as_ptrs = as_ptr + tl.minimum(rm, M - 1) * stride_asm
        if B_BLOCK_SCALED:
            bs_ptrs = bs_ptr + (tl.minimum(rn, N - 1) // 128) * stride_bsn
        else:
            bs_ptrs = bs_ptr + tl.minimum(rn, N - 1) * stride_bsn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if PIPELINE:
            # Software-pipelined promotion: issue block k's tensor-core product before scaling
            # and adding block k-1's, so the MMA can run while the FMAs do (same math, same
            # order of the fp32 additions as the plain loop).
            part = tl.dot(a_desc.load([off_m, 0]), b_desc.load([off_n, 0]).T)
            s = tl.load(as_ptrs)[:, None] * tl.load(bs_ptrs)[None, :]
            for kb in tl.range(1, tl.cdiv(K, BLOCK_K), warp_specialize=WARP_SPECIALIZE):
                a = a_desc.load([off_m, kb * BLOCK_K])
                b = b_desc.load([off_n, kb * BLOCK_K])
                nxt = tl.dot(a, b.T)
                acc += part * s
                s = tl.load(as_ptrs + kb * stride_ask)[:, None] * tl.load(bs_ptrs + kb * stride_bsk)[None, :]
                part = nxt
            acc += part * s
        else:
            for kb in tl.range(0, tl.cdiv(K, BLOCK_K), warp_specialize=WARP_SPECIALIZE):
                a = a_desc.load([off_m, kb * BLOCK_K])
                b = b_desc.load([off_n, kb * BLOCK_K])
                sa = tl.load(as_ptrs + kb * stride_ask)
                sb = tl.load(bs_ptrs + kb * stride_bsk)
                part = tl.dot(a, b.T)
                acc += part * (sa[:, None] * sb[None, :])
        c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :]
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))
