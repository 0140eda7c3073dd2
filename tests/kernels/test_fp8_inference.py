"""FP8 projections in an inference engine: weights quantized once per load
(``quantize_fp8_weights``) give the bits of quantizing on every call, training refuses the
frozen copy, and a forward without gradients builds no autograd node."""

import pytest
import torch

from kernels.fp8 import FP8Linear, fp8_linear, quantize_fp8_weights, swap_linears_to_fp8


def test_weights_quantized_once_give_the_same_bits():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(200, 136), torch.nn.SiLU(), torch.nn.Linear(136, 72, bias=False))
    assert swap_linears_to_fp8(model) == ["0", "2"]
    x = torch.randn(33, 200) * torch.linspace(0.1, 30, 200)  # tiles with outliers
    with torch.no_grad():
        live = model(x)
        quantize_fp8_weights(model)
        assert all(m.weight_fp8 is not None for m in model if isinstance(m, FP8Linear))
        assert torch.equal(model(x), live)
        model[0].weight.mul_(2)  # the engine's contract: after a weight change, quantize again
        stale = model(x)
        quantize_fp8_weights(model)
        fresh = model(x)
    assert not torch.equal(fresh, stale)
    model[0].weight_fp8 = None
    with torch.no_grad():
        assert torch.equal(model(x), fresh)


def test_training_forward_refuses_a_frozen_weight():
    layer = FP8Linear(128, 64)
    layer.quantize_weight_once()
    with pytest.raises(ValueError, match="weight_quant .* is for inference"):
        layer(torch.randn(4, 128))
    y = fp8_linear(torch.randn(4, 128), layer.weight.detach(), weight_quant=layer.weight_fp8)
    assert y.grad_fn is None and y.shape == (4, 64)
