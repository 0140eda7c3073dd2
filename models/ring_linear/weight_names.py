"""The Ring-linear checkpoint's weight names, as both engines load them.

Owns the weight-name check (the trainer's ``from_pretrained``): the set of tensor names in a
checkpoint's safetensors files must equal the model's parameter names, else ``ValueError``
listing the missing and the unexpected ones (transformers only logs them and silently
re-initialises missing weights).

Names skipped on purpose, each logged (never silently): non-persistent buffers some exports
carry (``*.inv_freq``, ``*.slope`` — SGLang's loader skips the same), and the multi-token-
prediction heads when ``num_nextn_predict_layers > 0`` (``model.mtp.*`` as SGLang skips, and
``model.layers.N.*`` for ``N >= num_hidden_layers``): RL scores and trains the main head only.
The rollout model's ``load_weights`` skips the same names (:func:`skipped_names`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

log = logging.getLogger("lockstep.models.ring_linear")

_BUFFER_NAMES = re.compile(r"(^|\.)(inv_freq|slope)$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_MAX_LISTED = 40


def checkpoint_names(path: str | os.PathLike) -> set[str]:
    """Tensor names of every ``*.safetensors`` file of a checkpoint directory (headers only)."""
    from safetensors import safe_open

    root = Path(path)
    index = root / "model.safetensors.index.json"
    if index.exists():
        return set(json.loads(index.read_text())["weight_map"])
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{root}: no *.safetensors files (a Ring-linear checkpoint directory "
                         "holds config.json, safetensors shards and the tokenizer)")
    names: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            names.update(fh.keys())
    return names


def skipped_names(names: set[str], num_hidden_layers: int, num_nextn_predict_layers: int) -> set[str]:
    """The subset of ``names`` that loading deliberately ignores (see the module docstring)."""
    out = {n for n in names if _BUFFER_NAMES.search(n)}
    if num_nextn_predict_layers > 0:
        for n in names:
            m = _LAYER.match(n)
            if n.startswith("model.mtp.") or (m and int(m.group(1)) >= num_hidden_layers):
                out.add(n)
    return out


def compare_names(expected: set[str], found: set[str], where: str) -> None:
    """Raises ValueError listing missing (expected, not found) and unexpected names."""
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if not missing and not unexpected:
        return

    def listing(label: str, items: list[str]) -> str:
        shown = ", ".join(items[:_MAX_LISTED])
        more = f" … and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
        return f"\n  {label} ({len(items)}): {shown}{more}"

    raise ValueError(f"{where}: the checkpoint's weights do not match the model"
                     + (listing("missing weights", missing) if missing else "")
                     + (listing("unexpected weights", unexpected) if unexpected else ""))


def check_loaded(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Compares the names stored under ``path`` with ``model``'s parameters under their checkpoint
    names (``model.checkpoint_state_dict()``: stacked experts split per expert), strictly."""
    if not Path(path).is_dir():
        # A hub id: transformers resolved it into its cache; the hub is unreachable in this
        # project, so this branch only runs for a pre-populated cache.  Say so, loudly.
        log.warning("ring_linear: %s is not a local directory; the strict weight-name check "
                    "was not run", path)
        return
    cfg = model.config
    found = checkpoint_names(path)
    skipped = skipped_names(found, cfg.num_hidden_layers, cfg.num_nextn_predict_layers)
    if skipped:
        log.warning("ring_linear: %d checkpoint tensors not modelled and skipped: %s", len(skipped),
                    ", ".join(sorted(skipped)[:10]) + (" …" if len(skipped) > 10 else ""))
    compare_names(set(model.checkpoint_state_dict()), found - skipped, str(path))


__all__ = ["checkpoint_names", "skipped_names", "compare_names", "check_loaded"]
