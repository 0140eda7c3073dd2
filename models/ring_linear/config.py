"""Configuration of the Ring-linear hybrid model (``model_type = "bailing_moe_linear"``).

Owns the config fields and their validation, and the names both engines key on (the model type,
the architecture, the layer kinds, the FP8 config attribute).  Field names and defaults follow the public
``config.json`` of Ring-mini-linear-2.0 (``BailingMoeLinearV2ForCausalLM``) as reproduced by
the public ports that load it (SGLang ``python/sglang/srt/models/bailing_moe_linear.py``,
mlx-lm ``mlx_lm/models/bailing_moe_linear.py``, vLLM ``bailing_linear_attn.py``), so a published
checkpoint directory loads with this class unchanged.

One field is ours: ``linear_decay_layer_offset`` (see :mod:`models.ring_linear` and
``kernels.linear_attention.decay``).  The published config has no such key; the default (1)
is what the checkpoint's own Hugging Face modeling code computes, so published configs load
with the right decay.

Validation raises ``ValueError`` naming the offending field (DESIGN.md §12.9).
"""

from __future__ import annotations

from transformers import PretrainedConfig

MODEL_TYPE = "bailing_moe_linear"
ARCHITECTURE = "BailingMoeLinearV2ForCausalLM"
LINEAR, SOFTMAX = "linear_attention", "full_attention"
# The model-config attribute through which the rollout engine's model learns the recipe's FP8
# options (the rollout worker passes it as a vLLM ``hf_overrides`` key).
FP8_CONFIG_KEY = "lockstep_fp8"
# The same for strict mode (the recipe's ``mode: strict``): True makes the engine's model run the
# batch-invariant ops (:func:`models.ring_linear.strict.use_strict`).
STRICT_CONFIG_KEY = "lockstep_strict"


