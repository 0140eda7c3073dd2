"""Run checkpoints: atomic directories and the `latest` pointer.

Layout under <run_dir>/checkpoints:
    step_000010/            a complete checkpoint (renamed into place only when complete)
        engine/             DeepSpeed engine state of every rank (model, optimizer, scheduler)
        hf/                 Hugging Face export: safetensors, config.json, tokenizer (vLLM loads it)
        state.json          driver state: step, weights version, data cursor, metric history
    latest                  text file naming the newest complete checkpoint, replaced atomically

A checkpoint is written into `step_000010.partial/` and renamed once every part is on disk, then
`latest` is rewritten through a temp file and os.replace: a crash at any point leaves `latest`
naming a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

STATE_FILE = "state.json"
HF_DIR = "hf"
ENGINE_DIR = "engine"


class CheckpointError(ValueError):
    """A path that is not a (complete) Lockstep or Hugging Face checkpoint."""


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def partial_dir(run_dir: Path, step: int) -> Path:
    path = checkpoints_dir(run_dir) / f"step_{step:06d}.partial"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def commit(run_dir: Path, step: int, partial: Path, state: dict, keep_last: int) -> Path:
    """Writes state.json, renames the partial directory into place, repoints `latest`, prunes."""
    (partial / STATE_FILE).write_text(json.dumps(state, indent=1))
    final = checkpoints_dir(run_dir) / f"step_{step:06d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    pointer = checkpoints_dir(run_dir) / "latest"
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(final.name + "\n")
    os.replace(tmp, pointer)
    complete = sorted(p for p in checkpoints_dir(run_dir).glob("step_*") if not p.name.endswith(".partial"))
    for old in complete[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    pointer = checkpoints_dir(run_dir) / "latest"
    if not pointer.exists():
        return None
    path = checkpoints_dir(run_dir) / pointer.read_text().strip()
    return path if (path / STATE_FILE).exists() else None


def load_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / STATE_FILE).read_text())


def resolve_model_dir(path: str | Path) -> Path:
    """A directory vLLM and transformers can load, from any of: a run directory (its newest
    complete checkpoint), a checkpoint directory, or a Hugging Face model directory."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if (path / "checkpoints").is_dir():
        newest = latest(path)
        if newest is None:
            raise CheckpointError(f"{path}: run directory has no complete checkpoint yet (wait for the first save)")
        path = newest
    if (path / HF_DIR / "config.json").exists():
        return path / HF_DIR
    if (path / "config.json").exists():
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise CheckpointError(f"{path}: has config.json but no weights (*.safetensors); the export is incomplete")
        return path
    raise CheckpointError(
        f"{path}: not a checkpoint. Pass a run directory (runs/<name>), a checkpoint (runs/<name>/checkpoints/step_N) or a Hugging Face model directory with config.json"
    )
