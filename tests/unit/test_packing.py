"""Packed sequences (``trainer.pack_tokens``): a sequence computes the same inside a pack as
alone — outputs and every parameter gradient — for the Ring-linear model (linear-attention state
from zero per sequence, block-diagonal causal softmax attention, RoPE positions restarting) and
for a dense transformers model (its own packed path); the layouts' bookkeeping.  CPU, fp32."""

from __future__ import annotations

import pytest
import torch

import trainer.ring_linear  # noqa: F401  (registers the model type with transformers)
from models.ring_linear.presets import preset_config
from trainer.logprobs import pack, pack_flat, token_logprobs, use_fp32_lm_head
from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM


def _samples(lengths: list[tuple[int, int]], vocab: int, seed: int = 0) -> tuple[list, list]:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, vocab, (p,), generator=g).tolist() for p, _ in lengths]
    completions = [torch.randint(1, vocab, (c,), generator=g).tolist() for _, c in lengths]
    return prompts, completions


def _logp_and_grads(model, batch, sample: int):
    """Log-probs of every sample's completion, and the gradients of Σ logp of one sample's."""
    model.zero_grad(set_to_none=True)
    logp, entropy = token_logprobs(model, batch, with_entropy=True)
    logp[sample].sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), entropy.detach(), grads


def _ring_tiny() -> BailingMoeLinearV2ForCausalLM:
    """The tiny preset's architecture (linear, softmax, linear, softmax; dense first layer, MoE
    after; partial RoPE, q/k norms) at a quarter of its width, for speed."""
    torch.manual_seed(0)
    config = preset_config("tiny", hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                           intermediate_size=128, moe_intermediate_size=32,
                           moe_shared_expert_intermediate_size=32, group_norm_size=2)
    model = BailingMoeLinearV2ForCausalLM(config).train()
    use_fp32_lm_head(model)
    return model


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


# Lengths cross the 64-token chunk of the linear-attention kernel, and sample 1 starts mid-chunk
# in the pack (at token 75) and crosses a chunk boundary there.
LENGTHS = [(30, 45), (9, 60), (50, 14)]


def test_ring_linear_sequence_inside_a_pack_computes_as_alone():
    """Each sequence's log-probs and entropies inside the pack equal those alone bitwise (fp32,
    CPU: every layer runs the same per-sequence kernels on the same rows).  The gradients of one
    sequence's Σ log-prob reach the same parameters and agree within 1e-5 of each tensor's
    largest entry (measured 7e-7): a weight gradient sums x_tᵀ dy_t over all the forward's
    tokens — the neighbours add exact zeros, but the GEMM over 218 rows instead of 69 adds in
    another order.  A leak (shared state, attention across the boundary, positions running on)
    moves them by orders of magnitude more."""
    model = _ring_tiny()
    prompts, completions = _samples(LENGTHS, model.config.vocab_size)
    packed = pack_flat(prompts, completions)
    assert packed.input_ids.shape == (1, sum(p + c for p, c in LENGTHS)) and packed.padded_tokens == 0
    target = 1
    logp_packed, ent_packed, grads_packed = _logp_and_grads(model, packed, target)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        logp_alone, ent_alone, grads_alone = _logp_and_grads(model, pack([p], [c]), 0)
        assert torch.equal(logp_packed[i, : len(c)], logp_alone[0, : len(c)]), i
        assert torch.equal(ent_packed[i, : len(c)], ent_alone[0, : len(c)]), i
        if i == target:
            assert grads_packed.keys() == grads_alone.keys()
            worst = max(_max_rel(grads_packed[n], g) for n, g in grads_alone.items())
            assert worst < 1e-5, worst


def test_ring_linear_packed_forward_needs_one_row():
    model = _ring_tiny()
    ids = torch.zeros(2, 6, dtype=torch.long)
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]] * 2)
    with pytest.raises(ValueError, match="batch size must be 1"):
        model.model(input_ids=ids, position_ids=positions)


