"""vLLM worker extension: receives the trainer's weights in place, without restarting the engine.

Loaded into every vLLM worker process through `worker_extension_cls`; its methods are called
with `LLM.collective_rpc`. Tensors do not survive RPC arguments (they arrive as lists). On CPU
the weights travel as safetensors bytes, one blob per bucket, each checked against its sha256; on
a GPU shared with the trainer they stay on the device: CUDA IPC handles of the trainer's weight
buckets, each checked by a checksum computed on the device (`kernels.weight_buckets`); from a
trainer elsewhere (split placement) they arrive by a broadcast over a process group of the trainer
and the engines' workers (`kernels.weight_broadcast`: NCCL on GPUs, Gloo on CPU), each bucket's
checksum verified before it is loaded. An engine split over devices (rollout.tensor_parallel_size)
has one worker per rank: each takes every tensor by whichever path, and the model's `load_weights`
keeps the rank's slice (`rollout.ring_linear.tensor_parallel`).

Every transport ends in one of two loads. The Ring-linear plugin's model copies the tensors
straight into its parameters (`copy_weights`: a copy plan made at the first sync and reused,
`rollout.ring_linear.copy_plan`), every bucket verified before the first copy; any other model
(vLLM's own: Qwen2, ...) goes through vLLM's layer-wise in-place `reload_weights`. Which one ran
is logged once and reported with each sync (`lockstep_sync_report`, the `sync/direct_copy` metric).
"""

from __future__ import annotations

import hashlib
import logging
import time

logger = logging.getLogger(__name__)

# vLLM's in-place reload logs "<Layer>: Failed to load weights" for every layer that received
# no tensor. Two kinds never receive one, by design, and would warn at every weight sync:
# layers holding only a computed, non-persistent buffer (RotaryEmbedding's cos/sin table, in no
# checkpoint) — vLLM puts the old buffer back, which is right — and the members of tied groups
# that the checkpoint names through their partner (a tied ParallelLMHead: only the embedding is
# sent) — `retie` below points them at the loaded tensor. Those records are dropped; any other
# layer's still shows, and the sync probe checks the engine's weights either way.
RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


