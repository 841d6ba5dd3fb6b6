"""One composable auxiliary-variable model (docs/design.md section 1; Kolesnikov & Lampert 2017).

``p(X) = p(X_hat) p(X | X_hat)`` with ``X_hat = f(X)`` deterministic, so

    log p(X) >= log p(X_hat) + log p(X | X_hat)

(a lower bound of the model's marginal, equality for the true distribution) -- unless
the model is **consistent** (``consistent=True``, the default for the gray view and the
average pool): then ``p(X | X_hat)`` is truncated to the images with ``f(X) = X_hat``
(``pixelaux.consistency``), puts no mass elsewhere, and the sum is the model's exact
log-likelihood (docs/design.md section 1.8). An :class:`AuxiliaryPixelCNN` is three things:

* ``transform``: ``f`` (``pixelaux.transforms``: the gray view, a 2x average pool, or a
  user's function with the same contract);
* ``prior``: a model of ``f(X)``: any pixelaux model (a ``GatedPixelCNN``, a
  ``PixelCNNpp``, or another ``AuxiliaryPixelCNN``: recursion);
* ``conditional``: a sampling stage (``GatedPixelCNN`` / ``PixelCNNpp``) for ``X`` whose
  ``cond`` map is ``encoder(f(X))``, a non-causal network computed once per image.

``GrayscalePixelCNN`` (gray view, prior over it, colour given gray) and
``PyramidPixelCNN`` (2x average pool, recursively) are thin constructors of it, and
they combine: ``GrayscalePixelCNN(prior=PyramidPixelCNN(channels=1, bits=4,
dist="categorical"))`` samples the gray view as a pyramid, then colour given gray.

**The chain.** Unrolling the nesting gives a list of *links*, outermost first: link
``i`` is a stage (with its encoder, except the innermost), the image size it works
at, and the name of its part. ``model.views(x)`` gives the images the links see
(``views[0] = x``, ``views[i+1]`` the auxiliary image of link ``i``). Scoring sums
``stage_i.log_prob(views[i], encoder_i(views[i+1]))`` over the links; sampling runs
them innermost first: sample the innermost stage, then for each link outwards compute
its encoder's map once and sample its stage given it. Both are in
:func:`chain` / :meth:`AuxiliaryPixelCNN.log_prob_parts` and ``pixelaux.sampling``.

**Parts.** ``log_prob_parts`` / ``bits_per_dim`` give one entry per link, so they add up
to the total. Names: the model's own part (``"colour"``, ``"level2_32x32"``,
``"conditional"``) and its prior's; a composite prior's parts are prefixed
(``"gray/level0_8x8"``; the pyramid's own levels are flat).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from . import consistency
from .checks import check_images, check_size
from .encoders import GatedEncoder, GatedUNetEncoder, ResNetEncoder, UNetEncoder
from .transforms import CallableTransform, Transform, make_transform

STAGE_KINDS = ("GatedPixelCNN", "PixelCNNpp")


def is_composite(model) -> bool:
    return isinstance(model, AuxiliaryPixelCNN)


def is_stage(model) -> bool:
    return getattr(model, "kind", None) in STAGE_KINDS and not is_composite(model)


def model_spec(model) -> dict:
    """``{"kind", "config"}`` of a pixelaux model (how a nested model is stored)."""
    return {"kind": model.kind, "config": model.config}


def build_model(spec, name: str):
    """A model from ``{"kind", "config"}`` (a nested part of a checkpoint's config), or the
    module itself."""
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, dict) and set(spec) == {"kind", "config"} and isinstance(spec["config"], dict):
        from .checkpoint import from_config
        return from_config(spec["kind"], spec["config"])
    raise TypeError(f"{name} must be a pixelaux model or {{'kind': ..., 'config': {{...}}}}, "
                    f"got {type(spec).__name__} {spec!r}"[:300])


ENCODERS = {"ResNetEncoder": ResNetEncoder, "UNetEncoder": UNetEncoder, "GatedEncoder": GatedEncoder,
            "GatedUNetEncoder": GatedUNetEncoder}
#: encoders that take the output ``size`` (they upsample the auxiliary image)
UPSAMPLING_ENCODERS = (UNetEncoder, GatedUNetEncoder)


def encoder_spec(enc):
    """``{"kind", "config"}`` of a built-in encoder; other modules are returned as they are
    (their config is then not JSON, and ``checkpoint.save`` refuses it). ``weight_norm``
    appears only when it is on, so configs without it stay as they were."""
    wn = {"weight_norm": True} if getattr(enc, "weight_norm", False) else {}
    if type(enc) is ResNetEncoder:
        return {"kind": "ResNetEncoder", "config": dict(
            in_channels=enc.in_channels, in_bits=enc.in_bits, hidden=enc.stem.out_channels,
            blocks=len(enc.blocks), out_channels=enc.out_channels, **wn)}
    if type(enc) is UNetEncoder:
        return {"kind": "UNetEncoder", "config": dict(
            in_channels=enc.in_channels, in_bits=enc.in_bits, hidden=enc.stem.out_channels,
            out_channels=enc.out_channels, **wn)}
    if type(enc) in (GatedEncoder, GatedUNetEncoder):
        cfg = dict(in_channels=enc.in_channels, in_bits=enc.in_bits, hidden=enc.hidden, blocks=enc.num_blocks,
                   out_channels=enc.out_channels, out_scales=enc.out_scales, **wn)
        if type(enc) is GatedUNetEncoder:
            cfg["depth"] = enc.depth
        return {"kind": type(enc).__name__, "config": cfg}
    return enc


def build_encoder(spec):
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, dict) and spec.get("kind") in ENCODERS and isinstance(spec.get("config"), dict):
        return ENCODERS[spec["kind"]](**spec["config"])
    raise TypeError(f"encoder must be a module or {{'kind': one of {sorted(ENCODERS)}, 'config': {{...}}}}, "
                    f"got {type(spec).__name__} {spec!r}"[:300])


@dataclass
class Link:
    """One stage of the unrolled chain: ``stage`` samples ``(channels, bits)`` images of
    ``size``; ``owner.encode(views[i+1], size)`` is its ``cond`` (``owner`` None: the
    innermost, unconditional stage). ``name``: its part in ``log_prob_parts``."""
    stage: nn.Module
    owner: "AuxiliaryPixelCNN | None"
    size: tuple[int, int]
    name: str

    @property
    def channels(self) -> int:
        return self.stage.channels

    @property
    def bits(self) -> int:
        return self.stage.bits

    def cond(self, view):
        return None if self.owner is None else self.owner.encode(view, self.size)


def chain(model, size=None, *, strict: bool = True, prefix: str = "") -> list[Link]:
    """The links of ``model`` at image ``size`` (default ``model.image_size``), outermost
    first. ``strict=False``: sizes that a transform cannot divide are floored (for
    estimates) instead of a ``ValueError``."""
    size = model.image_size if size is None else tuple(size)
    if not is_composite(model):
        return [Link(model, None, size, prefix + "total")]
    if model.prior is None:                                   # a 1-level pyramid: just its stage
        return [Link(model.conditional, None, size, prefix + model.conditional_part_name(size))]
    t = model.transform
    if strict:
        vsize = t.out_size(size)
    else:
        vsize = (max(1, size[0] // t.factor), max(1, size[1] // t.factor))
    links = [Link(model.conditional, model, size, prefix + model.conditional_part_name(size))]
    if is_composite(model.prior):
        links += chain(model.prior, vsize, strict=strict, prefix=prefix + model.prior_prefix)
    else:
        links.append(Link(model.prior, None, vsize, prefix + model.prior_part_name(vsize)))
    return links


def stages(model) -> list:
    """The sampling stages of ``model``, in the order they run (innermost first)."""
    if not is_composite(model):
        return [model]
    if model.prior is None:
        return [model.conditional]
    return stages(model.prior) + [model.conditional]


def total_factor(model) -> int:
    """How many times smaller the innermost image is than the model's input."""
    if not is_composite(model) or model.prior is None:
        return 1
    return model.transform.factor * total_factor(model.prior)


def check_chain_size(model, size, name="size") -> list[Link]:
    """The chain at ``size``, with one ``ValueError`` naming ``name`` when a transform
    cannot divide it."""
    try:
        return chain(model, size)
    except ValueError:
        f = total_factor(model)
        raise ValueError(f"{name} must be divisible by {f} for this {model.kind} (its smallest auxiliary "
                         f"image is {f}x smaller), got {tuple(size)}") from None


class AuxiliaryPixelCNN(nn.Module):
    """``p(X) = p(f(X)) p(X | f(X))``; see the module notes.

    Args:
        transform: ``"gray"``, ``"avgpool"`` (2x), ``{"name": "gray", "gray_bits": 4}``,
            ``{"name": "avgpool", "factor": 2}``, a ``pixelaux.transforms.Transform``,
            or a callable ``f(x) -> x_hat`` (probed: deterministic, one size factor,
            values within the prior's bit depth).
        prior: a pixelaux model of ``f(X)`` (unconditional; its channels and bits those of
            ``f``'s output; its ``image_size`` that of ``f(X)``), or ``{"kind", "config"}``.
        conditional: a ``GatedPixelCNN`` / ``PixelCNNpp`` over ``X`` with ``cond_channels > 0``,
            or ``{"kind", "config"}``.
        encoder: a module ``f(X) -> (B, conditional.cond_channels, H, W)`` (or, for a
            ``PixelCNNpp`` over ``S`` scales, a tuple of ``S`` maps, map ``s`` at ``H / 2**s``:
            ``out_scales = S``), or ``{"kind": "ResNetEncoder" | "UNetEncoder" |
            "GatedEncoder" | "GatedUNetEncoder", "config": {...}}``; default: a
            ``ResNetEncoder`` (4 blocks, ``conditional.hidden`` wide) for a same-size
            transform, else a ``UNetEncoder``, weight-normed when ``conditional`` is.

    ``model(x)`` / ``log_prob(x)``: integer ``(B, C, H, W)`` -> nats ``(B,)``;
    ``log_prob_parts(x)``: one entry per link, nats; ``bits_per_dim(x)``: ``{"total", parts}``
    over ``C*H*W``. ``config`` holds the nested ``{"kind", "config"}`` of each part.
    """

    kind = "AuxiliaryPixelCNN"
    #: names of this model's own part, its prior's part (a stage) and prefix (a composite)
    part_name, prior_name = "conditional", "prior"

    def __init__(self, transform, prior, conditional, encoder=None, consistent=None):
        super().__init__()
        prior = build_model(prior, "prior")
        conditional = build_model(conditional, "conditional")
        if not is_stage(conditional):
            raise ValueError(f"conditional must be a GatedPixelCNN or PixelCNNpp, got {type(conditional).__name__}")
        if not conditional.cond_channels:
            raise ValueError("conditional must take the encoder's map: build it with cond_channels > 0, "
                             "got cond_channels=0")
        t = make_transform(transform)
        self.transform = self._bind(t, conditional.channels, conditional.bits, prior)
        if encoder is None:
            args = (t.channels, t.bits, conditional.hidden)
            wn = bool(conditional.config.get("weight_norm", False))
            encoder = (ResNetEncoder(*args, 4, conditional.cond_channels, weight_norm=wn) if t.factor == 1
                       else UNetEncoder(*args, conditional.cond_channels, weight_norm=wn))
        encoder = build_encoder(encoder)
        self.channels, self.bits = conditional.channels, conditional.bits
        self.image_size = check_size(conditional.image_size, "conditional.image_size")
        self.check_parts(prior, conditional, encoder)
        self.prior, self.encoder, self.conditional = prior, encoder, conditional
        self.config = dict(transform=t.spec(), prior=model_spec(prior), conditional=model_spec(conditional),
                           encoder=encoder_spec(encoder))
        self.consistent = consistency.supports(self.transform) if consistent is None else consistent

    # ---------------------------------------------------------------- consistent decoding
    @property
    def consistent(self) -> bool:
        """Consistent decoding (``pixelaux.consistency``): the conditional stage's values
        truncated to those that produce the auxiliary image, in scoring (the exact
        likelihood), training and sampling. In the config only when on: a config without
        the key (every checkpoint from before it existed) is a model without it."""
        return self.__dict__.get("_consistent", False)

    @consistent.setter
    def consistent(self, value):
        if not isinstance(value, bool):
            raise TypeError(f"consistent must be True or False, got {value!r}")
        if value and self.transform is not None and not consistency.supports(self.transform):
            raise ValueError(f"consistent=True needs the gray-view or average-pool transform (their rounding is "
                             f"known); the {self.transform.describe()} transform is not")
        self.__dict__["_consistent"] = value
        if value:
            self.config["consistent"] = True
        else:
            self.config.pop("consistent", None)

    def window(self, view: torch.Tensor, boxes=None):
        """The ``pixelaux.consistency.Window`` of the conditional stage given the auxiliary
        image ``view`` (``boxes``: known pixels' bounds), or None when not consistent."""
        if not self.consistent or self.transform is None:
            return None
        return consistency.transform_window(self.transform, view, boxes)

    # ---------------------------------------------------------------- checks
    @staticmethod
    def _bind(t: Transform, channels, bits, prior) -> Transform:
        if isinstance(t, CallableTransform):
            return t.bind(channels, bits, expected_bits=getattr(prior, "bits", None))
        return t.bind(channels, bits)

    def check_parts(self, prior, conditional, encoder):
        """``ValueError`` naming the part unless prior, conditional and encoder fit the
        transform and each other."""
        t = self.transform
        if not (is_stage(prior) or is_composite(prior)):
            raise ValueError(f"prior must be a pixelaux model (GatedPixelCNN, PixelCNNpp or an auxiliary-variable "
                             f"model), got {type(prior).__name__}")
        if (prior.channels, prior.bits) != (t.channels, t.bits):
            raise ValueError(f"prior must model the {t.describe()} transform's output: channels={t.channels}, "
                             f"bits={t.bits}; got a {prior.kind} with channels={prior.channels}, bits={prior.bits}")
        if getattr(prior, "cond_channels", 0):
            raise ValueError(f"prior must be unconditional (it models f(X) alone), got a {prior.kind} with "
                             f"cond_channels={prior.cond_channels}")
        expected = t.out_size(self.image_size, "image_size")
        if tuple(prior.image_size) != expected:
            raise ValueError(f"prior.image_size must be {expected} (the {t.describe()} transform's output at "
                             f"image_size={self.image_size}), got {tuple(prior.image_size)}")
        out = getattr(encoder, "out_channels", None)
        if out is not None and out != conditional.cond_channels:
            raise ValueError(f"encoder.out_channels must be conditional.cond_channels={conditional.cond_channels}, "
                             f"got {out}")
        maps = getattr(encoder, "out_scales", 1)
        if maps > 1 and maps != getattr(conditional, "scales", 1):
            raise ValueError(f"encoder.out_scales must be 1 (one map) or the conditional network's scales="
                             f"{getattr(conditional, 'scales', 1)} (a map per scale), got {maps}")
        ins = (getattr(encoder, "in_channels", t.channels), getattr(encoder, "in_bits", t.bits))
        if ins != (t.channels, t.bits):
            raise ValueError(f"encoder must read the transform's output (in_channels={t.channels}, in_bits={t.bits}), "
                             f"got in_channels={ins[0]}, in_bits={ins[1]}")

    # ---------------------------------------------------------------- naming
    def conditional_part_name(self, size) -> str:
        return self.part_name

    def prior_part_name(self, size) -> str:
        return self.prior_name

    @property
    def prior_prefix(self) -> str:
        return self.prior_name + "/"

    # ---------------------------------------------------------------- the chain
    def encode(self, view: torch.Tensor, size) -> torch.Tensor:
        """The conditioning map of ``conditional`` at image ``size`` from the auxiliary
        image ``view``: ``(B, cond_channels, H, W)``, computed once per image."""
        enc = self.encoder
        if isinstance(enc, UPSAMPLING_ENCODERS) and tuple(size) != (2 * view.shape[2], 2 * view.shape[3]):
            out = enc(view, size=tuple(size))
        else:
            out = enc(view)
        first = out[0] if isinstance(out, (tuple, list)) else out
        if tuple(first.shape[2:]) != tuple(size):
            raise ValueError(f"encoder must map the auxiliary image {tuple(view.shape[2:])} to the image size "
                             f"{tuple(size)}, got {tuple(first.shape[2:])}")
        return out

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The images the links see: ``[x, f(x), ...]``, aligned with :func:`chain`."""
        if self.prior is None:
            return [x]
        v = self.transform(x)
        return [x] + (self.prior.views(v) if is_composite(self.prior) else [v])

    def known_views(self, values: torch.Tensor, mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Known pixels (values with unknowns 0, mask ``(B, H, W)``) of every view."""
        if self.prior is None:
            return [(values, mask)]
        v = self.transform.known(values, mask)
        return [(values, mask)] + (self.prior.known_views(*v) if is_composite(self.prior) else [v])

    # ---------------------------------------------------------------- scoring
    def log_prob_parts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One entry per link, innermost first, each nats ``(B,)``; they add up to ``log_prob``."""
        x = check_images(x, "x", channels=self.channels, bits=self.bits)
        views = self.views(x)
        links = chain(self, tuple(x.shape[2:]), strict=False)
        parts = {}
        for i in reversed(range(len(links))):
            link = links[i]
            cond = link.cond(views[i + 1]) if link.owner is not None else None
            window = link.owner.window(views[i + 1]) if link.owner is not None else None
            parts[link.name] = link.stage.log_prob(views[i], cond, window)
        return parts

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the parts in nats, ``(B,)``."""
        return sum(self.log_prob_parts(x).values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)

    def bits_per_dim(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"total", **parts}``, each ``(B,)`` bits per dim over ``C*H*W`` of ``x``; ``total``
        is the sum of the parts."""
        parts = self.log_prob_parts(x)
        dims = x.shape[1] * x.shape[2] * x.shape[3]
        out = {k: -v / (dims * math.log(2.0)) for k, v in parts.items()}
        return {"total": sum(out.values()), **out}
