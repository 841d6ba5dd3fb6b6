"""Non-causal conditioning networks (docs/design.md section 1.3, "Auxiliary variables").

They turn an auxiliary integer image (the gray view, or the pyramid level below) into
a float map ``cond`` that a conditional ``GatedPixelCNN`` adds inside every gated block.
Any input pixel may influence any output position: these nets see the whole auxiliary
image, which is known before the pixels of the target image are sampled, so the map is
computed once per image, not once per pixel.

* ``ResNetEncoder``: same resolution in and out (grayscale model: gray -> colour cond).
* ``UNetEncoder``: from the level below at ``(h/2, w/2)`` to a map at ``(h, w)``
  (pyramid model: level ``k-1`` -> cond of level ``k``).
* ``GatedEncoder`` (grayscale, ``encoder="gated"``): the deep encoder of the authors'
  colorization model: gated, dilated residual blocks (PixelCNN++'s gated block, non-causal
  ``3x3`` convs with dilations ``1, 2, 4, 8, 1, ...``), and for a colour network over
  ``scales`` resolutions its own features at every scale (a stride-2 conv and a gated
  block per scale), not an average pool of one map.
* ``GatedUNetEncoder`` (pyramid, ``encoder="gated-unet"``): the authors' pyramid
  encoder: a U-net of gated residual blocks over ``depth`` resolutions, with its own
  features at each of the ``scales`` finest ones.

An encoder with ``out_scales = S > 1`` returns a tuple of ``S`` maps, map ``s`` at
``(H / 2**s, W / 2**s)``: a ``PixelCNNpp`` over ``S`` scales reads map ``s`` in every gated
block of scale ``s`` (``PixelCNNpp.scale_conds``); with ``out_scales = 1`` it returns one
map ``(B, out_channels, H, W)``, which a ``PixelCNNpp`` average-pools per scale.

Inputs are integer pixels ``(B, C, H, W)`` in ``[0, 2**in_bits)``, scaled to ``[-1, 1]``.
``weight_norm=True`` weight-norms every conv (``pixelaux.weight_norm``).
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_images, check_int, check_size
from .layers import GatedResidualBlock
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


# ----------------------------------------------------------------------------- deep gated encoders

#: dilation of gated block ``i`` of a ``GatedEncoder``: ``DILATIONS[i % 4]`` (receptive
#: field of one cycle of four 3x3 blocks: 2 * (1 + 2 + 4 + 8) * 2 + 1 = 61 pixels)
DILATIONS = (1, 2, 4, 8)


class SameConv2d(nn.Conv2d):
    """A non-causal ``k x k`` conv that keeps the resolution (zero padding), optionally dilated."""

    def __init__(self, cin: int, cout: int, kernel, dilation: int = 1):
        k = kernel[0] if isinstance(kernel, (tuple, list)) else kernel
        super().__init__(cin, cout, k, padding=dilation * (k - 1) // 2, dilation=dilation)


def gated_block(hidden: int, dilation: int = 1, skip: int = 0) -> GatedResidualBlock:
    """PixelCNN++'s gated residual block with non-causal ``3x3`` convs (``skip``: the width
    of its second input ``a``, 0 for none)."""
    return GatedResidualBlock(hidden, functools.partial(SameConv2d, dilation=dilation), (3, 3), skip)


def _down(hidden: int) -> nn.Conv2d:
    """A stride-2 ``3x3`` conv: ``(H, W)`` -> ``(ceil(H/2), ceil(W/2))``."""
    return nn.Conv2d(hidden, hidden, 3, stride=2, padding=1)


def _set_sizes(enc, in_channels, in_bits, hidden, blocks, out_channels, out_scales, weight_norm, min_blocks):
    """The checked sizes of a deep encoder, as its attributes (what ``encoder_spec`` stores)."""
    enc.weight_norm = check_weight_norm(weight_norm)
    enc.in_channels = check_int(in_channels, "in_channels", min_value=1)
    enc.in_bits = check_int(in_bits, "in_bits", min_value=1, max_value=16)
    enc.hidden = check_int(hidden, "hidden", min_value=1)
    enc.num_blocks = check_int(blocks, "blocks", min_value=min_blocks)
    enc.out_channels = check_int(out_channels, "out_channels", min_value=1)
    enc.out_scales = check_int(out_scales, "out_scales", min_value=1, max_value=8)


def _maps(outs: list[torch.Tensor]):
    return outs[0] if len(outs) == 1 else tuple(outs)


class GatedEncoder(nn.Module):
    """Integer image ``(B, in_channels, H, W)`` -> conditioning maps, the deep gated encoder.

    ``scale -> conv3x3 -> blocks x gated block (dilation DILATIONS[i % 4])`` gives the
    features ``h_0`` at ``(H, W)``; for ``s = 1 .. out_scales-1``,
    ``h_s = gated block(stride-2 conv3x3(h_{s-1}))``; map ``s`` is ``conv1x1(elu(h_s))``.
    ``out_scales=1``: one map ``(B, out_channels, H, W)``; else a tuple of ``out_scales``
    maps (``H`` and ``W`` divisible by ``2**(out_scales-1)`` for the exact sizes).
    """

    def __init__(self, in_channels: int, in_bits: int, hidden: int, blocks: int, out_channels: int,
                 out_scales: int = 1, weight_norm: bool = False):
        super().__init__()
        _set_sizes(self, in_channels, in_bits, hidden, blocks, out_channels, out_scales, weight_norm, min_blocks=0)
        self.stem = SameConv2d(self.in_channels, hidden, 3)
        self.blocks = nn.ModuleList(gated_block(hidden, DILATIONS[i % len(DILATIONS)]) for i in range(blocks))
        self.down = nn.ModuleList(_down(hidden) for _ in range(out_scales - 1))
        self.scale_blocks = nn.ModuleList(gated_block(hidden) for _ in range(out_scales - 1))
        self.out = nn.ModuleList(nn.Conv2d(hidden, self.out_channels, 1) for _ in range(out_scales))
        if weight_norm:
            apply_weight_norm(self)

    def forward(self, x: torch.Tensor):
        x = check_images(x, "x", channels=self.in_channels, bits=self.in_bits)
        h = self.stem(scale_pixels(x, self.in_bits).to(self.out[0].bias.dtype))
        for blk in self.blocks:
            h = blk(h)
        outs = [self.out[0](F.elu(h))]
        for down, blk, out in zip(self.down, self.scale_blocks, self.out[1:]):
            h = blk(down(h))
            outs.append(out(F.elu(h)))
        return _maps(outs)

    def forward_floats(self, h: int, w: int) -> int:
        """Activations alive at once, per image, for an output of ``(h, w)`` (memory estimates)."""
        return (self.in_channels + 12 * self.hidden + 2 * self.out_channels) * h * w


class GatedUNetEncoder(nn.Module):
    """Lower level ``(B, in_channels, h', w')`` -> conditioning maps at ``(H, W)``, by default
    ``(2h', 2w')``: a U-net of gated residual blocks.

    1. nearest-upsample the scaled input to ``(H, W)``, conv3x3;
    2. down path over ``depth`` resolutions ``r = 0 .. depth-1`` (``(H, W)`` halved ``r`` times,
       rounded up): ``blocks`` gated blocks at each, a stride-2 conv3x3 between them; the
       output of each resolution is kept;
    3. up path ``r = depth-2 .. 0``: nearest-upsample to resolution ``r``, ``blocks`` gated
       blocks that each read the kept down-path value of ``r`` as their second input;
    4. map ``s`` (``s < out_scales``) is ``conv1x1(elu(.))`` of the features at resolution ``s``
       (the up path's; the bottom's for ``s = depth-1``).

    ``depth`` defaults to ``max(3, out_scales)``; blocks in all: ``blocks * (2 depth - 1)``.
    ``out_scales=1``: one map; else a tuple of ``out_scales`` maps.
    """

    def __init__(self, in_channels: int, in_bits: int, hidden: int, blocks: int, out_channels: int,
                 out_scales: int = 1, depth: int | None = None, weight_norm: bool = False):
        super().__init__()
        _set_sizes(self, in_channels, in_bits, hidden, blocks, out_channels, out_scales, weight_norm, min_blocks=1)
        depth = max(3, self.out_scales) if depth is None else check_int(depth, "depth", min_value=1, max_value=8)
        if depth < self.out_scales:
            raise ValueError(f"depth must be >= out_scales={self.out_scales} (one resolution per output map), "
                             f"got {depth}")
        self.depth = depth
        self.stem = SameConv2d(self.in_channels, hidden, 3)
        self.down_blocks = nn.ModuleList(nn.ModuleList(gated_block(hidden) for _ in range(blocks))
                                         for _ in range(depth))
        self.down = nn.ModuleList(_down(hidden) for _ in range(depth - 1))
        self.up_blocks = nn.ModuleList(nn.ModuleList(gated_block(hidden, skip=hidden) for _ in range(blocks))
                                       for _ in range(depth - 1))
        self.out = nn.ModuleList(nn.Conv2d(hidden, self.out_channels, 1) for _ in range(self.out_scales))
        if weight_norm:
            apply_weight_norm(self)

    def forward(self, lower: torch.Tensor, size=None):
        lower = check_images(lower, "lower", channels=self.in_channels, bits=self.in_bits)
        if size is None:
            size = (2 * lower.shape[2], 2 * lower.shape[3])
        size = check_size(size, "size")
        x = scale_pixels(lower, self.in_bits).to(self.out[0].bias.dtype)
        h = self.stem(F.interpolate(x, size=size, mode="nearest"))
        kept = []
        for r, blocks in enumerate(self.down_blocks):
            if r > 0:
                h = self.down[r - 1](h)
            for blk in blocks:
                h = blk(h)
            kept.append(h)
        feats = [None] * self.depth
        feats[-1] = h
        for r in range(self.depth - 2, -1, -1):
            skip = kept[r]
            h = F.interpolate(h, size=tuple(skip.shape[2:]), mode="nearest")
            for blk in self.up_blocks[r]:
                h = blk(h, a=skip)
            feats[r] = h
        return _maps([out(F.elu(feats[s])) for s, out in enumerate(self.out)])

    def forward_floats(self, h: int, w: int) -> int:
        """Activations alive at once, per image, for an output of ``(h, w)`` (memory estimates)."""
        return (self.in_channels + 16 * self.hidden + 2 * self.out_channels) * h * w
