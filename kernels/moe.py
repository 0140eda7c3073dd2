"""Mixture-of-experts routing and expert combination: the ops both engines' MoE layers run.

Router (Ring-linear / DeepSeek-V3 style): ``s = sigmoid(x W_gᵀ)`` in fp32; the balancing bias
``b`` steers the *selection* only: groups of experts are ranked by the sum of their top-2 biased
scores, the best ``topk_group`` groups are kept, the top-k biased experts inside them are chosen,
and their gates are the *unbiased* scores renormalised over the k (``norm_topk_prob``) times
``routed_scaling_factor``.

Alignment (DESIGN.md §4): router in fp32, stable top-k (ties go to the lower expert index),
and each token's expert outputs are summed in expert-index order whatever the batch, so both
engines add the same terms in the same order.

Both engines keep the experts' weights stacked (their modules are :mod:`models.ring_linear.moe`)
and compute them with one function, :func:`grouped_swiglu` (two grouped GEMMs over all experts,
differentiable): the trainer calls it on the rows :class:`ExpertDispatch` groups, the rollout
engine through the custom op :data:`stacked_experts` (which also runs the shared expert as the
last group); :data:`stacked_experts_fp8` is the rollout's FP8 form.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .batch_invariant import grouped_linear
from .batch_invariant import linear as invariant_linear
from .batch_invariant import sigmoid as invariant_sigmoid
from .batch_invariant import silu as invariant_silu

_kernel_log = logging.getLogger(__name__)


def stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries of the last dim; ties go to the lower index."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def route(logits: torch.Tensor, expert_bias: torch.Tensor, top_k: int, n_group: int,
          topk_group: int, norm_topk_prob: bool, routed_scaling_factor: float, strict: bool = False
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits ``[N, E]`` (fp32/fp64), expert_bias ``[E]`` → (indices int64 ``[N, k]``, gate
    weights ``[N, k]`` in the logits' dtype).  Experts outside the kept groups are excluded.
    ``strict``: the batch-invariant sigmoid and the k gates summed left to right (strict mode)."""
    N, E = logits.shape
    scores = invariant_sigmoid(logits) if strict else torch.sigmoid(logits)
    biased = scores + expert_bias.to(scores.dtype)
    if n_group > 1:
        grouped = biased.view(N, n_group, E // n_group)
        group_score = grouped.topk(2, dim=-1).values.sum(-1)                     # [N, n_group]
        keep = torch.zeros_like(group_score, dtype=torch.bool)
        keep.scatter_(1, stable_topk(group_score, topk_group), True)
        biased = grouped.masked_fill(~keep[..., None], float("-inf")).view(N, E)
    idx = stable_topk(biased, top_k)
    w = scores.gather(1, idx)
    if norm_topk_prob and top_k > 1:
        total = w[:, :1]
        if strict:
            for j in range(1, top_k):
                total = total + w[:, j:j + 1]
        else:
            total = w.sum(-1, keepdim=True)
        w = w / (total + 1e-20)
    return idx, w * routed_scaling_factor


def expert_order(idx: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's k (expert, gate) pairs sorted by expert index (stable): the order in which
    its terms are summed, in every layout."""
    idx, slot_order = torch.sort(idx, dim=1, stable=True)
    return idx, w.gather(1, slot_order)


class ExpertDispatch:
    """Where each (token, slot) pair of a routing goes: rows grouped by expert, ascending, and
    back.  Shared by both expert layouts (per-expert modules, stacked weights), so the k terms
    of a token are always weighted and summed the same way."""

    def __init__(self, idx: torch.Tensor, w: torch.Tensor, num_experts: int):
        N, k = idx.shape
        idx, self.w = expert_order(idx, w)
        self.by_expert = torch.sort(idx.reshape(-1), stable=True).indices  # (token, slot) rows grouped by expert
        self.token = self.by_expert // k                                # the token of each grouped row
        # rows per expert, [E] int64, without a data-dependent output size (compile-friendly)
        flat = idx.reshape(-1)
        self.counts = torch.zeros(num_experts, dtype=torch.int64, device=idx.device).index_add_(
            0, flat, torch.ones_like(flat))
        self.N, self.k = N, k

    def combine(self, ys: torch.Tensor) -> torch.Tensor:
        """ys: the expert outputs of the grouped rows ``[N·k, D]`` → ``Σ_j w[n, j] · ys`` ``[N, D]``
        in w's dtype, the k terms in expert-index order."""
        back = torch.empty_like(self.by_expert)
        back[self.by_expert] = torch.arange(self.N * self.k, device=back.device)
        return weighted_sum(ys[back].view(self.N, self.k, -1), self.w)


def weighted_sum(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``Σ_j w[n, j] · y[n, j]`` for y ``[N, k, D]``, w ``[N, k]`` (slots in expert-index order),
    in w's dtype, added left to right: an explicit loop, not a reduction kernel, so the order
    is fixed everywhere."""
    y = y.to(w.dtype) * w[..., None]
    out = y[:, 0]
    for j in range(1, y.shape[1]):
        out = out + y[:, j]
    return out


def grouped_swiglu(rows: torch.Tensor, counts: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """SwiGLU of each expert on its rows, differentiable: rows ``[R, D]`` grouped by expert
    (``counts [S]`` rows each, in stack order), ``w13 [S, 2I, D]`` (gate_proj rows, then up_proj
    rows), ``w2 [S, D, I]`` → ``[R, D]``, ``down_e(silu(gate_e r) · up_e r)`` for each row r of
    expert e.  The expert computation of both engines (the trainer's :class:`GroupedExperts`,
    the rollout's ``stacked_experts``), so each expert's rows come out alike in both.

    Two grouped GEMMs for all experts (``torch._grouped_mm``), and four in the backward
    (:class:`_GroupedSwiGLU`): no per-expert call and no host synchronisation. ``_grouped_mm``
    takes bf16 on CUDA (any rows per group since torch 2.8: only the strides must be 16-byte
    aligned, so no padding of the groups) and fp32/bf16/fp16 on CPU (one GEMM per group, bitwise
    the per-expert matmuls, forward and backward); other cases (fp64, fp32 on a GPU, widths whose
    rows are not 16-byte aligned, such as the demo model's 86 fp32) run one GEMM pair per expert,
    logged once per case."""
    if not _grouped_mm_supported(rows, w2.shape[-1]):
        return _per_expert_swiglu(rows, counts.tolist(), w13, w2)
    offs = counts.cumsum(0).to(torch.int32)
    if torch.is_grad_enabled() and (rows.requires_grad or w13.requires_grad or w2.requires_grad):
        return _GroupedSwiGLU.apply(rows, offs, w13, w2)
    return _grouped_swiglu_forward(rows, offs, w13, w2)[1]


def _grouped_swiglu_forward(rows: torch.Tensor, offs: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(h = rows · w13ᵀ per group ``[R, 2I]``, the SwiGLU output ``[R, D]``)."""
    inter = w2.shape[-1]
    h = torch._grouped_mm(rows, w13.transpose(1, 2), offs=offs)
    return h, torch._grouped_mm(F.silu(h[:, :inter]) * h[:, inter:], w2.transpose(1, 2), offs=offs)


class _GroupedSwiGLU(torch.autograd.Function):
    """:func:`grouped_swiglu`'s grouped path with its backward written out, for two reasons:
    it saves the weights themselves, not views of them (ZeRO-3 frees a gathered parameter by
    swapping its data after the forward and gathers it again for the backward; a saved
    transposed view would keep every layer's gathered stacks alive until the backward), and
    only rows and h, recomputing silu(gate)·up (autograd's own backward would save h's
    halves, silu(gate) and the product as well). Per group e, with a = silu(g)·u, h = [g | u]:
    dW2_e = dy_eᵀ a_e, da = dy W2_e, dh = [da·u·silu'(g) | da·silu(g)], dW13_e = dh_eᵀ rows_e,
    drows = dh W13_e — four grouped GEMMs, the weight gradients grouped along the rows."""

    @staticmethod
    def forward(ctx, rows, offs, w13, w2):
        h, y = _grouped_swiglu_forward(rows, offs, w13, w2)
        ctx.save_for_backward(rows, offs, h, w13, w2)
        return y

    @staticmethod
    def backward(ctx, dy):
        rows, offs, h, w13, w2 = ctx.saved_tensors
        inter = w2.shape[-1]
        dy = dy.contiguous()
        g, u = h[:, :inter], h[:, inter:]
        silu_g = F.silu(g)
        da = torch._grouped_mm(dy, w2, offs=offs)                                # [R, I]
        dh = torch.cat((torch.ops.aten.silu_backward(da * u, g), da * silu_g), dim=1)
        dw2 = dw13 = drows = None
        if ctx.needs_input_grad[3]:
            dw2 = torch._grouped_mm(dy.t(), silu_g * u, offs=offs)               # [S, D, I]
        if ctx.needs_input_grad[2]:
            dw13 = torch._grouped_mm(dh.t(), rows, offs=offs)                     # [S, 2I, D]
        if ctx.needs_input_grad[0]:
            drows = torch._grouped_mm(dh, w13, offs=offs)                         # [R, D]
        return drows, None, dw13, dw2


def _per_expert_swiglu(rows: torch.Tensor, counts: list[int], w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """:func:`grouped_swiglu` as one GEMM pair per expert: where no grouped GEMM exists."""
    inter = w2.shape[-1]
    out = []
    for e, part in enumerate(rows.split(counts)):
        h = F.linear(part, w13[e])
        out.append(F.linear(F.silu(h[:, :inter]) * h[:, inter:], w2[e]))
    return torch.cat(out)


# On CPU `_grouped_mm` runs one GEMM per expert, each with ~10 µs of call overhead, so for
# decode-sized batches two GEMMs over all experts are cheaper although they compute E/k times
# the routed work.  The switch: the wasted multiply-adds N·(E−k)·3·D·I cost less than the 2E
# calls saved, a call's overhead being worth ~5e5 multiply-adds (~50 GMAC/s per core pair).
CPU_MACS_PER_CALL = 500_000


def every_expert_pays(x: torch.Tensor, idx: torch.Tensor, w13: torch.Tensor, shared: bool, tokens=None):
    """Whether :func:`every_expert_swiglu` is the cheaper way for this batch (CPU only), or for
    ``tokens`` tokens.  A SymBool when the batch size is symbolic (a compiled model decides per
    call)."""
    (N, k), (stack, two_inter, D) = idx.shape, w13.shape
    N = N if tokens is None else tokens
    return x.device.type == "cpu" and N * (stack - shared - k) * 3 * D * (two_inter // 2) <= 2 * stack * CPU_MACS_PER_CALL


def every_expert_swiglu(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, w13: torch.Tensor,
                        w2: torch.Tensor, shared: bool) -> torch.Tensor:
    """:func:`_stacked_experts` by running every expert on every token (two GEMMs over all the
    stacked experts) and keeping each token's k outputs: the same terms, from other GEMM
    shapes.  Plain traceable tensor ops, so a compiled model fuses all but the GEMMs."""
    (N, k), (stack, two_inter, D) = idx.shape, w13.shape
    E, inter = stack - shared, two_inter // 2
    h = F.linear(x, w13.reshape(stack * two_inter, D)).view(N, stack, two_inter)
    y = torch.bmm((F.silu(h[..., :inter]) * h[..., inter:]).transpose(0, 1), w2.transpose(1, 2))  # [S, N, D]
    idx, w = expert_order(idx, w)
    out = weighted_sum(y.transpose(0, 1).gather(1, idx[..., None].expand(N, k, D)), w)
    return out + y[E].to(out.dtype) if shared else out


def _stacked_experts(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, w13: torch.Tensor,
                     w2: torch.Tensor, shared: bool) -> torch.Tensor:
    """The experts with stacked weights — the rollout's layout (vLLM's fused-MoE one):
    ``w13 [S, 2I, D]`` = each expert's gate_proj rows then its up_proj rows, ``w2 [S, D, I]`` =
    its down_proj; the routed experts first, then (``shared``) the shared expert as the last.
    ``out[n] = Σ_j w[n, j] · down_e(silu(gate_e x) · up_e x)`` for e = idx[n, j] (+ the shared
    expert's output), the same terms in the same order as
    :meth:`models.ring_linear.moe.MoE.forward`; x ``[N, D]`` in the weights' dtype.

    :func:`grouped_swiglu` on the rows grouped by expert, or on CPU for small batches every
    expert on every token (:func:`every_expert_swiglu`, :data:`CPU_MACS_PER_CALL`).
    Registered as the custom op ``torch.ops.lockstep.stacked_experts`` (:data:`stacked_experts`),
    so a compiled model treats it as one opaque call: the grouped GEMM has no fp32 meta kernel
    for the compiler to trace, and the rows per expert are data-dependent."""
    if every_expert_pays(x, idx, w13, shared) or _capturing_without_grouped_gemm(x, w2.shape[-1]):
        return every_expert_swiglu(x, idx, w, w13, w2, shared)
    plan, rows, counts = _grouped_rows(x, idx, w, w13.shape[0] - shared, shared)
    return _combined(plan, grouped_swiglu(rows, counts, w13, w2), shared)


def _capturing_without_grouped_gemm(x: torch.Tensor, inter: int) -> bool:
    """Whether a CUDA graph is being captured for a batch the grouped GEMM cannot take (fp32 on
    CUDA, unaligned widths).  Its fallback, one GEMM pair per expert, splits the rows by counts
    read on the host, which capture forbids; such batches run every expert on every token
    instead (:func:`every_expert_swiglu`: the same terms, from other GEMM shapes), logged once."""
    if not (x.is_cuda and torch.cuda.is_current_stream_capturing()) or _grouped_mm_supported(x, inter):
        return False
    if ("capture", x.dtype) not in _LOOP_LOGGED:
        _LOOP_LOGGED.add(("capture", x.dtype))
        _kernel_log.warning("stacked experts: CUDA graphs capture %s experts as every expert on every token "
                            "(no grouped GEMM for them; the per-expert loop cannot be captured)", x.dtype)
    return True


def invariant_swiglu(rows: torch.Tensor, counts: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """:func:`grouped_swiglu` for strict mode, in both engines (the trainer's
    :class:`~models.ring_linear.moe.GroupedExperts`, the rollout's
    :func:`stacked_experts_invariant`), so a token's expert output is the same bits however many
    tokens went to that expert.  On CPU (fp32): gate and up of every expert in one call of the
    batch-invariant grouped GEMM (:func:`kernels.batch_invariant.grouped_linear`: an element's
    sum does not depend on how many columns are computed beside it, so gate and up from the
    stacked ``[2I, D]`` are the bits of the two checkpoint weights apart), then down in another.
    Elsewhere each expert's rows through the row-tiled GEMM, gate and up as the two weights they
    are in the checkpoint.  Differentiable (the weights' gradients land in the stacks)."""
    inter = w2.shape[-1]
    sizes = counts.tolist()
    h = grouped_linear(rows, sizes, w13)
    if h is not None:
        return grouped_linear(invariant_silu(h[:, :inter]) * h[:, inter:], sizes, w2)
    ys = []
    for e, part in enumerate(rows.split(sizes)):
        gate, up = invariant_linear(part, w13[e, :inter]), invariant_linear(part, w13[e, inter:])
        ys.append(invariant_linear(invariant_silu(gate) * up, w2[e]))
    return torch.cat(ys)


def stacked_experts_invariant(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, w13: torch.Tensor,
                              w2: torch.Tensor, shared: bool) -> torch.Tensor:
    """:func:`_stacked_experts` for strict mode: :func:`invariant_swiglu` on the routed rows
    (and the shared expert's), then the same combination (expert-index order, shared last)."""
    plan, rows, counts = _grouped_rows(x, idx, w, w13.shape[0] - shared, shared)
    return _combined(plan, invariant_swiglu(rows, counts, w13, w2), shared)


def _stacked_experts_fp8(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, gate_q: torch.Tensor,
                         gate_s: torch.Tensor, up_q: torch.Tensor, up_s: torch.Tensor, down_q: torch.Tensor,
                         down_s: torch.Tensor, shared: bool, pow2_scale: bool, xq: torch.Tensor | None = None,
                         x_scale: torch.Tensor | None = None, fused: bool = False) -> torch.Tensor:
    """:func:`_stacked_experts` with every expert projection an FP8 GEMM, computing bitwise what
    the trainer's FP8 experts compute (:func:`kernels.fp8.fp8_linear` on each expert's rows, one
    weight per projection), in one grouped GEMM per projection for all experts
    (:func:`kernels.fp8.fp8_gemm_grouped`):
    - the rows are quantized once for gate and up (1×128 tiles along a row: a row's bits do not
      depend on the other rows, so quantizing all experts' rows at once is quantizing each
      expert's) — or come quantized by the norm (``xq``, ``x_scale``: x's rows, gathered) — and
      silu(gate)·up once, in fp32 rounded once to the weight dtype as the FP8 ``SwiGLU``
      (:func:`models.ring_linear.moe.fp8_swiglu`; ``fused``: quantized in the same kernel);
    - gate_proj and up_proj are quantized as the two weights they are in the trainer (with
      I % 128 ≠ 0 a 128×128 block of the stacked [2I, D] would straddle them);
    - a row's GEMM result depends neither on the other rows nor on the tiles (batch invariance).
    ``gate_q … down_s``: the weights quantized (:func:`quantize_stacked_experts`), all the op
    reads of them. Strict mode needs nothing more here: the grouped GEMM has one tile
    configuration for every batch. The custom op ``torch.ops.lockstep.stacked_experts_fp8``."""
    from .fp8 import fp8_gemm_grouped, quantize_act, silu_mul_fp32, silu_mul_quant

    if x.shape[0] == 0:
        return w.new_zeros(0, down_q.shape[1])
    plan, rows, counts = _grouped_rows(x, idx, w, gate_q.shape[0] - shared, shared)
    offsets = F.pad(counts.cumsum(0), (1, 0))

    def grouped(aq: torch.Tensor, a_scale: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return fp8_gemm_grouped(aq, a_scale, q, scale, offsets, rows.dtype)

    if xq is None:
        rows_q = quantize_act(rows, pow2_scale)
    else:  # the norm's quantization of x, gathered as _grouped_rows gathers x's rows
        rows_q = tuple(torch.cat((t[plan.token], t)) if shared else t[plan.token] for t in (xq, x_scale))
    gate, up = grouped(*rows_q, gate_q, gate_s), grouped(*rows_q, up_q, up_s)
    if fused:
        h_q = silu_mul_quant(gate, up, out_dtype=rows.dtype, pow2_scale=pow2_scale)
    else:
        h_q = quantize_act(silu_mul_fp32(gate, up).to(rows.dtype), pow2_scale)
    return _combined(plan, grouped(*h_q, down_q, down_s), shared)


def quantize_stacked_experts(w13: torch.Tensor, w2: torch.Tensor, pow2_scale: bool) -> tuple[torch.Tensor, ...]:
    """Each stacked expert's gate, up and down weights quantized as the trainer's per-expert
    ``FP8Linear`` modules quantize them (128×128 blocks of each), stacked: (gate_q ``[S, I, D]``,
    gate_s, up_q ``[S, I, D]``, up_s, down_q ``[S, D, I]``, down_s)."""
    from .fp8 import quantize_weight

    inter = w13.shape[1] // 2
    per_expert = [[quantize_weight(m, pow2_scale) for m in (w13[e, :inter], w13[e, inter:], w2[e])]
                  for e in range(w13.shape[0])]
    return tuple(torch.stack([quantized[p][i] for quantized in per_expert]) for p in range(3) for i in range(2))


def _grouped_rows(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, num_experts: int, shared: bool
                  ) -> tuple[ExpertDispatch, torch.Tensor, torch.Tensor]:
    """The dispatch of a routing, x's rows grouped by expert (ascending) and the rows per
    expert ``[E]``; with ``shared``, one more group last: every token, for the shared expert."""
    plan = ExpertDispatch(idx, w, num_experts)
    rows, counts = x[plan.token], plan.counts
    if shared:
        rows, counts = torch.cat((rows, x)), torch.cat((counts, counts.new_full((1,), x.shape[0])))
    return plan, rows, counts


def _combined(plan: ExpertDispatch, ys: torch.Tensor, shared: bool) -> torch.Tensor:
    """The routed rows' outputs combined per token, plus the shared expert's (the last group)."""
    routed = plan.N * plan.k
    out = plan.combine(ys[:routed])
    return out + ys[routed:].to(out.dtype) if shared else out


def _grouped_mm_supported(x: torch.Tensor, inter: int) -> bool:
    ok = x.dtype == torch.bfloat16 if x.is_cuda else x.dtype in (torch.float32, torch.bfloat16, torch.float16)
    aligned = all(n * x.element_size() % 16 == 0 for n in (x.shape[-1], inter))  # its stride rule
    case = (x.dtype, x.device.type, aligned)
    if not (ok and aligned) and case not in _LOOP_LOGGED:
        _LOOP_LOGGED.add(case)
        _kernel_log.warning("stacked experts: no grouped GEMM for %s on %s with widths %d, %d; running one "
                     "GEMM pair per expert", x.dtype, x.device.type, x.shape[-1], inter)
    return ok and aligned


_LOOP_LOGGED: set[tuple] = set()


# A plain `torch.library` registration, not `torch.library.custom_op`: the latter's Python
# wrapper costs ~50 µs per call, more than the op itself on a decode step.
_LIB = torch.library.Library("lockstep", "DEF")
_LIB.define("stacked_experts(Tensor x, Tensor idx, Tensor w, Tensor w13, Tensor w2, bool shared) -> Tensor")
_LIB.impl("stacked_experts", _stacked_experts, "CompositeExplicitAutograd")
_LIB.impl("stacked_experts", lambda x, idx, w, w13, w2, shared: w.new_empty(x.shape[0], w2.shape[1]), "Meta")
stacked_experts = torch.ops.lockstep.stacked_experts
_LIB.define("stacked_experts_fp8(Tensor x, Tensor idx, Tensor w, Tensor gate_q, Tensor gate_s, Tensor up_q, "
            "Tensor up_s, Tensor down_q, Tensor down_s, bool shared, bool pow2_scale, Tensor? xq=None, "
            "Tensor? x_scale=None, bool fused=False) -> Tensor")
_LIB.impl("stacked_experts_fp8", _stacked_experts_fp8, "CompositeExplicitAutograd")
_LIB.impl("stacked_experts_fp8", lambda x, idx, w, *q: w.new_empty(x.shape[0], q[4].shape[1]), "Meta")
stacked_experts_fp8 = torch.ops.lockstep.stacked_experts_fp8


__all__ = ["stable_topk", "route", "expert_order", "ExpertDispatch", "weighted_sum", "grouped_swiglu",
           "CPU_MACS_PER_CALL", "every_expert_pays", "every_expert_swiglu",
           "stacked_experts", "stacked_experts_fp8", "invariant_swiglu", "stacked_experts_invariant",
           "quantize_stacked_experts"]
