"""Metric sinks: JSONL and TensorBoard always, W&B or MLflow when installed and asked for; the
per-token mismatch records; the live progress line.

Resuming from step k continues the same files: JSONL records after step k (work the crash threw
away and the resumed run redoes) move to `metrics.superseded.jsonl` rather than being deleted,
and TensorBoard purges its events after k.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

from rl.console import print_progress  # noqa: F401  (the driver's progress lines; re-exported)

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

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        if self.tb is not None:
            for k, v in clean.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(clean, step=step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in clean.items()}, step=step)

    def token_records(self, step: int, records: list[dict], seed: int) -> None:
        """Per-token (sample, position, token, a, b, entropy) for the mismatch report, bounded:
        beyond the limit, half the records are the largest |b − a| and half a seeded sample."""
        limit = self.token_records_per_step
        if len(records) > limit:
            ranked = sorted(records, key=lambda r: -abs(r["trainer_logprob"] - r["rollout_logprob"]))
            top, rest = ranked[: limit // 2], ranked[limit // 2 :]
            records = top + random.Random(seed + step).sample(rest, limit - len(top))
        with (self.token_dir / f"step_{step:06d}.jsonl").open("w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.mlflow is not None:
            self.mlflow.end_run()


def read_history(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
