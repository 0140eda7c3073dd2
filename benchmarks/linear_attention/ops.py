"""Benchmark of kernels.linear_attention (chunk fwd / fwd+bwd, decode), with its anchors.

GPU (`--gpu`): first checks the Triton kernels against a float64 recurrence on the GPU (fp32 and
bf16, varlen, gradients, continuation, bitwise batch invariance), then times
  * training shapes (B=4,T=8192 and B=1,T=32768; H=16, D=128, bf16): forward and forward+backward,
    against flash-linear-attention's chunk_simple_gla (per-head decay via g_gamma) in the same run;
  * decode (fp32 state, H=16, D=128, batch 1/64/256) against fla's fused_recurrent_simple_gla and
    against the floor: state bytes read + written / measured device-to-device copy bandwidth.
  * long sequences (`--long`, issue 19 item 3; B=1 T=8K/32K/128K, B=8 T=4K, B=4 T=8K): the
    segmented forward (chunk_triton.SEGMENT) against the one-program-per-sequence forward it
    replaced (SEGMENT=None) and fla, forward and forward+backward, ratios printed; before it, a
    bitwise check at the real segment length (a sequence of 2.5 segments alone = in a batch of 8
    = packed; a shorter one alone = packed) and both forwards against float64.
CPU (`--cpu`): tokens/s of the PyTorch path (prefill T=2048, decode batch 64) vs the naive loop.

Timings: triton.testing.do_bench median (it flushes L2 before every repetition; the training
inputs are far larger than L2 anyway).  Usage:
    python -m benchmarks.linear_attention.ops --gpu [--sweep]      # on an H100
    python -m benchmarks.linear_attention.ops --gpu --long [--segments 1024,4096]   # long sequences only
    python -m benchmarks.linear_attention.ops --cpu
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.harness import copy_bandwidth, gpu_ms, graph_ms, header, markdown_table, rel_error, wall_s
from kernels import linear_attention as la
from kernels.linear_attention import naive_recurrence

H, D = 16, 128
ROWS: list[dict] = []


def row(**kw):
    ROWS.append(kw)
    print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items()),
          flush=True)


# ----------------------------------------------------------------------------------------- GPU
def _chunk_mod():
    import importlib

    return importlib.import_module("kernels.linear_attention.chunk_triton")


def gpu_correctness(dev):
    torch.manual_seed(1)
    ck = _chunk_mod()
    out = {}
    for mode in ((False, False), (True, False), (True, True)):
        ck.SPLIT_STATE, ck.SPLIT_DERIVED = mode
        out[f"split={mode}"] = _correct_one(dev, mode)
    ck.SPLIT_STATE, ck.SPLIT_DERIVED = True, False
    return out


def _correct_one(dev, mode):
    torch.manual_seed(1)
    g = la.layer_decay(3, 1, 5).to(dev)
    out = {}
    cu = torch.tensor([0, 37, 37, 230, 300], device=dev, dtype=torch.int32)
    for dt, tol in ((torch.float32, 5e-5), (torch.bfloat16, 2e-2)):
        q, k, v = [torch.randn(1, 300, 3, 128, device=dev).to(dt).requires_grad_() for _ in range(3)]
        h0 = torch.randn(4, 3, 128, 128, device=dev, requires_grad=True)
        o, ht = la.chunk(q, k, v, g, 0.09, h0, cu_seqlens=cu, output_final_state=True)
        do, dht = torch.randn_like(o), torch.randn_like(ht)
        grads = torch.autograd.grad((o * do).sum() + (ht * dht).sum(), (q, k, v, h0))
        r = [x.detach().double().requires_grad_() for x in (q, k, v, h0)]
        ro, rht = naive_recurrence(*r[:3], g.double(), 0.09, r[3], cu_seqlens=cu, output_final_state=True)
        rg = torch.autograd.grad((ro * do.double()).sum() + (rht * dht.double()).sum(), r)
        errs = {"o": rel_error(o, ro), "ht": rel_error(ht, rht)}
        errs.update({f"d{n}": rel_error(a, b) for n, a, b in zip(("q", "k", "v", "h0"), grads, rg)})
        name = str(dt).split(".")[-1]
        print(f"  correctness {name} split(state, derived)={mode}: " + " ".join(f"{k}={e:.2e}" for k, e in errs.items()), flush=True)
        out[name] = errs
        assert all(e < tol for e in errs.values()), (name, errs)
    # continuation in fp32: chunk over T, then decode N tokens, equals chunk over T+N
    T, N = 200, 7
    q, k, v = [torch.randn(2, T + N, 3, 128, device=dev) for _ in range(3)]
    full, _ = la.chunk(q, k, v, g, 0.09)
    o1, st = la.chunk(q[:, :T], k[:, :T], v[:, :T], g, 0.09, output_final_state=True)
    pool = torch.zeros(5, 3, 128, 128, device=dev)
    idx = torch.tensor([4, 1], device=dev)
    pool[idx] = st
    dec = [la.recurrent(q[:, t], k[:, t], v[:, t], g, 0.09, pool, idx) for t in range(T, T + N)]
    cont = rel_error(torch.cat([o1, torch.stack(dec, 1)], 1), full)
    print(f"  continuation fp32 rel err {cont:.2e}", flush=True)
    out["continuation"] = cont
    assert cont <= 1e-5
    # batch invariance, bitwise: one sequence alone / in a batch with longer T / packed varlen
    for dt in (torch.float32, torch.bfloat16):
        L = 333
        x = [torch.randn(1, L, 3, 128, device=dev).to(dt) for _ in range(3)]
        alone, _ = la.chunk(*x, g, 0.09)
        big = [torch.cat([torch.randn(3, L + 100, 3, 128, device=dev).to(dt)], 0) for _ in range(3)]
        for b, xi in zip(big, x):
            b[2, :L] = xi[0]
        inb, _ = la.chunk(*big, g, 0.09)
        packed = [torch.cat([torch.randn(1, 75, 3, 128, device=dev).to(dt), xi], 1) for xi in x]
        cu2 = torch.tensor([0, 75, 75 + L], device=dev)
        inp, _ = la.chunk(*packed, g, 0.09, cu_seqlens=cu2)
        ok = torch.equal(alone[0], inb[2, :L]) and torch.equal(alone[0], inp[0, 75:])
        print(f"  batch invariance {str(dt).split('.')[-1]} chunk bitwise: {ok}", flush=True)
        out[f"batch_invariant_chunk_{dt}"] = ok
    qd, kd, vd = [torch.randn(64, 3, 128, device=dev) for _ in range(3)]
    p1 = torch.randn(64, 3, 128, 128, device=dev)
    p2 = p1.clone()
    ob = la.recurrent(qd, kd, vd, g, 0.09, p1)
    oa = la.recurrent(qd[5:6], kd[5:6], vd[5:6], g, 0.09, p2, torch.tensor([5], device=dev))
    ok = torch.equal(ob[5], oa[0]) and torch.equal(p1[5], p2[5])
    print(f"  batch invariance decode bitwise: {ok}", flush=True)
    out["batch_invariant_decode"] = ok
    return out


def bench(fn):
    return gpu_ms(fn, warmup=25, rep=150)


def graph_replays(fns):
    """Median time of one call, from CUDA-graph replays of ``fns`` (distinct inputs each, so
    their total footprint exceeds L2); launch overhead excluded, as in vLLM's graphed decode."""
    return graph_ms(lambda f: f(), fns, warm_replays=3)


