"""Our top-level `kernels` package shares its name with the PyPI `kernels` (hub kernels) that
transformers probes for; transformers must never take ours for it (DESIGN.md §2). That `kernels`
imports nothing of the project is checked with every other layer in test_import_layers.py."""

import importlib.util


def test_transformers_does_not_mistake_our_kernels_package():
    from transformers.utils import import_utils

    assert importlib.util.find_spec("kernels") is not None  # ours is importable...
    assert not import_utils.is_kernels_available()  # ...and transformers does not use it

