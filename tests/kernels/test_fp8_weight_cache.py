"""kernels/fp8/weight_cache.py: a training weight quantized once per optimizer step, both layouts,
bitwise what quantizing on every call gives, and never stale (CPU, PyTorch path)."""

from __future__ import annotations

import torch

from kernels.fp8 import FP8Linear, WeightQuantCache, clear_fp8_weight_caches, quantize_weight, quantize_weight_t


def _layer(cache_weights: bool) -> FP8Linear:
    torch.manual_seed(0)
    return FP8Linear(300, 200, bias=False, dtype=torch.bfloat16, cache_weights=cache_weights)


def _micro_batches(layer: FP8Linear, n: int = 2) -> tuple[list[torch.Tensor], torch.Tensor]:
    """n forward+backward passes accumulating into weight.grad (gradient accumulation)."""
    g = torch.Generator().manual_seed(1)
    outs = []
    for _ in range(n):
        x = torch.randn(70, 300, generator=g).to(torch.bfloat16).requires_grad_()
        y = layer(x)
        (y.float() * torch.randn(y.shape, generator=g)).sum().backward()
        outs += [y.detach(), x.grad]
    return outs, layer.weight.grad.clone()


def test_cached_weight_quantization_is_bitwise_and_used_once_per_step():
    cached, fresh = _layer(True), _layer(False)
    ys_c, grad_c = _micro_batches(cached, 3)
    ys_f, grad_f = _micro_batches(fresh, 3)
    for a, b in zip(ys_c, ys_f):
        assert torch.equal(a, b)
    assert torch.equal(grad_c, grad_f)
    # W and Wᵀ quantized once each, reused by the other two micro-batches' forward and backward
    assert (cached.weight_cache.misses, cached.weight_cache.hits) == (2, 4)


def test_cache_follows_in_place_updates_and_the_explicit_clear():
    layer = _layer(True)
    cache, w = layer.weight_cache, layer.weight
    x = torch.randn(5, 300).to(torch.bfloat16)
    layer(x)
    # an optimizer's in-place update bumps the version counter: quantized anew
    with torch.no_grad():
        w.mul_(1.5)
    q, s = cache.get(w, False, transposed=False)
    assert torch.equal(q.view(torch.uint8), quantize_weight(w)[0].view(torch.uint8)) and torch.equal(s, quantize_weight(w)[1])
    qt, _ = cache.get(w, False, transposed=True)
    assert torch.equal(qt.view(torch.uint8), quantize_weight_t(w)[0].view(torch.uint8))
    # DeepSpeed writes through `.data` (no version bump, same address): invisible to the counter,
    # which is why the trainer clears the caches after every step (clear_fp8_weight_caches)
    w.data.copy_(torch.randn(200, 300).to(torch.bfloat16))
    stale, _ = cache.get(w, False, transposed=False)
    assert not torch.equal(stale.view(torch.uint8), quantize_weight(w)[0].view(torch.uint8))
    assert clear_fp8_weight_caches(torch.nn.Sequential(layer)) == 1
    assert torch.equal(layer(x), FP8Linear.from_linear(layer)(x))
    # a parameter re-pointed at new memory is a new weight too
    layer.weight.data = torch.randn(200, 300).to(torch.bfloat16)
    assert torch.equal(layer(x), FP8Linear.from_linear(layer)(x))


def test_expert_view_shares_its_stack_version():
    """One expert's slice of a stacked parameter (the trainer's experts) is a view: an in-place
    update of the stack invalidates the slice's cached quantization."""
    stack = torch.randn(3, 256, 128).to(torch.bfloat16)
    cache = WeightQuantCache()
    cache.get(stack.unbind(0)[1], False, transposed=False)
    stack.add_(1.0)
    q, _ = cache.get(stack.unbind(0)[1], False, transposed=False)
    assert cache.misses == 2
    assert torch.equal(q.view(torch.uint8), quantize_weight(stack[1])[0].view(torch.uint8))
