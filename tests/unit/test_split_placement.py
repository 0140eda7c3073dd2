"""Split placement's start-up decisions, without a cluster: which weight transport a recipe gets
on which cluster (`sync.transport`), the placement plan, and the multi-node check that every
node sees the driver's run directory (`rl.run_dir_check`)."""

import pytest

from rl.config import ConfigError, from_data
from rl.placement import bundle_lines, layout
from rl.run_dir_check import TOKEN_FILE, first_problem, token_problem, write_token
from rl.weight_sync import transport_kind


def cfg(*overrides):
    return from_data({}, list(overrides))


def test_auto_transport_follows_placement_and_devices():
    colocated, split = cfg(), cfg("ray.placement=split")
    assert transport_kind(colocated, gpus=True) == "device"
    assert transport_kind(split, gpus=True) == "collective"
    assert transport_kind(colocated, gpus=False) == transport_kind(split, gpus=False) == "host"
    assert transport_kind(cfg("ray.placement=split", "sync.transport=collective"), gpus=False) == "collective"
    assert transport_kind(cfg("sync.transport=collective"), gpus=False) == "collective"  # Gloo: one CPU is fine


def test_transports_the_placement_cannot_run_name_the_field():
    with pytest.raises(ConfigError, match=r"sync.transport: collective on GPUs needs ray.placement: split"):
        transport_kind(cfg("sync.transport=collective"), gpus=True)
    with pytest.raises(ConfigError, match=r"sync.transport: device \(CUDA IPC\) needs GPUs"):
        transport_kind(cfg("sync.transport=device"), gpus=False)
    with pytest.raises(ConfigError, match=r"sync.transport: device .* use ray.placement: colocated, or "
                                          r"sync.transport: collective"):
        cfg("ray.placement=split", "sync.transport=device")
    with pytest.raises(ConfigError, match=r"sync.transport: got 'nccl'; allowed: one of 'auto', 'host'"):
        cfg("sync.transport=nccl")


def test_split_plan_puts_trainer_ranks_and_engines_on_their_own_bundles():
    plan = layout(cfg("ray.placement=split", "trainer.num_ranks=2", "rollout.num_workers=2"))
    assert bundle_lines(plan) == ["bundle 0: trainer rank 0", "bundle 1: trainer rank 1",
                                  "bundle 2: rollout engine 0", "bundle 3: rollout engine 1"]
    placed = bundle_lines(layout(cfg("trainer.num_ranks=1")), nodes=["10.0.0.7"])
    assert placed == ["bundle 0 (node 10.0.0.7): trainer rank 0 + rollout engine 0"]


def test_run_paths_are_absolute_on_the_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cfg("name=r").run_dir == tmp_path / "runs" / "r"


def test_a_node_that_sees_another_directory_is_named_with_the_fix(tmp_path):
    here, elsewhere = tmp_path / "shared", tmp_path / "local"
    here.mkdir(), elsewhere.mkdir()
    token = write_token(here)
    assert (here / TOKEN_FILE).read_text() == token and not (here / f"{TOKEN_FILE}.partial").exists()
    assert token_problem(str(here), token) is None
    assert "does not exist there" in token_problem(str(elsewhere), token)
    (elsewhere / TOKEN_FILE).write_text("another run's")
    assert "holds another run's token" in token_problem(str(elsewhere), token)
    answers = [("10.0.0.1", None), ("10.0.0.2", token_problem(str(elsewhere), token))]
    line = first_problem(answers, here)
    assert line.startswith(f"output_dir: node 10.0.0.2 does not see the run directory {here} (")
    assert "shared storage: set output_dir to a path every node mounts" in line and "\n" not in line
    assert first_problem([("10.0.0.1", None)], here) is None
