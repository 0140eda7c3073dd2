"""Checkpoint manifests on disk (real files written by rl.checkpoint.commit; no model runs): what
the manifest holds, and how the run recovers from a damaged newest checkpoint (`recover`).
`lockstep eval`'s side is in test_eval_target.py, the whole run in
tests/integration/test_graceful_stop.py."""

import json
from pathlib import Path

import pytest
import torch

from rl import checkpoint
from rl.checkpoint import CheckpointError
from trainer import checkpoint_files


def save(run_dir: Path, step: int, keep_last: int = 0) -> Path:
    """A checkpoint laid out as the driver's: a torch file per rank, an export, the state."""
    partial = checkpoint.partial_dir(run_dir, step)
    (partial / "engine" / "engine").mkdir(parents=True)
    torch.save({"step": step, "w": torch.full((256,), float(step))},
               partial / "engine" / "engine" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (partial / "hf").mkdir()
    (partial / "hf" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    from safetensors.torch import save_file

    save_file({"w": torch.full((16, 16), float(step))}, str(partial / "hf" / "model.safetensors"))
    return checkpoint.commit(run_dir, step, partial, {"step": step, "cursor": 4 * step}, keep_last)


def test_the_manifest_lists_every_file_with_size_and_checksum(tmp_path):
    ckpt = save(tmp_path, 3)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["hash"] == "xxh3_128" and manifest["step"] == 3
    assert sorted(manifest["files"]) == ["engine/engine/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                         "hf/config.json", "hf/model.safetensors", "state.json"]
    for name, (size, checksum) in manifest["files"].items():
        assert (ckpt / name).stat().st_size == size and checkpoint_files.digest(ckpt / name) == checksum
    assert checkpoint.verify(ckpt) is True
    assert not list(tmp_path.glob("checkpoints/*.partial")) and not list(ckpt.glob("*.tmp"))


def test_the_run_resumes_from_the_previous_checkpoint_and_sets_the_damaged_one_aside(tmp_path, caplog):
    save(tmp_path, 1)
    save(tmp_path, 2)
    newest = save(tmp_path, 3)
    shard = newest / "engine" / "engine" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:1000])
    chosen, damaged = checkpoint.recover(tmp_path)
    assert chosen.name == "step_000002" and checkpoint.latest(tmp_path) == chosen  # latest repointed
    assert damaged == [f"{shard}: 1000 bytes, the manifest says {size} (truncated)"]
    assert (tmp_path / "checkpoints" / "damaged-step_000003").is_dir() and not newest.exists()
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(f"damaged checkpoint: {shard}: 1000 bytes") and "set aside as damaged-step_000003" in warning
    # the next save of step 3 rotates normally: the damaged copy is not a step_* folder
    save(tmp_path, 3, keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "damaged-step_000003", "latest", "step_000002", "step_000003"]


def test_no_intact_checkpoint_refuses_to_start_over_by_itself(tmp_path):
    for step in (1, 2):
        (save(tmp_path, step) / "state.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint \(.*step_000002/state.json: 2 bytes, .*"
                                              r"step_000001/state.json: 2 bytes.*pass --no-resume"):
        checkpoint.recover(tmp_path)
    assert checkpoint.recover(tmp_path / "elsewhere") == (None, [])  # a new run: nothing to recover


def test_an_old_checkpoint_without_manifest_is_checked_as_far_as_its_formats_allow(tmp_path):
    old = save(tmp_path, 1)
    (old / "manifest.json").unlink()
    assert checkpoint.verify(old) is False  # intact, but unverified
    shard = old / "engine" / "engine" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:-100])  # a torch file cut short has no zip end record
    with pytest.raises(CheckpointError, match="optim_states.pt: truncated or damaged"):
        checkpoint.verify(old)
