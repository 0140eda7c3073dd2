"""The recipe schema: one typed config tree, strict validation, `key.sub=value` overrides.

A recipe is a YAML file whose keys map one-to-one onto the dataclasses below (DESIGN.md §8);
the sections the actors receive as they are live beside their actors (`rollout.config`,
`trainer.config`: nothing below `rl/` imports it) and are composed into the tree here.
Unknown keys, wrong types and impossible combinations raise `ConfigError`, which names the key
path and says what is allowed. The resolved tree is saved with every run (`to_dict`).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rollout.config import RolloutConfig
from trainer.config import LossConfig, TrainerConfig


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema; the message names the key path."""


# ---------------------------------------------------------------------------------------------
# The tree


@dataclass
class FP8Config:
    """Block-scaled FP8 GEMMs in both engines (Ring-linear models only)."""

    enabled: bool = False
    """FP8 (e4m3; 1×128 activation tiles, 128×128 weight blocks, fp32 scales) for every
    projection and expert of the decoder, in the trainer (forward and backward) and the rollout
    engine alike: both call kernels.fp8, so they quantize identically. Master weights, router,
    norms, the LM head (fp32 logits) and the linear-attention state keep their precision. Needs
    a model whose rollout runs Lockstep's layers (Ring-linear)."""
    pow2_scale: bool = False
    """Round each scale up to a power of two (exact scale multiplies; DeepSeek-V3's option)."""
    min_weight_elements: int = 0
    """Projections whose weight [N, K] has fewer than N·K elements stay in model.dtype, in both
    engines (for the stacked experts: one expert's projection decides for all): below some size
    the quantization passes cost more than the FP8 GEMM saves. Provisional default 0 (every
    projection in FP8, tiny test models included); on an H100 FP8 lost at 2048→5120 (10.5M
    elements: 1.12 vs 0.78 ms, before weight caching and fused quantization) and won at
    4096→14336 (58.7M). Set it from `benchmarks/gpu/train_step.py --fp8` on your card."""


@dataclass
class ModelConfig:
    """The policy model both engines load."""

    path: str = "demo:arith-tiny"
    """A Hugging Face directory or hub name, or `demo:<name>` for a tiny model built by
    `rl.demo_model` (seeded, cached under `cache_dir`)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights and compute dtype of trainer and rollout engine (log-probs are fp32 either way)."""
    trust_remote_code: bool = False
    """Let transformers and vLLM run the model directory's own modeling code."""
    cache_dir: str = "~/.cache/lockstep"
    """Where `demo:` models are built and cached."""
    fp8: FP8Config = field(default_factory=FP8Config)
    """Block-scaled FP8 projections in both engines."""


@dataclass
class DatasetConfig:
    """One dataset: where its rows come from, which fields hold what, its prompt template."""

    source: str = "synthetic:arithmetic"
    """A .jsonl/.json/.parquet file, a dataset name for `datasets.load_dataset`, a name of
    ../shared/data (`gsm8k_test`), or `synthetic:arithmetic` / `synthetic:arithmetic-noisy`."""
    name: str = ""
    """Label in metrics and reports (`eval/<name>/accuracy`); empty: derived from `source`."""
    split: str = "train"
    """Split of a hub dataset or of the synthetic task (`train`, `test`)."""
    prompt_key: str = "question"
    """Field holding the problem text."""
    answer_key: str = "answer"
    """Field holding the reference answer."""
    solution_key: str = "solution"
    """Field holding a worked solution, used only by the SFT warm start (may be absent otherwise)."""
    answer_format: Literal["raw", "gsm8k"] = "raw"
    """How the reference is read out of `answer_key`: the field as is, or GSM8K's final `#### N`."""
    template: str = "{prompt}"
    """Prompt template; `{prompt}` is replaced by the problem text."""
    use_chat_template: bool = True
    """With a tokenizer that has a chat template, send the filled template as the user message."""
    limit: int | None = None
    """Use at most this many rows (in a mix: this dataset's share); null: all."""
    num_examples: int = 2000
    """Synthetic datasets only: how many problems to generate."""
    seed: int = 0
    """Synthetic datasets only: the generator's seed (train and test splits never overlap)."""


