"""kernels.linear_attention against its float64 token-loop reference.

Both backends: ``torch`` (the CPU path) and ``triton``.  The Triton kernels run on CUDA when a GPU
is present, else on CPU tensors in the Triton interpreter.  tests/conftest.py sets
TRITON_INTERPRET (1 without a GPU, 0 with one) before triton is imported, so on CPU the kernels
are normally decorated as interpreted functions here; if something imported them earlier without
it, the in-process triton cases are skipped and
``test_triton_backend_in_subprocess`` reruns them in a fresh interpreter-mode process.
Note: the Triton interpreter (3.6) gets bf16 tl.dot wrong, so the 16-bit interpreter cases use
fp16; bf16 is checked on the GPU by benchmarks/linear_attention/ops.py.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import subprocess
import sys

import pytest
import torch

import kernels.linear_attention as la
from kernels.linear_attention import naive_recurrence

try:
    import triton  # noqa: F401
    from triton.runtime.interpreter import InterpretedFunction

    ck = importlib.import_module("kernels.linear_attention.chunk_triton")
    rk = importlib.import_module("kernels.linear_attention.recurrent_triton")
except ImportError:  # pragma: no cover
    ck = rk = None


def _triton_mode():
    if ck is None:
        return None
    if isinstance(ck._chunk_fwd_kernel, InterpretedFunction):
        return "interpret"
    return "cuda" if torch.cuda.is_available() else None


TRITON = _triton_mode()
recurrent_module = importlib.import_module("kernels.linear_attention.recurrent_torch")


@pytest.fixture(params=["native", "eager"])
def cpu_decode(request, monkeypatch):
    """The torch backend's one-token decode: the C kernel (default) or the eager ops (its
    fallback, and the path for padding rows and several tokens per row)."""
    if request.param == "eager":
        monkeypatch.setattr(recurrent_module, "_decode_kernel", lambda: None)
    return request.param


@pytest.fixture(params=["torch", pytest.param("triton", marks=[pytest.mark.gpu] if TRITON == "cuda" else [])])
def backend(request, monkeypatch):
    if request.param == "triton":
        if TRITON is None:
            pytest.skip("triton kernels not interpretable in this process (see module docstring)")
        # NaN-fill every kernel output buffer: an element a kernel forgets to write fails.
        monkeypatch.setattr(ck, "POISON_OUTPUTS", True)
        monkeypatch.setattr(rk, "POISON_OUTPUTS", True)
    return request.param


def _dev(backend):
    return "cuda" if backend == "triton" and TRITON == "cuda" else "cpu"


def _low(backend):
    # 16-bit dtype exercised per backend (the interpreter's bf16 dot is broken, see docstring)
    return torch.float16 if backend == "triton" and TRITON == "interpret" else torch.bfloat16


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    assert not a.isnan().any(), "NaN in output (unwritten or poisoned memory)"
    return ((a - b).norm() / b.norm()).item()


def _rand(*shape, dev="cpu", dtype=torch.float32, grad=False):
    return torch.randn(*shape, device=dev).to(dtype).requires_grad_(grad)


# ----------------------------------------------------------------------------- decay helpers
def test_alibi_slopes_power_of_two():
    s = la.alibi_slopes(8)
    assert s.dtype == torch.float32
    assert torch.equal(s, torch.tensor([2.0 ** -(i + 1) for i in range(8)]))


def test_alibi_slopes_interleave_for_non_power_of_two():
    # H=12: the 8 slopes of H=8, then the odd exponents of H=16: 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
    want = [2.0 ** -(i + 1) for i in range(8)] + [2.0 ** -(i + 0.5) for i in range(4)]
    torch.testing.assert_close(la.alibi_slopes(12), torch.tensor(want), rtol=1e-7, atol=0)


@pytest.mark.parametrize("offset", [0, 1])
def test_layer_decay_offsets(offset):
    H, L = 4, 9
    for layer in range(L):
        f = 1 - (layer - offset) / (L - 1) + 1e-5
        want = torch.tensor([-(2.0 ** (-2 * (h + 1))) * f for h in range(H)], dtype=torch.float64)
        torch.testing.assert_close(la.layer_decay(H, layer, L, offset), want.float(), rtol=0, atol=0)
    assert la.layer_factor(0, L, 0) == pytest.approx(1 + 1e-5)
    assert la.layer_factor(0, L, 1) == pytest.approx(1 + 1 / (L - 1) + 1e-5)
    assert la.layer_factor(L - 1, L, 0) == pytest.approx(1e-5)


def test_layer_decay_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_layers"):
        la.layer_decay(4, 0, 1)
    with pytest.raises(ValueError, match="layer_idx"):
        la.layer_decay(4, 5, 5)
    with pytest.raises(ValueError, match="negative"):
        la.layer_decay(4, 4, 5, layer_offset=-1)


# ----------------------------------------------------------------------------- chunk
# Head dim (the number of BV-wide value blocks), precision (the 16-bit hi/lo split products) and
# an initial state (USE_H0 / its gradient) are separate switches of the kernels: each pair of
# their values is covered once (4 cases, not the 8 of the full product: the interpreter's time).
@pytest.mark.parametrize("D, precision, with_h0", [(64, "fp32", True), (128, "16bit", True),
                                                   (64, "16bit", False), (128, "fp32", False)])
def test_chunk_matches_float64(backend, D, precision, with_h0):
    torch.manual_seed(D + with_h0)
    dev = _dev(backend)
    dt = torch.float32 if precision == "fp32" else _low(backend)
    B, T, H = (2 if D == 64 else 1), 100, 3   # T = one full chunk + 36; H not a power of two
    g = la.layer_decay(H, 2, 7).to(dev)
    q, k, v = (_rand(B, T, H, D, dev=dev, dtype=dt, grad=True) for _ in range(3))
    h0 = _rand(B, H, D, D, dev=dev, grad=True) if with_h0 else None
    o, ht = la.chunk(q, k, v, g, D ** -0.5, h0, output_final_state=True, backend=backend)
    assert o.dtype == dt and o.shape == q.shape and ht.dtype == torch.float32
    do, dht = torch.randn_like(o), torch.randn_like(ht)
    inputs = [q, k, v] + ([h0] if with_h0 else [])
    grads = torch.autograd.grad((o * do).sum() + (ht * dht).sum(), inputs)
    ref_in = [x.detach().double().requires_grad_() for x in inputs]
    ro, rht = naive_recurrence(*ref_in[:3], g.double(), D ** -0.5, ref_in[3] if with_h0 else None,
                               output_final_state=True)
    rgrads = torch.autograd.grad((ro * do.double()).sum() + (rht * dht.double()).sum(), ref_in)
    tol = 1e-5 if dt == torch.float32 else (5e-3 if dt == torch.float16 else 2e-2)
    assert rel(o, ro) < tol
    assert rel(ht, rht) < tol
    for name, a, b in zip("q k v h0".split(), grads, rgrads):
        assert a.dtype == (torch.float32 if name == "h0" else dt)
        assert rel(a, b) < tol, name


def test_chunk_torch_float64_is_exact():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 70, 2, 16, dtype=torch.float64) for _ in range(3))
    g = la.layer_decay(2, 0, 3).double()
    o, ht = la.chunk(q, k, v, g, 0.3, output_final_state=True, backend="torch")
    ro, rht = naive_recurrence(q, k, v, g, 0.3, output_final_state=True)
    assert rel(o, ro) < 1e-12 and rel(ht, rht) < 1e-12


def test_varlen_matches_reference_and_isolates_sequences(backend):
    torch.manual_seed(3)
    dev = _dev(backend)
    H, D = 3, 64
    # lengths 37, 0 (empty), 73 (a chunk + 9: a state carried across chunks) and 40; starts off
    # the chunk grid
    cu = torch.tensor([0, 37, 37, 110, 150], dtype=torch.int32, device=dev)
    T = 150
    g = la.layer_decay(H, 1, 4, 1).to(dev)
    q, k, v = (_rand(1, T, H, D, dev=dev, grad=True) for _ in range(3))
    h0 = _rand(4, H, D, D, dev=dev, grad=True)
    o, ht = la.chunk(q, k, v, g, 0.1, h0, cu_seqlens=cu, output_final_state=True, backend=backend)
    ref = [x.detach().double().requires_grad_() for x in (q, k, v, h0)]
    ro, rht = naive_recurrence(*ref[:3], g.double(), 0.1, ref[3], cu_seqlens=cu.cpu(),
                               output_final_state=True)
    assert rel(o, ro) < 1e-5 and rel(ht, rht) < 1e-5
    do = torch.randn_like(o)
    grads = torch.autograd.grad((o * do).sum(), (q, k, v, h0))
    rgrads = torch.autograd.grad((ro * do.double()).sum(), ref)
    for a, b in zip(grads, rgrads):
        assert rel(a, b) < 1e-5
    # change the third sequence (tokens 37..110) only: nothing else may move, bitwise
    q2, k2, v2 = (x.detach().clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, 37:110] = torch.randn_like(x[:, 37:110])
    h02 = h0.detach().clone()
    h02[2] = torch.randn_like(h02[2])
    o2, ht2 = la.chunk(q2, k2, v2, g, 0.1, h02, cu_seqlens=cu, output_final_state=True,
                       backend=backend)
    assert torch.equal(o2[:, :37], o[:, :37].detach()) and torch.equal(o2[:, 110:], o[:, 110:].detach())
    assert not torch.equal(o2[:, 37:110], o[:, 37:110].detach())
    for n in (0, 1, 3):
        assert torch.equal(ht2[n], ht[n].detach())
    torch.testing.assert_close(ht[1], h0[1].detach(), rtol=0, atol=0)  # empty sequence: state passes


def test_continuation_chunk_then_recurrent_equals_chunk(backend):
    torch.manual_seed(4)
    dev = _dev(backend)
    B, T, N, H, D = 2, 100, 6, 3, 64
    g = la.layer_decay(H, 0, 5).to(dev)
    q, k, v = (_rand(B, T + N, H, D, dev=dev) for _ in range(3))
    full, full_ht = la.chunk(q, k, v, g, 0.12, output_final_state=True, backend=backend)
    pre, st = la.chunk(q[:, :T], k[:, :T], v[:, :T], g, 0.12, output_final_state=True,
                       backend=backend)
    pool = torch.randn(5, H, D, D, device=dev)
    idx = torch.tensor([3, 0], device=dev)
    pool[idx] = st
    steps = [la.recurrent(q[:, t], k[:, t], v[:, t], g, 0.12, pool, idx, backend=backend)
             for t in range(T, T + N - 2)]                  # one token at a time (main path) ...
    steps.append(la.recurrent(q[:, T + N - 2:], k[:, T + N - 2:], v[:, T + N - 2:], g, 0.12, pool,
                              idx, backend=backend))        # ... then two at once
    got = torch.cat([pre, torch.stack(steps[:-1], 1), steps[-1]], 1)
    assert rel(got, full) <= 1e-5
    assert rel(pool[idx], full_ht) <= 1e-5


def test_chunk_is_batch_and_length_invariant(backend):
    """A token's output is bitwise the same alone, in a batch with longer T, or packed."""
    torch.manual_seed(5)
    dev = _dev(backend)
    H, D, L = 3, 64, 100
    g = la.layer_decay(H, 1, 3).to(dev)
    x = [_rand(1, L, H, D, dev=dev) for _ in range(3)]
    alone, _ = la.chunk(*x, g, 0.1, backend=backend)
    big = [_rand(3, L + 70, H, D, dev=dev) for _ in range(3)]
    for b, xi in zip(big, x):
        b[1, :L] = xi[0]
    in_batch, _ = la.chunk(*big, g, 0.1, backend=backend)
    packed = [torch.cat([_rand(1, 45, H, D, dev=dev), xi, _rand(1, 9, H, D, dev=dev)], 1) for xi in x]
    cu = torch.tensor([0, 45, 45 + L, 54 + L], device=dev)
    in_pack, _ = la.chunk(*packed, g, 0.1, cu_seqlens=cu, backend=backend)
    assert torch.equal(alone[0], in_batch[1, :L])
    assert torch.equal(alone[0], in_pack[0, 45:45 + L])


