"""`lockstep run` in an environment without vLLM (what a plain `pip install .` gives): one line
naming the extra to install, exit 2, no traceback; run outside a clone, by a shipped recipe's
name. The environment is the test's own site-packages without vllm (links to every other entry),
with site processing off so the venv's editable install of Lockstep does not apply. ~10-30 s:
the CLI imports torch and transformers."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_run_without_vllm_names_the_extra(tmp_path):
    site = Path(sysconfig.get_paths()["purelib"])
    assert (site / "vllm").is_dir(), "this test needs vLLM installed, to take it away"
    farm = tmp_path / "site-packages"
    farm.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith(("vllm", "__editable__")):
            (farm / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = f"{farm}{os.pathsep}{ROOT}"
    run = subprocess.run([sys.executable, "-S", "-m", "rl.cli", "run", "demo"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "vLLM is not installed" in lines[0] and "pip install 'lockstep-rl[cpu]'" in lines[0]
