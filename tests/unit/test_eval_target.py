"""`lockstep eval` on a run: which checkpoint, which data, and what it says when there is none.

A fake run on disk (the real checkpoint layout, written by rl.checkpoint itself; tiny safetensors
weights, no model is run): the run's own held-out sets and templates are the default, a preset
that differs is named in a warning, the chosen checkpoint survives keep_last rotation while it
is held, and a missing or damaged checkpoint is one line."""

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from rl import checkpoint
from rl.checkpoint import CheckpointError, pinned
from rl.cli import main
from rl.config import ConfigError, DatasetConfig, load_recipe, save_resolved, to_dict
from rl.data import PRESETS
from rl.evaluate import eval_plan

ROOT = Path(__file__).resolve().parents[2]


def make_run(tmp_path: Path, save_every: int = 10):
    cfg = load_recipe(ROOT / "recipes" / "demo.yaml", [f"output_dir={tmp_path}",
                                                        f"schedule.save_every={save_every}"])
    cfg.run_dir.mkdir(parents=True)
    save_resolved(cfg, cfg.run_dir / "config.yaml")
    return cfg


def save(cfg, step: int, keep_last: int = 2) -> Path:
    """A checkpoint as the driver commits one; its weights hold `step` so a reader can tell."""
    partial = checkpoint.partial_dir(cfg.run_dir, step)
    (partial / "hf").mkdir()
    (partial / "hf" / "config.json").write_text(json.dumps({"model_type": "qwen2", "step": step}))
    save_file({"w": np.full((64, 64), step, dtype=np.float32)}, str(partial / "hf" / "model.safetensors"))
    (partial / "engine").mkdir()
    state = {"step": step, "cursor": 0, "weights_version": step, "config": to_dict(cfg)}
    return checkpoint.commit(cfg.run_dir, step, partial, state, keep_last)


def weights_step(model_dir: Path) -> int:
    from safetensors.numpy import load_file

    return int(load_file(str(model_dir / "model.safetensors"))["w"][0, 0])


def test_run_dir_defaults_to_the_runs_own_held_out_sets(tmp_path):
    cfg = make_run(tmp_path)
    save(cfg, 10)
    with pinned(cfg.run_dir) as target:
        assert target.checkpoint == cfg.run_dir / "checkpoints" / "step_000010"
        assert target.state["step"] == 10 and weights_step(target.model_dir) == 10
        run = target.recipe()
    assert run == cfg
    plan = eval_plan(run)
    assert plan.sets == [cfg.data.eval]
    assert plan.sets[0].source == "synthetic:arithmetic-noisy" and plan.sets[0].template == "Q: {prompt}\nA:"
    assert (plan.limit, plan.k, plan.temperature) == (200, 1, 0.0)
    assert plan.max_new_tokens == 40 and plan.max_model_len == 256 and plan.warning is None
    # a checkpoint of the run, or its hf/ export, carries the same recipe
    for path in (target.checkpoint, target.checkpoint / "hf"):
        with pinned(path) as again:
            assert again.recipe() == cfg and again.checkpoint == target.checkpoint


def test_data_overrides_and_a_different_preset_is_said_out_loud(tmp_path):
    cfg = make_run(tmp_path)
    plan = eval_plan(cfg, "arithmetic")
    assert plan.sets == [PRESETS["arithmetic"]] and plan.limit is None
    assert plan.warning.startswith("--data arithmetic is synthetic:arithmetic (template 'Q: {prompt}\\nA:'), but "
                                   "this run was evaluated on arithmetic-noisy: synthetic:arithmetic-noisy")
    assert "\n" not in plan.warning
    assert eval_plan(cfg, "arithmetic-noisy").warning is None  # the run's own set, by name
    assert eval_plan(cfg, "arithmetic-noisy").sets == [cfg.data.eval]
    plan = eval_plan(cfg, "my.jsonl", prompt_key="q", template="{prompt} =", k=4, temperature=0.7)
    assert plan.sets == [DatasetConfig(source="my.jsonl", prompt_key="q", template="{prompt} =")]
    assert (plan.k, plan.temperature) == (4, 0.7) and "my.jsonl" in plan.warning
    with pytest.raises(ConfigError, match="--data: needed for a model that is not a Lockstep checkpoint"):
        eval_plan(None)
    assert eval_plan(None, "gsm8k").warning is None


def test_held_checkpoint_survives_keep_last_rotation(tmp_path):
    cfg = make_run(tmp_path)
    save(cfg, 10, keep_last=1)
    with pinned(cfg.run_dir) as target:
        save(cfg, 20, keep_last=1)
        save(cfg, 30, keep_last=1)  # step_10 is gone from the run now
        assert not (cfg.run_dir / "checkpoints" / "step_000010").exists()
        assert weights_step(target.model_dir) == 10  # still whole where eval loads it
        checkpoint.check_export(target.model_dir)
    names = sorted(p.name for p in (cfg.run_dir / "checkpoints").iterdir())
    assert names == ["latest", "step_000030"]  # the pin is released, the rotation left nothing behind
    with pytest.raises(CheckpointError, match=r"step_000010: no such checkpoint \(deleted by the run's "
                                              r"schedule.keep_last rotation\?\); pass the run directory"):
        with pinned(cfg.run_dir / "checkpoints" / "step_000010"):
            pass


