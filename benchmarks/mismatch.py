"""Train/infer mismatch: Lockstep's fast and strict modes against the usual setup, on the same
prompts and weights, in one run (issue 20).

For each model (dense: the demo's vLLM-native Qwen2 `arith-micro`; hybrid: the Ring-linear
`ring-micro`) and each engine dtype (fp32, bf16), one vLLM engine samples completions of fixed
length (`ignore_eos`) with their log-probs a_t, and three training sides score the same tokens:

(a) the usual setup: the engine as it comes (vLLM's own kernels for the dense model; for the
    hybrid the Lockstep plugin, the only engine that runs it) against a plain Hugging Face model
    in bf16 — `AutoModelForCausalLM` with the checkpoint's own code (`trust_remote_code`: the
    exported standalone modeling file for the hybrid), eager attention, its bf16 LM head; log-probs
    are the fp32 log-softmax of its bf16 logits, as peers compute them;
(b) fast mode: the trainer model a Lockstep rank builds (`rl.mismatch_probe.training_model`: the
    engine's dtype, fp32 LM head and log-softmax, the shared kernels), as `mode: fast` runs;
(c) strict mode (the Ring-linear model in fp32, `--strict-dtypes`; a vLLM-native model is
    refused, as `rl.model.check_strict_model` refuses it): a second engine with the plugin's
    strict switch samples the same prompts (its own tokens: its bits are not the fast engine's),
    scored by the strict trainer model (`models.ring_linear.strict.use_strict`, the strict LM
    head), as `mode: strict` runs; in its own process.

Per (model, dtype, generation length L: each completion's first L tokens) it prints k3, max
|Δp|, max |Δ logp| and frac_abs_p_diff_gt_0.8 (DESIGN.md §5) for (a) and (b), k3, max |Δ logp|
and the bitwise-equal share for (c), and the ratio k3(b)/k3(a) (target ≤ 1/100).

The demo checkpoints are random with std 0.02: their next-token distributions are near
uniform, which hides what rounding does to a peaked distribution. The benchmark scales every
weight matrix by `--weight-scale` (default 4: std 0.08, the plugin parity test's init), which
gives peaked distributions like a trained model's; norms are left at 1.

    python -m benchmarks.mismatch [--lengths 64,256,448] [--prompts 8] [--samples 2]

Each (model, dtype, mode) runs in its own process (one vLLM engine per process).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODELS = {"dense": "arith-micro", "hybrid": "ring-micro"}
TARGET_RATIO = 0.01
RESULT = "RESULT "


def strict_available() -> str | None:
    """None when `mode: strict` is accepted, else the refusal."""
    from rl.config import ConfigError, from_data

    try:
        from_data({"mode": "strict"})
    except ConfigError as e:
        return str(e)
    return None


def scaled_copy(model_dir: Path, out: Path, scale: float) -> Path:
    """The checkpoint with every weight matrix (2-D and up: projections, experts, embeddings)
    multiplied by `scale`; norms and biases as they are."""
    import torch
    from safetensors.torch import load_file, save_file

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model_dir, out)
    for f in out.glob("*.safetensors"):
        tensors = load_file(f)
        save_file({n: (t * scale if t.dim() >= 2 else t).contiguous() for n, t in tensors.items()}, f,
                  metadata={"format": "pt"})
    return out


# ------------------------------------------------------------------------------------------------
# One (model, dtype) in its own process


def measure(model_dir: str, dtype: str, lengths: list[int], prompts: int, samples: int, seed: int,
            strict: bool = False) -> dict:
    """(a) and (b) on one fast engine's samples, or (`strict`) (c) on a strict engine's."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rl.mismatch_probe import training_model
    from rollout.config import RolloutConfig
    from rollout.worker import RolloutWorker

    longest = max(lengths)
    vocab = AutoConfig.from_pretrained(model_dir, trust_remote_code=True).vocab_size
    rng = random.Random(seed)
    prompt_ids = [[rng.randrange(3, vocab) for _ in range(rng.randrange(8, 33))] for _ in range(prompts)]
    max_len = max(map(len, prompt_ids)) + longest + 1
    start = time.perf_counter()
    engine = RolloutWorker(model_dir, dtype, RolloutConfig(max_new_tokens=longest, max_model_len=max_len,
                                                           enforce_eager=True), seed=seed, strict=strict)
    engine_start = time.perf_counter() - start
    start = time.perf_counter()
    groups = engine.generate(prompt_ids, samples, longest, 1.0, ignore_eos=True)
    sample_s = time.perf_counter() - start
    engine_kind = type(engine.llm.llm_engine.model_config.hf_config).__name__
    del engine
    pairs = [(p, c) for p, group in zip(prompt_ids, groups) for c in group]
    a = [torch.tensor(c.logprobs, dtype=torch.float64) for _, c in pairs]
    if strict:
        return {"engine_config": engine_kind, "engine_start_s": engine_start, "sample_s": sample_s,
                "rows": metric_rows(lengths, a, {"strict": strict_scores(model_dir, dtype, pairs)})}

    # (b) fast mode: the Lockstep trainer model in the engine's dtype, fp32 LM head
    fast_model = training_model(model_dir, dtype, None)
    fast = trainer_scores(fast_model, pairs)
    del fast_model

    # (a) the usual setup: a plain bf16 Hugging Face model, its own LM head
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, trust_remote_code=True,
                                                 attn_implementation="eager").eval()
    usual = []
    with torch.no_grad():
        for p, c in pairs:
            ids = torch.tensor([p + list(c.token_ids)])
            logits = plain(ids).logits[0, len(p) - 1 : -1].float()
            usual.append(logits.log_softmax(-1).gather(1, torch.tensor(c.token_ids)[:, None])[:, 0].double())
    plain_kind = type(plain).__module__
    return {"engine_config": engine_kind, "plain_model": plain_kind, "engine_start_s": engine_start,
            "sample_s": sample_s, "rows": metric_rows(lengths, a, {"usual": usual, "fast": fast})}


