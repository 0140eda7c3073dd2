"""Lockstep's benchmarks, one folder per family (benchmarks/README.md). Run a script as a module
from the repository root: ``python -m benchmarks.fp8.ops --sections gemm``.

The MKL code path is pinned here, before any benchmark imports torch, so the CPU numbers are
those of the code path every Lockstep process runs (rl/blas.py).
"""

from rl.blas import pin_mkl_code_path

pin_mkl_code_path()
