"""Group-relative advantages (GRPO, Dr.GRPO) and group filters.

Rewards arrive as one flat tensor of n_groups × G samples, group-major (sample g of prompt p at
index p·G + g). Every completion in a group gets one scalar advantage, broadcast over its tokens
by the loss.
"""

from __future__ import annotations

import torch


def grpo_advantages(rewards: torch.Tensor, group_size: int, std_normalize: bool = True, eps: float = 1e-6,
                    valid: torch.Tensor | None = None) -> torch.Tensor:
    """A_i = (r_i - mean_group) / (std_group + eps); without std normalisation (Dr.GRPO) just
    r_i - mean_group. std is the unbiased sample std, as in the GRPO paper.

    `valid` [n_groups * G] bool (None: all) marks the samples that count: the group's mean and
    std are over its valid samples only, so a sample the verifier could not grade does not move
    its group's baseline. Invalid samples get advantage 0, and so does every sample of a group
    with fewer than 2 valid ones (no baseline to compare against).

    rewards: [n_groups * G] float → advantages: [n_groups * G] float32
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} entries, got {tuple(rewards.shape)}")
    r = rewards.float().view(-1, group_size)
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.view(-1, group_size)
    n = v.sum(dim=1, keepdim=True)
    mean = torch.where(v, r, 0.0).sum(dim=1, keepdim=True) / n.clamp(min=1)
    centred = torch.where(v, r - mean, 0.0)
    if std_normalize:
        std = (centred.square().sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
        centred = centred / (std + eps)
    return torch.where(n >= 2, centred, 0.0).reshape(-1)


def graded_samples(graded: torch.Tensor, group_size: int, policy: str) -> torch.Tensor:
    """Which samples count, given which ones the verifier graded (`algorithm.ungraded`): `mask`
    keeps the graded ones; `drop_group` keeps only groups graded throughout.

    graded: [n_groups * G] bool → [n_groups * G] bool"""
    if policy == "mask":
        return graded.clone()
    if policy == "drop_group":
        return graded.view(-1, group_size).all(dim=1, keepdim=True).expand(-1, group_size).reshape(-1)
    raise ValueError(f"unknown ungraded policy {policy!r} (mask, drop_group)")


def baseline_groups(valid: torch.Tensor, group_size: int) -> torch.Tensor:
    """Groups with at least 2 valid samples, i.e. a baseline to compare against. [n_groups] bool"""
    return valid.view(-1, group_size).sum(dim=1) >= 2


def informative_groups(rewards: torch.Tensor, group_size: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Dynamic sampling (DAPO): a group whose rewards are all equal has zero advantage and no
    learning signal. With `valid`, only its valid samples' rewards count (fewer than 2: not
    informative). Returns a bool mask [n_groups]."""
    r = rewards.float().view(-1, group_size)
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.view(-1, group_size)
    high = torch.where(v, r, -torch.inf).max(dim=1).values
    low = torch.where(v, r, torch.inf).min(dim=1).values
    return (high - low) > 0


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
