"""The MKL code path of every process Lockstep starts (MKL conditional numerical reproducibility).

By default MKL picks its GEMM kernels by CPU and by the memory alignment of the operands, so two
copies of one model with bitwise-equal weights can give logits a few ulps apart (seen on AMD EPYC:
2.4e-7). `MKL_CBWR=AUTO` keeps the CPU's fastest instruction set but turns on MKL's reproducible
mode: results no longer depend on alignment, reductions and scheduling are deterministic for a
given thread count (docs/decisions.md, "MKL code path"). MKL reads the variable once, when it
loads, so it must be in a process's environment before that process imports torch:
- the driver: `rl.cli` calls `pin_mkl_code_path()` in its first lines;
- trainer ranks and rollout engines: Ray actors get it from `rl.placement.ACTOR_ENV`, and vLLM's
  own subprocesses inherit their actor's environment;
- reward workers: forked from a forkserver that inherits the driver's environment;
- the test session: tests/conftest.py. A user's own MKL_CBWR is kept (and logged once).
This module imports nothing heavy: it runs before torch is loaded.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

log = logging.getLogger("lockstep.blas")

MKL_CBWR = "AUTO"

# mkl_cbwr.h: the branch codes mkl_cbwr_get(MKL_CBWR_ALL) returns, and the STRICT flag bit.
_BRANCHES = {1: "off", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2",
             9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1"}
_MKL_CBWR_ALL = -1
_MKL_CBWR_STRICT = 0x10000


def pin_mkl_code_path() -> str:
    """Sets MKL_CBWR in this process's environment unless the user exported one; returns the
    value in force. Call before torch is imported (later, MKL has already read it)."""
    chosen = os.environ.get("MKL_CBWR")
    if not chosen:
        os.environ["MKL_CBWR"] = MKL_CBWR
        return MKL_CBWR
    if chosen != MKL_CBWR:
        log.warning("MKL_CBWR=%s from the environment is kept (Lockstep's default is %s; see "
                    "docs/decisions.md, \"MKL code path\")", chosen, MKL_CBWR)
    return chosen


def mkl_code_path() -> str | None:
    """The code path MKL reports in this process (loads torch): "AUTO", "AVX2,STRICT", ..., or
    "off" when the reproducible mode is off; None when torch has no MKL (e.g. an ARM build)."""
    import torch

    try:
        get = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    code = get(_MKL_CBWR_ALL)
    branch = _BRANCHES.get(code & 0xFFFF, str(code & 0xFFFF))
    return branch + (",STRICT" if code & _MKL_CBWR_STRICT else "")
