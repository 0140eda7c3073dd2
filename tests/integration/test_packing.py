"""Packed micro-batches (`trainer.pack_tokens`) through the trainer stage of an RL step: two
real DeepSpeed ranks (`TrainerRank`, ZeRO-1, gloo) on the Ring-linear demo model take the same
samples packed and padded, and agree on every sample's log-probs, the loss and the gradient
norm — over two optimiser steps, so the second compares the updated weights — with uneven packs
across the ranks (one runs an empty pack) and `trainer/padding_frac`'s counts.

The ranks run in two spawned processes rather than Ray actors: what is under test is the ranks'
DeepSpeed engines and collectives, and a private Ray instance's dashboard agent did not come up
within Ray's 30 s on the loaded 2-core machine (the raylet then aborts)."""

import json
import math
import multiprocessing
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rl.config import from_data
from rl.groups import shard
from rl.model import resolve_model_path
from rl.placement import ACTOR_ENV
from trainer.batch import TrainSample
from trainer.config import TrainerSetup
from trainer.packing import plan_packs
from trainer.worker import free_port

from .conftest import tiny_recipe

pytestmark = pytest.mark.integration

RANKS, PER_RANK, MICRO = 2, 8, 4


def _samples(vocab: int) -> list[TrainSample]:
    """Rank 0's share long (prompt 20–30, completion 10–24 tokens), rank 1's short (3–6 + 1–4): at
    a 64-token budget rank 0 needs more packs than rank 1, which then runs empty ones."""
    g = torch.Generator().manual_seed(0)

    def ids(lo: int, hi: int) -> list[int]:
        return torch.randint(1, vocab, (int(torch.randint(lo, hi + 1, (1,), generator=g)),), generator=g).tolist()

    out = []
    for rank in range(RANKS):
        for i in range(PER_RANK):
            prompt, completion = (ids(20, 30), ids(10, 24)) if rank == 0 else (ids(3, 6), ids(1, 4))
            advantage = float(torch.randn(1, generator=g))
            out.append(TrainSample(prompt, completion, [-1.0] * len(completion), advantage,
                                   weight=0.0 if i == 3 else 1.0))  # one sample out of the loss
    return out


def _rank(rank: int, port: int, setups: list[TrainerSetup], samples: list[TrainSample], normaliser: float,
          results) -> None:
    """One rank's process: for each set-up (padded, then packed) a DeepSpeed engine on the same
    checkpoint and two optimiser steps on this rank's share; results go back through the queue."""
    import os

    os.environ.update(ACTOR_ENV)
    from trainer.batch import TrainBatch
    from trainer.worker import TrainerRank

    part = shard(samples, RANKS)[rank]
    try:
        out = []
        for setup in setups:
            trainer = TrainerRank(rank, RANKS, "127.0.0.1", port, setup)
            out.append([trainer.train_step(TrainBatch(part, normaliser)) for _ in range(2)])
    except BaseException:
        import traceback

        out = traceback.format_exc()
    results.put((rank, out))


def _run_ranks(setups: list[TrainerSetup], samples: list[TrainSample], normaliser: float) -> list:
    """[setup][step][rank] UpdateResults."""
    ctx = multiprocessing.get_context("spawn")
    results, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, setups, samples, normaliser, results)) for r in range(RANKS)]
    for p in procs:
        p.start()
    try:
        by_rank = dict(results.get(timeout=900) for _ in procs)
        failed = [out for out in by_rank.values() if isinstance(out, str)]
        assert not failed, failed[0]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return [[[by_rank[r][k][step] for r in range(RANKS)] for step in range(2)] for k in range(len(setups))]


def test_packed_training_step_matches_padded(tmp_path):
    cfg = from_data(tiny_recipe(tmp_path, model={"path": "demo:ring-micro"}))
    model_path = resolve_model_path(cfg)
    vocab = json.loads((Path(model_path) / "config.json").read_text())["vocab_size"]
    samples = _samples(vocab)
    normaliser = float(sum(len(s.completion_ids) for s in samples if s.weight > 0))
    setup = TrainerSetup(model_path, "float32", replace(cfg.trainer, cpu_threads=1), cfg.trainer.lr,
                         PER_RANK // MICRO, cfg.seed, 1.0, cfg.algorithm.loss())
    packed_setup = replace(setup, config=replace(setup.config, pack_tokens=64))
    padded, packed = _run_ranks([setup, packed_setup], samples, normaliser)

    for step, (pad_results, pack_results) in enumerate(zip(padded, packed)):
        for rank, (a, b) in enumerate(zip(pad_results, pack_results)):
            assert len(b.logprobs) == PER_RANK
            for row_a, row_b, s in zip(a.logprobs, b.logprobs, shard(samples, RANKS)[rank]):
                assert len(row_b.logprobs) == len(s.completion_ids)
                torch.testing.assert_close(torch.tensor(row_b.logprobs), torch.tensor(row_a.logprobs),
                                           rtol=0, atol=1e-5)
            assert math.isclose(b.stats.loss, a.stats.loss, rel_tol=1e-5), (step, rank)
            assert math.isclose(b.stats.grad_norm, a.stats.grad_norm, rel_tol=1e-5), (step, rank)
            assert b.stats.grad_norm > 0 and b.stats.tokens == a.stats.tokens
    # the padded layout pads each micro-batch to its longest; the packed one runs every sample's
    # tokens once plus rank 1's empty packs (one position each): rank 0's samples (30–54 tokens)
    # each need a pack of their own, rank 1's fit in fewer
    packs = [len(plan_packs([len(s.prompt_ids) + len(s.completion_ids) for s in part], 64))
             for part in shard(samples, RANKS)]
    empty = RANKS * max(packs) - sum(packs)
    assert packs[0] == PER_RANK and empty > 0
    tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    pad_stats, pack_stats = padded[0][0].stats + padded[0][1].stats, packed[0][0].stats + packed[0][1].stats
    assert pad_stats.padded_tokens > 0 and pad_stats.forward_tokens == tokens + pad_stats.padded_tokens
    assert pack_stats.padded_tokens == empty and pack_stats.forward_tokens == tokens + empty
