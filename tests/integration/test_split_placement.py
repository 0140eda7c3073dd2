"""Split placement on CPU: one trainer rank and one rollout engine on bundles of their own, the
weights broadcast from the trainer to the engine over a Gloo group (`sync.transport:
collective`, the NCCL path's code), verified by the sync's checksums and probe every step.

The broadcast must deliver exactly the host path's weights. After the run's steps, the trainer's
weights are sent again, once by each transport, and the engine's log-probs of the probe and of
fresh completions must be bit-for-bit equal: the rollout side of every mismatch metric (a_t;
the trainer's b_t is the same either way) is then what the host transport gives."""

import math
from pathlib import Path

import pytest
import ray

from rl.config import from_data
from rl.driver import Run
from rl.metrics import read_history
from rl.weight_sync import HostTransport

from .conftest import tiny_recipe

pytestmark = pytest.mark.integration


def test_split_collective_sync_gives_the_host_paths_bits(tmp_path, shared_sft, capsys):
    recipe = tiny_recipe(tmp_path, name="split", trainer={"num_ranks": 1}, rollout={"num_workers": 1},
                         sft={"steps": 60}, ray={"address": "local", "placement": "split"}, sync={"transport": "collective"},
                         data={"eval": []}, schedule={"steps": 2, "eval_every": 0, "save_every": 0})
    run = Run(from_data(shared_sft(recipe)))
    try:
        summary = run.loop()  # the RL steps and the final save; the actors stay up for the comparison
        out = capsys.readouterr().out
        assert "placement: split, 2 bundle(s), CPU each: bundle 0 (node" in out and \
            "): trainer rank 0; bundle 1 (node" in out and "): rollout engine 0" in out
        assert "weight sync: broadcast from trainer rank 0 over a gloo group with the engines" in out
        steps = [h for h in read_history(Path(summary["run_dir"])) if "reward/mean" in h]
        assert [h["step"] for h in steps] == [1, 2]
        for h in steps:
            assert h["sync/probe_max_abs_diff"] <= 1e-3 and h["sync/on_device"] == 0.0
            assert h["sync/tensors"] > 0 and h["sync/bytes"] > 0 and math.isfinite(h["mismatch/k3"])
        assert any(h["sync/probe_change"] > 1e-4 for h in steps)  # new weights arrived, and were verified
        assert run.sync.transport.groups_made == 1  # one group for the whole run

        collective, host = run.sync.transport, HostTransport(run.cfg.trainer.sync_bucket_mib)
        engine = run.rollout.actors[0]
        texts = [run.sync.probe_ids]
        completions = ray.get(engine.generate.remote([run.sync.probe_ids[:6]] * 2, 2, 12, 1.0))
        texts += [run.sync.probe_ids[:6] + c.token_ids for group in completions for c in group]

        def engine_logprobs(transport, version):
            loads = transport.load(run.rollout, transport.gather(run.trainers), version, run.sync.probe_ids)
            transport.release(run.trainers)
            return loads[0].probe, ray.get([engine.prompt_logprobs.remote(t) for t in texts])

        by_collective = engine_logprobs(collective, version=3)
        by_host = engine_logprobs(host, version=4)
        assert by_collective == by_host  # the same bits
        trainer = run.trainers.probe_logprobs(run.sync.probe_ids).result()
        assert max(abs(a - b) for a, b in zip(by_collective[0], trainer)) <= 1e-3
        assert collective.groups_made == 1
    finally:
        run.shutdown()
