"""The Ring-linear hybrid model as a vLLM model (DESIGN.md §3, §10): the rollout engine's twin
of :mod:`trainer.ring_linear.modeling`, built from the same model definition
(:mod:`models.ring_linear`: config, weight names, the norm and MoE layers).

Same parameter names as the published checkpoint and the trainer (so one directory loads in
both, and the trainer's weight buckets load in place), same math through the same ``kernels/``
ops (:mod:`kernels.norm`, :mod:`kernels.rope`, :mod:`kernels.moe`, :mod:`kernels.linear_attention`,
:mod:`kernels.lm_head`).  What differs from the trainer is only where state lives:

* softmax layers use vLLM's ``Attention`` (paged KV cache, vLLM's kernel);
* linear layers keep their fp32 state ``S`` ``[H, d, d]`` per sequence in vLLM's hybrid
  (mamba-style) state cache, ``self.kv_cache[0]`` ``[slots, H, d, d]``.  Per step, vLLM's
  linear-attention metadata lists decodes first (one token each), then prefills (a whole prompt
  or a piece of one, with chunked prefill).  Decodes run ``kernels.linear_attention.recurrent``
  on their slots; prefills run ``chunk`` over the packed pieces with each slot's state as the
  initial state and write the final states back.  A sequence whose context is empty starts
  from a zero state — decodes too (a 1-token prompt arrives as a decode, and vLLM's own helper
  only clears prefills: a stale slot gave |Δ log-prob| ≈ 1 in the probe, DESIGN §10).  On CPU
  its slot is cleared first; on GPUs the kernels read it as zeros (a masked read, which a
  captured CUDA graph replays: :class:`StepPlan`).

Numerics as the trainer (DESIGN.md §4): the residual stream is fp32, norms and the router run in
fp32, projections in the weight dtype on inputs cast to it, q/k/v go to fp32 for the q/k norms,
RoPE and the linear-attention kernel, and the LM head returns fp32 logits
(``kernels.lm_head.logits_fp32``).  Softmax attention runs in vLLM's kernel on q/k/v in the model
dtype (the KV cache's): exact for fp32 models; for bf16 it is the one op not shared with the
trainer (noted in docs/decisions.md).

Plain ``nn.Linear`` projections: one module per weight, updated in place by ``load_weights``,
computing with the same ``F.linear`` the trainer uses.  The routed experts are the exception: the
engine keeps them stacked (:class:`models.ring_linear.moe.StackedMoE`, vLLM's fused-MoE layout),
the checkpoint's per-expert names mapped onto slices of the stacks.

Tensor parallelism (vLLM's ``tensor_parallel_size`` n > 1, :mod:`.tensor_parallel`): every rank's
modules have its shapes (its heads, its slice of every MLP's and expert's width), ``load_weights``
hands each rank its slice of every tensor it receives, and each attention and MLP output is summed
over the ranks (one all-reduce each, in fp32: the residual stream's dtype).  Fast mode only: the
split sums change the rounding (strict mode with n > 1 is refused).

FP8 (the recipe's ``model.fp8``, which the rollout worker passes as the model config's
``lockstep_fp8``): the decoder's projections become ``kernels.fp8.FP8Linear`` and the stacked
experts run ``lockstep::stacked_experts_fp8`` — the switch the trainer makes on its model
(``kernels.fp8.swap_linears_to_fp8``), so both quantize the same tensors the same way.

Compiled like vLLM's own models (``@support_torch_compile``; ``enforce_eager`` turns it off): the
per-sequence bookkeeping — the state slots, zeroing fresh ones, the decode/prefill split — and
the recurrence run inside vLLM's ``linear_attention`` custom op (a graph-splitting op, as for
vLLM's MiniMax and Bailing layers), the routed experts of prefill-sized batches inside
``lockstep::stacked_experts`` (decode-sized ones run every expert in the graph: ``torch.cond``
in :class:`~models.ring_linear.moe.StackedMoE`); everything else (projections, norms, RoPE, gates, router) is one inductor graph per step.  The
compiled rollout is not bitwise the eager trainer (inductor fuses the elementwise ops and
reduces in its own order): fast mode's ≤ 1e-5 holds, tested for both.  On GPUs the model runs
compiled too, with vLLM's CUDA graphs (piecewise around the splitting ops, full graphs of decode
batches: :func:`_compile_on_gpus`) unless ``enforce_eager`` (the recipe's default until the GPU
run checks graphs); an FP8 or strict engine runs eagerly everywhere (quantization would amplify the
compiled graph's rounding; strict needs the trainer's unfused ops).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import CUDAGraphMode, VllmConfig
from vllm.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_reduce,
)
from vllm.forward_context import get_forward_context
from vllm.logger import init_logger
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.mamba.linear.base import LinearAttention as VllmLinearAttention
from vllm.model_executor.layers.mamba.linear.minimax_linear_attn import (  # noqa: F401
    linear_attention,  # importing it registers torch.ops.vllm.linear_attention
)
from vllm.model_executor.layers.mamba.mamba_utils import (
    MambaStateCopyFuncCalculator,
    MambaStateShapeCalculator,
)
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import HasInnerState, IsHybrid

from kernels.batch_invariant import attention as invariant_attention
from kernels.batch_invariant import linear as invariant_linear
from kernels.batch_invariant import recurrence as invariant_recurrence
from kernels.batch_invariant import sigmoid as invariant_sigmoid
from kernels.batch_invariant import silu as invariant_silu
from kernels.batch_invariant.attention import paged_attention
from kernels.batch_invariant.linear_attention import into_slots as recurrence_into_slots
from kernels.fp8 import quantize_fp8_weights, swap_linears_to_fp8
from kernels.linear_attention import chunk, decode_packed, layer_decay, recurrent
from kernels.lm_head import logits_fp32
from kernels.norm import compute_dtype
from kernels.rope import apply_rope, rope_cos_sin
from models.ring_linear.config import FP8_CONFIG_KEY, STRICT_CONFIG_KEY
from models.ring_linear.fp8_inputs import fuse_fp8_inputs
from models.ring_linear.moe import StackedMoE, fp8_scale_option
from models.ring_linear.moe import SwiGLU as MLP
from models.ring_linear.norm import GroupRMSNorm, RMSNorm
from models.ring_linear.strict import use_strict
from models.ring_linear.weight_names import skipped_names

from .copy_plan import CopyPlan, TensorSpec, checkpoint_destination, plan_copies
from .step_plan import StepPlan
from .tensor_parallel import check_fp8_blocks, check_tensor_parallel, head_slice, kv_head_slice, local_config, shard

STATE_DTYPE = torch.float32  # the linear-attention state is fp32 in both engines (DESIGN §4)
logger = init_logger(__name__)


def _compile_on_gpus(vllm_config: VllmConfig) -> None:
    """On GPUs, with ``enforce_eager`` off (the recipe's ``rollout.enforce_eager: false``), the
    model runs as vLLM's own hybrids do: compiled, with the ``linear_attention`` op splitting the
    graph, piecewise CUDA graphs around it, and full CUDA graphs of uniform decode batches
    (vLLM's default ``FULL_AND_PIECEWISE``; the linear-attention metadata supports them).  What
    makes capture possible: the decode step reads no count on the host and resets fresh
    sequences' states inside the kernel (:class:`StepPlan`, ``recurrent(fresh=...)``), and the
    routed experts run sync-free grouped GEMMs (fp32: every expert, see ``kernels.moe``).
    Nothing to change here, only to log: ``enforce_eager`` already turned both off, and the CPU
    platform compiles and captures nothing."""
    from vllm.platforms import current_platform

    cc = vllm_config.compilation_config
    if not current_platform.is_cpu() and not vllm_config.model_config.enforce_eager:
        logger.info("Ring-linear model on %s: compilation mode %s, cudagraph_mode %s (rollout.enforce_eager: "
                    "true runs it eagerly)", current_platform.device_name, cc.mode, cc.cudagraph_mode)


def _run_eagerly(vllm_config: VllmConfig, why: str) -> None:
    """No torch.compile and no CUDA graphs for this engine, logged with the reason.  The model
    is built before vLLM compiles or captures anything, so setting the modes in its
    constructor is enough."""
    from vllm.config import CompilationMode

    cc = vllm_config.compilation_config
    if cc.mode != CompilationMode.NONE or (cc.cudagraph_mode is not None and cc.cudagraph_mode != CUDAGraphMode.NONE):
        logger.warning("Ring-linear model runs eagerly (compilation mode %s -> NONE, cudagraph_mode %s -> NONE) %s",
                       cc.mode, cc.cudagraph_mode, why)
        cc.mode = CompilationMode.NONE
        cc.cudagraph_mode = CUDAGraphMode.NONE


def _sum_over_ranks(partial: torch.Tensor) -> torch.Tensor:
    """A row-parallel layer's output: the ranks' partial outputs summed (fp32, the residual
    stream's dtype, so that the sum adds no rounding of the weight dtype); the output itself
    without tensor parallelism."""
    if get_tensor_model_parallel_world_size() == 1:
        return partial
    return tensor_model_parallel_all_reduce(partial.float())


def _project(linear: nn.Linear, x: torch.Tensor, strict: bool = False, x_quant=None) -> torch.Tensor:
    """Linear in the weight dtype (inputs cast to it).  Strict mode: the module's forward is the
    row-tiled GEMM (``models.ring_linear.strict.use_strict``), called through the module so that
    ZeRO-3 gathers its weight (``strict`` only documents the call site).  x_quant: x's FP8
    quantization from its norm (``models.ring_linear.fp8_inputs``), for an FP8 projection."""
    if x_quant is not None and fp8_scale_option(linear) is not None:
        return linear(x.to(linear.weight.dtype), x_quant)
    return linear(x.to(linear.weight.dtype))


def _qk_rope(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head q/k RMSNorm, then NeoX RoPE (q, k ``[N, heads, d]``; cos, sin ``[N, r/2]``)."""
    if attn.use_qk_norm:
        q, k = attn.query_layernorm(q), attn.key_layernorm(k)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


def _layer_metadata(prefix: str):
    """This layer's attention metadata for the current step, or None (profile / dummy runs)."""
    metadata = get_forward_context().attn_metadata
    return metadata.get(prefix) if isinstance(metadata, dict) else None


class RingLinearAttention(VllmLinearAttention):
    """Linear-attention layer (DESIGN.md §3 steps 1–5) with its state in vLLM's state cache."""

    def __init__(self, config, vllm_config: VllmConfig, prefix: str):
        super().__init__(config, vllm_config, prefix)
        # this rank's heads (all of them without tensor parallelism): self.num_heads stays the
        # model's H, which the decay slopes are a function of
        self.heads = head_slice(self.num_heads, self.tp_rank, self.tp_size)
        H, d, D = self.num_heads // self.tp_size, self.head_dim, self.hidden_size
        self.linear_silu, self.use_qk_norm = config.linear_silu, config.use_qk_norm
        self.layer_offset = config.linear_decay_layer_offset
        self.query_key_value = nn.Linear(D, 3 * H * d, bias=False)
        if self.use_qk_norm:
            self.query_layernorm = RMSNorm(d, config.rms_norm_eps)
            self.key_layernorm = RMSNorm(d, config.rms_norm_eps)
        self.g_proj = nn.Linear(D, H * d, bias=False)
        self.g_norm = GroupRMSNorm(H * d, config.group_norm_size // self.tp_size, config.rms_norm_eps)
        self.dense = nn.Linear(H * d, D, bias=False)
        self._decay: dict[torch.device, torch.Tensor] = {}
        self.strict = False  # strict mode: the trainer's token loop and tiled GEMMs (kernels.batch_invariant)
        # vLLM binds the state cache to the layers it finds here (and rejects duplicates).
        context = vllm_config.compilation_config.static_forward_context
        if prefix in context:
            raise ValueError(f"duplicate layer name {prefix!r}")
        context[prefix] = self

    def get_state_dtype(self) -> tuple[torch.dtype]:
        return (STATE_DTYPE,)

    def get_attn_backend(self):
        """vLLM's Bailing linear-attention metadata (as its own Bailing layer uses; the base
        one's fields and more): for full decode CUDA graphs it copies the decodes' state slots
        into a persistent buffer the graph reads (the base builder hands a new tensor each step
        when prefix caching gathers them) and marks a padded batch's extra rows with slot -1."""
        from vllm.v1.attention.backends.linear_attn import BailingLinearAttentionBackend

        return BailingLinearAttentionBackend

    def decay(self, device: torch.device) -> torch.Tensor:
        """Per-head log-decay fp32 ``[H]`` (the same function and layer offset as the trainer),
        this rank's heads."""
        if device not in self._decay:
            g = layer_decay(self.num_heads, self.layer_idx, self.num_hidden_layers, self.layer_offset)
            self._decay[device] = g[self.heads].to(device)
        return self._decay[device]

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                x_quant=None) -> torch.Tensor:
        """x: fp32 normed input ``[N, D]`` (N tokens of the step, decodes first) → ``[N, D]``;
        x_quant: its FP8 quantization (the norm's), or None."""
        N = x.shape[0]
        H, d = self.num_heads // self.tp_size, self.head_dim
        dt, strict = compute_dtype(self.dense.weight), self.strict
        qkv = _project(self.query_key_value, x, strict, x_quant).to(dt)
        if self.linear_silu:
            qkv = invariant_silu(qkv) if strict else F.silu(qkv)
        q, k, v = qkv.view(N, 3 * H, d).split(H, dim=1)
        q, k = _qk_rope(self, q, k, cos, sin)
        o = torch.empty(N, H, d, dtype=dt, device=x.device)
        # The recurrence reads and writes per-sequence state, so it runs outside the compiled
        # graph: vLLM's `linear_attention` op (a graph-splitting custom op) calls `_forward`
        # below by this layer's name, with q, k, v stacked as its input.
        torch.ops.vllm.linear_attention(torch.stack((q, k, v), dim=1), o, positions, self.prefix)
        gate = _project(self.g_proj, x, strict, x_quant).to(dt)
        y = self.g_norm(o.view(N, H * d)) * (invariant_sigmoid(gate) if strict else torch.sigmoid(gate))
        return _sum_over_ranks(_project(self.dense, y, strict))

    def _forward(self, hidden_states: torch.Tensor, output: torch.Tensor, positions: torch.Tensor) -> None:
        """The body of vLLM's ``linear_attention`` op: runs the recurrence for this step's
        sequences, reading and writing their states.  ``hidden_states`` is q, k, v
        ``[N, 3, H, d]``, ``output`` o ``[N, H, d]`` (positions: unused, RoPE is applied)."""
        # made on the first call, vLLM's profile run: its host-to-device copy cannot run inside a
        # CUDA graph being captured
        decay = self.decay(output.device)
        meta = _layer_metadata(self.prefix)
        if meta is None:  # profile and dummy runs: no sequences, o = 0
            output.zero_()
            return
        state = self.kv_cache[0]                                      # [slots, H, d, d] fp32
        plan = StepPlan.of(meta, self.prefix, state.shape[0])
        if plan.fresh is not None:  # CPU: cleared here (on GPUs the kernels mask: plan.decode_fresh)
            state[plan.fresh] = 0  # a new sequence starts from S = 0, decodes included
        q, k, v = hidden_states.unbind(1)
        scale = self.head_dim ** -0.5
        n_dec, n_pre_tok = plan.decodes, plan.prefill_tokens
        if self.strict:
            return self._forward_strict(q, k, v, output, meta, state, plan)
        # decodes: the packed q, k, v go straight to the CPU kernel (no per-layer checks or
        # copies: the slots were checked once for the step); other cases through `recurrent`
        if n_dec and not (plan.native_decode and decode_packed(hidden_states[:n_dec], decay, scale, state,
                                                               plan.decode_slots, output[:n_dec])):
            recurrent(q[:n_dec], k[:n_dec], v[:n_dec], decay, scale, state, plan.decode_slots,
                      out=output[:n_dec], fresh=plan.decode_fresh)
        if n_pre_tok:
            part = slice(n_dec, n_dec + n_pre_tok)
            q, k, v = (t[None, part].contiguous() for t in (q, k, v))
            initial = state[plan.prefill_slots]
            if plan.prefill_fresh is not None:  # GPUs: fresh prefills start from 0 (a masked read)
                initial = initial.masked_fill(plan.prefill_fresh[:, None, None, None], 0.0)
            out, final = chunk(q, k, v, decay, scale, initial_state=initial,
                               cu_seqlens=plan.prefill_cu, output_final_state=True)
            state[plan.prefill_slots] = final
            output[part] = out[0]
        if n_dec + n_pre_tok < output.shape[0]:
            output[n_dec + n_pre_tok:].zero_()  # padding rows

    def _forward_strict(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, output: torch.Tensor,
                        meta, state: torch.Tensor, plan: StepPlan) -> None:
        """Strict mode: decodes and prefill pieces run the trainer's token loop
        (:func:`kernels.batch_invariant.recurrence`) from their slots' states, so every token's
        output is the bits the trainer computes for its position.  q, k, v ``[N, H, d]``."""
        reqs = meta.num_decodes + meta.num_prefills
        if not reqs:
            output.zero_()
            return
        slots = meta.state_indices_tensor[:reqs].long()
        if plan.decode_fresh is not None:  # GPUs (the CPU cleared them above): fresh sequences start from 0
            state[slots[torch.cat((plan.decode_fresh, plan.prefill_fresh))]] = 0  # a host sync: strict runs eagerly
        rows, valid = request_rows(meta.query_start_loc[:reqs + 1])
        total = int(meta.query_start_loc[reqs])
        H, d = q.shape[1:]
        scale, decay = self.head_dim ** -0.5, self.decay(q.device)
        if total == reqs:  # decodes only: one token per request, no padding
            qs, ks, vs = (t[:total].view(reqs, 1, H, d) for t in (q, k, v))
            o = recurrence_into_slots(qs, ks, vs, decay, scale, state, slots, None)
            if o is not None:
                output[:total] = o.view(total, H, d)
                output[total:].zero_()
                return
        pad = lambda t: torch.cat((t[:total], t.new_zeros(1, H, d)))[rows]  # noqa: E731  [reqs, T, H, d]
        qs, ks, vs = pad(q), pad(k), pad(v)
        # the C or Triton kernel on the pool's slots in place; else the token loop on gathered states
        o = recurrence_into_slots(qs, ks, vs, decay, scale, state, slots, valid.sum(1))
        if o is None:
            o, final = invariant_recurrence(qs, ks, vs, decay, scale, state[slots], valid)
            state[slots] = final
        output[rows[valid]] = o[valid]
        output[total:].zero_()  # padding rows


def request_rows(starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's token rows per request, padded: ``starts`` ``[R + 1]`` (``query_start_loc``) →
    (rows int64 ``[R, T]`` with T the longest request; padding points at row ``starts[-1]``,
    one past the step's tokens; valid bool ``[R, T]``)."""
    starts = starts.long()
    lengths = starts[1:] - starts[:-1]
    j = torch.arange(int(lengths.max()), device=starts.device)[None]
    valid = j < lengths[:, None]
    return torch.where(valid, starts[:-1, None] + j, starts[-1]), valid


class RingSoftmaxAttention(nn.Module):
    """GQA softmax-attention layer with q/k RMSNorm and partial RoPE on vLLM's paged KV cache."""

    def __init__(self, config, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        # this rank's query and KV heads (KV heads replicated when fewer than the ranks)
        rank, ranks = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        kv = kv_head_slice(config.num_key_value_heads, rank, ranks)
        self.num_heads, self.num_kv_heads = config.num_attention_heads // ranks, kv.stop - kv.start
        self.head_dim, self.use_qk_norm = config.head_dim, config.use_qk_norm
        H, KV, d, D = self.num_heads, self.num_kv_heads, self.head_dim, config.hidden_size
        self.query_key_value = nn.Linear(D, (H + 2 * KV) * d, bias=False)
        if self.use_qk_norm:
            self.query_layernorm = RMSNorm(d, config.rms_norm_eps)
            self.key_layernorm = RMSNorm(d, config.rms_norm_eps)
        self.dense = nn.Linear(H * d, D, bias=False)
        self.cache_dtype = vllm_config.model_config.dtype
        self.attn = Attention(H, d, d ** -0.5, num_kv_heads=KV, cache_config=vllm_config.cache_config,
                              quant_config=None, prefix=f"{prefix}.attn")
        self.strict = False  # strict mode: our attention over the paged cache (attend_strict)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                x_quant=None) -> torch.Tensor:
        N = x.shape[0]
        H, KV, d = self.num_heads, self.num_kv_heads, self.head_dim
        dt = compute_dtype(self.dense.weight)
        strict = self.strict
        qkv = _project(self.query_key_value, x, strict, x_quant).to(dt).view(N, H + 2 * KV, d)
        q, k, v = qkv.split([H, KV, KV], dim=1)
        q, k = _qk_rope(self, q, k, cos, sin)
        if strict:
            return _project(self.dense, attend_strict(self.attn, q, k, v).reshape(N, H * d), strict)
        o = self.attn(*(t.reshape(N, -1).to(self.cache_dtype) for t in (q, k, v)))
        return _sum_over_ranks(_project(self.dense, o.view(N, H * d).to(dt)))


def attend_strict(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Strict mode's softmax attention over vLLM's paged KV cache: the trainer's op
    (:func:`kernels.batch_invariant.attention`) on each sequence's keys from position 0.

    vLLM's ``Attention`` layer only owns the cache here (its spec, allocation, block tables); its
    kernel never runs, so the cache holds our layout: ``kv_cache [blocks, KV, block_size, 2d]``,
    K in the first d channels, V in the last d.  This step's K/V go to their slots
    (``slot_mapping``); the C kernel (CPU, fp32) or the Triton kernel (CUDA) then reads every
    sequence's K/V in the cache through its block table
    (:func:`kernels.batch_invariant.attention.paged_attention`, the bits of the trainer's op);
    elsewhere they are gathered, positions past its length zeroed (masked keys must be finite).  q ``[N, H, d]``, k, v ``[N, KV, d]``
    (tokens of the step, in ``query_start_loc`` order) → ``[N, H, d]``."""
    N, H, d = q.shape
    out = q.new_zeros(N, H, d)
    context = get_forward_context()
    metadata = context.attn_metadata
    meta = metadata.get(attn.layer_name) if isinstance(metadata, dict) else None
    if meta is None:  # profile and dummy runs
        return out
    cache = attn.kv_cache                                                   # [blocks, KV, bs, 2d]
    block_size = cache.shape[2]
    n = meta.num_actual_tokens
    slot = context.slot_mapping[attn.layer_name][:n].long()
    kept = slot >= 0
    slot = slot[kept]
    cache[slot // block_size, :, slot % block_size] = torch.cat((k[:n][kept], v[:n][kept]), -1).to(cache.dtype)
    reqs = meta.seq_lens.shape[0]
    if not reqs:
        return out
    seq_lens = meta.seq_lens[:reqs].long()
    starts = meta.query_start_loc[:reqs + 1]
    if n == reqs:  # decodes only: one query per request, at its last position
        o = paged_attention(q[:n, None], cache[..., :d].transpose(1, 2), cache[..., d:].transpose(1, 2),
                            meta.block_table[:reqs], block_size, seq_lens[:, None] - 1, d ** -0.5)
        if o is not None:
            out[:n] = o[:, 0]
            return out
    # request r's queries are its last (start[r+1] - start[r]) positions
    rows, valid = request_rows(starts)
    count = valid.sum(1, keepdim=True)
    positions = torch.where(valid, seq_lens[:, None] - count + torch.arange(rows.shape[1], device=q.device), 0)
    qs = torch.cat((q[:n], q.new_zeros(1, H, d)))[rows]                      # [R, Tq, H, d]
    # the C or Triton kernel reads the keys in the cache through the block table; else they are gathered
    o = paged_attention(qs, cache[..., :d].transpose(1, 2), cache[..., d:].transpose(1, 2), meta.block_table[:reqs],
                        block_size, positions, d ** -0.5)
    if o is None:
        pos = torch.arange(int(seq_lens.max()), device=q.device)
        blocks = meta.block_table[:reqs, pos // block_size].long()            # [R, S]
        kv = cache[blocks, :, pos % block_size].to(q.dtype)                  # [R, S, KV, 2d]
        kv = torch.where((pos[None, :] < seq_lens[:, None])[..., None, None], kv, 0.0)  # masked keys finite
        o = invariant_attention(qs, kv[..., :d], kv[..., d:], positions, d ** -0.5)
    out[rows[valid]] = o[valid]
    return out


class DecoderLayer(nn.Module):
    def __init__(self, config, vllm_config: VllmConfig, prefix: str, layer_idx: int):
        super().__init__()
        attn = RingSoftmaxAttention if config.is_softmax_layer(layer_idx) else RingLinearAttention
        self.attention = attn(config, vllm_config, prefix=f"{prefix}.attention")
        # the MLPs with this rank's slice of every intermediate width (all of it at one rank)
        local = local_config(config, get_tensor_model_parallel_world_size())
        self.mlp = (StackedMoE(local) if config.is_moe_layer(layer_idx)
                    else MLP(local.hidden_size, local.intermediate_size))
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> torch.Tensor:
        """hidden: the fp32 residual stream ``[N, D]``; returns the next one.  With FP8
        projections each norm may also hand them its output quantized (``x_quant``, as the
        trainer's layer: :mod:`models.ring_linear.fp8_inputs`)."""
        normed, x_quant = self.input_layernorm(hidden, quantize=True)
        h = hidden + self.attention(normed, positions, cos, sin, x_quant).to(hidden.dtype)
        normed, x_quant = self.post_attention_layernorm(h, quantize=True)
        return h + _sum_over_ranks(self.mlp(normed, x_quant)).to(h.dtype)


@support_torch_compile(dynamic_arg_dims={"input_ids": 0, "positions": 0, "inputs_embeds": 0})
class BailingMoeLinearV2Model(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, vllm_config, f"{prefix}.layers.{i}", i)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_dim, self.rope_theta = config.rotary_dim, config.rope_theta

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        h = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        dt = compute_dtype(self.norm.weight)
        h = h.to(dt)  # fp32 residual stream
        # One RoPE table per step for every layer, from vLLM's per-token positions.
        cos, sin = rope_cos_sin(positions, self.rotary_dim, self.rope_theta, dt)
        for layer in self.layers:
            h = layer(h, positions, cos, sin)
        return self.norm(h)


class BailingMoeLinearV2ForCausalLM(nn.Module, HasInnerState, IsHybrid):
    """vLLM entry class for ``BailingMoeLinearV2ForCausalLM`` checkpoints."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        if vllm_config.parallel_config.pipeline_parallel_size != 1:
            raise ValueError("the Ring-linear vLLM model does not support pipeline parallelism")
        self.tp_rank, self.tp_size = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        check_tensor_parallel(config, self.tp_size)
        if getattr(config, FP8_CONFIG_KEY, None):
            from kernels.fp8.format import BLOCK

            check_fp8_blocks(config, self.tp_size, BLOCK)
        if self.tp_size > 1 and getattr(config, STRICT_CONFIG_KEY, False):
            raise ValueError(f"mode: strict needs tensor_parallel_size 1 (got {self.tp_size}): the sum over "
                             "ranks changes the trainer's bits; use mode: fast or one rank per engine")
        _compile_on_gpus(vllm_config)
        fp8 = getattr(config, FP8_CONFIG_KEY, None)
        if fp8:
            # FP8 turns the last-bit differences of inductor's fused norms and activations into
            # whole quantization steps (teacher-forced |Δ log-prob| 0.8 compiled vs 1e-6 eager on
            # the tiny model, docs/decisions.md): the FP8 engine runs the trainer's eager ops
            _run_eagerly(vllm_config, "with model.fp8: compiled rounding differs from the trainer's and FP8 amplifies it")
        if getattr(config, STRICT_CONFIG_KEY, False):
            # inductor fuses and reduces in its own order; strict mode needs the trainer's ops
            _run_eagerly(vllm_config, "in strict mode: the trainer's batch-invariant ops, unfused")
        self.config = config
        self.model = BailingMoeLinearV2Model(vllm_config=vllm_config, prefix="model")
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if fp8:  # the recipe's model.fp8: the decoder's projections and experts, as the trainer's
            switched = swap_linears_to_fp8(self.model, **fp8)
            fused = fuse_fp8_inputs(self.model)  # as the trainer's model does
            logger.info("model.fp8: %d projections run as FP8 GEMMs (%s); %d norms quantize their FP8 "
                        "consumers' input", len(switched), fp8, fused)
        self.strict = bool(getattr(config, STRICT_CONFIG_KEY, False))
        self.copy_plan: CopyPlan | None = None  # the weight sync's direct copies (weight_copy_plan)
        if self.strict:  # the recipe's mode: strict: the trainer's batch-invariant ops, eagerly
            logger.info("mode: strict: %d layers run batch-invariant ops", use_strict(self.model))

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.word_embeddings(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors=None, inputs_embeds: torch.Tensor | None = None, **_) -> torch.Tensor:
        return self.model(input_ids, positions, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """fp32 logits ``[N, V]`` from the fp32 final-norm output (DESIGN §4: weight-dtype
        operands, fp32 accumulation; the same op the trainer's log-probs use)."""
        w = self.lm_head.weight
        if self.strict:  # the trainer's strict head: the row-tiled GEMM (trainer.logprobs)
            return invariant_linear(hidden_states.to(w.dtype), w).float()
        return logits_fp32(hidden_states.to(w.dtype), w)

    # --- state cache (vLLM's hybrid-model hooks) ---------------------------------------------

    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig) -> tuple[tuple[int, int, int]]:
        c = vllm_config.model_config.hf_config
        return MambaStateShapeCalculator.linear_attention_state_shape(
            num_heads=c.num_attention_heads, tp_size=vllm_config.parallel_config.tensor_parallel_size,
            head_dim=c.head_dim)

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig) -> tuple[torch.dtype]:
        return (STATE_DTYPE,)

    @classmethod
    def get_mamba_state_copy_func(cls) -> tuple:
        return MambaStateCopyFuncCalculator.linear_attention_state_copy_func()

    # --- weights ----------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Loads checkpoint tensors into the parameters of the same name (the first load and
        every in-place weight sync); experts' weights (the routed ones, and the shared one when
        stacked) go into their rows of the layer's stacked weights.  Skips what the trainer's loader skips (logged there: MTP heads,
        exported buffers); any other unknown name raises ``ValueError`` listing them, and so
        does a layer that received only some of its (stacked) experts' weights.  Missing names are
        reported by vLLM's loader after this returns.  Under tensor parallelism each tensor is
        first cut to this rank's slice (:func:`.tensor_parallel.shard`): every sender sends whole
        tensors, every rank keeps its part."""
        params = dict(self.named_parameters())
        c = self.config
        loaded, unexpected = set(), []
        experts: dict[str, set[str]] = {}  # MoE layer → the stacked experts' names it received
        for name, tensor in weights:
            tensor = shard(name, tensor, c, self.tp_rank, self.tp_size)
            where = checkpoint_destination(name, params, self._stacked_moe)
            if where is None:
                if not skipped_names({name}, c.num_hidden_layers, c.num_nextn_predict_layers):
                    unexpected.append(name)
                continue
            target, args = where
            param = params[target]
            shape = param[args[0], args[1]:args[2]].shape if args else param.shape
            if args:  # a stacked expert's rows
                experts.setdefault(target.rsplit(".", 1)[0], set()).add(name)
            if tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"weight {name}: checkpoint shape {list(tensor.shape)} != model "
                                 f"shape {list(shape)} (does config.json match the weights?)")
            # vLLM's loader hook, not a bare copy: the in-place reload swaps parameters for
            # placeholders and counts what each layer receives through this hook.
            getattr(param, "weight_loader", default_weight_loader)(param, tensor, *args)
            loaded.add(target)
        if unexpected:
            raise ValueError(f"the checkpoint has {len(unexpected)} weights the Ring-linear model "
                             f"does not have: {', '.join(sorted(unexpected)[:40])}")
        partial = [missing for moe, got in experts.items()
                   for missing in set(self._stacked_moe(moe).checkpoint_names(moe)) - got]
        if partial:
            raise ValueError(f"the checkpoint lacks {len(partial)} expert weights of layers it has "
                             f"others of: {', '.join(sorted(partial)[:40])}")
        quantize_fp8_weights(self)  # model.fp8: the new weights quantized once, for every step until the next load
        return loaded

    def weight_copy_plan(self, specs: list[TensorSpec]) -> CopyPlan:
        """Where each of the (name, shape, dtype) the trainer sends lands in this rank's
        parameters (:mod:`.copy_plan`); made at the first sync and reused while the trainer sends
        the same tensors (every sync) and the parameters are the same objects."""
        key = tuple(specs)
        if self.copy_plan is None or self.copy_plan.specs != key or not self.copy_plan.still_valid():
            self.copy_plan = plan_copies(self, key, self.config, self.tp_rank, self.tp_size)
        return self.copy_plan

    def copy_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        """The weight sync without vLLM's reload: every tensor's pieces copied straight into its
        parameters (one ``_foreach_copy_``; refused whole, before any copy, when a tensor does
        not fit), then the FP8 weights re-quantized as after ``load_weights``.  Returns the
        tensor count."""
        plan = self.weight_copy_plan([(name, tuple(t.shape), t.dtype) for name, t in named_tensors])
        plan.copy([t for _, t in named_tensors])
        quantize_fp8_weights(self)
        return len(named_tensors)

    def _stacked_moe(self, path: str) -> StackedMoE | None:
        try:
            module = self.get_submodule(path)
        except AttributeError:
            return None
        return module if isinstance(module, StackedMoE) else None


__all__ = ["BailingMoeLinearV2ForCausalLM"]
