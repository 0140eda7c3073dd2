"""kernels.softmax_attention against its float64 reference: outputs and every gradient, sequences
of uneven lengths packed along T (one of length 1, one crossing several blocks), GQA and not.

Both backends: ``torch`` (per-sequence SDPA, the CPU path) and ``triton``.  The Triton kernels run
on CUDA when a GPU is present, else on CPU tensors in the Triton interpreter (tests/conftest.py
sets TRITON_INTERPRET before triton is imported); every output and gradient buffer of the
kernels is NaN-filled first, so an element a kernel forgets to write fails.  The interpreter
gets bf16 ``tl.dot`` wrong (see test_linear_attention.py), so its 16-bit cases use fp16; bf16
runs in the ``gpu`` tests.  Sizes are small (head dim 16) to keep each interpreter case quick.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from kernels.softmax_attention import causal_attention, naive_causal_attention

try:
    from triton.runtime.interpreter import InterpretedFunction

    ct = importlib.import_module("kernels.softmax_attention.causal_triton")
except ImportError:  # pragma: no cover
    ct = None


def _triton_mode():
    if ct is None:
        return None
    if isinstance(ct._fwd_kernel, InterpretedFunction):
        return "interpret"
    return "cuda" if torch.cuda.is_available() else None


TRITON = _triton_mode()
LENGTHS = [1, 2, 17, 64, 100]   # a single token, a partial block, exactly one block, 1 + a part


@pytest.fixture(params=["torch", pytest.param("triton", marks=[pytest.mark.gpu] if TRITON == "cuda" else [])])
def backend(request, monkeypatch):
    if request.param == "triton":
        if TRITON is None:
            pytest.skip("triton kernels not interpretable in this process (see module docstring)")
        monkeypatch.setattr(ct, "POISON_OUTPUTS", True)
    return request.param


def _dev(backend):
    return "cuda" if backend == "triton" and TRITON == "cuda" else "cpu"


def _cu(lengths, dev):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=dev)


def _qkv(T, H, KV, D, dt, dev, B=1):
    q = torch.randn(B, T, H, D, device=dev).to(dt).requires_grad_()
    k = torch.randn(B, T, KV, D, device=dev).to(dt).requires_grad_()
    v = torch.randn(B, T, KV, D, device=dev).to(dt).requires_grad_()
    return q, k, v


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    assert not a.isnan().any(), "NaN in output (unwritten or poisoned memory)"
    return ((a - b).norm() / b.norm()).item()


def _check_against_float64(q, k, v, cu, scale, tol, backend):
    o = causal_attention(q, k, v, cu, scale, backend=backend)
    assert o.dtype == q.dtype and o.shape == q.shape
    do = torch.randn_like(o)
    grads = torch.autograd.grad((o * do).sum(), (q, k, v))
    ref = [x.detach().cpu().double().requires_grad_() for x in (q, k, v)]
    ro = naive_causal_attention(*ref, None if cu is None else cu.cpu(), scale)
    rgrads = torch.autograd.grad((ro * do.cpu().double()).sum(), ref)
    assert rel(o, ro) < tol
    for name, a, b in zip("qkv", grads, rgrads):
        assert a.dtype == q.dtype and a.shape == b.shape
        assert rel(a, b) < tol, name


@pytest.mark.parametrize("heads", [(4, 2), (2, 2)], ids=["gqa", "mha"])
@pytest.mark.parametrize("precision", ["fp32", "16bit"])
def test_packed_matches_float64(backend, heads, precision):
    torch.manual_seed(sum(heads) + len(precision))
    dev, (H, KV) = _dev(backend), heads
    dt = torch.float32 if precision == "fp32" else torch.float16
    q, k, v = _qkv(sum(LENGTHS), H, KV, 16, dt, dev)
    _check_against_float64(q, k, v, _cu(LENGTHS, dev), 0.3,
                            1e-5 if dt == torch.float32 else 2e-3, backend)


def test_rows_of_a_batch_match_float64(backend):
    """Without cu_seqlens each of the B rows is one causal sequence (the padded layout)."""
    torch.manual_seed(5)
    dev = _dev(backend)
    q, k, v = _qkv(70, 4, 1, 16, torch.float32, dev, B=2)
    _check_against_float64(q, k, v, None, None, 1e-5, backend)


def test_a_sequence_computes_alone_as_inside_the_pack(backend):
    """Outputs and gradients of each sequence equal those of the sequence alone — bitwise on the
    Triton kernels (a program reads only its own sequence, blocks start at the sequence start,
    fixed order) and on the torch path (the same SDPA call); an empty sequence is allowed."""
    torch.manual_seed(6)
    dev = _dev(backend)
    lengths = [17, 1, 0, 80]
    q, k, v = _qkv(sum(lengths), 4, 2, 16, torch.float32, dev)
    o = causal_attention(q, k, v, _cu(lengths, dev), backend=backend)
    do = torch.randn_like(o)
    grads = torch.autograd.grad((o * do).sum(), (q, k, v))
    start = 0
    for n in lengths:
        if n == 0:
            continue
        part = [x.detach()[:, start:start + n].clone().requires_grad_() for x in (q, k, v)]
        alone = causal_attention(*part, backend=backend)
        alone_grads = torch.autograd.grad((alone * do[:, start:start + n]).sum(), part)
        assert torch.equal(alone, o[:, start:start + n].detach()), n
        for a, b in zip(alone_grads, grads):
            assert torch.equal(a, b[:, start:start + n]), n
        start += n


def test_input_errors_name_the_problem():
    q, k = torch.zeros(1, 8, 4, 16), torch.zeros(1, 8, 3, 16)
    with pytest.raises(ValueError, match="KV dividing"):
        causal_attention(q, k, k)
    with pytest.raises(ValueError, match="B must be 1"):
        causal_attention(torch.zeros(2, 8, 4, 16), *[torch.zeros(2, 8, 2, 16)] * 2,
                         torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="end at T=8"):
        causal_attention(q, *[torch.zeros(1, 8, 2, 16)] * 2, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="backend"):
        causal_attention(q, *[torch.zeros(1, 8, 2, 16)] * 2, backend="cuda")
    if TRITON is not None:
        with pytest.raises(ValueError, match="power-of-two head dim"):
            causal_attention(*[torch.zeros(1, 8, 2, 24, device=_dev("triton"))] * 3, backend="triton")


def test_work_lists_cover_every_block_once_costliest_first():
    if ct is None:
        pytest.skip("triton not installed")
    bounds = [0, 1, 1, 130, 200]          # lengths 1, 0, 129, 70
    fwd = ct.forward_work(bounds, torch.device("cpu")).tolist()
    blocks = {n: [(s, start) for s, length in enumerate((1, 0, 129, 70)) for start in range(0, length, n)]
              for n in (ct.FWD_BLOCK_M, ct.DKDV_BLOCK_N, ct.DQ_BLOCK_M)}
    assert sorted(map(tuple, fwd)) == sorted(blocks[ct.FWD_BLOCK_M]) and len(fwd) == len(blocks[ct.FWD_BLOCK_M])
    cost = [min(start + ct.FWD_BLOCK_M, (1, 0, 129, 70)[s]) for s, start in fwd]
    assert cost == sorted(cost, reverse=True)  # the blocks that see the most keys first
    bwd = ct.backward_work(bounds, 4, 2, torch.device("cpu"))
    dkdv, dq = bwd[bwd[:, 0] == 0], bwd[bwd[:, 0] == 1]
    assert len(dkdv) == 2 * len(blocks[ct.DKDV_BLOCK_N]) and len(dq) == 4 * len(blocks[ct.DQ_BLOCK_M])
    assert {tuple(r) for r in dq[:, 1:].tolist()} == {(s, start, h) for s, start in blocks[ct.DQ_BLOCK_M]
                                                      for h in range(4)}


# ----------------------------------------------------------------------------- GPU only
gpu = pytest.mark.skipif(not torch.cuda.is_available() or TRITON != "cuda", reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
def test_bf16_ring_mini_shapes_against_float64_and_per_sequence_sdpa():
    """Ring-mini's softmax layers (16 query heads, 4 KV heads, head dim 128) in bf16 on a pack of
    uneven sequences: the kernel's outputs and gradients are as close to float64 as the
    per-sequence SDPA loop's (flash-attention's bf16 error), and close to that loop itself."""
    torch.manual_seed(7)
    lengths = [1, 300, 17, 1000, 64, 129, 700]
    cu = _cu(lengths, "cuda")
    q, k, v = _qkv(sum(lengths), 16, 4, 128, torch.bfloat16, "cuda")
    do = torch.randn(q.shape, device="cuda", dtype=torch.bfloat16)
    ref = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ro = naive_causal_attention(*ref, cu, None)
    rgrads = torch.autograd.grad((ro * do.double()).sum(), ref)
    results = {}
    for be in ("triton", "torch"):
        o = causal_attention(q, k, v, cu, backend=be)
        results[be] = (o, *torch.autograd.grad((o * do).sum(), (q, k, v)))
    for name, i in (("o", 0), ("dq", 1), ("dk", 2), ("dv", 3)):
        want = ro if i == 0 else rgrads[i - 1]
        err_kernel, err_sdpa = rel(results["triton"][i], want), rel(results["torch"][i], want)
        assert err_kernel < max(2 * err_sdpa, 1e-2), (name, err_kernel, err_sdpa)
        assert rel(results["triton"][i], results["torch"][i]) < 2e-2, name


@pytest.mark.gpu
@gpu
def test_fp32_on_gpu_is_fp32_accurate():
    torch.manual_seed(8)
    lengths = [5, 200, 64, 1]
    q, k, v = _qkv(sum(lengths), 8, 2, 64, torch.float32, "cuda")
    _check_against_float64(q, k, v, _cu(lengths, "cuda"), None, 1e-5, "triton")


def test_torch_backend_is_the_sdpa_call_a_sequence_gets_alone():
    """The CPU path: a packed sequence's result is the very SDPA call it gets unpacked."""
    torch.manual_seed(9)
    q, k, v = _qkv(30, 4, 2, 16, torch.float32, "cpu")
    o = causal_attention(q, k, v, _cu([12, 18], "cpu"), backend="torch")
    alone = F.scaled_dot_product_attention(q[:, 12:].transpose(1, 2), k[:, 12:].transpose(1, 2),
                                           v[:, 12:].transpose(1, 2), is_causal=True, enable_gqa=True)
    assert torch.equal(o[:, 12:], alone.transpose(1, 2))
