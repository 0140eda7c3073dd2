"""Tensor-parallel rollout of the Ring-linear plugin: engines of 1, 2, … GPUs on the same model,
their log-probs against the 1-GPU engine's and their decode speed, before and after an in-place
weight update (which every rank must take: each receives every tensor and keeps its slice).

Each engine is a `rollout.worker.RolloutWorker` (the run's own engine construction, with
`rollout.tensor_parallel_size` = n) in its own subprocess, one after the other:
1. teacher-forced log-probs of fixed token sequences (seeded; prompt lengths 1, 37, 300);
2. decode speed: `--batch` sequences × `--new-tokens` (ignore_eos, temperature 1), output tokens/s;
3. an in-place update of layers 0–2 (dense MLP, both attention kinds, a MoE layer) to seeded
   perturbed weights through the weight sync's host path, then the log-probs of step 1 again.
The parent compares every engine's log-probs with the 1-GPU engine's (max |Δ|, before and after
the update) and writes OUT/tensor_parallel.json.

    python -m benchmarks.gpu.tensor_parallel --out $OUT --tp 1,2        # 2 GPUs (nvidia-h100-x2)
    python -m benchmarks.gpu.tensor_parallel --out $OUT --tp 1          # one GPU: TP=1 as it was
    python -m benchmarks.gpu.tensor_parallel --out /tmp/tpb --tp 1,2 --tiny   # CPU smoke run

Default model: the GPU recipe's `demo:ring-mini-1b` in bf16 (`--dtype float32` for fast mode's
1e-5 bound; in bf16 the split sums round differently and only the size of |Δ| is reported).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT_LENS = (1, 37, 300)
UPDATED_LAYERS = ("model.layers.0.", "model.layers.1.", "model.layers.2.")


def sequences(vocab: int, new: int = 24) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(1, vocab) for _ in range(n + new)] for n in PROMPT_LENS]


def updated_weights(model_dir: str, dtype) -> dict:
    """Layers 0–2 of the checkpoint, each tensor moved by seeded noise of 1 % of its scale."""
    import torch
    from safetensors import safe_open

    gen = torch.Generator().manual_seed(1)
    out = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            for name in f.keys():
                if name.startswith(UPDATED_LAYERS):
                    t = f.get_tensor(name).float()
                    out[name] = (t + 0.01 * t.std() * torch.randn(t.shape, generator=gen)).to(dtype)
    return out


def engine(args) -> None:
    """One engine of `args.engine` ranks: writes its log-probs and speed as JSON to `args.result`
    (not stdout: the engine's worker processes print there too)."""
    import torch
    from safetensors.torch import save
    from vllm import SamplingParams, TokensPrompt

    from rl.alignment import teacher_forced_logprobs
    from rollout.config import RolloutConfig
    from rollout.worker import RolloutWorker

    cfg = RolloutConfig(tensor_parallel_size=args.engine, max_model_len=max(PROMPT_LENS) + args.new_tokens + 64,
                        gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=True, kv_cache_gib=1)
    t0 = time.perf_counter()
    worker = RolloutWorker(args.model_dir, args.dtype, cfg, seed=0)
    start_s = time.perf_counter() - t0
    llm = worker.llm
    vocab = llm.llm_engine.model_config.hf_config.vocab_size
    seqs = sequences(vocab)
    before = [teacher_forced_logprobs(llm, s).tolist() for s in seqs]
    rng = random.Random(2)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(1, vocab) for _ in range(128)]) for _ in range(args.batch)]
    params = SamplingParams(max_tokens=args.new_tokens, temperature=1.0, ignore_eos=True, seed=None)
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    decode_s = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    weights = updated_weights(args.model_dir, getattr(torch, args.dtype))
    blob = save({n: t.contiguous() for n, t in weights.items()})
    t0 = time.perf_counter()
    counts = llm.collective_rpc("lockstep_load_buckets", args=([blob], [hashlib.sha256(blob).hexdigest()]))
    update_s = time.perf_counter() - t0
    llm.reset_prefix_cache()
    after = [teacher_forced_logprobs(llm, s).tolist() for s in seqs]
    Path(args.result).write_text(json.dumps({"tp": args.engine, "start_s": start_s, "tokens": tokens, "decode_s": decode_s,
                      "tokens_per_s": tokens / decode_s, "update_s": update_s, "update_counts": counts,
                      "updated_tensors": len(weights), "before": before, "after": after}))
    del worker, llm


