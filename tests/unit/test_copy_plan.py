"""The weight sync's copy plan (rollout.ring_linear.copy_plan), in plain torch: the pieces of
every tensor-parallel slice are the slice, and the plan's copies put every checkpoint tensor
where the plugin's `load_weights` puts it (its per-tensor logic written out below: shard, then
the stacked expert rows or the parameter of the name), bit for bit, on an engine-shaped module
tree of the tiny preset (a linear and a softmax layer, stacked experts, tensor-parallel rank 1 of
2). A tensor that does not fit is refused by name before the plan exists."""

import pytest
import torch
from torch import nn

from models.ring_linear.moe import StackedMoE, SwiGLU, load_expert_weight
from models.ring_linear.presets import preset_config
from rollout.ring_linear.copy_plan import plan_copies
from rollout.ring_linear.tensor_parallel import local_config, shard, shard_pieces
from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM


@pytest.fixture(scope="module")
def config():
    return preset_config("tiny")  # 4 layers (1 and 3 softmax), dense layer 0, 8 experts + 1 shared


@pytest.fixture(scope="module")
def checkpoint(config):
    torch.manual_seed(0)
    model = BailingMoeLinearV2ForCausalLM(config)
    return {k: v.detach().clone() for k, v in model.checkpoint_state_dict().items()}


@pytest.mark.parametrize("size", [2, 4])
def test_shard_pieces_are_the_shard(config, checkpoint, size):
    for rank in range(size):
        for name, t in checkpoint.items():
            pieces = torch.cat([t.narrow(dim, start, length) for dim, start, length in
                                shard_pieces(name, tuple(t.shape), config, rank, size)],
                               dim=shard_pieces(name, tuple(t.shape), config, rank, size)[0][0])
            assert torch.equal(pieces, shard(name, t, config, rank, size)), name


def engine_like(config, size: int) -> nn.Module:
    """The plugin's module tree and parameter names for layers 0-2 of the tiny preset, rank-sized
    (layer 0 dense, layer 1 softmax + MoE, layer 2 linear + MoE); the rest as in the checkpoint."""
    H, KV, d, D = config.num_attention_heads // size, config.num_key_value_heads // size, config.head_dim, \
        config.hidden_size
    local = local_config(config, size)
    engine = nn.Module()
    engine.model = nn.Module()
    engine.model.word_embeddings = nn.Embedding(config.vocab_size, D)
    engine.model.norm = nn.Module()
    engine.model.norm.weight = nn.Parameter(torch.zeros(D))
    engine.lm_head = nn.Linear(D, config.vocab_size, bias=False)
    layers = []
    for i in range(3):
        layer = nn.Module()
        layer.input_layernorm, layer.post_attention_layernorm = nn.Module(), nn.Module()
        layer.input_layernorm.weight = nn.Parameter(torch.zeros(D))
        layer.post_attention_layernorm.weight = nn.Parameter(torch.zeros(D))
        layer.attention = attn = nn.Module()
        softmax = config.is_softmax_layer(i)
        attn.query_key_value = nn.Linear(D, (H + 2 * KV) * d if softmax else 3 * H * d, bias=False)
        attn.dense = nn.Linear(H * d, D, bias=False)
        attn.query_layernorm, attn.key_layernorm = nn.Module(), nn.Module()
        attn.query_layernorm.weight = nn.Parameter(torch.zeros(d))
        attn.key_layernorm.weight = nn.Parameter(torch.zeros(d))
        if not softmax:
            attn.g_proj = nn.Linear(D, H * d, bias=False)
            attn.g_norm = nn.Module()
            attn.g_norm.weight = nn.Parameter(torch.zeros(H * d))
        layer.mlp = StackedMoE(local) if config.is_moe_layer(i) else SwiGLU(D, local.intermediate_size)
        layers.append(layer)
    engine.model.layers = nn.ModuleList(layers)
    for p in engine.parameters():
        nn.init.zeros_(p)
    return engine


def sent(config, checkpoint):
    """The checkpoint's tensors of the engine's layers, every element nonzero."""
    gen = torch.Generator().manual_seed(1)
    return {k: v + 1 + torch.rand(v.shape, generator=gen) for k, v in checkpoint.items()
            if not k.startswith("model.layers.3.")}


def load_like_the_plugin(engine, tensors, config, rank, size):
    """The plugin's `load_weights`, one tensor at a time."""
    params = dict(engine.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            t = shard(name, t, config, rank, size)
            path, _, rest = name.partition(".mlp.")
            moe = engine.get_submodule(f"{path}.mlp") if rest else None
            slot = moe.checkpoint_slot(rest) if isinstance(moe, StackedMoE) else None
            if slot is not None:
                stack, e, start, end = slot
                load_expert_weight(params[f"{path}.mlp.{stack}"], t, e, start, end)
            else:
                params[name].copy_(t)


@pytest.mark.parametrize("rank,size", [(0, 1), (1, 2)])
def test_plan_copies_what_load_weights_loads(config, checkpoint, rank, size):
    tensors = sent(config, checkpoint)
    reference, direct = engine_like(config, size), engine_like(config, size)
    load_like_the_plugin(reference, tensors, config, rank, size)
    plan = plan_copies(direct, [(n, tuple(t.shape), t.dtype) for n, t in tensors.items()], config, rank, size)
    plan.copy(list(tensors.values()))
    for (name, want), got in zip(reference.named_parameters(), direct.parameters(), strict=True):
        assert torch.equal(want, got), name
        assert want.abs().sum() > 0, f"{name} got nothing"  # every parameter was written
    assert plan.still_valid()
    direct.lm_head.weight = nn.Parameter(torch.zeros_like(direct.lm_head.weight))
    assert not plan.still_valid()  # a replaced parameter makes the next sync plan again


def test_a_tensor_that_does_not_fit_is_refused_by_name(config, checkpoint):
    tensors = sent(config, checkpoint)
    specs = [(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    engine = engine_like(config, 1)
    with pytest.raises(ValueError, match=r"model\.layers\.2\.mlp\.bogus\.weight, which the Ring-linear engine"):
        plan_copies(engine, specs + [("model.layers.2.mlp.bogus.weight", (3,), torch.float32)], config)
    wrong = [(n, (s[0] + 1, *s[1:]) if n == "model.layers.1.attention.dense.weight" else s, dt) for n, s, dt in specs]
    with pytest.raises(ValueError, match=r"model\.layers\.1\.attention\.dense\.weight arrives as \[257, 256\]"):
        plan_copies(engine, wrong, config)
    gone = "model.layers.2.mlp.experts.5.up_proj.weight"
    with pytest.raises(ValueError, match=rf"1 of the engine's weights were not sent \({gone}\)"):
        plan_copies(engine, [s for s in specs if s[0] != gone], config)
    with pytest.raises(ValueError, match="model.norm.weight was sent twice"):
        plan_copies(engine, specs + [s for s in specs if s[0] == "model.norm.weight"], config)
    assert all(not p.any() for p in engine.parameters())  # nothing copied