# Segmented forward (chunk_triton.SEGMENT): sequences longer than a segment are cut into
# segments of SEGMENT tokens; the tests shrink it to two chunks (one, for the invariance test,
# which runs a batch of 8 in the interpreter) so that a few chunks make several segments.
@pytest.fixture
def segmented(monkeypatch):
    if TRITON is None:
        pytest.skip("triton kernels not interpretable in this process (see module docstring)")
    monkeypatch.setattr(ck, "POISON_OUTPUTS", True)
    monkeypatch.setattr(ck, "SEGMENT", 128)
    return "cuda" if TRITON == "cuda" else "cpu"


on_gpu = pytest.mark.gpu if TRITON == "cuda" else (lambda test: test)  # as `backend` marks triton


@on_gpu
@pytest.mark.parametrize("packed", [False, True], ids=["batch", "cu_seqlens"])
def test_triton_segmented_forward_matches_float64(segmented, packed):
    """Outputs and final states of sequences of 2-3 segments (a chunk tail in the last one),
    shorter than a segment, exactly one, and empty, from random initial states, against the
    float64 token loop.  The backward is the unsegmented scan's, checked through autograd once."""
    torch.manual_seed(11)
    dev, H, D = segmented, 2, 16
    g = la.layer_decay(H, 1, 4).to(dev)
    if packed:
        cu = torch.tensor([0, 37, 37, 300, 428, 433], dtype=torch.int32, device=dev)
        shape, N = (1, 433, H, D), 5
    else:
        cu, shape, N = None, (2, 276, H, D), 2
    q, k, v = (_rand(*shape, dev=dev, grad=packed) for _ in range(3))
    h0 = _rand(N, H, D, D, dev=dev, grad=packed)
    o, ht = la.chunk(q, k, v, g, 0.2, h0, cu_seqlens=cu, output_final_state=True, backend="triton")
    ref = [x.detach().double().requires_grad_() for x in (q, k, v, h0)]
    ro, rht = naive_recurrence(*ref[:3], g.double(), 0.2, ref[3], output_final_state=True,
                               cu_seqlens=None if cu is None else cu.cpu())
    assert rel(o, ro) < 1e-5 and rel(ht, rht) < 1e-5
    if packed:
        assert torch.equal(ht[1], h0[1].detach())  # the empty sequence passes its state
        do = torch.randn_like(o)
        grads = torch.autograd.grad((o * do).sum() + ht.sum(), (q, k, v, h0))
        rgrads = torch.autograd.grad((ro * do.double()).sum() + rht.sum(), ref)
        for name, a, b in zip("q k v h0".split(), grads, rgrads):
            assert rel(a, b) < 1e-5, name


