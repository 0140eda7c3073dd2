"""The weight sync's verification: the probe's verdict and the device buckets' checksum."""

import pytest
import torch

from kernels.weight_buckets import bucket_tensors, byte_checksum, open_bucket, pack_buckets
from rl.weight_sync import ProbeCheck, WeightSyncError

OLD = [-1.0, -2.0, -0.5, -3.0]
NEW = [-1.2, -1.7, -0.55, -3.3]  # the trainer's probe after an update: moved by up to 0.3


def verdict(engine_after, noise=0.02, tolerance=0.1):
    check = ProbeCheck(tolerance, noise)
    m = check.metrics([engine_after], [OLD], NEW, OLD)
    check.verify(m, version=1)
    return m


def test_fresh_engine_passes_within_its_noise():
    m = verdict([x + 0.02 for x in NEW])
    assert m["sync/probe_conclusive"] == 1.0 and m["sync/probe_max_abs_diff"] == pytest.approx(0.02)


def test_stale_engine_fails_even_within_the_absolute_bound():
    stale = [x + 0.01 for x in OLD]  # old weights plus kernel noise: 0.31 from the new trainer...
    with pytest.raises(WeightSyncError, match="old weights"):
        verdict(stale, tolerance=0.5)  # ...which the absolute bound alone would let through


def test_gross_difference_fails():
    with pytest.raises(WeightSyncError, match="not running the trainer's weights"):
        verdict([x + 0.3 for x in NEW])


def test_move_below_the_noise_is_inconclusive_not_an_error():
    check = ProbeCheck(0.15, noise=0.05)  # resolution 0.2: a 0.1 move cannot be told from noise
    small = [x - 0.1 for x in OLD]
    m = check.metrics([OLD], [OLD], small, OLD)
    check.verify(m, version=1)
    assert m["sync/probe_conclusive"] == 0.0


def test_noise_estimate_grows_with_what_syncs_show():
    check = ProbeCheck(1e-3, noise=0.0)
    check.verify(check.metrics([[x + 5e-6 for x in NEW]], [OLD], NEW, OLD), version=1)
    assert check.noise == pytest.approx(5e-6)


def test_checksum_sees_equal_bytes_equal_and_swapped_words_different():
    a = torch.randn(1001, dtype=torch.bfloat16)
    padded = torch.zeros(2004, dtype=torch.uint8)
    padded[:2002] = a.view(torch.uint8)
    assert byte_checksum(padded) == byte_checksum(padded.clone())
    swapped = padded.clone().view(torch.int32)
    swapped[[5, 9]] = swapped[[9, 5]]
    assert swapped[5] != swapped[9] and byte_checksum(swapped) != byte_checksum(padded)
    with pytest.raises(ValueError, match="whole 4-byte words"):
        byte_checksum(torch.zeros(6, dtype=torch.uint8))


def test_checksum_independent_of_chunking(monkeypatch):
    import kernels.weight_buckets as wb

    x = torch.randn(5000)
    whole = byte_checksum(x)
    monkeypatch.setattr(wb, "_CHUNK_WORDS", 777)
    assert byte_checksum(x) == whole


def test_pack_refuses_cpu_tensors():
    with pytest.raises(ValueError, match="not on a GPU"):
        pack_buckets([("w", torch.zeros(4))], 1 << 20)


def _receive(buckets, queue) -> None:
    """In another process (as the vLLM engine is): open each bucket by its IPC handle, verify,
    and send back the tensors."""
    try:
        out = {}
        for bucket in buckets:
            buffer = open_bucket(bucket)
            out.update({name: t.cpu() for name, t in bucket_tensors(buffer, bucket)})
        queue.put(("ok", out))
    except Exception as e:  # noqa: BLE001 — reported to the test process
        queue.put(("error", repr(e)))


def _round_trip(buckets):
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_receive, args=(buckets, queue))
    proc.start()
    result = queue.get(timeout=120)
    proc.join(timeout=60)
    return result


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_buckets_cross_processes_bitwise_and_catch_corruption():
    named = [(f"t{i}", torch.randn(s, device="cuda").to(d)) for i, (s, d) in
             enumerate([((3, 5), torch.bfloat16), ((7,), torch.float32), ((128, 64), torch.bfloat16)])]
    packed = pack_buckets(named, bucket_bytes=2048)
    assert len(packed) >= 2
    status, got = _round_trip([b for _, b in packed])
    assert status == "ok", got
    for name, t in named:
        assert torch.equal(got[name], t.cpu())
    packed[0][0][0] ^= 1  # one flipped bit in the sender's bucket after its checksum was taken
    status, error = _round_trip([b for _, b in packed])
    assert status == "error" and "checksum" in error


def test_checksum_is_the_position_weighted_sum():
    """The column-sum form (rows of 65521 words) equals the definition Σ w_i·(1 + i mod 65521)
    mod 2^64, tail and wrap-around included."""
    words = torch.randint(-2**31, 2**31, (3 * 65521 + 1234,), dtype=torch.int64, generator=torch.Generator().manual_seed(0))
    expected = 0
    for i, w in enumerate(words.tolist()):
        expected += w * (1 + i % 65521)
    expected = (expected + 2**63) % 2**64 - 2**63  # int64 two's complement
    assert byte_checksum(words.to(torch.int32)) == expected
