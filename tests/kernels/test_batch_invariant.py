"""kernels/batch_invariant (strict mode): each op against a float64 reference on fresh random
inputs, and bitwise invariance of a row's result to batch size, position in the batch, batch
composition and thread count (another process with another thread count).  Every test runs
twice: with the C kernels (``strict_cpu.c``, what runs on CPU) and with the PyTorch
formulations they replace where no kernel can be built (``LOCKSTEP_NATIVE_KERNELS=0``)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import torch

import kernels.batch_invariant as bi
from kernels import native
from kernels.batch_invariant import cpu
from kernels.batch_invariant.linear_attention import into_slots
from kernels.linear_attention import naive_recurrence
from kernels.moe import invariant_swiglu
from kernels.norm import group_rms_norm, rms_norm
from kernels.rope import rope_cos_sin


@pytest.fixture(autouse=True, params=["C", "torch"])
def kernels(request, monkeypatch):
    """The C kernels, or (\"torch\") the PyTorch formulations, as without a C compiler."""
    if request.param == "C":
        assert cpu.available(), "strict mode's C kernels did not build here"
    else:
        monkeypatch.setattr(cpu, "_kernels", lambda: None)
        monkeypatch.setenv("LOCKSTEP_NATIVE_KERNELS", "0")  # for the subprocess of the thread test
    return request.param


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# --- linear ------------------------------------------------------------------------------------

@pytest.mark.parametrize("k, o", [(128, 384), (86, 128), (128, 86), (64, 360)])
def test_linear_rows_do_not_depend_on_the_batch(k, o):
    g = gen(k + o)
    x, w = torch.randn(203, k, generator=g), torch.randn(o, k, generator=g) / k ** 0.5
    full = bi.linear(x, w)
    assert rel(full, x.double() @ w.double().t()) < 1e-6
    for start, n in [(0, 1), (5, 1), (9, 2), (3, 17), (50, 100), (200, 3)]:
        assert same_bits(bi.linear(x[start:start + n].clone(), w), full[start:start + n]), (start, n)
    other = torch.cat((torch.randn(7, k, generator=g), x[40:41]))   # another batch composition
    assert same_bits(bi.linear(other, w)[-1:], full[40:41])
    assert bi.linear(x.view(7, 29, k), w).shape == (7, 29, o)


def test_linear_reads_whole_aligned_tiles_in_place_with_the_same_bits():
    """x of whole tiles, contiguous and aligned, goes to the bmm as it is (no copy); a view at an
    unaligned offset is copied first. Both give the bits of the rows computed alone."""
    g = gen(12)
    big, w = torch.randn(80, 128, generator=g), torch.randn(384, 128, generator=g) / 128 ** 0.5
    whole = big[:64]                                     # aligned: read in place
    shifted = big.view(-1)[3:3 + 64 * 128].view(64, 128)  # unaligned by 12 bytes: copied
    for x in (whole, shifted):
        out = bi.linear(x, w)
        for start in (0, 17, 63):
            assert same_bits(bi.linear(x[start:start + 1].clone(), w), out[start:start + 1])


def test_linear_gradients_match_float64():
    g = gen(1)
    x = torch.randn(37, 24, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(10, 24, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(37, 10, generator=g, dtype=torch.float64)
    (bi.linear(x, w) * up).sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    ((x @ w.t()) * up).sum().backward()
    assert torch.allclose(gx, x.grad) and torch.allclose(gw, w.grad)


def test_grouped_linear_rows_are_linear_alone_and_gradients_match_float64(kernels):
    """One weight per group of rows (the MoE's experts in one call): each row the bits
    ``linear`` gives it alone, computing a [2I, D] stack's rows the bits of its two [I, D]
    halves apart (gate and up); empty groups allowed; gradients against float64."""
    if kernels == "torch":
        pytest.skip("grouped_linear is the C kernel's; without it invariant_swiglu runs linear per expert")
    g = gen(13)
    counts = [5, 0, 17, 1, 9]
    x = torch.randn(sum(counts), 128, generator=g)
    w = torch.randn(len(counts), 2 * 86, 128, generator=g) / 128 ** 0.5
    y = bi.grouped_linear(x, counts, w)
    start = 0
    for e, n in enumerate(counts):
        for r in range(start, start + n):
            alone = torch.cat((bi.linear(x[r:r + 1].clone(), w[e, :86]), bi.linear(x[r:r + 1].clone(), w[e, 86:])), 1)
            assert same_bits(y[r:r + 1], alone), (e, r)
        start += n
    leaves = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    up = torch.randn(y.shape, generator=g)
    (bi.grouped_linear(*leaves[:1], counts, leaves[1]) * up).sum().backward()
    ref = [t.double().requires_grad_() for t in (x, w)]
    ends = torch.tensor(counts).cumsum(0).tolist()
    rows = [ref[0][a:b] @ ref[1][e].t() for e, (a, b) in enumerate(zip([0] + ends[:-1], ends))]
    (torch.cat(rows) * up.double()).sum().backward()
    for name, a, r in zip("xw", leaves, ref):
        assert rel(a.grad, r.grad) < 1e-6, name
    # the experts op of both engines: a token's output whatever else went to its expert
    w2 = torch.randn(len(counts), 128, 86, generator=g) / 86 ** 0.5
    full = invariant_swiglu(x, torch.tensor(counts), w, w2)
    assert same_bits(invariant_swiglu(x[22:23], torch.tensor([0, 0, 0, 1, 0]), w, w2), full[22:23])


# --- elementwise and row ops ---------------------------------------------------------------------

def test_sigmoid_silu_match_torch_and_are_offset_invariant():
    x = torch.randn(1000, 67, generator=gen(2)) * 4
    for ours, ref in [(bi.sigmoid, torch.sigmoid), (bi.silu, torch.nn.functional.silu)]:
        full = ours(x)
        assert rel(full, ref(x.double())) < 1e-6
        flat = ours(x.reshape(-1))
        for s in (1, 3, 5, 7):
            assert same_bits(ours(x.reshape(-1)[s:s + 101].clone()), flat[s:s + 101])
        for start, n in [(0, 1), (7, 3), (33, 17)]:
            assert same_bits(ours(x[start:start + n].clone()), full[start:start + n])


def test_sigmoid_silu_gradients_match_float64():
    x = torch.randn(300, 37, generator=gen(14)) * 4
    up = torch.randn(300, 37, generator=gen(15))
    for ours, ref in [(bi.sigmoid, torch.sigmoid), (bi.silu, torch.nn.functional.silu)]:
        leaf, leaf64 = x.clone().requires_grad_(), x.double().requires_grad_()
        (ours(leaf) * up).sum().backward()
        (ref(leaf64) * up.double()).sum().backward()
        assert rel(leaf.grad, leaf64.grad) < 1e-6


def test_norms_rope_and_log_softmax_are_row_invariant_as_they_are():
    """The ops strict mode keeps unchanged: a row cut out of a bigger (or 3-D) batch keeps its bits."""
    g = gen(3)
    x, w = torch.randn(6, 50, 128, generator=g), torch.randn(128, generator=g)
    full, grouped = rms_norm(x, w, 1e-6), group_rms_norm(x, w, 2, 1e-6)
    logits = torch.randn(300, 360, generator=g) * 3
    lsm = logits.log_softmax(-1)
    pos = torch.arange(300)
    cos, sin = rope_cos_sin(pos, 32, 10000.0)
    for b, t in [(0, 0), (3, 17), (5, 49)]:
        row = x[b, t:t + 1].clone()
        assert same_bits(rms_norm(row, w, 1e-6), full[b, t:t + 1])
        assert same_bits(group_rms_norm(row, w, 2, 1e-6), grouped[b, t:t + 1])
    for start, n in [(0, 1), (17, 1), (5, 30)]:
        assert same_bits(logits[start:start + n].clone().log_softmax(-1), lsm[start:start + n])
        c, s = rope_cos_sin(pos[start:start + n].clone(), 32, 10000.0)
        assert same_bits(c, cos[start:start + n]) and same_bits(s, sin[start:start + n])


def test_log_softmax_tokens_is_the_samplers_expression():
    g = gen(4)
    logits, tok = torch.randn(40, 360, generator=g) * 3, torch.randint(0, 360, (40,), generator=g)
    for temp in (1.0, 0.7):
        logp, ent = bi.log_softmax_tokens(logits, tok, temp)
        sampler = logits.clone().div_(torch.full((40,), temp).unsqueeze(1)).log_softmax(dim=-1, dtype=torch.float32)
        assert same_bits(logp, sampler.gather(-1, tok[:, None])[:, 0])
        ref = (logits.double() / temp).log_softmax(-1)
        assert torch.allclose(ent.double(), -(ref.exp() * ref).sum(-1), atol=1e-5)


# --- softmax attention -------------------------------------------------------------------------

def attention_ref(q, k, v, scale):
    """Causal GQA attention in float64, [B, T, H, d]."""
    B, T, H, d = q.shape
    k = k.repeat_interleave(H // k.shape[2], dim=2)
    v = v.repeat_interleave(H // v.shape[2], dim=2)
    s = torch.einsum("bthd,bshd->bhts", q.double(), k.double()) * scale
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("bhts,bshd->bthd", s.softmax(-1), v.double())


def qkv(B, T, H, KV, d, seed):
    g = gen(seed)
    return (torch.randn(B, T, H, d, generator=g), torch.randn(B, T, KV, d, generator=g),
            torch.randn(B, T, KV, d, generator=g))


def test_attention_matches_float64_with_gradients():
    q, k, v = qkv(3, 37, 4, 2, 16, 5)
    pos = torch.arange(37).expand(3, 37)
    out = bi.attention(q, k, v, pos, 0.25)
    assert rel(out, attention_ref(q, k, v, 0.25)) < 1e-6
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    up = torch.randn(out.shape, dtype=torch.float64, generator=gen(6))
    (bi.attention(q64, k64, v64, pos, 0.25) * up).sum().backward()
    got = [t.grad.clone() for t in (q64, k64, v64)]
    for t in (q64, k64, v64):
        t.grad = None
    (attention_ref(q64, k64, v64, 0.25) * up).sum().backward()
    for a, t in zip(got, (q64, k64, v64)):
        assert torch.allclose(a, t.grad, atol=1e-10)


def test_attention_gradients_with_positions_match_float64():
    """The backward recomputes ordinary masked attention: with queries at arbitrary positions
    (a prefill piece, a decode) the fp32 gradients match float64 attention with that mask."""
    G, Tq, S, H, KV, d = 2, 13, 40, 4, 2, 16
    g = gen(11)
    q, k, v = (torch.randn(G, n, h, d, generator=g) for n, h in ((Tq, H), (S, KV), (S, KV)))
    positions = torch.stack((torch.arange(20, 33), torch.randint(0, S, (Tq,), generator=g)))
    up = torch.randn(G, Tq, H, d, generator=g)

    def reference(q, k, v):
        k, v = k.repeat_interleave(H // KV, dim=2), v.repeat_interleave(H // KV, dim=2)
        s = torch.einsum("bthd,bshd->bhts", q, k) * 0.25
        s = s.masked_fill(torch.arange(S) > positions[:, None, :, None], float("-inf"))
        return torch.einsum("bhts,bshd->bthd", s.softmax(-1), v)

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = bi.attention(*leaves, positions, 0.25)
    assert same_bits(out.detach(), bi.attention(q, k, v, positions, 0.25))  # training forward = engine's
    (out * up).sum().backward()
    ref = [t.double().requires_grad_() for t in (q, k, v)]
    (reference(*ref) * up.double()).sum().backward()
    for name, a, r in zip("qkv", leaves, ref):
        assert rel(a.grad, r.grad) < 1e-5, name


def test_attention_decode_prefill_pieces_and_batches_agree_bitwise():
    """A query's output is the same bits as one decode query (keys up to its position), as a
    row of the whole-sequence prefill, inside a prefill piece, and beside other sequences."""
    B, T, H, KV, d = 3, 45, 4, 2, 64
    q, k, v = qkv(B, T, H, KV, d, 7)
    full = bi.attention(q, k, v, torch.arange(T).expand(B, T), d ** -0.5)
    for b, p in [(0, 0), (1, 15), (2, 16), (0, 31), (1, 44)]:
        keys = slice(0, p + 1)
        one = bi.attention(q[b:b + 1, p:p + 1], k[b:b + 1, keys], v[b:b + 1, keys],
                           torch.tensor([[p]]), d ** -0.5)
        assert same_bits(one, full[b:b + 1, p:p + 1]), (b, p)
    # a prefill piece (positions 20..33) with keys to 33, padded to 40 keys with zeros
    kk = torch.cat((k[1:2, :34], torch.zeros(1, 6, KV, d)), 1)
    vv = torch.cat((v[1:2, :34], torch.zeros(1, 6, KV, d)), 1)
    piece = bi.attention(q[1:2, 20:34], kk, vv, torch.arange(20, 34)[None], d ** -0.5)
    assert same_bits(piece, full[1:2, 20:34])
    # mixed batch: two sequences' decodes side by side
    pair = bi.attention(torch.stack((q[0, 9], q[2, 40]))[:, None], k[[0, 2]], v[[0, 2]],
                        torch.tensor([[9], [40]]), d ** -0.5)
    assert same_bits(pair[0], full[0, 9:10]) and same_bits(pair[1], full[2, 40:41])


# --- linear attention ----------------------------------------------------------------------------

def test_recurrence_matches_float64_and_its_gradients():
    g = gen(8)
    B, T, H, d = 2, 23, 2, 16
    q, k, v = (torch.randn(B, T, H, d, generator=g) * 0.5 for _ in range(3))
    decay, s0 = -torch.rand(H, generator=g), torch.randn(B, H, d, d, generator=g) * 0.1
    o, final = bi.recurrence(q, k, v, decay, d ** -0.5, s0)
    ro, rf = naive_recurrence(q.double(), k.double(), v.double(), decay, d ** -0.5, s0.double(),
                              output_final_state=True)
    assert rel(o, ro) < 1e-6 and rel(final, rf) < 1e-6
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    up = torch.randn(B, T, H, d, generator=g, dtype=torch.float64)
    (bi.recurrence(*leaves, decay, d ** -0.5)[0] * up).sum().backward()
    got = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    (naive_recurrence(*leaves, decay, d ** -0.5)[0] * up).sum().backward()
    for a, t in zip(got, leaves):
        assert torch.allclose(a, t.grad, atol=1e-10)


def test_recurrence_fp32_gradients_from_a_state_match_float64():
    """The backward is the chunked form's gradient (not the token loop's): fp32 gradients of q, k,
    v and the initial state against the float64 token loop's, on fresh inputs longer than a chunk."""
    g = gen(10)
    B, T, H, d = 2, 71, 2, 16
    q, k, v = (torch.randn(B, T, H, d, generator=g) * 0.5 for _ in range(3))
    decay, s0 = -torch.rand(H, generator=g), torch.randn(B, H, d, d, generator=g) * 0.1
    up = torch.randn(B, T, H, d, generator=g)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, s0)]
    o, _ = bi.recurrence(*leaves[:3], decay, d ** -0.5, leaves[3])
    assert same_bits(o.detach(), bi.recurrence(q, k, v, decay, d ** -0.5, s0)[0])  # training forward = engine's
    (o * up).sum().backward()
    ref = [t.double().requires_grad_() for t in (q, k, v, s0)]
    (naive_recurrence(*ref[:3], decay, d ** -0.5, ref[3])[0] * up.double()).sum().backward()
    for name, a, r in zip("q k v state".split(), leaves, ref):
        assert rel(a.grad, r.grad) < 1e-5, name
    with pytest.raises(ValueError, match="gradients need every token valid"):
        bi.recurrence(*leaves[:3], decay, d ** -0.5, valid=torch.ones(B, T, dtype=torch.bool))


def test_recurrence_decode_and_prefill_pieces_agree_bitwise():
    g = gen(9)
    B, T, H, d = 3, 30, 2, 64
    q, k, v = (torch.randn(B, T, H, d, generator=g) * 0.5 for _ in range(3))
    decay = -torch.rand(H, generator=g)
    full, _ = bi.recurrence(q, k, v, decay, d ** -0.5)
    # sequence 1 as a prefill piece of 11 tokens, then one token at a time (batched with others)
    o1, state = bi.recurrence(q[1:2, :11], k[1:2, :11], v[1:2, :11], decay, d ** -0.5)
    assert same_bits(o1, full[1:2, :11])
    for t in range(11, 14):
        batch = [q[[1, 0], t:t + 1], k[[1, 0], t:t + 1], v[[1, 0], t:t + 1]]
        other = torch.randn(1, H, d, d, generator=g)
        o, both = bi.recurrence(*batch, decay, d ** -0.5, torch.cat((state, other)))
        assert same_bits(o[0], full[1, t:t + 1])
        state = both[:1]
    # padded batch: sequence 2 stops at 20 (valid), sequence 0 runs on
    valid = torch.ones(2, T, dtype=torch.bool)
    valid[1, 20:] = False
    o, final = bi.recurrence(q[[0, 2]], k[[0, 2]], v[[0, 2]], decay, d ** -0.5, valid=valid)
    assert same_bits(o[1, :20], full[2, :20]) and same_bits(o[0], full[0])
    _, ref_final = bi.recurrence(q[2:, :20], k[2:, :20], v[2:, :20], decay, d ** -0.5)
    assert same_bits(final[1:], ref_final)


def test_engine_recurrence_on_pool_slots_is_the_token_loops_bits(kernels):
    """The rollout engine's call (the state pool's slots updated in place, right-padded pieces)
    gives the bits of :func:`recurrence` on each sequence alone."""
    if kernels == "torch":
        pytest.skip("into_slots is the C kernel's; without it the engine runs recurrence on gathered states")
    g = gen(16)
    B, T, H, d = 3, 9, 2, 64
    q, k, v = (torch.randn(B, T, H, d, generator=g) * 0.5 for _ in range(3))
    decay, lengths = -torch.rand(H, generator=g), torch.tensor([9, 4, 1])
    pool = torch.randn(7, H, d, d, generator=g) * 0.1
    slots = torch.tensor([5, 0, 3])
    before = pool.clone()
    o = into_slots(q, k, v, decay, d ** -0.5, pool, slots, lengths)
    for b in range(B):
        n, s = int(lengths[b]), int(slots[b])
        ref, final = bi.recurrence(q[b:b + 1, :n], k[b:b + 1, :n], v[b:b + 1, :n], decay, d ** -0.5, before[s:s + 1])
        assert same_bits(o[b:b + 1, :n], ref) and same_bits(pool[s:s + 1], final), b
    untouched = [i for i in range(7) if i not in slots.tolist()]
    assert same_bits(pool[untouched], before[untouched])


# --- across processes with other thread counts ---------------------------------------------------

PROBE = """
import hashlib, torch, sys
import kernels.batch_invariant as bi
torch.set_num_threads(int(sys.argv[1]))
g = torch.Generator().manual_seed(0)
x, w = torch.randn(5, 128, generator=g), torch.randn(384, 128, generator=g)
q, k, v = (torch.randn(1, 40, 2, 64, generator=g) for _ in range(3))
out = [bi.linear(x, w)[3], bi.attention(q[:, 39:], k, v, torch.tensor([[39]]), 0.125)[0, 0],
       bi.recurrence(q, k, v, -torch.ones(2), 0.125)[0][0, 39]]
print(hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in out)).hexdigest())
"""


def test_bits_do_not_depend_on_the_thread_count():
    """The trainer ranks and the vLLM engine run with different thread counts: one row computed
    alone in processes with 1 and 2 threads, and inside batches here, must agree."""
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    digests = {subprocess.run([sys.executable, "-c", PROBE, "2"], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 128, generator=g), torch.randn(384, 128, generator=g)
    q, k, v = (torch.randn(1, 40, 2, 64, generator=g) for _ in range(3))
    here = [bi.linear(torch.cat((torch.randn(20, 128), x)), w)[23],
            bi.attention(q, k, v, torch.arange(40)[None], 0.125)[0, 39],
            bi.recurrence(q, k, v, -torch.ones(2), 0.125)[0][0, 39]]
    torch.set_num_threads(threads)
    digests.add(hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in here)).hexdigest())
    assert len(digests) == 1, digests
