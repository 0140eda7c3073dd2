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
        count = 0

        def tensors():
            nonlocal count
            for blob in blobs:
                for name, tensor in load(blob).items():
                    count += 1
                    yield name, tensor

        self.reload_weights(weights_iterator=tensors())
        return count
