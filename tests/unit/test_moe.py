"""models/ring_linear/moe.py: the rollout's stacked-weight experts (StackedMoE, the custom op
``lockstep::stacked_experts``) against the trainer's per-expert modules (MoE) and a float64
reference, on both of the op's paths (grouped GEMMs; every expert for small CPU batches)."""

from __future__ import annotations

import pytest
import torch

import kernels.moe as moe_module
from kernels.moe import CPU_MACS_PER_CALL, stacked_experts
from models.ring_linear.moe import MoE, StackedMoE
from models.ring_linear.presets import preset_config


def _moe_pair(dtype=torch.float32, seed=0):
    """A trainer MoE with random weights (and a non-zero expert bias) and a StackedMoE holding
    the same weights, loaded through the stacked layout's checkpoint mapping."""
    config = preset_config("tiny")
    torch.manual_seed(seed)
    moe = MoE(config).to(dtype)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape, dtype=p.dtype) * 0.1)
    stacked = StackedMoE(config).to(dtype)
    assert stacked.shared_stacked  # the preset's shared expert has the routed experts' width
    _load_like_the_engine(stacked, moe.state_dict())
    return config, moe, stacked


def _load_like_the_engine(stacked: StackedMoE, state: dict) -> None:
    """A trainer MoE's state dict into a StackedMoE, through the checkpoint-name mapping and the
    stacks' loader hook, as the rollout model's load_weights does."""
    for name, tensor in state.items():
        slot = stacked.checkpoint_slot(name)
        if slot is None:
            stacked.get_parameter(name).data.copy_(tensor)
        else:
            stack, expert, start, end = slot
            param = getattr(stacked, stack)
            param.weight_loader(param, tensor, expert, start, end)


def _small_batch_limit(config) -> int:
    """The largest token count that runs the every-expert path on CPU (shared expert stacked)."""
    E, k = config.num_experts, config.num_experts_per_tok
    per_token = (E - k) * 3 * config.hidden_size * config.moe_intermediate_size
    return 2 * (E + 1) * CPU_MACS_PER_CALL // per_token


def test_stacked_moe_matches_per_expert_modules_on_both_paths():
    config, moe, stacked = _moe_pair()
    limit = _small_batch_limit(config)
    assert 8 <= limit < 200  # decode batches take the every-expert path, prefills the grouped one
    for tokens in (1, 8, limit, limit + 1, 200):
        x = torch.randn(tokens, config.hidden_size)
        with torch.no_grad():
            want, got = moe(x), stacked(x)
        if tokens > limit:  # grouped GEMMs: per-expert matmuls, bitwise the trainer's
            assert torch.equal(got, want), tokens
        else:  # other GEMM shapes: fp32 rounding only
            assert (got - want).abs().max().item() <= 1e-6 * want.abs().max().item(), tokens


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU")])])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_stacked_experts_are_bitwise_the_fp8_per_expert_modules(dtype, device):
    """A recipe's FP8 switch in both layouts (``swap_linears_to_fp8``): the rollout's stacked
    experts (the op ``lockstep::stacked_experts_fp8``: grouped FP8 GEMMs) give the trainer's FP8
    expert modules' bits (per-expert FP8 GEMMs), at any batch size, and differ from the
    unquantized layer by FP8's rounding only."""
    from kernels.fp8 import FP8Linear, swap_linears_to_fp8

    config, moe, stacked = _moe_pair(dtype)
    moe, stacked = moe.to(device), stacked.to(device)
    x = torch.randn(41, config.hidden_size, device=device)
    with torch.no_grad():
        plain = moe(x)
    trainer_names = swap_linears_to_fp8(moe)
    assert len(trainer_names) == 3 * (config.num_experts + 1)  # every expert's projections, not the router
    assert all(isinstance(m, FP8Linear) for m in moe.experts[0].children())
    assert swap_linears_to_fp8(stacked) == [""]  # the stacks switch themselves (use_fp8)
    assert stacked.fp8 == (False, False)
    with torch.no_grad():
        want = moe(x)
        for rows in (slice(None), slice(0, 1), slice(3, 11)):  # a decode-sized batch too
            assert torch.equal(stacked(x[rows]), moe(x[rows]))
    err = ((want - plain).norm() / plain.norm()).item()
    assert 1e-4 < err < 0.1, err  # e4m3 has a 3-bit mantissa: ~2-4% relative error, never exact
    stacked.quantize_weight_once()  # the engine's per-load quantization: the same bits
    assert stacked.fp8_weights[0].shape == (config.num_experts + 1, config.moe_intermediate_size, config.hidden_size)
    with torch.no_grad():
        assert torch.equal(stacked(x), want)


def test_stacked_experts_against_float64():
    """fp32 stacked experts vs the same weights in float64 (per-expert loop)."""
    config, moe64, stacked64 = _moe_pair(torch.float64, seed=1)
    stacked32 = StackedMoE(config)
    stacked32.load_state_dict({k: v.float() for k, v in stacked64.state_dict().items()})
    for tokens in (3, 150):
        x = torch.randn(tokens, config.hidden_size, dtype=torch.float64)
        with torch.no_grad():
            ref = moe64(x)
            assert torch.allclose(stacked64(x), ref, rtol=0, atol=1e-12)
            err = (stacked32(x.float()).double() - ref).abs().max().item()
        assert err <= 1e-5 * ref.abs().max().item(), (tokens, err)


