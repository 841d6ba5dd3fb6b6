"""Shared harness of the reliability tests (issue 6), split by area into
``test_api_properties``, ``test_load_and_data_properties``, ``test_cli_properties``,
``test_checkpoint_corruption``, ``test_numerics``, ``test_reproducibility`` and
``test_memory_and_interrupts``.

* Property-based tests (hypothesis, derandomized) throw random shapes, dtypes, devices
  and values at every public entry point. Every call either succeeds with a valid
  result or raises ``TypeError`` / ``ValueError`` from pixelaux's own checks
  (:func:`attempt`: the error's last frame is in the pixelaux package, so nothing leaks
  out of torch, numpy or Pillow).
* :data:`COUNTS` records the inputs tried and their outcomes; each test module that
  uses :func:`one_thread_and_report` prints its counts when it ends and, with
  ``PIXELAUX_RELIABILITY_COUNTS=path``, merges them into that JSON file.
* Tiny models of every kind (:func:`tiny`), the module fixtures ``models`` and
  ``files`` (checkpoints, broken files, image folders, CIFAR-10 stand-ins, CLI inputs).
"""
import collections
import contextlib
import io
import json
import os
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck
from hypothesis import strategies as st
from PIL import Image

import pixelaux
from helpers import randomize, single_thread
from pixelaux import native
from pixelaux.engines import cached_triton

PKG_DIR = Path(pixelaux.__file__).resolve().parent
CPP = native.available()
TRITON = cached_triton.status(torch.device("cpu"))[0]
BACKENDS = ["torch"] + (["cpp"] if CPP else []) + (["triton"] if TRITON else [])
KINDS = ("gated", "grayscale", "pyramid")

#: inputs tried and outcomes, per property test; printed at the end of the module
COUNTS = collections.Counter()
#: engine agreement at the numeric extremes: (model, setting, backend) -> fraction of pixels equal to naive
AGREEMENT = {}

HYP = dict(deadline=None, derandomize=True, database=None, print_blob=True,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                  HealthCheck.filter_too_much])


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def one_thread_and_report(request):
    """One intra-op thread (tiny models; a busy 2-core machine), restored afterwards;
    the counts of inputs tried in the module are printed when the module is done.
    Modules use it with ``pytestmark = pytest.mark.usefixtures("one_thread_and_report")``."""
    COUNTS.clear()
    AGREEMENT.clear()
    with single_thread():
        yield
    tried = {k: v for k, v in sorted(COUNTS.items()) if "/" not in k}
    if not tried and not AGREEMENT:
        return
    name = request.module.__name__
    lines = [f"pixelaux reliability ({name}): {sum(tried.values())} inputs tried by the property tests"]
    lines += [f"  {k}: {v} tried; " + ", ".join(f"{o.split('/', 1)[1]} {c}" for o, c in sorted(COUNTS.items())
                                                  if o.startswith(k + "/")) for k, v in tried.items()]
    if AGREEMENT:
        low = {k: v for k, v in AGREEMENT.items() if v < 1.0}
        lines.append(f"  numerics: {len(AGREEMENT)} (model, setting, backend) runs valid; "
                     f"pixels equal to the naive engine: {len(AGREEMENT) - len(low)} runs 100%"
                     + (", others " + "; ".join(f"{'/'.join(k)} {v:.1%}" for k, v in sorted(low.items()))
                        if low else ""))
    text = "\n".join(lines)
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print("\n" + text)
    out = os.environ.get("PIXELAUX_RELIABILITY_COUNTS")
    if out:
        path = Path(out)
        merged = json.loads(path.read_text()) if path.is_file() else {}
        merged[name] = {"counts": dict(COUNTS), "agreement": {"/".join(k): v for k, v in AGREEMENT.items()}}
        path.write_text(json.dumps(merged, indent=1))


