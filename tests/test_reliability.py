"""Reliability (issue 6): bad input at every public entry point, numerics at the extremes,
reproducibility, memory refusal, Ctrl-C, corrupted checkpoints.

* Property-based (hypothesis, derandomized): random shapes, dtypes, devices and values
  thrown at ``pixelaux.sample``, ``bits_per_dim``, the model constructors,
  ``forward`` / ``log_prob``, ``load``, the data sets and the CLI. Every call either
  succeeds with a valid result (right shape, dtype, range, finite) or raises
  ``TypeError`` / ``ValueError`` from pixelaux's own checks (the error's last frame is
  in the pixelaux package: nothing leaks out of torch, numpy or Pillow); the CLI
  never raises and reports every error as one line on stderr.
* Random byte corruption / truncation of real checkpoint and training-state files:
  always ``ValueError`` or exactly the saved content.
* Numerics: temperatures 1e-6 .. 1e6, saturated logits and weights x1000 give in-range
  pixels on every backend and the naive engine, for every model kind.
* Reproducibility: same seed -> same images across processes, engines/backends,
  batch sizes and chunked calls.
* Memory: an oversized batch is refused up front (``InsufficientMemoryError``);
  Ctrl-C in the CLI leaves no partial file and exits 130 with one line.

The number of inputs tried is printed at the end of the module (``-s`` or not) and,
with ``PIXELAUX_RELIABILITY_COUNTS=path``, written there as JSON.
"""
import collections
import contextlib
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import pixelaux
from helpers import randomize, single_thread
from pixelaux import checkpoint as ck
from pixelaux import native, resources
from pixelaux.data import CIFAR10, ImageFolder, natural_patches
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

@pytest.fixture(autouse=True, scope="module")
def _one_thread_and_report(request):
    """One intra-op thread (tiny models; a busy 2-core machine), restored afterwards;
    the counts of inputs tried are printed when the module is done."""
    with single_thread():
        yield
    tried = {k: v for k, v in sorted(COUNTS.items()) if "/" not in k}
    lines = [f"pixelaux reliability: {sum(tried.values())} inputs tried by the property tests"]
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
        Path(out).write_text(json.dumps({"counts": dict(COUNTS),
                                         "agreement": {"/".join(k): v for k, v in AGREEMENT.items()}},
                                        indent=1))


def _tiny(kind: str, seed: int = 0, **kw):
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
MODELS, FILES, SAVED = {}, {}, {}


@pytest.fixture(scope="module")
def models():
    MODELS.update({k: _tiny(k, seed=i) for i, k in
                   enumerate(["gated", "gated_categorical", "gated_cond", "grayscale", "pyramid"])})
    return MODELS


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- property harness

def _origin(exc: BaseException) -> str:
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
        where = _origin(e)
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


def _resolved_size(model, size):
    try:
        return pixelaux.checks.check_size(model.image_size if size is None else size)
    except (TypeError, ValueError):
        return (4, 4)


def _n_or_1(n):
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 3 else 1


def _valid_known(draw, model, n, size):
    h, w = size
    c = model.channels
    img = torch.randint(0, 2 ** model.bits, (n, c, h, w), generator=gen(draw(st.integers(0, 99))))
    mask = torch.rand(n, 1, h, w, generator=gen(draw(st.integers(0, 99)))) < 0.5
    known = img.masked_fill(mask.expand(-1, c, -1, -1), -1)
    return known[0] if draw(st.booleans()) else known


@st.composite
def known_values(draw, model, n, size, wild):
    if not wild:
        return _valid_known(draw, model, n, size) if draw(st.integers(0, 2)) == 0 else None
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


def _mistakes(data, args):
    """Which arguments get wild values this time: mostly none or one (so that each check
    is reached), sometimes two."""
    return data.draw(st.sets(st.sampled_from(args), max_size=2), label="wild arguments")


# --------------------------------------------------------------------------- property tests

SAMPLE_ARGS = ("n", "size", "engine", "backend", "generator", "temperature", "cond", "known")


@pytest.mark.usefixtures("models")
@settings(max_examples=200, **HYP)
@given(data=st.data())
def test_property_sample(data):
    models = MODELS
    name = data.draw(st.sampled_from(sorted(models)), label="model")
    m = models[name]
    wild = _mistakes(data, SAMPLE_ARGS)
    draw = lambda arg, valid, bad: data.draw(bad if arg in wild else valid, label=arg)  # noqa: E731
    n = draw("n", st.integers(1, 3), N_VALUES)
    even = st.sampled_from([2, 4, (2, 4), (4, 2), (4, 4), None])
    size = draw("size", even if name == "pyramid" else st.one_of(
        st.none(), st.integers(1, 5), st.tuples(st.integers(1, 5), st.integers(1, 5))), SIZE_VALUES)
    hw = _resolved_size(m, size)
    hw_t = hw if max(hw) <= 8 else (4, 4)          # for the cond / known tensors drawn below
    n_eff = _n_or_1(n)
    kwargs = dict(
        size=size,
        engine=draw("engine", st.sampled_from(["cached", "cached", "naive"]),
                    st.sampled_from(["cached", "naive", "fast", None, 1, "CACHED"])),
        backend=draw("backend", st.sampled_from(["auto", "torch"] + (["cpp"] if CPP else [])),
                     st.sampled_from(["auto", "torch", "cpp", "gpu", None, 0])),
        generator=draw("generator", st.one_of(st.none(), st.integers(0, 5).map(gen)), GENERATORS),
        temperature=draw("temperature", st.one_of(st.sampled_from([1.0, 1, 0.5, 2.0, 1e-6, 1e6]),
                                                  st.floats(1e-6, 1e6)), TEMPERATURES),
        cond=data.draw(cond_values(name, m, n_eff, hw_t, wild="cond" in wild), label="cond"),
        known=data.draw(known_values(m, n_eff, hw_t, wild="known" in wild), label="known"),
        progress=False)
    ok, x = attempt("sample", lambda: pixelaux.sample(m, n, **kwargs),
                    allowed=(TypeError, ValueError, resources.InsufficientMemoryError))
    if ok:
        assert_images(x, n, m.channels, hw, m.bits)
        known = kwargs["known"]
        if known is not None:
            known = known.expand(n, -1, -1, -1) if known.dim() == 3 else known
            keep = known >= 0
            assert torch.equal(x[keep], known[keep].long()), "known pixels were not kept"


