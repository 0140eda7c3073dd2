"""FP8Linear's weight-gradient GEMM (dW = dyᵀ·x over the tokens, both operands 1×128-scaled along
the tokens) on Hopper: at the Ring-mini projection shapes ``fp8_gemm`` runs it on the
warp-specialized Gluon kernel (``gluon_ws`` with 1×128 B scales), bitwise equal to the Triton
kernel; below one wave of 128×256 tiles, or with a token count that is not a multiple of 16 (TMA
rows), it stays on Triton, logged. GPU-only (sm_90)."""

from __future__ import annotations

import pytest
import torch

from kernels.fp8 import fp8_gemm, fp8_linear, quantize_act_t
from kernels.fp8.gemm import _make_plan

_HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not _HOPPER, reason="the Gluon kernels are sm_90-only (not in the Triton interpreter)")
@pytest.mark.parametrize("tokens, d_in, d_out, kernel", [
    (1024, 2048, 5120, "gluon_ws"),   # Ring-mini dense FFN up: 40 × 8 tiles of 128×256
    (1024, 5120, 2048, "gluon_ws"),   # its down projection
    (1024, 2048, 2048, "tma"),        # attention output: 16 × 8 = 128 tiles, less than a wave
    (1000, 2048, 5120, "ptr"),        # tokens % 16 ≠ 0: no TMA (packed micro-batches can do this)
])
def test_wgrad_runs_on_the_hopper_kernel_bitwise(tokens, d_in, d_out, kernel):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(tokens, d_in, device="cuda", dtype=torch.bfloat16, generator=g)
    weight = (torch.randn(d_out, d_in, device="cuda", generator=g) * 0.02).to(torch.bfloat16).requires_grad_()
    dy = torch.randn(tokens, d_out, device="cuda", dtype=torch.bfloat16, generator=g)
    fp8_linear(x, weight).backward(dy)
    dyq_t, dys_t = quantize_act_t(dy)
    xq_t, xs_t = quantize_act_t(x)
    plan = _make_plan(dyq_t, dys_t, xq_t, xs_t, torch.bfloat16, False, "auto", None)
    assert plan[2][4] == kernel
    assert torch.equal(weight.grad, fp8_gemm(dyq_t, dys_t, xq_t, xs_t))  # the layer's dW is this GEMM
    triton = fp8_gemm(dyq_t, dys_t, xq_t, xs_t, config=(128, 128, 8, 4, "tma" if tokens % 16 == 0 else "ptr"))
    assert torch.equal(weight.grad, triton)  # every kernel: the same bits
