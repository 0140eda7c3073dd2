"""Row-tiled linear layer: ``y = x Wᵀ`` with each row's bits independent of the batch.

MKL's GEMM picks its blocking by M, so row i of an M-row product is not the same bits as the
same row in an M'-row product (every M ≥ 2 tested differs from M = 1; ``MKL_CBWR=AVX2,STRICT``
does not change that).  With M fixed it is: the rows are cut into tiles of exactly
``TILE_ROWS`` (the last one zero-padded) and the tiles go through one ``bmm`` — a batch of
identical 16-row GEMMs whose results depend only on the tile's contents, not on the number of
tiles, a row's place in its tile, or the thread count (1 and 2 checked, across processes).
K is never split.  Costs the padding of the last tile (up to 15 rows) and a copy of x, unless x
already is that operand (a whole number of tiles, contiguous, 64-byte aligned like a fresh
tensor): then the bmm reads x itself, the same bytes at the same alignment, so the same bits.

On CPU in fp32 the C kernel (``strict_cpu.c``) computes it instead: each element summed over K
in order, in 4-row × 16-column register blocks — a row's bits do not depend on the other rows,
so there are no tiles to pad (docs/decisions.md, "Strict mode").  On CUDA (bf16, fp16, fp32) the
Triton kernel (``strict_triton.py``): one fixed tile configuration, the K loop in order, fp32
accumulation, rounded once to x's dtype.  The tiles above run where neither can.

Backward: the gradients are ordinary GEMMs (only the forward's bits must agree between the
engines; the rollout never differentiates).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import cpu, cuda

TILE_ROWS = 16
_ALIGN = 64  # bytes: torch's CPU allocator's alignment (MKL picks kernels by the operands' alignment)


def _rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x ``[N, K]``, weight ``[O, K]`` → ``[N, O]``: the C kernel on CPU (fp32), the Triton kernel
    on CUDA, else the tiles."""
    y = cpu.linear(x, weight)
    if y is None:
        y = cuda.linear(x, weight)
    return _tiled(x, weight) if y is None else y


def _tiled(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x ``[N, K]``, weight ``[O, K]`` → ``[N, O]`` through fixed 16-row tiles (one ``bmm``)."""
    N, K = x.shape
    tiles = -(-N // TILE_ROWS)
    if N % TILE_ROWS == 0 and x.is_contiguous() and x.data_ptr() % _ALIGN == 0:
        padded = x  # already what the copy would be: whole tiles, contiguous, aligned as a fresh tensor
    else:
        padded = x.new_zeros(tiles * TILE_ROWS, K)
        padded[:N] = x
    wt = weight.t().unsqueeze(0).expand(tiles, K, weight.shape[0])  # the same Wᵀ for every tile
    return torch.bmm(padded.view(tiles, TILE_ROWS, K), wt).view(-1, weight.shape[0])[:N]


class _TiledLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return _rows(x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        gx = grad @ weight if ctx.needs_input_grad[0] else None
        gw = grad.t() @ x if ctx.needs_input_grad[1] else None
        return gx, gw


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` (no bias), batch invariant: x ``[..., K]`` in the weight's dtype,
    weight ``[O, K]`` → ``[..., O]``.  Differentiable in x and weight."""
    if x.dtype != weight.dtype:
        raise ValueError(f"batch_invariant.linear: x is {x.dtype}, weight {weight.dtype}; cast x first")
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"batch_invariant.linear: x has {x.shape[-1]} features, weight {weight.shape[-1]}")
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] == 0:
        return F.linear(x, weight)
    return _TiledLinear.apply(rows, weight).view(*x.shape[:-1], weight.shape[0])


class _GroupedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, counts: list[int], weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.counts = counts
        if x.is_cuda:
            return cuda.linear(x, weight, counts)
        ends = torch.tensor(counts, dtype=torch.int64).cumsum(0)
        return cpu.linear(x, weight, ends)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grads, xs = grad.split(ctx.counts), x.split(ctx.counts)
        gx = torch.cat([g @ w for g, w in zip(grads, weight)]) if ctx.needs_input_grad[0] else None
        gw = torch.stack([g.t() @ xe for g, xe in zip(grads, xs)]) if ctx.needs_input_grad[2] else None
        return gx, None, gw


def grouped_linear(x: torch.Tensor, counts: list[int], weight: torch.Tensor) -> torch.Tensor | None:
    """One weight per group of rows, batch invariant: x ``[N, K]`` with its rows grouped
    (``counts[g]`` rows for group g, in order), weight ``[G, O, K]`` → ``[N, O]``, each row
    ``x_n W_gᵀ`` the same bits as :func:`linear` gives it alone.  One call of the C kernel (CPU,
    fp32) or the Triton kernel (CUDA) for every group (the MoE's experts); None where neither
    runs: the caller then runs :func:`linear` per group.  Differentiable in x and weight."""
    if not (cpu.takes(x, weight) or cuda.linear_takes(x, weight)):
        return None
    return _GroupedLinear.apply(x, counts, weight)


def no_grouped_linear(x: torch.Tensor, counts: list[int], weight: torch.Tensor) -> None:
    """:func:`grouped_linear` where there is no C kernel: the exported model code (plain
    transformers, ``trainer.ring_linear.remote_code``) calls this in its place."""
    return None


__all__ = ["TILE_ROWS", "linear", "grouped_linear", "no_grouped_linear"]
