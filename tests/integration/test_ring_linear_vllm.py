"""The Ring-linear hybrid model in vLLM (the Lockstep plugin) against the trainer's model and a
float64 forward: same weights, same tokens, fp32 (issue 5's parity bar: max |Δ log-prob| ≤ 1e-5).

Two engines, eager and compiled (vLLM's default: the plugin's model under torch.compile, its
recurrence and routed experts as custom ops), each with a small token budget per step so that
the 70-token prompt is prefilled in two pieces and the second piece shares a step with other sequences' decodes (the
state-cache paths: fresh slots, chunked prefill with a carried state, mixed prefill/decode), and
a cache of only BLOCKS blocks (128 tokens of KV, or one sequence's state, each), so that longer
generations preempt sequences and vLLM recomputes them (their state rebuilt from a fresh slot).
Prefix caching is on (vLLM's default for hybrid models: the state is cached at block boundaries).
When the log-probs disagree, the failure names the first module whose activations diverge
(hooks on both sides, one sequence decoded token by token vs one training forward).
"""

import hashlib
import random

import pytest
import torch
from safetensors.torch import save

from models.ring_linear.reference import reference_logits
from rl.alignment import first_diverging_module, sample_with_logprobs, teacher_forced_logprobs, trainer_logprobs
from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM
from trainer.ring_linear.random_checkpoint import build_random_checkpoint

from .conftest import send_weights

pytestmark = pytest.mark.integration

TOL = 1e-5
PROMPT_LENS = [1, 5, 23, 70]
NEW_TOKENS = 64
# KV + state blocks of the engines: a sequence of up to 256 tokens holds 4 (2 of KV, 2 of state
# in prefix caching's "align" mode), so 8 blocks hold two such sequences at once
BLOCKS = 8


@pytest.fixture(scope="module", params=["eager", "compiled"])
def ring(request, tmp_path_factory):
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    from vllm import LLM

    # A larger init than the default 0.02 so that the distributions are far from uniform and
    # every layer's output matters to the log-probs.
    path = build_random_checkpoint(tmp_path_factory.mktemp("ring") / "tiny", "tiny", seed=3,
                                   initializer_range=0.08)
    llm = LLM(model=str(path), dtype="float32", seed=0, max_model_len=256, enforce_eager=request.param == "eager",
              max_num_batched_tokens=64, max_num_seqs=8, logprobs_mode="processed_logprobs",
              num_gpu_blocks_override=BLOCKS, disable_log_stats=False,  # metrics: preemptions, prefix hits
              worker_extension_cls="rollout.activations.EngineExtension", gpu_memory_utilization=0.05)
    model = BailingMoeLinearV2ForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    yield path, llm, model
    del llm


def test_sampled_logprobs_match_trainer_and_float64(ring):
    path, llm, model = ring
    rng = random.Random(0)
    vocab = model.config.vocab_size
    prompts = [[rng.randrange(1, vocab) for _ in range(n)] for n in PROMPT_LENS]
    completions, engine = sample_with_logprobs(llm, prompts, NEW_TOKENS)
    assert all(len(c) == NEW_TOKENS for c in completions)
    trainer = trainer_logprobs(model, prompts, completions)
    state = model.checkpoint_state_dict()
    for b, (p, c) in enumerate(zip(prompts, completions)):
        ref = reference_logits(state, model.config, p + c).log_softmax(-1)
        ref = ref[len(p) - 1 : -1].gather(1, torch.tensor(c)[:, None])[:, 0]
        diff = (engine[b] - trainer[b]).abs().max().item()
        if diff > TOL:
            why = first_diverging_module(llm, model, p, TOL)
            pytest.fail(f"prompt length {len(p)}: engine vs trainer max |Δ log-prob| {diff:.2e} > {TOL}; {why}")
        # Against float64, the fp32 rounding of a log-prob scales with its size: 1e-5 relative
        # to max(1, |log p|) (a sampled token at log p = -14 carries ~1e-5 of fp32 error).
        bound = TOL * ref.abs().clamp(min=1.0)
        for name, got in (("engine", engine[b]), ("trainer", trainer[b])):
            worst = ((got - ref).abs() / bound).max().item()
            assert worst <= 1.0, f"{name} vs float64, prompt length {len(p)}: {worst:.2f}x the bound"
    # the sampled distribution is far from uniform: the comparison is not of near-constants
    assert torch.cat(engine).std().item() > 0.3


