"""Deterministic transforms ``f`` of an auxiliary-variable model (docs/design.md section 1).

An auxiliary-variable model scores and samples ``X`` through ``X_hat = f(X)``; ``f``
must be deterministic, so that ``log p(X) >= log p(X_hat) + log p(X | X_hat)`` holds
and the parts add up. The contract every transform keeps:

* input: integer images ``(B, in_channels, H, W)`` in ``[0, 2**in_bits)``;
* output: integer images ``(B, channels, H / factor, W / factor)`` in ``[0, 2**bits)``,
  ``factor`` a fixed integer (1: the same size);
* locality: output pixel ``(p, q)`` is a function of the input block
  ``[factor p, factor (p+1)) x [factor q, factor (q+1))``; this is what tells which
  pixels of ``X_hat`` are known when some pixels of ``X`` are (completion).

Built in: :class:`GrayView` (the 4-bit gray view, BT.601 luma), :class:`AvgPool`
(average pool by ``factor``, rounded back to the integer grid). A user's function is
wrapped in :class:`CallableTransform`, which checks on probe images that it is
deterministic and scales the size consistently.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_images, check_int

# BT.601 luma weights in thousandths: Y = (299 R + 587 G + 114 B) / 1000.
LUMA_WEIGHTS = (299, 587, 114)


def div_round_half_even(s: torch.Tensor, n: int) -> torch.Tensor:
    """``round(s / n)`` for integer tensors, exact, ties to even (as ``torch.round``)."""
    q, r = torch.div(s, n, rounding_mode="floor"), torch.remainder(s, n)
    return q + ((2 * r > n) | ((2 * r == n) & (q % 2 == 1))).long()


def to_gray(x: torch.Tensor, bits: int = 8, gray_bits: int = 4) -> torch.Tensor:
    """Low-bit gray view of integer images.

    ``x``: integer ``(B, 3, H, W)`` in ``[0, 2**bits)`` (RGB), or ``(B, 1, H, W)`` (already
    gray: ``Y = x``). Returns ``(B, 1, H, W)`` int64 in ``[0, 2**gray_bits)``:

        Y    = round((299 R + 587 G + 114 B) / 1000)     # BT.601 luma, in [0, 2**bits)
        gray = floor(Y / 2**(bits - gray_bits))

    The rounding is exact integer arithmetic, round half to even (as ``torch.round``),
    so the result is the same on every device and dtype; e.g. ``(0, 0, 250)`` has
    luma 28.5 -> 28.
    """
    bits = check_int(bits, "bits", min_value=1, max_value=16)
    gray_bits = check_int(gray_bits, "gray_bits", min_value=1, max_value=bits)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must have shape (B, 3, H, W) (RGB) or (B, 1, H, W), got {shape}")
    x = check_images(x, "x", channels=x.shape[1], bits=bits)
    if x.shape[1] == 1:
        y = x
    else:
        s = LUMA_WEIGHTS[0] * x[:, 0:1] + LUMA_WEIGHTS[1] * x[:, 1:2] + LUMA_WEIGHTS[2] * x[:, 2:3]
        y = div_round_half_even(s, 1000)
    return torch.div(y, 2 ** (bits - gray_bits), rounding_mode="floor")


def avg_pool_round(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``avg_pool(x, factor)`` rounded half to even, exact (block sums / ``factor**2``);
    ``x`` integer ``(B, C, H, W)`` with ``H``, ``W`` divisible by ``factor``."""
    b, c, h, w = x.shape
    if factor == 1:
        return x.long()
    s = x.long().reshape(b, c, h // factor, factor, w // factor, factor).sum(dim=(3, 5))
    return div_round_half_even(s, factor * factor)


def pool_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """A known-pixel mask ``(B, H, W)`` bool -> ``(B, H/factor, W/factor)``: a pixel is
    known where its whole block is."""
    if factor == 1:
        return mask
    return F.avg_pool2d(mask.float().unsqueeze(1), factor)[:, 0] == 1.0


class Transform:
    """Base of the transforms: ``f(x)``, the output's ``channels``/``bits``/``factor``
    for a given input, and how known pixels map through ``f``."""

    #: the name stored in a checkpoint's config (``None``: not storable)
    name: str | None = None

    def bind(self, in_channels: int, in_bits: int) -> "Transform":
        """Fix the input (channels, bits): the model calls this once; returns ``self``."""
        self.in_channels, self.in_bits = in_channels, in_bits
        return self

    # set by bind() / the subclass
    in_channels: int
    in_bits: int
    channels: int
    bits: int
    factor: int = 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def out_size(self, size, name: str = "size") -> tuple[int, int]:
        """The output size for an input ``(H, W)``; ``ValueError`` unless divisible by ``factor``."""
        h, w = size
        f = self.factor
        if h % f or w % f:
            raise ValueError(f"{name} {(h, w)} must be divisible by {f} (the {self.describe()} transform "
                             f"makes images {f}x smaller)")
        return h // f, w // f

    def known(self, values: torch.Tensor, mask: torch.Tensor):
        """Known pixels ``(values (B, C, H, W) with unknowns 0, mask (B, H, W))`` -> the
        same for ``f``'s output: values ``f(values)``, a pixel known where its block is."""
        return self(values), pool_mask(mask, self.factor)

    def spec(self):
        """JSON description for a checkpoint's config."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name or type(self).__name__


class GrayView(Transform):
    """The low-bit gray view ``to_gray(x, in_bits, gray_bits)``: 1 channel, ``gray_bits``
    bits, same size (RGB input through BT.601 luma, 1-channel input is its own luma)."""

    name = "gray"

    def __init__(self, gray_bits: int = 4):
        self.gray_bits = check_int(gray_bits, "gray_bits", min_value=1, max_value=16)

    def bind(self, in_channels, in_bits):
        if in_channels not in (1, 3):
            raise ValueError(f"channels must be 3 (RGB) or 1 for the gray view, got {in_channels}")
        if self.gray_bits > in_bits:
            raise ValueError(f"gray_bits must be <= bits = {in_bits}, got {self.gray_bits}")
        self.channels, self.bits = 1, self.gray_bits
        return super().bind(in_channels, in_bits)

    def __call__(self, x):
        return to_gray(x, self.in_bits, self.gray_bits)

    def spec(self):
        return {"name": "gray", "gray_bits": self.gray_bits}


class AvgPool(Transform):
    """Average pool by ``factor`` (default 2), rounded half to even back to the integer
    grid: same channels and bits, ``factor`` times smaller."""

    name = "avgpool"

    def __init__(self, factor: int = 2):
        self.factor = check_int(factor, "factor", min_value=1)

    def bind(self, in_channels, in_bits):
        self.channels, self.bits = in_channels, in_bits
        return super().bind(in_channels, in_bits)

    def __call__(self, x):
        x = check_images(x, "x", channels=self.in_channels, bits=self.in_bits)
        self.out_size(tuple(x.shape[2:]), "x spatial size")
        return avg_pool_round(x, self.factor)

    def known(self, values, mask):
        return avg_pool_round(values, self.factor), pool_mask(mask, self.factor)

    def spec(self):
        return {"name": "avgpool", "factor": self.factor}


class CallableTransform(Transform):
    """A user's function ``fn(x) -> x_hat`` under the transform contract (module notes).

    ``bind`` probes it on two random batches (at ``probe_size`` and twice that size):
    it must return integer tensors ``(B, C', H/r, W/r)`` for one integer ``r``, the same
    output twice for the same input (deterministic), and values in ``[0, 2**bits)``
    for the ``bits`` the prior models (``expected_bits``). ``ValueError`` naming
    ``transform`` otherwise. Not storable in a checkpoint (its config holds ``fn``)."""

    name = None

    def __init__(self, fn, probe_size=(8, 8)):
        if not callable(fn):
            raise TypeError(f"transform must be 'gray', 'avgpool', a pixelaux Transform or a callable, "
                            f"got {type(fn).__name__} {fn!r}")
        self.fn = fn
        self.probe_size = tuple(probe_size)

    def describe(self):
        return getattr(self.fn, "__name__", type(self.fn).__name__)

    def _probe_once(self, size, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, 2 ** self.in_bits, (2, self.in_channels, *size), generator=g)
        x[0, :, 0, 0] = 0                                   # the extremes of the range
        x[1, :, 0, 0] = 2 ** self.in_bits - 1
        with torch.no_grad():
            a, b = self.fn(x.clone()), self.fn(x.clone())
        what = f"transform {self.describe()!r}"
        for out in (a, b):
            if not isinstance(out, torch.Tensor) or out.dtype.is_floating_point or out.dtype.is_complex \
                    or out.dtype == torch.bool:
                got = out.dtype if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"{what} must return an integer torch.Tensor of pixels, got {got}")
            if out.dim() != 4 or out.shape[0] != 2:
                raise ValueError(f"{what} must return (B, C, h, w) for a batch (B, C, H, W), got shape "
                                 f"{tuple(out.shape)} for input {tuple(x.shape)}")
        if a.shape != b.shape or not torch.equal(a, b):
            diff = "shapes differ" if a.shape != b.shape else f"{int((a != b).sum())} of {a.numel()} values differ"
            raise ValueError(f"{what} must be deterministic: two calls on the same probe images gave different "
                             f"outputs ({diff})")
        h, w = size
        oh, ow = a.shape[2], a.shape[3]
        if oh == 0 or ow == 0 or h % oh or w % ow or h // oh != w // ow:
            raise ValueError(f"{what} must shrink H and W by the same integer factor, got {tuple(a.shape[2:])} "
                             f"from {(h, w)}")
        return a, h // oh

    def bind(self, in_channels, in_bits, expected_bits=None):
        super().bind(in_channels, in_bits)
        size = self.probe_size
        a, r = self._probe_once(size, 0)
        big = (2 * size[0], 2 * size[1])
        b, r2 = self._probe_once(big, 1)
        if r2 != r or b.shape[1] != a.shape[1]:
            raise ValueError(f"transform {self.describe()!r} changes the image size inconsistently: "
                             f"{tuple(size)} -> {tuple(a.shape[1:])} (factor {r}) but {big} -> "
                             f"{tuple(b.shape[1:])} (factor {r2}); expected one factor for every size")
        self.factor, self.channels = r, int(a.shape[1])
        self.bits = expected_bits
        if expected_bits is not None:
            lo, hi = int(min(a.min(), b.min())), int(max(a.max(), b.max()))
            if lo < 0 or hi >= 2 ** expected_bits:
                raise ValueError(f"prior: the transform {self.describe()!r} gives values in [{lo}, {hi}], but the "
                                 f"prior models {expected_bits}-bit pixels [0, {2 ** expected_bits - 1}]")
        return self

    def __call__(self, x):
        x = check_images(x, "x", channels=self.in_channels, bits=self.in_bits)
        self.out_size(tuple(x.shape[2:]), "x spatial size")
        out = self.fn(x)
        name = f"the output of transform {self.describe()!r}"
        return check_images(out, name, channels=self.channels, bits=self.bits,
                            size=(x.shape[2] // self.factor, x.shape[3] // self.factor))

    def spec(self):
        return self.fn               # a callable: the config is not JSON (checkpoint.save refuses it)


TRANSFORMS = {"gray": GrayView, "avgpool": AvgPool}


def make_transform(spec) -> Transform:
    """``"gray"`` / ``"avgpool"`` / ``{"name": ..., **kwargs}`` / a ``Transform`` / a callable
    -> a (not yet bound) ``Transform``."""
    if isinstance(spec, Transform):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("name", None)
        if name not in TRANSFORMS:
            raise ValueError(f"transform must name one of {sorted(TRANSFORMS)}, got {name!r}")
        try:
            return TRANSFORMS[name](**spec)
        except TypeError as e:
            raise ValueError(f"transform {name!r}: bad arguments {spec}: {e}") from None
    return CallableTransform(spec)
