"""The rollout engine's loop for asynchronous rollout (rollout/engine_loop.py), on the Ring-linear
micro model: a weight update reaches the engine between decode steps while sequences are in
flight, they continue under the new weights, and every token records the version that sampled
it with the log-prob of that version's distribution (the behaviour log-prob a correction needs)."""

import hashlib
import math
import time

import pytest
import torch
from safetensors.torch import load_file, save

from rl import demo_model
from rollout.config import RolloutConfig
from rollout.worker import RolloutWorker

pytestmark = pytest.mark.integration

NEW_TOKENS = 160


def start_engine(tmp_path_factory):
    path = demo_model.resolve("demo:ring-micro", str(tmp_path_factory.mktemp("cache")))
    worker = RolloutWorker(str(path), "float32", RolloutConfig(max_staleness=2, max_model_len=256, cpu_threads=1),
                           seed=0)
    assert worker.loop is not None
    return path, worker


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return start_engine(tmp_path_factory)


@pytest.fixture(scope="module")
def engine_own_labels(tmp_path_factory):
    """The same engine as if its vLLM had no weight-version labels (the GPU kit's 0.26): the loop
    counts each step's tokens itself, from cumulative outputs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("rollout.engine_loop.vllm_labels_versions", lambda engine: False)
        path, worker = start_engine(tmp_path_factory)
    assert worker.loop.own_labels
    yield path, worker
    worker.llm.llm_engine.engine_core.shutdown()


def uniform_weights(path) -> tuple[bytes, int]:
    """The checkpoint with its final norm zeroed: every logit 0, so the model samples uniformly
    and each sampled token's log-prob is exactly −log(vocab)."""
    state = load_file(str(path / "model.safetensors"))
    state["model.norm.weight"] = torch.zeros_like(state["model.norm.weight"])
    return save({k: v.contiguous() for k, v in state.items()}), len(state)


@pytest.mark.parametrize("labels", ["engine", "engine_own_labels"])
def test_weights_load_between_decode_steps_and_tokens_keep_their_version(labels, request):
    path, worker = request.getfixturevalue(labels)
    prompt = worker.tokenizer("Q: 12+30=?\nA:")["input_ids"]
    worker.submit(["a", "b"], [prompt, prompt], 2, NEW_TOKENS, 1.0, ignore_eos=True)
    deadline = time.monotonic() + 60
    while worker.loop.steps < 5 and time.monotonic() < deadline:  # some tokens under version 0
        time.sleep(0.01)
    blob, tensors = uniform_weights(path)
    worker.load_weights([blob], [hashlib.sha256(blob).hexdigest()], tensors, version=1)
    groups = []
    while len(groups) < 2:
        groups += worker.take(wait_s=30)
    uniform = -math.log(worker.llm.llm_engine.model_config.get_vocab_size())
    for key, group in groups:
        assert key in {"a", "b"} and len(group) == 2
        for c in group:
            (v0, before), (v1, after) = c.versions  # the update came in flight, once
            assert (v0, v1) == (0, 1) and before >= 1 and after >= 1 and before + after == NEW_TOKENS
            assert c.token_versions() == [0] * before + [1] * after
            # Each token's log-prob is its own version's: uniform exactly from the update on.
            assert all(lp == pytest.approx(uniform, abs=1e-5) for lp in c.logprobs[before:])
            assert not all(lp == pytest.approx(uniform, abs=1e-3) for lp in c.logprobs[:before])
    # A synchronous call through the loop (evaluation) samples under the new version only.
    (group,) = worker.generate([prompt], 2, 8, 1.0)
    assert all(c.versions == ((1, len(c.token_ids)),) for c in group)


def test_aborted_groups_are_not_returned(engine):
    _, worker = engine
    prompt = worker.tokenizer("Q: 3+4=?\nA:")["input_ids"]
    worker.submit(["c"], [prompt], 2, NEW_TOKENS, 1.0, ignore_eos=True)
    assert worker.abort_groups() == 1
    assert worker.take(wait_s=1.0) == [] and not worker.in_flight
