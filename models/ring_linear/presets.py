"""Presets of the Ring-linear architecture (seeded random checkpoints of them:
:mod:`trainer.ring_linear.random_checkpoint`).

* ``tiny``  — a few million parameters (CPU demo and tests): 4 layers in groups of 2 (linear,
  softmax, linear, softmax), a dense first layer, 8 experts in 4 groups.  head_dim 64, a size
  vLLM's CPU attention backend supports.
* ``mini``  — Ring-mini-linear-2.0 shapes (its published ``config.json``).
* ``ring-mini-linear-2.0`` — the published ``config.json`` of ``inclusionAI/Ring-mini-linear-2.0``
  field for field (``mini``'s shapes plus its token ids and remaining keys); benchmarks build it
  with random weights (``benchmarks/gpu/rollout.py``).
* ``mini-1b`` — Ring-mini's layer shapes at 10 layers and 32 experts (1.2 B parameters with a
  small vocabulary): the GPU recipe's model.
* ``flash`` — Ring-flash-linear-2.0 shapes (32 layers, G = 8, d_model 4096, 32 heads of 128,
  4 KV heads, FFN 9216, 256 experts of 1024, top-8 of 8 groups / top-4 groups, 1 shared).

:func:`parameter_count` counts parameters analytically (no instantiation): ``mini`` gives
16.4 B total / 0.96 B active without embeddings and lm_head (1.6 B with them); ``flash``
104.2 B / 6.2 B — the published 16 B / 957 M and 104 B / 6.1 B "activations".
"""

from __future__ import annotations

from .config import ARCHITECTURE, BailingMoeLinearV2Config

_COMMON = dict(
    vocab_size=157184, head_dim=128, num_key_value_heads=4, first_k_dense_replace=1,
    group_norm_size=4, use_qk_norm=True, partial_rotary_factor=0.5, rope_theta=1_000_000.0,
    rms_norm_eps=1e-6, max_position_embeddings=131072, num_experts=256, num_experts_per_tok=8,
    num_shared_experts=1, n_group=8, topk_group=4, routed_scaling_factor=2.5,
    score_function="sigmoid", moe_router_enable_expert_bias=True, norm_topk_prob=True,
    tie_word_embeddings=False, architectures=[ARCHITECTURE],
)

