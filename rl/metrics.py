"""Metric sinks: JSONL and TensorBoard always, W&B or MLflow when installed and asked for; the
per-token mismatch records; the live progress line.

Resuming from step k continues the same files: JSONL records after step k (work the crash threw
away and the resumed run redoes) move to `metrics.superseded.jsonl` rather than being deleted,
and TensorBoard purges its events after k.

Two step axes: RL records carry `step`; the SFT warm start's carry `sft/step` and `sft/*`
metrics (TensorBoard: the `sft/` tags over SFT steps; W&B: `sft/*` against `sft/step`). A record's
string values (e.g. `data/prompt_hash`) are fields of its JSONL line only, never scalars.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from rl.console import print_progress  # noqa: F401  (the driver's progress lines; re-exported)
from rl.token_records import StepTokens

log = logging.getLogger("lockstep.metrics")


class MetricsLogger:
    def __init__(self, run_dir: Path, cfg, resume_step: int | None = None, config_dict: dict | None = None):
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        self.token_dir = run_dir / "tokens"
        self.token_dir.mkdir(parents=True, exist_ok=True)
        self.token_records_per_step = cfg.logging.token_records_per_step
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self.tb = None
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=None if resume_step is None else resume_step + 1)
        self.wandb = self.mlflow = None
        if cfg.logging.wandb:
            try:
                import wandb
            except ImportError:
                raise RuntimeError("logging.wandb=true but wandb is not installed: pip install wandb, or set logging.wandb=false") from None
            self.wandb = wandb.init(project=cfg.logging.project, name=cfg.name, id=cfg.name, resume="allow", config=config_dict, dir=str(run_dir))
            self.wandb.define_metric("sft/step")
            self.wandb.define_metric("sft/*", step_metric="sft/step")
        if cfg.logging.mlflow:
            try:
                import mlflow
            except ImportError:
                raise RuntimeError("logging.mlflow=true but mlflow is not installed: pip install mlflow, or set logging.mlflow=false") from None
            mlflow.set_experiment(cfg.logging.project)
            self.mlflow = mlflow
            mlflow.start_run(run_name=cfg.name)
            if config_dict:
                mlflow.log_dict(config_dict, "config.json")

    def _truncate_after(self, step: int) -> None:
        keep, superseded = [], []
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            (superseded if json.loads(line).get("step", 0) > step else keep).append(line)
        if superseded:
            with (self.run_dir / "metrics.superseded.jsonl").open("a") as f:
                f.write("\n".join(superseded) + "\n")
            log.warning("resuming at step %d: moved %d later metric records to metrics.superseded.jsonl", step, len(superseded))
        self.path.write_text("".join(line + "\n" for line in keep))

    def log(self, step: int, metrics: dict[str, float | str]) -> None:
        """One RL step's record: finite numbers go to every sink, strings to the JSONL line only."""
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        fields = {k: v for k, v in metrics.items() if isinstance(v, str)}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **clean, **fields}) + "\n")
        if self.tb is not None:
            for k, v in clean.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(clean, step=step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in clean.items()}, step=step)

    def restart_sft(self) -> None:
        """An SFT warm start begins (again: an earlier attempt stopped before its export): the
        earlier attempt's SFT records move to metrics.superseded.jsonl."""
        if not self.path.exists():
            return
        keep, superseded = [], []
        for line in self.path.read_text().splitlines():
            if line.strip():
                (superseded if "sft/step" in json.loads(line) else keep).append(line)
        if superseded:
            with (self.run_dir / "metrics.superseded.jsonl").open("a") as f:
                f.write("\n".join(superseded) + "\n")
            log.warning("SFT starts again: moved %d earlier SFT metric records to metrics.superseded.jsonl",
                        len(superseded))
            self.path.write_text("".join(line + "\n" for line in keep))

    def log_sft(self, sft_step: int, metrics: dict[str, float]) -> None:
        """One SFT warm-start step (``sft/*`` metrics) on its own axis, ``sft/step``."""
        clean = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        with self.path.open("a") as f:
            f.write(json.dumps({"sft/step": sft_step, **clean}) + "\n")
        if self.tb is not None:
            for k, v in clean.items():
                self.tb.add_scalar(k, v, sft_step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({"sft/step": sft_step, **clean})
        if self.mlflow is not None:
            self.mlflow.log_metrics(clean, step=sft_step)

    def token_records(self, step: int, tokens: StepTokens, seed: int) -> None:
        """The step's per-token records and their exact summary (`rl.token_records`), bounded
        by `logging.token_records_per_step`."""
        tokens.write(self.token_dir, self.token_records_per_step, seed)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.mlflow is not None:
            self.mlflow.end_run()


def read_history(run_dir: Path, axis: str = "step") -> list[dict]:
    """The records of metrics.jsonl on one step axis, in order: RL steps (``step``, the default)
    or the SFT warm start's (``sft/step``). A last line still being written (a running run) is
    left out."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines[:-1]]
    try:
        records += [json.loads(lines[-1])] if lines else []
    except json.JSONDecodeError:
        pass
    return [r for r in records if axis in r]


def progress_line(step: int, total: int, m: dict[str, float]) -> str:
    parts = [f"step {step:>4}/{total}", f"reward {m.get('reward/mean', float('nan')):.3f}"]
    if "eval/accuracy" in m:
        parts.append(f"acc {m['eval/accuracy']:.3f}")
    if "mismatch/k3" in m:
        parts.append(f"k3 {m['mismatch/k3']:.1e}")
    elif "offpolicy/k3" in m:  # sampled ahead: one update of drift included
        parts.append(f"k3 (1 step stale) {m['offpolicy/k3']:.1e}")
    times = " ".join(f"{name} {m.get(f'time/{name}', 0.0):.1f}s" for name in ("rollout", "reward", "train", "sync"))
    parts.append(times)
    return " | ".join(parts)


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1) + 0.5))] for v in values)
