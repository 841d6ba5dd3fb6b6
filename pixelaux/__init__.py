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
import importlib

__version__ = "0.1.0"

# Names are imported on first use (PEP 562), so ``import pixelaux.cli`` (the command's
# entry point) does not import torch: the command line catches a Ctrl-C from its start,
# and ``pixelaux --help`` answers at once.
_EXPORTS = {
    "colorize": "applications", "complete": "applications", "upscale": "applications",
    "AuxiliaryPixelCNN": "auxiliary", "save": "checkpoint", "ResNetEncoder": "encoders", "UNetEncoder": "encoders",
    "GatedEncoder": "encoders", "GatedUNetEncoder": "encoders",
    "GatedPixelCNN": "gated_pixelcnn", "GrayscalePixelCNN": "grayscale", "to_gray": "grayscale",
    "PixelCNNpp": "pixelcnnpp", "import_pixel_cnn_pp": "pixelcnnpp_import", "list_models": "pretrained",
    "load": "pretrained", "PyramidPixelCNN": "pyramid", "build_pyramid": "pyramid",
    "bits_per_dim": "sampling", "sample": "sampling",
}
_SUBMODULES = {"applications", "auxiliary", "bench", "checkpoint", "checks", "cli", "data", "distributions",
               "encoders", "engines", "gated_pixelcnn", "grayscale", "images", "inputs", "kernels", "layers",
               "metrics", "native", "pixelcnnpp", "pixelcnnpp_import", "pretrained", "pyramid", "resources",
               "run_config", "sampling", "stages", "training", "transforms", "uniforms", "weight_norm"}


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'pixelaux' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | _SUBMODULES)


def train(*args, **kwargs):
    """``pixelaux.training.train`` (imported on first use)."""
    from .training import train as _train
    return _train(*args, **kwargs)


__all__ = ["GatedPixelCNN", "PixelCNNpp", "GrayscalePixelCNN", "PyramidPixelCNN", "ResNetEncoder", "UNetEncoder",
           "GatedEncoder", "GatedUNetEncoder",
           "distributions", "images", "sample", "bits_per_dim", "colorize", "upscale", "complete", "save", "load",
           "list_models", "train", "to_gray", "build_pyramid", "import_pixel_cnn_pp",
           "AuxiliaryPixelCNN", "transforms"]
