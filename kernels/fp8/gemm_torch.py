"""The PyTorch implementation of the block-scaled FP8 GEMM: the CPU production path of
:func:`kernels.fp8.fp8_gemm` and :func:`kernels.fp8.fp8_gemm_grouped`.

Same math as the Triton kernel (see :func:`fp8_gemm_torch`), bitwise equal to the per-block
loop :func:`kernels.fp8.reference.fp8_gemm_blocks_ref` it is tested against; what is tuned
here for CPU speed is how the operands reach float64 and how the temporaries are reused.
"""

from __future__ import annotations

import torch

from .format import BLOCK, FP8_DTYPE, cdiv

# The float64 value of every e4m3 byte (NaN for the codes 0x7F and 0xFF, as ``.double()`` gives):
# indexing it converts fp8 → float64 ~6× faster than ``.double()`` on CPU (~1 vs ~6 ns/value).
_E4M3_F64 = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).double()


def fp8_to_f64(q: torch.Tensor) -> torch.Tensor:
    """q (e4m3, any strides) → float64, exactly ``q.double()``, by table lookup."""
    idx = q.reshape(-1).view(torch.uint8).int()
    return _E4M3_F64.to(q.device).index_select(0, idx).view(q.shape)


def fp8_gemm_torch(aq: torch.Tensor, a_scale: torch.Tensor, bq: torch.Tensor, b_scale: torch.Tensor,
                   out_dtype: torch.dtype) -> torch.Tensor:
    """The CPU GEMM, with the same math as the Triton kernel. Shapes as :func:`kernels.fp8.fp8_gemm`
    (validated there): aq [M, K], bq [N, K] e4m3 → [M, N] out_dtype.

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
    kb = cdiv(k, BLOCK)
    a, b = fp8_to_f64(aq), fp8_to_f64(bq)
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
