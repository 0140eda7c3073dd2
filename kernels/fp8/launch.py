"""Launching the FP8 family's Triton and Gluon kernels with little host time.

``launch(kernel, grid, *args, **meta)`` is ``kernel[grid](*args, **meta)`` that, after the first
launch of a specialization, calls the compiled kernel's launcher directly; ``TMA`` requests stand
for TMA descriptors, each encoded once per (address, shape, strides, block) and reused.
``ensure_cuda_context`` makes a device's primary context current on threads that have none.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import NamedTuple

import torch

from ..backend import log, triton

# Launching a Triton/Gluon kernel through ``kernel[grid](...)`` binds and specializes every
# argument in Python and looks the compiled kernel up on each call: 40-80 µs of host time per
# launch on the H100 machines' CPUs, ~1.2 ms of host time per FP8Linear fwd+bwd (7 launches),
# more than its GPU time (BENCHMARKS.md, FP8). ``launch`` does that lookup once per
# specialization and afterwards calls the compiled kernel's launcher directly. TMA descriptors
# are passed as ``TMA`` requests: each CUtensorMap is encoded once per (address, shape, strides,
# element type, block, swizzle) and reused (Triton's launcher encodes every descriptor on every
# call: 5-10 µs each, ~19 per FP8Linear step).
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_COMPILED: dict = {}
_COMPILED_MAX = 4096  # distinct (kernel, argument spec) pairs kept; one per shape in practice
_TENSORMAPS: dict = {}
_TENSORMAPS_MAX = 1024  # encoded descriptors kept (oldest dropped first): ~2 per live buffer


class TMA(NamedTuple):
    """A TMA descriptor argument for ``launch``: ``tensor`` tiled by ``block`` into shared memory
    with ``layout`` (a Gluon shared layout; None: a Triton kernel's descriptor)."""

    tensor: torch.Tensor
    block: tuple
    layout: object = None

    def descriptor(self):
        """The Triton / Gluon ``TensorDescriptor`` this stands for (holds the tensor)."""
        if self.layout is None:
            from triton.tools.tensor_descriptor import TensorDescriptor

            return TensorDescriptor.from_tensor(self.tensor, list(self.block))
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        return TensorDescriptor.from_tensor(self.tensor, list(self.block), self.layout)


def _with_descriptors(args) -> list:
    """``args`` with each ``TMA`` request replaced by the descriptor it stands for (what
    ``kernel[grid](...)`` and Triton's launcher take; encoded anew by them on each call)."""
    return [a.descriptor() if isinstance(a, TMA) else a for a in args]


def _spec(a):
    """What a launch's compiled kernel may depend on, for one argument: a superset of Triton's
    specialization (dtype and 16-byte alignment of pointers, exact scalar values, a descriptor's
    block, layout, shape and strides), holding no reference to any tensor."""
    if isinstance(a, torch.Tensor):
        return a.dtype, a.data_ptr() % 16 == 0
    if isinstance(a, TMA):
        t = a.tensor
        return TMA, t.dtype, t.data_ptr() % 16 == 0, t.shape, t.stride(), a.block, a.layout
    if type(a) in (int, float, bool) or a is None:
        return type(a), a
    if hasattr(a, "block_shape"):  # a TMA tensor descriptor built by the caller (Triton's or Gluon's)
        return (type(a), a.base.dtype, a.base.data_ptr() % 16 == 0, tuple(a.shape), tuple(a.strides),
                tuple(a.block_shape), getattr(a, "layout", None), getattr(a, "padding", None))
    return type(a), a


def _hooks_set() -> bool:
    rt = triton.knobs.runtime  # hooks are HookChains (empty unless a profiler added one) or None
    return any(h is not None and getattr(h, "calls", True) for h in (rt.launch_enter_hook, rt.launch_exit_hook))


@functools.cache
def _libcuda():
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuCtxGetCurrent.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.cuDeviceGet.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    lib.cuDevicePrimaryCtxRetain.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
    lib.cuCtxSetCurrent.argtypes = [ctypes.c_void_p]
    return lib


def ensure_cuda_context(dev: int) -> None:
    """Make device ``dev``'s primary CUDA context current on this thread if none is.

    Triton's launcher does this before every launch, but its TMA descriptor encoder
    (``fill_tma_descriptor``, cuTensorMapEncodeTiled) does not, and fails with "invalid device
    context" on a thread that has made no CUDA call yet: the autograd engine's worker thread when
    FP8Linear's backward is the first CUDA work it runs (H100, torch 2.11, 2026-11-27). Called
    before every encoding; a context-query when one is current."""
    lib = _libcuda()
    ctx = ctypes.c_void_p()
    if lib.cuCtxGetCurrent(ctypes.byref(ctx)) == 0 and ctx.value:
        return
    device = ctypes.c_int()
    err = (lib.cuDeviceGet(ctypes.byref(device), dev) or lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), device)
           or lib.cuCtxSetCurrent(ctx))
    if err:
        raise RuntimeError(f"CUDA error {err} making device {dev}'s primary context current on this thread")


