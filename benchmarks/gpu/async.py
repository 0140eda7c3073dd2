"""Asynchronous rollout on one GPU (issue 24): benchmarks/rl/async_cpu.py's comparison —
samples per hour and held-out accuracy at rollout.max_staleness 0, 1, 2 and with partial
rollouts, one invocation — on the GPU Ring-linear recipe with long, heavy-tailed generations
(up to 16K new tokens: the policy's own lengths, capped there).

    python -m benchmarks.gpu.async [RECIPE] [key.sub=value ...] [--steps 20] [--variants k0,k1,k2,partial]

Not run yet (written on a CPU machine). The issue's target: ≥ 1.5× samples/hour at staleness ≤ 2
with accuracy within noise of staleness 0 over ≥ 2 seeds (`seed=` override, one invocation each).
"""

from benchmarks.rl.async_cpu import main

# Colocated on one GPU the engine stays resident when max_staleness ≥ 1 (it samples during the
# update), so its memory share (rollout.gpu_memory_utilization) must leave the trainer room.
GPU_OVERRIDES = ["rollout.max_new_tokens=16384", "rollout.max_model_len=16640"]

if __name__ == "__main__":
    main("recipes/gpu_ring.yaml", GPU_OVERRIDES, title="GPU")
