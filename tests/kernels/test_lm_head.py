"""kernels/lm_head against float64: fp32 logits, chunked token log-probs/entropy and their
gradients w.r.t. hidden and weight. Triton runs in the interpreter (conftest)."""

from __future__ import annotations

import pytest
import torch

from kernels.lm_head import logits_fp32, matmul_fp32, token_logprobs, token_logprobs_ref

BACKENDS = ["torch", "triton"]


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make(n, d, v, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).to(dtype)
    w = (torch.randn(v, d, generator=g) * 0.2).to(dtype)
    tok = torch.randint(0, v, (n,), generator=g)
    return h, w, tok


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_fp32_matches_float64(backend):
    h, w, _ = make(37, 96, 300)
    out = logits_fp32(h, w, backend=backend)
    assert out.dtype == torch.float32 and out.shape == (37, 300)
    ref = h.double() @ w.double().t()
    assert rel(out, ref) < 1e-6  # bf16 products are exact; fp32 accumulation only
    # batch invariance: a row's logits do not depend on the other rows
    assert torch.equal(logits_fp32(h[3:4], w, backend=backend), out[3:4])
    assert torch.equal(logits_fp32(h[:20], w, backend=backend), out[:20])


@pytest.mark.parametrize("backend", BACKENDS)
def test_matmul_fp32_accumulate_and_strides(backend):
    a = torch.randn(40, 70).bfloat16()
    b = torch.randn(50, 70).bfloat16().t()  # [70, 50], non-contiguous
    out = torch.randn(40, 50)
    base = out.clone()
    matmul_fp32(a, b, out=out, accumulate=True, backend=backend)
    assert rel(out, base.double() + a.double() @ b.double()) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature,chunk", [(1.0, 128), (0.7, 300), (1.0, None)])
def test_token_logprobs_and_grads_match_float64(backend, temperature, chunk):
    h, w, tok = make(24, 64, 700, seed=1)  # chunks 128 and 300: both end in a partial chunk
    tok[5] = -100  # ignored
    hb = h.clone().requires_grad_()
    wb = w.clone().requires_grad_()
    lp, ent = token_logprobs(hb, wb, tok, temperature=temperature, chunk_size=chunk, backend=backend)
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32 and lp[5] == 0
    g = torch.Generator().manual_seed(2)
    gl, ge = torch.randn(24, generator=g), torch.randn(24, generator=g)
    (lp * gl + ent * ge).sum().backward()
    hd = h.double().requires_grad_()
    wd = w.double().requires_grad_()
    lr, er = token_logprobs_ref(hd, wd, tok, temperature)
    (lr * gl.double() + er * ge.double()).sum().backward()
    assert (lp.double() - lr).abs().max() < 1e-4
    assert (ent.double() - er).abs().max() < 1e-4
    # gradients come back in bf16 (and dz is rounded to bf16 for the tensor cores)
    assert hb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    assert rel(hb.grad, hd.grad) < 1e-2
    assert rel(wb.grad, wd.grad) < 1e-2


def test_token_logprobs_fp32_inputs_are_tight():
    h, w, tok = make(16, 48, 777, dtype=torch.float32, seed=3)
    hb = h.clone().requires_grad_()
    wb = w.clone().requires_grad_()
    lp, ent = token_logprobs(hb, wb, tok, chunk_size=100)
    (lp.sum() + 0.5 * ent.sum()).backward()
    hd = h.double().requires_grad_()
    wd = w.double().requires_grad_()
    lr, er = token_logprobs_ref(hd, wd, tok)
    (lr.sum() + 0.5 * er.sum()).backward()
    assert (lp.double() - lr).abs().max() < 1e-5 and (ent.double() - er).abs().max() < 1e-5
    assert rel(hb.grad, hd.grad) < 1e-5 and rel(wb.grad, wd.grad) < 1e-5


def test_token_logprobs_chunking_and_leading_dims():
    h, w, tok = make(12, 32, 500, seed=4)
    lp1, e1 = token_logprobs(h, w, tok, chunk_size=500)
    lp2, e2 = token_logprobs(h, w, tok, chunk_size=77)
    assert (lp1 - lp2).abs().max() < 1e-5 and (e1 - e2).abs().max() < 1e-5
    lp3, e3 = token_logprobs(h.view(3, 4, 32), w, tok.view(3, 4), chunk_size=77)
    assert lp3.shape == (3, 4) and torch.equal(lp3.reshape(-1), lp2) and torch.equal(e3.reshape(-1), e2)
    # only hidden requires grad
    hb = h.clone().requires_grad_()
    token_logprobs(hb, w, tok)[0].sum().backward()
    assert hb.grad is not None and hb.grad.isfinite().all()


def test_token_logprobs_extreme_logits_are_finite():
    h, w, tok = make(8, 32, 400, dtype=torch.float32, seed=5)
    w[7] = 50.0  # a dominating token: probabilities near 1 and near 0
    lp, ent = token_logprobs(h, w, tok, chunk_size=64)
    lr, er = token_logprobs_ref(h.double(), w.double(), tok)
    assert lp.isfinite().all() and ent.isfinite().all()
    assert (lp.double() - lr).abs().max() < 1e-3 and (ent.double() - er).abs().max() < 1e-3


def test_token_logprobs_validation():
    h, w, tok = make(4, 16, 50)
    with pytest.raises(ValueError, match="tokens must have shape"):
        token_logprobs(h, w, tok[:3])
    with pytest.raises(ValueError, match="out of range"):
        token_logprobs(h, w, tok + 50)
    with pytest.raises(ValueError, match="share a dtype"):
        token_logprobs(h.float(), w, tok)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(h, w, tok, temperature=0.0)
    with pytest.raises(ValueError, match="logits_fp32"):
        logits_fp32(h, w.t())


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_logprobs_batch_invariant(backend):
    """A row's log-prob and entropy are bitwise the same whatever the number of rows (strict mode)."""
    h, w, tok = make(20, 32, 600, seed=6)
    lp, ent = token_logprobs(h, w, tok, chunk_size=256, backend=backend)
    for m in (1, 7):
        lp_m, ent_m = token_logprobs(h[:m], w, tok[:m], chunk_size=256, backend=backend)
        assert torch.equal(lp_m, lp[:m]) and torch.equal(ent_m, ent[:m])