@on_gpu
def test_triton_segmented_forward_is_batch_invariant(segmented):
    """The issue's condition on a split forward: a sequence's outputs and final state are the
    same bits alone (B=1), inside a batch of 8 with a longer T, and packed between others with
    cu_seqlens (segment slots from the tables) — and a sequence shorter than a segment alone (one
    launch, no segments) = packed into a long batch.  (Segments of one chunk would make the
    boundary scan the scan itself, bit for bit, and test nothing: hence two.)"""
    torch.manual_seed(12)
    dev, H, D, L = segmented, 2, 16, 276                # L: 2 segments + 20 tokens
    g = la.layer_decay(H, 2, 5).to(dev)
    x = [_rand(1, L, H, D, dev=dev) for _ in range(3)]
    alone, alone_ht = la.chunk(*x, g, 0.1, output_final_state=True, backend="triton")
    big = [_rand(8, L + 20, H, D, dev=dev) for _ in range(3)]
    for b, xi in zip(big, x):
        b[5, :L] = xi[0]
    in_batch, _ = la.chunk(*big, g, 0.1, backend="triton")
    short = [_rand(1, 50, H, D, dev=dev) for _ in range(3)]   # under a segment: one launch alone
    short_alone, short_ht = la.chunk(*short, g, 0.1, output_final_state=True, backend="triton")
    packed = [torch.cat([_rand(1, 45, H, D, dev=dev), xi, si, _rand(1, 9, H, D, dev=dev)], 1)
              for xi, si in zip(x, short)]
    cu = torch.tensor([0, 45, 45 + L, 95 + L, 104 + L], device=dev)
    in_pack, pack_ht = la.chunk(*packed, g, 0.1, cu_seqlens=cu, output_final_state=True,
                                backend="triton")
    assert torch.equal(alone[0], in_batch[5, :L])
    assert torch.equal(alone[0], in_pack[0, 45:45 + L]) and torch.equal(alone_ht[0], pack_ht[1])
    assert torch.equal(short_alone[0], in_pack[0, 45 + L:95 + L])
    assert torch.equal(short_ht[0], pack_ht[2])


