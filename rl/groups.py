"""The driver's handles of its actor groups: `TrainerGroup` (the DeepSpeed ranks of one engine)
and `RolloutGroup` (the vLLM engines). Each method is one typed call on every actor, or the
work split over them; the actors receive and return the dataclasses of `trainer/` and
`rollout/`, never plain dicts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Generic, TypeVar

import ray

from rl.config import RunConfig
from rl.model import check_engine_memory, fp8_options, weight_bytes
from rl.placement import Placement
from rollout.completion import Completion
from rollout.worker import EngineInfo, RolloutWorker, WeightLoad
from trainer.batch import SFTStepStats, TokenLogprobs, TrainBatch, TrainSample, UpdateResult
from trainer.config import LossConfig, TrainerSetup
from trainer.worker import DeviceWeights, TrainerInfo, TrainerRank, WeightBucket, free_port, node_ip

log = logging.getLogger("lockstep.driver")

T = TypeVar("T")


def shard(items: list, parts: int) -> list[list]:
    """Contiguous equal shards (len(items) must divide by parts)."""
    n = len(items) // parts
    return [items[i * n : (i + 1) * n] for i in range(parts)]


def trainer_setup(cfg: RunConfig, model_path: str, lr: float, samples_per_step: int,
                  loss: LossConfig | None) -> TrainerSetup:
    """An engine that takes `samples_per_step` samples per optimiser step over all ranks."""
    micro_batches = math.ceil(samples_per_step // cfg.trainer.num_ranks / cfg.trainer.micro_batch_size)
    # strict mode is the RL engine's (its log-probs meet the rollout's), not the SFT warm start's
    return TrainerSetup(model_path, cfg.model.dtype, cfg.trainer, lr, micro_batches, cfg.seed,
                        cfg.rollout.temperature, loss, fp8_options(cfg),
                        strict=cfg.mode == "strict" and loss is not None)


class TrainerGroup:
    """The ranks of one DeepSpeed engine. Every call goes to every rank (ZeRO's collectives
    need them all); rank 0 answers for the group where one answer is enough."""

    def __init__(self, actors: list, infos: list[TrainerInfo]):
        self.actors = actors
        # The training forward is the policy's log-prob (no active dropout) on every rank.
        self.train_forward_is_eval_forward = all(i.train_forward_is_eval_forward for i in infos)
        self.fp8_projections = infos[0].fp8_projections  # weight matrices run as FP8 GEMMs

    @classmethod
    def start(cls, placement: Placement, setup: TrainerSetup) -> TrainerGroup:
        @ray.remote
        def rendezvous():
            return node_ip(), free_port()

        addr, port = ray.get(rendezvous.options(**placement.options(placement.trainer_bundles[0])).remote())
        ranks = len(placement.trainer_bundles)
        actor_cls = ray.remote(TrainerRank)
        actors = [actor_cls.options(**placement.options(b)).remote(rank, ranks, addr, port, setup)
                  for rank, b in enumerate(placement.trainer_bundles)]
        return cls(actors, ray.get([a.info.remote() for a in actors]))

    def logprobs(self, samples: list[TrainSample]) -> list[TokenLogprobs]:
        """b_t and entropies of every sample under the current weights, split over the ranks."""
        padded = samples + [samples[-1]] * (-len(samples) % len(self.actors))
        parts = shard(padded, len(self.actors))
        rows = concatenated(ray.get([a.compute_logprobs.remote(p) for a, p in zip(self.actors, parts)]))
        return rows[: len(samples)]

    def reference_logprobs(self, samples: list[TrainSample]) -> list[list[float]]:
        parts = shard(samples, len(self.actors))
        return concatenated(ray.get([a.reference_logprobs.remote(p) for a, p in zip(self.actors, parts)]))

    def train_step(self, samples: list[TrainSample], normaliser: float) -> list[UpdateResult]:
        """One optimiser step on a mini-batch, each rank taking its contiguous share."""
        parts = shard(samples, len(self.actors))
        return ray.get([a.train_step.remote(TrainBatch(p, normaliser)) for a, p in zip(self.actors, parts)])

    def sft_step(self, prompts: list[list[int]], targets: list[list[int]]) -> list[SFTStepStats]:
        n = len(self.actors)
        return ray.get([a.sft_step.remote(p, t)
                        for a, p, t in zip(self.actors, shard(prompts, n), shard(targets, n))])

    def probe_logprobs(self, token_ids: list[int]) -> Pending[list[float]]:
        """The teacher-forced log-probs of `token_ids` (the sync probe), rank 0's answer."""
        return Pending([a.probe_logprobs.remote(token_ids) for a in self.actors], rank_zero)

    def weight_buckets(self, bucket_mib: float) -> list[WeightBucket]:
        return ray.get([a.weight_buckets.remote(bucket_mib) for a in self.actors])[0]

    def device_weight_buckets(self, bucket_mib: float) -> list[DeviceWeights]:
        """Each rank's full weights in device buckets on its GPU (rank k's for engine k)."""
        return ray.get([a.device_weight_buckets.remote(bucket_mib) for a in self.actors])

    def release_weight_buckets(self) -> None:
        ray.get([a.release_weight_buckets.remote() for a in self.actors])

    def save_checkpoint(self, ds_dir: str) -> None:
        ray.get([a.save_checkpoint.remote(ds_dir) for a in self.actors])

    def seal_files(self, directory: str) -> dict[str, list]:
        """{relative path: [size, checksum]} of every file under `directory`, fsynced, each rank
        taking its share."""
        return {name: entry for part in ray.get([a.seal_files.remote(directory) for a in self.actors])
                for name, entry in part.items()}

    def load_checkpoint(self, ds_dir: str) -> None:
        ray.get([a.load_checkpoint.remote(ds_dir) for a in self.actors])

    def export_hf(self, out_dir: str, tokenizer_dir: str) -> None:
        ray.get([a.export_hf.remote(out_dir, tokenizer_dir) for a in self.actors])

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a)


