"""Block-scaled FP8 quantization: activations 1×128, weights 128×128, and the transposed forms.

Public functions (``backend=`` as in :mod:`kernels.backend`: the PyTorch path in
``quantize_torch.py``, the Triton kernels in ``quantize_triton.py`` and, on Hopper, for
``quantize_act_t`` / ``quantize_act_both`` and the two weight quantizers, the Gluon kernels in
``quantize_hopper.py``; all give the same bits):

- ``quantize_act(x)``      x [M, K]  → q [M, K] e4m3, scale [M, ceil(K/128)] fp32 (tiles along K)
- ``quantize_act_t(x)``    x [M, K]  → q [K, M] e4m3, scale [K, ceil(M/128)] fp32 (tiles along M),
  i.e. ``quantize_act(x.t())``: what the weight-gradient GEMM needs (it reduces over tokens).
- ``quantize_act_both(x)`` both of the above (the backward pass quantizes the output gradient
  both ways).
- ``quantize_weight(w)``   w [N, K]  → q [N, K] e4m3, scale [ceil(N/128), ceil(K/128)] fp32
- ``quantize_weight_t(w)`` w [N, K]  → q [K, N], scale [ceil(K/128), ceil(N/128)]: the same
  128×128 blocks, transposed (the data-gradient GEMM reads Wᵀ).

Scale tensors of activations are returned with M-major strides on the GPU path (a transposed
contiguous buffer, as DeepGEMM lays them out) so the GEMM reads them coalesced; their shape is
as above. This module owns the public functions and the choice among the three implementations.
"""

from __future__ import annotations

import torch

from ..backend import HAS_TRITON, Backend, log, resolve_backend
from .format import BLOCK, FP8_DTYPE, cdiv, check_2d
from .launch import launch
from .quantize_hopper import gluon_quant_supported, quant_act_gluon, quant_weight_gluon
from .quantize_torch import (
    quantize_act_both_torch,
    quantize_act_t_torch,
    quantize_act_torch,
    quantize_weight_torch,
)
from .quantize_triton import empty_act_scale, empty_padded_rows, empty_transposed

if HAS_TRITON:  # CPU-only installs may lack triton
    from .quantize_triton import quant_act_kernel, quant_weight_kernel

_FLOAT_IN = (torch.float32, torch.bfloat16, torch.float16)

# (BLOCK_M, BLOCK_K, num_warps[, maxnreg]) per mode; tuned on an H100 (benchmarks/fp8/ops.py).
# "both" holds 64 fp32 values per thread plus both outputs: capped at 128 registers it runs two
# blocks per SM (a few spills) and beats one block at 165 registers (0.56 vs 0.46 of copy).
_QUANT_CFG = {"row": (32, 128, 4), "col": (128, 64, 4), "both": (128, 128, 8, 128)}
# Modes that run the Gluon kernels (quantize_hopper.py) on Hopper when TMA can load x; the row
# mode stays on Triton (0.89-0.95 of copy vs 0.73-0.94 for Gluon on an H100, BENCHMARKS.md).
# Weights: 0.80-0.87 of copy vs Triton's 0.54-0.72 (BENCHMARKS.md, session 6).
_GLUON_MODES = {"col", "both", "weight", "weight_t"}
_gluon_logged: set = set()


def _use_gluon(x: torch.Tensor, mode: str, cfg) -> bool:
    """Gluon kernel for this call? cfg: None (the default per mode), "gluon" or ("gluon",
    *the Gluon launch config*: STAGES, programs per SM or 0 for one per tile, register cap,
    options; see ``quantize_hopper.quant_act_gluon``) to ask for it, a Triton tile config to ask
    for Triton. Where the Gluon kernel cannot run, the Triton kernel does, logged once per
    reason."""
    if cfg is not None and not (cfg == "gluon" or cfg[0] == "gluon"):
        return False
    if cfg is None and mode not in _GLUON_MODES:
        return False
    why = gluon_quant_supported(x)
    if why is not None:
        if cfg is not None:
            raise ValueError(f"quantize ({mode}): Gluon kernel asked for but unusable: {why}")
        if (mode, why) not in _gluon_logged:  # the Triton kernel runs instead: say so once
            _gluon_logged.add((mode, why))
            log.info("quantize (%s): Triton kernel, Gluon kernel not used: %s", mode, why)
    return why is None


