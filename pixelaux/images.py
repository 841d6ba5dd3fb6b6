"""Reading and writing images (Pillow) as integer tensors ``(C, H, W)``.

Files are written in the format their extension names (:data:`FORMATS`: PNG, JPEG,
WebP); any other extension is refused with ``ValueError`` before anything is written.
PNG and WebP (written lossless) keep every pixel value; JPEG is lossy (quality 95).
Nothing here changes an image's size unless asked to (:func:`resize`).
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


#: file extension -> Pillow format written for it
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
_SAVE_OPTIONS = {"PNG": {}, "JPEG": {"quality": 95}, "WEBP": {"lossless": True}}


def image_format(path) -> str:
    """The format :func:`write_image` writes ``path`` in, from its extension (case
    ignored): ``"PNG"``, ``"JPEG"`` or ``"WEBP"``. ``ValueError`` naming the path and the
    extensions that work for any other extension, or for WebP when this Pillow lacks it."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in FORMATS:
        shown = f"extension {ext!r}" if ext else "no extension"
        raise ValueError(f"cannot write {os.fspath(path)!r}: {shown}; the image formats are "
                         f"{', '.join(FORMATS)}")
    fmt = FORMATS[ext]
    if fmt == "WEBP":
        from PIL import features
        if not features.check("webp"):
            raise ValueError(f"cannot write {os.fspath(path)!r}: this Pillow was built without WebP; "
                             "use .png or .jpg")
    return fmt


def write_image(img: torch.Tensor, path, scale: int = 1):
    """Write ``(C, H, W)`` uint8 in the format of ``path``'s extension (:func:`image_format`),
    atomically (a temporary file, then a rename); ``scale`` enlarges with nearest neighbour."""
    Image = _pil()
    path = os.fspath(path)
    fmt = image_format(path)
    arr = img.to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    im = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    try:
        im.save(tmp, format=fmt, **_SAVE_OPTIONS[fmt])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_grid(images: torch.Tensor, path, bits: int = 8, nrow: int | None = None, scale: int = 1):
    """Save integer images ``(N, C, H, W)`` with ``bits`` bits as one grid image (the
    format of ``path``'s extension)."""
    write_image(make_grid(to_uint8(images, bits), nrow), path, scale)


def save_images(images: torch.Tensor, out_dir, bits: int = 8, prefix: str = "sample",
                start: int = 0) -> list[str]:
    """Save each image of ``(N, C, H, W)`` as ``out_dir/{prefix}_{k:04d}.png``, ``k``
    counting from ``start`` (a process's share of a larger set keeps its global indices)."""
    paths = []
    for k, img in enumerate(to_uint8(images, bits), start=start):
        p = os.path.join(os.fspath(out_dir), f"{prefix}_{k:04d}.png")
        write_image(img, p)
        paths.append(p)
    return paths