def _valid_images(data, name, m):
    b = data.draw(st.integers(1, 3), label="B")
    if name == "pyramid":
        h, w = data.draw(st.sampled_from([(2, 2), (4, 4), (2, 6), (6, 4)]), label="H, W")
    else:
        h, w = data.draw(st.integers(1, 5), label="H"), data.draw(st.integers(1, 5), label="W")
    dtype = data.draw(st.sampled_from([torch.int64, torch.uint8, torch.int32, torch.int16]), label="dtype")
    top = min(2 ** m.bits, 256 if dtype == torch.uint8 else 2 ** m.bits)
    return torch.randint(0, top, (b, m.channels, h, w), generator=gen(data.draw(st.integers(0, 99)))).to(dtype)


def _wild_images(data, m):
    return data.draw(st.one_of(tensors(image_shapes(m.channels), lo=-1, hi=2 ** m.bits), OTHER_VALUES),
                     label="images (wild)")


@pytest.mark.usefixtures("models")
@settings(max_examples=100, **HYP)
@given(data=st.data())
def test_property_bits_per_dim(data):
    models = MODELS
    name = data.draw(st.sampled_from(sorted(models)), label="model")
    m = models[name]
    wild = _mistakes(data, ("images", "cond", "parts", "batch_size"))
    images = _wild_images(data, m) if "images" in wild else _valid_images(data, name, m)
    b = images.shape[0] if isinstance(images, torch.Tensor) and images.dim() == 4 else 1
    hw = tuple(images.shape[2:]) if isinstance(images, torch.Tensor) and images.dim() == 4 else (4, 4)
    if name == "gated_cond":
        cond = data.draw(cond_values(name, m, b, hw, wild="cond" in wild), label="cond")
    else:
        cond = data.draw(st.one_of(OTHER_VALUES, tensors(st.just((b, 1, *hw))))
                         if "cond" in wild else st.none(), label="cond")
    parts = data.draw(st.sampled_from([False, True, 1, None, "yes"] if "parts" in wild else [False, True]),
                      label="parts")
    batch_size = data.draw(st.sampled_from([0, -1, 2.0, "2", None, True] if "batch_size" in wild else [64, 1, 2]),
                           label="batch_size")
    ok, out = attempt("bits_per_dim", lambda: pixelaux.bits_per_dim(m, images, cond, parts=parts,
                                                                     batch_size=batch_size))
    if ok:
        total = out["total"] if isinstance(out, dict) else out
        assert isinstance(out, dict) == bool(parts)
        assert isinstance(total, torch.Tensor) and total.shape == (images.shape[0],)
        assert total.dtype == torch.float32 and torch.isfinite(total).all() and (total > -1e-3).all()
        if isinstance(out, dict):
            assert all(torch.isfinite(v).all() for v in out.values())


#: constructor argument -> (valid values, wrong values); each example draws a few arguments,
#: mostly from the valid values, at most two from the wrong ones
CTOR_POOLS = {
    "channels": ([1, 3], [2, 0, -1, 1.0, "3", None, True]),
    "bits": ([1, 4, 8, 16], [0, 17, 8.0, "8", None]),
    "hidden": ([1, 2, 3], [0, -3, 4.5, "4", None]),
    "blocks": ([0, 1, 2], [-1, 1.0, "1", None]),
    "kernel_size": ([1, 3, 5], [2, 0, -1, 3.0, "3"]),
    "dropout": ([0.0, 0.5, 1.0, 1, 0], [-0.1, 1.5, float("nan"), float("inf"), "0.1", None, True]),
    "nr_mix": ([1, 2, 3], [0, -1, 2.0, "2", None]),
    "image_size": ([1, 3, (2, 3), [2, 3], (np.int64(2), 3)], [(3,), (2, 3, 4), 0, (0, 2), (-1, 2), "4", 4.0, None,
                                                             (2.0, 3), True]),
}
CTOR_EXTRA = {
    "GatedPixelCNN": {"cond_channels": ([0, 2], [-1, 2.0, "2", None]),
                      "dist": (["logistic", "categorical"], ["softmax", "", None, 3])},
    "GrayscalePixelCNN": {"gray_bits": ([1, 4], [9, 0, "4", None]),
                          "encoder_hidden": ([None, 2], [0, "2"]),
                          "encoder_blocks": ([0, 1], [-1, 1.5]),
                          "cond_channels": ([None, 2], [0, "2"]),
                          "prior_hidden": ([None, 2], [0, 2.0]),
                          "prior_blocks": ([None, 0, 1], [-1])},
    "PyramidPixelCNN": {"image_size": ([1, 2, 4, 8, (4, 8), (8, 4)], [3, 0, -2, "4", (4,), None]),
                        "seed_size": ([1, 2, 4, (2, 4), (1, 2)], [3, 0, "2", None]),
                        "dist": (["logistic", "categorical"], ["softmax", None]),
                        "encoder_hidden": ([None, 2], [0, "2"]),
                        "cond_channels": ([None, 2], [0, "2"])},
}


@settings(max_examples=150, **HYP)
@given(data=st.data())
def test_property_constructors_and_forward(data):
    """Random constructor arguments: an error naming the argument, or a model whose config
    round-trips through JSON and whose forward pass is finite with the right shape."""
    cls = data.draw(st.sampled_from([pixelaux.GatedPixelCNN, pixelaux.GrayscalePixelCNN,
                                     pixelaux.PyramidPixelCNN]), label="class")
    pools = dict(CTOR_POOLS, **CTOR_EXTRA[cls.__name__])
    wild = _mistakes(data, sorted(pools))
    kwargs = dict(hidden=2, blocks=1) if cls is pixelaux.PyramidPixelCNN else dict(hidden=2, blocks=1, image_size=3)
    for arg in sorted(pools):
        if arg in wild or data.draw(st.integers(0, 2), label=f"draw {arg}?") == 0:
            kwargs[arg] = data.draw(st.sampled_from(pools[arg][1] if arg in wild else pools[arg][0]), label=arg)
    ok, m = attempt("constructors", lambda: cls(**kwargs))
    if not ok:
        return
    assert m.kind == cls.__name__
    config = json.loads(json.dumps(m.config, allow_nan=False))      # JSON, as checkpoints store it
    assert cls(**config).config == m.config
    m = randomize(m, std=0.2)
    if cls is pixelaux.PyramidPixelCNN:
        f = 2 ** (m.num_levels - 1)
        h, w = (f, f)
    else:
        h, w = min(m.image_size[0], 3), min(m.image_size[1], 3)
    x = torch.randint(0, 2 ** m.bits, (2, m.channels, h, w), generator=gen(1))
    with torch.no_grad():
        if cls is pixelaux.GatedPixelCNN:
            cond = torch.randn(2, m.cond_channels, h, w, generator=gen(2)) if m.cond_channels else None
            params = m(x, cond)
            assert params.shape == (2, m.dist.num_params, h, w) and torch.isfinite(params).all()
            lp = m.log_prob(x, cond)
        else:
            lp = m(x)
    assert lp.shape == (2,) and torch.isfinite(lp).all() and (lp <= 1e-3).all(), lp


