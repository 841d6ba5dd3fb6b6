"""``@triton.jit`` helpers shared by the kernels.

Written with plain ``tl`` primitives (no libdevice: it does not run under the CPU
interpreter), so the code the tests run is the code the GPU runs. Each follows the
PyTorch op it stands for to a few float32 ulps; the sampling arithmetic (rounding,
clamping, comparisons) is exact, and ``model_input`` reads the very floats the model
computes (``PixelInput.table``).
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


@triton.jit
def model_input(x_ptr, tab_ptr, pix, ci, ok, HW, L, C: tl.constexpr, E: tl.constexpr):
    """The model's input (``PixelInput``) at input channels ``ci``, zero where not ``ok``
    (the convs' zero padding): channel ``c*E + e`` (``c < C``) is ``table[c, v, e]`` for
    the value ``v`` of image channel ``c``, channel ``C*E`` the ones channel. ``pix``:
    the pixels' offsets in the integer image ``(B, C, H, W)`` at channel 0 (``HW = H*W``,
    so channel ``c`` is ``pix + c*HW``); ``tab_ptr``: ``table`` ``(C, L, E)``, float32,
    contiguous. One gather for both encodings: a scaled model's table holds ``v * 2/(L-1)
    - 1``, exactly the floats its forward computes. ``pix``, ``ci`` and ``ok`` broadcast."""
    real = ok & (ci < C * E)
    c = ci // E
    v = tl.load(x_ptr + pix + c * HW, mask=real, other=0)
    t = tl.load(tab_ptr + (c * L + v) * E + ci % E, mask=real, other=1.0)    # (the ones channel)
    return tl.where(ok, t, 0.0)
