"""kernels/fp8 against its references: quantization (bitwise), GEMM (float64), FP8Linear grads,
fused norm/SwiGLU + quant, batch invariance. Triton runs in the interpreter (conftest)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.fp8 import (
    FP8_DTYPE,
    FP8Linear,
    fp8_gemm,
    fp8_linear,
    quantize_act,
    quantize_act_both,
    quantize_act_t,
    quantize_weight,
    quantize_weight_t,
    rmsnorm_quant,
    silu_mul_quant,
)
from kernels.fp8 import reference as R
from kernels.fp8.gemm_torch import fp8_gemm_torch, fp8_to_f64
from kernels.fp8.quantize_torch import quantize_act_t_torch, quantize_act_torch, quantize_weight_torch

BACKENDS = ["torch", "triton"]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == FP8_DTYPE else t


def assert_bitwise(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.equal(bits(a), bits(b)), f"{(bits(a) != bits(b)).sum()} elements differ"


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make_input(m, k, dtype=torch.bfloat16, seed=0):
    """Random values with ×100 outliers, a tiny-magnitude row and an all-zero 128-tile."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    x = torch.where(torch.rand(m, k, generator=g) < 0.01, x * 100, x)
    x[m // 2] *= 1e-6
    if k > 128:
        x[:, 128:256] = 0
    return x.to(dtype)


@pytest.fixture
def poison_empty(monkeypatch):
    """Every torch.empty / torch.empty_strided inside the kernels returns NaN-filled memory:
    unwritten outputs fail."""

    def poisoned(real):
        def empty(*args, **kwargs):
            t = real(*args, **kwargs)
            if t.dtype == FP8_DTYPE:
                t.view(torch.uint8).fill_(0x7F)  # e4m3fn NaN
            elif t.is_floating_point():
                t.fill_(float("nan"))
            return t

        return empty

    monkeypatch.setattr(torch, "empty", poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_strided", poisoned(torch.empty_strided))


# ----------------------------------------------------------------------------- quantization


@pytest.mark.parametrize("pow2", [False, True])
@pytest.mark.parametrize("shape", [(70, 300), (1, 128), (129, 257)])
def test_quantize_act_triton_matches_reference_bitwise(shape, pow2, poison_empty):
    x = make_input(*shape)
    q, s = quantize_act(x, pow2, backend="triton")
    qr, sr = R.quantize_act_ref(x, pow2)
    assert_bitwise(q, qr)
    assert_bitwise(s, sr)
    qt, st = quantize_act_t(x, pow2, backend="triton")
    qtr, str_ = R.quantize_act_t_ref(x, pow2)
    assert_bitwise(qt, qtr)
    assert_bitwise(st, str_)
    q2, s2, qt2, st2 = quantize_act_both(x, pow2, backend="triton")
    for a, b in ((q2, qr), (s2, sr), (qt2, qtr), (st2, str_)):
        assert_bitwise(a, b)


def _rn32(x):
    """Exact rational → the nearest fp32 value (ties to even), as a Fraction (normal range)."""
    from fractions import Fraction

    if x == 0:
        return Fraction(0)
    sign, x = (-1 if x < 0 else 1), abs(x)
    e = x.numerator.bit_length() - x.denominator.bit_length()
    e -= Fraction(2) ** e > x
    ulp = Fraction(2) ** (max(e, -126) - 23)
    n, rem = divmod(x / ulp, 1)
    n += rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2 == 1)
    return sign * n * ulp


def test_fma_division_is_ieee_division():
    """The compiled kernels divide x by a tile's scale b as q = RN(x·inv), inv = RN(1/b), then
    q += RN(x - b·q)·inv (FMA remainder) once for bf16 x, twice otherwise (quantize.to_e4m3).
    Emulated in exact arithmetic: equal to RN(x / b) for every pair of bf16 significand and
    scale significand (exhaustive: the exponents only shift the result), and on random fp32."""
    import random
    from fractions import Fraction

    def fma_div(a, b, steps):
        inv = _rn32(1 / b)
        q = _rn32(a * inv)
        for _ in range(steps):
            q = _rn32(q + _rn32(a - b * q) * inv)
        return q

    scales = {_rn32(Fraction(128 + m, 128) / 448) for m in range(128)}  # every bf16 amax
    for b in scales:
        for m in range(128):
            a = Fraction(128 + m, 128)
            assert fma_div(a, b, 1) == _rn32(a / b), (a, b)
    rng = random.Random(0)
    for _ in range(2000):
        a, amax = (Fraction(rng.randrange(1 << 23, 1 << 24), 1 << 23) for _ in range(2))
        b = _rn32(amax / 448)
        assert fma_div(a, b, 2) == _rn32(a / b), (a, b)


def test_amax16_scale_division_is_ieee_division():
    """tile_scale(AMAX16=True) forms s = RN(amax / 448) as q = RN(amax·Y), Y = RN(1/448), then
    s = RN(q + RN(amax - 448·q)·Y) (two FMAs). Emulated in exact arithmetic for every
    non-negative finite bf16 and fp16 value (subnormals included): equal to RN(amax / 448)."""
    from fractions import Fraction

    y = _rn32(Fraction(1, 448))
    assert Fraction(torch.tensor(0.002232142857142857, dtype=torch.float32).item()) == y  # the literal
    bits = torch.arange(0, 1 << 15, dtype=torch.int32).to(torch.int16)
    values = set()
    for dtype in (torch.bfloat16, torch.float16):
        v = bits.view(dtype).float()
        values.update(v[torch.isfinite(v)].tolist())
    for a in map(Fraction, values):
        q = _rn32(a * y)
        s = _rn32(q + _rn32(a - 448 * q) * y)
        assert s == _rn32(a / 448), a


def _hard_quant_input(dtype, device="cpu"):
    """[384, 640]: every bf16 significand against every scale significand (rows 0-255: row r has
    amax significand r//2 and 64 values a < amax per 128-tile, both signs), signed zeros,
    tiny tiles (scales far below 2^-64: subnormal bf16/fp32 values, scales that underflow to 0),
    ×100 outliers."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(384, 640, generator=g)
    x = torch.where(torch.rand(384, 640, generator=g) < 0.01, x * 100, x)
    r = torch.arange(256)
    amax = 1 + (r // 2).float() / 128  # the tile's amax, placed in column 0 of each tile
    sig = 1 + ((r % 2)[:, None] * 64 + torch.arange(64)[None, :]).float() / 128  # 64 significands
    for t in range(5):
        tile = torch.zeros(256, 128)
        tile[:, 0] = amax * 2.0 ** (t - 2)
        tile[:, 1:65] = sig * 2.0 ** (t - 3) * torch.where(torch.arange(64) % 2 == 0, 1.0, -1.0)
        tile[:, 65:] = sig[:, :63] * 2.0 ** (t - 12)
        x[:256, 128 * t:128 * (t + 1)] = tile
    x[256:260] = -0.0
    x[260:264, :256] = 0.0
    x[264:300] *= 2.0**-140  # subnormal fp32 and bf16 values, scales ~2^-146
    x[300:310] *= 2.0**-100
    x[310:312] *= 2.0**-147  # fp32: amax / 448 underflows to 0 → scale 1
    return x.to(dtype).to(device)


# On a GPU the compiled kernels (FMA division, hardware fp8 cast); on CPU the interpreter path.
_DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("pow2", [False, True])
def test_quantize_hard_inputs_bitwise(dtype, pow2, poison_empty):
    x = _hard_quant_input(dtype)
    xc = x.to(_DEV)
    shapes = ((384, 640), (301, 517), (7, 200), (129, 129)) if _DEV == "cuda" else ((301, 517), (7, 200))
    for m, k in shapes:
        xs, xsc = x[:m, :k], xc[:m, :k]
        qr, sr = R.quantize_act_ref(xs, pow2)
        qtr, str_ = R.quantize_act_t_ref(xs, pow2)
        q, s, qt, st = quantize_act_both(xsc, pow2, backend="triton")
        for got, ref in ((q, qr), (s, sr), (qt, qtr), (st, str_),
                         *zip(quantize_act(xsc, pow2, backend="triton"), (qr, sr)),
                         *zip(quantize_act_t(xsc, pow2, backend="triton"), (qtr, str_))):
            assert_bitwise(got.cpu(), ref)
        wqr, wsr = R.quantize_weight_ref(xs, pow2)
        for got, ref in (*zip(quantize_weight(xsc, pow2, backend="triton"), (wqr, wsr)),
                         *zip(quantize_weight_t(xsc, pow2, backend="triton"),
                              (wqr.t().contiguous(), wsr.t().contiguous()))):
            assert_bitwise(got.cpu(), ref)


needs_gluon_quantizer = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
    reason="the Gluon quantizer is sm_90-only and the interpreter cannot run Gluon; verified on an "
    "H100 (BENCHMARKS.md, FP8)")


@pytest.mark.gpu
@needs_gluon_quantizer
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pow2", [False, True])
def test_quantize_gluon_hard_inputs_bitwise(dtype, pow2, poison_empty):
    """quantize_hopper's kernel (quantize_act_both / _t) against the PyTorch path: the hard input
    at TMA-legal shapes with partial tiles (M, K not multiples of 128), M < 16, and a random
    input of 1024 tiles. Configs: one program per tile with one staging tile (the default, and
    at 64 registers, which spills); persistent programs (several tiles per program: the TMA
    ring and the staging buffers wrap, the barrier phases flip; 1, 2 and 3 stages; capped at 80
    registers); with and without the "fmax" magnitude floor."""
    from kernels.fp8.quantize import _quant_act_triton

    hard = _hard_quant_input(dtype)
    big = make_input(2048, 8192, dtype=dtype, seed=70)
    cases = [hard[:m, :k] for m, k in ((384, 640), (301, 520), (7, 200), (129, 136))] + [big]
    for x in cases:
        xc = x.cuda()
        ref = (*R.quantize_act_ref(x, pow2), *R.quantize_act_t_ref(x, pow2))
        for cfg in ("gluon", ("gluon", 2, 2), ("gluon", 1, 1), ("gluon", 3, 1),
                    ("gluon", 2, 2, 0, "fmax"), ("gluon", 1, 5, 80, "fmax"), ("gluon", 1, 0, 64, "fmax")):
            for got, want in zip(_quant_act_triton(xc, True, True, pow2, cfg), ref):
                assert_bitwise(got.cpu(), want)
            _, _, qt, st = _quant_act_triton(xc, False, True, pow2, cfg)
            for got, want in zip((qt, st), ref[2:]):
                assert_bitwise(got.cpu(), want)
    with pytest.raises(ValueError, match="TMA"):  # 517·2 bytes: rows not 16-byte aligned
        _quant_act_triton(hard[:8, :517].cuda(), True, True, pow2, "gluon")
    with pytest.raises(ValueError, match="16-bit"):  # fp32 x runs the Triton kernel
        _quant_act_triton(hard[:8, :512].float().cuda(), True, True, pow2, "gluon")


@pytest.mark.gpu
@needs_gluon_quantizer
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pow2", [False, True])
def test_quantize_weight_gluon_hard_inputs_bitwise(dtype, pow2, poison_empty):
    """quantize_hopper's 128×128 weight kernel (quantize_weight / _t) against the PyTorch path:
    the hard input plus an all-zero block and a block of only subnormal values (scale < 2^-64),
    partial blocks, N < 16, and 1024 blocks (the ring and staging buffers wrap)."""
    from kernels.fp8.quantize import _quant_weight_triton

    hard = _hard_quant_input(dtype)
    hard[256:384, :128] = 0
    hard[256:384, 128:256] *= 2.0**-140  # fp16: underflows to zeros, another all-zero block
    big = make_input(2048, 8192, dtype=dtype, seed=71)
    cases = [hard[:m, :k] for m, k in ((384, 640), (301, 520), (7, 200), (129, 136))] + [big]
    for w in cases:
        wc = w.cuda()
        wq, ws = R.quantize_weight_ref(w, pow2)
        for cfg in ("gluon", ("gluon", 1, 3, 8), ("gluon", 1, 5, 8), ("gluon", 3, 1, 8), ("gluon", 2, 2, 4)):
            for got, want in zip(_quant_weight_triton(wc, pow2, False, cfg), (wq, ws)):
                assert_bitwise(got.cpu(), want)
            for got, want in zip(_quant_weight_triton(wc, pow2, True, cfg), (wq.t(), ws.t())):
                assert_bitwise(got.cpu(), want.contiguous())
    with pytest.raises(ValueError, match="TMA"):  # 517·2 bytes: rows not 16-byte aligned
        _quant_weight_triton(hard[:8, :517].cuda(), pow2, False, "gluon")


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_fused_quantization_hard_inputs_bitwise(out_dtype, poison_empty):
    x = _hard_quant_input(torch.float32).to(_DEV)[:, :512]
    if _DEV == "cpu":  # the interpreter: the special rows 256-311 (signed zeros, zero tiles, subnormal
        x = x[224:320]  # and underflowing scales) and some on either side; the norm and SwiGLU
        # scramble the significand grid of rows 0-255, so all of them add only time here
    w = torch.rand(512, device=_DEV) + 0.5
    y, yq, ys = rmsnorm_quant(x, w, return_y=True, out_dtype=out_dtype, backend="triton")
    for got, ref in zip((yq, ys), R.quantize_act_ref(y.cpu())):
        assert_bitwise(got.cpu(), ref)
    y, yq, ys = silu_mul_quant(x[:, :448] * 3, return_y=True, out_dtype=out_dtype, backend="triton")
    for got, ref in zip((yq, ys), R.quantize_act_ref(y.cpu())):
        assert_bitwise(got.cpu(), ref)


@pytest.mark.parametrize("pow2", [False, True])
def test_quantize_weight_triton_matches_reference_bitwise(pow2, poison_empty):
    w = make_input(200, 300, dtype=torch.float32, seed=1)
    q, s = quantize_weight(w, pow2, backend="triton")
    qr, sr = R.quantize_weight_ref(w, pow2)
    assert s.shape == (2, 3)
    assert_bitwise(q, qr)
    assert_bitwise(s, sr)
    qt, st = quantize_weight_t(w, pow2, backend="triton")
    assert_bitwise(qt, qr.t().contiguous())
    assert_bitwise(st, sr.t().contiguous())


@pytest.mark.parametrize("pow2", [False, True])
def test_quantization_error_bound_and_scales(pow2):
    x = make_input(64, 300, dtype=torch.float32)
    q, s = quantize_act(x, pow2)
    assert q.dtype == FP8_DTYPE and s.dtype == torch.float32 and s.shape == (64, 3)
    assert not q.float().isnan().any()
    err = (R.dequantize_ref(q, s) - x.double()).abs()
    scale = R.expand_scale(q, s).double()
    # e4m3: half a quantum is ≤ 2^-4 relative for normals, 2^-10·scale for subnormals
    assert (err <= torch.maximum(x.double().abs() * 2**-4, scale * 2**-10) * (1 + 1e-9)).all()
    amax = x.abs().view(64, -1)  # per tile amax ≤ 448·scale
    pad = torch.zeros(64, 3 * 128)
    pad[:, :300] = amax
    assert (pad.view(64, 3, 128).amax(-1) <= 448 * s * (1 + 1e-6)).all()
    if pow2:
        mant = s.view(torch.int32) & 0x7FFFFF
        assert (mant == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_zero_blocks_have_unit_scale(backend):
    x = torch.zeros(3, 256, dtype=torch.bfloat16)
    x[1, 200] = 5.0
    q, s = quantize_act(x, backend=backend)
    assert torch.equal(s[:, 0], torch.ones(3)) and s[0, 1] == 1 and s[2, 1] == 1
    assert q.float().isfinite().all() and q.float()[0].abs().sum() == 0
    wq, ws = quantize_weight(torch.zeros(130, 130), backend=backend)
    assert torch.equal(ws, torch.ones(2, 2)) and wq.float().abs().sum() == 0


def test_validation_errors():
    with pytest.raises(ValueError, match="2-D"):
        quantize_act(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="dtype"):
        quantize_act(torch.randint(0, 3, (2, 4)))
    aq, as_ = quantize_act(torch.randn(4, 256))
    bq, bs = quantize_weight(torch.randn(8, 128))
    with pytest.raises(ValueError, match="differ in K"):
        fp8_gemm(aq, as_, bq, bs)
    bq, bs = quantize_weight(torch.randn(8, 256))
    with pytest.raises(ValueError, match="b_scale"):
        fp8_gemm(aq, as_, bq, bs[:, :1])
    with pytest.raises(ValueError, match="out_dtype"):
        fp8_gemm(aq, as_, bq, bs, torch.int32)
    with pytest.raises(ValueError, match="backend"):
        quantize_act(torch.randn(2, 4), backend="cuda")


# ----------------------------------------------------------------------------- GEMM


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m,n,k", [(70, 200, 300), (1, 130, 128), (33, 1, 260)])
def test_fp8_gemm_matches_float64_reference(backend, m, n, k, poison_empty):
    a = make_input(m, k, seed=2)
    b = make_input(n, k, dtype=torch.float32, seed=3)
    aq, as_ = quantize_act(a)
    bq, bs = quantize_weight(b)
    ref = R.fp8_gemm_ref(aq, as_, bq, bs)
    c = fp8_gemm(aq, as_, bq, bs, torch.float32, backend=backend)
    assert c.shape == (m, n) and c.dtype == torch.float32
    assert rel(c, ref) < 1e-6
    cb = fp8_gemm(aq, as_, bq, bs, torch.bfloat16, backend=backend)
    assert cb.dtype == torch.bfloat16 and rel(cb, ref) < 1e-2
    # the result approximates the unquantized product to FP8 accuracy
    assert rel(c, a.double() @ b.double().t()) < 0.08


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp8_gemm_rowwise_b_scales(backend):
    """The weight-gradient form: both operands with 1×128 scales."""
    a = make_input(40, 260, seed=4)
    b = make_input(150, 260, seed=5)
    aq, as_ = quantize_act(a)
    bq, bs = quantize_act(b)
    c = fp8_gemm(aq, as_, bq, bs, torch.float32, backend=backend)
    assert rel(c, R.fp8_gemm_ref(aq, as_, bq, bs)) < 1e-6


def test_fp8_gemm_tma_variant_interpreted():
    a = make_input(40, 256, seed=6)
    b = make_input(70, 256, seed=7)
    aq, as_ = quantize_act(a)
    bq, bs = quantize_weight(b)
    ref = R.fp8_gemm_ref(aq, as_, bq, bs)
    for kind in ("tma", "tma_ws", "tma_pp", "tma_pp_ws"):
        c = fp8_gemm(aq, as_, bq, bs, torch.float32, backend="triton", config=(32, 64, 4, 1, kind))
        assert rel(c, ref) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp8_gemm_batch_invariant(backend):
    """A row's output is bitwise the same whatever M is (strict mode)."""
    a = make_input(96, 256, seed=8)
    b = make_input(64, 256, seed=9)
    aq, as_ = quantize_act(a)
    bq, bs = quantize_weight(b)
    full = fp8_gemm(aq, as_, bq, bs, torch.bfloat16, backend=backend, batch_invariant=True)
    for m in (1, 5, 33, 64):
        part = fp8_gemm(aq[:m], as_[:m], bq, bs, torch.bfloat16, backend=backend, batch_invariant=True)
        assert torch.equal(part, full[:m])
    # and the quantization of a row does not depend on the other rows either
    q1, s1 = quantize_act(a[7:8], backend=backend)
    assert_bitwise(q1, aq[7:8])


_HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not _HOPPER, reason="Gluon GEMM is sm_90-only and the Triton interpreter "
                    "cannot run Gluon kernels; verified on an H100 (BENCHMARKS.md, FP8)")