@pytest.mark.usefixtures("models")
@settings(max_examples=150, **HYP)
@given(data=st.data())
def test_property_forward_and_log_prob(data):
    models = MODELS
    name = data.draw(st.sampled_from(sorted(models)), label="model")
    m = models[name]
    wild = _mistakes(data, ("x", "cond"))
    x = _wild_images(data, m) if "x" in wild else _valid_images(data, name, m)
    b = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() == 4 else 1
    hw = tuple(x.shape[2:]) if isinstance(x, torch.Tensor) and x.dim() == 4 else (4, 4)
    method = data.draw(st.sampled_from(["forward", "log_prob"]), label="method")
    if name.startswith("gated"):
        cond = data.draw(cond_values(name, m, b, hw, wild="cond" in wild), label="cond")
        fn = (lambda: m(x, cond)) if method == "forward" else (lambda: m.log_prob(x, cond))
    else:
        fn = (lambda: m(x)) if method == "forward" else (lambda: m.log_prob(x))
    with torch.no_grad():
        ok, out = attempt("forward_log_prob", fn)
    if ok:
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        if name.startswith("gated") and method == "forward":
            assert out.shape == (x.shape[0], m.dist.num_params, *x.shape[2:])
        else:
            assert out.shape == (x.shape[0],) and (out <= 1e-3).all()


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
    (d / "evil.pt").write_bytes(pickle.dumps(_Payload(f["marker"])))
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
        (evil / n).write_bytes(pickle.dumps({b"data": _Payload(f["marker"])}))
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


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.usefixtures("models", "files")
@settings(max_examples=60, **HYP)
@given(data=st.data())
def test_property_load(data):
    models, files = MODELS, FILES
    d = files["dir"]
    target = data.draw(st.sampled_from([
        "gated", "grayscale", "pyramid", "gated_path", "gated_bytes", "default", "pyramid_name", "missing",
        "dir", "truncated", "random", "evil", None, 3, ["a"], ""]), label="name_or_path")
    value = {"gated": str(files["gated"]), "grayscale": str(files["grayscale"]), "pyramid": str(files["pyramid"]),
             "gated_path": files["gated"], "gated_bytes": os.fsencode(files["gated"]),
             "default": "default", "pyramid_name": "pyramid", "missing": str(d / "missing.safetensors"),
             "dir": str(d), "truncated": str(d / "truncated.safetensors"), "random": str(d / "random.bin"),
             "evil": str(d / "evil.pt")}.get(target, target) if isinstance(target, str) else target
    loc = data.draw(st.sampled_from(["cpu", torch.device("cpu"), None, "meta", "cuda", "cuda:0", "bogus", 3,
                                     -1, "mps", "xpu", 2.5, "cpu:0"]), label="map_location")
    ok, m = attempt("load", lambda: pixelaux.load(value, map_location=loc))
    assert not files["marker"].exists(), "a pickle payload ran"
    if ok:
        assert isinstance(m, torch.nn.Module) and not m.training
        dev = torch.device("cpu" if loc is None else loc)
        assert next(m.parameters()).device.type == dev.type
        key = {"gated": "gated", "gated_path": "gated", "gated_bytes": "gated"}.get(target, target)
        if key in ("gated", "grayscale", "pyramid") and dev.type == "cpu":
            ref = models[key].state_dict()
            assert all(torch.equal(v, ref[k]) for k, v in m.state_dict().items())


@pytest.mark.usefixtures("files")
@settings(max_examples=90, **HYP)
@given(data=st.data())
def test_property_datasets(data):
    files = FILES
    which = data.draw(st.sampled_from(["folder", "cifar", "patches"]), label="dataset")
    if which == "folder":
        wild = _mistakes(data, ("root", "size", "channels", "bits"))
        draw = lambda arg, valid, bad: data.draw(st.sampled_from(bad if arg in wild else valid), label=arg)  # noqa
        root = draw("root", files["folders"][:1], files["folders"][1:] + [files["png"], files["dir"] / "nope", None,
                                                                          3, b"/tmp"])
        size = draw("size", [None, 3, (2, 3)], [0, (2,), "3", 2.5, True, (0, 2)])
        channels = draw("channels", [3, 1], [2, "3", None, 0])
        bits = draw("bits", [8, 4, 1], [9, 0, "8", 8.0])
        ok, ds = attempt("datasets", lambda: ImageFolder(root, size=size, channels=channels, bits=bits))
        if ok:
            assert len(ds) >= 1
            for i in (0, len(ds) - 1):
                ok_i, x = attempt("datasets", lambda: ds[i])
                if ok_i:
                    assert x.dtype == torch.uint8 and x.shape[0] == channels and x.dim() == 3
                    if size is not None:
                        assert tuple(x.shape[1:]) == pixelaux.checks.check_size(size)
                    assert int(x.max()) < 2 ** bits
    elif which == "cifar":
        path = data.draw(st.sampled_from(files["cifar"] + [None, 3]), label="path")
        train = data.draw(st.sampled_from([True, False]), label="train")
        ok, ds = attempt("datasets", lambda: CIFAR10(path, train=train))
        assert not files["marker"].exists(), "a pickle payload ran"
        if ok:
            assert len(ds) == (10 if train else 2) and ds[0].dtype == torch.uint8 and ds[0].shape == (3, 32, 32)
            assert ds.labels.min() >= 0 and ds.labels.max() <= 9
    else:
        wild = _mistakes(data, ("split", "size", "stride", "scales", "min_std"))
        draw = lambda arg, valid, bad: data.draw(st.sampled_from(bad if arg in wild else valid), label=arg)  # noqa
        kw = dict(split=draw("split", ["test", "train"], ["val", None, 1]),
                  size=draw("size", [32, 64, (32, 64)], [1024, 0, -3, "8", 8.5, (32,), None, True]),
                  stride=draw("stride", [None, 64], [0, -1, "4", 4.5]),
                  scales=draw("scales", [(2,), (2, 4), [4]], [(), 2, (0,), (2.0,), None, "2"]),
                  flip=data.draw(st.booleans(), label="flip"),
                  min_std=draw("min_std", [2.0, 0, 1e9], [-1.0, float("nan"), float("inf"), "2"]))
        ok, x = attempt("datasets", lambda: natural_patches(**kw))
        if ok:
            h, w = pixelaux.checks.check_size(kw["size"])
            assert x.dtype == torch.uint8 and x.dim() == 4 and tuple(x.shape[1:]) == (3, h, w)
            COUNTS["datasets/patches ok"] += 1