class WeightReceiver:
    def lockstep_load_buckets(self, blobs: list[bytes], digests: list[str]) -> int:
        """Verifies and loads all buckets in one in-place load; returns the tensor count.

        One load for all buckets: vLLM fuses checkpoint tensors (q/k/v → qkv) while loading,
        so a bucket boundary inside such a group must not end a reload."""
        from safetensors.torch import load

        start = time.perf_counter()
        for i, (blob, digest) in enumerate(zip(blobs, digests, strict=True)):
            got = hashlib.sha256(blob).hexdigest()
            if got != digest:
                raise ValueError(f"weight bucket {i}: sha256 {got[:12]} != sent {digest[:12]} (corrupted in transfer)")
        return self._load_in_place(((name, t) for blob in blobs for name, t in load(blob).items()), start)

    def lockstep_load_device_buckets(self, payload: bytes) -> int:
        """The GPU path: opens the trainer's device buckets (a pickled list of
        `kernels.weight_buckets.DeviceBucket`, CUDA IPC handles into the trainer's memory on this
        GPU), verifies each bucket's checksum on the device and loads all of them in one
        in-place reload; returns the tensor count. Nothing is copied through host memory."""
        import pickle

        import torch

        from kernels.weight_buckets import bucket_tensors, open_bucket

        start = time.perf_counter()
        opened = [(open_bucket(b), b) for b in pickle.loads(payload)]  # every checksum before any copy
        count = self._load_in_place((name_tensor for buffer, b in opened for name_tensor in bucket_tensors(buffer, b)),
                                    start)
        torch.cuda.synchronize()  # the copies out of the trainer's buckets are done before it frees them
        del opened
        return count

    def lockstep_join_weight_group(self, host: str, port: int, first_rank: int, world_size: int) -> str:
        """Joins the trainer's weight-broadcast group (`kernels.weight_broadcast`) as rank
        `first_rank` + this worker's rank in the engine (the previous group left); returns once
        every member has joined. Returns the backend: NCCL on a GPU, Gloo on CPU."""
        from kernels.weight_broadcast import WeightGroup, join_store

        self.lockstep_leave_weight_group()
        store = join_store(host, port, world_size)
        self.lockstep_weight_group = WeightGroup(store, first_rank + self.rank, world_size, self.device)
        return self.lockstep_weight_group.backend

    def lockstep_worker_rank(self) -> int:
        return self.rank

    def lockstep_leave_weight_group(self) -> None:
        group = getattr(self, "lockstep_weight_group", None)
        if group is not None:
            group.close()
        self.lockstep_weight_group = None

    def lockstep_receive_broadcast(self, plan: bytes) -> int:
        """Receives trainer rank 0's broadcast (a pickled list of `BucketPlan`), each bucket's
        checksum verified before its tensors are loaded, all in one in-place reload; returns the
        tensor count. A failure anywhere still takes every bucket off the group before it is
        raised, so the trainer and the other engines finish the broadcast."""
        import pickle

        from kernels.weight_broadcast import BucketReceiver

        group = getattr(self, "lockstep_weight_group", None)
        if group is None:
            raise RuntimeError("weight broadcast: this engine worker is in no weight group")
        receiver = BucketReceiver(group, pickle.loads(plan))
        try:
            return self._load_in_place(receiver.tensors(), time.perf_counter())
        finally:
            receiver.drain()

    def lockstep_use_direct_copy(self, enabled: bool) -> bool:
        """Chooses the load for the next syncs: direct copies (the default, where the model has
        `copy_weights`) or vLLM's reload (`enabled` False: the benchmark and the test that
        compare the two). Returns whether direct copies will run."""
        self.lockstep_direct_copy = enabled
        return self._direct_copy(self.model_runner.get_model())

    def lockstep_sync_report(self) -> dict:
        """The last sync's load: `direct_copy` (bool), `verify_s` (checksums, and taking the
        tensors out of the buckets: deserialising on the host path, receiving on the broadcast) and `load_s` (the copies or the reload), seconds in this worker."""
        return dict(getattr(self, "lockstep_last_sync", {}))

    def lockstep_parameter_sha256(self) -> dict[str, str]:
        """sha256 of every engine parameter's bytes, by name (comparing two engines' or two
        syncs' weights bit for bit)."""
        import torch

        model = self.model_runner.get_model()
        return {name: hashlib.sha256(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
                .hexdigest() for name, p in model.named_parameters()}

    def _direct_copy(self, model) -> bool:
        return getattr(self, "lockstep_direct_copy", True) and hasattr(model, "copy_weights")

    def _load_in_place(self, named_tensors, start: float) -> int:
        """Direct copies when the model can take them, else vLLM's reload (module docstring).
        The direct path takes every tensor first (each bucket verified as it arrives), so a
        refused sync copies nothing; `start`: when this sync's verification began."""
        model = self.model_runner.get_model()
        direct = self._direct_copy(model)
        if not getattr(self, "lockstep_path_logged", False):
            logger.info("weight sync into %s: %s", type(model).__name__,
                        "direct copies into its parameters (a copy plan, no vLLM reload)" if direct
                        else "vLLM's layer-wise in-place reload_weights")
            self.lockstep_path_logged = True
        if direct:
            tensors = list(named_tensors)
            verified = time.perf_counter()
            count = model.copy_weights(tensors)
        else:
            verified = time.perf_counter()  # the reload verifies each bucket as it takes its tensors
            count = self._reload_in_place(named_tensors)
        if str(getattr(self, "device", "cpu")).startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        self.lockstep_last_sync = {"direct_copy": direct, "verify_s": verified - start,
                                   "load_s": time.perf_counter() - verified}
        return count

    def _reload_in_place(self, named_tensors) -> int:
        """One in-place reload of every (name, tensor); re-ties tied parameters. Returns how many
        distinct names were loaded."""
        loaded: set[str] = set()

        def tensors():
            for name, tensor in named_tensors:
                loaded.add(name)
                yield name, tensor

        model = self.model_runner.get_model()
        tied = shared_parameters(model)
        expected = ExpectedUnloaded(model, tied)
        reload_log = logging.getLogger(RELOAD_LOGGER)
        reload_log.addFilter(expected)
        try:
            self.reload_weights(weights_iterator=tensors())
        finally:
            reload_log.removeFilter(expected)
        retie(tied, loaded)
        return len(loaded)

    def lockstep_fp8_projections(self) -> int:
        """How many of the engine model's weight matrices run as FP8 GEMMs (``model.fp8``)."""
        from kernels.fp8 import fp8_projection_count

        return fp8_projection_count(self.model_runner.get_model())


class ExpectedUnloaded(logging.Filter):
    """Drops vLLM's "Failed to load weights" records of the layers that receive no tensor by
    design (module comment): those with no parameter of their own and only non-persistent
    buffers, and tied-group members."""

    def __init__(self, model, tied_groups):
        super().__init__()
        self.classes = {type(m).__name__ for group in tied_groups for _, m, _ in group}
        for module in model.modules():
            buffers = dict(module.named_buffers(recurse=False))
            if (buffers and not any(True for _ in module.parameters(recurse=False))
                    and all(name in module._non_persistent_buffers_set for name in buffers)):
                self.classes.add(type(module).__name__)

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "%s: Failed to load weights" and record.args and record.args[0] in self.classes)


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