def strict_scores(model_dir: str, dtype: str, pairs: list) -> list:
    """(c): the strict trainer model's log-probs of the strict engine's samples."""
    from models.ring_linear.strict import use_strict
    from rl.mismatch_probe import training_model
    from trainer.logprobs import use_fp32_lm_head

    model = training_model(model_dir, dtype, None)
    use_strict(model)
    use_fp32_lm_head(model, strict=True)
    return trainer_scores(model, pairs)


def trainer_scores(model, pairs: list) -> list:
    """A Lockstep trainer model's float64 log-probs of each (prompt, completion) pair's tokens,
    one sequence per forward."""
    import torch

    from trainer.logprobs import pack, token_logprobs

    with torch.no_grad():
        return [token_logprobs(model, pack([p], [list(c.token_ids)]))[0][0, : len(c.token_ids)].double()
                for p, c in pairs]


def metric_rows(lengths: list[int], a: list, sides: dict[str, list]) -> list[dict]:
    """Per length L (each completion's first L tokens), each side's mismatch metrics against a."""
    import torch

    from rl.algorithms.mismatch import mismatch_metrics

    rows = []
    for L in lengths:
        pos = torch.cat([torch.arange(min(L, len(x))) for x in a])
        cut = lambda xs: torch.cat([x[:L] for x in xs]).float()  # noqa: E731 - the first L tokens of each
        mask = torch.ones(len(pos), dtype=torch.bool)
        row = {"length": L, "tokens": len(pos)}
        for name, b in sides.items():
            m = mismatch_metrics(cut(a), cut(b), mask, pos)
            row[name] = {k: m[f"mismatch/{k}"] for k in ("k3", "abs_p_diff_max", "frac_abs_p_diff_gt_0.8",
                                                          "abs_logp_diff_max", "bitwise_equal_frac")}
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# The run


