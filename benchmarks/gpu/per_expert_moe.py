"""The Ring-linear MoE layer as the trainer ran it before its experts were stacked: one SwiGLU
module per routed expert, called in a Python loop (three GEMMs per expert, forward and backward;
under ZeRO-3 one gather per expert module).

Kept only as a baseline and a reference: ``benchmarks/gpu/train_step.py`` times the training step
with it against the grouped layer in the same run, and ``tests/unit/test_moe.py`` checks the
grouped layer's outputs and gradients against it. Nothing in the engines uses it. Routing, the
grouping of the rows and the combination order are the same :class:`kernels.moe.ExpertDispatch`
the grouped layer uses, so the two differ only in how the experts' GEMMs are issued.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.moe import ExpertDispatch
from models.ring_linear.config import BailingMoeLinearV2Config
from models.ring_linear.moe import MoE, MoEGate, SwiGLU


class PerExpertMoE(nn.Module):
    """:class:`models.ring_linear.moe.MoE` with ``experts`` an ``nn.ModuleList`` of SwiGLU modules
    (the checkpoint's own names, ``experts.{e}.{gate,up,down}_proj.weight``)."""

    def __init__(self, config: BailingMoeLinearV2Config):
        super().__init__()
        self.cfg = config
        self.gate = MoEGate(config)
        self.experts = nn.ModuleList(SwiGLU(config.hidden_size, config.moe_intermediate_size)
                                     for _ in range(config.num_experts))
        shared = config.moe_shared_expert_intermediate_size * config.num_shared_experts
        self.shared_experts = SwiGLU(config.hidden_size, shared) if config.num_shared_experts > 0 else None

    @classmethod
    def from_grouped(cls, moe: MoE) -> PerExpertMoE:
        """A per-expert layer holding copies of a grouped layer's weights (same device and dtype)."""
        weight = moe.experts.gate_up_proj
        new = cls(moe.cfg).to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            new.gate.load_state_dict(moe.gate.state_dict())
            if moe.shared_experts is not None:
                new.shared_experts.load_state_dict(moe.shared_experts.state_dict())
            for e, expert in enumerate(new.experts):
                for linear, stacked in zip((expert.gate_proj, expert.up_proj, expert.down_proj),
                                           moe.experts.expert_weights(e)):
                    linear.weight.copy_(stacked)
        return new

    def forward(self, x: torch.Tensor, x_quant=None) -> torch.Tensor:
        """x ``[..., D]`` (fp32 normed) → ``[..., D]`` fp32, as :meth:`MoE.forward`. Every expert
        module is called, in index order, also on zero rows (ZeRO-3 gathers each in its hook,
        so all ranks must call the same modules). ``x_quant`` (the norm's FP8 quantization of x,
        for FP8 experts) is not used: this baseline runs bf16 experts."""
        flat = x.reshape(-1, x.shape[-1])
        idx, w = self.gate(flat)
        plan = ExpertDispatch(idx, w, self.cfg.num_experts)
        rows = flat[plan.token].split(plan.counts.tolist())
        out = plan.combine(torch.cat([expert(part) for expert, part in zip(self.experts, rows)]))
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat).to(out.dtype)
        return out.view(x.shape)


def use_per_expert_experts(model: nn.Module) -> int:
    """Replaces every grouped :class:`MoE` layer of ``model`` by a :class:`PerExpertMoE` with the
    same weights, in place; returns how many were replaced."""
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, MoE):
                setattr(module, name, PerExpertMoE.from_grouped(child))
                replaced += 1
    return replaced


__all__ = ["PerExpertMoE", "use_per_expert_experts"]
