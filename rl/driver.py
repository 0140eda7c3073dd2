"""The driver: one RL run of a recipe.

`Run(cfg)` starts everything: Ray, the reward pool, the SFT warm start, the trainer ranks and
the rollout engines. `Run.train` is the loop (an RL step, then evaluate and save when due) and
`Run.rl_step` lists a step's phases in order, each a method below it:

    sample → score → select/advantages → old log-probs → update → mismatch → sync

The pieces live beside it: the actor groups (rl.groups), sampling and the data order
(rl.sampling), where the trainer's log-probs b_t come from (rl.trainer_logprobs), advantages
and the update (rl.update), the weight sync and its verification (rl.weight_sync), held-out
evaluation (rl.evaluate), the SFT warm start (rl.warm_start).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import zlib

from rl import checkpoint, trainer_logprobs
from rl.async_rollout import AsyncSampler
from rl.algorithms import advantages as adv
from rl.batch import Sample, StepBatch
from rl.checkpoint import CheckpointError
from rl.collective_sync import CollectiveTransport
from rl.config import AlgorithmConfig, ConfigError, RunConfig, save_resolved, to_dict
from rl.console import Progress, log_to_file, phase, plural
from rl.data import PromptRenderer, load_examples
from rl.evaluate import HeldOut
from rl.faults import NonFiniteGuard, Restarts
from rl.groups import ActorFailed, RolloutGroup, TrainerGroup, trainer_setup
from rl.metrics import MetricsLogger, print_progress, progress_line, read_history, sparkline
from rl.model import (check_fp8_model, check_strict_model, load_tokenizer, resolve_model_path,
                      strict_kernels)
from rl.placement import Placement, connect
from rl.plots import PlotUnavailable, plot_run
from rl.rewards_config import build_reward_pool
from rl.run_dir_check import check_run_dir_shared
from rl.sampling import Sampler
from rl.step_metrics import mismatch, reward_metrics, versioned_mismatch
from rl.stop import StopSignals
from rl.timings import Timings
from rl.update import informative, old_logprobs, select_and_advantage, update_policy
from rl.warm_start import warm_start
from rl.weight_sync import PROBE_TEXT, DeviceTransport, HostTransport, WeightSync, transport_kind
from trainer.batch import TokenLogprobs

log = logging.getLogger("lockstep.driver")


class Run:
    def __init__(self, cfg: RunConfig, resume: bool | None = None, stop: StopSignals | None = None):
        """Start-up. `resume`: True requires a checkpoint, False ignores any, None resumes from
        the run's newest intact checkpoint if there is one (a damaged newer one is named in a
        warning and set aside, rl.checkpoint.recover). `stop`: the CLI's SIGINT/SIGTERM handling
        (rl.stop); without it the run leaves signals alone."""
        self.cfg = cfg
        self.run_dir = cfg.run_dir
        self.stop = stop
        existing, self.damaged_checkpoints = checkpoint.recover(self.run_dir) if resume is not False else (None, [])
        if resume is True and existing is None:
            raise ConfigError(f"--resume: {self.run_dir} has no complete checkpoint to resume from")
        self.resumed_from = existing if resume is not False else None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_to_file(self.run_dir / "run.log")  # every library's INFO lines; the console gets warnings
        save_resolved(cfg, self.run_dir / "config.yaml")
        # The user's inputs first, each a one-line ConfigError before Ray or any actor starts.
        train_set = load_examples(cfg.data.train, "data.train")
        self.base_model = resolve_model_path(cfg)
        check_fp8_model(cfg, self.base_model)
        check_strict_model(cfg, self.base_model)
        tokenizer = load_tokenizer(self.base_model, cfg.model.trust_remote_code)
        renderer = PromptRenderer(tokenizer, cfg.data.train)
        self.held_out = HeldOut(cfg, tokenizer)

        print_progress(f"lockstep: run {cfg.name} in {self.run_dir} (Ray: {connect(cfg.ray.address)}; "
                       f"library logs: {self.run_dir / 'run.log'})")
        if stop is not None:
            stop.install()  # again: ray.init has just put its own SIGTERM handler in place
        if self.resumed_from:
            print_progress(f"resuming from {self.resumed_from} (--no-resume starts over)")
        self.rewards = build_reward_pool(cfg.reward)
        self.placement = Placement(cfg)
        print_progress(f"placement: {cfg.ray.placement}, {self.placement.describe()}")
        self.transport = transport_kind(cfg, self.placement.gpus)  # a bad sync.transport fails here, early
        # strict mode's CPU C kernels (on GPUs its Triton kernels run: strict/cuda_fallback_calls)
        self.strict_native = None if self.placement.gpus else strict_kernels(cfg)
        check_run_dir_shared(self.placement, self.run_dir)  # every node sees the driver's run directory
        state = checkpoint.load_state(self.resumed_from) if self.resumed_from else {"step": 0, "cursor": 0}
        self.metrics = MetricsLogger(self.run_dir, cfg, resume_step=state["step"] if self.resumed_from else None,
                                     config_dict=to_dict(cfg))  # before SFT: it logs sft/* metrics
        policy = str(self.resumed_from / checkpoint.HF_DIR) if self.resumed_from else \
            warm_start(cfg, self.placement, self.base_model, train_set, renderer, tokenizer, self.metrics)
        per_update = cfg.rollout.prompts_per_step * cfg.rollout.group_size // cfg.trainer.num_minibatches
        setup = trainer_setup(cfg, policy, cfg.trainer.lr, per_update, cfg.algorithm.loss())
        self.policy = policy  # what the RL stage started from: restarts build on it before a checkpoint exists
        with phase(f"starting {plural(cfg.trainer.num_ranks, 'trainer rank')} for RL"):
            self.trainers = TrainerGroup.start(self.placement, setup, cfg.faults.call_timeout_s)
            if self.resumed_from:
                self.trainers.load_checkpoint(str(self.resumed_from / checkpoint.ENGINE_DIR))
        self.b_t = trainer_logprobs.choose(cfg, self.trainers)  # where b_t comes from, decided once
        with phase(f"starting {plural(cfg.rollout.num_workers, 'vLLM engine')}"):
            self.rollout = RolloutGroup.start(self.placement, cfg, policy, self.trainers.fp8_projections)
        if self.trainers.fp8_projections:
            print_progress(f"model.fp8: {self.trainers.fp8_projections} projections run as FP8 GEMMs "
                           "in trainer and rollout")
        in_flight = state.get("inflight", [])  # prompts an asynchronous run had in flight (older checkpoints: none)
        if cfg.rollout.asynchronous:
            self.sampler = AsyncSampler(cfg, train_set, renderer, self.rollout, state["cursor"], in_flight)
        else:
            self.sampler = Sampler(cfg, train_set, renderer, self.rollout, cursor=state["cursor"])
            if in_flight:
                log.warning("%d prompts in flight at the checkpoint are not sampled again (rollout.max_staleness "
                            "≤ 1 without rollout.partial starts at the cursor)", len(in_flight))
        # The policy's version: how many updates changed its weights (a skipped update — no
        # informative group, a non-finite loss — keeps it), so a token's lag counts real weight
        # changes. Checkpoints before 2026-12-07 stored the step here; equal unless one was skipped.
        self.weights_version = state.get("weights_version", state["step"])
        if self.resumed_from:
            self.rollout.set_version(self.weights_version)  # the engines hold the checkpoint's weights
        self.sync = WeightSync(self.trainers, self.rollout, self.weight_transport(),
                               tokenizer(PROBE_TEXT)["input_ids"], cfg.model.dtype)
        noise = self.sync.calibrate()  # engines and trainer hold one checkpoint now
        where = self.sync.transport.description
        print_progress(f"weight sync: {where}; probe noise engine vs trainer {noise:.2g} on equal weights")
        self.step = state["step"]
        self.saved_step = self.step if self.resumed_from else None
        self.timings = Timings()  # the current step's
        self.restarts = Restarts(cfg.faults.max_restarts)
        self.nonfinite = NonFiniteGuard(cfg.faults.max_nonfinite_steps, self.run_dir)
        self.step_cursor = self.sampler.consumed_cursor()  # where the current step's prompts start
        self.step_open = False  # a step runs and has not updated the policy yet: a restart redoes it
        self.save_failures = 0  # consecutive failed saves
        self.tried_step = None  # the step of the last save attempted
        self.save_error = ""  # the last one's cause

    def switch_algorithm(self, algorithm: AlgorithmConfig) -> None:
        """Train the next steps with another `algorithm` section on the same actors (weights,
        optimiser and engines as they are): loss variants compared in one session pay for one
        start-up (tests/integration/test_corrections.py). Changes that need other actors (a KL
        reference, refill rounds: where b_t comes from) are refused."""
        before = self.cfg.algorithm
        if (algorithm.kl_coef > 0) != (before.kl_coef > 0) or \
                algorithm.dynamic_sampling_max_rounds != before.dynamic_sampling_max_rounds:
            raise ConfigError("switch_algorithm: kl_coef on/off and dynamic_sampling_max_rounds need a new run")
        self.cfg = dataclasses.replace(self.cfg, algorithm=algorithm)
        self.trainers.set_loss(algorithm.loss())
        save_resolved(self.cfg, self.run_dir / "config.yaml")  # the report names the section in force

    def weight_transport(self) -> HostTransport | DeviceTransport | CollectiveTransport:
        """The transport `sync.transport` resolved to (rl.weight_sync.transport_kind)."""
        bucket_mib = self.cfg.trainer.sync_bucket_mib
        if self.transport == "device":
            return DeviceTransport(bucket_mib)
        if self.transport == "collective":
            return CollectiveTransport(self.trainers, self.rollout, bucket_mib, self.placement.gpus)
        if self.placement.gpus:
            log.warning("weight sync through host memory on GPUs (sync.transport: host): slower than "
                        "sync.transport: auto")
        return HostTransport(bucket_mib)

    # ----------------------------------------------------------------------------------------
    # The loop

    def train(self) -> dict:
        """RL steps, each followed by evaluation and a checkpoint when due; returns the summary.
        The actors, reward workers and metrics files are released however the loop ends (an
        error's traceback is then the error's alone, not the reward pool's at exit)."""
        try:
            return self.loop()
        finally:
            if self.stop is not None:
                self.stop.releasing = True  # a signal now must not cut the release of the actors short
            self.shutdown()

    def loop(self) -> dict:
        """Steps until the last is done and saved, or a signal ends the run at a step boundary.
        A dead or hung actor is restarted (`recover`) and the loop goes on from where that
        leaves it: the same step, or the last checkpoint's."""
        schedule = self.cfg.schedule
        if self.resumed_from:
            skipped = f" (the newer checkpoint was damaged: {len(self.damaged_checkpoints)} set aside)" \
                if self.damaged_checkpoints else ""
            print_progress(f"resumed from {self.resumed_from} at step {self.step}{skipped}")
        else:
            self.log_eval()
        if self.stop is not None:
            self.stop.finish_step = True  # from here a first signal lets the step finish
        self.first_step = self.step + 1
        self.steps_bar = Progress("RL steps", schedule.steps, "step", initial=self.step, plain_lines=False)
        while True:
            try:
                if self.step < schedule.steps and not self.stopping():
                    self.advance()
                elif self.final_save_due():
                    self.save()
                else:
                    break
            except ActorFailed as failure:
                self.recover(failure)
        if self.saved_step != self.step and not self.stopping():
            raise CheckpointError(f"the run finished step {self.step} but its last checkpoint failed "
                                  f"({self.save_error}); {self.newest_checkpoint()}; make the output folder "
                                  "writable (or free space) and run the same command to resume")
        return self.summary()

    def advance(self) -> None:
        """The next RL step, then evaluation and a checkpoint when due; after a signal the
        evaluation is skipped and the checkpoint taken (`schedule.save_on_stop`)."""
        schedule = self.cfg.schedule
        self.step += 1
        metrics = self.rl_step()
        if self.damaged_checkpoints and self.step == self.first_step:  # once, on the first step after the resume
            metrics["checkpoint/damaged_skipped"] = float(len(self.damaged_checkpoints))
        if (self.due(schedule.eval_every) or self.step == schedule.steps) and not self.stopping():
            metrics.update(self.evaluate())
        if (self.due(schedule.save_every) or self.step == schedule.steps or
                (self.stopping() and schedule.save_on_stop)) and not self.nonfinite.halting:
            metrics.update(self.save())
        if self.strict_native is not None:  # 0: both engines run the PyTorch formulations (slower, other bits)
            metrics["strict/native_kernels"] = float(self.strict_native)
        self.metrics.log(self.step, metrics | self.restarts.metrics())
        self.steps_bar.update()
        print_progress(f"{progress_line(self.step, schedule.steps, metrics)} | eta {self.steps_bar.eta()}")
        self.nonfinite.halt_if_due()

    def final_save_due(self) -> bool:
        """The loop is over and this step has no checkpoint nor a failed attempt at one: no step
        ran (a fresh run of 0 steps), a signal came after this step's save check, or a restart
        went back to an unsaved step."""
        return self.saved_step != self.step and self.tried_step != self.step and \
            (self.cfg.schedule.save_on_stop or not self.stopping())

    def stopping(self) -> bool:
        """A SIGINT or SIGTERM came: the loop ends at this step's boundary."""
        return self.stop is not None and self.stop.requested

    def rl_step(self) -> dict[str, float]:
        """One RL step, phase by phase; returns its metrics, time/<phase> included."""
        self.timings, m = Timings(), {}
        self.step_cursor, self.step_open = self.sampler.consumed_cursor(), True  # a redone step starts here
        self.step_in_flight = self.sampler.in_flight()
        with self.timings.phase("step"):
            batch = self.sample()  # this step's batch; the next one starts (max_staleness=1)
            m.update(batch.metrics)
            batch = self.score(batch, m)  # the verifiers; refill rounds (dynamic sampling)
            trains = select_and_advantage(batch.samples, self.cfg, self.step, m)
            old = self.old_logprobs(batch)
            update = self.update(batch, trains, old, m)
            self.step_open = False  # the update is in: from here a restart keeps this step
            changed = self.nonfinite.check(self.step, m, batch.prompt_indices)  # False: NaN/Inf, skipped
            self.measure_mismatch(batch, update, m)  # a_t vs b_t on this step's tokens
            self.sync_weights(m, changed, trains)  # trainer → engines, verified (unless the update was skipped)
            m["data/cursor"] = float(self.sampler.consumed_cursor())
            # A fingerprint of which prompts this step drew (resume must reproduce it exactly): a
            # field of the step's JSONL record, not a scalar (a hash has no scale to plot).
            m["data/prompt_hash"] = f"{zlib.crc32(json.dumps(batch.prompt_indices).encode()):08x}"
        return m | self.timings.metrics() | self.throughput(batch)

    # ----------------------------------------------------------------------------------------
    # Phases of a step

    def sample(self) -> StepBatch:
        """The batch sampled ahead during the last update, or one sampled now. Then the engines
        queue the sync's probe under the weights that sampled it (the "before"), and — with
        rollout.max_staleness=1 — the next step's batch, which they sample during the update."""
        with self.timings.phase("rollout"):  # sampled ahead: only what was left to wait for
            batch = self.sampler.next_batch(version=self.weights_version, step=self.step)
        self.sync.probe_engines()
        if self.cfg.rollout.max_staleness and self.step < self.cfg.schedule.steps:
            self.sampler.sample_ahead()
        return batch

    def score(self, batch: StepBatch, m: dict[str, float]) -> StepBatch:
        """The verifiers' rewards (the separate b_t pass, if any, runs meanwhile), then refill
        rounds; the reward metrics cover every sample drawn."""
        scoring = self.rewards.submit([(s.completion.text, s.answer) for s in batch.samples])
        with self.timings.phase("logprobs"):
            self.b_t.while_scoring(batch.samples)
        with self.timings.phase("reward"):
            set_scores(batch.samples, scoring.result())
        if self.cfg.algorithm.dynamic_sampling_max_rounds > 1:
            batch = self.refill(batch, m)
        m.update(reward_metrics(batch.drawn, self.rewards.stats()))
        m["train/logprobs_from_update"] = float(self.b_t.from_update)
        return batch

    def refill(self, batch: StepBatch, m: dict[str, float]) -> StepBatch:
        """Dynamic sampling with refill (DAPO): more rollout rounds, each on the next
        prompts_per_step prompts, until prompts_per_step groups have unequal rewards or
        `algorithm.dynamic_sampling_max_rounds` rounds ran. The batch: that many groups,
        informative first, uninformative ones to fill a shortfall."""
        algo, P, G = self.cfg.algorithm, self.cfg.rollout.prompts_per_step, self.cfg.rollout.group_size
        idx, drawn, rounds = list(batch.prompt_indices), list(batch.drawn), 1
        while sum(informative(drawn, algo, G)) < P and rounds < algo.dynamic_sampling_max_rounds:
            with self.timings.phase("rollout"):
                more_idx, more = self.sampler.collect(self.sampler.launch())
            with self.timings.phase("reward"):
                set_scores(more, self.rewards.submit([(s.completion.text, s.answer) for s in more]).result())
            drawn, idx, rounds = drawn + more, idx + more_idx, rounds + 1
        flags = informative(drawn, algo, G)
        groups = adv.fill_batch(flags, P)
        m["dynamic_sampling/rounds"] = float(rounds)
        m["dynamic_sampling/groups_drawn"] = float(len(flags))
        m["dynamic_sampling/informative_groups_drawn"] = float(sum(flags))
        m["dynamic_sampling/batch_informative_frac"] = sum(flags[g] for g in groups) / P
        if sum(flags) < P:
            log.warning("step %d: %d of %d groups informative after %d rollout rounds; "
                        "the rest train with weight 0", self.step, sum(flags), P, rounds)
        return StepBatch(idx, drawn, [s for g in groups for s in drawn[g * G : (g + 1) * G]], batch.stale)

    def old_logprobs(self, batch: StepBatch) -> list[list[float]] | None:
        """The update's behaviour log-probs: a_t, b_t, or None (the update's own forward)."""
        with self.timings.phase("logprobs"):
            b_t = self.b_t.before_update(batch.samples)
        return old_logprobs(batch.samples, self.cfg, b_t)

    def update(self, batch: StepBatch, trains: bool, old: list[list[float]] | None,
               m: dict[str, float]) -> list[TokenLogprobs] | None:
        """The policy update (none when no group is informative), the engines asleep meanwhile
        if they sleep while training; returns the training forward's log-probs."""
        if self.rollout.sleeps:  # after the probe queued in `sample`: each engine runs its calls in order
            with self.timings.phase("sleep"):
                m["rollout/sleep_freed_gib"] = self.rollout.sleep() / 2**30
        with self.timings.phase("train"):
            if not trains:
                return None
            metrics, rows = update_policy(self.trainers, self.cfg, batch.samples, old)
        m.update(metrics)
        return rows

    def measure_mismatch(self, batch: StepBatch, update: list[TokenLogprobs] | None,
                         m: dict[str, float]) -> None:
        with self.timings.phase("logprobs"):
            b_t = self.b_t.after_update(batch.samples, update)
        if batch.version is None:
            metrics, records = mismatch(batch.samples, b_t, self.step, batch.stale)
        else:  # per-token versions: mismatch/* on the tokens of equal weights, offpolicy/* by lag
            metrics, records = versioned_mismatch(batch.samples, b_t, self.step, batch.version)
        self.metrics.token_records(self.step, records, self.cfg.seed)
        m.update(metrics)
        m["rollout/staleness"] = float(batch.stale)

    def sync_weights(self, m: dict[str, float], changed: bool, updated: bool) -> None:
        """`changed`: the update was not skipped as non-finite; `updated`: an update ran (some
        group was informative). Only an update that ran moves the policy's version."""
        if not changed:  # a skipped update: the engines hold the trainer's weights already
            self.sync.before = None
            return
        try:
            if self.sampler.ahead:
                with self.timings.phase("rollout_ahead_wait"):  # the next batch outlasted the update
                    self.sampler.ahead.completions.wait()
            self.weights_version += int(updated)  # the update is applied, whatever the sync's fate
            with self.timings.phase("sync"):
                m.update(self.sync(version=self.weights_version))
        except ActorFailed as failure:  # the update is applied: fresh engines get it, the step goes on
            if failure.group != "rollout":
                raise
            m.update(self.recover(failure))

    def throughput(self, batch: StepBatch) -> dict[str, float]:
        if batch.stale:  # sampled ahead, the rollout ran during the previous update: no wall time of its own
            return {}
        tokens = sum(len(s.completion_ids) for s in batch.drawn)
        return {"throughput/rollout_tokens_per_s": tokens / max(self.timings.seconds["rollout"], 1e-9)}

    # ----------------------------------------------------------------------------------------
    # Evaluation, checkpoints, summary

    def due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def evaluate(self) -> dict[str, float]:
        """The held-out sets under the current weights; on fresh engines if one dies meanwhile."""
        while True:
            try:
                return self.held_out(self.step, self.rollout.generate, self.rewards.score)
            except ActorFailed as failure:
                if failure.group != "rollout":
                    raise
                self.recover(failure)
                if self.stopping():  # the engines may have stood down; a stopping run skips evaluation
                    return {}

    # ----------------------------------------------------------------------------------------
    # Restarts (rl.faults)

    def recover(self, failure: ActorFailed) -> dict[str, float]:
        """Restarts the failed group, or raises RunStopped once faults.max_restarts are spent.
        Engines: fresh ones get the trainer's current weights, and a step interrupted before its
        update is redone from its first prompt. Trainer: the whole group restarts from the
        last checkpoint (the RL start if none), the steps since then are redone on the same
        prompts, their metric records superseded. Returns the resend's sync/* metrics. A
        failure during the restart itself is one more restart, from the same budget. After a
        signal nothing is restarted (`stand_down`): the run stops at a step boundary."""
        while True:
            try:
                return self.restart(failure)
            except ActorFailed as again:
                failure = again

    def restart(self, failure: ActorFailed) -> dict[str, float]:
        if self.stopping():  # a signal came: stop at a step boundary rather than start actors
            return self.stand_down(failure)
        self.restarts.allow(failure)
        if failure.group == "rollout":
            latest = checkpoint.latest(self.run_dir)  # its weights are replaced: only the model's files matter
            with phase(f"{failure}: restarting {plural(len(self.rollout.actors), 'rollout engine')}"):
                self.rollout.restart(str(latest / checkpoint.HF_DIR) if latest else self.policy)
            self.restarts.steps_redone += self.drop_open_step()
            return self.sync.resend(version=self.weights_version)
        newest, damaged = checkpoint.recover(self.run_dir)  # verified; a damaged newest one is set aside
        self.damaged_checkpoints += damaged
        ranks = plural(self.cfg.trainer.num_ranks, 'trainer rank')
        with phase(f"{failure}: restarting {ranks} from {newest or 'the start of the RL stage'}"):
            self.trainers.restart(str(newest / checkpoint.HF_DIR) if newest else self.policy)
            state = {"step": 0, "cursor": 0, "weights_version": 0}
            if newest:
                self.trainers.load_checkpoint(str(newest / checkpoint.ENGINE_DIR))
                state = checkpoint.load_state(newest)
        self.restarts.steps_redone += self.step - state["step"]
        self.step, self.saved_step, self.step_open = state["step"], state["step"] if newest else None, False
        self.weights_version = state.get("weights_version", state["step"])
        self.sampler.rewind(state["cursor"], state.get("inflight", []))
        self.steps_bar.close()  # counts (and rates) again from the checkpoint's step
        self.steps_bar = Progress("RL steps", self.cfg.schedule.steps, "step", initial=self.step, plain_lines=False)
        self.metrics.close()  # records after the checkpoint's step are superseded, as on a resume
        self.metrics = MetricsLogger(self.run_dir, self.cfg, resume_step=self.step, config_dict=to_dict(self.cfg))
        return self.sync.resend(version=self.weights_version)

    def drop_open_step(self) -> int:
        """After the engines failed: a step interrupted before its update goes back to its first
        prompt (returns 1: it will be redone); one past its update keeps it. Any batch sampled
        ahead is dropped (its engines are gone) and its prompts drawn again."""
        if self.step_open:
            self.sampler.rewind(self.step_cursor, self.step_in_flight)
            self.step, self.step_open = self.step - 1, False
            return 1
        self.sampler.rewind(self.sampler.consumed_cursor(), self.sampler.in_flight())
        return 0

    def stand_down(self, failure: ActorFailed) -> dict[str, float]:
        """A stopping run does not restart a failed group: it ends at the last step boundary it
        can save. Engines: the trainer holds every applied update, so the stop's checkpoint is
        taken as usual. Trainer: its updates since the last checkpoint are gone with it; the run
        stops at that checkpoint (the steps after it are redone on resume, their records
        superseded then)."""
        print_progress(f"{failure}: not restarted, the run is stopping")
        if failure.group == "rollout":
            self.drop_open_step()
            return {}
        newest = checkpoint.latest(self.run_dir)
        self.step = checkpoint.load_state(newest)["step"] if newest else 0
        self.saved_step = self.step if newest else None
        self.tried_step, self.save_error = self.step, str(failure)  # nothing is left to save with
        return {}

    def log_eval(self) -> None:
        """Evaluation before the first step, logged as step 0."""
        metrics = self.evaluate()
        if metrics:
            self.metrics.log(self.step, metrics)
            print_progress(self.held_out.progress_line(self.step, metrics))

    def save(self) -> dict[str, float]:
        """A checkpoint at this step boundary, sealed (rl.checkpoint.commit: the ranks fsync and
        checksum their files, the manifest is written last, then `latest` moves). A failed save
        (read-only or full disk: an OSError here or in a trainer rank) deletes only its partial
        folder, is one error line and `checkpoint/save_failures` (failures in a row), and the run
        goes on to its next save; `schedule.max_save_failures` in a row stop it."""
        self.tried_step, partial = self.step, None
        try:
            partial = checkpoint.partial_dir(self.run_dir, self.step)
            self.trainers.save_checkpoint(str(partial / checkpoint.ENGINE_DIR))
            self.trainers.export_hf(str(partial / checkpoint.HF_DIR), self.base_model)
            sealed = self.trainers.seal_files(str(partial))
            state = {"step": self.step, "cursor": self.sampler.consumed_cursor(), "weights_version": self.weights_version,
                     "inflight": self.sampler.in_flight(), "config": to_dict(self.cfg)}
            final = checkpoint.commit(self.run_dir, self.step, partial, state, self.cfg.schedule.keep_last, sealed)
        except OSError as e:  # a trainer rank's arrives as a RayTaskError that is also its cause's type
            checkpoint.discard_partial(partial)
            cause = getattr(e, "cause", None) or e
            self.save_failures += 1
            self.save_error = f"{type(cause).__name__}: {cause}"
            limit = self.cfg.schedule.max_save_failures
            if self.save_failures >= limit:
                raise CheckpointError(f"{self.save_failures} checkpoint saves in a row failed (the last at step "
                                      f"{self.step}: {self.save_error}); {self.newest_checkpoint()}; make the "
                                      "output folder writable (or free space) and run the same command to "
                                      "resume") from None
            goes_on = f"; training goes on to the next save ({self.save_failures} of " \
                      f"schedule.max_save_failures={limit} in a row)" \
                if self.step < self.cfg.schedule.steps and not self.stopping() else ""
            print(f"lockstep: error: checkpoint at step {self.step} failed ({self.save_error}); "
                  f"{self.newest_checkpoint()}{goes_on}", file=sys.stderr, flush=True)
            return {"checkpoint/save_failures": float(self.save_failures)}
        self.save_failures = 0
        self.saved_step = self.step
        print_progress(f"saved checkpoint {final}")
        return {"checkpoint/save_failures": 0.0}

    def newest_checkpoint(self) -> str:
        newest = checkpoint.latest(self.run_dir)
        return f"the newest checkpoint is still {newest}" if newest else "the run has no checkpoint yet"

    def stopped_line(self) -> str:
        """The one line a run stopped by a signal ends with: where it stopped, what to run next."""
        name = self.stop.name if self.stop else "a signal"
        newest = checkpoint.latest(self.run_dir)
        if self.saved_step == self.step:
            where = f"checkpoint {newest}"
        elif not self.cfg.schedule.save_on_stop:
            where = f"not saved (schedule.save_on_stop=false); {self.newest_checkpoint()}"
        else:
            where = f"its checkpoint failed ({self.save_error}); {self.newest_checkpoint()}"
        return f"lockstep: stopped by {name} after step {self.step}; {where}; run the same command to resume"

    def summary(self) -> dict:
        history = read_history(self.run_dir)
        rewards = [h["reward/mean"] for h in history if math.isfinite(h.get("reward/mean", math.nan))]
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
        if self.resumed_from:
            out["resumed_from"] = str(self.resumed_from)
        if any(self.restarts.metrics().values()):
            out["restarts"] = self.restarts.metrics()
        if self.damaged_checkpoints:
            out["damaged_checkpoints_skipped"] = self.damaged_checkpoints
        if self.stopping():
            out["stopped_by"] = self.stop.name
        (self.run_dir / "summary.json").write_text(json.dumps(out, indent=1))
        if self.stopping():  # the CLI prints one line (stopped_line) instead of the summary
            return out
        lines = [
            "",
            f"== lockstep run {self.cfg.name}: {self.step} steps ==",
            f"mean reward per step  {sparkline(rewards)}  "
            f"({out['reward_first']:.3f} → {out['reward_last']:.3f})" if rewards else "no RL steps",
        ]
        if evals:
            lines.append(f"held-out accuracy     {out['eval_before']:.3f} (step {evals[0][0]}) → "
                         f"{out['eval_after']:.3f} (step {evals[-1][0]}) "
                         f"on {len(self.held_out.sets[0].examples)} problems")
        lines += [f"run directory         {self.run_dir}",
                  f"metrics               {self.run_dir / 'metrics.jsonl'} "
                  f"(TensorBoard: {self.run_dir / 'tensorboard'})",
                  f"latest checkpoint     {out['checkpoint']}"]
        try:
            lines.append(f"curves                {plot_run(self.run_dir)}")
        except PlotUnavailable as why:
            lines.append(f"curves                not drawn: {why}")
        print_progress("\n".join(lines))
        return out

    def shutdown(self) -> None:
        if getattr(self, "steps_bar", None):
            self.steps_bar.close()
        self.metrics.close()
        self.rewards.close()
        self.trainers.kill()
        self.rollout.kill()
        self.placement.remove()


def set_scores(samples: list[Sample], scores) -> None:
    """Each sample's verifier score, its reason (correct, wrong, timeout, …) and whether the
    verifier reached a verdict at all (False for timeout and crash: `algorithm.ungraded`)."""
    for s, score in zip(samples, scores):
        s.reward, s.reward_reason, s.reward_graded = float(score.value), str(score.reason), bool(score.graded)
