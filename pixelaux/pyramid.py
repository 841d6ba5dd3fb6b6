"""Pyramid auxiliary variables (docs/design.md section 1; Kolesnikov & Lampert 2017, sec. 3.2).

``X_k`` is the image average-pooled by ``2**k`` and rounded back to the integer grid,
``X_0 = X``. Each ``X_k`` (``k >= 1``) is a function of ``X``, so the model factorises
from the smallest level up:

    log p(X) >= log p(X_{L-1}) + sum_{k < L-1} log p(X_k | X_{k+1})

(a lower bound of the model's marginal; equality for the true distribution). The
smallest level (e.g. 8x8) has an unconditional ``GatedPixelCNN``; every other level a
``GatedPixelCNN`` that samples all its pixels in raster order, conditioned through a
non-causal ``UNetEncoder`` on the level below (computed once per image).

Two index conventions, both explicit:

* ``build_pyramid(x, levels)`` returns ``[X_0, X_1, ...]``: **largest first**, the index
  is the pooling exponent ``k`` (``X_k`` has size ``H / 2**k``).
* ``PyramidPixelCNN`` numbers its stages **smallest first**: ``levels[0]`` models the
  seed-size image, ``levels[k]`` the ``seed * 2**k`` image given stage ``k-1``;
  ``model.pyramid(x)`` returns the images in that order.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .auxiliary import AuxiliaryPixelCNN
from .checks import check_choice, check_float, check_images, check_int, check_size
from .encoders import GatedUNetEncoder, UNetEncoder
from .stages import ARCHS, make_stage
from .transforms import AvgPool, avg_pool_round, pool_mask
from .weight_norm import check_weight_norm


def build_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``[X_0 = x, X_1, ..., X_{levels-1}]``, largest first.

    ``x``: integer ``(B, C, H, W)``; ``H`` and ``W`` divisible by ``2**(levels-1)``.
    ``X_k`` = ``avg_pool(x, 2**k)`` rounded half to even, int64 ``(B, C, H/2**k, W/2**k)``;
    every level is pooled from ``x`` itself (not from ``X_{k-1}``), in exact integer
    arithmetic (block sums divided by ``4**k``).
    """
    if not isinstance(x, torch.Tensor) or x.dtype.is_floating_point or x.dtype.is_complex \
            or x.dtype == torch.bool:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x must be a torch.Tensor of integer pixels, got {got}")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
    levels = check_int(levels, "levels", min_value=1)
    b, c, h, w = x.shape
    f = 2 ** (levels - 1)
    if h % f or w % f:
        raise ValueError(f"x spatial size {(h, w)} must be divisible by 2**(levels-1) = {f} "
                         f"for levels={levels}")
    x = x.long()
    return [x] + [avg_pool_round(x, 2 ** k) for k in range(1, levels)]


def level_sizes(image_size, seed_size) -> list[tuple[int, int]]:
    """``[seed, 2*seed, ..., image_size]`` as ``(H, W)`` pairs; ``image_size`` must be
    ``seed_size * 2**k`` in both dimensions with the same ``k >= 0``."""
    ih, iw = check_size(image_size, "image_size")
    sh, sw = check_size(seed_size, "seed_size")
    ks = []
    for i, s in ((ih, sh), (iw, sw)):
        r = i // s
        ks.append(r.bit_length() - 1 if i % s == 0 and r & (r - 1) == 0 else None)
    if ks[0] is None or ks[0] != ks[1]:
        raise ValueError(f"image_size must be seed_size * 2**k (k >= 0, the same k for H and W), "
                         f"got image_size={(ih, iw)} and seed_size={(sh, sw)}")
    return [(sh * 2 ** k, sw * 2 ** k) for k in range(ks[0] + 1)]


#: ``PyramidPixelCNN(encoder=...)``
ENCODER_KINDS = ("unet", "gated-unet")
#: what ``PyramidPixelCNN(per_level=[...])`` may set for one level (its network and the
#: encoder that conditions it; the seed level has no encoder)
LEVEL_KEYS = ("arch", "scales", "hidden", "blocks", "kernel_size", "nr_mix", "dropout", "cond_channels",
              "encoder", "encoder_hidden", "encoder_blocks")
ENCODER_KEYS = ("cond_channels", "encoder", "encoder_hidden", "encoder_blocks")


