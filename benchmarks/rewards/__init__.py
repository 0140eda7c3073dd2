"""The reward pool: throughput and tail latency."""