def _cli(argv):
    """``pixelaux.cli.main(argv)`` -> (rc, stdout, stderr); it must not raise."""
    from pixelaux.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


CLI_OPTIONS = ("model", "input", "n", "size", "scale", "seed", "engine", "backend", "temperature", "device",
               "out", "task")


@pytest.mark.usefixtures("files")
@settings(max_examples=80, **HYP)
@given(data=st.data())
def test_property_cli(data):
    files = FILES
    """``pixelaux.cli.main`` on random command lines: exit 0 with a readable PNG, or
    exit 1 / 2 with exactly one line on stderr; never an exception, never a temp file."""
    d = files["dir"]
    cmd = data.draw(st.sampled_from(["sample", "sample", "score", "colorize", "upscale", "complete", "bogus"]),
                    label="command")
    wild = _mistakes(data, CLI_OPTIONS)

    def pick(opt, valid, bad):
        return data.draw(st.sampled_from(bad if opt in wild else valid), label=opt)

    kind_for = {"colorize": "grayscale", "upscale": "pyramid"}
    good_model = files[kind_for[cmd]] if cmd in kind_for else \
        data.draw(st.sampled_from([files["gated"], files["grayscale"], files["pyramid"]]), label="model kind")
    model = pick("model", [good_model], [files["gated"], files["pyramid"], "nope", d / "random.bin",
                                         d / "evil.pt"])
    argv = [cmd]
    if cmd == "score":
        argv += pick("input", [[files["png"]]] if good_model != files["pyramid"] else [[files["png_small"]]],
                     [[files["png"], files["png_big"]], [files["txt"]], [d / "nope.png"]])
        argv += ["--model", model] + (["--resize"] if model == files["pyramid"] else [])
    elif cmd in ("colorize", "upscale", "complete"):
        image = {"colorize": files["png_gray"], "upscale": files["png_small"], "complete": files["png"]}[cmd]
        argv += [pick("input", [image], [files["png_big"], files["txt"], d / "nope.png", files["png_gray"]])]
        argv += ["--model", model, "--no-progress", "--samples", pick("n", ["1", "2"], ["0", "x", "-2"])]
        if cmd == "colorize":
            argv += pick("task", [[], ["--max-side", "4"]], [["--max-side", "0"], ["--max-side", "x"]])
        if cmd == "complete":
            argv += pick("task", [["--keep-rows", "2"], ["--mask", files["mask"]]],
                         [["--keep-rows", "0"], ["--keep-rows", "100"], ["--mask", files["png_small"]], [],
                          ["--mask", files["png_big"], "--resize"], ["--mask", files["txt"]]])
    elif cmd == "sample":
        argv += ["--model", model, "--no-progress", "--n", pick("n", ["1", "2"], ["0", "-1", "x", "1.5"])]
        sizes = [[], ["--size", "2"], ["--size", "2", "4"]] if good_model == files["pyramid"] else \
            [[], ["--size", "3"], ["--size", "2", "4"]]
        argv += pick("size", sizes, [["--size", "0"], ["--size", "3"], ["--size", "1", "2", "3"], ["--size", "x"]])
        argv += pick("scale", [[], ["--scale", "2"]], [["--scale", "0"], ["--scale", "-1"]])
    if cmd not in ("score", "bogus"):
        argv += ["--seed", pick("seed", ["0", "7", "-1"], ["x", str(2 ** 70), "1e3"])]
        argv += ["--engine", pick("engine", ["cached", "naive"], ["fast", ""])]
        argv += ["--backend", pick("backend", ["auto", "torch"] + (["cpp"] if CPP else []), ["cuda", "Auto"])]
        argv += ["--temperature", pick("temperature", ["1", "0.5", "1e-6", "1e6"], ["0", "-1", "nan", "inf", "x"])]
    argv += ["--device", pick("device", ["cpu"], ["meta", "cuda", "bogus", "cuda:7", "mps"])]
    out_dir = d / f"cli_{COUNTS['cli']}"
    out = pick("out", [out_dir / "o.png", out_dir / "deep" / "er" / "o.png"], [d, files["png"] / "x.png"])
    if cmd != "score":
        argv += ["--out", out]
    COUNTS["cli"] += 1
    rc, stdout, stderr = _cli(argv)
    COUNTS[f"cli/exit {rc}"] += 1
    assert rc in (0, 1, 2), rc
    if rc != 0:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pixelaux") and "Traceback" not in stderr, stderr
    elif cmd != "score":
        with Image.open(out) as im:
            im.load()
    else:
        assert "bits/dim" in stdout
    leftovers = [p for p in d.rglob("*.tmp")]
    assert not leftovers, leftovers


# --------------------------------------------------------------------------- messages and regressions

