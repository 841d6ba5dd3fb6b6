"""The embedded default models and ``pixelaux.load``.

The weights ship inside the package (``pixelaux/weights/``), trained by the project's
own ``pixelaux train`` on the built-in natural-image patches; nothing downloads.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import checkpoint
from .checks import check_device

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

#: name -> (file in WEIGHTS_DIR, one-line description)
PRETRAINED = {
    "default": ("default.safetensors",
                "grayscale-auxiliary PixelCNN, 32x32 RGB: 4-bit gray prior + colour given gray"),
    "pyramid": ("pyramid.safetensors", "pyramid PixelCNN, 8x8 -> 16x16 -> 32x32 RGB"),
}


def pretrained_path(name: str) -> Path:
    return WEIGHTS_DIR / PRETRAINED[name][0]


def list_models() -> list[dict]:
    """The embedded models: name, description, path, whether present, and the header
    entries written at training time (kind, config, test bits/dim ...)."""
    out = []
    for name, (fname, desc) in PRETRAINED.items():
        path = WEIGHTS_DIR / fname
        entry = {"name": name, "description": desc, "path": str(path), "present": path.exists()}
        if path.exists():
            header = checkpoint.read_header(path)
            entry.update(kind=header["kind"], config=header["config"],
                         **{k: v for k, v in header.items() if k.startswith(("test_", "train_", "step"))})
        out.append(entry)
    return out


def load(name_or_path, map_location="cpu", consistent: bool | None = None):
    """An embedded model by name (``"default"``, ``"pyramid"``; see ``list_models``)
    or a checkpoint file written by ``pixelaux.save`` / ``pixelaux train``.

    Returns the model in ``eval()`` mode on ``map_location``. ``consistent``: None keeps
    the checkpoint's setting (the embedded models predate consistent decoding: off), True
    turns it on (``pixelaux.checkpoint.load``).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model must be a model name or a checkpoint path, got {type(name_or_path).__name__}")
    if map_location is not None:
        map_location = check_device(map_location, "map_location")
    if isinstance(name_or_path, str) and name_or_path in PRETRAINED:
        path = pretrained_path(name_or_path)
        if not path.exists():
            raise ValueError(f"the embedded model {name_or_path!r} is missing from this install ({path})")
        return checkpoint.load(path, map_location, consistent)
    if os.path.exists(name_or_path):
        return checkpoint.load(name_or_path, map_location, consistent)
    raise ValueError(f"unknown model {str(name_or_path)!r}: not one of the embedded models "
                     f"{sorted(PRETRAINED)} and not an existing checkpoint file")