@pytest.mark.parametrize("m,n,k", [(300, 264, 1040), (77, 1024, 2048), (520, 1304, 384)])
@pytest.mark.parametrize("b_kind", ["block", "1x128"])
def test_fp8_gemm_gluon_matches_reference_and_triton(m, n, k, b_kind, poison_empty):
    """Hopper Gluon kernel: float64 reference, bitwise equal to the Triton kernel, any M."""
    a = make_input(m, k, seed=20).cuda()
    b = make_input(n, k, seed=21).cuda()
    aq, as_ = quantize_act(a)
    bq, bs = quantize_weight(b) if b_kind == "block" else quantize_act(b)
    c = fp8_gemm(aq, as_, bq, bs, torch.float32, config=(128, 128, 8, 4, "gluon"))
    assert rel(c, R.fp8_gemm_ref(aq, as_, bq, bs)) < 1e-3  # tensor-core FP8 accumulation
    ct = fp8_gemm(aq, as_, bq, bs, torch.float32, config=(128, 128, 8, 4, "ptr"))
    assert torch.equal(c, ct)
    aq5, as5 = quantize_act(a[:5])  # (Gluon with 1×128 B needs the quantizers' scale layout)
    part = fp8_gemm(aq5, as5, bq, bs, torch.float32, config=(64, 128, 4, 4, "gluon"))
    assert torch.equal(part, c[:5])
    for cfg in ((128, 256, 4, 3, "gluon_ws"), (128, 256, 4, 2, "gluon_ws"),  # bf16 and fp32 out
                (128, 256, 4, 3, "gluon_ws+g16+sa_tma")):
        assert torch.equal(fp8_gemm(aq, as_, bq, bs, torch.float32, config=cfg), c), cfg
        assert torch.equal(fp8_gemm(aq5, as5, bq, bs, torch.bfloat16, config=cfg),
                           fp8_gemm(aq5, as5, bq, bs, torch.bfloat16, config=(128, 128, 8, 4, "ptr"))), cfg


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the launch cache is the CUDA path (the "
                    "interpreter launches through Triton); verified on an H100 (BENCHMARKS.md, FP8)")