# ----------------------------------------------------------------------------- recurrent
def _decode_inputs(backend, seed, B, H, D, tokens, slots, layer):
    """Fresh decode inputs: (device, the layer's decay, q, k, v of [B, H, D] (one token) or
    [B, tokens, H, D], a state pool of `slots` random states). `layer`: (index, layers)."""
    torch.manual_seed(seed)
    dev = _dev(backend)
    g = la.layer_decay(H, *layer).to(dev)
    shape = (B, H, D) if tokens is None else (B, tokens, H, D)
    q, k, v = (_rand(*shape, dev=dev) for _ in range(3))
    return dev, g, q, k, v, _rand(slots, H, D, D, dev=dev)


@pytest.mark.parametrize("tokens", [None, 3])  # None: [B, H, D] (one token), 3: [B, 3, H, D]
@pytest.mark.parametrize("slots", [[6, -1, 2, 0], [6, 1, 2, 0]], ids=["padding-row", "no-padding"])
def test_recurrent_matches_float64(backend, tokens, slots, cpu_decode):
    if backend == "triton" and cpu_decode == "eager":
        pytest.skip("the CPU decode path does not apply to the Triton backend")
    B, H, D = 4, 5, 128
    dev, g, q, k, v, pool = _decode_inputs(backend, 6, B, H, D, tokens, slots=9, layer=(3, 8))
    before = pool.clone()
    idx = torch.tensor(slots, device=dev)                 # -1: a padding row
    o = la.recurrent(q, k, v, g, 0.2, pool, idx, backend=backend)
    assert o.shape == q.shape and o.dtype == q.dtype
    q4, k4, v4 = (x[:, None] if tokens is None else x for x in (q, k, v))
    for b, slot in enumerate(idx.tolist()):
        ob = o[b] if tokens is not None else o[b][None]
        if slot < 0:
            assert torch.equal(ob, torch.zeros_like(ob))
            continue
        ro, rs = naive_recurrence(q4[b:b + 1].double(), k4[b:b + 1].double(), v4[b:b + 1].double(),
                                  g.double(), 0.2, before[slot:slot + 1].double(),
                                  output_final_state=True)
        assert rel(ob, ro[0]) < 1e-6
        assert rel(pool[slot], rs[0]) < 1e-6
    untouched = [s for s in range(9) if s not in slots]
    assert torch.equal(pool[untouched], before[untouched])


