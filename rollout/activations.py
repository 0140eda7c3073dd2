"""Module-by-module activations of the rollout engine, for aligning it with the trainer.

DESIGN.md §4: when the engines disagree, compare activations module by module (prefill vs
prefill, then training prefill vs inference decode) and fix the first module that diverges.
Both engines' models use the same module names (the checkpoint's), so one list of names
addresses both; :func:`record_outputs` hooks them in any ``nn.Module`` and
:func:`first_divergence` names the first one whose outputs differ.

In the engine the hooks live in vLLM's worker process: :class:`EngineExtension` (a
``worker_extension_cls``: the weight receiver plus ``lockstep_record_*``) installs them there
and ships the recorded rows back as safetensors bytes (tensors do not survive vLLM's RPC).  A
module's rows are concatenated over the engine steps of the recorded period: for one sequence
this is the prompt (prefill) then one row per decoded token — the token-by-token activations
of inference decode, comparable row for row with one training forward over the same tokens.
"""

from __future__ import annotations

import contextlib

import torch

from .weight_receiver import WeightReceiver


class Recorder:
    """Forward hooks that keep the outputs of named modules as float64 rows ``[tokens, ...]``."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        modules = dict(model.named_modules())
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise ValueError(f"no module named {', '.join(unknown)} in {type(model).__name__}")
        self.rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def keep(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            # trainer modules give [B, T, ...] (B = 1 here), engine modules [tokens, ...]
            self.rows[name].append(out.detach().reshape(-1, out.shape[-1]).to("cpu", torch.float64))
        return keep

    def stop(self) -> dict[str, torch.Tensor]:
        for h in self.handles:
            h.remove()
        return {n: torch.cat(r) if r else torch.empty(0) for n, r in self.rows.items()}


@contextlib.contextmanager
def record_outputs(model: torch.nn.Module, names: list[str]):
    """``with record_outputs(model, names) as rec: ...`` then ``rec.stop()`` → {name: rows}."""
    rec = Recorder(model, names)
    try:
        yield rec
    finally:
        rec.stop()


def relative_errors(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor],
                    names: list[str], start: int = 0) -> list[tuple[str, float]]:
    """Each name's max |got − expected| over rows `start`.. of both, relative to the expected
    rows' max magnitude (inf when a side has no such rows or their shapes differ). Rows are
    compared over the shorter of the two lengths (the engine never runs the last sampled token
    through the model)."""
    out = []
    for name in names:
        a, b = expected[name], got[name]
        n = min(len(a), len(b))
        if n <= start or a.shape[1:] != b.shape[1:]:
            out.append((name, float("inf")))
            continue
        a, b = a[start:n], b[start:n]
        out.append((name, ((a - b).abs().max() / a.abs().max().clamp(min=1e-30)).item()))
    return out


def first_divergence(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor],
                     names: list[str], rtol: float) -> tuple[str, float] | None:
    """The first name (in ``names`` order: execution order) whose rows differ by more than
    ``rtol`` (:func:`relative_errors`), with that relative error; None if all agree."""
    return next(((name, err) for name, err in relative_errors(expected, got, names) if not err <= rtol), None)


class EngineExtension(WeightReceiver):
    """vLLM ``worker_extension_cls``: in-place weight updates plus activation recording."""

    def lockstep_record_start(self, names: list[str]) -> int:
        from vllm.config import CompilationMode

        if self.vllm_config.compilation_config.mode != CompilationMode.NONE:
            raise RuntimeError("recording activations needs an eager engine (LLM(enforce_eager=True), "
                               "rollout.enforce_eager: true): a compiled model runs no module hooks")
        if getattr(self, "_lockstep_recorder", None) is not None:
            self._lockstep_recorder.stop()
        self._lockstep_recorder = Recorder(self.model_runner.get_model(), names)
        return len(names)

    def lockstep_record_stop(self) -> bytes:
        from safetensors.torch import save

        rows = self._lockstep_recorder.stop()
        self._lockstep_recorder = None
        return save({n: t.contiguous() for n, t in rows.items()})


def module_names(config) -> list[str]:
    """Execution-order names of the decoder's modules both engines have, for a model's HF
    config. The Ring-linear plugin mirrors the checkpoint's modules one for one: per layer the
    input norm, attention, post-attention norm, feed-forward and the layer's output. A
    vLLM-native model (Qwen2, Llama, ...) shares its attention (``self_attn``) and MLP blocks and
    the final norm; its decoder layers return the residual apart, so their outputs differ in
    meaning and are left out."""
    layers = range(config.num_hidden_layers)
    if config.model_type.startswith("bailing"):
        names = [f"model.layers.{i}{part}" for i in layers
                 for part in (".input_layernorm", ".attention", ".post_attention_layernorm", ".mlp", "")]
    else:
        names = [f"model.layers.{i}.{part}" for i in layers for part in ("self_attn", "mlp")]
    return names + ["model.norm"]


__all__ = ["Recorder", "record_outputs", "relative_errors", "first_divergence", "EngineExtension", "module_names"]
