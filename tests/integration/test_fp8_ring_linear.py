"""The recipe's FP8 switch (``model.fp8``) in both engines: the vLLM plugin's Ring-linear model
and the trainer's, every decoder projection and expert as block-scaled FP8 GEMMs (kernels.fp8).

Both quantize with the same functions, so where their inputs agree their FP8 layers agree:
teacher-forced prompts (prefill, the same chunked algorithm in both engines) match to fast
mode's 1e-5.  Decoding is where fast mode's ~1e-7 differences between the engine's recurrent
step and the trainer's chunked pass meet FP8's rounding: a value within ~1e-7 of an e4m3
rounding boundary (or a tile amax that moves the scale) quantizes to the neighbouring value, a
6% step on that element, which the linear-attention state then carries forward.  That mismatch
is measured here against the one a rollout without Lockstep's shared FP8 would have (FP8
trainer vs unquantized engine).  Only bitwise-equal upstream activations (strict mode) make FP8
decoding exact."""

import pytest
import torch

from kernels.fp8 import FP8Linear
from models.ring_linear.config import FP8_CONFIG_KEY
from rl.alignment import sample_with_logprobs, teacher_forced_logprobs, trainer_logprobs
from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM
from trainer.ring_linear.random_checkpoint import build_random_checkpoint
from trainer.worker import use_fp8

from .conftest import send_weights

pytestmark = pytest.mark.integration

TOL = 1e-5
FP8 = {"pow2_scale": False, "batch_invariant": False}


@pytest.fixture(scope="module", params=["eager", "compiled"])
def ring_fp8(request, tmp_path_factory):
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    from vllm import LLM

    path = build_random_checkpoint(tmp_path_factory.mktemp("ring") / "tiny", "tiny", seed=5, initializer_range=0.08)
    # "compiled" asks for vLLM's torch.compile; the plugin runs an FP8 engine eagerly anyway
    # (inductor's rounding, amplified by FP8, broke the teacher-forced bound: 0.8), logged —
    # the teacher-forced check below fails if it compiles
    llm = LLM(model=str(path), dtype="float32", seed=0, max_model_len=256, enforce_eager=request.param == "eager",
              max_num_batched_tokens=64, max_num_seqs=8, logprobs_mode="processed_logprobs",
              worker_extension_cls="rollout.activations.EngineExtension", gpu_memory_utilization=0.05,
              hf_overrides={FP8_CONFIG_KEY: FP8})
    model = BailingMoeLinearV2ForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    plain = BailingMoeLinearV2ForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    use_fp8(model, FP8)
    yield path, llm, model, plain
    del llm


def test_fp8_engine_matches_fp8_trainer(ring_fp8):
    path, llm, model, plain = ring_fp8
    assert isinstance(model.model.layers[0].attention.query_key_value, FP8Linear)
    assert type(model.lm_head) is torch.nn.Linear  # the head keeps fp32 logits
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, model.config.vocab_size, (n,), generator=gen).tolist() for n in (1, 3, 9, 17, 23, 40, 55, 70)]
    completions, engine = sample_with_logprobs(llm, prompts, 48)
    # teacher forcing: a 118-token sequence prefilled in two pieces of the 64-token step budget
    ids = prompts[-1] + completions[-1]
    (trainer,) = trainer_logprobs(model, [ids[:1]], [ids[1:]])
    (unquantized,) = trainer_logprobs(plain, [ids[:1]], [ids[1:]])
    prefill = teacher_forced_logprobs(llm, ids)
    assert (prefill - trainer).abs().max().item() <= TOL
    assert (trainer - unquantized).abs().max().item() > 1e-3  # FP8 rounding shows: the switch took effect
    # sampled tokens (decoding): where and how early a rounding flips varies from run to run
    # (CPU GEMM threads), so the bounds are loose; measured mean ratios 0.03–0.12, medians ≤ 1e-4
    fp8 = torch.cat([e - t for e, t in zip(engine, trainer_logprobs(model, prompts, completions))]).abs()
    unshared = torch.cat([e - u for e, u in zip(engine, trainer_logprobs(plain, prompts, completions))]).abs()
    assert fp8.median() < 1e-3 and fp8.mean() < 0.25 * unshared.mean(), (fp8.median(), fp8.mean(), unshared.mean())
    assert (fp8 <= TOL).float().mean() > 0.25  # whole stretches of tokens agree to fp32 rounding


def test_fp8_engine_takes_new_weights(ring_fp8):
    """After an in-place weight sync the FP8 engine quantizes the new weights (nothing stale)."""
    path, llm, model, plain = ring_fp8
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.03)
    state = model.checkpoint_state_dict()  # the engine loads checkpoint names
    assert send_weights(llm, state) == [len(state)]
    llm.reset_prefix_cache()
    ids = torch.randint(1, model.config.vocab_size, (40,), generator=gen).tolist()
    engine = teacher_forced_logprobs(llm, ids)
    (trainer,) = trainer_logprobs(model, [ids[:1]], [ids[1:]])
    assert (engine - trainer).abs().max().item() <= TOL
