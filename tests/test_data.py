"""pixelaux.data: ImageFolder, the CIFAR-10 reader (on a synthetic archive) and the
built-in natural-image patches."""
import io
import pickle
import socket
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from pixelaux import data
from pixelaux.data import CIFAR10, PATCH_PHOTOS, ImageFolder, natural_patches


# --------------------------------------------------------------------------- ImageFolder

def _write(path, array, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {"b.png": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
            "a/c.PNG": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
            "a/d.jpg": np.full((6, 5, 3), 200, np.uint8)}
    for name, a in imgs.items():
        _write(tmp_path / name, a, "JPEG" if name.endswith("jpg") else "PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path, imgs


def test_image_folder_reads_sorted_recursive_uint8(folder):
    root, imgs = folder
    ds = ImageFolder(root)
    assert [p.relative_to(root).as_posix() for p in ds.files] == ["a/c.PNG", "a/d.jpg", "b.png"]
    assert len(ds) == 3
    for i, name in enumerate(["a/c.PNG", "a/d.jpg", "b.png"]):
        x = ds[i]
        assert x.dtype == torch.uint8 and x.shape == (3, 6, 5)
        if name.endswith("png") or name.endswith("PNG"):   # lossless: exact pixels
            assert torch.equal(x, torch.from_numpy(imgs[name]).permute(2, 0, 1))
        else:                                              # JPEG of a flat image: close
            assert (x.int() - 200).abs().max() <= 2


def test_image_folder_gray_bits_and_resize(folder):
    root, imgs = folder
    g = ImageFolder(root, channels=1, bits=4)[2]
    assert g.shape == (1, 6, 5) and g.dtype == torch.uint8 and int(g.max()) < 16
    full = np.asarray(Image.fromarray(imgs["b.png"]).convert("L"))
    assert torch.equal(g[0], torch.from_numpy(full >> 4))
    r = ImageFolder(root, size=(4, 3))
    assert all(r[i].shape == (3, 4, 3) for i in range(len(r)))
    assert ImageFolder(root, size=9)[0].shape == (3, 9, 9)      # enlarging works too


def test_image_folder_errors(tmp_path, folder):
    root, _ = folder
    with pytest.raises(ValueError, match="not a directory"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no PNG/JPEG"):
        ImageFolder(tmp_path / "empty")
    _write(root / "big.png", np.zeros((7, 7, 3), np.uint8))
    with pytest.raises(ValueError, match="differ in size"):
        ImageFolder(root)
    assert len(ImageFolder(root, size=6)) == 4                  # fine once resized
    with pytest.raises(ValueError, match="channels"):
        ImageFolder(root, size=6, channels=2)


def test_image_folder_unreadable_files_named(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"this is no png")
    with pytest.raises(ValueError, match="x.png"):
        ImageFolder(bad)
    trunc = tmp_path / "trunc"
    _write(trunc / "y.png", np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    raw = (trunc / "y.png").read_bytes()
    (trunc / "y.png").write_bytes(raw[: len(raw) // 2])          # header fine, data cut
    ds = ImageFolder(trunc)
    with pytest.raises(ValueError, match="y.png"):
        ds[0]
    deep = tmp_path / "deep"
    deep.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(deep / "z.png")   # 16-bit gray
    with pytest.raises(ValueError, match="z.png.*8-bit"):
        ImageFolder(deep)


# --------------------------------------------------------------------------- CIFAR-10

def _batch(n, seed, protocol=2):
    rng = np.random.default_rng(seed)
    d = {b"batch_label": b"synthetic batch", b"labels": [int(v) for v in rng.integers(0, 10, n)],
         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
         b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    return d, pickle.dumps(d, protocol=protocol)


def _make_archive(tmp_path, protocol=2, bad_member=None):
    """cifar-10-python.tar.gz and the extracted cifar-10-batches-py/ with tiny batches."""
    batches = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        d, raw = _batch(3 + i, i, protocol)
        batches[name] = (d, bad_member if name == "test_batch" and bad_member else raw)
    ext = tmp_path / "extracted" / "cifar-10-batches-py"
    ext.mkdir(parents=True)
    tgz = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, (_, raw) in batches.items():
            (ext / name).write_bytes(raw)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return tgz, ext, {k: v[0] for k, v in batches.items()}


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_reads_archive_and_folder(tmp_path, protocol):
    tgz, ext, batches = _make_archive(tmp_path, protocol)
    want_train = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    want_labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    for path in (tgz, tmp_path, ext, ext.parent):
        tr = CIFAR10(path, train=True)
        assert len(tr) == len(want_train) == 3 + 4 + 5 + 6 + 7
        assert tr.images.dtype == torch.uint8 and tr.images.shape == (len(tr), 3, 32, 32)
        assert torch.equal(tr.images, torch.from_numpy(want_train).reshape(-1, 3, 32, 32))
        assert tr.labels.tolist() == want_labels
        assert torch.equal(tr[4], tr.images[4])
        te = CIFAR10(path, train=False)
        assert len(te) == 8
        assert torch.equal(te.images.reshape(8, -1), torch.from_numpy(batches["test_batch"][b"data"]))


class _Payload:
    """Unpickling this would run ``exec`` and create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_cifar10_refuses_code_in_pickles(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Payload(marker), b"labels": []}, protocol=2)
    tgz, ext, _ = _make_archive(tmp_path, bad_member=evil)
    for path in (tgz, ext):
        with pytest.raises(ValueError, match="not a valid CIFAR-10 batch"):
            CIFAR10(path, train=False)
    assert not marker.exists()
    # the train batches of the same archive are fine
    assert len(CIFAR10(tgz, train=True)) == 25


def test_cifar10_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        CIFAR10(tmp_path / "nope.tar.gz")
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz"):
        CIFAR10(tmp_path)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read archive"):
        CIFAR10(tmp_path)
    wrong = tmp_path / "w" / "cifar-10-batches-py"
    wrong.mkdir(parents=True)
    (wrong / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8),
                                                     b"labels": [0, 1]}, protocol=2))
    with pytest.raises(ValueError, match="3072"):
        CIFAR10(wrong, train=False)


# --------------------------------------------------------------------------- natural patches

def test_patch_photos_split_by_photograph():
    assert set(PATCH_PHOTOS["train"]).isdisjoint(PATCH_PHOTOS["test"])
    assert len(PATCH_PHOTOS["test"]) >= 2 and len(PATCH_PHOTOS["train"]) >= 4


def test_natural_patches_shapes_and_determinism():
    for split, size in (("train", 16), ("test", 8), ("test", (8, 12))):
        x = natural_patches(split, size)
        h, w = (size, size) if isinstance(size, int) else size
        assert x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1:] == (3, h, w)
        assert len(x) > 100
        assert torch.equal(x, natural_patches(split, size))       # deterministic
    x = natural_patches("test", 16)
    assert x.float().std() > 20                                   # real image content
    y = natural_patches("test", 16, min_std=30.0)                 # flat patches dropped
    stds = y.reshape(len(y), -1).float().std(dim=1, correction=0)
    assert 0 < len(y) < len(x) and stds.min() >= 30.0


def test_natural_patches_flip_stride_scales():
    x = natural_patches("test", 16, scales=(2,))
    f = natural_patches("test", 16, scales=(2,), flip=True)
    assert len(f) == 2 * len(x)
    assert torch.equal(f[: len(x)], x) and torch.equal(f[len(x):], x.flip(-1))
    assert len(natural_patches("test", 16, scales=(2,), stride=8)) > 3 * len(x)
    assert len(natural_patches("test", 16, scales=(1, 2))) > len(x)
    with pytest.raises(ValueError, match="split"):
        natural_patches("valid")
    with pytest.raises(ValueError):
        natural_patches("test", 16, scales=())


def test_natural_patches_train_test_disjoint():
    tr = natural_patches("train", 16, scales=(1,))
    te = natural_patches("test", 16, scales=(1,))
    seen = {bytes(p.numpy()) for p in tr}
    assert not any(bytes(p.numpy()) in seen for p in te)


def test_natural_patches_never_touch_network_or_skimage_fetcher(monkeypatch):
    import skimage.data._fetchers as fetchers

    def refuse(*a, **k):
        raise AssertionError("network / skimage fetcher used")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(fetchers, "_fetch", refuse)
    data._photo.cache_clear()
    for split in ("train", "test"):
        assert len(natural_patches(split, 32, scales=(4,))) > 0


def test_natural_patches_without_skimage(monkeypatch):
    data._photo.cache_clear()
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(ImportError, match="pip install scikit-image"):
        natural_patches("test", 8)
    data._photo.cache_clear()
