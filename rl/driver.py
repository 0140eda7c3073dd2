"""The driver: the RL loop. Place actors; loop sample → score → advantage → train → sync →
evaluate → save. Everything a step does is visible in `Run.step`; the pieces live beside it.
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from rl import checkpoint, demo_model
from rl.algorithms import advantages as adv
from rl.algorithms.losses import AGGREGATION_NORMALISERS
from rl.algorithms.mismatch import mismatch_metrics
from rl.batch import Sample
from rl.config import ConfigError, RunConfig, save_resolved, to_dict
from rl.data import DataOrder, PromptRenderer, as_list, dataset_name, load_examples
from rl.evaluate import evaluate
from rl.metrics import MetricsLogger, print_progress, progress_line, read_history, sparkline
from rl.placement import ActorGroup, Placement, connect
from rl.rewards_config import build_reward_pool
from rl.weight_sync import PROBE_TEXT, WeightSync

log = logging.getLogger("lockstep.driver")

def resolve_model_path(cfg: RunConfig) -> str:
    if cfg.model.path.startswith("demo:"):
        try:
            return str(demo_model.resolve(cfg.model.path, cfg.model.cache_dir))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return cfg.model.path


def fp8_options(cfg: RunConfig) -> dict | None:
    """The recipe's ``model.fp8`` as both engines take it (``kernels.fp8.swap_linears_to_fp8``'s
    options), or None when off."""
    fp8 = cfg.model.fp8
    return {"pow2_scale": fp8.pow2_scale, "batch_invariant": cfg.mode == "strict"} if fp8.enabled else None


def check_fp8_model(cfg: RunConfig, model_path: str) -> None:
    """``model.fp8`` needs the rollout engine to run Lockstep's layers, which quantize as the
    trainer does: the Ring-linear plugin. Models vLLM runs natively use vLLM's own layers (and
    its own FP8 recipes), so their rollout would silently differ from an FP8 trainer."""
    if not cfg.model.fp8.enabled:
        return
    from transformers import AutoConfig

    from models.ring_linear import ARCHITECTURE  # registers the Ring-linear config type

    try:
        architectures = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code).architectures
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.fp8.enabled: cannot read the config of {model_path} to check its architecture ({e})") from None
    if architectures != [ARCHITECTURE]:
        raise ConfigError(
            f"model.fp8.enabled: FP8 runs where both engines run Lockstep's kernels, i.e. the Ring-linear "
            f"model ({ARCHITECTURE}); {model_path} is {architectures}, which vLLM samples with its own "
            f"layers, so rollout and trainer would quantize differently. Use a Ring-linear model or set "
            f"model.fp8.enabled=false")


@dataclass
class Stage:
    """A trainer group plus what its engine was built for."""

    trainers: ActorGroup
    micro_batches: int
    # Train mode computes what eval mode does (no active dropout): the training forward's
    # log-probs are the policy's.
    train_forward_is_eval_forward: bool
    # Weight matrices the trainer runs as FP8 GEMMs (model.fp8; 0 when off).
    fp8_projections: int


def start_trainers(cfg: RunConfig, placement: Placement, model_path: str, lr: float, samples_per_step: int, use_reference: bool) -> Stage:
    from trainer.worker import TrainerRank, free_port, node_ip

    ranks = cfg.trainer.num_ranks
    per_rank = samples_per_step // ranks
    micro_batches = math.ceil(per_rank / cfg.trainer.micro_batch_size)

    @ray.remote
    def rendezvous():
        return node_ip(), free_port()

    addr, port = ray.get(rendezvous.options(**placement.options(placement.trainer_bundles[0])).remote())
    actor_cls = ray.remote(TrainerRank)
    actors = [
        actor_cls.options(**placement.options(b)).remote(
            rank, ranks, addr, port, model_path, cfg.model.dtype, to_dict(cfg.trainer), lr, micro_batches, cfg.seed, use_reference,
            fp8_options(cfg),
        )
        for rank, b in enumerate(placement.trainer_bundles)
    ]
    group = ActorGroup(actors)
    info = group.call("ping")
    return Stage(group, micro_batches, all(i["train_forward_is_eval_forward"] for i in info), info[0]["fp8_projections"])


def set_scores(samples: list[Sample], scores) -> None:
    """Each sample's verifier score and its reason (correct, wrong, timeout, …)."""
    for s, score in zip(samples, scores):
        s.reward, s.reward_reason = float(score.value), str(score.reason)


