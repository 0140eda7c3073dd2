"""Profiling and one-off tools: not benchmarks (no anchor); kept for the measurements they made."""
