"""FP8 inputs quantized by their producers, in both engines (:func:`fuse_fp8_inputs`).

With ``model.fp8`` every FP8 projection needs its input quantized (1×128 tiles). The producers
of those inputs can do it in the pass that computes them: the RMSNorm in front of the attention
(→ ``query_key_value``, ``g_proj``) and the one in front of the MLP (→ the experts, the shared
expert, a dense MLP's gate and up) run :func:`kernels.fp8.rms_norm_fp8`; a SwiGLU runs
:func:`kernels.fp8.silu_mul_fp8` for its down projection. The consumers take the result as
``x_quant`` and skip their own quantization pass. The same bits either way: the fused kernels
quantize exactly their rounded output (``kernels/fp8/fused.py``), and on CPU their output is
the unfused expression's (tested at model level, forward and backward). On CUDA the fused
kernels' fp32 math (reduction order, ``exp``) is their own, so both engines fuse alike: each
calls this after ``swap_linears_to_fp8``.

The router keeps reading the norm's fp32 output (the fused norm returns it unrounded), and the
residual stream never sees the quantized copy.
"""

from __future__ import annotations

import torch
from torch import nn

from .moe import fp8_scale_option


def _fp8_input_format(readers: list[nn.Module | None]) -> tuple[bool, torch.dtype] | None:
    """(pow2_scale, dtype) of the first FP8 module among ``readers`` (an ``FP8Linear``, or stacked
    experts switched by ``use_fp8``), None if none is FP8: how its input must be quantized."""
    for reader in readers:
        if reader is None:
            continue
        pow2_scale = fp8_scale_option(reader)
        if pow2_scale is not None:
            return pow2_scale, reader.weight.dtype
        if getattr(reader, "fp8", None) is not None:  # GroupedExperts (trainer), StackedMoE (rollout)
            stack = reader.gate_up_proj if hasattr(reader, "gate_up_proj") else reader.experts_w13
            return reader.fp8[0], stack.dtype
    return None


def _mlp_input_readers(mlp: nn.Module) -> list[nn.Module | None]:
    if hasattr(mlp, "gate_proj"):  # a dense SwiGLU: gate and up (one shape, one decision)
        return [mlp.gate_proj]
    shared = getattr(mlp, "shared_experts", None)
    experts = getattr(mlp, "experts", mlp)  # the trainer's GroupedExperts; the rollout's StackedMoE itself
    return [experts, None if shared is None else shared.gate_proj]


def fuse_fp8_inputs(model: nn.Module, enabled: bool = True) -> int:
    """Let every decoder layer's norms and SwiGLUs quantize their FP8 consumers' inputs
    (``enabled``), or leave it to the consumers (``enabled=False``: the unfused path, same bits
    on CPU; tests and benchmarks). Call after ``swap_linears_to_fp8``. Returns the number of
    norms that now quantize."""
    fused = 0
    for layer in model.modules():
        if not all(hasattr(layer, a) for a in ("input_layernorm", "attention", "post_attention_layernorm", "mlp")):
            continue
        attention = [layer.attention.query_key_value, getattr(layer.attention, "g_proj", None)]
        for norm, readers in ((layer.input_layernorm, attention),
                              (layer.post_attention_layernorm, _mlp_input_readers(layer.mlp))):
            norm.fp8_input = _fp8_input_format(readers) if enabled else None
            fused += norm.fp8_input is not None
    for module in model.modules():
        if hasattr(module, "fuse_fp8"):  # SwiGLU, GroupedExperts, StackedMoE
            module.fuse_fp8 = enabled
    return fused


__all__ = ["fuse_fp8_inputs"]
