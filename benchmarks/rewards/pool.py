"""Reward pool benchmark: verdicts per second and tail latency with pathological completions.

    python -m benchmarks.rewards.pool [--items 2000] [--batches 5] [--timeout 5]

Prints three tables (see DESIGN.md §9):

1. Throughput on real completions (MATH-500 gold solutions against their own and another
   problem's answer, GSM8K reference solutions against their final numbers):
   - anchor: `math_verify.verify(parse(reference), parse(completion))` in a plain loop, what
     peers (open-r1, TRL examples) do; no isolation, no time limit;
   - `MathReward.score` in a plain loop (the single-process rate);
   - `RewardPool` at 1, 2 and all-core workers. Target: rate >= 0.9 x workers x single-process.
   The MathReward loop and the pools are timed on a second pass over the items (steady state:
   reference and sympy caches warm, as in a long training run); each row is the best of
   `--repeats` runs, and CPU ms/verdict (driver + workers) is given beside the wall-clock rate,
   since on a machine shared with other jobs only the CPU figure is stable.
2. The pool's own cost per item (a reward function that does nothing).
3. Latency of batches of 1024 completions of which 1% are pathological (power towers, huge
   powers and factorials, deep nesting, a slow integral, a huge matrix power), all-core pool:
   batch wall time (p50 / p99 / max over batches) and per-item p99, with the complexity budgets
   (rewards/budget.py) on and off, and on with a further kind that no budget catches (only the
   timeout ends it). Target: p99 batch latency <= timeout + 1 s.

Data: $LOCKSTEP_DATA_DIR, else ../shared/data relative to the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

from benchmarks.harness import header
from rewards import MathReward, Reason, RewardPool, Score
from rewards.pool import default_num_workers

REPO = Path(__file__).resolve().parents[2]

DATA = Path(os.environ.get("LOCKSTEP_DATA_DIR") or REPO.parent / "shared" / "data")  # as rl/data.py

PATHOLOGICAL = [
    "Let me compute. \\boxed{9^{9^{9^{9}}}}",
    "So the value is \\boxed{2^{10^{10}}}",
    "\\boxed{" + "\\frac{1}{" * 80 + "2" + "}" * 80 + "}",
    "The answer is $10^{10^{10}}+1$.",
    "\\boxed{\\int_0^1 x^{1000} e^{x} \\sin(x)\\, dx}",
    "\\boxed{(10^{8})!}",
    "\\boxed{\\begin{pmatrix}1&1\\\\1&0\\end{pmatrix}^{100000000}}",
]
# Slow in sympy yet within every complexity budget (rewards/budget.py): only the timeout ends it.
SLIPS_THROUGH = ["\\boxed{(x+1)^{3000}}"]


def load(name: str) -> list[dict]:
    path = DATA / f"{name}.jsonl"
    if not path.exists():
        sys.exit(f"missing {path}: the benchmark reads ../shared/data beside the repository")
    with open(path) as f:
        return [json.loads(line) for line in f]


def workload(n: int) -> list[tuple[str, str]]:
    math = load("math500_test")
    gsm = load("gsm8k_test")
    items = [(r["solution"], r["answer"]) for r in math]
    items += [(r["solution"], math[(i + 7) % len(math)]["answer"]) for i, r in enumerate(math)]
    items += [(r["answer"], r["answer"].rsplit("####", 1)[1].strip()) for r in gsm]
    random.Random(0).shuffle(items)
    return (items * (n // len(items) + 1))[:n]


# Each measurement returns (verdicts per wall second, CPU seconds per verdict). The CPU figure
# does not depend on what else runs on the machine, so it shows the pool's own overhead even
# when the wall-clock rates are disturbed by other jobs.


def peer_loop(items: list[tuple[str, str]]) -> tuple[float, float]:
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" warnings
    start, cpu = time.perf_counter(), time.process_time()
    for completion, reference in items:
        verify(parse(reference, parsing_timeout=None), parse(completion, parsing_timeout=None), timeout_seconds=None)
    return len(items) / (time.perf_counter() - start), (time.process_time() - cpu) / len(items)


def reward_loop(items: list[tuple[str, str]]) -> tuple[float, float]:
    fn = MathReward()
    for completion, reference in items:  # steady state: caches warm, as in the pool below
        fn.score(completion, reference)
    start, cpu = time.perf_counter(), time.process_time()
    for completion, reference in items:
        fn.score(completion, reference)
    return len(items) / (time.perf_counter() - start), (time.process_time() - cpu) / len(items)


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pool_rate(items: list[tuple[str, str]], workers: int) -> tuple[float, float]:
    with RewardPool(MathReward(), num_workers=workers) as pool:
        pool.score(items)  # start-up and cold caches are not throughput: time a second pass
        pids = pool.worker_pids()
        worker_cpu = sum(_proc_cpu(p) for p in pids)
        start, cpu = time.perf_counter(), time.process_time()
        pool.score(items)
        wall = time.perf_counter() - start
        if pool.worker_pids() == pids:  # no replacement happened: the CPU sum is complete
            cpu_per = (time.process_time() - cpu + sum(_proc_cpu(p) for p in pids) - worker_cpu) / len(items)
        else:
            cpu_per = float("nan")
        return len(items) / wall, cpu_per


class ConstReward:
    """A reward function that does no work: what is left is the pool's own cost per item."""

    def score(self, completion: str, reference: str) -> Score:
        return Score(1.0, Reason.CORRECT, {})


