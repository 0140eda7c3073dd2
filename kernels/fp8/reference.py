"""References of the FP8 ops, for the tests and as the benchmarks' correctness anchor; nothing in
the engines calls them.

Straightforward restatements, slow where that makes them obvious: the quantizers on a
zero-padded fp32 copy (the definition the PyTorch path in ``quantize_torch.py`` and the Triton
kernels must match bit for bit), the GEMM as a per-128-block loop (the arithmetic every
implementation follows, bitwise) and in float64 on dequantized operands (the exact product), and
the fp32 RMSNorm and SwiGLU the fused ops quantize.  The format (dtype, block, scale rule) is
:mod:`kernels.fp8.format`'s.
"""

from __future__ import annotations

import torch

from .format import BLOCK, FP8_DTYPE, FP8_MAX, cdiv, scale_from_amax


def _quantize_padded(x: torch.Tensor, tile_rows: int, pow2_scale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x [R, C] quantized in tiles of tile_rows × 128 on a zero-padded fp32 copy (padding leaves
    each tile's amax unchanged and is cut off again)."""
    r, c = x.shape
    rb, cb = cdiv(r, tile_rows), cdiv(c, BLOCK)
    xp = torch.zeros(rb * tile_rows, cb * BLOCK, dtype=torch.float32, device=x.device)
    xp[:r, :c] = x.float()
    tiles = xp.view(rb, tile_rows, cb, BLOCK)
    scale = scale_from_amax(tiles.abs().amax(dim=(1, 3)), pow2_scale)
    q = (tiles / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.view(rb * tile_rows, cb * BLOCK)[:r, :c].contiguous(), scale


def quantize_act_ref(x: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """1×128 quantization along the last dim. x [M, K] → (q [M, K] e4m3, scale [M, ceil(K/128)] fp32)."""
    return _quantize_padded(x, 1, pow2_scale)


def quantize_act_t_ref(x: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Transposed 1×128 quantization (tiles along M).
    x [M, K] → (q [K, M] e4m3, scale [K, ceil(M/128)] fp32)."""
    return _quantize_padded(x.t(), 1, pow2_scale)


def quantize_weight_ref(w: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """128×128 block quantization. w [N, K] → (q [N, K] e4m3, scale [ceil(N/128), ceil(K/128)] fp32)."""
    return _quantize_padded(w, BLOCK, pow2_scale)


def expand_scale(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-element scale [R, C] for q [R, C] from a 1×128 ([R, Cb]) or 128×128 ([Rb, Cb]) scale."""
    r, c = q.shape
    rows = scale if scale.shape[0] == r else scale.repeat_interleave(BLOCK, dim=0)[:r]
    return rows.repeat_interleave(BLOCK, dim=1)[:, :c]


def dequantize_ref(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float64 value of a quantized tensor (either scale granularity)."""
    return q.double() * expand_scale(q, scale).double()


def fp8_gemm_ref(aq: torch.Tensor, a_scale: torch.Tensor, bq: torch.Tensor, b_scale: torch.Tensor,
                 out_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``A @ B.T`` in float64 on dequantized operands. aq [M, K], bq [N, K] → [M, N]."""
    return (dequantize_ref(aq, a_scale) @ dequantize_ref(bq, b_scale).t()).to(out_dtype)


def fp8_gemm_blocks_ref(aq: torch.Tensor, a_scale: torch.Tensor, bq: torch.Tensor, b_scale: torch.Tensor,
                        out_dtype: torch.dtype) -> torch.Tensor:
    """The GEMM's arithmetic as a plain loop, bit for bit what every implementation computes: per
    128-wide K block the exact fp8 partial product (float64), rounded to fp32, times
    ``a_scale ⊗ b_scale`` (B's scale 128×128 blocks or, with [N, Kb] scales, 1×128 tiles), added to
    the fp32 accumulator in K order. aq [M, K], bq [N, K] → [M, N] out_dtype."""
    m, k = aq.shape
    n = bq.shape[0]
    acc = torch.zeros(m, n, dtype=torch.float32, device=aq.device)
    rows = torch.arange(n, device=aq.device) // BLOCK
    for i in range(cdiv(k, BLOCK)):
        blk = slice(BLOCK * i, BLOCK * (i + 1))
        part = (aq[:, blk].double() @ bq[:, blk].double().t()).float()
        sb = b_scale[rows, i] if b_scale.shape[0] != n or n == 1 else b_scale[:, i]
        acc = acc + part * (a_scale[:, i, None] * sb[None, :])
    return acc.to(out_dtype)


def rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """fp32 RMSNorm: x * rsqrt(mean(x²) + eps) * weight, all in fp32. x [M, D] → fp32 [M, D]."""
    xf = x.float()
    var = xf.pow(2).mean(dim=-1, keepdim=True)
    return xf * torch.rsqrt(var + eps) * weight.float()


def rmsnorm_quant_ref(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                      out_dtype: torch.dtype = torch.bfloat16, pow2_scale: bool = False):
    """Reference for ``rmsnorm_quant``: (y = rmsnorm(x) in out_dtype, *quantize_act(y))."""
    y = rmsnorm_ref(x, weight, eps).to(out_dtype)
    return (y, *quantize_act_ref(y, pow2_scale))


def silu_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU on concatenated [gate | up]: x [M, 2I] → fp32 silu(gate) * up [M, I]."""
    i = x.shape[-1] // 2
    g, u = x[:, :i].float(), x[:, i:].float()
    return g * torch.sigmoid(g) * u


def silu_mul_quant_ref(x: torch.Tensor, out_dtype: torch.dtype = torch.bfloat16, pow2_scale: bool = False):
    """Reference for ``silu_mul_quant``: (y = silu(gate)*up in out_dtype, *quantize_act(y))."""
    y = silu_mul_ref(x).to(out_dtype)
    return (y, *quantize_act_ref(y, pow2_scale))
