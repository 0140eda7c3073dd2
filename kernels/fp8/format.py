"""The block-scaled FP8 format (DeepSeek-V3 / Ring-linear style) that every FP8 op shares.

- values in ``torch.float8_e4m3fn`` (max finite 448), scales in fp32, ``x ≈ q * scale``;
- activations: one scale per 1×128 tile along the reduction dimension;
- weights: one scale per 128×128 block;
- ``scale = amax / 448`` (optionally ceiled to a power of two, so ``x / scale`` never exceeds 448
  and the scale multiply is exact); an all-zero tile gets ``scale = 1`` (its values quantize to 0,
  nothing divides by zero);
- ``q = round_to_nearest_even(clamp(x / scale, -448, 448))`` computed in fp32.

This module owns the constants, the scale rule (:func:`scale_from_amax`, which the reference, the
PyTorch path and the Triton kernels all follow bit for bit) and the operand checks of the ops.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
BLOCK = 128


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for non-negative ints."""
    return (a + b - 1) // b


def scale_from_amax(amax: torch.Tensor, pow2_scale: bool) -> torch.Tensor:
    """fp32 scale for tiles with absolute maximum ``amax`` (any shape, fp32).

    ``amax == 0`` gives 1.0, and so does an amax whose scale underflows to 0 (amax < 2^-141,
    fp32 subnormals: dividing by a zero scale would give ±448 and NaN). With ``pow2_scale`` the
    scale is rounded UP to a power of two by bit manipulation (exact, no log2/exp2
    approximations), so quantized values stay ≤ 448.
    """
    amax = amax.float()
    # Tensor ÷ tensor: PyTorch's CUDA kernel turns ÷ a Python scalar into × its reciprocal,
    # which is not the correctly rounded quotient the Triton kernels (div_rn) compute.
    scale = amax / torch.full_like(amax, FP8_MAX)
    scale = torch.where(scale > 0, scale, 1.0)
    if pow2_scale:
        bits = scale.view(torch.int32)
        exponent = bits & 0x7F800000
        mantissa = bits & 0x007FFFFF
        bits = torch.where(mantissa != 0, exponent + 0x00800000, exponent)
        scale = bits.view(torch.float32)
    return scale


def check_2d(name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...] | None = None) -> None:
    """ValueError unless ``t`` is 2-D (and, given ``dtypes``, of one of them)."""
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {dtypes}, got {t.dtype}")
