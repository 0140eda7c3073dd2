"""Run checkpoints: atomic directories, the `latest` pointer, and pinning one for evaluation.

Layout under <run_dir>/checkpoints:
    step_000010/            a complete checkpoint (renamed into place only when complete)
        engine/             DeepSpeed engine state of every rank (model, optimizer, scheduler)
        hf/                 Hugging Face export: safetensors, config.json, tokenizer (vLLM loads it)
        state.json          driver state: step, weights version, data cursor, the run's recipe
        manifest.json       every other file's size and XXH3-128 checksum; written last
    latest                  text file naming the newest complete checkpoint, replaced atomically
    damaged-step_000020/    a checkpoint that failed verification, set aside by the run (kept)

A checkpoint is written into `step_000010.partial/` and renamed once every part is on disk, then
`latest` is rewritten through a temp file and os.replace: a crash at any point leaves `latest`
naming a complete checkpoint. Old checkpoints (beyond `schedule.keep_last`) leave the same way:
renamed out of `step_*` in one step, then deleted, so a reader sees a checkpoint whole or not at
all. `pinned` holds one for a reader that outlives the rotation (`lockstep eval` on a training
run): it hard-links the checkpoint's files into a private folder beside it, so deleting the
original frees nothing the reader still loads.

Trust: every file is fsynced and checksummed (the trainer ranks do theirs,
`trainer.checkpoint_files`) before the manifest is written and fsynced, and only then is the
directory renamed into place and `latest` repointed, so `latest` names a sealed checkpoint. On
load, `verify` checks each file against the manifest; a damaged newest checkpoint (truncated
state.json, model or optimizer shard, bit rot) is named in one warning line and the previous
intact one is used: by the run (`recover`, which also sets the damaged one aside and repoints
`latest`) and by `lockstep eval` on a run directory (`pinned`). Checkpoints of older versions
without a manifest load after the structural checks that are possible without one (state.json
parses, safetensors and torch files are whole), said once as "unverified".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rl.config import ConfigError, RunConfig, from_data, load_recipe
from trainer import checkpoint_files

STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
HF_DIR = "hf"
ENGINE_DIR = "engine"
DAMAGED_PREFIX = "damaged-"  # not step_*: set aside by the run, never loaded or rotated
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


def commit(run_dir: Path, step: int, partial: Path, state: dict, keep_last: int,
           sealed: dict[str, list] | None = None) -> Path:
    """Writes state.json and the manifest, renames the partial directory into place, repoints
    `latest`, prunes. `sealed`: files already fsynced and checksummed (by the trainer ranks,
    {relative path: [size, checksum]}); the rest are sealed here. The manifest is written last,
    after every file is on disk, and the rename and the pointer only after it."""
    (partial / STATE_FILE).write_text(json.dumps(state, indent=1))
    sealed = dict(sealed or {})
    names = checkpoint_files.files_under(partial)
    sealed.update(checkpoint_files.seal(partial, [n for n in names if n not in sealed]))
    manifest = {"format": 1, "hash": checkpoint_files.HASH, "step": step,
                "files": {n: sealed[n] for n in names}}
    _write_durably(partial / MANIFEST_FILE, json.dumps(manifest, indent=1))
    checkpoint_files.fsync_dirs(partial)
    final = checkpoints_dir(run_dir) / f"step_{step:06d}"
    if final.exists():
        remove(final)
    os.replace(partial, final)
    repoint(run_dir, final)
    complete = sorted(p for p in checkpoints_dir(run_dir).glob("step_*") if not p.name.endswith(".partial"))
    for old in complete[:-keep_last] if keep_last > 0 else []:
        remove(old)
    for leftover in checkpoints_dir(run_dir).glob(f"{GONE_PREFIX}*"):  # of a crash mid-removal
        shutil.rmtree(leftover, ignore_errors=True)
    return final


def _write_durably(path: Path, text: str) -> None:
    """`path` holds `text` on disk, or keeps what it held: a temp file, fsynced, renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def repoint(run_dir: Path, checkpoint: Path) -> None:
    """`latest` names `checkpoint` (durably: the pointer and the folder's entries are fsynced)."""
    _write_durably(checkpoints_dir(run_dir) / "latest", checkpoint.name + "\n")
    checkpoint_files.fsync_dir(checkpoints_dir(run_dir))