def _quant_act_triton(x: torch.Tensor, rowwise: bool, colwise: bool, pow2_scale: bool, cfg=None):
    """The GPU / interpreter path of the three activation quantizers: allocates the outputs and
    runs the Gluon kernel (see _use_gluon) or the Triton one. Returns (q, s, qt, st), None where
    not asked for."""
    m, k = x.shape
    mode = "both" if rowwise and colwise else ("row" if rowwise else "col")
    gluon = x.is_cuda and _use_gluon(x, mode, cfg)
    q = s = qt = st = qt_words = None
    if rowwise:
        q = torch.empty(m, k, dtype=FP8_DTYPE, device=x.device)
        s = empty_act_scale(m, cdiv(k, BLOCK), x.device)
    if colwise:
        if gluon:
            qt = empty_padded_rows(k, m, x.device)
        else:
            qt, qt_words = empty_transposed(k, m, x.device)
        st = empty_act_scale(k, cdiv(m, BLOCK), x.device)
    if gluon:
        quant_act_gluon(x, q, s, qt, st, rowwise, colwise, pow2_scale,
                        None if cfg in (None, "gluon") else cfg[1:])
        return q, s, qt, st
    block_m, block_k, warps, *maxnreg = cfg or _QUANT_CFG[mode]  # optional register cap
    if colwise and block_m != BLOCK or rowwise and block_k % BLOCK:
        raise ValueError("tiles must be 128 rows (transposed) and a multiple of 128 wide (rows)")
    # Unused outputs get a stand-in (never written: their branch is compiled out).
    qq, ss = (q, s) if rowwise else (qt_words, st)
    qqt, sst = (qt_words, st) if colwise else (q, s)
    launch(quant_act_kernel, (cdiv(m, block_m), cdiv(k, block_k)),
        x, qq, ss, qqt, sst, m, k, cdiv(m, 4),
        x.stride(0), x.stride(1), qq.stride(0), ss.stride(1), qqt.stride(0), sst.stride(1),
        BLOCK_M=block_m, BLOCK_K=block_k, ROWWISE=rowwise, COLWISE=colwise, POW2=pow2_scale,
        num_warps=warps, **({"maxnreg": maxnreg[0]} if maxnreg else {}),
    )
    return q, s, qt, st


def _quantize_act(op: str, x: torch.Tensor, pow2_scale: bool, backend: Backend, rowwise: bool,
                  colwise: bool) -> tuple[torch.Tensor, ...]:
    """Shared body of the three activation quantizers: (q, s) and/or (qt, st)."""
    check_2d("x", x, _FLOAT_IN)
    if resolve_backend(op, x, backend) == "torch":
        if rowwise and colwise:
            return quantize_act_both_torch(x, pow2_scale)
        return quantize_act_torch(x, pow2_scale) if rowwise else quantize_act_t_torch(x, pow2_scale)
    q, s, qt, st = _quant_act_triton(x, rowwise, colwise, pow2_scale)
    return ((q, s) if rowwise else ()) + ((qt, st) if colwise else ())


