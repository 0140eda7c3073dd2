"""The driver's handles of its actor groups: `TrainerGroup` (the DeepSpeed ranks of one engine)
and `RolloutGroup` (the vLLM engines). Each method is one typed call on every actor, or the
work split over them; the actors receive and return the dataclasses of `trainer/` and
`rollout/`, never plain dicts.

Every wait on an actor is bounded (`faults.call_timeout_s`) and fails fast: an actor that died
or did not answer raises `ActorFailed`, naming it, which the driver acts on (restart the group,
`rl.faults`); `restart()` replaces a group's actors in place, so every holder of the group
keeps a valid handle.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import ray

from rl.config import ConfigError, RunConfig
from rl.model import check_engine_memory, fp8_options, weight_bytes
from rl.placement import Placement
from rollout.completion import Completion
from rollout.worker import EngineInfo, RolloutWorker, WeightLoad
from trainer.batch import SFTStepStats, TokenLogprobs, TrainBatch, TrainSample, UpdateResult
from trainer.config import LossConfig, TrainerSetup
from trainer.worker import DeviceWeights, TrainerInfo, TrainerRank, WeightBucket, free_port, node_ip

log = logging.getLogger("lockstep.driver")

T = TypeVar("T")

# After a call raised, how long to wait for its peers' calls to report a death that caused it.
PEER_DEATH_GRACE_S = 10.0


class ActorFailed(RuntimeError):
    """An actor of a group died (its process is gone: killed, OOM, a crashed node) or did not
    answer within `faults.call_timeout_s` (a hang, a collective waiting on a stuck peer)."""

    def __init__(self, group: str, actor: str, what: str):
        self.group = group  # "rollout" or "trainer": which group the driver must restart
        self.actor = actor
        super().__init__(f"{actor} {what}")


def gather(futures: list[ray.ObjectRef], names: list[str], group: str, timeout_s: float) -> list:
    """The answers of calls on a group's actors (`names[i]` made call i), failing fast: the
    first call whose actor died raises `ActorFailed` at once (a trainer rank's peers would
    otherwise wait on it in their collective until our timeout), and calls unanswered after
    `timeout_s` raise it naming their actors. An actor whose constructor raised is no fault to
    restart from: its own error propagates, as do errors raised inside a call."""
    where = {ref: i for i, ref in enumerate(futures)}
    answers: list = [None] * len(futures)
    deadline, remaining = time.monotonic() + timeout_s, list(futures)
    while remaining:
        ready, remaining = ray.wait(remaining, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            stuck = ", ".join(names[where[ref]] for ref in remaining)
            raise ActorFailed(group, stuck, f"did not answer within faults.call_timeout_s={timeout_s:g} s "
                                            "(hung, or waiting in a collective on a peer that is)")
        try:
            answers[where[ready[0]]] = ray.get(ready[0])
        except ray.exceptions.RayActorError as e:
            if e.actor_init_failed:
                raise
            raise ActorFailed(group, names[where[ready[0]]], "died") from None
        except ray.exceptions.RayTaskError:
            # A rank's collective fails when its peer dies ("connection closed by peer"): the
            # death is the fault to act on, if one of the other calls reports it soon.
            for ref in ray.wait(remaining, num_returns=len(remaining), timeout=PEER_DEATH_GRACE_S)[0]:
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    if not e.actor_init_failed:
                        raise ActorFailed(group, names[where[ref]], "died") from None
                except ray.exceptions.RayTaskError:
                    pass
            raise
    return answers


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

    def __init__(self, placement: Placement, setup: TrainerSetup, timeout_s: float):
        self.placement, self.setup, self.timeout_s = placement, setup, timeout_s
        self.actors: list = []
        self.launch_ranks()

    @classmethod
    def start(cls, placement: Placement, setup: TrainerSetup, timeout_s: float) -> TrainerGroup:
        """The ranks, each waited for at most `timeout_s` (faults.call_timeout_s)."""
        return cls(placement, setup, timeout_s)

    def launch_ranks(self) -> None:
        @ray.remote
        def rendezvous():
            return node_ip(), free_port()

        addr, port = ray.get(rendezvous.options(**self.placement.options(self.placement.trainer_bundles[0])).remote(),
                             timeout=self.timeout_s)
        ranks = len(self.placement.trainer_bundles)
        actor_cls = ray.remote(TrainerRank)
        self.actors = [actor_cls.options(**self.placement.options(b)).remote(rank, ranks, addr, port, self.setup)
                       for rank, b in enumerate(self.placement.trainer_bundles)]
        infos = self.gather([a.info.remote() for a in self.actors])
        refusal = next((i.refusal for i in infos if i.refusal), None)
        if refusal:  # one line for the user (lockstep: error: ...), not a remote traceback
            self.kill()
            raise ConfigError(refusal)
        # The training forward is the policy's log-prob (no active dropout) on every rank.
        self.train_forward_is_eval_forward = all(i.train_forward_is_eval_forward for i in infos)
        self.fp8_projections = infos[0].fp8_projections  # weight matrices run as FP8 GEMMs

    def restart(self, model_path: str) -> None:
        """Fresh ranks (all of them: the survivors of a rank's death are stuck in, or poisoned
        by, its collective) built from `model_path`; the caller loads the engine checkpoint."""
        self.kill()
        self.setup = dataclasses.replace(self.setup, model_path=model_path)
        self.launch_ranks()

    def gather(self, futures: list[ray.ObjectRef]) -> list:
        return gather(futures, [f"trainer rank {r}" for r in range(len(futures))], "trainer", self.timeout_s)

    def logprobs(self, samples: list[TrainSample]) -> list[TokenLogprobs]:
        """b_t and entropies of every sample under the current weights, split over the ranks."""
        padded = samples + [samples[-1]] * (-len(samples) % len(self.actors))
        parts = shard(padded, len(self.actors))
        rows = concatenated(self.gather([a.compute_logprobs.remote(p) for a, p in zip(self.actors, parts)]))
        return rows[: len(samples)]

    def reference_logprobs(self, samples: list[TrainSample]) -> list[list[float]]:
        parts = shard(samples, len(self.actors))
        return concatenated(self.gather([a.reference_logprobs.remote(p) for a, p in zip(self.actors, parts)]))

    def train_step(self, samples: list[TrainSample], normaliser: float) -> list[UpdateResult]:
        """One optimiser step on a mini-batch, each rank taking its contiguous share."""
        parts = shard(samples, len(self.actors))
        return self.gather([a.train_step.remote(TrainBatch(p, normaliser)) for a, p in zip(self.actors, parts)])

    def sft_step(self, prompts: list[list[int]], targets: list[list[int]]) -> list[SFTStepStats]:
        n = len(self.actors)
        return self.gather([a.sft_step.remote(p, t)
                        for a, p, t in zip(self.actors, shard(prompts, n), shard(targets, n))])

    def probe_logprobs(self, token_ids: list[int]) -> Pending[list[float]]:
        """The teacher-forced log-probs of `token_ids` (the sync probe), rank 0's answer."""
        return Pending([a.probe_logprobs.remote(token_ids) for a in self.actors], rank_zero, self.gather)

    def weight_buckets(self, bucket_mib: float) -> list[WeightBucket]:
        return self.gather([a.weight_buckets.remote(bucket_mib) for a in self.actors])[0]

    def device_weight_buckets(self, bucket_mib: float) -> list[DeviceWeights]:
        """Each rank's full weights in device buckets on its GPU (rank k's for engine k)."""
        return self.gather([a.device_weight_buckets.remote(bucket_mib) for a in self.actors])

    def release_weight_buckets(self) -> None:
        self.gather([a.release_weight_buckets.remote() for a in self.actors])

    def set_loss(self, loss: LossConfig) -> None:
        self.setup = dataclasses.replace(self.setup, loss=loss)  # ranks started by a restart train with it too
        self.gather([a.set_loss.remote(loss) for a in self.actors])

    def save_checkpoint(self, ds_dir: str) -> None:
        self.gather([a.save_checkpoint.remote(ds_dir) for a in self.actors])

    def seal_files(self, directory: str) -> dict[str, list]:
        """{relative path: [size, checksum]} of every file under `directory`, fsynced, each rank
        taking its share."""
        return {name: entry for part in self.gather([a.seal_files.remote(directory) for a in self.actors])
                for name, entry in part.items()}

    def load_checkpoint(self, ds_dir: str) -> None:
        self.gather([a.load_checkpoint.remote(ds_dir) for a in self.actors])

    def export_hf(self, out_dir: str, tokenizer_dir: str) -> None:
        self.gather([a.export_hf.remote(out_dir, tokenizer_dir) for a in self.actors])

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a)


