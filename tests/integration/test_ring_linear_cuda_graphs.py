"""Ring-linear decode under CUDA graphs (GPU only; issue 18): the plugin compiled, with vLLM's
piecewise graphs and full decode graphs (``enforce_eager=False``, vLLM's ``FULL_AND_PIECEWISE``),
against the same model run eagerly (``enforce_eager=True``) and against the trainer.

One schedule of requests, driven step by step through each engine (greedy, so both engines
sample the same tokens): waves of sequences join while others decode, so steps mix fresh and
continuing sequences; most prompts are one token long, so a fresh sequence arrives as a *decode*
inside a uniform decode batch — the batch a full CUDA graph replays, where its state must start
at 0 by the kernel's masked read (nothing on the host runs there).  The engines hold BLOCKS cache
blocks (one sequence's state, or 64 tokens of KV, each), fewer than the schedule's sequences
need in all, so later sequences get slots that held finished sequences' states.

Checks: every sampled log-prob of the graph engine equals the eager engine's and the trainer's
teacher-forced one (each sequence alone, from a zero state) within TOL; at PROBE_STEPS the running
sequences' linear-attention states are equal in both engines (fp32 tolerance).  fp32 weights
(the parity bound of issue 5) with vLLM's Triton attention in IEEE fp32, as
``benchmarks/gpu/ring_vllm.py`` runs them.

    python -m pytest -m gpu -q tests/integration/test_ring_linear_cuda_graphs.py
"""

import gc
import os
import random

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")]

TOL = 2e-5  # fp32: each engine within 1e-5 of the trainer (issue 5's bar), so within 2e-5 of each other
STATE_RTOL = 1e-5  # ‖graphs − eager‖ / ‖eager‖ of a running sequence's fp32 state
BLOCKS = 10
# step → requests joining before it: (name, prompt tokens, new tokens); 17 sequences × 2 blocks
# (state + KV) > BLOCKS: slots are reused
SCHEDULE = {
    0: [("a", 5, 40), ("b", 1, 12), ("c", 23, 40)],
    3: [("d", 1, 30)],
    14: [("e", 1, 30), ("f", 7, 20), ("g", 1, 25)],
    20: [("h", 1, 20), ("i", 1, 20)],
    30: [("j", 1, 24), ("k", 3, 24), ("l", 1, 24)],
    45: [("m", 1, 16), ("n", 1, 16), ("o", 1, 16), ("p", 1, 16), ("q", 9, 16)],
}
PROBE_STEPS = (5, 16, 22, 33, 50)


class StateProbe:
    """vLLM worker extension (the test's): the linear-attention states of the running sequences."""

    def lockstep_test_cudagraph_mode(self) -> str:
        """The CUDA-graph mode the worker runs (after the model's constructor had its say)."""
        return self.vllm_config.compilation_config.cudagraph_mode.name

    def lockstep_test_states(self) -> dict[str, bytes]:
        """{request id: the fp32 states of every linear layer, ``[layers, H, d, d]`` as bytes}."""
        runner = self.model_runner
        batch = runner.input_batch
        group = next(i for i, g in enumerate(runner.kv_cache_config.kv_cache_groups)
                     if hasattr(g.kv_cache_spec, "shapes"))  # the state (mamba-style) group
        slots = batch.block_table[group].block_table.np[:batch.num_reqs, 0]
        layers = [m for m in self.vllm_config.compilation_config.static_forward_context.values()
                  if type(m).__name__ == "RingLinearAttention"]
        return {rid: torch.stack([m.kv_cache[0][int(slot)] for m in layers]).cpu().numpy().tobytes()
                for rid, slot in zip(batch.req_ids, slots)}


