"""`lockstep mismatch RUN`: where the trainer and the rollout engine disagree, token by token.

Reads the per-token records each step writes (runs/<name>/tokens/step_N.jsonl: rollout log-prob
a, trainer log-prob b, entropy, position) and prints the step's mismatch summary, the drift by
position, and the tokens with the largest |b − a| with their text.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rl.algorithms.mismatch import mismatch_metrics
from rl.checkpoint import CheckpointError


def load_records(run_dir: Path, step: int | None) -> tuple[int, list[dict]]:
    token_dir = run_dir / "tokens"
    files = sorted(token_dir.glob("step_*.jsonl")) if token_dir.is_dir() else []
    if not files:
        raise CheckpointError(f"{run_dir}: no per-token records (runs/<name>/tokens/step_N.jsonl); is this a run directory?")
    path = files[-1] if step is None else token_dir / f"step_{step:06d}.jsonl"
    if not path.exists():
        raise CheckpointError(f"{path}: no records for step {step}; steps with records: {files[0].stem[5:]}…{files[-1].stem[5:]}")
    return int(path.stem[5:]), [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def render(run_dir: Path, step: int | None = None, top: int = 20, tokenizer=None) -> str:
    step, records = load_records(run_dir, step)
    a = torch.tensor([r["rollout_logprob"] for r in records], dtype=torch.float32)
    b = torch.tensor([r["trainer_logprob"] for r in records], dtype=torch.float32)
    pos = torch.tensor([r["position"] for r in records])
    m = mismatch_metrics(a, b, torch.ones_like(a, dtype=torch.bool), pos)
    lines = [f"step {step}: {len(records)} token records (bounded sample: half largest |Δ|, half random)"]
    if any(r.get("stale") for r in records):
        lines.append("  sampled ahead (rollout.max_staleness=1): the trainer's weights are one update newer, so Δ includes that update's drift")
    lines += [f"  {k.removeprefix('mismatch/'):<32} {v:.3e}" for k, v in m.items()]
    worst = sorted(records, key=lambda r: -abs(r["trainer_logprob"] - r["rollout_logprob"]))[:top]
    lines.append(f"\n{'sample':>6} {'pos':>5} {'token':>14} {'rollout':>11} {'trainer':>11} {'Δ':>10} {'entropy':>8}")
    for r in worst:
        text = repr(tokenizer.decode([r["token"]])) if tokenizer is not None else str(r["token"])
        ent = "" if r.get("entropy") is None else f"{r['entropy']:.3f}"
        delta = r["trainer_logprob"] - r["rollout_logprob"]
        lines.append(f"{r['sample']:>6} {r['position']:>5} {text[:14]:>14} {r['rollout_logprob']:>11.6f} {r['trainer_logprob']:>11.6f} {delta:>10.2e} {ent:>8}")
    return "\n".join(lines)
