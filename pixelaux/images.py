"""Reading and writing images (Pillow) as integer tensors ``(C, H, W)``.

Files are written in the format their extension names (:data:`FORMATS`: PNG, JPEG,
WebP); any other extension is refused with ``ValueError`` before anything is written.
PNG and WebP (written lossless) keep every pixel value; JPEG is lossy (quality 95).
Nothing here changes an image's size unless asked to (:func:`resize`).
"""
from __future__ import annotations

import contextlib
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


_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def _describe_mode(im) -> tuple[bool, bool, bool]:
    """``(gray, alpha, sixteen_bit)`` of a Pillow image (palette images by their palette)."""
    mode = im.mode
    if mode in ("P", "PA"):
        pal = im.getpalette() or []
        rgb = np.asarray(pal[:768], dtype=np.int64).reshape(-1, 3) if len(pal) >= 3 else np.zeros((1, 3))
        gray = bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())
        return gray, mode == "PA" or "transparency" in im.info, False
    alpha = mode in ("LA", "La", "RGBA", "RGBa") or "transparency" in im.info
    return mode in _GRAY_MODES, alpha, mode.startswith("I;16") or mode in ("I", "F")


def read_image(path, channels: int = 3, say=None) -> torch.Tensor:
    """An image file -> ``(channels, H, W)`` uint8 tensor (RGB for ``channels=3``, the
    BT.601 luma for ``channels=1``).

    Conversions that change what the file holds are said, never silent: ``say(message)``
    is called once per conversion (default: a ``UserWarning``): a colour image read as
    gray, a gray image read as RGB (R = G = B), an alpha channel dropped, 16-bit values
    scaled to 8 bits, a CMYK/YCbCr/Lab file converted to RGB. ``channels`` must be 1 or 3.
    """
    if isinstance(channels, bool) or not isinstance(channels, int) or channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels!r}")
    if say is None:
        def say(message):
            import warnings
            warnings.warn(message, UserWarning, stacklevel=3)
    Image = _pil()
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder, expected an image file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    name = path
    try:
        with Image.open(path) as im:
            im.load()
            gray, alpha, deep = _describe_mode(im)
            notes = []
            if alpha:
                notes.append(f"{name}: its alpha channel is dropped (transparent pixels keep their colour values)")
            if deep:
                a = np.asarray(im, dtype=np.float64)
                if im.mode == "F" or a.max() > 255:
                    hi = 65535.0 if im.mode != "F" else max(1.0, float(a.max()))
                    notes.append(f"{name}: {'float' if im.mode == 'F' else '16-bit'} values scaled to 8 bits")
                    a = np.clip(np.round(a * (255.0 / hi)), 0, 255)
                im = Image.fromarray(a.astype(np.uint8), "L")
            elif im.mode not in ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa"):
                notes.append(f"{name}: converted from {im.mode} to RGB")
            if channels == 1 and not gray:
                notes.append(f"{name} is in colour: read as gray (its BT.601 luma)")
            if channels == 3 and gray:
                notes.append(f"{name} is gray: read as RGB with R = G = B")
            im = im.convert("RGB" if channels == 3 else "L")
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:  # Pillow raises several types for bad files
        raise ValueError(f"cannot read {path} as an image: {e}") from None
    for note in notes:
        say(note)
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


#: the longest side each format can store (PNG: the spec's 2**31 - 1; memory binds first)
MAX_SIDE = {"PNG": 2 ** 31 - 1, "JPEG": 65535, "WEBP": 16383}


def grid_size(n: int, h: int, w: int, nrow: int | None = None, pad: int = 2, scale: int = 1) -> tuple[int, int]:
    """``(H, W)`` of the image :func:`save_grid` writes for ``n`` images of ``h x w``."""
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    return (rows * (h + pad) + pad) * scale, (nrow * (w + pad) + pad) * scale


def check_grid(path, n: int, h: int, w: int, nrow: int | None = None, scale: int = 1) -> tuple[int, int]:
    """Before any work: ``ValueError`` if the grid of ``n`` images ``h x w`` enlarged by
    ``scale`` is larger than ``path``'s format can store, ``InsufficientMemoryError`` if
    writing it needs more memory than there is (the grid, its enlarged copy and the
    images). Returns the grid's ``(H, W)``."""
    from .resources import check_memory
    fmt = image_format(path)
    gh, gw = grid_size(n, h, w, nrow, scale=scale)
    if max(gh, gw) > MAX_SIDE[fmt]:
        raise ValueError(f"the grid image would be {gh}x{gw} pixels, larger than {fmt} can store "
                         f"(at most {MAX_SIDE[fmt]} per side); use a smaller scale or fewer images")
    small = 3 * (gh // scale) * (gw // scale)
    check_memory(3 * gh * gw + 2 * small + n * 3 * h * w, "cpu", f"writing the {gh}x{gw} grid image {os.fspath(path)}",
                 advice="use a smaller scale or fewer images in the grid")
    return gh, gw


def write_image(img: torch.Tensor, path, scale: int = 1):
    """Write ``(C, H, W)`` uint8 in the format of ``path``'s extension (:func:`image_format`),
    atomically (a temporary file, then a rename); ``scale`` enlarges with nearest neighbour.
    An ``OSError`` names ``path`` (not the temporary file)."""
    Image = _pil()
    path = os.fspath(path)
    fmt = image_format(path)
    arr = img.to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    im = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    d = os.path.dirname(os.path.abspath(path))
    tmp = path + ".tmp"
    try:
        os.makedirs(d, exist_ok=True)
        im.save(tmp, format=fmt, **_SAVE_OPTIONS[fmt])
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            with contextlib.suppress(OSError):
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
