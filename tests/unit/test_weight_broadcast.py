"""The collective weight transport's pieces (`kernels.weight_broadcast`, `rl.collective_sync`):
bucket plans, a real Gloo group of a sender and two receivers (threads of this process: the
group is the same object the trainer rank and the engines' workers make), checksums that catch
a corrupted bucket without leaving the sender waiting, and a group remade after a member is
replaced (an engine restart)."""

import threading

import pytest
import torch

from kernels.weight_broadcast import (BucketReceiver, WeightGroup, broadcast_weights, host_store, join_store,
                                      plan_buckets, plan_bytes, send_bucket)
from kernels.weight_buckets import byte_checksum
from rl.collective_sync import first_ranks

CPU = torch.device("cpu")


def weights() -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [("embed", torch.randn(37, 16, generator=gen)), ("norm", torch.randn(16, generator=gen).bfloat16()),
            ("head", torch.randn(16, 37, generator=gen).half()), ("steps", torch.arange(5))]


def specs(named):
    return [(n, t.dtype, tuple(t.shape)) for n, t in named]


def test_plan_aligns_every_tensor_and_splits_at_the_bucket_size():
    plan = plan_buckets(specs(weights()), bucket_bytes=3000)
    # Aligned sizes: embed 2368 B → 2560, norm 32 → 256, head 1184 → 1280, steps 40 → 256;
    # embed + norm = 2816 fits 3000, + head does not.
    assert [[s.name for s in b.tensors] for b in plan] == [["embed", "norm"], ["head", "steps"]]
    assert [s.offset for s in plan[0].tensors] == [0, 2560] and [s.offset for s in plan[1].tensors] == [0, 1280]
    assert [b.nbytes for b in plan] == [2816, 1536] and plan_bytes(plan) == 4352
    big = plan_buckets([("w", torch.float32, (4096,))], bucket_bytes=1024)  # larger than a bucket: its own
    assert len(big) == 1 and big[0].nbytes == 16384


def group_of(n_receivers: int):
    """A sender's group (rank 0) and a function that joins receiver `rank` to it."""
    store = host_store("127.0.0.1", 1 + n_receivers)
    port = store.port

    def join(rank: int) -> WeightGroup:
        return WeightGroup(join_store("127.0.0.1", port, 1 + n_receivers), rank, 1 + n_receivers, CPU)

    return store, join


def run_receivers(join, plan, ranks, received, errors):
    def receive(rank):
        group = join(rank)
        try:
            received[rank] = {name: t.clone() for name, t in BucketReceiver(group, plan).tensors()}
        except ValueError as e:
            errors[rank] = str(e)

    threads = [threading.Thread(target=receive, args=(r,)) for r in ranks]
    for t in threads:
        t.start()
    return threads


def test_broadcast_delivers_every_tensor_bit_for_bit_to_every_receiver():
    named = weights()
    plan = plan_buckets(specs(named), bucket_bytes=3000)
    store, join = group_of(2)
    received, errors = {}, {}
    threads = run_receivers(join, plan, [1, 2], received, errors)
    sender = WeightGroup(store, 0, 3, CPU)
    assert broadcast_weights(sender, plan, iter(named)) == plan_bytes(plan)
    for t in threads:
        t.join(timeout=30)
    assert not errors
    for rank in (1, 2):
        assert list(received[rank]) == [n for n, _ in named]
        for name, tensor in named:
            got = received[rank][name]
            assert got.dtype == tensor.dtype and got.shape == tensor.shape
            assert torch.equal(got.view(torch.uint8), tensor.view(torch.uint8))  # the same bits


def test_sender_refuses_tensors_that_do_not_match_the_plan():
    named = weights()
    plan = plan_buckets(specs(named), bucket_bytes=3000)
    store = host_store("127.0.0.1", 1)
    alone = WeightGroup(store, 0, 1, CPU)  # a group of one: nothing to wait for
    wrong = [named[0], ("norm", named[1][1].float()), *named[2:]]
    with pytest.raises(ValueError, match=r"expected norm bfloat16\[16\] next, got norm float32\[16\]"):
        broadcast_weights(alone, plan, iter(wrong))


