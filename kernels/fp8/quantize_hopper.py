"""Hopper (sm_90) FP8 quantization in Gluon (1×128 activations, 128×128 weights), TMA-fed.

For ``quantize_act_t`` and ``quantize_act_both`` (the transposed forms: the backward pass's
dy and the forward's x). Same outputs, bit for bit, as ``quantize_triton.quant_act_kernel``
and so as the PyTorch path (``quantize_torch.quantize_act_torch`` / ``quantize_act_t_torch``):
the per-tile math is the same ``tile_scale`` / ``to_e4m3`` code (``quantize_triton.py``).
What differs is how a 128×128 tile of x reaches the registers and how qt leaves, which kept
the Triton kernel at 0.45-0.74 of copy bandwidth (BENCHMARKS.md, "## FP8"):

- The activation kernel runs one program per 128×128 tile by default (_GLUON_CFG; 80 registers,
  so three programs of 8 warps per SM, the next one starting as one leaves): the SM works on
  one tile while the TMA engine loads the next program's. The kernel can also run persistent
  programs over a ring of STAGES tiles (the weight kernel does), which measured slower for the
  activations at every shape (BENCHMARKS.md). (The Triton kernel held one tile per program with
  165 registers, one program per SM: the SM idled on memory.)
- Each direction reads the tile from shared memory in its own register layout, so that its
  reduction needs no shared-memory round trip of the data:
  ROW (along K → q [M, K]): a thread owns 8 values of a row in each 64-column half (8 lanes
  per row): the row amax is an in-thread max and 3 shuffles; q leaves as 8-byte stores.
  COL (along M → qt [K, M]): a thread owns 16 consecutive rows × 2 columns of a half (a warp
  spans its 64 columns, the 8 warps the 128 rows): the column amax is an in-thread max over 16
  rows and one cross-warp step; each column's 16 rows are 16 contiguous bytes of a qt row,
  written into a staging tile [128 k, 128 m] and TMA-stored (stored from registers instead,
  each warp store touched 32 qt rows: 0.67 of copy vs 0.82, BENCHMARKS.md).
- Tiles arrive as two 128×64 halves (128-byte rows, 128B swizzle): both layouts read shared
  memory without bank conflicts (unswizzled 256-byte rows made ldmatrix 8-way conflicted).
``_quant_weight_gluon_kernel`` runs ``quantize_weight`` / ``quantize_weight_t`` (128×128 blocks)
on the same ring (persistent): one amax per block, then the ROW pass (q) or the COL pass (Wᵀ's q).
GPU-only (Gluon has no interpreter): the Triton kernel is the interpreter path and the
fallback (logged) where this one cannot run (fp32 x, rows TMA cannot load).
"""

from __future__ import annotations

import functools

import torch

from .format import cdiv
from .launch import TMA, launch

try:  # pragma: no cover - depends on the install (Triton >= 3.5 with Gluon)
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
    import triton.language as tl

    HAS_GLUON = True
except ImportError:  # pragma: no cover
    HAS_GLUON = False

