"""Linear attention of the Ring-linear layer (DESIGN.md §3, steps 3–4): chunk and decode forms.

    S_t = λ_h S_{t-1} + k_tᵀ v_t        o_t = scale · q_t S_t        λ_h = exp(decay[h])

Public API (shared by the trainer and the vLLM-side model):

* :func:`chunk` — training and prefill, ``[B, T, H, D]`` or packed varlen, autograd.
* :func:`recurrent` — decode, one (or a few) tokens per sequence, state pool updated in place.
* :func:`decode_packed` — the engine's CPU decode step: q, k, v packed as the model projects
  them, slots checked once per step (:class:`StateSlots`), the C kernel with no per-call copies.
* :func:`layer_decay`, :func:`alibi_slopes`, :func:`layer_factor` — the per-head log-decay.
* :func:`naive_recurrence` — the float64-capable token-loop reference (tests only).

Dispatch (``backend="auto"``): CUDA tensors run the Triton kernels, CPU tensors the PyTorch
chunked / vectorised implementations.  ``backend="triton"`` on CPU tensors needs
``TRITON_INTERPRET=1`` (the tests use it); ``backend="torch"`` works everywhere.  If CUDA tensors
arrive and triton is missing, the PyTorch path runs and a warning is logged once.

Conventions: ``decay`` is the per-head *log*-decay ``g <= 0`` (fp32 ``[H]``); states are fp32
``[.., H, D, D]`` indexed ``[key dim, value dim]``; the chunk size is the constant 64.  Strict
(batch-invariant) mode needs no flag: the Triton kernels always use one fixed launch
configuration and chunk boundaries fixed from each sequence's start, so a token's output does not
depend on T, on the batch it is in, or on its neighbours in a packed batch.
"""

from __future__ import annotations

import logging
import os
import weakref

import torch

from .chunk_torch import CHUNK, chunk_torch
from .decay import alibi_slopes, layer_decay, layer_factor
from .naive import naive_recurrence
from .recurrent import StateSlots, decode_native, recurrent_torch

try:  # the Triton kernels; imported here (not lazily) so that the submodule name ``chunk``
    # never shadows the function ``chunk`` defined below.  CPU-only installs may lack triton.
    from . import chunk as _triton_chunk
except ImportError:  # pragma: no cover
    _triton_chunk = None

__all__ = ["chunk", "recurrent", "decode_packed", "StateSlots", "alibi_slopes", "layer_decay", "layer_factor",
           "naive_recurrence", "CHUNK_SIZE"]

CHUNK_SIZE = CHUNK
_log = logging.getLogger(__name__)
_warned: set[str] = set()
_LOWP = (torch.bfloat16, torch.float16, torch.float32)


def _backend(x: torch.Tensor, backend: str, allow_fp64: bool) -> str:
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "auto":
        backend = "triton" if x.is_cuda else "torch"
    if backend == "triton":
        if _triton_chunk is None:
            if x.is_cuda and "triton" not in _warned:
                _warned.add("triton")
                _log.warning("linear_attention: triton is not installed; CUDA tensors run the "
                             "(slow) PyTorch path")
            return "torch"
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before "
                             "triton is imported; use backend='torch' for CPU")
        if x.dtype == torch.float64:
            raise ValueError("the Triton kernels take bf16/fp16/fp32 inputs; float64 is for the "
                             "torch backend and the naive reference")
    return backend


# id(decay) → (weak reference, version, {dtype: exp(decay) [H, 1, 1]}) of the decay tensors
# already validated
_DECAY_CHECKED: dict[int, tuple[weakref.ref, int, dict]] = {}


def _version(t: torch.Tensor) -> int:
    """The tensor's in-place-write counter (inference tensors have none: -1)."""
    return -1 if t.is_inference() else t._version


def _check_decay(decay, H, device, triton_path) -> dict:
    """Validates ``decay`` and returns its cache entry (exp(decay) per dtype, for the CPU
    decode path)."""
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


def _decay_factor(decay: torch.Tensor, cache: dict, dtype: torch.dtype) -> torch.Tensor:
    """λ = exp(decay) as ``[H, 1, 1]`` in ``dtype``, computed once per decay version."""
    if dtype not in cache:
        cache[dtype] = decay.detach().to(dtype).exp().view(-1, 1, 1)
    return cache[dtype]


