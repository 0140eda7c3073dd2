"""The Ring-linear MoE layer's modules, one definition for both engines (parameter names: below):
the router :class:`MoEGate`, the SwiGLU expert, and the experts in two layouts, both stacked —
:class:`MoE` (the trainer's: the routed experts as :class:`GroupedExperts`, two ``[E, ...]``
parameters computed by grouped GEMMs, forward and backward) and :class:`StackedMoE` (the rollout
engine's: vLLM's fused-MoE layout, the shared expert stacked with the routed ones, no autograd).

The math — routing, the order in which each token's expert terms are summed, the grouped expert
GEMMs — is :mod:`kernels.moe`'s (:class:`~kernels.moe.ExpertDispatch`,
:func:`~kernels.moe.grouped_swiglu`), so both layouts compute each expert's rows with the same
calls and sum the same terms in the same order (on CPU the trainer issues each expert's gate,
up and down GEMMs separately, as its per-expert modules did: bitwise the engine's wherever the
engine's grouped GEMMs are, tested).

Checkpoints keep one tensor per expert projection (``experts.{e}.{gate,up,down}_proj.weight``: the
published checkpoints' names, which vLLM's loaders read): the trainer's stacks are
``experts.gate_up_proj`` and ``experts.down_proj`` (the names transformers' own MoE models give
them), and transformers stacks and splits them on loading and saving through the conversion
:func:`expert_stacking` (registered by the trainer's model); the rollout maps each checkpoint
name onto a slice of its stacks (:meth:`StackedMoE.checkpoint_slot`).
"""

from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels.batch_invariant import linear as invariant_linear
from kernels.batch_invariant import silu as invariant_silu
from kernels.moe import (
    ExpertDispatch,
    every_expert_pays,
    every_expert_swiglu,
    grouped_swiglu,
    invariant_swiglu,
    quantize_stacked_experts,
    route,
    stacked_experts,
    stacked_experts_fp8,
    stacked_experts_invariant,
)
from kernels.norm import compute_dtype

from .config import BailingMoeLinearV2Config

_moe_log = logging.getLogger(__name__)
_FP8_LOOP_LOGGED: list[bool] = []


def fp8_kernels():
    """``kernels.fp8``, imported where FP8 runs — a Lockstep training path that plain transformers
    never turns on: in a try, so the exported checkpoint code keeps the import without requiring
    the package (transformers skips imports inside ``try``)."""
    try:
        import kernels.fp8 as fp8
    except ImportError as err:
        raise RuntimeError("FP8 layers are a Lockstep training path: they need its kernels.fp8 "
                           "(install Lockstep, or load the model without FP8)") from err
    return fp8


def fp8_swiglu(gate: torch.Tensor, up: torch.Tensor, fused: bool, pow2_scale: bool):
    """The FP8 down projection's input: silu(gate)·up in fp32 rounded once to gate's dtype
    (:func:`kernels.fp8.fused.silu_mul_fp32`; what ``silu_mul_quant`` computes) and, ``fused``,
    its quantization from the same pass (:func:`kernels.fp8.fused_grad.silu_mul_fp8`), else None
    (the projection quantizes it: the same bits on CPU). Both engines' FP8 SwiGLUs. → (h, h_quant)."""
    fp8 = fp8_kernels()
    if fused:  # [..., I] as [N, I] rows (h_quant is the rows')
        h, h_quant = fp8.silu_mul_fp8(gate.reshape(-1, gate.shape[-1]), up.reshape(-1, up.shape[-1]), gate.dtype,
                                      pow2_scale)
        return h.view(gate.shape), h_quant
    return fp8.silu_mul_fp32(gate, up).to(gate.dtype), None