def test_cached_launches_see_new_arguments(poison_empty):
    """Repeated launches (backend.launch's direct path after the first) use each call's own
    tensors, shapes and strides: fresh inputs, new sizes and a sliced (strided) operand."""
    for i, (m, k) in enumerate([(300, 1040), (300, 1040), (301, 1040), (300, 1040), (64, 384)]):
        x, w = make_input(m, k, seed=40 + i), make_input(264, k, seed=50 + i)
        for got, want in zip(quantize_act_both(x.cuda()), (*R.quantize_act_ref(x), *R.quantize_act_t_ref(x))):
            assert_bitwise(got.cpu(), want)
        wq, ws = quantize_weight(w.cuda())
        assert_bitwise(wq.cpu(), R.quantize_weight_ref(w)[0])
        xq, xs = quantize_act(x.cuda())
        cfgs = [(128, 128, 8, 4, "ptr"), (128, 128, 8, 4, "tma")]
        if _HOPPER:
            cfgs += [(128, 128, 8, 4, "gluon"), (128, 256, 4, 3, "gluon_ws")]
        outs = [fp8_gemm(xq, xs, wq, ws, torch.float32, config=cfg) for cfg in cfgs]
        assert rel(outs[0].cpu(), R.fp8_gemm_ref(xq.cpu(), xs.cpu(), wq.cpu(), ws.cpu())) < 1e-3
        for cfg, out in zip(cfgs[1:], outs[1:]):
            assert torch.equal(out, outs[0]), cfg
    big = make_input(256, 512, seed=60)
    xq, xs = quantize_act(big.cuda()[::2])  # row stride 1024: a new specialization key
    assert_bitwise(xq.cpu(), R.quantize_act_ref(big[::2])[0])