def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for sa, sb in zip(a, b) for x, y in zip(sa, sb))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--tp", default="1,2", help="comma list of tensor-parallel sizes; the first is the reference")
    ap.add_argument("--model", default="demo:ring-mini-1b")
    ap.add_argument("--dtype", default=None, help="bfloat16 on GPUs, float32 on CPU unless set")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.6)
    ap.add_argument("--timeout", type=int, default=420, help="seconds per engine, start-up included")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: the tiny random model, batch 2, 8 new tokens")
    ap.add_argument("--engine", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        engine(args)
        return 0
    import torch

    cuda = torch.cuda.is_available()
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.gettempdir()) / "lockstep-bench"
    if args.tiny:
        from trainer.ring_linear.random_checkpoint import build_random_checkpoint

        model_dir = cache / "tp-tiny"
        if not (model_dir / "config.json").exists():
            build_random_checkpoint(model_dir, "tiny", seed=3, initializer_range=0.08)
        args.batch, args.new_tokens = 2, 8
    else:
        from rl import demo_model

        model_dir = demo_model.resolve(args.model, str(cache))
    sizes = [int(n) for n in args.tp.split(",")]
    if cuda and max(sizes) > torch.cuda.device_count():
        print(f"--tp {args.tp}: this machine has {torch.cuda.device_count()} GPU(s)", file=sys.stderr)
        return 2
    results = []
    for n in sizes:
        cmd = [sys.executable, "-m", "benchmarks.gpu.tensor_parallel", "--engine", str(n), "--model-dir",
               str(model_dir), "--dtype", dtype, "--batch", str(args.batch), "--new-tokens", str(args.new_tokens),
               "--gpu-memory-utilization", str(args.gpu_memory_utilization), "--result", str(out / f"tp{n}.json")]
        log, result = out / f"tp{n}.log", out / f"tp{n}.json"
        result.unlink(missing_ok=True)
        with open(log, "w") as fh:
            try:
                proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                results.append({"tp": n, "error": f"timed out after {args.timeout} s (log: {log})"})
                print(json.dumps(results[-1]), flush=True)
                continue
        if proc.returncode or not result.exists():
            tail = log.read_text().splitlines()[-15:]
            results.append({"tp": n, "error": f"exit {proc.returncode}", "log_tail": tail})
        else:
            results.append(json.loads(result.read_text()))
        print(json.dumps({k: v for k, v in results[-1].items() if k not in ("before", "after")}), flush=True)
    ok = [r for r in results if "error" not in r]
    reference = ok[0] if ok and ok[0]["tp"] == sizes[0] else None
    summary = {"model": str(model_dir), "dtype": dtype, "device": torch.cuda.get_device_name() if cuda else "cpu",
               "batch": args.batch, "new_tokens": args.new_tokens, "engines": []}
    for r in results:
        row = {k: v for k, v in r.items() if k not in ("before", "after")}
        if reference is not None and "error" not in r:
            row["max_abs_dlogp_vs_ref"] = max_diff(r["before"], reference["before"])
            row["max_abs_dlogp_vs_ref_after_update"] = max_diff(r["after"], reference["after"])
            row["update_moved_logprobs"] = max_diff(r["after"], r["before"])
            row["speed_vs_ref"] = r["tokens_per_s"] / reference["tokens_per_s"]
        summary["engines"].append(row)
    (out / "tensor_parallel.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
