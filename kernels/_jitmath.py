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
def mm(a, w, PREC: tl.constexpr):
    """``a @ w`` in float32 for ``a`` ``[M, K]``, ``w`` ``[K, N]``: a ``tl.dot`` when ``M`` and
    ``N`` are at least 16, ``tl.dot``'s minimum (``input_precision=PREC``: ``"ieee"``, true
    fp32 FMAs, or the opt-in ``"tf32x3"``, three TF32 tensor-core products, near fp32; the
    callers' chunks keep ``K >= 16`` then), else the products summed over ``K`` (a
    matrix-vector product per row), so a batch below 16 computes only the images it has
    instead of padding ``M`` to 16 rows, and an 8-channel tile is not padded to 16 columns.
    Both sum in a tree order of their own, not PyTorch's; the precision applies to the dot."""
    if a.shape[0] >= 16 and w.shape[1] >= 16:
        return tl.dot(a, w, input_precision=PREC)
    else:
        return tl.sum(a[:, :, None] * w[None, :, :], axis=1)


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
def expm1(x):
    """``torch.expm1``: a degree-9 Taylor polynomial for ``|x| < 0.5`` (truncation below
    1e-8 relative), else ``exp(x) - 1`` (exact subtraction there: no cancellation)."""
    p = x * (1.0 / 362880.0) + (1.0 / 40320.0)
    p = p * x + (1.0 / 5040.0)
    p = p * x + (1.0 / 720.0)
    p = p * x + (1.0 / 120.0)
    p = p * x + (1.0 / 24.0)
    p = p * x + (1.0 / 6.0)
    p = p * x + 0.5
    p = p * x + 1.0
    return tl.where(tl.abs(x) < 0.5, x * p, tl.exp(x) - 1.0)


@triton.jit
def logsig(z):
    """``pixelaux.distributions._logsig``: ``log(sigmoid(z)) = min(z, 0) - log1p(exp(-|z|))``
    (NaN propagates, as ``torch.clamp``)."""
    return tl.minimum(z, 0.0, propagate_nan=tl.PropagateNan.ALL) - log1p(tl.exp(-tl.abs(z)))


@triton.jit
def log1mexp(d):
    """``pixelaux.distributions._log1mexp``: ``log(1 - exp(d))`` for ``d <= 0``."""
    return tl.where(d > -0.6931471805599453, tl.log(-expm1(d)), log1p(-tl.exp(d)))


@triton.jit
def floor_div(a, d):
    """``floor(a / d)`` of integers, ``d > 0`` (Triton's ``//`` truncates toward zero)."""
    q = a // d
    return tl.where(q * d > a, q - 1, q)


@triton.jit
def ceil_div(a, d):
    """``ceil(a / d)`` of integers, ``d > 0``."""
    q = a // d
    return tl.where(q * d < a, q + 1, q)


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
