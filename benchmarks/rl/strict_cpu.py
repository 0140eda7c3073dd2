"""Strict mode's cost on the demo's two heavy phases, strict ÷ fast, same weights, same batch:

* rollout: the Ring-linear vLLM plugin samples the demo batch (16 prompts × 8 completions of
  exactly 40 tokens: ignore_eos, so both modes generate the same token count), one engine per
  subprocess (the strict one with the plugin's strict switch);
* update: the trainer model's forward + backward over one rank's share of that batch (64
  sequences, 1 thread, as a demo rank), fast and strict models in one process; each model's
  second call is the update's time (a training step's: every step after the first), its first
  call is reported apart (``update_first``: allocator warm-up and lazy set-up included).

The phases alternate fast/strict `--repeats` times; medians. The whole pipeline's per-step split
comes from `lockstep run recipes/demo.yaml mode=strict` (time/* metrics); this isolates the two
phases from the shared machine's noise as far as a 2-core VM allows.

    python -m benchmarks.rl.strict_cpu --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.harness import header, markdown_table, median

PROMPTS, SAMPLES, NEW_TOKENS, PROMPT_LEN = 16, 8, 40, 15


def batch(vocab: int):
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randint(1, vocab, (PROMPT_LEN,), generator=g).tolist() for _ in range(PROMPTS)]


def rollout(path: str, strict: bool) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    from vllm import LLM, SamplingParams, TokensPrompt

    from models.ring_linear.config import STRICT_CONFIG_KEY

    llm = LLM(model=path, dtype="float32", seed=0, max_model_len=256, enforce_eager=True,
              logprobs_mode="processed_logprobs", distributed_executor_backend="uni",
              hf_overrides={STRICT_CONFIG_KEY: True} if strict else None)
    params = SamplingParams(n=SAMPLES, max_tokens=NEW_TOKENS, temperature=1.0, logprobs=0, ignore_eos=True)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in batch(llm.get_tokenizer().vocab_size)]
    llm.generate(prompts[:2], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    return {"seconds": time.perf_counter() - start}


def update(path: str) -> dict:
    import torch

    from models.ring_linear.strict import use_strict
    from trainer.logprobs import pack, token_logprobs, use_fp32_lm_head
    from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM

    torch.set_num_threads(1)
    prompts = batch(BailingMoeLinearV2ForCausalLM.config_class.from_pretrained(path).vocab_size)
    g = torch.Generator().manual_seed(1)
    seqs = [prompts[i // SAMPLES] for i in range(PROMPTS * SAMPLES // 2)]
    packed = pack(seqs, [torch.randint(1, 300, (NEW_TOKENS,), generator=g).tolist() for _ in seqs])
    out = {}
    for name in ("fast", "strict"):
        model = BailingMoeLinearV2ForCausalLM.from_pretrained(path, dtype=torch.float32)
        if name == "strict":
            use_strict(model)
        use_fp32_lm_head(model, strict=name == "strict")
        for timing in (f"{name}_first", name):  # the first call (allocator, lazy set-up), then a step's
            model.zero_grad()
            start = time.perf_counter()
            logp, _ = token_logprobs(model, packed)
            logp.sum().backward()
            out[timing] = time.perf_counter() - start
    return out


def child(what: str, path: str, mode: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.rl.strict_cpu", "--child", what, "--model", path, "--mode", mode]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo:ring-micro", help="checkpoint directory or demo:<name>")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=["rollout", "update"])
    parser.add_argument("--mode", choices=["fast", "strict"], default="fast")
    args = parser.parse_args()
    if args.child:
        result = rollout(args.model, args.mode == "strict") if args.child == "rollout" else update(args.model)
        print(json.dumps(result))
        return
    path = args.model
    if path.startswith("demo:"):
        from rl.demo_model import resolve

        path = str(resolve(path, "~/.cache/lockstep"))
    print(header("strict mode ÷ fast mode: rollout and update phases (demo batch)", ("torch", "vllm")))
    phases = ("rollout", "update", "update_first")
    times = {(phase, mode): [] for phase in phases for mode in ("fast", "strict")}
    for _ in range(args.repeats):
        for mode in ("fast", "strict"):
            times[("rollout", mode)].append(child("rollout", path, mode)["seconds"])
        for timing, seconds in child("update", path, "fast").items():
            mode, _, first = timing.partition("_")
            times[("update_first" if first else "update", mode)].append(seconds)
    rows = []
    for phase in phases:
        fast, strict = median(times[(phase, "fast")]), median(times[(phase, "strict")])
        rows.append([phase, fast, strict, fast / strict, " ".join(f"{t:.2f}" for t in times[(phase, "strict")])])
    print(markdown_table(["phase", "fast s", "strict s", "throughput strict ÷ fast", "strict runs s"], rows))


if __name__ == "__main__":
    main()
