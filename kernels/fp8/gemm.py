"""Block-scaled FP8 GEMM: ``C = (A·sA) @ (B·sB)ᵀ`` with fp32 accumulation.

``fp8_gemm(aq, a_scale, bq, b_scale, out_dtype)``:
- aq [M, K] e4m3 with a_scale [M, ceil(K/128)] (1×128 tiles);
- bq [N, K] e4m3 with b_scale either [ceil(N/128), ceil(K/128)] (128×128 weight blocks) or
  [N, ceil(K/128)] (1×128 tiles: the weight-gradient GEMM, where both operands are
  activations); the granularity is read off b_scale's first dimension;
- returns C [M, N] in out_dtype (bf16, fp16 or fp32).

Math (both backends): for each 128-wide K block in increasing order, the fp8 partial product
P_k = A_k @ B_kᵀ is formed with fp32 accumulation on the tensor cores (exact float64 on CPU),
then promoted: ``acc += P_k * (sA_k ⊗ sB_k)`` in fp32 (DeepSeek-V3's per-128 promotion, which
also keeps Hopper's limited-precision FP8 accumulation short). No split-K and a fixed K order:
a row of C does not depend on M or on the other rows (batch invariant; the GPU benchmark checks
it bitwise across M and tile configurations).

Implementations (``backend=`` as in :mod:`kernels.backend`): the PyTorch path
(``gemm_torch.py``), the Triton kernels (``gemm_triton.py``), the Gluon kernels on Hopper
(``gemm_hopper.py``). This module owns the public function and the choice among them.
"""

from __future__ import annotations

import torch

from ..backend import HAS_TRITON, Backend, log, resolve_backend
from .format import BLOCK, FP8_DTYPE, cdiv, check_2d
from .gemm_hopper import fp8_gemm_gluon, fp8_gemm_gluon_ws, gluon_supported, num_sms, scales_tma_ok
from .gemm_torch import fp8_gemm_torch
from .launch import TMA, launch

if HAS_TRITON:  # CPU-only installs may lack triton
    from .gemm_triton import fp8_gemm_kernel, fp8_gemm_tma_kernel

_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# (BLOCK_M, BLOCK_N, num_warps, num_stages, kind); kind: "gluon_ws" (gemm_hopper.py: persistent
# warp-specialized Gluon kernel, 128×256 tiles; the default on sm_90 where TMA alignment allows
# and there is a wave of tiles (1×128 B: scales M- / N-contiguous for TMA); num_warps is its
# per-consumer 4; "gluon_p", persistent without a producer warp, was slower everywhere and was
# deleted 2026-11-27, see BENCHMARKS.md), "gluon" (non-persistent
# Gluon kernel, promotion prefetched and overlapped; the default for small M·N),
# "ptr" (pointer loads), "tma" (TMA descriptors), "tma_ws" (TMA + Triton's automatic warp
# specialization), "tma_pp"/"tma_pp_ws" (software-pipelined promotion). Chosen from M only when
# batch_invariant is off; the per-element arithmetic does not depend on the tile shape (fixed K
# order), which the GPU benchmark verifies bitwise, but strict mode pins one config anyway.
_CONFIG_LARGE = (128, 128, 8, 4, "tma")
_CONFIG_SMALL_M = (64, 128, 4, 4, "tma")
_CONFIG_INVARIANT = (128, 128, 8, 4, "tma")
_CONFIG_INTERPRET = (32, 32, 4, 1, "ptr")
_CONFIG_GLUON = (128, 128, 8, 4, "gluon")  # fewer 128×256 tiles than SMs (M=128 decode-like shapes)
# "gluon_ws": persistent, warp-specialized, 128×256 tiles (gemm_hopper.py); 0.86-0.95× cuBLAS
# tensorwise at the large benchmark shapes (H100, 2026-11-27 session 8; 0.81-0.88× before) vs
# 0.68-0.73× for "gluon" (H100, 2026-11-26). Options "+"-joined (_ws_options). For 128×128-block
# B the default takes A's scales through the TMA ring and groups 16 row-tiles: 0.88-0.92× /
# 0.93-0.95× / 0.96-0.98× / 0.96× at 8192³ / 4096×7168×16384 / 4096×4096×7168 / 8192×5120×2048
# vs 0.85-0.87× / 0.89-0.91× / 0.91-0.92× / 0.91-0.92× for plain gluon_ws in the same two H100
# runs (BENCHMARKS.md, FP8, session 8 second round). 1×128 B (wgrad) keeps plain gluon_ws (its
# scales already ride the ring; g16 not measured there).
_CONFIG_GLUON_WS = (128, 256, 4, 3, "gluon_ws+g16+sa_tma")
_CONFIG_GLUON_WS_ROWWISE_B = (128, 256, 4, 3, "gluon_ws")
_logged_kinds: set[tuple[str, bool]] = set()


