"""Weight sync into a running vLLM engine on one GPU: the CUDA IPC path against its anchors.

The "trainer" is this process, holding the GPU recipe's model (`demo:ring-mini-1b`, 1.2 B
parameters, bf16) on the GPU; the engine is a `RolloutWorker` (vLLM with the Lockstep plugin),
whose engine core runs in its own process, as in a run. Per repeat the weights change (a step of
the recipe's learning rate on every tensor) and are sent:

- device: `kernels.weight_buckets` buckets (copy + checksum here), CUDA IPC handles, the
  engine's device-side checksum and in-place load, then the probe (as `lockstep run` does);
- host: today's CPU path (GPU → CPU copy, safetensors bytes, sha256, load), then the probe;
- anchor: a device-to-device copy of the same number of bytes (`torch.Tensor.copy_`).

Reports seconds and GB/s for each, the device path's fraction of the copy's bandwidth (target
≥ 25 %, probe included), the split of the device path, and checks that both paths load the
same bits (equal probe log-probs) and that the probe moved.

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

    rows = {"device": [], "device_pack": [], "device_load": [], "host": []}
    probes_equal, moved = [], []
    before = worker.prompt_logprobs(probe)
    for r in range(args.repeats):
        step_weights()
        packed, pack_s = timed(lambda: pack_buckets(state.items(), int(args.bucket_mib * 2**20)))
        payload = pickle.dumps([b for _, b in packed])
        n = sum(len(b.tensors) for _, b in packed)
        dev, load_s = timed(lambda: worker.update_weights_device(payload, n, nbytes, 2 * r + 1, probe))
        del packed
        rows["device_pack"].append(pack_s)
        rows["device_load"].append(load_s)
        rows["device"].append(pack_s + load_s)

        def host_sync():
            cpu = {k: v.to("cpu") for k, v in state.items()}
            blob = save(cpu)
            return worker.load_weights([blob], [hashlib.sha256(blob).hexdigest()], len(cpu), 2 * r + 2, probe)

        host, host_s = timed(host_sync)
        rows["host"].append(host_s)
        probes_equal.append(dev.probe == host.probe)
        moved.append(max(abs(a - b) for a, b in zip(dev.probe, before)))
        before = dev.probe

    gb = nbytes / 1e9
    med = {k: statistics.median(v) for k, v in rows.items()}
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": args.model,
        "gb": round(gb, 3), "tensors": len(state), "repeats": args.repeats, "lr": args.lr,
        "copy_s": copy_s, "copy_gb_s": gb / copy_s,
        **{f"{k}_s": v for k, v in med.items()},
        "device_gb_s": gb / med["device"], "host_gb_s": gb / med["host"],
        "device_frac_of_copy": copy_s / med["device"], "device_vs_host_speedup": med["host"] / med["device"],
        "same_bits_both_paths": all(probes_equal), "probe_moved_min": min(moved),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "weight_sync.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    print(f"\n{gb:.2f} GB ({len(state)} tensors): copy {copy_s * 1e3:.2f} ms | device (IPC) {med['device'] * 1e3:.1f} ms "
          f"(pack {med['device_pack'] * 1e3:.1f} + load/verify/probe {med['device_load'] * 1e3:.1f}) = "
          f"{report['device_frac_of_copy']:.1%} of copy bandwidth | host {med['host']:.2f} s "
          f"({report['device_vs_host_speedup']:.0f}x slower) | same bits both paths: {report['same_bits_both_paths']}")
    return 0 if report["same_bits_both_paths"] and report["probe_moved_min"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