def _level_settings(st: dict, where: str) -> dict:
    """One level's settings (``LEVEL_KEYS``), checked (errors name ``where + key``), with
    ``encoder_blocks`` filled in for a gated U-net (2)."""
    n = lambda key: where + key  # noqa: E731
    opt = lambda key, lo: None if st[key] is None else check_int(st[key], n(key), min_value=lo)  # noqa: E731
    out = dict(arch=check_choice(st["arch"], n("arch"), ARCHS), scales=check_int(st["scales"], n("scales"), min_value=1, max_value=8),
               hidden=check_int(st["hidden"], n("hidden"), min_value=1),
               blocks=check_int(st["blocks"], n("blocks"), min_value=0),
               kernel_size=check_int(st["kernel_size"], n("kernel_size"), min_value=1),
               nr_mix=check_int(st["nr_mix"], n("nr_mix"), min_value=1),
               dropout=check_float(st["dropout"], n("dropout"), min_value=0.0, max_value=1.0),
               cond_channels=opt("cond_channels", 1), encoder=check_choice(st["encoder"], n("encoder"), ENCODER_KINDS),
               encoder_hidden=opt("encoder_hidden", 1), encoder_blocks=opt("encoder_blocks", 1))
    if out["encoder"] == "unet" and out["encoder_blocks"] is not None:
        raise ValueError(f"{n('encoder_blocks')} sizes the gated U-net (encoder='gated-unet'); the plain U-net has "
                         f"fixed blocks, got encoder_blocks={out['encoder_blocks']} with encoder='unet'")
    if out["encoder"] == "gated-unet" and out["encoder_blocks"] is None:
        out["encoder_blocks"] = 2
    return out


def _check_per_level(per_level, levels: int) -> list[dict] | None:
    """``per_level``: ``None``, or one dict per level (smallest first) of ``LEVEL_KEYS``
    overrides; the seed level's may not set its (absent) encoder."""
    if per_level is None:
        return None
    if not isinstance(per_level, (list, tuple)) or len(per_level) != levels \
            or not all(isinstance(d, dict) for d in per_level):
        raise ValueError(f"per_level must be a list of {levels} dicts (one per level, smallest first; {{}} keeps "
                         f"the model-wide settings), got {per_level!r}"[:300])
    out = []
    for k, d in enumerate(per_level):
        for key in d:
            if key not in LEVEL_KEYS:
                raise ValueError(f"per_level[{k}].{key}: unknown key; a level sets {', '.join(LEVEL_KEYS)}")
            if k == 0 and key in ENCODER_KEYS:
                raise ValueError(f"per_level[0].{key}: the seed level is unconditional (no encoder); set it on "
                                 f"the levels above")
        out.append(dict(d))
    return out