def _mistakes_table(m, x, d):
    """(call, error type, words the message must contain: the argument, the expectation
    or the value given)."""
    c = _tiny("gated_cond")
    return [
        (lambda: pixelaux.sample(m, 0), ValueError, ["n", ">= 1", "0"]),
        (lambda: pixelaux.sample(m, 2.0), TypeError, ["n", "int", "float"]),
        (lambda: pixelaux.sample(m, 1, size=(0, 4)), ValueError, ["size[0]", ">= 1", "0"]),
        (lambda: pixelaux.sample(m, 1, size="4"), TypeError, ["size", "'4'"]),
        (lambda: pixelaux.sample(m, 1, temperature=-1), ValueError, ["temperature", "> 0", "-1"]),
        (lambda: pixelaux.sample(m, 1, temperature=float("nan")), ValueError, ["temperature", "finite", "nan"]),
        (lambda: pixelaux.sample(m, 1, temperature="1"), TypeError, ["temperature", "number", "str"]),
        (lambda: pixelaux.sample(m, 1, engine="fast"), ValueError, ["engine", "naive", "'fast'"]),
        (lambda: pixelaux.sample(m, 1, generator=5), TypeError, ["generator", "Generator", "int"]),
        (lambda: pixelaux.sample(m, 1, known=torch.zeros(3, 4, 5)), TypeError, ["known", "integer", "float32"]),
        (lambda: pixelaux.sample(m, 1, known=torch.zeros(3, 4, 5, dtype=torch.complex64)), TypeError,
         ["known", "integer", "complex64"]),
        (lambda: pixelaux.sample(m, 1, known=torch.zeros(3, 4, 5, dtype=torch.long, device="meta")), ValueError,
         ["known", "meta"]),
        (lambda: pixelaux.sample(m, 1, known=torch.zeros(3, 4, 4, dtype=torch.long)), ValueError,
         ["known", "(1, 3, 4, 5)", "(1, 3, 4, 4)"]),
        (lambda: pixelaux.sample(c, 1, cond=torch.zeros(1, 2, 4, 5, device="meta")), ValueError, ["cond", "meta"]),
        (lambda: pixelaux.sample(_tiny("gated").to("meta"), 1), ValueError, ["model", "meta"]),
        (lambda: pixelaux.bits_per_dim(m, x.float()), TypeError, ["images", "integer", "float32"]),
        (lambda: pixelaux.bits_per_dim(m, x[:, :1]), ValueError, ["images", "(B, 3, H, W)", "(2, 1, 4, 5)"]),
        (lambda: pixelaux.bits_per_dim(m, x.clamp(max=0) + 300), ValueError, ["images", "[0, 255]", "300"]),
        (lambda: pixelaux.bits_per_dim(m, x, batch_size=0), ValueError, ["batch_size", ">= 1", "0"]),
        (lambda: pixelaux.bits_per_dim(c, x[:, :1], torch.tensor(1.0)), ValueError, ["cond", "(2, 2, 4, 5)", "()"]),
        (lambda: pixelaux.bits_per_dim(c, x[:, :1], 3), TypeError, ["cond", "floating-point", "int"]),
        (lambda: pixelaux.bits_per_dim(c, x[:, :1], torch.zeros(2, 2, 4, 5, device="meta")), ValueError,
         ["cond", "meta"]),
        (lambda: pixelaux.bits_per_dim(MODELS["grayscale"], x, torch.zeros(2, 1, 4, 5)), ValueError,
         ["cond", "None", "Tensor"]),
        (lambda: pixelaux.GatedPixelCNN(hidden=0), ValueError, ["hidden", ">= 1", "0"]),
        (lambda: pixelaux.GatedPixelCNN(hidden="64"), TypeError, ["hidden", "int", "'64'"]),
        (lambda: pixelaux.GatedPixelCNN(kernel_size=2), ValueError, ["kernel_size", "odd", "2"]),
        (lambda: pixelaux.GatedPixelCNN(dist="softmax"), ValueError, ["dist", "logistic", "'softmax'"]),
        (lambda: pixelaux.GatedPixelCNN(dist=3), TypeError, ["dist", "logistic", "int"]),
        (lambda: pixelaux.GatedPixelCNN(dropout=1.5), ValueError, ["dropout", "<= 1", "1.5"]),
        (lambda: pixelaux.GrayscalePixelCNN(channels=2), ValueError, ["channels", "3", "2"]),
        (lambda: pixelaux.GrayscalePixelCNN(gray_bits=9), ValueError, ["gray_bits", "<= 8", "9"]),
        (lambda: pixelaux.PyramidPixelCNN(image_size=12, seed_size=8), ValueError, ["image_size", "seed_size", "12"]),
        (lambda: m(x.float()), TypeError, ["x", "integer", "float32"]),
        (lambda: m(x.to("meta")), ValueError, ["x", "meta"]),
        (lambda: m(x, torch.zeros(2, 1, 4, 5)), ValueError, ["cond", "None", "cond_channels=0"]),
        (lambda: c(x[:, :1], torch.full((2, 2, 4, 5), float("inf"))), ValueError, ["cond", "finite"]),
        (lambda: m.log_prob(x[:, :, :0]), ValueError, ["x", "non-empty", "(2, 3, 0, 5)"]),
        (lambda: pixelaux.load(3), TypeError, ["model", "path", "int"]),
        (lambda: pixelaux.load(str(d / "nope")), ValueError, ["nope"]),
        (lambda: pixelaux.load(str(d / "gated.safetensors"), map_location="cuda"), ValueError,
         ["map_location", "'cuda'", "no cuda device"] if not torch.cuda.is_available() else ["map_location"]),
        (lambda: pixelaux.load(str(d / "gated.safetensors"), map_location="bogus"), ValueError,
         ["map_location", "'bogus'"]),
        (lambda: pixelaux.load(str(d / "gated.safetensors"), map_location=2.5), TypeError, ["map_location", "float"]),
        (lambda: ImageFolder(None), TypeError, ["root", "path", "NoneType"]),
        (lambda: ImageFolder(d, channels=2), ValueError, ["channels", "1 or 3", "2"]),
        (lambda: CIFAR10(3), TypeError, ["path", "int"]),
        (lambda: natural_patches("test", 0), ValueError, ["size[0]", ">= 1", "0"]),
    ]


