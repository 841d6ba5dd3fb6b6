"""Image data sets for training and evaluation.

Every data set here yields integer images as ``torch.uint8`` tensors ``(C, H, W)``
with values in ``[0, 2**bits)``, the format every pixelaux model's ``log_prob`` takes
once batched to ``(B, C, H, W)``; with ``labels=True`` (CIFAR-10, and a folder with
one sub-folder per class) an item is ``(image, label)`` instead, the label an ``int``
in ``[0, len(classes))``, for class-conditional training.

* :class:`ImageFolder`: PNG / JPEG files under a folder (Pillow).
* :class:`CIFAR10`: the CIFAR-10 *python* archive from a path the user gives;
  never downloads, never runs pickled code.
* :func:`natural_patches`: a small built-in set of natural-image patches cut from
  the colour photographs that scikit-image ships inside its package (offline).
* :func:`from_spec`: one of these from a short text (``"patches"``,
  ``"folder:PATH"``, ``"cifar10:PATH"``), as ``pixelaux train --data`` takes it.

Sizes are ``(H, W)`` and are written ``HxW`` (height first) in messages.
"""
from __future__ import annotations

import functools
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .checks import check_float, check_int, check_path, check_size

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_8BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La"})


def _to_tensor(img: Image.Image, channels: int, bits: int) -> torch.Tensor:
    """Pillow image -> ``uint8`` ``(C, H, W)`` in ``[0, 2**bits)``."""
    img = img.convert("L" if channels == 1 else "RGB")
    a = np.asarray(img, dtype=np.uint8)
    a = a[None] if channels == 1 else a.transpose(2, 0, 1)
    if bits < 8:
        a = a >> (8 - bits)
    return torch.from_numpy(np.array(a, copy=True))


def _resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize to ``(H, W)`` exactly: box (area) filter when shrinking, bicubic otherwise."""
    h, w = size
    if img.size == (w, h):
        return img
    shrink = w <= img.size[0] and h <= img.size[1]
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC
    return img.resize((w, h), resample)


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def folder_classes(root) -> list[str]:
    """The class names of a folder laid out as one sub-folder per class: the sorted names
    of the sub-folders of ``root`` that hold at least one PNG / JPEG file (at any depth);
    ``[]`` when it has none (or ``root`` is not a folder)."""
    root = check_path(root, "root")
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and any(_is_image(p) for p in d.rglob("*")))


class ImageFolder(torch.utils.data.Dataset):
    """All PNG / JPEG files under ``root`` (recursive, sorted by path).

    ``dataset[i]`` -> ``torch.uint8`` ``(channels, H, W)`` in ``[0, 2**bits)``; images
    are converted to RGB (``channels=3``) or gray (``channels=1``; Pillow's ITU-R 601-2
    luma), an alpha channel is dropped, and with ``bits < 8``
    quantised by dropping low bits (``v >> (8 - bits)``).

    ``size`` (int or ``(H, W)``): every image is *resized* (not cropped) to exactly
    that size, the aspect ratio is not kept; Pillow's box (area-average) filter when
    shrinking, bicubic when enlarging. With ``size=None`` the images are used as they
    are and must all have the same size (checked from the file headers here).

    ``labels=True``: ``root`` holds one sub-folder per class (:func:`folder_classes`,
    ``.classes`` their sorted names); ``dataset[i]`` is then ``(image, label)``, ``label``
    the index in ``.classes`` of the sub-folder the file is in (``.labels``, int64).
    An image directly under ``root`` is refused then, naming it.

    Raises ``ValueError`` for a missing or empty folder, for a file Pillow cannot read
    (naming the file; headers are checked here, the pixel data when the item is read)
    and for differing sizes with ``size=None``.
    """

    def __init__(self, root, size=None, channels: int = 3, bits: int = 8, labels: bool = False):
        self.root = check_path(root, "root")
        self.channels = check_int(channels, "channels", min_value=1)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.bits = check_int(bits, "bits", min_value=1, max_value=8)
        self.size = None if size is None else check_size(size, "size")
        if not self.root.is_dir():
            raise ValueError(f"ImageFolder: {str(self.root)!r} is not a directory")
        self.files = sorted(p for p in self.root.rglob("*") if _is_image(p))
        if not self.files:
            raise ValueError(f"ImageFolder: no PNG/JPEG files ({', '.join(IMAGE_EXTENSIONS)}) "
                             f"under {str(self.root)!r}")
        if not isinstance(labels, bool):
            raise TypeError(f"labels must be a bool, got {type(labels).__name__} {labels!r}")
        self.classes, self.labels = None, None
        if labels:
            self.classes = folder_classes(self.root)
            if not self.classes:
                raise ValueError(f"ImageFolder: labels=True needs one sub-folder per class under "
                                 f"{str(self.root)!r}; it has no sub-folder holding images")
            loose = [p for p in self.files if len(p.relative_to(self.root).parts) == 1]
            if loose:
                raise ValueError(f"ImageFolder: labels=True needs every image in a class sub-folder of "
                                 f"{str(self.root)!r}; {str(loose[0])!r} is directly in it")
            index = {name: i for i, name in enumerate(self.classes)}
            self.labels = torch.tensor([index[p.relative_to(self.root).parts[0]] for p in self.files],
                                       dtype=torch.int64)
        sizes = {}
        for p in self.files:
            try:
                with Image.open(p) as img:
                    sizes.setdefault(img.size, p)
                    mode = img.mode
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise ValueError(f"ImageFolder: cannot read image {str(p)!r}: {e}") from e
            if mode not in _8BIT_MODES:        # 16-bit / float: converting would clip
                raise ValueError(f"ImageFolder: {str(p)!r} has Pillow mode {mode!r}; only 8-bit "
                                 f"images are supported ({', '.join(sorted(_8BIT_MODES))})")
        if self.size is None and len(sizes) > 1:
            (s0, p0), (s1, p1) = list(sizes.items())[:2]
            raise ValueError(
                f"ImageFolder: images under {str(self.root)!r} differ in size ({str(p0)!r} is "
                f"{s0[1]}x{s0[0]}, {str(p1)!r} is {s1[1]}x{s1[0]}, H x W); give a size to resize them "
                "all (size=(H, W); on the command line --size H W)")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path = self.files[index]
        try:
            with Image.open(path) as img:
                img.load()
                if self.size is not None:
                    img = _resize(img.convert("L" if self.channels == 1 else "RGB"), self.size)
                x = _to_tensor(img, self.channels, self.bits)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"ImageFolder: cannot read image {str(path)!r}: {e}") from e
        return x if self.labels is None else (x, int(self.labels[index]))

    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the items: ``size``, or (``size=None``) the images' own size."""
        if self.size is not None:
            return self.size
        with Image.open(self.files[0]) as img:
            return img.size[1], img.size[0]


