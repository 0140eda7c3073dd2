"""Run checkpoints: atomic directories, the `latest` pointer, and pinning one for evaluation.

Layout under <run_dir>/checkpoints:
    step_000010/            a complete checkpoint (renamed into place only when complete)
        engine/             DeepSpeed engine state of every rank (model, optimizer, scheduler)
        hf/                 Hugging Face export: safetensors, config.json, tokenizer (vLLM loads it)
        state.json          driver state: step, weights version, data cursor, the run's recipe
    latest                  text file naming the newest complete checkpoint, replaced atomically

A checkpoint is written into `step_000010.partial/` and renamed once every part is on disk, then
`latest` is rewritten through a temp file and os.replace: a crash at any point leaves `latest`
naming a complete checkpoint. Old checkpoints (beyond `schedule.keep_last`) leave the same way:
renamed out of `step_*` in one step, then deleted, so a reader sees a checkpoint whole or not at
all. `pinned` holds one for a reader that outlives the rotation (`lockstep eval` on a training
run): it hard-links the checkpoint's files into a private folder beside it, so deleting the
original frees nothing the reader still loads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rl.config import ConfigError, RunConfig, from_data, load_recipe

STATE_FILE = "state.json"
HF_DIR = "hf"
ENGINE_DIR = "engine"
PIN_PREFIX = ".eval-pin-"  # not step_*: rotation and `latest` never see a pin
GONE_PREFIX = ".removed-"  # a checkpoint on its way out (renamed, then deleted)
PIN_ATTEMPTS = 5

log = logging.getLogger("lockstep.checkpoint")


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
        remove(final)
    os.replace(partial, final)
    pointer = checkpoints_dir(run_dir) / "latest"
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(final.name + "\n")
    os.replace(tmp, pointer)
    complete = sorted(p for p in checkpoints_dir(run_dir).glob("step_*") if not p.name.endswith(".partial"))
    for old in complete[:-keep_last] if keep_last > 0 else []:
        remove(old)
    for leftover in checkpoints_dir(run_dir).glob(f"{GONE_PREFIX}*"):  # of a crash mid-removal
        shutil.rmtree(leftover, ignore_errors=True)
    return final


def remove(checkpoint: Path) -> None:
    """Deletes a checkpoint so that no reader sees it half gone: one rename takes it out of
    `step_*` (a reader linking its files then fails on the next one and knows), then rmtree."""
    gone = checkpoint.with_name(f"{GONE_PREFIX}{checkpoint.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(checkpoint, gone)
    except FileNotFoundError:
        return
    shutil.rmtree(gone, ignore_errors=True)


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None. A save running meanwhile repoints `latest` and
    then rotates the checkpoint it named before (`commit`), so a pointer read just before that
    can name a checkpoint that is gone by the check: then the pointer has moved, and it is read
    again."""
    pointer = checkpoints_dir(run_dir) / "latest"
    seen = None
    while pointer.exists():
        name = pointer.read_text().strip()
        path = checkpoints_dir(run_dir) / name
        if (path / STATE_FILE).exists():
            return path
        if name == seen:  # a pointer that stays on a missing checkpoint: nothing complete
            return None
        seen = name
    return None


def load_state(checkpoint: Path, shown_as: Path | None = None) -> dict:
    """The checkpoint's state.json; a missing or damaged one is a CheckpointError naming it."""
    path, shown = checkpoint / STATE_FILE, (shown_as or checkpoint) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{shown}: missing; the checkpoint is incomplete; {_others(shown.parent)}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{shown}: not valid JSON ({e}), the file is damaged (truncated?); "
                              f"{_others(shown.parent)}") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{shown}: not a Lockstep checkpoint state (no step); {_others(shown.parent)}")
    return state


def _others(checkpoint: Path) -> str:
    """What to do about a damaged checkpoint: the run's other complete checkpoints, if any."""
    others = sorted(p for p in checkpoint.parent.glob("step_*")
                    if p != checkpoint and not p.name.endswith(".partial") and (p / STATE_FILE).exists())
    if others:
        return f"evaluate another checkpoint of the run, e.g. {others[-1]}"
    return "the run has no other complete checkpoint: evaluate its base model or another export"


