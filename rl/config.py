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
    # Block-scaled FP8 (e4m3; 1×128 activation tiles, 128×128 weight blocks, fp32 scales) for
    # every projection and expert of the decoder, in the trainer (forward and backward) and the
    # rollout engine alike: both call kernels.fp8, so they quantize identically. The master
    # weights, the router, the norms, the LM head (fp32 logits) and the linear-attention state
    # keep their precision. Needs a model whose rollout runs Lockstep's layers (Ring-linear).
    enabled: bool = False
    # Round each scale up to a power of two (exact scale multiplies; DeepSeek-V3's option).
    pow2_scale: bool = False


@dataclass
class ModelConfig:
    # A Hugging Face directory or hub name, or `demo:<name>` for the tiny model built by
    # `rl.demo_model` (seeded, cached under `cache_dir`).
    path: str = "demo:arith-tiny"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    cache_dir: str = "~/.cache/lockstep"
    fp8: FP8Config = field(default_factory=FP8Config)


@dataclass
class DatasetConfig:
    # A .jsonl/.json/.parquet file, a dataset name for `datasets.load_dataset`, a name of
    # ../shared/data (`gsm8k_test`), or `synthetic:arithmetic`.
    source: str = "synthetic:arithmetic"
    # Label in metrics and reports (`eval/<name>/accuracy`); empty: derived from `source`.
    name: str = ""
    split: str = "train"
    prompt_key: str = "question"
    answer_key: str = "answer"
    # A worked solution, used only by the SFT warm start (absent fields are fine otherwise).
    solution_key: str = "solution"
    # How the reference answer is read out of `answer_key`: the field as is, or GSM8K's
    # final `#### N` line.
    answer_format: Literal["raw", "gsm8k"] = "raw"
    # `{prompt}` is replaced by the problem text. With `use_chat_template` and a tokenizer
    # that has a chat template, the filled template becomes the user message.
    template: str = "{prompt}"
    use_chat_template: bool = True
    limit: int | None = None
    # Synthetic datasets only: how many problems and which seed (train and eval sets use
    # different seeds and never overlap).
    num_examples: int = 2000
    seed: int = 0


@dataclass
class DataConfig:
    # One dataset, or a list: a mix (the datasets' rows together, each with its own fields and
    # template; `limit` caps a dataset's share).
    train: DatasetConfig | list[DatasetConfig] = field(default_factory=DatasetConfig)
    # Held-out sets, each evaluated and logged on its own (`eval/<name>/…`); the first is also
    # logged as `eval/…`, the run's headline accuracy.
    eval: DatasetConfig | list[DatasetConfig] | None = None
    shuffle: bool = True


@dataclass
class SFTConfig:
    """Optional warm start by supervised fine-tuning on reference solutions, same trainer."""

    steps: int = 0
    lr: float = 1e-3
    batch_size: int = 32


@dataclass
class AlgorithmConfig:
    advantage: Literal["grpo"] = "grpo"
    # Divide group-centred rewards by the group std (GRPO); False is Dr.GRPO.
    std_normalize: bool = True
    loss_aggregation: Literal["token_mean", "sequence_mean", "token_sum_norm"] = "token_mean"
    clip_low: float = 0.2
    clip_high: float = 0.28
    kl_coef: float = 0.0
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = 0.0
    # Drop groups whose rewards are all equal (no learning signal).
    dynamic_sampling: bool = False
    # With dynamic sampling: up to this many rollout rounds per step (each draws
    # rollout.prompts_per_step new prompts) until the batch holds prompts_per_step informative
    # groups (DAPO's refill). 1: no refill, dropped groups just leave the batch smaller.
    dynamic_sampling_max_rounds: int = 1
    # Completions cut at max_new_tokens: keep, drop from the loss, or penalise.
    overlong: Literal["keep", "filter", "penalty"] = "keep"
    overlong_penalty: float = 1.0
    # Samples the verifier could not grade (reward timeout or crash, `Score.graded` False; their
    # 0 says nothing about the answer): `mask` takes them out of the loss and out of their
    # group's mean/std; `drop_group` takes their whole group out. Counted as train/ungraded_*.
    ungraded: Literal["mask", "drop_group"] = "mask"
    # Behaviour log-probs for the ratio: recomputed by the trainer before the update, or the
    # rollout engine's sampled log-probs as they are.
    old_logprobs: Literal["recompute", "rollout"] = "recompute"
    # Train/infer mismatch correction (DESIGN.md §6).
    correction: Literal["none", "tis", "masked_is", "icepop"] = "none"
    correction_low: float = 0.5
    correction_high: float = 2.0

    def loss(self) -> LossConfig:
        """The part of this section the trainer applies."""
        return LossConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LossConfig)})


@dataclass
class RewardConfig:
    # Dotted path of a reward factory `f(**kwargs) -> reward` or a built-in name.
    function: str = "math"
    format_weight: float = 0.0
    fallback_last_number: bool = True
    timeout_s: float = 5.0
    num_workers: int | None = None


@dataclass
class ScheduleConfig:
    steps: int = 20
    eval_every: int = 10  # 0: only before and after
    save_every: int = 10
    keep_last: int = 2
    eval_samples: int = 1  # k samples per eval problem (pass@k, avg@k); 1 means greedy
    eval_temperature: float = 0.0
    eval_limit: int | None = 200


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    wandb: bool = False
    mlflow: bool = False
    project: str = "lockstep"
    # Per-token mismatch records kept on disk for the report (bounded).
    token_records_per_step: int = 2048


@dataclass
class RayConfig:
    # None: join a running cluster if there is one, else start a local instance.
    address: str | None = None
    placement: Literal["colocated", "split"] = "colocated"
    # true: refuse to start on a Ray cluster without GPUs (a GPU recipe would otherwise try to
    # train its model on CPU for hours).
    require_gpus: bool = False


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    # DESIGN §4 modes. "strict" (batch-invariant kernels, bitwise log-probs) is refused by
    # validation until it is built; "fast" runs the aligned ops.
    mode: Literal["fast", "strict"] = "fast"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir).expanduser() / self.name


# ---------------------------------------------------------------------------------------------
# Cross-field rules: combinations each field allows alone but not together.


def check_combinations(cfg: RunConfig) -> None:
    def bad(key: str, why: str) -> None:
        raise ConfigError(f"{key}: {why}")

    positive = {
        "rollout.num_workers": cfg.rollout.num_workers,
        "rollout.group_size": cfg.rollout.group_size,
        "rollout.prompts_per_step": cfg.rollout.prompts_per_step,
        "rollout.max_new_tokens": cfg.rollout.max_new_tokens,
        "trainer.num_ranks": cfg.trainer.num_ranks,
        "trainer.micro_batch_size": cfg.trainer.micro_batch_size,
        "trainer.num_minibatches": cfg.trainer.num_minibatches,
        "schedule.eval_samples": cfg.schedule.eval_samples,
    }
    for key, value in positive.items():
        if value < 1:
            bad(key, f"must be ≥ 1, got {value}")
    if cfg.mode == "strict":
        # Accepting it would promise bitwise log-probs that nothing enforces yet (DESIGN §4).
        bad(
            "mode",
            "'strict' (bitwise-equal trainer and rollout log-probs) is not implemented yet; use "
            "mode: fast (aligned ops: |Δ log-prob| ≤ 1e-5 in fp32, measured every step as "
            "mismatch/* incl. mismatch/bitwise_equal_frac)",
        )
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
        raise ConfigError(f"recipe {path}: no such file (recipes live in recipes/*.yaml)")
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


def save_resolved(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