def matmul_rate(dev):
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    ms = bench(lambda: a @ b)
    return 2 * 8192 ** 3 / (ms * 1e-3)


def training_shapes(dev, bw, flops, fla_chunk):
    for B, T in ((4, 8192), (1, 32768)):
        g = la.layer_decay(H, 3, 20).to(dev)
        q, k, v = [torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3)]
        do = torch.randn_like(q)
        scale = D ** -0.5
        nbytes = B * T * H * D * 2
        # essential flops of the chunk form (C=64): qkᵀ + (A)v + qS + kᵀv per chunk and head
        f_fwd = B * H * (T // 64) * 2 * 64 * D * (64 + 64 + D + D)
        floor_f = max(4 * nbytes / bw, f_fwd / flops) * 1e3
        floor_fb = max(11 * nbytes / bw, 3 * f_fwd / flops) * 1e3

        def ours_f():
            return la.chunk(q, k, v, g, scale)[0]

        def ours_fb():
            o = la.chunk(q, k, v, g, scale)[0]
            return torch.autograd.grad(o, (q, k, v), do)

        ck = _chunk_mod()
        base = (ck.SPLIT_STATE, ck.SPLIT_DERIVED)
        ours = {}
        for mode in ((True, False), (False, False), (True, True)):
            ck.SPLIT_STATE, ck.SPLIT_DERIVED = mode
            ours[mode] = (bench(ours_f), bench(ours_fb))
        ck.SPLIT_STATE, ck.SPLIT_DERIVED = base
        a_f = a_fb = float("nan")
        if fla_chunk is not None:
            def fla_f():
                return fla_chunk(q, k, v, g_gamma=g, scale=scale)[0]

            def fla_fb():
                o = fla_chunk(q, k, v, g_gamma=g, scale=scale)[0]
                return torch.autograd.grad(o, (q, k, v), do)

            a_f, a_fb = bench(fla_f), bench(fla_fb)
            with torch.no_grad():
                d = rel_error(ours_f(), fla_f())
            print(f"  ours vs fla output rel diff {d:.2e}")
        if B == 4:  # fp32 inputs (the model's own dtype, DESIGN §3 step 1): tf32x3 products
            q32, k32, v32 = [x.detach().float().requires_grad_() for x in (q, k, v)]
            do32 = do.float()
            t32 = (bench(lambda: la.chunk(q32, k32, v32, g, scale)[0]),
                   bench(lambda: torch.autograd.grad(la.chunk(q32, k32, v32, g, scale)[0],
                                                     (q32, k32, v32), do32)))
            f32 = (float("nan"),) * 2
            if fla_chunk is not None:
                f32 = (bench(lambda: fla_chunk(q32, k32, v32, g_gamma=g, scale=scale)[0]),
                       bench(lambda: torch.autograd.grad(
                           fla_chunk(q32, k32, v32, g_gamma=g, scale=scale)[0], (q32, k32, v32),
                           do32)))
            row(case=f"chunk fwd B={B} T={T} fp32 in", ms=t32[0], fla_ms=f32[0],
                ratio_fla=t32[0] / f32[0])
            row(case=f"chunk fwd+bwd B={B} T={T} fp32 in", ms=t32[1], fla_ms=f32[1],
                ratio_fla=t32[1] / f32[1])
            del q32, k32, v32, do32
        for mode, (t_f, t_fb) in ours.items():
            tag = {(True, False): "split=state", (False, False): "split=none",
                   (True, True): "split=all"}[mode]
            row(case=f"chunk fwd B={B} T={T} {tag}", ms=t_f, fla_ms=a_f, ratio_fla=t_f / a_f,
                roofline_pct=100 * floor_f / t_f)
            row(case=f"chunk fwd+bwd B={B} T={T} {tag}", ms=t_fb, fla_ms=a_fb, ratio_fla=t_fb / a_fb,
                roofline_pct=100 * floor_fb / t_fb)
        del q, k, v, do
        torch.cuda.empty_cache()


def decode_shapes(dev, bw, fla_rec):
    g = la.layer_decay(H, 3, 20).to(dev)
    for B in (1, 64, 256):
        slots = 2 * B
        pool = torch.randn(slots, H, D, D, device=dev)
        idx = torch.randperm(slots, device=dev)[:B]
        q, k, v = [torch.randn(B, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3)]
        floor_ms = 2 * B * H * D * D * 4 / bw * 1e3
        t = bench(lambda: la.recurrent(q, k, v, g, D ** -0.5, pool, idx))
        a = float("nan")
        if fla_rec is not None:
            st = pool[idx].contiguous()
            a = bench(lambda: fla_rec(q[:, None], k[:, None], v[:, None], g_gamma=g, scale=D ** -0.5,
                                      initial_state=st, output_final_state=True))
        R = max(1, min(64, (512 << 20) // (B * H * D * D * 4 * 2)))
        sets = [(torch.randn(2 * B, H, D, D, device=dev), torch.randperm(2 * B, device=dev)[:B])
                for _ in range(R)]
        tg = graph_replays([lambda p=p, i=i: la.recurrent(q, k, v, g, D ** -0.5, p, i) for p, i in sets])
        try:
            sts = [p[i].contiguous() for p, i in sets]
            ag = graph_replays([lambda st=st: fla_rec(q[:, None], k[:, None], v[:, None], g_gamma=g,
                                                   scale=D ** -0.5, initial_state=st,
                                                   output_final_state=True) for st in sts])
        except Exception as e:
            print(f"  fla decode not graph-capturable: {type(e).__name__}: {str(e)[:100]}")
            ag = float("nan")
        del sets
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            la.recurrent(q, k, v, g, D ** -0.5, pool, idx)
        torch.cuda.synchronize()
        host = (time.perf_counter() - t0) / 200 * 1e3
        row(case=f"decode B={B}", graph_us=tg * 1e3, fla_graph_us=ag * 1e3, floor_us=floor_ms * 1e3,
            ratio_floor=tg / floor_ms, ratio_fla=tg / ag, eager_us=t * 1e3, fla_eager_us=a * 1e3,
            eager_loop_us=host * 1e3)


def sweep(dev, decode_sweep=False):
    """Launch configurations of the chunk kernel (timing only; the default is a fixed constant)."""
    import importlib

    ck = importlib.import_module("kernels.linear_attention.chunk_triton")

    base = (ck.BV, ck.NUM_WARPS, ck.NUM_STAGES, ck.SPLIT_STATE, ck.SPLIT_DERIVED)
    B, T = 4, 8192
    g = la.layer_decay(H, 3, 20).to(dev)
    q, k, v = [torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3)]
    do = torch.randn_like(q)
    for bv, w, s, split in ((32, 4, 3, (True, False)), (32, 4, 3, (False, False)),
                            (32, 4, 3, (True, True)), (32, 8, 3, (True, False)),
                            (64, 4, 3, (True, True)), (64, 8, 3, (True, True)),
                            (32, 4, 4, (True, False)), (32, 4, 2, (True, False))):
        ck.BV, ck.NUM_WARPS, ck.NUM_STAGES = bv, w, s
        ck.SPLIT_STATE, ck.SPLIT_DERIVED = split
        try:
            t_f = bench(lambda: la.chunk(q, k, v, g, 0.088)[0])
            t_fb = bench(lambda: torch.autograd.grad(la.chunk(q, k, v, g, 0.088)[0], (q, k, v), do))
            print(f"  sweep BV={bv} warps={w} stages={s} split={split}: fwd {t_f:.3f} ms, "
                  f"fwd+bwd {t_fb:.3f} ms", flush=True)
        except Exception as e:  # a config that does not compile (registers, shared memory)
            print(f"  sweep BV={bv} warps={w} stages={s} split={split}: failed {type(e).__name__}: "
                  f"{str(e)[:200]}", flush=True)
    ck.BV, ck.NUM_WARPS, ck.NUM_STAGES, ck.SPLIT_STATE, ck.SPLIT_DERIVED = base
    # long single sequence: value-block width (parallelism) and whether it changes any bit
    B, T = 1, 32768
    q, k, v = [torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3)]
    do = torch.randn_like(q)
    ref = None
    for bv in (64, 32, 16):
        ck.BV, ck.NUM_STAGES = bv, 3
        o = la.chunk(q, k, v, g, 0.088)[0]
        same = None if ref is None else torch.equal(o, ref)
        ref = o if ref is None else ref
        t_f = bench(lambda: la.chunk(q, k, v, g, 0.088)[0])
        t_fb = bench(lambda: torch.autograd.grad(la.chunk(q, k, v, g, 0.088)[0], (q, k, v), do))
        print(f"  sweep B=1 T=32768 BV={bv}: fwd {t_f:.3f} ms, fwd+bwd {t_fb:.3f} ms, "
              f"bitwise equal to BV=64: {same}", flush=True)
    ck.BV, ck.NUM_STAGES = base[0], base[2]
    if not decode_sweep:
        return
    # decode kernel configurations (graph replay, B=64 and B=1), and bitwise agreement
    import importlib

    rk = importlib.import_module("kernels.linear_attention.recurrent_triton")
    rbase = (rk.BV_DECODE, rk.DECODE_WARPS)
    for B in (1, 64):
        qd, kd, vd = [torch.randn(B, H, D, device=dev) for _ in range(3)]
        p0 = torch.randn(B, H, D, D, device=dev)
        R = max(1, min(64, (512 << 20) // (B * H * D * D * 8)))
        pools = [p0.clone() for _ in range(R)]
        ref = None
        for bv, w in ((16, 1), (16, 2), (32, 2), (32, 4), (64, 4), (64, 8), (128, 8)):
            rk.BV_DECODE, rk.DECODE_WARPS = bv, w
            o = la.recurrent(qd, kd, vd, g, 0.088, p0.clone())
            same = None if ref is None else torch.equal(o, ref)
            ref = o if ref is None else ref
            t = graph_replays([lambda p=p: la.recurrent(qd, kd, vd, g, 0.088, p) for p in pools])
            print(f"  sweep decode B={B} BV={bv} warps={w}: {t * 1e3:.1f} us, bitwise equal to first: "
                  f"{same}", flush=True)
    rk.BV_DECODE, rk.DECODE_WARPS = rbase


def run_gpu(args):
    dev = torch.device("cuda")
    print(header("kernels.linear_attention on GPU", ("torch", "triton")), flush=True)
    try:
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
        import fla
        print(f"anchor: flash-linear-attention {getattr(fla, '__version__', '?')}")
    except Exception as e:  # the anchor is optional: report its absence loudly
        print(f"anchor: fla NOT available ({type(e).__name__}: {e}); ratios are NaN")
        chunk_simple_gla = fused_recurrent_simple_gla = None
    if args.long:
        res = {} if args.no_check else {"long_checks": long_checks(dev)}
        long_sequences(dev, chunk_simple_gla, [int(n) for n in args.segments.split(",") if n])
        return res
    res = {} if args.no_check else {"correctness": gpu_correctness(dev), "long_checks": long_checks(dev)}
    bw, flops = copy_bandwidth(dev), matmul_rate(dev)
    print(f"  copy bandwidth {bw / 1e12:.3f} TB/s (read+write), bf16 matmul {flops / 1e12:.0f} TFLOP/s")
    res.update(copy_TBps=bw / 1e12, matmul_TFLOPs=flops / 1e12)
    if args.sweep:
        sweep(dev)
    training_shapes(dev, bw, flops, chunk_simple_gla)
    decode_shapes(dev, bw, fused_recurrent_simple_gla)
    return res


# ------------------------------------------------------------------- long sequences (issue 19)
LONG_SHAPES = ((1, 8192), (1, 32768), (1, 131072), (8, 4096), (4, 8192))


def long_checks(dev, Hc=4, D=D, dtypes=(torch.float32, torch.bfloat16)):
    """At the real segment length: bitwise batch invariance of the segmented forward (fp32 and
    bf16; outputs and final states) and the error of both forwards against float64 (the PyTorch
    chunked form in float64 on the GPU)."""
    ck = _chunk_mod()
    seg = ck.SEGMENT
    g = la.layer_decay(Hc, 3, 20).to(dev)
    L, S, P = 2 * seg + seg // 2 - 9, seg // 2 + 7, seg // 3   # 2.5 segments; half of one; padding
    out = {}
    torch.manual_seed(3)
    for dt in dtypes:
        name = str(dt).split(".")[-1]
        x = [torch.randn(1, L, Hc, D, device=dev).to(dt) for _ in range(3)]
        h0 = torch.randn(1, Hc, D, D, device=dev)
        alone, alone_ht = la.chunk(*x, g, 0.09, h0, output_final_state=True)
        big = [torch.randn(8, L + P, Hc, D, device=dev).to(dt) for _ in range(3)]
        for b, xi in zip(big, x):
            b[3, :L] = xi[0]
        big_h0 = torch.randn(8, Hc, D, D, device=dev)
        big_h0[3] = h0[0]
        in_batch, _ = la.chunk(*big, g, 0.09, big_h0)     # (its row 3 runs on past L)
        short = [torch.randn(1, S, Hc, D, device=dev).to(dt) for _ in range(3)]
        short_alone, _ = la.chunk(*short, g, 0.09)
        packed = [torch.cat([torch.randn(1, P, Hc, D, device=dev).to(dt), xi, si], 1)
                  for xi, si in zip(x, short)]
        cu = torch.tensor([0, P, P + L, P + L + S], device=dev, dtype=torch.int32)
        pack_h0 = torch.randn(3, Hc, D, D, device=dev)
        pack_h0[1], pack_h0[2] = h0[0], 0
        in_pack, pack_ht = la.chunk(*packed, g, 0.09, pack_h0, cu_seqlens=cu, output_final_state=True)
        ok = (torch.equal(alone[0], in_batch[3, :L]) and torch.equal(alone[0], in_pack[0, P:P + L])
              and torch.equal(alone_ht[0], pack_ht[1])
              and torch.equal(short_alone[0], in_pack[0, P + L:]))
        ref, ref_ht = la.chunk(*[xi.double() for xi in x], g.double(), 0.09, h0.double(),
                               output_final_state=True, backend="torch")
        ck.SEGMENT = None
        old, old_ht = la.chunk(*x, g, 0.09, h0, output_final_state=True)
        ck.SEGMENT = seg
        errs = dict(new_o=rel_error(alone, ref), new_ht=rel_error(alone_ht, ref_ht),
                    old_o=rel_error(old, ref), old_ht=rel_error(old_ht, ref_ht))
        print(f"  segmented forward {name}, SEGMENT={seg}, L={L}: bitwise alone = batch of 8 = packed "
              f"(and short alone = packed): {ok}; vs float64 " +
              " ".join(f"{k}={e:.2e}" for k, e in errs.items()), flush=True)
        out[f"segmented_{name}"] = dict(bitwise_batch_invariant=ok, **errs)
        assert ok, "segmented forward is not batch invariant"
        assert max(errs.values()) < (5e-5 if dt == torch.float32 else 2e-2), errs
    return out


def long_sequences(dev, fla_chunk, segments=()):
    """B=1 long sequences (and two batched shapes): the segmented forward ("new") vs the
    one-program-per-sequence forward ("old", SEGMENT=None) vs fla, bf16, H=16, D=128."""
    ck = _chunk_mod()
    base = ck.SEGMENT
    variants = [("new", base), ("old", None)] + [(f"SEGMENT={n}", n) for n in segments if n != base]
    g = la.layer_decay(H, 3, 20).to(dev)
    scale = D ** -0.5
    table = []
    for B, T in LONG_SHAPES:
        q, k, v = [torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3)]
        do = torch.randn_like(q)

        def fwd(fn):
            return lambda: fn(q, k, v)

        def fwd_bwd(fn):
            return lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), do)

        def ours(q, k, v):
            return la.chunk(q, k, v, g, scale)[0]

        t = {}
        for name, seg in variants:
            ck.SEGMENT = seg
            t[name] = (bench(fwd(ours)), bench(fwd_bwd(ours)))
        ck.SEGMENT = base
        if fla_chunk is not None:
            def theirs(q, k, v):
                return fla_chunk(q, k, v, g_gamma=g, scale=scale)[0]

            t["fla"] = (bench(fwd(theirs)), bench(fwd_bwd(theirs)))
            with torch.no_grad():
                print(f"  B={B} T={T}: new vs fla output rel diff {rel_error(ours(q, k, v), theirs(q, k, v)):.2e}")
        else:
            t["fla"] = (float("nan"),) * 2
        for i, phase in enumerate(("fwd", "fwd+bwd")):
            new, old, fla = t["new"][i], t["old"][i], t["fla"][i]
            extra = {f"{n}_ms": t[n][i] for n, _ in variants[2:]}
            row(case=f"long {phase} B={B} T={T}", new_ms=new, old_ms=old, fla_ms=fla,
                new_over_fla=new / fla, old_over_fla=old / fla, new_over_old=new / old, **extra)
            table.append([f"B={B} T={T} {phase}", new, old, fla, new / fla, old / fla, new / old,
                          *extra.values()])
        del q, k, v, do
        torch.cuda.empty_cache()
    cols = ["case", f"new (SEGMENT={base}) ms", "old ms", "fla ms", "new÷fla", "old÷fla", "new÷old"]
    print("\n" + markdown_table(cols + [f"{n} ms" for n, _ in variants[2:]], table), flush=True)


