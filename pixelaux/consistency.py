"""Consistent decoding: each channel of each pixel drawn from the model's distribution
truncated to the values that can still produce the given auxiliary variable
(docs/design.md section 1.8; issue 20).

An auxiliary variable ``X_hat = f(X)`` (the gray view, a pooled level) is a function of
the image. Both built-in transforms are an integer sum rounded by a divisor:

* gray view (RGB): ``S = 299 R + 587 G + 114 B`` over the channels of one pixel,
  ``Y = round(S / 1000)``, ``gray = floor(Y / 2**(bits - gray_bits))``;
* average pool by ``f``: ``S = sum of the f x f block`` per channel, ``round(S / f**2)``;

rounding half to even. Given ``X_hat``, ``S`` must lie in a window ``[S_lo, S_hi]``
(:func:`round_window`). ``S`` is a sum of the variables of one *group* (the channels of a
pixel / the pixels of a block, in sampling order, weights ``w``); the values one variable
can take so that the rest of its group can still reach the window form an interval, so
the truncated distribution is the model's renormalised over ``[lo, hi]``.

**The window of a stage**, what every engine receives (:class:`Window`): four integer maps
``(B, C, H, W)`` -- ``lo_base``, ``hi_base``, ``box_lo``, ``box_hi`` -- and three constants
-- ``coef`` / ``div`` (one integer per channel) and ``block``. Channel ``c`` of pixel
``(i, j)`` of image ``b`` may take the values ``[lo, hi]``::

    K  = sum_{c' < c} coef[c'] x[b, c', i, j]                       # earlier channels
       + sum_{(i', j') earlier in (i, j)'s block x block cell} x[b, c, i', j']   # block > 1
    lo = max(box_lo, ceil((lo_base - K) / div[c]))
    hi = min(box_hi, floor((hi_base - K) / div[c]))
    lo = min(lo, box_hi);  hi = max(hi, lo)               # never empty (box_lo <= lo <= hi <= box_hi)

where "earlier" is raster order and ``x`` holds what is already sampled or known.
``lo_base`` / ``hi_base`` fold in the window and the boxes of the group's *later*
variables (``S_lo - sum_later w box_hi``, ``S_hi - sum_later w box_lo``), so they are
fixed before sampling starts. ``box_lo`` / ``box_hi`` bound each value on its own: ``[0,
top]``, or the range that known pixels leave (completion: the pooled value of a block of
which some pixels are known can only be what those pixels allow).

The arithmetic of the truncated distributions is in ``pixelaux.distributions``; this
module builds windows and evaluates the rule, in whole images (scoring) or at one pixel
(the PyTorch sampling engines).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .transforms import LUMA_WEIGHTS, AvgPool, GrayView

#: the "no bound" base of a window (no overflow in int32 with any K of 16-bit images)
FREE = 1 << 30


def round_window(q: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[S_lo, S_hi]``: the integers ``S >= 0`` with ``div_round_half_even(S, n) == q``
    (``S_lo`` may be below 0 for ``q = 0``, which bounds nothing)."""
    adj = ((q % 2 == 1) & (n % 2 == 0)).long()
    return n * q - n // 2 + adj, n * q + n // 2 - adj


def ceil_div(a: torch.Tensor, d) -> torch.Tensor:
    return -torch.div(-a, d, rounding_mode="floor")


