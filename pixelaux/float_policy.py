"""TF32 off for the host-side torch work of the GPU engines and for every exactness
reference (docs/design.md 2.4, "Float policy"). A leaf module: the engines, the Triton
kernels' host code and the checks import it; it imports torch only."""
from __future__ import annotations

import contextlib

import torch


def tf32_flags() -> dict:
    """Whether TF32 is allowed for CUDA matmuls and for cuDNN convolutions."""
    return dict(matmul=torch.backends.cuda.matmul.allow_tf32, cudnn=torch.backends.cudnn.allow_tf32)


@contextlib.contextmanager
def true_fp32():
    """TF32 off for CUDA matmuls and cuDNN convolutions (cuDNN allows it by default on
    Ampere and Hopper: 10-bit mantissas), restored on exit. The host-side torch work of
    the Triton engines (the prefill: the conditioning convolutions computed once per
    image) and every reference an exactness check compares them with run inside it,
    so both sides are float32 as the kernels are. On the CPU the flags change nothing."""
    old = tf32_flags()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old["matmul"]
        torch.backends.cudnn.allow_tf32 = old["cudnn"]
