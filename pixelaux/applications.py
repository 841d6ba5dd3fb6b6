"""Conditional tasks built on ``pixelaux.sample``: colorization, super-resolution,
completion. Each takes a batch of user images and returns ``samples`` draws per image,
``(B, samples, C, H, W)`` int64; draw ``s`` of image ``b`` is image ``b * samples + s``
of one sampling call, so results are reproducible for a given generator.
"""
from __future__ import annotations

import torch

from .checks import check_images, check_int
from .sampling import sample


def _repeat(x: torch.Tensor, samples: int) -> torch.Tensor:
    return x.repeat_interleave(samples, dim=0)


def _split(x: torch.Tensor, b: int, samples: int) -> torch.Tensor:
    return x.reshape(b, samples, *x.shape[1:])


def gray_view(model, images: torch.Tensor) -> torch.Tensor:
    """The model's gray view of 8-bit images: RGB ``(B, 3, H, W)`` through BT.601 luma,
    or an 8-bit luma image ``(B, 1, H, W)`` directly."""
    from .grayscale import to_gray
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be (B, 1, H, W) luma or (B, 3, H, W) RGB, got {got}")
    x = check_images(images, "images", channels=images.shape[1], bits=model.bits)
    if x.shape[1] == 3:
        return model.gray(x)
    return x >> (model.bits - model.gray_bits)


def colorize(model, images: torch.Tensor, *, samples: int = 4, **sample_kwargs) -> torch.Tensor:
    """Colourings of gray (or colour, taken as gray) photos with a ``GrayscalePixelCNN``:
    the gray view is fixed, colour is sampled given it. ``images``: ``(B, 1|3, H, W)``."""
    if getattr(model, "kind", None) != "GrayscalePixelCNN":
        raise TypeError(f"colorize needs a GrayscalePixelCNN, got {type(model).__name__}")
    samples = check_int(samples, "samples", min_value=1)
    gray = gray_view(model, images)
    b, _, h, w = gray.shape
    out = sample(model, b * samples, size=(h, w), cond=_repeat(gray, samples), **sample_kwargs)
    return _split(out, b, samples)


def upscale(model, images: torch.Tensor, *, samples: int = 4, **sample_kwargs) -> torch.Tensor:
    """Super-resolution with a ``PyramidPixelCNN``: ``images`` ``(B, C, h, w)`` is taken
    as a pyramid level and every larger level is sampled, up to the model's top size
    relative to ``h`` (``h * 2**k``)."""
    if getattr(model, "kind", None) != "PyramidPixelCNN":
        raise TypeError(f"upscale needs a PyramidPixelCNN, got {type(model).__name__}")
    samples = check_int(samples, "samples", min_value=1)
    x = check_images(images, "images", channels=model.channels, bits=model.bits)
    b, _, h, w = x.shape
    sizes = [tuple(s) for s in model.level_sizes]
    top = sizes[-1]
    if (h, w) not in sizes[:-1]:
        raise ValueError(f"images must be one of the pyramid's lower level sizes {sizes[:-1]}, got {(h, w)}")
    out = sample(model, b * samples, size=top, cond=_repeat(x, samples), **sample_kwargs)
    return _split(out, b, samples)


def complete(model, images: torch.Tensor, mask: torch.Tensor, *, samples: int = 4, **sample_kwargs):
    """Completions of ``images`` ``(B, C, H, W)``: pixels where ``mask`` (``(B, H, W)`` or
    ``(H, W)`` bool, True = unknown) is set are sampled, the others kept."""
    samples = check_int(samples, "samples", min_value=1)
    x = check_images(images, "images", channels=model.channels, bits=model.bits)
    b, c, h, w = x.shape
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool torch.Tensor (True = to complete), got "
                        f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    if mask.dim() == 2:
        mask = mask.unsqueeze(0).expand(b, -1, -1)
    if tuple(mask.shape) != (b, h, w):
        raise ValueError(f"mask must have shape {(h, w)} or {(b, h, w)}, got {tuple(mask.shape)}")
    known = x.clone()
    known.masked_fill_(mask.unsqueeze(1).expand(-1, c, -1, -1), -1)
    out = sample(model, b * samples, size=(h, w), known=_repeat(known, samples), **sample_kwargs)
    return _split(out, b, samples)
