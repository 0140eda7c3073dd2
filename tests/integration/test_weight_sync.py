"""The rollout engine takes new weights in place and then computes exactly what transformers
computes with them — every parameter, the tied LM head included (vLLM's in-place reload restores
an unloaded tied head's old, CPU-prepacked weight unless re-tied: rollout.weight_receiver)."""

import hashlib

import pytest
import torch
from safetensors.torch import save
from transformers import AutoModelForCausalLM

from rl import demo_model
from rollout.config import RolloutConfig
from rollout.worker import RolloutWorker

pytestmark = pytest.mark.integration

TEXT = "Ann has 23 apples. Ann gets 58 more. How many apples now? 23+58=81."


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", include_dashboard=False, num_cpus=1)  # the buckets travel as Ray object refs
    path = demo_model.resolve("demo:arith-tiny", str(tmp_path_factory.mktemp("cache")))
    yield path, RolloutWorker(str(path), "float32", RolloutConfig(max_model_len=128), seed=0)
    if started:
        ray.shutdown()


def perturbed(path, subset: str, seed: int):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if subset == "all" or subset in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


@pytest.mark.parametrize("subset", ["embed_tokens", "self_attn", "mlp", "norm", "all"])
def test_engine_matches_transformers_after_update(engine, subset):
    path, worker = engine
    model = perturbed(path, subset, seed=len(subset))
    state = {k: v.contiguous() for k, v in model.named_parameters()}
    blobs = [save(dict(list(state.items())[i : i + 7])) for i in range(0, len(state), 7)]  # several buckets
    import ray

    refs, digests = [ray.put(b) for b in blobs], [hashlib.sha256(b).hexdigest() for b in blobs]
    before = worker.prompt_logprobs(worker.tokenizer(TEXT)["input_ids"])
    info = worker.update_weights(refs, digests, len(state), version=1)
    assert info.tensors == len(state)
    assert not info.direct_copy  # a model vLLM runs natively keeps vLLM's reload (rollout.weight_receiver)
    ids = worker.tokenizer(TEXT)["input_ids"]
    engine_logp = torch.tensor(worker.prompt_logprobs(ids))
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits.log_softmax(-1)[0, :-1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert (engine_logp - ref).abs().max().item() < 1e-5
    assert (engine_logp - torch.tensor(before)).abs().max().item() > 1e-3  # the update was real


def test_corrupted_bucket_is_rejected(engine):
    _, worker = engine
    blob = save({"model.norm.weight": torch.ones(256)})
    with pytest.raises(Exception, match="sha256"):
        worker.llm.collective_rpc("lockstep_load_buckets", args=([blob], ["0" * 64]))


def test_sync_warns_only_of_layers_that_should_have_had_weights(engine):
    """vLLM's reload logs "<Layer>: Failed to load weights" for each layer that got no tensor; the
    dense model's RotaryEmbedding (a computed buffer) and tied ParallelLMHead never get one by
    design, and those records are dropped (rollout.weight_receiver.ExpectedUnloaded). A layer left
    out of the update is still reported."""
    import logging

    from rollout.weight_receiver import RELOAD_LOGGER

    from .conftest import send_weights

    path, worker = engine
    state = {k: v.detach() for k, v in perturbed(path, "none", seed=0).named_parameters()}
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    reload_log = logging.getLogger(RELOAD_LOGGER)
    reload_log.addHandler(handler)
    try:
        send_weights(worker.llm, state)
        assert [r.getMessage() for r in records if "Failed to load" in r.getMessage()] == []
        send_weights(worker.llm, {k: v for k, v in state.items() if k != "model.norm.weight"})
        assert [r.getMessage() for r in records if "Failed to load" in r.getMessage()] == \
            ["RMSNorm: Failed to load weights"]
        send_weights(worker.llm, state)  # the engine whole again for the module's other tests
    finally:
        reload_log.removeHandler(handler)


def test_ignore_eos_samples_the_full_length(engine):
    """`rollout.ignore_eos` (fixed-length rollouts for benchmarks): sampling runs on past EOS.
    The same (random, near-uniform: P(EOS) ~ 1/360 a token) model stops at EOS in some of 128
    completions of 24 tokens without it, so the check has teeth. (In this module for its engine:
    another one would cost a start-up.)"""
    _, worker = engine
    eos = worker.tokenizer.eos_token_id
    prompts = [worker.tokenizer(TEXT)["input_ids"][:8]] * 4
    free = [c for group in worker.generate(prompts, n=32, max_tokens=24, temperature=1.0) for c in group]
    assert any(c.finish_reason == "stop" and c.token_ids[-1] == eos for c in free)
    fixed = [c for group in worker.generate(prompts, n=32, max_tokens=24, temperature=1.0, ignore_eos=True)
             for c in group]
    assert all(len(c.token_ids) == 24 and c.finish_reason == "length" for c in fixed)
    assert any(eos in c.token_ids[:-1] for c in fixed)  # sampled past an EOS
