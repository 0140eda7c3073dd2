"""Causal softmax attention whose result for a query is the same bits however it is batched:
one decode query, a row of a whole-sequence prefill, a piece of a chunked prefill.

For a query at position p (keys 0..p visible), per head, with scale c:

    s_j = c · q·k_j                     scores: 16-query × 16-key tiles, one bmm (fixed shapes)
    m   = max_j s_j                     exact (max rounds nothing), detached
    P_j = exp(s_j − m) if j ≤ p else 0
    [Σ_j P_j v_j, Σ_j P_j] per key block of KEY_BLOCK keys: one bmm of the 16×16 tile of P with
                                        [v, 1] (16 × (d+1)); K = 16 always
    o   = (Σ_blocks in order) / (the same sum of the ones column)

Why this is invariant.  Every GEMM has the same shapes whatever the batch (a query tile of 16
rows, a key block of 16), and a row's result in such a bmm does not depend on its tile-mates or
on the number of tiles (tests/kernels/test_batch_invariant.py).  The blocks are added in key
order; a block a query cannot see holds P = 0 exactly and adds exact zeros, so a decode that
stops at block p // 16 and a prefill that carries on to the sequence's last block agree.
Masked keys must be finite (0 · NaN is NaN): the caller zeroes keys past a sequence's end.

The max over all visible keys (instead of an online running max) costs one more pass over the
scores and makes the arithmetic simpler; it is exact, so it adds nothing order-dependent.
Memory: the scores and P are ``[G, H, Tq/16, S/16, 16, 16]``, the block products
``[G, H, Tq/16, S/16, 16, d+1]`` — fine at demo lengths; long contexts would want a loop over
query tiles.

On CPU in fp32 the C kernel (``strict_cpu.c``) computes the forward instead, per query and head
over its visible keys in order (scores, max, ``Σ P v / Σ P`` in fp64): no tiles, no padding,
keys past the query never read; the rollout engine calls it on its paged cache
(:func:`paged_attention`).  On CUDA the Triton kernel (``strict_triton.py``) does the same per
(query, head): the sums over keys in fixed blocks of 32 from position 0, in fp32.

Backward (training): only the forward's bits must agree between the engines, so the gradient is
that of ordinary masked attention (``F.scaled_dot_product_attention``, fast mode's op, causal or
with the positions' mask), recomputed from the saved q, k, v in the backward: the same function,
without autograd through the tiles' expanded copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import cpu, cuda
from .recompute import recomputed_grads

KEY_BLOCK = 16    # keys per block: the K of the P·V GEMM and the N of the score GEMM
QUERY_TILE = 16   # queries per tile: the M of both GEMMs


def _pad_to(x: torch.Tensor, dim: int, multiple: int) -> torch.Tensor:
    size = x.shape[dim]
    extra = -size % multiple
    if not extra:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat((x, x.new_zeros(shape)), dim=dim)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
              scale: float, kv_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Causal GQA attention, batch invariant; differentiable in q, k, v (backward: see above).

    Args:
        q: ``[G, Tq, H, d]`` queries of G sequences (padded query rows allowed).
        k, v: ``[G, S, KV, d]`` every sequence's keys and values from position 0 (H % KV == 0);
            entries past a sequence's end must be finite (zeros).
        positions: int ``[G, Tq]`` each query's position: it sees keys ``0..position``.
            A padded row must still see key 0 (use position 0) and its output is garbage.
        scale: the score scale (1/√d).
        kv_dtype: the dtype the rollout engine's KV cache stores K and V in (the model dtype),
            or None.  The trainer passes it: K and V are rounded to it as the engine's cache
            rounds them, and the CUDA kernel reads them in it, as it reads the engine's cache
            (one compiled kernel for both engines: ``strict_triton.py``).
    Returns:
        ``[G, Tq, H, d]`` in q's dtype.
    """
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"batch_invariant.attention: {q.shape[2]} query heads are not a multiple of "
                         f"{k.shape[2]} KV heads")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _Attention.apply(q, k, v, positions, scale, kv_dtype)
    return _attention_forward(q, k, v, positions, scale, kv_dtype)


def _attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
             scale: float, kv_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The forward's bits: the C kernel on CPU in fp32 (``strict_cpu.c``: per query, its visible
    keys in order — the same arithmetic without tiles), the Triton kernel on CUDA, else the
    blocked tiles below."""
    if kv_dtype is not None:  # the engine's cache rounding
        k, v = k.to(kv_dtype), v.to(kv_dtype)
    if q.is_cuda:
        out = cuda.attention(q, k, v, positions, scale)
    else:
        out = cpu.attention(q, k.to(q.dtype), v.to(q.dtype), positions, scale)
    return _blocked(q, k, v, positions, scale) if out is None else out


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, block: int,
                    positions: torch.Tensor, scale: float) -> torch.Tensor | None:
    """The rollout engine's call: :func:`attention`'s forward reading the keys where vLLM's paged
    cache holds them (the contract of :func:`.cpu.paged_attention`), by the C kernel (CPU, fp32)
    or the Triton kernel (CUDA) — the bits :func:`attention` computes with it.  None where
    neither runs (the caller then gathers the keys and runs :func:`attention`)."""
    out = cpu.paged_attention(q, k, v, table, block, positions, scale)
    return cuda.paged_attention(q, k, v, table, block, positions, scale) if out is None else out


class _Attention(torch.autograd.Function):
    """The blocked forward; ordinary masked attention's gradient backward (recomputed)."""

    @staticmethod
    def forward(ctx, q, k, v, positions, scale, kv_dtype):
        ctx.save_for_backward(q, k, v, positions)
        ctx.scale = scale
        return _attention_forward(q, k, v, positions, scale, kv_dtype)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, positions = ctx.saved_tensors
        fast = lambda q, k, v: _masked_attention(q, k, v, positions, ctx.scale)  # noqa: E731
        return (*recomputed_grads(fast, (q, k, v), ctx.needs_input_grad[:3], grad), None, None, None)