def test_pinning_while_the_run_rotates_always_gets_a_whole_checkpoint(tmp_path):
    """A run saving as fast as it can with keep_last=1 while eval picks and pins its newest
    checkpoint over and over: every pin is complete and self-consistent (state and weights of
    one step), never a half-deleted directory."""
    cfg = make_run(tmp_path)
    save(cfg, 1, keep_last=1)
    stop, steps = threading.Event(), []

    def run():
        step = 2
        while not stop.is_set():
            save(cfg, step, keep_last=1)
            steps.append(step)
            step += 1

    saver = threading.Thread(target=run)
    saver.start()
    try:
        pins = 0
        while pins < 60 or len(steps) <= 10:  # a save fsyncs every file: slower than a pin
            pins += 1
            with pinned(cfg.run_dir) as target:
                assert weights_step(target.model_dir) == target.state["step"]
                assert json.loads((target.model_dir / "config.json").read_text())["step"] == target.state["step"]
    finally:
        stop.set()
        saver.join()
    assert len(steps) > 10  # the run did rotate under it
    assert not list((cfg.run_dir / "checkpoints").glob(".*"))


def test_no_checkpoint_yet(tmp_path, capsys):
    cfg = make_run(tmp_path, save_every=5)
    assert main(["eval", str(cfg.run_dir)]) == 2
    err = capsys.readouterr().err
    assert err == f"lockstep: error: no checkpoint yet in {cfg.run_dir} (the run saves every 5 steps); " \
                  "try again after its first save\n"


def flip_a_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x40
    file.write_bytes(bytes(data))


DAMAGE = [
    (lambda c: (c / "state.json").write_text('{"step": 20, "cur'), r"state.json: 17 bytes, the manifest says \d+ \(truncated\)"),
    (lambda c: __import__("shutil").rmtree(c / "hf"), r"hf/config.json: missing \(the manifest lists \d+ bytes\)"),
    (lambda c: (c / "hf" / "model.safetensors").write_bytes((c / "hf" / "model.safetensors").read_bytes()[:4000]),
     r"hf/model.safetensors: 4000 bytes, the manifest says \d+ \(truncated\)"),
    (lambda c: flip_a_byte(c / "hf" / "model.safetensors"),
     r"hf/model.safetensors: checksum differs from the manifest's \(the file is corrupted\)"),
]


@pytest.mark.parametrize("damage, names", DAMAGE)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, capsys, damage, names):
    """On a run directory eval warns once, naming the file, and takes the previous checkpoint;
    named explicitly, the damaged checkpoint is one error line (exit 2) pointing at the other."""
    import re

    cfg = make_run(tmp_path)
    save(cfg, 10, keep_last=0)
    newest = save(cfg, 20, keep_last=0)
    damage(newest)
    with pinned(cfg.run_dir) as target:
        assert target.checkpoint.name == "step_000010" and weights_step(target.model_dir) == 10
        assert len(target.skipped) == 1 and re.search(names, target.skipped[0])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and re.search(names, warnings[0]) and str(newest) in warnings[0]
    assert "\n" not in warnings[0]
    assert (cfg.run_dir / "checkpoints" / "latest").read_text().strip() == "step_000020"  # eval only reads
    capsys.readouterr()  # what main prints, below, alone
    assert main(["eval", str(newest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lockstep: error: {newest}") and re.search(names, err)
    assert "step_000010" in err and err.count("\n") == 1 and "Traceback" not in err


def test_no_intact_checkpoint_is_one_line(tmp_path, capsys):
    cfg = make_run(tmp_path)
    for step in (10, 20):
        damage = save(cfg, step, keep_last=0) / "state.json"
        damage.write_text("{")
    assert main(["eval", str(cfg.run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lockstep: error: {cfg.run_dir}: no intact checkpoint (") and err.count("\n") == 1
    assert "step_000020/state.json: 1 bytes" in err and "step_000010/state.json: 1 bytes" in err


def test_a_checkpoint_without_manifest_loads_unverified(tmp_path, caplog):
    """Checkpoints saved before manifests existed still load, said once; their damage is still
    found where the format allows (a truncated safetensors file)."""
    cfg = make_run(tmp_path)
    old = save(cfg, 10)
    (old / "manifest.json").unlink()
    for _ in range(2):
        with pinned(cfg.run_dir) as target:
            assert target.checkpoint == old and weights_step(target.model_dir) == 10
    said = [r.getMessage() for r in caplog.records if "unverified" in r.getMessage()]
    assert said == [f"{old}: no manifest.json (saved by an older Lockstep): loading it unverified"]
    weights = old / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4000])
    with pytest.raises(CheckpointError, match="model.safetensors: truncated or damaged safetensors file"):
        with pinned(old):
            pass