@dataclass
class DataConfig:
    """Training data and held-out sets."""

    train: DatasetConfig | list[DatasetConfig] = field(default_factory=DatasetConfig)
    """One dataset, or a list: a mix (rows together, each with its own fields and template)."""
    eval: DatasetConfig | list[DatasetConfig] | None = None
    """Held-out sets, each evaluated and logged on its own (`eval/<name>/…`); the first is also
    logged as `eval/…`, the run's headline accuracy. `lockstep eval RUN_DIR` scores these."""
    shuffle: bool = True
    """Visit the training rows in a seeded random order (resumable); false: file order."""


@dataclass
class SFTConfig:
    """Optional warm start by supervised fine-tuning on reference solutions, same trainer."""

    steps: int = 0
    """Supervised steps before RL; 0: no warm start."""
    lr: float = 1e-3
    """Learning rate of the warm start."""
    batch_size: int = 32
    """Sequences per warm-start step (rounded down to a multiple of trainer.num_ranks)."""


@dataclass
class AlgorithmConfig:
    """Advantages, the policy loss and its train/infer mismatch correction."""

    advantage: Literal["grpo"] = "grpo"
    """Advantage estimator: group-relative (GRPO)."""
    std_normalize: bool = True
    """Divide group-centred rewards by the group std (GRPO); false is Dr.GRPO."""
    loss_aggregation: Literal["token_mean", "sequence_mean", "token_sum_norm"] = "token_mean"
    """How per-token losses are averaged: over all tokens, per sequence then over sequences, or
    summed and divided by a constant (Dr.GRPO)."""
    clip_low: float = 0.2
    """PPO ratio clip below 1 (ratio ≥ 1 − clip_low)."""
    clip_high: float = 0.28
    """PPO ratio clip above 1 (ratio ≤ 1 + clip_high; DAPO's clip-higher)."""
    kl_coef: float = 0.0
    """Weight of a KL penalty to the initial model; > 0 makes each rank hold a frozen reference copy."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimator of the penalty (Schulman's k1, k2, k3)."""
    entropy_coef: float = 0.0
    """Weight of an entropy bonus."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal (no learning signal)."""
    dynamic_sampling_max_rounds: int = 1
    """With dynamic sampling: up to this many rollout rounds per step (each draws
    rollout.prompts_per_step new prompts) until the batch holds prompts_per_step informative
    groups (DAPO's refill). 1: no refill, dropped groups just leave the batch smaller."""
    overlong: Literal["keep", "filter", "penalty"] = "keep"
    """Completions cut at max_new_tokens: keep, drop from the loss, or penalise."""
    overlong_penalty: float = 1.0
    """Reward subtracted from a cut completion with `overlong: penalty`."""
    ungraded: Literal["mask", "drop_group"] = "mask"
    """Samples the verifier could not grade (reward timeout or crash: their 0 says nothing about the
    answer): `mask` takes them out of the loss and of their group's mean/std, `drop_group` takes
    their whole group out; counted as train/ungraded_*."""
    old_logprobs: Literal["recompute", "rollout"] = "recompute"
    """Behaviour log-probs for the ratio: recomputed by the trainer before the update, or the
    rollout engine's sampled log-probs as they are."""
    correction: Literal["none", "tis", "masked_is", "icepop"] = "none"
    """Train/infer mismatch correction (DESIGN.md §6): none, truncated IS, masked IS, IcePop."""
    correction_low: float = 0.5
    """Lower bound of the correction's importance ratio (below 1)."""
    correction_high: float = 2.0
    """Upper bound of the correction's importance ratio (above 1)."""

    def loss(self) -> LossConfig:
        """The part of this section the trainer applies."""
        return LossConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LossConfig)})


