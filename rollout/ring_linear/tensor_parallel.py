"""Tensor parallelism for the Ring-linear rollout model: which slice of every checkpoint tensor
each of ``size`` ranks holds, in plain torch (no vLLM: the unit tests check it against the
unsharded layers, and the plugin's ``load_weights`` applies it to every tensor it receives, the
first load and each in-place weight sync alike, so every transport hands each rank its slice).

The split (Megatron's: one all-reduce after each attention and each MLP, none inside them):

* **Linear attention** — heads split: rank r holds heads ``[r·H/n, (r+1)·H/n)``.  The fused
  ``query_key_value [3·H·d, D]`` is three blocks (q, k, v), so each block is sliced by heads, not
  the fused row range.  ``g_proj``'s rows and ``g_norm``'s weight follow the heads; ``g_norm`` is
  an RMSNorm over ``group_norm_size`` groups of ``H·d/groups`` channels, so a rank holds whole
  groups only when ``n`` divides ``group_norm_size`` (it then normalises ``groups/n`` groups, the
  same ones).  The per-head decay slopes are sliced to the rank's heads (the plugin), and the
  state cache holds only those heads (vLLM sizes it ``H/n``).  ``dense [D, H·d]`` is row-parallel:
  the rank's columns, its partial output summed over ranks.
* **Softmax (GQA) attention** — query heads split as above; KV heads split when ``n`` divides
  them, else replicated (``KV < n``: every rank holds the one KV head its query heads use,
  ``n/KV`` ranks hold each).  ``dense`` row-parallel.
* **MLPs and experts** — every rank holds a slice of every expert's intermediate width (gate and
  up rows, down columns), the shared expert and the dense MLPs likewise; each rank routes every
  token itself (the router and its bias replicated: the same routing as the trainer, no token
  exchange), computes its slice of every chosen expert, and the layer's partial outputs are
  summed over ranks.  Why not experts split by rank: a rank would idle or overflow with the
  routing's imbalance, and it needs a token exchange; slicing the width costs one all-reduce
  per layer (which the attention output needs anyway) and balances exactly.
* **Embedding and LM head** — replicated: the logits stay the trainer's single
  ``logits_fp32`` GEMM over the whole vocabulary (no gather of vocabulary slices); at Ring-mini's
  157 k × 2048 that is 0.6 GiB per bf16 matrix per rank.
* Norms, the q/k norms and the router: replicated.

The sums over ranks change the order of the partial sums (fast mode's bound, not strict mode's
bits: strict mode with more than one rank is refused).
"""

from __future__ import annotations

import copy
import re

import torch

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# which dimension of a weight its slice is taken on (0: rows, output features; 1: columns, input features)
_MLP_ROWS = ("gate_proj.weight", "up_proj.weight")
_MLP_COLUMNS = ("down_proj.weight",)


def check_tensor_parallel(config, size: int) -> None:
    """Raises ValueError naming the first model field that ``size`` ranks cannot split."""
    if size <= 1:
        return
    H, KV = config.num_attention_heads, config.num_key_value_heads
    shared = config.moe_shared_expert_intermediate_size * config.num_shared_experts
    needs = [
        ("num_attention_heads", H, H % size == 0),
        ("num_key_value_heads", KV, KV % size == 0 or size % KV == 0),
        ("group_norm_size", config.group_norm_size, config.group_norm_size % size == 0),
        ("intermediate_size", config.intermediate_size, config.intermediate_size % size == 0),
        ("moe_intermediate_size", config.moe_intermediate_size, config.moe_intermediate_size % size == 0),
        ("moe_shared_expert_intermediate_size × num_shared_experts", shared, shared % size == 0),
    ]
    for field, value, ok in needs:
        if not ok:
            how = "divide or be divided by" if field == "num_key_value_heads" else "be divisible by"
            raise ValueError(f"rollout.tensor_parallel_size={size} cannot split this model: its {field}={value} "
                             f"must {how} {size}; choose a tensor_parallel_size that does")


