"""Ring-linear training model (trainer/ring_linear) and its definition (models/ring_linear): parity
with the float64 reference, padding, gradients, gradient checkpointing, checkpoint round trip,
strict loading, config validation, preset sizes.  CPU, tiny preset."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

import trainer.ring_linear  # noqa: F401  (registers the model type with transformers)
from kernels.moe import route
from models.ring_linear.config import BailingMoeLinearV2Config
from models.ring_linear.moe import GroupedExperts
from models.ring_linear.presets import PRESETS, parameter_count, preset_config
from models.ring_linear.reference import reference_logits
from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM
from trainer.ring_linear.random_checkpoint import build_random_checkpoint
from transformers.core_model_loading import revert_weight_conversion


def _perturbed(model: BailingMoeLinearV2ForCausalLM, seed: int = 1) -> BailingMoeLinearV2ForCausalLM:
    """Norm weights away from 1 and a non-zero expert bias, so the test sees them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("expert_bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
    return model


def _tiny(seed: int = 0, **overrides) -> BailingMoeLinearV2ForCausalLM:
    torch.manual_seed(seed)
    return _perturbed(BailingMoeLinearV2ForCausalLM(preset_config("tiny", **overrides))).eval()


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_random_checkpoint(tmp_path_factory.mktemp("ring") / "tiny", max_shard_size="1MB")


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


# ------------------------------------------------------------------------------------------
# Parity with the plain float64 forward


def test_model_matches_float64_reference_across_a_chunk_boundary(tiny):
    tokens = torch.randint(0, tiny.config.vocab_size, (1, 67), generator=torch.Generator().manual_seed(3))
    ref = reference_logits(tiny.checkpoint_state_dict(), tiny.config, tokens[0].tolist())
    with torch.no_grad():
        fp32 = tiny(tokens).logits[0]
        m64 = BailingMoeLinearV2ForCausalLM(tiny.config).double().eval()
        m64.load_state_dict(tiny.state_dict())
        fp64 = m64(tokens).logits[0]
    assert fp32.dtype == torch.float32
    assert _rel_err(fp32, ref) < 1e-5
    assert _rel_err(fp64, ref) < 1e-10  # same math in float64: only rounding differs


@pytest.mark.parametrize("offset", [0, 1])
def test_both_decay_layer_offsets_match_the_reference(offset):
    model = _tiny(seed=5, linear_decay_layer_offset=offset)
    tokens = torch.randint(0, model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = model(tokens).logits[0]
        other = BailingMoeLinearV2ForCausalLM(preset_config("tiny", linear_decay_layer_offset=1 - offset)).eval()
        other.load_state_dict(model.state_dict())
        out_other = other(tokens).logits[0]
    assert _rel_err(out, reference_logits(model.checkpoint_state_dict(), model.config, tokens[0].tolist())) < 1e-5
    assert _rel_err(out_other, out) > 1e-4  # the field changes the model


def test_decay_follows_the_layer_offset():
    from kernels.linear_attention import alibi_slopes

    model = _tiny()
    layer0 = model.model.layers[0].attention
    L = model.config.num_hidden_layers
    expect = -alibi_slopes(4).double() * (1 - (0 - 1) / (L - 1) + 1e-5)  # offset 1: the HF code's l - 1
    assert torch.allclose(layer0.decay(torch.device("cpu")).double(), expect, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# Router


def test_router_group_limited_topk_bias_selects_unbiased_scores_weigh():
    # 8 experts in 4 groups of 2; keep 2 groups; top-2.
    logits = torch.tensor([[3.0, 2.9, 0.0, 0.0, 1.0, 1.0, -1.0, 2.0]], dtype=torch.float64)
    bias = torch.zeros(8, dtype=torch.float64)
    idx, w = route(logits, bias, top_k=2, n_group=4, topk_group=2, norm_topk_prob=True,
                   routed_scaling_factor=2.5)
    s = torch.sigmoid(logits[0])
    # group scores (top-2 sums): g0 = s0+s1, g1 = 2 s(0), g2 = 2 s(1), g3 = s(-1)+s(2): keep g0, g2
    assert idx.tolist() == [[0, 1]]
    assert torch.allclose(w[0], 2.5 * s[[0, 1]] / s[[0, 1]].sum())
    # A bias on expert 7 moves group 3 in and expert 7 into the top-2; its weight stays unbiased.
    bias[7] = 5.0
    idx, w = route(logits, bias, top_k=2, n_group=4, topk_group=2, norm_topk_prob=True,
                   routed_scaling_factor=1.0)
    assert idx.tolist() == [[7, 0]]
    assert torch.allclose(w[0], s[[7, 0]] / s[[7, 0]].sum())
    # Ties go to the lower expert index (groups and experts).
    idx, _ = route(torch.zeros(1, 8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64),
                   top_k=3, n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=1.0)
    assert idx.tolist() == [[0, 1, 2]]


# ------------------------------------------------------------------------------------------
# Padding, gradients, checkpointing


def test_right_padding_does_not_change_a_sequences_logits(tiny):
    g = torch.Generator().manual_seed(7)
    lengths = [70, 23, 5]
    seqs = [torch.randint(0, tiny.config.vocab_size, (n,), generator=g) for n in lengths]
    ids = torch.zeros(len(seqs), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, : len(s)], mask[b, : len(s)] = s, 1
    with torch.no_grad():
        batched = tiny(ids, attention_mask=mask).logits
        for b, s in enumerate(seqs):
            alone = tiny(s[None]).logits[0]
            assert _rel_err(batched[b, : len(s)], alone) < 1e-5
        with pytest.raises(ValueError, match="right-padded"):
            tiny(ids, attention_mask=mask.flip(1))


def _loss_and_grads(model, ids, mask):
    from trainer.logprobs import pack, token_logprobs, use_fp32_lm_head

    use_fp32_lm_head(model)  # the trainer's path: decoder → gather → fp32 log-prob head
    model.zero_grad(set_to_none=True)
    batch = pack([r[: len(r) // 2].tolist() for r in ids], [r[len(r) // 2:].tolist() for r in ids])
    logp, _ = token_logprobs(model, batch)
    loss = -(logp * batch.completion_mask).sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradients_reach_every_parameter_and_checkpointing_gives_the_same():
    model = _tiny(seed=2).train()
    ids = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(ids)
    loss, grads = _loss_and_grads(model, ids, mask)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(grads), f"no gradient for {sorted(trainable - set(grads))[:5]}"
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.endswith("expert_bias"))
    nonzero = {n for n, g in grads.items() if g.abs().sum() > 0}
    routed = {n for n in trainable if ".experts." in n}
    assert trainable - routed <= nonzero  # every non-routed parameter learns; unused experts get 0
    assert len(nonzero & routed) > 0

    model.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    loss_ckpt, grads_ckpt = _loss_and_grads(model, ids, mask)
    assert torch.allclose(loss, loss_ckpt, rtol=1e-6)
    for n, g in grads.items():
        assert torch.allclose(g, grads_ckpt[n], rtol=1e-5, atol=1e-7), n


def test_gradients_match_the_float64_reference():
    """Every gradient of the training model (grouped experts: stacked parameters, grouped GEMMs)
    against the float64 reference forward's autograd, under the checkpoint's names (each
    stacked gradient split per expert as the weights are): fp32 rounding only."""
    model = _tiny(seed=6).train()
    tokens = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(6))
    probe = torch.randn(12, model.config.vocab_size, generator=torch.Generator().manual_seed(7))
    (model(tokens).logits[0] * probe).sum().backward()
    grads = revert_weight_conversion(model, {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    state = {n: t.double().requires_grad_(not n.endswith("expert_bias"))  # the bias is not trained
             for n, t in model.checkpoint_state_dict().items()}
    (reference_logits(state, model.config, tokens[0].tolist()) * probe.double()).sum().backward()
    want = {n: t.grad for n, t in state.items() if t.grad is not None}
    assert set(want) <= set(grads) and sum(".experts.3.up_proj." in n for n in grads) == 3
    assert len(want) > len(grads) // 2  # most experts saw a token
    for name, g in grads.items():  # an expert no token chose: no reference gradient, zero here
        assert _rel_err(g, want[name]) < 1e-4 if name in want else g.abs().max() == 0, name


def test_fp8_training_model_trains_every_projection_in_fp8():
    """model.fp8 on the trainer (``trainer.worker.use_fp8``): every decoder projection and
    expert becomes an FP8Linear (not the LM head, router, norms or embeddings), gradients reach
    every trainable parameter, the loss stays within FP8's rounding of the unquantized model's
    and the gradients point its way; gradient checkpointing recomputes the same quantization."""
    from kernels.fp8 import FP8Linear
    from trainer.worker import use_fp8

    plain = _tiny(seed=2).train()
    model = _tiny(seed=2).train()
    use_fp8(model, {"pow2_scale": False, "batch_invariant": False})
    linears = [n for n, m in plain.named_modules() if type(m) is torch.nn.Linear]
    fp8 = {n for n, m in model.named_modules() if isinstance(m, FP8Linear)}
    assert fp8 == set(linears) - {"lm_head"}
    experts = [m for m in model.modules() if isinstance(m, GroupedExperts)]
    assert experts and all(m.fp8 == (False, False) for m in experts)  # the stacked experts switch themselves
    ids = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(ids)
    loss0, grads0 = _loss_and_grads(plain, ids, mask)
    loss, grads = _loss_and_grads(model, ids, mask)
    assert set(grads) == set(grads0)
    assert 1e-6 < abs(loss.item() - loss0.item()) / abs(loss0.item()) < 0.05
    total = torch.cat([g.flatten() for g in grads.values()])
    total0 = torch.cat([grads0[n].flatten() for n in grads])
    # FP8's forward rounding moves routing and every activation a little, so the gradients of
    # this tiny random model differ by ~25% in norm, but point the same way (a broken FP8
    # backward — a wrong transpose or scale — gives cosine ≈ 0)
    assert 1e-4 < (total - total0).norm() / total0.norm() < 0.5
    assert F.cosine_similarity(total, total0, dim=0) > 0.9
    model.gradient_checkpointing_enable()
    loss_ckpt, grads_ckpt = _loss_and_grads(model, ids, mask)
    assert torch.equal(loss, loss_ckpt)
    for n, g in grads.items():
        assert torch.allclose(g, grads_ckpt[n], rtol=1e-5, atol=1e-7), n


# ------------------------------------------------------------------------------------------
# Checkpoints: round trip and strict names


def test_sharded_checkpoint_round_trip(checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = sorted(p.name for p in checkpoint.iterdir())
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    assert "config.json" in files and "tokenizer.json" in files
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model_type"] == "bailing_moe_linear"
    assert config["architectures"] == ["BailingMoeLinearV2ForCausalLM"]
    names = set(json.loads((checkpoint / "model.safetensors.index.json").read_text())["weight_map"])
    for name in ("model.word_embeddings.weight", "model.layers.0.attention.query_key_value.weight",
                 "model.layers.0.attention.g_proj.weight", "model.layers.0.attention.g_norm.weight",
                 "model.layers.0.attention.dense.weight", "model.layers.0.attention.query_layernorm.weight",
                 "model.layers.0.mlp.gate_proj.weight", "model.layers.1.attention.key_layernorm.weight",
                 "model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.expert_bias",
                 "model.layers.1.mlp.experts.7.down_proj.weight",
                 "model.layers.1.mlp.shared_experts.up_proj.weight", "model.norm.weight", "lm_head.weight"):
        assert name in names, name

    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    assert type(model) is BailingMoeLinearV2ForCausalLM
    # the checkpoint's per-expert tensors, stacked on loading, come back bitwise under their names
    from safetensors.torch import load_file

    stored = {}
    for f in checkpoint.glob("*.safetensors"):
        stored.update(load_file(str(f)))
    loaded = model.checkpoint_state_dict()
    assert set(loaded) == set(stored) and all(torch.equal(loaded[n], t) for n, t in stored.items())
    assert model.model.layers[1].mlp.experts.gate_up_proj.shape == (8, 2 * 64, 256)
    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    ids = torch.tensor([tok("what is 12 plus 30? The answer is 42.").input_ids])
    model.save_pretrained(tmp_path / "again", max_shard_size="1MB")
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "again"), dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    for (n, p), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n == n2 and torch.equal(p, p2)

    bf16 = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.bfloat16)
    assert bf16.model.layers[1].mlp.gate.expert_bias.dtype == torch.float32
    assert bf16.model.layers[1].mlp.gate.weight.dtype == torch.bfloat16
    with torch.no_grad():
        lb = bf16(ids).logits
    assert lb.dtype == torch.float32 and torch.isfinite(lb).all()
    with torch.no_grad():
        assert (lb - model(ids).logits).abs().max() < 0.05  # bf16 weights, fp32 norms/residual/state


def test_missing_and_unexpected_weights_are_listed(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    state = {}
    for f in sorted(checkpoint.glob("*.safetensors")):
        state.update(load_file(str(f)))
    state.pop("model.layers.2.attention.g_norm.weight")
    state.pop("model.layers.3.mlp.experts.5.up_proj.weight")
    state["model.layers.0.attention.slope_rate"] = torch.zeros(4)
    out = tmp_path / "broken"
    out.mkdir()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text((checkpoint / "config.json").read_text())
    with pytest.raises(ValueError) as err:
        BailingMoeLinearV2ForCausalLM.from_pretrained(out)
    msg = str(err.value)
    assert "missing weights (2)" in msg and "unexpected weights (1)" in msg
    for name in ("model.layers.2.attention.g_norm.weight", "model.layers.3.mlp.experts.5.up_proj.weight",
                 "model.layers.0.attention.slope_rate"):
        assert name in msg


def test_only_documented_names_are_skipped():
    from models.ring_linear.weight_names import skipped_names

    names = {"model.layers.0.attention.dense.weight", "model.layers.1.attention.rotary_emb.inv_freq",
             "model.layers.0.attention.slope", "model.mtp.layers.0.eh_proj.weight",
             "model.layers.20.mlp.gate.weight"}
    assert skipped_names(names, 20, 0) == {"model.layers.1.attention.rotary_emb.inv_freq",
                                           "model.layers.0.attention.slope"}
    assert skipped_names(names, 20, 1) == names - {"model.layers.0.attention.dense.weight"}


# ------------------------------------------------------------------------------------------
# Config validation and presets


@pytest.mark.parametrize("overrides, field", [
    (dict(num_hidden_layers=5), "num_hidden_layers"),          # not a multiple of layer_group_size=2
    (dict(num_attention_heads=3), "num_attention_heads"),      # does not divide hidden_size=256
    (dict(num_key_value_heads=3), "num_key_value_heads"),      # does not divide 4 heads
    (dict(num_experts_per_tok=9), "num_experts_per_tok"),      # > num_experts=8
    (dict(n_group=3), "n_group"),                              # does not divide 8 experts
    (dict(topk_group=5), "topk_group"),                        # > n_group=4
    (dict(topk_group=1, num_experts_per_tok=3), "topk_group"),  # 1 group of 2 experts < top-3
    (dict(group_norm_size=3), "group_norm_size"),              # does not divide 4*64 channels
    (dict(partial_rotary_factor=0.0), "partial_rotary_factor"),
    (dict(score_function="softmax"), "score_function"),
    (dict(linear_decay_layer_offset=2), "linear_decay_layer_offset"),
    (dict(first_k_dense_replace=9), "first_k_dense_replace"),
    (dict(tie_word_embeddings=True), "tie_word_embeddings"),
    (dict(layer_types=["linear_attention"] * 4), "layer_types"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"\.{re.escape(field)}="):
        preset_config("tiny", **overrides)


def test_published_config_keys_load():
    published = {  # Ring-mini-linear-2.0 config.json (as reproduced by public ports)
        "architectures": ["BailingMoeLinearV2ForCausalLM"], "attention_dropout": 0.0,
        "embedding_dropout": 0.0, "eos_token_id": 156892, "first_k_dense_replace": 1,
        "group_norm_size": 4, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
        "intermediate_size": 5120, "layer_group_size": 5, "linear_silu": False,
        "max_position_embeddings": 131072, "model_type": "bailing_moe_linear",
        "moe_intermediate_size": 512, "moe_router_enable_expert_bias": True,
        "moe_shared_expert_intermediate_size": 512, "n_group": 8, "norm_topk_prob": True,
        "num_attention_heads": 16, "num_experts": 256, "num_experts_per_tok": 8,
        "num_hidden_layers": 20, "num_key_value_heads": 4, "num_nextn_predict_layers": 0,
        "num_shared_experts": 1, "output_dropout": 0.0, "pad_token_id": 156892,
        "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-06, "rope_scaling": None,
        "rope_theta": 1000000, "routed_scaling_factor": 2.5, "router_dtype": "fp32",
        "score_function": "sigmoid", "tie_word_embeddings": False, "topk_group": 4,
        "torch_dtype": "bfloat16", "transformers_version": "4.56.1", "use_bias": False,
        "use_cache": True, "use_qk_norm": True, "use_qkv_bias": False, "use_rmsnorm": True,
        "vocab_size": 157184,
    }
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(**published)
    assert isinstance(cfg, BailingMoeLinearV2Config)
    assert cfg.linear_decay_layer_offset == 1 and cfg.rotary_dim == 64
    for key, value in PRESETS["mini"].items():
        assert getattr(cfg, key) == value, key
    # the full preset is that file: every key of it, and mini's shapes
    full = preset_config("ring-mini-linear-2.0")
    for key, value in published.items():
        if key in PRESETS["ring-mini-linear-2.0"]:
            assert getattr(full, key) == value, key
    assert set(PRESETS["ring-mini-linear-2.0"]) <= set(published)
    assert full.to_diff_dict() == preset_config("mini", eos_token_id=156892, pad_token_id=156892,
                                                num_nextn_predict_layers=0).to_diff_dict()


def test_preset_shapes_and_parameter_counts():
    mini, flash = preset_config("mini"), preset_config("flash")
    assert [i for i, t in enumerate(mini.layer_types) if t == "full_attention"] == [4, 9, 14, 19]
    assert [i for i, t in enumerate(flash.layer_types) if t == "full_attention"] == [7, 15, 23, 31]
    m, f = parameter_count(mini), parameter_count(flash)
    # Published: Ring-mini-linear-2.0 16.4 B total, 957 M activated (without embeddings);
    # Ring-flash-linear-2.0 104 B total, 6.1 B activated.
    assert 16.3e9 < m["total"] < 16.5e9 and 0.95e9 < m["active"] < 0.965e9
    assert 103.5e9 < f["total"] < 104.5e9 and 6.1e9 < f["active"] < 6.2e9
    tiny = parameter_count(preset_config("tiny"))
    assert 1e6 < tiny["total"] < 10e6
    assert tiny["total"] == sum(p.numel() for p in BailingMoeLinearV2ForCausalLM(preset_config("tiny")).parameters())
    assert math.isclose(m["embedding"], 2 * 157184 * 2048)


# ------------------------------------------------------------------------------------------
# GPU (Triton kernels) and DeepSpeed ZeRO-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_kernel_path_matches_the_reference():
    from trainer.logprobs import pack, token_logprobs, use_fp32_lm_head

    model = _tiny(seed=9)
    tokens = torch.randint(0, model.config.vocab_size, (1, 150), generator=torch.Generator().manual_seed(9))
    ref = reference_logits(model.checkpoint_state_dict(), model.config, tokens[0].tolist())
    with torch.no_grad():
        cuda = model.cuda()(tokens.cuda()).logits[0].cpu()
    assert _rel_err(cuda, ref) < 1e-4  # Triton GEMMs and the chunked kernel on fp32 inputs
    bf16 = model.to(torch.bfloat16)
    use_fp32_lm_head(bf16)
    batch = pack([tokens[0, :50].tolist()], [tokens[0, 50:].tolist()])
    with torch.no_grad():
        logp, _ = token_logprobs(bf16, batch)
    ref_logp = torch.log_softmax(ref, -1)[49:-1].gather(1, tokens[0, 50:, None])[:, 0]
    assert (logp[0].cpu().double() - ref_logp).abs().max() < 0.1  # bf16 weights: loose

    # Gradients through the Triton chunk kernel's backward equal the CPU path's.  Through the
    # decoder only: kernels.lm_head's CUDA GEMM config overflows shared memory on fp32 operands.
    def decoder_grads(model, ids, proj):
        model.zero_grad(set_to_none=True)
        hidden = model.get_decoder()(ids.to(proj.device)).last_hidden_state
        (hidden * proj).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    cpu = _tiny(seed=10).train()
    ids = torch.randint(0, cpu.config.vocab_size, (2, 90), generator=torch.Generator().manual_seed(10))
    proj = torch.randn(2, 90, cpu.config.hidden_size, generator=torch.Generator().manual_seed(11))
    g_cpu = decoder_grads(cpu, ids, proj)
    g_cuda = decoder_grads(cpu.cuda(), ids, proj.cuda())
    assert set(g_cpu) == set(g_cuda)
    for n, g in g_cpu.items():
        assert _rel_err(g_cuda[n].cpu(), g) < 1e-3 or g.abs().max() < 1e-6, n


_ZERO_RANK = r'''
import json, os, sys
rank, world, ckpt, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", DS_ACCELERATOR="cpu")
import torch
torch.set_num_threads(1)
import deepspeed
from transformers import AutoModelForCausalLM
from trainer.logprobs import pack, token_logprobs, use_fp32_lm_head  # `import trainer` registers the model
from trainer.native_ops import use_install_build_dir
use_install_build_dir()  # the shm op the trainer ranks use, built once per install
deepspeed.init_distributed(dist_backend="gloo")
for config in sys.argv[5:]:  # "stage:precision", each on a fresh model and engine
    stage, fp8 = int(config.split(":")[0]), config.endswith(":fp8")
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    if fp8:
        from trainer.worker import use_fp8
        use_fp8(model, {"pow2_scale": False, "batch_invariant": False})
    use_fp32_lm_head(model)
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data: different experts hit
    batch = pack([torch.randint(1, 200, (n,), generator=g).tolist() for n in (9, 4)],
                 [torch.randint(1, 200, (n,), generator=g).tolist() for n in (7, 12)])
    with torch.no_grad():
        plain, _ = token_logprobs(model, batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
           "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
           "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    logp, _ = token_logprobs(engine.module, batch)
    engine.backward(-(logp * batch.completion_mask).sum())
    engine.step()
    with torch.no_grad():
        after, _ = token_logprobs(engine.module, batch)
    experts = [n for n, _ in engine.module.named_parameters() if ".mlp.experts." in n]  # what ZeRO-3 gathers
    json.dump({"err": (logp - plain).abs().max().item(), "moved": (after - logp).abs().max().item(),
               "expert_params": len(experts)}, open(f"{out}.{config.replace(':', '-')}.{rank}.json", "w"))
    del engine, opt, model
'''

ZERO_CONFIGS = [(1, "fp32"), (3, "fp32"), (3, "fp8")]


@pytest.fixture(scope="module")
def zero_two_ranks(checkpoint, tmp_path_factory):
    """One pair of gloo rank processes runs every configuration of ZERO_CONFIGS in turn (a fresh
    model and DeepSpeed engine each): the processes' start-up (torch, DeepSpeed, the process
    group) is most of the time, paid once. Returns the result file prefix."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    tmp = tmp_path_factory.mktemp("zero")
    script = tmp / "rank.py"
    script.write_text(_ZERO_RANK)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
           "TOKENIZERS_PARALLELISM": "false"}  # keeps a PYTHONPATH-installed stack (the GPU kit)
    out = tmp / "res"
    configs = [f"{stage}:{precision}" for stage, precision in ZERO_CONFIGS]
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", str(checkpoint), str(out), *configs],
                              env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    return out, logs, [p.returncode for p in procs]


@pytest.mark.integration
@pytest.mark.parametrize("stage, precision", ZERO_CONFIGS)
def test_deepspeed_zero_two_ranks(zero_two_ranks, stage, precision):
    """2 gloo ranks on CPU, ZeRO-1/3, different data per rank (so different experts get tokens):
    log-probs equal the unwrapped model's, and one step moves them. With FP8 projections under
    ZeRO-3 too: the FP8 backward re-quantizes the weight it saved, which ZeRO-3 partitions
    between the forward and the backward and gathers again."""
    from pathlib import Path

    out, logs, returncodes = zero_two_ranks
    assert returncodes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    for r in range(2):
        result = Path(f"{out}.{stage}-{precision}.{r}.json")
        res = json.loads(result.read_text())
        assert res["err"] < 1e-6 and res["moved"] > 1e-4, res
        assert res["expert_params"] == 2 * 3  # two stacks per MoE layer (layers 1-3), not 3 per expert
