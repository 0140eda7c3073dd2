"""Preloaded into the reward pool's forkserver (and imported nowhere else):
the forkserver ignores SIGTERM.

`ray job stop` (and some schedulers) send SIGTERM to the driver *and all its children*, the
forkserver included. The driver then finishes its step, which may need a new reward worker (one
timed out or crashed), and only the forkserver can start one. It needs no signal to end: it
exits when the driver's end of its alive pipe closes (the driver exited, however it died). The
workers it forks inherit the setting, which `rewards.worker` sets for itself anyway.
"""

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