class Pending(Generic[T]):
    """Actor calls in flight; `result()` waits for them and combines their answers."""

    def __init__(self, futures: list[ray.ObjectRef], combine: Callable[[list], T]):
        self.futures, self.combine = futures, combine

    def wait(self) -> None:
        """Until every call has finished, without fetching the answers."""
        ray.wait(self.futures, num_returns=len(self.futures))

    def result(self) -> T:
        return self.combine(ray.get(self.futures))


def rank_zero(answers: list[T]) -> T:
    return answers[0]


def concatenated(parts: list[list[T]]) -> list[T]:
    return [item for part in parts for item in part]


class RolloutGroup:
    """The vLLM engines. Each engine runs its calls in the order they were made, which the
    driver relies on: a probe queued before a sampling call sees the weights that sampled."""

    def __init__(self, actors: list, sleeps: bool, infos: list[EngineInfo]):
        self.actors = actors
        self.sleeps = sleeps  # the engines release their memory while the trainer runs
        self.infos = infos

    @classmethod
    def start(cls, placement: Placement, cfg: RunConfig, model_path: str,
              trainer_fp8_projections: int) -> RolloutGroup:
        """The engines, checked to quantize the weights the trainer quantizes (model.fp8)."""
        if placement.gpus:
            check_engine_memory(cfg, weight_bytes(model_path, cfg.model.dtype), gpu_memory(placement))
        sleeps = sleep_while_training(cfg, placement)
        actor_cls = ray.remote(RolloutWorker)
        actors = [actor_cls.options(**placement.options(b)).remote(
                      model_path, cfg.model.dtype, cfg.rollout, cfg.seed + k, sleeps, fp8_options(cfg),
                      strict=cfg.mode == "strict")
                  for k, b in enumerate(placement.rollout_bundles)]
        infos = ray.get([a.info.remote() for a in actors])
        engines = {i.fp8_projections for i in infos}
        if engines != {trainer_fp8_projections}:  # a side that silently stayed unquantized
            raise RuntimeError(f"model.fp8: the trainer runs {trainer_fp8_projections} projections as FP8 "
                               f"GEMMs, the rollout engines {sorted(engines)}; both must quantize the same "
                               "weights")
        return cls(actors, sleeps, infos)

    def launch(self, prompts: list[list[int]], n: int, max_tokens: int, temperature: float,
               top_p: float = 1.0, top_k: int = -1, ignore_eos: bool = False) -> Pending[list[list[Completion]]]:
        """Splits the prompts evenly over the engines and starts sampling n completions of each;
        the result holds each prompt's group, in prompt order."""
        parts = max(1, min(len(self.actors), len(prompts)))
        bounds = [round(k * len(prompts) / parts) for k in range(parts + 1)]
        calls = [a.generate.remote(prompts[lo:hi], n, max_tokens, temperature, top_p, top_k, ignore_eos)
                 for a, lo, hi in zip(self.actors[:parts], bounds, bounds[1:])]
        return Pending(calls, concatenated)

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int, temperature: float,
                 top_p: float = 1.0, top_k: int = -1) -> list[list[Completion]]:
        return self.launch(prompts, n, max_tokens, temperature, top_p, top_k).result()

    def probe_logprobs(self, token_ids: list[int]) -> Pending[list[list[float]]]:
        """Each engine's teacher-forced log-probs of `token_ids`, queued behind its earlier calls."""
        return Pending([a.prompt_logprobs.remote(token_ids) for a in self.actors], list)

    def sleep(self) -> int:
        """Releases every engine's GPU memory; returns the bytes freed in all."""
        return sum(ray.get([a.sleep.remote() for a in self.actors]))

    def update_weights(self, refs: list, digests: list[str], tensors: int, version: int,
                       probe_ids: list[int]) -> list[WeightLoad]:
        return ray.get([a.update_weights.remote(refs, digests, tensors, version, probe_ids)
                        for a in self.actors])

    def update_weights_device(self, weights: list[DeviceWeights], version: int,
                              probe_ids: list[int]) -> list[WeightLoad]:
        """Engine k loads the device buckets of the trainer rank on its GPU, `weights[k]`."""
        return ray.get([a.update_weights_device.remote(w.payload, w.tensors, w.bytes, version, probe_ids)
                        for a, w in zip(self.actors, weights)])

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a)


def gpu_memory(placement: Placement) -> int:
    """Total bytes of the GPU of the first rollout bundle, as a task placed there sees it."""

    @ray.remote
    def total() -> int:
        import torch

        return torch.cuda.mem_get_info()[1]

    return ray.get(total.options(**placement.options(placement.rollout_bundles[0])).remote())


def sleep_while_training(cfg: RunConfig, placement: Placement) -> bool:
    choice = cfg.rollout.sleep_while_training
    if choice == "on" and not placement.gpus:
        log.warning("rollout.sleep_while_training=on ignored: vLLM has no sleep mode on CPU; "
                    "the engines stay resident")
        return False
    colocated = placement.gpus and cfg.ray.placement == "colocated"
    sleeps = choice == "on" or (choice == "auto" and colocated and not cfg.rollout.max_staleness)
    log.info("rollout engines %s while the trainer runs", "sleep" if sleeps else "stay resident")
    return sleeps
