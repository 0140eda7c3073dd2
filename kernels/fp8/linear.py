"""FP8 linear layer (autograd): forward, data gradient and weight gradient all as FP8 GEMMs.

For x [M, K], W [N, K] (master weight in bf16/fp32), y = x Wᵀ (+ b):

| GEMM    | A (1×128 tiles)            | B                                   | out      |
|---------|----------------------------|-------------------------------------|----------|
| forward | quantize_act(x)     [M, K] | quantize_weight(W), 128×128  [N, K] | y [M, N] |
| dgrad   | quantize_act(dy)    [M, N] | quantize_weight_t(W), 128×128 [K, N]| dx [M, K]|
| wgrad   | quantize_act_t(dy)  [N, M] | quantize_act_t(x), 1×128     [K, M] | dW [N, K]|

Kernel launches per training step: forward 3 (x quantized both ways in one kernel, W, GEMM),
backward 4 (dy both ways in one kernel, Wᵀ, dgrad, wgrad). dgrad re-quantizes the master weight
directly into the transposed layout (bitwise the same 128×128 blocks the forward used). With a
``weight_cache`` W and Wᵀ are quantized once per optimizer step, not per micro-batch
(``weight_cache.py``); with ``x_quant`` from a fused producer (``fused_grad.py``) the forward
quantizes only xᵀ. dW
leaves the GEMM (fp32 accumulation) in the master weight's dtype. Saved for backward: xᵀ
quantized (fp8, half the bytes of a bf16 x) and the weight (a parameter: nothing extra).
Works on any device (CPU: the PyTorch path, exact and slow), so the CPU demo can run in FP8.
On CUDA the eager step is host-bound at the Ring-mini shape (Python launches, autograd's worker
thread); the step can be captured in a CUDA graph (PyTorch's whole-network capture, tested
bitwise against eager), which runs it at GPU speed (BENCHMARKS.md, FP8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backend import Backend
from .gemm import fp8_gemm
from .quantize import (
    quantize_act,
    quantize_act_both,
    quantize_act_t,
    quantize_weight,
    quantize_weight_t,
)
from .weight_cache import WeightQuantCache

_GEMM_OUT = (torch.bfloat16, torch.float16, torch.float32)


def _forward(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, x_quant, pow2_scale: bool,
             backend: Backend, invariant: bool, need_xt: bool, weight_quant=None,
             weight_cache: WeightQuantCache | None = None):
    """y = x Wᵀ (+ b) through one FP8 GEMM; with ``need_xt`` also xᵀ quantized along M (the
    weight gradient's operand), taken from the same read of x (one kernel writes both
    orientations). Returns (y, xq_t, xs_t) (None, None without ``need_xt``)."""
    xq_t = xs_t = None
    if x_quant is not None:
        xq, xs = x_quant
        if need_xt:
            xq_t, xs_t = quantize_act_t(x2, pow2_scale, backend=backend)
    elif need_xt:
        xq, xs, xq_t, xs_t = quantize_act_both(x2, pow2_scale, backend=backend)
    else:
        xq, xs = quantize_act(x2, pow2_scale, backend=backend)
    if weight_quant is not None:
        wq, ws = weight_quant
    elif weight_cache is not None:
        wq, ws = weight_cache.get(weight, pow2_scale, transposed=False, backend=backend)
    else:
        wq, ws = quantize_weight(weight, pow2_scale, backend=backend)
    y = fp8_gemm(xq, xs, wq, ws, out_dtype=x2.dtype, batch_invariant=invariant, backend=backend)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y, xq_t, xs_t


class _FP8LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias, x_quant, pow2_scale, backend, invariant, weight_cache):
        # xᵀ quantized is saved for the weight gradient instead of x (half the bytes)
        y, xq_t, xs_t = _forward(x2, weight, bias, x_quant, pow2_scale, backend, invariant,
                                 need_xt=ctx.needs_input_grad[1], weight_cache=weight_cache)
        # The weight itself is saved (a parameter: no extra memory); dgrad re-quantizes it (or
        # takes the cache's copy) straight into the transposed layout, the forward's blocks.
        ctx.save_for_backward(xq_t, xs_t, weight)
        ctx.has_bias = bias is not None
        ctx.x_dtype, ctx.weight_dtype = x2.dtype, weight.dtype
        ctx.pow2_scale, ctx.backend, ctx.invariant = pow2_scale, backend, invariant
        ctx.weight_cache = weight_cache
        return y

    @staticmethod
    def backward(ctx, dy):
        xq_t, xs_t, weight = ctx.saved_tensors
        p2, be, inv = ctx.pow2_scale, ctx.backend, ctx.invariant
        dy = dy.contiguous()
        dx = dw = db = None
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        if need_dx and need_dw:
            dyq, dys, dyq_t, dys_t = quantize_act_both(dy, p2, backend=be)
        elif need_dx:
            dyq, dys = quantize_act(dy, p2, backend=be)
        elif need_dw:
            dyq_t, dys_t = quantize_act_t(dy, p2, backend=be)
        if need_dx:
            if ctx.weight_cache is not None:
                wq_t, ws_t = ctx.weight_cache.get(weight, p2, transposed=True, backend=be)
            else:
                wq_t, ws_t = quantize_weight_t(weight, p2, backend=be)
            dx = fp8_gemm(dyq, dys, wq_t, ws_t, out_dtype=ctx.x_dtype, batch_invariant=inv, backend=be)
        if need_dw:
            dw_dtype = ctx.weight_dtype if ctx.weight_dtype in _GEMM_OUT else torch.float32
            dw = fp8_gemm(dyq_t, dys_t, xq_t, xs_t, out_dtype=dw_dtype, batch_invariant=inv, backend=be)
            dw = dw.to(ctx.weight_dtype)
        if need_db and ctx.has_bias:
            db = dy.float().sum(0)
        return dx, dw, db, None, None, None, None, None


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    x_quant: tuple[torch.Tensor, torch.Tensor] | None = None,
    weight_quant: tuple[torch.Tensor, torch.Tensor] | None = None,
    weight_cache: WeightQuantCache | None = None,
    pow2_scale: bool = False,
    batch_invariant: bool = False,
    backend: Backend = "auto",
) -> torch.Tensor:
    """y = x Wᵀ + b through FP8 GEMMs, differentiable w.r.t. x, weight and bias.

    x: [..., K] bf16/fp16/fp32; weight: [N, K] (master copy, any float dtype); bias: [N] or None.
    x_quant: optional (xq [M, K], scale) already computed from x.reshape(-1, K) — e.g. by
    ``rmsnorm_quant``/``silu_mul_quant`` — so the forward skips quantizing x (the fused kernels
    produce the same bits as ``quantize_act`` of their rounded output).
    weight_quant: optional (wq, scale) = ``quantize_weight(weight, pow2_scale)`` taken earlier,
    for inference only (an engine whose weights change only when it loads new ones quantizes
    them once per load); refused where a gradient is needed, whose backward reads the weight.
    weight_cache: a :class:`~kernels.fp8.weight_cache.WeightQuantCache` of this weight: the
    forward's W and the backward's Wᵀ quantizations are taken from it while the weight is
    unchanged (training: once per optimizer step instead of once per micro-batch; same bits).
    batch_invariant pins one GEMM tile configuration for every M (strict mode; the H100 runs
    found all configurations bitwise equal anyway, see BENCHMARKS.md). ``backend`` (as in
    :mod:`kernels.backend`) applies to every quantizer and GEMM of the forward and backward.
    Returns [..., N] in x's dtype.
    """
    if x.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise ValueError(f"x [..., K]={tuple(x.shape)} does not match weight [N, K]={tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [N]={weight.shape[0]}, got {tuple(bias.shape)}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] == 0:
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        if weight_quant is not None:
            raise ValueError("fp8_linear: weight_quant (a weight quantized earlier) is for inference; with "
                             "gradients the forward quantizes the live weight, as the backward does")
        y = _FP8LinearFn.apply(x2, weight, bias, x_quant, pow2_scale, backend, batch_invariant, weight_cache)
    else:  # inference (the rollout engine): no autograd node, no xᵀ for a weight gradient
        y = _forward(x2, weight, bias, x_quant, pow2_scale, backend, batch_invariant, need_xt=False,
                     weight_quant=weight_quant, weight_cache=weight_cache)[0]
    return y.reshape(*lead, weight.shape[0])


class FP8Linear(torch.nn.Linear):
    """Drop-in ``nn.Linear`` whose forward and backward run as block-scaled FP8 GEMMs.

    Same parameters, state-dict names and init as ``nn.Linear`` (master weight stays in its
    dtype); ``from_linear`` swaps an existing layer in place of the recipe's choice. MoE experts
    call ``fp8_linear`` per expert with their weight slice. ``cache_weights`` (training): W and
    Wᵀ quantized once per optimizer step (:class:`~kernels.fp8.weight_cache.WeightQuantCache`;
    the trainer clears it after each step). ``forward(x, x_quant=None)``: x_quant as in
    :func:`fp8_linear` (a fused producer's quantization of x).
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None,
                 pow2_scale: bool = False, batch_invariant: bool = False, cache_weights: bool = False):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.pow2_scale = pow2_scale
        self.batch_invariant = batch_invariant
        self.weight_fp8: tuple[torch.Tensor, torch.Tensor] | None = None
        self.weight_cache = WeightQuantCache() if cache_weights else None

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, pow2_scale: bool = False,
                    batch_invariant: bool = False, cache_weights: bool = False) -> "FP8Linear":
        new = cls.__new__(cls)
        torch.nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias
        new.pow2_scale, new.batch_invariant = pow2_scale, batch_invariant
        new.weight_fp8 = None
        new.weight_cache = WeightQuantCache() if cache_weights else None
        return new

    def clear_weight_cache(self) -> bool:
        """Forget the cached quantizations (after an optimizer step); True if there is a cache."""
        if self.weight_cache is None:
            return False
        self.weight_cache.clear()
        return True

    def quantize_weight_once(self) -> None:
        """Quantize the weight now and let inference forwards reuse it until the next call —
        for an engine whose weights change only when it loads new ones (the rollout plugin
        calls it after every load, :func:`quantize_fp8_weights`). The same bits as quantizing
        on every call; a training forward refuses the frozen copy."""
        with torch.no_grad():
            self.weight_fp8 = quantize_weight(self.weight, self.pow2_scale)

    def forward(self, x: torch.Tensor, x_quant: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.bias, x_quant=x_quant, weight_quant=self.weight_fp8,
                          weight_cache=self.weight_cache, pow2_scale=self.pow2_scale,
                          batch_invariant=self.batch_invariant)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", fp8=e4m3 1x128/128x128, pow2_scale={self.pow2_scale}"
                f", batch_invariant={self.batch_invariant}, cache_weights={self.weight_cache is not None}")


