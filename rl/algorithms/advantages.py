"""Group-relative advantages (GRPO, Dr.GRPO) and group filters.

Rewards arrive as one flat tensor of n_groups × G samples, group-major (sample g of prompt p at
index p·G + g). Every completion in a group gets one scalar advantage, broadcast over its tokens
by the loss.
"""

from __future__ import annotations

import torch


def grpo_advantages(rewards: torch.Tensor, group_size: int, std_normalize: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i - mean_group) / (std_group + eps); without std normalisation (Dr.GRPO) just
    r_i - mean_group. std is the unbiased sample std, as in the GRPO paper.

    rewards: [n_groups * G] float → advantages: [n_groups * G] float32
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} entries, got {tuple(rewards.shape)}")
    r = rewards.float().view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if std_normalize:
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dynamic sampling (DAPO): a group whose rewards are all equal has zero advantage and no
    learning signal. Returns a bool mask [n_groups]."""
    r = rewards.float().view(-1, group_size)
    return (r.max(dim=1).values - r.min(dim=1).values) > 0


def fill_batch(informative: list[bool], n_groups: int) -> list[int]:
    """Dynamic sampling with refill (DAPO): which of the groups drawn this step (in the order
    they were drawn) make up a batch of `n_groups`. Informative groups first, earliest first;
    extras beyond `n_groups` are dropped; a shortfall is filled with uninformative groups,
    which train with weight 0 (every rank keeps the same batch shape). Returns group indices
    in drawn order."""
    if len(informative) < n_groups:
        raise ValueError(f"need at least {n_groups} groups to fill a batch, got {len(informative)}")
    useful = [i for i, ok in enumerate(informative) if ok][:n_groups]
    filler = [i for i, ok in enumerate(informative) if not ok][: n_groups - len(useful)]
    return sorted(useful + filler)