def ratio(fast: float, usual: float) -> str:
    if usual == 0:
        return "n/a (usual k3 = 0)"
    return f"{fast / usual:.2e}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="dense,hybrid", help="dense, hybrid or both")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--lengths", default="64,256,448", help="generation lengths (first L tokens of each completion)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=2, help="completions per prompt")
    p.add_argument("--weight-scale", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict-dtypes", default="float32",
                   help="engine dtypes of the hybrid's strict run (c); strict mode's bitwise claim is fp32's")
    p.add_argument("--out", default="/tmp/lockstep-bench-mismatch", help="scaled checkpoints and results")
    p.add_argument("--child", nargs=2, metavar=("MODEL_DIR", "DTYPE"), help=argparse.SUPPRESS)
    p.add_argument("--child-strict", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.child:
        result = measure(args.child[0], args.child[1], lengths, args.prompts, args.samples, args.seed,
                         args.child_strict)
        print(RESULT + json.dumps(result), flush=True)
        return

    from benchmarks.harness import header, markdown_table
    from rl import demo_model

    print(header("train/infer mismatch: fast and strict modes vs the usual setup (benchmarks/mismatch.py)",
                 ("torch", "vllm", "transformers")))
    print(f"prompts {args.prompts} × samples {args.samples}, lengths {lengths}, weights ×{args.weight_scale}, "
          f"seed {args.seed}")
    refusal = strict_available()
    if refusal:
        print(f"(c) strict mode: not available — rl/config.py refuses it: {refusal}")
    strict_dtypes = [] if refusal else args.strict_dtypes.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, table = {}, []
    for kind in args.models.split(","):
        model_dir = scaled_copy(demo_model.resolve(f"demo:{MODELS[kind]}", str(out / "cache")),
                                out / f"{MODELS[kind]}-x{args.weight_scale:g}", args.weight_scale)
        for dtype in args.dtypes.split(","):
            r = run_child(model_dir, dtype, args, strict=False)
            if r is None:
                print(f"{kind} {dtype}: failed")
                continue
            results[f"{kind}/{dtype}"] = r
            print(f"{kind} ({MODELS[kind]}, {r['engine_config']}) {dtype}: engine start {r['engine_start_s']:.0f} s, "
                  f"sampling {r['sample_s']:.1f} s, whole {r['wall_s']:.0f} s; plain model from {r['plain_model']}",
                  flush=True)
            strict = {}  # (c) per length, or why there is none
            if kind != "hybrid":
                why = "refused (vLLM-native)"
            elif dtype not in strict_dtypes:
                why = "not run (fp32 only)" if not refusal else "not available"
            else:
                rs = run_child(model_dir, dtype, args, strict=True)
                why = "failed" if rs is None else ""
                if rs is not None:
                    results[f"{kind}/{dtype}/strict"] = rs
                    strict = {row["length"]: row["strict"] for row in rs["rows"]}
                    print(f"{kind} {dtype} strict: engine start {rs['engine_start_s']:.0f} s, sampling "
                          f"{rs['sample_s']:.1f} s, whole {rs['wall_s']:.0f} s", flush=True)
            for row in r["rows"]:
                u, f, c = row["usual"], row["fast"], strict.get(row["length"])
                table.append([kind, dtype, row["length"], row["tokens"], u["k3"], f["k3"], c["k3"] if c else why,
                              ratio(f["k3"], u["k3"]), u["abs_p_diff_max"], f["abs_p_diff_max"],
                              u["frac_abs_p_diff_gt_0.8"], f["frac_abs_p_diff_gt_0.8"], u["abs_logp_diff_max"],
                              f["abs_logp_diff_max"], c["abs_logp_diff_max"] if c else why,
                              c["bitwise_equal_frac"] if c else why])
    print()
    print("(a): the engine in its dtype vs a plain bf16 Hugging Face model; (b): the same engine samples vs the "
          "Lockstep trainer model in the engine's dtype (fp32 LM head); (c): a strict engine's samples vs the "
          "strict trainer model")
    print(markdown_table(["model", "engine dtype", "L", "tokens", "k3 (a) usual", "k3 (b) fast", "k3 (c) strict",
                          "k3 (b)/(a)", "max |Δp| (a)", "max |Δp| (b)", "frac |Δp|>0.8 (a)", "frac |Δp|>0.8 (b)",
                          "max |Δ logp| (a)", "max |Δ logp| (b)", "max |Δ logp| (c)", "bitwise equal (c)"],
                         table, digits=3))
    # The headline: the usual setup as peers run it (bf16 engine, bf16 trainer) against fast mode
    # as the recipes run it (model.dtype float32), same prompts and weights, each length.
    k3 = {(row[0], row[1], row[2]): (row[4], row[5]) for row in table}
    print("\nk3 (b) fast, fp32 engine and trainer ÷ k3 (a) usual, bf16 engine and plain bf16 trainer "
          f"(target ≤ {TARGET_RATIO:g}):")
    for (kind, dtype, L), (_, fast) in k3.items():
        if dtype == "float32" and (kind, "bfloat16", L) in k3:
            usual = k3[(kind, "bfloat16", L)][0]
            verdict = "met" if usual > 0 and fast / usual <= TARGET_RATIO else "missed"
            print(f"  {kind:<7} L={L:<5} {fast:.2e} / {usual:.2e} = {ratio(fast, usual)}: {verdict}")
    same = [(row[0], row[1], row[2], row[5] / row[4]) for row in table if row[4] > 0]
    print("k3 (b)/(a) at equal engine dtype: " + ", ".join(f"{k} {d} L={L}: {r:.2e}" for k, d, L, r in same))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"results: {out / 'results.json'}")


def run_child(model_dir: Path, dtype: str, args: argparse.Namespace, strict: bool) -> dict | None:
    """One (model, dtype, mode) measured in its own process; None if it failed (its stderr printed)."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "benchmarks.mismatch", "--child", str(model_dir), dtype, "--lengths", args.lengths,
           "--prompts", str(args.prompts), "--samples", str(args.samples), "--seed", str(args.seed)]
    proc = subprocess.run(cmd + (["--child-strict"] if strict else []), capture_output=True, text=True,
                          env={**os.environ})
    found = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode or not found:
        print(f"{model_dir.name} {dtype}{' strict' if strict else ''}: exit {proc.returncode}:\n{proc.stderr[-3000:]}")
        return None
    r = json.loads(found[-1][len(RESULT):])
    r["wall_s"] = time.perf_counter() - start
    return r


if __name__ == "__main__":
    main()