def test_gemm_plan_cache_revalidates_new_layouts():
    """fp8_gemm caches its validation and kernel choice per operand layout: the same shapes with
    other strides are validated anew (here: rejected), and another B scale granularity (1×128
    instead of 128×128, same bq) gets its own plan."""
    a, b = make_input(8, 256, seed=12), make_input(16, 256, seed=13)
    aq, as_ = quantize_act(a)
    bq, bs = quantize_weight(b)
    c = fp8_gemm(aq, as_, bq, bs, torch.float32)
    assert torch.equal(fp8_gemm(aq, as_, bq, bs, torch.float32), c)  # the cached plan
    assert rel(c, R.fp8_gemm_ref(aq, as_, bq, bs)) < 1e-6
    aq_k_strided = aq.t().contiguous().t()  # same shape and values, stride(1) = 8
    with pytest.raises(ValueError, match="contiguous along K"):
        fp8_gemm(aq_k_strided, as_, bq, bs, torch.float32)
    bq_rows, bs_rows = quantize_act(b)  # 1×128 B scales [16, 2] instead of [1, 2]
    assert rel(fp8_gemm(aq, as_, bq_rows, bs_rows, torch.float32), R.fp8_gemm_ref(aq, as_, bq_rows, bs_rows)) < 1e-6


