"""rl.stop in a real process with real signals (no Ray: tests/integration/test_graceful_stop.py
runs the whole driver): the first signal is noted and said, a second abandons, start-up stops at
once, and the handlers found are put back."""

import signal
import subprocess
import sys
import time
from pathlib import Path

from rl.stop import StopSignals

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for the driver's loop: steps until a signal, then one last "step" of `finish_s`.
LOOP = """
import sys, time
from rl.stop import StopSignals
stop = StopSignals()
stop.install()
stop.finish_step = sys.argv[1] == "loop"
try:
    print("ready", flush=True)
    while not stop.requested:
        time.sleep(0.01)
    time.sleep(float(sys.argv[2]))  # the step in progress finishes
    print("finished", stop.name, stop.exit_code, flush=True)
except KeyboardInterrupt:
    print("abandoned", stop.name, stop.exit_code, len(stop.received), flush=True)
"""


def run(mode: str, finish_s: float, *signals: int) -> tuple[str, str]:
    proc = subprocess.Popen([sys.executable, "-c", LOOP, mode, str(finish_s)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == "ready\n"
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.3)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out, err


def test_first_signal_finishes_the_step_and_says_so_once():
    out, err = run("loop", 1.0, signal.SIGTERM)
    assert out == "finished SIGTERM 143\n"
    assert err == ("lockstep: SIGTERM: finishing the current step, then checkpoint and exit "
                   "(send SIGTERM again to abandon the step)\n")


def test_second_signal_abandons_the_step():
    out, err = run("loop", 10.0, signal.SIGINT, signal.SIGINT)
    assert out == "abandoned SIGINT 130 2\n" and err.count("\n") == 1


def test_during_start_up_the_first_signal_stops_at_once():
    out, err = run("start-up", 10.0, signal.SIGINT)
    assert out == "abandoned SIGINT 130 1\n" and err == ""


def test_restore_puts_back_the_handlers_found_first():
    def mine(*_):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        stop = StopSignals()
        stop.install()
        stop.install()  # again, as after ray.init: still restores to what was there at first
        assert signal.getsignal(signal.SIGTERM) == stop._on_signal
        stop.restore()
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)