def runs_in_fp8(out_features: int, in_features: int, min_weight_elements: int) -> bool:
    """The per-shape rule of ``model.fp8.min_weight_elements``: a projection W [N, K] runs in FP8
    iff N·K ≥ the threshold (below it the quantization passes cost more than the FP8 GEMM saves;
    the GPU benchmark ``benchmarks/gpu/train_step.py --fp8`` measures where). Both engines apply
    it through :func:`swap_linears_to_fp8`, so they keep the same projections in bf16."""
    return out_features * in_features >= min_weight_elements


def swap_linears_to_fp8(model: torch.nn.Module, include=None, pow2_scale: bool = False,
                        batch_invariant: bool = False, cache_weights: bool = False,
                        min_weight_elements: int = 0) -> list[str]:
    """Switch a model's projections to FP8 in place (what a recipe's ``model.fp8`` does, in
    both engines, so their forwards quantize identically).

    Each ``nn.Linear`` submodule becomes an ``FP8Linear`` sharing its parameters, and a module
    that keeps linear weights in another layout (stacked experts) switches itself through its
    ``use_fp8(pow2_scale, batch_invariant)`` method. include(name, module) -> bool selects the
    modules (default: all; pass the decoder, not the whole model, to keep the LM head, which
    the alignment rules keep in fp32 accumulation with weight-dtype operands). cache_weights:
    quantize each weight once per optimizer step (training; see :class:`FP8Linear`).
    min_weight_elements: projections with N·K below it stay in their dtype
    (:func:`runs_in_fp8`; a module holding several weights, the stacked experts, decides on one
    expert's projection). Returns the names of the switched modules.
    """
    swapped = []
    for name, mod in list(model.named_modules()):
        if hasattr(mod, "use_fp8") and (include is None or include(name, mod)) \
                and runs_in_fp8(*mod.fp8_weight_shape(), min_weight_elements):
            mod.use_fp8(pow2_scale, batch_invariant, cache_weights)
            swapped.append(name)
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is torch.nn.Linear and (include is None or include(full, child)) \
                    and runs_in_fp8(child.out_features, child.in_features, min_weight_elements):
                setattr(mod, child_name, FP8Linear.from_linear(child, pow2_scale, batch_invariant, cache_weights))
                swapped.append(full)
    return swapped


def quantize_fp8_weights(model: torch.nn.Module) -> None:
    """Quantize every FP8 projection's weight of ``model`` once, for inference forwards until the
    next call (``quantize_weight_once`` on each module that has it: ``FP8Linear``, stacked
    experts). An inference engine calls it after each weight load."""
    for module in model.modules():
        if hasattr(module, "quantize_weight_once"):
            module.quantize_weight_once()


def fp8_projection_count(model: torch.nn.Module) -> int:
    """How many weight matrices of ``model`` run as FP8 GEMMs: one per ``FP8Linear``, plus what
    each module holding projections in another layout reports (``fp8_projections()``). The
    count does not depend on the layout, so two engines' models can be checked against each
    other (a side that silently stayed unquantized shows here)."""
    return sum(1 if isinstance(m, FP8Linear) else m.fp8_projections() if hasattr(m, "fp8_projections") else 0
               for m in model.modules())


__all__ = ["FP8Linear", "fp8_linear", "fp8_projection_count", "quantize_fp8_weights", "runs_in_fp8",
           "swap_linears_to_fp8"]
