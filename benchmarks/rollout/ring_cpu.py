"""Rollout tokens/s of the tiny Ring-linear hybrid model in vLLM (the Lockstep plugin) against
vLLM's native dense model (Qwen2 architecture, equal parameter count) and transformers
``generate`` on that dense model and on the Ring-linear model itself, same sampling settings,
generation lengths 128 … 4096.

Why these anchors: the dense model is what vLLM runs natively (its own fused layers, compiled
unless --eager); transformers ``generate`` is what users without an inference engine run.  The
Ring-linear training class generates with a cache (``DynamicCache``: the fp32 linear-attention
state and the softmax layers' K/V; chunked prefill, then ``recurrent`` decode — the kernels the
vLLM plugin calls), so "ring (transformers generate, cache)" measures the same model without vLLM.

Both vLLM models run compiled (vLLM's default: the plugin's model is compiled like vLLM's own,
its linear-attention recurrence and routed experts as custom ops) and eager (``enforce_eager``).
vLLM runs in-process (no engine-core process), as Lockstep's rollout worker runs it on CPU.
Each engine runs in its own process, one after the other (2 cores: never concurrently); each
length is timed after a warm-up generation.  Tokens/s = batch × length / wall time of one
``generate`` with ``ignore_eos`` (every sequence runs to the full length).

Batch sizes (``--batch 8,128``): 8 sequences is a small interactive batch, where per-op call
overhead dominates; an RL rollout decodes far more at once (the default recipe: 16 prompts × 8
samples = 128 sequences per step), where the state and KV-cache traffic does.

Run-to-run spread on the shared 2-core machine is large (whole processes land ~1.5× apart), so
``--repeats R`` runs every engine R times, interleaved, each in a fresh process, and reports each
engine's best rate per length, and the median over repeats of the ratio ring ÷ anchor of the
runs made back to back (the spread is printed too); ``--engines`` picks rows by kind.

    python -m benchmarks.rollout.ring_cpu [--lengths 128,512,1024,2048,4096] [--batch 8,128]
                                          [--repeats 3] [--engines ring,dense,ring-eager,dense-eager,hf]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import header

PROMPT_LEN = 32


def build_models(root: Path) -> tuple[Path, Path, dict]:
    """The tiny Ring-linear preset and a Qwen2 twin whose MLP width makes the parameter counts
    equal (same vocab, hidden size, layers, heads, untied LM head)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from models.ring_linear.presets import parameter_count
    from trainer.ring_linear.random_checkpoint import build_random_checkpoint

    ring = root / "ring-tiny"
    if not (ring / "config.json").exists():
        build_random_checkpoint(ring, "tiny", seed=0, max_position_embeddings=8192)
    from transformers import AutoConfig, AutoTokenizer

    rc = AutoConfig.from_pretrained(ring)
    ring_params = parameter_count(rc)["total"]
    D, L, H, KV, d, V = rc.hidden_size, rc.num_hidden_layers, rc.num_attention_heads, rc.num_key_value_heads, rc.head_dim, rc.vocab_size
    attn = D * H * d + 2 * D * KV * d + (H + 2 * KV) * d + H * d * D      # Qwen2 has q/k/v biases
    fixed = 2 * V * D + D + L * (attn + 2 * D)
    intermediate = max(8, round((ring_params - fixed) / (3 * D * L)))
    dense = root / "qwen2-twin"
    if not (dense / "config.json").exists():
        config = Qwen2Config(vocab_size=V, hidden_size=D, intermediate_size=intermediate, num_hidden_layers=L,
                             num_attention_heads=H, num_key_value_heads=KV, head_dim=d, max_position_embeddings=8192,
                             rope_theta=10000.0, tie_word_embeddings=False, torch_dtype="float32",
                             eos_token_id=rc.eos_token_id, pad_token_id=rc.pad_token_id)
        torch.manual_seed(0)
        Qwen2ForCausalLM(config).save_pretrained(dense)
        AutoTokenizer.from_pretrained(ring).save_pretrained(dense)
    dense_params = sum(p.numel() for p in Qwen2ForCausalLM.from_pretrained(dense).parameters())
    return ring, dense, {"ring_params": ring_params, "dense_params": dense_params}