@pytest.mark.gpu
@needs_gluon_quantizer
def test_tma_descriptor_cache_rebuilds_for_new_tensors(poison_empty, monkeypatch, caplog):
    """backend.launch's cache of encoded TMA descriptors (key: address, shape, strides, element
    type, block, swizzle). A tensor at a new address with the same shape, one at the same address
    with other strides or another shape, and one allocated where a freed one was all get results
    bitwise equal to the PyTorch path (a stale descriptor would read the old tensor's rows); the
    cache stays within its bound; a GEMM through the cache equals one through Triton's launcher
    (caches emptied); descriptors passed prebuilt take Triton's launcher, logged."""
    from kernels.fp8 import launch as B

    def check_both(x):
        want = (*R.quantize_act_ref(x.cpu()), *R.quantize_act_t_ref(x.cpu()))
        for got, ref in zip(quantize_act_both(x), want):
            assert_bitwise(got.cpu(), ref)

    # Each case runs twice: a new specialization (shape, strides) launches through Triton first;
    # the second call launches directly and looks its descriptors up in the cache, which then
    # holds entries of the cases before it (same address, same shape or same strides).
    x = make_input(512, 1024, seed=80).cuda()
    check_both(x)  # first launch of this specialization: through Triton
    check_both(x)  # direct launch: descriptors encoded into the cache
    check_both(x)  # x's descriptor from the cache
    assert any(key[1] == x.data_ptr() for key in B._TENSORMAPS)
    check_both(make_input(512, 1024, seed=81).cuda())  # same shape and strides, new address
    buf = make_input(512, 2048, seed=82).cuda()
    for view in (buf[:, :1024],  # row stride 2048
                 buf.view(-1)[: 512 * 1024].view(512, 1024),  # same address and shape, row stride 1024
                 buf.view(-1)[: 384 * 1024].view(384, 1024)):  # same address and strides, 384 rows
        check_both(view)
        check_both(view)
    B._TENSORMAPS.clear()
    monkeypatch.setattr(B, "_TENSORMAPS_MAX", 3)
    old_ptr = x.data_ptr()
    del x
    y = make_input(512, 1024, seed=83).cuda()  # likely at the freed address (caching allocator)
    check_both(y)
    check_both(y)  # a hit on the freed x's key when y took its address: y's values must come out
    assert len(B._TENSORMAPS) <= 3
    if y.data_ptr() == old_ptr:
        assert any(key[1] == old_ptr for key in B._TENSORMAPS)

    # wgrad-form GEMM (five descriptors, two of them on the scale tensors): cached vs uncached.
    a, b = make_input(2048, 1024, seed=84).cuda(), make_input(2048, 1024, seed=85).cuda()
    _, _, aqt, ast = quantize_act_both(a)
    _, _, bqt, bst = quantize_act_both(b)
    cfg = (128, 256, 4, 3, "gluon_ws")
    B._COMPILED.clear()
    B._TENSORMAPS.clear()
    uncached = fp8_gemm(aqt, ast, bqt, bst, torch.float32, config=cfg)  # through Triton
    for _ in range(2):
        assert torch.equal(fp8_gemm(aqt, ast, bqt, bst, torch.float32, config=cfg), uncached)

    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from kernels.fp8 import quantize_hopper as QH
    from kernels.fp8.quantize_triton import empty_act_scale, empty_padded_rows

    x = make_input(256, 384, seed=86).cuda()
    q = torch.empty(256, 384, dtype=FP8_DTYPE, device="cuda")
    s, st = empty_act_scale(256, 3, "cuda"), empty_act_scale(384, 2, "cuda")
    qt = empty_padded_rows(384, 256, "cuda")
    args = (TensorDescriptor.from_tensor(x, [128, 64], QH._tile_layout(x.dtype)),
            TensorDescriptor.from_tensor(qt, [128, 128], QH._qt_layout()),
            q, s, st, 256, 384, q.stride(0), s.stride(1), st.stride(1))
    with caplog.at_level("INFO", logger="kernels"):
        for _ in range(2):
            B.launch(QH._quant_act_gluon_kernel, (6,), *args, ROWWISE=True, COLWISE=True, POW2=False,
                     STAGES=2, QT_BUFFERS=2, FMAX=False, num_warps=8)
    assert "descriptor passed prebuilt" in caplog.text
    for got, ref in zip((q, s, qt, st), (*R.quantize_act_ref(x.cpu()), *R.quantize_act_t_ref(x.cpu()))):
        assert_bitwise(got.cpu(), ref)


