"""Plain float64 forward of the whole Ring-linear model, for parity tests only.

Written from DESIGN.md §3 and the conventions listed in :mod:`models.ring_linear`, independently
of ``kernels/`` and of both engines' model classes: it reads a state dict by the published
weight names and runs one sequence at a time, token by token in the linear-attention layers
(the naive recurrence ``S_t = λ S_{t-1} + k_tᵀ v_t``, ``o_t = q_t S_t / √d``), with an explicit
masked softmax in the softmax layers and a per-token loop over the chosen experts.  Slow on
purpose; float64 everywhere.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def _slopes(n: int) -> list[float]:
    """ALiBi slopes 2^(-8(h+1)/n); for n not a power of two, the standard interleave."""
    def pow2(m):
        return [2.0 ** (-8.0 * (i + 1) / m) for i in range(m)]

    if n & (n - 1) == 0:
        return pow2(n)
    p = 2 ** int(math.floor(math.log2(n)))
    return pow2(p) + pow2(2 * p)[0::2][: n - p]


def _norm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _rope(x, pos, rot, theta):
    """NeoX rotation of the first ``rot`` dims of each head; x [H, d] at position ``pos``."""
    half = rot // 2
    freqs = torch.tensor([pos / theta ** (2 * i / rot) for i in range(half)], dtype=F64)
    c, s = freqs.cos(), freqs.sin()
    x1, x2 = x[:, :half], x[:, half:rot]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, x[:, rot:]], -1)


def _swiglu(sd, prefix, x):
    g = x @ sd[prefix + "gate_proj.weight"].T
    u = x @ sd[prefix + "up_proj.weight"].T
    return (g * torch.sigmoid(g) * u) @ sd[prefix + "down_proj.weight"].T


def reference_logits(state_dict: dict[str, torch.Tensor], config, tokens: list[int]) -> torch.Tensor:
    """Logits float64 ``[T, V]`` of one sequence (no padding) under the weights ``state_dict``
    (published names) and ``config`` (a ``BailingMoeLinearV2Config``).  Differentiable in the
    weights (routing choices aside): given float64 leaves that require grad, its autograd gives
    the reference gradients."""
    c = config
    sd = {k: v.to("cpu", F64) for k, v in state_dict.items()}
    T, D, H, KV, d = len(tokens), c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    L, G, eps = c.num_hidden_layers, c.layer_group_size, c.rms_norm_eps
    rot = int(d * c.partial_rotary_factor)
    x = sd["model.word_embeddings.weight"][torch.tensor(tokens)]            # [T, D]
    for l in range(L):
        p = f"model.layers.{l}."
        a = p + "attention."
        h = _norm(x, sd[p + "input_layernorm.weight"], eps)
        softmax = (l + 1) % G == 0
        nh_kv = KV if softmax else H
        qkv = h @ sd[a + "query_key_value.weight"].T
        if not softmax and c.linear_silu:
            qkv = qkv * torch.sigmoid(qkv)
        q = qkv[:, : H * d].reshape(T, H, d)
        k = qkv[:, H * d: (H + nh_kv) * d].reshape(T, nh_kv, d)
        v = qkv[:, (H + nh_kv) * d:].reshape(T, nh_kv, d)
        if c.use_qk_norm:
            q = _norm(q, sd[a + "query_layernorm.weight"], eps)
            k = _norm(k, sd[a + "key_layernorm.weight"], eps)
        q = torch.stack([_rope(q[t], t, rot, c.rope_theta) for t in range(T)])
        k = torch.stack([_rope(k[t], t, rot, c.rope_theta) for t in range(T)])
        o = torch.zeros(T, H, d, dtype=F64)
        if softmax:
            rep = H // KV
            for hh in range(H):
                kh, vh = k[:, hh // rep], v[:, hh // rep]
                for t in range(T):
                    s = (kh[: t + 1] @ q[t, hh]) / math.sqrt(d)
                    pr = torch.exp(s - s.max())
                    o[t, hh] = (pr / pr.sum()) @ vh[: t + 1]
        else:
            f = 1.0 - (l - c.linear_decay_layer_offset) / (L - 1) + 1e-5
            # The log-decay is an fp32 constant of the layer in both engines (rounded once from
            # float64); round the same way so a float64 run of the model can match to ~1e-12.
            lam = torch.exp((-torch.tensor(_slopes(H), dtype=F64) * f).to(torch.float32).to(F64))
            for hh in range(H):
                S = torch.zeros(d, d, dtype=F64)
                for t in range(T):
                    S = lam[hh] * S + torch.outer(k[t, hh], v[t, hh])
                    o[t, hh] = (q[t, hh] / math.sqrt(d)) @ S
            o = o.reshape(T, H * d)
            o = _norm(o.reshape(T, c.group_norm_size, -1), 1.0, eps).reshape(T, H * d) * sd[a + "g_norm.weight"]
            o = o * torch.sigmoid(h @ sd[a + "g_proj.weight"].T)
        x = x + o.reshape(T, H * d) @ sd[a + "dense.weight"].T
        h = _norm(x, sd[p + "post_attention_layernorm.weight"], eps)
        m = p + "mlp."
        if l < c.first_k_dense_replace:
            x = x + _swiglu(sd, m, h)
            continue
        E, per = c.num_experts, c.num_experts // c.n_group
        out = torch.zeros(T, D, dtype=F64)
        for t in range(T):
            score = torch.sigmoid(sd[m + "gate.weight"] @ h[t])
            biased = (score + sd[m + "gate.expert_bias"]).tolist()
            groups = [sum(sorted(biased[g * per:(g + 1) * per], reverse=True)[:2]) for g in range(c.n_group)]
            keep = sorted(range(c.n_group), key=lambda g: (-groups[g], g))[: c.topk_group]
            allowed = [e for e in range(E) if e // per in keep] if c.n_group > 1 else list(range(E))
            top = sorted(allowed, key=lambda e: (-biased[e], e))[: c.num_experts_per_tok]
            w = score[top]
            if c.norm_topk_prob and len(top) > 1:
                w = w / w.sum()
            w = w * c.routed_scaling_factor
            for e, we in sorted(zip(top, w), key=lambda pair: pair[0]):
                out[t] += we * _swiglu(sd, f"{m}experts.{e}.", h[t])
        if c.num_shared_experts:
            out = out + _swiglu(sd, m + "shared_experts.", h)
        x = x + out
    x = _norm(x, sd["model.norm.weight"], eps)
    return x @ sd["lm_head.weight"].T


__all__ = ["reference_logits"]
