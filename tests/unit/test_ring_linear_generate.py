"""Ring-linear training model with a cache (trainer/ring_linear/modeling.py): incremental forward
and transformers ``generate`` against the no-cache forward and the float64 reference; chunked
prefill → recurrent decode handoff; batches (equal length, left-padded); errors.  CPU, tiny
preset, seconds."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import trainer.ring_linear  # noqa: F401  (registers the model type with transformers)
from models.ring_linear.presets import preset_config
from models.ring_linear.reference import reference_logits
from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM

from test_ring_linear_model import _perturbed  # tests/unit is on sys.path (pytest's rootdir-relative import)

CHUNK = 64  # kernels.linear_attention's chunk size: prompts longer than it cross a chunk boundary


@pytest.fixture(scope="module")
def tiny() -> BailingMoeLinearV2ForCausalLM:
    """Random tiny model; norm weights away from 1 and a non-zero expert bias, so tests see them."""
    torch.manual_seed(0)
    return _perturbed(BailingMoeLinearV2ForCausalLM(preset_config("tiny"))).eval()


def _tokens(shape, seed: int) -> torch.Tensor:
    return torch.randint(1, 512, shape, generator=torch.Generator().manual_seed(seed))


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _incremental_logits(model, ids: torch.Tensor, steps: list[int]) -> torch.Tensor:
    """Logits of ``ids`` fed in pieces of ``steps`` tokens through one cache."""
    cache, out, start = DynamicCache(config=model.config), [], 0
    with torch.no_grad():
        for n in steps:
            out.append(model(ids[:, start:start + n], past_key_values=cache, use_cache=True).logits)
            start += n
    assert start == ids.shape[1] and cache.get_seq_length() == start
    return torch.cat(out, dim=1)


# ------------------------------------------------------------------------------------------
# Incremental forward vs the full forward and the float64 reference


def test_cached_steps_match_the_full_forward_across_a_chunk_boundary(tiny):
    # Chunked prefill of 70 tokens (crosses the chunk boundary at 64), a 5-token chunk from the
    # cached state, then single-token recurrent decodes.
    ids = _tokens((2, 74), seed=2)
    steps = [CHUNK + 2, 4] + [1] * 4
    with torch.no_grad():
        full = tiny(ids).logits
    cached = _incremental_logits(tiny, ids, steps)
    assert cached.dtype == torch.float32
    for t in range(ids.shape[1]):  # every position, prefill and decode, within 1e-5
        assert _rel_err(cached[:, t], full[:, t]) < 1e-5, t


def test_cached_steps_match_the_float64_reference(tiny):
    ids = _tokens((1, CHUNK + 3), seed=3)
    ref = reference_logits(tiny.checkpoint_state_dict(), tiny.config, ids[0].tolist())
    m64 = BailingMoeLinearV2ForCausalLM(tiny.config).double().eval()
    m64.load_state_dict(tiny.state_dict())
    steps = [CHUNK + 1, 1, 1]
    assert _rel_err(_incremental_logits(tiny, ids, steps)[0], ref) < 1e-5
    assert _rel_err(_incremental_logits(m64, ids, steps)[0], ref) < 1e-10  # same math in float64


def test_cache_holds_fp32_states_and_post_rope_keys(tiny):
    ids = _tokens((2, 10), seed=4)
    with torch.no_grad():
        cache = tiny(ids, use_cache=True).past_key_values
    c = tiny.config
    for i, layer in enumerate(cache.layers):
        if c.is_softmax_layer(i):
            assert layer.keys.shape == layer.values.shape == (2, c.num_key_value_heads, 10, c.head_dim)
            assert layer.keys.dtype == torch.float32
        else:
            state = layer.recurrent_states[0]
            assert state.shape == (2, c.num_attention_heads, c.head_dim, c.head_dim)
            assert state.dtype == torch.float32  # never bf16 (DESIGN.md §4)


def test_no_cache_unless_asked(tiny):
    with torch.no_grad():
        assert tiny(_tokens((1, 5), seed=5)).past_key_values is None  # the training forward


# ------------------------------------------------------------------------------------------
# transformers generate


def _greedy_without_cache(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    """argmax loop over the full no-cache forward, re-run on the growing sequence."""
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_greedy_generate_equals_the_no_cache_argmax_loop(tiny):
    # A batch of equal-length prompts longer than a chunk: chunked prefill, then recurrent decode.
    ids = _tokens((3, CHUNK + 2), seed=6)
    out = tiny.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(out, _greedy_without_cache(tiny, ids, 6))


def test_generate_left_padded_batch_equals_each_prompt_alone(tiny):
    prompts = [_tokens((n,), seed=10 + n) for n in (CHUNK + 2, 23, 5)]
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):], mask[b, T - len(p):] = p, 1
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_logits=True)
    batched = tiny.generate(ids, attention_mask=mask, **kw)
    for b, p in enumerate(prompts):
        alone = tiny.generate(p[None], **kw)
        assert torch.equal(batched.sequences[b, T:], alone.sequences[0, len(p):])
        for step_batched, step_alone in zip(batched.logits, alone.logits):
            assert _rel_err(step_batched[b], step_alone[0]) < 1e-5


def test_sampling_generate_runs(tiny):
    ids = _tokens((2, 7), seed=7)
    torch.manual_seed(0)
    out = tiny.generate(ids, max_new_tokens=10, min_new_tokens=10, do_sample=True, temperature=1.0,
                        top_k=0, top_p=1.0, pad_token_id=0)
    assert out.shape == (2, 17) and torch.equal(out[:, :7], ids)
    assert int(out.min()) >= 0 and int(out.max()) < tiny.config.vocab_size


# ------------------------------------------------------------------------------------------
# Errors


def test_right_padding_with_a_cache_raises(tiny):
    ids = _tokens((2, 6), seed=8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    with torch.no_grad(), pytest.raises(ValueError, match="left padding"):
        tiny(ids, attention_mask=mask, use_cache=True)
    with pytest.raises(ValueError, match="left padding"):
        tiny.generate(ids, attention_mask=mask, max_new_tokens=2, pad_token_id=0)


def test_a_cache_without_the_layer_kinds_raises(tiny):
    with torch.no_grad(), pytest.raises(ValueError, match=r"DynamicCache\(config=model.config\)"):
        tiny(_tokens((1, 4), seed=9), past_key_values=DynamicCache(), use_cache=True)