def test_compiled_stacked_moe_chooses_its_path_per_call():
    """Compiled with a dynamic batch (as the rollout engine compiles the model), decode-sized
    batches run every expert inside the compiled graph and larger ones the opaque grouped-GEMM
    op, chosen per call (``torch.cond``) by one compiled graph."""
    from torch.profiler import ProfilerActivity, profile

    config, _, stacked = _moe_pair()
    limit = _small_batch_limit(config)
    compiled = torch.compile(stacked, fullgraph=True, dynamic=True)
    with torch.no_grad():
        compiled(torch.randn(3, config.hidden_size))  # compiles (tracing runs both branches)
    for tokens in (8, limit + 1):
        x = torch.randn(tokens, config.hidden_size)
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            got = compiled(x)
        want = stacked(x)
        op_ran = any(e.key == "lockstep::stacked_experts" for e in prof.key_averages())
        assert op_ran == (tokens > limit), tokens
        if op_ran:
            assert torch.equal(got, want)
        else:  # inductor fuses the elementwise ops around the GEMMs: fp32 rounding only
            assert (got - want).abs().max().item() <= 1e-6 * want.abs().max().item()


def test_stacked_experts_empty_batch_and_unused_experts():
    config, moe, stacked = _moe_pair()
    E, D = config.num_experts, config.hidden_size
    w13, w2 = stacked.experts_w13, stacked.experts_w2
    assert stacked_experts(torch.randn(0, D), torch.zeros(0, 2, dtype=torch.long),
                           torch.zeros(0, 2), w13, w2, True).shape == (0, D)
    # 150 tokens all routed to experts 1 and 6: the grouped path with six empty groups
    x = torch.randn(150, D)
    idx = torch.tensor([[6, 1]]).repeat(150, 1)
    w = torch.rand(150, 2)
    with torch.no_grad():
        got = stacked_experts(x, idx, w, w13, w2, True)
        routed = sum(w[:, j:j + 1] * moe.experts[e](x) for j, e in sorted(enumerate([6, 1]), key=lambda t: t[1]))
        want = routed + moe.shared_experts(x)
    assert (got - want).abs().max().item() <= 1e-6 * want.abs().max().item()


@pytest.mark.parametrize("proj", ["gate_proj", "up_proj", "down_proj"])
def test_expert_slot_places_each_projection(proj):
    config, moe, stacked = _moe_pair()
    for expert, module in ((5, moe.experts[5]), (None, moe.shared_experts)):
        stack, e, start, end = stacked.expert_slot(expert, proj)
        assert torch.equal(getattr(stacked, stack)[e, start:end], getattr(module, proj).weight)
    names = stacked.checkpoint_names("m")
    assert len(names) == 3 * (config.num_experts + 1) and "m.shared_experts.down_proj.weight" in names
    assert {stacked.checkpoint_slot(n.removeprefix("m.")) for n in names} == {
        stacked.expert_slot(e, p) for e in [*range(config.num_experts), None] for p in ("gate_proj", "up_proj", "down_proj")}
    for other in ("gate.weight", "gate.expert_bias", "experts.x.gate_proj.weight", "experts.1.gate_proj.bias",
                  f"experts.{config.num_experts}.up_proj.weight"):
        assert stacked.checkpoint_slot(other) is None


def test_unequal_shared_width_keeps_a_separate_shared_expert():
    config = preset_config("tiny", moe_shared_expert_intermediate_size=96)
    stacked = StackedMoE(config)
    assert not stacked.shared_stacked and stacked.shared_experts is not None
    assert stacked.experts_w13.shape[0] == config.num_experts
    assert stacked.checkpoint_slot("shared_experts.up_proj.weight") is None  # its own module's name


def test_unaligned_expert_width_runs_the_per_expert_loop(caplog, monkeypatch):
    """_grouped_mm needs 16-byte-aligned rows: an expert width of 86 fp32 (the demo model's) must
    still work, through the per-expert loop, and say so."""
    config = preset_config("tiny", moe_intermediate_size=86, moe_shared_expert_intermediate_size=86)
    torch.manual_seed(0)
    moe = MoE(config)
    stacked = StackedMoE(config)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape) * 0.1)
    _load_like_the_engine(stacked, moe.state_dict())
    monkeypatch.setattr(moe_module, "_LOOP_LOGGED", set())  # logged once per process: reset it
    x = torch.randn(300, config.hidden_size)  # above the every-expert limit: the grouped path's case
    with caplog.at_level("WARNING", logger="kernels.moe"), torch.no_grad():
        got, want = stacked(x), moe(x)
    assert (got - want).abs().max().item() <= 1e-6 * want.abs().max().item()
    assert "no grouped GEMM for torch.float32 on cpu with widths 256, 86" in caplog.text
