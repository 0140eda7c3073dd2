"""`lockstep mismatch` with bad input for the probe: exit 2 and one line naming what is wrong,
before any engine starts."""

import pytest

from rl import cli


@pytest.mark.parametrize("argv, says", [
    (["mismatch"], "pass a run directory (runs/<name>) or --checkpoint CKPT --data FILE"),
    (["mismatch", "runs/x", "--checkpoint", "ckpt"], "not both"),
    (["mismatch", "runs/x", "--data", "f.jsonl", "--layers"], "--data and --layers go with --checkpoint"),
    (["mismatch", "--checkpoint", "{tmp}/missing", "--data", "f.jsonl"], "missing: no such file or directory"),
    (["mismatch", "--checkpoint", "{tmp}", "--data", "f.jsonl"], "not a checkpoint"),
    (["mismatch", "--checkpoint", "{tmp}", "--step", "3"], "--step is for a run directory"),
])
def test_bad_probe_input_is_one_line_and_exit_2(tmp_path, capsys, argv, says):
    assert cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lockstep: error: ") and says in err[0], err
