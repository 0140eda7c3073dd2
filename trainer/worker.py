"""TrainerRank: one DeepSpeed ZeRO rank, run as a Ray actor.

Owns the training model on its device, computes trainer log-probs of rollout tokens, applies the
policy-gradient update (or a supervised step for the SFT warm start), hands out its weights in
buckets for the rollout engine, and saves/loads DeepSpeed checkpoints plus a Hugging Face export.
All ranks of a group receive the same calls (collectives inside); rank 0 also answers for the group.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from pathlib import Path

import torch

from rl.algorithms import losses
from rl.batch import Sample
from trainer.logprobs import pack, token_logprobs, use_fp32_lm_head

log = logging.getLogger("lockstep.trainer")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def use_fp8(model: torch.nn.Module, options: dict) -> None:
    """The recipe's ``model.fp8`` on the training model: every projection and expert of the
    decoder runs as FP8 GEMMs (forward, dgrad, wgrad; ``kernels.fp8.FP8Linear``) — the same
    switch the rollout plugin makes, so both quantize identically. The LM head stays out (fp32
    logits, DESIGN §4); the router and the norms are not projections. Only the Ring-linear
    model: its rollout runs Lockstep's layers (the driver refuses other models up front)."""
    from kernels.fp8 import swap_linears_to_fp8
    from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM

    if not isinstance(model, BailingMoeLinearV2ForCausalLM):
        raise ValueError(f"model.fp8: only the Ring-linear model runs FP8 in both engines; got {type(model).__name__}")
    switched = swap_linears_to_fp8(model.get_decoder(), **options)
    log.info("model.fp8: %d projections run as FP8 GEMMs (%s)", len(switched), options)


