"""Algorithms as small pure tensor functions: advantages, policy losses, corrections, mismatch."""