def quantize_act(x: torch.Tensor, pow2_scale: bool = False, *,
                 backend: Backend = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """1×128 FP8 quantization along the last dim.

    x: [M, K] fp32/bf16/fp16 (any K; a partial last tile is zero padded for its amax).
    Returns (q [M, K] float8_e4m3fn, scale [M, ceil(K/128)] fp32) with x ≈ q * scale.
    ``pow2_scale``: scales rounded up to powers of two.
    """
    return _quantize_act("quantize_act", x, pow2_scale, backend, True, False)


def quantize_act_t(x: torch.Tensor, pow2_scale: bool = False, *,
                   backend: Backend = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """1×128 FP8 quantization along the FIRST dim, output transposed.

    x: [M, K] fp32/bf16/fp16. Returns (q [K, M] e4m3, scale [K, ceil(M/128)] fp32) ==
    quantize_act(x.t()); on CUDA q's rows are padded to a multiple of 16 bytes (q.stride(0) >= M).
    """
    return _quantize_act("quantize_act_t", x, pow2_scale, backend, False, True)


def quantize_act_both(x: torch.Tensor, pow2_scale: bool = False, *,
                      backend: Backend = "auto") -> tuple[torch.Tensor, ...]:
    """(quantize_act(x), quantize_act_t(x)) from one read of x in one kernel: (q, s, qt, st).

    x: [M, K] fp32/bf16/fp16 → q [M, K], s [M, ceil(K/128)], qt [K, M], st [K, ceil(M/128)]."""
    return _quantize_act("quantize_act_both", x, pow2_scale, backend, True, True)


def _quant_weight_triton(w: torch.Tensor, pow2_scale: bool, transposed: bool, cfg=None):
    """GPU / interpreter path of quantize_weight(_t): the Gluon kernel on Hopper (see _use_gluon;
    cfg "gluon" or ("gluon", STAGES, per SM, warps) asks for it, "triton" for Triton), else the
    Triton kernel."""
    n, k = w.shape
    nb, kb = cdiv(n, BLOCK), cdiv(k, BLOCK)
    gluon = w.is_cuda and _use_gluon(w, "weight_t" if transposed else "weight", cfg)
    if transposed:  # q [K, N], scale [Kb, Nb]
        if gluon:
            q = out = empty_padded_rows(k, n, w.device)
        else:
            q, out = empty_transposed(k, n, w.device)
        s = torch.empty(kb, nb, dtype=torch.float32, device=w.device)
        s_n, s_k = s.stride(1), s.stride(0)
    else:
        q = out = torch.empty(n, k, dtype=FP8_DTYPE, device=w.device)
        s = torch.empty(nb, kb, dtype=torch.float32, device=w.device)
        s_n, s_k = s.stride(0), s.stride(1)
    if gluon:
        quant_weight_gluon(w, None if transposed else q, q if transposed else None, s,
                           pow2_scale, None if cfg in (None, "gluon") else cfg[1:])
        return q, s
    launch(quant_weight_kernel, (nb, kb), w, out, s, out, n, k, cdiv(n, 4), w.stride(0), w.stride(1),
           out.stride(0), out.stride(0), s_n, s_k, POW2=pow2_scale,
           DIRECT=not transposed, TRANSPOSED=transposed, num_warps=8)
    return q, s


def quantize_weight(w: torch.Tensor, pow2_scale: bool = False, *,
                    backend: Backend = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """128×128 block FP8 quantization.

    w: [N, K] fp32/bf16/fp16. Returns (q [N, K] e4m3, scale [ceil(N/128), ceil(K/128)] fp32).
    """
    check_2d("w", w, _FLOAT_IN)
    if resolve_backend("quantize_weight", w, backend) == "torch":
        return quantize_weight_torch(w, pow2_scale)
    return _quant_weight_triton(w, pow2_scale, transposed=False)


def transpose_quantized_weight(q: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Wᵀ of a 128×128-quantized weight: (q.t() contiguous [K, N], scale.t() [Kb, Nb]).

    Exact: a 128×128 block of Wᵀ is the transpose of a block of W, with the same scale.
    """
    return q.t().contiguous(), scale.t().contiguous()


def quantize_weight_t(w: torch.Tensor, pow2_scale: bool = False, *,
                      backend: Backend = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """128×128 FP8 quantization of Wᵀ. w [N, K] → (q [K, N] e4m3, scale [ceil(K/128), ceil(N/128)]).

    Bitwise equal to ``transpose_quantized_weight(*quantize_weight(w))``; the Triton path writes
    the transposed layout directly from the master weight (the backward pass's dgrad operand).
    """
    check_2d("w", w, _FLOAT_IN)
    if resolve_backend("quantize_weight_t", w, backend) == "torch":
        return transpose_quantized_weight(*quantize_weight_torch(w, pow2_scale))
    return _quant_weight_triton(w, pow2_scale, transposed=True)


__all__ = [
    "quantize_act",
    "quantize_act_t",
    "quantize_act_both",
    "quantize_weight",
    "quantize_weight_t",
    "transpose_quantized_weight",
]
