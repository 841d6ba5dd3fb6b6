"""Reading and writing images (Pillow) as integer tensors ``(C, H, W)``.

Sizes are never changed silently: ``fit`` resizes only when asked and reports it.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is a dependency
        raise ImportError("reading and writing images needs Pillow: pip install pillow") from e
    return Image


def read_image(path, channels: int = 3) -> torch.Tensor:
    """An image file -> ``(channels, H, W)`` uint8 tensor (RGB for 3, luma for 1)."""
    Image = _pil()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:  # Pillow raises several types for bad files
        raise ValueError(f"cannot read {path} as an image: {e}") from None
    t = torch.from_numpy(arr.copy())
    return t.permute(2, 0, 1).contiguous() if t.dim() == 3 else t.unsqueeze(0)


def resize(img: torch.Tensor, size: tuple[int, int], nearest: bool = False) -> torch.Tensor:
    """Resize ``(C, H, W)`` integer pixels to ``size = (H, W)`` (Lanczos, or nearest)."""
    Image = _pil()
    c = img.shape[0]
    arr = img.to(torch.uint8).permute(1, 2, 0).numpy()
    im = Image.fromarray(arr[..., 0] if c == 1 else arr, "L" if c == 1 else "RGB")
    im = im.resize((size[1], size[0]), Image.NEAREST if nearest else Image.LANCZOS)
    out = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())
    return out.permute(2, 0, 1).contiguous() if out.dim() == 3 else out.unsqueeze(0)


def to_uint8(images: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer pixels with ``bits`` bits -> uint8 for display (e.g. 4-bit gray x 17)."""
    images = images.long().cpu()
    if bits == 8:
        return images.to(torch.uint8)
    return torch.round(images.float() * (255.0 / (2 ** bits - 1))).to(torch.uint8)


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 -> one ``(3, H', W')`` grid with a white border."""
    images = images.cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for k in range(n):
        r, col = divmod(k, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, y:y + h, x:x + w] = images[k]
    return grid


def write_image(img: torch.Tensor, path, scale: int = 1):
    """Write ``(C, H, W)`` uint8 as PNG (``scale`` enlarges with nearest neighbour)."""
    Image = _pil()
    path = os.fspath(path)
    arr = img.to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    im = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    try:
        im.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_grid(images: torch.Tensor, path, bits: int = 8, nrow: int | None = None, scale: int = 1):
    """Save integer images ``(N, C, H, W)`` with ``bits`` bits as one PNG grid."""
    write_image(make_grid(to_uint8(images, bits), nrow), path, scale)


def save_images(images: torch.Tensor, out_dir, bits: int = 8, prefix: str = "sample") -> list[str]:
    """Save each image of ``(N, C, H, W)`` as ``out_dir/{prefix}_{k:04d}.png``."""
    paths = []
    for k, img in enumerate(to_uint8(images, bits)):
        p = os.path.join(os.fspath(out_dir), f"{prefix}_{k:04d}.png")
        write_image(img, p)
        paths.append(p)
    return paths
