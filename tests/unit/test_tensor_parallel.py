"""Tensor-parallel sharding of the Ring-linear rollout model (rollout.ring_linear.tensor_parallel),
in plain torch: every rank's slice of every checkpoint tensor, and each layer rebuilt per rank
from its slices (rank-sized modules of the trainer's own classes, the decay slopes sliced as the
plugin slices them) whose partial outputs, summed over the ranks (the plugin's all-reduce),
equal the unsharded layer's output."""

import copy

import pytest
import torch

from models.ring_linear.moe import StackedMoE, SwiGLU
from models.ring_linear.presets import preset_config
from rollout.ring_linear.tensor_parallel import check_tensor_parallel, head_slice, kv_head_slice, local_config, shard
from trainer.ring_linear.modeling import LinearAttention, SoftmaxAttention
from kernels.rope import rope_cos_sin

# fp64 so that the only difference between the sum of the ranks' partial outputs and the whole
# layer is the order of a few sums (~1e-15), far below any slicing mistake
DT = torch.float64
TOL = 1e-10


@pytest.fixture(scope="module")
def config():
    return preset_config("tiny")  # H=4 heads of 64, KV=2, 4 norm groups, FFN 512, 8 experts of 64 + 1 shared


def rank_config(config, size: int):
    """The model config of one rank's modules: its heads, norm groups and MLP widths."""
    local = copy.copy(local_config(config, size))
    local.num_attention_heads = config.num_attention_heads // size
    local.num_key_value_heads = kv_head_slice(config.num_key_value_heads, 0, size).stop - \
        kv_head_slice(config.num_key_value_heads, 0, size).start
    local.group_norm_size = config.group_norm_size // size
    return local


def load_sharded(module, full_state: dict, prefix: str, config, rank: int, size: int):
    """Loads each tensor of ``full_state`` (names relative to ``prefix``) cut to rank's slice."""
    sharded = {k: shard(f"{prefix}.{k}", v, config, rank, size) for k, v in full_state.items()}
    module.load_state_dict(sharded, strict=True)
    return module.to(DT)


def inputs(config, tokens=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, tokens, config.hidden_size, generator=g, dtype=DT)
    cos, sin = rope_cos_sin(torch.arange(tokens), config.rotary_dim, config.rope_theta, DT)
    return x, cos, sin


