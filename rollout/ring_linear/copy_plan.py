"""The weight sync by direct copies: where every tensor the trainer sends lands in the plugin's
model, worked out once and reused by every sync.

vLLM's in-place ``reload_weights`` re-runs the model's ``load_weights`` layer by layer: a Python
weight loader per tensor, placeholders swapped in and out, each layer re-processed — most of a
sync's time on a GPU, for copies whose destinations never change (the trainer sends the same
names and shapes every time).  The plugin knows those destinations: a checkpoint tensor is one of
its parameters, or rows of a stacked expert weight (``StackedMoE.checkpoint_slot``), and under
tensor parallelism only this rank's pieces of it (:func:`.tensor_parallel.shard_pieces`).  A
:class:`CopyPlan` lists, for each piece, the source range (which sent tensor, which dimension,
which rows or columns) and the destination view of the parameter; a sync is then one
``torch._foreach_copy_`` of the sent tensors' pieces into those views, the same element copies
(and the same casts, when the sent dtype differs) that ``load_weights`` makes one by one — the
same bits in the engine.

The plan checks everything before it exists: a name the model does not have, a shape that does
not fit, a tensor missing from what was sent — each is one ``ValueError`` naming the tensor, and
since a plan is made before the first copy, a refused sync leaves the engine's weights as they
were.  Parameters shared by several modules (tied weights) stay tied: the copies write into the
parameter itself, never replace it (the reload path is what unties them).

No vLLM import here: the unit test builds plans on the trainer-side layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from models.ring_linear.moe import StackedMoE
from models.ring_linear.weight_names import skipped_names

from .tensor_parallel import shard_pieces

# (name, shape, dtype) of one sent tensor, in the order sent
TensorSpec = tuple[str, tuple[int, ...], torch.dtype]


@dataclass(frozen=True)
class CopyPlan:
    """Where each sent tensor's pieces go: piece k is ``narrow(dim, start, length)`` of sent
    tensor ``index`` (the whole tensor when ``dim`` is None), copied into ``destinations[k]``."""

    specs: tuple[TensorSpec, ...]
    sources: tuple[tuple[int, int | None, int, int], ...]  # (index, dim, start, length) per piece
    destinations: tuple[torch.Tensor, ...]  # views of the model's parameters, one per piece
    owners: tuple[tuple[nn.Module, str, nn.Parameter], ...]  # the parameters the views are of

    def still_valid(self) -> bool:
        """The views still belong to the model's parameters (nothing replaced a parameter
        object since the plan was made)."""
        return all(getattr(module, name) is param for module, name, param in self.owners)

    def copy(self, tensors: Sequence[torch.Tensor]) -> None:
        """The sent tensors (in the plan's order, shapes as planned) into the parameters."""
        sources = [tensors[i] if dim is None else tensors[i].narrow(dim, start, length)
                   for i, dim, start, length in self.sources]
        with torch.no_grad():
            torch._foreach_copy_(list(self.destinations), sources)


def checkpoint_destination(name: str, params: dict[str, nn.Parameter], stacked_moe) -> tuple[str, tuple] | None:
    """Where checkpoint tensor ``name`` lands in the plugin's model: (parameter name, index) —
    index (expert, first row, end row) into a stacked expert weight, or () for a parameter of
    the same name among ``params`` — or None. ``stacked_moe(path)``: the ``StackedMoE`` at a
    module path, or None. The loader (``load_weights``) and the copy plan both ask this."""
    path, _, rest = name.partition(".mlp.")
    moe = stacked_moe(f"{path}.mlp") if rest else None
    slot = moe.checkpoint_slot(rest) if moe is not None else None
    if slot is not None:
        stack, e, start, end = slot
        return f"{path}.mlp.{stack}", (e, start, end)
    return (name, ()) if name in params else None


def plan_copies(model: nn.Module, specs: Sequence[TensorSpec], config, rank: int = 0, size: int = 1) -> CopyPlan:
    """The copy plan of the tensors ``specs`` (whole checkpoint tensors, as every sender sends)
    into ``model``'s parameters on tensor-parallel rank ``rank`` of ``size``.  Raises ValueError
    naming the first tensor that does not fit (module docstring)."""
    params = dict(model.named_parameters())
    owner_of = {f"{path}.{name}".removeprefix("."): (module, name)
                for path, module in model.named_modules() for name, _ in module.named_parameters(recurse=False)}
    stacks = {path: m for path, m in model.named_modules() if isinstance(m, StackedMoE)}
    stacked = {f"{path}.{p}" for path in stacks for p in ("experts_w13", "experts_w2")}
    unstacked = {n: p for n, p in params.items() if n not in stacked}  # the stacks take expert names only
    expected = set(unstacked) | {n for path, m in stacks.items() for n in m.checkpoint_names(path)}

    sources, destinations, used, seen = [], [], {}, set()
    for index, (name, shape, _dtype) in enumerate(specs):
        if name in seen:
            raise ValueError(f"weight sync: {name} was sent twice")
        seen.add(name)
        where = checkpoint_destination(name, unstacked, stacks.get)
        if where is not None:
            target, at = where
            destination = params[target].data[at[0], at[1]:at[2]] if at else params[target].data  # views outside autograd
        elif skipped_names({name}, config.num_hidden_layers, config.num_nextn_predict_layers):
            continue  # what every loader skips (MTP heads, exported buffers)
        else:
            raise ValueError(f"weight sync: the trainer sent {name}, which the Ring-linear engine does not have "
                             "(do the trainer's and the engine's model configs match?)")
        pieces = shard_pieces(name, tuple(shape), config, rank, size)
        dim = pieces[0][0]
        local = list(shape)
        if local:
            local[dim] = sum(length for _, _, length in pieces)
        if tuple(local) != tuple(destination.shape):
            mine = f" (this rank's slice {local})" if size > 1 else ""
            raise ValueError(f"weight sync: {name} arrives as {list(shape)}{mine} but the engine's parameter is "
                             f"{list(destination.shape)} (do the trainer's and the engine's model configs match?)")
        offset = 0
        for dim, start, length in pieces:
            whole = len(pieces) == 1 and (not shape or (start == 0 and length == shape[dim]))
            sources.append((index, None, 0, 0) if whole else (index, dim, start, length))
            destinations.append(destination if whole else destination.narrow(dim, offset, length))
            offset += length
        used[target] = owner_of[target]
    missing = sorted(expected - seen)
    if missing:
        raise ValueError(f"weight sync: {len(missing)} of the engine's weights were not sent ({', '.join(missing[:8])}"
                         f"{', ...' if len(missing) > 8 else ''}); a sync sends every weight")
    owners = tuple((module, attr, getattr(module, attr)) for module, attr in used.values())
    return CopyPlan(tuple(specs), tuple(sources), tuple(destinations), owners)


__all__ = ["CopyPlan", "TensorSpec", "checkpoint_destination", "plan_copies"]
