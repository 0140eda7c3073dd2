"""FP8 kernels (kernels/fp8, kernels/lm_head): GPU ops and correctness, CPU path, host cost."""
