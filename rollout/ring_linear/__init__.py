"""The Ring-linear hybrid model on the rollout side: a vLLM plugin.

``pyproject.toml`` declares :func:`register` under vLLM's ``vllm.general_plugins`` entry point,
so every vLLM process of an installed Lockstep (the engine core and its workers, which load
plugins themselves) knows the ``BailingMoeLinearV2ForCausalLM`` architecture and the
``bailing_moe_linear`` config type.  The model class is imported lazily by vLLM
(``module:Class``), after the platform is set up.
"""

from __future__ import annotations

MODEL_CLASS = "rollout.ring_linear.model:BailingMoeLinearV2ForCausalLM"


def register() -> None:
    """vLLM plugin hook: registers the config with transformers (importing
    :mod:`models.ring_linear` does) and the model with vLLM."""
    from vllm import ModelRegistry

    from models.ring_linear import ARCHITECTURE

    ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)


__all__ = ["register", "MODEL_CLASS"]
