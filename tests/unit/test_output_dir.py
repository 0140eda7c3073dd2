"""Where a run's outputs go: ./runs locally, ~/lockstep-runs inside a Ray job, always absolute."""

from pathlib import Path

import pytest

from rl.config import ConfigError, from_data

IN_A_JOB = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # what Ray 2.60's job supervisor gives the entrypoint


def test_local_run_dir_is_absolute_under_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(IN_A_JOB, raising=False)
    monkeypatch.chdir(tmp_path)
    assert from_data({"name": "demo"}).run_dir == tmp_path / "runs" / "demo"
    assert from_data({"name": "demo", "output_dir": "elsewhere"}).run_dir == tmp_path / "elsewhere" / "demo"


def test_ray_job_run_dir_is_in_the_home_directory(monkeypatch, tmp_path):
    monkeypatch.setenv(IN_A_JOB, "{}")
    monkeypatch.chdir(tmp_path)  # Ray's temporary copy of the upload
    assert from_data({"name": "demo"}).run_dir == Path.home() / "lockstep-runs" / "demo"
    assert from_data({"name": "demo", "output_dir": str(tmp_path / "mine")}).run_dir == tmp_path / "mine" / "demo"
    with pytest.raises(ConfigError, match="output_dir=runs is relative.*Ray job"):
        _ = from_data({"name": "demo", "output_dir": "runs"}).run_dir