@pytest.mark.gpu
@needs_gluon_quantizer
def test_descriptors_encoded_on_a_thread_without_cuda_context():
    """A TMA descriptor encoded on a thread that has made no CUDA call yet (the autograd engine's
    worker when FP8Linear's backward is its first CUDA work): Triton's encoder needs a current
    context and failed there ("invalid device context", H100 2026-11-27); launch now makes the
    device's primary context current first. The thread only quantizes (its outputs come from
    the caching allocator's freed blocks, so it makes no CUDA runtime call before the encoding)."""
    import threading

    from kernels.fp8 import launch as B

    x = make_input(384, 640, seed=95).cuda()
    quantize_act_both(x)  # compiled and specialized on this thread; its outputs go back to the cache
    B._TENSORMAPS.clear()  # the thread must encode x's and qt's descriptors itself
    torch.cuda.synchronize()
    result = {}

    def worker():
        try:
            result["out"] = [t.cpu() for t in quantize_act_both(x)]
        except Exception as e:  # reported by the assertion below
            result["error"] = e

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert "error" not in result, result.get("error")
    for got, want in zip(result["out"], (*R.quantize_act_ref(x.cpu()), *R.quantize_act_t_ref(x.cpu()))):
        assert_bitwise(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU; verified on an H100 "
                    "(BENCHMARKS.md, FP8)")
def test_fp8_linear_cuda_graph_replay_matches_eager():
    """FP8Linear fwd+bwd captured in a CUDA graph (PyTorch's whole-network capture) and replayed on
    new input values gives bitwise the eager results: every launch, the cached ones included,
    reads the graph's own buffers."""
    torch.manual_seed(5)
    lin = FP8Linear(1024, 768, bias=True, device="cuda", dtype=torch.bfloat16)
    x_static = torch.randn(512, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy_static = torch.randn(512, 768, device="cuda", dtype=torch.bfloat16)

    def eager(x, dy):
        x = x.detach().clone().requires_grad_()
        lin.zero_grad(set_to_none=True)
        y = lin(x)
        y.backward(dy)
        return y.detach(), x.grad, lin.weight.grad.clone(), lin.bias.grad.clone()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compilation, caches) outside the capture
        for _ in range(3):
            lin(x_static).backward(dy_static)
    torch.cuda.current_stream().wait_stream(side)
    lin.zero_grad(set_to_none=True)
    x_static.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = lin(x_static)
        y_static.backward(dy_static)
    grads = (x_static.grad, lin.weight.grad, lin.bias.grad)
    x_new = make_input(512, 1024, seed=90).cuda()
    dy_new = make_input(512, 768, seed=91).cuda()
    with torch.no_grad():
        x_static.copy_(x_new)
        dy_static.copy_(dy_new)
    graph.replay()
    torch.cuda.synchronize()
    replayed = (y_static.clone(), *(g.clone() for g in grads))
    for got, want in zip(replayed, eager(x_new, dy_new)):
        assert torch.equal(got, want)


def test_cpu_gemm_uses_exact_block_sums():
    """The CPU path's per-128 partial sums are exact, so reordering K inside a block is a no-op."""
    a = make_input(8, 128, seed=10)
    b = make_input(16, 128, seed=11)
    aq, as_ = quantize_act(a)
    bq, bs = quantize_weight(b)
    perm = torch.randperm(128)
    c1 = fp8_gemm(aq, as_, bq, bs, torch.float32)
    c2 = fp8_gemm(aq[:, perm].contiguous(), as_, bq[:, perm].contiguous(), bs, torch.float32)
    assert torch.equal(c1, c2)


# The CPU path (quantize_torch, gemm_torch) against the references' plain restatements of its math
# (what a faster CPU implementation must keep), bitwise.

_INT = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16, FP8_DTYPE: torch.uint8}


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    """Same shape, dtype, strides and raw bits (NaN payloads included)."""
    assert a.shape == b.shape and a.dtype == b.dtype and a.stride() == b.stride()
    assert torch.equal(a.view(_INT[a.dtype]), b.view(_INT[b.dtype])), \
        f"{(a.view(_INT[a.dtype]) != b.view(_INT[b.dtype])).sum()} elements differ"


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 344, 128), (128, 344, 128), (130, 128, 344), (5, 1, 300),
                                   (33, 130, 100), (64, 256, 512), (3, 129, 1000)])