def test_corrupted_bucket_is_refused_and_the_rest_still_drained():
    named = weights()
    plan = plan_buckets(specs(named), bucket_bytes=2600)  # embed alone, then the rest
    assert [len(b.tensors) for b in plan] == [1, 3]
    store, join = group_of(1)
    received, errors = {}, {}
    threads = run_receivers(join, plan, [1], received, errors)
    sender = WeightGroup(store, 0, 2, CPU)
    broadcast_first = torch.zeros(plan[0].nbytes, dtype=torch.uint8)
    broadcast_first[: 37 * 16 * 4].view(torch.float32).copy_(named[0][1].reshape(-1))
    checksum = byte_checksum(broadcast_first)
    broadcast_first[3] ^= 1  # one bit flipped after the checksum was taken: corrupted in transfer
    send_bucket(sender, broadcast_first, checksum)
    for bucket in plan[1:]:  # the sender goes on; the receiver must take these off the group
        send_bucket(sender, torch.zeros(bucket.nbytes, dtype=torch.uint8), 0)
    for t in threads:
        t.join(timeout=30)
    assert not threads[0].is_alive()
    assert "weight bucket 0 of 2 (1 tensors from embed): checksum" in errors[1] and "gloo broadcast" in errors[1]
    assert 1 not in received


def test_a_replaced_member_joins_a_new_group():
    """An engine restart: the old receiver is gone; the sender leaves its group and hosts a new
    one, which the new receiver joins; the broadcast works again."""
    named = weights()
    plan = plan_buckets(specs(named), bucket_bytes=1 << 20)
    for _ in range(2):  # the first group, then its replacement on a new port
        store, join = group_of(1)
        received, errors = {}, {}
        threads = run_receivers(join, plan, [1], received, errors)
        sender = WeightGroup(store, 0, 2, CPU)
        broadcast_weights(sender, plan, iter(named))
        for t in threads:
            t.join(timeout=30)
        assert torch.equal(received[1]["embed"], named[0][1])
        sender.close()


def test_engines_take_consecutive_ranks_after_the_trainer():
    assert first_ranks([1]) == [1]
    assert first_ranks([1, 1, 1]) == [1, 2, 3]
    assert first_ranks([2, 4, 1]) == [1, 3, 7]  # engines of several workers (tensor parallel)


def _nccl_receiver(port: int, plan, queue) -> None:
    """GPU 1's member (another process, as an engine's worker is): receives, verifies, returns
    each tensor's bytes on the host."""
    try:
        torch.cuda.set_device(1)
        group = WeightGroup(join_store("127.0.0.1", port, 2), 1, 2, torch.device("cuda", 1))
        got = {name: t.cpu() for name, t in BucketReceiver(group, plan).tensors()}
        queue.put(("ok", got))
    except Exception as e:  # noqa: BLE001 — reported to the test process
        queue.put(("error", repr(e)))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_nccl_broadcast_between_two_gpus_is_bit_for_bit():
    """The split-placement path on GPUs: trainer rank 0 on GPU 0 broadcasts device buckets over
    NCCL to an engine worker on GPU 1, which checks every checksum on its device."""
    named = [(n, t.cuda(0)) for n, t in weights()] + [("big", torch.randn(3, 1 << 20, device="cuda:0"))]
    plan = plan_buckets(specs(named), bucket_bytes=1 << 20)
    store = host_store("127.0.0.1", 2)
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_nccl_receiver, args=(store.port, plan, queue))
    proc.start()
    sender = WeightGroup(store, 0, 2, torch.device("cuda", 0))
    assert sender.backend == "nccl"
    assert broadcast_weights(sender, plan, iter(named)) == plan_bytes(plan)
    status, got = queue.get(timeout=120)
    proc.join(timeout=60)
    sender.close()
    assert status == "ok", got
    for name, tensor in named:
        assert torch.equal(got[name].view(torch.uint8), tensor.cpu().view(torch.uint8)), name
