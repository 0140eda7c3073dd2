"""The Ring-linear training step with grouped experts against the per-expert loop, same run.

One step = the trainer's path (`trainer.logprobs.token_logprobs`: decoder, then the fp32 LM head
on the completion half) → a policy-gradient-shaped loss → backward → AdamW step, on one sequence
of T tokens per micro-batch. Two layouts of the same model and weights:

- grouped: the trainer's MoE (`models.ring_linear.moe.MoE`, experts as two stacked parameters,
  two grouped GEMMs per pass, `torch._grouped_mm` on CUDA bf16);
- per-expert: the layer as the trainer ran it before (`benchmarks/gpu/per_expert_moe.py`: one
  SwiGLU module per expert in a Python loop, three GEMMs per expert and pass).

Prints tokens/s of each and the ratio (issue 19's target: grouped ≥ 3× per-expert in bf16), the
first step's loss under both (the same function: they differ by rounding only), the peak GPU
memory and the grouped step's MFU (:func:`training_flops` ÷ the card's dense bf16 peak).
``--profile N`` adds, per length, the N ops with the most GPU time in one grouped step. Plain `torch.optim.AdamW` on the bf16 parameters, no DeepSpeed: the step's compute, not
ZeRO's communication (which the grouped layer also cuts: two gathers per MoE layer instead of
3 per expert).

    python -m benchmarks.gpu.train_step                          # demo:ring-mini-1b, 4K and 8K, CUDA bf16
    python -m benchmarks.gpu.train_step --steps 3 --profile 25   # and where one step's GPU time goes
    python -m benchmarks.gpu.train_step --preset tiny --device cpu --dtype fp32 --seq-lens 128 --steps 2

`--fp8`: the FP8 comparison instead (`benchmarks/gpu/fp8_step.py`: the step in bf16 vs FP8 before
and after producer-fused quantization and per-step weight caching, FP8Linear vs bf16 and torchao,
the wgrad kernels), 4K tokens per sequence unless `--seq-lens` says otherwise:

    python -m benchmarks.gpu.train_step --fp8
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.harness import header, markdown_table, median

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# Dense bf16 tensor-core peak of the cards we measure on (FLOP/s, no sparsity): the MFU denominator.
PEAK_BF16 = {"H100 80GB HBM3": 989e12, "H100": 989e12, "H200": 989e12}


def training_flops(config, seq_len: int, completion: int) -> float:
    """FLOPs of one training step (forward + backward = 3 × forward) on one sequence:

    * every active weight (routed top-k experts, shared expert, attention projections; not the
      embedding): 2 FLOPs per weight per token forward;
    * the LM head on the completion tokens only (the trainer's log-probs): 2·V·D per token;
    * softmax attention, causal: QKᵀ and PV, 2·d each per visible (query, key) pair and head;
    * linear attention, counted as its recurrence: kᵀv into the d×d state and q·S out, 4·d²
      per token and head (the chunked kernels do the same order of work).
    The usual 6·N·T convention, with the attention terms made explicit."""
    from models.ring_linear.presets import parameter_count

    c = config
    counts = parameter_count(c)
    weights = counts["active"] - c.hidden_size  # the final norm is not a GEMM
    forward = 2.0 * weights * seq_len + 2.0 * c.vocab_size * c.hidden_size * completion
    for i in range(c.num_hidden_layers):
        if c.is_softmax_layer(i):
            forward += 4.0 * c.head_dim * c.num_attention_heads * seq_len * (seq_len + 1) / 2
        else:
            forward += 4.0 * c.head_dim ** 2 * c.num_attention_heads * seq_len
    return 3.0 * forward


def profile_step(step, top: int) -> str:
    """One step under torch.profiler: the `top` ops by self GPU time, and the step's GPU busy
    time against its wall time (a GPU idle between launches means a host-bound step)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    events = prof.key_averages()
    gpu = sum(e.self_device_time_total for e in events) / 1e6
    table = events.table(sort_by="self_device_time_total", row_limit=top, max_name_column_width=60)
    return f"profiled step: wall {wall * 1e3:.1f} ms, GPU busy {gpu * 1e3:.1f} ms (kernels summed)\n{table}"


def build_model(preset: str, dtype: torch.dtype, device: str, max_len: int, seed: int):
    """The preset's model with seeded random weights (the demo's 384-token vocabulary for the
    Ring presets: the GPU recipe's `demo:ring-mini-1b`), in `dtype` on `device`."""
    from models.ring_linear.presets import preset_config
    from trainer.logprobs import use_fp32_lm_head
    from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM

    vocab = {"tiny": 512}.get(preset, 384)
    config = preset_config(preset, vocab_size=vocab, max_position_embeddings=max(max_len, 4096))
    torch.manual_seed(seed)
    model = BailingMoeLinearV2ForCausalLM(config).to(device=device, dtype=dtype).train()
    use_fp32_lm_head(model)
    return model


def make_step(model, seq_len: int, device: str, seed: int):
    """A training step on one random sequence of `seq_len` tokens (first half prompt, second
    half completion); returns a callable that runs it and returns the loss."""
    from trainer.logprobs import pack, token_logprobs

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, model.config.vocab_size, (seq_len,), generator=g).tolist()
    batch = pack([tokens[: seq_len // 2]], [tokens[seq_len // 2:]])
    advantage = torch.randn(1, seq_len - seq_len // 2, generator=g).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step() -> float:
        logp, _ = token_logprobs(model, batch)
        loss = -(logp * advantage * batch.completion_mask.to(device)).sum() / batch.completion_mask.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def time_steps(step, steps: int, warmup: int, device: str) -> tuple[float, float]:
    """(first step's loss, median seconds per step over `steps` after `warmup` untimed ones)."""
    first = step()
    for _ in range(max(0, warmup - 1)):
        step()
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return first, median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mini-1b", help="Ring-linear preset (models.ring_linear.presets)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    ap.add_argument("--seq-lens", default=None, help="tokens per sequence, comma-separated (default 4096,8192; "
                    "with --fp8 4096)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per layout and length")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first one's loss is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="per length, print the N ops with the most GPU time in one grouped step (CUDA)")
    ap.add_argument("--fp8", action="store_true", help="the FP8 comparison (benchmarks/gpu/fp8_step.py)")
    ap.add_argument("--micro-batches", type=int, default=2, help="--fp8: micro-batches per optimizer step")
    ap.add_argument("--min-weight-elements", default="1048577",
                    help="--fp8: model.fp8.min_weight_elements values to also run, comma-separated "
                         "(1048577: Ring-mini's 512×2048 experts and smaller stay bf16)")
    ap.add_argument("--linear-shapes", default=None, help="--fp8: FP8Linear shapes TOKENSxINxOUT, comma-separated")
    args = ap.parse_args()
    if args.fp8:
        from benchmarks.gpu import fp8_step

        args.seq_lens = args.seq_lens or "4096"
        args.linear_shapes = args.linear_shapes or fp8_step.LINEAR_SHAPES
        args.min_weight_elements = [int(n) for n in args.min_weight_elements.split(",") if n]
        fp8_step.main(args)
        return
    args.seq_lens = args.seq_lens or "4096,8192"
    from benchmarks.gpu.per_expert_moe import use_per_expert_experts

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("train_step: --device cuda but no CUDA device (use --device cpu for the smoke check)")
    dtype, lens = DTYPES[args.dtype], [int(n) for n in args.seq_lens.split(",")]
    print(header(f"Ring-linear training step, grouped experts vs per-expert loop ({args.preset}, {args.dtype})",
                 ("torch", "transformers")))
    rows = []
    for seq_len in lens:
        result = {}
        for layout in ("grouped", "per-expert"):
            model = build_model(args.preset, dtype, args.device, seq_len, args.seed)
            if layout == "per-expert":
                assert use_per_expert_experts(model) > 0
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            step = make_step(model, seq_len, args.device, args.seed)
            loss, seconds = time_steps(step, args.steps, args.warmup, args.device)
            peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
            result[layout] = (loss, seconds, peak)
            if layout == "grouped":
                flops = training_flops(model.config, seq_len, seq_len - seq_len // 2)
                if args.profile and args.device == "cuda":
                    print(f"## {seq_len} tokens, grouped\n{profile_step(step, args.profile)}")
            del model
            if args.device == "cuda":
                torch.cuda.empty_cache()
        (loss_g, s_g, mem_g), (loss_p, s_p, mem_p) = result["grouped"], result["per-expert"]
        peak_flops = PEAK_BF16.get(torch.cuda.get_device_name().removeprefix("NVIDIA ")) \
            if args.device == "cuda" and dtype == torch.bfloat16 else None
        mfu = flops / s_g / peak_flops if peak_flops else float("nan")
        rows.append([seq_len, seq_len / s_g, seq_len / s_p, s_p / s_g, abs(loss_g - loss_p) / max(abs(loss_p), 1e-30),
                     mem_g, mem_p, flops / 1e12, mfu])
    print(markdown_table(["tokens/seq", "grouped tok/s", "per-expert tok/s", "ratio (target ≥ 3)",
                          "first loss rel. diff", "grouped peak GiB", "per-expert peak GiB", "TFLOP per step",
                          "grouped MFU (bf16 peak)"], rows))


if __name__ == "__main__":
    main()