@pytest.mark.parametrize("tokens", [None, 2])
def test_recurrent_fresh_rows_start_from_zero(backend, tokens):
    """``fresh`` rows read S = 0 whatever their slot holds (a finished sequence's state): the
    results equal zeroing those slots first, bitwise; a fresh padding row leaves the pool alone.
    The Triton kernel does it with a masked read, the form a captured CUDA graph replays."""
    B, H, D = 5, 3, 64
    dev, g, q, k, v, pool = _decode_inputs(backend, 10, B, H, D, tokens, slots=8, layer=(2, 4))  # stale slots
    zeroed = pool.clone()
    idx = torch.tensor([6, 1, -1, 3, 0], device=dev)
    fresh = torch.tensor([True, False, True, True, False], device=dev)
    zeroed[[6, 3]] = 0
    before = pool.clone()
    o = la.recurrent(q, k, v, g, 0.2, pool, idx, backend=backend, fresh=fresh)
    ref = la.recurrent(q, k, v, g, 0.2, zeroed, idx, backend=backend)
    assert torch.equal(o, ref) and torch.equal(pool, zeroed)
    assert torch.equal(pool[[2, 4, 5, 7]], before[[2, 4, 5, 7]])  # no row's slot: untouched
    with pytest.raises(ValueError, match="fresh must be a bool"):
        la.recurrent(q, k, v, g, 0.2, pool, idx, backend=backend, fresh=fresh.int())