def test_dense_transformers_model_inside_a_pack_computes_as_alone():
    """A model vLLM runs natively (Qwen2 architecture, SDPA): transformers builds the
    block-diagonal mask from the restarting position_ids (no attention mask), so the same
    trainer call packs it too; equal to fp32 tolerance (SDPA with a mask vs causal)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = Qwen2ForCausalLM(config).train()
    use_fp32_lm_head(model)
    prompts, completions = _samples(LENGTHS, config.vocab_size, seed=1)
    packed = pack_flat(prompts, completions)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        logp_alone, _, grads_alone = _logp_and_grads(model, pack([p], [c]), 0)
        logp_packed, _, grads_packed = _logp_and_grads(model, packed, i)
        torch.testing.assert_close(logp_packed[i, : len(c)], logp_alone[0, : len(c)], rtol=1e-5, atol=1e-5)
        for name, g in grads_alone.items():
            torch.testing.assert_close(grads_packed[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_layouts_index_each_completion_token_and_count_padding():
    prompts, completions = [[5, 6, 7], [8]], [[9, 10], [11, 12, 13, 14]]
    padded, flat = pack(prompts, completions), pack_flat(prompts, completions)
    assert padded.input_ids.shape == (2, 5) and padded.padded_tokens == 0 + 5 * 2 - 10
    assert flat.input_ids.tolist() == [[5, 6, 7, 9, 10, 8, 11, 12, 13, 14]]
    assert flat.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4]]
    # the hidden state just before each completion token (clamped inside the sample past its end)
    assert flat.hidden_index.tolist() == [[2, 3, 4, 4], [5, 6, 7, 8]]
    assert padded.hidden_index.tolist() == [[2, 3, 4, 4], [5, 6, 7, 8]]
    for batch in (padded, flat):
        tokens = batch.input_ids.flatten()
        for b, c in enumerate(completions):
            assert (tokens[batch.hidden_index[b, : len(c)] + 1]).tolist() == c


def test_activation_checkpointing_per_layer_gives_the_same_gradients_on_a_pack():
    """`trainer.gradient_checkpointing` (per decoder layer: each layer's forward runs again in
    the backward) on a packed batch: the recomputation is the same computation, so log-probs and
    every gradient are bitwise equal, and each layer really ran twice."""
    model = _ring_tiny()
    prompts, completions = _samples(LENGTHS, model.config.vocab_size, seed=2)
    packed = pack_flat(prompts, completions)
    calls = []  # attention forwards run (module hooks do not fire inside the recomputation)
    for layer in model.model.layers:
        def counted(*args, _forward=layer.attention.forward, **kwargs):
            calls.append(1)
            return _forward(*args, **kwargs)
        layer.attention.forward = counted

    def logp_and_grads():
        model.zero_grad(set_to_none=True)
        logp, _ = token_logprobs(model, packed)
        (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp)).sum().backward()
        return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    logp, grads = logp_and_grads()
    assert len(calls) == len(model.model.layers)
    model.gradient_checkpointing_enable()
    calls.clear()
    logp_ckpt, grads_ckpt = logp_and_grads()
    assert len(calls) == 2 * len(model.model.layers)  # forward, then the recomputation
    assert torch.equal(logp, logp_ckpt)
    assert grads.keys() == grads_ckpt.keys()
    for name, g in grads.items():
        assert torch.equal(g, grads_ckpt[name]), name


def test_start_up_check_refuses_a_model_that_mixes_packed_sequences(monkeypatch):
    """`trainer.worker.check_packing`: the Ring-linear model passes; the same model with
    its packed path cut (the sequences then share one linear state and attend across the
    boundary, as a model ignoring the restarting positions would) is refused, naming the key."""
    from trainer import worker
    from trainer.ring_linear import modeling
    from trainer.packing import packed_forward_mismatch

    model = _ring_tiny()
    assert packed_forward_mismatch(model) < 1e-5  # fp32 rounding: 3e-7 measured
    worker.check_packing(model, torch.float32)
    monkeypatch.setattr(modeling, "_packed_boundaries", lambda position_ids: None)
    assert packed_forward_mismatch(model) > 0.1
    with pytest.raises(worker.PackingRefused, match="trainer.pack_tokens: 0"):
        worker.check_packing(model, torch.float32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ring_linear_bf16_pack_on_gpu_runs_the_varlen_kernel_as_the_sdpa_loop(monkeypatch):
    """On CUDA the packed softmax attention is one Triton launch (kernels.softmax_attention).
    In bf16, the same pack through the per-sequence SDPA loop (the CPU path, run on the GPU)
    gives the same log-probs and gradients to bf16 rounding; and each sequence inside the pack
    computes as alone (the kernel reads only its own sequence; cuBLAS GEMMs over more rows may
    round differently: a bf16 tolerance, orders of magnitude below a leak)."""
    from kernels.softmax_attention import causal as attention_op
    from trainer.ring_linear import modeling

    model = _ring_tiny().cuda().to(torch.bfloat16)
    use_fp32_lm_head(model)
    prompts, completions = _samples(LENGTHS, model.config.vocab_size, seed=3)
    packed = pack_flat(prompts, completions)
    kernel_calls = []
    real_kernel = attention_op.causal_triton
    monkeypatch.setattr(attention_op, "causal_triton", lambda *a: kernel_calls.append(1) or real_kernel(*a))
    target = 1
    logp, _, grads = _logp_and_grads(model, packed, target)
    softmax_layers = sum(model.config.is_softmax_layer(i) for i in range(model.config.num_hidden_layers))
    assert len(kernel_calls) == softmax_layers  # one launch per softmax layer (forward)

    def per_sequence_sdpa(q, k, v, cu_seqlens, scale):
        return attention_op.causal_attention(q, k, v, cu_seqlens, scale, backend="torch")

    with monkeypatch.context() as m:
        m.setattr(modeling, "causal_attention", per_sequence_sdpa)
        logp_sdpa, _, grads_sdpa = _logp_and_grads(model, packed, target)
    assert (logp - logp_sdpa).abs().max() < 0.05
    assert grads.keys() == grads_sdpa.keys()
    for name, g in grads_sdpa.items():
        assert ((grads[name].float() - g.float()).norm() / g.float().norm().clamp(min=1e-30)) < 5e-2, name
    for i, (p, c) in enumerate(zip(prompts, completions)):
        logp_alone, _, _ = _logp_and_grads(model, pack([p], [c]), 0)
        assert (logp[i, : len(c)] - logp_alone[0, : len(c)]).abs().max() < 0.05, i