def prompts(batch: int, vocab: int) -> list[list[int]]:
    import random

    rng = random.Random(0)
    return [[rng.randrange(1, vocab) for _ in range(PROMPT_LEN)] for _ in range(batch)]


def kv_cache_gib(model: str, batch: int, max_len: int) -> int:
    """KV-cache space for ``batch`` sequences of ``max_len`` tokens, with room to spare (vLLM's
    CPU default of 4 GiB is more than the tiny models need at small batches, and too little for
    the dense model at batch 128 × 4096 tokens: it would preempt sequences)."""
    from transformers import AutoConfig

    import models.ring_linear  # noqa: F401  (registers the Ring-linear config with AutoConfig)

    c = AutoConfig.from_pretrained(model)
    softmax_layers = sum(1 for i in range(c.num_hidden_layers)
                         if not hasattr(c, "is_softmax_layer") or c.is_softmax_layer(i))
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_token = 2 * softmax_layers * c.num_key_value_heads * head_dim * 4   # K and V, fp32
    return max(2, -(-int(1.5 * batch * max_len * per_token) // 2**30))


def run_vllm(model: str, lengths: list[int], batch: int, eager: bool) -> dict:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib(model, batch, max(lengths) + PROMPT_LEN)))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    # The engine in this process, as Lockstep's rollout worker runs it on CPU (rollout/worker.py):
    # vLLM's default three-process layout hands every decode step over ZeroMQ.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams, TokensPrompt

    llm = LLM(model=model, dtype="float32", seed=0, max_model_len=max(lengths) + PROMPT_LEN,
              enforce_eager=eager, gpu_memory_utilization=0.1, distributed_executor_backend="uni")
    ps = [TokensPrompt(prompt_token_ids=p) for p in prompts(batch, llm.get_tokenizer().vocab_size)]
    out = {}
    for n in lengths:
        params = SamplingParams(max_tokens=n, temperature=1.0, ignore_eos=True, logprobs=0)
        # warm-up with the same settings (the first call with log-probs compiles vLLM's sampler)
        llm.generate(ps, SamplingParams(max_tokens=16, temperature=1.0, ignore_eos=True, logprobs=0), use_tqdm=False)
        start = time.perf_counter()
        res = llm.generate(ps, params, use_tqdm=False)
        dt = time.perf_counter() - start
        assert all(len(r.outputs[0].token_ids) == n for r in res)
        out[n] = batch * n / dt
    return out


def run_hf(model: str, lengths: list[int], batch: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    import trainer.ring_linear  # noqa: F401  (registers the Ring-linear model type with the Auto classes)

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    ids = torch.tensor(prompts(batch, m.config.vocab_size))
    mask = torch.ones_like(ids)  # no padding (else generate guesses it from pad-token ids in the prompts)
    out = {}
    with torch.no_grad():
        for n in lengths:
            kw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=m.config.pad_token_id,
                      use_cache=True)  # ring dirs built before the config default became true say false
            m.generate(ids[:2], attention_mask=mask[:2], max_new_tokens=16, min_new_tokens=16, **kw)
            start = time.perf_counter()
            res = m.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, **kw)
            dt = time.perf_counter() - start
            assert res.shape[1] == PROMPT_LEN + n
            out[n] = batch * n / dt
    return out


