"""The demo's tiny model: a seeded tokenizer and a randomly initialised Qwen2-architecture LM
(or a Ring-linear hybrid, or a Qwen3-shaped dense model for the GPU peer comparison).

`model.path: demo:<name>` in a recipe resolves here. The directory is a normal Hugging Face
checkpoint (config.json, model.safetensors, tokenizer files) that both vLLM and transformers
load; it is built once per spec and cached, atomically (built beside, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from rl import synthetic

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class DemoSpec:
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4  # head_dim 64: a size vLLM's CPU attention supports
    num_kv_heads: int = 2
    intermediate_size: int = 688
    vocab_size: int = 384
    max_position: int = 512
    seed: int = 0
    architecture: str = "qwen2"  # or "ring-linear": the hybrid linear/softmax MoE (DESIGN §3); or "qwen3"
    num_experts: int = 8  # ring-linear only: routed experts (top-2 of 4 groups, 1 shared)
    # ring-linear only: build from this Ring-linear preset (models.ring_linear.presets) instead
    # of the sizes above; the vocabulary is still the demo tokenizer's.
    preset: str = ""
    head_dim: int = 0  # qwen3 only: attention head width (0: hidden_size // num_heads)


SPECS = {
    "arith-tiny": DemoSpec(),
    "arith-micro": DemoSpec(hidden_size=128, num_layers=2, intermediate_size=344, num_heads=2, num_kv_heads=1),
    # Ring-linear hybrid: layers linear, softmax, linear, softmax; a dense first layer, MoE after.
    "ring-micro": DemoSpec(architecture="ring-linear", hidden_size=128, num_layers=4, intermediate_size=344,
                           num_heads=2, num_kv_heads=1),
    # The GPU recipe's model: Ring-mini's layer shapes, 1.2 B parameters (recipes/gpu_ring.yaml).
    "ring-mini-1b": DemoSpec(architecture="ring-linear", preset="mini-1b"),
    # Qwen3-0.6B's layer shapes (28 layers, d_model 1024, 16 query / 8 KV heads of 128, MLP 3072,
    # tied embeddings) with the demo tokenizer: 0.44 B parameters, seeded random weights. The
    # dense model of the GPU peer comparison (benchmarks/gpu/trl_compare.py).
    "qwen3-0.6b": DemoSpec(architecture="qwen3", hidden_size=1024, num_layers=28, num_heads=16, num_kv_heads=8,
                           head_dim=128, intermediate_size=3072, max_position=4096),
    # The same architecture at test size (the comparison's CPU smoke run).
    "qwen3-micro": DemoSpec(architecture="qwen3", hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1,
                            head_dim=64, intermediate_size=256, max_position=4096),
}


def resolve(path: str, cache_dir: str) -> Path:
    """Returns a local checkpoint directory for `demo:<name>`; builds it on first use."""
    name = path.removeprefix("demo:")
    if name not in SPECS:
        raise ValueError(f"model.path {path!r}: unknown demo model; known: {', '.join(SPECS)}")
    spec = SPECS[name]
    # Fields added after a spec existed stay out of its digest at their defaults (same cache key).
    fields = {k: v for k, v in asdict(spec).items()
              if (spec.architecture != "qwen2" or k not in ("architecture", "num_experts"))
              and (k not in ("preset", "head_dim") or v)}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    target = Path(cache_dir).expanduser() / "demo" / f"{name}-{digest}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(spec, staging)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").exists():  # lost no race: a real failure
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tokenizer(spec: DemoSpec, out: Path):
    """Byte-level BPE trained on the synthetic task's text; digits always stay single tokens
    (so numbers are spelled digit by digit, which a tiny model learns arithmetic on)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [f"{p.question}\n{p.solution}" for p in synthetic.make_problems(3000, seed=spec.seed + 7)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=None)
    fast.model_max_length = spec.max_position
    fast.save_pretrained(out)
    return fast


def build(spec: DemoSpec, out: Path) -> None:
    tokenizer = build_tokenizer(spec, out)
    if spec.architecture == "ring-linear":
        return build_ring_linear(spec, tokenizer, out)
    if spec.architecture not in ("qwen2", "qwen3"):
        raise ValueError(f"demo model architecture {spec.architecture!r}: use 'qwen2', 'qwen3' or 'ring-linear'")
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    vocab = len(tokenizer)
    config_cls, model_cls, extra = Qwen2Config, Qwen2ForCausalLM, {}
    if spec.architecture == "qwen3":
        config_cls, model_cls = Qwen3Config, Qwen3ForCausalLM
        extra = {"head_dim": spec.head_dim or spec.hidden_size // spec.num_heads}
    config = config_cls(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        torch_dtype="float32",
        **extra,
    )
    torch.manual_seed(spec.seed)
    model = model_cls(config)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)  # no sampling defaults of our own


def build_ring_linear(spec: DemoSpec, tokenizer, out: Path) -> None:
    """The Ring-linear architecture at demo size (``layer_group_size`` 2: linear, softmax, …),
    or a named preset's shapes with the demo tokenizer."""
    from models.ring_linear import ARCHITECTURE, BailingMoeLinearV2Config

    if spec.preset:
        from models.ring_linear.presets import preset_config

        config = preset_config(spec.preset, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id, torch_dtype="float32")
        return _save_random(config, spec.seed, out)
    config = BailingMoeLinearV2Config(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers,
        layer_group_size=2, num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.hidden_size // spec.num_heads, intermediate_size=spec.intermediate_size,
        num_experts=spec.num_experts, num_experts_per_tok=2, n_group=4, topk_group=2,
        num_shared_experts=1, moe_intermediate_size=spec.intermediate_size // 4,
        first_k_dense_replace=1, group_norm_size=spec.num_heads, rope_theta=10000.0,
        max_position_embeddings=spec.max_position, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, architectures=[ARCHITECTURE], torch_dtype="float32",
    )
    _save_random(config, spec.seed, out)


def _save_random(config, seed: int, out: Path) -> None:
    import torch

    from trainer.ring_linear import BailingMoeLinearV2ForCausalLM
    from trainer.ring_linear.remote_code import write_remote_code

    torch.manual_seed(seed)
    model = BailingMoeLinearV2ForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)
    write_remote_code(out)