if HAS_GLUON:
    from .quantize_triton import tile_scale, to_e4m3

    _GL_DTYPE = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float32: gl.float32}

    @gluon.jit
    def _quant_act_gluon_kernel(
        x_desc, qt_desc, q_ptr, s_ptr, st_ptr,
        M, K, stride_qm, stride_sk, stride_stm,
        ROWWISE: gl.constexpr, COLWISE: gl.constexpr, POW2: gl.constexpr,
        STAGES: gl.constexpr, QT_BUFFERS: gl.constexpr, FMAX: gl.constexpr, num_warps: gl.constexpr,
    ):
        # Program p quantizes tiles p, p + P, p + 2P, ... (tile t = (t // Kt, t % Kt) in
        # 128×128 units). ROWWISE writes q [M, K] and s [M, Kb] (s.stride(0) == 1); COLWISE qt
        # [K, M] and st [K, Mb] (st.stride(0) == 1). TMA zero-fills rows and columns of x past
        # M and K, as the reference pads its tiles; the qt store clips to K and M.
        x_smem, ready, pid, nprog, kt, my_tiles = _ring_start(x_desc, M, K, STAGES)
        if COLWISE:  # with 2 staging tiles one drains to global while the other is filled
            qt_smem = gl.allocate_shared_memory(gl.float8e4nv, [QT_BUFFERS, 128, 128], qt_desc.layout)

        for it in range(my_tiles):
            slot = it % STAGES
            t = pid + it * nprog
            off_m = (t // kt) * 128
            off_k = (t % kt) * 128
            mbarrier.wait(ready.index(slot), (it // STAGES) & 1)
            if ROWWISE:
                _row_pass(x_smem, slot, q_ptr, s_ptr, off_m, off_k, M, K, stride_qm, stride_sk,
                          POW2, FMAX, num_warps)
            if COLWISE:
                _col_pass(x_smem, slot, qt_desc, qt_smem.index(it % QT_BUFFERS), st_ptr, off_m, off_k, K,
                          stride_stm, POW2, FMAX, QT_BUFFERS, num_warps)
            # Every warp is done with this slot: refill it with this program's tile it + STAGES.
            gl.thread_barrier()
            fence_async_shared()
            _load_tile(x_desc, x_smem, ready, slot, t + STAGES * nprog, kt, it + STAGES < my_tiles)

        if COLWISE:
            tma.store_wait(pendings=0)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))

    @gluon.jit
    def _row_pass(x_smem, slot, q_ptr, s_ptr, off_m, off_k, M, K, stride_qm, stride_sk,
                  POW2: gl.constexpr, FMAX: gl.constexpr, num_warps: gl.constexpr):
        # q [M, K] and s of ring slot `slot`'s tile, in chunks of RB rows; a thread owns 8 values
        # of a row in each 64-column half (8 lanes per row): the row amax is an in-thread max
        # and 3 shuffles, q leaves as 8-byte stores.
        BF16_IN: gl.constexpr = x_smem.dtype == gl.bfloat16
        RB: gl.constexpr = 4 * num_warps  # rows per chunk (16 values per thread live)
        ROW: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
        for r in gl.static_range(128 // RB):
            xl = x_smem.index(2 * slot).slice(RB * r, RB, dim=0).load(ROW).to(gl.float32)
            xr = x_smem.index(2 * slot + 1).slice(RB * r, RB, dim=0).load(ROW).to(gl.float32)
            amax = gl.max(gl.maximum(gl.abs(xl), gl.abs(xr)), axis=1)  # one reduction, both halves
            s, b, c, inv = tile_scale(amax, POW2, True)  # per row (16-bit amax)
            rows = off_m + RB * r + gl.arange(0, RB, layout=gl.SliceLayout(1, ROW))
            cols = off_k + gl.arange(0, 64, layout=gl.SliceLayout(0, ROW))
            ptrs = q_ptr + rows[:, None] * stride_qm + cols[None, :]
            gl.store(ptrs, _to_e4m3(xl, b[:, None], c[:, None], inv[:, None], BF16_IN, FMAX),
                     mask=(rows[:, None] < M) & (cols[None, :] < K))
            gl.store(ptrs + 64, _to_e4m3(xr, b[:, None], c[:, None], inv[:, None], BF16_IN, FMAX),
                     mask=(rows[:, None] < M) & (cols[None, :] + 64 < K))
            gl.store(s_ptr + rows + (off_k // 128) * stride_sk, s, mask=rows < M)

    @gluon.jit
    def _col_pass(x_smem, slot, qt_desc, buf, st_ptr, off_m, off_k, K, stride_stm,
                  POW2: gl.constexpr, FMAX: gl.constexpr, QT_BUFFERS: gl.constexpr,
                  num_warps: gl.constexpr):
        # qt [K, M] and st of ring slot `slot`'s tile, per 64-column half: a thread owns 16
        # consecutive rows × 2 columns (a warp spans the 64 columns, the warps the 128 rows): the
        # column amax is an in-thread max over 16 rows and one cross-warp step; each column's 16
        # rows are 16 contiguous bytes of a qt row, written into the staging tile `buf` [128 k,
        # 128 m] and TMA-stored.
        BF16_IN: gl.constexpr = x_smem.dtype == gl.bfloat16
        COL: gl.constexpr = gl.BlockedLayout([16, 2], [1, 32], [num_warps, 1], [0, 1])
        for h in gl.static_range(2):
            x = x_smem.index(2 * slot + h).load(COL).to(gl.float32)
            st, b, c, inv = tile_scale(gl.max(gl.abs(x), axis=0), POW2, True)  # per column (16-bit amax)
            q = _to_e4m3(x, b[None, :], c[None, :], inv[None, :], BF16_IN, FMAX)
            buf.slice(64 * h, 64, dim=0).permute((1, 0)).store(q)  # qt[k, m] = q[m, k]
            cols = off_k + 64 * h + gl.arange(0, 64, layout=gl.SliceLayout(0, COL))
            gl.store(st_ptr + cols + (off_m // 128) * stride_stm, st, mask=cols < K)
        # Every warp's writes visible to the TMA engine, then one thread issues the store; the
        # buffer written next tile must have been read by its store (with 2 buffers last tile's;
        # only the issuing thread waits, the barrier below holds the others).
        fence_async_shared()
        gl.thread_barrier()
        tma.async_copy_shared_to_global(qt_desc, [off_k, off_m], buf)
        tma.store_wait(pendings=QT_BUFFERS - 1)

    @gluon.jit
    def _quant_weight_gluon_kernel(
        w_desc, qt_desc, q_ptr, s_ptr,
        N, K, stride_qn, stride_sn, stride_sk,
        DIRECT: gl.constexpr, TRANSPOSED: gl.constexpr, POW2: gl.constexpr,
        STAGES: gl.constexpr, num_warps: gl.constexpr,
    ):
        # 128×128 blocks on the same persistent TMA ring as _quant_act_gluon_kernel. One scale per
        # block, so the block's amax must be known before any value is quantized: pass 1 reads
        # the ring slot for the amax (an elementwise running max over row chunks in registers,
        # then one CTA-wide reduction), pass 2 reads it again and quantizes (shared memory is
        # read at ~10× the rate HBM fills it: the second read is cheap). DIRECT writes q [N, K]
        # from registers (ROW layout, 8-byte stores); TRANSPOSED writes Wᵀ's q [K, N] through a
        # staging tile and a TMA store (COL layout, as the act kernel's qt). Scale [Nb, Kb] or
        # its transpose, by the strides.
        BF16_IN: gl.constexpr = w_desc.dtype == gl.bfloat16
        RB: gl.constexpr = 4 * num_warps
        ROW: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
        COL: gl.constexpr = gl.BlockedLayout([16, 2], [1, 32], [num_warps, 1], [0, 1])

        w_smem, ready, pid, nprog, kt, my_tiles = _ring_start(w_desc, N, K, STAGES)
        if TRANSPOSED:
            qt_smem = gl.allocate_shared_memory(gl.float8e4nv, [2, 128, 128], qt_desc.layout)

        for it in range(my_tiles):
            slot = it % STAGES
            t = pid + it * nprog
            off_n = (t // kt) * 128
            off_k = (t % kt) * 128
            mbarrier.wait(ready.index(slot), (it // STAGES) & 1)
            amax = gl.zeros([RB, 64], gl.float32, ROW)  # TMA zero-filled the padding: max ≥ 0
            for h in gl.static_range(2):
                for r in gl.static_range(128 // RB):
                    x = w_smem.index(2 * slot + h).slice(RB * r, RB, dim=0).load(ROW)
                    amax = gl.maximum(amax, gl.abs(x.to(gl.float32)))
            amax_rows = gl.max(amax, axis=1)
            s, b, c, inv = tile_scale(gl.max(amax_rows, axis=0), POW2)  # scalars: one block
            one = gl.arange(0, RB, layout=gl.SliceLayout(1, ROW))  # the scale by one lane
            gl.store(s_ptr + (off_n // 128) * stride_sn + (off_k // 128) * stride_sk + one * 0,
                     s + amax_rows * 0, mask=one == 0)
            if DIRECT:
                for h in gl.static_range(2):
                    for r in gl.static_range(128 // RB):
                        x = w_smem.index(2 * slot + h).slice(RB * r, RB, dim=0).load(ROW).to(gl.float32)
                        rows = off_n + RB * r + gl.arange(0, RB, layout=gl.SliceLayout(1, ROW))
                        cols = off_k + 64 * h + gl.arange(0, 64, layout=gl.SliceLayout(0, ROW))
                        gl.store(q_ptr + rows[:, None] * stride_qn + cols[None, :],
                                 to_e4m3(x, b, c, inv, BF16_IN),
                                 mask=(rows[:, None] < N) & (cols[None, :] < K))
            if TRANSPOSED:  # as the act kernel's qt: staging tile [128 k, 128 n], TMA store
                buf = qt_smem.index(it % 2)
                for h in gl.static_range(2):
                    x = w_smem.index(2 * slot + h).load(COL).to(gl.float32)
                    buf.slice(64 * h, 64, dim=0).permute((1, 0)).store(to_e4m3(x, b, c, inv, BF16_IN))
                fence_async_shared()
                gl.thread_barrier()
                tma.async_copy_shared_to_global(qt_desc, [off_k, off_n], buf)
                tma.store_wait(pendings=1)
            gl.thread_barrier()  # every warp is done with this slot: refill it
            fence_async_shared()
            _load_tile(w_desc, w_smem, ready, slot, t + STAGES * nprog, kt, it + STAGES < my_tiles)

        if TRANSPOSED:
            tma.store_wait(pendings=0)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))

    @gluon.jit
    def _to_e4m3(x, b, c, inv, BF16_IN: gl.constexpr, FMAX: gl.constexpr):
        # quantize_triton.to_e4m3, the same bits. FMAX: its magnitude floor max(|q|, 2^-100) as one
        # float max (FMNMX with |q| as operand) instead of an AND and an integer max: for q
        # not NaN, non-negative floats order as their bit patterns; max.NaN keeps a NaN q NaN
        # (e4m3 has one NaN per sign). One instruction fewer per element (5-6% of the both-ways
        # kernel's, which issues ~17 per element and direction: it is instruction-bound).
        if FMAX:
            a = x * c
            q = a * inv
            q = gl.fma(gl.fma(-b, q, a), inv, q)  # RN(a / b) for bf16 a (see to_e4m3)
            if not BF16_IN:
                q = gl.fma(gl.fma(-b, q, a), inv, q)
            mag = gl.maximum(gl.abs(q), 7.888609052210118e-31, propagate_nan=tl.PropagateNan.ALL)
            qb = mag.to(gl.int32, bitcast=True) | (a.to(gl.int32, bitcast=True) & -2147483648)
            return qb.to(gl.float32, bitcast=True).to(gl.float8e4nv)
        else:
            return to_e4m3(x, b, c, inv, BF16_IN)

    @gluon.jit
    def _ring_start(x_desc, M, K, STAGES: gl.constexpr):
        # The persistent TMA ring both kernels run on: program p takes the tiles p, p + P,
        # p + 2P, ... of x [M, K] in 128×128 units (my_tiles of them; tile t is at 128·(t // kt),
        # 128·(t % kt)) through STAGES ring slots of two 128×64 halves, each slot with its
        # mbarrier. Allocates the ring, initialises the barriers and issues the first STAGES
        # loads. Returns (ring, barriers, pid, P, kt, my_tiles).
        pid = gl.program_id(0)
        nprog = gl.num_programs(0)
        kt = gl.cdiv(K, 128)
        my_tiles = gl.cdiv(gl.cdiv(M, 128) * kt - pid, nprog)
        x_smem = gl.allocate_shared_memory(x_desc.dtype, [2 * STAGES, 128, 64], x_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
        fence_async_shared()
        for i in gl.static_range(STAGES):
            _load_tile(x_desc, x_smem, ready, i, pid + i * nprog, kt, i < my_tiles)
        return x_smem, ready, pid, nprog, kt, my_tiles

    @gluon.jit
    def _load_tile(x_desc, x_smem, ready, slot, t, kt, pred):
        # Tile t's two 128×64 halves into ring slot `slot` (no-op when pred is false).
        bar = ready.index(slot)
        mbarrier.expect(bar, 2 * x_desc.block_type.nbytes, pred=pred)
        off_m = (t // kt) * 128
        off_k = (t % kt) * 128
        tma.async_copy_global_to_shared(x_desc, [off_m, off_k], bar, x_smem.index(2 * slot), pred=pred)
        tma.async_copy_global_to_shared(x_desc, [off_m, off_k + 64], bar, x_smem.index(2 * slot + 1),
                                        pred=pred)


@functools.cache
def _capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


@functools.cache
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.cache
def _tile_layout(dtype: torch.dtype):
    # 128×64 halves of 128-byte rows, 128B swizzle (16-byte chunks XOR-permuted by row % 8): the
    # ROW layout reads a row's 8 chunks and ldmatrix (COL) 8 rows of one chunk, both without
    # bank conflicts (unswizzled 256-byte rows made ldmatrix 8-way conflicted).
    return gl.NVMMASharedLayout.get_default_for([128, 64], _GL_DTYPE[dtype])


def gluon_quant_supported(x: torch.Tensor) -> str | None:
    """None if the Gluon quantizer can run on x, else the reason it cannot."""
    if not HAS_GLUON:
        return "triton.experimental.gluon is not importable"
    if not x.is_cuda or _capability(x.device.index) != (9, 0):
        return "needs an sm_90 (Hopper) GPU"
    if x.element_size() != 2:
        return "written for 16-bit inputs (a 128×64 half is one 128-byte swizzle row)"
    if x.stride(1) != 1 or (x.stride(0) * x.element_size()) % 16 or x.data_ptr() % 16:
        return "TMA needs a row-major x with 16-byte aligned rows"
    return None


# Launch configs: (STAGES, programs per SM or 0 for one program per tile, register cap or 0,
# options); options "+"-joined, "fmax": _to_e4m3's one-instruction magnitude floor.
# Capped at 80 registers (no spills, ptxas) three one-stage programs fit an SM. Graph ÷ copy on
# an H100 at 8192×2048 / 8192×5120 / 16384×7168 (BENCHMARKS.md, FP8, 2026-11-27 session 7
# second helper; A/B in one run):
#   col  (1, 5, 80, "")       0.76 / 0.82-0.83 / 0.85        (the default before)
#   col  (1, 0, 80, "fmax")   0.80 / 0.88      / 0.94
#   both (2, 2, 0, "")        0.68 / 0.78      / 0.82-0.83   (the default before)
#   both (1, 0, 80, "fmax")   0.78 / 0.86-0.87 / 0.90-0.92
# Persistent programs lose to one program per tile at every shape: asking 5, 8, 12, 16 programs
# per SM (3 resident, the rest start as those finish) gave both ways 0.73-0.78 / 0.78-0.84 /
# 0.81-0.86 (more is better, 4 is worse than 3), i.e. what helps is a fine last round and new
# programs filling an SM as others leave, not a ring kept across tiles. "fmax" alone: +0.01-0.03.
# One program of 3 stages: 0.62-0.83 (a CTA-wide barrier stalls the whole SM when it is alone).
# Session 8 (same A/B): both passes use tile_scale's AMAX16 division and the row pass reduces
# its amax once over both halves (2056 → 1920 SASS instructions per tile both ways): both ways
# 0.78 → 0.79 at 8192×2048, 0.87 → 0.87-0.88 at 8192×5120. Measured and dropped: rcp.approx +
# two FMA steps for tile_scale's reciprocal (→ 1728 instructions, yet both ways 0.01 slower on
# the H100, faster on an H200), the column pass first (-0.01 at 8192×2048); 4 warps per
# program at a 128-register cap (4 programs per SM) spills (the COL pass holds a 128×64 half).
# Session 8, second round (same A/B): stores without bounds masks where 128 divides M and K
# (-16 of 1920 instructions) 0.78 / 0.86 / 0.92 both ways, no better; a 64-register cap (4
# programs per SM, 56-byte spills) 0.61-0.81; quantize_act_t as one program per 128×64 half (a
# finer last round, half the bytes in flight per program) 0.69-0.80 vs 0.79-0.94: all removed.
_GLUON_CFG = {True: (1, 0, 80, "fmax"), False: (1, 0, 80, "fmax")}  # by rowwise


@functools.cache
def _qt_layout():
    return gl.NVMMASharedLayout.get_default_for([128, 128], gl.float8e4nv)


def quant_act_gluon(x: torch.Tensor, q, s, qt, st, rowwise: bool, colwise: bool, pow2: bool,
                    cfg: tuple | None = None) -> None:
    """Fill the outputs allocated by ``quantize._quant_act_triton`` (same layouts; qt [K, M]
    with rows padded to 16 bytes); the caller checked ``gluon_quant_supported``.
    cfg: (STAGES, programs per SM or 0[, register cap or 0[, options]]), default _GLUON_CFG."""
    if not colwise:  # (it would run, but the Triton row kernel is faster: BENCHMARKS.md)
        raise ValueError("the Gluon quantizer writes qt: quantize_act_t or quantize_act_both")
    m, k = x.shape
    stages, per_sm, *rest = cfg or _GLUON_CFG[rowwise]
    maxnreg = rest[0] if rest else 0
    options = set(rest[1].split("+")) - {""} if len(rest) > 1 else set()
    if options - {"fmax"}:
        raise ValueError(f"unknown Gluon quantizer options {options}")
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    tiles = cdiv(m, 128) * cdiv(k, 128)
    programs = tiles if per_sm == 0 else min(tiles, per_sm * _num_sms(dev))
    q, s = (q, s) if rowwise else (qt, st)  # stand-ins for quantize_act_t (never written)
    launch(_quant_act_gluon_kernel, (programs,),
           TMA(x, (128, 64), _tile_layout(x.dtype)), TMA(qt, (128, 128), _qt_layout()),
           q, s, st, m, k, q.stride(0), s.stride(1), st.stride(1),
           ROWWISE=rowwise, COLWISE=colwise, POW2=pow2, STAGES=stages,
           QT_BUFFERS=1 if programs == tiles else 2,  # one tile per program: one staging tile
           FMAX="fmax" in options, num_warps=8,
           **({"maxnreg": maxnreg} if maxnreg else {}))


# (STAGES, programs per SM, warps) of the weight kernel, per output. q [N, K]: one program per SM
# with a 3-tile ring; Wᵀ: one stage and 5 programs per SM asked (3 fit in shared memory, 64 KiB
# each with the qt staging tiles; the rest start as those finish: a finer last round). Graph ÷
# copy on an H100 (three runs) at 8192×2048 / 5120×2048 / 16384×7168: q 0.80-0.82 / 0.81-0.83 /
# 0.82-0.83, Wᵀ 0.83-0.84 / 0.83-0.84 / 0.87; (2, 2, 8): 0.79-0.81 / 0.73-0.74 / 0.83-0.84 and
# 0.80 / 0.68-0.70 / 0.80-0.81; Triton 0.64 / 0.63 / 0.72 and 0.58 / 0.54 / 0.65 (BENCHMARKS.md).
_GLUON_WEIGHT_CFG = {False: (3, 1, 8), True: (1, 5, 8)}  # by transposed


def quant_weight_gluon(w: torch.Tensor, q, qt, s, pow2: bool, cfg: tuple | None = None) -> None:
    """128×128 block quantization of w [N, K] into q [N, K] (DIRECT) or qt [K, N] (Wᵀ, rows
    padded to 16 bytes), whichever is not None, and s ([Nb, Kb], or [Kb, Nb] with qt); the
    caller checked ``gluon_quant_supported(w)``. cfg: (STAGES, programs per SM, warps)."""
    n, k = w.shape
    stages, per_sm, warps = cfg or _GLUON_WEIGHT_CFG[qt is not None]
    dev = w.device.index if w.device.index is not None else torch.cuda.current_device()
    w_desc = TMA(w, (128, 64), _tile_layout(w.dtype))
    if qt is not None:  # s is Wᵀ's [Kb, Nb]
        qt_desc = TMA(qt, (128, 128), _qt_layout())
        q_arg, s_n, s_k = qt, s.stride(1), s.stride(0)
    else:  # stand-ins for the unused transposed output (its branch is compiled out)
        qt_desc, q_arg, s_n, s_k = w_desc, q, s.stride(0), s.stride(1)
    tiles = cdiv(n, 128) * cdiv(k, 128)
    launch(_quant_weight_gluon_kernel, (min(tiles, per_sm * _num_sms(dev)),),
           w_desc, qt_desc, q_arg, s, n, k, q_arg.stride(0), s_n, s_k,
           DIRECT=q is not None, TRANSPOSED=qt is not None, POW2=pow2, STAGES=stages, num_warps=warps)
