"""Packed micro-batches (`trainer.pack_tokens`): which samples share a forward, and the start-up
check that a model computes a packed sequence as it computes it alone.

With packing on, a micro-batch is a token budget instead of a sequence count: samples are
concatenated into one row (`trainer.logprobs.pack_flat`: positions restart at each sample, no
attention mask, no padding) and the model keeps them apart — the Ring-linear model through
`cu_seqlens` (each linear-attention state from zero, causal softmax attention within each
sequence), transformers' models through their own packed path (the block-diagonal mask they
derive from the restarting positions; flash-attention's varlen kernel where they use it).
"""

from __future__ import annotations

import torch


def plan_packs(lengths: list[int], budget: int) -> list[list[int]]:
    """Sample indices of each pack: first-fit decreasing, so each pack holds ≤ `budget` tokens
    (a sample longer than the budget gets a pack of its own). Deterministic: ties keep sample
    order; within a pack samples keep their order."""
    if budget < 1:
        raise ValueError(f"the token budget of a pack must be ≥ 1, got {budget}")
    packs: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for p, free in enumerate(room):
            if lengths[i] <= free:
                packs[p].append(i)
                room[p] -= lengths[i]
                break
        else:
            packs.append([i])
            room.append(budget - lengths[i])
    return [sorted(p) for p in packs]


def packed_forward_mismatch(model: torch.nn.Module) -> float:
    """Largest relative difference between two short sequences' final hidden states computed
    packed in one row and each alone (0 for a model whose packed path is exact; a model that
    ignores the packed layout — attends across the boundary, carries a recurrent state over —
    gives O(1)). Runs the decoder without gradients, in eval mode, on the model's device."""
    from trainer.logprobs import pack, pack_flat

    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, vocab, (n,), generator=g).tolist() for n in (7, 9)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            flat = pack_flat([s[:1] for s in seqs], [s[1:] for s in seqs])
            packed = backbone(input_ids=flat.input_ids.to(device), position_ids=flat.position_ids.to(device),
                              use_cache=False).last_hidden_state[0].float()
            alone = torch.cat([backbone(input_ids=torch.tensor([s], device=device),
                                        use_cache=False).last_hidden_state[0].float() for s in seqs])
    finally:
        model.train(was_training)
    return ((packed - alone).abs().max() / alone.abs().max().clamp(min=1e-30)).item()


# The start-up check's bound: far above the rounding of a packed forward (3e-7 in fp32 for the
# Ring-linear model; ~1e-6 for SDPA with a mask; bf16 rounding ~1e-2), far below a leak (O(1)).
PACKING_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 5e-2}