def counter(llm, name: str) -> float:
    """A vLLM counter's value (summed over its labels; both engines of the module count in it,
    so tests read differences)."""
    return sum(m.value for m in llm.get_metrics() if m.name == name)


def test_long_prompt_prefix_cache_and_preemption_keep_the_state(ring):
    """Three generations, 32 new tokens each: a 200-token prompt, prefilled in 4 chunks of the
    64-token step budget; a prompt sharing its first 150 tokens, which starts from the prefix
    cache (state restored at the 128-token block boundary); four 110-token prompts that outgrow
    the engine's BLOCKS cache blocks, so vLLM preempts some and recomputes them on resumption
    (prompt and the tokens sampled so far, from a fresh state slot).  Every sampled token's
    log-prob equals the trainer's teacher-forced one."""
    path, llm, model = ring
    rng = random.Random(5)
    vocab = model.config.vocab_size
    long = [rng.randrange(1, vocab) for _ in range(200)]
    shared = long[:150] + [rng.randrange(1, vocab) for _ in range(40)]
    crowd = [[rng.randrange(1, vocab) for _ in range(110)] for _ in range(4)]
    llm.reset_prefix_cache()
    hits, preempted = counter(llm, "vllm:prefix_cache_hits"), counter(llm, "vllm:num_preemptions")
    prompts, completions, engine = [], [], []
    for batch in ([long], [shared], crowd):  # one after the other: the 8 blocks hold little
        if batch is crowd:
            hits = counter(llm, "vllm:prefix_cache_hits") - hits
        done, logps = sample_with_logprobs(llm, batch, 32)
        prompts, completions, engine = prompts + batch, completions + done, engine + logps
    preempted = counter(llm, "vllm:num_preemptions") - preempted
    trainer = trainer_logprobs(model, prompts, completions)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        diff = (engine[b] - trainer[b]).abs().max().item()
        assert diff <= TOL, f"sequence {b} (prompt {len(p)} tokens): engine vs trainer |Δ log-prob| {diff:.2e}"
    assert hits >= 128, f"{hits} prompt tokens came from the prefix cache: the shared prefix was not reused"
    assert preempted > 0, "no sequence was preempted: the test did not exercise recomputation"


def test_decode_activations_match_training_forward(ring):
    """Inference decode (token by token, state carried in vLLM's cache) vs one training forward,
    every layer's attention, feed-forward and output."""
    path, llm, model = ring
    prompt = [int(t) for t in torch.randint(1, model.config.vocab_size, (23,), generator=torch.Generator().manual_seed(1))]
    if not llm.llm_engine.vllm_config.model_config.enforce_eager:
        # a compiled model runs no module hooks: recording must refuse, not return nothing
        with pytest.raises(Exception, match="needs an eager engine"):  # vLLM wraps the worker error
            first_diverging_module(llm, model, prompt, TOL)
        return
    assert first_diverging_module(llm, model, prompt, TOL) == "all modules agree"


def test_weights_update_in_place(ring):
    """The trainer's weight buckets load into the running engine (the plugin's direct copies,
    `rollout.ring_linear.copy_plan`): afterwards the engine matches the updated trainer model."""
    path, llm, model = ring
    updated = BailingMoeLinearV2ForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in updated.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.03)
    tensors = {k: v.contiguous() for k, v in updated.checkpoint_state_dict().items()}
    names = list(tensors)
    blobs = [save({n: tensors[n] for n in names[i : i + 10]}) for i in range(0, len(names), 10)]
    counts = llm.collective_rpc("lockstep_load_buckets", args=(blobs, [hashlib.sha256(b).hexdigest() for b in blobs]))
    assert counts == [len(names)]
    llm.reset_prefix_cache()
    ids = [int(t) for t in torch.randint(1, model.config.vocab_size, (40,), generator=gen)]
    engine = teacher_forced_logprobs(llm, ids)
    with torch.no_grad():
        ref = updated(torch.tensor([ids])).logits[0, :-1].double().log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        old = model(torch.tensor([ids])).logits[0, :-1].double().log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert (engine - ref).abs().max().item() <= TOL
    assert (engine - old).abs().max().item() > 1e-3  # the weights really moved


