"""Conditional tasks built on ``pixelaux.sample``: colorization, super-resolution,
completion. Each takes a batch of user images and returns ``samples`` draws per image,
``(B, samples, C, H, W)`` int64; draw ``s`` of image ``b`` is image ``b * samples + s``
of one sampling call, so results are reproducible for a given generator.

They work through any nesting of auxiliary-variable models: ``colorize`` needs a model
whose own transform is the gray view (whatever its prior), ``upscale`` any model with
a smaller auxiliary image in its chain (a pyramid; a grayscale model with a pyramid
prior upscales a small gray image to a colour one), ``complete`` any model.
"""
from __future__ import annotations

import torch

from .auxiliary import chain, is_composite
from .checks import check_images, check_int
from .sampling import sample
from .transforms import GrayView


def _repeat(x: torch.Tensor, samples: int) -> torch.Tensor:
    return x.repeat_interleave(samples, dim=0)


def _split(x: torch.Tensor, b: int, samples: int) -> torch.Tensor:
    return x.reshape(b, samples, *x.shape[1:])


def gray_view(model, images: torch.Tensor) -> torch.Tensor:
    """The model's gray view of 8-bit images: RGB ``(B, 3, H, W)`` through BT.601 luma,
    or an 8-bit luma image ``(B, 1, H, W)`` directly."""
    from .transforms import to_gray
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be (B, 1, H, W) luma or (B, 3, H, W) RGB, got {got}")
    x = check_images(images, "images", channels=images.shape[1], bits=model.bits)
    gray_bits = model.transform.gray_bits
    if x.shape[1] == 3:
        return to_gray(x, model.bits, gray_bits)
    return x >> (model.bits - gray_bits)


def colorize(model, images: torch.Tensor, *, samples: int = 4, **sample_kwargs) -> torch.Tensor:
    """Colourings of gray (or colour, taken as gray) photos with a ``GrayscalePixelCNN``:
    the gray view is fixed, colour is sampled given it. ``images``: ``(B, 1|3, H, W)``."""
    if not (is_composite(model) and isinstance(model.transform, GrayView)):
        raise TypeError(f"colorize needs a GrayscalePixelCNN (a model whose auxiliary image is the gray view), "
                        f"got {type(model).__name__}")
    samples = check_int(samples, "samples", min_value=1)
    gray = gray_view(model, images)
    b, _, h, w = gray.shape
    out = sample(model, b * samples, size=(h, w), cond=_repeat(gray, samples), **sample_kwargs)
    return _split(out, b, samples)


def upscale(model, images: torch.Tensor, *, samples: int = 4, **sample_kwargs) -> torch.Tensor:
    """Super-resolution with a ``PyramidPixelCNN`` (or any model with smaller auxiliary
    images in its chain): ``images`` ``(B, C, h, w)`` is taken as a pyramid level and every
    larger level is sampled, up to the model's ``image_size``. For a grayscale model with
    a pyramid prior, ``images`` is a small gray image ``(B, 1, h, w)`` in
    ``[0, 2**gray_bits)``, and the result is in colour."""
    links = chain(model) if is_composite(model) else []
    lower = [(link.channels, tuple(link.size)) for link in links[1:]
             if tuple(link.size) != tuple(model.image_size)]
    if not lower:
        raise TypeError(f"upscale needs a PyramidPixelCNN (a model with smaller auxiliary images), "
                        f"got {type(model).__name__}")
    samples = check_int(samples, "samples", min_value=1)
    channels = sorted({c for c, _ in lower})
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in channels:
        if len(channels) == 1:
            check_images(images, "images", channels=channels[0], bits=links[1].bits)
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must have shape (B, C, h, w) with C in {channels}, got {got}")
    c = images.shape[1]
    bits = next(link.bits for link in links[1:] if link.channels == c)
    x = check_images(images, "images", channels=c, bits=bits)
    b, _, h, w = x.shape
    sizes = [s for ch, s in lower if ch == c]
    if (h, w) not in sizes:
        raise ValueError(f"images must be one of the pyramid's lower level sizes {sizes}, got {(h, w)}")
    out = sample(model, b * samples, size=tuple(model.image_size), cond=_repeat(x, samples), **sample_kwargs)
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
    if tuple(mask.shape) not in ((h, w), (b, h, w)):
        raise ValueError(f"mask must have shape {(h, w)} or {(b, h, w)}, got {tuple(mask.shape)}")
    if mask.dim() == 2:
        mask = mask.unsqueeze(0).expand(b, -1, -1)
    known = x.clone()
    known.masked_fill_(mask.unsqueeze(1).expand(-1, c, -1, -1), -1)
    out = sample(model, b * samples, size=(h, w), known=_repeat(known, samples), **sample_kwargs)
    return _split(out, b, samples)
