"""`lockstep mismatch --checkpoint CKPT --data FILE --layers` on the demo's model (the Ring-linear
hybrid, fp32): the engine samples, the trainer model rescores, the summary is the run report's,
and both module-by-module comparisons (prefill vs prefill, training prefill vs inference decode)
find every module in agreement. One engine start (~30 s, more on a loaded machine)."""

import json

import pytest

from rl import cli, demo_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import os

    cache = os.environ.get("LOCKSTEP_TEST_CACHE", str(tmp_path_factory.mktemp("cache")))
    return demo_model.resolve("demo:ring-micro", cache)


def last_json(stdout: str) -> dict:
    """The report printed last (vLLM logs to stdout when it was imported before the command ran)."""
    text = "\n" + stdout
    return json.loads(text[text.rindex("\n{\n") + 1 :])


def test_probe_reports_the_mismatch_and_the_modules_agree(model_dir, tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus {i + 3}?", "answer": str(2 * i + 3)}) + "\n"
                            for i in range(3)))
    out = tmp_path / "records"
    assert cli.main(["mismatch", "--checkpoint", str(model_dir), "--data", str(data), "--prompts", "3",
                     "--samples", "2", "--max-new-tokens", "12", "--layers", "--out", str(out), "--json"]) == 0
    report = last_json(capsys.readouterr().out)
    summary = report["summary"]
    assert report["probe"]["prompts"] == 3 and report["probe"]["samples_per_prompt"] == 2
    assert summary["num_tokens"] == sum(r["tokens"] for r in report["by_position"]) > 0
    # fp32, the same plugin ops on both sides: DESIGN.md §4's bar for the demo
    assert summary["abs_logp_diff_max"] <= 1e-5 and summary["k3"] < 1e-10, summary
    assert report["corrections"] is None and report["worst"]
    for phase in ("prefill vs prefill", "training prefill vs inference decode"):
        layers = report["layers"][phase]
        assert layers["first"] is None, layers
        assert layers["modules"] == 21 and 0 <= layers["worst"][1] <= 1e-4, layers  # 4 layers × 5 + final norm
    # The records stay in --out: the run report reads them like a run's.
    assert cli.main(["mismatch", str(out), "--json"]) == 0
    assert last_json(capsys.readouterr().out)["steps"][0]["k3"] == summary["k3"]


def test_probe_names_a_bad_data_file_in_one_line(model_dir, tmp_path, capsys):
    assert cli.main(["mismatch", "--checkpoint", str(model_dir), "--data", str(tmp_path / "none.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.jsonl" in err[0], err
