"""Bad input at the public API: random arguments to ``pixelaux.sample``, ``bits_per_dim``,
the model constructors and ``forward`` / ``log_prob`` (property-based), and the table of
mistakes whose messages must name the argument, what was expected and what was given.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pixelaux
from helpers import randomize
from pixelaux import resources
from pixelaux.data import CIFAR10, ImageFolder, natural_patches
from reliability_helpers import (  # noqa: F401 (fixtures)
    CPP, FILES, GENERATORS, HYP, MODELS, N_VALUES, OTHER_VALUES, PKG_DIR, SIZE_VALUES, TEMPERATURES,
    assert_images, attempt, cond_values, files, gen, image_shapes, known_values, models, n_or_1, one_thread_and_report,
    origin, resolved_size, tensors, tiny, wild_args)

pytestmark = pytest.mark.usefixtures("one_thread_and_report")


# --------------------------------------------------------------------------- property tests

SAMPLE_ARGS = ("n", "size", "engine", "backend", "generator", "temperature", "cond", "known")


@pytest.mark.usefixtures("models")
@pytest.mark.slow                # property-based: hundreds of inputs
@settings(max_examples=200, **HYP)
@given(data=st.data())
def test_property_sample(data):
    models = MODELS
    name = data.draw(st.sampled_from(sorted(models)), label="model")
    m = models[name]
    wild = wild_args(data, SAMPLE_ARGS)
    draw = lambda arg, valid, bad: data.draw(bad if arg in wild else valid, label=arg)  # noqa: E731
    n = draw("n", st.integers(1, 3), N_VALUES)
    even = st.sampled_from([2, 4, (2, 4), (4, 2), (4, 4), None])
    size = draw("size", even if name == "pyramid" else st.one_of(
        st.none(), st.integers(1, 5), st.tuples(st.integers(1, 5), st.integers(1, 5))), SIZE_VALUES)
    hw = resolved_size(m, size)
    hw_t = hw if max(hw) <= 8 else (4, 4)          # for the cond / known tensors drawn below
    n_eff = n_or_1(n)
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
@pytest.mark.slow                # property-based: hundreds of inputs
@settings(max_examples=100, **HYP)
@given(data=st.data())
def test_property_bits_per_dim(data):
    models = MODELS
    name = data.draw(st.sampled_from(sorted(models)), label="model")
    m = models[name]
    wild = wild_args(data, ("images", "cond", "parts", "batch_size"))
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


@pytest.mark.slow                # property-based: hundreds of inputs
@settings(max_examples=150, **HYP)
@given(data=st.data())
def test_property_constructors_and_forward(data):
    """Random constructor arguments: an error naming the argument, or a model whose config
    round-trips through JSON and whose forward pass is finite with the right shape."""
    cls = data.draw(st.sampled_from([pixelaux.GatedPixelCNN, pixelaux.GrayscalePixelCNN,
                                     pixelaux.PyramidPixelCNN]), label="class")
    pools = dict(CTOR_POOLS, **CTOR_EXTRA[cls.__name__])
    wild = wild_args(data, sorted(pools))
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
@pytest.mark.slow                # property-based: hundreds of inputs
@settings(max_examples=150, **HYP)
@given(data=st.data())
def test_property_forward_and_log_prob(data):
    models = MODELS
    name = data.draw(st.sampled_from(sorted(models)), label="model")
    m = models[name]
    wild = wild_args(data, ("x", "cond"))
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


# --------------------------------------------------------------------------- messages and regressions

def _mistakes_table(m, x, d):
    """(call, error type, words the message must contain: the argument, the expectation
    or the value given)."""
    c = tiny("gated_cond")
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
         ["known", "(1, 3, 4, 5)", "got (3, 4, 4)"]),
        (lambda: pixelaux.sample(c, 1, cond=torch.zeros(1, 2, 4, 5, device="meta")), ValueError, ["cond", "meta"]),
        (lambda: pixelaux.sample(tiny("gated").to("meta"), 1), ValueError, ["model", "meta"]),
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
        assert Path(origin(e.value)).resolve().is_relative_to(PKG_DIR), f"case {i}: raised outside pixelaux"
    c = tiny("gated_cond")                      # other float dtypes are converted, not refused
    y = torch.randint(0, 256, (2, 1, 4, 5))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        cond = torch.randn(2, 2, 4, 5).to(dtype)
        with torch.no_grad():
            assert torch.isfinite(c.log_prob(y, cond)).all()
        assert pixelaux.bits_per_dim(c, y, cond).shape == (2,)
        assert pixelaux.sample(c, 2, cond=cond, progress=False).shape == (2, 1, 4, 5)
