"""Block-scaled FP8 (e4m3, 1×128 activation tiles, 128×128 weight blocks, fp32 scales).

One implementation shared by the trainer and the rollout engine, so FP8 rollout and FP8
training forwards quantize identically.  ``backend=`` as in :mod:`kernels.backend`: CUDA
tensors run the Triton (on Hopper partly Gluon) kernels, CPU tensors the PyTorch path (same
quantized bits; exact GEMM), so the CPU demo can run in FP8.

Modules, one per op, each holding its public function(s) and the choice of implementation:
``quantize`` (the five quantizers), ``gemm`` (``fp8_gemm``), ``grouped`` (``fp8_gemm_grouped``:
one launch for many experts' GEMMs), ``fused`` (``rmsnorm_quant``, ``silu_mul_quant``) and
``fused_grad`` (the two with a backward, for training forwards: ``rms_norm_fp8``, ``silu_mul_fp8``),
``linear`` (autograd ``fp8_linear`` / ``FP8Linear`` and the model-level switches),
``weight_cache`` (a training weight's quantizations, kept until the optimizer step).
Implementations: ``quantize_torch`` / ``gemm_torch`` (the PyTorch path), ``quantize_triton`` /
``gemm_triton`` (Triton), ``quantize_hopper`` / ``gemm_hopper`` (Gluon); ``grouped`` and ``fused``
are small enough to hold their one Triton kernel and PyTorch path beside the function.
Below them: ``format`` (dtype, block, scale rule), ``launch`` (low-overhead kernel launches).
``reference`` holds the tests' and benchmarks' references; nothing in the engines calls it.
"""

from .format import FP8_DTYPE, FP8_MAX
from .fused import rmsnorm_quant, silu_mul_fp32, silu_mul_quant
from .fused_grad import rms_norm_fp8, silu_mul_fp8
from .gemm import fp8_gemm
from .grouped import fp8_gemm_grouped
from .linear import FP8Linear, fp8_linear, fp8_projection_count, quantize_fp8_weights, runs_in_fp8, swap_linears_to_fp8
from .quantize import (
    quantize_act,
    quantize_act_both,
    quantize_act_t,
    quantize_weight,
    quantize_weight_t,
    transpose_quantized_weight,
)
from .weight_cache import WeightQuantCache, clear_fp8_weight_caches

__all__ = [
    "FP8_DTYPE",
    "FP8_MAX",
    "FP8Linear",
    "WeightQuantCache",
    "clear_fp8_weight_caches",
    "fp8_gemm",
    "fp8_gemm_grouped",
    "fp8_linear",
    "fp8_projection_count",
    "quantize_act",
    "quantize_act_both",
    "quantize_act_t",
    "quantize_fp8_weights",
    "quantize_weight",
    "quantize_weight_t",
    "rms_norm_fp8",
    "rmsnorm_quant",
    "runs_in_fp8",
    "silu_mul_fp32",
    "silu_mul_fp8",
    "silu_mul_quant",
    "swap_linears_to_fp8",
    "transpose_quantized_weight",
]