@dataclass
class Window:
    """What a stage's values must respect (module notes): four ``(B, C, H, W)`` int64
    maps and the per-channel ``coef``, ``div`` and the ``block`` size."""
    lo_base: torch.Tensor
    hi_base: torch.Tensor
    box_lo: torch.Tensor
    box_hi: torch.Tensor
    coef: tuple
    div: tuple
    block: int = 1

    def to(self, device) -> "Window":
        return Window(*(t.to(device) for t in (self.lo_base, self.hi_base, self.box_lo, self.box_hi)),
                      self.coef, self.div, self.block)

    def __getitem__(self, images) -> "Window":
        """The window of a slice of the batch (``window[k:k + 1]``)."""
        return Window(*(t[images] for t in (self.lo_base, self.hi_base, self.box_lo, self.box_hi)),
                      self.coef, self.div, self.block)

    def packed(self, dtype=torch.int32) -> torch.Tensor:
        """``(4, B, C, H, W)``: lo_base, hi_base, box_lo, box_hi (what the compiled engines read);
        a ``ValueError`` if a value does not fit ``dtype`` (never for images of up to 16 bits)."""
        maps = (self.lo_base, self.hi_base, self.box_lo, self.box_hi)
        if not dtype.is_floating_point and self.lo_base.numel():
            info = torch.iinfo(dtype)
            lo, hi = min(int(m.min()) for m in maps), max(int(m.max()) for m in maps)
            if lo < info.min or hi > info.max:
                raise ValueError(f"the window's bounds [{lo}, {hi}] do not fit {dtype}")
        out = torch.empty((4, *self.lo_base.shape), dtype=dtype, device=self.lo_base.device)
        for k, m in enumerate(maps):       # straight into dtype (no int64 stack of the four)
            out[k].copy_(m)
        return out

    def _clip(self, k, c, lo_base, hi_base, box_lo, box_hi):
        lo = torch.maximum(box_lo, ceil_div(lo_base - k, self.div[c]))
        hi = torch.minimum(box_hi, torch.div(hi_base - k, self.div[c], rounding_mode="floor"))
        lo = torch.minimum(lo, box_hi)
        return lo, torch.maximum(hi, lo)

    def ranges(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)`` ``(B, C, H, W)`` of every value of the complete images ``x``, as the
        sampler saw them (scoring and teacher forcing)."""
        x = x.long()
        b, c, h, w = x.shape
        coef = torch.tensor(self.coef, dtype=torch.long, device=x.device).view(1, c, 1, 1)
        k = torch.cumsum(coef * x, dim=1) - coef * x                      # earlier channels
        f = self.block
        if f > 1:
            cells = x.reshape(b, c, h // f, f, w // f, f).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h // f, w // f, f * f)
            earlier = torch.cumsum(cells, dim=-1) - cells
            k = k + earlier.reshape(b, c, h // f, w // f, f, f).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)
        los, his = [], []
        for ch in range(c):
            lo, hi = self._clip(k[:, ch], ch, self.lo_base[:, ch], self.hi_base[:, ch], self.box_lo[:, ch],
                                self.box_hi[:, ch])
            los.append(lo)
            his.append(hi)
        return torch.stack(los, 1), torch.stack(his, 1)

    def bounds_at(self, x: torch.Tensor, i: int, j: int):
        """The bounds callable of ``Distribution.sample_flat`` for pixel ``(i, j)`` of every
        image of ``x`` (the earlier pixels already in ``x``): ``bounds(c, chosen)`` ->
        ``(lo, hi)`` ``(B,)`` given the pixel's channels ``chosen[:, :c]``."""
        f = self.block
        blk = torch.zeros(x.shape[0], x.shape[1], dtype=torch.long, device=x.device)
        if f > 1:
            i0, j0 = i - i % f, j - j % f
            for ii in range(i0, i + 1):
                for jj in range(j0, j0 + f if ii < i else j):
                    blk = blk + x[:, :, ii, jj].long()
        at = [t[:, :, i, j] for t in (self.lo_base, self.hi_base, self.box_lo, self.box_hi)]

        def bounds(c, chosen):
            k = blk[:, c]
            for cp in range(c):
                if self.coef[cp]:
                    k = k + self.coef[cp] * chosen[:, cp].long()
            return self._clip(k, c, *(t[:, c] for t in at))
        return bounds