def test_recurrent_is_batch_invariant(backend, cpu_decode):
    if backend == "triton" and cpu_decode == "eager":
        pytest.skip("the CPU decode path does not apply to the Triton backend")
    torch.manual_seed(7)
    dev = _dev(backend)
    B, H, D = 16, 3, 64
    g = la.layer_decay(H, 0, 2).to(dev)
    q, k, v = (_rand(B, H, D, dev=dev) for _ in range(3))
    p1 = _rand(B, H, D, D, dev=dev)
    p2 = p1.clone()
    ob = la.recurrent(q, k, v, g, 0.3, p1, backend=backend)
    out = torch.full((1, H, D), float("nan"), device=dev)  # the single row written through out=
    oa = la.recurrent(q[9:10], k[9:10], v[9:10], g, 0.3, p2, torch.tensor([9], device=dev),
                      backend=backend, out=out)
    assert oa is out and torch.equal(ob[9], oa[0]) and torch.equal(p1[9], p2[9])


def test_recurrent_on_a_pool_with_padded_slot_stride(backend):
    """vLLM's state pages can be wider than one state: the pool is then a view whose slot stride
    exceeds H·D·D.  The kernels must index slots by stride and leave the padding alone."""
    torch.manual_seed(8)
    dev = _dev(backend)
    B, H, D, slots, pad = 3, 2, 64, 5, 96
    g = la.layer_decay(H, 1, 4).to(dev)
    q, k, v = (_rand(B, H, D, dev=dev) for _ in range(3))
    pages = _rand(slots, H * D * D + pad, dev=dev)
    padded = pages[:, : H * D * D].view(slots, H, D, D)
    assert not padded.is_contiguous() and padded[:1].is_contiguous()
    dense = padded.clone()
    idx = torch.tensor([4, 0, 2], device=dev)
    tail = pages[:, H * D * D:].clone()
    o_padded = la.recurrent(q, k, v, g, 0.3, padded, idx, backend=backend)
    o_dense = la.recurrent(q, k, v, g, 0.3, dense, idx, backend=backend)
    assert torch.equal(o_padded, o_dense) and torch.equal(padded, dense)
    assert torch.equal(pages[:, H * D * D:], tail)


@pytest.mark.parametrize("slots", [[7, 5, 3, 1], [2, 3, 4, 5], [6, 0, 4, 1], [8, -1, 2, 5]],
                         ids=["descending", "ascending", "irregular", "padded"])
