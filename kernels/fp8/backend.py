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


# Launching a Triton/Gluon kernel through ``kernel[grid](...)`` binds and specializes every
# argument in Python and looks the compiled kernel up on each call: 40-80 µs of host time per
# launch on the H100 machines' CPUs, ~1.2 ms of host time per FP8Linear fwd+bwd (7 launches),
# more than its GPU time (BENCHMARKS.md, FP8). ``launch`` does that lookup once per
# specialization and afterwards calls the compiled kernel's launcher directly.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_COMPILED: dict = {}
_COMPILED_MAX = 4096  # distinct (kernel, argument spec) pairs kept; one per shape in practice


def _spec(a):
    """What a launch's compiled kernel may depend on, for one argument: a superset of Triton's
    specialization (dtype and 16-byte alignment of pointers, exact scalar values, a descriptor's
    block, layout, shape and strides), holding no reference to any tensor."""
    if isinstance(a, torch.Tensor):
        return a.dtype, a.data_ptr() % 16 == 0
    if hasattr(a, "block_shape"):  # a TMA tensor descriptor (Triton's or Gluon's)
        return (type(a), a.base.dtype, a.base.data_ptr() % 16 == 0, tuple(a.shape), tuple(a.strides),
                tuple(a.block_shape), getattr(a, "layout", None), getattr(a, "padding", None))
    return type(a), a


def _hooks_set() -> bool:
    rt = triton.knobs.runtime  # hooks are HookChains (empty unless a profiler added one) or None
    return any(h is not None and getattr(h, "calls", True) for h in (rt.launch_enter_hook, rt.launch_exit_hook))


def launch(kernel, grid: tuple, *args, **meta) -> None:
    """``kernel[grid](*args, **meta)``, where ``args`` are all of the kernel's positional
    parameters up to the constexprs and ``meta`` the constexprs and launch options.

    The first launch of a specialization goes through Triton (compiling if needed); later ones
    with the same ``_spec`` of every argument call the compiled kernel's launcher directly, on
    the current device's current stream, which is what ``kernel[grid]`` does after its lookup.
    With a Triton launch hook set (profilers), every launch goes through Triton.
    """
    if _INTERPRET:
        kernel[grid](*args, **meta)
        return
    dev = torch.cuda.current_device()
    key = (kernel, dev, *map(_spec, args), *meta.items())
    compiled = _COMPILED.get(key)
    if compiled is None or _hooks_set():
        compiled = kernel[grid](*args, **meta)
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.clear()
        _COMPILED[key] = compiled
        return
    names = kernel.arg_names
    constexprs = [meta[n] for n in names[len(args):]]  # constexprs are passed, then ignored
    grid = (*grid, 1, 1)
    compiled.run(grid[0], grid[1], grid[2], torch._C._cuda_getCurrentRawStream(dev), compiled.function,
                 compiled.packed_metadata, None, None, None, *args, *constexprs)
