"""PyTorch implementations of the block-scaled FP8 recipe: the reference and the CPU path.

The recipe (DeepSeek-V3 / Ring-linear style):
- values in ``torch.float8_e4m3fn`` (max finite 448), scales in fp32, ``x ≈ q * scale``;
- activations: one scale per 1×128 tile along the reduction dimension;
- weights: one scale per 128×128 block;
- ``scale = amax / 448`` (optionally ceiled to a power of two, so ``x / scale`` never exceeds 448
  and the scale multiply is exact); an all-zero tile gets ``scale = 1`` (its values quantize to 0,
  nothing divides by zero);
- ``q = round_to_nearest_even(clamp(x / scale, -448, 448))`` computed in fp32.

The quantize functions here ARE the CPU implementation (both engines call them on CPU), and the
Triton kernels must reproduce them bitwise. ``fp8_gemm_torch`` is the CPU GEMM; ``fp8_gemm_ref``
is the float64 reference it and the Triton kernel are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
BLOCK = 128


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def scale_from_amax(amax: torch.Tensor, pow2_scale: bool) -> torch.Tensor:
    """fp32 scale for tiles with absolute maximum ``amax`` (any shape, fp32).

    ``amax == 0`` gives 1.0, and so does an amax whose scale underflows to 0 (amax < 2^-141,
    fp32 subnormals: dividing by a zero scale would give ±448 and NaN). With ``pow2_scale`` the scale is rounded UP to a power of two by
    bit manipulation (exact, no log2/exp2 approximations), so quantized values stay ≤ 448.
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


