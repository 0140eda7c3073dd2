"""Multi-node start-up check: every node that runs an actor sees the driver's run directory.

Trainer ranks write checkpoints there, engines load the SFT export from there, and the driver
reads both back: on several nodes that only works when the run directory sits on storage every
node mounts at the same path. A node with its own local `runs/` would write checkpoints nobody
reads, silently. So before any actor starts, the driver writes a fresh random token into the run
directory and a task on every bundle of the placement group (the node its actor will run on)
reads it back; a node that does not find that token is one error line naming it.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import ray

TOKEN_FILE = ".lockstep-node-check"


def write_token(run_dir: Path) -> str:
    """A fresh token in `run_dir`, written whole (a reader never sees half of it)."""
    token = secrets.token_hex(16)
    partial = run_dir / f"{TOKEN_FILE}.partial"
    partial.write_text(token)
    partial.replace(run_dir / TOKEN_FILE)
    return token


def token_problem(run_dir: str, token: str) -> str | None:
    """What is wrong with `run_dir` as seen from this node: None when it holds `token`."""
    path = Path(run_dir) / TOKEN_FILE
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        return f"{path} does not exist there"
    except OSError as e:
        return f"{path} cannot be read there ({e.strerror or e})"
    return None if found == token else f"{path} holds another run's token (a different directory at the same path)"


def first_problem(answers: list[tuple[str, str | None]], run_dir: Path) -> str | None:
    """The error line for the first node (of `answers`: (node address, problem or None)) that
    does not see the run directory, or None."""
    for node, problem in answers:
        if problem is not None:
            return (f"output_dir: node {node} does not see the run directory {run_dir} ({problem}); actors on "
                    "several nodes need it on shared storage: set output_dir to a path every node mounts (NFS, "
                    "a shared volume) at the same place")
    return None


def check_run_dir_shared(placement, run_dir: Path) -> None:
    """Runs the check on every bundle of `placement` (rl.placement.Placement); a ConfigError
    naming the first node that does not see `run_dir`."""
    # Imported here, not at the top: each task's worker imports this module to run `look`, and
    # rl.config pulls in torch and transformers (~10 s a worker on 2 cores, at every run's start).
    from rl.config import ConfigError

    token = write_token(run_dir)

    @ray.remote
    def look(directory: str, expected: str) -> tuple[str, str | None]:
        return ray.util.get_node_ip_address(), token_problem(directory, expected)

    bundles = sorted(set(placement.trainer_bundles) | set(placement.rollout_bundles))
    answers = ray.get([look.options(**placement.options(b)).remote(str(run_dir), token) for b in bundles])
    problem = first_problem(answers, run_dir)
    if problem:
        raise ConfigError(problem)