@dataclass
class RewardConfig:
    """The verifier that scores completions, run in a process pool with hard timeouts."""

    function: str = "math"
    """`math` (math-verify accuracy) or the dotted path of a factory `f() -> reward`."""
    format_weight: float = 0.0
    """With `math`: weight of an added format reward (0: accuracy only)."""
    fallback_last_number: bool = True
    """With `math`: when no boxed answer is found, compare the completion's last number."""
    timeout_s: float = 5.0
    """Hard limit per completion: past it the completion scores as a timeout (0), its worker is killed."""
    num_workers: int | None = None
    """Reward worker processes; null: one per CPU core."""


@dataclass
class ScheduleConfig:
    """How long to train, when to evaluate and save."""

    steps: int = 20
    """RL steps."""
    eval_every: int = 10
    """Evaluate the held-out sets every N steps (and before the first and after the last); 0:
    only before and after."""
    save_every: int = 10
    """Save a checkpoint every N steps (and after the last); 0: only after the last."""
    keep_last: int = 2
    """Complete checkpoints kept; older ones are deleted (0: keep all)."""
    save_on_stop: bool = True
    """On SIGINT or SIGTERM (Ctrl-C, `ray job stop`, a scheduler's preemption) finish the step in
    progress and save a checkpoint at its end before exiting; false: exit after the step
    without saving (a second signal abandons the step either way)."""
    max_save_failures: int = 3
    """Consecutive failed checkpoint saves (read-only or full disk) after which the run stops;
    before that each failure is one error line and `checkpoint/save_failures`, and training
    goes on to the next save. The previous checkpoint is never deleted by a failed save."""
    eval_samples: int = 1
    """k samples per held-out problem (pass@k, avg@k); 1 is greedy."""
    eval_temperature: float = 0.0
    """Sampling temperature of evaluation (> 0 when eval_samples > 1)."""
    eval_limit: int | None = 200
    """Evaluate at most this many problems of each held-out set; null: all."""


@dataclass
class LoggingConfig:
    """Where metrics go besides metrics.jsonl."""

    tensorboard: bool = True
    """Write TensorBoard events under runs/<name>/tensorboard."""
    wandb: bool = False
    """Log to Weights & Biases (`pip install wandb`)."""
    mlflow: bool = False
    """Log to MLflow (`pip install mlflow`)."""
    project: str = "lockstep"
    """Project / experiment name in W&B and MLflow."""
    token_records_per_step: int = 2048
    """Per-token mismatch records kept on disk per step for `lockstep mismatch`: beyond this, the
    largest |Δ| and a weighted uniform sample of the rest (the report's numbers come from an exact
    per-step summary)."""


@dataclass
class RayConfig:
    """The Ray cluster and how actors are placed on it."""

    address: str | None = None
    """Cluster address; null: join a cluster running on this machine if there is one, else start
    a local instance; `local`: always a private instance."""
    placement: Literal["colocated", "split"] = "colocated"
    """colocated: a trainer rank and an engine share each device; split: separate devices."""
    require_gpus: bool = False
    """Refuse to start on a Ray cluster without GPUs (a GPU recipe would otherwise try to train
    on CPU for hours)."""


@dataclass
class FaultConfig:
    """What the run does when an actor dies or hangs, or an update is not finite."""

    max_restarts: int = 3
    """Actor restarts one `lockstep run` may make (rollout engines and trainer groups
    together): a dead or hung engine is replaced and sent the trainer's weights, the step
    redone; a dead or hung trainer rank restarts the trainer group from the last checkpoint.
    One more failure stops the run with one line naming what died and the command that resumes
    it (exit code 75); 0: stop at the first."""
    call_timeout_s: float = 1800.0
    """Longest wait for any actor call (a step's sampling, a training step, a sync, a
    checkpoint save; start-up included): past it the actors that did not answer are named and
    handled like dead ones. Raise it for models whose single step or start-up takes longer."""
    max_nonfinite_steps: int = 3
    """Updates in a row whose loss or gradient norm is NaN/Inf before the run halts with a
    diagnostic dump (<run_dir>/nonfinite.json). Each such update is skipped: no optimiser step,
    weights and engines unchanged; counted (train/nonfinite_*) and logged with its prompt ids."""


