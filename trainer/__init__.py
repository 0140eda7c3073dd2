"""trainer."""

from . import ring_linear  # noqa: F401  registers the Ring-linear model type with transformers
