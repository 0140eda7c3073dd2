"""fp8_gemm_grouped (kernels/fp8/grouped.py): each group's rows bitwise what fp8_gemm gives on
them alone, near the float64 reference, empty groups, K tails, bad operands. Triton runs in the
interpreter (conftest); on a Hopper GPU (TRITON_INTERPRET=0) the compiled kernel is checked
against fp8_gemm's own kernels."""

from __future__ import annotations

import os

import pytest
import torch

from kernels.fp8 import fp8_gemm, fp8_gemm_grouped, quantize_act, quantize_weight
from kernels.fp8 import reference as R

from test_fp8 import BACKENDS, assert_bitwise, make_input, poison_empty, rel  # noqa: F401

_CUDA = torch.cuda.is_available()


def grouped_operands(counts: list[int], n: int, k: int, device="cpu", seed=0):
    """Rows for each group (count rows each; zeros allowed) and one [n, k] weight per group."""
    a = (make_input(sum(counts), k, seed=seed) if sum(counts) else torch.zeros(0, k, dtype=torch.bfloat16)).to(device)
    weights = [make_input(n, k, dtype=torch.float32, seed=seed + 1 + g).to(device) for g in range(len(counts))]
    aq, as_ = quantize_act(a)
    quantized = [quantize_weight(w) for w in weights]
    bq = torch.stack([q for q, _ in quantized])
    bs = torch.stack([s for _, s in quantized])
    offsets = torch.tensor([0, *counts], device=device).cumsum(0)
    return aq, as_, bq, bs, offsets


def per_group(aq, as_, bq, bs, offsets, out_dtype, backend):
    """fp8_gemm on each group's rows alone (what per-expert FP8 modules compute)."""
    bounds = offsets.tolist()
    return torch.cat([fp8_gemm(aq[s:e], as_[s:e], bq[g], bs[g], out_dtype, backend=backend)
                      for g, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])) if e > s])


_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "torch" or _INTERPRETED])
@pytest.mark.parametrize("counts,n,k", [([3, 0, 40, 1, 33], 70, 300), ([0, 0, 5], 130, 128),
                                        ([64, 1], 33, 260), ([1], 1, 16), ([32, 0, 0, 65, 31], 40, 128)])
def test_grouped_gemm_matches_fp8_gemm_per_group_bitwise(backend, counts, n, k, poison_empty):
    aq, as_, bq, bs, offsets = grouped_operands(counts, n, k)
    for out_dtype in (torch.float32, torch.bfloat16):
        c = fp8_gemm_grouped(aq, as_, bq, bs, offsets, out_dtype, backend=backend)
        assert c.shape == (sum(counts), n) and c.dtype == out_dtype
        assert_bitwise(c, per_group(aq, as_, bq, bs, offsets, out_dtype, backend))
    bounds = offsets.tolist()
    ref = torch.cat([R.fp8_gemm_ref(aq[s:e], as_[s:e], bq[g], bs[g])
                     for g, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])) if e > s])
    assert rel(c.float(), ref) < 1e-2  # bf16 output


def test_grouped_gemm_no_rows_and_bad_operands():
    aq, as_, bq, bs, offsets = grouped_operands([0, 0], 8, 128)
    assert fp8_gemm_grouped(aq, as_, bq, bs, offsets).shape == (0, 8)
    aq, as_, bq, bs, offsets = grouped_operands([2, 3], 8, 128)
    with pytest.raises(ValueError, match="offsets"):
        fp8_gemm_grouped(aq, as_, bq, bs, offsets[:-1])
    with pytest.raises(ValueError, match="bq"):
        fp8_gemm_grouped(aq, as_, bq[0], bs, offsets)
    with pytest.raises(ValueError, match="b_scale"):
        fp8_gemm_grouped(aq, as_, bq, bs[:, :, :0], offsets)
    with pytest.raises(ValueError, match="out_dtype"):
        fp8_gemm_grouped(aq, as_, bq, bs, offsets, torch.int32)
    with pytest.raises(ValueError, match="one device"):
        fp8_gemm_grouped(aq, as_, bq, bs, offsets.to("meta"))


@pytest.mark.gpu
@pytest.mark.skipif(not _CUDA, reason="needs a GPU")
@pytest.mark.parametrize("counts", [[2] * 40 + [0, 5, 1], [300, 0, 129, 64, 63, 65, 1]])
def test_grouped_gemm_compiled_matches_fp8_gemm_per_group(counts):
    """The compiled kernel against fp8_gemm's (Gluon / TMA) kernels on each group: the bits
    must agree for the rollout's grouped experts to compute what the trainer's modules do."""
    aq, as_, bq, bs, offsets = grouped_operands(counts, 512, 2048, device="cuda")
    for config in (None, (64, 128, 4, 4), (128, 128, 8, 4)):
        c = fp8_gemm_grouped(aq, as_, bq, bs, offsets, torch.bfloat16, config=config)
        assert_bitwise(c, per_group(aq, as_, bq, bs, offsets, torch.bfloat16, "auto"))
