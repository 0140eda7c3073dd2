"""Weight buckets on the device: the memory layout both engines use for a weight sync on a GPU.

The trainer copies its full (gathered) parameters into a few flat device buffers — buckets — and
hands out one CUDA IPC handle per bucket; a rollout engine on the same GPU opens the handles,
checks each bucket's checksum on the device, and reads the tensors as views of the bucket to
copy them into its own parameters. No weight byte crosses host memory: the handles and the table
of contents (names, dtypes, shapes, offsets) are all that travel.

Checksum: the bytes read as little-endian int32 words w_i (buckets are whole words), then

    checksum = Σ_i w_i · (1 + i mod 65521)   (mod 2^64, two's complement)

Position weights catch swapped words, which a plain sum misses. Integer addition mod 2^64 is
associative and commutative, so the value does not depend on the device's reduction order:
sender and receiver agree exactly on equal bytes.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

# Byte alignment of each tensor inside a bucket: every dtype's view of a slice is aligned, and a
# bucket is a whole number of 4-byte words.
ALIGN = 256
_MODULUS = 65521  # the largest prime below 2^16: weights < 2^16, products < 2^47
_CHUNK_WORDS = 1 << 24  # int64 temporaries of at most 128 MiB


@dataclass(frozen=True)
class TensorSlot:
    """Where one named tensor sits inside its bucket."""

    name: str
    dtype: str  # torch dtype name, e.g. "bfloat16"
    shape: tuple[int, ...]
    offset: int  # bytes from the bucket's start


@dataclass(frozen=True)
class DeviceBucket:
    """A bucket as it travels: its CUDA IPC handle (the pickled result of
    `torch.multiprocessing.reductions.reduce_tensor`), size, sender-side checksum, tensors."""

    handle: bytes
    nbytes: int
    checksum: int
    tensors: tuple[TensorSlot, ...]


def byte_checksum(t: torch.Tensor) -> int:
    """Checksum (above) of the raw bytes of a contiguous tensor of whole 4-byte words.

    Computed as column sums: the words viewed as rows of 65521 (the position weight is the
    column index + 1), Σ_i w_i·(1 + i mod 65521) = Σ_j (j + 1)·Σ_rows w[row, j], all mod 2^64.
    The bucket's words are read once by a few int64-accumulating column reductions (row blocks of
    about _CHUNK_WORDS words), then one 65521-long dot product; the tail that does not fill a
    row is weighted directly."""
    if not t.is_contiguous():
        raise ValueError("byte_checksum needs a contiguous tensor (its bytes in memory order)")
    flat = t.reshape(-1).view(torch.uint8)
    if flat.numel() % 4:
        raise ValueError(f"byte_checksum needs whole 4-byte words; got {flat.numel()} bytes (pad the buffer)")
    words = flat.view(torch.int32)
    rows = words.numel() // _MODULUS
    columns = torch.zeros(_MODULUS, dtype=torch.int64, device=t.device)
    table = words[: rows * _MODULUS].view(rows, _MODULUS)
    block = max(1, _CHUNK_WORDS // _MODULUS)
    for start in range(0, rows, block):
        columns += table[start : start + block].sum(0, dtype=torch.int64)
    tail = words[rows * _MODULUS :].to(torch.int64)
    columns[: tail.numel()] += tail
    weights = torch.arange(1, _MODULUS + 1, dtype=torch.int64, device=t.device)
    return int((columns * weights).sum().item())


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def pack_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> list[tuple[torch.Tensor, DeviceBucket]]:
    """Copies named GPU tensors, in order, into flat uint8 buckets of about `bucket_bytes` (a
    larger tensor gets a bucket of its own). Returns (buffer, its DeviceBucket) pairs; the caller
    keeps each buffer alive until every receiver has read it."""
    from torch.multiprocessing.reductions import reduce_tensor

    out: list[tuple[torch.Tensor, DeviceBucket]] = []
    pending: list[tuple[str, torch.Tensor]] = []
    size = 0

    def flush() -> None:
        nonlocal pending, size
        if not pending:
            return
        buffer = torch.zeros(size, dtype=torch.uint8, device=pending[0][1].device)  # padding defined
        slots, views, offset = [], [], 0
        for name, tensor in pending:
            nbytes = tensor.numel() * tensor.element_size()
            views.append(buffer[offset : offset + nbytes].view(tensor.dtype))
            slots.append(TensorSlot(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), offset))
            offset += _aligned(nbytes)
        # the bucket's copies as one batched call (a few kernels), not one launch per tensor
        torch._foreach_copy_(views, [tensor.reshape(-1) for _, tensor in pending])
        checksum = byte_checksum(buffer)
        torch.cuda.synchronize(buffer.device)  # the copies have landed before another process reads
        out.append((buffer, DeviceBucket(pickle.dumps(reduce_tensor(buffer)), size, checksum, tuple(slots))))
        pending, size = [], 0

    for name, tensor in named_tensors:
        if tensor.device.type != "cuda":
            raise ValueError(f"device weight sync: {name} is on {tensor.device}, not on a GPU")
        nbytes = _aligned(tensor.numel() * tensor.element_size())
        if pending and size + nbytes > bucket_bytes:
            flush()
        pending.append((name, tensor))
        size += nbytes
    flush()
    return out


def open_bucket(bucket: DeviceBucket) -> torch.Tensor:
    """The sender's bucket as a tensor of this process (same GPU), its checksum verified."""
    func, args = pickle.loads(bucket.handle)
    args = list(args)
    args[6] = torch.cuda.current_device()  # storage_device: the index this process sees the GPU at
    buffer = func(*args)
    got = byte_checksum(buffer)
    if got != bucket.checksum:
        raise ValueError(f"weight bucket of {len(bucket.tensors)} tensors ({bucket.tensors[0].name}, ...): "
                         f"device checksum {got} != sent {bucket.checksum} (corrupted in transfer)")
    return buffer


def bucket_tensors(buffer: torch.Tensor, bucket: DeviceBucket) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor view) for each tensor of an opened bucket."""
    for slot in bucket.tensors:
        dtype = getattr(torch, slot.dtype)
        numel = 1
        for n in slot.shape:
            numel *= n
        nbytes = numel * dtype.itemsize
        yield slot.name, buffer[slot.offset : slot.offset + nbytes].view(dtype).view(slot.shape)