class BailingMoeLinearV2Config(PretrainedConfig):
    """Ring-linear config.  Shapes: ``L = num_hidden_layers`` layers in groups of
    ``G = layer_group_size`` (layer ``i`` is softmax iff ``(i + 1) % G == 0``), ``H`` heads of
    ``head_dim`` (linear layers: MHA, ``H`` K/V heads; softmax layers: ``num_key_value_heads``)."""

    model_type = MODEL_TYPE
    keys_to_ignore_at_inference = ["past_key_values"]

    # --- sizes -----------------------------------------------------------------------------
    vocab_size: int = 157184
    hidden_size: int = 2048
    intermediate_size: int = 5120          # dense FFN of the first `first_k_dense_replace` layers
    num_hidden_layers: int = 20
    num_attention_heads: int = 16
    num_key_value_heads: int = 4           # softmax (GQA) layers only
    head_dim: int | None = None            # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 131072
    # --- hybrid layout and attention -------------------------------------------------------
    layer_group_size: int = 5
    group_norm_size: int = 4               # number of groups of the linear layers' output norm
    use_qk_norm: bool = True
    partial_rotary_factor: float = 0.5
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    linear_silu: bool = False              # SiLU on q, k, v of the linear layers (SGLang/vLLM)
    linear_decay_layer_offset: int = 1     # ours; see the module docstring
    hidden_act: str = "silu"
    use_bias: bool = False
    use_qkv_bias: bool = False
    use_rmsnorm: bool = True
    # --- MoE -------------------------------------------------------------------------------
    num_experts: int = 256
    num_experts_per_tok: int = 8
    num_shared_experts: int = 1
    moe_intermediate_size: int = 512
    moe_shared_expert_intermediate_size: int | None = None  # None: moe_intermediate_size
    first_k_dense_replace: int = 1
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    score_function: str = "sigmoid"
    moe_router_enable_expert_bias: bool = True
    norm_topk_prob: bool = True
    router_dtype: str | None = "fp32"
    num_nextn_predict_layers: int = 0      # MTP heads: not modelled (their weights are skipped)
    # --- misc (published keys) ---------------------------------------------------------------
    tie_word_embeddings: bool = False
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    output_dropout: float = 0.0
    initializer_range: float = 0.02
    use_cache: bool = True                 # as published: `generate` reads it (the forward
                                           # builds a cache only when passed use_cache=True)
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    layer_types: list[str] | None = None   # derived from layer_group_size (vLLM needs it)

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // max(self.num_attention_heads, 1)
        if self.moe_shared_expert_intermediate_size is None:
            self.moe_shared_expert_intermediate_size = self.moe_intermediate_size
        super().__post_init__(**kwargs)
        pattern = self.derived_layer_types()
        if self.layer_types is None:
            self.layer_types = pattern
        self.check()

    # ----------------------------------------------------------------------------------------

    def derived_layer_types(self) -> list[str]:
        g = max(self.layer_group_size, 1)
        return [SOFTMAX if (i + 1) % g == 0 else LINEAR for i in range(self.num_hidden_layers)]

    def is_softmax_layer(self, layer_idx: int) -> bool:
        return self.layer_types[layer_idx] == SOFTMAX

    def is_moe_layer(self, layer_idx: int) -> bool:
        return layer_idx >= self.first_k_dense_replace

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def check(self) -> None:
        """Raises ValueError naming the field when the shapes or options do not fit."""

        def need(ok: bool, field: str, why: str) -> None:
            if not ok:
                raise ValueError(f"{self.__class__.__name__}.{field}={getattr(self, field, None)!r}: {why}")

        for f in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "layer_group_size", "group_norm_size",
                  "intermediate_size"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) > 0, f, "must be a positive int")
        need(self.num_hidden_layers % self.layer_group_size == 0, "num_hidden_layers",
             f"must be a multiple of layer_group_size={self.layer_group_size} (groups of "
             f"{self.layer_group_size - 1} linear layers + 1 softmax layer)")
        need(self.layer_types == self.derived_layer_types(), "layer_types",
             f"must be {self.derived_layer_types()} (derived from layer_group_size)")
        need(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads",
             f"must divide hidden_size={self.hidden_size}")
        need(self.head_dim % 2 == 0, "head_dim", "must be even (RoPE rotates pairs)")
        need(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
             f"must divide num_attention_heads={self.num_attention_heads} (GQA)")
        rot = self.rotary_dim
        need(0.0 < self.partial_rotary_factor <= 1.0 and rot % 2 == 0 and rot > 0,
             "partial_rotary_factor", f"must give an even rotary dim in (0, head_dim]; got {rot}")
        inner = self.num_attention_heads * self.head_dim
        need(inner % self.group_norm_size == 0, "group_norm_size",
             f"must divide num_attention_heads*head_dim={inner}")
        need(self.linear_decay_layer_offset in (0, 1), "linear_decay_layer_offset",
             "must be 0 (SGLang/vLLM) or 1 (the checkpoint's HF code, mlx-lm)")
        need(self.rms_norm_eps > 0, "rms_norm_eps", "must be > 0")
        need(self.rope_theta > 0, "rope_theta", "must be > 0")
        need(self.hidden_act == "silu", "hidden_act", "only 'silu' (SwiGLU experts) is supported")
        need(not self.use_bias, "use_bias", "biases are not supported (the published models have none)")
        need(not self.use_qkv_bias, "use_qkv_bias", "biases are not supported")
        need(self.use_rmsnorm, "use_rmsnorm", "only RMSNorm is supported")
        need(not self.tie_word_embeddings, "tie_word_embeddings",
             "tied embeddings are not supported (the published models keep a separate lm_head)")
        need(getattr(self, "rope_parameters", None) in (None, {}) or
             set(self.rope_parameters) <= {"rope_theta", "rope_type", "partial_rotary_factor"}
             and self.rope_parameters.get("rope_type", "default") == "default",
             "rope_scaling", "RoPE scaling is not supported (the published config has null)")
        # MoE
        need(self.num_experts >= 1, "num_experts", "must be >= 1")
        need(0 <= self.first_k_dense_replace <= self.num_hidden_layers, "first_k_dense_replace",
             f"must be in [0, num_hidden_layers={self.num_hidden_layers}]")
        need(1 <= self.num_experts_per_tok <= self.num_experts, "num_experts_per_tok",
             f"must be in [1, num_experts={self.num_experts}]")
        need(self.n_group >= 1 and self.num_experts % self.n_group == 0, "n_group",
             f"must divide num_experts={self.num_experts}")
        need(1 <= self.topk_group <= self.n_group, "topk_group", f"must be in [1, n_group={self.n_group}]")
        need(self.topk_group * (self.num_experts // self.n_group) >= self.num_experts_per_tok,
             "topk_group", f"the {self.topk_group} selected groups of {self.num_experts // self.n_group} "
             f"experts hold fewer than num_experts_per_tok={self.num_experts_per_tok} experts")
        need(self.n_group == 1 or self.num_experts // self.n_group >= 2, "n_group",
             "groups are ranked by the sum of their top-2 scores: each group needs >= 2 experts")
        need(self.score_function == "sigmoid", "score_function",
             "only 'sigmoid' (with expert bias, as published) is supported")
        need(self.moe_router_enable_expert_bias, "moe_router_enable_expert_bias",
             "the sigmoid router is used with its expert bias (as published)")
        need(self.num_shared_experts >= 0, "num_shared_experts", "must be >= 0")
        need(self.moe_intermediate_size > 0, "moe_intermediate_size", "must be > 0")
        need(self.routed_scaling_factor > 0, "routed_scaling_factor", "must be > 0")
        need(self.router_dtype in (None, "fp32"), "router_dtype", "the router runs in fp32 (alignment rule)")
        need(self.num_nextn_predict_layers >= 0, "num_nextn_predict_layers", "must be >= 0")


__all__ = ["BailingMoeLinearV2Config", "MODEL_TYPE", "ARCHITECTURE", "LINEAR", "SOFTMAX", "FP8_CONFIG_KEY",
           "STRICT_CONFIG_KEY"]
