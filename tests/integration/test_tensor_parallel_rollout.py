"""The Ring-linear plugin under tensor parallelism on CPU: a vLLM engine of 2 ranks (its
multiprocessing executor, one worker process per rank, CPU all-reduces between them) samples
the tiny model in fp32; every sampled token's log-prob equals the trainer's within fast mode's
bound (the TP=1 engine is held to the same bound against the same trainer in
test_ring_linear_vllm.py).  Then an in-place weight update (the weight sync's host path: every
rank receives every tensor and keeps its slice) lands on both ranks: the log-probs follow the
new weights, which a rank left on the old ones would break."""

import os
import random

import pytest
import torch

from rl.alignment import sample_with_logprobs, trainer_logprobs
from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM
from trainer.ring_linear.random_checkpoint import build_random_checkpoint

from .conftest import send_weights

pytestmark = pytest.mark.integration

TOL = 1e-5  # fast mode's bound (DESIGN.md: |Δ log-prob| ≤ 1e-5 in fp32)
PROMPT_LENS = [1, 9, 40]
NEW_TOKENS = 24


def check_against_trainer(llm, model, seed: int) -> float:
    rng = random.Random(seed)
    prompts = [[rng.randrange(1, model.config.vocab_size) for _ in range(n)] for n in PROMPT_LENS]
    completions, engine = sample_with_logprobs(llm, prompts, NEW_TOKENS)
    trainer = trainer_logprobs(model, prompts, completions)
    worst = max((e - t).abs().max().item() for e, t in zip(engine, trainer))
    assert torch.cat(engine).std().item() > 0.3  # far from uniform: not a comparison of near-constants
    return worst


def test_tp2_engine_matches_trainer_and_takes_weight_updates_on_both_ranks(tmp_path):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core here, the 2 rank workers as processes
    from vllm import LLM

    path = build_random_checkpoint(tmp_path / "tiny", "tiny", seed=3, initializer_range=0.08)
    llm = LLM(model=str(path), dtype="float32", seed=0, max_model_len=256, enforce_eager=True,
              tensor_parallel_size=2, distributed_executor_backend="mp", max_num_batched_tokens=32,
              max_num_seqs=4, logprobs_mode="processed_logprobs", gpu_memory_utilization=0.05,
              worker_extension_cls="rollout.activations.EngineExtension")
    try:
        model = BailingMoeLinearV2ForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        # 40-token prompt in pieces of the 32-token step budget: chunked prefill with a carried state
        worst = check_against_trainer(llm, model, seed=0)
        print(f"TP=2 engine vs trainer: max |Δ log-prob| {worst:.2e}")
        assert worst <= TOL, f"TP=2 engine vs trainer: max |Δ log-prob| {worst:.2e} > {TOL}"

        # new weights for every tensor, sent whole to both ranks
        new = BailingMoeLinearV2ForCausalLM.from_pretrained(
            str(build_random_checkpoint(tmp_path / "tiny2", "tiny", seed=4, initializer_range=0.08)),
            dtype=torch.float32).eval()
        tensors = new.checkpoint_state_dict()
        assert send_weights(llm, tensors) == [len(tensors), len(tensors)]  # each rank loaded every name
        llm.reset_prefix_cache()
        worst = check_against_trainer(llm, new, seed=1)
        print(f"after the in-place update: max |Δ log-prob| {worst:.2e}")
        assert worst <= TOL, f"after the in-place update: TP=2 engine vs new weights {worst:.2e} > {TOL}"
    finally:
        del llm
