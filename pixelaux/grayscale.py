"""Grayscale auxiliary variable (docs/design.md section 1; Kolesnikov & Lampert 2017, sec. 3.1).

``X_hat = to_gray(X)`` is a deterministic low-bit gray view of the colour image ``X``,
so the model factorises as

    log p(X) >= log p(X_hat) + log p(X | X_hat)

(equality for the true distribution, where ``X_hat`` is a function of ``X``; for the
model the right-hand side is a lower bound of the marginal, and it is what we train
and report). Both terms are in nats per image; bits/dim divide both by ``C*H*W`` of
the colour image, so the gray and colour parts add up to the total.

* ``p(X_hat)``: ``prior``, a categorical ``GatedPixelCNN`` over the 1-channel gray view, or
  any unconditional pixelaux model of it given as ``prior=`` (a gray pyramid, say).
* ``p(X | X_hat)``: ``colour``, a logistic-mixture ``GatedPixelCNN`` whose ``cond`` is
  ``encoder(X_hat)``, a non-causal network computed once per image: a ``ResNetEncoder``
  (``encoder="resnet"``), or the authors' deep gated, dilated encoder (``encoder="gated"``,
  ``GatedEncoder``), whose features enter every gated block of every scale of a
  PixelCNN++ colour stage (a map per scale).

An ``AuxiliaryPixelCNN`` (``pixelaux.auxiliary``) with the gray-view transform.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .auxiliary import AuxiliaryPixelCNN, build_model, model_spec
from .checks import check_choice, check_float, check_int, check_size
from .encoders import GatedEncoder, ResNetEncoder
from .stages import ARCHS, make_stage
from .transforms import LUMA_WEIGHTS, GrayView, div_round_half_even, to_gray  # noqa: F401 (re-exported)
from .weight_norm import check_weight_norm


#: ``GrayscalePixelCNN(encoder=...)``
ENCODER_KINDS = ("resnet", "gated")


class GrayscalePixelCNN(AuxiliaryPixelCNN):
    """``p(X) = p(X_hat) p(X | X_hat)`` with ``X_hat = to_gray(X)``: an
    ``AuxiliaryPixelCNN`` with the gray-view transform.

    ``model(x)`` / ``model.log_prob(x)``: integer ``(B, channels, H, W)`` -> nats ``(B,)``.

    Defaults: ``encoder_hidden`` and ``prior_hidden`` -> ``hidden``; ``cond_channels``
    (width of the encoder map) -> ``hidden``; ``prior_blocks`` -> ``blocks``.
    ``arch``: the network of every part, ``"gated"`` (``GatedPixelCNN``, default) or
    ``"pixelcnnpp"`` (``PixelCNNpp`` over ``scales`` resolutions; ``kernel_size`` does not
    apply to it, and every part's size must be divisible by ``2**(scales-1)``).
    ``prior``: instead of the built-in categorical stage, any unconditional pixelaux model
    of the gray view (``channels=1``, ``bits=gray_bits``, ``image_size`` the same), e.g.
    ``PyramidPixelCNN(channels=1, bits=4, dist="categorical")``: the gray view is then
    sampled as a pyramid, and its parts are reported as ``"gray/level0_8x8"``, ...
    (a ``{"kind", "config"}`` dict is accepted too, as checkpoints store it).
    ``weight_norm``: weight-norm every conv of the built-in parts (``pixelaux.weight_norm``;
    a given ``prior`` keeps its own setting).
    ``encoder``: ``"resnet"`` (``ResNetEncoder``: ``encoder_blocks`` plain residual blocks, one
    map) or ``"gated"`` (``GatedEncoder``: ``encoder_blocks`` gated, dilated residual blocks,
    and with ``arch="pixelcnnpp"`` its own map for each of the ``scales``), each
    ``encoder_hidden`` wide.
    ``consistent`` (default True; False for checkpoints from before it): the colour stage
    samples and scores each channel truncated to the values that keep the pixel's gray bin
    (``pixelaux.consistency``): exact likelihoods, and colorizations whose gray view is
    always the input's.
    Submodules (state-dict names): ``prior``, ``encoder``, ``colour``.
    """

    kind = "GrayscalePixelCNN"
    part_name, prior_name = "colour", "gray"

    def __init__(self, channels: int = 3, bits: int = 8, gray_bits: int = 4, hidden: int = 64,
                 blocks: int = 8, kernel_size: int = 3, dropout: float = 0.0, nr_mix: int = 10,
                 encoder_hidden: int | None = None, encoder_blocks: int = 4,
                 cond_channels: int | None = None, image_size=(32, 32),
                 prior_hidden: int | None = None, prior_blocks: int | None = None,
                 arch: str = "gated", scales: int = 3, prior=None, weight_norm: bool = False,
                 encoder: str = "resnet", consistent: bool = True):
        nn.Module.__init__(self)
        weight_norm = check_weight_norm(weight_norm)
        arch = check_choice(arch, "arch", ARCHS)
        encoder_kind = check_choice(encoder, "encoder", ENCODER_KINDS)
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
        if prior is not None and (prior_hidden is not None or prior_blocks is not None):
            raise ValueError(f"prior_hidden / prior_blocks size the built-in gray prior; with prior= given they must "
                             f"be None, got prior_hidden={prior_hidden}, prior_blocks={prior_blocks}")
        self.image_size = check_size(image_size, "image_size")
        self.config = dict(channels=channels, bits=bits, gray_bits=gray_bits, hidden=hidden,
                           blocks=blocks, kernel_size=kernel_size, dropout=dropout, nr_mix=nr_mix,
                           encoder_hidden=encoder_hidden, encoder_blocks=encoder_blocks,
                           cond_channels=cond_channels, image_size=list(self.image_size),
                           prior_hidden=prior_hidden, prior_blocks=prior_blocks)
        if arch != "gated":           # older checkpoints (gated, no such keys) keep their config
            self.config.update(arch=arch, scales=scales)
        if weight_norm:               # likewise
            self.config.update(weight_norm=True)
        if encoder_kind != "resnet":  # likewise
            self.config.update(encoder=encoder_kind)
        wn = {"weight_norm": True} if weight_norm else {}
        self.channels, self.bits, self.gray_bits = channels, bits, gray_bits
        self.transform = GrayView(gray_bits).bind(channels, bits)
        k = hidden if cond_channels is None else cond_channels
        if prior is None:
            prior = make_stage(
                arch, scales, kernel_size, channels=1, bits=gray_bits, dist="categorical",
                hidden=hidden if prior_hidden is None else prior_hidden,
                blocks=blocks if prior_blocks is None else prior_blocks,
                dropout=dropout, image_size=self.image_size, **wn)
        else:
            prior = build_model(prior, "prior")
            self.config["prior"] = model_spec(prior)     # only then: older configs stay as they were
        e_hidden = hidden if encoder_hidden is None else encoder_hidden
        if encoder_kind == "gated":
            encoder = GatedEncoder(1, gray_bits, e_hidden, encoder_blocks, k,
                                   out_scales=scales if arch == "pixelcnnpp" else 1, weight_norm=weight_norm)
        else:
            encoder = ResNetEncoder(1, gray_bits, e_hidden, encoder_blocks, k, weight_norm=weight_norm)
        colour = make_stage(
            arch, scales, kernel_size, channels=channels, bits=bits, dist="logistic", nr_mix=nr_mix,
            cond_channels=k, hidden=hidden, blocks=blocks, dropout=dropout, image_size=self.image_size, **wn)
        self.check_parts(prior, colour, encoder)
        self.prior, self.encoder, self.colour = prior, encoder, colour
        self.consistent = consistent

    @property
    def conditional(self):
        """The colour stage, ``p(X | X_hat)`` (the generic name of ``colour``)."""
        return self.colour

    def gray(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, channels, H, W)`` -> the gray view ``X_hat``, ``(B, 1, H, W)`` in ``[0, 2**gray_bits)``."""
        return to_gray(x, self.bits, self.gray_bits)

    def cond(self, gray: torch.Tensor) -> torch.Tensor:
        """Gray view ``(B, 1, H, W)`` -> conditioning map of ``colour``, ``(B, K, H, W)``."""
        return self.encoder(gray)

    def encode(self, view, size):
        return self.cond(view)

    def log_prob_parts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"gray": log p(X_hat), "colour": log p(X | X_hat)}``, each nats ``(B,)``; with a
        composite ``prior``, ``"gray/<part>"`` for each of its parts instead of ``"gray"``."""
        return super().log_prob_parts(x)

    def bits_per_dim(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"total", "gray", "colour"}``, each ``(B,)`` bits per dim over ``C*H*W`` of ``x``;
        ``total`` is computed as the sum of the parts."""
        return super().bits_per_dim(x)
