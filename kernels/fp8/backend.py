"""Backend choice for the FP8 and LM-head ops: Triton on CUDA tensors, PyTorch on CPU tensors.

``backend=None`` (the default everywhere) picks by device; ``"triton"`` on CPU tensors runs the
Triton kernels in the interpreter (needs ``TRITON_INTERPRET=1`` set before triton is imported;
used by the tests). The choice is logged once per (op, backend) — never silent.
Triton is imported here, guarded, so a CPU install without triton still works.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("kernels")

try:  # pragma: no cover - depends on the install
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    triton = None
    tl = None
    HAS_TRITON = False

_logged: set[tuple[str, str]] = set()
BACKENDS = ("triton", "torch")


def pick_backend(op: str, t: torch.Tensor, backend: str | None) -> str:
    """Return "triton" or "torch" for running ``op`` on tensor ``t``; log the first use."""
    if backend is None:
        backend = "triton" if t.is_cuda else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "triton":
        if not HAS_TRITON:
            raise RuntimeError(f"{op}: backend 'triton' requested but triton is not installed")
        if not t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"{op}: Triton on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported"
            )
    elif t.is_cuda:
        raise ValueError(f"{op}: backend 'torch' is the CPU path; got a CUDA tensor")
    key = (op, backend)
    if key not in _logged:
        _logged.add(key)
        log.info("%s runs on the %s backend (%s tensors)", op, backend, t.device.type)
    return backend


def check_2d(name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...] | None = None) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {dtypes}, got {t.dtype}")
