"""Weights over a collective: trainer rank 0 broadcasts its weights, bucket by bucket, to the
workers of every rollout engine, in a process group of their own (NCCL on GPUs, Gloo on CPU —
the same code). Both ends of the weight sync call this module (the trainer sends, the engines'
workers receive), which is why it sits below both.

The group: rank 0 is the trainer's rank 0, ranks 1.. the engines' workers. It is made from a
`TCPStore` and a backend process group constructed directly, never through
`torch.distributed.init_process_group`: the trainer already has a default group (its DeepSpeed
ranks) and every vLLM worker has its own, and neither must learn of this one. Rank 0 hosts the
store on a port the OS picks (no race between choosing a port and binding it).

A bucket is laid out as `kernels.weight_buckets` lays out the device buckets of the CUDA IPC
path (tensors at 256-byte aligned offsets, whole 4-byte words) and carries that module's
checksum: the sender broadcasts the bucket, then its checksum as one int64; each receiver
recomputes the checksum on its copy before a tensor of it is used. The plan (names, dtypes,
shapes, offsets) is made once by the sender from the parameters' shapes and travels beside the
group, through Ray, so only weight bytes cross the collective.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from kernels.weight_buckets import ALIGN, TensorSlot, bucket_tensors, byte_checksum

# One broadcast of one bucket must finish within this (a dead peer fails the sync after it
# instead of hanging the run); generous, since a bucket of a large model is GBs.
GROUP_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class BucketPlan:
    """One bucket of a broadcast: its size and where each tensor sits in it."""

    nbytes: int
    tensors: tuple[TensorSlot, ...]


def plan_buckets(specs: Iterable[tuple[str, torch.dtype, tuple[int, ...]]], bucket_bytes: int) -> list[BucketPlan]:
    """Buckets of about `bucket_bytes` for (name, dtype, shape) in order; a tensor larger than
    that gets a bucket of its own. Every tensor starts at an aligned offset."""
    plans: list[BucketPlan] = []
    slots: list[TensorSlot] = []
    size = 0
    for name, dtype, shape in specs:
        numel = 1
        for n in shape:
            numel *= n
        nbytes = -(-numel * dtype.itemsize // ALIGN) * ALIGN
        if slots and size + nbytes > bucket_bytes:
            plans.append(BucketPlan(size, tuple(slots)))
            slots, size = [], 0
        slots.append(TensorSlot(name, str(dtype).removeprefix("torch."), tuple(shape), size))
        size += nbytes
    if slots:
        plans.append(BucketPlan(size, tuple(slots)))
    return plans


def plan_bytes(plan: list[BucketPlan]) -> int:
    return sum(b.nbytes for b in plan)


class WeightGroup:
    """This process's membership of a weight-broadcast group (module docstring)."""

    def __init__(self, store: dist.TCPStore, rank: int, world_size: int, device: torch.device):
        self.store, self.rank, self.world_size, self.device = store, rank, world_size, device
        if device.type == "cuda":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = GROUP_TIMEOUT
            self.group = dist.ProcessGroupNCCL(store, rank, world_size, options)
        else:
            self.group = dist.ProcessGroupGloo(store, rank, world_size, GROUP_TIMEOUT)

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Rank 0's `tensor` into every member's (in place); returns once this member's part is
        done (NCCL: enqueued on its stream, which later work on `tensor` waits for)."""
        self.group.broadcast([tensor], dist.BroadcastOptions()).wait()

    def close(self) -> None:
        """Leaves the group. NCCL: abort, not a collective shutdown, since a peer may be dead
        (an engine that failed and is being replaced)."""
        if self.device.type == "cuda":
            # The method's name varies across torch versions.
            abort = getattr(self.group, "abort", None) or self.group.shutdown
            abort()
        self.group = None
        self.store = None


def host_store(host: str, world_size: int) -> dist.TCPStore:
    """Rank 0's store on a port the OS picks (`store.port`); it waits for no one yet."""
    return dist.TCPStore(host, 0, world_size, is_master=True, timeout=GROUP_TIMEOUT, wait_for_workers=False)


def join_store(host: str, port: int, world_size: int) -> dist.TCPStore:
    return dist.TCPStore(host, port, world_size, is_master=False, timeout=GROUP_TIMEOUT)


def send_bucket(group: WeightGroup, buffer: torch.Tensor, checksum: int) -> None:
    """One bucket, then its checksum (computed on the bytes before they were sent)."""
    group.broadcast(buffer)
    group.broadcast(torch.tensor([checksum], dtype=torch.int64, device=buffer.device))


def broadcast_weights(group: WeightGroup, plan: list[BucketPlan],
                      named_tensors: Iterator[tuple[str, torch.Tensor]]) -> int:
    """Rank 0: copies `named_tensors` (in the plan's order) into each bucket and broadcasts it
    with its checksum; returns the bytes sent. A tensor that does not match the plan (name,
    dtype, shape) is an error before anything of its bucket is sent."""
    sent = 0
    for bucket in plan:
        buffer = torch.zeros(bucket.nbytes, dtype=torch.uint8, device=group.device)  # padding defined
        for slot, (name, view) in zip(bucket.tensors, bucket_tensors(buffer, bucket), strict=True):
            got_name, tensor = next(named_tensors)
            if got_name != name or tuple(tensor.shape) != tuple(view.shape) or tensor.dtype != view.dtype:
                raise ValueError(f"weight broadcast: expected {name} {slot.dtype}{list(slot.shape)} next, got "
                                 f"{got_name} {str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)}")
            view.copy_(tensor)
        send_bucket(group, buffer, byte_checksum(buffer))
        sent += bucket.nbytes
    return sent


class BucketReceiver:
    """A receiving member's view of one broadcast: `tensors()` yields (name, view) bucket by
    bucket, each bucket's checksum verified before any of its tensors is yielded. Whatever
    happens to the consumer, `drain()` receives the buckets it did not take, so the sender and
    the other members are never left waiting in a collective (then the error is raised)."""

    def __init__(self, group: WeightGroup, plan: list[BucketPlan]):
        self.group, self.plan = group, plan
        self.received = 0  # buckets taken off the group so far
        self.bytes = 0

    def _next(self) -> tuple[torch.Tensor, int, int]:
        bucket = self.plan[self.received]
        buffer = torch.empty(bucket.nbytes, dtype=torch.uint8, device=self.group.device)
        sent = torch.zeros(1, dtype=torch.int64, device=self.group.device)
        self.group.broadcast(buffer)
        self.group.broadcast(sent)
        self.received += 1
        self.bytes += bucket.nbytes
        return buffer, int(sent.item()), byte_checksum(buffer)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        while self.received < len(self.plan):
            index, bucket = self.received, self.plan[self.received]
            buffer, sent, got = self._next()
            if got != sent:
                self.drain()
                raise ValueError(f"weight bucket {index} of {len(self.plan)} ({len(bucket.tensors)} tensors from "
                                 f"{bucket.tensors[0].name}): checksum {got} != sent {sent} (corrupted in the "
                                 f"{self.group.backend} broadcast)")
            yield from bucket_tensors(buffer, bucket)

    def drain(self) -> None:
        while self.received < len(self.plan):
            self._next()
