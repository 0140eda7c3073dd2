"""Two GPUs: the GPU Ring-linear recipe split 1+1 and colocated 2×, and the collective weight
sync against NCCL's own broadcast of the same bytes, measured in the same run.

Jobs (each a `lockstep run` through `benchmarks.gpu.rl_step`, its step split and memory):
- split: trainer rank on GPU 0, engine on GPU 1, the weights broadcast over NCCL
  (`ray.placement=split`, `sync.transport=collective`);
- colocated: two trainer ranks and two engines, a rank and an engine per GPU, CUDA IPC
  (`sync.transport=device`, the default there).

Anchor: two processes, one per GPU, `torch.distributed.broadcast` (NCCL, its own
`init_process_group`, none of Lockstep's code) of the split run's `sync/bytes`, median of 10
after 3 warm-ups. The sync's seconds per GB are `sync/load_s` (broadcast, checksums, in-place
load; the probe is not in it) and `time/sync` (all of it, the probe included), medians over the
steps after the first; the ratio is the anchor's seconds over the sync's (target ≥ 50 %).

    python -m benchmarks.gpu.multi --out $OUT [--steps 4] [--recipe recipes/gpu_ring.yaml]

Needs two GPUs (an `nvidia-h100-x2` machine). Writes OUT/multi.json and each job's log.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.gpu.rl_step import run_job, summarise


def _broadcast_rank(rank: int, port: int, nbytes: int, repeats: int, queue) -> None:
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    buffer = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    if rank == 0:
        buffer.random_(0, 256)
    times = []
    for i in range(3 + repeats):
        torch.cuda.synchronize()
        dist.barrier()
        t0 = time.perf_counter()
        dist.broadcast(buffer, src=0)
        torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    if rank == 0:
        queue.put(statistics.median(times))
    dist.destroy_process_group()


def nccl_broadcast_seconds(nbytes: int, repeats: int = 10) -> float:
    """Median seconds of one NCCL broadcast of `nbytes` from GPU 0 to GPU 1."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_broadcast_rank, args=(r, port, nbytes, repeats, queue)) for r in range(2)]
    for p in procs:
        p.start()
    seconds = queue.get(timeout=300)
    for p in procs:
        p.join(timeout=60)
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--recipe", default="recipes/gpu_ring.yaml")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=540, help="seconds per job")
    args = ap.parse_args()
    import torch

    if torch.cuda.device_count() < 2:
        print(f"benchmarks.gpu.multi needs 2 GPUs; this machine has {torch.cuda.device_count()}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [f"schedule.steps={args.steps}", "schedule.eval_every=0", "schedule.save_every=0"]
    jobs = {
        "split": common + ["ray.placement=split", "trainer.num_ranks=1", "rollout.num_workers=1",
                           "sync.transport=collective"],
        "colocated": common + ["ray.placement=colocated", "trainer.num_ranks=2", "rollout.num_workers=2"],
    }
    results, rows = {}, []
    for name, overrides in jobs.items():
        results[name] = run_job(name, args.recipe, overrides, out, args.timeout)
        rows.append(summarise(results[name]))
        print(json.dumps(rows[-1]), flush=True)

    steps = [h for h in results["split"]["history"] if "sync/bytes" in h]
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
              "torch": torch.__version__, "recipe": args.recipe, "jobs": rows}
    if steps:
        rest = steps[1:] or steps
        nbytes = int(rest[0]["sync/bytes"])
        gb = nbytes / 1e9
        load_s = statistics.median(h["sync/load_s"] for h in rest)
        sync_s = statistics.median(h["time/sync"] for h in rest)
        anchor_s = nccl_broadcast_seconds(nbytes)
        report |= {
            "sync_gb": round(gb, 3), "on_device": rest[0]["sync/on_device"],
            "nccl_broadcast_s": anchor_s, "nccl_broadcast_gb_s": gb / anchor_s,
            "sync_load_s": load_s, "sync_load_s_per_gb": load_s / gb, "sync_s": sync_s, "sync_s_per_gb": sync_s / gb,
            "load_frac_of_nccl": anchor_s / load_s, "sync_frac_of_nccl": anchor_s / sync_s,
            "probe_max": max(h["sync/probe_max_abs_diff"] for h in steps),
        }
        print(f"\nsplit 1+1 sync of {gb:.2f} GB: broadcast + checks + load {load_s:.3f} s "
              f"({load_s / gb:.3f} s/GB, {report['load_frac_of_nccl']:.0%} of NCCL's broadcast "
              f"{report['nccl_broadcast_gb_s']:.1f} GB/s); whole sync with the probe {sync_s:.3f} s "
              f"({report['sync_frac_of_nccl']:.0%})")
    (out / "multi.json").write_text(json.dumps(report, indent=1))
    return 0 if all(r["rc"] == 0 for r in rows) and steps else 1


if __name__ == "__main__":
    sys.exit(main())