class Pending(Generic[T]):
    """Actor calls in flight; `result()` waits for them and combines their answers."""

    def __init__(self, futures: list[ray.ObjectRef], combine: Callable[[list], T],
                 gather: Callable[[list[ray.ObjectRef]], list]):
        self.futures, self.combine, self.gather = futures, combine, gather  # the group's bounded gather
        self.answers: list | None = None

    def wait(self) -> None:
        """Until every call has finished (a dead or hung actor raises here already)."""
        if self.answers is None:
            self.answers = self.gather(self.futures)

    def result(self) -> T:
        self.wait()
        return self.combine(self.answers)


def rank_zero(answers: list[T]) -> T:
    return answers[0]


def concatenated(parts: list[list[T]]) -> list[T]:
    return [item for part in parts for item in part]


class RolloutGroup:
    """The vLLM engines. Each engine runs its calls in the order they were made, which the
    driver relies on: a probe queued before a sampling call sees the weights that sampled."""

    def __init__(self, placement: Placement, cfg: RunConfig, model_path: str, trainer_fp8_projections: int,
                 sleeps: bool):
        self.placement, self.cfg, self.model_path = placement, cfg, model_path
        self.trainer_fp8_projections = trainer_fp8_projections
        self.sleeps = sleeps  # the engines release their memory while the trainer runs
        self.timeout_s = cfg.faults.call_timeout_s
        self.actors: list = []
        self.launch_engines()

    @classmethod
    def start(cls, placement: Placement, cfg: RunConfig, model_path: str,
              trainer_fp8_projections: int) -> RolloutGroup:
        """The engines, checked to quantize the weights the trainer quantizes (model.fp8)."""
        if placement.gpus:
            check_engine_memory(cfg, weight_bytes(model_path, cfg.model.dtype), gpu_memory(placement))
        return cls(placement, cfg, model_path, trainer_fp8_projections, sleep_while_training(cfg, placement))

    def launch_engines(self) -> None:
        cfg, actor_cls = self.cfg, ray.remote(RolloutWorker)
        self.actors = [actor_cls.options(**self.placement.options(b)).remote(
                           self.model_path, cfg.model.dtype, cfg.rollout, cfg.seed + k, self.sleeps, fp8_options(cfg),
                           strict=cfg.mode == "strict")
                       for k, b in enumerate(self.placement.rollout_bundles)]
        self.infos = self.gather([a.info.remote() for a in self.actors])
        engines = {i.fp8_projections for i in self.infos}
        if engines != {self.trainer_fp8_projections}:  # a side that silently stayed unquantized
            raise RuntimeError(f"model.fp8: the trainer runs {self.trainer_fp8_projections} projections as FP8 "
                               f"GEMMs, the rollout engines {sorted(engines)}; both must quantize the same "
                               "weights")

    def restart(self, model_path: str) -> None:
        """Fresh engines built from `model_path`; the caller sends them the trainer's current
        weights (`WeightSync.resend`)."""
        self.kill()
        self.model_path = model_path
        self.launch_engines()

    def gather(self, futures: list[ray.ObjectRef]) -> list:
        return gather(futures, [f"rollout engine {k}" for k in range(len(futures))], "rollout", self.timeout_s)

    def launch(self, prompts: list[list[int]], n: int, max_tokens: int, temperature: float,
               top_p: float = 1.0, top_k: int = -1, ignore_eos: bool = False) -> Pending[list[list[Completion]]]:
        """Splits the prompts evenly over the engines and starts sampling n completions of each;
        the result holds each prompt's group, in prompt order."""
        parts = max(1, min(len(self.actors), len(prompts)))
        bounds = [round(k * len(prompts) / parts) for k in range(parts + 1)]
        calls = [a.generate.remote(prompts[lo:hi], n, max_tokens, temperature, top_p, top_k, ignore_eos)
                 for a, lo, hi in zip(self.actors[:parts], bounds, bounds[1:])]
        return Pending(calls, concatenated, self.gather)

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int, temperature: float,
                 top_p: float = 1.0, top_k: int = -1) -> list[list[Completion]]:
        return self.launch(prompts, n, max_tokens, temperature, top_p, top_k).result()

    def abort_groups(self) -> int:
        """Stops every group submitted for asynchronous rollout and not taken (rl.async_rollout)."""
        return sum(self.gather([a.abort_groups.remote() for a in self.actors]))

    def set_version(self, version: int) -> None:
        """Labels the weights every engine holds (a run resumed from the checkpoint of `version`)."""
        self.gather([a.set_version.remote(version) for a in self.actors])

    def probe_logprobs(self, token_ids: list[int]) -> Pending[list[list[float]]]:
        """Each engine's teacher-forced log-probs of `token_ids`, queued behind its earlier calls."""
        return Pending([a.prompt_logprobs.remote(token_ids) for a in self.actors], list, self.gather)

    def sleep(self) -> int:
        """Releases every engine's GPU memory; returns the bytes freed in all."""
        return sum(self.gather([a.sleep.remote() for a in self.actors]))

    def update_weights(self, refs: list, digests: list[str], tensors: int, version: int,
                       probe_ids: list[int]) -> list[WeightLoad]:
        return self.gather([a.update_weights.remote(refs, digests, tensors, version, probe_ids)
                        for a in self.actors])

    def update_weights_device(self, weights: list[DeviceWeights], version: int,
                              probe_ids: list[int]) -> list[WeightLoad]:
        """Engine k loads the device buckets of the trainer rank on its GPU, `weights[k]`."""
        return self.gather([a.update_weights_device.remote(w.payload, w.tensors, w.bytes, version, probe_ids)
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

    return ray.get(total.options(**placement.options(placement.rollout_bundles[0])).remote(), timeout=300)


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