def shard(items: list, parts: int) -> list[list]:
    """Contiguous equal shards (len(items) must divide by parts)."""
    n = len(items) // parts
    return [items[i * n : (i + 1) * n] for i in range(parts)]


class Run:
    def __init__(self, cfg: RunConfig, resume: bool | None = None):
        self.cfg = cfg
        self.run_dir = cfg.run_dir
        existing = checkpoint.latest(self.run_dir)
        if resume is True and existing is None:
            raise ConfigError(f"--resume: {self.run_dir} has no complete checkpoint to resume from")
        self.resume_from = existing if resume is not False else None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, self.run_dir / "config.yaml")
        self.base_model = resolve_model_path(cfg)
        check_fp8_model(cfg, self.base_model)

        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.base_model, trust_remote_code=cfg.model.trust_remote_code)
        self.train_set = load_examples(cfg.data.train, "data.train")
        self.renderer = PromptRenderer(self.tokenizer, cfg.data.train)
        # Held-out sets: (name, examples, renderer); the first gives the headline `eval/…`.
        self.eval_sets = [(dataset_name(c), load_examples(c, f"data.eval[{i}]")[: cfg.schedule.eval_limit], PromptRenderer(self.tokenizer, c))
                          for i, c in enumerate(as_list(cfg.data.eval))]
        if len({name for name, _, _ in self.eval_sets}) < len(self.eval_sets):
            raise ConfigError("data.eval: two held-out sets share a name; give each a distinct `name`")
        self.order = DataOrder(len(self.train_set), cfg.seed, cfg.data.shuffle)
        self.probe_ids = self.tokenizer(PROBE_TEXT)["input_ids"]
        self.samples_per_step = cfg.rollout.prompts_per_step * cfg.rollout.group_size

    # ----------------------------------------------------------------------------------------
    # The loop

    def train(self) -> dict:
        cfg = self.cfg
        where = connect(cfg.ray.address)
        print_progress(f"lockstep: run {cfg.name} in {self.run_dir} (Ray: {where})")
        self.rewards = build_reward_pool(cfg.reward)
        self.placement = Placement(cfg)
        state = checkpoint.load_state(self.resume_from) if self.resume_from else None
        policy = str(self.resume_from / checkpoint.HF_DIR) if state else self.warm_start()
        self.stage = start_trainers(cfg, self.placement, policy, cfg.trainer.lr, self.samples_per_step // cfg.trainer.num_minibatches, cfg.algorithm.kl_coef > 0)
        if state:
            self.stage.trainers.call("load_checkpoint", str(self.resume_from / checkpoint.ENGINE_DIR))
        self.logprobs_from_update = self.fold_logprobs_into_update()
        self.rollout = self.start_rollout(policy)
        self.weight_sync = self.start_weight_sync()
        self.step, self.cursor = (state["step"], state["cursor"]) if state else (0, 0)
        self.pending = None  # (idx, prompts, futures) of a batch sampled ahead
        self.saved_step = self.step if state else None
        self.metrics = MetricsLogger(self.run_dir, cfg, resume_step=self.step if state else None, config_dict=to_dict(cfg))
        if state:
            print_progress(f"resumed from {self.resume_from} at step {self.step}")
        else:
            self.log_eval(0)
        while self.step < cfg.schedule.steps:
            self.step += 1
            metrics = self.rl_step()
            if self.should(cfg.schedule.eval_every) or self.step == cfg.schedule.steps:
                metrics.update(self.run_eval())
            self.metrics.log(self.step, metrics)
            print_progress(progress_line(self.step, cfg.schedule.steps, metrics))
            if self.should(cfg.schedule.save_every):
                self.save()
        if self.saved_step != self.step:
            self.save()
        summary = self.summary()
        self.shutdown()
        return summary

    def rl_step(self) -> dict[str, float]:
        cfg, timings = self.cfg, {}
        step_start = t = time.time()
        # Sampled ahead during the previous step's update (rollout.max_staleness=1), or now.
        ahead, self.pending = self.pending, None
        idx, samples, answers = self.collect_rollout(ahead or self.launch_rollout(self.draw_prompts()))
        timings["rollout"] = time.time() - t  # sampled ahead: only what was left to wait for
        refill = cfg.algorithm.dynamic_sampling_max_rounds > 1
        # While the verifiers score: the engines' probe log-probs under the weights they sampled
        # with (the sync's "before"), and — unless the update itself yields them, or refill
        # rounds may still change the batch — the trainer's log-probs of the rollout tokens.
        t = time.time()
        reward_handle = self.rewards.submit([(s.text, a) for s, a in zip(samples, answers)])
        probe_before = self.weight_sync.launch_probes()
        if cfg.rollout.max_staleness and self.step < cfg.schedule.steps:
            # Queued after the probe: the engines sample the next batch with the weights that
            # sampled this one while the trainer updates; the sync waits for it (actor order).
            self.pending = self.launch_rollout(self.draw_prompts())
        trainer_logps = None if self.logprobs_from_update or refill else self.trainer_logprobs(samples)
        timings["logprobs"] = time.time() - t
        t = time.time()
        set_scores(samples, reward_handle.result())
        timings["reward"] = time.time() - t
        metrics: dict[str, float] = {}
        drawn = samples
        if refill:
            samples, drawn, idx = self.refill(samples, idx, timings, metrics)
        rollout_wall = timings["rollout"]
        metrics.update(self.reward_metrics(drawn))
        metrics["train/logprobs_from_update"] = float(self.logprobs_from_update)
        if refill and not self.logprobs_from_update:
            t = time.time()
            trainer_logps = self.trainer_logprobs(samples)
            timings["logprobs"] += time.time() - t
        train_samples, old_logps = self.select_and_advantage(samples, trainer_logps, metrics)
        if self.engines_sleep:  # after the probe queued above: each actor runs its calls in order
            t = time.time()
            metrics["rollout/sleep_freed_gib"] = sum(r["freed_bytes"] for r in self.rollout.call("sleep")) / 2**30
            timings["sleep"] = time.time() - t
        t = time.time()
        if train_samples:
            update_metrics, update_logps = self.update_policy(train_samples, old_logps)
            metrics.update(update_metrics)
            trainer_logps = trainer_logps or update_logps
        timings["train"] = time.time() - t
        if trainer_logps is None:  # no update this step: the log-probs still have to be measured
            t = time.time()
            trainer_logps = self.trainer_logprobs(samples)
            timings["logprobs"] += time.time() - t
        metrics.update(self.mismatch(samples, trainer_logps, stale=ahead is not None))
        metrics["rollout/staleness"] = float(ahead is not None)
        if self.pending:
            t = time.time()
            ray.wait(self.pending[2], num_returns=len(self.pending[2]))
            timings["rollout_ahead_wait"] = time.time() - t  # the next batch outlasted the update
        t = time.time()
        metrics.update(self.weight_sync.sync(self.step, probe_before))
        timings["sync"] = time.time() - t
        metrics["data/cursor"] = float(self.consumed_cursor())
        # A fingerprint of which prompts this step drew (resume must reproduce it exactly).
        metrics["data/prompt_hash"] = float(zlib.crc32(json.dumps(idx).encode()))
        metrics.update({f"time/{k}": v for k, v in timings.items()})
        metrics["time/step"] = time.time() - step_start  # wall time, bookkeeping included
        if ahead is None:  # sampled ahead, the rollout ran during the previous update: no wall time of its own
            metrics["throughput/rollout_tokens_per_s"] = sum(len(s.completion_ids) for s in drawn) / max(rollout_wall, 1e-9)
        return metrics

    # ----------------------------------------------------------------------------------------
    # Pieces of a step

    def draw_prompts(self) -> list[int]:
        """The next rollout.prompts_per_step prompts in the data order (the cursor is resumable)."""
        idx = self.order.indices(self.cursor, self.cfg.rollout.prompts_per_step)
        self.cursor += len(idx)
        return idx

    def refill(self, samples: list[Sample], idx: list[int], timings: dict, metrics: dict) -> tuple[list[Sample], list[Sample], list[int]]:
        """Dynamic sampling with refill (DAPO): more rollout rounds, each on the next
        prompts_per_step prompts, until prompts_per_step groups have unequal rewards or
        `algorithm.dynamic_sampling_max_rounds` rounds ran. Returns (the batch: that many groups,
        informative first, uninformative ones to fill a shortfall; every sample drawn, for the
        reward metrics; every prompt index drawn)."""
        cfg = self.cfg
        P, G = cfg.rollout.prompts_per_step, cfg.rollout.group_size
        drawn, rounds = list(samples), 1

        def informative() -> list[bool]:
            return adv.informative_groups(torch.tensor([self.training_reward(s) for s in drawn]), G).tolist()

        while sum(informative()) < P and rounds < cfg.algorithm.dynamic_sampling_max_rounds:
            t = time.time()
            more_idx, more, answers = self.collect_rollout(self.launch_rollout(self.draw_prompts()))
            timings["rollout"] += time.time() - t
            t = time.time()
            set_scores(more, self.rewards.submit([(s.text, a) for s, a in zip(more, answers)]).result())
            timings["reward"] += time.time() - t
            drawn += more
            idx = idx + more_idx
            rounds += 1
        flags = informative()
        groups = adv.fill_batch(flags, P)
        metrics["dynamic_sampling/rounds"] = float(rounds)
        metrics["dynamic_sampling/groups_drawn"] = float(len(flags))
        metrics["dynamic_sampling/informative_groups_drawn"] = float(sum(flags))
        metrics["dynamic_sampling/batch_informative_frac"] = sum(flags[g] for g in groups) / P
        if sum(flags) < P:
            log.warning("step %d: %d of %d groups informative after %d rollout rounds; the rest train with weight 0",
                        self.step, sum(flags), P, rounds)
        return [s for g in groups for s in drawn[g * G : (g + 1) * G]], drawn, idx

    def training_reward(self, s: Sample) -> float:
        """The reward the advantages see: the verifier's, less the overlong penalty if it applies."""
        algo = self.cfg.algorithm
        return s.reward - algo.overlong_penalty if s.truncated and algo.overlong == "penalty" else s.reward

    def consumed_cursor(self) -> int:
        """The data cursor less the prompts drawn for a batch still being sampled ahead: what a
        checkpoint records, so a resumed run samples those prompts again."""
        return self.cursor - (len(self.pending[0]) if self.pending else 0)

    def launch_rollout(self, idx: list[int]) -> tuple[list[int], list[list[int]], list]:
        """Starts sampling rollout.group_size completions of each prompt `idx`; returns
        (idx, prompt ids, Ray futures) for `collect_rollout`."""
        cfg = self.cfg.rollout
        prompts = [self.renderer.ids(self.train_set[i]) for i in idx]
        return idx, prompts, self.rollout_launch(prompts, cfg.group_size, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k)

    def collect_rollout(self, launched) -> tuple[list[int], list[Sample], list[str]]:
        """Waits for a `launch_rollout`; returns (prompt indices, samples group-major, each
        sample's reference answer)."""
        idx, prompts, futures = launched
        outputs = [g for part in ray.get(futures) for g in part]
        samples, answers = [], []
        for p, (i, prompt, group) in enumerate(zip(idx, prompts, outputs)):
            for c in group:
                samples.append(Sample(p, prompt, c["ids"], c["logprobs"], c["finish_reason"], c["text"]))
                answers.append(self.train_set[i].answer)
        return idx, samples, answers

    def fold_logprobs_into_update(self) -> bool:
        """Whether the trainer's log-probs of the rollout tokens (b_t, and the `recompute` old
        log-probs) come from the update's own forward instead of a separate pass before it.

        They may when the step makes one optimiser step (`trainer.num_minibatches == 1`): every
        training forward then runs on the weights that sampled the batch, which is what the
        separate pass would compute (without active dropout, so train mode = eval mode). With
        several mini-batches the later ones run on updated weights, so the pass stays."""
        if self.cfg.trainer.num_minibatches > 1:
            why = "trainer.num_minibatches > 1: later mini-batches see updated weights"
        elif not self.stage.train_forward_is_eval_forward:
            why = "the model has active dropout: its training forward is not the policy's log-prob"
        else:
            log.info("trainer log-probs come from the update's forward (one optimiser step per RL step)")
            return True
        log.info("trainer log-probs: a separate pass before the update (%s)", why)
        return False

    def trainer_logprobs(self, samples: list[Sample]) -> list[tuple[list[float], list[float]]]:
        ranks = self.cfg.trainer.num_ranks
        padded = samples + [samples[-1]] * (-len(samples) % ranks)
        parts = self.stage.trainers.call_each("compute_logprobs", [(part, self.cfg.rollout.temperature) for part in shard(padded, ranks)])
        return [row for part in parts for row in part][: len(samples)]

    def mismatch(self, samples: list[Sample], trainer_logps, stale: bool = False) -> dict[str, float]:
        """DESIGN §5's metrics of a_t (rollout) vs b_t (trainer) and the per-token records.
        `stale`: the batch was sampled ahead, by weights one update older than the trainer's,
        so the numbers include that update's drift: logged as offpolicy/* (the sync probe still
        measures the engines' mismatch on equal weights every step)."""
        a = torch.tensor([x for s in samples for x in s.rollout_logprobs], dtype=torch.float32)
        b = torch.tensor([x for lp, _ in trainer_logps for x in lp], dtype=torch.float32)
        pos = torch.tensor([j for s in samples for j in range(len(s.completion_ids))])
        out = mismatch_metrics(a, b, torch.ones_like(a, dtype=torch.bool), pos)
        if stale:
            out = {k.replace("mismatch/", "offpolicy/", 1): v for k, v in out.items()}
        ent = [x for _, e in trainer_logps for x in e]
        if ent:
            out["policy/entropy"] = sum(ent) / len(ent)
        records = [
            {"step": self.step, "sample": n, "position": j, "token": tok, "rollout_logprob": s.rollout_logprobs[j], "trainer_logprob": lp[j], "entropy": e[j] if e else None, "stale": stale}
            for n, (s, (lp, e)) in enumerate(zip(samples, trainer_logps))
            for j, tok in enumerate(s.completion_ids)
        ]
        self.metrics.token_records(self.step, records, self.cfg.seed)
        return out

    def reward_metrics(self, samples: list[Sample]) -> dict[str, float]:
        rewards = [s.reward for s in samples]
        lengths = [len(s.completion_ids) for s in samples]
        out = {
            "reward/mean": sum(rewards) / len(rewards),
            "reward/max": max(rewards),
            "reward/min": min(rewards),
            "response/length_mean": sum(lengths) / len(lengths),
            "response/truncated_frac": sum(s.truncated for s in samples) / len(samples),
        }
        for reason in {s.reward_reason for s in samples}:
            out[f"reward/reason_{reason}"] = float(sum(s.reward_reason == reason for s in samples))
        for k, v in self.rewards.stats().items():
            out[f"reward_pool/{k}"] = float(v)
        return out

    def select_and_advantage(self, samples: list[Sample], trainer_logps, metrics: dict) -> tuple[list[Sample], list[list[float]] | None]:
        """Overlong handling, group advantages, dynamic sampling. Dropped groups stay in the
        batch with weight 0 (every rank runs the same micro-batches, and the update's forward
        still yields their log-probs for the mismatch metrics). Old log-probs: the rollout's,
        the separate pass's, or None — the update's own forward (`logprobs_from_update`)."""
        cfg, algo = self.cfg, self.cfg.algorithm
        G = cfg.rollout.group_size
        for s in samples:
            s.reward = self.training_reward(s)
            if s.truncated and algo.overlong == "filter":
                s.weight = 0.0
        rewards = torch.tensor([s.reward for s in samples])
        advantages = adv.grpo_advantages(rewards, G, algo.std_normalize)
        for s, a in zip(samples, advantages.tolist()):
            s.advantage = a
        if algo.old_logprobs == "rollout":
            old = [s.rollout_logprobs for s in samples]
        else:
            old = None if trainer_logps is None else [lp for lp, _ in trainer_logps]
        keep = adv.informative_groups(rewards, G) if algo.dynamic_sampling else torch.ones(len(samples) // G, dtype=torch.bool)
        metrics["advantage/informative_group_frac"] = adv.informative_groups(rewards, G).float().mean().item()
        chosen = sum(int(keep[i // G]) for i in range(len(samples)))
        metrics["train/samples"] = float(chosen)
        if not chosen:
            log.warning("step %d: no informative group; skipping the update", self.step)
            metrics["train/skipped"] = 1.0
            return [], None
        for i, s in enumerate(samples):
            if not keep[i // G]:
                s.weight = 0.0
        metrics["train/padding_samples"] = float(len(samples) - chosen)  # zero-weight samples in the batch
        return samples, old

    def update_policy(self, samples: list[Sample], old_logps: list[list[float]] | None) -> tuple[dict[str, float], list[tuple[list[float], list[float]]]]:
        """The policy update; returns its metrics and the (log-prob, entropy) rows of every
        sample from the training forward (pre-update weights when this is one optimiser step)."""
        cfg, ranks = self.cfg, self.cfg.trainer.num_ranks
        ref = None
        if cfg.algorithm.kl_coef > 0:
            parts = self.stage.trainers.call_each("reference_logprobs", [(p, cfg.rollout.temperature) for p in shard(samples, ranks)])
            ref = [row for part in parts for row in part]
        normaliser_fn = AGGREGATION_NORMALISERS[cfg.algorithm.loss_aggregation]
        totals: dict[str, float] = {}
        logps: list[tuple[list[float], list[float]]] = []
        mb = len(samples) // cfg.trainer.num_minibatches
        for m in range(cfg.trainer.num_minibatches):
            rows = list(range(m * mb, (m + 1) * mb))
            batch = [samples[i] for i in rows]
            lengths = [len(s.completion_ids) if s.weight > 0 else 0 for s in batch]
            normaliser = normaliser_fn(lengths, cfg.rollout.max_new_tokens)
            args = []
            for part in shard(rows, ranks):
                args.append(([samples[i] for i in part], None if old_logps is None else [old_logps[i] for i in part], None if ref is None else [ref[i] for i in part], normaliser, to_dict(cfg.algorithm), cfg.rollout.temperature))
            for result, part_rows in self.stage.trainers.call_each("train_step", args):
                logps.extend(part_rows)
                for k, v in result.items():
                    totals[k] = totals.get(k, 0.0) + v
        tokens = max(totals.get("tokens", 0.0), 1.0)
        n_results = ranks * cfg.trainer.num_minibatches
        return {
            "train/loss": totals["loss"] / cfg.trainer.num_minibatches,
            "train/pg_loss_per_token": totals["pg_loss"] / tokens,
            "train/kl_per_token": totals["kl"] / tokens,
            "train/entropy_per_token": totals["entropy"] / tokens,
            "train/clip_frac": totals["clip_frac"] / tokens,
            "train/correction_weight_mean": totals["correction_weight"] / tokens,
            "train/grad_norm": totals["grad_norm"] / n_results,
            "train/lr": totals["lr"] / n_results,
        }, logps

    def start_weight_sync(self) -> WeightSync:
        """CUDA IPC on the device when each engine shares its trainer rank's GPU, else the host
        path (said once); the probe noise is measured now, on the weights both loaded."""
        on_device = self.placement.gpus and self.cfg.ray.placement == "colocated"
        if self.placement.gpus and not on_device:
            log.warning("weight sync through host memory: the engines are on other GPUs than the trainer "
                        "(the NCCL broadcast path does not exist yet)")
        sync = WeightSync(self.stage.trainers.actors, self.rollout.actors, "device" if on_device else "host",
                          self.cfg.trainer.sync_bucket_mib, self.probe_ids, self.cfg.model.dtype)
        noise = sync.calibrate()
        print_progress(f"weight sync: {'CUDA IPC on the device' if on_device else 'through host memory'}; "
                       f"probe noise engine vs trainer {noise:.2g} on equal weights")
        return sync

    # ----------------------------------------------------------------------------------------
    # Evaluation, checkpoints, start-up, summary

    def should(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def run_eval(self) -> dict[str, float]:
        s = self.cfg.schedule
        metrics, report = {}, {"step": self.step}
        for i, (name, examples, renderer) in enumerate(self.eval_sets):
            prompts = [renderer.ids(e) for e in examples]
            result = evaluate(self.rollout_generate, self.rewards.score, prompts, [e.answer for e in examples], s.eval_samples, self.cfg.rollout.max_new_tokens, s.eval_temperature)
            if i == 0:
                metrics.update(result.metrics)
                report.update(result.metrics, problems=result.per_problem[:50])
            if len(self.eval_sets) > 1:
                metrics.update({k.replace("eval/", f"eval/{name}/", 1): v for k, v in result.metrics.items()})
            report.setdefault("sets", {})[name] = {**result.metrics, "problems": result.per_problem[:50]}
        if metrics:
            (self.run_dir / "eval").mkdir(exist_ok=True)
            (self.run_dir / "eval" / f"step_{self.step:06d}.json").write_text(json.dumps(report, indent=1))
        return metrics

    def log_eval(self, step: int) -> None:
        metrics = self.run_eval()
        if metrics:
            self.metrics.log(step, metrics)
            others = "".join(f" | {name} {metrics[f'eval/{name}/accuracy']:.3f}" for name, _, _ in self.eval_sets[1:])
            print_progress(f"step {step:>4}/{self.cfg.schedule.steps} | eval accuracy {metrics['eval/accuracy']:.3f} on {int(metrics['eval/num_problems'])} held-out problems{others}")

    def rollout_launch(self, prompts, n, max_tokens, temperature, top_p=1.0, top_k=-1) -> list:
        """Splits the prompts evenly over the rollout workers; returns one future per worker
        used, whose groups concatenate in prompt order."""
        workers = self.rollout.actors
        parts = max(1, min(len(workers), len(prompts)))
        bounds = [round(k * len(prompts) / parts) for k in range(parts + 1)]
        return [w.generate.remote(prompts[bounds[k] : bounds[k + 1]], n, max_tokens, temperature, top_p, top_k) for k, w in enumerate(workers[:parts])]

    def rollout_generate(self, prompts, n, max_tokens, temperature, top_p=1.0, top_k=-1):
        return [g for part in ray.get(self.rollout_launch(prompts, n, max_tokens, temperature, top_p, top_k)) for g in part]

    def save(self) -> None:
        partial = checkpoint.partial_dir(self.run_dir, self.step)
        self.stage.trainers.call("save_checkpoint", str(partial / checkpoint.ENGINE_DIR))
        self.stage.trainers.call("export_hf", str(partial / checkpoint.HF_DIR), self.base_model)
        state = {"step": self.step, "cursor": self.consumed_cursor(), "weights_version": self.step, "config": to_dict(self.cfg)}
        final = checkpoint.commit(self.run_dir, self.step, partial, state, self.cfg.schedule.keep_last)
        self.saved_step = self.step
        print_progress(f"saved checkpoint {final}")

    def start_rollout(self, model_path: str) -> ActorGroup:
        from rollout.worker import RolloutWorker

        self.engines_sleep = self.sleep_while_training()
        actor_cls = ray.remote(RolloutWorker)
        actors = [actor_cls.options(**self.placement.options(b)).remote(model_path, self.cfg.model.dtype, to_dict(self.cfg.rollout), self.cfg.seed + k, self.engines_sleep,
                                                                         fp8_options(self.cfg))
                  for k, b in enumerate(self.placement.rollout_bundles)]
        group = ActorGroup(actors)
        infos = group.call("info")
        engines = {i["fp8_projections"] for i in infos}
        if engines != {self.stage.fp8_projections}:  # a side that silently stayed unquantized
            raise RuntimeError(f"model.fp8: the trainer runs {self.stage.fp8_projections} projections as FP8 GEMMs, "
                               f"the rollout engines {sorted(engines)}; both must quantize the same weights")
        if self.stage.fp8_projections:
            print_progress(f"model.fp8: {self.stage.fp8_projections} projections run as FP8 GEMMs in trainer and rollout")
        return group

    def sleep_while_training(self) -> bool:
        choice = self.cfg.rollout.sleep_while_training
        if choice == "on" and not self.placement.gpus:
            log.warning("rollout.sleep_while_training=on ignored: vLLM has no sleep mode on CPU; the engines stay resident")
            return False
        sleeps = choice == "on" or (choice == "auto" and self.placement.gpus and self.cfg.ray.placement == "colocated" and not self.cfg.rollout.max_staleness)
        log.info("rollout engines %s while the trainer runs", "sleep" if sleeps else "stay resident")
        return sleeps

    def warm_start(self) -> str:
        """The SFT stage (if the recipe has one): same trainer, its own engine; the result is an
        HF export under <run_dir>/sft that the RL stage starts from. Reused if already there."""
        sft = self.cfg.sft
        out = self.run_dir / "sft" / "hf"
        if sft.steps == 0:
            return self.base_model
        if (out / "config.json").exists():
            print_progress(f"SFT warm start: reusing {out}")
            return str(out)
        with_solution = [e for e in self.train_set if e.solution]
        if not with_solution:
            raise ConfigError(f"sft.steps={sft.steps} but data.train has no '{as_list(self.cfg.data.train)[0].solution_key}' field with worked solutions")
        ranks = self.cfg.trainer.num_ranks
        batch = sft.batch_size - sft.batch_size % ranks or ranks
        stage = start_trainers(self.cfg, self.placement, self.base_model, sft.lr, batch, use_reference=False)
        eos = self.tokenizer.eos_token or ""
        order = DataOrder(len(with_solution), self.cfg.seed + 1, True)
        t = time.time()
        for step in range(sft.steps):
            examples = [with_solution[i] for i in order.indices(step * batch, batch)]
            prompts = [self.renderer.ids(e) for e in examples]
            targets = [self.tokenizer(" " + e.solution + eos, add_special_tokens=False)["input_ids"] for e in examples]
            losses = stage.trainers.call_each("sft_step", list(zip(shard(prompts, ranks), shard(targets, ranks))))
            if (step + 1) % max(1, sft.steps // 10) == 0 or step + 1 == sft.steps:
                print_progress(f"sft step {step + 1:>4}/{sft.steps} | loss {sum(losses) / len(losses):.3f} | {time.time() - t:.0f}s")
        partial = out.parent / "hf.partial"
        stage.trainers.call("export_hf", str(partial), self.base_model)
        partial.rename(out)
        stage.trainers.kill()
        return str(out)

    def summary(self) -> dict:
        history = read_history(self.run_dir)
        rewards = [h["reward/mean"] for h in history if "reward/mean" in h]
        evals = [(h["step"], h["eval/accuracy"]) for h in history if "eval/accuracy" in h]
        out = {
            "run_dir": str(self.run_dir),
            "checkpoint": str(checkpoint.latest(self.run_dir)),
            "steps": self.step,
            "reward_first": rewards[0] if rewards else None,
            "reward_last": rewards[-1] if rewards else None,
            "eval_before": evals[0][1] if evals else None,
            "eval_after": evals[-1][1] if evals else None,
        }
        (self.run_dir / "summary.json").write_text(json.dumps(out, indent=1))
        lines = [
            "",
            f"== lockstep run {self.cfg.name}: {self.step} steps ==",
            f"mean reward per step  {sparkline(rewards)}  ({out['reward_first']:.3f} → {out['reward_last']:.3f})" if rewards else "no RL steps",
        ]
        if evals:
            lines.append(f"held-out accuracy     {out['eval_before']:.3f} (step {evals[0][0]}) → {out['eval_after']:.3f} (step {evals[-1][0]}) on {len(self.eval_sets[0][1])} problems")
        lines += [f"run directory         {self.run_dir}", f"metrics               {self.run_dir / 'metrics.jsonl'} (TensorBoard: {self.run_dir / 'tensorboard'})", f"latest checkpoint     {out['checkpoint']}"]
        print_progress("\n".join(lines))
        return out

    def shutdown(self) -> None:
        self.metrics.close()
        self.rewards.close()
        self.stage.trainers.kill()
        self.rollout.kill()
        self.placement.remove()