def check_export(model_dir: Path, shown_as: Path | None = None,
                 advice: str = "re-export it, or evaluate another model") -> None:
    """A Hugging Face export vLLM can load: config.json parses, weights are there, and each
    safetensors file holds the bytes its header promises (a truncated copy fails here, not as a
    traceback deep in the engine)."""
    shown, what = shown_as or model_dir, advice
    try:
        json.loads((model_dir / "config.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{shown / 'config.json'}: missing; the export is incomplete; {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{shown / 'config.json'}: not valid JSON ({e}); the export is damaged; "
                              f"{what}") from None
    weights = sorted(model_dir.glob("*.safetensors"))
    if not weights and not any(model_dir.glob("*.bin")):
        raise CheckpointError(f"{shown}: has config.json but no weights (*.safetensors); the export is "
                              f"incomplete; {what}")
    for file in weights:
        if safetensors_tensors(file) is None:
            raise CheckpointError(f"{shown / file.name}: truncated or damaged safetensors file "
                                  f"({file.stat().st_size} bytes); {what}")


def safetensors_tensors(file: Path) -> dict[str, dict] | None:
    """The tensor entries of a safetensors file's header (name → dtype, shape, data_offsets),
    read without loading a tensor; None when the header does not parse or the file is shorter than
    the header promises (a truncated copy)."""
    size = file.stat().st_size
    try:
        with file.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if 8 + n > size:
                return None
            header = json.loads(f.read(n))
        tensors = {k: t for k, t in header.items() if k != "__metadata__"}
        end = max((t["data_offsets"][1] for t in tensors.values()), default=0)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError):
        return None
    return tensors if 8 + n + end <= size else None


def _run_dir_of(checkpoint: Path) -> Path | None:
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def is_run_dir(path: Path) -> bool:
    """A run's output folder (runs/<name>): the driver writes config.yaml there at start-up."""
    return (path / "config.yaml").is_file() or (path / "checkpoints").is_dir()


def _no_checkpoint_yet(run_dir: Path) -> CheckpointError:
    try:
        every = load_recipe(run_dir / "config.yaml").schedule.save_every
        when = f"the run saves every {every} steps" if every > 0 else "the run saves only at its end"
    except ConfigError:
        when = "the run saves every schedule.save_every steps"
    if any(checkpoints_dir(run_dir).glob("step_*.partial")):
        when += "; a save is in progress"
    return CheckpointError(f"no checkpoint yet in {run_dir} ({when}); try again after its first save")


@dataclass(frozen=True)
class Pinned:
    """A model to evaluate, held on disk until released."""

    model_dir: Path  # what vLLM loads: the pinned hf/ export, or a plain Hugging Face directory
    checkpoint: Path | None  # the Lockstep checkpoint it is, as named in the run (None: plain HF)
    state: dict | None  # its state.json: step, the run's recipe (`config`)

    def recipe(self) -> RunConfig | None:
        """The recipe the checkpoint was trained with (state.json's, else the run's config.yaml),
        or None for a plain Hugging Face directory; a ConfigError names the file that failed."""
        if self.checkpoint is None:
            return None
        if self.state is not None and isinstance(self.state.get("config"), dict):
            try:
                return from_data(self.state["config"])
            except ConfigError as e:
                raise ConfigError(f"{self.checkpoint / STATE_FILE}: its recipe does not validate ({e})") from None
        run_dir = _run_dir_of(self.checkpoint)
        if run_dir is not None and (run_dir / "config.yaml").is_file():
            return load_recipe(run_dir / "config.yaml")
        return None


class _Rotated(Exception):
    """The checkpoint disappeared while it was being pinned (the run's keep_last rotation)."""


def _link(src: Path, dst: Path, copied: list[str]) -> None:
    """Hard-links src to dst, or copies it where the file system has no hard links (noted once).
    A FileNotFoundError passes through: the checkpoint was renamed away meanwhile."""
    if src.is_dir():
        dst.mkdir()
        for entry in os.scandir(src):
            _link(Path(entry.path), dst / entry.name, copied)
        return
    try:
        os.link(src, dst)
    except FileNotFoundError:
        raise
    except OSError as e:
        copied[:] = copied or [e.strerror]
        shutil.copy2(src, dst)


