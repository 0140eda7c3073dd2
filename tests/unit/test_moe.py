"""models/ring_linear/moe.py: the trainer's grouped experts (MoE: stacked parameters, grouped GEMMs,
forward and backward) against the rollout's stacked-weight experts (StackedMoE, the custom op
``lockstep::stacked_experts``), the per-expert modules the trainer ran before
(benchmarks/gpu/per_expert_moe.py) and a float64 reference, on both of the rollout op's paths
(grouped GEMMs; every expert for small CPU batches)."""

from __future__ import annotations

import pytest
import torch

import kernels.moe as moe_module
from benchmarks.gpu.per_expert_moe import PerExpertMoE
from kernels.moe import CPU_MACS_PER_CALL, grouped_swiglu, stacked_experts
from models.ring_linear.moe import MoE, StackedMoE
from models.ring_linear.presets import preset_config

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def _moe_pair(dtype=torch.float32, seed=0, config=None):
    """A trainer MoE with random weights (and a non-zero expert bias) and a StackedMoE holding
    the same weights, loaded through the stacked layout's checkpoint mapping."""
    config = config or preset_config("tiny")
    torch.manual_seed(seed)
    moe = MoE(config).to(dtype)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape, dtype=p.dtype) * 0.1)
    stacked = StackedMoE(config).to(dtype)
    _load_like_the_engine(stacked, _checkpoint_state(moe))
    return config, moe, stacked


def _checkpoint_state(moe: MoE) -> dict:
    """A trainer MoE's weights under the checkpoint's names (one tensor per expert projection)."""
    state = {n: t for n, t in moe.state_dict().items() if not n.startswith("experts.")}
    for e in range(moe.cfg.num_experts):
        state.update({f"experts.{e}.{p}.weight": w for p, w in zip(PROJECTIONS, moe.experts.expert_weights(e))})
    return state