def _masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """The same function in plain ops (SDPA), shapes as :func:`attention`: query i sees keys
    ``0..positions[:, i]`` — ``is_causal`` when the queries are positions 0..T-1 of the keys."""
    Tq, S = q.shape[1], k.shape[1]
    causal = Tq == S and torch.equal(positions, torch.arange(Tq, device=q.device).expand_as(positions))
    mask = None if causal else (torch.arange(S, device=q.device) <= positions[:, None, :, None])
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                       is_causal=causal, scale=scale, enable_gqa=k.shape[2] != q.shape[2])
    return o.transpose(1, 2)


def _blocked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
             scale: float, kv_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The forward's bits (the module docstring's arithmetic); shapes as :func:`attention`."""
    if kv_dtype is not None:  # the engine's cache rounding
        k, v = k.to(kv_dtype), v.to(kv_dtype)
    k, v = k.to(q.dtype), v.to(q.dtype)
    G, Tq, H, d = q.shape
    S, KV = k.shape[1], k.shape[2]
    q, positions = _pad_to(q, 1, QUERY_TILE), _pad_to(positions, 1, QUERY_TILE)
    k, v = _pad_to(k, 1, KEY_BLOCK), _pad_to(v, 1, KEY_BLOCK)
    nq, nk, rep = q.shape[1] // QUERY_TILE, k.shape[1] // KEY_BLOCK, H // KV
    # tiles as fresh contiguous [n, 16, ·] operands, one per (sequence, head, query tile, key block)
    qt = q.view(G, nq, QUERY_TILE, H, d).permute(0, 3, 1, 2, 4)                    # [G, H, nq, 16, d]
    qt = qt[:, :, :, None].expand(G, H, nq, nk, QUERY_TILE, d).reshape(-1, QUERY_TILE, d)
    kb = k.view(G, nk, KEY_BLOCK, KV, 1, d).expand(G, nk, KEY_BLOCK, KV, rep, d)
    kb = kb.reshape(G, nk, KEY_BLOCK, H, d).permute(0, 3, 1, 2, 4)                  # [G, H, nk, 16, d]
    kb = kb[:, :, None].expand(G, H, nq, nk, KEY_BLOCK, d).reshape(-1, KEY_BLOCK, d)
    scores = torch.bmm(qt, kb.transpose(1, 2)).view(G, H, nq, nk, QUERY_TILE, KEY_BLOCK) * scale
    key_pos = torch.arange(nk * KEY_BLOCK, device=q.device).view(1, 1, 1, nk, 1, KEY_BLOCK)
    query_pos = positions.view(G, 1, nq, 1, QUERY_TILE, 1)
    visible = key_pos <= query_pos                                                 # [G, 1, nq, nk, 16, 16]
    masked = scores.masked_fill(~visible, float("-inf"))
    m = masked.amax(dim=(3, 5), keepdim=True).detach()                             # exact
    p = torch.where(visible, torch.exp(masked - m), 0.0)
    # [v, 1]: the same GEMM yields Σ P v and Σ P for the block
    v1 = torch.cat((v, v.new_ones(*v.shape[:-1], 1)), dim=-1)
    vb = v1.view(G, nk, KEY_BLOCK, KV, 1, d + 1).expand(G, nk, KEY_BLOCK, KV, rep, d + 1)
    vb = vb.reshape(G, nk, KEY_BLOCK, H, d + 1).permute(0, 3, 1, 2, 4)
    vb = vb[:, :, None].expand(G, H, nq, nk, KEY_BLOCK, d + 1).reshape(-1, KEY_BLOCK, d + 1)
    blocks = torch.bmm(p.reshape(-1, QUERY_TILE, KEY_BLOCK), vb).view(G, H, nq, nk, QUERY_TILE, d + 1)
    total = blocks[:, :, :, 0]
    for b in range(1, nk):  # in key order; invisible blocks add exact zeros
        total = total + blocks[:, :, :, b]
    o = total[..., :d] / total[..., d:]                                            # [G, H, nq, 16, d]
    return o.permute(0, 2, 3, 1, 4).reshape(G, nq * QUERY_TILE, H, d)[:, :Tq]


__all__ = ["KEY_BLOCK", "QUERY_TILE", "attention", "paged_attention"]
