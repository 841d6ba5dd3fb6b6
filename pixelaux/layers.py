"""Causal building blocks of the Gated PixelCNN stack (docs/design.md section 1).

Two kinds of shifted convolution keep the network causal in raster order:

* ``DownShiftedConv2d`` with kernel ``(kh, kw)`` (``kw`` odd): the output at
  ``(i, j)`` reads input rows ``i-kh+1 .. i`` and columns ``j-(kw-1)/2 .. j+(kw-1)/2``.
* ``DownRightShiftedConv2d`` with kernel ``(kh, kw)``: the output at ``(i, j)``
  reads rows ``i-kh+1 .. i`` and columns ``j-kw+1 .. j``.

``down_shift`` / ``right_shift`` move a map one row down / one column right, so a
layer that reads "up to row i" afterwards reads "up to row i-1".
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """ELU of ``x`` and of ``-x``, concatenated on the channel axis (doubles channels)."""
    return F.elu(torch.cat([x, -x], dim=1))


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Shift a ``(B, C, H, W)`` map one row down, filling row 0 with zeros."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Shift a ``(B, C, H, W)`` map one column right, filling column 0 with zeros."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class DownShiftedConv2d(nn.Conv2d):
    """Conv whose output at (i, j) sees rows <= i and a centred window of columns.

    With ``stride=2`` (PixelCNN++'s down-sampling) the output at ``(p, q)`` reads
    input rows ``2p-kh+1 .. 2p`` and columns ``2q-(kw-1)/2 .. 2q+(kw-1)/2``.
    """

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], stride: int = 1):
        kh, kw = kernel
        if kw % 2 != 1:
            raise ValueError(f"kernel width must be odd for a down-shifted conv, got {kw}")
        super().__init__(cin, cout, (kh, kw), stride=stride)
        self.pad = ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


class DownRightShiftedConv2d(nn.Conv2d):
    """Conv whose output at (i, j) sees rows <= i and columns <= j.

    With ``stride=2`` the output at ``(p, q)`` reads input rows ``2p-kh+1 .. 2p`` and
    columns ``2q-kw+1 .. 2q``.
    """

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], stride: int = 1):
        kh, kw = kernel
        super().__init__(cin, cout, (kh, kw), stride=stride)
        self.pad = (kw - 1, 0, kh - 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


class DownShiftedConvTranspose2d(nn.ConvTranspose2d):
    """PixelCNN++'s up-sampling of the vertical stream: a stride-2 transposed conv with
    kernel ``(2, 3)``, cropped so that the output at ``(r, c)`` reads only input row
    ``r // 2`` (columns ``(c-1) // 2 .. (c+1) // 2``): the output at row ``r`` depends
    on what the input row ``r // 2`` depends on, no later row.

    ``weight`` is ``(cin, cout, 2, 3)``; ``out[r, c] = bias + sum_q W[:, :, r % 2, c + 1 - 2q]^T in[r // 2, q]``
    over the ``q`` with ``0 <= c + 1 - 2q <= 2``.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, (2, 3), stride=2, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y[:, :, :2 * x.shape[2], 1:1 + 2 * x.shape[3]]


class DownRightShiftedConvTranspose2d(nn.ConvTranspose2d):
    """PixelCNN++'s up-sampling of the horizontal stream: a stride-2 transposed conv with
    kernel ``(2, 2)``, cropped so that ``out[r, c] = bias + W[:, :, r % 2, c % 2]^T in[r // 2, c // 2]``
    (each input position feeds the 2x2 block it covers, nothing before it)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, (2, 2), stride=2, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y[:, :, :2 * x.shape[2], :2 * x.shape[3]]


class GatedResidualBlock(nn.Module):
    """PixelCNN++ gated residual block.

    ``c1 = conv1(act(x)) + nin(act(a)) + cond_c1``, ``c2 = conv2(dropout(act(c1))) + cond_c2``,
    output ``x + c2[:C] * sigmoid(c2[C:])``. ``act`` is concat-ELU. ``a`` is the
    skip input (the ``u`` stream for the horizontal stack, absent for the vertical
    one); the conditioning map enters through ``cond_c1`` (1x1 over ``act(cond)``)
    and ``cond_c2`` (1x1 over ``cond``, a per-position gate bias).
    """

    def __init__(self, channels: int, conv_cls, kernel: tuple[int, int], skip_channels: int = 0,
                 cond_channels: int = 0, dropout: float = 0.0):
        super().__init__()
        c = channels
        self.conv1 = conv_cls(2 * c, c, kernel)
        self.nin_skip = nn.Conv2d(2 * skip_channels, c, 1) if skip_channels else None
        self.conv2 = conv_cls(2 * c, 2 * c, kernel)
        self.cond_c1 = nn.Conv2d(2 * cond_channels, c, 1, bias=False) if cond_channels else None
        self.cond_c2 = nn.Conv2d(cond_channels, 2 * c, 1, bias=False) if cond_channels else None
        # element-wise, as the reference PixelCNN++ code (tf.nn.dropout) in every network
        self.dropout = nn.Dropout(dropout)

    def cond_terms(self, cond: torch.Tensor | None):
        """The two per-position conditioning terms; computed once per image when sampling."""
        if self.cond_c1 is None:
            return None, None
        return self.cond_c1(concat_elu(cond)), self.cond_c2(cond)

    def forward(self, x, a=None, cond=None):
        h1, h2 = self.cond_terms(cond)
        c1 = self.conv1(concat_elu(x))
        if self.nin_skip is not None:
            c1 = c1 + self.nin_skip(concat_elu(a))
        if h1 is not None:
            c1 = c1 + h1
        c2 = self.conv2(self.dropout(concat_elu(c1)))
        if h2 is not None:
            c2 = c2 + h2
        g_a, g_b = c2.chunk(2, dim=1)
        return x + g_a * torch.sigmoid(g_b)
