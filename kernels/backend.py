"""The ``backend=`` convention of every kernel family (fp8, lm_head, linear_attention,
softmax_attention).

Every public op takes ``backend: Backend = "auto"`` as a keyword argument:

* ``"auto"`` (the default): CUDA tensors run the Triton kernels, other tensors the PyTorch
  implementation (the CPU production path).
* ``"triton"``: the Triton kernels.  On CPU tensors they run in the Triton interpreter, which
  needs ``TRITON_INTERPRET=1`` set before triton is imported (the kernel tests do this).
* ``"torch"``: the PyTorch implementation, on whatever device the tensors are.

Any other value is a ``ValueError`` naming the op and the accepted values.  Where the Triton
kernels are chosen (asked for, or by ``"auto"`` on CUDA) and triton is not installed, the op
raises ``RuntimeError``: nothing falls back silently to another implementation.  The first
choice per (op, backend) is logged at INFO.

Triton is imported here, guarded, so that a CPU install without triton imports every family.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import torch

try:  # pragma: no cover - depends on the install
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    triton = None
    tl = None
    HAS_TRITON = False

Backend = Literal["auto", "triton", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "torch")

log = logging.getLogger("kernels")
_logged: set[tuple[str, str]] = set()


def resolve_backend(op: str, t: torch.Tensor, backend: str) -> Literal["triton", "torch"]:
    """The implementation ``op`` runs for input ``t`` under ``backend`` (see the module docstring)."""
    if backend == "auto":
        backend = "triton" if t.is_cuda else "torch"
    elif backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton":
        if not HAS_TRITON:
            raise RuntimeError(f"{op}: the Triton kernels need triton, which is not installed "
                               "(backend='torch' runs the PyTorch implementation)")
        if not t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"{op}: backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set "
                             "before triton is imported; backend='torch' is the CPU path")
    key = (op, backend)
    if key not in _logged:
        _logged.add(key)
        log.info("%s runs on the %s backend (%s tensors)", op, backend, t.device.type)
    return backend
