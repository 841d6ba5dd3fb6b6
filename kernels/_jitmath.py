"""``@triton.jit`` helpers shared by the kernels.

Written with plain ``tl`` primitives (no libdevice: it does not run under the CPU
interpreter), so the code the tests run is the code the GPU runs. Each follows the
PyTorch op it stands for to a few float32 ulps; the sampling arithmetic (rounding,
clamping, comparisons) is exact.
"""
import triton
import triton.language as tl


@triton.jit
def tanh(x):
    """``torch.tanh`` through ``exp(-2|x|)`` (no overflow, absolute error ~1e-7)."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def log1p(x):
    """``torch.log1p``, accurate near 0: ``log(1+x) * x / ((1+x) - 1)``."""
    w = 1.0 + x
    d = w - 1.0
    return tl.where(d == 0.0, x, tl.log(w) * (x / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def round_half_even(v):
    """``torch.round``: to the nearest integer, ties to even (exact; inf stays inf)."""
    f = tl.floor(v)
    d = v - f                                   # exact fractional part
    r = tl.where(d > 0.5, f + 1.0, f)
    odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
    return tl.where((d == 0.5) & odd, f + 1.0, r)
