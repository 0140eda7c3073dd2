"""Weight sync: the trainer's new weights into every rollout engine, then verified.

Two separable parts. A transport moves the weights, chosen once at start-up (`sync.transport`,
`transport_kind`):
- `DeviceTransport` (engines on the trainer ranks' GPUs): each rank copies its full weights into
  device buckets and sends CUDA IPC handles; the colocated engine copies on the device and checks
  every bucket's checksum there (`kernels.weight_buckets`). No weight byte crosses host memory.
- `CollectiveTransport` (`rl.collective_sync`; split placement on GPUs): trainer rank 0
  broadcasts device buckets to every engine over a process group of their own (NCCL; Gloo on
  CPU), each engine checking every bucket's checksum before loading it.
- `HostTransport` (CPU runs): rank 0's safetensors buckets through Ray's object store, each
  engine checking every bucket's sha256.
Each engine answers with the probe's log-probs under its new weights.

`WeightSync` verifies beyond the transport's checksums: a fixed probe text is scored
teacher-forced by the engines and the trainer. Engines and trainer differ by their kernels'
rounding even on equal weights (the *noise*: measured at start-up on the weights both loaded from
one checkpoint, then the largest seen), so in bf16 the probe cannot demand equality. It demands:
- |engine − trainer| ≤ the dtype's absolute bound (gross errors: a wrong layout, missing tensors);
- the engine sits nearer the new weights than the old: |engine − trainer_new| <
  ½·|trainer_new − trainer_old| whenever the update moved the trainer's probe by more than 4× the
  noise. A stale engine fails this at any learning rate whose step the probe can see; below that
  the check is inconclusive (`sync/probe_conclusive` = 0) and the checksums carry the verification.
A sync that did not take is an error, never a silent skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rl.config import ConfigError, RunConfig
from rl.groups import Pending, RolloutGroup, TrainerGroup
from rollout.worker import WeightLoad
from trainer.worker import DeviceWeights, WeightBucket

# The sync probe: a fixed text whose teacher-forced log-probs both engines compute after a sync.
PROBE_TEXT = "Ann has 23 apples. Ann gets 58 more. How many apples now? 23+58=81. The answer is 81."
# Largest |Δ log-prob| between engine and trainer on the probe that still counts as "the same
# model": fp32 engines agree to ~1e-5; in half precision the engines' different kernels (vLLM's
# attention, grouped vs per-expert GEMMs) round differently — on an H100 up to 0.14 on the 1.2 B
# GPU recipe and 0.28 on the bf16 demo, whose small model has large logits (bf16 keeps 8 bits:
# 0.06–0.125 per logit of 8–16) — so the bound only catches gross errors (wrong or missing
# tensors move the probe by nats); staleness is judged against the update (ProbeCheck).
ABSOLUTE_TOLERANCE = {"float32": 1e-3, "bfloat16": 1.0, "float16": 0.25}


if TYPE_CHECKING:
    from rl.collective_sync import CollectiveTransport


class WeightSyncError(RuntimeError):
    pass


def transport_kind(cfg: RunConfig, gpus: bool) -> str:
    """`sync.transport` resolved for this cluster: host, device or collective. A choice the
    placement cannot run is a ConfigError naming the field."""
    choice, colocated = cfg.sync.transport, cfg.ray.placement == "colocated"
    if choice == "auto":
        return ("device" if colocated else "collective") if gpus else "host"
    if choice == "device" and not (gpus and colocated):
        raise ConfigError("sync.transport: device (CUDA IPC) needs GPUs and ray.placement: colocated; this "
                          f"cluster has {'GPUs' if gpus else 'no GPUs'} and the placement is {cfg.ray.placement}: use "
                          "sync.transport: auto")
    if choice == "collective" and gpus and colocated:
        raise ConfigError("sync.transport: collective on GPUs needs ray.placement: split (trainer rank 0 and "
                          "engine 0 would share a GPU, and NCCL cannot put two ranks of one group on one GPU); "
                          "use sync.transport: device for colocated placement")
    return choice


def max_abs_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


class HostTransport:
    """Safetensors buckets of ≤ trainer.sync_bucket_mib through Ray's object store; each engine
    checks every bucket's sha256 and loads them all in one in-place reload."""

    on_device = False
    description = "through host memory"

    def __init__(self, bucket_mib: float):
        self.bucket_mib = bucket_mib

    def gather(self, trainers: TrainerGroup) -> list[WeightBucket]:
        return trainers.weight_buckets(self.bucket_mib)

    def load(self, rollout: RolloutGroup, buckets: list[WeightBucket], version: int,
             probe_ids: list[int]) -> list[WeightLoad]:
        refs, digests = [b.ref for b in buckets], [b.sha256 for b in buckets]
        return rollout.update_weights(refs, digests, sum(b.tensors for b in buckets), version, probe_ids)

    def release(self, trainers: TrainerGroup) -> None:
        """Nothing held: the object store frees the buckets with their references."""


