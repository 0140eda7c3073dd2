"""Trainer vs rollout engine on the same tokens: the checks behind "the engines agree".

* :func:`sample_with_logprobs` — completions and the engine's sampled-token log-probs.
* :func:`teacher_forced_logprobs` — the engine's log-probs of given tokens (prefill only).
* :func:`trainer_logprobs` — the trainer's log-probs of those tokens (the fp32 LM head path it
  trains with).
* :func:`first_diverging_module` — when they disagree, where: one sequence decoded token by
  token in the engine with hooks on every module (``rollout.activations``), one training forward
  over the same tokens with hooks on the same module names; the first module whose outputs
  differ by more than ``rtol`` is named (DESIGN.md §4: fix the first module that diverges).

Used by the parity tests (CPU) and ``benchmarks/gpu/ring_vllm.py`` (CUDA).  ``llm`` is a
``vllm.LLM`` built with ``worker_extension_cls="rollout.activations.EngineExtension"``.
"""

from __future__ import annotations

import torch

from rollout.activations import first_divergence, module_names, record_outputs
from trainer.logprobs import pack, token_logprobs, use_fp32_lm_head


def sample_with_logprobs(llm, prompts: list[list[int]], max_tokens: int) -> tuple[list[list[int]], list[torch.Tensor]]:
    """One completion per prompt at temperature 1 (no stop at EOS): (token ids, float64 log-probs)."""
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(max_tokens=max_tokens, temperature=1.0, logprobs=0, ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    completions, logps = [], []
    for o in outs:
        c = o.outputs[0]
        completions.append(list(c.token_ids))
        logps.append(torch.tensor([step[t].logprob for step, t in zip(c.logprobs, c.token_ids)], dtype=torch.float64))
    return completions, logps


def teacher_forced_logprobs(llm, ids: list[int]) -> torch.Tensor:
    """The engine's log-prob of each token of ``ids`` after the first, teacher-forced (prefill
    only; temperature 1), float64."""
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
    (out,) = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
    return torch.tensor([step[t].logprob for step, t in zip(out.prompt_logprobs[1:], ids[1:])], dtype=torch.float64)


def trainer_logprobs(model, prompts: list[list[int]], completions: list[list[int]]) -> list[torch.Tensor]:
    """The training model's log-probs of each completion's tokens, float64 on the CPU."""
    use_fp32_lm_head(model)
    with torch.no_grad():
        logp, _ = token_logprobs(model, pack(prompts, completions))
    return [logp[b, : len(c)].double().cpu() for b, c in enumerate(completions)]


def first_diverging_module(llm, model, prompt: list[int], rtol: float, new_tokens: int = 16) -> str:
    """A sentence naming the first module whose engine and trainer outputs differ, or saying
    that all agree."""
    from safetensors.torch import load

    names = module_names(model.config)
    llm.reset_prefix_cache()  # a cached prefix would skip the prompt's rows in the engine
    llm.collective_rpc("lockstep_record_start", args=(names,))
    (completion,), _ = sample_with_logprobs(llm, [prompt], new_tokens)
    (blob,) = llm.collective_rpc("lockstep_record_stop")
    device = next(model.parameters()).device
    with record_outputs(model, names) as rec, torch.no_grad():
        model(torch.tensor([prompt + completion], device=device))
    hit = first_divergence(rec.stop(), load(blob), names, rtol)
    return "all modules agree" if hit is None else f"first diverging module: {hit[0]} (rel. error {hit[1]:.2e})"


__all__ = ["sample_with_logprobs", "teacher_forced_logprobs", "trainer_logprobs", "first_diverging_module"]