def quantize_act_ref(x: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """1×128 quantization along the last dim. x [M, K] → (xq [M, K] e4m3, scale [M, ceil(K/128)] fp32)."""
    m, k = x.shape
    kb = _cdiv(k, BLOCK)
    tiles = _padded_fp32(x, m, kb * BLOCK).view(m, kb, BLOCK)
    scale = scale_from_amax(tiles.abs().amax(dim=-1), pow2_scale)
    q = _quantize_tiles(tiles, scale[..., None]).view(m, kb * BLOCK)
    return (q if k == kb * BLOCK else q[:, :k].contiguous()), scale


def quantize_act_t_ref(x: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Transposed 1×128 quantization (tiles along M). x [M, K] → (q [K, M] e4m3, scale [K, ceil(M/128)])."""
    return quantize_act_ref(x.t(), pow2_scale)


def quantize_weight_ref(w: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """128×128 block quantization. w [N, K] → (wq [N, K] e4m3, scale [ceil(N/128), ceil(K/128)] fp32)."""
    n, k = w.shape
    nb, kb = _cdiv(n, BLOCK), _cdiv(k, BLOCK)
    blocks = _padded_fp32(w, nb * BLOCK, kb * BLOCK).view(nb, BLOCK, kb, BLOCK)
    # max is exact (order free), so the block amax can be taken over the block's rows first
    # (vectorized along the columns: faster than amax(dim=(1, 3)) on CPU), then its columns
    scale = scale_from_amax(blocks.abs().amax(dim=1).amax(dim=-1), pow2_scale)
    q = _quantize_tiles(blocks, scale[:, None, :, None]).view(nb * BLOCK, kb * BLOCK)
    return (q if (n, k) == (nb * BLOCK, kb * BLOCK) else q[:n, :k].contiguous()), scale


def expand_scale(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-element scale [R, C] for q [R, C] from a 1×128 ([R, Cb]) or 128×128 ([Rb, Cb]) scale."""
    r, c = q.shape
    rows = scale if scale.shape[0] == r else scale.repeat_interleave(BLOCK, dim=0)[:r]
    return rows.repeat_interleave(BLOCK, dim=1)[:, :c]


def dequantize_ref(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float64 value of a quantized tensor (either scale granularity)."""
    return q.double() * expand_scale(q, scale).double()


def fp8_gemm_ref(aq, a_scale, bq, b_scale, out_dtype=torch.float64) -> torch.Tensor:
    """Reference ``A @ B.T`` in float64 on dequantized operands. aq [M, K], bq [N, K] → [M, N]."""
    return (dequantize_ref(aq, a_scale) @ dequantize_ref(bq, b_scale).t()).to(out_dtype)


# The float64 value of every e4m3 byte (NaN for the codes 0x7F and 0xFF, as ``.double()`` gives):
# indexing it converts fp8 → float64 ~6× faster than ``.double()`` on CPU (~1 vs ~6 ns/value).
_E4M3_F64 = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).double()


def _fp8_to_f64(q: torch.Tensor) -> torch.Tensor:
    """q (e4m3, any strides) → float64, exactly ``q.double()``, by table lookup."""
    idx = q.reshape(-1).view(torch.uint8).int()
    return _E4M3_F64.to(q.device).index_select(0, idx).view(q.shape)


def fp8_gemm_torch(aq, a_scale, bq, b_scale, out_dtype) -> torch.Tensor:
    """The CPU GEMM, with the same math as the Triton kernel.

    For each 128-wide K block: the fp8×fp8 partial dot product is computed in float64, where it
    is EXACT (products are multiples of 2^-18 below 2^18, so 128 of them sum to < 2^43 units of
    2^-18: fits the 53-bit mantissa), hence independent of summation order and of M. It is
    rounded to fp32, multiplied by ``a_scale ⊗ b_scale`` and accumulated in fp32 in K order.
    A row's output therefore never depends on the other rows (batch invariant, bitwise).

    Each operand is converted to float64 once (table lookup); the blocks are column slices of
    it (one batched matmul over all K blocks is slower on CPU: bmm copies the strided operands).
    The per-block [M, N] temporaries are allocated once and reused (fresh large buffers cost
    page faults). The promotion stays separate fp32 ops in K order: the rounded product, then
    the add (no fused multiply-add).
    """
    m, k = aq.shape
    n = bq.shape[0]
    kb = _cdiv(k, BLOCK)
    a, b = _fp8_to_f64(aq), _fp8_to_f64(bq)
    # B's scale of column j in K block i: sb[i, j] (a 128×128 scale covers 128 columns)
    b_block_scaled = b_scale.shape[0] != n or n == 1
    sb = (b_scale.repeat_interleave(BLOCK, dim=0)[:n] if b_block_scaled else b_scale).t().contiguous()
    acc = torch.zeros(m, n, dtype=torch.float32, device=aq.device)
    part64 = torch.empty(m, n, dtype=torch.float64, device=aq.device)
    part = torch.empty_like(acc)
    scale = torch.empty_like(acc)
    for i in range(kb):
        k0, k1 = i * BLOCK, min(k, (i + 1) * BLOCK)
        torch.mm(a[:, k0:k1], b[:, k0:k1].t(), out=part64)  # exact
        part.copy_(part64)  # rounded to fp32
        torch.mul(a_scale[:, i, None], sb[i], out=scale)
        part *= scale
        acc += part
    return acc.to(out_dtype)


def rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """fp32 RMSNorm: x * rsqrt(mean(x²) + eps) * weight, all in fp32. x [M, D] → fp32 [M, D]."""
    xf = x.float()
    var = xf.pow(2).mean(dim=-1, keepdim=True)
    return xf * torch.rsqrt(var + eps) * weight.float()


def rmsnorm_quant_ref(x, weight, eps=1e-6, out_dtype=torch.bfloat16, pow2_scale=False):
    """Reference for ``rmsnorm_quant``: (y = rmsnorm(x) in out_dtype, *quantize_act(y))."""
    y = rmsnorm_ref(x, weight, eps).to(out_dtype)
    yq, ys = quantize_act_ref(y, pow2_scale)
    return y, yq, ys


def silu_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU on concatenated [gate | up]: x [M, 2I] → fp32 silu(gate) * up [M, I]."""
    i = x.shape[-1] // 2
    g, u = x[:, :i].float(), x[:, i:].float()
    return g * torch.sigmoid(g) * u


def silu_mul_quant_ref(x, out_dtype=torch.bfloat16, pow2_scale=False):
    """Reference for ``silu_mul_quant``: (y = silu(gate)*up in out_dtype, *quantize_act(y))."""
    y = silu_mul_ref(x).to(out_dtype)
    yq, ys = quantize_act_ref(y, pow2_scale)
    return y, yq, ys