def _tensormap_args(a: TMA, meta: dict, meta_key: tuple, dev: int) -> list:
    """The launcher arguments of one TMA descriptor: [CUtensorMap, *shape, *strides], encoded by
    Triton's ``make_tensordesc_arg`` on the first use of a key and reused after. The key holds
    every input of the encoding (device, address, shape, strides, and the compiled kernel's
    element type, swizzle and block; TMA requests always zero-fill out of bounds), so a hit
    returns exactly what encoding anew would give — for whatever tensor now lives at that
    address — and never a stale descriptor. The CUtensorMap is copied into the kernel's
    parameters at each launch (and into a CUDA graph's node when captured), so reusing the
    object is safe."""
    t = a.tensor
    key = (dev, t.data_ptr(), t.shape, t.stride(), t.dtype, a.block, meta_key)
    hit = _TENSORMAPS.get(key)
    if hit is None:
        from triton.backends.nvidia.driver import make_tensordesc_arg

        ensure_cuda_context(dev)
        hit = make_tensordesc_arg(a.descriptor(), meta)
        if len(_TENSORMAPS) >= _TENSORMAPS_MAX:
            del _TENSORMAPS[next(iter(_TENSORMAPS))]
        _TENSORMAPS[key] = hit
    return hit


class _DirectLaunch:
    """A compiled kernel launched without Triton's per-call Python: its C launcher called with
    the TMA descriptors from ``_tensormap_args`` (Triton's own wrapper, which encodes them on
    every call, is bypassed). Where this Triton's launcher is not laid out as expected (another
    version) or the kernel needs scratch memory, it goes through ``compiled.run`` with freshly
    built descriptors instead, logged once per kernel."""

    def __init__(self, compiled, kernel, args: tuple, meta: dict):
        run = compiled.run
        self.compiled = compiled
        self.constexprs = [meta[n] for n in kernel.arg_names[len(args):]]  # passed, then ignored
        self.raw = run.launch  # the module's launcher when the kernel has no descriptors
        self.fixed = (run.launch_cooperative_grid, run.launch_pdl, None, None, compiled.packed_metadata,
                      None, None, None)  # scratch buffers, metadata, launch hooks
        tma_args = [i for i, a in enumerate(args) if isinstance(a, TMA)]
        # (argument index, meta, hashable meta), last argument first (each is expanded in place);
        # meta None: the descriptor was not lowered to a CUtensorMap (base, shape, strides).
        self.tmas = []
        why = None
        if any(hasattr(a, "block_shape") for a in args):
            why = "a descriptor passed prebuilt (not as a TMA request)"
        elif tma_args:
            code = getattr(run.launch, "__code__", None)  # None: a C function, not the wrapper
            closure = (run.launch.__closure__ or ()) if code else ()
            cells = dict(zip(code.co_freevars, (c.cell_contents for c in closure))) if code else {}
            metas = cells.get("tensordesc_meta")  # one per descriptor parameter, None if not lowered
            if "launcher" not in cells or not isinstance(metas, list) or len(metas) != len(tma_args):
                why = "Triton's launcher wrapper is not the one this code knows (triton 3.6)"
            else:
                self.raw = cells["launcher"]  # wrap_handle_tensordesc's inner() wraps the C launcher
                for i, m in reversed(list(zip(tma_args, metas))):
                    key = m and tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(m.items()))
                    self.tmas.append((i, m, key))
        if compiled.metadata.global_scratch_size or getattr(compiled.metadata, "profile_scratch_size", 0):
            why = "the kernel needs scratch memory"
        self.why_not_direct = why
        if why is not None:
            log.info("launch: %s goes through Triton's launcher (descriptors built per call): %s",
                     compiled.name, why)

    def __call__(self, grid: tuple, args: tuple, dev: int) -> None:
        grid = (*grid, 1, 1)
        stream = torch._C._cuda_getCurrentRawStream(dev)
        if self.why_not_direct is not None:
            ensure_cuda_context(dev)  # Triton's launcher encodes the descriptors
            self.compiled.run(grid[0], grid[1], grid[2], stream, self.compiled.function,
                              self.compiled.packed_metadata, None, None, None,
                              *_with_descriptors(args), *self.constexprs)
            return
        flat = list(args)
        for i, m, meta_key in self.tmas:
            if m is None:
                from triton.backends.nvidia.driver import make_tensordesc_arg

                ensure_cuda_context(dev)
                flat[i:i + 1] = make_tensordesc_arg(args[i].descriptor(), None)
            else:
                flat[i:i + 1] = _tensormap_args(args[i], m, meta_key, dev)
        self.raw(grid[0], grid[1], grid[2], stream, self.compiled.function, *self.fixed, *flat, *self.constexprs)


def launch(kernel, grid: tuple, *args, **meta) -> None:
    """``kernel[grid](*args, **meta)``, where ``args`` are all of the kernel's positional
    parameters up to the constexprs (TMA descriptors as ``TMA`` requests) and ``meta`` the
    constexprs and launch options.

    The first launch of a specialization goes through Triton (compiling if needed); later ones
    with the same ``_spec`` of every argument go through ``_DirectLaunch``, on the current
    device's current stream, which is what ``kernel[grid]`` does after its lookup. With a Triton
    launch hook set (profilers), every launch goes through Triton.
    """
    if _INTERPRET:
        kernel[grid](*_with_descriptors(args), **meta)
        return
    dev = torch.cuda.current_device()
    key = (kernel, dev, *map(_spec, args), *meta.items())
    direct = _COMPILED.get(key)
    if direct is None or _hooks_set():
        ensure_cuda_context(dev)  # Triton's launcher encodes any descriptors
        compiled = kernel[grid](*_with_descriptors(args), **meta)
        if direct is None:
            if len(_COMPILED) >= _COMPILED_MAX:
                _COMPILED.clear()
            _COMPILED[key] = _DirectLaunch(compiled, kernel, args, meta)
        return
    direct(grid, args, dev)
