"""Algorithms as small pure tensor functions: advantages and mismatch metrics (the losses the
trainer applies live with it, in trainer/losses.py)."""
