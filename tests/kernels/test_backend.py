"""The one ``backend=`` convention of every kernel family (kernels/backend.py): the same accepted
values, the same default, the same error for a bad value, and "auto" running PyTorch on CPU."""

from __future__ import annotations

import inspect

import pytest
import torch

import kernels.backend as backend_module
import kernels.fp8 as fp8
import kernels.linear_attention as la
import kernels.lm_head as lm_head
from kernels.backend import BACKENDS, resolve_backend

PUBLIC_OPS = [fp8.quantize_act, fp8.quantize_act_t, fp8.quantize_act_both, fp8.quantize_weight,
              fp8.quantize_weight_t, fp8.fp8_gemm, fp8.fp8_gemm_grouped, fp8.rmsnorm_quant,
              fp8.silu_mul_quant, fp8.fp8_linear, lm_head.logits_fp32, lm_head.matmul_fp32,
              lm_head.token_logprobs, la.chunk, la.recurrent]


@pytest.mark.parametrize("op", PUBLIC_OPS, ids=lambda f: f.__name__)
def test_every_public_op_takes_the_same_backend_argument(op):
    p = inspect.signature(op).parameters["backend"]
    assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default == "auto"


def _calls():
    x = torch.randn(4, 128)
    q = torch.randn(1, 8, 2, 16)
    g = la.layer_decay(2, 0, 2)
    xq, xs = fp8.quantize_act(x)
    wq, ws = fp8.quantize_weight(x)
    return {
        "quantize_act": lambda be: fp8.quantize_act(x, backend=be),
        "fp8_gemm": lambda be: fp8.fp8_gemm(xq, xs, wq, ws, backend=be),
        "fp8_linear": lambda be: fp8.fp8_linear(x, x, backend=be),
        "logits_fp32": lambda be: lm_head.logits_fp32(x, x, backend=be),
        "chunk": lambda be: la.chunk(q, q, q, g, backend=be),
        "recurrent": lambda be: la.recurrent(q[:, 0], q[:, 0], q[:, 0], g, None, torch.zeros(1, 2, 16, 16),
                                             backend=be),
    }


@pytest.mark.parametrize("name", list(_calls()))
def test_same_error_for_a_bad_value_and_auto_is_torch_on_cpu(name):
    call = _calls()[name]
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'triton', 'torch'\), got 'cuda'"):
        call("cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        call(None)
    auto, explicit = _flat(call("auto")), _flat(call("torch"))
    assert len(auto) == len(explicit) and all(map(_same, auto, explicit))


def _flat(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    raw = (lambda t: t.view(torch.uint8)) if a.dtype == fp8.FP8_DTYPE else (lambda t: t)
    return a.dtype == b.dtype and torch.equal(raw(a), raw(b))


def test_triton_without_triton_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setattr(backend_module, "HAS_TRITON", False)
    x = torch.randn(2, 2)
    with pytest.raises(RuntimeError, match="triton, which is not installed"):
        resolve_backend("op", x, "triton")
    assert resolve_backend("op", x, "auto") == "torch" and resolve_backend("op", x, "torch") == "torch"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    if not backend_module.HAS_TRITON:
        pytest.skip("triton not installed")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve_backend("op", torch.randn(2), "triton")
    assert BACKENDS == ("auto", "triton", "torch")
