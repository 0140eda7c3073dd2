#!/bin/bash
# The GPU checks of the RL loop beyond the step benchmarks (issue 17), each part fitting one
# <= 10-minute device call once the kit is in /tmp/site (benchmarks/gpu/README.md):
#   tests   the `gpu`-marked tests with compiled Triton kernels (pytest wheels in /tmp/pt)
#   bf16    the demo recipe in bf16, 20 steps (its sync probe stopped it at step 6 once)
#   zero3   gpu_ring.yaml under ZeRO-3: 2 steps, a checkpoint at step 2 (each holds ~16 GB)
#   resume  the zero3 run resumed to 3 steps, then `lockstep eval` of its GPU checkpoint
#   eval    the demo recipe, 2 steps and a checkpoint, then `lockstep eval` of it (no ZeRO-3 run needed)
#   strict  strict mode: the demo and gpu_ring recipes in bf16, fast and strict, 3 steps each (benchmarks/gpu/strict.py)
#   step    the training step: grouped vs per-expert with one step's GPU profile, then bf16 vs FP8 (train_step --fp8)
#   sync    the weight sync: direct copies vs vLLM's reload, each split into pack / verify / load / probe
#   rollout the GPU preset's rollout, eager bf16 vs FP8, batch 64 and 256 (ring-graphs alone: it compiles ~5 min)
# Usage: bash benchmarks/gpu/loop_checks.sh PART...   (writes logs and results under $OUT)
set -u
: "${OUT:?set OUT to the folder that comes back}"
export PYTHONPATH=/tmp/site:/tmp/pt PYTHONUNBUFFERED=1
# short on purpose: one device call holds SFT (20 steps), two RL steps, an eval of 50 problems and a
# ZeRO-3 checkpoint; start-up (trainer 30 s, eager vLLM 75 s) dominates
ZERO3=(recipes/gpu_ring.yaml name=ring-z3 trainer.zero_stage=3 sft.steps=20 schedule.eval_every=2
       schedule.eval_limit=50 schedule.save_every=2 schedule.keep_last=2)
# TESTS: the gpu-marked test files (default: all); TESTS_TIMEOUT: seconds for them
TESTS=${TESTS:-tests}

for part in "$@"; do
  echo "== $part $(date -u +%H:%M:%S)"
  case $part in
    tests)
      timeout "${TESTS_TIMEOUT:-180}" python3 -m pytest -v -p no:cacheprovider -rf --tb=short --durations=15 -m gpu $TESTS \
        > "$OUT/gpu_tests.txt" 2>&1
      grep -E "PASSED|FAILED|ERROR" "$OUT/gpu_tests.txt" | tail -60; tail -25 "$OUT/gpu_tests.txt" ;;
    bf16)
      python3 -m benchmarks.gpu.rl_step --out "$OUT" --timeout 240 \
        demo-bf16=recipes/demo.yaml:trainer.num_ranks=1,model.dtype=bfloat16,schedule.steps=20 ;;
    zero3)
      timeout 330 python3 -m rl.cli run "${ZERO3[@]}" schedule.steps=2 --no-resume > "$OUT/ring-z3.log" 2>&1
      echo "first run rc $?"; tail -4 "$OUT/ring-z3.log"
      cp runs/ring-z3/metrics.jsonl "$OUT/ring-z3.metrics.jsonl" 2>/dev/null ;;
    resume)
      timeout 220 python3 -m rl.cli run "${ZERO3[@]}" schedule.steps=3 --resume > "$OUT/ring-z3-resume.log" 2>&1
      echo "resume rc $?"; grep -m1 "resumed from" "$OUT/ring-z3-resume.log"; tail -4 "$OUT/ring-z3-resume.log"
      cp runs/ring-z3/metrics.jsonl "$OUT/ring-z3-resume.metrics.jsonl" 2>/dev/null
      timeout 150 python3 -m rl.cli eval runs/ring-z3 --limit 50 > "$OUT/ring-z3-eval.log" 2>&1
      echo "eval rc $?"; tail -6 "$OUT/ring-z3-eval.log" ;;
    eval)  # `lockstep eval` of a GPU checkpoint without the ZeRO-3 run: the demo, 2 steps, saved
      timeout 240 python3 -m rl.cli run recipes/demo.yaml name=demo-eval trainer.num_ranks=1 schedule.steps=2 \
        schedule.save_every=2 schedule.eval_every=0 --no-resume > "$OUT/demo-eval-run.log" 2>&1
      echo "run rc $?"; tail -3 "$OUT/demo-eval-run.log"
      timeout 150 python3 -m rl.cli eval runs/demo-eval --limit 50 > "$OUT/demo-eval.log" 2>&1
      echo "eval rc $?"; tail -6 "$OUT/demo-eval.log" ;;
    strict)
      timeout 560 python3 -m benchmarks.gpu.strict --out "$OUT" ;;
    step)
      timeout 280 python3 -m benchmarks.gpu.train_step --steps 3 --profile 25 > "$OUT/train_step.txt" 2>&1
      echo "train_step rc $?"; grep -E "^\||profiled step" "$OUT/train_step.txt"
      timeout 280 python3 -m benchmarks.gpu.train_step --fp8 > "$OUT/train_step_fp8.txt" 2>&1
      echo "train_step --fp8 rc $?"; tail -30 "$OUT/train_step_fp8.txt" ;;
    sync)
      timeout 300 python3 -m benchmarks.gpu.weight_sync --out "$OUT" > "$OUT/weight_sync.txt" 2>&1
      echo "weight_sync rc $?"; tail -25 "$OUT/weight_sync.txt" ;;
    rollout)
      timeout 420 python3 -m benchmarks.gpu.rollout --out "$OUT" --engines ring,ring-fp8 --preset mini-1b \
        --batch 64,256 --ttft '' --timeout 190 > "$OUT/rollout.txt" 2>&1
      echo "rollout rc $?"; grep -E '"kind": "(decode|ratio|error)"' "$OUT/rollout.txt" ;;
    *) echo "unknown part $part (tests, bf16, zero3, resume, eval, strict, step, sync, rollout)"; exit 2 ;;
  esac
done
