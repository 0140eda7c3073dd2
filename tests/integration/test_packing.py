"""Packed micro-batches (`trainer.pack_tokens`) through the trainer stage of an RL step: two
real DeepSpeed ranks (Ray actors, gloo) on the Ring-linear demo model take the same samples
packed and padded, and agree on every sample's log-probs, the loss and the gradient norm — over
two optimiser steps, so the second compares the updated weights — with uneven packs across the
ranks (one runs an empty pack) and `trainer/padding_frac`'s counts."""

import math
from dataclasses import replace

import pytest
import ray
import torch

from rl.config import from_data
from rl.groups import TrainerGroup, shard
from rl.model import resolve_model_path
from rl.placement import ACTOR_ENV
from trainer.batch import TrainSample
from trainer.config import TrainerSetup
from trainer.worker import TrainerRank, free_port

from .conftest import tiny_recipe

pytestmark = pytest.mark.integration

RANKS, PER_RANK, MICRO = 2, 8, 4


def _samples(vocab: int) -> list[TrainSample]:
    """Rank 0's share long (prompt 20–30, completion 10–24 tokens), rank 1's short (3–6 + 1–4): at
    a 64-token budget rank 0 needs more packs than rank 1, which then runs an empty one."""
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


def _group(setup: TrainerSetup) -> TrainerGroup:
    port = free_port()
    actor = ray.remote(TrainerRank).options(num_cpus=0, runtime_env={"env_vars": ACTOR_ENV})
    actors = [actor.remote(rank, RANKS, "127.0.0.1", port, setup) for rank in range(RANKS)]
    return TrainerGroup(actors, ray.get([a.info.remote() for a in actors]))


def _two_steps(setup: TrainerSetup, samples: list[TrainSample], normaliser: float):
    group = _group(setup)
    try:
        return [group.train_step(samples, normaliser) for _ in range(2)]
    finally:
        group.kill()


def test_packed_training_step_matches_padded(tmp_path, ray_local):
    cfg = from_data(tiny_recipe(tmp_path, model={"path": "demo:ring-micro"}))
    model_path = resolve_model_path(cfg)
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, num_cpus=2)
    vocab = 384  # the demo tokenizer's
    samples = _samples(vocab)
    normaliser = float(sum(len(s.completion_ids) for s in samples if s.weight > 0))
    setup = TrainerSetup(model_path, "float32", replace(cfg.trainer, cpu_threads=1), cfg.trainer.lr,
                         PER_RANK // MICRO, cfg.seed, 1.0, cfg.algorithm.loss())
    padded = _two_steps(setup, samples, normaliser)
    packed = _two_steps(replace(setup, config=replace(setup.config, pack_tokens=64)), samples, normaliser)

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
    # the padded layout pads each micro-batch to its longest; the packed one only runs rank 1's
    # empty pack (1 position), and runs every sample's tokens exactly once
    tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    pad_stats, pack_stats = padded[0][0].stats + padded[0][1].stats, packed[0][0].stats + packed[0][1].stats
    assert pad_stats.padded_tokens > 0 and pad_stats.forward_tokens == tokens + pad_stats.padded_tokens
    assert pack_stats.padded_tokens == 1 and pack_stats.forward_tokens == tokens + 1
