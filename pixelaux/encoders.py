"""Non-causal conditioning networks (docs/design.md section 1.3, "Auxiliary variables").

They turn an auxiliary integer image (the gray view, or the pyramid level below) into
a float map ``cond`` that a conditional ``GatedPixelCNN`` adds inside every gated block.
Any input pixel may influence any output position: these nets see the whole auxiliary
image, which is known before the pixels of the target image are sampled, so the map is
computed once per image, not once per pixel.

* ``ResNetEncoder``: same resolution in and out (grayscale model: gray -> colour cond).
* ``UNetEncoder``: from the level below at ``(h/2, w/2)`` to a map at ``(h, w)``
  (pyramid model: level ``k-1`` -> cond of level ``k``).

Inputs are integer pixels ``(B, C, H, W)`` in ``[0, 2**in_bits)``, scaled to ``[-1, 1]``.
``weight_norm=True`` weight-norms every conv (``pixelaux.weight_norm``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_images, check_int, check_size
from .weight_norm import apply as apply_weight_norm
from .weight_norm import check_weight_norm


def scale_pixels(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer pixels in ``[0, 2**bits)`` -> float32 in ``[-1, 1]``."""
    return x.float() * (2.0 / (2 ** bits - 1)) - 1.0


class ResidualBlock(nn.Module):
    """``x + conv3x3(elu(conv3x3(elu(x))))``, zero padding, same resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.elu(self.conv1(F.elu(x))))


class ResNetEncoder(nn.Module):
    """Integer image ``(B, in_channels, H, W)`` -> float map ``(B, out_channels, H, W)``.

    ``scale -> conv3x3 -> blocks x ResidualBlock -> elu -> conv1x1``.
    """

    def __init__(self, in_channels: int, in_bits: int, hidden: int, blocks: int, out_channels: int,
                 weight_norm: bool = False):
        super().__init__()
        self.weight_norm = check_weight_norm(weight_norm)
        self.in_channels = check_int(in_channels, "in_channels", min_value=1)
        self.in_bits = check_int(in_bits, "in_bits", min_value=1, max_value=16)
        hidden = check_int(hidden, "hidden", min_value=1)
        blocks = check_int(blocks, "blocks", min_value=0)
        self.out_channels = check_int(out_channels, "out_channels", min_value=1)
        self.stem = nn.Conv2d(self.in_channels, hidden, 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlock(hidden) for _ in range(blocks)))
        self.out = nn.Conv2d(hidden, self.out_channels, 1)
        if weight_norm:
            apply_weight_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_images(x, "x", channels=self.in_channels, bits=self.in_bits)
        h = self.blocks(self.stem(scale_pixels(x, self.in_bits)))
        return self.out(F.elu(h))


class UNetEncoder(nn.Module):
    """Lower level ``(B, in_channels, h', w')`` -> float map ``(B, out_channels, H, W)``.

    ``(H, W)`` is ``size``, by default ``(2h', 2w')``. One down/up path with a skip:

    1. nearest-upsample the scaled input to ``(H, W)``, conv3x3, a residual block -> ``e``;
    2. 2x2 average pool (``ceil_mode``, so odd ``H`` or ``W`` keep their last row /
       column), a residual block, nearest-upsample back to exactly ``(H, W)`` -> ``d``;
    3. a residual block over ``e + d``, elu, conv1x1.
    """

    def __init__(self, in_channels: int, in_bits: int, hidden: int, out_channels: int,
                 weight_norm: bool = False):
        super().__init__()
        self.weight_norm = check_weight_norm(weight_norm)
        self.in_channels = check_int(in_channels, "in_channels", min_value=1)
        self.in_bits = check_int(in_bits, "in_bits", min_value=1, max_value=16)
        hidden = check_int(hidden, "hidden", min_value=1)
        self.out_channels = check_int(out_channels, "out_channels", min_value=1)
        self.stem = nn.Conv2d(self.in_channels, hidden, 3, padding=1)
        self.enc = ResidualBlock(hidden)
        self.mid = ResidualBlock(hidden)
        self.dec = ResidualBlock(hidden)
        self.out = nn.Conv2d(hidden, self.out_channels, 1)
        if weight_norm:
            apply_weight_norm(self)

    def forward(self, lower: torch.Tensor, size=None) -> torch.Tensor:
        lower = check_images(lower, "lower", channels=self.in_channels, bits=self.in_bits)
        if size is None:
            size = (2 * lower.shape[2], 2 * lower.shape[3])
        size = check_size(size, "size")
        h = F.interpolate(scale_pixels(lower, self.in_bits), size=size, mode="nearest")
        e = self.enc(self.stem(h))
        d = self.mid(F.avg_pool2d(e, 2, ceil_mode=True))
        d = F.interpolate(d, size=size, mode="nearest")
        return self.out(F.elu(self.dec(e + d)))