def _load_like_the_engine(stacked: StackedMoE, state: dict) -> None:
    """Checkpoint-named weights into a StackedMoE, through the checkpoint-name mapping and the
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


def test_trainer_moe_is_bitwise_the_rollout_stacked_moe():
    """The trainer's grouped experts and the rollout's stacked ones compute each expert's rows
    with the same grouped GEMMs and combine them in the same order: bitwise equal on CPU (fp32)
    wherever the rollout runs its grouped path; fp32 rounding where it runs every expert on
    every token (decode-sized batches)."""
    config, moe, stacked = _moe_pair()
    assert stacked.shared_stacked  # the preset's shared expert has the routed experts' width
    limit = _small_batch_limit(config)
    assert 8 <= limit < 200  # decode batches take the every-expert path, prefills the grouped one
    for tokens in (1, 8, limit, limit + 1, 200):
        x = torch.randn(tokens, config.hidden_size)
        with torch.no_grad():
            want, got = moe(x), stacked(x)
        if tokens > limit:
            assert torch.equal(got, want), tokens
        else:  # other GEMM shapes: fp32 rounding only
            assert (got - want).abs().max().item() <= 1e-6 * want.abs().max().item(), tokens


def _outputs_and_grads(module, x, probe):
    x = x.clone().requires_grad_(True)
    out = module(x)
    (out * probe).sum().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_gradients_equal_the_per_expert_modules(dtype):
    """Forward and every gradient of the stacked layer on CPU against the per-expert modules the
    trainer ran before, holding the same weights: all bitwise, the input gradient included (on
    CPU the layer issues the modules' own GEMMs: gate, up and down separately), the unused
    experts' gradients exactly zero."""
    config, moe, _ = _moe_pair(dtype, seed=3)
    with torch.no_grad():
        moe.gate.expert_bias[5] = -100.0  # never selected: an empty group in the grouped GEMMs
    per_expert = PerExpertMoE.from_grouped(moe)
    x = torch.randn(150, config.hidden_size)
    probe = torch.randn(150, config.hidden_size)
    out, dx, grads = _outputs_and_grads(moe, x, probe)
    out_ref, dx_ref, grads_ref = _outputs_and_grads(per_expert, x, probe)
    assert torch.equal(out, out_ref) and torch.equal(dx, dx_ref)
    for name in ("gate.weight", *(f"shared_experts.{p}.weight" for p in PROJECTIONS)):
        assert torch.equal(grads[name], grads_ref[name]), name
    idx, _ = moe.gate(x.to(dtype))
    used = set(idx.flatten().tolist())
    for e in range(config.num_experts):
        for p, grad in zip(PROJECTIONS, [*grads["experts.gate_up_proj"][e].split(config.moe_intermediate_size),
                                         grads["experts.down_proj"][e]]):
            want = grads_ref.get(f"experts.{e}.{p}.weight")
            assert torch.equal(grad, want if want is not None else torch.zeros_like(grad)), (e, p)
        assert (e in used) == bool(grads["experts.down_proj"][e].abs().sum() > 0), e
    assert 5 not in used and len(used) > config.num_experts // 2


def test_grouped_swiglu_explicit_backward_against_the_per_expert_loop():
    """:func:`grouped_swiglu`'s grouped path (``torch._grouped_mm``, which CPU has too, and the
    explicit backward the trainer runs on CUDA) against autograd through the per-expert loop of
    the same function (fp64, unaligned for the grouped GEMM): outputs and all three gradients to
    fp32 rounding, an empty group's weight gradients exactly zero."""
    torch.manual_seed(6)
    E, D, inter = 6, 64, 32
    counts = torch.tensor([5, 0, 17, 1, 40, 9])
    rows = torch.randn(int(counts.sum()), D, dtype=torch.float64)
    w13 = torch.randn(E, 2 * inter, D, dtype=torch.float64) * 0.1
    w2 = torch.randn(E, D, inter, dtype=torch.float64) * 0.1
    probe = torch.randn(rows.shape, dtype=torch.float64)
    results = []
    for dtype in (torch.float64, torch.float32):
        leaves = [t.to(dtype).detach().requires_grad_(True) for t in (rows, w13, w2)]
        out = grouped_swiglu(leaves[0], counts, leaves[1], leaves[2])
        (out * probe.to(dtype)).sum().backward()
        results.append([out.detach(), *(t.grad for t in leaves)])
    for got, want in zip(results[1], results[0]):
        assert ((got.double() - want).norm() / want.norm()).item() < 1e-6
    assert not results[1][2][1].any() and not results[1][3][1].any()  # expert 1 has no rows


def test_grouped_gradients_against_float64():
    """fp32 stacked layer vs the same weights in float64: outputs and gradients to fp32
    rounding."""
    config, moe64, _ = _moe_pair(torch.float64, seed=4)
    moe32 = MoE(config)
    moe32.load_state_dict({k: v.float() for k, v in moe64.state_dict().items()})
    x = torch.randn(120, config.hidden_size, dtype=torch.float64)
    probe = torch.randn(120, config.hidden_size, dtype=torch.float64)
    out64, dx64, grads64 = _outputs_and_grads(moe64, x, probe)
    out32, dx32, grads32 = _outputs_and_grads(moe32, x.float(), probe.float())
    assert set(grads32) == set(grads64)

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    assert rel(out32, out64) < 1e-6 and rel(dx32, dx64) < 1e-5
    for name, g in grads64.items():
        assert rel(grads32[name], g) < 1e-5, name


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU")])])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_stacked_experts_are_bitwise_the_fp8_per_expert_modules(dtype, device):
    """A recipe's FP8 switch in both layouts (``swap_linears_to_fp8``): the rollout's stacked
    experts (the op ``lockstep::stacked_experts_fp8``: grouped FP8 GEMMs) give the trainer's FP8
    expert modules' bits (per-expert FP8 GEMMs), at any batch size, and differ from the
    unquantized layer by FP8's rounding only."""
    from kernels.fp8 import FP8Linear, fp8_projection_count, swap_linears_to_fp8

    config, moe, stacked = _moe_pair(dtype)
    moe, stacked = moe.to(device), stacked.to(device)
    x = torch.randn(41, config.hidden_size, device=device)
    with torch.no_grad():
        plain = moe(x)
    per_expert = PerExpertMoE.from_grouped(moe)
    trainer_names = swap_linears_to_fp8(moe)
    assert trainer_names == ["experts", "shared_experts.gate_proj", "shared_experts.up_proj", "shared_experts.down_proj"]
    assert isinstance(moe.shared_experts.gate_proj, FP8Linear)
    assert swap_linears_to_fp8(stacked) == [""]  # the stacks switch themselves (use_fp8)
    assert stacked.fp8 == (False, False)
    assert fp8_projection_count(moe) == fp8_projection_count(stacked) == 3 * (config.num_experts + 1)
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
    # training: the grouped layer's FP8 gradients are the per-expert FP8 modules' (same GEMMs)
    swap_linears_to_fp8(per_expert)
    probe = torch.randn(41, config.hidden_size, device=device)
    out, dx, grads = _outputs_and_grads(moe, x, probe)
    out_ref, dx_ref, grads_ref = _outputs_and_grads(per_expert, x, probe)
    assert torch.equal(out, out_ref) and torch.equal(dx, dx_ref)  # FP8: gate and up are separate GEMMs
    for e in range(config.num_experts):
        for p, grad in zip(PROJECTIONS, [*grads["experts.gate_up_proj"][e].split(config.moe_intermediate_size),
                                         grads["experts.down_proj"][e]]):
            want = grads_ref.get(f"experts.{e}.{p}.weight")
            assert torch.equal(grad, want if want is not None else torch.zeros_like(grad)), (e, p)


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
        expert = PerExpertMoE.from_grouped(moe).experts
        routed = sum(w[:, j:j + 1] * expert[e](x) for j, e in sorted(enumerate([6, 1]), key=lambda t: t[1]))
        want = routed + moe.shared_experts(x)
    assert (got - want).abs().max().item() <= 1e-6 * want.abs().max().item()


@pytest.mark.parametrize("proj", ["gate_proj", "up_proj", "down_proj"])
def test_expert_slot_places_each_projection(proj):
    config, moe, stacked = _moe_pair()
    weights = {5: dict(zip(PROJECTIONS, moe.experts.expert_weights(5))),
               None: {p: getattr(moe.shared_experts, p).weight for p in PROJECTIONS}}
    for expert in (5, None):
        stack, e, start, end = stacked.expert_slot(expert, proj)
        assert torch.equal(getattr(stacked, stack)[e, start:end], weights[expert][proj])
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
    config, moe, stacked = _moe_pair(config=preset_config("tiny", moe_intermediate_size=86,
                                                          moe_shared_expert_intermediate_size=86))
    monkeypatch.setattr(moe_module, "_LOOP_LOGGED", set())  # logged once per process: reset it
    x = torch.randn(300, config.hidden_size)  # above the every-expert limit: the grouped path's case
    with caplog.at_level("WARNING", logger="kernels.moe"), torch.no_grad():
        got, want = stacked(x), moe(x)
    assert (got - want).abs().max().item() <= 1e-6 * want.abs().max().item()
    assert "no grouped GEMM for torch.float32 on cpu with widths 256, 86" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_bf16_grouped_layer_against_the_per_expert_modules():
    """On CUDA in bf16 (``torch._grouped_mm``, no per-expert call): outputs and gradients against
    the per-expert modules within bf16 rounding, with an empty expert and per-expert row counts
    that are multiples of nothing; the rollout's stacked layer gives the trainer's routed rows."""
    config, moe, stacked = _moe_pair(torch.bfloat16, seed=5)
    with torch.no_grad():
        moe.gate.expert_bias[2] = -100.0  # an empty group, forward and backward
    _load_like_the_engine(stacked, _checkpoint_state(moe))
    moe, stacked = moe.cuda(), stacked.cuda()
    per_expert = PerExpertMoE.from_grouped(moe)
    x = torch.randn(333, config.hidden_size, device="cuda")
    probe = torch.randn(333, config.hidden_size, device="cuda")
    out, dx, grads = _outputs_and_grads(moe, x, probe)
    out_ref, dx_ref, grads_ref = _outputs_and_grads(per_expert, x, probe)

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    assert rel(out, out_ref) < 1e-2 and rel(dx, dx_ref) < 1e-2
    for e in range(config.num_experts):
        for p, grad in zip(PROJECTIONS, [*grads["experts.gate_up_proj"][e].split(config.moe_intermediate_size),
                                         grads["experts.down_proj"][e]]):
            want = grads_ref.get(f"experts.{e}.{p}.weight")
            if e == 2:
                assert not grad.any() and (want is None or not want.any())
            elif want is None or not want.any():  # no token chose this expert (seen on the H100)
                assert not grad.any(), (e, p)
            else:
                assert rel(grad, want) < 1e-2, (e, p)
    with torch.no_grad():
        assert rel(stacked(x), out) < 1e-2
