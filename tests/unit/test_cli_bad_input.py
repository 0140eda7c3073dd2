"""`lockstep run` with bad input: exit 2, one line on stderr naming the file or field and the
fix, no traceback, before Ray or any actor starts."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("case", ["data", "model"])
def test_run_with_bad_input_exits_2_with_one_line(tmp_path, case):
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "1+1", "answer": "2"}\n7\n' if case == "data" else '{"question": "1+1", "answer": "2"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: bad\noutput_dir: {tmp_path / 'runs'}\ndata:\n  train:\n    source: {data}\n"
                      + (f"model:\n  path: {tmp_path / 'no_model'}\n" if case == "model" else ""))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "rl.cli", "run", str(recipe)], capture_output=True, text=True,
                         timeout=300, cwd=REPO, env=env)
    elapsed = time.monotonic() - start
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    expected = {
        "data": f"lockstep: error: data.train: row 1 of {str(data)!r} (line 2) is a JSON number (7), not a record; "
                "each row must be an object with the fields 'question' and 'answer'",
        "model": f"lockstep: error: model.path: no such directory {str(tmp_path / 'no_model')!r}; give a model "
                 "directory (config.json and weights), a hub id 'org/name', or demo:<name>",
    }[case]
    assert out.stderr.strip() == expected
    assert "Ray" not in out.stdout  # the driver announces Ray when it connects: it never got there
    assert elapsed < 120, elapsed  # the imports only (a busy 2-core machine: ~15 s); Ray would take longer
