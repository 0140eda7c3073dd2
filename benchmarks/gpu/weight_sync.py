"""Weight sync into a running vLLM engine on one GPU: the CUDA IPC path against its anchors.

The "trainer" is this process, holding the GPU recipe's model (`demo:ring-mini-1b`, 1.2 B
parameters, bf16) on the GPU; the engine is a `RolloutWorker` (vLLM with the Lockstep plugin),
whose engine core runs in its own process, as in a run. Per repeat the weights change (a step of
the recipe's learning rate on every tensor) and are sent:

- device: `kernels.weight_buckets` buckets (copy + checksum here), CUDA IPC handles, the
  engine's device-side checksum and in-place load, then the probe (as `lockstep run` does) —
  with each of the engine's two loads in turn: the plugin's direct copies (its copy plan) and
  vLLM's layer-wise `reload_weights`;
- host: the CPU path (GPU → CPU copy, safetensors bytes, sha256, load), then the probe, once;
- anchor: a device-to-device copy of the same number of bytes (`torch.Tensor.copy_`).

Reports, for each load, seconds split into pack / verify / load / probe, GB/s and the fraction
of the copy's bandwidth (target ≥ 25 %, probe included); checks that both loads leave the same
bits (every engine parameter's sha256 and the probe's log-probs) and that the probe moved.

    python -m benchmarks.gpu.weight_sync --out $OUT [--repeats 3] [--lr 1e-5]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-5, help="size of the weight change per repeat")
    ap.add_argument("--bucket-mib", type=float, default=512)
    ap.add_argument("--model", default="demo:ring-mini-1b")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    import torch
    from safetensors import safe_open
    from safetensors.torch import save

    from kernels.weight_buckets import pack_buckets
    from rl import demo_model
    from rollout.config import RolloutConfig
    from rl.weight_sync import PROBE_TEXT
    from rollout.worker import RolloutWorker

    model_dir = demo_model.resolve(args.model, str(Path(tempfile.gettempdir()) / "lockstep-bench"))
    state = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(shard), "pt", device="cuda") as f:
            state.update({k: f.get_tensor(k).to(torch.bfloat16) for k in f.keys()})
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    cfg = RolloutConfig(max_model_len=256, gpu_memory_utilization=0.3)
    worker = RolloutWorker(str(model_dir), "bfloat16", cfg, seed=0)
    probe = worker.tokenizer(PROBE_TEXT)["input_ids"]
    gen = torch.Generator(device="cuda").manual_seed(0)
    master = {k: v.float() for k, v in state.items()}  # fp32 masters, as the trainer keeps them

    def step_weights() -> None:  # one Adam-like step (every master weight moves by lr), then bf16
        for k, t in master.items():
            t.add_(torch.sign(torch.randn(t.shape, device="cuda", generator=gen)), alpha=args.lr)
            state[k].copy_(t)

    def timed(fn):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_(0, 256)
    dst = torch.empty_like(src)
    copy_s = statistics.median(timed(lambda: dst.copy_(src))[1] for _ in range(10))
    del src, dst

    # Per repeat, each engine load in turn, each carrying a fresh weight change: the plugin's
    # direct copies (`rollout.ring_linear.copy_plan`) and vLLM's layer-wise reload — the same
    # buckets, checksums and probe; only the load differs. Split: pack (here), verify (the
    # engine's device checksums), load (copies or reload), probe (the rest of the call).
    paths = ("direct", "reload")
    rows = {f"{p}_{part}": [] for p in paths for part in ("total", "pack", "verify", "load", "probe")}
    moved = []
    before = worker.prompt_logprobs(probe)
    version = 0
    for r in range(args.repeats):
        for path in paths:
            worker.use_direct_copy(path == "direct")
            step_weights()
            version += 1
            packed, pack_s = timed(lambda: pack_buckets(state.items(), int(args.bucket_mib * 2**20)))
            payload = pickle.dumps([b for _, b in packed])
            n = sum(len(b.tensors) for _, b in packed)
            dev, call_s = timed(lambda: worker.update_weights_device(payload, n, nbytes, version, probe))
            del packed
            (engine,) = worker.sync_report()
            assert engine["direct_copy"] == (path == "direct"), engine
            rows[f"{path}_pack"].append(pack_s)
            rows[f"{path}_verify"].append(engine["verify_s"])
            rows[f"{path}_load"].append(engine["load_s"])
            rows[f"{path}_probe"].append(call_s - dev.seconds)
            rows[f"{path}_total"].append(pack_s + call_s)
            moved.append(max(abs(a - b) for a, b in zip(dev.probe, before)))
            before = dev.probe

    # Same bits both loads: the same weights through each, every engine parameter's sha256
    same = {}
    for path in paths:
        worker.use_direct_copy(path == "direct")
        packed = pack_buckets(state.items(), int(args.bucket_mib * 2**20))
        payload = pickle.dumps([b for _, b in packed])
        version += 1
        same[path] = (worker.update_weights_device(payload, n, nbytes, version, probe).probe,
                      worker.llm.collective_rpc("lockstep_parameter_sha256")[0])
        del packed
    same_bits = same["direct"] == same["reload"]
    worker.use_direct_copy(True)

    def host_sync():  # the CPU path, once: an anchor in seconds, not a target
        cpu = {k: v.to("cpu") for k, v in state.items()}
        blob = save(cpu)
        return worker.load_weights([blob], [hashlib.sha256(blob).hexdigest()], len(cpu), version + 1, probe)

    _, host_s = timed(host_sync)

    gb = nbytes / 1e9
    med = {k: statistics.median(v) for k, v in rows.items()}
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": args.model,
        "gb": round(gb, 3), "tensors": len(state), "repeats": args.repeats, "lr": args.lr,
        "copy_s": copy_s, "copy_gb_s": gb / copy_s, "host_s": host_s,
        **{f"{k}_s": v for k, v in med.items()},
        **{f"{p}_gb_s": gb / med[f"{p}_total"] for p in paths},
        **{f"{p}_frac_of_copy": copy_s / med[f"{p}_total"] for p in paths},
        "direct_vs_reload_speedup": med["reload_total"] / med["direct_total"],
        "same_bits_both_loads": same_bits, "probe_moved_min": min(moved),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "weight_sync.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    print(f"\n{gb:.2f} GB ({len(state)} tensors), device copy {copy_s * 1e3:.2f} ms; host path {host_s:.2f} s")
    for p in paths:
        print(f"{p:>6}: {med[f'{p}_total'] * 1e3:7.1f} ms = pack {med[f'{p}_pack'] * 1e3:.1f} + verify "
              f"{med[f'{p}_verify'] * 1e3:.1f} + load {med[f'{p}_load'] * 1e3:.1f} + probe (and call) "
              f"{med[f'{p}_probe'] * 1e3:.1f} -> {report[f'{p}_frac_of_copy']:.1%} of copy bandwidth")
    print(f"same bits both loads: {same_bits}; probe moved at least {min(moved):.2g} per sync")
    return 0 if same_bits and min(moved) > 0 else 1

if __name__ == "__main__":
    sys.exit(main())
