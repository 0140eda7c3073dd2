"""The output-tile order the Triton GEMMs share (FP8 GEMM, LM-head logits).

Tiles are visited in groups of GROUP_M row-tiles per column-tile: consecutive programs read the
same B column-tile while it is still in L2, instead of sweeping a whole row of tiles first.
"""

from __future__ import annotations

from .backend import HAS_TRITON, tl, triton

if HAS_TRITON:

    @triton.jit
    def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        """(pid_m, pid_n): the row- and column-tile of program `pid` of an M x N output."""
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        group = GROUP_M * num_pid_n
        first_m = (pid // group) * GROUP_M
        group_m = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % group_m
        pid_n = (pid % group) // group_m
        return pid_m, pid_n
