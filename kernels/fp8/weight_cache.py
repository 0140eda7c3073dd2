"""A training weight's FP8 quantizations, kept from one optimizer step to the next.

A training forward quantizes W (128×128 blocks) and its backward Wᵀ; with gradient accumulation
over n micro-batches (and again under activation checkpointing, whose backward re-runs the
forward) that is n times the same bits per optimizer step. :class:`WeightQuantCache` keeps
``(wq, ws)`` and ``(wq_t, ws_t)`` of one weight until it changes.

When is a cached quantization stale? Two guards, both needed:

- the weight's **version counter** (``tensor._version``, shared by a parameter and its views,
  e.g. one expert's slice of a stacked parameter) and its storage address: every in-place
  change through autograd-visible ops (``p.add_``, ``p.copy_`` — the torch optimizers' updates)
  bumps the counter, and a parameter re-pointed at other memory (``p.data = ...``) moves;
- an **explicit clear** (:func:`clear_fp8_weight_caches`) that the trainer calls after every
  optimizer step and weight load: DeepSpeed writes updated weights through ``p.data`` views and
  collectives into flat buffers (ZeRO-1/2: ``bit16 partition.data.copy_(fp32 master)`` and an
  all-gather into the buffer the parameters view), which bump no version counter of the
  parameter and keep its address — the first guard alone would serve stale bits there.

ZeRO-3 re-gathers each parameter for every forward and backward; a full quantized copy per
rank would undo its partitioning (1 byte per weight element per layout), so the trainer does
not cache under ZeRO-3 (``cache_weights`` off), and a gathered buffer at a new address would
miss anyway. Bitwise: a hit returns exactly what quantizing now would (the same function on the
same values), which the tests check, stale case included.
"""

from __future__ import annotations

import torch

from ..backend import Backend
from .quantize import quantize_weight, quantize_weight_t


class WeightQuantCache:
    """(wq, ws) and (wq_t, ws_t) of one weight, each valid while the weight's version counter,
    address, shape, dtype and the scale option are those it was quantized with, and until
    :meth:`clear`. ``hits`` / ``misses`` count lookups (tests, benchmarks)."""

    def __init__(self) -> None:
        self._entries: dict[bool, tuple[tuple, torch.Tensor, torch.Tensor]] = {}
        self.hits = self.misses = 0

    def clear(self) -> None:
        self._entries.clear()

    def get(self, weight: torch.Tensor, pow2_scale: bool, transposed: bool,
            backend: Backend = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """``quantize_weight_t(weight)`` if ``transposed`` else ``quantize_weight(weight)``,
        from the cache when still valid. weight [N, K] → (q [N, K] or [K, N] e4m3, fp32 scales)."""
        key = (weight._version, weight.data_ptr(), tuple(weight.shape), weight.stride(), weight.dtype,
               weight.device, pow2_scale, backend)
        entry = self._entries.get(transposed)
        if entry is not None and entry[0] == key:
            self.hits += 1
            return entry[1], entry[2]
        self.misses += 1
        quantize = quantize_weight_t if transposed else quantize_weight
        with torch.no_grad():
            q, s = quantize(weight.detach(), pow2_scale, backend=backend)
        self._entries[transposed] = (key, q, s)
        return q, s


def clear_fp8_weight_caches(model: torch.nn.Module) -> int:
    """Drop every cached weight quantization of ``model`` (each module's ``clear_weight_cache``:
    ``FP8Linear``, the trainer's stacked experts). The trainer calls it after each optimizer step
    and weight load. Returns how many modules held a cache."""
    cleared = 0
    for module in model.modules():
        if hasattr(module, "clear_weight_cache") and module.clear_weight_cache():
            cleared += 1
    return cleared


__all__ = ["WeightQuantCache", "clear_fp8_weight_caches"]
