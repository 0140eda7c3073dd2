"""TrainerRank: one DeepSpeed ZeRO rank, run as a Ray actor.

Owns the training model on its device, computes trainer log-probs of rollout tokens, applies the
policy-gradient update (or a supervised step for the SFT warm start), hands out its weights in
buckets for the rollout engine, and saves/loads DeepSpeed checkpoints plus a Hugging Face export.
All ranks of a group receive the same calls (collectives inside); rank 0 also answers for the group.
It is built from a `trainer.config.TrainerSetup`, takes `trainer.batch` types and returns them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from kernels.batch_invariant import cuda as strict_cuda
from trainer import losses
from trainer.batch import SFTStepStats, TokenLogprobs, TrainBatch, TrainSample, UpdateResult, UpdateStats
from trainer.config import LossConfig, TrainerSetup
from trainer.logprobs import pack, pack_flat, token_logprobs, use_fp32_lm_head
from trainer.native_ops import use_install_build_dir
from trainer.packing import PACKING_TOLERANCE, packed_forward_mismatch, plan_packs

log = logging.getLogger("lockstep.trainer")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def use_fp8(model: torch.nn.Module, options: dict, cache_weights: bool = False) -> None:
    """The recipe's ``model.fp8`` on the training model: every projection and expert of the
    decoder runs as FP8 GEMMs (forward, dgrad, wgrad; ``kernels.fp8.FP8Linear``) — the same
    switch the rollout plugin makes, so both quantize identically. The LM head stays out (fp32
    logits, DESIGN §4); the router and the norms are not projections. Only the Ring-linear
    model: its rollout runs Lockstep's layers (the driver refuses other models up front).
    ``cache_weights``: each weight quantized once per optimizer step (the trainer clears the
    caches after every step and load; not under ZeRO-3, where it would hold a full quantized
    copy of every partitioned weight: ``kernels/fp8/weight_cache.py``)."""
    from kernels.fp8 import swap_linears_to_fp8
    from models.ring_linear.fp8_inputs import fuse_fp8_inputs
    from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM

    if not isinstance(model, BailingMoeLinearV2ForCausalLM):
        raise ValueError(f"model.fp8: only the Ring-linear model runs FP8 in both engines; "
                         f"got {type(model).__name__}")
    switched = swap_linears_to_fp8(model.get_decoder(), **options, cache_weights=cache_weights)
    fuse_fp8_inputs(model.get_decoder())  # as the rollout engine's model does
    log.info("model.fp8: %d projections run as FP8 GEMMs (%s)", len(switched), options)


def use_strict_mode(model: torch.nn.Module) -> None:
    """The recipe's ``mode: strict`` on the training model: its layers run the batch-invariant
    ops (``models.ring_linear.strict.use_strict``), as the rollout plugin's do.  Ring-linear only:
    the driver refuses other models up front, whose rollout runs vLLM's own kernels."""
    from models.ring_linear.strict import use_strict
    from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM

    if not isinstance(model, BailingMoeLinearV2ForCausalLM):
        raise ValueError(f"mode: strict runs on the Ring-linear model only; got {type(model).__name__}")
    log.info("mode: strict: %d layers run batch-invariant ops", use_strict(model))


@dataclass(frozen=True)
class TrainerInfo:
    """What a rank reports once its engine is up."""

    rank: int
    world_size: int
    device: str
    # Train mode computes what eval mode does (no active dropout): the training forward's
    # log-probs are the policy's.
    train_forward_is_eval_forward: bool
    fp8_projections: int  # weight matrices run as FP8 GEMMs (model.fp8; 0 when off)
    # A recipe setting this model cannot run (the rank stopped building): the driver stops with
    # this line instead of a remote traceback.
    refusal: str | None = None


@dataclass(frozen=True)
class WeightBucket:
    """Part of the weights as safetensors bytes in Ray's object store."""

    ref: object  # ray.ObjectRef of the bytes
    sha256: str
    tensors: int


@dataclass(frozen=True)
class DeviceWeights:
    """The full weights in device buckets on this rank's GPU, for the engine on the same GPU."""

    payload: bytes  # the pickled list of kernels.weight_buckets.DeviceBucket (CUDA IPC handles)
    buckets: int
    tensors: int
    bytes: int