# --------------------------------------------------------------------------- CIFAR-10

class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for the CIFAR-10 batches that can build data and nothing else.

    A pickle is a program: ``pickle.load`` calls whatever callables the file names
    (``os.system`` included), so unpickling a file from the internet with the stock
    unpickler runs arbitrary code. The CIFAR-10 batches hold only a dict of bytes,
    str, int, lists and numpy arrays. Containers and scalars are built by pickle
    opcodes without any lookup; the only callables a pickle can reach go through
    ``find_class``, and here that allows exactly the numpy functions that rebuild a
    plain ``ndarray`` / ``dtype`` / numpy scalar from bytes, the builtin types, and
    ``_codecs.encode(text, "latin1")`` (how Python 3's protocol 2 spells bytes).
    Anything else raises ``pickle.UnpicklingError`` before it is called.
    """

    @staticmethod
    def _allowed() -> dict:
        # Take numpy's reconstruct functions from numpy's own pickling, so the
        # allow-list does not depend on the module path of a numpy version.
        reconstruct = np.zeros(1).__reduce__()[0]
        frombuffer = np.zeros(1).__reduce_ex__(5)[0]
        scalar = np.float64(0).__reduce__()[0]
        allowed = {}
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[(mod, "_reconstruct")] = reconstruct
            allowed[(mod, "scalar")] = scalar
        for mod in ("numpy.core.numeric", "numpy._core.numeric"):
            allowed[(mod, "_frombuffer")] = frombuffer
        allowed[("numpy", "ndarray")] = np.ndarray
        allowed[("numpy", "dtype")] = np.dtype
        for mod in ("builtins", "__builtin__"):
            for name, obj in (("dict", dict), ("list", list), ("bytes", bytes),
                              ("str", str), ("int", int)):
                allowed[(mod, name)] = obj
        allowed[("_codecs", "encode")] = _latin1_encode
        return allowed

    def find_class(self, module, name):
        obj = self._allowed().get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: "
                                         "not allowed in a CIFAR-10 batch")
        return obj


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError("refusing _codecs.encode other than (str, 'latin1')")
    return text.encode("latin1")


def _parse_cifar_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR-10 batch -> images ``uint8 (N, 3, 32, 32)``, labels ``int64 (N,)``."""
    try:
        d = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # any malformed or disallowed pickle
        raise ValueError(f"CIFAR10: {name} is not a valid CIFAR-10 batch: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"CIFAR10: {name} holds a {type(d).__name__}, expected a dict")
    d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"CIFAR10: {name}: 'data' must be a uint8 array (N, 3072), got {got}")
    try:
        labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"CIFAR10: {name}: 'labels' must be a list of ints: {e}") from e
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"CIFAR10: {name}: 'labels' must be {data.shape[0]} ints in [0, 9]")
    return data.reshape(-1, 3, 32, 32), labels


