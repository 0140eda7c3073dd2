"""Split placement on CPU: one trainer rank and one rollout engine on bundles of their own, the
weights broadcast from the trainer to the engine over a Gloo group (`sync.transport:
collective`, the NCCL path's code). The broadcast must deliver exactly the host path's weights:
two runs from one checkpoint, one per transport, give bit-for-bit the same step metrics."""

import math
from pathlib import Path

import pytest

from rl.config import from_data
from rl.driver import Run
from rl.metrics import read_history

from .conftest import tiny_recipe

pytestmark = pytest.mark.integration


def split_recipe(tmp_path, transport: str, **sections) -> dict:
    return tiny_recipe(tmp_path, name=f"split-{transport}",
                       trainer={"num_ranks": 1}, rollout={"num_workers": 1},
                       ray={"address": "local", "placement": "split"}, sync={"transport": transport},
                       schedule={"steps": 2, "eval_every": 0, "save_every": 0}, **sections)


def test_split_collective_sync_gives_the_host_paths_bits(tmp_path, ray_local, capsys):
    collective = Run(from_data(split_recipe(tmp_path, "collective", data={"eval": []}))).train()
    out = capsys.readouterr().out
    assert "placement: split, 2 bundle(s), CPU each: bundle 0 (node" in out and "rollout engine 0" in out
    assert "broadcast from trainer rank 0 over a gloo group" in out
    steps = [h for h in read_history(Path(collective["run_dir"])) if "reward/mean" in h]
    assert [h["step"] for h in steps] == [1, 2]
    for h in steps:
        assert h["sync/probe_max_abs_diff"] <= 1e-3 and h["sync/on_device"] == 0.0
        assert h["sync/tensors"] > 0 and h["sync/bytes"] > 0
    assert any(h["sync/probe_change"] > 1e-4 for h in steps)  # new weights arrived, verified

    # The same start (the first run's SFT export), the host transport: the same bits everywhere.
    sft = Path(collective["run_dir"]) / "sft" / "hf"
    host = Run(from_data(split_recipe(tmp_path, "host", data={"eval": []}, sft={"steps": 0},
                                      model={"path": str(sft)}))).train()
    host_steps = [h for h in read_history(Path(host["run_dir"])) if "reward/mean" in h]
    for a, b in zip(steps, host_steps, strict=True):
        for key in sorted(k for k in a if k.startswith(("mismatch/", "reward/", "sync/probe_max", "train/loss"))):
            assert a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])), (a["step"], key, a[key], b[key])