class DeviceTransport:
    """Device buckets of ≤ trainer.sync_bucket_mib shared by CUDA IPC handles; engine k (on
    trainer rank k's GPU) loads rank k's buckets and checks their checksums on the device."""

    on_device = True
    description = "CUDA IPC on the device"

    def __init__(self, bucket_mib: float):
        self.bucket_mib = bucket_mib

    def gather(self, trainers: TrainerGroup) -> list[DeviceWeights]:
        return trainers.device_weight_buckets(self.bucket_mib)

    def load(self, rollout: RolloutGroup, weights: list[DeviceWeights], version: int,
             probe_ids: list[int]) -> list[WeightLoad]:
        return rollout.update_weights_device(weights, version, probe_ids)

    def release(self, trainers: TrainerGroup) -> None:
        """The ranks free their buckets once every engine has loaded them."""
        trainers.release_weight_buckets()


@dataclass
class ProbeCheck:
    """The probe's verdict on one sync (module docstring)."""

    tolerance: float
    noise: float  # max |engine − trainer| on equal weights: at start-up, then the largest seen

    @property
    def resolution(self) -> float:
        """The smallest trainer move the probe tells from noise: 4× the noise seen so far, and
        never below 4% of the absolute bound (a start-up that happened to agree bitwise must not
        make later last-bit differences look like staleness)."""
        return 4 * max(self.noise, self.tolerance / 100)

    def metrics(self, engines_after: list[list[float]], engines_before: list[list[float]],
                trainer_after: list[float], trainer_before: list[float]) -> dict[str, float]:
        worst = max(max_abs_diff(e, trainer_after) for e in engines_after)
        trainer_moved = max_abs_diff(trainer_after, trainer_before)
        return {
            "sync/probe_max_abs_diff": worst,
            "sync/probe_change": max(max_abs_diff(a, b) for a, b in zip(engines_after, engines_before)),
            "sync/probe_trainer_change": trainer_moved,
            "sync/probe_noise": self.noise,
            "sync/probe_conclusive": float(trainer_moved > self.resolution),
        }

    def verify(self, m: dict[str, float], version: int) -> None:
        worst, moved = m["sync/probe_max_abs_diff"], m["sync/probe_trainer_change"]
        if not worst <= self.tolerance:
            raise WeightSyncError(
                f"weight sync to version {version} failed verification: probe |Δ log-prob| engine vs trainer = "
                f"{worst:.3g} > {self.tolerance} (the rollout engine is not running the trainer's weights)")
        if m["sync/probe_conclusive"] and not worst < moved / 2:
            raise WeightSyncError(
                f"weight sync to version {version} failed verification: the engine's probe is {worst:.3g} from "
                f"the trainer's new weights while the update moved the trainer's probe by {moved:.3g}: the "
                "engine still runs (close to) the old weights")
        self.noise = max(self.noise, worst)


