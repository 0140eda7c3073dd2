"""The Ring-linear hybrid model for training (DESIGN.md §3), as a transformers model.

Owns the training-side modules: ``BailingMoeLinearV2PreTrainedModel``, ``...Model`` (the
decoder: embeddings → layers → final norm) and ``...ForCausalLM`` (decoder + ``lm_head``).
Parameter names, layer layout and the conventions each follows (with their sources) are the
model definition's, :mod:`models.ring_linear`; :mod:`models.ring_linear.weight_names` checks a
checkpoint's names strictly on loading.

Numerics (DESIGN.md §4): the residual stream is kept in fp32 (fp64 when the weights are fp64,
for the float64 parity tests); RMSNorms compute in fp32 and return fp32; projections run in the
weight dtype on inputs cast to it; q, k, v go to fp32 before the q/k norms, RoPE and the
linear-attention kernel (fp32 state); training's softmax attention runs SDPA on fp32 q, k, v
for one sequence per row, and for packed sequences ``kernels.softmax_attention.causal_attention``
(the Triton varlen kernel on CUDA, one SDPA call per sequence on CPU) on q, k, v cast back to the
weight dtype after the norms and RoPE — what the rollout engine's attention reads (its cache
dtype) — with an fp32 softmax and fp32 sums; the router runs in fp32; expert outputs are
accumulated in fp32 in expert-index order
(deterministic; every expert module is called on every forward, also on zero tokens, so that
ZeRO-3's per-module gathers match across ranks).  ``last_hidden_state`` is the fp32 final-norm
output; ``forward``'s logits are fp32 (``kernels.lm_head.logits_fp32`` for bf16/fp16 weights:
weight-dtype operands, fp32 accumulation), and the trainer's log-probs come from
``kernels.lm_head.token_logprobs`` (``trainer.logprobs.use_fp32_lm_head``).

Padding: sequences must be right-padded (the trainer's ``pack``).  Every layer is causal, so a
real token never sees the padding after it; left padding raises ``ValueError`` (without a cache).
Packed sequences (the trainer's ``pack_flat``): one row, no attention mask, ``position_ids``
restarting per sequence (transformers' convention) → ``cu_seqlens``: each linear-attention state
starts from zero, softmax attention stays within each sequence, RoPE uses the given positions.

Cache (incremental generation, ``transformers`` ``generate``).  The cache is transformers' own
``DynamicCache(config=config)``: ``config.layer_types`` names the layers ``"linear_attention"`` /
``"full_attention"``, so it holds one ``LinearAttentionLayer`` (the recurrent state
``S [B, H, d, d]``, fp32 — fp64 for fp64 weights — never bf16, DESIGN.md §4) or one
``DynamicLayer`` (K and V after the q/k norms and RoPE, ``[B, KV, S, d]`` fp32) per layer, the
pattern of transformers' hybrid models (Qwen3-Next).  ``forward(..., use_cache=True)`` (or a
``past_key_values``) runs the same projections, norms and RoPE; the linear layers run ``chunk``
from the cached state for several new tokens (prefill: the final state goes to the cache) and
``recurrent`` (in place on the cached state) for one new token per sequence — the calls the vLLM
plugin makes; the softmax layers append K, V and attend over all cached keys with SDPA on fp32.
RoPE positions continue from the cache length.  ``use_cache=None`` means no cache (the
published config says ``use_cache: true``; training forwards must not build one).  With a cache,
batches may be left-padded (``generate``'s padding side): a pad token gets ``k = 0`` in the
linear layers (``S_t = λ S_{t-1} + k_tᵀ v_t`` then stays 0 until the first real token), its key is
masked in the softmax layers, and positions count real tokens only; right padding raises.
Inference only: ``recurrent`` has no backward.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import revert_weight_conversion
from transformers.cache_utils import Cache, DynamicCache, LinearAttentionCacheLayerMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from kernels.batch_invariant import attention as invariant_attention
from kernels.batch_invariant import recurrence as invariant_recurrence
from kernels.batch_invariant import sigmoid as invariant_sigmoid
from kernels.batch_invariant import silu as invariant_silu
from kernels.linear_attention import chunk as linear_attention_chunk
from kernels.linear_attention import layer_decay
from kernels.linear_attention import recurrent as linear_attention_recurrent
from kernels.softmax_attention import causal_attention
from kernels.softmax_attention.causal_torch import causal_torch
from kernels.lm_head import logits_fp32
from kernels.norm import compute_dtype
from kernels.rope import apply_rope, rope_cos_sin
from models.ring_linear.config import MODEL_TYPE, BailingMoeLinearV2Config
from models.ring_linear.moe import GroupedExperts, MoE, MoEGate, expert_stacking, fp8_scale_option
from models.ring_linear.moe import SwiGLU as MLP
from models.ring_linear.norm import GroupRMSNorm, RMSNorm
from models.ring_linear.weight_names import check_loaded


def _project(linear: nn.Linear, x: torch.Tensor, strict: bool = False, x_quant=None) -> torch.Tensor:
    """Linear in the weight dtype (inputs cast to it).  Strict mode: the module's forward is the
    row-tiled GEMM (``models.ring_linear.strict.use_strict``), called through the module so that
    ZeRO-3 gathers its weight (``strict`` only documents the call site).  x_quant: x's FP8
    quantization from its norm (``models.ring_linear.fp8_inputs``), for an FP8 projection."""
    if x_quant is not None and fp8_scale_option(linear) is not None:
        return linear(x.to(linear.weight.dtype), x_quant)
    return linear(x.to(linear.weight.dtype))


def _check_strict_inputs(strict: bool, cache: Cache | None, cu_seqlens: torch.Tensor | None) -> None:
    if strict and cache is not None:
        raise ValueError("strict mode covers the training forward (no cache); generate with a model "
                         "that is not in strict mode")
    if strict and cu_seqlens is not None:  # its layers run each row as one sequence
        raise ValueError("strict mode takes one sequence per row (trainer.logprobs.pack), not packed "
                         "sequences (pack_flat / trainer.pack_tokens)")


# ---------------------------------------------------------------------------------------------
# Attention layers


class LinearAttention(nn.Module):
    """Linear-attention layer (DESIGN.md §3 steps 1–5).  ``forward(x, cos, sin)``: x ``[B, T, D]``
    (fp32 normed input) → ``[B, T, D]`` in the weight dtype."""

    def __init__(self, config: BailingMoeLinearV2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.num_layers = config.num_hidden_layers
        self.layer_offset = config.linear_decay_layer_offset
        self.linear_silu = config.linear_silu
        self.use_qk_norm = config.use_qk_norm
        self.eps = config.rms_norm_eps
        inner = self.num_heads * self.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, 3 * inner, bias=False)
        if self.use_qk_norm:
            self.query_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.key_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.g_proj = nn.Linear(config.hidden_size, inner, bias=False)
        self.g_norm = GroupRMSNorm(inner, config.group_norm_size, config.rms_norm_eps)
        self.dense = nn.Linear(inner, config.hidden_size, bias=False)
        self._decay: dict[torch.device, torch.Tensor] = {}
        self.strict = False  # strict mode: kernels.batch_invariant (one recurrence, tiled GEMMs)

    def decay(self, device: torch.device) -> torch.Tensor:
        """Per-head log-decay fp32 ``[H]`` (a constant of the layer, cached per device)."""
        if device not in self._decay:
            g = layer_decay(self.num_heads, self.layer_idx, self.num_layers, self.layer_offset)
            self._decay[device] = g.to(device)
        return self._decay[device]

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: Cache | None = None, real: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, x_quant=None) -> torch.Tensor:
        """cache: the generation cache (its layer ``layer_idx`` holds the state); real: bool
        ``[B, S]`` real-token mask of the cached + new tokens (None: no padding); cu_seqlens:
        ``[N + 1]`` boundaries of the sequences packed in x ``[1, T, D]`` (no cache): each
        sequence's state starts from zero; x_quant: x's FP8 quantization (its norm's), or None."""
        B, T, _ = x.shape
        H, d = self.num_heads, self.head_dim
        dt, strict = compute_dtype(self.dense.weight), self.strict
        _check_strict_inputs(strict, cache, cu_seqlens)
        qkv = _project(self.query_key_value, x, strict, x_quant).to(dt)
        if self.linear_silu:
            qkv = invariant_silu(qkv) if strict else F.silu(qkv)
        q, k, v = qkv.view(B, T, 3 * H, d).split(H, dim=2)          # [B, T, H, d] each
        if self.use_qk_norm:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if real is not None:  # a pad token adds k_tᵀ v_t = 0 to the state
            k = k.masked_fill(~real[:, -T:, None, None], 0.0)
        decay, scale = self.decay(x.device), d ** -0.5
        state = None if cache is None else cache.layers[self.layer_idx].recurrent_states[0]
        if strict:  # the token loop the rollout engine runs too (decode, prefill pieces)
            o, _ = invariant_recurrence(q, k, v, decay, scale)
            y = self.g_norm(o.reshape(B, T, H * d)) * invariant_sigmoid(_project(self.g_proj, x, strict).to(dt))
            return _project(self.dense, y, strict)
        if state is not None and T == 1:  # decode: S ← λ S + kᵀv on the cached state, in place
            o = linear_attention_recurrent(q[:, 0], k[:, 0], v[:, 0].contiguous(), decay, scale, state)[:, None]
        else:  # training, prefill, or several new tokens: chunked, from the cached state if any
            o, final = linear_attention_chunk(q.contiguous(), k.contiguous(), v.contiguous(), decay,
                                              scale=scale, initial_state=state, cu_seqlens=cu_seqlens,
                                              output_final_state=cache is not None)
            if cache is not None:
                cache.update_recurrent_state(final.contiguous(), self.layer_idx)
        y = self.g_norm(o.reshape(B, T, H * d)) * torch.sigmoid(_project(self.g_proj, x, x_quant=x_quant).to(dt))
        return _project(self.dense, y)


class SoftmaxAttention(nn.Module):
    """GQA softmax-attention layer with q/k RMSNorm and partial RoPE; training runs
    :func:`kernels.softmax_attention.causal_attention` (packed sequences in one launch on CUDA),
    generation SDPA on fp32 over the cache."""

    def __init__(self, config: BailingMoeLinearV2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.use_qk_norm = config.use_qk_norm
        out = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, out, bias=False)
        if self.use_qk_norm:
            self.query_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.key_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        self.strict = False  # strict mode: kernels.batch_invariant (block-ordered attention, tiled GEMMs)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: Cache | None = None, real: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, x_quant=None) -> torch.Tensor:
        """cache, real, cu_seqlens, x_quant: as in :class:`LinearAttention` (K, V are appended to
        the cache; packed sequences attend block-diagonally, each only to its own keys)."""
        B, T, _ = x.shape
        H, KV, d = self.num_heads, self.num_kv_heads, self.head_dim
        dt, strict = compute_dtype(self.dense.weight), self.strict
        _check_strict_inputs(strict, cache, cu_seqlens)
        qkv = _project(self.query_key_value, x, strict, x_quant).to(dt).view(B, T, H + 2 * KV, d)
        q, k, v = qkv.split([H, KV, KV], dim=2)
        if self.use_qk_norm:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if strict:  # the attention the rollout engine runs over its paged cache
            positions = torch.arange(T, device=x.device).expand(B, T)
            # whose cache holds K and V in the model dtype (the weights'): rounded alike
            o = invariant_attention(q, k, v, positions, d ** -0.5, kv_dtype=self.dense.weight.dtype)
            return _project(self.dense, o.reshape(B, T, H * d), strict)
        if cache is None and cu_seqlens is None:  # training, one sequence per row: SDPA on fp32 q, k, v
            # (the path the GPU runs were measured with; the Triton kernel has not run on a GPU yet)
            o = causal_torch(q, k, v, None, d ** -0.5)
            return _project(self.dense, o.reshape(B, T, H * d))
        if cache is None:  # training, packed: one launch on CUDA; q, k, v in the weights' dtype, as
            wdt = self.dense.weight.dtype  # the rollout's attention reads them (16-bit tensor cores)
            o = causal_attention(q.to(wdt), k.to(wdt), v.to(wdt), cu_seqlens, d ** -0.5)
            return _project(self.dense, o.reshape(B, T, H * d))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)   # [B, heads, T, d]
        k, v = cache.update(k, v, self.layer_idx)                           # [B, KV, S, d]
        S = k.shape[2]
        causal = S == T and real is None      # unpadded prefill into an empty cache
        sees_all = T == 1 and real is None    # unpadded decode: the new token sees every key
        mask = None if causal or sees_all else _attention_mask(T, S, real, x.device)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           scale=d ** -0.5, enable_gqa=KV != H)
        return _project(self.dense, o.transpose(1, 2).reshape(B, T, H * d))