def check_fp8_blocks(config, size: int, block: int) -> None:
    """With ``model.fp8`` the weights are quantized in ``block``×``block`` tiles and activations in
    1×``block`` tiles: a rank's slice must be whole tiles, else its tiles (and scales) are not the
    trainer's.  Raises ValueError naming the first width that is not."""
    if size <= 1:
        return
    widths = [
        ("num_attention_heads×head_dim", config.num_attention_heads * config.head_dim),
        ("intermediate_size", config.intermediate_size),
        ("moe_intermediate_size", config.moe_intermediate_size),
        ("moe_shared_expert_intermediate_size", config.moe_shared_expert_intermediate_size),
    ]
    for field, width in widths:
        if (width // size) % block:
            raise ValueError(f"model.fp8 with rollout.tensor_parallel_size={size}: each rank would hold "
                             f"{width // size} of {field}={width}, not a multiple of the FP8 block {block}, so its "
                             "quantization tiles would differ from the trainer's; use a smaller "
                             "tensor_parallel_size or model.fp8.enabled=false")


def local_config(config, size: int):
    """A copy of the model config with one rank's MLP widths (``intermediate_size``,
    ``moe_intermediate_size``, the shared expert's): the plugin builds its MLP and MoE modules
    from it.  Head counts stay global (the attention layers slice them themselves)."""
    if size <= 1:
        return config
    local = copy.copy(config)
    local.intermediate_size = config.intermediate_size // size
    local.moe_intermediate_size = config.moe_intermediate_size // size
    local.moe_shared_expert_intermediate_size = config.moe_shared_expert_intermediate_size // size
    return local


def head_slice(heads: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s contiguous share of ``heads`` heads."""
    per = heads // size
    return slice(rank * per, (rank + 1) * per)


def kv_head_slice(kv_heads: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s KV heads: split when ``size`` divides them, else the one KV head its query
    heads use (query head h reads KV head ``h // (H/KV)``; rank r's H/size query heads all read
    KV head ``r // (size/KV)``)."""
    if kv_heads % size == 0:
        return head_slice(kv_heads, rank, size)
    first = rank // (size // kv_heads)
    return slice(first, first + 1)


def _rows_of_heads(block: torch.Tensor, heads: slice, head_dim: int) -> torch.Tensor:
    return block[heads.start * head_dim:heads.stop * head_dim]


def shard(name: str, tensor: torch.Tensor, config, rank: int, size: int) -> torch.Tensor:
    """Rank ``rank``'s slice of the checkpoint tensor ``name`` (the whole tensor where it is
    replicated).  Names are the checkpoint's (``model.layers.{i}.attention.query_key_value.weight``,
    ``model.layers.{i}.mlp.experts.{e}.up_proj.weight``, …)."""
    if size <= 1:
        return tensor
    match = _LAYER.match(name)
    if match is None:  # embedding, final norm, LM head: replicated
        return tensor
    layer, rest = int(match.group(1)), match.group(2)
    H, d = config.num_attention_heads, config.head_dim
    heads = head_slice(H, rank, size)
    if rest.startswith("attention."):
        part = rest.removeprefix("attention.")
        if part == "query_key_value.weight":
            if config.is_softmax_layer(layer):
                KV = config.num_key_value_heads
                q, k, v = tensor.split([H * d, KV * d, KV * d])
                kv = kv_head_slice(KV, rank, size)
                return torch.cat((_rows_of_heads(q, heads, d), _rows_of_heads(k, kv, d), _rows_of_heads(v, kv, d)))
            return torch.cat([_rows_of_heads(block, heads, d) for block in tensor.chunk(3)])
        if part in ("g_proj.weight", "g_norm.weight"):
            return _rows_of_heads(tensor, heads, d)
        if part == "dense.weight":
            return tensor[:, heads.start * d:heads.stop * d]
        return tensor  # q/k norms: per head_dim, replicated
    if rest.startswith("mlp.") and not rest.startswith("mlp.gate."):  # the router: replicated
        if rest.endswith(_MLP_ROWS):
            return tensor.chunk(size, dim=0)[rank]
        if rest.endswith(_MLP_COLUMNS):
            return tensor.chunk(size, dim=1)[rank]
    return tensor


def shard_pieces(name: str, shape: tuple[int, ...], config, rank: int, size: int) -> list[tuple[int, int, int]]:
    """:func:`shard` as index ranges, for copying without building the slice: rank ``rank``'s
    slice of the tensor ``name`` of ``shape`` is the concatenation, along ``dim``, of the
    pieces ``(dim, start, length)`` (one piece, the whole tensor, where it is replicated).  The
    weight sync's copy plan (:mod:`.copy_plan`) copies each piece straight into its rows of the
    destination; a unit test checks the pieces against :func:`shard` for every tensor."""
    whole = [(0, 0, shape[0])] if shape else [(0, 0, 1)]
    match = _LAYER.match(name) if size > 1 else None
    if match is None:
        return whole
    layer, rest = int(match.group(1)), match.group(2)
    H, d = config.num_attention_heads, config.head_dim
    heads = head_slice(H, rank, size)

    def rows(first: int, head: slice) -> tuple[int, int, int]:
        return 0, first + head.start * d, (head.stop - head.start) * d

    if rest.startswith("attention."):
        part = rest.removeprefix("attention.")
        if part == "query_key_value.weight":
            if config.is_softmax_layer(layer):
                KV = config.num_key_value_heads
                kv = kv_head_slice(KV, rank, size)
                return [rows(0, heads), rows(H * d, kv), rows((H + KV) * d, kv)]
            return [rows(block * H * d, heads) for block in range(3)]
        if part in ("g_proj.weight", "g_norm.weight"):
            return [rows(0, heads)]
        if part == "dense.weight":
            return [(1, heads.start * d, (heads.stop - heads.start) * d)]
        return whole
    if rest.startswith("mlp.") and not rest.startswith("mlp.gate."):
        for dim, names in ((0, _MLP_ROWS), (1, _MLP_COLUMNS)):
            if rest.endswith(names):
                per = shape[dim] // size
                return [(dim, rank * per, per)]
    return whole


__all__ = ["check_tensor_parallel", "check_fp8_blocks", "local_config", "head_slice", "kv_head_slice", "shard",
           "shard_pieces"]
