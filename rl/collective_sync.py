"""The collective weight transport: trainer rank 0 broadcasts the weights to every rollout engine
over a process group of its own with the engines' workers (`kernels.weight_broadcast`: NCCL on
GPUs, Gloo on CPU). Made for split placement, where the engines sit on other GPUs (or nodes)
than the trainer and neither the device path (CUDA IPC, one GPU) nor the host path (through
Ray's object store and host memory) fits.

One sync: rank 0 plans the buckets from the parameters' shapes, every trainer rank starts
`broadcast_weights` (ZeRO-3 gathers each parameter with all ranks; rank 0 sends it), and every
engine receives, checks each bucket's checksum and loads the weights in place; each engine then
answers with the probe's log-probs, which `rl.weight_sync.WeightSync` verifies as for any
transport.

The group is made on first use and remade whenever its members change: an engine (or trainer
rank 0) that was restarted is a new actor, which the old group cannot hold, so the transport
compares the actors it made the group with against the groups' actors at every sync, and the
survivors leave the old group before all join a new one (on a new port).
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from itertools import accumulate

import ray

from kernels.weight_broadcast import BucketPlan, plan_bytes
from rl.groups import RolloutGroup, TrainerGroup
from rollout.worker import WeightLoad

log = logging.getLogger("lockstep.sync")


@dataclass
class Broadcast:
    """One sync in flight: the plan every member follows and the trainer ranks' sends."""

    plan: bytes  # pickled list[BucketPlan]
    tensors: int
    bytes: int
    sends: list  # ray.ObjectRef of each rank's broadcast_weights (rank 0: bytes sent)


def member_ids(actors: list) -> tuple[str, ...]:
    """The identity of a group's members: their Ray actor ids (a restarted actor has a new one)."""
    return tuple(a._actor_id.hex() for a in actors)


def first_ranks(workers: list[int]) -> list[int]:
    """Each engine's first rank in the group (rank 0 is trainer rank 0), given the number of
    worker processes of each engine: engine k's workers take consecutive ranks."""
    return [1 + before for before in accumulate([0] + workers[:-1])]


class CollectiveTransport:
    def __init__(self, trainers: TrainerGroup, rollout: RolloutGroup, bucket_mib: float, gpus: bool):
        self.trainers, self.rollout = trainers, rollout
        self.bucket_mib = bucket_mib
        self.on_device = gpus  # NCCL between GPUs: no weight byte crosses host memory
        self.members: tuple[str, ...] = ()  # the actors of the current group; () before the first
        self.backend = "nccl" if gpus else "gloo"
        self.groups_made = 0

    @property
    def description(self) -> str:
        return f"broadcast from trainer rank 0 over a {self.backend} group with the engines"

    def ensure_group(self) -> None:
        """The group of trainer rank 0 and every engine worker, (re)made when its members changed."""
        rank0, engines = self.trainers.actors[0], self.rollout.actors
        members = member_ids([rank0, *engines])
        if members == self.members:
            return
        if self.members:
            log.warning("weight broadcast group: its members changed (an actor was restarted); making a new one")
        ray.get([a.leave_weight_group.remote() for a in (rank0, *engines)])  # survivors of the old group
        workers = ray.get([a.workers.remote() for a in engines])
        world = 1 + sum(workers)
        host, port = ray.get(rank0.host_weight_group.remote(world))
        joins = [rank0.join_weight_group.remote()] + [a.join_weight_group.remote(host, port, first, world)
                                                      for a, first in zip(engines, first_ranks(workers))]
        backends = set(ray.get(joins))
        if backends != {self.backend}:
            raise RuntimeError(f"weight broadcast group: members run {sorted(backends)}, expected {self.backend} "
                               "(trainer and engines must all be on GPUs or all on CPU)")
        self.members = members
        self.groups_made += 1
        log.info("weight broadcast group %d: %d members at %s:%d (%s)", self.groups_made, world, host, port,
                 self.backend)

    def gather(self, trainers: TrainerGroup) -> Broadcast:
        """Starts the broadcast on every trainer rank (it proceeds as the engines receive)."""
        self.ensure_group()
        plan = ray.get(trainers.actors[0].weight_plan.remote(self.bucket_mib))
        buckets: list[BucketPlan] = pickle.loads(plan)
        sends = [a.broadcast_weights.remote(plan) for a in trainers.actors]
        return Broadcast(plan, sum(len(b.tensors) for b in buckets), plan_bytes(buckets), sends)

    def load(self, rollout: RolloutGroup, broadcast: Broadcast, version: int,
             probe_ids: list[int]) -> list[WeightLoad]:
        loads = ray.get([a.update_weights_collective.remote(broadcast.plan, broadcast.tensors, broadcast.bytes,
                                                            version, probe_ids) for a in rollout.actors])
        sent = ray.get(broadcast.sends)[0]
        if sent != broadcast.bytes:
            raise RuntimeError(f"weight broadcast to version {version}: trainer rank 0 sent {sent} bytes, "
                               f"the plan has {broadcast.bytes}")
        return loads

    def release(self, trainers: TrainerGroup) -> None:
        """Nothing held: each bucket is freed once broadcast."""