class PyramidPixelCNN(AuxiliaryPixelCNN):
    """``p(X) = p(X_{L-1}) prod_k p(X_k | X_{k+1})`` over an average-pool pyramid: an
    ``AuxiliaryPixelCNN`` with the 2x average-pool transform whose prior is the pyramid of
    one level less (recursion), down to the unconditional seed-size stage.

    ``model(x)`` / ``model.log_prob(x)``: integer ``(B, channels, H, W)`` -> nats ``(B,)``.
    ``(H, W)`` is ``image_size`` by default; every stage is fully convolutional, so any size
    divisible by ``2**(num_levels-1)`` works (the stages then have that size / ``2**k``).
    ``levels[0]`` (seed size) is unconditional; ``levels[k]`` takes
    ``cond = encoders[k-1](stage k-1 image)``, ``cond_channels`` wide (default ``hidden``).
    ``encoder_hidden`` (default ``hidden``) is the U-net width. ``encoder``: ``"unet"``
    (``UNetEncoder``, one down/up path of plain residual blocks) or ``"gated-unet"``
    (``GatedUNetEncoder``, the authors': ``encoder_blocks`` gated residual blocks per
    resolution (default 2) over 3 resolutions, and with ``arch="pixelcnnpp"`` its own map for
    each of the ``scales``).
    ``arch``: the network of every part, ``"gated"`` (``GatedPixelCNN``, default) or
    ``"pixelcnnpp"`` (``PixelCNNpp`` over ``scales`` resolutions; ``kernel_size`` does not
    apply to it, and every part's size must be divisible by ``2**(scales-1)``).
    ``weight_norm``: weight-norm every conv of every level and encoder (``pixelaux.weight_norm``).
    ``per_level``: one dict per level, smallest first, that overrides the model-wide network
    settings for that level and the encoder conditioning it (``LEVEL_KEYS``: ``arch``,
    ``scales``, ``hidden``, ``blocks``, ``kernel_size``, ``nr_mix``, ``dropout``,
    ``cond_channels``, ``encoder``, ``encoder_hidden``, ``encoder_blocks``), e.g. a deep
    PixelCNN++ at the seed level and one-block gated stacks above it, as the paper's pyramid
    gets its speed: ``per_level=[{"arch": "pixelcnnpp", "blocks": 3}, {"blocks": 1}, {"blocks": 1}]``.

    As an auxiliary-variable model: ``conditional = levels[-1]``, ``encoder = encoders[-1]``,
    ``prior`` = the pyramid of ``levels[:-1]`` (a view sharing these modules; ``levels[0]``
    itself for two levels; ``None`` for one level). The modules are held in ``levels`` and
    ``encoders``, so the state-dict names are those of every earlier checkpoint.
    ``consistent`` (default True; False for checkpoints from before it): each level is
    pooled from the level above (``X_{k+1} = pool(X_k)``) and sampled / scored truncated to
    the values that pool back to the level below it (``pixelaux.consistency``): exact
    likelihoods, and upscaled samples that always pool back to their input. Without it,
    every level is pooled from ``X`` itself (``build_pyramid``) and the likelihood is a bound.
    """

    kind = "PyramidPixelCNN"
    prior_name = ""

    def __init__(self, channels: int = 3, bits: int = 8, image_size=32, seed_size=8, hidden: int = 64,
                 blocks: int = 3, kernel_size: int = 3, nr_mix: int = 10, dist: str = "logistic",
                 encoder_hidden: int | None = None, dropout: float = 0.0,
                 cond_channels: int | None = None, arch: str = "gated", scales: int = 2,
                 weight_norm: bool = False, encoder: str = "unet", encoder_blocks: int | None = None,
                 per_level: list | None = None, consistent: bool = True):
        nn.Module.__init__(self)
        weight_norm = check_weight_norm(weight_norm)
        channels = check_int(channels, "channels", min_value=1)
        bits = check_int(bits, "bits", min_value=1, max_value=16)
        sizes = level_sizes(image_size, seed_size)
        every = _level_settings(dict(arch=arch, scales=scales, hidden=hidden, blocks=blocks, kernel_size=kernel_size,
                                     nr_mix=nr_mix, dropout=dropout, cond_channels=cond_channels, encoder=encoder,
                                     encoder_hidden=encoder_hidden, encoder_blocks=encoder_blocks), "")
        per_level = _check_per_level(per_level, len(sizes))
        settings = [every if not per_level else _level_settings({**every, **per_level[k]}, f"per_level[{k}].")
                    for k in range(len(sizes))]
        config = dict(channels=channels, bits=bits, image_size=list(sizes[-1]),
                      seed_size=list(sizes[0]), hidden=every["hidden"], blocks=every["blocks"],
                      kernel_size=every["kernel_size"], nr_mix=every["nr_mix"], dist=dist,
                      encoder_hidden=every["encoder_hidden"], dropout=every["dropout"],
                      cond_channels=every["cond_channels"])
        if every["arch"] != "gated":           # older checkpoints (gated, no such keys) keep their config
            config.update(arch=every["arch"], scales=every["scales"])
        if weight_norm:                        # likewise
            config.update(weight_norm=True)
        if every["encoder"] != "unet":         # likewise
            config.update(encoder=every["encoder"], encoder_blocks=every["encoder_blocks"])
        if per_level:                          # likewise
            config.update(per_level=per_level)
        wn = {"weight_norm": True} if weight_norm else {}
        levels, encoders = nn.ModuleList(), nn.ModuleList()
        for k, (size, st) in enumerate(zip(sizes, settings)):
            k_cond = st["hidden"] if st["cond_channels"] is None else st["cond_channels"]
            try:
                levels.append(make_stage(st["arch"], st["scales"], st["kernel_size"], channels=channels, bits=bits,
                                         hidden=st["hidden"], blocks=st["blocks"], dropout=st["dropout"],
                                         cond_channels=0 if k == 0 else k_cond, dist=dist, nr_mix=st["nr_mix"],
                                         image_size=size, **wn))
            except ValueError as e:       # e.g. a PixelCNN++ level whose size its scales cannot divide
                where = f"per_level[{k}]" if per_level else f"level {k}"
                raise ValueError(f"{where} ({size[0]}x{size[1]}): {e}") from None
            if k == 0:
                continue
            e_hidden = st["hidden"] if st["encoder_hidden"] is None else st["encoder_hidden"]
            if st["encoder"] == "gated-unet":
                maps = st["scales"] if st["arch"] == "pixelcnnpp" else 1
                encoders.append(GatedUNetEncoder(channels, bits, e_hidden, st["encoder_blocks"], k_cond,
                                                 out_scales=maps, weight_norm=weight_norm))
            else:
                encoders.append(UNetEncoder(channels, bits, e_hidden, k_cond, weight_norm=weight_norm))
        self._setup(levels, encoders, sizes, config)
        self.consistent = consistent

    def _setup(self, levels, encoders, sizes, config):
        self.level_sizes = [tuple(s) for s in sizes]
        self.image_size, self.seed_size = self.level_sizes[-1], self.level_sizes[0]
        self.config = config
        self.channels, self.bits = config["channels"], config["bits"]
        self.transform = AvgPool(2).bind(self.channels, self.bits) if len(sizes) > 1 else None
        self.levels, self.encoders = levels, encoders
        self.__dict__["_prior"] = None          # built on first use; not a registered submodule
        self.consistent = bool(config.get("consistent", False))

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)

    # ---------------------------------------------------------------- the recursion
    @property
    def prior(self):
        """The model of ``X_1``: the pyramid of ``levels[:-1]`` (sharing their modules),
        ``levels[0]`` for a 2-level pyramid, ``None`` for a 1-level one."""
        if self.num_levels == 1:
            return None
        if self.num_levels == 2:
            return self.levels[0]
        if self.__dict__.get("_prior") is None:
            view = PyramidPixelCNN.__new__(PyramidPixelCNN)
            nn.Module.__init__(view)
            n = self.num_levels - 1
            config = dict(self.config, image_size=list(self.level_sizes[n - 1]))
            if "per_level" in config:
                config["per_level"] = config["per_level"][:n]
            view._setup(nn.ModuleList(list(self.levels)[:n]), nn.ModuleList(list(self.encoders)[:n - 1]),
                        self.level_sizes[:n], config)
            self.__dict__["_prior"] = view
        view = self.__dict__["_prior"]
        view.consistent = self.consistent         # one setting for the whole pyramid
        return view

    @property
    def conditional(self):
        return self.levels[-1]

    @property
    def encoder(self):
        return self.encoders[-1] if len(self.encoders) else None

    def conditional_part_name(self, size) -> str:
        return f"level{self.num_levels - 1}_{size[0]}x{size[1]}"

    def prior_part_name(self, size) -> str:
        return f"level0_{size[0]}x{size[1]}"

    @property
    def prior_prefix(self) -> str:
        return ""

    def encode(self, view, size):
        return self.cond(self.num_levels - 1, view)

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[X_0 = x, X_1, ...]`` (largest first): each pooled from ``x`` itself, or, when
        ``consistent``, from the level above (``X_{k+1} = pool(X_k)``, so that each level is
        a function of the one above it and truncation is exact)."""
        if self.consistent:
            return super().views(x)
        return build_pyramid(x, self.num_levels)

    def known_views(self, values, mask):
        if self.consistent:
            return super().known_views(values, mask)
        vs = build_pyramid(values, self.num_levels)
        return [(v, pool_mask(mask, 2 ** k)) for k, v in enumerate(vs)]

    # ---------------------------------------------------------------- as before
    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, H, W)`` -> the stage images, **smallest first** (``level_sizes`` order
        for ``image_size`` inputs); ``H``, ``W`` divisible by ``2**(num_levels-1)``."""
        x = check_images(x, "x", channels=self.channels, bits=self.bits)
        return build_pyramid(x, self.num_levels)[::-1]

    def cond(self, k: int, lower: torch.Tensor) -> torch.Tensor:
        """Conditioning map of stage ``k >= 1`` given the stage ``k-1`` image:
        ``(B, C, h, w)`` -> ``(B, cond_channels, 2h, 2w)`` (``level_sizes[k-1]`` ->
        ``level_sizes[k]`` at ``image_size``). Computed once per image when sampling."""
        k = check_int(k, "k", min_value=1, max_value=self.num_levels - 1)
        return self.encoders[k - 1](check_images(lower, "lower", channels=self.channels, bits=self.bits))

    def log_prob_parts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"level{k}_{h}x{w}": log p(stage k | stage k-1)}`` smallest first, each nats ``(B,)``
        (``h x w`` the stage's size, e.g. ``level0_8x8`` for the default model)."""
        return super().log_prob_parts(x)

    def bits_per_dim(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"total", "level0_...", ...}``, each ``(B,)`` bits per dim over ``C*H*W`` of the
        full image ``x``, so the levels add up to ``total`` (computed as their sum)."""
        return super().bits_per_dim(x)
