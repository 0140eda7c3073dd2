"""Hopper (sm_90) block-scaled FP8 GEMM written in Gluon: the promotion overlapped with the MMA.

Same contract and math as ``gemm.fp8_gemm`` (its PyTorch path is ``gemm_torch.fp8_gemm_torch``):
for each 128-wide K block k, in increasing order,

    P_k  = A_k @ B_kᵀ                      (fp8 wgmma, fp32 accumulation inside the block)
    acc  = fma(P_k, sA_k ⊗ sB_k, acc)      (fp32 promotion, DeepSeek-V3)

Why a Gluon kernel: Triton 3.6 waits for each block's wgmma before the fp32 scale-and-add, so
the tensor cores idle during every promotion (BENCHMARKS.md, "## FP8"). Here the wgmma of
block k is issued asynchronously and block k-1 is promoted while it runs
(``warpgroup_mma_wait(num_outstanding=1)``): two partial-product register tiles alternate
beside the fp32 accumulator. The block scales are loaded one block ahead, and for 128×128 B
blocks sA·sB is one factor per row, so the promotion is one FMA per element. Operands stream
through a STAGES-deep TMA ring completing on mbarriers; a slot is refilled as soon as its
wgmma has retired. Used for 128×128-block B (forward, dgrad); 1×128 B scales (wgrad) carry a
per-column scale vector that makes this kernel spill; the wgrad GEMM runs on ``gluon_ws``.

Two kernels, both with this per-element math (``fp8_gemm`` kinds):
- ``gluon_ws`` (default for large M·N): persistent (one program per SM), warp-specialized —
  a 1-warp TMA producer and two consumer warpgroups that each own 64 rows of a 128×256 tile
  (a K block moves 48 KiB of operands per 128×256 outputs instead of 32 KiB per 128×128: a
  quarter less L2 traffic per flop). A consumer holds
  acc (two 64×128 halves) + one P tile and does not overlap its own wgmma and promotion; with
  no CTA-wide barrier in the K loop the two warpgroups drift apart and each promotes while the
  tensor cores run the other's wgmma. 0.86-0.95× cuBLAS tensorwise FP8 (BENCHMARKS.md, session 8);
  0.88-0.98× with A's scales TMA-loaded into the ring slot beside A and B (A_SCALES_TMA: no
  global load in the consumer's loop for them) and 16 row-tiles per group (session 8, second round).
  Also the wgrad GEMM (1×128 B scales, B_ROWWISE): the producer TMA-loads each block's sA
  and sB vectors into the ring slot beside A and B; the consumers read them from shared memory
  and form sA[row]·sB[col] per element (the Triton kernel's rounding): 760 TFLOP/s vs 510.
- ``gluon``: the non-persistent 128×128 kernel described above (small M·N: fewer 128×256
  tiles than SMs; also 1×128 B scales when asked for explicitly).

Batch invariance: every output element is the same fixed sequence of wgmma blocks and fp32
FMAs whatever M or the tile shape; the GPU benchmark checks it bitwise against the Triton
kernel and across M. GPU-only: Gluon cannot run in the Triton interpreter.
"""

from __future__ import annotations

import functools

import torch

from .launch import TMA, launch

try:  # pragma: no cover - depends on the install (Triton >= 3.5 with Gluon)
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    HAS_GLUON = True
except ImportError:  # pragma: no cover
    HAS_GLUON = False

