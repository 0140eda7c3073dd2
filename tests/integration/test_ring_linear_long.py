"""Long generations in the Ring-linear plugin (GPU only; issue 18 item 3): the sampled tokens'
log-probs of 8K- and 32K-token generations and of a 1K continuation of a 20K-token prompt equal
the trainer's teacher-forced ones within fp32's parity bar (issue 5: 1e-5), with the state
carried through every path a long sequence takes in vLLM:

* a 20K-token prompt prefilled in 2048-token pieces (chunked prefill: each piece starts from the
  state the previous one left, and the trainer runs the whole sequence through its segmented
  long-sequence forward, ``kernels/linear_attention``);
* two 8K-token generations in a cache that holds one and a half of them: vLLM preempts one and
  recomputes it on resumption (its prompt and every token sampled so far prefilled again, in
  pieces, from a fresh state slot) — the metrics counter proves it happened;
* one 32K-token generation (32K decode steps through one state slot).

fp32 weights, eager engine (the recipes' default), the tiny preset with a larger init so every
layer matters, positions up to 40K.  Each case prints its max |Δ log-prob|.

    python -m pytest -m gpu -q tests/integration/test_ring_linear_long.py
"""

import math
import random

import pytest
import torch

from rl.alignment import sample_with_logprobs, trainer_logprobs
from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM
from trainer.ring_linear.random_checkpoint import build_random_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="long generations run on the GPU")]

TOL = 1e-5
MAX_LEN = 33_024           # a 32K generation after a 128-token prompt, plus slack
PIECE = 2048               # vLLM's token budget per step: long prompts are prefilled in pieces
# The tiny preset in fp32: a linear layer's state (4 heads × 64 × 64 × 4 B = 64 KiB) is one
# cache page, which holds KV_BLOCK tokens of a softmax layer's KV (2 × 2 heads × 64 × 4 B per token).
KV_BLOCK = 64


def blocks_for(tokens: int) -> int:
    """Cache blocks one sequence of ``tokens`` holds: its state page and its KV pages."""
    return 1 + math.ceil(tokens / KV_BLOCK)


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    path = build_random_checkpoint(tmp_path_factory.mktemp("ring") / "tiny", "tiny", seed=3,
                                   initializer_range=0.08, max_position_embeddings=40_960)
    model = BailingMoeLinearV2ForCausalLM.from_pretrained(str(path), dtype=torch.float32).cuda().eval()
    return path, model


def engine(path, blocks: int):
    from vllm import LLM

    return LLM(model=str(path), dtype="float32", seed=0, max_model_len=MAX_LEN, enforce_eager=True,
               max_num_batched_tokens=PIECE, max_num_seqs=4, logprobs_mode="processed_logprobs",
               num_gpu_blocks_override=blocks, enable_prefix_caching=False, disable_log_stats=False,
               attention_backend="TRITON_ATTN", gpu_memory_utilization=0.3)


def preemptions(llm) -> float:
    return sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")


def check(llm, model, prompts: list[list[int]], new_tokens: int) -> list[float]:
    """Generates ``new_tokens`` for each prompt and compares every sampled token's log-prob with
    the trainer's; returns each sequence's max |Δ|."""
    completions, engine_logp = sample_with_logprobs(llm, prompts, new_tokens)
    assert all(len(c) == new_tokens for c in completions)
    trainer = trainer_logprobs(model, prompts, completions)
    worst = []
    for b, (p, c) in enumerate(zip(prompts, completions)):
        diff = (engine_logp[b] - trainer[b]).abs()
        worst.append(diff.max().item())
        at = int(diff.argmax())
        assert worst[-1] <= TOL, (f"sequence {b} (prompt {len(p)}, {len(c)} new tokens): engine vs trainer "
                                  f"|Δ log-prob| {worst[-1]:.2e} > {TOL} at generated token {at}")
    assert torch.cat(engine_logp).std().item() > 0.3, "near-uniform distributions: the comparison says little"
    return worst


def shutdown(llm) -> None:
    import gc

    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    torch.cuda.empty_cache()


@pytest.mark.parametrize("prompt_len,new_tokens", [(20_000, 1024), (128, 32_768)], ids=["20k-prompt", "32k-new"])
def test_one_long_sequence(ring, prompt_len, new_tokens):
    """A 20K-token prompt prefilled in pieces then 1K decoded; a 32K-token generation."""
    path, model = ring
    rng = random.Random(prompt_len)
    prompt = [rng.randrange(1, model.config.vocab_size) for _ in range(prompt_len)]
    llm = engine(path, blocks=blocks_for(MAX_LEN) + 4)
    try:
        print(f"{prompt_len}-token prompt + {new_tokens} new: max |Δ log-prob|", check(llm, model, [prompt], new_tokens))
    finally:
        shutdown(llm)


def test_8k_generations_preempted_and_recomputed(ring):
    """Two 8K generations in a cache of 1.5 sequences: one is preempted and recomputed."""
    path, model = ring
    rng = random.Random(2)
    prompts = [[rng.randrange(1, model.config.vocab_size) for _ in range(64)] for _ in range(2)]
    llm = engine(path, blocks=blocks_for(64 + 8192) * 3 // 2)
    try:
        before = preemptions(llm)
        worst = check(llm, model, prompts, 8192)
        preempted = preemptions(llm) - before
        print(f"two 8K generations, {preempted:.0f} preemptions: max |Δ log-prob|", worst)
        assert preempted > 0, "no sequence was preempted: the test did not exercise recomputation"
    finally:
        shutdown(llm)

