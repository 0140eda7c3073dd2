"""The Ring-linear hybrid model's definition (DESIGN.md §3), one home for both engines.

Owns what the trainer (:mod:`trainer.ring_linear`, a transformers model) and the rollout engine
(:mod:`rollout.ring_linear`, a vLLM model) must agree on: the config and its names
(:mod:`.config`), the presets (:mod:`.presets`), the layers both build from
(:mod:`.norm`, :mod:`.moe`; their math is in ``kernels/``), the checkpoint's weight names
(:mod:`.weight_names`) and a float64 reference forward for parity tests (:mod:`.reference`).
Imports only ``kernels``.  Importing this package registers ``model_type = "bailing_moe_linear"``
with transformers' ``AutoConfig`` (so ``AutoConfig.from_pretrained`` reads a Ring-linear
directory in any process that imports it: the driver, the trainer, every vLLM process through the
plugin).

Parameter names (both engines) are those of the published Ring-mini-linear-2.0 checkpoint, so its
directory loads unchanged (:mod:`models.ring_linear.weight_names` checks the names strictly)::

    model.word_embeddings.weight                                  [V, D]
    model.layers.N.input_layernorm.weight / post_attention_layernorm.weight     [D]
    model.layers.N.attention.query_key_value.weight     linear: [3·H·d, D]; softmax: [(H+2·KV)·d, D]
    model.layers.N.attention.query_layernorm.weight / key_layernorm.weight      [d]
    model.layers.N.attention.g_proj.weight              [H·d, D]   (linear layers only)
    model.layers.N.attention.g_norm.weight              [H·d]      (linear layers only)
    model.layers.N.attention.dense.weight               [D, H·d]
    model.layers.N.mlp.{gate,up,down}_proj.weight                  (dense layers, N < first_k_dense_replace)
    model.layers.N.mlp.gate.weight [E, D], mlp.gate.expert_bias [E]  (MoE layers)
    model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight
    model.layers.N.mlp.shared_experts.{gate,up,down}_proj.weight
    model.norm.weight, lm_head.weight

Sources of each convention (read, not copied): names and the fused ``query_key_value`` layout
(q | k | v blocks) from SGLang's ``bailing_moe_linear.py`` and mlx-lm's; the linear layers use
``H`` K/V heads (MHA) whatever ``num_key_value_heads`` says (all three sources); ``g_norm`` is an
RMSNorm over ``group_norm_size`` groups of the ``H·d`` channels with an ``[H·d]`` weight (mlx-lm's
``GroupRMSNorm``, vLLM's ``group_size = H·d / group_norm_size``); the sigmoid gate is computed
from the layer input ``x`` (all three); RoPE is NeoX style on the first
``head_dim·partial_rotary_factor`` dims, in both layer kinds (SGLang ``is_neox_style=True``,
mlx-lm ``traditional=False``); q/k RMSNorm comes before RoPE; the router is sigmoid + expert
bias used for selection only, with group-limited top-k (groups ranked by the sum of their top-2
biased scores), gates = unbiased scores renormalised over the top-k (``norm_topk_prob``) times
``routed_scaling_factor`` (SGLang's ``TopK`` with ``correction_bias``, mlx-lm's
``group_expert_select``); experts outside the selected groups are excluded (masked to -inf; mlx-lm
zeroes them, which only differs when all biased scores of the selected groups are negative).
Layer ``i`` is softmax iff ``(i+1) % layer_group_size == 0`` (all sources; mlx-lm also makes
trailing layers past the last full group softmax — the config requires whole groups, as SGLang
asserts, so that clause never applies).  Both layer kinds use ``config.head_dim`` (SGLang); mlx-lm
derives ``hidden_size / num_attention_heads`` for the linear layers — equal in the published models.

Decay layer offset.  The per-head log-decay is ``g = -s_h · (1 - (l - o)/(L-1) + 1e-5)`` for
layer ``l`` of ``L`` (``kernels.linear_attention.layer_decay``).  The checkpoint's own Hugging
Face code (``modeling_bailing_moe_linear_v2.py``, as quoted by public ports) uses ``l - 1``
(``o = 1``); mlx-lm uses ``max(0, l - 1)`` (differs at layer 0 only); SGLang and vLLM use ``l``
(``o = 0``).  ``config.linear_decay_layer_offset`` picks it; the default 1 follows the code that
ships with the checkpoint.  The vLLM plugin must read the same field.
"""

from __future__ import annotations

from transformers import AutoConfig

from .config import ARCHITECTURE, FP8_CONFIG_KEY, LINEAR, MODEL_TYPE, SOFTMAX, BailingMoeLinearV2Config

AutoConfig.register(MODEL_TYPE, BailingMoeLinearV2Config, exist_ok=True)

__all__ = ["ARCHITECTURE", "FP8_CONFIG_KEY", "LINEAR", "MODEL_TYPE", "SOFTMAX", "BailingMoeLinearV2Config"]
