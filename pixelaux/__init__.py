"""pixelaux: PixelCNN models with auxiliary variables and a fast, exact sampling engine.

Models: ``GatedPixelCNN``, ``GrayscalePixelCNN``, ``PyramidPixelCNN``.
Sampling and scoring: ``sample``, ``bits_per_dim``.
"""
from . import distributions
from .gated_pixelcnn import GatedPixelCNN
from .sampling import bits_per_dim, sample

__version__ = "0.1.0"
__all__ = ["GatedPixelCNN", "distributions", "sample", "bits_per_dim"]
