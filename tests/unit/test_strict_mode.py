"""Strict mode on the training model: a sequence's log-probs are the same bits alone and inside
batches of other sequences (other lengths, right padding, other positions), its gradients flow,
and it computes the fast model's function (to fp32 rounding)."""

import pytest
import torch

from models.ring_linear import BailingMoeLinearV2Config
from models.ring_linear.strict import use_strict
from trainer.logprobs import pack, pack_flat, token_logprobs, use_fp32_lm_head
from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM


def small_config() -> BailingMoeLinearV2Config:
    """The demo model's layout (linear, softmax, linear, softmax; MoE after a dense layer) at half width."""
    return BailingMoeLinearV2Config(
        vocab_size=97, hidden_size=64, num_hidden_layers=4, layer_group_size=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, intermediate_size=96, num_experts=8, num_experts_per_tok=2,
        n_group=4, topk_group=2, num_shared_experts=1, moe_intermediate_size=24,
        moe_shared_expert_intermediate_size=24, first_k_dense_replace=1, group_norm_size=2,
        max_position_embeddings=128, initializer_range=0.08)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    fast = BailingMoeLinearV2ForCausalLM(small_config()).eval()
    strict = BailingMoeLinearV2ForCausalLM(small_config()).eval()
    strict.load_state_dict(fast.state_dict())
    assert use_strict(strict) > 0
    use_fp32_lm_head(fast)
    use_fp32_lm_head(strict, strict=True)
    return fast, strict


def test_strict_logprobs_do_not_depend_on_the_batch(models):
    fast, strict = models
    g = torch.Generator().manual_seed(1)
    seqs = [(torch.randint(1, 97, (p,), generator=g).tolist(), torch.randint(1, 97, (c,), generator=g).tolist())
            for p, c in [(7, 20), (3, 35), (19, 9), (1, 30)]]
    with torch.no_grad():
        batch = pack([p for p, _ in seqs], [c for _, c in seqs])
        together, _ = token_logprobs(strict, batch)
        fast_logp, _ = token_logprobs(fast, batch)
        for b, (p, c) in enumerate(seqs):
            alone, _ = token_logprobs(strict, pack([p], [c]))
            assert torch.equal(alone[0, :len(c)], together[b, :len(c)]), b
        other = pack([seqs[2][0], seqs[0][0]], [seqs[2][1], seqs[0][1]])   # another order and company
        assert torch.equal(token_logprobs(strict, other)[0][1, :20], together[0, :20])
    mask = batch.completion_mask.bool()
    assert (together - fast_logp)[mask].abs().max() < 1e-4   # the same function as fast mode


def test_strict_training_forward_has_gradients(models):
    _, strict = models
    batch = pack([[5, 6, 7]], [[8, 9, 10, 11]])
    logp, _ = token_logprobs(strict, batch)
    logp.sum().backward()
    grads = [p.grad for p in strict.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) > len(grads) // 2
    strict.zero_grad()


def test_strict_model_refuses_a_cache_and_packed_sequences(models):
    _, strict = models
    with pytest.raises(ValueError, match="strict mode covers the training forward"):
        strict.model(torch.tensor([[1, 2, 3]]), use_cache=True)
    with pytest.raises(ValueError, match="strict mode takes one sequence per row"):  # its layers would leak
        token_logprobs(strict, pack_flat([[5, 6, 7], [8, 9]], [[10, 11], [12, 13]]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_strict_logprobs_do_not_depend_on_the_batch_on_cuda_in_bf16(models):
    """The training model on a GPU in bf16 (weights bf16, norms/residual/state fp32): every strict
    op runs its Triton kernel (no fallback) and a sequence's log-probs are the same bits alone and
    inside batches."""
    from kernels.batch_invariant import cuda

    fast, _ = models
    model = BailingMoeLinearV2ForCausalLM(small_config()).eval()
    model.load_state_dict(fast.state_dict())
    model.to("cuda", torch.bfloat16)
    use_strict(model)
    use_fp32_lm_head(model, strict=True)
    cuda.FALLBACKS.clear()
    g = torch.Generator().manual_seed(2)
    seqs = [(torch.randint(1, 97, (p,), generator=g).tolist(), torch.randint(1, 97, (c,), generator=g).tolist())
            for p, c in [(7, 20), (3, 35), (19, 9), (1, 30), (40, 2)]]
    with torch.no_grad():
        together, _ = token_logprobs(model, pack([p for p, _ in seqs], [c for _, c in seqs]))
        for b, (p, c) in enumerate(seqs):
            alone, _ = token_logprobs(model, pack([p], [c]))
            assert torch.equal(alone[0, :len(c)], together[b, :len(c)]), b
    assert cuda.FALLBACKS == {}
