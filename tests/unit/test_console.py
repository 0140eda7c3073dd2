"""What the terminal shows (rl.console): a live bar with rate and ETA on a terminal, plain
periodic lines elsewhere; the libraries' INFO logs in the run's log file, not on the console."""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A short SFT-like loop through the same pieces the driver uses: a phase line, a bar, a line
# printed above it, and a library's INFO and WARNING records.
SCRIPT = r"""
import logging, sys, time
from rl import console
console.PLAIN_EVERY_S = 0.05
console.route_logs(verbose=False)
console.log_to_file(sys.argv[1])
with console.phase("starting 1 trainer rank"):
    time.sleep(0.1)
with console.Progress("SFT", 20, "step") as bar:
    for step in range(20):
        time.sleep(0.04)
        bar.update()
        if step == 9:
            console.print_progress(f"sft step 10/20 | eta {bar.eta()}")
logging.getLogger("vllm.engine").info("library chatter at INFO")
logging.getLogger("vllm.engine").warning("a library warning")
logging.getLogger("lockstep.driver").info("lockstep's own note")
"""


def run_in_pty(args: list[str], env: dict) -> str:
    """Output of a command whose stdout and stderr are a pseudo-terminal."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a new pty is 0×0
    proc = subprocess.Popen(args, stdout=follower, stderr=follower, env=env, cwd=ROOT)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_terminal_shows_a_live_bar_with_rate_and_eta(tmp_path):
    out = run_in_pty([sys.executable, "-c", SCRIPT, str(tmp_path / "run.log")], env())
    assert "starting 1 trainer rank…" in out and "done in" in out
    assert "SFT" in out and "/20 [" in out
    assert "step/s" in out or "s/step" in out  # tqdm's rate
    assert "<" in out  # tqdm's [elapsed<remaining]
    assert "\r" in out  # redrawn in place, not one line per update
    assert "sft step 10/20 | eta" in out


def test_without_a_terminal_plain_lines_and_library_logs_in_the_file(tmp_path):
    log = tmp_path / "run.log"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(log)], env=env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "\r" not in done.stdout and "\x1b" not in done.stdout  # no bar drawing in a log
    progress = [line for line in lines if line.startswith("SFT: ")]
    assert progress and progress[-1].startswith("SFT: 20/20 steps |") and "eta" in progress[-1], lines
    assert "starting 1 trainer rank…" in lines
    # Console: the warning, no INFO record.
    assert "library chatter at INFO" not in done.stderr and "lockstep's own note" not in done.stderr
    assert "a library warning" in done.stderr
    # The log file has everything.
    text = log.read_text()
    assert "library chatter at INFO" in text and "a library warning" in text and "lockstep's own note" in text


def test_eval_puts_progress_on_stderr_only_while_it_runs(tmp_path):
    """`lockstep eval` writes its report on stdout, so its progress goes to stderr — for that
    command only: run in one process after it (the test suite, a notebook), the next command's
    progress is on stdout again, even when eval stopped with an error."""
    from rl import cli, console

    with console.progress_on_stderr():
        assert console.out() is sys.stderr
    assert console.out() is sys.stdout
    assert cli.main(["eval", str(tmp_path / "no-such-run")]) == 2  # a one-line error, exit 2
    assert console.out() is sys.stdout