def run_schedule(llm, prompts: dict[str, list[int]], state_shape: tuple[int, ...]):
    """The SCHEDULE through ``llm``'s engine one step at a time: ({name: sampled tokens},
    {name: their log-probs}, {probe step: {name: states [layers, H, d, d]}})."""
    from vllm import SamplingParams, TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    tokens, logps, probes = {}, {}, {}
    step = 0
    while step <= max(SCHEDULE) or engine.has_unfinished_requests():
        for name, _, new in SCHEDULE.get(step, []):
            params = SamplingParams(max_tokens=new, temperature=0.0, logprobs=0, ignore_eos=True,
                                    detokenize=False, output_kind=RequestOutputKind.DELTA)
            engine.add_request(name, TokensPrompt(prompt_token_ids=prompts[name]), params)
            tokens[name], logps[name] = [], []
        for out in engine.step():
            c, name = out.outputs[0], out.request_id.split("-")[0]  # vLLM may suffix the ids
            tokens[name] += list(c.token_ids)
            logps[name] += [d[t].logprob for t, d in zip(c.token_ids, c.logprobs)]
        if step in PROBE_STEPS:
            states = llm.collective_rpc("lockstep_test_states")[0]
            probes[step] = {rid.split("-")[0]: torch.frombuffer(bytearray(b), dtype=torch.float32).view(-1, *state_shape)
                            for rid, b in states.items()}
        step += 1
    return tokens, {k: torch.tensor(v, dtype=torch.float64) for k, v in logps.items()}, probes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The schedule through an eager engine, then a graph engine (one at a time on the GPU)."""
    os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")  # vLLM's Triton attention: no tf32
    from vllm import LLM

    from benchmarks.gpu.ring_vllm import ensure_plugin_entry_point
    from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM
    from trainer.ring_linear.random_checkpoint import build_random_checkpoint

    ensure_plugin_entry_point()
    path = build_random_checkpoint(tmp_path_factory.mktemp("ring") / "tiny", "tiny", seed=3, initializer_range=0.08)
    model = BailingMoeLinearV2ForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    c = model.config
    state_shape = (c.num_attention_heads, c.head_dim, c.head_dim)
    rng = random.Random(0)
    prompts = {name: [rng.randrange(1, c.vocab_size) for _ in range(n)]
               for wave in SCHEDULE.values() for name, n, _ in wave}
    results = {}
    for mode in ("eager", "graphs"):
        llm = LLM(model=str(path), dtype="float32", seed=0, max_model_len=128, enforce_eager=mode == "eager",
                  max_num_seqs=8, num_gpu_blocks_override=BLOCKS, enable_prefix_caching=False,
                  async_scheduling=False, attention_backend="TRITON_ATTN", gpu_memory_utilization=0.2,
                  worker_extension_cls="tests.integration.test_ring_linear_cuda_graphs.StateProbe")
        results[mode] = (llm.collective_rpc("lockstep_test_cudagraph_mode")[0], *run_schedule(llm, prompts, state_shape))
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    return model, prompts, results


def test_graph_engine_captures_decode_graphs(runs):
    _, _, results = runs
    assert results["eager"][0] == "NONE"
    assert "FULL" in results["graphs"][0], f"the graph engine runs cudagraph_mode {results['graphs'][0]}"


def test_graph_decode_equals_eager_decode_and_the_trainer(runs):
    from rl.alignment import trainer_logprobs

    model, prompts, results = runs
    _, eager_tokens, eager_logps, _ = results["eager"]
    _, tokens, logps, _ = results["graphs"]
    names = sorted(tokens)
    for name in names:
        assert tokens[name] == eager_tokens[name], f"sequence {name}: greedy tokens differ between the engines"
    trainer = dict(zip(names, trainer_logprobs(model, [prompts[n] for n in names], [tokens[n] for n in names])))
    worst = {}
    for name in names:
        vs_eager = (logps[name] - eager_logps[name]).abs().max().item()
        vs_trainer = (logps[name] - trainer[name]).abs().max().item()
        worst[name] = (vs_eager, vs_trainer)
    bad = {n: w for n, w in worst.items() if max(w) > TOL}
    assert not bad, f"max |Δ log-prob| (graphs vs eager, graphs vs trainer) above {TOL}: {bad}"
    # the log-probs are far from constant: a stale state would move them by ~1 (DESIGN §10)
    assert torch.cat(list(logps.values())).std().item() > 0.3


def test_graph_decode_states_equal_eager_states(runs):
    _, _, results = runs
    eager, graphs = results["eager"][3], results["graphs"][3]
    compared = 0
    for step in PROBE_STEPS:
        assert eager[step].keys() == graphs[step].keys(), f"step {step}: different sequences running"
        for name, state in graphs[step].items():
            # The compiled model fuses the projections and norms (inductor), so each token's k, v
            # differ from eager by fp32 ulps, and the state sums them over the sequence: compare
            # the whole state (relative norm; a wrong or unzeroed slot is off by O(1)), and every
            # element within 1e-4 (the H100 run of 2026-12-08 saw 1.9e-5 in 7 of 32768).
            ref = eager[step][name]
            rel = ((state - ref).norm() / ref.norm()).item()
            assert rel <= STATE_RTOL, f"step {step}, sequence {name}: state off by {rel:.2e} (relative norm)"
            torch.testing.assert_close(state, ref, rtol=0, atol=1e-4,
                                       msg=lambda m, s=step, n=name: f"step {s}, sequence {n}: {m}")
            compared += 1
    assert compared >= 10