def _pick_config(m: int, n: int, k: int, on_cpu: bool, batch_invariant: bool, gluon_ok: bool,
                 b_block: bool = True, sms: int = 132):
    if on_cpu:
        return _CONFIG_INTERPRET
    # Gluon kernels are bitwise the same as the Triton kernels (checked on the H100), so the
    # choice may vary. The persistent 128×256 kernel needs at least a wave of tiles; below that
    # the 128×128 kernel spreads the work over twice as many SMs — for 128×128-block B only:
    # with 1×128 B scales (wgrad) its two scale vectors spill, and Triton's kernel is faster.
    # 1×128 B on gluon_ws (scales TMA-loaded with the operands): see BENCHMARKS.md, FP8.
    if gluon_ok and cdiv(m, 128) * cdiv(n, 256) >= sms:
        return _CONFIG_GLUON_WS if b_block else _CONFIG_GLUON_WS_ROWWISE_B
    if gluon_ok and b_block:
        return _CONFIG_GLUON
    if batch_invariant:
        cfg = _CONFIG_INVARIANT
    elif m <= 256 or cdiv(m, 128) * cdiv(n, 128) < 132:
        cfg = _CONFIG_SMALL_M
    else:
        cfg = _CONFIG_LARGE
    if k % 16:  # TMA needs 16-byte aligned rows
        cfg = (*cfg[:4], "ptr")
    return cfg


def _ws_options(options: list[str]) -> dict:
    """gluon_ws kind options ("gluon_ws+g16+sa_tma"): gN = N row-tiles per group of the tile
    order (default 8), sa_tma = A's scales through the TMA ring."""
    kw = {}
    for opt in options:
        if opt == "sa_tma":
            kw["a_scales_tma"] = True
        elif opt[:1] == "g" and opt[1:].isdigit():
            kw["group_m"] = int(opt[1:])
        else:
            raise ValueError(f"unknown gluon_ws option {opt!r}")
    return kw


def _validate(aq, a_scale, bq, b_scale, out_dtype):
    check_2d("aq", aq, (FP8_DTYPE,))
    check_2d("bq", bq, (FP8_DTYPE,))
    check_2d("a_scale", a_scale, (torch.float32,))
    check_2d("b_scale", b_scale, (torch.float32,))
    m, k = aq.shape
    n, kb_ = bq.shape
    if kb_ != k:
        raise ValueError(f"aq [M, K]={tuple(aq.shape)} and bq [N, K]={tuple(bq.shape)} differ in K")
    kb = cdiv(k, BLOCK)
    if tuple(a_scale.shape) != (m, kb):
        raise ValueError(f"a_scale must be [M, ceil(K/128)] = {(m, kb)}, got {tuple(a_scale.shape)}")
    if tuple(b_scale.shape) not in ((cdiv(n, BLOCK), kb), (n, kb)):
        raise ValueError(
            f"b_scale must be [ceil(N/128), ceil(K/128)] = {(cdiv(n, BLOCK), kb)} (block) or "
            f"[N, ceil(K/128)] = {(n, kb)} (1×128), got {tuple(b_scale.shape)}"
        )
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {_OUT_DTYPES}, got {out_dtype}")
    if aq.stride(1) != 1 or bq.stride(1) != 1:
        raise ValueError("aq and bq must be contiguous along K (row-major [M, K] and [N, K])")
    if m == 0 or n == 0:
        raise ValueError(f"empty GEMM: M={m}, N={n}")


# What fp8_gemm decides from the operands alone (validation, backend, B's scale granularity, the
# kernel and its tiles) is cached per operand layout: ~15 µs of Python per call on the H100 hosts
# otherwise (BENCHMARKS.md, FP8). The key holds everything those decisions read: each operand's
# dtype, shape, strides, device and 16-byte alignment, and the arguments.
_PLANS: dict = {}
_PLANS_MAX = 1024


def _layout(t: torch.Tensor) -> tuple:
    return t.dtype, t.shape, t.stride(), t.get_device(), t.data_ptr() % 16 == 0


