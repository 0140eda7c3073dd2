"""Numeric ops both engines share; each op has a PyTorch implementation, a Triton one and a
reference in its folder.  Imports only torch and triton (nothing of the project).

Families, one package each, laid out as flash-linear-attention lays out its ops: a module per
public op (``chunk.py``, ``recurrent.py``, ``quantize.py``, ``gemm.py``, ...) holding the function,
its input checks and the choice of implementation; ``<op>_torch.py`` / ``<op>_triton.py`` (and
``<op>_hopper.py``: Gluon) the implementations; ``naive.py`` / ``reference.py`` the references the
tests compare against; ``__init__.py`` only re-exports.

* :mod:`kernels.linear_attention` — ``chunk`` (training, prefill), ``recurrent`` (decode).
* :mod:`kernels.softmax_attention` — ``causal_attention`` (training: causal GQA attention over
  sequences packed with ``cu_seqlens``, one launch on CUDA).
* :mod:`kernels.fp8` — block-scaled FP8 quantizers, GEMMs, fused producers, ``FP8Linear``.
* :mod:`kernels.lm_head` — fp32 logits and chunked token log-probs from bf16 operands.

Every public op takes ``backend: Literal["auto", "triton", "torch"] = "auto"`` with one meaning
across families, documented in :mod:`kernels.backend`: "auto" runs Triton on CUDA tensors and
PyTorch elsewhere; "triton" on CPU tensors needs ``TRITON_INTERPRET=1``; any other value is a
``ValueError``; the Triton kernels without triton installed are a ``RuntimeError``, never a
silent fallback.
"""
