"""Ray: connect or start, and place actors in a placement group (rl.groups calls them).

Colocated layout: one bundle per device, a trainer rank and a rollout worker share it (on a GPU
each takes half). Split layout: separate bundles for trainer ranks and rollout workers; an engine
split over GPUs (rollout.tensor_parallel_size = n) takes a bundle of n GPUs, which Ray places on
one node, and its vLLM worker processes (children of the engine's actor) see exactly those.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rl.blas import MKL_CBWR
from rl.config import ConfigError, RunConfig
from rl.console import LIBRARY_ENV, LOG_FILE_ENV, VERBOSE_ENV

log = logging.getLogger("lockstep.placement")

# Ray gives a new local node 30 s to register (not configurable); an overloaded machine can miss
# that. The start is retried this many times in all before the run stops.
LOCAL_START_ATTEMPTS = 3


class RayUnavailable(RuntimeError):
    """Ray could not be started or joined for a reason outside the recipe (the CLI prints one
    line and exits with rl.exit_codes.ACTOR_FAILED: trying again later may work)."""


# The environment of every actor. Their own chatter (vLLM INFO lines, progress bars, deprecation
# notices) would bury the run's progress lines; warnings and errors still come through, and
# rl.console.configure_worker (Ray's setup hook, below) sends the INFO lines to the run's log file.
# MKL_CBWR: one MKL code path in every trainer rank and engine (rl/blas.py), the user's if exported.
ACTOR_ENV = {
    **LIBRARY_ENV,
    "MKL_CBWR": os.environ.get("MKL_CBWR", MKL_CBWR),
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
}


def connect(address: str | None) -> str:
    """Joins the cluster named by the recipe or RAY_ADDRESS (as under `ray job submit`), else a
    cluster started on this machine with `ray start`, else starts a private local instance.
    Returns which one, for the log."""
    # The run's log file and --verbose (rl.console) for every actor's setup hook.
    env = {**ACTOR_ENV, **{k: os.environ[k] for k in (LOG_FILE_ENV, VERBOSE_ENV) if k in os.environ}}
    hook = {"worker_process_setup_hook": "rl.console.configure_worker"}
    if ray.is_initialized():
        return "already connected"
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, runtime_env={"env_vars": env, **hook}, log_to_driver=True)
        return f"cluster at {address or os.environ['RAY_ADDRESS']}"
    running = running_cluster_address()
    if running:
        try:
            ray.init(address=running, runtime_env={"env_vars": env, **hook})
        except ConnectionError as e:
            raise ConfigError(
                f"ray.address: a Ray cluster answers at {running} (started with `ray start`) but this driver could not join it ({e}). "
                "If it was started with token authentication, export RAY_AUTH_MODE=token (the token is in "
                "~/.ray/auth_token); or run on a private instance with ray.address=local"
            ) from e
        return f"running cluster at {running}"
    start_local(env, hook)
    return "new local instance"


def start_local(env: dict[str, str], hook: dict[str, str]) -> None:
    """A private Ray instance on this machine, its start retried when the node does not come up."""
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        try:
            ray.init(address="local", include_dashboard=False, runtime_env={"env_vars": env, **hook})
            return
        except Exception as e:  # Ray raises a bare Exception when its node misses the 30 s
            if "timed out during startup" not in str(e):
                raise
            ray.shutdown()
            if attempt == LOCAL_START_ATTEMPTS:
                load = " (load average %.1f)" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
                raise RayUnavailable(f"a local Ray instance did not start in {LOCAL_START_ATTEMPTS} attempts: its "
                                     f"node did not register within Ray's 30 s{load}; the machine is overloaded "
                                     "or short of memory") from None
            log.warning("a local Ray instance did not start (attempt %d of %d: %s); trying again",
                        attempt, LOCAL_START_ATTEMPTS, e)


def running_cluster_address() -> str | None:
    """The GCS address `ray start` recorded on this machine, if something answers there.

    `ray start` writes /tmp/ray/ray_current_cluster; a head that died without `ray stop` leaves it
    behind, and `ray.init(address="auto")` would then wait forever on a dead address. Local
    instances started by other drivers are never joined (they end with their driver)."""
    record = Path(os.environ.get("RAY_TMPDIR", "/tmp/ray")) / "ray_current_cluster"
    try:
        address = record.read_text().strip()
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=2):
            return address
    except (OSError, ValueError):
        if record.exists():
            log.warning("ignoring %s: no Ray cluster answers there (stale record of a stopped head)", record)
        return None


@dataclass(frozen=True)
class Layout:
    """Which bundle (one device on GPUs) each trainer rank and rollout engine takes."""

    n_bundles: int
    trainer_bundles: list[int]
    rollout_bundles: list[int]
    share: float  # of its bundle's GPU each actor takes (colocated: a rank and an engine share one)
    bundle_gpus: tuple[int, ...] = ()  # GPUs of each bundle on a GPU cluster (an engine's: its tensor_parallel_size)

    def gpus(self, bundle: int) -> int:
        return self.bundle_gpus[bundle] if self.bundle_gpus else 1


def bundle_lines(plan: Layout, nodes: list[str] | None = None) -> list[str]:
    """One line per bundle: the actors it holds (and its node, once placed)."""
    lines = []
    for b in range(plan.n_bundles):
        actors = [f"trainer rank {plan.trainer_bundles.index(b)}"] if b in plan.trainer_bundles else []
        actors += [f"rollout engine {plan.rollout_bundles.index(b)}"] if b in plan.rollout_bundles else []
        where = f" (node {nodes[b]})" if nodes else ""
        where += f" ({plan.gpus(b)} GPUs on GPU clusters: tensor-parallel engine)" if plan.gpus(b) > 1 else ""
        lines.append(f"bundle {b}{where}: " + " + ".join(actors))
    return lines


def layout(cfg: RunConfig) -> Layout:
    ranks, workers, tp = cfg.trainer.num_ranks, cfg.rollout.num_workers, cfg.rollout.tensor_parallel_size
    if cfg.ray.placement == "colocated":
        return Layout(max(ranks, workers), list(range(ranks)), list(range(workers)), 0.5)
    return Layout(ranks + workers, list(range(ranks)), list(range(ranks, ranks + workers)), 1.0,
                  (1,) * ranks + (tp,) * workers)


def check_gpus(cfg: RunConfig, gpus: int, gpus_per_node: int | None = None) -> int:
    """The number of bundles the run places; a clear error when the cluster's `gpus` (at most
    `gpus_per_node` on one node) cannot hold them — a placement group that cannot be placed would
    wait, not fail."""
    ranks, workers, tp = cfg.trainer.num_ranks, cfg.rollout.num_workers, cfg.rollout.tensor_parallel_size
    colocated = cfg.ray.placement == "colocated"
    plan = layout(cfg)
    n_bundles = plan.n_bundles
    if cfg.ray.require_gpus and not gpus:
        raise ConfigError("ray.require_gpus=true but the Ray cluster has no GPUs: run this recipe on a GPU "
                          "machine (or set ray.require_gpus=false to try it on CPU)")
    if gpus and tp > 1 and colocated:
        # an engine over n GPUs would share them with n trainer ranks, but a Ray actor holds whole
        # GPUs or a fraction of one: it cannot take half of each of n GPUs
        raise ConfigError(f"rollout.tensor_parallel_size={tp} needs ray.placement=split on GPUs (an engine over "
                          f"{tp} GPUs cannot share them with trainer ranks yet): set ray.placement=split")
    if gpus and tp > (gpus_per_node or gpus):
        raise ConfigError(f"rollout.tensor_parallel_size={tp}: an engine's GPUs must be on one node, and the largest "
                          f"node has {gpus_per_node or gpus}: lower rollout.tensor_parallel_size")
    if gpus and not colocated and ranks + workers * tp > gpus:
        raise ConfigError(f"the run needs {ranks + workers * tp} GPUs (split: trainer.num_ranks={ranks} + "
                          f"rollout.num_workers={workers} × rollout.tensor_parallel_size={tp}) but the Ray "
                          f"cluster has {gpus}: lower them, or add GPUs")
    if gpus and n_bundles > gpus:
        layout_text = (f"colocated: max(trainer.num_ranks={ranks}, rollout.num_workers={workers})" if colocated
                       else f"split: trainer.num_ranks={ranks} + rollout.num_workers={workers}")
        raise ConfigError(f"the run needs {n_bundles} GPUs ({layout_text}, one GPU each) but the Ray cluster has "
                          f"{gpus}: lower trainer.num_ranks / rollout.num_workers, or add GPUs")
    return n_bundles


class Placement:
    """Bundles for the run's actors and the scheduling options of each actor."""

    def __init__(self, cfg: RunConfig):
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.gpus = gpus >= 1
        per_node = max((int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")), default=0)
        n_bundles = check_gpus(cfg, gpus, per_node)
        plan = layout(cfg)
        cpus = ray.cluster_resources().get("CPU", 1)
        # Fractional CPUs: on a small machine every actor still fits; threads are set per actor.
        per_bundle = max(0.01, min(4.0, cpus / n_bundles))
        bundles = [{"CPU": per_bundle, **({"GPU": plan.gpus(b)} if self.gpus else {})} for b in range(n_bundles)]
        self.group = placement_group(bundles, strategy="PACK")
        ray.get(self.group.ready(), timeout=300)
        self.share = plan.share
        self.trainer_bundles = plan.trainer_bundles
        self.rollout_bundles = plan.rollout_bundles
        self.per_bundle = per_bundle
        self.plan = plan

    def describe(self) -> str:
        """The placement as placed: which actor on which bundle, node and device."""
        table = ray.util.placement_group_table(self.group)
        ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
        nodes = [ips.get(table["bundles_to_node_id"].get(b, ""), "?") for b in range(self.plan.n_bundles)]
        device = "one GPU" if self.gpus else "CPU"
        return f"{self.plan.n_bundles} bundle(s), {device} each: " + "; ".join(bundle_lines(self.plan, nodes))

    def options(self, bundle: int) -> dict:
        strategy = PlacementGroupSchedulingStrategy(placement_group=self.group,
                                                    placement_group_bundle_index=bundle)
        env = {} if self.gpus else {"DS_ACCELERATOR": "cpu"}
        return {
            "num_cpus": self.per_bundle * self.share,
            "num_gpus": self.share * self.plan.gpus(bundle) if self.gpus else 0,
            "scheduling_strategy": strategy,
            "runtime_env": {"env_vars": env},
        }

    def remove(self) -> None:
        ray.util.remove_placement_group(self.group)