def test_recurrent_state_slots_shared_by_layers(slots, cpu_decode):
    """One StateSlots per engine step serves every layer (each its own pool): the results are
    bitwise those of passing the index tensor, for each slot layout the CPU paths handle
    (C kernel; eager: in-place view ascending or reversed, gather/scatter; padding rows),
    with ``out`` given."""
    torch.manual_seed(9)
    B, H, D = 4, 3, 64
    idx = torch.tensor(slots)
    plan = la.StateSlots(idx, B, 9)
    for layer in range(2):
        g = la.layer_decay(H, layer, 2)
        q, k, v = (_rand(B, H, D) for _ in range(3))
        pool = _rand(9, H, D, D)
        ref_pool, before = pool.clone(), pool.clone()
        out = torch.full_like(q, float("nan"))
        o = la.recurrent(q, k, v, g, 0.2, pool, plan, out=out)
        ref = la.recurrent(q, k, v, g, 0.2, ref_pool, idx)
        assert o is out and torch.equal(o, ref) and torch.equal(pool, ref_pool)
        used = [x for x in slots if x >= 0]
        assert not torch.equal(pool[used], before[used])  # the states did move
    with pytest.raises(ValueError, match="StateSlots made for 4 rows of a 9-slot pool"):
        la.recurrent(q, k, v, g, 0.2, _rand(10, H, D, D), plan)
    with pytest.raises(ValueError, match="out of range"):
        la.StateSlots(torch.tensor([7, 5, 3, 1]), B, 7)


def test_native_decode_is_its_pytorch_definition():
    """The C decode step (decode_cpu.c) computes :func:`decode_step` exactly: bitwise the same
    outputs and states, on irregular slots of a pool with a padded slot stride (vLLM's pages),
    leaving other slots and the padding alone."""
    torch.manual_seed(11)
    B, H, D, slots, pad = 5, 3, 64, 9, 40
    assert recurrent_module._decode_kernel() is not None, "the C decode kernel did not build here"
    qkv = _rand(B, 3, H, D)
    g = la.layer_decay(H, 1, 4)
    lam = torch.exp(g)
    pages = _rand(slots, H * D * D + pad)
    pool = pages[:, : H * D * D].view(slots, H, D, D)
    before = pages.clone()
    plan = la.StateSlots(torch.tensor([7, 0, 3, 8, 2]), B, slots)
    out = torch.full((B, H, D), float("nan"))
    assert la.decode_packed(qkv, g, 0.3, pool, plan, out)
    ref_pool = before[:, : H * D * D].reshape(slots, H, D, D).clone()
    ref = recurrent_module.decode_step(qkv, lam[:, None, None], 0.3, ref_pool, plan.rows)
    assert torch.equal(out, ref) and torch.equal(pool, ref_pool)
    assert torch.equal(pages[:, H * D * D:], before[:, H * D * D:])
    untouched = [1, 4, 5, 6]
    assert torch.equal(pages[untouched], before[untouched])
    # padding rows and fp64 are not the kernel's: it declines and changes nothing
    padded = la.StateSlots(torch.tensor([7, -1, 3, 8, 2]), B, slots)
    assert not la.decode_packed(qkv, g, 0.3, pool, padded, out)
    assert not la.decode_packed(qkv.double(), g, 0.3, pool, plan, out)
    assert torch.equal(pool, ref_pool)


def test_native_decode_build_failure_is_logged(monkeypatch, tmp_path, caplog):
    """Without a C compiler the kernel is unavailable, with a warning naming why, and the torch
    backend decodes with the eager ops: the same results to rounding."""
    from kernels import native

    torch.manual_seed(10)
    B, H, D = 3, 2, 64
    g = la.layer_decay(H, 0, 2)
    q, k, v = (_rand(B, H, D) for _ in range(3))
    pool = _rand(5, H, D, D)
    idx = torch.tensor([4, 0, 2])
    expected_pool = pool.clone()
    expected = la.recurrent(q, k, v, g, 0.3, expected_pool, idx)  # the C kernel
    monkeypatch.setattr(native, "_LOADED", {})
    monkeypatch.setenv("LOCKSTEP_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler")
    with caplog.at_level("WARNING", logger="kernels.native"):
        o = la.recurrent(q, k, v, g, 0.3, pool, idx)
    assert "decode_cpu.c unavailable" in caplog.text and "no-such-compiler" in caplog.text
    assert recurrent_module._decode_kernel() is None
    assert rel(o, expected) < 1e-6 and rel(pool, expected_pool) < 1e-6


