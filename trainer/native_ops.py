"""Where DeepSpeed's JIT-built native ops live: one build folder per Python install.

Every trainer rank's `deepspeed.init_distributed` loads the `deepspeed_shm_comm` op, which torch
builds with ninja into `~/.cache/torch_extensions/py311_cpu/` by default: one folder for every
install of that Python version on the machine. Two installs (a checkout's `.venv` and a clean
clone's, say) write different absolute paths into the same `build.ninja`, so each rebuilds the op
the other built last: a minute of compiling per trainer start on 2 cores (seen on the dev machine
as `.ninja_log` alternating between two command hashes). Keying the folder by the install
(`sys.prefix`) makes the op build once per install; `scripts/install.sh` builds it up front
(`python -m trainer.native_ops`). A `TORCH_EXTENSIONS_DIR` the user exported is kept.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time


def use_install_build_dir() -> str:
    """Points torch's extension builds at this install's own folder (unless the user chose one);
    returns the folder in force. Call before DeepSpeed builds or loads an op."""
    chosen = os.environ.get("TORCH_EXTENSIONS_DIR")
    if chosen:
        return chosen
    from torch.utils.cpp_extension import get_default_build_root

    install = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    folder = os.path.join(get_default_build_root(), f"lockstep-{install}")
    os.environ["TORCH_EXTENSIONS_DIR"] = folder
    return folder


def prebuild() -> float:
    """Builds (or finds already built) DeepSpeed's shared-memory comm op; returns the seconds taken."""
    use_install_build_dir()
    from deepspeed.comm.torch import build_shm_op

    start = time.time()
    build_shm_op()  # None where the accelerator has no such op (CUDA): nothing to build
    return time.time() - start


if __name__ == "__main__":
    seconds = prebuild()
    print(f"DeepSpeed native ops ready in {os.environ['TORCH_EXTENSIONS_DIR']} ({seconds:.1f} s)")
