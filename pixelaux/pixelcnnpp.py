"""PixelCNN++ (Salimans et al. 2017): the gated two-stream blocks in a U-net over
``scales`` resolutions (docs/design.md section 1).

The topology is that of the public PixelCNN++ code, so its checkpoints map onto this
module one to one (``pixelaux.import_pixel_cnn_pp``). With ``F = hidden`` and
``n = blocks``, at scale ``s`` (resolution ``H / 2**s``):

* inputs: ``PixelInput``: the image scaled to ``[-1, 1]`` (or, with ``embed_dim``, a learned
  table row per value) plus a channel of ones (as ``GatedPixelCNN``);
  ``u = down_shift(conv_(2,3)(x))``, ``ul = down_shift(conv_(1,3)(x)) + right_shift(conv_(2,1)(x))``.
* up pass, scale ``s = 0 .. S-1``: ``n`` gated residual blocks per stream (``u``:
  down-shifted ``(2, 3)`` convs over ``u``; ``ul``: down-right-shifted ``(2, 2)`` convs over
  ``ul`` plus a 1x1 projection of ``concat_elu(u)``); between scales a stride-2
  down-shifted ``(2, 3)`` conv of ``u`` and a stride-2 down-right-shifted ``(2, 2)`` conv of
  ``ul``. Every stream value of the up pass (the scale's input and each block's
  output) is kept for the down pass: ``n + 1`` per scale.
* down pass, scale ``s = S-1 .. 0``: ``n`` blocks at the smallest scale, ``n + 1`` at the
  others, each block reading (through its 1x1 projection) the matching up-pass value,
  last in first out: ``u`` blocks the up-pass ``u``, ``ul`` blocks ``concat(u, up-pass ul)``.
  Between scales a stride-2 transposed ``(2, 3)`` conv of ``u`` and ``(2, 2)`` of ``ul``,
  cropped so they stay causal (``layers.DownShiftedConvTranspose2d``).
* head: a 1x1 conv of ``elu(ul)`` to the distribution's parameters.

Causality at a lower scale: the value at ``(p, q)`` of scale ``s`` depends on image pixels
before ``(2**s p, 2**s q)`` only (``u``: rows ``< 2**s p``), so in sampling it is computed
once, just before that pixel. Conditioning (``cond_channels > 0``): a map
``(B, cond_channels, H, W)``, each scale's blocks reading its average pool by ``2**s``; or
one map per scale (a tuple, map ``s`` at ``H / 2**s``: ``encoders.GatedEncoder``'s
per-scale features), each scale's blocks reading their own.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_choice, check_cond, check_float, check_images, check_int, check_size
from .distributions import make_distribution
from .inputs import PixelInput
from .layers import (DownRightShiftedConv2d, DownRightShiftedConvTranspose2d, DownShiftedConv2d,
                     DownShiftedConvTranspose2d, GatedResidualBlock, down_shift, right_shift)
from .weight_norm import apply as apply_weight_norm
from .weight_norm import check_weight_norm


class StreamBlocks(nn.Module):
    """The ``u`` and ``ul`` gated residual blocks of one scale of one pass."""

    def __init__(self, hidden: int, blocks: int, u_skip: int, ul_skip: int, cond_channels: int,
                 dropout: float):
        super().__init__()
        block = lambda conv, kernel, skip: GatedResidualBlock(  # noqa: E731
            hidden, conv, kernel, skip, cond_channels, dropout)
        self.u_stream = nn.ModuleList(block(DownShiftedConv2d, (2, 3), u_skip) for _ in range(blocks))
        self.ul_stream = nn.ModuleList(block(DownRightShiftedConv2d, (2, 2), ul_skip) for _ in range(blocks))


class PixelCNNpp(nn.Module):
    """PixelCNN++ over integer images ``(B, channels, H, W)`` in ``[0, 2**bits)``.

    ``model(x, cond=None)`` -> distribution parameters ``(B, P, H, W)``; the parameters at
    ``(i, j)`` depend only on pixels before ``(i, j)`` in raster order. ``H`` and ``W``
    must be divisible by ``2**(scales-1)``. ``cond``: a float map
    ``(B, cond_channels, H, W)`` (any dependence), average-pooled to each scale, a tuple of
    ``scales`` maps (map ``s`` ``(B, cond_channels, H / 2**s, W / 2**s)``), or a
    vector per image ``(B, cond_channels)`` broadcast over all positions (its per-block
    terms computed once per image).

    Modules, as in the public code: ``u_init``, ``ul_init_v``/``ul_init_h`` (its
    ``ul_init.0``/``.1``), ``up_layers[s]`` and ``down_layers[t]`` (``t = 0`` the smallest
    scale) each with ``u_stream``/``ul_stream`` block lists, ``downsize_u[s]``/``downsize_ul[s]``
    (scale ``s`` -> ``s+1``), ``upsize_u[t]``/``upsize_ul[t]`` (scale ``S-1-t`` -> ``S-2-t``), ``head``.
    ``weight_norm=True``: every conv weight-normed per output channel (the transposed
    convs' dim 1), as the public code trains it (``pixelaux.weight_norm``).
    """

    kind = "PixelCNNpp"

    def __init__(self, channels: int = 3, bits: int = 8, hidden: int = 160, blocks: int = 5,
                 scales: int = 3, dropout: float = 0.5, cond_channels: int = 0,
                 dist: str = "logistic", nr_mix: int = 10, image_size=(32, 32),
                 embed_dim: int = 0, weight_norm: bool = False):
        super().__init__()
        weight_norm = check_weight_norm(weight_norm)
        channels = check_int(channels, "channels", min_value=1)
        bits = check_int(bits, "bits", min_value=1, max_value=16)
        hidden = check_int(hidden, "hidden", min_value=1)
        blocks = check_int(blocks, "blocks", min_value=0)
        scales = check_int(scales, "scales", min_value=1, max_value=8)
        dropout = check_float(dropout, "dropout", min_value=0.0, max_value=1.0)
        cond_channels = check_int(cond_channels, "cond_channels", min_value=0)
        nr_mix = check_int(nr_mix, "nr_mix", min_value=1)
        dist = check_choice(dist, "dist", ("logistic", "categorical"))
        self.image_size = check_size(image_size, "image_size")
        self.scales = scales
        self.check_size(self.image_size, "image_size")
        self.dist = make_distribution(dist, channels, bits, nr_mix)
        self.config = dict(channels=channels, bits=bits, hidden=hidden, blocks=blocks, scales=scales,
                           dropout=dropout, cond_channels=cond_channels, dist=dist, nr_mix=nr_mix,
                           image_size=list(self.image_size))
        self.input = PixelInput(channels, bits, embed_dim)
        if embed_dim:   # only then: configs of scaled models stay as they were
            self.config["embed_dim"] = self.input.embed_dim
        if weight_norm:  # likewise: configs without weight norm stay as they were
            self.config["weight_norm"] = True
        self.channels, self.bits, self.hidden, self.blocks = channels, bits, hidden, blocks
        self.cond_channels = cond_channels
        f, cin, cc = hidden, self.input.width, cond_channels
        self.u_init = DownShiftedConv2d(cin, f, (2, 3))
        self.ul_init_v = DownShiftedConv2d(cin, f, (1, 3))
        self.ul_init_h = DownRightShiftedConv2d(cin, f, (2, 1))
        self.up_layers = nn.ModuleList(StreamBlocks(f, blocks, 0, f, cc, dropout) for _ in range(scales))
        self.down_layers = nn.ModuleList(
            StreamBlocks(f, blocks if t == 0 else blocks + 1, f, 2 * f, cc, dropout) for t in range(scales))
        self.downsize_u = nn.ModuleList(DownShiftedConv2d(f, f, (2, 3), stride=2) for _ in range(scales - 1))
        self.downsize_ul = nn.ModuleList(DownRightShiftedConv2d(f, f, (2, 2), stride=2) for _ in range(scales - 1))
        self.upsize_u = nn.ModuleList(DownShiftedConvTranspose2d(f, f) for _ in range(scales - 1))
        self.upsize_ul = nn.ModuleList(DownRightShiftedConvTranspose2d(f, f) for _ in range(scales - 1))
        self.head = nn.Conv2d(f, self.dist.num_params, 1)
        if weight_norm:
            apply_weight_norm(self)

    def check_size(self, size, name: str = "size") -> tuple[int, int]:
        """``ValueError`` unless both sides of ``size`` are divisible by ``2**(scales-1)``."""
        f = 2 ** (self.scales - 1)
        if size[0] % f or size[1] % f:
            raise ValueError(f"{name}: a PixelCNNpp with scales={self.scales} needs H and W divisible by "
                             f"2**(scales-1) = {f}, got {size[0]} x {size[1]} (H x W)")
        return tuple(size)

    def forward_floats(self, h: int, w: int) -> int:
        """Floats alive at the widest point of one forward pass, per image (the memory
        estimate of the naive engine, ``resources``): the up-pass values kept for the
        down pass, the input, one block's temporaries, the cond terms, the head."""
        f, k = self.hidden, self.cond_channels
        area = sum((h >> s) * (w >> s) for s in range(self.scales))
        per_pos = 3 * self.input.width + 14 * f + (3 * f + 5 * k if k else 0) + self.dist.num_params
        return 2 * (self.blocks + 1) * f * area + per_pos * h * w

    def check_inputs(self, x, cond=None, name="x"):
        device = self.head.bias.device   # (.weight may be computed: weight norm)
        x = check_images(x, name, channels=self.channels, bits=self.bits, device=device)
        self.check_size(tuple(x.shape[2:]), name)
        cond = check_cond(cond, "cond", batch=x.shape[0], channels=self.cond_channels,
                          size=tuple(x.shape[2:]), device=device, dtype=self.head.bias.dtype, scales=self.scales)
        return x, cond

    def scale_conds(self, cond):
        """The conditioning map at every scale (average pools), or ``[None] * scales``; a
        vector per image ``(B, K)`` is ``(B, K, 1, 1)`` at every scale (broadcast); a tuple
        of per-scale maps (a deep encoder's) is used as it is."""
        if cond is None:
            return [None] * self.scales
        if isinstance(cond, (tuple, list)):
            return list(cond)
        if cond.dim() == 2:
            return [cond[:, :, None, None]] * self.scales
        return [cond if s == 0 else F.avg_pool2d(cond, 2 ** s) for s in range(self.scales)]

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x, cond = self.check_inputs(x, cond)
        return self.forward_unchecked(x, cond)

    def forward_unchecked(self, x, cond=None):
        h = self.input(x)
        conds = self.scale_conds(cond)
        u = down_shift(self.u_init(h))
        ul = down_shift(self.ul_init_v(h)) + right_shift(self.ul_init_h(h))
        us, uls = [u], [ul]                      # every up-pass value, for the down pass
        for s, stage in enumerate(self.up_layers):
            if s > 0:
                u, ul = self.downsize_u[s - 1](u), self.downsize_ul[s - 1](ul)
                us.append(u)
                uls.append(ul)
            for ub, ulb in zip(stage.u_stream, stage.ul_stream):
                u = ub(u, cond=conds[s])
                ul = ulb(ul, a=u, cond=conds[s])
                us.append(u)
                uls.append(ul)
        u, ul = us.pop(), uls.pop()
        for t, stage in enumerate(self.down_layers):
            s = self.scales - 1 - t
            if t > 0:
                u, ul = self.upsize_u[t - 1](u), self.upsize_ul[t - 1](ul)
            for ub, ulb in zip(stage.u_stream, stage.ul_stream):
                u = ub(u, a=us.pop(), cond=conds[s])
                ul = ulb(ul, a=torch.cat([u, uls.pop()], dim=1), cond=conds[s])
        return self.head(F.elu(ul))

    def log_prob(self, x: torch.Tensor, cond: torch.Tensor | None = None, window=None) -> torch.Tensor:
        """Log-likelihood of integer images ``(B, C, H, W)`` in nats, ``(B,)``; with a
        ``pixelaux.consistency.Window``, of each channel truncated to its range there
        (consistent decoding)."""
        x, cond = self.check_inputs(x, cond)
        params = self.forward_unchecked(x, cond)
        ranges = (None, None) if window is None else window.to(x.device).ranges(x)
        return self.dist.log_prob(params, x, *ranges).sum(dim=(1, 2))