def child(kind: str, model: str, lengths: list[int], batch: int, result: str) -> None:
    rates = run_hf(model, lengths, batch) if kind == "hf" else run_vllm(model, lengths, batch, eager=kind == "vllm-eager")
    Path(result).write_text(json.dumps(rates))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="128,512,1024,2048,4096")
    ap.add_argument("--batch", default="8", help="comma-separated batch sizes (sequences decoded at once)")
    ap.add_argument("--work", default="/tmp/lockstep-ring-rollout-bench")
    ap.add_argument("--hf-max-length", type=int, default=None,
                    help="transformers rows only up to this length (the ring model's generate loop is slow on CPU)")
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per engine; best rate kept")
    ap.add_argument("--engines", default="ring,ring-eager,dense,dense-eager,hf",
                    help="rows to run: ring, ring-eager, dense, dense-eager, hf (both transformers rows)")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "MODEL", "RESULT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    batches = [int(x) for x in args.batch.split(",")]
    if args.child:
        return child(args.child[0], args.child[1], lengths, batches[0], args.child[2])
    root = Path(args.work)
    root.mkdir(parents=True, exist_ok=True)
    print(header("rollout tokens/s on CPU", ("torch", "vllm", "transformers")), flush=True)
    ring, dense, sizes = build_models(root)
    print(f"parameters: ring-linear tiny {sizes['ring_params']:,}, dense Qwen2 twin {sizes['dense_params']:,}; "
          f"prompt {PROMPT_LEN}, load {os.getloadavg()[0]:.2f}", flush=True)
    runs = [("ring (vLLM + plugin, compiled)", "vllm", ring, "ring"),
            ("ring (vLLM + plugin, eager)", "vllm-eager", ring, "ring-eager"),
            ("dense (vLLM native, compiled)", "vllm", dense, "dense"),
            ("dense (vLLM native, eager)", "vllm-eager", dense, "dense-eager"),
            ("dense (transformers generate)", "hf", dense, "hf"),
            ("ring (transformers generate, cache)", "hf", ring, "hf")]
    chosen = set(args.engines.split(","))
    runs = [r for r in runs if r[3] in chosen]
    for batch in batches:
        print(f"\n## batch {batch}", flush=True)
        samples: dict[str, dict[int, list[float]]] = {}
        for repeat in range(args.repeats):
            for label, kind, model, _ in runs:
                result = root / f"{kind}-{model.name}.json"
                todo = [n for n in lengths if kind != "hf" or args.hf_max_length is None or n <= args.hf_max_length]
                subprocess.run([sys.executable, "-m", __spec__.name, "--lengths", ",".join(map(str, todo)), "--batch", str(batch),
                                "--child", kind, str(model), str(result)], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for n, rate in json.loads(result.read_text()).items():
                    samples.setdefault(label, {}).setdefault(int(n), []).append(rate)
                print(f"  done: {label} (run {repeat + 1}/{args.repeats}, load {os.getloadavg()[0]:.2f})", flush=True)
        report(samples, lengths, args.repeats)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


def report(samples: dict[str, dict[int, list[float]]], lengths: list[int], repeats: int) -> None:
    """Best rate per engine and length; ring ÷ each anchor as best ÷ best and, with repeats, as
    the median of the back-to-back runs' ratios."""
    rates = {label: {n: max(v) for n, v in by_len.items()} for label, by_len in samples.items()}
    if repeats > 1:
        print("\nall runs (tokens/s): " + "; ".join(f"{label} {n}: " + "/".join(f"{r:.0f}" for r in v)
                                                  for label, by_len in samples.items() for n, v in by_len.items()))
    ring_label = next(iter(rates))
    print(f"\n| engine | " + " | ".join(f"{n} tok/s" for n in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for label, r in rates.items():
        print(f"| {label} | " + " | ".join(f"{r[n]:.0f}" if n in r else "–" for n in lengths) + " |")
    for label in list(rates)[1:]:
        print(f"| ring (vLLM) ÷ {label}, best ÷ best | " + " | ".join(
            f"{rates[ring_label][n] / rates[label][n]:.2f}" if n in rates[label] else "–" for n in lengths) + " |")
        if repeats > 1:
            print(f"| ring (vLLM) ÷ {label}, median of paired runs | " + " | ".join(
                f"{statistics.median(a / b for a, b in zip(samples[ring_label][n], samples[label][n])):.2f}"
                if n in samples[label] else "–" for n in lengths) + " |")


if __name__ == "__main__":
    main()
