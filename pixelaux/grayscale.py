"""Grayscale auxiliary variable (DESIGN.md section 1; Kolesnikov & Lampert 2017, sec. 3.1).

``X_hat = to_gray(X)`` is a deterministic low-bit gray view of the colour image ``X``,
so the model factorises as

    log p(X) >= log p(X_hat) + log p(X | X_hat)

(equality for the true distribution, where ``X_hat`` is a function of ``X``; for the
model the right-hand side is a lower bound of the marginal, and it is what we train
and report). Both terms are in nats per image; bits/dim divide both by ``C*H*W`` of
the colour image, so the gray and colour parts add up to the total.

* ``p(X_hat)``: ``prior``, a categorical ``GatedPixelCNN`` over the 1-channel gray view.
* ``p(X | X_hat)``: ``colour``, a logistic-mixture ``GatedPixelCNN`` whose ``cond`` is
  ``encoder(X_hat)``, a non-causal ``ResNetEncoder`` computed once per image.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .checks import check_choice, check_float, check_images, check_int, check_size
from .encoders import ResNetEncoder
from .stages import ARCHS, make_stage

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


class GrayscalePixelCNN(nn.Module):
    """``p(X) = p(X_hat) p(X | X_hat)`` with ``X_hat = to_gray(X)``.

    ``model(x)`` / ``model.log_prob(x)``: integer ``(B, channels, H, W)`` -> nats ``(B,)``.

    Defaults: ``encoder_hidden`` and ``prior_hidden`` -> ``hidden``; ``cond_channels``
    (width of the encoder map) -> ``hidden``; ``prior_blocks`` -> ``blocks``.
    ``arch``: the network of every part, ``"gated"`` (``GatedPixelCNN``, default) or
    ``"pixelcnnpp"`` (``PixelCNNpp`` over ``scales`` resolutions; ``kernel_size`` does not
    apply to it, and every part's size must be divisible by ``2**(scales-1)``).
    """

    kind = "GrayscalePixelCNN"

    def __init__(self, channels: int = 3, bits: int = 8, gray_bits: int = 4, hidden: int = 64,
                 blocks: int = 8, kernel_size: int = 3, dropout: float = 0.0, nr_mix: int = 10,
                 encoder_hidden: int | None = None, encoder_blocks: int = 4,
                 cond_channels: int | None = None, image_size=(32, 32),
                 prior_hidden: int | None = None, prior_blocks: int | None = None,
                 arch: str = "gated", scales: int = 3):
        super().__init__()
        arch = check_choice(arch, "arch", ARCHS)
        channels = check_int(channels, "channels", min_value=1)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 3 (RGB) or 1, got {channels}")
        bits = check_int(bits, "bits", min_value=1, max_value=16)
        gray_bits = check_int(gray_bits, "gray_bits", min_value=1, max_value=bits)
        hidden = check_int(hidden, "hidden", min_value=1)
        blocks = check_int(blocks, "blocks", min_value=0)
        kernel_size = check_int(kernel_size, "kernel_size", min_value=1)
        nr_mix = check_int(nr_mix, "nr_mix", min_value=1)
        dropout = check_float(dropout, "dropout", min_value=0.0, max_value=1.0)
        encoder_blocks = check_int(encoder_blocks, "encoder_blocks", min_value=0)
        opt = lambda v, name, lo: None if v is None else check_int(v, name, min_value=lo)  # noqa: E731
        encoder_hidden = opt(encoder_hidden, "encoder_hidden", 1)
        cond_channels = opt(cond_channels, "cond_channels", 1)
        prior_hidden = opt(prior_hidden, "prior_hidden", 1)
        prior_blocks = opt(prior_blocks, "prior_blocks", 0)
        self.image_size = check_size(image_size, "image_size")
        self.config = dict(channels=channels, bits=bits, gray_bits=gray_bits, hidden=hidden,
                           blocks=blocks, kernel_size=kernel_size, dropout=dropout, nr_mix=nr_mix,
                           encoder_hidden=encoder_hidden, encoder_blocks=encoder_blocks,
                           cond_channels=cond_channels, image_size=list(self.image_size),
                           prior_hidden=prior_hidden, prior_blocks=prior_blocks)
        if arch != "gated":           # older checkpoints (gated, no such keys) keep their config
            self.config.update(arch=arch, scales=scales)
        self.channels, self.bits, self.gray_bits = channels, bits, gray_bits
        k = hidden if cond_channels is None else cond_channels
        self.prior = make_stage(
            arch, scales, kernel_size, channels=1, bits=gray_bits, dist="categorical",
            hidden=hidden if prior_hidden is None else prior_hidden,
            blocks=blocks if prior_blocks is None else prior_blocks,
            dropout=dropout, image_size=self.image_size)
        self.encoder = ResNetEncoder(1, gray_bits, hidden if encoder_hidden is None else encoder_hidden,
                                     encoder_blocks, k)
        self.colour = make_stage(
            arch, scales, kernel_size, channels=channels, bits=bits, dist="logistic", nr_mix=nr_mix,
            cond_channels=k, hidden=hidden, blocks=blocks, dropout=dropout, image_size=self.image_size)

    def gray(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, channels, H, W)`` -> the gray view ``X_hat``, ``(B, 1, H, W)`` in ``[0, 2**gray_bits)``."""
        return to_gray(x, self.bits, self.gray_bits)

    def cond(self, gray: torch.Tensor) -> torch.Tensor:
        """Gray view ``(B, 1, H, W)`` -> conditioning map of ``colour``, ``(B, K, H, W)``."""
        return self.encoder(gray)

    def log_prob_parts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"gray": log p(X_hat), "colour": log p(X | X_hat)}``, each nats ``(B,)``."""
        x = check_images(x, "x", channels=self.channels, bits=self.bits)
        g = self.gray(x)
        return {"gray": self.prior.log_prob(g), "colour": self.colour.log_prob(x, self.cond(g))}

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(X_hat) + log p(X | X_hat)`` in nats, ``(B,)``."""
        parts = self.log_prob_parts(x)
        return parts["gray"] + parts["colour"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)

    def bits_per_dim(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"total", "gray", "colour"}``, each ``(B,)`` bits per dim over ``C*H*W`` of ``x``;
        ``total`` is computed as ``gray + colour``."""
        parts = self.log_prob_parts(x)
        dims = x.shape[1] * x.shape[2] * x.shape[3]
        out = {k: -v / (dims * math.log(2.0)) for k, v in parts.items()}
        out["total"] = out["gray"] + out["colour"]
        return {"total": out["total"], "gray": out["gray"], "colour": out["colour"]}
