"""The rollout sampler's log-probs, restated for the trainer (strict mode).

vLLM reports ``processed_logprobs``: the fp32 logits divided in place by a per-request
temperature tensor ``[N, 1]``, then ``log_softmax(dim=-1)``.  The trainer computes the same
expression on the same logits (from :func:`kernels.batch_invariant.linear`), so the sampled
token's log-prob is the same bits.  Dividing by a tensor matters: torch divides by a Python
scalar as a multiplication by its reciprocal, which rounds differently.  ``torch.log_softmax``
over a contiguous vocabulary row does not depend on the other rows (checked in the tests).
"""

from __future__ import annotations

import torch


def log_softmax_tokens(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits ``[N, V]`` fp32, tokens int ``[N]`` → (log-prob of each token ``[N]``, entropy ``[N]``)."""
    temp = torch.full((logits.shape[0], 1), temperature, dtype=logits.dtype, device=logits.device)
    logp = (logits / temp).log_softmax(dim=-1)
    token = logp.gather(-1, tokens[:, None].long())[:, 0]
    entropy = -(logp.exp() * logp).sum(-1)
    return token, entropy


__all__ = ["log_softmax_tokens"]