def _make_plan(aq, a_scale, bq, b_scale, out_dtype, batch_invariant, backend, config):
    """"torch" (the PyTorch path), or (why the Gluon kernels cannot run or None, b_block,
    (BLOCK_M, BLOCK_N, num_warps, num_stages, kind)); raises on invalid operands."""
    _validate(aq, a_scale, bq, b_scale, out_dtype)
    if resolve_backend("fp8_gemm", aq, backend) == "torch":
        return "torch"
    m, k = aq.shape
    n = bq.shape[0]
    b_block = b_scale.shape[0] != n or n == 1
    why_not = gluon_supported(aq, bq, out_dtype)
    if why_not is None and not b_block and not scales_tma_ok(a_scale, b_scale):
        why_not = "1x128 scales not M/N-contiguous with 16-byte aligned rows (TMA)"
    cfg = config or _pick_config(m, n, k, not aq.is_cuda, batch_invariant, why_not is None, b_block,
                                 num_sms(aq.device) if why_not is None else 132)
    kind = cfg[4]
    sa_by_pointer = "+sa_tma" in kind and not scales_tma_ok(a_scale, a_scale)  # A's scales alone
    if sa_by_pointer:  # the same bits, a little slower
        kind = kind.replace("+sa_tma", "")
        cfg = (*cfg[:4], kind)
    if aq.is_cuda and (kind, b_block) not in _logged_kinds:  # the choice is visible, never silent
        _logged_kinds.add((kind, b_block))
        log.info("fp8_gemm uses the %r kernel for %s B scales%s%s", kind,
                 "128x128-block" if b_block else "1x128", "" if kind.startswith("gluon") else
                 f" (Gluon kernel not used: {why_not or 'fewer 128x256 tiles than SMs'})",
                 " (A's scales by pointer: their columns are not padded to 16 bytes for TMA, as "
                 "quantize_act's are)" if sa_by_pointer else "")
    return why_not, b_block, tuple(cfg)


def fp8_gemm(
    aq: torch.Tensor,
    a_scale: torch.Tensor,
    bq: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    batch_invariant: bool = False,
    backend: Backend = "auto",
    config: tuple[int, int, int, int, str] | None = None,
) -> torch.Tensor:
    """``(aq·a_scale) @ (bq·b_scale)ᵀ`` → [M, N] out_dtype (bf16, fp16 or fp32).

    aq [M, K] e4m3 with a_scale [M, ceil(K/128)] fp32; bq [N, K] e4m3 with b_scale fp32
    [ceil(N/128), ceil(K/128)] (128×128 blocks) or [N, ceil(K/128)] (1×128 tiles); aq and bq
    contiguous along K. batch_invariant pins one tile configuration for every M (strict mode).
    ``config`` (a tuple) overrides the (BLOCK_M, BLOCK_N, num_warps, num_stages, kind) choice
    (benchmarks).
    """
    key = (_layout(aq), _layout(a_scale), _layout(bq), _layout(b_scale), out_dtype, batch_invariant,
           backend, config)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _make_plan(aq, a_scale, bq, b_scale, out_dtype, batch_invariant, backend, config)
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[key] = plan
    if plan == "torch":
        return fp8_gemm_torch(aq, a_scale, bq, b_scale, out_dtype)
    why_not, b_block, (bm, bn, warps, stages, kind) = plan
    m, k = aq.shape
    n = bq.shape[0]
    base, *options = kind.split("+")
    if base in ("gluon", "gluon_ws"):
        if why_not is not None:
            raise ValueError(f"fp8_gemm: Gluon kernel requested but {why_not}")
        if base == "gluon":
            return fp8_gemm_gluon(aq, a_scale, bq, b_scale, out_dtype, b_block, bm, bn, warps, stages)
        return fp8_gemm_gluon_ws(aq, a_scale, bq, b_scale, out_dtype, stages, b_block=b_block,
                                 **_ws_options(options))
    c = torch.empty(m, n, dtype=out_dtype, device=aq.device)
    grid = (cdiv(m, bm) * cdiv(n, bn),)
    scale_args = (a_scale.stride(0), a_scale.stride(1), b_scale.stride(0), b_scale.stride(1))
    if kind == "ptr":
        launch(fp8_gemm_kernel, grid,
            aq, bq, c, a_scale, b_scale, m, n, k, aq.stride(0), bq.stride(0), c.stride(0),
            *scale_args, B_BLOCK_SCALED=b_block, BLOCK_M=bm, BLOCK_N=bn, GROUP_M=8,
            EVEN_K=(k % BLOCK == 0), num_warps=warps, num_stages=stages,
        )
    elif kind in ("tma", "tma_ws", "tma_pp", "tma_pp_ws"):
        if k % 16 or aq.stride(0) % 16 or bq.stride(0) % 16 or aq.data_ptr() % 16 or bq.data_ptr() % 16:
            raise ValueError("TMA GEMM needs K and the row strides to be multiples of 16 bytes")
        launch(fp8_gemm_tma_kernel, grid,
            TMA(aq, (bm, BLOCK)), TMA(bq, (bn, BLOCK)), c, a_scale, b_scale, m, n, k, c.stride(0), *scale_args,
            B_BLOCK_SCALED=b_block, BLOCK_M=bm, BLOCK_N=bn, GROUP_M=8,
            WARP_SPECIALIZE=kind.endswith("_ws"), PIPELINE="_pp" in kind, num_warps=warps, num_stages=stages,
        )
    else:
        raise ValueError(f"unknown GEMM kernel kind {kind!r}")
    return c


__all__ = ["fp8_gemm"]
