"""`lockstep mismatch --checkpoint CKPT --data FILE [--layers]`: the train/infer mismatch of a
checkpoint, outside any run.

The rollout engine (vLLM with Lockstep's plugin, as a run builds it) samples completions of the
data's prompts with their log-probs a_t; the training model (the Hugging Face class the trainer
ranks load, fp32 LM head) scores the same tokens, b_t. The tokens go through the run's own
records (`rl.token_records`) into a one-step report folder, so the summary is the one
`lockstep mismatch RUN_DIR` prints (and `--html`/`--json` work on it).

`--layers` then says where the two disagree (DESIGN.md §4), module by module, on one sequence
(a prompt and its sampled completion), in two comparisons:

1. prefill vs prefill: the engine prefills the whole sequence (teacher-forced, one forward) and
   the trainer runs one forward over it; the same computation on both sides.
2. training prefill vs inference decode: the engine prefills the prompt and decodes the
   completion token by token; the trainer's rows are the same single forward.

Each names the first module (in execution order) whose outputs differ by more than `rtol`
relative to their magnitude, and the largest error of any module.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from rl.checkpoint import CheckpointError, pinned
from rl.config import ConfigError
from rl.data import PromptRenderer, load_examples
from rl.evaluate import eval_plan
from rl.report import build, render_text
from rl.token_records import StepTokens

STEP = 1  # the probe's records are one step's
# Module-output tolerance of --layers, relative to the outputs' magnitude: a few ulps of
# accumulated rounding in fp32; half-precision engines round every activation.
LAYER_RTOL = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 1e-2}


@dataclass(frozen=True)
class ProbeOptions:
    checkpoint: str  # a run directory, a checkpoint or a Hugging Face model directory
    data: str | None  # a .jsonl file, a preset, `synthetic:TASK`; None: the run's held-out set
    prompts: int = 8
    samples: int = 4  # completions per prompt
    max_new_tokens: int | None = None  # None: the run's rollout.max_new_tokens, else 64
    dtype: str | None = None  # None: the run's model.dtype, else float32
    seed: int = 0
    layers: bool = False
    rtol: float | None = None  # --layers tolerance; None: LAYER_RTOL of the dtype
    template: str | None = None
    prompt_key: str = "question"
    answer_key: str = "answer"
    top: int = 20
    out_dir: str | None = None  # keep the records here; None: a temporary folder


def probe(opts: ProbeOptions) -> tuple[dict, str]:
    """Sample, rescore, report: (the report as data, the text to print)."""
    if opts.prompts < 1 or opts.samples < 1:
        raise ConfigError("--prompts and --samples: at least 1 each")
    with pinned(opts.checkpoint) as target:
        try:
            run = target.recipe()
        except ConfigError as e:
            if opts.data is None:
                raise ConfigError(f"{e}; pass --data with the prompts to probe it on") from None
            run = None
        temperature = run.rollout.temperature if run else 1.0
        plan = eval_plan(run, opts.data, template=opts.template, prompt_key=opts.prompt_key,
                         answer_key=opts.answer_key, k=opts.samples, temperature=temperature,
                         max_new_tokens=opts.max_new_tokens, dtype=opts.dtype)
        examples = load_examples(plan.sets[0], "--data" if opts.data else "data.eval[0]")[: opts.prompts]
        if not examples:
            raise ConfigError(f"--data {opts.data}: no prompts in it")
        model_dir = str(target.model_dir)
        fp8 = fp8_for(run, plan.fp8, model_dir)

        from rollout.config import RolloutConfig
        from rollout.worker import RolloutWorker

        # Eager: module hooks see every layer (a compiled engine runs none); the plugin's ops
        # are the same either way.
        engine = RolloutWorker(model_dir, plan.dtype, RolloutConfig(max_new_tokens=plan.max_new_tokens,
                                                                    max_model_len=plan.max_model_len,
                                                                    temperature=temperature, enforce_eager=True),
                               seed=opts.seed, fp8=fp8)
        renderer = PromptRenderer(engine.tokenizer, plan.sets[0])
        prompts = [renderer.ids(e) for e in examples]
        groups = engine.generate(prompts, opts.samples, plan.max_new_tokens, temperature)
        samples = [(p, c) for p, group in zip(prompts, groups) for c in group if c.token_ids]
        if not samples:
            raise ConfigError("every completion was empty (the model ended each at once); nothing to compare")
        model = training_model(model_dir, plan.dtype, fp8)
        tokens = score(model, samples, temperature)

        out = Path(opts.out_dir) if opts.out_dir else Path(tempfile.mkdtemp(prefix="lockstep-mismatch-"))
        try:
            (out / "tokens").mkdir(parents=True, exist_ok=True)
            tokens.write(out / "tokens", limit=max(4096, len(tokens.sample)), seed=opts.seed)
            about = {"checkpoint": model_dir, "data": plan.sets[0].source, "dtype": plan.dtype,
                     "prompts": len(prompts), "samples_per_prompt": opts.samples,
                     "max_new_tokens": plan.max_new_tokens, "temperature": temperature,
                     "engine": "vLLM (Lockstep plugin for Ring-linear models), eager",
                     "trainer": f"{type(model).__name__} (Hugging Face class, fp32 LM head)"}
            (out / "probe.json").write_text(json.dumps(about, indent=1))
            report = build(out, STEP, opts.top, engine.tokenizer)
        finally:
            if not opts.out_dir:
                shutil.rmtree(out, ignore_errors=True)
        # No loss ran: no corrections to show; the numbers are over every sampled token.
        report.update(probe=about, corrections=None, source="every sampled token")
        report["run_dir"] = str(out) if opts.out_dir else f"probe of {model_dir} on {about['data']}"
        lines = [f"lockstep mismatch probe: {model_dir} on {about['data']} ({len(prompts)} prompts × "
                 f"{opts.samples} samples, ≤ {plan.max_new_tokens} new tokens, {plan.dtype}, temperature "
                 f"{temperature:g})",
                 f"  a_t: {about['engine']}; b_t: {about['trainer']}",
                 render_text(report)]
        if opts.layers:
            rtol = opts.rtol if opts.rtol is not None else LAYER_RTOL[plan.dtype]
            worst = max(range(len(samples)), key=lambda i: tokens_max_delta(tokens, i))
            report["layers"] = compare_layers(engine.llm, model, samples[worst][0], plan.max_new_tokens, rtol)
            lines += layer_lines(report["layers"])
        if opts.out_dir:
            lines.append(f"\nrecords kept in {out} (lockstep mismatch {out} --html OUT.html)")
    return report, "\n".join(lines)


def fp8_for(run, enabled: bool, model_dir: str) -> dict[str, bool] | None:
    """The FP8 options both engines run with when the run trained with model.fp8."""
    if not enabled:
        return None
    from rl.config import from_data
    from rl.model import check_fp8_model, fp8_options

    trained = run.model.fp8 if run else None
    recipe = from_data({"model": {"fp8": {"enabled": True, "pow2_scale": trained.pow2_scale if trained else False,
                                          "min_weight_elements": trained.min_weight_elements if trained else 0}}})
    check_fp8_model(recipe, model_dir)
    return fp8_options(recipe)


def training_model(model_dir: str, dtype: str, fp8: dict[str, bool] | None) -> torch.nn.Module:
    """The model a trainer rank builds from the checkpoint (trainer.worker.TrainerRank)."""
    from transformers import AutoModelForCausalLM

    from trainer.logprobs import use_fp32_lm_head
    from trainer.worker import DTYPES, use_fp8

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype]).eval()
    if fp8 is not None:
        use_fp8(model, fp8)
    use_fp32_lm_head(model)
    return model


def score(model: torch.nn.Module, samples: list, temperature: float) -> StepTokens:
    """The trainer's b_t and entropies of every sampled token, as one step's records."""
    from trainer.logprobs import pack, token_logprobs

    prompts = [p for p, _ in samples]
    completions = [list(c.token_ids) for _, c in samples]
    b, ent = [], []
    for i in range(0, len(samples), 8):  # small batches: padding costs little, memory stays flat
        with torch.no_grad():
            logp, entropy = token_logprobs(model, pack(prompts[i : i + 8], completions[i : i + 8]), temperature,
                                           with_entropy=True)
        for row, c in enumerate(completions[i : i + 8]):
            b += logp[row, : len(c)].float().tolist()
            ent += entropy[row, : len(c)].float().tolist()
    from rl.algorithms.mismatch import mismatch_metrics

    a = [x for _, c in samples for x in c.logprobs]
    position = [j for c in completions for j in range(len(c))]
    metrics = mismatch_metrics(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32),
                               torch.ones(len(a), dtype=torch.bool), torch.tensor(position))
    return StepTokens(step=STEP, stale=False, metrics=metrics, rollout_logprobs=a, trainer_logprobs=b,
                      entropies=ent, sample=[n for n, c in enumerate(completions) for _ in c],
                      position=position, prompts=prompts, completions=completions)


def tokens_max_delta(tokens: StepTokens, sample: int) -> float:
    return max((abs(b - a) for a, b, s in zip(tokens.rollout_logprobs, tokens.trainer_logprobs, tokens.sample)
                if s == sample), default=0.0)


# ------------------------------------------------------------------------------------------------
# --layers


def compare_layers(llm, model: torch.nn.Module, prompt: list[int], new_tokens: int, rtol: float) -> dict:
    """Both comparisons of the module doc on one sequence, the engine's decode of `prompt`:
    {phase: {"first": name or None, "error": its relative error, "worst": [name, largest error],
    "rtol": rtol, "modules": how many compared}}."""
    from safetensors.torch import load
    from vllm import SamplingParams, TokensPrompt

    from rl.alignment import sample_with_logprobs
    from rollout.activations import module_names, record_outputs, relative_errors

    names = module_names(model.config)

    def recorded(run) -> dict[str, torch.Tensor]:
        llm.reset_prefix_cache()  # a cached prefix would skip rows: every token through the model
        try:
            llm.collective_rpc("lockstep_record_start", args=(names,))
        except Exception as e:  # noqa: BLE001 - vLLM wraps the worker's error; its message is what matters
            raise ConfigError(f"--layers: the engine cannot record module outputs ({e})") from None
        result = run()
        (blob,) = llm.collective_rpc("lockstep_record_stop")
        return result, load(blob)

    # The engine decodes: the prompt's rows (its prefill), then one row per decoded token.
    ((completion,), _), decode = recorded(lambda: sample_with_logprobs(llm, [prompt], new_tokens))
    ids = prompt + completion
    # The engine prefills the same tokens teacher-forced: one row per token.
    _, prefill = recorded(lambda: llm.generate([TokensPrompt(prompt_token_ids=ids)],
                                               SamplingParams(max_tokens=1, temperature=1.0), use_tqdm=False))
    # The decoder alone: every compared module is in it, and the LM head takes the sampled
    # tokens as well (use_fp32_lm_head), which a plain forward does not pass.
    with record_outputs(model, names) as rec, torch.no_grad():
        model.get_decoder()(torch.tensor([ids], device=next(model.parameters()).device))
    trainer = rec.stop()
    out = {}
    # Decode rows start after the prompt's: row i is position i on both sides.
    for phase, got, start in (("prefill vs prefill", prefill, 0),
                              ("training prefill vs inference decode", decode, len(prompt))):
        errors = relative_errors(trainer, got, names, start)
        first = next(((n, e) for n, e in errors if not e <= rtol), None)
        worst = max(errors, key=lambda ne: ne[1])
        out[phase] = {"first": first[0] if first else None, "error": first[1] if first else None,
                      "worst": list(worst), "rtol": rtol, "modules": len(names), "tokens": len(ids)}
    return out


def layer_lines(layers: dict) -> list[str]:
    lines = ["\nmodule by module (the prompt of the largest |Δ|, decoded again; errors relative to each "
             "module's largest output):"]
    for phase, r in layers.items():
        if r["first"] is None:
            verdict = f"all {r['modules']} modules agree within {r['rtol']:.0e}"
        else:
            verdict = f"first diverging module: {r['first']} (rel. error {r['error']:.2e} > {r['rtol']:.0e})"
        lines.append(f"  {phase:<38} {verdict}; largest {r['worst'][1]:.2e} at {r['worst'][0]}")
    return lines


__all__ = ["ProbeOptions", "probe", "compare_layers"]