def load_through(llm, state: dict, direct: bool) -> tuple[torch.Tensor, dict[str, str]]:
    """``state`` into the engine in three buckets, by direct copies or vLLM's reload; returns
    the teacher-forced log-probs of a fixed text and every engine parameter's sha256."""
    assert llm.collective_rpc("lockstep_use_direct_copy", args=(direct,)) == [direct]
    names = list(state)
    blobs = [save({n: state[n].contiguous() for n in names[i::3]}) for i in range(3)]
    counts = llm.collective_rpc("lockstep_load_buckets", args=(blobs, [hashlib.sha256(b).hexdigest() for b in blobs]))
    assert counts == [len(names)]
    assert [r["direct_copy"] for r in llm.collective_rpc("lockstep_sync_report")] == [direct]
    llm.reset_prefix_cache()
    return teacher_forced_logprobs(llm, list(range(3, 43))), llm.collective_rpc("lockstep_parameter_sha256")[0]


def test_direct_copies_give_the_bits_of_the_reload(ring):
    """The same update through vLLM's reload (the plugin's load_weights, layer by layer) and
    through the direct copies: every engine parameter has the same bits, the log-probs are equal."""
    path, llm, model = ring
    state = {k: v.detach() for k, v in model.checkpoint_state_dict().items()}
    gen = torch.Generator().manual_seed(11)
    updated = {k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
    logp_reload, bits_reload = load_through(llm, updated, direct=False)
    logp_back, bits_back = load_through(llm, state, direct=True)  # the checkpoint again, by copies
    assert all(bits_back[n] != bits_reload[n] for n in bits_reload)  # every parameter moved back
    logp_direct, bits_direct = load_through(llm, updated, direct=True)
    assert bits_direct == bits_reload
    assert torch.equal(logp_direct, logp_reload)
    assert (logp_direct - logp_back).abs().max().item() > 1e-3  # the update shows in the log-probs


def test_an_update_that_does_not_fit_is_refused_whole(ring):
    """Direct copies: a tensor of the wrong shape, or one missing, is refused by name before any
    copy: the engine's weights are untouched."""
    path, llm, model = ring
    before = llm.collective_rpc("lockstep_parameter_sha256")[0]
    state = {k: v.detach() + 0.01 for k, v in model.checkpoint_state_dict().items()}
    dense = "model.layers.1.attention.dense.weight"
    width = state[dense].shape[1]
    with pytest.raises(Exception, match=rf"{dense} arrives as \[{state[dense].shape[0]}, {width - 1}\]"):
        load_through(llm, state | {dense: state[dense][:, 1:]}, direct=True)
    expert = "model.layers.2.mlp.experts.3.down_proj.weight"
    with pytest.raises(Exception, match=rf"1 of the engine's weights were not sent \({expert}\)"):
        load_through(llm, {k: v for k, v in state.items() if k != expert}, direct=True)
    assert llm.collective_rpc("lockstep_parameter_sha256")[0] == before


def test_bad_weight_updates_are_refused(ring):
    """vLLM's reload path (the plugin's load_weights): an update naming a weight the model lacks,
    or only part of a layer's experts (the engine keeps them stacked), is an error that lists the
    names.  Runs last: the refused reload leaves the engine's weights undefined."""
    path, llm, model = ring
    state = model.checkpoint_state_dict()
    assert llm.collective_rpc("lockstep_use_direct_copy", args=(False,)) == [False]
    with pytest.raises(Exception, match="model.layers.0.mlp.bogus.weight"):
        send_weights(llm, {"model.layers.0.mlp.bogus.weight": torch.zeros(3)})
    moe = next(i for i in range(model.config.num_hidden_layers) if model.config.is_moe_layer(i))
    one = f"model.layers.{moe}.mlp.experts.0.gate_proj.weight"
    with pytest.raises(Exception, match=rf"lacks \d+ expert weights.*model\.layers\.{moe}\.mlp\.experts\.0\.down_proj\.weight"):
        send_weights(llm, {one: state[one]})