@pytest.mark.parametrize("size", [2, 4])
def test_every_checkpoint_tensor_splits_into_its_ranks_slices(config, size):
    """Concatenating the ranks' slices gives back each tensor (fused q|k|v: block by block,
    by heads; KV heads replicated when fewer than the ranks)."""
    torch.manual_seed(0)
    H, KV, d, D = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.hidden_size
    linear, softmax = 0, 1  # tiny: layer 0 linear attention, layer 1 softmax
    assert not config.is_softmax_layer(linear) and config.is_softmax_layer(softmax)
    qkv = torch.randn(3 * H * d, D)
    parts = [shard(f"model.layers.{linear}.attention.query_key_value.weight", qkv, config, r, size)
             for r in range(size)]
    for block in range(3):  # q, k, v: each rank's rows of each block are its heads' rows
        rows = torch.cat([p.view(3, -1, D)[block] for p in parts])
        assert torch.equal(rows, qkv.view(3, -1, D)[block])
    sm = torch.randn((H + 2 * KV) * d, D)
    q, k, v = sm.split([H * d, KV * d, KV * d])
    local_kv = max(1, KV // size)
    parts = [shard(f"model.layers.{softmax}.attention.query_key_value.weight", sm, config, r, size)
             for r in range(size)]
    assert torch.equal(torch.cat([p[:H // size * d] for p in parts]), q)
    for r, p in enumerate(parts):
        kv = kv_head_slice(KV, r, size)
        assert torch.equal(p[H // size * d:][:local_kv * d], k[kv.start * d:kv.stop * d])
        assert torch.equal(p[H // size * d:][local_kv * d:], v[kv.start * d:kv.stop * d])
    if size > KV:  # replicated: each KV head on size/KV ranks, every query head reads its own
        group = H // KV
        for r in range(size):
            heads = head_slice(H, r, size)
            assert {h // group for h in range(heads.start, heads.stop)} == {kv_head_slice(KV, r, size).start}
    splits = {  # name → (dimension split, or None: replicated)
        "attention.g_proj.weight": 0, "attention.g_norm.weight": 0, "attention.dense.weight": 1,
        "attention.query_layernorm.weight": None, "mlp.gate_proj.weight": 0, "mlp.up_proj.weight": 0,
        "mlp.down_proj.weight": 1,
    }
    for name, dim in splits.items():
        full = torch.randn(config.intermediate_size if "mlp" in name and "down" not in name else D,
                           config.intermediate_size if "down" in name else H * d) if "norm" not in name \
            else torch.randn(H * d if "g_norm" in name else d)
        got = [shard(f"model.layers.{linear}.{name}", full, config, r, size) for r in range(size)]
        assert torch.equal(torch.cat(got, dim) if dim is not None else got[0], full), name
        assert dim is not None or all(g is full for g in got), name
    moe = 2  # experts: each rank a slice of every expert's width; the router replicated
    up = torch.randn(config.moe_intermediate_size, D)
    down = torch.randn(D, config.moe_intermediate_size)
    assert torch.equal(torch.cat([shard(f"model.layers.{moe}.mlp.experts.5.up_proj.weight", up, config, r, size)
                                  for r in range(size)]), up)
    assert torch.equal(torch.cat([shard(f"model.layers.{moe}.mlp.shared_experts.down_proj.weight", down, config,
                                        r, size) for r in range(size)], 1), down)
    for name in ("mlp.gate.weight", "mlp.gate.expert_bias"):
        router = torch.randn(config.num_experts, D)
        assert shard(f"model.layers.{moe}.{name}", router, config, 1, size) is router
    for name in ("model.word_embeddings.weight", "lm_head.weight", "model.norm.weight"):
        table = torch.randn(config.vocab_size, D)
        assert shard(name, table, config, size - 1, size) is table


@pytest.mark.parametrize("size", [2, 4])
def test_linear_attention_ranks_sum_to_the_layer(config, size):
    """Each rank: its heads' q|k|v, decay slopes, gate and output-norm groups, its columns of
    dense; the partial outputs summed = the trainer's whole layer."""
    torch.manual_seed(1)
    full = LinearAttention(config, layer_idx=0).to(DT)
    x, cos, sin = inputs(config)
    want = full(x, cos, sin)
    local = rank_config(config, size)
    total = torch.zeros_like(want)
    for r in range(size):
        part = load_sharded(LinearAttention(local, layer_idx=0), full.state_dict(), "model.layers.0.attention",
                            config, r, size)
        # the plugin's decay(): the model's H slopes, this rank's heads
        part._decay[x.device] = full.decay(x.device)[head_slice(config.num_attention_heads, r, size)]
        total += part(x, cos, sin)
    assert (total - want).abs().max().item() < TOL


def test_linear_attention_wrong_decay_slice_is_caught(config):
    """The check above fails when a rank uses the first heads' slopes instead of its own."""
    torch.manual_seed(1)
    full = LinearAttention(config, layer_idx=0).to(DT)
    x, cos, sin = inputs(config)
    want, size = full(x, cos, sin), 2
    local, total = rank_config(config, size), 0
    for r in range(size):
        part = load_sharded(LinearAttention(local, layer_idx=0), full.state_dict(), "model.layers.0.attention",
                            config, r, size)
        part._decay[x.device] = full.decay(x.device)[head_slice(config.num_attention_heads, 0, size)]
        total = total + part(x, cos, sin)
    assert (total - want).abs().max().item() > 1e-4


@pytest.mark.parametrize("size", [2, 4])
def test_softmax_attention_ranks_sum_to_the_layer(config, size):
    """GQA: query heads split, KV heads split (2 ranks) or replicated (4 ranks, 2 KV heads)."""
    torch.manual_seed(2)
    full = SoftmaxAttention(config, layer_idx=1).to(DT)
    x, cos, sin = inputs(config)
    want = full(x, cos, sin)
    local = rank_config(config, size)
    total = sum(load_sharded(SoftmaxAttention(local, layer_idx=1), full.state_dict(), "model.layers.1.attention",
                             config, r, size)(x, cos, sin) for r in range(size))
    assert (total - want).abs().max().item() < TOL


@pytest.mark.parametrize("size", [2, 4])
def test_mlps_and_experts_ranks_sum_to_the_layer(config, size):
    """The dense MLP and the stacked MoE (the rollout's layout, loaded through its checkpoint
    slots with each rank's slice of every expert): same routing on every rank, partial outputs
    summed = the whole layer."""
    torch.manual_seed(3)
    x = inputs(config, tokens=17)[0][0]
    dense = SwiGLU(config.hidden_size, config.intermediate_size).to(DT)
    local = local_config(config, size)
    total = sum(load_sharded(SwiGLU(local.hidden_size, local.intermediate_size), dense.state_dict(),
                             "model.layers.0.mlp", config, r, size)(x) for r in range(size))
    assert (total - dense(x)).abs().max().item() < TOL

    full = StackedMoE(config).to(DT)
    with torch.no_grad():
        for p in full.parameters():
            p.normal_(0, 0.1)
    checkpoint = {}  # the checkpoint's per-expert tensors, cut from the full stacks
    for name in full.checkpoint_names("model.layers.2.mlp"):
        stack, e, start, end = full.checkpoint_slot(name.removeprefix("model.layers.2.mlp."))
        checkpoint[name] = getattr(full, stack)[e, start:end].clone()
    checkpoint["model.layers.2.mlp.gate.weight"] = full.gate.weight.detach().clone()
    checkpoint["model.layers.2.mlp.gate.expert_bias"] = full.gate.expert_bias.detach().clone()
    total = torch.zeros(x.shape, dtype=DT)
    for r in range(size):
        part = StackedMoE(local).to(DT)
        for name, tensor in checkpoint.items():
            piece = shard(name, tensor, config, r, size)
            slot = part.checkpoint_slot(name.removeprefix("model.layers.2.mlp."))
            if slot is None:
                getattr(part.gate, name.rsplit(".", 1)[1]).data.copy_(piece)
            else:
                stack, e, start, end = slot
                getattr(part, stack).data[e, start:end].copy_(piece)
        total += part(x)
    assert (total - full(x)).abs().max().item() < TOL


def test_unsplittable_models_are_refused_in_one_line(config):
    check_tensor_parallel(config, 2)
    check_tensor_parallel(config, 4)
    with pytest.raises(ValueError, match=r"num_attention_heads=4 must be divisible by 3"):
        check_tensor_parallel(config, 3)
    with pytest.raises(ValueError, match=r"num_attention_heads=4 must be divisible by 8"):
        check_tensor_parallel(config, 8)
    odd = copy.copy(config)
    odd.group_norm_size = 2
    with pytest.raises(ValueError, match=r"group_norm_size=2 must be divisible by 4"):
        check_tensor_parallel(odd, 4)


def test_fp8_needs_whole_quantization_tiles_per_rank(config):
    """model.fp8 quantizes in 128-wide tiles: mini's slices at 2 ranks are whole tiles (heads
    16×128 → 1024, experts 512 → 256); tiny's 64-wide experts are not, and are refused."""
    from kernels.fp8.format import BLOCK
    from rollout.ring_linear.tensor_parallel import check_fp8_blocks

    check_fp8_blocks(preset_config("mini"), 2, BLOCK)
    check_fp8_blocks(config, 1, BLOCK)
    with pytest.raises(ValueError, match=r"model.fp8 with rollout.tensor_parallel_size=2: each rank would hold 32 of "
                                         r"moe_intermediate_size=64, not a multiple of the FP8 block 128"):
        check_fp8_blocks(config, 2, BLOCK)