class TrainerRank:
    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int, setup: TrainerSetup):
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK="0")
        cfg = setup.config
        if cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        use_install_build_dir()  # before DeepSpeed loads its shm op: built once per install
        import deepspeed
        from transformers import AutoModelForCausalLM

        self.rank, self.world_size, self.cfg, self.setup = rank, world_size, cfg, setup
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        deepspeed.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo")
        torch.manual_seed(setup.seed)
        self.dtype = DTYPES[setup.dtype]
        model = AutoModelForCausalLM.from_pretrained(setup.model_path, dtype=self.dtype)
        self.refusal = None
        if cfg.pack_tokens:
            try:
                check_packing(model, self.dtype)
            except PackingRefused as why:
                self.refusal = str(why)
                return
        if setup.fp8 is not None:
            use_fp8(model, setup.fp8, cache_weights=cfg.zero_stage < 3)
        if setup.strict:
            use_strict_mode(model)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        use_fp32_lm_head(model, strict=setup.strict)
        self.model_config = model.config
        self.train_forward_is_eval_forward = not has_active_dropout(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=setup.lr, betas=tuple(cfg.betas),
                                      weight_decay=cfg.weight_decay)
        warmup = max(1, cfg.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        self.micro_batches = setup.micro_batches_per_step
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
            "gradient_accumulation_steps": setup.micro_batches_per_step,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": self.dtype == torch.bfloat16},
            "fp16": {"enabled": self.dtype == torch.float16},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=ds_config)
        self.sync_buffers: list[torch.Tensor] = []  # device weight buckets in flight (GPU sync)
        self.dropped_nonfinite = False  # the last update's gradients were dropped as NaN/Inf (ZeRO-0)
        self.reference = None
        if setup.use_reference:
            reference = AutoModelForCausalLM.from_pretrained(setup.model_path, dtype=self.dtype)
            self.reference = reference.to(self.device).eval()
            if setup.fp8 is not None:  # the reference computes as the policy did at step 0
                use_fp8(self.reference, setup.fp8, cache_weights=True)  # frozen: quantized once
            if setup.strict:
                use_strict_mode(self.reference)
            use_fp32_lm_head(self.reference, strict=setup.strict)
            self.reference.requires_grad_(False)

    # ----------------------------------------------------------------------------------------
    # Log-probs

    def _micro_batches(self, prompts: list[list[int]], completions: list[list[int]]):
        """Yields (sample indices, their forward's batch) per micro-batch. Padded: runs of
        `micro_batch_size` samples in order, each padded to its longest. Packed
        (`trainer.pack_tokens`): packs of ≤ pack_tokens tokens in one row; every rank runs as
        many forwards as the rank with the most packs (ZeRO's collectives run per forward and
        per backward), a rank with fewer runs empty ones (one pad token, nothing in the loss)."""
        if not self.cfg.pack_tokens:
            size = self.cfg.micro_batch_size
            for i in range(0, len(prompts), size):
                idx = list(range(i, min(i + size, len(prompts))))
                yield idx, pack([prompts[j] for j in idx], [completions[j] for j in idx])
            return
        plan = plan_packs([len(p) + len(c) for p, c in zip(prompts, completions)], self.cfg.pack_tokens)
        if self.world_size > 1:
            count = torch.tensor([len(plan)], device=self.device)
            torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
            plan += [[] for _ in range(int(count) - len(plan))]
        for idx in plan:
            if not idx:  # one pad token, counted as padding
                yield idx, replace(pack_flat([[0]], [[]]), padded_tokens=1)
                continue
            yield idx, pack_flat([prompts[j] for j in idx], [completions[j] for j in idx])

    def _sample_batches(self, samples: list[TrainSample]):
        return self._micro_batches([s.prompt_ids for s in samples], [s.completion_ids for s in samples])

    def _set_boundary(self, k: int, count: int) -> None:
        """Packed micro-batches vary in number from step to step, so the accumulation boundary
        (gradient reduction and optimiser step) is the last one, not DeepSpeed's fixed count."""
        if self.cfg.pack_tokens:
            self.engine.set_gradient_accumulation_boundary(k == count - 1)

    @torch.no_grad()
    def compute_logprobs(self, samples: list[TrainSample], with_entropy: bool = True) -> list[TokenLogprobs]:
        """Trainer log-probs (and entropies) of each sample's completion tokens, current weights."""
        self.engine.module.eval()
        out: list[TokenLogprobs | None] = [None] * len(samples)
        for idx, batch in self._sample_batches(samples):
            logp, ent = token_logprobs(self.engine.module, batch, self.setup.temperature, with_entropy)
            for i, j in enumerate(idx):
                n = len(samples[j].completion_ids)
                out[j] = TokenLogprobs(logp[i, :n].tolist(), [] if ent is None else ent[i, :n].tolist())
        return out

    @torch.no_grad()
    def reference_logprobs(self, samples: list[TrainSample]) -> list[list[float]]:
        out: list[list[float] | None] = [None] * len(samples)
        for idx, batch in self._sample_batches(samples):
            logp, _ = token_logprobs(self.reference, batch, self.setup.temperature)
            for i, j in enumerate(idx):
                out[j] = logp[i, : len(samples[j].completion_ids)].tolist()
        return out

    @torch.no_grad()
    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        """Log-prob of each token of `token_ids` after the first (teacher forcing): the sync probe."""
        self.engine.module.eval()
        batch = pack([token_ids[:1]], [token_ids[1:]])
        logp, _ = token_logprobs(self.engine.module, batch)
        return logp[0, : len(token_ids) - 1].tolist()

    # ----------------------------------------------------------------------------------------
    # Updates

    def set_loss(self, loss: LossConfig) -> None:
        """Train the next steps with another loss (the recipe's `algorithm` section): the
        weights, optimiser state and step counter stay as they are."""
        self.setup = dataclasses.replace(self.setup, loss=loss)

    def train_step(self, batch: TrainBatch) -> UpdateResult:
        """One optimiser step over this rank's share of a mini-batch, in `self.micro_batches`
        micro-batches. The loss of each micro-batch is Σ token terms / `batch.normaliser` (the
        whole mini-batch's, over all ranks) × world × GAS, which undoes DeepSpeed's averaging
        over ranks and accumulation steps: the update is exactly the mini-batch aggregate.

        Returns the sums for the metrics and each sample's log-probs and entropies from the
        training forward. Every micro-batch's forward runs before the one optimiser step
        (DeepSpeed steps at the accumulation boundary), so these are the log-probs of the
        weights that sampled the batch when this is the step's only update: the mismatch
        metrics' b_t and, with `old_logprobs=None`, the recomputed old log-probs themselves
        (detached), with no separate pass. The model must be deterministic in train mode for
        that (`TrainerInfo.train_forward_is_eval_forward`: no active dropout)."""
        loss_cfg, samples = self.setup.loss, batch.samples
        if loss_cfg is None:
            raise RuntimeError("train_step: this engine was set up without a loss (a supervised engine)")
        given = {s.old_logprobs is not None for s in samples}
        if len(given) != 1:
            raise RuntimeError("train_step: old_logprobs must be given for every sample or for none")
        from_forward = not given.pop()  # the old log-probs are this forward's, detached
        if from_forward and not self.train_forward_is_eval_forward:
            raise RuntimeError("train_step without old_logprobs needs a model without active dropout: "
                               "its training forward is not the policy's log-prob")
        self.engine.module.train()
        micro = list(self._sample_batches(samples))
        if not self.cfg.pack_tokens and len(micro) != self.micro_batches:
            raise RuntimeError(f"rank {self.rank}: {len(micro)} micro-batches, "
                               f"engine expects {self.micro_batches}")
        correction = losses.CORRECTIONS[loss_cfg.correction]
        kl_fn = losses.KL_ESTIMATORS[loss_cfg.kl_estimator]
        stats = UpdateStats()
        rows: list[TokenLogprobs | None] = [None] * len(samples)
        # × micro_batches undoes DeepSpeed's division by its accumulation count, whatever the
        # number of micro-batches this step actually runs (packed: it varies)
        scale = self.world_size * self.micro_batches / max(batch.normaliser, 1.0)
        skipped_before, nonfinite_loss = self.engine.skipped_steps, False
        for k, (idx, packed) in enumerate(micro):
            chunk = [samples[j] for j in idx] or [_EMPTY_SAMPLE]
            self._set_boundary(k, len(micro))
            logp, entropy = token_logprobs(self.engine.module, packed, self.setup.temperature,
                                           with_entropy=True)
            device = logp.device
            weights = torch.tensor([s.weight for s in chunk], device=device)[:, None]
            mask = packed.completion_mask.to(device) * weights
            old = logp.detach() if from_forward else \
                _pad([s.old_logprobs for s in chunk], logp.shape).to(device)
            rollout = _pad([s.rollout_logprobs for s in chunk], logp.shape).to(device)
            adv = torch.tensor([s.advantage for s in chunk], device=device)[:, None].expand_as(logp)
            pg, clipped = losses.clipped_policy_loss(logp, old, adv, loss_cfg.clip_low, loss_cfg.clip_high)
            weight = correction(old, rollout, loss_cfg.correction_low, loss_cfg.correction_high)
            per_token = pg * weight
            kl = torch.zeros_like(logp)
            if chunk[0].ref_logprobs is not None:
                kl = kl_fn(logp, _pad([s.ref_logprobs for s in chunk], logp.shape).to(device))
                per_token = per_token + loss_cfg.kl_coef * kl
            if loss_cfg.entropy_coef != 0:
                per_token = per_token - loss_cfg.entropy_coef * entropy
            loss = losses.aggregate(per_token, mask, loss_cfg.loss_aggregation, 1.0) * scale
            nonfinite_loss |= not bool(torch.isfinite(loss))
            self.engine.backward(loss)
            if k == len(micro) - 1:  # the accumulation boundary: this engine.step() applies
                self._boundary_step(nonfinite_loss)
                self._weights_changed()
            else:
                self.engine.step()
            logp_rows, entropy_rows = logp.detach().tolist(), entropy.detach().tolist()
            for i, j in enumerate(idx):
                n = len(samples[j].completion_ids)
                rows[j] = TokenLogprobs(logp_rows[i][:n], entropy_rows[i][:n])
            stats.forward_tokens += packed.input_ids.numel()
            stats.padded_tokens += packed.padded_tokens
            m = mask.bool()
            stats.loss += loss.item() / (self.world_size * self.micro_batches)
            stats.pg_loss += (pg * weight)[m].sum().item()
            stats.kl += kl[m].sum().item()
            stats.entropy += entropy[m].sum().item()
            stats.clip_frac += clipped[m].float().sum().item()
            stats.correction_weight += weight[m].sum().item()
            stats.tokens += m.sum().item()
            if m.any():  # what the correction and the clip saw: ρ_t = exp(old − a_t), the PPO ratio
                rho, ppo = torch.exp(old - rollout)[m], torch.exp(logp.detach() - old)[m]
                stats += UpdateStats(
                    correction_masked=(weight[m] == 0).sum().item(),
                    correction_below=(rho < loss_cfg.correction_low).sum().item(),
                    correction_above=(rho > loss_cfg.correction_high).sum().item(),
                    correction_weight_max=weight[m].max().item(), correction_ratio_min=rho.min().item(),
                    correction_ratio_max=rho.max().item(), ppo_ratio_min=ppo.min().item(),
                    ppo_ratio_max=ppo.max().item())
        skipped = self.engine.skipped_steps > skipped_before or self.dropped_nonfinite
        # fp16's loss scaler skips steps whose scaled gradients overflow while it calibrates:
        # that is its normal working, not a non-finite update, unless the loss itself was.
        stats.skipped = float(skipped and (nonfinite_loss or self.dtype != torch.float16))
        grad_norm = self.engine.get_global_grad_norm()
        stats.grad_norm = math.inf if self.dropped_nonfinite else float(grad_norm or 0.0)
        stats.lr = self.engine.get_lr()[0]
        stats.strict_cuda_fallbacks_max = float(sum(strict_cuda.FALLBACKS.values()))
        return UpdateResult(stats, rows)

    def _boundary_step(self, nonfinite_loss: bool) -> None:
        """The optimiser step, a no-op when the loss or the gradients are NaN/Inf.
        DeepSpeed's ZeRO optimisers (stages 1–3, any dtype) and its bf16 and fp16 optimisers
        check the gradients themselves and skip such a step (`engine.skipped_steps`); fp32
        ZeRO-0 hands them to the torch optimiser, which would write NaN into every weight.
        There, all ranks agree (the flag is all-reduced) and drop their gradients: AdamW skips
        parameters without one, so weights and optimiser state stay as they were."""
        self.dropped_nonfinite = False
        if self.cfg.zero_stage != 0 or self.dtype != torch.float32:
            self.engine.step()
            return
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        bad = nonfinite_loss or any(not bool(torch.isfinite(g).all()) for g in grads)
        flag = torch.tensor([float(bad)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if not flag.item():
            self.engine.step()
            return
        for p in self.engine.module.parameters():
            p.grad = None
        self.dropped_nonfinite = True
        # Nothing to clip, and DeepSpeed's fp32 clip fails on a model without gradients.
        clip, self.engine._config.gradient_clipping = self.engine._config.gradient_clipping, 0.0
        try:
            self.engine.step()
        finally:
            self.engine._config.gradient_clipping = clip

    def _weights_changed(self) -> None:
        """The policy's weights may have changed (optimizer step, checkpoint load): FP8 weight
        quantizations cached before are stale (``kernels/fp8/weight_cache.py``: DeepSpeed's
        updates bump no version counter the cache could see)."""
        from kernels.fp8 import clear_fp8_weight_caches

        clear_fp8_weight_caches(self.engine.module)

    def sft_step(self, prompts: list[list[int]], targets: list[list[int]]) -> SFTStepStats:
        """Supervised step: cross-entropy of target tokens given their prompts (warm start)."""
        self.engine.module.train()
        total_tokens = sum(len(t) for t in targets)
        micro = list(self._micro_batches(prompts, targets))
        if not self.cfg.pack_tokens and len(micro) != self.micro_batches:
            raise RuntimeError(f"rank {self.rank}: {len(micro)} micro-batches, "
                               f"engine expects {self.micro_batches}")
        total = 0.0
        for k, (_, batch) in enumerate(micro):
            self._set_boundary(k, len(micro))
            logp, _ = token_logprobs(self.engine.module, batch)
            mask = batch.completion_mask.to(logp.device)
            nll = -(logp * mask).sum()
            self.engine.backward(nll * self.micro_batches / max(total_tokens, 1))
            self.engine.step()
            if k == len(micro) - 1:  # the accumulation boundary: the weights changed
                self._weights_changed()
            total += nll.item()
        return SFTStepStats(total, total_tokens, total_tokens + sum(len(p) for p in prompts),
                            float(self.engine.get_global_grad_norm() or 0.0), self.engine.get_lr()[0])

    # ----------------------------------------------------------------------------------------
    # Weights out: buckets for the rollout engine, Hugging Face export, DeepSpeed checkpoints

    def _full_parameters(self, device: str = "cpu"):
        """Yields (checkpoint name, full tensor on `device`: "cpu", or "cuda" for this rank's own
        GPU) in a fixed order; all ranks must iterate together (ZeRO-3 gathers each parameter with
        a collective). A gathered ZeRO-3 parameter is copied (its memory goes at the context's
        end); an unpartitioned one already on that device is yielded as it is. Names are the
        checkpoint's, which the engines load: a parameter the model keeps in another layout than
        its checkpoint (stacked experts) is split back through the model's transformers weight
        conversion, as `save_pretrained` does."""
        import deepspeed
        from transformers.core_model_loading import revert_weight_conversion

        model = self.engine.module
        target = self.device if device == "cuda" else torch.device("cpu")
        for name, param in model.named_parameters():
            if hasattr(param, "ds_id"):  # ZeRO-3 partitioned
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    full = param.detach().to(target, copy=True)
            else:
                full = param.detach().to(target)
            yield from revert_weight_conversion(model, {name: full}).items()

    def device_weight_buckets(self, bucket_mib: float) -> DeviceWeights:
        """The GPU weight sync: the full weights copied into device buckets of ≤ bucket_mib,
        shared by CUDA IPC handles (`kernels.weight_buckets`) with the rollout engine on this
        rank's GPU. The buckets stay allocated until `release_weight_buckets`. Every rank packs
        (ZeRO-3 gathers together); each rank's buckets serve the engine colocated with it."""
        import pickle

        from kernels.weight_buckets import pack_buckets

        self.release_weight_buckets()
        packed = pack_buckets(self._full_parameters("cuda"), int(bucket_mib * 2**20))
        self.sync_buffers = [buffer for buffer, _ in packed]
        buckets = [b for _, b in packed]
        return DeviceWeights(pickle.dumps(buckets), len(buckets), sum(len(b.tensors) for b in buckets),
                             sum(b.nbytes for b in buckets))

    def release_weight_buckets(self) -> None:
        """Frees the device buckets once the engine has loaded them."""
        self.sync_buffers = []

    def weight_buckets(self, bucket_mib: float) -> list[WeightBucket]:
        """Serialises the full weights into safetensors buckets of ≤ bucket_mib (a tensor larger
        than that gets a bucket of its own). Rank 0 returns them; the other ranks return []."""
        import ray
        from safetensors.torch import save

        limit = int(bucket_mib * 2**20)
        buckets, current, size = [], {}, 0

        def flush():
            nonlocal current, size
            if current and self.rank == 0:
                blob = save(current)
                buckets.append(WeightBucket(ray.put(blob), hashlib.sha256(blob).hexdigest(), len(current)))
            current, size = {}, 0

        for name, tensor in self._full_parameters():
            nbytes = tensor.numel() * tensor.element_size()
            if current and size + nbytes > limit:
                flush()
            if self.rank == 0:
                current[name] = tensor.contiguous()
            size += nbytes
        flush()
        return buckets

    # Weights over a collective (`kernels.weight_broadcast`): rank 0 hosts a process group with
    # the engines' workers and broadcasts to them; the other ranks take part in ZeRO-3's gathers.

    def weight_plan(self, bucket_mib: float) -> bytes:
        """The broadcast's buckets (pickled list of `BucketPlan`), from the parameters' full
        shapes — nothing gathered."""
        import pickle

        from kernels.weight_broadcast import plan_buckets

        specs = [(name, p.dtype, tuple(getattr(p, "ds_shape", p.shape)))
                 for name, p in self.engine.module.named_parameters()]
        return pickle.dumps(plan_buckets(specs, int(bucket_mib * 2**20)))

    def host_weight_group(self, world_size: int) -> tuple[str, int]:
        """Rank 0: a fresh group's store (the previous group left); returns (host, port) for the
        engines' workers to join at."""
        from kernels.weight_broadcast import host_store

        self.leave_weight_group()
        self.weight_store, self.weight_world = host_store(node_ip(), world_size), world_size
        return node_ip(), self.weight_store.port

    def join_weight_group(self) -> str:
        """Rank 0: joins the group hosted by `host_weight_group`; returns once every member has
        (call it together with the engines' joins). Returns the backend."""
        from kernels.weight_broadcast import WeightGroup

        store, self.weight_store = self.weight_store, None
        self.weight_group = WeightGroup(store, 0, self.weight_world, self.device)
        return self.weight_group.backend

    def leave_weight_group(self) -> None:
        group = getattr(self, "weight_group", None)
        if group is not None:
            group.close()
        self.weight_group = None

    def broadcast_weights(self, plan: bytes) -> int:
        """Every rank: the full weights into the group (rank 0 sends; ZeRO-3 gathers need all
        ranks). Returns the bytes rank 0 sent (0 on the other ranks)."""
        import pickle

        from kernels.weight_broadcast import broadcast_weights

        tensors = self._full_parameters("cuda" if self.device.type == "cuda" else "cpu")
        if self.rank != 0:
            for _ in tensors:  # each gather is a collective of all ranks
                pass
            return 0
        if getattr(self, "weight_group", None) is None:
            raise RuntimeError("broadcast_weights: rank 0 is in no weight group (join_weight_group first)")
        return broadcast_weights(self.weight_group, pickle.loads(plan), tensors)

    def export_hf(self, out_dir: str, tokenizer_dir: str) -> None:
        """Hugging Face directory (safetensors shards, config, tokenizer) that vLLM and
        transformers load. All ranks call; rank 0 writes."""
        state = {}
        for name, tensor in self._full_parameters():
            if self.rank == 0:
                state[name] = tensor.clone()
        if self.rank == 0:
            from transformers import AutoTokenizer

            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            self.engine.module.save_pretrained(out, state_dict=state, safe_serialization=True,
                                               max_shard_size="2GB", save_original_format=False)
            AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
            from models.ring_linear import MODEL_TYPE

            if self.engine.module.config.model_type == MODEL_TYPE:  # loads without Lockstep too
                from trainer.ring_linear.remote_code import write_remote_code

                write_remote_code(out)
        torch.distributed.barrier()

    def save_checkpoint(self, ds_dir: str) -> None:
        self.engine.save_checkpoint(ds_dir, tag="engine")

    def seal_files(self, directory: str) -> dict[str, list]:
        """After a save: fsyncs and checksums this rank's share of the files under `directory`
        (file i of the sorted list is rank i mod world_size's), for the checkpoint's manifest
        (`trainer.checkpoint_files`). Every rank reads a part, so a big checkpoint is read back
        in parallel."""
        from trainer.checkpoint_files import files_under, seal

        root = Path(directory)
        return seal(root, files_under(root)[self.rank :: self.world_size])

    def load_checkpoint(self, ds_dir: str) -> None:
        path, _ = self.engine.load_checkpoint(ds_dir, tag="engine")
        self._weights_changed()
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {ds_dir}")

    def info(self) -> TrainerInfo:
        from kernels.fp8 import fp8_projection_count

        if self.refusal:
            return TrainerInfo(self.rank, self.world_size, str(self.device), False, 0, refusal=self.refusal)
        return TrainerInfo(self.rank, self.world_size, str(self.device), self.train_forward_is_eval_forward,
                           fp8_projection_count(self.engine.module))


# The stand-in of a rank's empty pack in the loss: weight 0, so its pad token adds nothing.
_EMPTY_SAMPLE = TrainSample(prompt_ids=[0], completion_ids=[], rollout_logprobs=[], weight=0.0,
                            old_logprobs=[], ref_logprobs=[])


class PackingRefused(ValueError):
    """`trainer.pack_tokens` is set for a model whose forward mixes packed sequences."""


def check_packing(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """`trainer.pack_tokens` needs a model that keeps packed sequences apart: the Ring-linear
    model does (cu_seqlens), transformers' models do when their attention builds its mask from
    the restarting positions. Checked once per rank on two short sequences; a model that mixes
    them is refused (its loss would silently train on neighbours' tokens)."""
    mismatch, bound = packed_forward_mismatch(model), PACKING_TOLERANCE[dtype]
    log.info("trainer.pack_tokens: packed vs per-sequence forward of %s differs by %.2e (bound %.0e)",
             type(model).__name__, mismatch, bound)
    if not mismatch <= bound:
        raise PackingRefused(f"trainer.pack_tokens: {type(model).__name__} does not keep packed sequences "
                         f"apart (a packed sequence's hidden states differ from its own by {mismatch:.2g} "
                         f"relative, bound {bound:g}): its attention ignores the restarting position_ids. "
                         f"Set trainer.pack_tokens: 0 (pad each micro-batch) for this model")


def has_active_dropout(model: torch.nn.Module) -> bool:
    """Whether train mode changes the forward (dropout modules or config dropout rates > 0)."""
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return True
    cfg = model.config
    rates = ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop")
    return any(float(getattr(cfg, k, 0.0) or 0.0) > 0 for k in rates)


def _pad(rows: list[list[float]], shape: torch.Size) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
    return out
