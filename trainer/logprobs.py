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
    """One forward's token rows and the completion-token view of them.

    Two layouts (``padded`` tells which):
    * padded (:func:`pack`): row b is sample b's prompt + completion, right-padded to the
      longest; input_ids, attention_mask ``[B, L]``, position_ids None (0..L-1).
    * flat (:func:`pack_flat`): every sample concatenated into one row ``[1, T]``, no padding;
      attention_mask None and position_ids restarting at 0 at each sample's first token — the
      packed-sequence convention of transformers (a position that is not the previous one + 1
      starts a sequence), which the Ring-linear model turns into ``cu_seqlens``.

    completion_ids, completion_mask ``[B, Tc]``; hidden_index ``[B, Tc]``: the position, in the
    flattened ``[rows · L]`` forward output, whose hidden state predicts completion token j of
    sample b (the one just before it)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    hidden_index: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    padded_tokens: int  # forward positions that hold no token of a sample

    @property
    def padded(self) -> bool:
        return self.attention_mask is not None


def _completion_view(completions: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    Tc = max(1, max(len(c) for c in completions))
    completion_ids = torch.full((len(completions), Tc), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((len(completions), Tc), dtype=torch.float32)
    for b, c in enumerate(completions):
        if c:
            completion_ids[b, : len(c)] = torch.tensor(c)
            completion_mask[b, : len(c)] = 1
    return completion_ids, completion_mask


def _check_samples(prompts: list[list[int]], completions: list[list[int]]) -> None:
    if len(prompts) != len(completions) or not prompts:
        raise ValueError("pack needs one completion per prompt and at least one sample")
    if any(not p for p in prompts):
        raise ValueError("pack needs a non-empty prompt for every sample (its last token predicts "
                         "the first completion token)")


def pack(prompts: list[list[int]], completions: list[list[int]], pad_id: int = 0) -> PackedBatch:
    """The padded layout: one row per sample, right-padded to the longest."""
    _check_samples(prompts, completions)
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    B, L = len(prompts), max(lengths)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.long)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        seq = list(p) + list(c)
        input_ids[b, : len(seq)] = torch.tensor(seq)
        attention_mask[b, : len(seq)] = 1
    completion_ids, completion_mask = _completion_view(completions, pad_id)
    starts = torch.arange(B) * L  # row b begins at b·L in the flattened output
    return PackedBatch(input_ids, attention_mask, None,
                       _hidden_index(starts, [len(p) for p in prompts], lengths, completion_ids.shape[1]),
                       completion_ids, completion_mask, B * L - sum(lengths))


def pack_flat(prompts: list[list[int]], completions: list[list[int]]) -> PackedBatch:
    """The flat layout: all samples in one row, back to back, positions restarting per sample."""
    _check_samples(prompts, completions)
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    input_ids = torch.tensor([t for p, c in zip(prompts, completions) for t in (*p, *c)])[None]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    completion_ids, completion_mask = _completion_view(completions, 0)
    starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
    return PackedBatch(input_ids, None, position_ids,
                       _hidden_index(starts, [len(p) for p in prompts], lengths, completion_ids.shape[1]),
                       completion_ids, completion_mask, 0)


def _hidden_index(starts: torch.Tensor, prompt_lens: list[int], lengths: list[int], Tc: int) -> torch.Tensor:
    """[B, Tc] flat positions start_b + prompt_len_b − 1 + j, clamped into sample b's own tokens
    (positions past a completion's end are masked out; the clamp keeps them off a neighbour)."""
    j = torch.arange(Tc)[None, :]
    last = starts + torch.tensor(lengths) - 1
    idx = (starts + torch.tensor(prompt_lens) - 1)[:, None] + j
    return torch.minimum(idx, last[:, None])


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


def token_logprobs(model: torch.nn.Module, batch: PackedBatch, temperature: float = 1.0, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Returns (logp [B, Tc] fp32, entropy [B, Tc] fp32 or None); padded positions hold 0.

    Only the completion positions go through the LM head (`use_fp32_lm_head` must have been
    applied to the model)."""
    device = next(model.parameters()).device
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    # No cache: transformers' models build one by default (config.use_cache), and with a cache
    # they ignore the packed layout's restarting positions.
    inputs = {"input_ids": batch.input_ids.to(device), "use_cache": False}
    if batch.padded:
        inputs["attention_mask"] = batch.attention_mask.to(device)
    else:  # no mask: the model tells the sequences apart by their restarting positions
        inputs["position_ids"] = batch.position_ids.to(device)
    hidden = backbone(**inputs).last_hidden_state  # [rows, L, d]
    hidden = hidden.reshape(-1, hidden.shape[-1])  # [rows · L, d]
    h = hidden[batch.hidden_index.to(device)]  # [B, Tc, d]
    logp, entropy = model.get_output_embeddings()(h, batch.completion_ids.to(device), temperature)  # see use_fp32_lm_head
    mask = batch.completion_mask.to(device)
    return logp * mask, (entropy * mask if with_entropy else None)
