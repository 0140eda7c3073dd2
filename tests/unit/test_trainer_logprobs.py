import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from trainer.logprobs import pack, token_logprobs, use_fp32_lm_head


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    m = Qwen2ForCausalLM(cfg).eval()
    reference = Qwen2ForCausalLM(cfg).eval()
    reference.load_state_dict(m.state_dict())
    use_fp32_lm_head(m)
    return m, reference


def test_pack_layout():
    b = pack([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_id=0)
    assert b.input_ids.tolist() == [[1, 2, 3, 5, 6], [4, 7, 8, 9, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert b.completion_ids.tolist() == [[5, 6, 0], [7, 8, 9]]
    assert b.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_logprobs_match_full_forward_and_padding(model):
    m, reference = model
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 97, (n,), generator=g).tolist() for n in (5, 2, 9)]
    completions = [torch.randint(1, 97, (n,), generator=g).tolist() for n in (4, 7, 1)]
    with torch.no_grad():
        logp, ent = token_logprobs(m, pack(prompts, completions), temperature=0.7, with_entropy=True)
        for i, (p, c) in enumerate(zip(prompts, completions)):
            ids = torch.tensor([p + c])
            full = (reference(ids).logits[0].double() / 0.7).log_softmax(-1)
            expected = full[len(p) - 1 : -1].gather(-1, torch.tensor(c)[:, None])[:, 0]
            assert torch.allclose(logp[i, : len(c)].double(), expected, atol=1e-5)
            expected_ent = -(full.exp() * full).sum(-1)[len(p) - 1 : -1]
            assert torch.allclose(ent[i, : len(c)].double(), expected_ent, atol=1e-5)
            assert (logp[i, len(c) :] == 0).all()  # padding holds zeros
            alone, _ = token_logprobs(m, pack([p], [c]), temperature=0.7)
            assert torch.allclose(alone[0, : len(c)], logp[i, : len(c)], atol=1e-5)


def test_gradients_flow_through_head(model):
    m, _ = model
    b = pack([[3, 4, 5]], [[6, 7]])
    logp, _ = token_logprobs(m, b)
    logp.sum().backward()
    assert m.model.embed_tokens.weight.grad is not None and m.model.embed_tokens.weight.grad.abs().sum() > 0
    m.zero_grad()
