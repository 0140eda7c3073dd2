"""The PyTorch implementation of the FP8 quantizers: the CPU production path of
:mod:`kernels.fp8.quantize` (both engines quantize through it on CPU).

The format and its rounding are :mod:`kernels.fp8.format`'s; the Triton kernels reproduce these
functions bit for bit, and the tests hold both to :mod:`kernels.fp8.reference`.  What is tuned
here for CPU speed (bits unchanged): no padded copy when x fills whole tiles, the clamp in place
on the quotient, a weight block's amax over its rows first, and both orientations of
``quantize_act_both_torch`` from one fp32 copy of x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .format import BLOCK, FP8_DTYPE, FP8_MAX, cdiv, scale_from_amax


def _quantize_tiles(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # x: fp32 [..., 128] tiles (zero padded), scale broadcastable. Division (not a reciprocal
    # multiply) so the Triton kernels can reproduce it exactly with div_rn; the clamp works in
    # place on the quotient (a fresh tensor).
    return (x / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def _padded_fp32(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """x as a contiguous fp32 tensor, zero padded to [rows, cols] (whole 128-tiles): padding
    zeros leave each tile's amax unchanged, and their quantized values are cut off again. No
    copy for a contiguous fp32 x that fills whole tiles. (Contiguous because elementwise ops
    give their output the input's layout, and q must come out row-major.)"""
    xf = x.float()
    if tuple(xf.shape) != (rows, cols):
        xf = F.pad(xf, (0, cols - xf.shape[1], 0, rows - xf.shape[0]))
    return xf.contiguous()


def quantize_act_torch(x: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """1×128 quantization along the last dim. x [M, K] → (q [M, K] e4m3, scale [M, ceil(K/128)] fp32)."""
    m, k = x.shape
    kb = cdiv(k, BLOCK)
    tiles = _padded_fp32(x, m, kb * BLOCK).view(m, kb, BLOCK)
    scale = scale_from_amax(tiles.abs().amax(dim=-1), pow2_scale)
    q = _quantize_tiles(tiles, scale[..., None]).view(m, kb * BLOCK)
    return (q if k == kb * BLOCK else q[:, :k].contiguous()), scale


def quantize_act_t_torch(x: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Transposed 1×128 quantization (tiles along M).
    x [M, K] → (q [K, M] e4m3, scale [K, ceil(M/128)] fp32)."""
    return quantize_act_torch(x.t(), pow2_scale)


def quantize_act_both_torch(x: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, ...]:
    """Both orientations from one fp32 copy of x: (q, scale, qt, scale_t) (the two functions above
    start with x.float(), a no-op on it, so the bits are theirs)."""
    xf = x.float()
    return (*quantize_act_torch(xf, pow2_scale), *quantize_act_t_torch(xf, pow2_scale))


def quantize_weight_torch(w: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """128×128 block quantization. w [N, K] → (q [N, K] e4m3, scale [ceil(N/128), ceil(K/128)] fp32)."""
    n, k = w.shape
    nb, kb = cdiv(n, BLOCK), cdiv(k, BLOCK)
    blocks = _padded_fp32(w, nb * BLOCK, kb * BLOCK).view(nb, BLOCK, kb, BLOCK)
    # max is exact (order free), so the block amax can be taken over the block's rows first
    # (vectorized along the columns: faster than amax(dim=(1, 3)) on CPU), then its columns
    scale = scale_from_amax(blocks.abs().amax(dim=1).amax(dim=-1), pow2_scale)
    q = _quantize_tiles(blocks, scale[:, None, :, None]).view(nb * BLOCK, kb * BLOCK)
    return (q if (n, k) == (nb * BLOCK, kb * BLOCK) else q[:n, :k].contiguous()), scale