@pytest.mark.usefixtures("files")
def test_each_mistake_gets_its_error_type_and_a_message_naming_argument_expected_and_given(models):
    """The contract of the entry points: TypeError for wrong types/dtypes, ValueError for
    wrong shapes/values/devices/files, the message naming the argument, what was expected
    and what was given. Includes every bug the property tests found (regressions)."""
    m = models["gated"]
    x = torch.randint(0, 256, (2, 3, 4, 5))
    for i, (call, err, words) in enumerate(_mistakes_table(m, x, FILES["dir"])):
        with pytest.raises(err) as e:
            call()
        msg = str(e.value)
        missing = [w for w in words if w not in msg]
        assert not missing, f"case {i}: {type(e.value).__name__}({msg!r}) does not mention {missing}"
        assert Path(_origin(e.value)).resolve().is_relative_to(PKG_DIR), f"case {i}: raised outside pixelaux"
    c = _tiny("gated_cond")                      # other float dtypes are converted, not refused
    y = torch.randint(0, 256, (2, 1, 4, 5))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        cond = torch.randn(2, 2, 4, 5).to(dtype)
        with torch.no_grad():
            assert torch.isfinite(c.log_prob(y, cond)).all()
        assert pixelaux.bits_per_dim(c, y, cond).shape == (2,)
        assert pixelaux.sample(c, 2, cond=cond, progress=False).shape == (2, 1, 4, 5)


@pytest.mark.usefixtures("files")
def test_cli_reports_device_and_seed_mistakes_in_one_line():
    for argv, rc_want, needle in [
            (["--device", "cuda"], 1, "map_location"), (["--device", "meta"], 1, "meta"),
            (["--seed", str(2 ** 70)], 2, "--seed"), (["--device", "bogus"], 1, "device")]:
        if argv[1] == "cuda" and torch.cuda.is_available():
            continue
        rc, _, err = _cli(["sample", "--model", FILES["gated"], "--n", "1", "--no-progress",
                           "--out", FILES["dir"] / "cli_one_line.png", *argv])
        lines = err.strip().splitlines()
        assert rc == rc_want and len(lines) == 1 and needle in lines[0], (argv, rc, err)


def test_a_corrupted_config_value_in_a_checkpoint_header_is_detected(tmp_path):
    path = pixelaux.save(_tiny("gated", seed=3), tmp_path / "m.safetensors")
    raw = path.read_bytes()
    edited = raw.replace(b'\\"bits\\": 8', b'\\"bits\\": 7', 1)     # one byte: an 8-bit model becomes 7-bit
    assert len(edited) == len(raw) and edited != raw
    path.write_bytes(edited)
    with pytest.raises(ValueError):
        ck.load(path)


def test_a_corrupted_step_in_a_training_state_is_detected(tmp_path):
    path = ck.save_training_state(tmp_path / "s.safetensors", {"step": 12, "w": torch.ones(3)})
    raw = path.read_bytes()
    edited = raw.replace(b'\\"step\\": 12', b'\\"step\\": 19', 1)
    assert len(edited) == len(raw) and edited != raw
    path.write_bytes(edited)
    with pytest.raises(ValueError):
        ck.load_training_state(path)


# --------------------------------------------------------------------------- checkpoint corruption

@st.composite
def corruptions(draw, size: int, header_end: int):
    """A list of byte edits, positions biased to the 8-byte length and the JSON header."""
    pos = st.one_of(st.integers(0, 7), st.integers(8, header_end - 1), st.integers(0, size - 1))
    edit = st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(1, 255)),
        st.tuples(st.just("set"), pos, st.integers(0, 255)),
        st.tuples(st.just("truncate"), st.integers(0, size - 1), st.just(0)),
        st.tuples(st.just("insert"), pos, st.integers(0, 255)),
        st.tuples(st.just("delete"), pos, st.integers(1, 16)))
    return draw(st.lists(edit, min_size=1, max_size=3))


def _apply(raw: bytes, edits) -> bytes:
    b = bytearray(raw)
    for op, p, v in edits:
        p = min(p, max(0, len(b) - 1))
        if op == "flip" and b:
            b[p] ^= v
        elif op == "set" and b:
            b[p] = v
        elif op == "truncate":
            del b[p:]
        elif op == "insert":
            b[p:p] = bytes([v])
        elif op == "delete":
            del b[p:p + v]
    return bytes(b)


def _header_end(raw: bytes) -> int:
    return 8 + int.from_bytes(raw[:8], "little")


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("corrupt")
    m = _tiny("gated", seed=3, hidden=4, image_size=(4, 4))
    path = pixelaux.save(m, d / "orig.safetensors", extra={"step": 12})
    saved_weights = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.Adam(m.parameters())
    m.log_prob(torch.randint(0, 256, (2, 3, 4, 4))).mean().neg().backward()
    opt.step()
    state = {"step": 12, "model": m.state_dict(), "optimizer": opt.state_dict(), "rng": [torch.get_rng_state()]}
    spath = ck.save_training_state(d / "state.safetensors", state)
    SAVED.update({"dir": d, "model": m, "weights": saved_weights, "raw": path.read_bytes(),
                  "config": ck.read_header(path)["config"], "state_raw": spath.read_bytes(),
                  "state": ck.load_training_state(spath)})
    return SAVED