# ----------------------------------------------------------------------------------------- CPU
def run_cpu(args):
    print(header(f"kernels.linear_attention on CPU, {torch.get_num_threads()} threads"), flush=True)
    g = la.layer_decay(H, 3, 20)
    T = 2048
    q, k, v = [torch.randn(1, T, H, D) for _ in range(3)]
    with torch.no_grad():
        t_c = wall_s(lambda: la.chunk(q, k, v, g, D ** -0.5, backend="torch"))
        t_n = wall_s(lambda: naive_recurrence(q, k, v, g, D ** -0.5), reps=1)
    row(case=f"cpu prefill T={T} H={H} D={D} fp32", torch_tok_s=T / t_c, naive_tok_s=T / t_n,
        speedup=t_n / t_c)
    qg, kg, vg = [x.clone().requires_grad_() for x in (q, k, v)]
    t_fb = wall_s(lambda: torch.autograd.grad(la.chunk(qg, kg, vg, g, D ** -0.5, backend="torch")[0].sum(),
                                            (qg, kg, vg)))
    row(case=f"cpu train fwd+bwd T={T}", torch_tok_s=T / t_fb)
    B = 64
    pool = torch.randn(B, H, D, D)
    qd, kd, vd = [torch.randn(B, H, D) for _ in range(3)]
    t_d = wall_s(lambda: la.recurrent(qd, kd, vd, g, D ** -0.5, pool, backend="torch"), reps=5)

    def naive_step():
        for b in range(B):  # the reference loop, one sequence at a time
            naive_recurrence(qd[b][None, None], kd[b][None, None], vd[b][None, None], g, D ** -0.5,
                             pool[b][None], output_final_state=True)

    t_nd = wall_s(naive_step, reps=3)
    row(case=f"cpu decode B={B}", torch_tok_s=B / t_d, naive_tok_s=B / t_nd, speedup=t_nd / t_d)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--sweep", action="store_true", help="also time other launch configurations")
    p.add_argument("--no-check", action="store_true", help="skip the GPU correctness checks")
    p.add_argument("--long", action="store_true",
                   help="GPU: only the long-sequence forward (segmented vs old vs fla) and its checks")
    p.add_argument("--segments", default="",
                   help="with --long, also time these segment lengths (comma-separated tokens, "
                        "multiples of 64; each changes the bits, so it is a design sweep)")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args()
    res = {}
    if args.gpu:
        res = run_gpu(args)
    if args.cpu or not args.gpu:
        run_cpu(args)
    keys = sorted({k for r in ROWS for k in r if k != "case"})
    print("\n" + markdown_table(["case", *keys], [[r["case"], *(r.get(k) for k in keys)] for r in ROWS]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": ROWS, **res}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
