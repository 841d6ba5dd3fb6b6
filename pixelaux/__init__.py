"""pixelaux: PixelCNN models with auxiliary variables and a fast, exact sampling engine.

Models: ``GatedPixelCNN`` (the causal stack), ``PixelCNNpp`` (PixelCNN++: the same blocks
in a U-net over several resolutions), ``GrayscalePixelCNN`` (4-bit gray prior + colour
given gray), ``PyramidPixelCNN`` (resolution levels, each given the one below), both
thin constructors of ``AuxiliaryPixelCNN`` (transform f, a prior over f(X), X given f(X)),
which nests: ``GrayscalePixelCNN(prior=PyramidPixelCNN(channels=1, bits=4, dist="categorical"))``.
Sampling and scoring: ``sample``, ``bits_per_dim``; tasks: ``colorize``, ``upscale``,
``complete``. Weights: ``save``, ``load`` (a checkpoint file or an embedded model name),
``list_models``. Training: ``train``.
"""
from . import distributions, images, transforms
from .applications import colorize, complete, upscale
from .auxiliary import AuxiliaryPixelCNN
from .checkpoint import save
from .encoders import ResNetEncoder, UNetEncoder
from .gated_pixelcnn import GatedPixelCNN
from .grayscale import GrayscalePixelCNN, to_gray
from .pixelcnnpp import PixelCNNpp
from .pixelcnnpp_import import import_pixel_cnn_pp
from .pretrained import list_models, load
from .pyramid import PyramidPixelCNN, build_pyramid
from .sampling import bits_per_dim, sample

__version__ = "0.1.0"


def train(*args, **kwargs):
    """``pixelaux.training.train`` (imported on first use)."""
    from .training import train as _train
    return _train(*args, **kwargs)


__all__ = ["GatedPixelCNN", "PixelCNNpp", "GrayscalePixelCNN", "PyramidPixelCNN", "ResNetEncoder", "UNetEncoder",
           "distributions", "images", "sample", "bits_per_dim", "colorize", "upscale", "complete", "save", "load",
           "list_models", "train", "to_gray", "build_pyramid", "import_pixel_cnn_pp",
           "AuxiliaryPixelCNN", "transforms"]
