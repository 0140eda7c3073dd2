"""The recipe's `rollout` section: how the engines sample and what each vLLM engine is built
with. A frozen dataclass that crosses Ray as it is; `rl.config` composes it into the recipe's
tree and validates it there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class RolloutConfig:
    """The recipe's `rollout` section: the vLLM engines and how they sample."""

    num_workers: int = 1
    """vLLM engines (each a Ray actor; one device each on GPUs, shared with a rank when colocated)."""
    tensor_parallel_size: int = 1
    """Devices per engine (vLLM's tensor_parallel_size): each engine's attention heads and every
    expert's width split over this many GPUs, for models one GPU cannot hold. Needs
    ray.placement=split on GPUs (each engine a bundle of this many GPUs on one node) and mode:
    fast (the sums over devices change the trainer's bits)."""
    group_size: int = 8
    """G completions sampled per prompt (GRPO's group)."""
    prompts_per_step: int = 8
    """Prompts per RL step; a step trains on prompts_per_step × group_size completions."""
    max_new_tokens: int = 32
    """Longest completion; longer ones are cut (see algorithm.overlong). Also used by evaluation."""
    max_model_len: int = 512
    """The engine's context length: prompt plus completion."""
    temperature: float = 1.0
    """Sampling temperature of the rollout (> 0); the trainer's log-probs use the same."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest token set holding this much probability (1: off)."""
    top_k: int = -1
    """Sample among the k most likely tokens (-1: off)."""
    ignore_eos: bool = False
    """Keep sampling past the EOS token: every training completion is max_new_tokens long (fixed
    generation length, for benchmarks; vLLM's ignore_eos). Evaluation still stops at EOS."""
    kv_cache_gib: float = 1.0
    """vLLM on CPU: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE)."""
    gpu_memory_utilization: float = 0.5
    """vLLM on GPUs: the share of the GPU's memory an engine may take (weights + KV cache)."""
    enforce_eager: bool = True
    """vLLM's enforce_eager. true: no torch.compile, faster engine start; false: compiled decode
    (CPU: torch.compile; GPUs: torch.compile and CUDA graphs, piecewise and full decode graphs,
    as vLLM runs its own hybrids; FP8 and strict engines stay eager, logged). true stays the
    default until graphs are checked on a GPU (docs/decisions.md)."""
    cpu_threads: int = 0
    """Threads the engine may use on CPU (0: let vLLM decide)."""
    max_num_batched_tokens: int = 0
    """Tokens per engine step (vLLM's max_num_batched_tokens; also caps the sequences per step).
    Longer prompts are prefilled in pieces (chunked prefill). 0: vLLM's default."""
    sleep_while_training: Literal["auto", "on", "off"] = "auto"
    """Release the engines' GPU memory (weights, KV cache) during the trainer's step; the weight
    sync wakes them. auto: when trainer and rollout share GPUs (ray.placement=colocated). vLLM has
    no sleep mode on CPU: there "on" is logged and ignored."""
    max_staleness: int = 0
    """How many policy versions a trained token may lag the trainer (k). 0: on-policy (sample,
    then train). 1: the next step's batch is sampled while the trainer updates on this one
    (sampling ahead). k ≥ 2: asynchronous rollout: the engines keep k batches in flight and keep
    sampling through each update, taking new weights between decode steps (in-flight weight
    updates); every token records the version that sampled it (docs/decisions.md)."""
    stale_policy: Literal["drop", "resample"] = "drop"
    """What happens to a group with a token more than max_staleness versions behind the trainer
    (only partial rollouts let a group age past the bound): drop: its prompt is not trained;
    resample: it is sampled again from its prompt under the current weights. Counted in
    offpolicy/dropped_groups, offpolicy/resampled_groups."""
    partial: bool = False
    """Partial rollouts (needs max_staleness ≥ 1): the engines keep prompts_per_step ×
    (max_staleness + 1) groups in flight; a step waits until prompts_per_step groups are complete
    and takes those launched earliest; unfinished groups keep sampling into the next steps (under
    newer weights, their token versions recorded) instead of being waited for."""

    @property
    def asynchronous(self) -> bool:
        """Asynchronous rollout (rl.async_rollout, rollout.engine_loop): the engines sample through
        weight updates, which staleness ≥ 2 and partial rollouts need (0 and 1 sample whole batches)."""
        return self.max_staleness >= 2 or self.partial
