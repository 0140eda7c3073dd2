"""Small C kernels for the CPU path: built at first use with the system C compiler, loaded with
ctypes, called with raw pointers.

Why plain C and not ``torch.compile`` or a torch C++ extension: on a decode step the kernels are
~20–100 µs of work, and what surrounds them must cost less.  A ``torch.compile``d function pays
~40–80 µs per call for its guards and runtime wrappers (and inductor kept the decode step's
fp64 state update as a temporary, four passes over the states); a torch C++ extension takes
about a minute to build against torch's headers.  A C file with no torch dependency builds in
about a second, and a ctypes call costs a few µs.

Built once per (source, compiler, flags, CPU) into ``$LOCKSTEP_CACHE`` (default
``~/.cache/lockstep``) with ``-O3 -march=native -ffp-contract=off -fopenmp``: no fused
multiply-adds, so a kernel rounds as its PyTorch definition's separate ops do; OpenMP resolves
to the ``libgomp.so.1`` torch has already loaded, so its threads are torch's.  A failed build
(no compiler, say) is logged once and :func:`load` returns None: the caller runs its PyTorch
path, the same math.  ``LOCKSTEP_NATIVE_KERNELS=0`` turns the kernels off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

_log = logging.getLogger(__name__)
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
ENABLED = os.environ.get("LOCKSTEP_NATIVE_KERNELS", "1") != "0"
_LOADED: dict[Path, ctypes.CDLL | None] = {}


def _cpu_flags() -> str:
    try:
        return next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return ""


def _cache_dir() -> Path:
    return Path(os.environ.get("LOCKSTEP_CACHE", Path.home() / ".cache" / "lockstep")) / "native"


def _text_with_headers(source: Path) -> str:
    """The source and the project headers it includes (``#include "..."``, relative to it), so
    that editing a shared header rebuilds every library that includes it."""
    text = source.read_text()
    headers = re.findall(r'^#include "([^"]+)"', text, flags=re.M)
    return "\n".join([text, *(_text_with_headers((source.parent / h).resolve()) for h in headers)])


def build(source: Path) -> Path:
    """The shared library of ``source``, compiled unless already in the cache (raises on failure)."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise RuntimeError(f"no C compiler ({os.environ.get('CC', 'cc')!r} not on PATH; set CC)")
    key = hashlib.sha256("\n".join([_text_with_headers(source), compiler, *FLAGS, _cpu_flags()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"{source.stem}-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # build beside the target, then rename: processes building at once never load a partial file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            run = subprocess.run([compiler, *FLAGS, str(source), "-o", tmp], capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"{compiler} failed on {source.name}: {run.stderr.strip()[-2000:]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


def load(source: Path, signatures: dict[str, tuple]) -> ctypes.CDLL | None:
    """``source`` built and loaded, its functions typed by ``signatures`` (name → (restype,
    argtypes)); None when native kernels are off or the build failed (logged once per source)."""
    if source not in _LOADED:
        lib = None
        if not ENABLED:
            _log.warning("native CPU kernel %s off (LOCKSTEP_NATIVE_KERNELS=0); running its PyTorch path", source.name)
        else:
            try:
                lib = ctypes.CDLL(str(build(source)))
                for name, (restype, argtypes) in signatures.items():
                    fn = getattr(lib, name)
                    fn.restype, fn.argtypes = restype, argtypes
            except (OSError, RuntimeError, AttributeError) as err:
                _log.warning("native CPU kernel %s unavailable (%s); running its PyTorch path instead "
                             "(same math, slower)", source.name, err)
                lib = None
        _LOADED[source] = lib
    return _LOADED[source]
