"""Imported once by the forkserver (and by each "spawn" worker): import math-verify and run one
parse so its regexes are compiled and ANTLR is warm before workers are forked from it."""

from rewards import accuracy, worker  # noqa: F401

accuracy._parse_cached("\\frac{1}{2}")