@dataclass
class SyncConfig:
    """How the trainer's new weights reach the rollout engines after each update.

    The bucket size is trainer.sync_bucket_mib."""

    transport: Literal["auto", "host", "device", "collective"] = "auto"
    """host: rank 0's buckets through Ray's object store (host memory); device: CUDA IPC
    handles, each engine on its trainer rank's GPU (colocated on GPUs only); collective: trainer
    rank 0 broadcasts to every engine over a process group of their own (NCCL on GPUs, Gloo on
    CPU; not colocated on GPUs, where NCCL cannot put two ranks on one GPU); auto: device when
    colocated on GPUs, collective for split placement on GPUs, host on CPU."""


@dataclass
class RunConfig:
    """A recipe: the run's name and every section."""

    name: str = "run"
    """The run's name: its outputs go to <output_dir>/<name>, and a rerun resumes there."""
    seed: int = 0
    """Seed of the data order, the engines' sampling and the SFT order."""
    output_dir: str = ""
    """Folder holding the run's directory. Empty: `./runs` for a local run, `~/lockstep-runs` inside
    a Ray job (`ray job submit`), whose working directory is Ray's temporary copy of the upload;
    there a folder of your own must be absolute."""
    mode: Literal["fast", "strict"] = "fast"
    """DESIGN §4 modes: `fast` runs the aligned ops and measures the mismatch every step;
    `strict` runs batch-invariant kernels in both engines (`kernels/batch_invariant`), so the
    trainer's log-probs equal the rollout's bit for bit (Ring-linear models; C kernels on CPU,
    Triton kernels on CUDA; slower)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data and held-out sets."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """The vLLM rollout engines and how they sample."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """The DeepSpeed trainer ranks."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Optional SFT warm start."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """Advantages and the policy loss."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """The verifier."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Steps, evaluation and checkpoints."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metric sinks."""
    ray: RayConfig = field(default_factory=RayConfig)
    """The Ray cluster and actor placement."""
    faults: FaultConfig = field(default_factory=FaultConfig)
    """Restarts of dead or hung actors, call timeouts, non-finite updates."""
    sync: SyncConfig = field(default_factory=SyncConfig)
    """The weight sync from trainer to rollout engines."""

    @property
    def run_dir(self) -> Path:
        """Absolute, resolved on the driver: every path the run prints opens from anywhere, and
        actors on other nodes (or in a `ray job submit` working directory) never resolve a
        relative path against their own cwd."""
        return output_root(self.output_dir) / self.name


RAY_JOB_RUNS_DIR = "~/lockstep-runs"


def in_ray_job() -> bool:
    """True in the entrypoint of a `ray job submit`: Ray's job supervisor gives it
    RAY_JOB_CONFIG_JSON_ENV_VAR (checked on Ray 2.60) and runs it in Ray's temporary copy of the
    uploaded working directory, which the user never sees and which changes with every upload."""
    import os

    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def output_root(output_dir: str) -> Path:
    """The absolute folder of a recipe's `output_dir` (the field's doc says which)."""
    if not output_dir:
        return Path(RAY_JOB_RUNS_DIR if in_ray_job() else "runs").expanduser().absolute()
    path = Path(output_dir).expanduser()
    if not path.is_absolute() and in_ray_job():
        raise ConfigError(f"output_dir={output_dir} is relative, and inside a Ray job the working directory is "
                          f"Ray's temporary copy of the upload: give an absolute path, or leave output_dir unset "
                          f"for {RAY_JOB_RUNS_DIR}/<name>")
    return path.absolute()


# ---------------------------------------------------------------------------------------------
# Cross-field rules: combinations each field allows alone but not together.


def check_combinations(cfg: RunConfig) -> None:
    def bad(key: str, why: str) -> None:
        raise ConfigError(f"{key}: {why}")

    positive = {
        "rollout.num_workers": cfg.rollout.num_workers,
        "rollout.tensor_parallel_size": cfg.rollout.tensor_parallel_size,
        "rollout.group_size": cfg.rollout.group_size,
        "rollout.prompts_per_step": cfg.rollout.prompts_per_step,
        "rollout.max_new_tokens": cfg.rollout.max_new_tokens,
        "trainer.num_ranks": cfg.trainer.num_ranks,
        "trainer.micro_batch_size": cfg.trainer.micro_batch_size,
        "trainer.num_minibatches": cfg.trainer.num_minibatches,
        "schedule.eval_samples": cfg.schedule.eval_samples,
        "schedule.max_save_failures": cfg.schedule.max_save_failures,
    }
    for key, value in positive.items():
        if value < 1:
            bad(key, f"must be ≥ 1, got {value}")
    if cfg.trainer.pack_tokens < 0:
        bad("trainer.pack_tokens",
            f"must be ≥ 0 (0: pad each micro-batch, no packing), got {cfg.trainer.pack_tokens}")
    if cfg.model.fp8.min_weight_elements < 0:
        bad("model.fp8.min_weight_elements",
            f"must be ≥ 0 (0: every projection in FP8), got {cfg.model.fp8.min_weight_elements}")
    if cfg.mode == "strict" and cfg.model.fp8.enabled:
        # the strict layers call the row-tiled fp32 GEMM, which would bypass the FP8 projections
        bad("mode", "strict mode does not cover model.fp8 yet; use mode: fast with model.fp8, or "
            "model.fp8.enabled=false")
    if cfg.mode == "strict" and cfg.trainer.pack_tokens:
        # the strict layers run each row as one sequence (no cu_seqlens): packed samples would leak
        bad("trainer.pack_tokens", "strict mode runs padded micro-batches (its layers take one sequence "
            "per row); set trainer.pack_tokens=0 or use mode: fast")
    if cfg.rollout.max_num_batched_tokens < 0:
        bad("rollout.max_num_batched_tokens", f"must be ≥ 0 (0: vLLM's default), got {cfg.rollout.max_num_batched_tokens}")
    if cfg.faults.max_restarts < 0:
        bad("faults.max_restarts", f"must be ≥ 0, got {cfg.faults.max_restarts}")
    if not cfg.faults.call_timeout_s > 0:
        bad("faults.call_timeout_s", f"must be > 0 seconds, got {cfg.faults.call_timeout_s}")
    if cfg.faults.max_nonfinite_steps < 1:
        bad("faults.max_nonfinite_steps", f"must be ≥ 1, got {cfg.faults.max_nonfinite_steps}")
    if cfg.schedule.steps < 0:
        bad("schedule.steps", f"must be ≥ 0, got {cfg.schedule.steps}")
    if cfg.rollout.group_size < 2:
        bad("rollout.group_size", "GRPO compares completions within a group: use ≥ 2")
    if not 0 < cfg.rollout.temperature:
        bad("rollout.temperature", "RL sampling needs temperature > 0")
    if not 0 < cfg.rollout.top_p <= 1:
        bad("rollout.top_p", f"must be in (0, 1], got {cfg.rollout.top_p}")
    if cfg.rollout.max_new_tokens >= cfg.rollout.max_model_len:
        bad("rollout.max_new_tokens", "must be below rollout.max_model_len (the prompt needs room)")
    if cfg.rollout.ignore_eos and cfg.algorithm.overlong != "keep":
        bad("rollout.ignore_eos", f"every completion is then cut at max_new_tokens, and algorithm.overlong: "
            f"{cfg.algorithm.overlong} would {'drop' if cfg.algorithm.overlong == 'filter' else 'penalise'} them "
            "all; use algorithm.overlong: keep")
    if cfg.trainer.lr <= 0:
        bad("trainer.lr", f"must be > 0, got {cfg.trainer.lr}")
    if len(cfg.trainer.betas) != 2 or not all(0 <= b < 1 for b in cfg.trainer.betas):
        bad("trainer.betas", f"must be two numbers in [0, 1), got {cfg.trainer.betas}")
    samples = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    if samples % (cfg.trainer.num_minibatches * cfg.trainer.num_ranks):
        bad(
            "trainer.num_minibatches",
            f"rollout.prompts_per_step × group_size = {samples} samples must split evenly into "
            f"num_minibatches ({cfg.trainer.num_minibatches}) × trainer.num_ranks "
            f"({cfg.trainer.num_ranks})",
        )
    if cfg.algorithm.dynamic_sampling_max_rounds < 1:
        bad("algorithm.dynamic_sampling_max_rounds",
            f"must be ≥ 1, got {cfg.algorithm.dynamic_sampling_max_rounds}")
    if cfg.algorithm.dynamic_sampling_max_rounds > 1 and not cfg.algorithm.dynamic_sampling:
        bad("algorithm.dynamic_sampling_max_rounds", "refill rounds need algorithm.dynamic_sampling=true")
    if cfg.rollout.max_staleness < 0:
        bad("rollout.max_staleness", f"must be ≥ 0 (0: on-policy), got {cfg.rollout.max_staleness}")
    if cfg.rollout.partial and not cfg.rollout.max_staleness:
        bad("rollout.partial", "partial rollouts carry unfinished samples into later steps, whose weights are "
            "newer: set rollout.max_staleness ≥ 1")
    if cfg.rollout.max_staleness and cfg.algorithm.dynamic_sampling_max_rounds > 1:
        bad("rollout.max_staleness", "refill rounds (algorithm.dynamic_sampling_max_rounds > 1) need the "
            "engines during the step; use one or the other")
    if cfg.rollout.max_staleness and cfg.rollout.sleep_while_training == "on":
        bad("rollout.max_staleness", "the engines sample the next batch while the trainer runs, so they "
            "cannot sleep: set rollout.sleep_while_training=off")
    if cfg.algorithm.clip_low < 0 or cfg.algorithm.clip_high < 0:
        bad("algorithm.clip_low", "clip ranges must be ≥ 0")
    if cfg.algorithm.correction != "none" and cfg.algorithm.old_logprobs == "rollout":
        bad(
            "algorithm.correction",
            "a train/infer correction needs trainer log-probs for the behaviour policy: set "
            "algorithm.old_logprobs=recompute or algorithm.correction=none",
        )
    if not cfg.algorithm.correction_low < 1 < cfg.algorithm.correction_high:
        bad("algorithm.correction_low", "need correction_low < 1 < correction_high")
    if cfg.schedule.eval_samples > 1 and cfg.schedule.eval_temperature == 0:
        bad("schedule.eval_samples", "k > 1 samples need schedule.eval_temperature > 0")
    if cfg.ray.placement == "split" and cfg.trainer.num_ranks + cfg.rollout.num_workers < 2:
        bad("ray.placement", "split placement needs separate trainer and rollout bundles")
    if cfg.rollout.tensor_parallel_size > 1 and cfg.mode == "strict":
        bad("rollout.tensor_parallel_size", "strict mode keeps the trainer's bits, and an engine split over "
            "devices sums partial outputs in another order: use tensor_parallel_size=1 or mode: fast")
    if cfg.sync.transport == "device" and cfg.ray.placement == "split":
        bad("sync.transport", "device (CUDA IPC) needs each engine on its trainer rank's GPU: use "
            "ray.placement: colocated, or sync.transport: collective for split placement")


# ---------------------------------------------------------------------------------------------
# Building the tree from plain data, strictly.


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


# YAML 1.1 (PyYAML) reads `3e-5` and `1e6` as strings (its floats need a dot: `3.0e-5`); for a
# float field they mean the number.
_EXPONENT_FLOAT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        raise ConfigError(f"{path}: got {value!r}; allowed: {_type_name(tp)}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{path}: must not be null; expected {_type_name(tp)}")
        # A mapping or a list goes to the arm of that shape, so that its own errors (an unknown
        # key inside it, say) reach the user instead of a generic "expected …".
        for arg in args:
            if (isinstance(value, dict) and dataclasses.is_dataclass(arg)) or \
                    (isinstance(value, list) and typing.get_origin(arg) is list):
                return _convert(value, arg, path)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError:
                pass
        raise ConfigError(f"{path}: got {value!r}; expected {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config type {tp} at {path}")
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def build(cls: type, data: dict, path: str = "") -> Any:
    """Builds dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            allowed = ", ".join(fields)
            raise ConfigError(f"{key_path}: unknown key.{hint} Allowed here: {allowed}")
        kwargs[key] = _convert(value, hints[key], key_path)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------------
