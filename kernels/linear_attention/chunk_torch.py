"""PyTorch chunked form of the linear-attention recurrence: the CPU path (prefill and training).

Same math as ``naive.py`` regrouped in chunks of ``CHUNK = 64`` tokens, chunk boundaries fixed
from each sequence's start (the Triton kernel uses the same boundaries).  Within a chunk of ``c``
tokens starting from state ``S`` (token ``i`` = 0..c-1, λ = exp(g)):

    o_i    = scale · ( λ^{i+1} q_i S  +  Σ_{j≤i} λ^{i-j} (q_i·k_j) v_j )      (inter + intra)
    S_next = λ^c S + Σ_j λ^{c-1-j} k_jᵀ v_j

The intra-chunk parts of all chunks are batched matrix products; only the [K, V] state carry is
a loop over chunks.  Autograd comes from the torch ops (all of q, k, v, initial_state and even
the decay get gradients).  Computes in float32 (float64 if the inputs are float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 64


def chunk_torch(q, k, v, decay, scale, initial_state=None, cu_seqlens=None, output_final_state=False):
    """Shapes and meaning as :func:`kernels.linear_attention.chunk` (validated there)."""
    if cu_seqlens is None:
        return _chunk_dense(q, k, v, decay, scale, initial_state, output_final_state)
    # Packed sequences: one dense call per sequence (each is its own B=1 problem; chunks are
    # aligned to the sequence start, so a sequence's outputs never see its neighbours).
    cu = cu_seqlens.tolist()
    outs, finals = [], []
    for n in range(len(cu) - 1):
        h0 = None if initial_state is None else initial_state[n:n + 1]
        o, ht = _chunk_dense(q[:, cu[n]:cu[n + 1]], k[:, cu[n]:cu[n + 1]], v[:, cu[n]:cu[n + 1]],
                             decay, scale, h0, output_final_state)
        outs.append(o)
        finals.append(ht)
    o = torch.cat(outs, 1)
    return o, (torch.cat(finals, 0) if output_final_state else None)


def _chunk_dense(q, k, v, decay, scale, h0, output_final_state):
    B, T, H, D = q.shape
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    C = CHUNK
    NT = -(-T // C)
    g = decay.to(dt)
    if NT == 0:
        o = q.new_zeros(B, 0, H, v.shape[-1])
        ht = (h0.to(dt) if h0 is not None else q.new_zeros(B, H, D, v.shape[-1], dtype=dt))
        return o, (ht if output_final_state else None)

    def blocks(x):  # [B, T, H, D] -> [B, H, NT, C, D], zero-padded at the end
        x = x.to(dt).transpose(1, 2)
        x = F.pad(x, (0, 0, 0, NT * C - T))
        return x.reshape(B, H, NT, C, x.shape[-1])

    qc, kc, vc = blocks(q), blocks(k), blocks(v)
    i = torch.arange(C, device=q.device, dtype=dt)
    diff = i[:, None] - i[None, :]
    # decay_intra[h, i, j] = λ_h^(i-j) for j <= i, else 0 (clamped so exp never overflows)
    decay_intra = torch.where(diff >= 0, torch.exp(g[:, None, None] * diff.clamp(min=0)), 0.0)
    decay_q = torch.exp(g[:, None] * (i + 1))              # [H, C]: λ^{i+1}
    decay_k = torch.exp(g[:, None] * (C - 1 - i))          # [H, C]: λ^{C-1-j}
    lam_c = torch.exp(g * C)[None, :, None, None]          # [1, H, 1, 1]

    attn = (qc @ kc.transpose(-1, -2)) * decay_intra[None, :, None]
    intra = attn @ vc                                                    # [B, H, NT, C, V]
    kv = (kc * decay_k[None, :, None, :, None]).transpose(-1, -2) @ vc   # [B, H, NT, D, V]
    S = h0.to(dt) if h0 is not None else qc.new_zeros(B, H, D, vc.shape[-1])
    outs = []
    for n in range(NT):  # carry the fp32 state chunk to chunk; add its contribution per chunk
        outs.append(intra[:, :, n] + (qc[:, :, n] @ S) * decay_q[None, :, :, None])
        s_last = S
        if n + 1 < NT:
            S = lam_c * S + kv[:, :, n]
    o = (scale * torch.stack(outs, 2)).reshape(B, H, NT * C, -1)[:, :, :T].transpose(1, 2)
    ht = None
    if output_final_state:
        # The last chunk may be partial (c tokens): decay to its real end, not to the padding.
        c = T - (NT - 1) * C
        dk_last = torch.where(i < c, torch.exp(g[:, None] * (c - 1 - i).clamp(min=0)), 0.0)
        ht = (torch.exp(g * c)[None, :, None, None] * s_last
              + (kc[:, :, -1] * dk_last[None, :, :, None]).transpose(-1, -2) @ vc[:, :, -1])
    return o.to(q.dtype), ht