def test_cpu_gemm_matches_per_block_loop_bitwise(m, n, k):
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    kb, nb = -(-k // 128), -(-n // 128)
    # raw bytes (every finite e4m3 value, no NaN codes) and scales over a wide range
    aq = torch.randint(0, 127, (m, k), generator=g, dtype=torch.uint8)
    bq = torch.randint(0, 127, (n, k), generator=g, dtype=torch.uint8)
    aq = (aq | (torch.randint(0, 2, (m, k), generator=g, dtype=torch.uint8) << 7)).view(FP8_DTYPE)
    bq = (bq | (torch.randint(0, 2, (n, k), generator=g, dtype=torch.uint8) << 7)).view(FP8_DTYPE)
    a_scale = (1 + torch.rand(m, kb, generator=g)) * 2.0 ** torch.randint(-60, 20, (m, kb), generator=g)
    for b_scale in ((1 + torch.rand(nb, kb, generator=g)) * 2.0 ** torch.randint(-60, 20, (nb, kb), generator=g),
                    (1 + torch.rand(n, kb, generator=g)) * 2.0 ** torch.randint(-60, 20, (n, kb), generator=g)):
        for out in (torch.float32, torch.bfloat16):
            got = fp8_gemm_torch(aq, a_scale, bq, b_scale, out)
            assert_same_bits(got, R.fp8_gemm_blocks_ref(aq, a_scale, bq, b_scale, out))
        ref = R.fp8_gemm_ref(aq, a_scale, bq, b_scale)
        assert rel(fp8_gemm_torch(aq, a_scale, bq, b_scale, torch.float32), ref) < 1e-6
    # and from quantized data through the public entry point
    aq, as_ = quantize_act(make_input(m, k, seed=1))
    bq, bs = quantize_weight(make_input(n, k, torch.float32, seed=2))
    assert_same_bits(fp8_gemm(aq, as_, bq, bs, torch.float32),
                     R.fp8_gemm_blocks_ref(aq, as_, bq, bs, torch.float32))


def test_cpu_fp8_to_float64_is_the_cast():
    """The lookup-table conversion equals .double() on every byte (NaN codes included), for
    strided inputs too."""
    q = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE)
    want = q.double()
    got = fp8_to_f64(q)
    assert torch.equal(got.view(torch.int64), want.view(torch.int64))
    q2 = q.view(16, 16).t()
    assert torch.equal(fp8_to_f64(q2).view(torch.int64), q2.double().contiguous().view(torch.int64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("pow2", [False, True])
def test_cpu_quantizers_match_padded_restatement(dtype, pow2):
    """quantize_act(_t/_both) and quantize_weight(_t) on CPU (full tiles, K and M tails, K < 128,
    M = 1, transposed views, NaN / inf, tiny tiles) == the zero-padded restatement, bitwise,
    contiguous."""
    for m, k in [(128, 128), (128, 344), (344, 128), (1, 300), (7, 100), (129, 257), (256, 384)]:
        for x in (make_input(m, k, torch.float32, seed=m + k), make_input(k, m, torch.float32, seed=m).t()):
            x = x.clone()
            x[0, 0], x[-1, -1] = float("nan"), float("inf")
            x[1 % m] *= 2.0**-147  # a row whose 1×128 scales underflow to 0 (→ 1)
            x = x.to(dtype)
            act = R.quantize_act_ref(x, pow2)
            act_t = R.quantize_act_t_ref(x, pow2)
            wt = R.quantize_weight_ref(x, pow2)
            for got, want in ((quantize_act_torch(x, pow2), act), (quantize_act_t_torch(x, pow2), act_t),
                              (quantize_weight_torch(x, pow2), wt)):
                for a, b in zip(got, want, strict=True):
                    assert_same_bits(a, b)
            if dtype != torch.float64:  # the public quantizers take fp32/bf16/fp16
                for a, b in zip(quantize_act_both(x, pow2), (*act, *act_t), strict=True):
                    assert_same_bits(a, b)
                for a, b in zip(quantize_weight_t(x, pow2), (wt[0].t().contiguous(), wt[1].t().contiguous()),
                                strict=True):
                    assert_same_bits(a, b)


# ----------------------------------------------------------------------------- FP8Linear


def _linear_grads(mod, x, dy):
    x = x.clone().requires_grad_()
    mod.zero_grad()
    y = mod(x)
    y.backward(dy)
    return y.detach(), x.grad, mod.weight.grad.clone(), mod.bias.grad.clone()


def test_fp8_linear_gradients_vs_bf16_linear():
    """FP8Linear forward/dgrad/wgrad against float64, next to a bf16 nn.Linear (CPU path).

    Measured (this seed): FP8 ≈ 3.6e-2 relative error on y, dx, dW; bf16 ≈ 1.7e-3.
    Bound: FP8 < 6e-2 (e4m3 has 3 mantissa bits: ~2^-4/√3 per operand, partly averaged out).
    """
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 384, dtype=torch.bfloat16)
    f8 = FP8Linear.from_linear(lin)
    x = make_input(96, 256, seed=12) * 0.01 + torch.randn(96, 256).bfloat16()
    dy = torch.randn(96, 384).bfloat16()
    got8 = _linear_grads(f8, x, dy)
    got16 = _linear_grads(lin, x, dy)
    x64 = x.double().requires_grad_()
    w64 = lin.weight.detach().double().requires_grad_()
    b64 = lin.bias.detach().double().requires_grad_()
    y64 = F.linear(x64, w64, b64)
    y64.backward(dy.double())
    refs = (y64, x64.grad, w64.grad, b64.grad)
    err8 = [rel(g, r) for g, r in zip(got8, refs)]
    err16 = [rel(g, r) for g, r in zip(got16, refs)]
    print(f"\nFP8Linear rel err (y, dx, dW, db): {err8}\nbf16 Linear rel err: {err16}")
    assert all(e < 6e-2 for e in err8[:3]) and err8[3] < 1e-2
    assert all(e < 5e-3 for e in err16)
    assert got8[2].dtype == torch.bfloat16


def test_fp8_linear_triton_matches_torch_path():
    torch.manual_seed(1)
    w = torch.randn(130, 200, dtype=torch.float32, requires_grad=True)
    x = torch.randn(3, 50, 200, dtype=torch.bfloat16)
    dy = torch.randn(3, 50, 130, dtype=torch.bfloat16)
    out = {}
    for be in BACKENDS:
        xx = x.clone().requires_grad_()
        w.grad = None
        y = fp8_linear(xx, w, backend=be)
        y.backward(dy)
        out[be] = (y, xx.grad, w.grad.clone())
    assert out["torch"][0].shape == (3, 50, 130) and out["torch"][2].dtype == torch.float32
    for a, b in zip(out["triton"], out["torch"]):
        assert rel(a, b) < 1e-2  # bf16 outputs; same quantized operands, fp32 sums in other order


def test_fp8linear_is_a_drop_in():
    lin = torch.nn.Linear(128, 64)
    f8 = FP8Linear.from_linear(lin)
    assert f8.state_dict().keys() == lin.state_dict().keys()
    assert f8.weight is lin.weight
    fresh = FP8Linear(128, 64, bias=False, pow2_scale=True)
    fresh.load_state_dict({"weight": lin.weight.detach()})
    x = torch.randn(5, 128)
    assert rel(f8(x), lin(x)) < 0.08 and rel(fresh(x), x @ lin.weight.t()) < 0.08
    assert "fp8" in repr(f8)


def test_fp8_linear_accepts_prequantized_input():
    x = torch.randn(20, 256)
    g = torch.rand(256) + 0.5
    w = torch.randn(64, 256)
    y, yq, ys = rmsnorm_quant(x, g, return_y=True, out_dtype=torch.float32)
    assert torch.equal(fp8_linear(y, w, x_quant=(yq, ys)), fp8_linear(y, w))


# ----------------------------------------------------------------------------- fused


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [256, 200])
def test_rmsnorm_quant(backend, d, poison_empty):
    x = torch.randn(37, d) * 3
    x[5] = 0  # an all-zero row: rsqrt(eps) · 0 = 0, scales 1
    w = torch.rand(d) + 0.5
    y, yq, ys = rmsnorm_quant(x, w, 1e-6, return_y=True, backend=backend)
    assert rel(y, R.rmsnorm_ref(x, w, 1e-6)) < 4e-3  # bf16 output
    qr, sr = R.quantize_act_ref(y)
    assert_bitwise(yq, qr)  # the fused quantization == quantize_act of its own output
    assert_bitwise(ys, sr)
    yq2, ys2 = rmsnorm_quant(x, w, 1e-6, backend=backend)
    assert_bitwise(yq2, yq)
    if backend == "triton":
        yt, _, _ = rmsnorm_quant(x, w, 1e-6, return_y=True, backend="torch")
        assert (y.float() - yt.float()).abs().max() <= 2e-2 * yt.float().abs().max()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("i", [256, 1100])
