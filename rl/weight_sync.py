"""Weight sync trainer → rollout engines, and its verification.

Transport, chosen once at start-up:
- ``device`` (engines on the trainer ranks' GPUs): each trainer rank copies its full weights into
  device buckets and sends CUDA IPC handles; the colocated engine copies on the device and
  checks every bucket's checksum there (`kernels.weight_buckets`). No weight byte crosses host
  memory.
- ``host`` (CPU runs, and engines on other GPUs until the NCCL path exists): rank 0 serialises
  safetensors buckets into Ray's object store, the engines load the bytes (sha256 per bucket).

Verification after every sync, beyond the transport's checksums: a fixed probe text is scored
teacher-forced by the engines and by the trainer. Engines and trainer differ by their kernels'
rounding even on equal weights (the *noise*, measured once at start-up on the weights both
loaded from one checkpoint), so the probe cannot demand equality in bf16. It demands two things:
- |engine − trainer| ≤ the dtype's absolute bound (gross errors: a wrong layout, missing tensors);
- the engine sits nearer the new weights than the old ones: |engine − trainer_new| <
  ½·|trainer_new − trainer_old| whenever the update moved the trainer's probe by more than 4× the
  noise (a stale engine fails this at any learning rate whose step the probe can see; below that
  the check is inconclusive, said by `sync/probe_conclusive` = 0, and the checksums carry the
  verification).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray

log = logging.getLogger("lockstep.weight_sync")

# The sync probe: a fixed text whose teacher-forced log-probs both engines compute after a sync.
PROBE_TEXT = "Ann has 23 apples. Ann gets 58 more. How many apples now? 23+58=81. The answer is 81."
# Largest |Δ log-prob| between engine and trainer on the probe that still counts as "the same
# model": fp32 engines agree to ~1e-5; in half precision the engines' different kernels (vLLM's
# attention, grouped vs per-expert GEMMs) round differently (0.03 on the bf16 demo, H100), so the
# bound only catches gross errors — staleness is caught relative to the update (ProbeCheck).
ABSOLUTE_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25, "float16": 0.1}


class WeightSyncError(RuntimeError):
    pass


def max_abs_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


@dataclass
class ProbeCheck:
    """The probe's verdict on one sync (module docstring)."""

    tolerance: float
    noise: float  # max |engine − trainer| on equal weights: at start-up, then after each sync

    @property
    def resolution(self) -> float:
        """The smallest trainer move the probe can tell from noise: 4× the noise seen so far,
        and never below 1/25 of the absolute bound (so a start-up that happened to agree
        bitwise does not make every later last-bit difference look like staleness)."""
        return 4 * max(self.noise, self.tolerance / 100)

    def metrics(self, engines_after: list[list[float]], engines_before: list[list[float]],
                trainer_after: list[float], trainer_before: list[float]) -> dict[str, float]:
        worst = max(max_abs_diff(e, trainer_after) for e in engines_after)
        trainer_moved = max_abs_diff(trainer_after, trainer_before)
        conclusive = trainer_moved > self.resolution
        return {
            "sync/probe_max_abs_diff": worst,
            "sync/probe_change": max(max_abs_diff(a, b) for a, b in zip(engines_after, engines_before)),
            "sync/probe_trainer_change": trainer_moved,
            "sync/probe_noise": self.noise,
            "sync/probe_conclusive": float(conclusive),
        }

    def verify(self, m: dict[str, float], version: int) -> None:
        worst, moved = m["sync/probe_max_abs_diff"], m["sync/probe_trainer_change"]
        if not worst <= self.tolerance:
            raise WeightSyncError(
                f"weight sync to version {version} failed verification: probe |Δ log-prob| engine vs trainer = "
                f"{worst:.3g} > {self.tolerance} (the rollout engine is not running the trainer's weights)")
        if m["sync/probe_conclusive"] and not worst < moved / 2:
            raise WeightSyncError(
                f"weight sync to version {version} failed verification: the engine's probe is {worst:.3g} from the "
                f"trainer's new weights but the update moved the trainer's probe by only {moved:.3g}: the engine "
                "still runs (close to) the old weights")
        self.noise = max(self.noise, worst)


class WeightSync:
    """Moves the trainer's weights into every rollout engine and verifies them (docstring)."""

    def __init__(self, trainers: list, engines: list, transport: str, bucket_mib: float, probe_ids: list[int], dtype: str):
        if transport not in ("device", "host"):
            raise ValueError(f"weight sync transport {transport!r}: 'device' or 'host'")
        self.trainers, self.engines = trainers, engines
        self.transport, self.bucket_mib, self.probe_ids = transport, bucket_mib, probe_ids
        self.check = ProbeCheck(ABSOLUTE_TOLERANCE[dtype], noise=0.0)

    def calibrate(self) -> float:
        """Measures the probe noise on equal weights (call when engines and trainer hold the same
        checkpoint). Fails like a sync when they differ grossly."""
        engines = ray.get([e.prompt_logprobs.remote(self.probe_ids) for e in self.engines])
        trainer = self.trainer_probe()
        noise = max(max_abs_diff(e, trainer) for e in engines)
        if not noise <= self.check.tolerance:
            raise WeightSyncError(f"at start-up the engines' probe log-probs differ from the trainer's by {noise:.3g} > "
                                  f"{self.check.tolerance}, on weights loaded from one checkpoint: the engines do not compute the trainer's model")
        self.check.noise = noise
        return noise

    def trainer_probe(self) -> list[float]:
        return ray.get([t.probe_logprobs.remote(self.probe_ids) for t in self.trainers])[0]

    def launch_probes(self) -> tuple[list, list]:
        """Queues the probe on the engines and the trainer ranks before this step's update: the
        "before" of the next sync (each actor runs its calls in order)."""
        return ([e.prompt_logprobs.remote(self.probe_ids) for e in self.engines],
                [t.probe_logprobs.remote(self.probe_ids) for t in self.trainers])

    def sync(self, version: int, before: tuple[list, list]) -> dict[str, float]:
        """Sends the weights, loads them in every engine, verifies; returns the sync metrics."""
        engines_before, trainer_before = ray.get(before[0]), ray.get(before[1])[0]
        if self.transport == "device":
            results = self._send_on_device(version)
        else:
            results = self._send_through_host(version)
        m = self.check.metrics([r["probe"] for r in results], engines_before, self.trainer_probe(), trainer_before)
        self.check.verify(m, version)
        m.update({"sync/bytes": float(results[0]["bytes"]), "sync/tensors": float(results[0]["tensors"]),
                  "sync/load_s": max(r["seconds"] for r in results), "sync/version": float(version),
                  "sync/on_device": float(self.transport == "device")})
        return m

    def _send_through_host(self, version: int) -> list[dict]:
        buckets = ray.get([t.weight_buckets.remote(self.bucket_mib) for t in self.trainers])[0]
        return ray.get([e.update_weights.remote(buckets, version, self.probe_ids) for e in self.engines])

    def _send_on_device(self, version: int) -> list[dict]:
        # Every rank packs its buckets (ZeRO-3 gathers collectively); engine k is colocated with rank k.
        packed = ray.get([t.device_weight_buckets.remote(self.bucket_mib) for t in self.trainers])
        try:
            return ray.get([e.update_weights_device.remote(packed[k][0], packed[k][1], packed[k][2], version, self.probe_ids)
                            for k, e in enumerate(self.engines)])
        finally:
            ray.get([t.release_weight_buckets.remote() for t in self.trainers])