def _attention_mask(T: int, S: int, real: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Bool SDPA mask for the last T of S positions: query i (position S - T + i) sees key j iff
    j <= S - T + i and j is a real token (``real`` bool ``[B, S]``).  A pad query also sees itself,
    so no row is empty (SDPA gives NaN there); its output is never read."""
    query = torch.arange(S - T, S, device=device)[:, None]
    key = torch.arange(S, device=device)[None]
    causal = key <= query                                                 # [T, S]
    if real is None:
        return causal
    return (causal & real[:, None, None, :]) | (key == query)            # [B, 1, T, S]


# ---------------------------------------------------------------------------------------------
# Decoder


class DecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: BailingMoeLinearV2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        attn = SoftmaxAttention if config.is_softmax_layer(layer_idx) else LinearAttention
        self.attention = attn(config, layer_idx)
        self.mlp = (MoE(config) if config.is_moe_layer(layer_idx)
                    else MLP(config.hidden_size, config.intermediate_size))
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                past_key_values: Cache | None = None, real: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """hidden: the fp32 residual stream ``[B, T, D]``; returns the next one.  With FP8
        projections each norm may also hand them its output quantized (``x_quant``,
        :mod:`models.ring_linear.fp8_inputs`)."""
        normed, x_quant = self.input_layernorm(hidden, quantize=True)
        attn = self.attention(normed, cos, sin, past_key_values, real, cu_seqlens, x_quant=x_quant)
        h = hidden + attn.to(hidden.dtype)
        normed, x_quant = self.post_attention_layernorm(h, quantize=True)
        return h + self.mlp(normed, x_quant).to(h.dtype)


class BailingMoeLinearV2PreTrainedModel(PreTrainedModel):
    config_class = BailingMoeLinearV2Config
    config: BailingMoeLinearV2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DecoderLayer"]
    _keep_in_fp32_modules_strict = ["expert_bias"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (RMSNorm, GroupRMSNorm)):
            init.ones_(module.weight)
        elif isinstance(module, MoEGate):
            init.normal_(module.weight, mean=0.0, std=std)
            init.zeros_(module.expert_bias)
        elif isinstance(module, GroupedExperts) and not getattr(module.gate_up_proj, "_is_hf_initialized", False):
            # expert by expert, gate, up, down: the draws per-expert nn.Linear modules made, so a
            # seed gives the same random checkpoint as before the experts were stacked
            for expert in range(module.gate_up_proj.shape[0]):
                for weight in module.expert_weights(expert):
                    weight.normal_(mean=0.0, std=std)


class BailingMoeLinearV2Model(BailingMoeLinearV2PreTrainedModel):
    """Embeddings → decoder layers → final RMSNorm.  ``forward(input_ids, attention_mask)``
    returns ``BaseModelOutputWithPast(last_hidden_state=[B, T, D] fp32, past_key_values)``; with
    a cache (``use_cache=True`` or ``past_key_values``) ``attention_mask`` covers the cached and
    the new tokens, ``[B, past + T]``, as ``generate`` passes it."""

    def __init__(self, config: BailingMoeLinearV2Config):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.word_embeddings = value

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, inputs_embeds: torch.Tensor | None = None,
                past_key_values: Cache | None = None, use_cache: bool | None = None,
                **kwargs) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        h = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = h.shape[:2]
        if use_cache and past_key_values is None:  # None means no cache (see the module docstring)
            past_key_values = DynamicCache(config=self.config)
        real = cu_seqlens = None
        if past_key_values is None:
            if attention_mask is not None:
                _check_right_padded(attention_mask)
            if position_ids is None:
                position_ids = torch.arange(T, device=h.device)
            elif attention_mask is None:  # restarting positions: packed sequences
                cu_seqlens = _packed_boundaries(position_ids)
        else:
            self._check_cache(past_key_values)
            past = past_key_values.get_seq_length()
            real = _left_padding(attention_mask, B, past + T)
            if position_ids is None:  # positions count real tokens: cached ones first
                position_ids = (torch.arange(past, past + T, device=h.device) if real is None
                                else (real.long().cumsum(-1) - 1).clamp(min=0)[:, -T:])
        dt = compute_dtype(self.norm.weight)
        cos, sin = rope_cos_sin(position_ids, self.config.rotary_dim, self.config.rope_theta, dt)
        h = h.to(dt)  # the residual stream is fp32 (fp64 for fp64 weights)
        for layer in self.layers:
            h = layer(h, cos, sin, past_key_values=past_key_values, real=real, cu_seqlens=cu_seqlens)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(h), past_key_values=past_key_values)

    def _check_cache(self, cache: Cache) -> None:
        """The cache must have the model's layer kinds (``DynamicCache(config=model.config)``)."""
        kinds = [isinstance(layer, LinearAttentionCacheLayerMixin) for layer in getattr(cache, "layers", [])]
        want = [not self.config.is_softmax_layer(i) for i in range(self.config.num_hidden_layers)]
        if kinds != want:
            raise ValueError("past_key_values must be DynamicCache(config=model.config) (a linear-attention "
                             "state for each linear layer, K/V for each softmax layer); got "
                             f"{type(cache).__name__} with {len(kinds)} layers")


def _packed_boundaries(position_ids: torch.Tensor) -> torch.Tensor | None:
    """``cu_seqlens`` ``[N + 1]`` of the sequences packed in one row, or None for one sequence.

    transformers' packed-sequence convention (``DataCollatorWithFlattening``, its
    ``find_packed_sequence_indices``): without an attention mask, a token whose position is not
    the previous token's + 1 starts a new sequence.  One host sync."""
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    if not bool(starts[:, 1:].any()):
        return None
    if position_ids.shape[0] != 1:
        raise ValueError(f"packed sequences (position_ids restarting within a row) go in one row: "
                         f"batch size must be 1, got {position_ids.shape[0]}")
    T = position_ids.shape[1]
    bounds = starts[0].nonzero().flatten()
    return torch.cat([bounds, bounds.new_tensor([T])])


def _check_right_padded(mask: torch.Tensor) -> None:
    """Raises unless every row of the [B, T] mask is 1…1 0…0 (one host sync)."""
    if mask.dim() != 2:
        raise ValueError(f"attention_mask must be [B, T], got {tuple(mask.shape)}")
    m = mask.to(torch.int8)
    if bool((m[:, 1:] > m[:, :-1]).any()):
        raise ValueError("attention_mask must be right-padded (real tokens first); left padding "
                         "or holes are not supported by the linear-attention layers")


def _left_padding(mask: torch.Tensor | None, B: int, S: int) -> torch.Tensor | None:
    """The real-token mask bool ``[B, S]`` of a left-padded batch (rows 0…0 1…1), or None when
    there is no padding (one host sync).  A cache runs the tokens in order, so padding after a
    real token would enter the state: right padding and holes raise."""
    if mask is None:
        return None
    if tuple(mask.shape) != (B, S):
        raise ValueError(f"with a cache, attention_mask must cover the cached and the new tokens: "
                         f"[B, past + T] = [{B}, {S}], got {list(mask.shape)}")
    real = mask.bool()
    if bool(real.all()):
        return None
    if bool((real[:, :-1] & ~real[:, 1:]).any()):
        raise ValueError("generation with a cache needs left padding (pad tokens first, e.g. the "
                         "tokenizer's padding_side='left'); this attention_mask has padding after a "
                         "real token")
    return real


def _gathered(param: nn.Parameter):
    """Context in which a ZeRO-3-partitioned parameter is whole (read-only); a no-op otherwise."""
    if not hasattr(param, "ds_id"):
        return contextlib.nullcontext()
    try:  # inside try: transformers then treats deepspeed as optional for the exported model code
        import deepspeed
    except ImportError as err:  # a ds_id parameter comes from deepspeed; say so if it is gone
        raise RuntimeError("a ZeRO-3 (ds_id) parameter but deepspeed is not importable") from err
    return deepspeed.zero.GatheredParameters([param], modifier_rank=None)


class BailingMoeLinearV2ForCausalLM(BailingMoeLinearV2PreTrainedModel, GenerationMixin):
    """Decoder + ``lm_head``.  ``forward`` returns fp32 logits (``kernels.lm_head.logits_fp32``)
    and, with ``labels``, the mean next-token cross-entropy — for scoring and tests: on CUDA the
    fp32-logit GEMM has no backward, and under ZeRO-3 the head is read through a gather.  The
    trainer trains through ``get_decoder()`` + ``trainer.logprobs.use_fp32_lm_head`` (a call of
    the ``lm_head`` module, differentiable everywhere).  ``generate`` works (transformers'
    ``GenerationMixin``, cache: see the module docstring)."""

    _tied_weights_keys: dict[str, str] = {}

    def __init__(self, config: BailingMoeLinearV2Config):
        super().__init__(config)
        self.model = BailingMoeLinearV2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained`` after the strict weight-name check of
        :func:`models.ring_linear.weight_names.check_loaded` (missing or unexpected weights
        raise ``ValueError`` listing them), made on a parameter-less copy of the model before
        anything loads (transformers' expert stacking would otherwise fail first, less clearly)."""
        path = args[0] if args else kwargs["pretrained_model_name_or_path"]
        config = kwargs.get("config")
        if not isinstance(config, BailingMoeLinearV2Config):
            config = BailingMoeLinearV2Config.from_pretrained(path)
        with torch.device("meta"):
            check_loaded(cls(config), path)
        model = super().from_pretrained(*args, **kwargs)
        model.freeze_expert_bias()
        return model

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict under the checkpoint's names (each stacked expert projection split
        into ``experts.{e}.{proj}.weight`` views, as ``save_pretrained`` writes them)."""
        return revert_weight_conversion(self, self.state_dict())

    def freeze_expert_bias(self) -> None:
        """The routers' balancing biases are not trained by gradient (loading re-creates the
        parameters, so this runs again after ``from_pretrained``)."""
        for module in self.modules():
            if isinstance(module, MoEGate):
                module.expert_bias.requires_grad_(False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def get_decoder(self) -> BailingMoeLinearV2Model:
        return self.model

    def set_decoder(self, decoder: BailingMoeLinearV2Model) -> None:
        self.model = decoder

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, logits_to_keep: int = 0,
                **kwargs) -> CausalLMOutputWithPast:
        """``logits_to_keep``: logits of the last n positions only (0: all; ``generate`` passes 1)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         inputs_embeds=inputs_embeds, **kwargs)
        hidden = out.last_hidden_state[:, -logits_to_keep:] if logits_to_keep else out.last_hidden_state
        with _gathered(self.lm_head.weight):
            w = self.lm_head.weight
            if w.dtype in (torch.float32, torch.float64):  # already fp32 (fp64: the parity runs)
                logits = hidden.to(w.dtype) @ w.t()
            else:  # bf16/fp16 operands, fp32 accumulation and result
                logits = logits_fp32(hidden.reshape(-1, hidden.shape[-1]).to(w.dtype), w)
                logits = logits.view(*hidden.shape[:2], -1)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values)


# Checkpoints hold one tensor per expert projection; the model stacks them (GroupedExperts).
register_checkpoint_conversion_mapping(MODEL_TYPE, expert_stacking(), overwrite=True)

__all__ = ["BailingMoeLinearV2PreTrainedModel", "BailingMoeLinearV2Model", "BailingMoeLinearV2ForCausalLM"]
