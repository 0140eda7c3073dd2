"""Weight sync: the trainer's new weights into every rollout engine, then verified.

Two separable parts. A transport moves the weights (`HostTransport`: safetensors buckets
through Ray's object store, the CPU path); it takes them out of the trainer (`gather`) and
loads them into the engines (`load`), each engine answering with the probe's log-probs under
its new weights. `WeightSync` verifies: the engines' log-probs on a fixed probe text must equal
the trainer's within the dtype's tolerance, and differ from the engines' own log-probs before
the sync (recorded while the step's verifiers score) when the update changed anything. A sync
that did not take is an error, never a silent skip.
"""

from __future__ import annotations

from rl.groups import Pending, RolloutGroup, TrainerGroup
from rollout.worker import WeightLoad
from trainer.worker import WeightBucket

# The sync probe: a fixed text whose teacher-forced log-probs both engines compute after a sync.
PROBE_TEXT = "Ann has 23 apples. Ann gets 58 more. How many apples now? 23+58=81. The answer is 81."
# Largest |Δ log-prob| on the probe that still counts as "same weights" (fp32 engines agree to
# ~1e-6; half precision needs room for kernel differences, which fast mode allows).
SYNC_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1, "float16": 0.05}


class HostTransport:
    """Safetensors buckets of ≤ trainer.sync_bucket_mib through Ray's object store; each engine
    checks every bucket's sha256 and loads them all in one in-place reload."""

    def __init__(self, bucket_mib: float):
        self.bucket_mib = bucket_mib

    def gather(self, trainers: TrainerGroup) -> list[WeightBucket]:
        return trainers.weight_buckets(self.bucket_mib)

    def load(self, rollout: RolloutGroup, buckets: list[WeightBucket], version: int,
             probe_ids: list[int]) -> list[WeightLoad]:
        refs, digests = [b.ref for b in buckets], [b.sha256 for b in buckets]
        return rollout.update_weights(refs, digests, sum(b.tensors for b in buckets), version, probe_ids)


class WeightSync:
    def __init__(self, trainers: TrainerGroup, rollout: RolloutGroup, transport: HostTransport,
                 probe_ids: list[int], dtype: str):
        self.trainers, self.rollout, self.transport = trainers, rollout, transport
        self.probe_ids = probe_ids
        self.tolerance = SYNC_TOLERANCE[dtype]
        self.before: Pending[list[list[float]]] | None = None

    def probe_engines(self) -> None:
        """Queues the engines' probe under the weights that sampled this step (the sync's
        "before"); must come before anything that changes or uses the engines afterwards."""
        self.before = self.rollout.probe_logprobs(self.probe_ids)

    def __call__(self, version: int) -> dict[str, float]:
        """Weights out of the trainer, into every engine, verified; returns the sync/* metrics."""
        payload = self.transport.gather(self.trainers)
        trainer_probe = self.trainers.probe_logprobs(self.probe_ids)  # runs while the engines load
        loads = self.transport.load(self.rollout, payload, version, self.probe_ids)
        worst, changed = self.verify(version, trainer_probe.result(), [w.probe for w in loads])
        return {"sync/probe_max_abs_diff": worst, "sync/probe_change": changed,
                "sync/buckets": float(len(payload)), "sync/bytes": float(loads[0].bytes),
                "sync/version": float(version)}

    def verify(self, version: int, trainer: list[float], engines: list[list[float]]) -> tuple[float, float]:
        """(largest |Δ| of any engine against the trainer, largest change of any engine since
        `probe_engines`); raises if an engine does not run the trainer's weights."""
        before, self.before = self.before.result(), None
        worst = changed = 0.0
        for old, new in zip(before, engines):
            worst = max(worst, max(abs(x - y) for x, y in zip(trainer, new)))
            changed = max(changed, max(abs(x - y) for x, y in zip(old, new)))
        if not worst <= self.tolerance:
            raise RuntimeError(
                f"weight sync to version {version} failed verification: probe |Δ log-prob| = {worst:.3g} > "
                f"{self.tolerance} (the rollout engine is not running the trainer's weights)"
            )
        return worst, changed
