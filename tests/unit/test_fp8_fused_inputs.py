"""FP8 inputs quantized by their producers (models/ring_linear/fp8_inputs.py): the training model
with the norms' and SwiGLUs' fused quantization gives bitwise the logits and gradients of the
unfused model (each FP8 projection quantizing its own input), and takes fewer quantization
passes. CPU, PyTorch path, tiny preset (dense MLP, MoE with shared expert, both attention kinds)."""

from __future__ import annotations

import pytest
import torch

import kernels.fp8.linear as fp8_linear_module
import trainer.ring_linear  # noqa: F401  (registers the model type with transformers)
from models.ring_linear.fp8_inputs import fuse_fp8_inputs
from models.ring_linear.presets import preset_config
from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM
from trainer.worker import use_fp8


def _fp8_model(dtype: torch.dtype, fused: bool) -> BailingMoeLinearV2ForCausalLM:
    torch.manual_seed(3)
    # two layers: a linear-attention layer with a dense MLP, a softmax one with MoE + shared expert
    config = preset_config("tiny", num_hidden_layers=2, num_experts=4, n_group=2, topk_group=1)
    model = BailingMoeLinearV2ForCausalLM(config).to(dtype).train()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # norm weights away from 1, a non-zero expert bias: the test sees them
        for name, p in model.named_parameters():
            if name.endswith("expert_bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
    use_fp8(model, {"pow2_scale": False, "batch_invariant": False})
    assert fuse_fp8_inputs(model.get_decoder(), fused) == (4 if fused else 0)  # 2 layers × 2 norms
    return model


def _logits_and_grads(model, monkeypatch):
    """Logits and every parameter gradient of one forward+backward, and how many times the FP8
    projections quantized their input row-wise themselves in the forward."""
    calls = {"n": 0}
    both = fp8_linear_module.quantize_act_both

    def counted(*args, **kwargs):
        calls["n"] += 1
        return both(*args, **kwargs)

    monkeypatch.setattr(fp8_linear_module, "quantize_act_both", counted)
    ids = torch.randint(0, model.config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(5))
    logits = model(ids).logits
    monkeypatch.setattr(fp8_linear_module, "quantize_act_both", both)  # the backward's dy passes not counted
    proj = torch.randn(logits.shape, generator=torch.Generator().manual_seed(6))
    (logits * proj).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads, calls["n"]


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_fused_fp8_inputs_are_bitwise_the_unfused_model(dtype, monkeypatch):
    logits_f, grads_f, passes_f = _logits_and_grads(_fp8_model(dtype, fused=True), monkeypatch)
    logits_u, grads_u, passes_u = _logits_and_grads(_fp8_model(dtype, fused=False), monkeypatch)
    assert torch.equal(logits_f, logits_u)
    assert grads_f.keys() == grads_u.keys() and len(grads_f) > 20
    for name, grad in grads_f.items():
        assert torch.equal(grad, grads_u[name]), name
    # unfused, every FP8 projection quantizes its input (both ways, one pass: x and the weight
    # gradient's xᵀ); fused, only the two attention output projections (their input comes from
    # the gated group norm) do, the others quantize xᵀ alone
    assert passes_f == 2 and passes_u > 10


def test_min_weight_elements_keeps_small_projections_out_of_fp8():
    """model.fp8.min_weight_elements: projections with N·K below it stay in the model dtype (the
    tiny preset's 64×256 experts and shared expert here), the rest run FP8; the norm in front of
    the MoE then quantizes nothing (no FP8 reader), the attention's still does."""
    from kernels.fp8 import FP8Linear, fp8_projection_count
    from models.ring_linear.moe import GroupedExperts

    torch.manual_seed(3)
    model = BailingMoeLinearV2ForCausalLM(preset_config("tiny", num_hidden_layers=2)).to(torch.bfloat16)
    use_fp8(model, {"pow2_scale": False, "batch_invariant": False, "min_weight_elements": 64 * 256 + 1})
    linears = {n: m for n, m in model.get_decoder().named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears and all(isinstance(m, FP8Linear) == (m.in_features * m.out_features > 64 * 256)
                           for m in linears.values())
    assert all(m.fp8 is None for m in model.modules() if isinstance(m, GroupedExperts))
    assert fp8_projection_count(model) == sum(isinstance(m, FP8Linear) for m in linears.values())
    moe_layer = model.get_decoder().layers[1]
    assert moe_layer.post_attention_layernorm.fp8_input is None
    assert moe_layer.input_layernorm.fp8_input == (False, torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(5))
    assert torch.isfinite(model(ids).logits).all()