class WeightSync:
    def __init__(self, trainers: TrainerGroup, rollout: RolloutGroup,
                 transport: HostTransport | DeviceTransport | CollectiveTransport,
                 probe_ids: list[int], dtype: str):
        self.trainers, self.rollout, self.transport = trainers, rollout, transport
        self.probe_ids = probe_ids
        self.check = ProbeCheck(ABSOLUTE_TOLERANCE[dtype], noise=0.0)
        self.before: tuple[Pending[list[list[float]]], Pending[list[float]]] | None = None

    def calibrate(self) -> float:
        """Measures the probe noise on equal weights; call while engines and trainer hold one
        checkpoint. Fails like a sync when they differ grossly."""
        engines = self.rollout.probe_logprobs(self.probe_ids).result()
        trainer = self.trainers.probe_logprobs(self.probe_ids).result()
        noise = max(max_abs_diff(e, trainer) for e in engines)
        if not noise <= self.check.tolerance:
            raise WeightSyncError(
                f"at start-up the engines' probe log-probs differ from the trainer's by {noise:.3g} > "
                f"{self.check.tolerance} on weights loaded from one checkpoint: the engines do not compute the "
                "trainer's model")
        self.check.noise = noise
        return noise

    def resend(self, version: int) -> dict[str, float]:
        """After a restart (fresh engines, or a trainer back at a checkpoint): the trainer's
        weights into every engine, verified as at start-up — the transport's checksums, then
        the probe within the dtype's bound on what are now equal weights (there is no "before"
        to judge staleness against). Returns the sync/* metrics of this sync."""
        self.before = None  # the interrupted step's probes: their engines or weights are gone
        payload = self.transport.gather(self.trainers)
        trainer = self.trainers.probe_logprobs(self.probe_ids)
        try:
            loads = self.transport.load(self.rollout, payload, version, self.probe_ids)
        finally:
            self.transport.release(self.trainers)
        worst = max(max_abs_diff(w.probe, trainer.result()) for w in loads)
        if not worst <= self.check.tolerance:
            raise WeightSyncError(
                f"weight sync to version {version} after a restart failed verification: probe |Δ log-prob| engine "
                f"vs trainer = {worst:.3g} > {self.check.tolerance} (the engines do not run the trainer's weights)")
        self.check.noise = max(self.check.noise, worst)
        return {"sync/probe_max_abs_diff": worst, "sync/bytes": float(loads[0].bytes),
                "sync/tensors": float(loads[0].tensors), "sync/load_s": max(w.seconds for w in loads),
                "sync/version": float(version), "sync/on_device": float(self.transport.on_device),
                "sync/direct_copy": float(loads[0].direct_copy)}

    def probe_engines(self) -> None:
        """Queues the probe on the engines and the trainer under the weights that sampled this
        step (the sync's "before"); must come before anything that changes or uses them
        afterwards (each actor runs its calls in order)."""
        self.before = (self.rollout.probe_logprobs(self.probe_ids), self.trainers.probe_logprobs(self.probe_ids))

    def __call__(self, version: int) -> dict[str, float]:
        """Weights out of the trainer, into every engine, verified; returns the sync/* metrics."""
        engines_before, trainer_before = (pending.result() for pending in self.before)
        self.before = None
        payload = self.transport.gather(self.trainers)
        trainer_after = self.trainers.probe_logprobs(self.probe_ids)  # runs while the engines load
        try:
            loads = self.transport.load(self.rollout, payload, version, self.probe_ids)
        finally:
            self.transport.release(self.trainers)
        trainer_after = trainer_after.result()
        m = self.check.metrics([w.probe for w in loads], engines_before, trainer_after, trainer_before)
        self.check.verify(m, version)
        return m | {"sync/bytes": float(loads[0].bytes), "sync/tensors": float(loads[0].tensors),
                    "sync/load_s": max(w.seconds for w in loads), "sync/version": float(version),
                    "sync/on_device": float(self.transport.on_device),
                    "sync/direct_copy": float(loads[0].direct_copy)}