class TrainerRank:
    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int, model_path: str, dtype: str, trainer_cfg: dict, lr: float, micro_batches_per_step: int, seed: int, use_reference: bool = False, fp8: dict | None = None):
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0")
        if trainer_cfg["cpu_threads"]:
            torch.set_num_threads(trainer_cfg["cpu_threads"])
        import deepspeed
        from transformers import AutoModelForCausalLM

        self.rank, self.world_size, self.cfg = rank, world_size, trainer_cfg
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        deepspeed.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo")
        torch.manual_seed(seed)
        self.dtype = DTYPES[dtype]
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype)
        if fp8 is not None:
            use_fp8(model, fp8)
        if trainer_cfg["gradient_checkpointing"]:
            model.gradient_checkpointing_enable()
        use_fp32_lm_head(model)
        self.model_config = model.config
        self.train_forward_is_eval_forward = not has_active_dropout(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(trainer_cfg["betas"]), weight_decay=trainer_cfg["weight_decay"])
        warmup = max(1, trainer_cfg["warmup_steps"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        self.micro_batches = micro_batches_per_step
        ds_config = {
            "train_micro_batch_size_per_gpu": trainer_cfg["micro_batch_size"],
            "gradient_accumulation_steps": micro_batches_per_step,
            "gradient_clipping": trainer_cfg["grad_clip"],
            "zero_optimization": {"stage": trainer_cfg["zero_stage"]},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": self.dtype == torch.bfloat16},
            "fp16": {"enabled": self.dtype == torch.float16},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        self.sync_buffers: list[torch.Tensor] = []  # device weight buckets in flight (GPU sync)
        self.reference = None
        if use_reference:
            self.reference = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype).to(self.device).eval()
            if fp8 is not None:  # the reference computes as the policy did at step 0
                use_fp8(self.reference, fp8)
            use_fp32_lm_head(self.reference)
            self.reference.requires_grad_(False)

    # ----------------------------------------------------------------------------------------
    # Log-probs

    def _micro_batches(self, samples: list[Sample]):
        size = self.cfg["micro_batch_size"]
        for i in range(0, len(samples), size):
            yield samples[i : i + size]

    @torch.no_grad()
    def compute_logprobs(self, samples: list[Sample], temperature: float, with_entropy: bool = True) -> list[tuple[list[float], list[float]]]:
        """Trainer log-probs (and entropies) of each sample's completion tokens, current weights."""
        self.engine.module.eval()
        out = []
        for chunk in self._micro_batches(samples):
            batch = pack([s.prompt_ids for s in chunk], [s.completion_ids for s in chunk])
            logp, ent = token_logprobs(self.engine.module, batch, temperature, with_entropy)
            for i, s in enumerate(chunk):
                n = len(s.completion_ids)
                out.append((logp[i, :n].tolist(), ent[i, :n].tolist() if ent is not None else []))
        return out

    @torch.no_grad()
    def reference_logprobs(self, samples: list[Sample], temperature: float) -> list[list[float]]:
        out = []
        for chunk in self._micro_batches(samples):
            batch = pack([s.prompt_ids for s in chunk], [s.completion_ids for s in chunk])
            logp, _ = token_logprobs(self.reference, batch, temperature)
            out.extend(logp[i, : len(s.completion_ids)].tolist() for i, s in enumerate(chunk))
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

    def train_step(self, samples: list[Sample], old_logps: list[list[float]] | None, ref_logps: list[list[float]] | None, normaliser: float, algo: dict, temperature: float) -> tuple[dict[str, float], list[tuple[list[float], list[float]]]]:
        """One optimiser step over this rank's share of a mini-batch, in `self.micro_batches`
        micro-batches. The loss of each micro-batch is Σ token terms / `normaliser` (the whole
        mini-batch's, over all ranks) × world × GAS, which undoes DeepSpeed's averaging over
        ranks and accumulation steps: the update is exactly the mini-batch aggregate.

        Returns (sums for the metrics, per-sample (log-probs, entropies) of the completion
        tokens from the training forward). Every micro-batch's forward runs before the one
        optimiser step (DeepSpeed steps at the accumulation boundary), so these are the
        log-probs of the weights that sampled the batch when this is the step's only update:
        the mismatch metrics' b_t and, with `old_logps=None`, the recomputed old log-probs
        themselves (detached), with no separate pass. The model must be deterministic in
        train mode for that (`ping()["train_forward_is_eval_forward"]`: no active dropout)."""
        if old_logps is None and not self.train_forward_is_eval_forward:
            raise RuntimeError("train_step(old_logps=None) needs a model without active dropout: its training forward is not the policy's log-prob")
        self.engine.module.train()
        chunks = list(self._micro_batches(list(range(len(samples)))))
        if len(chunks) != self.micro_batches:
            raise RuntimeError(f"rank {self.rank}: {len(chunks)} micro-batches, engine expects {self.micro_batches}")
        correction = losses.CORRECTIONS[algo["correction"]]
        kl_fn = losses.KL_ESTIMATORS[algo["kl_estimator"]]
        sums: dict[str, float] = {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_frac": 0.0, "correction_weight": 0.0, "tokens": 0.0}
        rows: list[tuple[list[float], list[float]]] = []
        scale = self.world_size * self.micro_batches / max(normaliser, 1.0)
        for idx in chunks:
            chunk = [samples[i] for i in idx]
            batch = pack([s.prompt_ids for s in chunk], [s.completion_ids for s in chunk])
            need_entropy = algo["entropy_coef"] != 0
            logp, entropy = token_logprobs(self.engine.module, batch, temperature, with_entropy=True)
            mask = batch.completion_mask.to(logp.device) * torch.tensor([s.weight for s in chunk], device=logp.device)[:, None]
            old = logp.detach() if old_logps is None else _pad([old_logps[i] for i in idx], logp.shape).to(logp.device)
            rollout = _pad([s.rollout_logprobs for s in chunk], logp.shape).to(logp.device)
            adv = torch.tensor([s.advantage for s in chunk], device=logp.device)[:, None].expand_as(logp)
            pg, clipped = losses.clipped_policy_loss(logp, old, adv, algo["clip_low"], algo["clip_high"])
            weight = correction(old, rollout, algo["correction_low"], algo["correction_high"])
            per_token = pg * weight
            kl = torch.zeros_like(logp)
            if ref_logps is not None:
                kl = kl_fn(logp, _pad([ref_logps[i] for i in idx], logp.shape).to(logp.device))
                per_token = per_token + algo["kl_coef"] * kl
            if need_entropy:
                per_token = per_token - algo["entropy_coef"] * entropy
            loss = losses.aggregate(per_token, mask, algo["loss_aggregation"], 1.0) * scale
            self.engine.backward(loss)
            self.engine.step()
            logp_rows, entropy_rows = logp.detach().tolist(), entropy.detach().tolist()
            rows.extend((logp_rows[i][: len(s.completion_ids)], entropy_rows[i][: len(s.completion_ids)]) for i, s in enumerate(chunk))
            m = mask.bool()
            sums["loss"] += loss.item() / (self.world_size * self.micro_batches)  # this rank's share of the mini-batch loss
            sums["pg_loss"] += (pg * weight)[m].sum().item()
            sums["kl"] += kl[m].sum().item()
            sums["entropy"] += entropy[m].sum().item()
            sums["clip_frac"] += clipped[m].float().sum().item()
            sums["correction_weight"] += weight[m].sum().item()
            sums["tokens"] += m.sum().item()
        sums["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        sums["lr"] = self.engine.get_lr()[0]
        return sums, rows

    def sft_step(self, prompts: list[list[int]], targets: list[list[int]]) -> float:
        """Supervised step: mean cross-entropy of target tokens given their prompts (warm start)."""
        self.engine.module.train()
        total_tokens = sum(len(t) for t in targets)
        idx_chunks = list(self._micro_batches(list(range(len(prompts)))))
        if len(idx_chunks) != self.micro_batches:
            raise RuntimeError(f"rank {self.rank}: {len(idx_chunks)} micro-batches, engine expects {self.micro_batches}")
        total = 0.0
        for idx in idx_chunks:
            batch = pack([prompts[i] for i in idx], [targets[i] for i in idx])
            logp, _ = token_logprobs(self.engine.module, batch)
            mask = batch.completion_mask.to(logp.device)
            nll = -(logp * mask).sum()
            self.engine.backward(nll * self.micro_batches / max(total_tokens, 1))
            self.engine.step()
            total += nll.item()
        return total / max(total_tokens, 1)

    # ----------------------------------------------------------------------------------------
    # Weights out: buckets for the rollout engine, Hugging Face export, DeepSpeed checkpoints

    def _full_parameters(self, device: str = "cpu"):
        """Yields (name, full tensor on `device`: "cpu", or "cuda" for the trainer's own GPU) in
        a fixed order; all ranks must iterate together (ZeRO-3 gathers each parameter with a
        collective). A gathered ZeRO-3 parameter is copied (its memory goes at the context's end);
        an unpartitioned one on its own device is yielded as is."""
        import deepspeed

        target = self.device if device == "cuda" else torch.device("cpu")
        for name, param in self.engine.module.named_parameters():
            if hasattr(param, "ds_id"):  # ZeRO-3 partitioned
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    yield name, param.detach().to(target, copy=True)
            else:
                yield name, param.detach().to(target)

    def device_weight_buckets(self, bucket_mib: float) -> tuple[bytes, int, int]:
        """The GPU weight sync: copies the full weights into device buckets of ≤ bucket_mib
        shared by CUDA IPC handles (`kernels.weight_buckets`) for the rollout engine on this
        rank's GPU. Returns (the pickled bucket list, tensor count, bytes); the buckets stay
        allocated until `release_weight_buckets`. Every rank packs (ZeRO-3 gathers together);
        each rank's buckets serve the engine colocated with it."""
        import pickle

        from kernels.weight_buckets import pack_buckets

        self.release_weight_buckets()
        packed = pack_buckets(self._full_parameters("cuda"), int(bucket_mib * 2**20))
        self.sync_buffers = [buffer for buffer, _ in packed]
        buckets = [b for _, b in packed]
        return pickle.dumps(buckets), sum(len(b.tensors) for b in buckets), sum(b.nbytes for b in buckets)

    def release_weight_buckets(self) -> None:
        """Frees the device buckets once every engine has loaded them."""
        self.sync_buffers = []

    def weight_buckets(self, bucket_mib: float) -> list[tuple[object, str, int]]:
        """Serialises the full weights into safetensors buckets of ≤ bucket_mib (a tensor larger
        than that gets a bucket of its own). Rank 0 returns [(ObjectRef, sha256, n_tensors)]."""
        import ray
        from safetensors.torch import save

        limit = int(bucket_mib * 2**20)
        buckets, current, size = [], {}, 0

        def flush():
            nonlocal current, size
            if current and self.rank == 0:
                blob = save(current)
                buckets.append((ray.put(blob), hashlib.sha256(blob).hexdigest(), len(current)))
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
            self.engine.module.save_pretrained(out, state_dict=state, safe_serialization=True, max_shard_size="2GB")
            AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
        torch.distributed.barrier()

    def save_checkpoint(self, ds_dir: str) -> None:
        self.engine.save_checkpoint(ds_dir, tag="engine")

    def load_checkpoint(self, ds_dir: str) -> None:
        path, _ = self.engine.load_checkpoint(ds_dir, tag="engine")
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {ds_dir}")

    def ping(self) -> dict:
        from kernels.fp8 import fp8_projection_count

        return {"rank": self.rank, "world_size": self.world_size, "device": str(self.device), "time": time.time(), "train_forward_is_eval_forward": self.train_forward_is_eval_forward,
                "fp8_projections": fp8_projection_count(self.engine.module)}


def has_active_dropout(model: torch.nn.Module) -> bool:
    """Whether train mode changes the forward (dropout modules or config dropout rates > 0)."""
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return True
    cfg = model.config
    return any(float(getattr(cfg, k, 0.0) or 0.0) > 0 for k in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"))


def _pad(rows: list[list[float]], shape: torch.Size) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
    return out