_GL_OUT = {}
if HAS_GLUON:
    _GL_OUT = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float32: gl.float32}
    _GL_DTYPE = {**_GL_OUT, torch.float8_e4m3fn: gl.float8e4nv}
    _SCALE_LAYOUT = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)

    @gluon.jit
    def _load_block(a_desc, b_desc, a_smem, b_smem, ready, kb, num_k, off_m, off_n,
                    STAGES: gl.constexpr):
        # TMA-load K block kb of A and B into ring slot kb % STAGES (no-op past the last block).
        slot = kb % STAGES
        pred = kb < num_k
        bar = ready.index(slot)
        mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes, pred=pred)
        tma.async_copy_global_to_shared(a_desc, [off_m, kb * 128], bar, a_smem.index(slot), pred=pred)
        tma.async_copy_global_to_shared(b_desc, [off_n, kb * 128], bar, b_smem.index(slot), pred=pred)

    @gluon.jit
    def _block_scale(as_ptr, bs_ptr, rows, cols, pid_n, kb, stride_ask, stride_bsn, stride_bsk,
                     B_BLOCK_SCALED: gl.constexpr, SCALAR_B: gl.constexpr):
        # Block kb's scales as (row factor [BLOCK_M], column factor): one 128×128 B block under
        # the tile gives sA·sB per row and a dummy 1; otherwise sA per row, sB per column
        # (kept as vectors: the [BLOCK_M, BLOCK_N] outer product would cost 64 registers).
        sa = gl.load(as_ptr + rows + kb * stride_ask)
        if SCALAR_B:
            return sa * gl.load(bs_ptr + pid_n * stride_bsn + kb * stride_bsk), 1.0
        elif B_BLOCK_SCALED:
            return sa, gl.load(bs_ptr + (cols // 128) * stride_bsn + kb * stride_bsk)
        else:
            return sa, gl.load(bs_ptr + cols * stride_bsn + kb * stride_bsk)

    @gluon.jit
    def _promote(acc, p, s, SCALAR_B: gl.constexpr):
        # acc += P_k · (sA ⊗ sB), one FMA per element (the same rounding as the Triton kernel:
        # the scale product is formed first, then fused into the add).
        if SCALAR_B:
            return acc + p * gl.expand_dims(s[0], 1)
        else:
            return acc + p * (gl.expand_dims(s[0], 1) * gl.expand_dims(s[1], 0))

    @gluon.jit
    def _issue(a_smem, b_smem, ready, p, kb, STAGES: gl.constexpr):
        # Wait for block kb's operands and start P_kb = A_kb @ B_kbᵀ asynchronously into p's
        # registers (use_acc=False: p's old values are ignored).
        slot = kb % STAGES
        mbarrier.wait(ready.index(slot), (kb // STAGES) & 1)
        return warpgroup_mma(a_smem.index(slot), b_smem.index(slot).permute((1, 0)), p,
                             use_acc=False, is_async=True)

    @gluon.jit
    def _fp8_gemm_gluon_kernel(
        a_desc, b_desc, c_desc, as_ptr, bs_ptr,
        M, N, K,
        stride_asm, stride_ask, stride_bsn, stride_bsk,
        B_BLOCK_SCALED: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr,
        num_warps: gl.constexpr,
    ):
        BLOCK_M: gl.constexpr = c_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = c_desc.block_type.shape[1]
        SCALAR_B: gl.constexpr = B_BLOCK_SCALED and BLOCK_N == 128

        # Grouped tile order: GROUP_M row-tiles share each B column-tile while it is in L2.
        pid = gl.program_id(0)
        num_pid_m = gl.cdiv(M, BLOCK_M)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        group = GROUP_M * num_pid_n
        first_m = (pid // group) * GROUP_M
        group_m = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % group_m
        pid_n = (pid % group) // group_m
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N

        # wgmma layout: warps stacked along M (a warpgroup owns 64 rows), instruction N = BLOCK_N,
        # K = 32 fp8 values per instruction.
        mma: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 32])
        rows = gl.minimum(off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, mma)), M - 1) * stride_asm
        cols = gl.minimum(off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma)), N - 1)

        a_smem = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
        b_smem = gl.allocate_shared_memory(b_desc.dtype, [STAGES] + b_desc.block_type.shape, b_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)

        num_k = gl.cdiv(K, 128)
        for i in gl.static_range(STAGES):
            _load_block(a_desc, b_desc, a_smem, b_smem, ready, i, num_k, off_m, off_n, STAGES)

        # Two partial-product tiles: p0 (even blocks) and p1 (odd blocks), each written in
        # place by its next wgmma (use_acc=False ignores the old values). The loop is unrolled
        # by two so that while one tile is promoted the other's wgmma runs:
        #   issue P_odd → promote P_even → issue P_even' → retire and promote P_odd → retire P_even'
        # Nothing is in flight across the loop's back edge: ptxas serializes every wgmma
        # (warning C7514) when an accumulator in flight there is read after the branch, so the
        # last wait(0) only absorbs the tail of P_even' (its promotion overlaps the next P_odd).
        acc = gl.zeros((BLOCK_M, BLOCK_N), gl.float32, layout=mma)
        p1 = gl.zeros((BLOCK_M, BLOCK_N), gl.float32, layout=mma)
        p0 = _issue(a_smem, b_smem, ready, p1, 0, STAGES)
        p0 = warpgroup_mma_wait(num_outstanding=0, deps=(p0, ))
        s0 = _block_scale(as_ptr, bs_ptr, rows, cols, pid_n, 0, stride_ask, stride_bsn, stride_bsk,
                          B_BLOCK_SCALED, SCALAR_B)
        for j in range(0, (num_k - 1) // 2):
            kb = 2 * j + 1
            p1 = _issue(a_smem, b_smem, ready, p1, kb, STAGES)
            # p0 already retired; the wait orders its promotion after the issue above.
            p0 = warpgroup_mma_wait(num_outstanding=1, deps=(p0, ))
            _load_block(a_desc, b_desc, a_smem, b_smem, ready, kb - 1 + STAGES, num_k, off_m, off_n,
                        STAGES)
            s1 = _block_scale(as_ptr, bs_ptr, rows, cols, pid_n, kb, stride_ask, stride_bsn,
                              stride_bsk, B_BLOCK_SCALED, SCALAR_B)
            acc = _promote(acc, p0, s0, SCALAR_B)
            # Pin the promotion before the next wgmma overwrites p0: the wait (nothing to retire)
            # takes acc as a dependency, so LLVM cannot sink the FMAs past the wgmma (which
            # would copy p0 and read registers of an in-flight wgmma).
            p0, acc = warpgroup_mma_wait(num_outstanding=1, deps=(p0, acc))
            p0 = _issue(a_smem, b_smem, ready, p0, kb + 1, STAGES)
            p1 = warpgroup_mma_wait(num_outstanding=1, deps=(p1, ))  # block kb retired
            _load_block(a_desc, b_desc, a_smem, b_smem, ready, kb + STAGES, num_k, off_m, off_n,
                        STAGES)
            s0 = _block_scale(as_ptr, bs_ptr, rows, cols, pid_n, kb + 1, stride_ask, stride_bsn,
                              stride_bsk, B_BLOCK_SCALED, SCALAR_B)
            acc = _promote(acc, p1, s1, SCALAR_B)
            p1, acc = warpgroup_mma_wait(num_outstanding=1, deps=(p1, acc))
            p0 = warpgroup_mma_wait(num_outstanding=0, deps=(p0, ))
        acc = _promote(acc, p0, s0, SCALAR_B)
        if num_k % 2 == 0:  # an even num_k leaves one odd block (no overlap; one per tile)
            last = _issue(a_smem, b_smem, ready, p1, num_k - 1, STAGES)
            last = warpgroup_mma_wait(num_outstanding=0, deps=(last, ))
            acc = _promote(acc, last, _block_scale(as_ptr, bs_ptr, rows, cols, pid_n, num_k - 1,
                                                   stride_ask, stride_bsn, stride_bsk,
                                                   B_BLOCK_SCALED, SCALAR_B), SCALAR_B)

        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))
        # Epilogue: registers → shared memory → TMA store (clips rows/cols beyond M, N).
        c_smem = gl.allocate_shared_memory(c_desc.dtype, c_desc.block_type.shape, c_desc.layout)
        c_smem.store(acc.to(c_desc.dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(c_desc, [off_m, off_n], c_smem)
        tma.store_wait(pendings=0)


    # ------------------------------------------------------------ persistent helpers

    @gluon.jit
    def _tile_offsets(tile, num_pid_m, num_pid_n, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                      GROUP_M: gl.constexpr):
        # Grouped order: GROUP_M row-tiles share each B column-tile while it is in L2.
        group = GROUP_M * num_pid_n
        first_m = (tile // group) * GROUP_M
        group_m = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (tile % group) % group_m
        pid_n = (tile % group) // group_m
        return pid_m * BLOCK_M, pid_n * BLOCK_N

    @gluon.jit
    def _wait_ready(ready, g, STAGES: gl.constexpr):
        # Ring position g: slot g % STAGES, completed (g // STAGES) times before.
        slot = g % STAGES
        mbarrier.wait(ready.index(slot), (g // STAGES) & 1)
        return slot

    # ------------------------------------------------------------ warp-specialized kernel
    # Persistent, 128×256 tiles, three partitions: a 1-warp producer issuing the TMA loads and
    # two 4-warp consumer warpgroups, each owning 64 rows of the tile (acc0 + acc1 + P = 192
    # registers per thread). A consumer frees a ring slot by arriving on its "empty" barrier
    # (count 2: both warpgroups) once both of its wgmma of that block have retired; no
    # CTA-wide barrier sits in the K loop, so the warpgroups drift apart and one promotes
    # while the tensor cores run the other's wgmma.

    @gluon.jit
    def _ws_producer(a_desc, b_desc, as_desc, bs_desc, a_smem, b_smem, sa_smem, sb_smem, ready, empty,
                     M, N, K, STAGES: gl.constexpr, GROUP_M: gl.constexpr, B_ROWWISE: gl.constexpr,
                     A_SCALES_TMA: gl.constexpr):
        # B_ROWWISE: the block's scale vectors (sA for 128 rows, sB for 256 columns; rows of the
        # transposed, M- / N-contiguous scale tensors) ride in the same ring slot as A and B;
        # A_SCALES_TMA (128×128-block B): sA alone does.
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        num_pid_m = gl.cdiv(M, BLOCK_M)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        num_k = gl.cdiv(K, 128)
        g = 0
        for tile in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
            off_m, off_n = _tile_offsets(tile, num_pid_m, num_pid_n, BLOCK_M, BLOCK_N, GROUP_M)
            for kb in range(num_k):
                slot = g % STAGES
                # Fresh barriers pass the parity-1 wait: the first lap does not wait.
                mbarrier.wait(empty.index(slot), ((g // STAGES) & 1) ^ 1)
                bar = ready.index(slot)
                if B_ROWWISE:
                    mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes
                                    + as_desc.block_type.nbytes + bs_desc.block_type.nbytes)
                    tma.async_copy_global_to_shared(as_desc, [kb, off_m], bar, sa_smem.index(slot))
                    tma.async_copy_global_to_shared(bs_desc, [kb, off_n], bar, sb_smem.index(slot))
                elif A_SCALES_TMA:
                    mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes
                                    + as_desc.block_type.nbytes)
                    tma.async_copy_global_to_shared(as_desc, [kb, off_m], bar, sa_smem.index(slot))
                else:
                    mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(a_desc, [off_m, kb * 128], bar, a_smem.index(slot))
                tma.async_copy_global_to_shared(b_desc, [off_n, kb * 128], bar, b_smem.index(slot))
                g += 1

    @gluon.jit
    def _ws_consumer(a_desc, c_desc, as_ptr, bs_ptr, a_smem, b_smem, sa_smem, sb_smem, c_smem, ready, empty,
                     M, N, K, stride_asm, stride_ask, stride_bsn, stride_bsk,
                     ROW0: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr,
                     C_BUFS: gl.constexpr, B_ROWWISE: gl.constexpr, A_SCALES_TMA: gl.constexpr):
        # Rows ROW0 .. ROW0 + 63 of every tile; per block: P = A·B[:128]ᵀ, promote into acc0, P = A·B[128:]ᵀ, free the slot, promote into acc1. B_ROWWISE: 1×128
        # B scales (the wgrad GEMM): the factor of block kb is sA[row]·sB[col], formed per
        # element like the Triton kernel; sA and each half's sB vector (32 registers in the
        # accumulator's column slice) are loaded for the current block only, while its wgmma
        # runs (prefetching them a block ahead would need 64 more registers).
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        SUB_M: gl.constexpr = c_desc.block_type.shape[0]
        mma: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 128, 32])
        num_pid_m = gl.cdiv(M, BLOCK_M)
        num_pid_n = gl.cdiv(N, 256)
        num_k = gl.cdiv(K, 128)
        n_blocks_b = gl.cdiv(N, 128)
        g = 0
        for tile in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
            off_m, off_n = _tile_offsets(tile, num_pid_m, num_pid_n, BLOCK_M, 256, GROUP_M)
            rows = gl.minimum(off_m + ROW0 + gl.arange(0, SUB_M, layout=gl.SliceLayout(1, mma)),
                              M - 1) * stride_asm
            acc0 = gl.zeros((SUB_M, 128), gl.float32, layout=mma)
            acc1 = gl.zeros((SUB_M, 128), gl.float32, layout=mma)
            p = gl.zeros((SUB_M, 128), gl.float32, layout=mma)
            if B_ROWWISE:
                # The block's scales come from the ring slot (TMA-loaded by the producer; zeros
                # past M and N, whose outputs the store clips): no global-memory latency here.
                vec: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[0])
                for kb in range(num_k):
                    slot = _wait_ready(ready, g, STAGES)
                    a_k = a_smem.index(slot).slice(ROW0, SUB_M)
                    b_k = b_smem.index(slot)
                    sa_k = sa_smem.index(slot)._reinterpret(gl.float32, [128], vec)
                    sb_k = sb_smem.index(slot)._reinterpret(gl.float32, [256], vec)
                    p = warpgroup_mma(a_k, b_k.slice(0, 128).permute((1, 0)), p, use_acc=False,
                                      is_async=True)
                    sa = sa_k.slice(ROW0, SUB_M).load(gl.SliceLayout(1, mma))
                    sb = sb_k.slice(0, 128).load(gl.SliceLayout(0, mma))
                    p = warpgroup_mma_wait(num_outstanding=0, deps=(p, ))
                    acc0 = acc0 + p * (gl.expand_dims(sa, 1) * gl.expand_dims(sb, 0))
                    p, acc0 = warpgroup_mma_wait(num_outstanding=0, deps=(p, acc0))
                    p = warpgroup_mma(a_k, b_k.slice(128, 128).permute((1, 0)), p, use_acc=False,
                                      is_async=True)
                    sb = sb_k.slice(128, 128).load(gl.SliceLayout(0, mma))
                    p = warpgroup_mma_wait(num_outstanding=0, deps=(p, ))
                    mbarrier.arrive(empty.index(slot), count=1)
                    acc1 = acc1 + p * (gl.expand_dims(sa, 1) * gl.expand_dims(sb, 0))
                    p, acc1 = warpgroup_mma_wait(num_outstanding=0, deps=(p, acc1))
                    g += 1
            else:
                # Block kb's factors sA·sB are formed at the top of iteration kb from values
                # loaded during iteration kb-1, so each load has a whole block's wgmmas to land
                # (multiplied at the end of iteration kb-1, as before, they stalled the warpgroup
                # there on the loads: H100 1000-1085 → 1086-1178 TFLOP/s at the four benchmark
                # shapes, BENCHMARKS.md, FP8, session 8).
                # A_SCALES_TMA: sA comes from the ring slot (TMA-loaded with A and B; zeros past
                # M, whose rows the store clips), read while the first wgmma runs.
                vec_a: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[0])
                bs0 = bs_ptr + (off_n // 128) * stride_bsn
                bs1 = bs_ptr + gl.minimum(off_n // 128 + 1, n_blocks_b - 1) * stride_bsn
                if not A_SCALES_TMA:
                    sa = gl.load(as_ptr + rows)
                sb0 = gl.load(bs0)
                sb1 = gl.load(bs1)
                for kb in range(num_k):
                    slot = _wait_ready(ready, g, STAGES)
                    a_k = a_smem.index(slot).slice(ROW0, SUB_M)
                    b_k = b_smem.index(slot)
                    p = warpgroup_mma(a_k, b_k.slice(0, 128).permute((1, 0)), p, use_acc=False,
                                      is_async=True)
                    if A_SCALES_TMA:
                        sa = sa_smem.index(slot)._reinterpret(gl.float32, [128], vec_a).slice(
                            ROW0, SUB_M).load(gl.SliceLayout(1, mma))
                    # The products pinned (a no-op wait taking them as dependencies) before the
                    # next block's loads, so that those reuse the registers: no copy of a value
                    # still in flight at the loop's end.
                    p, s0, s1 = warpgroup_mma_wait(num_outstanding=1, deps=(p, sa * sb0, sa * sb1))
                    nk = gl.minimum(kb + 1, num_k - 1)
                    if not A_SCALES_TMA:
                        sa = gl.load(as_ptr + rows + nk * stride_ask)
                    sb0 = gl.load(bs0 + nk * stride_bsk)
                    sb1 = gl.load(bs1 + nk * stride_bsk)
                    p = warpgroup_mma_wait(num_outstanding=0, deps=(p, ))
                    acc0 = acc0 + p * gl.expand_dims(s0, 1)
                    p, acc0 = warpgroup_mma_wait(num_outstanding=0, deps=(p, acc0))
                    p = warpgroup_mma(a_k, b_k.slice(128, 128).permute((1, 0)), p, use_acc=False,
                                      is_async=True)
                    p = warpgroup_mma_wait(num_outstanding=0, deps=(p, ))
                    mbarrier.arrive(empty.index(slot), count=1)
                    acc1 = acc1 + p * gl.expand_dims(s1, 1)
                    p, acc1 = warpgroup_mma_wait(num_outstanding=0, deps=(p, acc1))
                    g += 1
            # Epilogue: one staging buffer per half when shared memory allows (C_BUFS = 2), else
            # the halves take turns in one. The stores complete while the next tile runs.
            tma.store_wait(pendings=0)  # the previous tile's stores have left c_smem
            c_smem.index(0).store(acc0.to(c_desc.dtype))
            fence_async_shared()
            tma.async_copy_shared_to_global(c_desc, [off_m + ROW0, off_n], c_smem.index(0))
            if C_BUFS == 1:
                tma.store_wait(pendings=0)
            c_smem.index(C_BUFS - 1).store(acc1.to(c_desc.dtype))
            fence_async_shared()
            tma.async_copy_shared_to_global(c_desc, [off_m + ROW0, off_n + 128], c_smem.index(C_BUFS - 1))
        tma.store_wait(pendings=0)

    @gluon.jit
    def _fp8_gemm_gluon_ws_kernel(
        a_desc, b_desc, c_desc, as_ptr, bs_ptr,
        M, N, K,
        stride_asm, stride_ask, stride_bsn, stride_bsk,
        STAGES: gl.constexpr, GROUP_M: gl.constexpr, C_BUFS: gl.constexpr,
        B_ROWWISE: gl.constexpr, CONSUMER_REGS: gl.constexpr, num_warps: gl.constexpr,
        A_SCALES_TMA: gl.constexpr = False,
    ):
        # B_ROWWISE: as_ptr / bs_ptr are TMA descriptors of the transposed scale tensors
        # ([Kb, M] and [Kb, N], blocks [1, 128] and [1, 256]); otherwise pointers, but for
        # A_SCALES_TMA as_ptr is the [Kb, M] descriptor (blocks [1, 128]).
        gl.static_assert(num_warps == 4)
        gl.static_assert(b_desc.block_type.shape[0] == 256)
        a_smem = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
        b_smem = gl.allocate_shared_memory(b_desc.dtype, [STAGES] + b_desc.block_type.shape, b_desc.layout)
        c0_smem = gl.allocate_shared_memory(c_desc.dtype, [C_BUFS] + c_desc.block_type.shape, c_desc.layout)
        c1_smem = gl.allocate_shared_memory(c_desc.dtype, [C_BUFS] + c_desc.block_type.shape, c_desc.layout)
        if B_ROWWISE:
            sa_smem = gl.allocate_shared_memory(gl.float32, [STAGES] + as_ptr.block_type.shape, as_ptr.layout)
            sb_smem = gl.allocate_shared_memory(gl.float32, [STAGES] + bs_ptr.block_type.shape, bs_ptr.layout)
        elif A_SCALES_TMA:
            sa_smem = gl.allocate_shared_memory(gl.float32, [STAGES] + as_ptr.block_type.shape, as_ptr.layout)
            sb_smem = b_smem  # unused stand-in
        else:  # unused stand-ins
            sa_smem = a_smem
            sb_smem = b_smem
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=2)
        gl.warp_specialize([
            (_ws_consumer, (a_desc, c_desc, as_ptr, bs_ptr, a_smem, b_smem, sa_smem, sb_smem, c0_smem,
                            ready, empty, M, N, K, stride_asm, stride_ask, stride_bsn, stride_bsk, 0,
                            STAGES, GROUP_M, C_BUFS, B_ROWWISE, A_SCALES_TMA)),
            (_ws_consumer, (a_desc, c_desc, as_ptr, bs_ptr, a_smem, b_smem, sa_smem, sb_smem, c1_smem,
                            ready, empty, M, N, K, stride_asm, stride_ask, stride_bsn, stride_bsk, 64,
                            STAGES, GROUP_M, C_BUFS, B_ROWWISE, A_SCALES_TMA)),
            (_ws_producer, (a_desc, b_desc, as_ptr, bs_ptr, a_smem, b_smem, sa_smem, sb_smem, ready, empty,
                            M, N, K, STAGES, GROUP_M, B_ROWWISE, A_SCALES_TMA)),
        ], [4, 1], [CONSUMER_REGS, 24])


@functools.cache
def _capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


@functools.cache
def _smem_layout(block: tuple[int, int], dtype: torch.dtype):
    """The NVMMA shared layout of a TMA block (built once: ~6-10 µs per call on the H100 hosts)."""
    return gl.NVMMASharedLayout.get_default_for(list(block), _GL_DTYPE[dtype])


def scales_tma_ok(a_scale: torch.Tensor, b_scale: torch.Tensor) -> bool:
    """Whether 1×128 scales can be TMA-loaded as rows of their transposes (``gluon_ws`` with
    1×128 B): M- / N-contiguous (the layout ``quantize_act*`` writes), 16-byte aligned rows."""
    return all(s.stride(0) == 1 and (s.stride(1) * 4) % 16 == 0 and s.data_ptr() % 16 == 0
               for s in (a_scale, b_scale))


def gluon_supported(aq: torch.Tensor, bq: torch.Tensor, out_dtype: torch.dtype) -> str | None:
    """None if the Gluon kernel can run these operands, else the reason it cannot."""
    if not HAS_GLUON:
        return "triton.experimental.gluon is not importable"
    if not aq.is_cuda or _capability(aq.device.index) != (9, 0):
        return "needs an sm_90 (Hopper) GPU"
    n, k = bq.shape
    elem = torch.finfo(out_dtype).bits // 8
    if k % 16 or aq.stride(0) % 16 or bq.stride(0) % 16 or (n * elem) % 16:
        return "TMA needs 16-byte aligned rows (K % 16, N·sizeof(out) % 16)"
    if aq.data_ptr() % 16 or bq.data_ptr() % 16:
        return "TMA needs 16-byte aligned base pointers"
    return None


def fp8_gemm_gluon(aq, a_scale, bq, b_scale, out_dtype, b_block: bool,
                   block_m: int = 128, block_n: int = 128, num_warps: int = 8, stages: int = 4):
    """Launch the Gluon kernel (caller validated shapes and ``gluon_supported``). Returns C [M, N]."""
    m, k = aq.shape
    n = bq.shape[0]
    c = torch.empty(m, n, dtype=out_dtype, device=aq.device)
    a_layout = _smem_layout((block_m, 128), torch.float8_e4m3fn)
    b_layout = _smem_layout((block_n, 128), torch.float8_e4m3fn)
    c_layout = _smem_layout((block_m, block_n), out_dtype)
    grid = (-(-m // block_m) * -(-n // block_n),)
    launch(_fp8_gemm_gluon_kernel, grid,
        TMA(aq, (block_m, 128), a_layout), TMA(bq, (block_n, 128), b_layout),
        TMA(c, (block_m, block_n), c_layout), a_scale, b_scale, m, n, k,
        a_scale.stride(0), a_scale.stride(1), b_scale.stride(0), b_scale.stride(1),
        B_BLOCK_SCALED=b_block, STAGES=stages, GROUP_M=8, num_warps=num_warps,
    )
    return c



_NUM_SMS: dict[int, int] = {}
_SMEM_BYTES = 232448 - 1024  # sm_90 opt-in shared memory per block, less barriers and slack


def num_sms(device: torch.device) -> int:
    dev = device.index if device.index is not None else torch.cuda.current_device()
    if dev not in _NUM_SMS:
        _NUM_SMS[dev] = torch.cuda.get_device_properties(dev).multi_processor_count
    return _NUM_SMS[dev]


def fp8_gemm_gluon_ws(aq, a_scale, bq, b_scale, out_dtype, stages: int = 3, consumer_regs: int = 232,
                      b_block: bool = True, group_m: int = 8, a_scales_tma: bool = False):
    """Launch the warp-specialized persistent Gluon kernel (128×256 tiles; 128×128-block B, or
    1×128 B scales with b_block=False; caller validated the operands and ``gluon_supported``).
    group_m: row-tiles per group of the tile order. a_scales_tma (128×128-block B): sA through
    the TMA ring (the plan in ``gemm.py`` asks for it only where ``scales_tma_ok``; else pointer
    loads: the same bits). Returns C [M, N]."""
    m, k = aq.shape
    n = bq.shape[0]
    sms = num_sms(aq.device)
    c = torch.empty(m, n, dtype=out_dtype, device=aq.device)
    a_layout = _smem_layout((128, 128), torch.float8_e4m3fn)
    b_layout = _smem_layout((256, 128), torch.float8_e4m3fn)
    c_layout = _smem_layout((64, 128), out_dtype)
    scales = (a_scale, b_scale)
    a_scales_tma = a_scales_tma and b_block  # 1×128 B: A's scales ride the ring anyway
    if a_scales_tma:
        scales = (TMA(a_scale.t(), (1, 128), _SCALE_LAYOUT), b_scale)
    if not b_block:  # 1×128 B: the scales travel by TMA too, as rows of their transposes
        scales = (TMA(a_scale.t(), (1, 128), _SCALE_LAYOUT), TMA(b_scale.t(), (1, 256), _SCALE_LAYOUT))
    # Shared memory: STAGES × (48 KiB operands [+ 1.5 KiB scales]) + 2 consumers × C_BUFS ×
    # 64×128 staging tiles.
    stage = 49152 + (0 if b_block else 1536) + (512 if a_scales_tma else 0)
    c_tile = 64 * 128 * c.element_size()
    c_bufs = 2 if stages * stage + 4 * c_tile <= _SMEM_BYTES else 1
    if stages * stage + 2 * c_bufs * c_tile > _SMEM_BYTES:
        raise ValueError(f"warp-specialized Gluon GEMM: {stages} stages with {out_dtype} output "
                         "exceed shared memory (use 3 stages or fewer)")
    tiles = -(-m // 128) * -(-n // 256)
    launch(_fp8_gemm_gluon_ws_kernel, (min(tiles, sms),),
        TMA(aq, (128, 128), a_layout), TMA(bq, (256, 128), b_layout), TMA(c, (64, 128), c_layout), *scales, m, n, k,
        a_scale.stride(0), a_scale.stride(1), b_scale.stride(0), b_scale.stride(1),
        STAGES=stages, GROUP_M=group_m, C_BUFS=c_bufs, B_ROWWISE=not b_block,
        CONSUMER_REGS=consumer_regs, num_warps=4, A_SCALES_TMA=a_scales_tma,
    )
    return c
