"""Sampled-token log-probs and entropy from the LM head, chunked over the vocabulary.

``token_logprobs(hidden, weight, tokens)`` → (logprobs [N] fp32, entropy [N] fp32) of
softmax(hidden · weightᵀ / temperature), differentiable w.r.t. hidden and weight, without ever
holding fp32 logits for the whole vocabulary: the trainer's LM head.

Forward, per vocabulary chunk c of width C (logits z = logits_fp32(h, W_c) / T, fp32):
    online logsumexp  m' = max(m, max_j z_j);  s' = s·e^(m-m') + Σ_j e^(z_j-m')
    entropy moment    t' = e^(m-m')·(t + (m-m')·s) + Σ_j e^(z_j-m')·(z_j-m')   (t = Σ p̃·(z-m))
    target logit gathered from the chunk that holds the token;
then lse = m + log s, logprob = z_tok - lse, entropy = lse - E[z] = log s - t/s.

Backward (recomputes each chunk's logits; p = e^(z - lse)):
    ∂logprob/∂z_j = 1[j = tok] - p_j,   ∂H/∂z_j = -p_j (z_j - lse + H)
    dz = (g_lp·(1[tok] - p) - g_H·p·(z - lse + H)) / T
    dh += dz W_c,  dW_c = dzᵀ h   (dz rounded to the weight dtype for the tensor cores).
Memory: O(N·C) fp32 temporaries (C = 8192 by default: 32 KiB per token, 256 MiB at N = 8192).
C is fixed rather than sized from N so that a row's result does not depend on the batch: with
the batch-invariant logits GEMM, a row's log-prob and entropy are bitwise independent of N
(the trainer and the rollout engine must use the same chunk size to agree bitwise).
Tokens < 0 are ignored: logprob 0 and no gradient through it (entropy is still computed).
"""

from __future__ import annotations

import torch

from ..backend import Backend
from .logits import logits_fp32, matmul_fp32
from .online_softmax import logit_grads, new_state, update_stats

# Fixed, NOT derived from N: the vocabulary chunks fix the order in which a row's softmax sums
# are merged, so a row's log-prob must not depend on how many rows share the batch (strict mode).
DEFAULT_CHUNK = 8192


def _chunk_size(n: int, v: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return min(chunk_size, v)


class _TokenLogprobsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, tokens, temperature, chunk, backend):
        n = hidden.shape[0]
        v = weight.shape[0]
        dev = hidden.device
        state = new_state(n, dev)  # m, Σe^(z-m), Σe^(z-m)(z-m), target logit
        for c0 in range(0, v, chunk):
            z = logits_fp32(hidden, weight[c0:c0 + chunk], backend=backend)
            update_stats(z, c0, tokens, temperature, state, backend=backend)
            del z
        m, s, t, target = state
        lse = m + torch.log(s)
        entropy = torch.log(s) - t / s  # H = lse - E[z], E[z] = m + t/s
        valid = tokens >= 0
        logprobs = torch.where(valid, target - lse, torch.zeros_like(lse))
        ctx.save_for_backward(hidden, weight, tokens, lse, entropy)
        ctx.temperature, ctx.chunk, ctx.backend = temperature, chunk, backend
        return logprobs, entropy

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, tokens, lse, entropy = ctx.saved_tensors
        temp, chunk, backend = ctx.temperature, ctx.chunk, ctx.backend
        n, d = hidden.shape
        v = weight.shape[0]
        need_h, need_w = ctx.needs_input_grad[:2]
        valid = tokens >= 0
        g_lp = torch.zeros(n, device=hidden.device) if g_lp is None else g_lp.float() * valid
        g_ent = torch.zeros(n, device=hidden.device) if g_ent is None else g_ent.float()
        grad_h = torch.zeros(n, d, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.empty_like(weight) if need_w else None
        shift = entropy - lse  # z - lse + H = z + shift
        for c0 in range(0, v, chunk):
            c1 = min(v, c0 + chunk)
            w_c = weight[c0:c1]
            z = logits_fp32(hidden, w_c, backend=backend)
            dz = logit_grads(z, c0, tokens, lse, shift, g_lp, g_ent, temp, weight.dtype,
                             backend=backend)
            del z
            if need_h:
                matmul_fp32(dz, w_c, out=grad_h, accumulate=True, backend=backend)
            if need_w:
                grad_w[c0:c1] = matmul_fp32(dz.t(), hidden, backend=backend)
        if grad_h is not None:
            grad_h = grad_h.to(hidden.dtype)
        return grad_h, grad_w, None, None, None, None


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, *,
                   temperature: float = 1.0, chunk_size: int | None = None,
                   backend: Backend = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``tokens`` and entropy under softmax(hidden · weightᵀ / temperature).

    hidden: [..., D] bf16 (or fp16/fp32); weight: [V, D] same dtype; tokens: [...] int64
    (negative = ignored). Returns (logprobs [...] fp32, entropy [...] fp32), differentiable
    w.r.t. hidden and weight. Peak extra memory O(N · chunk_size) fp32 (default chunk 8192,
    fixed so a row's result does not depend on N). ``backend`` as in :mod:`kernels.backend`.
    """
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden [..., D]={tuple(hidden.shape)} does not match weight [V, D]={tuple(weight.shape)}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden and weight must share a dtype, got {hidden.dtype} and {weight.dtype}")
    if tokens.shape != hidden.shape[:-1]:
        raise ValueError(f"tokens must have shape {tuple(hidden.shape[:-1])}, got {tuple(tokens.shape)}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"tokens must be int64/int32, got {tokens.dtype}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lead = tokens.shape
    h2 = hidden.reshape(-1, hidden.shape[-1])
    tok = tokens.reshape(-1).long()
    if tok.numel() and int(tok.max()) >= weight.shape[0]:
        raise ValueError(f"token id {int(tok.max())} out of range for vocab {weight.shape[0]}")
    chunk = _chunk_size(h2.shape[0], weight.shape[0], chunk_size)
    lp, ent = _TokenLogprobsFn.apply(h2, weight, tok, float(temperature), chunk, backend)
    return lp.reshape(lead), ent.reshape(lead)
