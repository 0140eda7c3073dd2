"""Rollout engines on CPU: the Ring-linear vLLM plugin against dense vLLM and transformers."""
