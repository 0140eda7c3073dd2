"""The decode state pool: which slot each batch row updates, and the checks on the pool.

States are fp32 ``[num_slots, H, K, V]`` (K = key dim rows, V = value dim columns: the layout of
vLLM's per-sequence linear-attention state cache); ``state_indices[b]`` names the slot of batch
row ``b``, a negative index (vLLM's padding slot) leaves the pool untouched and gives a zero
output.  :class:`StateSlots` reads and checks the indices once for all layers of an engine step.
"""

from __future__ import annotations

import torch


class StateSlots:
    """The state slots of one decode batch, read and checked once.

    Every linear layer of an engine step decodes the same sequences, so the rollout model builds
    this once per step and passes it to every layer's :func:`recurrent` in place of the index
    tensor: the host read of the indices, the range check and the choice of state-access path
    are then not repeated per layer.

    * ``rows``: the slots as int64 (padding rows, index < 0, read slot 0); ``valid``: which rows
      are not padding (None when all are).
    * ``view``: when the slots are an arithmetic progression (vLLM hands out state slots in
      strides, ascending or descending) the eager path updates a strided view of the pool in
      place instead of gathering and scattering; ``reverse``: the batch runs opposite to the
      view's order.
    """

    def __init__(self, state_indices: torch.Tensor | None, batch: int, num_slots: int, device=None):
        """``device``: the pool's, when ``state_indices`` is None (row b uses slot b)."""
        self.indices, self.batch, self.num_slots = state_indices, batch, num_slots
        slots = list(range(batch)) if state_indices is None else state_indices.tolist()
        if slots and max(slots) >= num_slots:
            raise ValueError(f"state_indices out of range for a pool of {num_slots} slots")
        padded = bool(slots) and min(slots) < 0
        self.rows = (torch.arange(batch, device=device) if state_indices is None
                     else state_indices.long().clamp(min=0) if padded else state_indices.long().contiguous())
        self.valid = (state_indices >= 0) if padded else None
        step = slots[1] - slots[0] if batch > 1 else 1
        evenly = not padded and step != 0 and all(b - a == step for a, b in zip(slots, slots[1:]))
        self.view, self.reverse = None, evenly and step < 0
        if evenly:
            first = min(slots[0], slots[-1]) if slots else 0
            self.view = slice(first, first + abs(step) * (batch - 1) + 1, abs(step))


def check_state(name: str, s: torch.Tensor, shape: tuple[int, ...], allow_fp64: bool) -> None:
    """ValueError unless ``s`` is fp32 (or fp64 where ``allow_fp64``) of ``shape``."""
    ok = (torch.float32, torch.float64) if allow_fp64 else (torch.float32,)
    if s.dtype not in ok:
        raise ValueError(f"{name} must be float32 (the linear-attention state is always fp32), "
                         f"got {s.dtype}")
    if tuple(s.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(s.shape)}")
