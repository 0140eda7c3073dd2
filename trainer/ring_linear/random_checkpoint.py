"""Seeded random Ring-linear checkpoints of the presets, for tests, benchmarks and demos: a
directory (config.json, safetensors shards, tokenizer) written by the training model's
``save_pretrained``, loadable by both engines like a published checkpoint, and by plain
transformers with ``trust_remote_code=True`` (:mod:`.remote_code`)."""

from __future__ import annotations

import os
from pathlib import Path

from models.ring_linear.presets import PRESETS, preset_config

from .modeling import BailingMoeLinearV2ForCausalLM
from .remote_code import write_remote_code


def build_tokenizer(out: str | os.PathLike, vocab_size: int = 512):
    """A byte-level BPE tokenizer (``<|endoftext|>`` = eos = pad) trained on a fixed built-in
    text, saved to ``out``; deterministic.  Returns the ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    corpus = [f"Question: what is {a} plus {b}? Answer: {a + b}. The answer is {a + b}."
              for a in range(0, 300, 7) for b in range(0, 300, 11)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[eos], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos, bos_token=None)
    fast.save_pretrained(str(out))
    return fast


def build_random_checkpoint(out: str | os.PathLike, preset: str = "tiny", seed: int = 0,
                            tokenizer_dir: str | os.PathLike | None = None,
                            max_shard_size: str = "2GB", **overrides) -> Path:
    """Writes a seeded random Ring-linear checkpoint directory (config.json, safetensors
    shards, tokenizer) and returns its path.  The tokenizer is copied from ``tokenizer_dir``
    or built by :func:`build_tokenizer`; ``vocab_size`` becomes the tokenizer's length unless
    overridden.  Meant for ``tiny`` (``mini``/``flash`` would allocate their full size)."""
    import torch
    from transformers import AutoTokenizer


    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        tokenizer.save_pretrained(str(out))
    else:
        tokenizer = build_tokenizer(out, vocab_size=PRESETS[preset]["vocab_size"])
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = preset_config(preset, **{"vocab_size": len(tokenizer), **ids, **overrides})
    torch.manual_seed(seed)
    model = BailingMoeLinearV2ForCausalLM(config)
    with torch.no_grad():  # a random but non-zero balancing bias, so the tests exercise it
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if name.endswith("expert_bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(str(out), max_shard_size=max_shard_size)
    (out / "generation_config.json").unlink(missing_ok=True)
    write_remote_code(out)
    return out


__all__ = ["build_tokenizer", "build_random_checkpoint"]