def discard_partial(partial: Path | None) -> None:
    """Deletes what a failed save left (its partial folder); never a complete checkpoint."""
    if partial is not None and partial.name.endswith(".partial"):
        shutil.rmtree(partial, ignore_errors=True)


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
    """The checkpoint's state.json; a missing or damaged one is a CheckpointError naming it and
    the run's other checkpoints."""
    try:
        return _parse_state(checkpoint, shown_as or checkpoint)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; {_others(shown_as or checkpoint)}") from None


def _parse_state(checkpoint: Path, shown: Path) -> dict:
    path, shown = checkpoint / STATE_FILE, shown / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{shown}: missing; the checkpoint is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{shown}: not valid JSON ({e}), the file is damaged (truncated?)") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{shown}: not a Lockstep checkpoint state (no step)")
    return state


_said_unverified: set[Path] = set()


def verify(checkpoint: Path, parts: tuple[str, ...] | None = None, shown_as: Path | None = None) -> bool:
    """Checks the checkpoint's files (those under `parts`, e.g. ("state.json", "hf"); default
    all) against its manifest: each is there, has its size and its checksum. Raises a
    CheckpointError naming the first file that is not (one line). Returns False for a checkpoint
    without a manifest (written before they existed), after the checks possible without one:
    state.json parses, safetensors files hold what their headers promise, torch files are whole
    zip archives; said once per checkpoint as "unverified"."""
    shown = shown_as or checkpoint
    path = checkpoint / MANIFEST_FILE
    if not path.exists():
        _check_unverified(checkpoint, parts, shown)
        if shown not in _said_unverified:
            _said_unverified.add(shown)
            log.warning("%s: no %s (saved by an older Lockstep): loading it unverified", shown, MANIFEST_FILE)
        return False
    try:
        manifest = json.loads(path.read_text())
        files, algorithm = manifest["files"], manifest["hash"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{shown / MANIFEST_FILE}: damaged ({type(e).__name__}: {e})") from None
    if algorithm != checkpoint_files.HASH:
        raise CheckpointError(f"{shown / MANIFEST_FILE}: checksums are {algorithm}, this Lockstep reads "
                              f"{checkpoint_files.HASH}; load it with the version that saved it")
    for name, (size, checksum) in files.items():
        if parts is not None and not any(name == p or name.startswith(p + "/") for p in parts):
            continue
        file = checkpoint / name
        if not file.is_file():
            raise CheckpointError(f"{shown / name}: missing (the manifest lists {size} bytes)")
        try:
            actual = file.stat().st_size
            if actual != size:
                what = "truncated" if actual < size else "longer than saved"
                raise CheckpointError(f"{shown / name}: {actual} bytes, the manifest says {size} ({what})")
            if checkpoint_files.digest(file) != checksum:
                raise CheckpointError(f"{shown / name}: checksum differs from the manifest's (the file is "
                                      "corrupted)")
        except OSError as e:
            raise CheckpointError(f"{shown / name}: cannot be read ({e.strerror})") from None
    return True


def _check_unverified(checkpoint: Path, parts: tuple[str, ...] | None, shown: Path) -> None:
    _parse_state(checkpoint, shown)
    wanted = lambda part: parts is None or part in parts  # noqa: E731
    if wanted(HF_DIR):
        if not (checkpoint / HF_DIR).is_dir():
            raise CheckpointError(f"{shown / HF_DIR}: missing, so there is no model to load (the checkpoint "
                                  f"is incomplete)")
        check_export(checkpoint / HF_DIR, shown_as=shown / HF_DIR, advice=None)
    if wanted(ENGINE_DIR):
        if not any((checkpoint / ENGINE_DIR).rglob("*")):
            raise CheckpointError(f"{shown / ENGINE_DIR}: missing or empty (the checkpoint is incomplete)")
        for file in (checkpoint / ENGINE_DIR).rglob("*.pt"):
            if not zipfile.is_zipfile(file):  # torch.save writes a zip archive; a cut one has no end record
                raise CheckpointError(f"{shown / file.relative_to(checkpoint)}: truncated or damaged "
                                      f"({file.stat().st_size} bytes, not a whole torch file)")


def _set_aside(checkpoint: Path) -> Path:
    """Renames a damaged checkpoint out of step_* (to damaged-step_N, or damaged-step_N.2, ...)."""
    aside, n = checkpoint.with_name(f"{DAMAGED_PREFIX}{checkpoint.name}"), 1
    while aside.exists():
        n += 1
        aside = checkpoint.with_name(f"{DAMAGED_PREFIX}{checkpoint.name}.{n}")
    os.replace(checkpoint, aside)
    return aside


def candidates(run_dir: Path) -> list[Path]:
    """The checkpoints to try, newest first: the one `latest` names, then the older complete ones."""
    chosen = latest(run_dir)
    if chosen is None:
        return []
    older = sorted((p for p in checkpoints_dir(run_dir).glob("step_*")
                    if not p.name.endswith(".partial") and p.name < chosen.name), reverse=True)
    return [chosen, *older]


def recover(run_dir: Path) -> tuple[Path | None, list[str]]:
    """For the run that owns `run_dir`: its newest checkpoint that verifies, and a line for each
    newer one that does not (also logged as a warning). Damaged ones are set aside as
    damaged-step_N (kept for inspection, never rotated or loaded) and `latest` is repointed to the
    one chosen. A CheckpointError when checkpoints exist and none verifies."""
    damaged: list[str] = []
    for ckpt in candidates(run_dir):
        try:
            verify(ckpt)
        except CheckpointError as e:
            aside = _set_aside(ckpt)
            damaged.append(f"{e}")
            log.warning("damaged checkpoint: %s; set aside as %s, using the previous one", e, aside.name)
            continue
        if damaged:
            repoint(run_dir, ckpt)
        return ckpt, damaged
    if damaged:
        raise CheckpointError(f"{run_dir}: no intact checkpoint ({'; '.join(damaged)}); the damaged ones are set "
                              f"aside as {DAMAGED_PREFIX}step_*; pass --no-resume to start the run over")
    return None, damaged


def nothing_to_train(cfg: RunConfig, resume: bool | None) -> str | None:
    """The line `lockstep run` prints, starting nothing, when the checkpoint it would resume from
    already holds step schedule.steps (a finished run submitted again): Ray, the trainer ranks
    and the engines would only start to stop again. None otherwise, and for --no-resume or a
    newest checkpoint that does not verify (the run sets that one aside and resumes from the one
    before: `recover`). Reads only state.json unless the step is the last, so an unfinished run
    pays nothing for the check."""
    newest = latest(cfg.run_dir) if resume is not False else None
    if newest is None:
        return None
    try:
        step = _parse_state(newest, newest)["step"]
        if step < cfg.schedule.steps:
            return None
        verify(newest)
    except CheckpointError:
        return None
    return (f"lockstep: run {cfg.name}: resuming from {newest} (--no-resume starts over) finds step {step} done "
            f"of schedule.steps={cfg.schedule.steps}: nothing to train, nothing started (raise schedule.steps "
            "to train on)")


def _others(checkpoint: Path) -> str:
    """What to do about a damaged checkpoint: the run's other complete checkpoints, if any."""
    others = sorted(p for p in checkpoint.parent.glob("step_*")
                    if p != checkpoint and not p.name.endswith(".partial") and (p / STATE_FILE).exists())
    if others:
        return f"evaluate another checkpoint of the run, e.g. {others[-1]}"
    return "the run has no other complete checkpoint: evaluate its base model or another export"


def check_export(model_dir: Path, shown_as: Path | None = None,
                 advice: str | None = "re-export it, or evaluate another model") -> None:
    """A Hugging Face export vLLM can load: config.json parses, weights are there, and each
    safetensors file holds the bytes its header promises (a truncated copy fails here, not as a
    traceback deep in the engine)."""
    shown, what = shown_as or model_dir, f"; {advice}" if advice else ""
    try:
        json.loads((model_dir / "config.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{shown / 'config.json'}: missing; the export is incomplete{what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{shown / 'config.json'}: not valid JSON ({e}); the export is damaged"
                              f"{what}") from None
    weights = sorted(model_dir.glob("*.safetensors"))
    if not weights and not any(model_dir.glob("*.bin")):
        raise CheckpointError(f"{shown}: has config.json but no weights (*.safetensors); the export is "
                              f"incomplete{what}")
    for file in weights:
        if safetensors_tensors(file) is None:
            raise CheckpointError(f"{shown / file.name}: truncated or damaged safetensors file "
                                  f"({file.stat().st_size} bytes){what}")


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
    skipped: tuple[str, ...] = ()  # newer checkpoints of the run passed over as damaged: what was wrong

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
        for part in (STATE_FILE, MANIFEST_FILE, HF_DIR):
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


def _check_pin(checkpoint: Path, pin: Path) -> dict:
    """What eval loads of a pinned checkpoint (state.json and hf/), verified; returns the state.
    Errors name the file and what is wrong, without advice (the caller knows what to offer)."""
    verify(pin, (STATE_FILE, HF_DIR), shown_as=checkpoint)
    state = _parse_state(pin, checkpoint)
    if not (pin / HF_DIR).is_dir():
        raise CheckpointError(f"{checkpoint / HF_DIR}: missing, so there is no model to load (the checkpoint "
                              f"is incomplete)")
    check_export(pin / HF_DIR, shown_as=checkpoint / HF_DIR, advice=None)
    return state


@contextlib.contextmanager
def _hold(checkpoint: Path, root: Path, pin: Path, skipped: tuple[str, ...] = ()) -> Iterator[Pinned]:
    """The pinned checkpoint, checked, until the block ends; then the pin is deleted."""
    try:
        try:
            state = _check_pin(checkpoint, pin)
        except CheckpointError as e:
            raise CheckpointError(f"{e}; {_others(checkpoint)}") from None
        yield Pinned(pin / HF_DIR, checkpoint, state, skipped)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _pin_newest_intact(run_dir: Path) -> tuple[Path, Path, Path, tuple[str, ...]]:
    """(checkpoint, pin folder, pinned copy, what was wrong with each newer one passed over): the
    run's newest checkpoint whose state.json and hf/ verify, pinned. A damaged one is named in a
    warning and the previous one tried (eval only reads: nothing is renamed or repointed)."""
    damaged: dict[Path, str] = {}
    for _ in range(PIN_ATTEMPTS):
        found = [c for c in candidates(run_dir) if c not in damaged]
        if not found and not damaged:
            raise _no_checkpoint_yet(run_dir)
        for ckpt in found:
            try:
                root, pin = _pin_files(ckpt)
            except _Rotated:
                log.warning("%s was rotated away (schedule.keep_last) as eval picked it; taking the newest again",
                            ckpt)
                break
            try:
                _check_pin(ckpt, pin)
            except CheckpointError as e:
                shutil.rmtree(root, ignore_errors=True)
                damaged[ckpt] = str(e)
                continue
            # said once a checkpoint was found: with none intact, the error names them all (one line)
            for why in damaged.values():
                log.warning("damaged checkpoint: %s; evaluating the previous one", why)
            return ckpt, root, pin, tuple(damaged.values())
        else:
            raise CheckpointError(f"{run_dir}: no intact checkpoint ({'; '.join(damaged.values())})")
    raise CheckpointError(f"{run_dir}: its checkpoints were rotated away {PIN_ATTEMPTS} times while eval "
                          "pinned one; pass a checkpoint directory, or raise schedule.keep_last")


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
        chosen, root, pin, skipped = _pin_newest_intact(path)
        with _hold(chosen, root, pin, skipped) as held:
            yield held
        return
    if (path / "config.json").exists():
        check_export(path)
        yield Pinned(path, None, None)
        return
    raise CheckpointError(
        f"{path}: not a checkpoint. Pass a run directory (runs/<name>), a checkpoint "
        f"(runs/<name>/checkpoints/step_N) or a Hugging Face model directory with config.json")