def overhead(workers: int, n: int = 5000) -> tuple[float, float, float]:
    """(items/s, driver CPU us/item, worker CPU us/item) with ConstReward and 1 KB references."""
    items = [("x", "y" * 1000)] * n
    with RewardPool(ConstReward(), num_workers=workers) as pool:
        pool.score(items[:200])
        pids = pool.worker_pids()
        worker_cpu = sum(_proc_cpu(p) for p in pids)
        start, cpu = time.perf_counter(), time.process_time()
        pool.score(items)
        wall = time.perf_counter() - start
        driver = (time.process_time() - cpu) / n
        worker = (sum(_proc_cpu(p) for p in pids) - worker_cpu) / n
    return n / wall, 1e6 * driver, 1e6 * worker


def best_of(repeats: int, fn, *args) -> tuple[float, float]:
    """Highest rate over `repeats` runs (the least disturbed by other jobs), lowest CPU/verdict."""
    runs = [fn(*args) for _ in range(repeats)]
    return max(r[0] for r in runs), min(r[1] for r in runs)


def latency(
    items: list[tuple[str, str]], batches: int, timeout_s: float, workers: int, budgets: bool, kinds: list[str]
) -> dict[str, float]:
    rng = random.Random(1)
    batch_s, item_s = [], []
    with RewardPool(MathReward(budgets=budgets), num_workers=workers, timeout_s=timeout_s) as pool:
        pool.score(items[:50])
        for b in range(batches):
            batch = rng.choices(items, k=1024)
            for k, pos in enumerate(rng.sample(range(1024), 10)):  # 1% pathological, kinds in turn
                batch[pos] = (kinds[(b * 10 + k) % len(kinds)], "3")
            start = time.monotonic()
            handles = [pool.submit([item]) for item in batch]  # one handle per item: per-item latency
            for h in handles:
                h.result()
            batch_s.append(max(h.finished_at for h in handles) - start)
            item_s += [h.finished_at - start for h in handles]
        stats = pool.stats()
    item_s.sort()
    batch_sorted = sorted(batch_s)
    return {
        "batch_p50": statistics.median(batch_s),
        "batch_p99": batch_sorted[min(len(batch_sorted) - 1, int(0.99 * len(batch_sorted)))],
        "batch_max": batch_sorted[-1],
        "item_p50": item_s[len(item_s) // 2],
        "item_p99": item_s[int(0.99 * len(item_s))],
        "timeouts": stats["timeout"],
        "too_complex": stats["too_complex"],
        "respawns": stats["respawns"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per row; the best is reported")
    parser.add_argument("--latency-only", action="store_true", help="skip the throughput tables")
    args = parser.parse_args()

    items = workload(args.items)
    cores = default_num_workers()
    print(header("reward pool", modules=("math_verify",)))
    print(f"{len(items)} completions (MATH-500 solutions vs own/other answer, GSM8K references)\n")

    if not args.latency_only:
        peer, peer_cpu = best_of(args.repeats, peer_loop, items)
        single, single_cpu = best_of(args.repeats, reward_loop, items)
        rows = [
            ("math_verify parse+verify loop (anchor)", 1, peer, peer_cpu, None),
            ("MathReward.score loop (single-process)", 1, single, single_cpu, None),
        ]
        for w in sorted({1, 2, cores}):
            rate, cpu = best_of(args.repeats, pool_rate, items, w)
            rows.append((f"RewardPool, {w} worker{'s' if w > 1 else ''}", w, rate, cpu, rate / (w * single)))

        # CPU efficiency = single-process CPU per verdict / the pool's (workers + driver) CPU per
        # verdict: what the wall-clock ratio would be on cores nobody else uses.
        print(
            f"| {'what':42} | workers | verdicts/s | vs anchor | vs workers x single | target >= 0.9 "
            "| CPU ms/verdict | CPU efficiency |"
        )
        print(
            f"|{'-' * 44}|---------|------------|-----------|--------------------|---------------|"
            + "-" * 16
            + "|"
            + "-" * 16
            + "|"
        )
        for name, w, rate, cpu, eff in rows:
            eff_s = "" if eff is None else f"{eff:.2f}"
            ok = "" if eff is None else ("yes" if eff >= 0.9 else "NO")
            cpu_eff = "" if eff is None else f"{single_cpu / cpu:.2f}"
            print(
                f"| {name:42} | {w:7d} | {rate:10.1f} | {rate / peer:8.2f}x | {eff_s:>18} | {ok:>13} "
                f"| {1000 * cpu:14.2f} | {cpu_eff:>14} |"
            )
        print(f"load average after the throughput runs: {os.getloadavg()[0]:.1f}")

        print("\nPool overhead (a reward function that does nothing, 5000 items with 1 KB references):")
        print("| workers | items/s | driver CPU us/item | worker CPU us/item |")
        print("|---------|---------|--------------------|--------------------|")
        for w in sorted({1, cores}):
            rate, driver_us, worker_us = overhead(w)
            print(f"| {w:7d} | {rate:7.0f} | {driver_us:18.0f} | {worker_us:18.0f} |")

    print(f"\nLatency, {args.batches} batches of 1024 (1% pathological), {cores} workers, timeout {args.timeout:g} s:")
    print(
        "| pathological kinds | budgets | batch p50 s | batch p99 s | batch max s | item p50 s | item p99 s "
        "| too_complex | timeouts | respawns | target p99 <= timeout + 1 s |"
    )
    print("|" + "|".join("-" * w for w in (20, 9, 13, 13, 13, 12, 12, 13, 10, 10, 29)) + "|")
    mixes = [
        (f"{len(PATHOLOGICAL)} kinds", True, PATHOLOGICAL),
        (f"{len(PATHOLOGICAL)} kinds", False, PATHOLOGICAL),
        (f"{len(PATHOLOGICAL)} + 1 that slips", True, PATHOLOGICAL + SLIPS_THROUGH),
    ]
    for name, budgets, kinds in mixes:
        lat = latency(items, args.batches, args.timeout, cores, budgets, kinds)
        ok = "yes" if lat["batch_p99"] <= args.timeout + 1 else "NO"
        print(
            f"| {name:18} | {'on' if budgets else 'off':7} | {lat['batch_p50']:11.2f} | {lat['batch_p99']:11.2f} "
            f"| {lat['batch_max']:11.2f} | {lat['item_p50']:10.2f} | {lat['item_p99']:10.2f} | {lat['too_complex']:11d} "
            f"| {lat['timeouts']:8d} | {lat['respawns']:8d} | {ok:>27} |"
        )
    print(f"load average after the latency runs: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
