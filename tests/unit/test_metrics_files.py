"""What a run writes for its metrics (rl/metrics.py, rl/plots.py): SFT metrics on their own
step axis in metrics.jsonl and TensorBoard; string fields (the prompt hash) in the JSONL record
only; the curves PNG, also from a run still writing its metrics (`lockstep plot`)."""

from __future__ import annotations

import json
import types

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rl.cli import main
from rl.metrics import MetricsLogger, read_history
from rl.plots import PLOT_FILE, plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cfg(tensorboard: bool = True):
    logging = types.SimpleNamespace(tensorboard=tensorboard, wandb=False, mlflow=False, project="t",
                                    token_records_per_step=16)
    return types.SimpleNamespace(logging=logging, name="t")


def _log_a_run(run_dir, rl_steps=3, sft_steps=4, tensorboard=True) -> MetricsLogger:
    logger = MetricsLogger(run_dir, _cfg(tensorboard))
    logger.restart_sft()
    for s in range(1, sft_steps + 1):
        logger.log_sft(s, {"sft/loss": 2.0 / s, "sft/lr": 1e-3, "sft/grad_norm": 0.5, "sft/tokens_per_s": 900.0})
    logger.log(0, {"eval/accuracy": 0.25})
    for s in range(1, rl_steps + 1):
        logger.log(s, {"reward/mean": 0.1 * s, "mismatch/k3": 1e-7 * s, "data/prompt_hash": f"{s:08x}",
                       **({"eval/accuracy": 0.5} if s == rl_steps else {})})
    return logger


def test_sft_metrics_have_their_own_axis_and_the_hash_is_no_scalar(tmp_path):
    logger = _log_a_run(tmp_path)
    logger.close()
    sft, rl = read_history(tmp_path, axis="sft/step"), read_history(tmp_path)
    assert [r["sft/step"] for r in sft] == [1, 2, 3, 4] and sft[-1]["sft/loss"] == 0.5
    assert all("step" not in r for r in sft) and [r["step"] for r in rl] == [0, 1, 2, 3]
    assert rl[2]["data/prompt_hash"] == "00000002"
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"sft/loss", "sft/lr", "sft/grad_norm", "sft/tokens_per_s", "reward/mean"} <= tags
    assert "data/prompt_hash" not in tags
    assert [e.step for e in events.Scalars("sft/loss")] == [1, 2, 3, 4]


def test_a_restarted_sft_moves_the_earlier_records_aside(tmp_path):
    logger = MetricsLogger(tmp_path, _cfg(False))
    for s in (1, 2):
        logger.log_sft(s, {"sft/loss": 1.0})
    logger.restart_sft()  # the warm start begins again (the first attempt never exported)
    logger.log_sft(1, {"sft/loss": 0.9})
    assert [r["sft/loss"] for r in read_history(tmp_path, axis="sft/step")] == [0.9]
    assert len((tmp_path / "metrics.superseded.jsonl").read_text().splitlines()) == 2


def test_curves_png_and_the_plot_command_on_a_run_still_writing(tmp_path, capsys):
    _log_a_run(tmp_path, tensorboard=False)
    out = plot_run(tmp_path)
    assert out == tmp_path / PLOT_FILE and out.read_bytes().startswith(PNG_MAGIC)
    with (tmp_path / "metrics.jsonl").open("a") as f:  # a record half written by the running driver
        f.write(json.dumps({"step": 4, "reward/mean": 0.4})[:12])
    assert main(["plot", str(tmp_path), "--output", str(tmp_path / "now.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "now.png")
    assert (tmp_path / "now.png").read_bytes().startswith(PNG_MAGIC)


def test_plot_command_on_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a run directory" in err
