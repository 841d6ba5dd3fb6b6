"""The causal stack: a resolution-preserving Gated PixelCNN (docs/design.md section 1).

Two streams, with ``kh = (kernel_size + 1) // 2`` rows of context per conv:

* ``u`` (vertical): ``u[i, j]`` depends on input rows ``< i``.
  ``u = down_shift(conv_(kh, k)(x))``, then per block a gated residual block whose
  convs are down-shifted ``(kh, k)`` convs over ``u`` itself.
* ``ul`` (horizontal): ``ul[i, j]`` depends on rows ``< i`` and on row ``i``, columns ``< j``.
  ``ul = down_shift(conv_(1, k)(x)) + right_shift(conv_(kh, 1)(x))``, then per block a
  gated residual block with down-right-shifted ``(kh, kh)`` convs over ``ul`` and a
  1x1 projection of the same block's ``u``.

The input (``inputs.PixelInput``) is the image scaled to ``[-1, 1]``, or with
``embed_dim=E`` each value's row of a learned table (token inputs: codes of a VQ-VAE
have no order), plus a channel of ones (so the padding of the shifted convs is
distinguishable from black). The head is a 1x1 conv of
``elu(ul)`` to the parameters of the output distribution.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_choice, check_cond, check_float, check_images, check_int, check_size
from .distributions import make_distribution
from .inputs import PixelInput
from .layers import (DownRightShiftedConv2d, DownShiftedConv2d, GatedResidualBlock,
                     down_shift, right_shift)
from .weight_norm import apply as apply_weight_norm
from .weight_norm import check_weight_norm


class GatedPixelCNN(nn.Module):
    """Autoregressive model over integer images ``(B, channels, H, W)`` in ``[0, 2**bits)``.

    ``model(x, cond=None)`` -> distribution parameters ``(B, P, H, W)``, float32;
    the parameters at ``(i, j)`` depend only on pixels before ``(i, j)`` in raster order
    (all channels of earlier pixels, none of pixel ``(i, j)`` itself).
    ``cond`` is a float map ``(B, cond_channels, H, W)`` (e.g. from an encoder over an
    auxiliary image; it may depend on anything), or a vector per image ``(B, cond_channels)``
    (global conditioning, the Gated PixelCNN paper's ``h``: one-hot class labels,
    embeddings), broadcast over all positions: each block's terms are then computed once
    per image, ``(B, 2C, 1, 1)``.
    ``weight_norm=True``: every conv weight-normed per output channel, ``g`` and ``V`` in
    the state dict, to be initialized from a first batch (``pixelaux.weight_norm``;
    ``train`` does it); ``config["weight_norm"]`` only then.
    """

    kind = "GatedPixelCNN"

    def __init__(self, channels: int = 3, bits: int = 8, hidden: int = 64, blocks: int = 8,
                 kernel_size: int = 3, dropout: float = 0.0, cond_channels: int = 0,
                 dist: str = "logistic", nr_mix: int = 10, image_size=(32, 32),
                 embed_dim: int = 0, weight_norm: bool = False):
        super().__init__()
        weight_norm = check_weight_norm(weight_norm)
        channels = check_int(channels, "channels", min_value=1)
        bits = check_int(bits, "bits", min_value=1, max_value=16)
        hidden = check_int(hidden, "hidden", min_value=1)
        blocks = check_int(blocks, "blocks", min_value=0)
        kernel_size = check_int(kernel_size, "kernel_size", min_value=1)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        dropout = check_float(dropout, "dropout", min_value=0.0, max_value=1.0)
        cond_channels = check_int(cond_channels, "cond_channels", min_value=0)
        nr_mix = check_int(nr_mix, "nr_mix", min_value=1)
        dist = check_choice(dist, "dist", ("logistic", "categorical"))
        self.image_size = check_size(image_size, "image_size")
        self.dist = make_distribution(dist, channels, bits, nr_mix)
        self.config = dict(channels=channels, bits=bits, hidden=hidden, blocks=blocks,
                           kernel_size=kernel_size, dropout=dropout, cond_channels=cond_channels,
                           dist=dist, nr_mix=nr_mix, image_size=list(self.image_size))
        self.input = PixelInput(channels, bits, embed_dim)
        if embed_dim:   # only then: configs of scaled models stay as they were
            self.config["embed_dim"] = self.input.embed_dim
        if weight_norm:  # likewise: configs without weight norm stay as they were
            self.config["weight_norm"] = True
        self.channels, self.bits, self.hidden = channels, bits, hidden
        self.cond_channels = cond_channels
        k, kh = kernel_size, (kernel_size + 1) // 2
        self.kh, self.kw = kh, k
        cin = self.input.width
        self.u_init = DownShiftedConv2d(cin, hidden, (kh, k))
        self.ul_init_v = DownShiftedConv2d(cin, hidden, (1, k))
        self.ul_init_h = DownRightShiftedConv2d(cin, hidden, (kh, 1))
        self.u_blocks = nn.ModuleList(
            GatedResidualBlock(hidden, DownShiftedConv2d, (kh, k), 0, cond_channels, dropout)
            for _ in range(blocks))
        self.ul_blocks = nn.ModuleList(
            GatedResidualBlock(hidden, DownRightShiftedConv2d, (kh, kh), hidden, cond_channels, dropout)
            for _ in range(blocks))
        self.head = nn.Conv2d(hidden, self.dist.num_params, 1)
        if weight_norm:
            apply_weight_norm(self)

    def check_size(self, size, name: str = "size") -> tuple[int, int]:
        """Any size: the stack preserves resolution (``PixelCNNpp`` has a rule)."""
        return tuple(size)

    def forward_floats(self, h: int, w: int) -> int:
        """Floats alive at the widest point of one forward pass, per image (the memory
        estimate of the naive engine, ``resources``)."""
        hid, k = self.hidden, self.cond_channels
        per_pos = (3 * self.input.width                          # encoded input, with ones, padded copy
                   + 2 * hid                                     # u and ul, alive throughout
                   + (14 * hid if len(self.u_blocks) else 2 * hid)   # one gated block's temporaries
                   + (3 * hid + 5 * k if k else 0)               # cond map, concat-ELU, block terms
                   + self.dist.num_params)                       # head output
        return per_pos * h * w

    def check_inputs(self, x, cond=None, name="x"):
        device = self.head.bias.device   # (.weight may be computed: weight norm)
        x = check_images(x, name, channels=self.channels, bits=self.bits, device=device)
        cond = check_cond(cond, "cond", batch=x.shape[0], channels=self.cond_channels,
                          size=tuple(x.shape[2:]), device=device, dtype=self.head.bias.dtype)
        return x, cond

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x, cond = self.check_inputs(x, cond)
        return self.forward_unchecked(x, cond)

    def scale_conds(self, cond):
        """The conditioning map at the stack's one scale, as ``PixelCNNpp.scale_conds`` gives
        one per scale: ``[cond]``, a vector per image ``(B, K)`` as ``(B, K, 1, 1)``
        (broadcast), or ``[None]``."""
        return [cond[:, :, None, None] if cond is not None and cond.dim() == 2 else cond]

    def forward_unchecked(self, x, cond=None):
        cond = self.scale_conds(cond)[0]
        h = self.input(x)
        u = down_shift(self.u_init(h))
        ul = down_shift(self.ul_init_v(h)) + right_shift(self.ul_init_h(h))
        for ub, ulb in zip(self.u_blocks, self.ul_blocks):
            u = ub(u, cond=cond)
            ul = ulb(ul, a=u, cond=cond)
        return self.head(F.elu(ul))

    def log_prob(self, x: torch.Tensor, cond: torch.Tensor | None = None, window=None) -> torch.Tensor:
        """Log-likelihood of integer images ``(B, C, H, W)`` in nats, ``(B,)``; with a
        ``pixelaux.consistency.Window``, of each channel truncated to its range there
        (consistent decoding)."""
        x, cond = self.check_inputs(x, cond)
        params = self.forward_unchecked(x, cond)
        ranges = (None, None) if window is None else window.to(x.device).ranges(x)
        return self.dist.log_prob(params, x, *ranges).sum(dim=(1, 2))
