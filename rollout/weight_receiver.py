"""vLLM worker extension: receives the trainer's weights in place, without restarting the engine.

Loaded into every vLLM worker process through `worker_extension_cls`; its methods are called
with `LLM.collective_rpc`. Tensors do not survive RPC arguments (they arrive as lists), so
weights travel as safetensors bytes, one blob per bucket, each checked against its sha256.
"""

from __future__ import annotations

import hashlib


class WeightReceiver:
    def lockstep_load_buckets(self, blobs: list[bytes], digests: list[str]) -> int:
        """Verifies and loads all buckets in one in-place reload; returns the tensor count.

        One reload for all buckets: vLLM fuses checkpoint tensors (q/k/v → qkv) while loading,
        so a bucket boundary inside such a group must not end a reload."""
        from safetensors.torch import load

        for i, (blob, digest) in enumerate(zip(blobs, digests, strict=True)):
            got = hashlib.sha256(blob).hexdigest()
            if got != digest:
                raise ValueError(f"weight bucket {i}: sha256 {got[:12]} != sent {digest[:12]} (corrupted in transfer)")
        loaded: set[str] = set()

        def tensors():
            for blob in blobs:
                for name, tensor in load(blob).items():
                    loaded.add(name)
                    yield name, tensor

        model = self.model_runner.get_model()
        tied = shared_parameters(model)
        self.reload_weights(weights_iterator=tensors())
        retie(tied, loaded)
        return len(loaded)

    def lockstep_fp8_projections(self) -> int:
        """How many of the engine model's weight matrices run as FP8 GEMMs (``model.fp8``)."""
        from kernels.fp8 import fp8_projection_count

        return fp8_projection_count(self.model_runner.get_model())


def shared_parameters(model) -> list[list[tuple[str, object, str]]]:
    """Groups of (module path, module, parameter name) that hold one Parameter object, e.g. a
    tied LM head and embedding."""
    owners: dict[int, list] = {}
    for path, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), []).append((path, module, name))
    return [group for group in owners.values() if len(group) > 1]


def retie(groups, loaded: set[str]) -> None:
    """vLLM's in-place reload re-materialises each layer; a layer that received no tensors (the
    tied LM head: checkpoints carry only the embedding) gets its *old* tensors back, silently
    untying it — and on CPU its prepacked GEMM copy of the weight stays old too. Point every
    member of a tied group at the loaded parameter, then redo the members' post-load
    processing (which rebuilds such packed copies)."""
    for group in groups:
        sources = [(m, n) for path, m, n in group if f"{path}.{n}".removeprefix(".") in loaded]
        if not sources:
            continue
        param = getattr(sources[0][0], sources[0][1])
        for _, module, name in group:
            if (module, name) in sources:
                continue
            setattr(module, name, param)
            quant_method = getattr(module, "quant_method", None)
            if quant_method is not None:
                quant_method.process_weights_after_loading(module)
