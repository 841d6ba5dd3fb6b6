"""The networks an auxiliary-variable model can use for one of its parts (docs/design.md
section 1): ``arch="gated"`` (``GatedPixelCNN``, resolution-preserving) or
``arch="pixelcnnpp"`` (``PixelCNNpp``, a U-net over ``scales`` resolutions)."""
from __future__ import annotations

from .gated_pixelcnn import GatedPixelCNN
from .pixelcnnpp import PixelCNNpp

ARCHS = ("gated", "pixelcnnpp")


def make_stage(arch: str, scales: int, kernel_size: int, **cfg):
    """One sampling stage: ``GatedPixelCNN(kernel_size=..., **cfg)`` or
    ``PixelCNNpp(scales=..., **cfg)`` (PixelCNN++'s kernels are fixed, ``kernel_size``
    does not apply to it)."""
    if arch == "gated":
        return GatedPixelCNN(kernel_size=kernel_size, **cfg)
    if arch == "pixelcnnpp":
        return PixelCNNpp(scales=scales, **cfg)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
