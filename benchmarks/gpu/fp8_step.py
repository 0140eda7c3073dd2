"""FP8 in the whole training step (issue 19 item 4): `python -m benchmarks.gpu.train_step --fp8`.

One run, one card, three tables:

1. **The trainer step** on the preset (default `mini-1b`, ≥ 1B parameters), `--micro-batches`
   micro-batches of one T-token sequence each accumulated into one AdamW step (the trainer's
   gradient accumulation, where per-call weight quantization repeats): bf16; FP8 as before this
   change (every projection quantizes its input itself and its weight on every forward and
   backward); FP8 with producer-fused input quantization and weights quantized once per step
   (`models/ring_linear/fp8_inputs.py`, `kernels/fp8/weight_cache.py`); and that with the
   projections below `model.fp8.min_weight_elements` kept in bf16 (one value per
   `--min-weight-elements`; the experts, 512×2048, are the smallest Ring-mini projections, and
   FP8 experts train through a per-expert loop, the bf16 ones through grouped GEMMs). ms per step,
   tokens/s, ratio to bf16 (issue 19's target: FP8 ≥ 1.25× bf16).
2. **FP8Linear fwd+bwd** at 8192 × 2048→5120 and 4096 × 4096→14336 (`--linear-shapes`): bf16
   `nn.Linear`, FP8Linear quantizing W per call, with W cached, and with W cached and x handed in
   quantized (what a fused producer gives), against torchao's float8 training (tensorwise and
   rowwise, `torch.compile`d) when torchao is importable — the table says when it is not.
3. **The wgrad GEMM** (dyᵀ·x, both operands 1×128-scaled) at those shapes: the kernel the plan
   picks (`fp8_gemm`'s default) against the Triton TMA kernel and the Hopper warp-specialized one
   forced, bitwise compared.

Times: `triton.testing.do_bench` medians (eager: host launch time included where the host is
slower than the GPU, as in a real step). Expected runtime on an H100: ~2-3 min.
"""

from __future__ import annotations

import torch

from benchmarks.harness import gpu_ms, header, markdown_table

LINEAR_SHAPES = "8192x2048x5120,4096x4096x14336"  # tokens x in x out


# ----------------------------------------------------------------------------- the whole step


def _fp8_variant(model, variant: str, min_weight_elements: int = 0) -> int:
    """Switch the model's decoder to FP8 as the trainer does (``trainer.worker.use_fp8``, without
    importing DeepSpeed). variant: "unfused" (per-call quantization everywhere) or "fused"
    (producer-fused inputs, weights cached per step). Returns the FP8 projection count."""
    from kernels.fp8 import fp8_projection_count, swap_linears_to_fp8
    from models.ring_linear.fp8_inputs import fuse_fp8_inputs

    decoder = model.get_decoder()
    swap_linears_to_fp8(decoder, pow2_scale=False, batch_invariant=False, cache_weights=variant == "fused",
                        min_weight_elements=min_weight_elements)
    fuse_fp8_inputs(decoder, enabled=variant == "fused")
    return fp8_projection_count(decoder)


