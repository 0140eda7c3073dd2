"""Non-fused references for the LM head: full-vocabulary logits, then log-softmax and gather.

``token_logprobs_ref`` materialises all logits (float64 by default): the test oracle. With
``dtype=torch.float32`` it is the naive fp32 path the benchmark compares against
(``F.linear(h.float(), w.float()).log_softmax(-1).gather(...)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logits_ref(hidden: torch.Tensor, weight: torch.Tensor,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """hidden [N, D] × weight [V, D] → logits [N, V] computed and returned in ``dtype``."""
    return F.linear(hidden.to(dtype), weight.to(dtype))


def token_logprobs_ref(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor,
                       temperature: float = 1.0, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprobs [N], entropy [N]) of softmax(logits / temperature), in ``dtype``.

    hidden [N, D], weight [V, D], tokens [N] int (negative = ignored → logprob 0).
    """
    z = logits_ref(hidden, weight, dtype) / temperature
    logp = z.log_softmax(-1)
    valid = tokens >= 0
    lp = logp.gather(1, tokens.clamp(min=0)[:, None]).squeeze(1) * valid
    entropy = -(logp.exp() * logp).sum(-1)
    return lp, entropy