def _suffix(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Exclusive suffix sums along ``dim``: ``out[k] = sum_{k' > k} t[k']``."""
    return torch.flip(torch.cumsum(torch.flip(t, (dim,)), dim), (dim,)) - t


def full_boxes(shape, bits: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.zeros(shape, dtype=torch.long, device=device),
            torch.full(shape, 2 ** bits - 1, dtype=torch.long, device=device))


def _free_boxes(shape, bits: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`full_boxes` as broadcast views (no pixel known: nothing to store per pixel)."""
    zero = torch.zeros((), dtype=torch.long, device=device)
    return zero.expand(shape), (zero + (2 ** bits - 1)).expand(shape)


def gray_window(gray: torch.Tensor, channels: int, bits: int, gray_bits: int, boxes=None) -> Window:
    """The window of the colour images whose gray view (``to_gray(x, bits, gray_bits)``)
    is ``gray`` ``(B, 1, H, W)``; ``boxes``: ``(box_lo, box_hi)`` ``(B, C, H, W)`` or None."""
    b, _, h, w = gray.shape
    box_lo, box_hi = boxes if boxes is not None else _free_boxes((b, channels, h, w), bits, gray.device)
    d = 2 ** (bits - gray_bits)
    g = gray.long()[:, 0]
    if channels == 1:
        weights, s_lo, s_hi = (1,), g * d, g * d + d - 1
    else:
        weights = LUMA_WEIGHTS
        s_lo, s_hi = round_window(g * d, 1000)[0], round_window(g * d + d - 1, 1000)[1]
    wt = torch.tensor(weights, dtype=torch.long, device=gray.device).view(1, channels, 1, 1)
    if boxes is None:          # the same sums, per channel only
        later_hi, later_lo = _suffix(wt * (2 ** bits - 1), 1), torch.zeros_like(wt)
    else:
        later_hi, later_lo = _suffix(wt * box_hi, 1), _suffix(wt * box_lo, 1)
    return Window(s_lo[:, None] - later_hi, s_hi[:, None] - later_lo, box_lo.long(), box_hi.long(),
                  tuple(weights), tuple(weights), 1)


def pool_window(parent: torch.Tensor, factor: int, bits: int, boxes=None) -> Window:
    """The window of the images whose ``avg_pool_round(x, factor)`` is ``parent``
    ``(B, C, h, w)``; ``boxes`` as in :func:`gray_window`."""
    b, c, h, w = parent.shape
    f = factor
    shape = (b, c, h * f, w * f)
    s_lo, s_hi = round_window(parent.long(), f * f)
    up = lambda t: t[:, :, :, None, :, None].expand(b, c, h, f, w, f).reshape(shape)  # noqa: E731
    if boxes is None:
        # Nothing known: a pixel's later pixels in its block (raster order) may each take
        # any value, so the sum of their boxes is top times their count, the same in
        # every block.
        box_lo, box_hi = _free_boxes(shape, bits, parent.device)
        k = torch.arange(f * f, device=parent.device).view(f, f)
        later_hi = ((f * f - 1 - k) * (2 ** bits - 1)).repeat(h, w)
        return Window(up(s_lo) - later_hi, up(s_hi), box_lo, box_hi, (0,) * c, (1,) * c, f)
    box_lo, box_hi = boxes

    def later(box):            # per pixel: the sum of the boxes of its block's later pixels
        cells = box.long().reshape(b, c, h, f, w, f).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w, f * f)
        s = _suffix(cells, -1)
        return s.reshape(b, c, h, w, f, f).permute(0, 1, 2, 4, 3, 5).reshape(shape)

    return Window(up(s_lo) - later(box_hi), up(s_hi) - later(box_lo), box_lo.long(), box_hi.long(),
                  (0,) * c, (1,) * c, f)


def box_window(box_lo: torch.Tensor, box_hi: torch.Tensor) -> Window:
    """Only boxes (a stage with no auxiliary variable of its own, e.g. the seed level of a
    pyramid some of whose blocks are partly known)."""
    c = box_lo.shape[1]
    return Window(torch.full_like(box_lo, -FREE), torch.full_like(box_lo, FREE), box_lo.long(), box_hi.long(),
                  (0,) * c, (1,) * c, 1)


def supports(transform) -> bool:
    """Whether consistent decoding knows the transform's rounding (gray view, average pool)."""
    return isinstance(transform, (GrayView, AvgPool))


def transform_window(transform, aux: torch.Tensor, boxes=None) -> Window:
    """The window of the images ``x`` with ``transform(x) == aux``."""
    if isinstance(transform, GrayView):
        return gray_window(aux, transform.in_channels, transform.in_bits, transform.gray_bits, boxes)
    if isinstance(transform, AvgPool):
        return pool_window(aux, transform.factor, transform.in_bits, boxes)
    raise ValueError(f"consistent decoding needs a gray-view or average-pool transform, got {transform.describe()}")
