"""Block-scaled FP8 (e4m3, 1×128 activation tiles, 128×128 weight blocks, fp32 scales).

One implementation shared by the trainer and the rollout engine, so FP8 rollout and FP8
training forwards quantize identically. CUDA tensors run the Triton kernels; CPU tensors run
the PyTorch implementation in ``reference.py`` (same quantized bits; exact GEMM), so the CPU
demo can run in FP8. ``backend="triton"`` on CPU runs the kernels in the Triton interpreter.

Modules: ``reference`` (PyTorch reference / CPU path), ``quantize`` (``quantize_hopper``: the
Gluon kernel for the transposed forms on Hopper), ``gemm``, ``grouped`` (one launch for many experts' GEMMs), ``linear``
(autograd FP8Linear), ``fused`` (rmsnorm_quant, silu_mul_quant), ``backend`` (dispatch).
"""

from .fused import rmsnorm_quant, silu_mul_quant
from .gemm import fp8_gemm
from .grouped import fp8_gemm_grouped
from .linear import FP8Linear, fp8_linear, fp8_projection_count, quantize_fp8_weights, swap_linears_to_fp8
from .quantize import (
    FP8_DTYPE,
    FP8_MAX,
    quantize_act,
    quantize_act_both,
    quantize_act_t,
    quantize_weight,
    quantize_weight_t,
    transpose_quantized_weight,
)
from .reference import dequantize_ref, fp8_gemm_ref

__all__ = [
    "FP8_DTYPE",
    "FP8_MAX",
    "FP8Linear",
    "dequantize_ref",
    "fp8_gemm",
    "fp8_gemm_grouped",
    "fp8_gemm_ref",
    "fp8_linear",
    "fp8_projection_count",
    "quantize_act",
    "quantize_act_both",
    "quantize_act_t",
    "quantize_fp8_weights",
    "quantize_weight",
    "quantize_weight_t",
    "rmsnorm_quant",
    "silu_mul_quant",
    "swap_linears_to_fp8",
    "transpose_quantized_weight",
]
