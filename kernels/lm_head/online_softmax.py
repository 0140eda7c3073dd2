"""Per-chunk softmax statistics and logit gradients for ``token_logprobs`` (one pass each).

State (fp32 [4, N]): running max m, Σ e^(z-m), Σ e^(z-m)·(z-m), and the sampled token's logit.
``update_stats(z, c0, tokens, temperature, state)`` folds a logits chunk z [N, C] (vocabulary
columns c0 … c0+C) into it; ``logit_grads(z, c0, tokens, lse, shift, g_lp, g_ent, temperature,
dtype)`` returns dz [N, C] in ``dtype`` (see logprobs.py for the formulas).
CUDA → Triton (one read of z per chunk instead of ~8 PyTorch passes); CPU → PyTorch
(``backend=`` as in :mod:`kernels.backend`).
"""

from __future__ import annotations

import torch

from ..backend import HAS_TRITON, Backend, resolve_backend, tl, triton

if HAS_TRITON:

    @triton.jit
    def _stats_kernel(z_ptr, tok_ptr, st_ptr, N, C, c0, stride_z, temperature,
                      BLOCK: tl.constexpr):
        row = tl.program_id(0)
        m = tl.load(st_ptr + row)
        s = tl.load(st_ptr + N + row)
        t = tl.load(st_ptr + 2 * N + row)
        for c in range(0, C, BLOCK):
            offs = c + tl.arange(0, BLOCK)
            mask = offs < C
            z = tl.load(z_ptr + row * stride_z + offs, mask=mask, other=float("-inf"))
            z = tl.math.div_rn(z, temperature)
            m_new = tl.maximum(m, tl.max(z, axis=0))
            zm = z - m_new
            e = tl.exp(zm)  # 0 where masked
            alpha = tl.exp(m - m_new)
            delta = tl.where(s > 0, m - m_new, 0.0)
            t = alpha * (t + delta * s) + tl.sum(tl.where(mask, e * zm, 0.0), axis=0)
            s = alpha * s + tl.sum(e, axis=0)
            m = m_new
        tl.store(st_ptr + row, m)
        tl.store(st_ptr + N + row, s)
        tl.store(st_ptr + 2 * N + row, t)
        tok = tl.load(tok_ptr + row)
        hit = (tok >= c0) & (tok < c0 + C)
        idx = tl.where(hit, tok - c0, 0)
        zt = tl.math.div_rn(tl.load(z_ptr + row * stride_z + idx), temperature)
        tl.store(st_ptr + 3 * N + row, zt, mask=hit)

    @triton.jit
    def _grad_kernel(z_ptr, dz_ptr, tok_ptr, lse_ptr, shift_ptr, glp_ptr, gent_ptr, C, c0,
                     stride_z, stride_dz, temperature, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < C
        z = tl.math.div_rn(tl.load(z_ptr + row * stride_z + offs, mask=mask, other=0.0), temperature)
        lse = tl.load(lse_ptr + row)
        g_lp = tl.load(glp_ptr + row)
        g_ent = tl.load(gent_ptr + row)
        p = tl.exp(z - lse)
        dz = -p * (g_lp + g_ent * (z + tl.load(shift_ptr + row)))
        dz += tl.where(offs + c0 == tl.load(tok_ptr + row), g_lp, 0.0)
        dz = tl.math.div_rn(dz, temperature)
        tl.store(dz_ptr + row * stride_dz + offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)


def new_state(n: int, device: torch.device) -> torch.Tensor:
    """The statistics before any chunk: fp32 [4, N] (m = -inf, the sums 0)."""
    st = torch.zeros(4, n, dtype=torch.float32, device=device)
    st[0] = float("-inf")
    return st


def update_stats(z: torch.Tensor, c0: int, tokens: torch.Tensor, temperature: float, state: torch.Tensor, *,
                 backend: Backend = "auto") -> None:
    """Fold logits chunk z [N, C] fp32 (columns c0…c0+C-1) into state [4, N] in place."""
    n, c = z.shape
    if resolve_backend("lm_head.update_stats", z, backend) == "triton":
        _stats_kernel[(n,)](z, tokens, state, n, c, c0, z.stride(0), float(temperature),
                            BLOCK=min(4096, triton.next_power_of_2(c)), num_warps=8)
        return
    m, s, t, target = state
    z = z / temperature
    hit = (tokens >= c0) & (tokens < c0 + c)
    zt = z.gather(1, (tokens - c0).clamp(0, c - 1)[:, None]).squeeze(1)
    target.copy_(torch.where(hit, zt, target))
    m_new = torch.maximum(m, z.amax(dim=1))
    zm = z.sub_(m_new[:, None])
    e = torch.exp(zm)
    alpha = torch.exp(m - m_new)
    delta = torch.where(s > 0, m - m_new, torch.zeros_like(m))
    t.copy_(alpha * (t + delta * s) + torch.linalg.vecdot(e, zm))
    s.copy_(alpha * s + e.sum(dim=1))
    m.copy_(m_new)


def logit_grads(z: torch.Tensor, c0: int, tokens: torch.Tensor, lse: torch.Tensor, shift: torch.Tensor,
                g_lp: torch.Tensor, g_ent: torch.Tensor, temperature: float, dtype: torch.dtype, *,
                backend: Backend = "auto") -> torch.Tensor:
    """dz [N, C] in ``dtype`` for logits chunk z [N, C] fp32 (z is consumed on the CPU path)."""
    n, c = z.shape
    if resolve_backend("lm_head.logit_grads", z, backend) == "triton":
        dz = torch.empty(n, c, dtype=dtype, device=z.device)
        block = 1024
        _grad_kernel[(n, triton.cdiv(c, block))](
            z, dz, tokens, lse, shift, g_lp, g_ent, c, c0, z.stride(0), dz.stride(0),
            float(temperature), BLOCK=block, num_warps=4,
        )
        return dz
    z = z / temperature
    p = torch.exp(z - lse[:, None])
    dz = z.add_(shift[:, None]).mul_(g_ent[:, None]).add_(g_lp[:, None]).mul_(p).neg_()
    hit = ((tokens >= c0) & (tokens < c0 + c)).nonzero().squeeze(1)
    dz[hit, tokens[hit] - c0] += g_lp[hit]
    return dz.div_(temperature).to(dtype)
