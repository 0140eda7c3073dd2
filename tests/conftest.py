"""Test-wide settings that must be in place before anything imports torch or triton.

MKL_CBWR: the MKL code path every Lockstep process runs with (rl/blas.py). Without it, two copies
of one model can disagree in the last bits on some CPUs (AMD EPYC: tests/unit/
test_ring_linear_model.py::test_sharded_checkpoint_round_trip). MKL reads it when torch loads
it, so it is set here, before any test module imports torch; the processes the tests start (Ray
actors, vLLM engines, reward workers) inherit it.

TRITON_INTERPRET=1 makes `@triton.jit` kernels run on CPU tensors in Triton's interpreter
(tests/kernels). Triton reads it when a kernel is decorated, so it must be set before the first
import of any kernel module, whichever test directory imports one first. The real engines are
unaffected: vLLM-CPU, DeepSpeed-CPU and `kernels/` on CPU tensors do not use Triton.
On a machine with an NVIDIA GPU the default is 0, the compiled kernels on CUDA tensors (the
interpreter cannot run them: `range(tl.cdiv(...))` fails on CUDA scalars, seen on an H100); the
GPU tests are marked `gpu`: `python -m pytest -m gpu tests` there.
"""

import os
import sys

from rl.blas import pin_mkl_code_path

if "torch" in sys.modules and "MKL_CBWR" not in os.environ:  # a plugin loaded torch: too late for MKL
    raise RuntimeError("torch was imported before tests/conftest.py could set MKL_CBWR: export MKL_CBWR=AUTO")
pin_mkl_code_path()
os.environ.setdefault("TRITON_INTERPRET", "0" if os.path.exists("/dev/nvidiactl") else "1")
# Every test's Ray is a private instance: a `ray start` head on the machine (another developer's,
# or one a killed test left behind) is never joined. test_job_submit clears it for its own head.
os.environ.setdefault("RAY_ADDRESS", "local")