def fp8_scale_option(projection: nn.Module) -> bool | None:
    """``pow2_scale`` of an FP8 projection (``kernels.fp8.FP8Linear``, which the model code does
    not import: the exported checkpoint code has no kernels.fp8), None for any other module."""
    return getattr(projection, "pow2_scale", None)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) · up(x))`` in the weight dtype (inputs cast to it).  ``strict``
    (strict mode): the batch-invariant GEMM and SiLU (:mod:`kernels.batch_invariant`).  FP8
    projections (``kernels.fp8.FP8Linear``): silu·up in fp32 rounded once (:func:`fp8_swiglu`),
    ``x_quant`` (the norm's quantization of x) handed to gate and up, and with ``fuse_fp8``
    (:func:`models.ring_linear.fp8_inputs.fuse_fp8_inputs`) down's input quantized by the SwiGLU
    kernel."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.strict = False
        self.fuse_fp8 = False

    def forward(self, x: torch.Tensor, x_quant: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x.to(self.gate_proj.weight.dtype)
        if self.strict:  # the projections' forwards are the row-tiled GEMM (use_strict)
            return self.down_proj(invariant_silu(self.gate_proj(x)) * self.up_proj(x))
        pow2_scale = fp8_scale_option(self.down_proj)
        if pow2_scale is not None:  # gate, up, down: one shape rule (N·K), all FP8 or none
            h, h_quant = fp8_swiglu(self.gate_proj(x, x_quant), self.up_proj(x, x_quant), self.fuse_fp8, pow2_scale)
            return self.down_proj(h, h_quant)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoEGate(nn.Module):
    """The router: ``weight [E, D]`` and the fp32 balancing bias ``expert_bias [E]`` (not trained
    by gradient).  Routing happens inside this module's call, so that ZeRO-3 has both
    parameters gathered."""

    def __init__(self, config: BailingMoeLinearV2Config):
        super().__init__()
        self.cfg = config
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.expert_bias = nn.Parameter(torch.zeros(config.num_experts, dtype=torch.float32), requires_grad=False)
        self.strict = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[N, D]`` → (expert indices int64 ``[N, k]``, gates ``[N, k]`` fp32, fp64 for fp64 weights)."""
        c, dt = self.cfg, compute_dtype(self.weight)
        project = invariant_linear if self.strict else F.linear
        logits = project(x.to(dt), self.weight.to(dt))  # router in fp32
        return route(logits, self.expert_bias, c.num_experts_per_tok, c.n_group, c.topk_group,
                     c.norm_topk_prob, c.routed_scaling_factor, strict=self.strict)


class GroupedExperts(nn.Module):
    """The E routed SwiGLU experts of a MoE layer as two stacked parameters:
    ``gate_up_proj [E, 2I, D]`` (each expert's gate_proj rows, then its up_proj rows — the
    rollout's ``experts_w13`` layout) and ``down_proj [E, D, I]``.  ``forward(rows, counts)``:
    rows ``[R, D]`` grouped by expert (``counts [E]`` each, ascending expert order) → ``[R, D]``
    in the weight dtype: on CUDA through :func:`kernels.moe.grouped_swiglu` (two grouped GEMMs
    for all experts, four in the backward); on CPU and in FP8 expert by expert
    (:meth:`_per_expert`: the GEMMs the per-expert modules ran, bitwise).  Under ZeRO-3 the layer's experts are two parameters gathered
    together in this module's forward hook, not 3·E modules gathered one by one."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        self.fp8: tuple[bool, bool] | None = None  # (pow2_scale, batch_invariant) once use_fp8 ran
        self.weight_caches: list | None = None  # per expert (gate, up, down) WeightQuantCache, cache_weights
        self.fuse_fp8 = False  # FP8: down's input quantized by the SwiGLU kernel (fuse_fp8_inputs)
        self.strict = False  # strict mode: kernels.moe.invariant_swiglu, the rollout's strict expert op
        with torch.no_grad():  # each expert's projections as nn.Linear initialises them, in its order
            for expert in range(num_experts):
                for weight in self.expert_weights(expert):
                    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))

    def expert_weights(self, expert: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views of one expert's (gate_proj, up_proj, down_proj) weights, the checkpoint's
        ``[I, D]``, ``[I, D]``, ``[D, I]`` tensors."""
        inter = self.down_proj.shape[-1]
        return self.gate_up_proj[expert, :inter], self.gate_up_proj[expert, inter:], self.down_proj[expert]

    def fp8_weight_shape(self) -> tuple[int, int]:
        """One expert projection's [N, K] (gate's), for ``model.fp8.min_weight_elements``."""
        return self.down_proj.shape[-1], self.down_proj.shape[-2]

    def use_fp8(self, pow2_scale: bool = False, batch_invariant: bool = False, cache_weights: bool = False) -> None:
        """Run the experts' projections as FP8 GEMMs (called by
        :func:`kernels.fp8.swap_linears_to_fp8`): each expert's gate, up and down weights
        quantized as the separate weights they are in the checkpoint, as the rollout's
        ``stacked_experts_fp8`` quantizes them; ``cache_weights``: once per optimizer step."""
        self.fp8 = (pow2_scale, batch_invariant)
        if cache_weights:
            self.weight_caches = [tuple(fp8_kernels().WeightQuantCache() for _ in range(3))
                                  for _ in range(self.gate_up_proj.shape[0])]
        if not _FP8_LOOP_LOGGED:
            _FP8_LOOP_LOGGED.append(True)
            _moe_log.warning("FP8 experts in training run one fp8_linear per expert projection (the grouped "
                         "FP8 GEMM has no backward yet); the bf16 experts run grouped GEMMs")

    def fp8_projections(self) -> int:
        """The weight matrices running as FP8 GEMMs (3 per expert, or none)."""
        return 0 if self.fp8 is None else 3 * self.gate_up_proj.shape[0]

    def clear_weight_cache(self) -> bool:
        """Forget the cached expert quantizations (after an optimizer step); True if cached."""
        for caches in self.weight_caches or ():
            for cache in caches:
                cache.clear()
        return self.weight_caches is not None

    def forward(self, rows: torch.Tensor, counts: torch.Tensor,
                rows_quant: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """rows_quant (FP8): the rows' quantization, taken by the norm's kernel."""
        rows = rows.to(self.gate_up_proj.dtype)
        if self.strict:
            return invariant_swiglu(rows, counts, self.gate_up_proj, self.down_proj)
        if self.fp8 is not None:
            return self._per_expert_fp8(rows, counts, rows_quant)
        if rows.is_cuda:
            return grouped_swiglu(rows, counts, self.gate_up_proj, self.down_proj)
        return self._per_expert(rows, counts, F.linear)

    def _per_expert(self, rows: torch.Tensor, counts: torch.Tensor, linear) -> torch.Tensor:
        """``down_e(silu(gate_e r) · up_e r)`` expert by expert, ``linear(x, weight)`` on views of
        the stacks: gate, up and down as three separate GEMMs, exactly the calls the per-expert
        ``nn.Linear`` modules made before the experts were stacked, so autograd's backward issues
        their GEMMs too (the input gradient is gate's + up's, not one GEMM over ``[2I, D]``).  The
        CPU path (bf16/fp32: the bits the trainer computed with one module per expert, forward
        and backward, so the CPU demo's numbers do not move) and the FP8 path (no grouped FP8
        GEMM with a backward yet).  ``unbind``/``split`` views: their backward stacks the
        per-expert gradients once, no add."""
        inter = self.down_proj.shape[-1]
        out = []
        for part, gate_up, down in zip(rows.split(counts.tolist()), self.gate_up_proj.unbind(0),
                                       self.down_proj.unbind(0)):
            gate, up = gate_up.split(inter)
            out.append(linear(F.silu(linear(part, gate)) * linear(part, up), down))
        return torch.cat(out)

    def _per_expert_fp8(self, rows: torch.Tensor, counts: torch.Tensor, rows_quant) -> torch.Tensor:
        """:meth:`_per_expert` with ``fp8_linear`` (forward, data and weight gradients as FP8
        GEMMs) and this module's scale options, as the rollout's ``stacked_experts_fp8``
        quantizes each projection; each expert's three weights through their caches when
        ``cache_weights`` is on."""
        pow2_scale, invariant = self.fp8
        linear = functools.partial(fp8_kernels().fp8_linear, pow2_scale=pow2_scale, batch_invariant=invariant)
        inter, sizes = self.down_proj.shape[-1], counts.tolist()
        caches = self.weight_caches or [(None, None, None)] * len(sizes)
        parts_quant = zip(*(t.split(sizes) for t in rows_quant)) if rows_quant is not None else [None] * len(sizes)
        out = []
        for part, part_quant, gate_up, down, (gate_c, up_c, down_c) in zip(
                rows.split(sizes), parts_quant, self.gate_up_proj.unbind(0), self.down_proj.unbind(0), caches):
            gate, up = gate_up.split(inter)
            h, h_quant = fp8_swiglu(linear(part, gate, x_quant=part_quant, weight_cache=gate_c),
                                    linear(part, up, x_quant=part_quant, weight_cache=up_c), self.fuse_fp8, pow2_scale)
            out.append(linear(h, down, x_quant=h_quant, weight_cache=down_c))
        return torch.cat(out)


class MoE(nn.Module):
    """Routed SwiGLU experts (:class:`GroupedExperts`) + an optional shared expert; ``config``
    carries the Ring-linear / DeepSeek-V3 MoE fields (num_experts, num_experts_per_tok, n_group,
    topk_group, …).  The trainer's layer: differentiable, no per-expert Python call."""

    def __init__(self, config: BailingMoeLinearV2Config):
        super().__init__()
        self.cfg = config
        self.gate = MoEGate(config)
        self.experts = GroupedExperts(config.num_experts, config.hidden_size, config.moe_intermediate_size)
        shared = config.moe_shared_expert_intermediate_size * config.num_shared_experts
        self.shared_experts = SwiGLU(config.hidden_size, shared) if config.num_shared_experts > 0 else None

    def forward(self, x: torch.Tensor, x_quant: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x ``[..., D]`` (fp32 normed) → ``[..., D]`` fp32 (fp64 for fp64 weights):
        ``Σ_j w[n, j] · expert_{idx[n, j]}(x[n])`` in expert-index order, + the shared expert.
        x_quant: the FP8 quantization of x's ``[N, D]`` rows (the norm's), for FP8 experts."""
        flat = x.reshape(-1, x.shape[-1])
        idx, w = self.gate(flat)
        plan = ExpertDispatch(idx, w, self.cfg.num_experts)
        # 1×128 tiles lie along a row: the gathered rows' quantization is the gathered quantization
        rows_quant = (tuple(t[plan.token] for t in x_quant)
                      if x_quant is not None and self.experts.fp8 is not None else None)
        out = plan.combine(self.experts(flat[plan.token], plan.counts, rows_quant))
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat, x_quant).to(out.dtype)
        return out.view(x.shape)


def expert_stacking():
    """The transformers weight conversion between the checkpoint's per-expert tensors and
    :class:`GroupedExperts`' stacks: ``experts.{e}.gate_proj.weight`` and ``.up_proj.weight`` of
    every e → ``experts.gate_up_proj`` (stacked over e, gate rows then up rows), and
    ``experts.{e}.down_proj.weight`` → ``experts.down_proj``.  transformers applies it when
    loading (``from_pretrained``) and reverses it when saving (``save_pretrained``) and in
    ``revert_weight_conversion`` (the trainer's weight export and sync)."""
    from transformers.core_model_loading import Concatenate, MergeModulelist, WeightConverter

    return [
        WeightConverter(source_patterns=["mlp.experts.*.gate_proj.weight", "mlp.experts.*.up_proj.weight"],
                        target_patterns="mlp.experts.gate_up_proj",
                        operations=[MergeModulelist(dim=0), Concatenate(dim=1)]),
        WeightConverter(source_patterns="mlp.experts.*.down_proj.weight", target_patterns="mlp.experts.down_proj",
                        operations=[MergeModulelist(dim=0)]),
    ]


def load_expert_weight(param: torch.Tensor, loaded_weight: torch.Tensor, expert: int, start: int,
                       end: int) -> None:
    """Copies one expert's projection into its rows ``[start, end)`` of a stacked weight."""
    param.data[expert, start:end].copy_(loaded_weight)


class StackedMoE(nn.Module):
    """:class:`MoE` with the experts' weights stacked as inference engines keep them (vLLM's
    fused-MoE layout): ``experts_w13 [S, 2I, D]`` (gate_proj rows, then up_proj rows) and
    ``experts_w2 [S, D, I]`` (down_proj) for the E routed experts and, when it has their width
    (all presets), the shared expert as the last of the S; the router is MoE's own module.  The
    same function as :class:`MoE` (same routing, each expert's rows through the same
    :func:`~kernels.moe.grouped_swiglu`, the same terms summed in the same order, the shared
    expert added last), the shared expert in the same grouped GEMMs; no autograd (the rollout
    model).  Checkpoint names ``experts.{e}.{proj}.weight``
    and ``shared_experts.{proj}.weight`` map onto slices of the stacks (:meth:`expert_slot`)."""

    def __init__(self, config: BailingMoeLinearV2Config):
        super().__init__()
        self.cfg = config
        E, D, inter = config.num_experts, config.hidden_size, config.moe_intermediate_size
        shared = config.moe_shared_expert_intermediate_size * config.num_shared_experts
        self.gate = MoEGate(config)
        self.shared_stacked = config.num_shared_experts > 0 and shared == inter
        stack = E + self.shared_stacked
        self.experts_w13 = nn.Parameter(torch.empty(stack, 2 * inter, D), requires_grad=False)
        self.experts_w2 = nn.Parameter(torch.empty(stack, D, inter), requires_grad=False)
        for weight in (self.experts_w13, self.experts_w2):
            weight.weight_loader = load_expert_weight  # vLLM's loader hook (in-place reloads)
        self.shared_experts = (SwiGLU(D, shared) if config.num_shared_experts > 0 and not self.shared_stacked
                               else None)
        self.fp8: tuple[bool, bool] | None = None  # (pow2_scale, batch_invariant) once use_fp8 ran
        self.fp8_weights: tuple[torch.Tensor, ...] | None = None  # quantize_weight_once's
        self.fuse_fp8 = False  # FP8: down's input quantized by the SwiGLU kernel (fuse_fp8_inputs)
        self.strict = False  # strict mode: every expert through the row-tiled GEMM

    def fp8_weight_shape(self) -> tuple[int, int]:
        """One expert projection's [N, K] (gate's), for ``model.fp8.min_weight_elements``."""
        return self.experts_w2.shape[-1], self.experts_w2.shape[-2]

    def use_fp8(self, pow2_scale: bool = False, batch_invariant: bool = False, cache_weights: bool = False) -> None:
        """Run the stacked experts' projections as FP8 GEMMs, as ``FP8Linear`` experts would
        (called by :func:`kernels.fp8.swap_linears_to_fp8`; a shared expert kept as its own
        module is swapped there like any projection). ``cache_weights`` is the trainer's: this
        inference layer quantizes once per load (:meth:`quantize_weight_once`)."""
        self.fp8 = (pow2_scale, batch_invariant)

    def quantize_weight_once(self) -> None:
        """With FP8 on, quantize the stacked experts now and reuse them until the next call (the
        rollout plugin calls it after every weight load, ``kernels.fp8.quantize_fp8_weights``);
        without, every forward quantizes the live stacks."""
        if self.fp8 is not None:
            self.fp8_weights = quantize_stacked_experts(self.experts_w13, self.experts_w2, self.fp8[0])

    def fp8_projections(self) -> int:
        """The stacked weight matrices running as FP8 GEMMs (3 per stacked expert, or none)."""
        return 0 if self.fp8 is None else 3 * self.experts_w13.shape[0]

    def checkpoint_slot(self, name: str) -> tuple[str, int, int, int] | None:
        """:meth:`expert_slot` of a checkpoint name relative to this module
        (``experts.{e}.{proj}.weight``, ``shared_experts.{proj}.weight``); None for other names
        (the router's, a shared expert kept as its own module, an expert index out of range)."""
        parts = name.split(".")
        if len(parts) == 4 and parts[0] == "experts" and parts[1].isdigit() \
                and int(parts[1]) < self.cfg.num_experts:
            expert = int(parts[1])
        elif len(parts) == 3 and parts[0] == "shared_experts" and self.shared_stacked:
            expert = None
        else:
            return None
        if parts[-1] != "weight" or parts[-2] not in ("gate_proj", "up_proj", "down_proj"):
            return None
        return self.expert_slot(expert, parts[-2])

    def checkpoint_names(self, prefix: str) -> list[str]:
        """The checkpoint names that fill the stacks, under this module's ``prefix``."""
        names = [f"{prefix}.experts.{e}" for e in range(self.cfg.num_experts)]
        names += [f"{prefix}.shared_experts"] if self.shared_stacked else []
        return [f"{n}.{p}.weight" for n in names for p in ("gate_proj", "up_proj", "down_proj")]

    def expert_slot(self, expert: int | None, projection: str) -> tuple[str, int, int, int]:
        """Where ``experts.{expert}.{projection}.weight`` lives (``expert`` None: the shared
        expert's): (stacked parameter name, stack index, first row, end row), the arguments of
        :func:`load_expert_weight`."""
        index = self.cfg.num_experts if expert is None else expert
        inter = self.cfg.moe_intermediate_size
        if projection == "down_proj":
            return "experts_w2", index, 0, self.cfg.hidden_size
        start = 0 if projection == "gate_proj" else inter
        return "experts_w13", index, start, start + inter

    def forward(self, x: torch.Tensor, x_quant: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x ``[..., D]`` (fp32 normed) → ``[..., D]`` fp32, as :meth:`MoE.forward` (x_quant too)."""
        flat = x.reshape(-1, x.shape[-1])
        idx, w = self.gate(flat)
        w13, w2, shared = self.experts_w13, self.experts_w2, self.shared_stacked
        xs = flat.to(w13.dtype)
        if self.fp8 is not None:
            quantized = (self.fp8_weights if self.fp8_weights is not None
                         else quantize_stacked_experts(w13, w2, self.fp8[0]))
            xq, x_scale = x_quant if x_quant is not None else (None, None)
            out = stacked_experts_fp8(xs, idx, w, *quantized, shared, self.fp8[0], xq, x_scale, self.fuse_fp8)
        elif self.strict:
            out = stacked_experts_invariant(xs, idx, w, w13, w2, shared)
        elif torch.compiler.is_compiling() and every_expert_pays(xs, idx, w13, shared, tokens=1):
            # compiled (the rollout engine on CPU): decode-sized batches run every expert inside
            # the compiled graph, fused around the GEMMs, the rest the opaque op; chosen per call
            # (models whose experts never pay, e.g. mini's 256, skip tracing that branch)
            out = torch.cond(every_expert_pays(xs, idx, w13, shared),
                             lambda *t: every_expert_swiglu(*t, shared), lambda *t: stacked_experts(*t, shared),
                             (xs, idx, w, w13, w2))
        else:
            out = stacked_experts(xs, idx, w, w13, w2, shared)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat, x_quant).to(out.dtype)
        return out.view(x.shape)


__all__ = ["fp8_scale_option", "fp8_swiglu", "SwiGLU", "MoEGate", "GroupedExperts", "MoE", "expert_stacking", "StackedMoE", "load_expert_weight"]
