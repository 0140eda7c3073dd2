"""What every benchmark shares: timing medians (wall clock on CPU, do_bench and CUDA-graph replays
on GPU), the relative error of a result against its reference, the header line that says where
and when a run was made (device, software, MKL code path, UTC date), and markdown tables.

torch, triton and the GPU helpers are imported inside the functions that use them, so a CPU
benchmark that needs none of them (rewards) starts without them.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any


# ----------------------------------------------------------------------------------- errors
def rel_error(a, b) -> float:
    """‖a − b‖ / ‖b‖ in float64 (b is the reference; a zero reference gives ‖a‖ / 1e-300)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


# ----------------------------------------------------------------------------------- timing
def median(xs: Sequence[float]) -> float:
    """The median, NaN for no samples (a phase that never ran)."""
    return statistics.median(xs) if xs else float("nan")


def wall_s(fn: Callable[[], Any], reps: int = 3, warmup: int = 1) -> float:
    """Median wall seconds of ``reps`` calls of ``fn`` after ``warmup`` untimed ones (CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def gpu_ms(fn: Callable[[], Any], warmup: int = 50, rep: int = 200, grad_to_none=None) -> float:
    """Median ms per call from ``triton.testing.do_bench`` (L2 flushed before each repetition;
    host launch time included whenever the host is slower than the GPU)."""
    import triton

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, return_mode="median")


def graph_ms(fn: Callable[[Any], Any], inputs: Sequence[Any], reps: int = 20, warm_replays: int = 1) -> float:
    """GPU ms per call of ``fn(x)``, x cycling through ``inputs``, all calls captured in one CUDA
    graph and replayed: host launch cost left out (do_bench times it in whenever the host needs
    longer than the GPU), as in vLLM's graphed decode. Give inputs that together exceed the L2
    cache (50 MB on an H100), so none is read from L2. Median over ``reps`` replays after
    ``warm_replays`` untimed ones; the calls run once outside the capture first (compile,
    launch caches)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x in inputs:
            fn(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for x in inputs:
            fn(x)
    ms = replay_ms(graph, reps, len(inputs), warm_replays)
    del graph
    return ms


def replay_ms(graph, reps: int, calls: int, warm_replays: int = 1) -> float:
    """Median GPU ms per call over ``reps`` replays of a captured ``graph`` of ``calls`` calls."""
    import torch

    for _ in range(warm_replays):
        graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return median(times)


def copy_bandwidth(device) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write) of a 1 GiB tensor: the floor
    that memory-bound kernels are measured against."""
    import torch

    x = torch.empty(1 << 28, dtype=torch.float32, device=device).normal_()
    y = torch.empty_like(x)
    ms = gpu_ms(lambda: y.copy_(x))
    del x, y
    return 2 * (1 << 28) * 4 / (ms * 1e-3)


# ----------------------------------------------------------------------------------- header
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """1, 5 and 15 minute load averages (the machine may be shared: say how busy it was)."""
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def environment(modules: Iterable[str] = ("torch",)) -> dict[str, str]:
    """Where and when a run is made: the device (GPU name, else the CPU model and usable
    cores), the load average, the UTC date, the versions of ``modules`` that import, and the
    MKL code path (rl/blas.py) when torch is among them."""
    info: dict[str, str] = {}
    versions = {}
    for name in modules:
        if name == "python":
            versions[name] = platform.python_version()
            continue
        try:
            versions[name] = getattr(__import__(name), "__version__", None) or metadata.version(name.replace("_", "-"))
        except Exception as e:  # report, don't fail: the header still says what ran
            versions[name] = f"n/a ({type(e).__name__})"
    torch = None
    if "torch" in modules:
        import torch
    if torch is not None and torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    else:
        info["device"] = f"{cpu_model()}, {len(os.sched_getaffinity(0))} usable cores"
    info["load"] = load_average()
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info["software"] = ", ".join(f"{k} {v}" for k, v in versions.items())
    if torch is not None:
        from rl.blas import mkl_code_path

        info["mkl"] = f"MKL_CBWR={os.environ.get('MKL_CBWR', 'unset')} (MKL reports {mkl_code_path()})"
    return info


def header(title: str, modules: Iterable[str] = ("torch",)) -> str:
    """One line: ``# title — device; software; MKL; load; date``."""
    info = environment(modules)
    parts = [info["device"], info["software"]] + ([info["mkl"]] if "mkl" in info else [])
    return f"# {title} — " + "; ".join(parts + [f"load {info['load']}", info["date"]])


# ----------------------------------------------------------------------------------- tables
def cell(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return "" if value is None else str(value)


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 4) -> str:
    """A markdown table; floats with ``digits`` significant digits, None as an empty cell."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)
