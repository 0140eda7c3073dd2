"""What every linear-attention layer of one vLLM engine step needs from the step's
linear-attention metadata (:class:`StepPlan`), computed once per step: the state slots of the
decodes and prefills, the prefills' cumulative lengths, and which sequences start this step
(their state must start at 0).  Two forms: on CPU the few per-sequence values are read on the
host (cheapest there); on GPUs nothing is read on the host, so that a captured CUDA graph
replays the step (the kernels take masks).  No vLLM import: the metadata is vLLM's
``LinearAttentionMetadata`` (or its Bailing subclass), read by field.
"""

from __future__ import annotations

import torch

from kernels.linear_attention import StateSlots


class StepPlan:
    """What every linear layer of one engine step needs from vLLM's linear-attention metadata
    (one object for the step's layers): the state slots of the decodes (a checked
    :class:`~kernels.linear_attention.StateSlots`) and of the prefills, the prefills' cumulative
    lengths, and the slots of sequences that start this step (their context is empty) —
    computed once per step, not once per layer (every layer's state pool has the same slots)."""

    _last: tuple[object, "StepPlan"] | None = None  # (metadata, its plan): the current step's

    @classmethod
    def of(cls, meta, prefix: str, num_slots: int) -> "StepPlan":
        if cls._last is None or cls._last[0] is not meta:
            cls._last = (meta, cls(meta, prefix, num_slots))
        return cls._last[1]

    def __init__(self, meta, prefix: str, num_slots: int, on_host: bool | None = None):
        """``on_host``: read the per-sequence values on the host (default: when they are on
        the CPU; the GPU path's logic is tested on CPU tensors with False)."""
        n_dec, n_pre = meta.num_decodes, meta.num_prefills
        if n_dec != meta.num_decode_tokens:
            raise RuntimeError(f"{prefix}: {meta.num_decode_tokens} decode tokens for {n_dec} decodes; "
                               "the Ring-linear model decodes one token per sequence (no speculative decoding)")
        reqs = n_dec + n_pre
        slots = meta.state_indices_tensor[:reqs]
        starts, seq_lens = meta.query_start_loc[:reqs + 1], meta.seq_lens[:reqs]
        on_host = slots.device.type == "cpu" if on_host is None else on_host
        # vLLM's own helper only clears prefills; a 1-token prompt arrives as a decode, and a
        # stale slot gave |Δ log-prob| ≈ 1 in the probe (DESIGN §10): every fresh sequence's
        # state is reset, decodes included
        if on_host:
            # On CPU the few per-sequence values are read as numpy views: an op costs ~1 µs there
            # against ~5–10 µs for a torch op, and this runs every step.  The slots are cleared
            # once per layer before its kernels run (no graph to replay on CPU).
            fresh = fresh_slots(slots.numpy(), starts.numpy(), seq_lens.numpy())
            self.fresh = None if len(fresh) == 0 else torch.from_numpy(fresh)
            self.decode_fresh = self.prefill_fresh = None
        else:
            # On GPUs nothing is read on the host: inside a captured CUDA graph (vLLM's full
            # decode graphs) only device work replays.  The kernels take a fresh-row mask and
            # read those states as 0; the padding rows of a full graph (seq_len 0, vLLM points
            # them at its null block) get slot -1: no state read or written.
            fresh = fresh_rows(starts, seq_lens)
            slots = torch.where(seq_lens > 0, slots, -1)
            self.fresh, self.decode_fresh, self.prefill_fresh = None, fresh[:n_dec], fresh[n_dec:]
        self.decodes = n_dec
        self.decode_slots = StateSlots(slots[:n_dec], n_dec, num_slots) if on_host else slots[:n_dec]
        self.native_decode = on_host  # the packed CPU kernel (decode_packed)
        self.prefill_tokens, self.prefill_slots = meta.num_prefill_tokens, slots[n_dec:]
        if n_pre:
            starts = meta.query_start_loc[n_dec:reqs + 1]
            self.prefill_cu = (starts - starts[0]).to(torch.int64)


def fresh_rows(starts, seq_lens):
    """Which of the step's sequences have an empty context (every token of theirs is in this
    step: their state must start at 0); numpy arrays or tensors, no host read.  starts
    ``[R + 1]`` (query start locations), seq_lens ``[R]`` (0: a padding row, never fresh)."""
    return (seq_lens - (starts[1:] - starts[:-1]) == 0) & (seq_lens > 0)


def fresh_slots(slots, starts, seq_lens):
    """The state slots of the :func:`fresh_rows` (slots ``[R]``, negative: padding)."""
    return slots[fresh_rows(starts, seq_lens) & (slots >= 0)]
