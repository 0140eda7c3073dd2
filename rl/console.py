"""What the terminal shows while a run works: one line per phase change, live progress with rate
and ETA, and the libraries' own logs kept off it.

- `phase("starting 1 vLLM engine")` prints the line at once; used as `with phase(...):` it also
  says how long the phase took, and on a terminal shows the time so far while it runs.
- `Progress(label, total, unit)` is a tqdm bar on a terminal (count, rate, ETA); when stdout is
  not a terminal (CI logs, `ray job submit` logs) it prints a plain line every `PLAIN_EVERY_S`
  seconds and at the end instead of a bar's carriage returns.
- `print_progress` writes a line above an open bar, so the bar stays at the bottom.
- `route_logs`: third-party loggers (vLLM, Ray, DeepSpeed, transformers, ...) reach the console
  at WARNING and up (`--verbose`: INFO), and everything at INFO and up goes to the run's log
  file, `<run_dir>/run.log`, when there is one (`log_to_file`). Actors do the same through
  `configure_worker`, which Ray runs in every worker process of the run (rl.placement).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import contextmanager

PLAIN_EVERY_S = 30.0  # without a terminal: a progress line at most this often
HEARTBEAT_EVERY_S = 60.0  # without a terminal: a "... so far" line of a long phase this often
LOG_FILE_ENV = "LOCKSTEP_LOG_FILE"  # the run's log file, for the actors
VERBOSE_ENV = "LOCKSTEP_VERBOSE"  # "1": the libraries' INFO on the console too
LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
CONSOLE_FORMAT = "%(levelname)s %(name)s: %(message)s"

# The libraries' chatter, set in every process Lockstep starts before they load (the driver in
# `route_logs`, the actors through rl.placement.ACTOR_ENV). vLLM: no logging set-up of its own,
# so its records reach the handlers below like any library's (its own handler would print INFO
# to the console); no download or loading bars.
LIBRARY_ENV = {
    "VLLM_CONFIGURE_LOGGING": "0",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",  # the libraries' bars (vLLM's weight loading); Lockstep's own ask for theirs
}
# vLLM warnings that hold for every engine Lockstep starts on CPU and say nothing about this
# run: performance hints of the CPU backend (LD_PRELOAD, Triton), a refused torch.set_num_threads,
# and the consequences of the engine settings Lockstep chooses (in-process engine core, eager
# mode). In the log file, not on the console.
CPU_NOTICES = ("is not found in LD_PRELOAD", "doesn't allow to use `torch.set_num_threads`",
               "Triton is not installed", "doesn't include CPU backend", "Model Runner V2 requires Triton",
               "VLLM_ENABLE_V1_MULTIPROCESSING is set to False", "Enforce eager set",
               "Inductor compilation was disabled")
_open_bars: list = []
_to_stderr: list[bool] = [False]


@contextmanager
def progress_on_stderr():
    """Progress on stderr while a command whose stdout is its result (`lockstep eval`'s JSON)
    runs; as before on exit (commands also run inside one process: the tests, a notebook)."""
    before, _to_stderr[0] = _to_stderr[0], True
    try:
        yield
    finally:
        _to_stderr[0] = before


def out():
    """The progress stream, looked up at each write (a test may have replaced sys.stdout)."""
    return sys.stderr if _to_stderr[0] else sys.stdout


def is_terminal() -> bool:
    return out().isatty()


def print_progress(line: str) -> None:
    """One line for the user (stdout); above the open progress bar, if any."""
    if _open_bars:
        _open_bars[-1].write(line, file=out())
    else:
        print(line, file=out(), flush=True)


def plural(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Progress of `total` units of work (SFT steps, problems, RL steps)."""

    def __init__(self, label: str, total: int, unit: str, initial: int = 0, plain_lines: bool = True):
        """`plain_lines=False`: no periodic lines without a terminal (the caller prints a line
        per unit already, with `eta()` in it)."""
        self.label, self.total, self.unit = label, total, unit
        self.done = self.initial = initial
        self.started = self.last_line = time.monotonic()
        self.plain_lines = plain_lines
        self.bar = None
        if is_terminal():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=label, unit=f" {unit}", file=out(),
                            dynamic_ncols=True, leave=False, disable=False,
                            bar_format="{desc} {bar} {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]")
            _open_bars.append(self.bar)

    def rate(self) -> float:
        """Units per second so far (0 before the first)."""
        return (self.done - self.initial) / max(time.monotonic() - self.started, 1e-9)

    def eta(self) -> str:
        rate = self.rate()
        return duration((self.total - self.done) / rate) if rate > 0 else "?"

    def speed(self) -> str:
        rate = self.rate()
        return f"{rate:.2f} {self.unit}/s" if rate >= 1 or rate == 0 else f"{1 / rate:.1f} s/{self.unit}"

    def line(self) -> str:
        return (f"{self.label}: {self.done}/{self.total} {self.unit}s | {self.speed()} | "
                f"elapsed {duration(time.monotonic() - self.started)} | eta {self.eta()}")

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.plain_lines and (time.monotonic() - self.last_line >= PLAIN_EVERY_S or self.done >= self.total):
            self.last_line = time.monotonic()
            print_progress(self.line())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            _open_bars.remove(self.bar)
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class phase:
    """`phase("starting 2 trainer ranks")`: one line now. As a context manager it also says when
    the phase is done and how long it took; meanwhile a terminal shows the seconds going by and
    a log gets a "... so far" line every HEARTBEAT_EVERY_S seconds (start-ups that take minutes)."""

    def __init__(self, what: str):
        self.what = what
        print_progress(f"{what}…")

    def __enter__(self) -> phase:
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.ticker = threading.Thread(target=self._tick, daemon=True)
        self.ticker.start()
        return self

    def _tick(self) -> None:
        live = is_terminal()
        every = 1.0 if live else HEARTBEAT_EVERY_S
        while not self.stop.wait(every):
            elapsed = duration(time.monotonic() - self.started)
            if live and not _open_bars:
                out().write(f"\r  {self.what}: {elapsed}")
                out().flush()
            elif not live:
                print_progress(f"  {self.what}: {elapsed} so far")

    def __exit__(self, exc_type, *exc) -> None:
        self.stop.set()
        self.ticker.join()
        if is_terminal() and not _open_bars:
            out().write("\r\033[K")  # clear the live timer's line
        if exc_type is None:
            print_progress(f"  done in {duration(time.monotonic() - self.started)}")