def test_native_build_reports_compiler_errors(tmp_path, monkeypatch):
    from kernels import native

    monkeypatch.setenv("LOCKSTEP_CACHE", str(tmp_path))
    broken = tmp_path / "broken.c"
    broken.write_text("void f(void) { this is not C; }\n")
    with pytest.raises(RuntimeError, match="failed on broken.c"):
        native.build(broken)
    assert not list((tmp_path / "native").glob("*.so"))  # no partial library left behind



def test_native_build_rebuilds_when_an_included_header_changes(tmp_path, monkeypatch):
    """A library's cache key covers the project headers its source includes (decode_cpu.c and
    strict_cpu.c share recurrence_token.h): an edited header is never served from a stale .so."""
    from kernels import native

    monkeypatch.setenv("LOCKSTEP_CACHE", str(tmp_path))
    (tmp_path / "inc").mkdir()
    header = tmp_path / "inc" / "value.h"
    source = tmp_path / "lib.c"
    source.write_text('#include "inc/value.h"\nint value(void) { return VALUE; }\n')
    header.write_text("#define VALUE 1\n")
    first = native.build(source)
    header.write_text("#define VALUE 2\n")
    second = native.build(source)
    assert first != second and second.exists()
    assert ctypes.CDLL(str(first)).value() == 1 and ctypes.CDLL(str(second)).value() == 2


# ----------------------------------------------------------------------------- validation
def test_input_validation():
    H, D = 2, 16
    q = torch.randn(1, 10, H, D)
    g = la.layer_decay(H, 0, 2)
    with pytest.raises(ValueError, match="one shape"):
        la.chunk(q, q, q[..., :8], g, 1.0)
    with pytest.raises(ValueError, match="dtype"):
        la.chunk(q, q, q.half(), g, 1.0)
    with pytest.raises(ValueError, match="decay"):
        la.chunk(q, q, q, g[:1], 1.0)
    with pytest.raises(ValueError, match="<= 0"):
        la.chunk(q, q, q, -g, 1.0)
    with pytest.raises(ValueError, match="float32"):
        la.chunk(q, q, q, g, 1.0, initial_state=torch.zeros(1, H, D, D, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="shape"):
        la.chunk(q, q, q, g, 1.0, initial_state=torch.zeros(2, H, D, D))
    with pytest.raises(ValueError, match="never decrease"):
        la.chunk(q, q, q, g, 1.0, cu_seqlens=torch.tensor([0, 6, 4, 10]))
    with pytest.raises(ValueError, match="end at T"):
        la.chunk(q, q, q, g, 1.0, cu_seqlens=torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="B must be 1"):
        la.chunk(q.expand(2, -1, -1, -1), q.expand(2, -1, -1, -1), q.expand(2, -1, -1, -1), g, 1.0,
                 cu_seqlens=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="backend"):
        la.chunk(q, q, q, g, 1.0, backend="cuda")
    x = torch.randn(3, H, D)
    with pytest.raises(ValueError, match="float32"):
        la.recurrent(x, x, x, g, 1.0, torch.zeros(3, H, D, D, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="contiguous"):
        la.recurrent(x, x, x, g, 1.0, torch.zeros(3, H, D, D).transpose(2, 3))
    with pytest.raises(ValueError, match="state_indices"):
        la.recurrent(x, x, x, g, 1.0, torch.zeros(3, H, D, D), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="out of range"):
        la.recurrent(x, x, x, g, 1.0, torch.zeros(3, H, D, D), torch.tensor([0, 1, 3]))
    if ck is not None and not isinstance(ck._chunk_fwd_kernel, InterpretedFunction) \
            and os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match="TRITON_INTERPRET"):
            la.chunk(q, q, q, g, 1.0, backend="triton")


@pytest.mark.skipif(ck is None or TRITON is not None,
                    reason="triton cases already run in this process (or triton is missing)")
def test_triton_backend_in_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        __file__, "-k", "triton"], env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
