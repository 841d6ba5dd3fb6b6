"""pixelaux: PixelCNN models with auxiliary variables and a fast, exact sampling engine."""
from .gated_pixelcnn import GatedPixelCNN
from . import distributions

__version__ = "0.1.0"
