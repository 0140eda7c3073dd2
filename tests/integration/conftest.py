"""Integration tests run the real stack (Ray, vLLM CPU, DeepSpeed gloo, math-verify) on the
tiny demo model. They are slow (engine start-up ~1 min), so each module shares its runs."""

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_recipe(tmp_path, **sections) -> dict:
    """A few-step recipe: 2 trainer ranks, small batches, the demo's micro model with a short
    SFT warm start (so rewards vary within groups and every step updates the policy)."""
    recipe = {
        "name": "it",
        "output_dir": str(tmp_path / "runs"),
        "model": {"path": "demo:arith-micro", "cache_dir": os.environ.get("LOCKSTEP_TEST_CACHE", str(tmp_path / "cache"))},
        "data": {
            "train": {"source": "synthetic:arithmetic-noisy", "template": "Q: {prompt}\nA:", "num_examples": 2000},
            "eval": {"source": "synthetic:arithmetic-noisy", "split": "test", "template": "Q: {prompt}\nA:", "num_examples": 16},
        },
        "sft": {"steps": 150, "lr": 3e-3, "batch_size": 32},
        "rollout": {"group_size": 4, "prompts_per_step": 4, "max_new_tokens": 24, "max_model_len": 128},
        "trainer": {"num_ranks": 2, "zero_stage": 1, "lr": 5e-4, "micro_batch_size": 4, "cpu_threads": 1},
        "reward": {"num_workers": 1},
        "schedule": {"steps": 2, "eval_every": 2, "save_every": 2, "eval_limit": 16},
        "logging": {"tensorboard": True},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


@pytest.fixture(scope="session")
def ray_local():
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


def send_weights(llm, tensors: dict) -> list[int]:
    """``tensors`` into a running ``vllm.LLM`` as one bucket, the way the weight sync sends them
    (``rollout.weight_receiver``); returns each worker's count of loaded tensors."""
    import hashlib

    from safetensors.torch import save

    blob = save({n: t.contiguous() for n, t in tensors.items()})
    return llm.collective_rpc("lockstep_load_buckets", args=([blob], [hashlib.sha256(blob).hexdigest()]))
