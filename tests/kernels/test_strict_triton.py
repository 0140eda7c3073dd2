"""Strict mode's Triton kernels (kernels/batch_invariant/strict_triton.py, what CUDA tensors run):
each against a float64 reference on fresh random inputs, every output NaN-poisoned first, and
bitwise invariance — a row alone and inside batches of other sizes and contents, a decode query
and the same row of a prefill, a decode chain of the recurrence and the trainer's forward —
through the public ops (``kernels.batch_invariant``), gradients included.

On a GPU the ops run on CUDA tensors as strict mode does (the tests are marked ``gpu``).  Without
one the kernels run in Triton's interpreter on CPU tensors: the fixture routes the public ops'
CPU kernels (``cpu.py``) to the Triton launchers.  Two limits of the interpreter: its ``tl.dot``
is numpy's matmul, whose result for a row depends on the row's place in the tile (the GPU's
MMA does not), so there a GEMM row is compared at the same place in its tile (offsets that are
multiples of BLOCK_M); and its bf16 dot is broken, so its 16-bit GEMM case is fp16."""

from __future__ import annotations

import importlib

import pytest
import torch

import kernels.batch_invariant as bi
from kernels.batch_invariant import cpu
from kernels.batch_invariant.linear_attention import into_slots
from kernels.linear_attention import naive_recurrence
from kernels.norm import group_rms_norm, rms_norm

try:
    from triton.runtime.interpreter import InterpretedFunction

    st = importlib.import_module("kernels.batch_invariant.strict_triton")
except ImportError:  # pragma: no cover
    st = None


def _triton_mode():
    if st is None:
        return None
    if isinstance(st._linear_kernel, InterpretedFunction):
        return "interpret"
    return "cuda" if torch.cuda.is_available() else None


TRITON = _triton_mode()
pytestmark = [pytest.mark.gpu] if TRITON == "cuda" else []


def _counts(ends: torch.Tensor) -> list[int]:
    ends = ends.tolist()
    return [b - a for a, b in zip([0] + ends[:-1], ends)]