#: CIFAR-10's class names, in label order (its ``batches.meta``)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class CIFAR10(torch.utils.data.Dataset):
    """CIFAR-10 from the *python* version of the archive, read from a local ``path``.

    ``path`` is ``cifar-10-python.tar.gz`` itself, the extracted ``cifar-10-batches-py``
    directory, or a directory holding either. Nothing is downloaded and nothing is
    extracted to disk. ``train=True``: ``data_batch_1..5`` (50000 images), else
    ``test_batch`` (10000).

    ``dataset[i]`` -> ``torch.uint8`` ``(3, 32, 32)``, or with ``labels=True``
    ``(image, label)`` (``label`` an int, its name ``CIFAR10_CLASSES[label]``); ``.images``
    is the whole set as ``uint8 (N, 3, 32, 32)``, ``.labels`` ``int64 (N,)``.
    """

    BASE = "cifar-10-batches-py"
    ARCHIVE = "cifar-10-python.tar.gz"
    classes = CIFAR10_CLASSES

    def __init__(self, path, train: bool = True, labels: bool = False):
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        raws = self._read(check_path(path, "path"), names)
        parts = [_parse_cifar_batch(raw, f"{where}") for where, raw in raws]
        self.images = torch.from_numpy(np.ascontiguousarray(np.concatenate([p[0] for p in parts])))
        self.labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        self.train = train
        if not isinstance(labels, bool):
            raise TypeError(f"labels must be a bool, got {type(labels).__name__} {labels!r}")
        self.with_labels = labels

    @classmethod
    def _read(cls, path: Path, names: list[str]) -> list[tuple[str, bytes]]:
        if path.is_dir():
            for d in (path, path / cls.BASE):
                if all((d / n).is_file() for n in names):
                    return [(str(d / n), (d / n).read_bytes()) for n in names]
            if (path / cls.ARCHIVE).is_file():
                path = path / cls.ARCHIVE
            else:
                raise ValueError(f"CIFAR10: no {cls.BASE}/ batches {names} and no {cls.ARCHIVE} "
                                 f"in {str(path)!r} (download the python version from "
                                 "https://www.cs.toronto.edu/~kriz/cifar.html)")
        if not path.is_file():
            raise ValueError(f"CIFAR10: {str(path)!r} does not exist")
        out = []
        try:
            with tarfile.open(path, "r:*") as tar:
                for n in names:
                    member = f"{cls.BASE}/{n}"
                    try:
                        f = tar.extractfile(member)
                    except KeyError:
                        f = None
                    if f is None:
                        raise ValueError(f"CIFAR10: {str(path)!r} has no file {member!r}")
                    out.append((f"{path}:{member}", f.read()))
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ValueError(f"CIFAR10: cannot read archive {str(path)!r}: {e}") from e
        return out

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        return (self.images[index], int(self.labels[index])) if self.with_labels else self.images[index]


# --------------------------------------------------------------------------- patches

#: Colour photographs shipped inside scikit-image's package directory (no download),
#: split by photograph. The motorcycle stereo pair shows one scene: both in train.
#: Left out: the synthetic colour images (color, chessboard_RGB, phantom), the RGBA
#: cut-outs (horse, logo) and retina (a 1411x1411 fundus image of smooth orange that
#: would make up a third of the patches).
PATCH_PHOTOS = {
    "train": ("astronaut.png", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
              "motorcycle_right.png", "rocket.jpg"),
    "test": ("chelsea.png", "coffee.png"),
}


