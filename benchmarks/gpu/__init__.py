"""Whole-pipeline runs on a CUDA machine (vLLM plugin parity and speed, rollout sleep/wake)."""