# Recipes and overrides


def apply_override(data: dict, override: str) -> None:
    """Applies `a.b.c=value` to nested plain data; the value is parsed as YAML (`3`, `true`, `[1, 2]`)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected key.sub=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {override!r}: empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({e})") from None
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[: i + 1])} is not a mapping")
        node = child
    node[parts[-1]] = value


def load_recipe(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Reads a recipe YAML, applies overrides, validates everything; raises ConfigError."""
    path = Path(path)
    if not path.is_file():
        path = shipped_recipe(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path}: the top level must be a mapping of sections")
    return from_data(data, overrides)


def from_data(data: dict, overrides: list[str] = ()) -> RunConfig:
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for override in overrides:
        apply_override(data, override)
    cfg = build(RunConfig, data)
    check_combinations(cfg)
    return cfg


def dump(cfg: RunConfig) -> str:
    """The resolved recipe as YAML, every key (what `lockstep config` prints and a run saves)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def save_resolved(cfg: RunConfig, path: Path) -> None:
    path.write_text(dump(cfg))


def recipes_dir() -> Path:
    """recipes/ of the current directory if there is one, else the one shipped with Lockstep
    (``rl/recipes``: package data in a wheel, a link to the repository's recipes/ in a clone)."""
    here = Path("recipes")
    return here if here.is_dir() else Path(__file__).resolve().parent / "recipes"


def shipped_recipe(path: Path) -> Path:
    """A recipe named by what is not a file: ``demo``, ``demo.yaml`` or ``recipes/demo.yaml``
    outside a clone find the recipe of that name in :func:`recipes_dir` (a wheel ships them)."""
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    for folder in dict.fromkeys([recipes_dir(), Path(__file__).resolve().parent / "recipes"]):
        if (folder / name).is_file():
            return folder / name
    known = ", ".join(p.stem for p in sorted(recipes_dir().glob("*.y*ml"))) or "none found"
    raise ConfigError(f"recipe {path}: no such file, and no recipe of that name ships with Lockstep "
                      f"(lockstep recipes lists them: {known})")


def describe_recipes(folder: Path) -> list[tuple[Path, str]]:
    """(recipe, the first line of its leading comment, `…` when the sentence goes on) per YAML file."""
    out = []
    for path in sorted(folder.glob("*.y*ml")):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        leading = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
        comment = [line.lstrip("# ").rstrip() for line in lines[:leading]][:2]
        first = comment[0] if comment else "(no description: start the file with a # comment)"
        if len(comment) > 1 and comment[1] and not first.endswith((".", ":")):
            first += " …"
        out.append((path, first))
    return out