PRESETS: dict[str, dict] = {
    "tiny": dict(
        vocab_size=512, hidden_size=256, num_hidden_layers=4, layer_group_size=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, intermediate_size=512,
        num_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, num_shared_experts=1,
        moe_intermediate_size=64, moe_shared_expert_intermediate_size=64, first_k_dense_replace=1,
        group_norm_size=4, use_qk_norm=True, partial_rotary_factor=0.5, rope_theta=10000.0,
        rms_norm_eps=1e-6, max_position_embeddings=4096, routed_scaling_factor=2.5,
        score_function="sigmoid", moe_router_enable_expert_bias=True, norm_topk_prob=True,
        tie_word_embeddings=False, architectures=[ARCHITECTURE],
    ),
    "mini": dict(_COMMON, hidden_size=2048, num_hidden_layers=20, layer_group_size=5,
                 num_attention_heads=16, intermediate_size=5120, moe_intermediate_size=512,
                 moe_shared_expert_intermediate_size=512),
    # Ring-mini's layer shapes (d_model 2048, 16 heads of 128, 4 KV heads, G = 5, dense FFN 5120,
    # experts of 512, one shared, sigmoid router in 8 groups) with 10 layers and 32 experts:
    # 1.2 B parameters (with the demo's 384-token vocabulary), trainable in bf16 with Adam on one
    # 80 GB GPU beside its rollout engine. The GPU recipe's model (recipes/gpu_ring.yaml).
    "mini-1b": dict(_COMMON, hidden_size=2048, num_hidden_layers=10, layer_group_size=5,
                    num_attention_heads=16, intermediate_size=5120, moe_intermediate_size=512,
                    moe_shared_expert_intermediate_size=512, num_experts=32, max_position_embeddings=4096),
    # The published config.json of inclusionAI/Ring-mini-linear-2.0, every key our config has
    # (read from a public field-for-field reproduction of it, mlx-community's 4-bit conversion,
    # whose only additions are its quantization keys; the hub itself is unreachable here).
    # Shapes equal ``mini``'s (a unit test checks); beyond them it fixes the token ids.
    "ring-mini-linear-2.0": dict(
        architectures=[ARCHITECTURE], attention_dropout=0.0, embedding_dropout=0.0, output_dropout=0.0,
        eos_token_id=156892, pad_token_id=156892, first_k_dense_replace=1, group_norm_size=4, head_dim=128,
        hidden_act="silu", hidden_size=2048, intermediate_size=5120, layer_group_size=5, linear_silu=False,
        max_position_embeddings=131072, moe_intermediate_size=512, moe_router_enable_expert_bias=True,
        moe_shared_expert_intermediate_size=512, n_group=8, norm_topk_prob=True, num_attention_heads=16,
        num_experts=256, num_experts_per_tok=8, num_hidden_layers=20, num_key_value_heads=4,
        num_nextn_predict_layers=0, num_shared_experts=1, partial_rotary_factor=0.5, rms_norm_eps=1e-6,
        rope_theta=1_000_000.0, routed_scaling_factor=2.5, router_dtype="fp32", score_function="sigmoid",
        tie_word_embeddings=False, topk_group=4, use_bias=False, use_cache=True, use_qk_norm=True,
        use_qkv_bias=False, use_rmsnorm=True, vocab_size=157184,
    ),
    "flash": dict(_COMMON, hidden_size=4096, num_hidden_layers=32, layer_group_size=8,
                  num_attention_heads=32, intermediate_size=9216, moe_intermediate_size=1024,
                  moe_shared_expert_intermediate_size=1024),
}


def preset_config(name: str, **overrides) -> BailingMoeLinearV2Config:
    """The config of preset ``name`` with ``overrides`` applied (``ValueError`` for an unknown name)."""
    if name not in PRESETS:
        raise ValueError(f"unknown Ring-linear preset {name!r}; known: {', '.join(PRESETS)}")
    return BailingMoeLinearV2Config(**{**PRESETS[name], **overrides})


def parameter_count(config: BailingMoeLinearV2Config) -> dict[str, int]:
    """Analytic parameter counts: ``total``, ``active`` (per token: top-k routed experts, the
    shared expert, everything else) and ``embedding`` (word embeddings + lm_head)."""
    c = config
    D, H, KV, d = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    inner = H * d
    linear = 3 * inner * D + inner * D + inner * D + inner + 2 * d * c.use_qk_norm   # qkv, g, dense, g_norm, q/k norm
    softmax = (H + 2 * KV) * d * D + inner * D + 2 * d * c.use_qk_norm
    mlp = lambda inter: 3 * D * inter  # noqa: E731
    expert = mlp(c.moe_intermediate_size)
    shared = mlp(c.moe_shared_expert_intermediate_size * c.num_shared_experts) if c.num_shared_experts else 0
    router = c.num_experts * D + c.num_experts
    total = active = 0
    for i in range(c.num_hidden_layers):
        attn = softmax if c.is_softmax_layer(i) else linear
        norms = 2 * D
        if c.is_moe_layer(i):
            ffn_total = c.num_experts * expert + shared + router
            ffn_active = c.num_experts_per_tok * expert + shared + router
        else:
            ffn_total = ffn_active = mlp(c.intermediate_size)
        total += attn + norms + ffn_total
        active += attn + norms + ffn_active
    embedding = 2 * c.vocab_size * D
    total += embedding + D
    active += D
    return {"total": total, "active": active, "embedding": embedding}


__all__ = ["PRESETS", "preset_config", "parameter_count"]