def _accumulating_step(model, seq_len: int, micro_batches: int, seed: int, device: str):
    """One optimizer step over ``micro_batches`` sequences of ``seq_len`` tokens (the trainer's
    loss shape: fp32 LM head on the completion half, policy-gradient-like weights), then the
    cache clear the trainer makes after every step. Returns a callable giving the last loss."""
    from kernels.fp8 import clear_fp8_weight_caches
    from trainer.logprobs import pack, token_logprobs

    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(micro_batches):
        tokens = torch.randint(1, model.config.vocab_size, (seq_len,), generator=g).tolist()
        batch = pack([tokens[: seq_len // 2]], [tokens[seq_len // 2:]])
        batches.append((batch, torch.randn(1, seq_len - seq_len // 2, generator=g).to(device)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step() -> float:
        for batch, advantage in batches:
            logp, _ = token_logprobs(model, batch)
            mask = batch.completion_mask.to(device)
            loss = -(logp * advantage * mask).sum() / mask.sum() / micro_batches
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clear_fp8_weight_caches(model)
        return loss.item()

    return step


def step_table(args) -> None:
    from benchmarks.gpu.train_step import build_model, time_steps

    variants = [("bf16", None, 0), ("fp8 unfused, W per call", "unfused", 0), ("fp8 fused + W cached", "fused", 0)]
    variants += [(f"fp8 fused + cached, min {n}", "fused", n) for n in args.min_weight_elements]
    rows, cuda = [], args.device == "cuda"
    for seq_len in [int(n) for n in args.seq_lens.split(",")]:
        base = None
        for name, variant, threshold in variants:
            model = build_model(args.preset, torch.bfloat16, args.device, seq_len, args.seed)
            count = _fp8_variant(model, variant, threshold) if variant else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            loss, seconds = time_steps(_accumulating_step(model, seq_len, args.micro_batches, args.seed, args.device),
                                       args.steps, args.warmup, args.device)
            base = base or seconds
            tokens = seq_len * args.micro_batches
            rows.append([seq_len, name, count, seconds * 1e3, tokens / seconds, base / seconds, loss,
                         torch.cuda.max_memory_allocated() / 2**30 if cuda else None])
            del model
            if cuda:
                torch.cuda.empty_cache()
    print(f"\n## Trainer step: {args.preset}, {args.micro_batches} micro-batches of one sequence per AdamW step\n")
    print(markdown_table(["tokens/seq", "variant", "FP8 projections", "ms/step", "tokens/s",
                          "× bf16 (target ≥ 1.25)", "last loss", "peak GiB"], rows))


# ----------------------------------------------------------------------------- one layer


def _torchao_layers(lin: torch.nn.Linear) -> dict:
    """torchao float8 training copies of ``lin`` (tensorwise, rowwise; compiled), or the reason
    torchao is unusable."""
    import copy

    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except Exception as err:  # absent, or a version without the float8 training API
        return {"torchao": f"not importable ({type(err).__name__}: {err})"}
    layers = {}
    for recipe in ("tensorwise", "rowwise"):
        try:
            module = convert_to_float8_training(torch.nn.Sequential(copy.deepcopy(lin)),
                                                config=Float8LinearConfig.from_recipe_name(recipe))
            layers[f"torchao {recipe} (compiled)"] = torch.compile(module)
        except Exception as err:
            layers[f"torchao {recipe}"] = f"failed ({type(err).__name__}: {err})"
    return layers


def linear_table(args) -> None:
    from kernels.fp8 import FP8Linear, quantize_act

    rows = []
    for shape in args.linear_shapes.split(","):
        m, k, n = (int(v) for v in shape.split("x"))
        lin = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        cached = FP8Linear.from_linear(lin, cache_weights=True)
        x_quant = quantize_act(x.detach())
        layers = {"bf16 nn.Linear": lin, "FP8Linear, W per call": FP8Linear.from_linear(lin),
                  "FP8Linear, W cached": cached,
                  "FP8Linear, W cached, x quantized by its producer": lambda x: cached(x, x_quant),
                  **_torchao_layers(lin)}
        base = None
        for name, layer in layers.items():
            if isinstance(layer, str):  # torchao unusable: say why
                rows.append([shape, name, float("nan"), float("nan"), layer])
                continue

            def fwd_bwd(layer=layer):
                layer(x).backward(dy)

            ms = gpu_ms(fwd_bwd, grad_to_none=[x, lin.weight])
            base = base or ms
            rows.append([shape, name, ms, base / ms, ""])
    print("\n## Linear forward+backward (tokens x in x out), bf16 operands\n")
    print(markdown_table(["shape", "layer", "ms", "× bf16 (target ≥ 1.3)", "note"], rows))


def wgrad_table(args) -> None:
    """The weight-gradient GEMM dW [out, in] = dyᵀ·x over the tokens, both operands quantized
    1×128 along the tokens (what FP8Linear's backward runs)."""
    from kernels.fp8 import fp8_gemm, quantize_act_t
    from kernels.fp8.gemm import _make_plan

    rows = []
    for shape in args.linear_shapes.split(","):
        m, k, n = (int(v) for v in shape.split("x"))
        dyq_t, dys_t = quantize_act_t(torch.randn(m, n, device="cuda", dtype=torch.bfloat16))
        xq_t, xs_t = quantize_act_t(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
        plan = _make_plan(dyq_t, dys_t, xq_t, xs_t, torch.bfloat16, False, "auto", None)
        picked = plan if plan == "torch" else plan[2][4]
        kernels = {f"default ({picked})": None, "triton tma": (128, 128, 8, 4, "tma"),
                   "gluon_ws (Hopper)": (128, 256, 4, 3, "gluon_ws")}
        want = fp8_gemm(dyq_t, dys_t, xq_t, xs_t)
        for name, config in kernels.items():
            try:
                got = fp8_gemm(dyq_t, dys_t, xq_t, xs_t, config=config)
                ms = gpu_ms(lambda config=config: fp8_gemm(dyq_t, dys_t, xq_t, xs_t, config=config))
                rows.append([shape, name, ms, 2 * m * n * k / ms / 1e9, bool(torch.equal(got, want))])
            except Exception as err:  # e.g. no Gluon on this card
                rows.append([shape, name, float("nan"), float("nan"), f"failed: {err}"])
    print("\n## wgrad GEMM dyᵀ·x (1×128 scales on both operands)\n")
    print(markdown_table(["shape", "kernel", "ms", "TFLOP/s", "bitwise = default"], rows))


def main(args) -> None:
    """``--device cpu`` runs the step table alone (a smoke check of the script, tiny preset)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("train_step --fp8: --device cuda but no CUDA device (--device cpu --preset tiny: smoke check)")
    print(header(f"FP8 in the training step ({args.preset}, bf16 master weights)", ("torch", "triton", "torchao")))
    step_table(args)
    if args.device == "cuda":
        linear_table(args)
        wgrad_table(args)


__all__ = ["main", "LINEAR_SHAPES"]