# ---------------------------------------------------------------------------------------------
# Library logs: WARNING on the console, everything in the run's log file


class _ConsoleFilter(logging.Filter):
    """WARNING and up on the console (INFO too with --verbose), less vLLM's CPU notices."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        if record.name.startswith("vllm") and record.levelno < logging.ERROR:
            message = record.getMessage()
            return record.levelno >= logging.WARNING and not any(n in message for n in CPU_NOTICES)
        return record.levelno >= logging.WARNING


class _StderrHandler(logging.StreamHandler):
    """A console handler writing to `sys.stderr` as it is at each record: an in-process caller
    of `main` (a test's captured stderr) may have replaced and closed the one of an earlier call."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def route_logs(verbose: bool = False) -> None:
    """This process's logging: the root logger takes every library's records at INFO; a console
    handler (stderr) lets through WARNING and up, or everything with `verbose`. Libraries that
    bring their own console handler and stop propagation (DeepSpeed, Ray) are folded in."""
    for key, value in LIBRARY_ENV.items():
        os.environ.setdefault(key, value)
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in root.handlers:
        if getattr(handler, "lockstep_console", False):  # set up before (in-process calls of main)
            handler.filters[0].verbose = verbose
            break
    else:
        console = _StderrHandler()
        console.lockstep_console = True
        console.setFormatter(logging.Formatter(CONSOLE_FORMAT))
        console.addFilter(_ConsoleFilter(verbose))
        root.addHandler(console)
    _quiet_library_handlers(verbose)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # the libraries' deprecation notices


def _quiet_library_handlers(verbose: bool) -> None:
    """Libraries with a console handler of their own (Ray's `ray` logger, DeepSpeed's): their
    handler keeps WARNING and up, and their records also reach the root's handlers (the log file)."""
    level = logging.INFO if verbose else logging.WARNING
    for name in ("ray", "DeepSpeed", "vllm"):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(max(handler.level, level))


def log_to_file(path) -> None:
    """Every record at INFO and up, of every library, appended to `path` (the run's log file;
    actors append to the same file: one line per write). Also names it for the actors."""
    path = os.path.abspath(path)
    os.environ[LOG_FILE_ENV] = path
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in ("ray", "DeepSpeed")
                                       if not logging.getLogger(n).propagate]  # those that skip the root
    if any(getattr(h, "baseFilename", None) == path for h in loggers[0].handlers):
        return
    _quiet_library_handlers(os.environ.get(VERBOSE_ENV) == "1")  # Ray is loaded by now
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path)
    handler.lockstep_file = True
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for logger in loggers:
        for old in [h for h in logger.handlers if getattr(h, "lockstep_file", False)]:  # an earlier run's
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)


def configure_worker() -> None:
    """Ray's worker_process_setup_hook for the run's actors: the same routing as the driver's,
    into the log file the driver named (LOCKSTEP_LOG_FILE)."""
    route_logs(os.environ.get(VERBOSE_ENV) == "1")
    if os.environ.get(LOG_FILE_ENV):
        log_to_file(os.environ[LOG_FILE_ENV])

