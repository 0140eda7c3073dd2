"""kernels/fp8/fused_grad.py (the fused FP8 producers with a backward) and the fused kernels'
new forms (an fp32 y beside the quantized rounding; gate and up as two tensors): gradients vs
float64, bitwise vs the unfused expressions, Triton in the interpreter (conftest)."""

from __future__ import annotations

import pytest
import torch

from kernels.fp8 import FP8_DTYPE, rms_norm_fp8, rmsnorm_quant, silu_mul_fp8, silu_mul_fp32, silu_mul_quant
from kernels.fp8 import reference as R
from kernels.norm import rms_norm


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == FP8_DTYPE else t


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _grads(fn, inputs, probe):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*leaves)
    (y * probe.to(y.dtype)).sum().backward()
    return y.detach(), [t.grad for t in leaves]


def test_rms_norm_fp8_gradients_vs_float64_and_unfused_bitwise():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(19, 300, generator=g) * 3, torch.rand(300, generator=g) + 0.5
    probe = torch.randn(19, 300, generator=g)
    y, (dx, dw) = _grads(lambda x, w: rms_norm_fp8(x, w, 1e-6, torch.bfloat16)[0], (x, w), probe)
    y64, (dx64, dw64) = _grads(lambda x, w: rms_norm(x, w, 1e-6), (x.double(), w.double()), probe)
    assert y.dtype == torch.float32 and _rel(y, y64) < 1e-6
    assert _rel(dx, dx64) < 1e-5 and _rel(dw, dw64) < 1e-5
    y_u, grads_u = _grads(lambda x, w: rms_norm(x, w, 1e-6), (x, w), probe)  # the unfused norm
    assert torch.equal(y, y_u) and all(torch.equal(a, b) for a, b in zip((dx, dw), grads_u))
    yq, ys = rms_norm_fp8(x, w, 1e-6, torch.bfloat16)[1]
    qr, sr = R.quantize_act_ref(y.to(torch.bfloat16))  # the projection's input: y's bf16 rounding
    assert torch.equal(_bits(yq), _bits(qr)) and torch.equal(ys, sr)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_fp8_gradients_vs_float64_and_unfused_bitwise(dtype):
    g = torch.Generator().manual_seed(1)
    gate, up = (torch.randn(13, 200, generator=g) * 3).to(dtype), torch.randn(13, 200, generator=g).to(dtype)
    probe = torch.randn(13, 200, generator=g)
    y, (dg, du) = _grads(lambda a, b: silu_mul_fp8(a, b, dtype)[0], (gate, up), probe)
    silu_mul64 = lambda a, b: a * torch.sigmoid(a) * b  # noqa: E731
    y64, (dg64, du64) = _grads(silu_mul64, (gate.double(), up.double()), probe)
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # bf16: y and the gradients rounded to bf16
    assert y.dtype == dtype and _rel(y, y64) < tol and _rel(dg, dg64) < tol and _rel(du, du64) < tol
    unfused = lambda a, b: silu_mul_fp32(a, b).to(dtype)  # noqa: E731  (the FP8 SwiGLU, unfused)
    y_u, grads_u = _grads(unfused, (gate, up), probe)
    assert torch.equal(y, y_u) and all(torch.equal(a, b) for a, b in zip((dg, du), grads_u))
    yq, ys = silu_mul_fp8(gate, up, dtype)[1]
    qr, sr = R.quantize_act_ref(y)
    assert torch.equal(_bits(yq), _bits(qr)) and torch.equal(ys, sr)


def test_fused_kernels_fp32_y_and_separate_gate_up_triton():
    """The Triton kernels' new forms: RMSNorm storing fp32 y and quantizing its bf16 rounding;
    SwiGLU reading gate and up from two tensors (bitwise the concatenated call)."""
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(21, 257, generator=g) * 2, torch.rand(257, generator=g) + 0.5
    y, yq, ys = rmsnorm_quant(x, w, 1e-6, out_dtype=torch.bfloat16, y_dtype=torch.float32, return_y=True,
                              backend="triton")
    assert y.dtype == torch.float32 and _rel(y, R.rmsnorm_ref(x, w, 1e-6)) < 1e-6
    qr, sr = R.quantize_act_ref(y.to(torch.bfloat16))
    assert torch.equal(_bits(yq), _bits(qr)) and torch.equal(ys, sr)
    gate_up = (torch.randn(9, 2 * 200, generator=g) * 3).bfloat16()
    gate, up = gate_up[:, :200].contiguous(), gate_up[:, 200:].contiguous()
    joint = silu_mul_quant(gate_up, return_y=True, backend="triton")
    apart = silu_mul_quant(gate, up, return_y=True, backend="triton")
    for a, b in zip(joint, apart):
        assert torch.equal(_bits(a), _bits(b))
    with pytest.raises(ValueError, match="one shape"):
        silu_mul_quant(gate, up[:, :100])


def test_producer_quantized_input_is_the_consumers_own_triton():
    """The producers on the Triton path (interpreted): norm → FP8 projections → SwiGLU → FP8 down
    projection, with the producers' quantization handed on (x_quant) or each consumer quantizing
    the producer's output itself — the same forward and gradients, bitwise. (The consumers run
    the PyTorch path, whose quantizers are bitwise the Triton ones, tested above and in
    test_fp8.py: the interpreted GEMMs would take minutes.)"""
    from kernels.fp8 import fp8_linear

    g = torch.Generator().manual_seed(3)
    x, norm_w = torch.randn(9, 128, generator=g), torch.rand(128, generator=g) + 0.5
    w_gate, w_up = ((torch.randn(136, 128, generator=g) * 0.05).bfloat16() for _ in range(2))
    w_down = (torch.randn(128, 136, generator=g) * 0.05).bfloat16()
    probe = torch.randn(9, 128, generator=g)

    def block(fused: bool):
        leaves = [t.detach().clone().requires_grad_() for t in (x, norm_w, w_gate, w_up, w_down)]
        xx, nw, wg, wu, wd = leaves
        y, y_quant = rms_norm_fp8(xx, nw, 1e-6, torch.bfloat16, backend="triton")
        y16, y_quant = y.to(torch.bfloat16), (y_quant if fused else None)
        gate = fp8_linear(y16, wg, x_quant=y_quant, backend="torch")
        up = fp8_linear(y16, wu, x_quant=y_quant, backend="torch")
        h, h_quant = silu_mul_fp8(gate, up, torch.bfloat16, backend="triton")
        out = fp8_linear(h, wd, x_quant=h_quant if fused else None, backend="torch")
        (out.float() * probe).sum().backward()
        return [out.detach()] + [t.grad for t in leaves]

    for a, b in zip(block(True), block(False)):
        assert torch.equal(a, b)
