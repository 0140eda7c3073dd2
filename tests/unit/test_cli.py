"""The command line's recipe tools: `lockstep config`, `run --dry-run`, `recipes`, `--version`,
and the help of every flag (real parser, real recipes; nothing starts Ray)."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rl.cli import main, parser
from rl.config import from_data, load_recipe

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "recipes" / "demo.yaml")


def test_version():
    out = subprocess.run([sys.executable, "-m", "rl.cli", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("lockstep ") and "(" in out.stdout


def test_config_prints_the_resolved_recipe(capsys):
    assert main(["config", DEMO, "trainer.lr=3e-5", "schedule.steps=7"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# lockstep config ")
    resolved = from_data(yaml.safe_load(out))  # the output is a complete recipe again
    assert resolved == load_recipe(DEMO, ["trainer.lr=3e-5", "schedule.steps=7"])
    assert resolved.trainer.lr == 3e-5 and resolved.schedule.steps == 7
    assert "Q: {prompt}" in out


def test_config_errors_are_the_recipe_errors(capsys):
    assert main(["config", DEMO, "trainer.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lockstep: error: trainer.lrr: unknown key. Did you mean 'lr'?")
    assert err.count("\n") == 1


def test_dry_run_says_what_would_start_and_starts_nothing(capsys, tmp_path):
    import ray

    ray_before = ray.is_initialized()  # an earlier test of the session may have connected
    args = ["run", DEMO, f"output_dir={tmp_path}", "ray.placement=split", "trainer.num_ranks=2",
            "rollout.num_workers=2", "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert from_data(yaml.safe_load(out)).ray.placement == "split"  # plan lines are YAML comments
    plan = out[out.index("# what the run would start"):]
    assert "split, 4 bundle(s)" in plan
    assert "bundle 0: trainer rank 0; bundle 1: trainer rank 1; bundle 2: rollout engine 0; " \
           "bundle 3: rollout engine 1" in plan
    assert "2 DeepSpeed ZeRO-1 rank(s)" in plan and "2 vLLM engine(s)" in plan
    assert f"run directory: {tmp_path.resolve() / 'demo'}; start from step 0" in plan
    assert ray.is_initialized() == ray_before  # the dry run connected to nothing
    assert not (tmp_path / "demo").exists()  # nothing written either

    assert main(["run", DEMO, f"output_dir={tmp_path}", "--dry-run", "--resume"]) == 2
    assert "--resume: " in capsys.readouterr().err


def test_run_of_a_finished_run_starts_nothing(capsys, tmp_path):
    """A finished run submitted again (its newest checkpoint holds step schedule.steps) says so
    and exits 0 before Ray or any actor starts; one step short, --no-resume, or a newest
    checkpoint that does not verify, and the run starts as before."""
    import ray

    from rl.checkpoint import nothing_to_train
    from test_checkpoint_manifest import save

    ray_before = ray.is_initialized()
    run_dir = tmp_path / "demo"
    save(run_dir, 1)
    cfg = load_recipe(DEMO, [f"output_dir={tmp_path}", "schedule.steps=2"])
    assert nothing_to_train(cfg, None) is None  # step 1 of 2: a real resume
    newest = save(run_dir, 2)
    assert main(["run", DEMO, f"output_dir={tmp_path}", "schedule.steps=2"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == (f"lockstep: run demo: resuming from {newest} (--no-resume starts over) finds step 2 done "
                           "of schedule.steps=2: nothing to train, nothing started (raise schedule.steps to train on)")
    assert ray.is_initialized() == ray_before
    assert main(["run", DEMO, f"output_dir={tmp_path}", "schedule.steps=2", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "#   run demo: resuming from" in dry and "nothing to train, nothing started" in dry
    assert nothing_to_train(cfg, False) is None and nothing_to_train(cfg, True) is not None
    assert nothing_to_train(load_recipe(DEMO, [f"output_dir={tmp_path}", "schedule.steps=3"]), None) is None
    (newest / "hf" / "model.safetensors").write_bytes(b"cut")  # damaged: the run's recover() handles it
    assert nothing_to_train(cfg, None) is None


def test_recipes_lists_each_with_its_first_comment_line(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shipped = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))
    assert [Path(line.split()[0]).name for line in lines] == shipped
    demo = next(line for line in lines if line.startswith("recipes/demo.yaml "))
    assert "The CPU demo (the default recipe)" in demo


def _subcommands(p: argparse.ArgumentParser):
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices.items()


def test_every_flag_has_help_and_shows_its_default():
    p = parser()
    for name, sub in [("lockstep", p), *_subcommands(p)]:
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.dest}: no help text"
            if action.option_strings and not isinstance(action, argparse._VersionAction):
                shown = formatter._expand_help(action)
                assert "default" in shown, f"{name} {action.option_strings}: help does not show the default"


@pytest.mark.parametrize("command", ["run", "config", "recipes", "eval", "mismatch"])
def test_help_runs(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert f"usage: lockstep {command}" in capsys.readouterr().out
