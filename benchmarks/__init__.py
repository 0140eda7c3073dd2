"""Lockstep's benchmarks, one folder per family (benchmarks/README.md). Run a script as a module
from the repository root: ``python -m benchmarks.fp8.ops --sections gemm``.

The MKL code path is pinned here, before any benchmark imports torch, so the CPU numbers are
those of the code path every Lockstep process runs (rl/blas.py).
"""

import warnings

from rl.blas import pin_mkl_code_path

pin_mkl_code_path()
# A reward pool preloads the `python -m` module into its forkserver, and each worker's re-run of
# it as __mp_main__ makes runpy warn that it is already imported: harmless, and the workers,
# forked from that forkserver, inherit this filter.
warnings.filterwarnings("ignore", r".*found in sys.modules after import of package", RuntimeWarning)
