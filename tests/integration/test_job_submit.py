"""The README's cluster path: `ray start --head`, then `ray job submit --working-dir . --
lockstep run RECIPE`, against a local head on loopback. Also exercises ZeRO-3 with 2 ranks, where
a job's outputs go (~/lockstep-runs/<name>, absolute paths printed, a resubmission finds the run
there and says so) and what its log shows (plain progress lines, no library INFO; those in run.log)."""

import os
import re
import shutil
import signal
import uuid
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import tiny_recipe

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit(tmp_path):
    bin_dir = Path(sys.executable).parent
    # Ray 2.60 turns token authentication on for new clusters; the CLI client must then be told
    # so (RAY_AUTH_MODE=token) to send the token from ~/.ray/auth_token.
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    recipe = tmp_path / "job.yaml"
    # No output_dir: inside the job the run goes to ~/lockstep-runs/<name> (a unique name, removed after).
    name = f"job-{uuid.uuid4().hex[:8]}"
    spec = tiny_recipe(tmp_path, name=name, trainer={"zero_stage": 3}, sft={"steps": 20},
                       schedule={"steps": 1, "eval_every": 0, "save_every": 1})
    del spec["output_dir"]
    recipe.write_text(yaml.safe_dump(spec))
    run_dir = Path.home() / "lockstep-runs" / name
    port, dash = free_port(), free_port()
    # Every port the head opens is chosen free: the agents' defaults (52365 and others) may still be
    # held by another Ray instance on the machine, and then the job agent never comes up.
    agent_ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                   f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
    ray = str(bin_dir / "ray")
    subprocess.run([ray, "get-auth-token", "--generate"], env=env, capture_output=True, timeout=60)
    start = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--num-cpus=2", "--include-dashboard=true", *agent_ports], env=env, capture_output=True, text=True, timeout=180)
    if start.returncode != 0:
        stop_head(port)  # a head that timed out half-way (loaded machine) leaves its GCS and dashboard running
    assert start.returncode == 0, start.stderr[-2000:]

    def submit() -> str:
        # The head's job agent comes up a little after `ray start` returns (seconds on a busy
        # machine); until then the server answers "No available agent …, try again later".
        deadline = time.monotonic() + 300
        while True:
            job = subprocess.run(
                [ray, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(REPO), "--", "lockstep", "run", str(recipe)],
                env=env, capture_output=True, text=True, timeout=900,
            )
            out = job.stdout + job.stderr
            if "No available agent to submit job" not in out or time.monotonic() > deadline:
                break
            time.sleep(5)
        assert job.returncode == 0 and "succeeded" in out, out[-4000:] + agent_log_tail(port)
        return out

    try:
        out = submit()
        assert "Ray: cluster at" in out
        assert "held-out accuracy" not in out or "step    1/1" in out
        assert (run_dir / "checkpoints" / "latest").exists()
        assert f"run directory         {run_dir}" in out  # absolute, in the user's home, not Ray's copy
        # Progress as plain lines (a job log is no terminal), library INFO only in the run's log.
        assert "SFT warm start: starting 2 trainer ranks…" in out and "starting 1 vLLM engine…" in out
        assert re.search(r"sft step +20/20 \| loss [0-9.]+ \| .* \| eta ", out)
        assert "\r" not in out
        assert not re.search(r"\bINFO\b.*\[[a-z_]+\.py:\d+\]", out), "a library's INFO line reached the job log"
        log = (run_dir / "run.log").read_text()
        assert re.search(r"INFO vllm\.", log), log[-2000:]
        # A resubmission (a fresh upload: a new working directory) finds the run and says so; its
        # step is the last, so it starts nothing (rl.checkpoint.nothing_to_train).
        again = submit()
        assert f"resuming from {run_dir / 'checkpoints'}" in again, again[-3000:]
        assert "nothing to train, nothing started" in again and "starting" not in again, again[-3000:]
        # A plain `lockstep run` on this machine joins the head although its shell never set
        # RAY_AUTH_MODE: the CLI sends the token from ~/.ray/auth_token.
        join = "from rl.cli import send_ray_token_if_present as s; s(); from rl.placement import connect; print(connect(None))"
        plain_env = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
        joined = subprocess.run([sys.executable, "-c", join], env=plain_env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert joined.returncode == 0 and "running cluster at" in joined.stdout and f":{port}" in joined.stdout, joined.stderr[-2000:]
    finally:
        stop_head(port)
        shutil.rmtree(run_dir, ignore_errors=True)


def head_session(gcs_port: int) -> Path | None:
    found = subprocess.run(["pgrep", "-af", f"gcs_server.*gcs_server_port={gcs_port}"], capture_output=True, text=True).stdout
    sessions = re.findall(r"(session_[0-9_-]+)", found)
    return Path("/tmp/ray") / sessions[0] if sessions else None


def agent_log_tail(gcs_port: int) -> str:
    """The head's dashboard-agent log, for a failure message: why the job agent did not come up."""
    session = head_session(gcs_port)
    logs = sorted(session.glob("logs/dashboard_agent*")) if session else []
    return "".join(f"\n--- {log}:\n" + log.read_text(errors="replace")[-3000:] for log in logs)


def stop_head(gcs_port: int) -> None:
    """Ends this test's head only (`ray stop` would end every Ray instance on the machine): every
    process of the session whose GCS listens on `gcs_port`."""
    found = subprocess.run(["pgrep", "-af", f"gcs_server.*gcs_server_port={gcs_port}"], capture_output=True, text=True).stdout
    sessions = set(re.findall(r"(session_[0-9_-]+)", found))
    for session in sessions:
        subprocess.run(["pkill", "-9", "-f", session])
    subprocess.run(["pkill", "-9", "-f", "--", f"--address=[0-9.]+:{gcs_port}( |$)"])  # the client proxy
    record = Path("/tmp/ray/ray_current_cluster")  # what `ray stop` would also remove
    if record.exists() and record.read_text().strip().endswith(f":{gcs_port}"):
        record.unlink()
