"""Integration tests run the real stack (Ray, vLLM CPU, DeepSpeed gloo, math-verify) on the
tiny demo model. They are slow (engine start-up ~1 min), so each module shares its runs, and the
whole session shares its SFT warm starts (`shared_sft`)."""

import os
import shutil
from pathlib import Path

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


@pytest.fixture(scope="session", autouse=True)
def shared_model_cache(tmp_path_factory):
    """One demo-model cache for the session (`LOCKSTEP_TEST_CACHE`, unless set): each demo model is
    built once, not once per test's folder. Safe to share: `rl.demo_model` keys a build by its
    spec's digest (another spec, another folder), the build is seeded, and no test writes into it."""
    if "LOCKSTEP_TEST_CACHE" not in os.environ:
        os.environ["LOCKSTEP_TEST_CACHE"] = str(tmp_path_factory.mktemp("demo-models"))
        yield
        del os.environ["LOCKSTEP_TEST_CACHE"]
    else:
        yield


@pytest.fixture(scope="session")
def ray_local():
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def shared_sft(tmp_path_factory, ray_local):
    """`shared_sft(recipe)` puts the SFT warm start's export for `recipe`'s model and `sft.steps`
    into its run directory (where the run reuses it, as a re-run would) and returns the recipe.
    Each (model, steps) export is trained once per session, by `tiny_recipe`'s SFT (2 ranks, ZeRO 1,
    fast mode): the tests that use it need a policy that sometimes answers right, not their own
    trainer settings' SFT. A trainer start-up and the steps (~1 min on 2 cores) saved per run.
    Two exports serve the suite: arith-micro/60 (test_async_rollout, test_corrections, test_faults,
    test_graceful_stop, test_split_placement) and ring-micro/60 (test_strict_mode, the ZeRO-3
    Ring-linear pipeline test). test_pipeline's first run keeps its own SFT (it checks the sft/*
    metrics), and so does the FP8 pipeline test (its SFT trains under FP8; from a fast-mode export
    the FP8 engines' start-up probe missed its 1e-3 tolerance)."""
    exports = tmp_path_factory.mktemp("sft-exports")

    def into_run_dir(data: dict) -> dict:
        model, steps = data["model"]["path"], data["sft"]["steps"]
        export = exports / f"{model.replace(':', '-')}-{steps}"
        if not (export / "runs" / "sft" / "sft" / "hf" / "config.json").exists():
            _train_sft(export, model, steps)
        run_dir = Path(data.get("output_dir", Path.home() / "lockstep-runs")) / data["name"]
        if not (run_dir / "sft" / "hf").exists():
            shutil.copytree(export / "runs" / "sft" / "sft", run_dir / "sft")
        return data

    return into_run_dir


def _train_sft(folder: Path, model: str, steps: int) -> None:
    from rl.config import from_data
    from rl.data import PromptRenderer, load_examples
    from rl.metrics import MetricsLogger
    from rl.model import load_tokenizer, resolve_model_path
    from rl.placement import Placement, connect
    from rl.warm_start import warm_start

    cfg = from_data(tiny_recipe(folder, name="sft", model={"path": model}, sft={"steps": steps},
                                ray={"address": "local"}, schedule={"steps": 0}))
    connect(cfg.ray.address)
    base = resolve_model_path(cfg)
    tokenizer = load_tokenizer(base, False)
    placement, metrics = Placement(cfg), MetricsLogger(cfg.run_dir, cfg)
    try:
        warm_start(cfg, placement, base, load_examples(cfg.data.train), PromptRenderer(tokenizer, cfg.data.train),
                   tokenizer, metrics)
    finally:
        metrics.close()
        placement.remove()


def send_weights(llm, tensors: dict) -> list[int]:
    """``tensors`` into a running ``vllm.LLM`` as one bucket, the way the weight sync sends them
    (``rollout.weight_receiver``); returns each worker's count of loaded tensors."""
    import hashlib

    from safetensors.torch import save

    blob = save({n: t.contiguous() for n, t in tensors.items()})
    return llm.collective_rpc("lockstep_load_buckets", args=([blob], [hashlib.sha256(blob).hexdigest()]))
