"""Per-head decay of the Ring-linear layer (DESIGN.md §3, step 3).

Convention used by every function of this package: the decay argument is the per-head
*log*-decay ``g`` (fp32, shape ``[H]``, all ``<= 0``), so the recurrence multiplies the state by
``λ_h = exp(g_h)`` once per token.  This is what flash-linear-attention's ``simple_gla`` takes as
``g_gamma`` and what its per-token ``g`` would be if it were constant over time.

    s_h = ALiBi slope of head h          = 2^(-8 (h+1) / H)   (H a power of two; interleave else)
    f_l = 1 - (l - layer_offset) / (L - 1) + 1e-5
    g_h = -s_h * f_l                         λ_h = exp(g_h)

``layer_offset``: published implementations of Ring/Bailing-linear disagree on whether the
layer factor uses the 0-based layer index ``l`` (offset 0: SGLang / vLLM style,
``1 - layer_id / (num_layers - 1)``) or ``l - 1`` (offset 1).  The checkpoint decides; the model
config carries the offset and passes it here.

This module also validates the ops' ``decay`` argument and caches λ per decay tensor version.
"""

from __future__ import annotations

import math
import weakref

import torch


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi slopes ``s_h``, fp32 ``[num_heads]``.

    For ``num_heads`` a power of two: ``s_h = 2^(-8 (h+1) / H)``.  Otherwise the standard ALiBi
    interleave: the slopes of the closest smaller power of two ``P``, followed by every other slope
    of ``2P`` heads (the odd-indexed exponents), truncated to ``H - P`` entries.
    """
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if num_heads & (num_heads - 1) == 0:
        slopes = power_of_two(num_heads)
    else:
        p = 2 ** math.floor(math.log2(num_heads))
        slopes = power_of_two(p) + power_of_two(2 * p)[0::2][: num_heads - p]
    return torch.tensor(slopes, dtype=torch.float64).to(torch.float32)


def layer_factor(layer_idx: int, num_layers: int, layer_offset: int = 0) -> float:
    """``f_l = 1 - (layer_idx - layer_offset) / (num_layers - 1) + 1e-5`` (0-based ``layer_idx``)."""
    if num_layers < 2:
        raise ValueError(f"num_layers must be >= 2 (f_l divides by num_layers - 1), got {num_layers}")
    if not 0 <= layer_idx < num_layers:
        raise ValueError(f"layer_idx must be in [0, {num_layers}), got {layer_idx}")
    return 1.0 - (layer_idx - layer_offset) / (num_layers - 1) + 1e-5


def layer_decay(num_heads: int, layer_idx: int, num_layers: int, layer_offset: int = 0) -> torch.Tensor:
    """Per-head log-decay ``g = -s_h * f_l``: fp32 ``[num_heads]``, the ``decay`` argument of
    :func:`chunk` and :func:`recurrent`.

    ``layer_idx`` is the index of the layer among *all* ``num_layers`` layers (softmax ones
    included), as in the reference implementations.  ``layer_offset`` (0 or 1 in the published
    code) is subtracted from ``layer_idx`` in the layer factor; see the module docstring.
    Computed in float64 and rounded once to fp32 so that every engine gets the same bits.
    """
    f = layer_factor(layer_idx, num_layers, layer_offset)
    g = -alibi_slopes(num_heads).to(torch.float64) * f
    if (g > 0).any():
        raise ValueError(
            f"layer_offset={layer_offset} with layer_idx={layer_idx} of {num_layers} gives a negative "
            "layer factor (a growing state); check the layer offset")
    return g.to(torch.float32)


# id(decay) → (weak reference, version, {dtype: exp(decay) [H, 1, 1]}) of the decay tensors
# already validated
_DECAY_CHECKED: dict[int, tuple[weakref.ref, int, dict]] = {}


def _version(t: torch.Tensor) -> int:
    """The tensor's in-place-write counter (inference tensors have none: -1)."""
    return -1 if t.is_inference() else t._version


def check_decay(decay: torch.Tensor, H: int, device: torch.device, triton_path: bool) -> dict:
    """Validates the ``decay`` argument of the ops (fp [H] log-decays <= 0 on the inputs' device)
    and returns its cache entry (exp(decay) per dtype, for the CPU decode path)."""
    if not isinstance(decay, torch.Tensor) or decay.shape != (H,) or not decay.is_floating_point():
        raise ValueError(f"decay must be a float tensor of shape [H]=[{H}] (per-head log-decay), got "
                         f"{getattr(decay, 'shape', type(decay))}")
    if decay.device != device:
        raise ValueError(f"decay is on {decay.device}, inputs on {device}")
    if triton_path and decay.requires_grad:
        raise ValueError("decay is a constant of the layer: the Triton path gives it no gradient "
                         "(pass decay.detach())")
    seen, version = _DECAY_CHECKED.get(id(decay)), _version(decay)
    if seen is None or seen[0]() is not decay or seen[1] != version:
        # once per tensor version: a layer's decay is a constant, and checking it on every
        # decode step was a quarter of the op's cost on small CPU batches
        if decay.device.type == "cpu" and not bool((decay <= 0).all() & decay.isfinite().all()):
            raise ValueError("decay must be finite log-decays <= 0 (λ = exp(decay) <= 1)")
        seen = _DECAY_CHECKED[id(decay)] = (weakref.ref(decay), version, {})
    return seen[2]


def decay_factor(decay: torch.Tensor, cache: dict, dtype: torch.dtype) -> torch.Tensor:
    """λ = exp(decay) as ``[H, 1, 1]`` in ``dtype``, computed once per decay version (``cache``:
    the entry :func:`check_decay` returned)."""
    if dtype not in cache:
        cache[dtype] = decay.detach().to(dtype).exp().view(-1, 1, 1)
    return cache[dtype]