def _pin_files(checkpoint: Path) -> tuple[Path, Path]:
    """(the private folder, the pinned checkpoint in it): state.json and hf/, hard-linked. Raises
    _Rotated when the checkpoint disappears meanwhile: removal renames it away in one step, so
    a pin whose every link succeeded holds the whole checkpoint."""
    try:
        root = Path(tempfile.mkdtemp(prefix=PIN_PREFIX, dir=checkpoint.parent))
    except OSError as e:  # a run folder this user cannot write to: a private copy elsewhere
        root = Path(tempfile.mkdtemp(prefix=PIN_PREFIX))
        log.warning("cannot pin %s in place (%s): copying its files to %s", checkpoint, e.strerror, root)
    copied: list[str] = []
    pinned = root / checkpoint.name
    try:
        pinned.mkdir()
        for part in (STATE_FILE, HF_DIR):
            try:
                _link(checkpoint / part, pinned / part, copied)
            except FileNotFoundError:
                if checkpoint.is_dir() and not (checkpoint / part).exists():
                    continue  # missing from a checkpoint still in place: _hold says so
                raise _Rotated() from None
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    if copied:
        log.warning("pinning %s: no hard links here (%s); copied its files instead", checkpoint, copied[0])
    return root, pinned


@contextlib.contextmanager
def _hold(checkpoint: Path, root: Path, pin: Path) -> Iterator[Pinned]:
    """The pinned checkpoint, checked, until the block ends; then the pin is deleted."""
    try:
        state = load_state(pin, shown_as=checkpoint)
        if not (pin / HF_DIR).is_dir():
            raise CheckpointError(f"{checkpoint / HF_DIR}: missing, so there is no model to load (the checkpoint "
                                  f"is incomplete); {_others(checkpoint)}")
        check_export(pin / HF_DIR, shown_as=checkpoint / HF_DIR, advice=_others(checkpoint))
        yield Pinned(pin / HF_DIR, checkpoint, state)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def pinned(path: str | Path) -> Iterator[Pinned]:
    """The model a path names, held until the block ends. A run directory means its newest
    complete checkpoint; a checkpoint directory (or its hf/) that one; a Hugging Face directory
    itself. Checkpoints are pinned (see the module doc): `schedule.keep_last` may rotate them
    away while they load. A damaged or missing part is a CheckpointError naming the file."""
    path = Path(path).expanduser()
    if not path.exists():
        if path.parent.name == "checkpoints" and path.parent.is_dir():
            raise CheckpointError(f"{path}: no such checkpoint (deleted by the run's schedule.keep_last rotation?); "
                                  f"pass the run directory {path.parent.parent} to evaluate its newest one")
        raise CheckpointError(f"{path}: no such file or directory")
    if path.name == HF_DIR and (path.parent / STATE_FILE).exists():
        path = path.parent  # a checkpoint's export: the checkpoint, with its recipe
    if (path / STATE_FILE).exists() or (path / HF_DIR).is_dir() or \
            (path.name.startswith("step_") and path.parent.name == "checkpoints"):
        try:
            root, pin = _pin_files(path)
        except _Rotated:
            raise CheckpointError(f"{path}: deleted by the run's checkpoint rotation (schedule.keep_last) while "
                                  f"eval pinned it; pass the run directory to evaluate its newest checkpoint") from None
        with _hold(path, root, pin) as held:
            yield held
        return
    if is_run_dir(path) and not (path / "config.json").exists():
        for _ in range(PIN_ATTEMPTS):
            chosen = latest(path)
            if chosen is None:
                raise _no_checkpoint_yet(path)
            try:
                root, pin = _pin_files(chosen)
                break
            except _Rotated:
                log.warning("%s was rotated away (schedule.keep_last) as eval picked it; taking the newest again",
                            chosen)
        else:
            raise CheckpointError(f"{path}: its checkpoints were rotated away {PIN_ATTEMPTS} times while eval "
                                  "pinned one; pass a checkpoint directory, or raise schedule.keep_last")
        with _hold(chosen, root, pin) as held:
            yield held
        return
    if (path / "config.json").exists():
        check_export(path)
        yield Pinned(path, None, None)
        return
    raise CheckpointError(
        f"{path}: not a checkpoint. Pass a run directory (runs/<name>), a checkpoint "
        f"(runs/<name>/checkpoints/step_N) or a Hugging Face model directory with config.json")
