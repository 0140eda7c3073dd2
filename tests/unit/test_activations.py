"""The module-by-module comparison that names where two engines first diverge."""

import torch
from torch import nn

from rollout.activations import first_divergence, record_outputs


def toy(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def recorded(model, x, names):
    with record_outputs(model, names) as rec, torch.no_grad():
        model(x)
    return rec.stop()


def test_names_the_first_module_that_diverges():
    names = ["0", "1", "2"]
    x = torch.randn(1, 5, 4)
    a, b = toy(0), toy(0)
    with torch.no_grad():
        b[2].bias.add_(1e-3)  # only the last module differs
    ra, rb = recorded(a, x, names), recorded(b, x, names)
    assert ra["0"].shape == (5, 8) and ra["0"].dtype == torch.float64
    assert first_divergence(ra, recorded(toy(0), x, names), names, rtol=0) is None
    name, err = first_divergence(ra, rb, names, rtol=1e-6)
    assert name == "2" and 1e-6 < err < 1e-2
    with torch.no_grad():
        b[0].weight.mul_(1.01)
    assert first_divergence(ra, recorded(b, x, names), names, rtol=1e-6)[0] == "0"


def test_rows_compare_over_the_shorter_sequence_and_shapes_must_match():
    names = ["0"]
    m = toy(1)
    full, short = recorded(m, torch.randn(1, 6, 4), names), None
    short = {"0": full["0"][:4]}
    assert first_divergence(full, short, names, rtol=0) is None
    assert first_divergence(full, {"0": full["0"][:, :3]}, names, rtol=1.0) == ("0", float("inf"))


def test_hooks_are_removed_after_recording():
    m = toy(2)
    with record_outputs(m, ["0"]):
        pass
    assert not m[0]._forward_hooks


def test_relative_errors_from_a_start_row():
    """Decode vs training prefill compares only the decoded rows (`start` = prompt length)."""
    names = ["0"]
    full = recorded(toy(1), torch.randn(1, 6, 4), names)
    late = {"0": full["0"].clone()}
    late["0"][4:] *= 1.001  # only rows 4.. differ
    from rollout.activations import relative_errors

    assert relative_errors(full, late, names, start=0)[0][1] > 1e-5
    assert relative_errors(full, {"0": full["0"].clone()}, names, start=4) == [("0", 0.0)]
    assert relative_errors(full, late, names, start=4)[0][1] > 1e-5
    assert relative_errors(full, late, names, start=6) == [("0", float("inf"))]  # no rows left


def test_module_names_exist_in_the_trainer_models_of_both_families():
    """The compared names are the trainer model's own: Ring-linear (`attention`, layer outputs)
    and a transformers-native dense model (`self_attn`, no layer outputs)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from models.ring_linear.presets import preset_config
    from rollout.activations import module_names
    from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM

    dense = Qwen2ForCausalLM(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=64))
    ring = BailingMoeLinearV2ForCausalLM(preset_config("tiny"))
    for model, attention in ((dense, "self_attn"), (ring, "attention")):
        names, modules = module_names(model.config), dict(model.named_modules())
        assert [n for n in names if n not in modules] == []
        assert f"model.layers.1.{attention}" in names and names[-1] == "model.norm"
    assert "model.layers.1" in module_names(ring.config) and "model.layers.1" not in module_names(dense.config)