def tiny(kind: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    if kind == "gated":
        cfg = dict(channels=3, bits=8, hidden=6, blocks=1, nr_mix=2, image_size=(4, 5))
        cfg.update(kw)
        m = pixelaux.GatedPixelCNN(**cfg)
    elif kind == "gated_categorical":
        m = pixelaux.GatedPixelCNN(channels=1, bits=4, dist="categorical", hidden=6, blocks=1,
                                   image_size=(4, 5), **kw)
    elif kind == "gated_cond":
        m = pixelaux.GatedPixelCNN(channels=1, bits=8, hidden=4, blocks=1, nr_mix=2, cond_channels=2,
                                   image_size=(4, 5), **kw)
    elif kind == "grayscale":
        m = pixelaux.GrayscalePixelCNN(hidden=4, blocks=1, nr_mix=2, encoder_blocks=1, image_size=(4, 5), **kw)
    elif kind == "pyramid":
        m = pixelaux.PyramidPixelCNN(hidden=4, blocks=1, nr_mix=2, image_size=4, seed_size=2, **kw)
    else:
        raise AssertionError(kind)
    return randomize(m, std=0.2, seed=seed)


#: the tiny models, files and saved checkpoint of the module: globals filled by fixtures, so
#: that hypothesis does not print them with every falsifying example
MODELS, FILES = {}, {}


@pytest.fixture(scope="module")
def models():
    MODELS.update({k: tiny(k, seed=i) for i, k in
                   enumerate(["gated", "gated_categorical", "gated_cond", "grayscale", "pyramid"])})
    return MODELS


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- property harness

def origin(exc: BaseException) -> str:
    """The file of the frame that raised ``exc``."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename if tb is not None else "?"


def attempt(name: str, fn, allowed=(TypeError, ValueError)):
    """Run ``fn``; return ``(True, result)`` or ``(False, error)`` for a TypeError /
    ValueError (or another of ``allowed``) raised by pixelaux's own code with a message.
    Anything else fails the test."""
    COUNTS[name] += 1
    try:
        result = fn()
    except allowed as e:
        where = origin(e)
        assert Path(where).resolve().is_relative_to(PKG_DIR), \
            f"{type(e).__name__} leaked from {where}, not raised by pixelaux's checks: {e}"
        assert str(e).strip(), f"{type(e).__name__} without a message"
        COUNTS[f"{name}/{type(e).__name__}"] += 1
        return False, e
    COUNTS[f"{name}/ok"] += 1
    return True, result


DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool,
          torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64]


@st.composite
def tensors(draw, shape, lo=-2, hi=300, dtypes=None, meta=True):
    """A tensor of ``shape`` (tuple or strategy) with a random dtype (mostly int64) and
    values in ``[lo, hi]``, NaN / inf sometimes for floats, now and then on the meta device."""
    shape = draw(shape) if isinstance(shape, st.SearchStrategy) else shape
    dtype = draw(dtypes if dtypes is not None else
                 st.one_of(st.just(torch.int64), st.just(torch.int64), st.sampled_from(DTYPES)))
    g = gen(draw(st.integers(0, 2 ** 16)))
    t = torch.randint(lo, hi + 1, shape, generator=g)
    if dtype.is_floating_point or dtype.is_complex:
        t = t.double() + torch.rand(shape, generator=g, dtype=torch.double) * draw(st.sampled_from([0.0, 0.5]))
        special = draw(st.sampled_from([None, None, None, float("nan"), float("inf")]))
        if special is not None and t.numel():
            t.view(-1)[0] = special
    t = (t > 0) if dtype == torch.bool else t.to(dtype)
    if meta and draw(st.integers(0, 19)) == 0:
        t = t.to("meta")
    return t


def image_shapes(channels, lo=0, hi=6):
    """Mostly plausible ``(B, C, H, W)`` shapes, sometimes anything."""
    plausible = st.tuples(st.integers(0, 3), st.sampled_from([channels, channels, 1, 2, 3, 4, 0]),
                          st.integers(lo, hi), st.integers(lo, hi))
    anything = st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple)
    return st.one_of(plausible, plausible, plausible, anything)


OTHER_VALUES = st.sampled_from([None, 0, 1, -1, 2.5, "x", [1, 2], (), b"\x00", object(), torch.tensor(1.0),
                                torch.tensor(3), np.zeros((1, 3, 2, 2), np.int64), torch.zeros(0)])

N_VALUES = st.one_of(st.integers(-2, 3), st.integers(1, 3), st.sampled_from([2.0, "2", None, True, 10 ** 30]))
SIZE_VALUES = st.one_of(
    st.none(), st.integers(-1, 5),
    st.tuples(st.integers(-1, 5), st.integers(-1, 5)),
    st.sampled_from([(2, 4), (4, 2), (4, 4), (2, 6), (3,), (2, 3, 4), "4", 4.0, True, [2, 2], (2.0, 2),
                     (np.int64(2), 4), (10 ** 12, 10 ** 12)]))
TEMPERATURES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3),
    st.sampled_from([1.0, 1e-6, 1e6, 0.5, 2.0, 5e-324, 1.7e308, True, "1", None, np.float32(0.7)]))
GENERATORS = st.one_of(st.none(), st.integers(0, 5).map(gen), st.sampled_from([5, "seed", torch.default_generator]))


def resolved_size(model, size):
    try:
        return pixelaux.checks.check_size(model.image_size if size is None else size)
    except (TypeError, ValueError):
        return (4, 4)


def n_or_1(n):
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 3 else 1


def valid_known(draw, model, n, size):
    h, w = size
    c = model.channels
    img = torch.randint(0, 2 ** model.bits, (n, c, h, w), generator=gen(draw(st.integers(0, 99))))
    mask = torch.rand(n, 1, h, w, generator=gen(draw(st.integers(0, 99)))) < 0.5
    known = img.masked_fill(mask.expand(-1, c, -1, -1), -1)
    return known[0] if draw(st.booleans()) else known


@st.composite
def known_values(draw, model, n, size, wild):
    if not wild:
        return valid_known(draw, model, n, size) if draw(st.integers(0, 2)) == 0 else None
    h, w = size
    c = model.channels
    shape = st.sampled_from([(n, c, h, w), (c, h, w), (n + 1, c, h, w), (n, c, h, w + 1), (h, w), (n, 1, h, w)])
    return draw(st.one_of(tensors(shape, lo=-3, hi=2 ** model.bits), OTHER_VALUES))


@st.composite
def cond_values(draw, name, model, n, size, wild=True):
    """The ``cond`` argument of ``sample`` / ``forward``: valid for the model, or (``wild``)
    anything plausible-looking."""
    h, w = size
    if name == "gated_cond":
        if not wild:
            return torch.randn(n, model.cond_channels, h, w, generator=gen(draw(st.integers(0, 9))))
        shape = st.sampled_from([(n, model.cond_channels, h, w), (n, 1, h, w), (n, model.cond_channels, h, w + 1)])
        return draw(st.one_of(st.none(), tensors(shape, lo=-3, hi=3), OTHER_VALUES))
    if not wild:
        if name == "grayscale" and draw(st.booleans()):
            return torch.randint(0, 2 ** model.gray_bits, (n, 1, h, w), generator=gen(draw(st.integers(0, 9))))
        if name == "pyramid" and draw(st.booleans()) and h % 2 == 0 and w % 2 == 0:
            return torch.randint(0, 256, (n, 3, h // 2, w // 2), generator=gen(draw(st.integers(0, 9))))
        return None
    if name == "grayscale":
        shape = st.sampled_from([(n, 1, h, w), (n, 3, h, w), (n + 1, 1, h, w), (1, h, w)])
        return draw(st.one_of(tensors(shape, lo=-1, hi=2 ** model.gray_bits), OTHER_VALUES))
    if name == "pyramid":
        shape = st.sampled_from([(n, 3, h // 2, w // 2), (n, 3, h, w), (n, 1, h // 2, w // 2),
                                 (n + 1, 3, h // 2, w // 2), (n, 3, h // 4, w // 4)])
        return draw(st.one_of(tensors(shape, lo=-1, hi=256), OTHER_VALUES))
    return draw(st.one_of(tensors(st.just((n, 2, h, w)), lo=-1, hi=1), OTHER_VALUES))


def assert_images(x, n, channels, size, bits):
    assert isinstance(x, torch.Tensor) and x.dtype == torch.int64, x
    assert tuple(x.shape) == (n, channels, *size), (tuple(x.shape), (n, channels, *size))
    assert int(x.min()) >= 0 and int(x.max()) < 2 ** bits, (int(x.min()), int(x.max()))


def wild_args(data, args):
    """Which arguments get wild values this time: mostly none or one (so that each check
    is reached), sometimes two."""
    return data.draw(st.sets(st.sampled_from(args), max_size=2), label="wild arguments")



@pytest.fixture(scope="module")
def files(tmp_path_factory, models):
    """Checkpoints and broken files for ``load``, image folders, CIFAR-10 stand-ins, CLI inputs."""
    d = tmp_path_factory.mktemp("reliability")
    f = {"dir": d}
    for k in ("gated", "grayscale", "pyramid"):
        f[k] = pixelaux.save(models[k], d / f"{k}.safetensors")
    raw = f["gated"].read_bytes()
    (d / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    (d / "random.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 999, dtype=np.uint8).tobytes())
    f["marker"] = d / "pwned"
    (d / "evil.pt").write_bytes(pickle.dumps(Payload(f["marker"])))
    # image folders
    rng = np.random.default_rng(0)
    good = d / "folder_good"
    good.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(good / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (4, 5), dtype=np.uint8)).save(good / "g.jpg", format="JPEG")
    mixed = d / "folder_mixed"
    mixed.mkdir()
    Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(mixed / "a.png")
    Image.fromarray(rng.integers(0, 256, (6, 2, 3), dtype=np.uint8)).save(mixed / "b.png")
    (d / "folder_empty").mkdir()
    corrupt = d / "folder_corrupt"
    corrupt.mkdir()
    (corrupt / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    trunc = d / "folder_truncated"
    trunc.mkdir()
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
    (trunc / "t.png").write_bytes(buf.getvalue()[:60])
    deep = d / "folder_16bit"
    deep.mkdir()
    Image.fromarray(rng.integers(0, 65535, (4, 4)).astype(np.uint16)).save(deep / "d.png")
    f["folders"] = [good, mixed, d / "folder_empty", corrupt, trunc, deep]
    # CIFAR-10 stand-ins: a real-format folder and archive, an evil pickle, a random file
    batch = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 9]}
    cif = d / "cifar" / "cifar-10-batches-py"
    cif.mkdir(parents=True)
    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cif / n).write_bytes(pickle.dumps(batch, protocol=2))
    with tarfile.open(d / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(cif, arcname="cifar-10-batches-py")
    evil = d / "cifar_evil" / "cifar-10-batches-py"
    evil.mkdir(parents=True)
    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (evil / n).write_bytes(pickle.dumps({b"data": Payload(f["marker"])}))
    f["cifar"] = [d / "cifar", d / "cifar-10-python.tar.gz", d / "cifar_evil", d / "random.bin",
                  d / "folder_empty", d / "nope"]
    # CLI inputs
    f["png"] = d / "img.png"
    Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(f["png"])
    f["png_gray"] = d / "gray.png"
    Image.fromarray(rng.integers(0, 256, (6, 3), dtype=np.uint8)).save(f["png_gray"])
    f["png_small"] = d / "small.png"                      # the pyramid's lower level: 2x2
    Image.fromarray(rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)).save(f["png_small"])
    f["png_big"] = d / "big.png"
    Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(f["png_big"])
    f["mask"] = d / "mask.png"
    Image.fromarray(np.tile(np.array([[0], [0], [255], [255]], np.uint8), (1, 5))).save(f["mask"])
    f["txt"] = d / "notes.txt"
    f["txt"].write_text("not an image")
    FILES.update(f)
    return f


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))



def cli(argv):
    """``pixelaux.cli.main(argv)`` -> (rc, stdout, stderr); it must not raise."""
    from pixelaux.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()