@pytest.fixture
def dev(monkeypatch) -> str:
    """The device the strict ops run the Triton kernels on; outputs NaN-poisoned."""
    if TRITON is None:
        pytest.skip("no GPU, and the Triton kernels are not interpretable in this process")
    monkeypatch.setattr(st, "POISON_OUTPUTS", True)
    if TRITON == "cuda":
        return "cuda"
    # the interpreter: CPU tensors take the Triton launchers where they would take the C kernels
    monkeypatch.setattr(cpu, "available", lambda: True)
    monkeypatch.setattr(cpu, "takes", lambda *tensors: True)
    monkeypatch.setattr(cpu, "linear", lambda x, w, ends=None: st.linear(x, w, None if ends is None else _counts(ends)))
    monkeypatch.setattr(cpu, "sigmoid", st.activation)
    monkeypatch.setattr(cpu, "paged_attention", st.paged_attention)
    monkeypatch.setattr(cpu, "attention", lambda q, k, v, pos, scale: st.paged_attention(
        q, k.contiguous(), v.contiguous(), torch.arange(k.shape[0]), k.shape[1], pos, scale))
    monkeypatch.setattr(cpu, "recurrence", st.recurrence)
    monkeypatch.setattr(st, "KEY_BLOCK", 8)  # several key blocks at the interpreter's short lengths
    return "cpu"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int, dev: str, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen(seed)) * scale).to(device=dev, dtype=dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def half(dev: str) -> torch.dtype:
    return torch.bfloat16 if dev == "cuda" else torch.float16  # the interpreter's bf16 dot is broken


# --- GEMM ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("wide", [False, True], ids=["fp32", "16bit"])
def test_linear_matches_float64_and_rows_do_not_depend_on_the_batch(dev, wide):
    dt = half(dev) if wide else torch.float32
    tile = st.GEMM_TILES[dt]["BLOCK_M"]
    N, K, O = tile + 9, 100, 150                         # K, O, N: none a whole number of tiles
    x, w = randn(N, K, seed=1, dev=dev, dtype=dt), randn(O, K, seed=2, dev=dev, dtype=dt, scale=K ** -0.5)
    full = bi.linear(x, w)
    assert full.dtype == dt and rel(full, x.double() @ w.double().t()) < (1e-6 if dt == torch.float32 else 1e-2)
    # the same place in its tile (interpreter); on a GPU anywhere
    starts = [(tile, 1), (0, 3), (tile, 9)] + ([(5, 1), (9, 40), (N - 1, 1)] if dev == "cuda" else [])
    for start, n in starts:
        assert same_bits(bi.linear(x[start:start + n].clone(), w), full[start:start + n]), (start, n)
    other = torch.cat((randn(tile, K, seed=3, dev=dev, dtype=dt), x[tile + 2:tile + 3]))  # other company
    assert same_bits(bi.linear(other, w)[-1:], full[tile + 2:tile + 3])
    x3 = x[:tile].reshape(2, tile // 2, K)
    assert same_bits(bi.linear(x3, w), full[:tile].view(2, tile // 2, O))


def test_grouped_linear_rows_are_their_groups_linear_and_gradients_match_float64(dev):
    """One weight per group (the MoE's experts): each group's rows the bits of ``linear`` on that
    group's rows (empty groups allowed); gradients against float64."""
    counts = [5, 0, 40, 1]
    x = randn(sum(counts), 64, seed=4, dev=dev)
    w = randn(len(counts), 48, 64, seed=5, dev=dev, scale=0.125)
    y = bi.grouped_linear(x, counts, w)
    start = 0
    for e, n in enumerate(counts):
        assert same_bits(y[start:start + n], bi.linear(x[start:start + n].clone(), w[e])), e
        start += n
    if dev == "cuda":  # a [2I, D] stack's halves are the bits of the two weights apart (gate, up)
        for e, n in enumerate(counts):
            part = x[sum(counts[:e]):sum(counts[:e + 1])]
            both = torch.cat((bi.linear(part, w[e, :20].contiguous()), bi.linear(part, w[e, 20:].contiguous())), 1)
            assert same_bits(y[sum(counts[:e]):sum(counts[:e + 1])], both), e
    leaves = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    up = randn(*y.shape, seed=6, dev=dev)
    (bi.grouped_linear(leaves[0], counts, leaves[1]) * up).sum().backward()
    ref = [t.double().requires_grad_() for t in (x, w)]
    ends = torch.tensor(counts).cumsum(0).tolist()
    rows = [ref[0][a:b] @ ref[1][e].t() for e, (a, b) in enumerate(zip([0] + ends[:-1], ends))]
    (torch.cat(rows) * up.double()).sum().backward()
    for name, a, r in zip("xw", leaves, ref):
        assert rel(a.grad, r.grad) < 1e-6, name


# --- elementwise and row ops -----------------------------------------------------------------------

@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
def test_sigmoid_silu_match_float64_whatever_the_offset(dev, dt):
    x = randn(3000, seed=7, dev=dev, dtype=dt, scale=4.0)
    for ours, ref in [(bi.sigmoid, torch.sigmoid), (bi.silu, torch.nn.functional.silu)]:
        full = ours(x)
        assert full.dtype == dt
        # computed in fp32, then one conversion to the dtype: within an ulp of bf16 (the GPU rounds
        # to nearest, the interpreter truncates)
        assert rel(full, ref(x.double())) < (1e-6 if dt == torch.float32 else 2 ** -7)
        for s in (1, 3, 5, 7, 1024):
            assert same_bits(ours(x[s:s + 1100].clone()), full[s:s + 1100]), s
    leaf = x.float().clone().requires_grad_()
    up = randn(3000, seed=8, dev=dev)
    (bi.silu(leaf) * up).sum().backward()
    leaf64 = x.double().requires_grad_()
    (torch.nn.functional.silu(leaf64) * up.double()).sum().backward()
    assert rel(leaf.grad, leaf64.grad) < 1e-6


@pytest.mark.parametrize("groups", [1, 2])
def test_rms_norm_rows_do_not_depend_on_the_batch_and_gradients_match_float64(dev, groups):
    x = randn(37, 96, seed=9, dev=dev, scale=3.0)
    w = randn(96, seed=10, dev=dev)
    norm = (lambda x, w: rms_norm(x, w, 1e-6)) if groups == 1 else (lambda x, w: group_rms_norm(x, w, groups, 1e-6))
    run = bi.invariant_rms_norm if dev == "cuda" else lambda x, w, eps, g: st.rms_norm(x, w, eps, g)
    full = run(x, w, 1e-6, groups)
    assert rel(full, norm(x.double(), w.double())) < 1e-6
    for start, n in [(0, 1), (17, 1), (5, 20), (36, 1)]:
        assert same_bits(run(x[start:start + n].clone(), w, 1e-6, groups), full[start:start + n])
    assert same_bits(run(x.view(37, 1, 96).to(torch.bfloat16), w, 1e-6, groups).view(37, 96)[3],
                     run(x[3:4].to(torch.bfloat16), w, 1e-6, groups)[0])
    # the backward: the torch formula's gradient, recomputed (the autograd Function strict mode runs)
    from kernels.batch_invariant.norm import _RMSNorm
    leaves = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    up = randn(37, 96, seed=11, dev=dev)
    (_RMSNorm.apply(*leaves, 1e-6, groups) * up).sum().backward()
    ref = [x.double().requires_grad_(), w.double().requires_grad_()]
    (norm(*ref) * up.double()).sum().backward()
    for name, a, r in zip("xw", leaves, ref):
        assert rel(a.grad, r.grad) < 1e-6, name


# --- softmax attention -----------------------------------------------------------------------------

def attention_ref(q, k, v, positions, scale):
    """GQA attention in float64: query (g, t) sees keys 0..positions[g, t]. [G, Tq, H, d]."""
    H, KV = q.shape[2], k.shape[2]
    k, v = k.double().repeat_interleave(H // KV, dim=2), v.double().repeat_interleave(H // KV, dim=2)
    s = torch.einsum("gthd,gshd->ghts", q.double(), k) * scale
    s = s.masked_fill(torch.arange(k.shape[1], device=q.device) > positions[:, None, :, None], float("-inf"))
    return torch.einsum("ghts,gshd->gthd", s.softmax(-1), v)


def test_attention_matches_float64_and_decode_is_the_prefill_row(dev):
    G, T, H, KV, d = 2, 13 if dev == "cpu" else 100, 1, 1, 16
    q, k, v = (randn(G, T, h, d, seed=12 + i, dev=dev) for i, h in enumerate((H, KV, KV)))
    positions = torch.arange(T, device=dev).expand(G, T)
    full = bi.attention(q, k, v, positions, 0.25)
    assert rel(full, attention_ref(q, k, v, positions, 0.25)) < 1e-6
    for g, p in [(0, 0), (1, 7), (0, 8), (1, 12)] + ([(0, 31), (1, 32), (0, 64)] if dev == "cuda" else []):
        one = bi.attention(q[g:g + 1, p:p + 1], k[g:g + 1, :p + 1], v[g:g + 1, :p + 1],
                           torch.tensor([[p]], device=dev), 0.25)
        assert same_bits(one, full[g:g + 1, p:p + 1]), (g, p)
    # a prefill piece (positions 9..11) with keys beyond them holding anything finite
    piece = bi.attention(q[1:2, 9:12], k[1:2], v[1:2], torch.arange(9, 12, device=dev)[None], 0.25)
    assert same_bits(piece, full[1:2, 9:12])


def test_paged_attention_reads_only_visible_keys_through_the_block_table(dev):
    """The engine's call: keys in a paged bf16 cache (blocks of 4 in a shuffled order, K and V
    halves of one tensor, stale slots NaN) — the bits of the trainer's attention on fp32 keys with
    ``kv_dtype`` the cache's, decodes and a prefill piece alike."""
    from kernels.batch_invariant.attention import paged_attention
    T, H, KV, d, bs = 10, 2, 1, 16, 4
    q = randn(2, T, H, d, seed=20, dev=dev)
    kv = randn(2, T, KV, 2 * d, seed=21, dev=dev).to(torch.bfloat16)
    # the trainer's call: fp32 K and V, rounded to the cache dtype
    k, v = kv[..., :d].float() + 1e-3, kv[..., d:].float() + 1e-3
    full = bi.attention(q, k, v, torch.arange(T, device=dev).expand(2, T), 0.25, kv_dtype=torch.bfloat16)
    kv = torch.cat((k, v), -1).to(torch.bfloat16)                     # the engine's cache write
    blocks = -(-T // bs)
    order = torch.randperm(2 * blocks, generator=gen(22)).to(dev)
    cache = torch.full((2 * blocks + 3, bs, KV, 2 * d), float("nan"), dtype=torch.bfloat16, device=dev)
    table = order.view(2, blocks)
    for g in range(2):
        for j in range(T):
            cache[table[g, j // bs], j % bs] = kv[g, j]
    k_half, v_half = cache[..., :d], cache[..., d:]
    dec = paged_attention(q[:, 8:9], k_half, v_half, table, bs, torch.tensor([[8], [8]], device=dev), 0.25)
    assert dec is not None and same_bits(dec, full[:, 8:9])
    pre = paged_attention(q[:1, 6:T], k_half, v_half, table[:1], bs, torch.arange(6, T, device=dev)[None], 0.25)
    assert same_bits(pre, full[:1, 6:T])


def test_attention_gradients_match_float64(dev):
    G, T, H, KV, d = 1, 10, 2, 1, 16
    q, k, v = (randn(G, T, h, d, seed=30 + i, dev=dev) for i, h in enumerate((H, KV, KV)))
    positions = torch.arange(T, device=dev).expand(G, T)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = bi.attention(*leaves, positions, 0.25)
    assert same_bits(out.detach(), bi.attention(q, k, v, positions, 0.25))  # the training forward = engine's
    up = randn(*out.shape, seed=33, dev=dev)
    (out * up).sum().backward()
    ref = [t.double().requires_grad_() for t in (q, k, v)]
    (attention_ref(*ref, positions, 0.25) * up.double()).sum().backward()
    for name, a, r in zip("qkv", leaves, ref):
        assert rel(a.grad, r.grad) < 1e-5, name


# --- linear attention --------------------------------------------------------------------------------

def test_recurrence_matches_float64_and_decode_chain_is_the_training_forward(dev):
    B, T, H, d = 2, 12, 2, 16
    q, k, v = (randn(B, T, H, d, seed=40 + i, dev=dev, scale=0.5) for i in range(3))
    decay = -torch.rand(H, generator=gen(43)).to(dev)
    s0 = randn(B, H, d, d, seed=44, dev=dev, scale=0.1)
    o, final = bi.recurrence(q, k, v, decay, 0.25, s0)
    ro, rf = naive_recurrence(q.double(), k.double(), v.double(), decay, 0.25, s0.double(), output_final_state=True)
    assert rel(o, ro) < 1e-6 and rel(final, rf) < 1e-6
    full, _ = bi.recurrence(q, k, v, decay, 0.25)                        # the trainer's forward
    # the engine: a prefill piece of 5 tokens into pool slots, then one decode at a time beside another
    pool = randn(5, H, d, d, seed=45, dev=dev, scale=0.1)
    slots = torch.tensor([3, 1], device=dev)
    pool[slots] = 0
    piece = into_slots(q[:, :5], k[:, :5], v[:, :5], decay, 0.25, pool, slots, torch.tensor([5, 3], device=dev))
    assert same_bits(piece[0], full[0, :5]) and same_bits(piece[1, :3], full[1, :3])
    assert (piece[1, 3:] == 0).all()
    into_slots(q[1:, 3:5], k[1:, 3:5], v[1:, 3:5], decay, 0.25, pool, slots[1:], None)  # catch up sequence 1
    before = pool[[0, 2, 4]].clone()
    for t in range(5, T):
        step = into_slots(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], decay, 0.25, pool, slots, None)
        assert same_bits(step, full[:, t:t + 1]), t
    assert same_bits(pool[[0, 2, 4]], before)                           # other slots untouched
    # right padding: a shorter row carries its state, outputs nothing past its end
    valid = torch.ones(B, T, dtype=torch.bool, device=dev)
    valid[1, 7:] = False
    o, final = bi.recurrence(q, k, v, decay, 0.25, valid=valid)
    assert same_bits(o[1, :7], full[1, :7]) and same_bits(final[1:], bi.recurrence(
        q[1:, :7], k[1:, :7], v[1:, :7], decay, 0.25)[1])


def test_recurrence_gradients_match_float64(dev):
    B, T, H, d = 2, 20, 2, 16
    q, k, v = (randn(B, T, H, d, seed=50 + i, dev=dev, scale=0.5) for i in range(3))
    decay = -torch.rand(H, generator=gen(53)).to(dev)
    s0 = randn(B, H, d, d, seed=54, dev=dev, scale=0.1)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, s0)]
    o, _ = bi.recurrence(*leaves[:3], decay, 0.25, leaves[3])
    assert same_bits(o.detach(), bi.recurrence(q, k, v, decay, 0.25, s0)[0])
    up = randn(B, T, H, d, seed=55, dev=dev)
    (o * up).sum().backward()
    ref = [t.double().requires_grad_() for t in (q, k, v, s0)]
    (naive_recurrence(*ref[:3], decay, 0.25, ref[3])[0] * up.double()).sum().backward()
    for name, a, r in zip("q k v state".split(), leaves, ref):
        assert rel(a.grad, r.grad) < 1e-5, name


# --- kept as they are on CUDA: the sampler's log-softmax -----------------------------------------

@pytest.mark.parametrize("vocab", [384, 157184])
def test_log_softmax_rows_do_not_depend_on_the_batch_on_cuda(vocab):
    """vLLM's sampler computes its log-probs with torch's log_softmax, which strict mode cannot
    replace in the engine; the trainer restates it (``log_softmax_tokens``).  On CUDA a row's
    result must not depend on the rows beside it: torch runs one row per warp (≤ 1024 classes) or
    per block (more), its configuration a function of the vocabulary size and of the row's
    16-byte alignment, the same for every row of a fresh fp32 tensor when vocab % 4 == 0 (the
    demo's 384, Ring's 157184)."""
    if TRITON != "cuda":
        pytest.skip("torch's CUDA kernels: GPU only")
    logits = randn(300, vocab, seed=60, dev="cuda", scale=3.0)
    tokens = torch.randint(0, vocab, (300,), generator=gen(61)).cuda()
    full, _ = bi.log_softmax_tokens(logits, tokens, 0.7)
    for start, n in [(0, 1), (17, 1), (5, 30), (299, 1), (100, 128)]:
        part, _ = bi.log_softmax_tokens(logits[start:start + n].clone(), tokens[start:start + n], 0.7)
        assert same_bits(part, full[start:start + n]), (start, n)
