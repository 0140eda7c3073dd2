"""Ring-linear hybrid model, training side (DESIGN.md §3): the transformers model classes
(:mod:`.modeling`) and seeded random checkpoints (:mod:`.random_checkpoint`); the config,
names, presets and layers are the model definition's, :mod:`models.ring_linear`.

Importing this package registers the model with transformers' ``AutoModelForCausalLM`` (so
``AutoModelForCausalLM.from_pretrained`` on a Ring-linear directory builds
:class:`BailingMoeLinearV2ForCausalLM`; importing :mod:`models.ring_linear` registered the
config with ``AutoConfig``).  The model classes are imported lazily (``_LazyForCausalLM`` stands
in the auto mapping; the package's ``__getattr__`` resolves the class names), so
``import trainer`` pays only for the config.
"""

from __future__ import annotations

from models.ring_linear import BailingMoeLinearV2Config

_MODEL_NAMES = ("BailingMoeLinearV2PreTrainedModel", "BailingMoeLinearV2Model",
                "BailingMoeLinearV2ForCausalLM")


class _LazyForCausalLM:
    """The auto-mapping entry for :class:`BailingMoeLinearV2ForCausalLM`: transformers' auto
    classes only call ``from_pretrained`` / ``_from_config`` on it, and those import the model
    module (kernels, transformers' modeling code: seconds on a busy CPU) on first use."""

    config_class = BailingMoeLinearV2Config

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        from .modeling import BailingMoeLinearV2ForCausalLM

        return BailingMoeLinearV2ForCausalLM.from_pretrained(*args, **kwargs)

    @classmethod
    def _from_config(cls, *args, **kwargs):
        from .modeling import BailingMoeLinearV2ForCausalLM

        return BailingMoeLinearV2ForCausalLM._from_config(*args, **kwargs)


def _register() -> None:
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.register(BailingMoeLinearV2Config, _LazyForCausalLM, exist_ok=True)


def __getattr__(name: str):
    if name in _MODEL_NAMES:
        from . import modeling

        return getattr(modeling, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_register()

__all__ = list(_MODEL_NAMES)