def _same_tree(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_tree(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


@pytest.mark.usefixtures("saved_checkpoint")
@settings(max_examples=150, **HYP)
@given(data=st.data())
def test_property_corrupted_checkpoint_is_refused_or_identical(data):
    """Random byte edits of a real checkpoint: ``ValueError``, or a model identical to the
    saved one (config and every weight); never another exception, never a different model."""
    s = SAVED
    raw = s["raw"]
    edits = data.draw(corruptions(len(raw), _header_end(raw)), label="edits")
    path = s["dir"] / "edited.safetensors"
    path.write_bytes(_apply(raw, edits))
    ok, m = attempt("checkpoint corruption", lambda: ck.load(path))
    if ok:
        assert type(m) is type(s["model"]) and m.config == s["config"], \
            f"the edited file loaded a different config: {m.config}"
        ref = s["weights"]
        assert m.state_dict().keys() == ref.keys()
        assert all(torch.equal(v, ref[k]) for k, v in m.state_dict().items()), "different weights loaded"
        COUNTS["checkpoint corruption/loaded identical"] += 1


@pytest.mark.usefixtures("saved_checkpoint")
@settings(max_examples=80, **HYP)
@given(data=st.data())
def test_property_corrupted_training_state_is_refused_or_identical(data):
    s = SAVED
    raw = s["state_raw"]
    edits = data.draw(corruptions(len(raw), _header_end(raw)), label="edits")
    path = s["dir"] / "edited_state.safetensors"
    path.write_bytes(_apply(raw, edits))
    ok, st_ = attempt("training-state corruption", lambda: ck.load_training_state(path))
    if ok:
        assert _same_tree(s["state"], st_), "the edited file loaded a different training state"


# --------------------------------------------------------------------------- numerics

def _stages(model):
    if model.kind == "GatedPixelCNN":
        return [model]
    if model.kind == "GrayscalePixelCNN":
        return [model.prior, model.colour]
    return list(model.levels)


def _extreme(kind: str, setting: str):
    m = _tiny(kind, seed=11)
    with torch.no_grad():
        if setting == "weights x1000":
            for p in m.parameters():
                p.mul_(1000.0)
        elif setting == "saturated logits":
            for s in _stages(m):
                s.head.weight.mul_(1e4)
                s.head.bias.copy_(torch.randn(s.head.bias.shape, generator=gen(5)) * 1e4)
    return m


SETTINGS = {"T=1e-6": 1e-6, "T=1e6": 1e6, "saturated logits": 1.0, "weights x1000": 1.0}
NUMERIC_MODELS = ("gated", "gated_categorical", "grayscale", "pyramid")


def _numeric_size(kind, backend):
    if backend != "triton":
        return (4, 4) if kind == "pyramid" else (4, 5)
    return (2, 2) if kind in ("pyramid", "grayscale") else (2, 3)   # the interpreter is slow


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")   # numpy, in Triton's interpreter
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("kind", NUMERIC_MODELS)
def test_extreme_numerics_give_valid_pixels_on_every_engine(kind, setting):
    """Never NaN-born or out-of-range pixels, on the naive engine and every backend; how
    often the backends still agree with the naive engine is recorded (not asserted:
    with saturated or exploding activations, float ties are everywhere)."""
    m = _extreme(kind, setting)
    t = SETTINGS[setting]
    for backend in ["naive"] + BACKENDS:
        size = _numeric_size(kind, backend)
        n = 2 if backend == "triton" else 3
        eng = dict(engine="naive") if backend == "naive" else dict(backend=backend)
        x = pixelaux.sample(m, n, size=size, temperature=t, generator=gen(3), progress=False, **eng)
        assert_images(x, n, m.channels, size, m.bits)
        if backend != "naive":
            ref = pixelaux.sample(m, n, size=size, temperature=t, generator=gen(3), progress=False, engine="naive")
            AGREEMENT[(kind, setting, backend)] = (x == ref).float().mean().item()
        else:
            AGREEMENT[(kind, setting, "naive")] = 1.0
    if setting == "weights x1000" and kind == "gated":       # activations really did explode
        with torch.no_grad():
            params = m(torch.zeros(1, 3, 4, 5, dtype=torch.long))
        assert params.abs().max() > 1e4 or not torch.isfinite(params).all()


# --------------------------------------------------------------------------- reproducibility

@pytest.mark.parametrize("kind", KINDS)
def test_backends_and_naive_engine_give_the_same_images(models, kind):
    """Same seed -> same images through ``pixelaux.sample`` for the naive engine and every
    backend (torch, cpp if built, triton under the interpreter on tiny shapes)."""
    m = models[kind]
    size = (4, 4) if kind == "pyramid" else (4, 5)
    ref = pixelaux.sample(m, 4, size=size, engine="naive", generator=gen(21), progress=False)
    for backend in BACKENDS:
        if backend == "triton":
            s = (2, 2) if kind != "gated" else (2, 3)
            r = pixelaux.sample(m, 2, size=s, engine="naive", generator=gen(22), progress=False)
            got = pixelaux.sample(m, 2, size=s, backend="triton", generator=gen(22), progress=False)
        else:
            r, got = ref, pixelaux.sample(m, 4, size=size, backend=backend, generator=gen(21), progress=False)
        differ = (got != r).sum().item()
        assert differ == 0, f"{kind} backend={backend}: {differ} of {r.numel()} pixel values differ from naive"
    assert ref.float().std() > 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["naive"] + [b for b in BACKENDS if b != "triton"])
def test_image_k_is_the_same_in_a_batch_of_8_and_of_16(models, kind, backend):
    m = models[kind]
    eng = dict(engine="naive") if backend == "naive" else dict(backend=backend)
    size = (4, 4) if kind == "pyramid" else (3, 4)
    a = pixelaux.sample(m, 8, size=size, generator=gen(5), progress=False, **eng)
    b = pixelaux.sample(m, 16, size=size, generator=gen(5), progress=False, **eng)
    assert torch.equal(a, b[:8])
    # and in chunks: two calls sharing one generator give the images of one call
    g = gen(5)
    c = torch.cat([pixelaux.sample(m, k, size=size, generator=g, progress=False, **eng) for k in (3, 5, 8)])
    assert torch.equal(c, b)


def test_triton_batch_size_invariance_tiny(models):
    """The batch test above for the interpreted Triton backend, on 2x2 images; where
    triton cannot run, its status must say why."""
    ok, why = cached_triton.status(torch.device("cpu"))
    if not ok:
        assert why
        return
    m = models["gated"]
    a = pixelaux.sample(m, 2, size=(2, 2), backend="triton", generator=gen(5), progress=False)
    b = pixelaux.sample(m, 3, size=(2, 2), backend="triton", generator=gen(5), progress=False)
    assert torch.equal(a, b[:2])


_SUBPROCESS_SAMPLER = """
import hashlib, sys, torch
torch.set_num_threads(2)
import pixelaux
for path in sys.argv[1:]:
    m = pixelaux.load(path)
    for backend in ("auto", "torch"):
        x = pixelaux.sample(m, 3, backend=backend, generator=torch.Generator().manual_seed(17), progress=False)
        print(hashlib.sha256(x.numpy().tobytes()).hexdigest())
"""


@pytest.mark.usefixtures("files")
def test_same_seed_same_images_in_another_process_with_other_threads():
    """A fresh process with 2 intra-op threads (default and torch backends) draws the
    images this one draws with 1 thread (default backend)."""
    paths = [str(FILES[k]) for k in KINDS]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", _SUBPROCESS_SAMPLER, *paths], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    here = []
    for p in paths:
        x = pixelaux.sample(pixelaux.load(p), 3, generator=gen(17), progress=False)
        here += [hashlib.sha256(x.numpy().tobytes()).hexdigest()] * 2
    assert out.stdout.split() == here


# --------------------------------------------------------------------------- memory

def test_oversized_batch_is_refused_up_front_with_the_estimate(models, monkeypatch):
    m = models["gated"]
    monkeypatch.setattr(resources, "available_bytes", lambda device: 10 ** 6)      # pretend 1 MB is free
    need = resources.estimate_sampling_bytes(m, 4096, (32, 32), "cached", "cpp" if CPP else "torch")
    assert need > 10 ** 6
    g = gen(1)
    before = g.get_state()
    with pytest.raises(resources.InsufficientMemoryError) as e:
        pixelaux.sample(m, 4096, size=32, generator=g, progress=False)
    assert isinstance(e.value, MemoryError)
    msg = str(e.value)
    assert resources.format_bytes(need) in msg and "976.6 KiB" in msg and "would fit" in msg
    assert "smaller n" in msg and "chunks" in msg and "n=4096" in msg
    assert e.value.needed == need and e.value.available == 10 ** 6
    assert torch.equal(g.get_state(), before), "the generator was used before the refusal"
    for kind in ("grayscale", "pyramid"):           # composite models are checked too
        with pytest.raises(resources.InsufficientMemoryError):
            pixelaux.sample(models[kind], 4096, size=32, progress=False, engine="naive")
    monkeypatch.setenv("PIXELAUX_MEMORY_CHECK", "0")                              # the escape hatch
    resources.check_memory(need, "cpu", "x")


def test_absurd_batch_is_refused_at_once_with_the_real_memory(models):
    t0 = time.perf_counter()
    with pytest.raises(resources.InsufficientMemoryError, match="available"):
        pixelaux.sample(models["grayscale"], 10 ** 9, progress=False)
    assert time.perf_counter() - t0 < 5.0


def test_small_calls_pass_the_memory_check(models):
    avail = resources.available_bytes("cpu")
    assert isinstance(avail, int) and avail > 0
    assert resources.available_bytes("meta") is None          # unknown: not checked
    resources.check_memory(10 ** 30, "meta", "x")
    for kind in KINDS:
        x = pixelaux.sample(models[kind], 2, progress=False)
        assert x.shape[0] == 2


def test_estimate_is_linear_in_n_and_covers_every_stage(models):
    for kind in KINDS:
        m = models[kind]
        for engine, backend in (("naive", None), ("cached", "torch"), ("cached", "cpp")):
            one = resources.estimate_sampling_bytes(m, 1, (32, 32), engine, backend)
            assert one > 0 and resources.estimate_sampling_bytes(m, 7, (32, 32), engine, backend) == 7 * one
    g = models["grayscale"]
    for stage in (g.prior, g.colour):
        assert resources.estimate_sampling_bytes(g, 3, (8, 8), "cached") > \
            resources.estimate_sampling_bytes(stage, 3, (8, 8), "cached")
    big = pixelaux.GatedPixelCNN(hidden=64, blocks=4, image_size=32)
    assert resources.estimate_sampling_bytes(big, 8, None, "naive") > \
        resources.estimate_sampling_bytes(big, 8, None, "cached") > 0
    with pytest.raises(ValueError, match="engine"):
        resources.estimate_sampling_bytes(big, 1, None, "fast")


def test_available_memory_from_meminfo_cgroup_and_sysconf(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  9999 kB\nMemAvailable:    2048 kB\n")
    monkeypatch.setattr(resources, "_MEMINFO", str(meminfo))
    monkeypatch.setattr(resources, "_CGROUPS", ())
    assert resources.available_bytes("cpu") == 2048 * 1024
    cg = tmp_path / "cgroup"
    cg.mkdir()
    (cg / "memory.max").write_text("1500000\n")
    (cg / "memory.current").write_text("1000000\n")
    (cg / "memory.stat").write_text("anon 5\ninactive_file 100000\n")
    monkeypatch.setattr(resources, "_CGROUPS", ((str(cg), "memory.max", "memory.current", "inactive_file"),))
    assert resources.available_bytes("cpu") == 600000            # the container limit is lower
    (cg / "memory.max").write_text("max\n")                      # no limit: the host figure
    assert resources.available_bytes("cpu") == 2048 * 1024
    monkeypatch.setattr(resources, "_MEMINFO", str(tmp_path / "missing"))
    assert resources.available_bytes("cpu") > 0                  # os.sysconf fallback


# --------------------------------------------------------------------------- Ctrl-C and progress

def test_sampling_shows_progress(models, capsys):
    pixelaux.sample(models["gated"], 1, backend="torch", generator=gen(), progress=True)
    err = capsys.readouterr().err
    assert "cached[torch]" in err and "px" in err


def test_ctrl_c_while_sampling_exits_130_and_writes_nothing(files, tmp_path, monkeypatch):
    import pixelaux.engines as engines_mod

    real = engines_mod.runner

    def interrupted(engine, backend):
        run = real(engine, backend)

        def wrapper(*args, **kwargs):
            run(*args, **kwargs)            # some real work first
            raise KeyboardInterrupt
        return wrapper

    monkeypatch.setattr(engines_mod, "runner", interrupted)
    out = tmp_path / "grid.png"
    rc, stdout, stderr = _cli(["sample", "--model", files["grayscale"], "--n", 2, "--no-progress",
                               "--out", out, "--out-dir", tmp_path / "each"])
    assert rc == 130
    assert stderr.strip().splitlines() == ["pixelaux sample: interrupted"]
    assert not out.exists() and list(tmp_path.rglob("*")) == []


def test_ctrl_c_while_writing_a_png_leaves_no_partial_file(files, tmp_path, monkeypatch):
    real_save = Image.Image.save
    calls = {"n": 0}

    def save(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:                              # the second file: half written, then Ctrl-C
            Path(fp).write_bytes(b"\x89PNG partial")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    out_dir = tmp_path / "each"
    rc, _, stderr = _cli(["sample", "--model", files["gated"], "--n", 3, "--no-progress", "--out-dir", out_dir])
    assert rc == 130 and len(stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in out_dir.iterdir()) == ["sample_0000.png"]   # complete, the rest absent
    with Image.open(out_dir / "sample_0000.png") as im:
        im.load()
