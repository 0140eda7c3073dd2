"""Per-token log-probs of sampled completions under the training model, in fp32.

Alignment rule (DESIGN.md §4): the LM head's logits and the log-softmax are computed in fp32
whatever the model's dtype, and over the raw logits divided by the sampling temperature — the
same quantity the rollout engine reports (`processed_logprobs`, which equals the raw log-probs
at temperature 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedBatch:
    """Right-padded prompt+completion sequences and the completion-token view of them.

    input_ids, attention_mask: [B, L]; completion_ids, completion_mask: [B, Tc] where token j
    of sample b's completion sits at position prompt_len[b] + j of its sequence."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_lens: torch.Tensor  # [B]
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor


def pack(prompts: list[list[int]], completions: list[list[int]], pad_id: int = 0) -> PackedBatch:
    if len(prompts) != len(completions) or not prompts:
        raise ValueError("pack needs one completion per prompt and at least one sample")
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    B, L = len(prompts), max(lengths)
    Tc = max(1, max(len(c) for c in completions))
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.long)
    completion_ids = torch.full((B, Tc), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((B, Tc), dtype=torch.float32)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        seq = list(p) + list(c)
        input_ids[b, : len(seq)] = torch.tensor(seq)
        attention_mask[b, : len(seq)] = 1
        if c:
            completion_ids[b, : len(c)] = torch.tensor(c)
            completion_mask[b, : len(c)] = 1
    prompt_lens = torch.tensor([len(p) for p in prompts])
    return PackedBatch(input_ids, attention_mask, prompt_lens, completion_ids, completion_mask)


def use_fp32_lm_head(model: torch.nn.Module, strict: bool = False) -> None:
    """Routes the model's LM head through `kernels.lm_head.token_logprobs`: sampled-token
    log-probs and entropies in fp32 from the model-dtype hidden state and weight, fp32
    accumulation, chunked over the vocabulary (no fp32 copy of the weight, no [N, V] fp32
    logits). The head module keeps its own call (ZeRO-3's gather hooks fire on it); called as
    `head(hidden, tokens, temperature)` it returns (logp, entropy).

    `strict` (strict mode): the logits from the row-tiled GEMM and the rollout sampler's own
    log-softmax expression (`kernels.batch_invariant.log_softmax_tokens`), as the vLLM plugin
    computes them, so the log-probs are the engine's bits ([N, V] fp32 logits: fine for small
    vocabularies)."""
    from kernels.batch_invariant import linear as invariant_linear
    from kernels.batch_invariant import log_softmax_tokens
    from kernels.lm_head import token_logprobs as head_token_logprobs

    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError("LM heads with a bias are not supported by the fp32 log-prob head")

    def forward(hidden: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        return head_token_logprobs(hidden.to(head.weight.dtype), head.weight, tokens, temperature=temperature)

    def forward_strict(hidden: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        w = head.weight
        logits = invariant_linear(hidden.reshape(-1, hidden.shape[-1]).to(w.dtype), w).float()
        logp, entropy = log_softmax_tokens(logits, tokens.reshape(-1), temperature)
        return logp.view(tokens.shape), entropy.view(tokens.shape)

    head.forward = forward_strict if strict else forward


def completion_hidden_index(batch: PackedBatch) -> torch.Tensor:
    """[B, Tc] positions whose output predicts each completion token: prompt_len − 1 + j."""
    Tc = batch.completion_ids.shape[1]
    idx = batch.prompt_lens[:, None] - 1 + torch.arange(Tc)[None, :]
    return idx.clamp(max=batch.input_ids.shape[1] - 1)


def token_logprobs(model: torch.nn.Module, batch: PackedBatch, temperature: float = 1.0, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Returns (logp [B, Tc] fp32, entropy [B, Tc] fp32 or None); padded positions hold 0.

    Only the completion positions go through the LM head (`use_fp32_lm_head` must have been
    applied to the model)."""
    device = next(model.parameters()).device
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    hidden = backbone(
        input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)
    ).last_hidden_state  # [B, L, d]
    index = completion_hidden_index(batch).to(device)
    h = torch.gather(hidden, 1, index[..., None].expand(-1, -1, hidden.shape[-1]))  # [B, Tc, d]
    logp, entropy = model.get_output_embeddings()(h, batch.completion_ids.to(device), temperature)  # see use_fp32_lm_head
    mask = batch.completion_mask.to(device)
    return logp * mask, (entropy * mask if with_entropy else None)
