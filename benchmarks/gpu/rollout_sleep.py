"""Colocated rollout on a GPU: the engine sleeps while the trainer runs, and the weight sync
wakes it. Checks and measures what `RolloutWorker.sleep` / `load_weights` do on a CUDA build of
vLLM (vLLM has no sleep mode on CPU, so CI cannot run this):

1. an engine started with `sleep_while_training=True` (the demo's dense model, fp32) samples;
2. `sleep()` (vLLM sleep level 2): GPU memory freed (at least half the engine's
   gpu_memory_utilization budget: weights and KV cache), seconds;
3. `load_weights` of perturbed weights wakes it (weights, then KV cache) and loads them: the
   engine's teacher-forced probe log-probs must match transformers on the new weights (the
   sync check of the RL loop, tolerance 1e-3 as in fp32 runs) and differ from before;
4. it samples again, sleeps again and gets the original weights back: probe log-probs equal to
   the first ones (max |Δ| reported; same engine, same weights);
5. the same cycle timed on a second engine without sleep mode, as the anchor for the wake cost.

    python -m benchmarks.gpu.rollout_sleep --out DIR

Prints one JSON line and writes DIR/rollout_sleep_gpu.json; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import environment

PROBE_TEXT = "Ann has 23 apples. Ann gets 58 more. How many apples now? 23+58=81. The answer is 81."


def hf_probe(model_dir: str, state: dict, ids: list[int]) -> list[float]:
    """Teacher-forced log-probs of ids[1:] under transformers with `state` loaded (fp32, CUDA)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda().eval()
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        logits = model(torch.tensor([ids], device="cuda")).logits[0, :-1].double()
    logp = logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:], device="cuda")[:, None])[:, 0]
    return logp.tolist()


def blob_of(state: dict) -> tuple[bytes, str]:
    from safetensors.torch import save

    blob = save({k: v.contiguous().cpu() for k, v in state.items()})
    return blob, hashlib.sha256(blob).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    # vLLM's Triton attention runs tl.dot on fp32 q/k/v as tf32 unless told otherwise.
    os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # the carried vLLM has no flashinfer
    import torch
    from safetensors.torch import load_file

    from rl import demo_model
    from rollout.config import RolloutConfig
    from rollout.worker import RolloutWorker

    model_dir = str(demo_model.resolve("demo:arith-micro", tempfile.mkdtemp()))
    original = load_file(str(Path(model_dir) / "model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    perturbed = {k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in original.items()}
    cfg = RolloutConfig(max_model_len=256, gpu_memory_utilization=0.3, enforce_eager=False)
    report: dict = {**environment(("torch", "vllm")), "checks": {}}
    checks = report["checks"]

    def cycle(worker: RolloutWorker, label: str) -> dict:
        tok = worker.tokenizer
        probe = tok(PROBE_TEXT)["input_ids"]
        prompts = [tok(f"Q: What is {i} + {2 * i}?\nA:")["input_ids"] for i in range(8)]
        out: dict = {}
        before = worker.prompt_logprobs(probe)
        worker.generate(prompts, 4, 32, 1.0)
        if worker.sleep_while_training:
            t = time.perf_counter()
            out["freed_gib"] = worker.sleep() / 2**30
            out["sleep_s"] = time.perf_counter() - t
        blob, digest = blob_of(perturbed)
        t = time.perf_counter()
        synced = worker.load_weights([blob], [digest], len(perturbed), 1, probe)
        out["wake_and_load_s"] = time.perf_counter() - t
        expected = hf_probe(model_dir, perturbed, probe)
        out["probe_vs_transformers"] = max(abs(a - b) for a, b in zip(synced.probe, expected))
        out["probe_change"] = max(abs(a - b) for a, b in zip(synced.probe, before))
        worker.generate(prompts, 4, 32, 1.0)
        if worker.sleep_while_training:
            worker.sleep()
        blob, digest = blob_of(original)
        restored = worker.load_weights([blob], [digest], len(original), 2, probe)
        out["probe_restored_vs_first"] = max(abs(a - b) for a, b in zip(restored.probe, before))
        checks[f"{label}: engine follows the new weights (|Δ| ≤ 1e-3 vs transformers)"] = out["probe_vs_transformers"] <= 1e-3
        checks[f"{label}: the weights really changed (probe moved > 1e-3)"] = out["probe_change"] > 1e-3
        checks[f"{label}: original weights restored (|Δ| ≤ 1e-5 vs first probe)"] = out["probe_restored_vs_first"] <= 1e-5
        return out

    sleeping = RolloutWorker(model_dir, "float32", cfg, seed=0, sleep_while_training=True)
    report["sleep"] = cycle(sleeping, "sleep mode")
    budget_gib = cfg.gpu_memory_utilization * torch.cuda.mem_get_info()[1] / 2**30
    report["sleep"]["engine_budget_gib"] = budget_gib
    checks["sleep mode: frees at least half the engine's memory budget"] = report["sleep"]["freed_gib"] >= 0.5 * budget_gib
    del sleeping
    resident = RolloutWorker(model_dir, "float32", cfg, seed=0, sleep_while_training=False)
    report["resident"] = cycle(resident, "resident")
    ok = all(checks.values())
    report["ok"] = ok
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "rollout_sleep_gpu.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
