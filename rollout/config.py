"""The recipe's `rollout` section: how the engines sample and what each vLLM engine is built
with. A frozen dataclass that crosses Ray as it is; `rl.config` composes it into the recipe's
tree and validates it there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class RolloutConfig:
    num_workers: int = 1
    group_size: int = 8  # G completions per prompt
    prompts_per_step: int = 8
    max_new_tokens: int = 32
    max_model_len: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    # vLLM CPU: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE); GPU: fraction of memory.
    kv_cache_gib: float = 1.0
    gpu_memory_utilization: float = 0.5
    # vLLM's enforce_eager. true: no torch.compile, faster engine start; false: compiled decode
    # (the Ring-linear plugin compiles on CPU; on GPUs it runs eagerly, logged).
    enforce_eager: bool = True
    # Threads the engine may use on CPU (0: let vLLM decide).
    cpu_threads: int = 0
    # Release the engines' GPU memory (weights, KV cache) during the trainer's step; the weight
    # sync wakes them. auto: when trainer and rollout share GPUs (ray.placement=colocated).
    # vLLM has no sleep mode on CPU: there "on" is logged and ignored.
    sleep_while_training: Literal["auto", "on", "off"] = "auto"
    # Sampling ahead (one-step off-policy, as in AReaL/verl's async modes): 1 samples the next
    # step's batch while the trainer updates on this one, so each batch was sampled by weights
    # one update older than those it trains; 0 is on-policy (sample, then train).
    max_staleness: Literal[0, 1] = 0
