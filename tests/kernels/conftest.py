"""Kernel tests run the Triton kernels on CPU tensors in the Triton interpreter.

TRITON_INTERPRET must be set before triton is first imported, hence here (conftest is
imported before the test modules). On a GPU machine, export TRITON_INTERPRET=0 to run the
compiled kernels instead.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