def decode_packed(qkv, decay, scale: float, state, slots: StateSlots, out) -> bool:
    """The rollout engine's CPU decode step: one token per row, q, k, v packed ``[B, 3, H, D]``
    fp32 (as the model projects them), o written into ``out`` ``[B, H, D]`` fp32, by the C kernel
    (``decode_cpu.c``).  ``decay``: the per-head log-decay, as for :func:`recurrent` (λ is
    cached per decay tensor version); ``slots``: the step's :class:`StateSlots`, checked once for
    all layers.  No other per-call checks or copies.  Returns False, having changed nothing,
    when the kernel cannot take the call (padding rows, fp64, D > 256, a non-contiguous layout,
    the kernel unavailable): the caller then runs :func:`recurrent`."""
    lam = _decay_factor(decay, _check_decay(decay, qkv.shape[2], qkv.device, False), torch.float32)
    return decode_native(qkv, lam, scale, state, slots, out)


def _check_state(name, s, shape, allow_fp64):
    ok = (torch.float32, torch.float64) if allow_fp64 else (torch.float32,)
    if s.dtype not in ok:
        raise ValueError(f"{name} must be float32 (the linear-attention state is always fp32), "
                         f"got {s.dtype}")
    if tuple(s.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(s.shape)}")


def chunk(q, k, v, decay, scale=None, initial_state=None, cu_seqlens=None,
          output_final_state=False, backend="auto"):
    """Chunked linear attention (training, prefill).

    Args:
        q, k, v: ``[B, T, H, D]``, same dtype (bf16, fp16 or fp32; fp64 on the torch backend),
            same device.  With ``cu_seqlens``, ``B`` must be 1 and the sequences are packed along T.
        decay: fp32 ``[H]`` per-head log-decay (:func:`layer_decay`); not differentiated.
        scale: multiplier of ``q S`` (None: ``D ** -0.5``).
        initial_state: fp32 ``[N, H, D, D]`` ([key dim, value dim]); N = B, or the number of
            sequences with ``cu_seqlens``.  None means zeros.  Differentiable.
        cu_seqlens: int32/int64 ``[N + 1]``, 0 first, T last, non-decreasing (checked on the host:
            one device sync).
        output_final_state: also return the fp32 state after each sequence's last token.
        backend: "auto" | "torch" | "triton" (see the module docstring).
    Returns:
        ``(o, final_state)``: o ``[B, T, H, D]`` in q's dtype; final_state fp32 ``[N, H, D, D]``
        or None.  Gradients flow to q, k, v and initial_state.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, T, H, D], got "
                             f"{getattr(x, 'shape', type(x))}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must have one shape [B, T, H, D]; got {list(q.shape)}, "
                         f"{list(k.shape)}, {list(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _LOWP + (torch.float64,):
        raise ValueError(f"q, k, v must share one dtype of bf16/fp16/fp32, got {q.dtype}, "
                         f"{k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError("q, k, v must be on one device")
    B, T, H, D = q.shape
    be = _backend(q, backend, allow_fp64=True)
    _check_decay(decay, H, q.device, be == "triton")
    if be == "triton" and (D & (D - 1) or not 16 <= D <= 256):
        raise ValueError(f"the Triton kernels need a power-of-two head dim in [16, 256], got {D}")
    N = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"with cu_seqlens the sequences are packed: B must be 1, got {B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64) \
                or cu_seqlens.numel() < 2:
            raise ValueError("cu_seqlens must be a 1-D int32/int64 tensor [N + 1]")
        cu = cu_seqlens.tolist()
        if cu[0] != 0 or cu[-1] != T or any(b < a for a, b in zip(cu, cu[1:])):
            raise ValueError(f"cu_seqlens must start at 0, end at T={T} and never decrease; got {cu}")
        N = len(cu) - 1
    if initial_state is not None:
        _check_state("initial_state", initial_state, (N, H, D, D), q.dtype == torch.float64)
    if scale is None:
        scale = D ** -0.5
    if be == "torch":
        return chunk_torch(q, k, v, decay, scale, initial_state, cu_seqlens, output_final_state)
    return _triton_chunk.ChunkFunction.apply(q.contiguous(), k.contiguous(), v.contiguous(),
                               decay.float().contiguous(), float(scale),
                               None if initial_state is None else initial_state.contiguous(),
                               cu_seqlens, output_final_state)


def recurrent(q, k, v, decay, scale, state, state_indices=None, backend="auto", out=None):
    """Decode step(s); updates ``state`` in place and returns ``o``.

    Args:
        q, k, v: ``[B, H, D]`` (one new token per sequence — the main path) or ``[B, N, H, D]``
            (N new tokens per sequence, applied in order); bf16/fp16/fp32, one dtype.
        decay: fp32 ``[H]`` per-head log-decay.
        scale: multiplier of ``q S`` (None: ``D ** -0.5``).
        state: fp32 pool ``[num_slots, H, D, D]`` ([key dim, value dim]); each slot contiguous,
            the slot stride free (vLLM pads its state pages).
        state_indices: int ``[B]``: slot of each batch row (negative: padding row, output 0,
            pool untouched), or a :class:`StateSlots` made from them once for several layers'
            calls (an engine step).  None: row b uses slot b.
        out: optional tensor of o's shape and dtype to write o into.
    Returns:
        ``o`` with q's shape and dtype.  Not differentiable (inference only).
    """
    if not all(isinstance(x, torch.Tensor) for x in (q, k, v)) or q.dim() not in (3, 4):
        raise ValueError(f"q must be [B, H, D] or [B, N, H, D], got {getattr(q, 'shape', None)}")
    if not (q.shape == k.shape == v.shape) or not (q.dtype == k.dtype == v.dtype) \
            or not (q.device == k.device == v.device):
        raise ValueError("q, k, v must share one shape, dtype and device")
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype or out.device != q.device):
        raise ValueError(f"out must match q ({q.dtype} {list(q.shape)}), got {out.dtype} {list(out.shape)}")
    single = q.dim() == 3
    q4, k4, v4 = (x[:, None] if single else x for x in (q, k, v))
    B, N, H, D = q4.shape
    be = _backend(q, backend, allow_fp64=True)
    decay_cache = _check_decay(decay, H, q.device, False)
    if not isinstance(state, torch.Tensor) or state.dim() != 4:
        raise ValueError("state must be a 4-D fp32 pool [num_slots, H, D, D]")
    _check_state("state", state, (state.shape[0], H, D, D), q.dtype == torch.float64)
    if not state[:1].is_contiguous():  # the slot stride may be padded (vLLM's state pages)
        raise ValueError("each state slot must be a contiguous [H, D, D] block (it is updated in place)")
    if state.device != q.device:
        raise ValueError(f"state is on {state.device}, inputs on {q.device}")
    slots = state_indices if isinstance(state_indices, StateSlots) else None
    indices = slots.indices if slots is not None else state_indices
    if slots is not None and (slots.batch != B or slots.num_slots != state.shape[0]):
        raise ValueError(f"StateSlots made for {slots.batch} rows of a {slots.num_slots}-slot pool, "
                         f"used with {B} rows of a {state.shape[0]}-slot pool")
    if indices is not None:
        if indices.shape != (B,) or indices.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"state_indices must be int32/int64 [B]=[{B}], got "
                             f"{indices.dtype} {list(indices.shape)}")
        if indices.device != q.device:
            raise ValueError("state_indices must be on the inputs' device")
    elif state.shape[0] < B:
        raise ValueError(f"without state_indices the pool needs >= B={B} slots")
    if scale is None:
        scale = D ** -0.5
    if be == "triton":
        from .recurrent import recurrent_triton

        if D & (D - 1) or not 16 <= D <= 256:
            raise ValueError(f"the Triton kernels need a power-of-two head dim in [16, 256], got {D}")
        if slots is None and indices is not None and indices.device.type == "cpu" \
                and bool((indices >= state.shape[0]).any()):  # (StateSlots checked their own)
            raise ValueError(f"state_indices out of range for a pool of {state.shape[0]} slots")
        o = recurrent_triton(q4, k4, v4, decay.float().contiguous(), scale, state, indices)
        o = o[:, 0] if single else o
        return o if out is None else out.copy_(o)
    if slots is None:
        slots = StateSlots(indices, B, state.shape[0], state.device)
    lam = _decay_factor(decay, decay_cache, state.dtype)
    with torch.no_grad():
        o = recurrent_torch(q4, k4, v4, lam, scale, state, slots,
                            None if out is None else (out[:, None] if single else out))
    return out if out is not None else (o[:, 0] if single else o)