def test_silu_mul_quant(backend, i, poison_empty):
    x = (torch.randn(9, 2 * i) * 4).bfloat16()
    y, yq, ys = silu_mul_quant(x, return_y=True, backend=backend)
    assert y.shape == (9, i) and ys.shape == (9, (i + 127) // 128)
    assert rel(y, R.silu_mul_ref(x)) < 4e-3
    qr, sr = R.quantize_act_ref(y)
    assert_bitwise(yq, qr)
    assert_bitwise(ys, sr)


def test_fused_validation():
    with pytest.raises(ValueError, match="weight"):
        rmsnorm_quant(torch.randn(4, 128), torch.ones(64))
    with pytest.raises(ValueError, match="odd"):
        silu_mul_quant(torch.randn(4, 129))


def test_swap_linears_to_fp8():
    from kernels.fp8 import swap_linears_to_fp8

    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    ref = model(torch.ones(2, 128))
    names = swap_linears_to_fp8(model, include=lambda name, m: name != "2")
    assert names == ["0"] and isinstance(model[0], FP8Linear) and type(model[2]) is torch.nn.Linear
    assert rel(model(torch.ones(2, 128)), ref) < 0.1


def test_gluon_ws_options_and_default_pick():
    """gluon_ws kind options parse (unknown ones refused); large 128×128-block-B GEMMs default to
    A's scales through the TMA ring with 16 row-tiles per group, wgrad (1×128 B) to plain
    gluon_ws (BENCHMARKS.md, FP8, session 8 second round)."""
    from kernels.fp8 import gemm as G

    assert G._ws_options(["g16", "sa_tma"]) == {"group_m": 16, "a_scales_tma": True}
    assert G._ws_options([]) == {}
    with pytest.raises(ValueError, match="unknown gluon_ws option"):
        G._ws_options(["sb_tma"])
    assert G._pick_config(8192, 8192, 8192, False, False, True, True, 132)[4] == "gluon_ws+g16+sa_tma"
    assert G._pick_config(8192, 8192, 8192, False, False, True, False, 132)[4] == "gluon_ws"


def test_gemm_plan_takes_a_scales_by_pointer_where_tma_cannot_load_them(monkeypatch):
    """The per-layout plan keeps sa_tma only for A scales TMA can load (M-contiguous, 16-byte
    rows: what quantize_act writes on a GPU); other layouts drop it there, once per layout,
    not per call (the Gluon paths are faked so that the plan is made on CPU tensors)."""
    from kernels.fp8 import gemm as G

    monkeypatch.setattr(G, "resolve_backend", lambda *a: "triton")
    monkeypatch.setattr(G, "gluon_supported", lambda *a: None)
    m, n, k = 8192, 8192, 256
    aq = torch.empty(m, k, dtype=torch.float8_e4m3fn)
    bq = torch.empty(n, k, dtype=torch.float8_e4m3fn)
    b_scale = torch.ones(n // 128, k // 128)
    padded = torch.ones(k // 128, m).t()           # M-contiguous: TMA-loadable
    row_major = torch.ones(m, k // 128)             # K-contiguous: not
    kind = lambda a_scale: G._make_plan(aq, a_scale, bq, b_scale, torch.bfloat16, False, "auto",
                                         G._CONFIG_GLUON_WS)[2][4]  # the GPU default, here on CPU tensors
    assert kind(padded) == "gluon_ws+g16+sa_tma"
    assert kind(row_major) == "gluon_ws+g16"
