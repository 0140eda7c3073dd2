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
