"""DeepSpeed's JIT ops build into a folder of this install's own (trainer/native_ops.py), so two
installs on one machine no longer rebuild each other's shm comm op."""

import sys

from trainer import native_ops


def test_build_dir_is_keyed_by_the_install(monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    ours = native_ops.use_install_build_dir()
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setattr(sys, "prefix", "/elsewhere/.venv")
    other = native_ops.use_install_build_dir()
    assert ours != other and "lockstep-" in ours


def test_a_user_build_dir_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert native_ops.use_install_build_dir() == str(tmp_path)
