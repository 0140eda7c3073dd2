"""Placement's start-up checks: a run that cannot be placed on the cluster's GPUs is a clear
configuration error naming the fields, never a placement group that waits forever."""

import pytest

from rl.config import ConfigError, from_data, load_recipe
from rl.placement import check_gpus


def test_gpu_recipe_on_a_machine_without_gpus_is_refused():
    cfg = load_recipe("recipes/gpu_ring.yaml", [])
    with pytest.raises(ConfigError, match=r"ray.require_gpus=true but the Ray cluster has no GPUs"):
        check_gpus(cfg, gpus=0)
    assert check_gpus(cfg, gpus=1) == 1


def test_more_trainer_ranks_than_gpus_names_the_fields():
    cfg = from_data({}, ["trainer.num_ranks=2", "rollout.num_workers=1"])
    with pytest.raises(ConfigError, match=r"needs 2 GPUs \(colocated: max\(trainer.num_ranks=2, rollout.num_workers=1\)"):
        check_gpus(cfg, gpus=1)
    split = from_data({}, ["trainer.num_ranks=1", "rollout.num_workers=1", "ray.placement=split"])
    with pytest.raises(ConfigError, match=r"needs 2 GPUs \(split: trainer.num_ranks=1 \+ rollout.num_workers=1"):
        check_gpus(split, gpus=1)
    assert check_gpus(split, gpus=2) == 2


def test_cpu_runs_place_one_bundle_per_device_slot_without_gpus():
    cfg = from_data({}, ["trainer.num_ranks=2", "rollout.num_workers=1"])
    assert check_gpus(cfg, gpus=0) == 2  # CPU bundles: no GPU count to respect


def test_engine_memory_share_too_small_for_the_weights_names_the_field(tmp_path):
    import torch
    from safetensors.torch import save_file

    from rl.model import check_engine_memory, weight_bytes

    save_file({"a": torch.zeros(1000, 256), "b": torch.zeros(24)}, str(tmp_path / "model.safetensors"))
    assert weight_bytes(str(tmp_path), "bfloat16") == (256_000 + 24) * 2
    cfg = from_data({}, ["rollout.gpu_memory_utilization=0.3", "model.dtype=bfloat16"])
    gib = 2**30
    check_engine_memory(cfg, model_bytes=10 * gib, gpu_bytes=80 * gib)  # 24 GiB share: fits
    with pytest.raises(ConfigError, match=r"rollout.gpu_memory_utilization=0.3 gives the engine 24.0 GiB .* "
                                          r"weights alone take 32.0 GiB in bfloat16"):
        check_engine_memory(cfg, model_bytes=32 * gib, gpu_bytes=80 * gib)


def test_a_local_ray_start_that_times_out_is_retried_then_stops_in_one_line(monkeypatch):
    """Ray's bare 'timed out during startup' Exception (an overloaded machine): the start is
    tried again; after LOCAL_START_ATTEMPTS failures the run stops with RayUnavailable (one
    line, exit 75 in the CLI); other errors propagate untouched."""
    from rl import placement

    calls = []

    def failing_init(**kwargs):
        calls.append(kwargs["address"])
        if len(calls) < failures_before_success:
            raise Exception("The current node timed out during startup. This could happen ...")

    monkeypatch.setattr(placement.ray, "init", failing_init)
    monkeypatch.setattr(placement.ray, "shutdown", lambda: None)
    failures_before_success = 2  # one failure, then a start
    placement.start_local({}, {})
    assert calls == ["local", "local"]

    calls.clear()
    failures_before_success = placement.LOCAL_START_ATTEMPTS + 1
    with pytest.raises(placement.RayUnavailable, match="did not start in 3 attempts"):
        placement.start_local({}, {})
    assert len(calls) == placement.LOCAL_START_ATTEMPTS

    def broken_init(**kwargs):
        raise ValueError("something else")

    monkeypatch.setattr(placement.ray, "init", broken_init)
    with pytest.raises(ValueError, match="something else"):
        placement.start_local({}, {})


def test_tensor_parallel_engines_take_bundles_of_their_gpus_or_are_refused_in_one_line():
    """rollout.tensor_parallel_size = n: split placement gives each engine one bundle of n GPUs
    (on one node); colocated on GPUs, more GPUs than a node has, or than the cluster has, and
    strict mode are refused naming the fields."""
    from rl.placement import bundle_lines, layout

    split = from_data({}, ["trainer.num_ranks=1", "rollout.num_workers=2", "ray.placement=split",
                           "rollout.tensor_parallel_size=2", "trainer.num_minibatches=1"])
    plan = layout(split)
    assert plan.n_bundles == 3 and plan.rollout_bundles == [1, 2]
    assert [plan.gpus(b) for b in range(3)] == [1, 2, 2]
    assert "2 GPUs" in bundle_lines(plan)[1] and "2 GPUs" not in bundle_lines(plan)[0]
    assert check_gpus(split, gpus=5, gpus_per_node=8) == 3
    with pytest.raises(ConfigError, match=r"needs 5 GPUs \(split: trainer.num_ranks=1 \+ rollout.num_workers=2 × "
                                          r"rollout.tensor_parallel_size=2\) but the Ray cluster has 4"):
        check_gpus(split, gpus=4, gpus_per_node=4)
    with pytest.raises(ConfigError, match=r"tensor_parallel_size=2: an engine's GPUs must be on one node, and the "
                                          r"largest node has 1"):
        check_gpus(split, gpus=8, gpus_per_node=1)
    colocated = from_data({}, ["trainer.num_ranks=2", "rollout.tensor_parallel_size=2"])
    with pytest.raises(ConfigError, match=r"tensor_parallel_size=2 needs ray.placement=split on GPUs"):
        check_gpus(colocated, gpus=2, gpus_per_node=2)
    assert check_gpus(colocated, gpus=0) == 2  # CPU: the engine's worker processes share the cores
    with pytest.raises(ConfigError, match=r"rollout.tensor_parallel_size: strict mode keeps the trainer's bits"):
        from_data({}, ["rollout.tensor_parallel_size=2", "mode=strict"])
    with pytest.raises(ConfigError, match=r"rollout.tensor_parallel_size: must be ≥ 1, got 0"):
        from_data({}, ["rollout.tensor_parallel_size=0"])