def _skimage_data_dir() -> Path:
    try:
        import skimage.data
    except ImportError as e:
        raise ImportError("natural_patches needs scikit-image for its bundled photographs: "
                          "pip install scikit-image") from e
    return Path(skimage.data.__file__).parent


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A bundled photograph as ``uint8 (H, W, 3)``, read straight from scikit-image's
    package directory with Pillow (so nothing can trigger its downloader); cached in
    memory. Read-only: callers copy."""
    path = _skimage_data_dir() / name
    if not path.is_file():
        raise ValueError(f"natural_patches: scikit-image's bundled photograph {str(path)!r} is "
                         "missing; reinstall scikit-image")
    with Image.open(path) as img:
        a = np.asarray(img.convert("RGB"), dtype=np.uint8)
    a.setflags(write=False)
    return a


def natural_patches(split: str = "train", size=32, *, stride=None, scales=(1, 2, 4),
                    flip: bool = False, min_std: float = 2.0) -> torch.Tensor:
    """Natural-image patches cut from the colour photographs bundled with scikit-image.

    Returns ``torch.uint8`` ``(N, 3, H, W)`` with ``(H, W) = size``. Deterministic: for
    each photograph of the split (:data:`PATCH_PHOTOS`; train and test never share a
    photograph) and each factor ``s`` in ``scales``, the photograph is shrunk by ``s``
    with an exact box average (``PIL.Image.reduce``), then cut on a grid of step
    ``stride`` (default ``size``: non-overlapping) from the top-left corner. Patches
    whose pixel standard deviation is below ``min_std`` (8-bit units: flat
    black sky, blank walls) are dropped. ``flip=True`` appends the horizontal
    mirror image of every patch (augmentation, meant for the train split).
    """
    if split not in PATCH_PHOTOS:
        raise ValueError(f"split must be one of {sorted(PATCH_PHOTOS)}, got {split!r}")
    h, w = check_size(size, "size")
    sh, sw = (h, w) if stride is None else check_size(stride, "stride")
    if isinstance(scales, int) or not scales:
        raise ValueError(f"scales must be a non-empty sequence of ints >= 1, got {scales!r}")
    scales = tuple(check_int(s, "scales[i]", min_value=1) for s in scales)
    min_std = check_float(min_std, "min_std", min_value=0.0)
    patches = []
    for name in PATCH_PHOTOS[split]:
        photo = _photo(name)
        for s in scales:
            small = np.asarray(Image.fromarray(photo).reduce(s)) if s > 1 else photo
            H, W = small.shape[:2]
            if H < h or W < w:
                continue
            ys, xs = np.arange(0, H - h + 1, sh), np.arange(0, W - w + 1, sw)
            # (ny, nx, h, w, 3) view of the grid of patches, then -> (n, 3, h, w)
            grid = np.lib.stride_tricks.sliding_window_view(small, (h, w), axis=(0, 1))
            grid = grid[ys][:, xs]                                   # (ny, nx, 3, h, w)
            patches.append(grid.reshape(-1, 3, h, w))
    if not patches:
        raise ValueError(f"natural_patches: size {h}x{w} is larger than every photograph")
    x = np.concatenate(patches)
    if min_std > 0:
        x = x[x.reshape(len(x), -1).std(axis=1) >= min_std]
    x = torch.from_numpy(np.ascontiguousarray(x))
    if flip:
        x = torch.cat([x, x.flip(-1)])
    return x


# --------------------------------------------------------------------------- specs

SPEC_FORMS = ("patches", "folder:PATH", "cifar10:PATH")


def check_spec(spec) -> tuple[str, str]:
    """``"patches"`` / ``"folder:PATH"`` / ``"cifar10:PATH"`` -> ``(kind, path)``;
    ``ValueError`` naming the forms for anything else."""
    if not isinstance(spec, str):
        raise TypeError(f"data spec must be a str, one of {SPEC_FORMS}, got {type(spec).__name__}")
    kind, _, path = spec.partition(":")
    if (kind == "patches" and not path) or (kind in ("folder", "cifar10") and path):
        return kind, path
    raise ValueError(f"data spec must be one of {', '.join(SPEC_FORMS)}, got {spec!r}")


def spec_classes(spec: str) -> list[str]:
    """The class names of the data a spec names, in label order: CIFAR-10's ten, or a
    folder's class sub-folders (:func:`folder_classes`). ``ValueError`` for data without
    labels (``patches``, a folder without class sub-folders)."""
    kind, path = check_spec(spec)
    if kind == "cifar10":
        return list(CIFAR10_CLASSES)
    if kind == "folder":
        names = folder_classes(path)
        if names:
            return names
        raise ValueError(f"data {spec} has no labels: no sub-folder of {path} holds images (for classes, put "
                         "each class's images in a sub-folder named after it)")
    raise ValueError(f"data {spec} has no labels (cifar10:PATH has; so has folder:PATH with one sub-folder per "
                     "class)")


def from_spec(spec: str, size=None, labels: bool = False):
    """A data spec -> ``(train, test)``; ``test`` is ``None`` for a folder.

    ``patches``: :func:`natural_patches` (train split with flips, test split) at ``size``
    (default 32). ``folder:PATH``: :class:`ImageFolder` (``size=None``: the images' own
    size). ``cifar10:PATH``: :class:`CIFAR10` train and test; ``size`` must be ``None``
    or 32. ``labels=True``: items are ``(image, label)`` (:func:`spec_classes` names the
    labels); ``ValueError`` for ``patches``, which has none.
    """
    kind, path = check_spec(spec)
    if labels and kind == "patches":
        spec_classes(spec)                                  # the ValueError that says so
    if kind == "patches":
        s = 32 if size is None else size
        return natural_patches("train", s, flip=True), natural_patches("test", s)
    if kind == "cifar10":
        if size is not None and check_size(size, "size") != (32, 32):
            raise ValueError(f"CIFAR-10 images are 32x32; size {size!r} is not supported")
        return CIFAR10(path, train=True, labels=labels), CIFAR10(path, train=False, labels=labels)
    return ImageFolder(path, size=size, labels=labels), None
